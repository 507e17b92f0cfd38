"""Notes: one line on stderr for what a user should know but is not an error (tables stay on disk)."""

from __future__ import annotations

import sys


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)
