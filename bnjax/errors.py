"""Errors that the command line reports as one sentence and a non-zero exit."""


class BnjaxError(Exception):
  """A problem the user can fix; the message names the cause and the fix."""


class ConfigError(BnjaxError):
  """The config is invalid."""


class WorkdirError(BnjaxError):
  """The workdir cannot be used for this run."""


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint was saved and the run stopped cleanly."""
