"""The one exception type that reaches a user as a paragraph, not a traceback."""


class ClipvecError(Exception):
    """A job that cannot be done, with a message that says what to do about it.

    Entry points print ``str(error)`` and exit non-zero; anything else that
    escapes is a bug and keeps its traceback.
    """
