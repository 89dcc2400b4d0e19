"""One exception type for mistakes a user can fix; the CLI prints it as one line and exits 2."""


class ZooError(Exception):
    """A user-facing error: the message says what is wrong and what to change."""
