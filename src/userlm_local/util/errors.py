"""The one exception type that means "the user gave us something wrong".

The CLI prints its message as one line on stderr and exits with code 2; any
other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input (path, file, option), not a bug."""


class ContextFull(UserError):
    """A session was asked to hold more tokens than its context: the conversation has outgrown
    the model (a conversation loop ends it as ``context``; elsewhere it is one line, exit 2)."""
