"""The error a user's configuration raises when it cannot work, shared by every layer that validates one.

A `ConfigError` is raised before anything compiles or writes, and its message names the field and the fix.
"""


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field and the fix."""
