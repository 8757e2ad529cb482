"""Errors that the command line reports as one sentence and a non-zero exit."""


class BnjaxError(Exception):
  """A problem the user can fix; the message names the cause and the fix."""


class ConfigError(BnjaxError):
  """The config is invalid."""


class WorkdirError(BnjaxError):
  """The workdir cannot be used for this run."""


class Preempted(Exception):
  """SIGTERM or SIGINT (Ctrl-C) arrived; a checkpoint was saved and the run stopped cleanly.

  `exit_code` is what a shell reports for a process ended by that signal
  (128 + its number: 143 for SIGTERM, 130 for SIGINT), so that wrappers can
  tell a stopped run (rerun it to resume) from a finished one.
  """

  def __init__(self, message: str, exit_code: int = 143):
    super().__init__(message)
    self.exit_code = exit_code
