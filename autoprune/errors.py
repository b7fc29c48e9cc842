"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(ValueError):
    """Bad input: the CLI prints ``autoprune: error: <message>`` and exits with code 2."""
