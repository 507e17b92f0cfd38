"""Notes: one line on stderr for what a user should know but is not an error (tables stay on disk)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

_muted = 0


def note(message: str) -> None:
    if not _muted:
        print(f"note: {message}", file=sys.stderr)


@contextmanager
def muted() -> Iterator[None]:
    """No notes inside: for work that repeats what the user was already told (a sweep's cells)."""
    global _muted
    _muted += 1
    try:
        yield
    finally:
        _muted -= 1
