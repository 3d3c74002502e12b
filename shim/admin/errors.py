"""The one error the admin commands raise: its message is what the operator reads."""


class AdminError(Exception):
    """A command could not do its job; `main` prints the message and exits 1."""
