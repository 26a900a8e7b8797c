"""User-facing errors.

Every error a user can cause (bad config, missing data, unknown names) is an
``ADPruneError``: the CLI prints its one-line message and exits with code 2.
Anything else is a bug and keeps its traceback.
"""


class ADPruneError(Exception):
    """A problem with the user's input; its message names the value, the rule and the fix."""


class ConfigError(ADPruneError):
    """A config key, type or value that breaks a rule."""


class DataError(ADPruneError):
    """A dataset that is missing, corrupt or in an unexpected layout."""
