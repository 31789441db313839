"""The one exception type whose message is meant for the user: problem, value and fix."""


class LookalikeError(Exception):
    """A problem the user can fix; the CLI prints its message as one line, without a traceback."""
