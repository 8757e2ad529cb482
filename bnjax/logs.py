"""One logging setup for bnjax's programs and its load API, and progress lines.

bnjax's own lines are INFO. The libraries under it log at INFO too: Orbax
about every save and restore, JAX about backends it cannot start ("Unable
to initialize backend 'tpu'"), and Orbax warns about the read-only
checkpoint managers bnjax opens on purpose to read a run. `setup` keeps all
of that out of the log unless it is asked for with absl's verbosity: `-v=1`
on the command line of `bnjax.main` or `bnjax.analyze`, or
`absl.logging.set_verbosity(1)` in a script. Other warnings and errors of
those libraries always show.
"""

import logging
import os
import statistics
import time

import jax
import orbax.checkpoint
from absl import logging as absl_logging

# Where the chatter comes from: Orbax logs through absl (the "absl" logger,
# with Orbax's file as the record's path); JAX through its module's logger.
_LOGGERS = ("absl", "jax._src.xla_bridge")
_LIBRARY_DIRS = tuple(os.path.dirname(m.__file__) + os.sep for m in (jax, orbax.checkpoint))
# Orbax's warnings about what bnjax asks for: a read-only manager opened to read a run.
_EXPECTED_WARNINGS = ("Given directory is read only",
                      "CheckpointManagerOptions.read_only=True")


class LibraryNoise(logging.Filter):
  """Drops the libraries' INFO lines and expected warnings unless absl verbosity is >= 1.

  Their other warnings and errors show as one line each, without the
  traceback: bnjax reports what failed (a save into a full disk, say) in its
  own sentence.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    if absl_logging.get_verbosity() >= 1 or not record.pathname.startswith(_LIBRARY_DIRS):
      return True
    record.exc_info, record.exc_text = None, None
    return (record.levelno >= logging.WARNING
            and not str(record.msg).startswith(_EXPECTED_WARNINGS))


def setup() -> None:
  """Installs `LibraryNoise` on the loggers the libraries write to; calling it again does nothing.

  On the loggers rather than a handler, so it works with absl's handler
  (`bnjax.main`, `bnjax.analyze`) and with Python's default one (scripts).
  """
  for name in _LOGGERS:
    logger = logging.getLogger(name)
    if not any(isinstance(f, LibraryNoise) for f in logger.filters):
      logger.addFilter(LibraryNoise())


def duration(seconds: float) -> str:
  """E.g. "0h01m05s"."""
  seconds = int(round(seconds))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


class Progress:
  """Counts the items of a known number as they finish: "name 3/6 (2.1 s, ETA 0h00m07s): detail".

  The ETA is the remaining count times the median time of an item so far:
  the first item of each compiled program carries its compile time, and the
  median passes over those once a few items are done.
  """

  def __init__(self, name: str, total: int):
    self.name, self.total = name, total
    self.seconds: list[float] = []
    self._last = time.perf_counter()

  def done(self, detail: str) -> None:
    """Marks one item done (timed since the previous one, or since creation) and logs it."""
    now = time.perf_counter()
    self.seconds.append(now - self._last)
    self._last = now
    count = len(self.seconds)
    remaining = (self.total - count) * statistics.median(self.seconds)
    absl_logging.info("%s %d/%d (%.1f s, ETA %s): %s", self.name, count, self.total,
                      self.seconds[-1], duration(remaining), detail)
