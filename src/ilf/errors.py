"""One exception type for user-facing errors: the CLI prints its message as one line and exits 2."""


class IlfError(Exception):
    """A problem with the user's input (file, line, field) or environment, not a bug in ilf."""
