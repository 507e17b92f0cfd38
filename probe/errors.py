"""One exception type for every user-facing failure.

The CLI turns a `ProbeError` into a single line on stderr and a non-zero exit; anything else is a bug
and keeps its traceback.
"""


class ProbeError(Exception):
    """A problem with the user's input or environment, explained in one line."""
