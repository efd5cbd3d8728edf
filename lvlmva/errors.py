"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class LvlmvaError(Exception):
    """An error caused by the user's input or environment, with a message that says what to do."""

    exit_code = 2


class DataError(LvlmvaError):
    """A dataset, image, CSV or checkpoint that is missing or malformed."""


class ConfigError(LvlmvaError):
    """A bad option, spec file, price table or endpoint configuration."""
