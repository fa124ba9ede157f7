"""The one exception type for mistakes a user can fix (bad input, bad config, missing files).

The command line prints these as a single line and exits non-zero; anything else is a bug and
keeps its traceback.
"""


class MedaugError(Exception):
    """A user-facing error: the message says what is wrong and, where possible, how to fix it."""
