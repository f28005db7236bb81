"""Errors a user can cause and fix (config, input data, environment).

Raise :class:`UserError` with a message that names the file or field and says how to fix it.
The command line turns it into one line on stderr and exit status 2, with no traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    def __init__(self, message: str, *, path=None, field=None, fix=None):
        parts = []
        if path is not None:
            parts.append(f"{path}:")
        if field is not None:
            parts.append(f"field '{field}':")
        parts.append(message)
        if fix:
            parts.append(f"Fix: {fix}")
        super().__init__(" ".join(parts))
