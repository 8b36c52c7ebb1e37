"""Exceptions that carry a one-line, user-facing message.

Every problem caused by user input (a config key, a data path, a checkpoint
file) raises a subclass of :class:`BaseUserError`; ``launch.py`` prints its
message on one line and exits with a non-zero status instead of a traceback.
"""


class BaseUserError(Exception):
  """A problem with the user's input; ``str(error)`` names it in one line."""


class ConfigError(BaseUserError, ValueError):
  """An unknown, missing or inconsistent configuration field."""


class DataError(BaseUserError, ValueError):
  """Missing, malformed or insufficient data (paths, layouts, shapes)."""


class CheckpointError(BaseUserError, ValueError):
  """A prior file or checkpoint that cannot be read or does not fit."""
