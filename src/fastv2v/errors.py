"""Errors meant for people: one sentence naming the file and the fix.

Library code raises :class:`UserError` for anything a user can fix (a bad path, a
corrupt video, a checkpoint of the wrong architecture). The CLI prints its message
and exits non-zero without a traceback; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, explained in one sentence."""

    exit_code = 2
