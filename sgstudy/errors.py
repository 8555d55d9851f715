"""The one exception type that reaches a user as a single line and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a flag, a config value, a dataset file, a server address.

    The CLI prints ``error: <message>`` on one line and exits with status 2.
    Messages name the offending key, path or value.
    """


class DatasetError(UserError):
    """A dataset directory that is missing files, truncated or inconsistent."""


class ConfigError(UserError):
    """A configuration value that is unknown or out of range."""
