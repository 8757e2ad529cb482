"""Writing a file so that no reader ever sees half of it, and a failed write as one sentence.

Every file bnjax writes into a workdir (config.json, members.json, the
analysis JSON, figures, reports) goes through `replaced`: it is written to
`<path>.tmp` and renamed over `<path>` once complete, so a process killed
while writing leaves the previous file (or none), never a torn one.
"""

import contextlib
import errno
import os
from collections.abc import Iterator
from typing import IO

from bnjax import errors

TMP_SUFFIX = ".tmp"


def write_failure(path: str, error: OSError) -> str:
  """The sentence for a failed write of `path`: what happened, and that a rerun resumes."""
  if error.errno == errno.ENOSPC:
    cause = "the disk is full (No space left on device)"
  elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    cause = f"it is not writable ({error.strerror})"
  else:
    cause = error.strerror or type(error).__name__
  return (f"Writing {path} failed: {cause}; fix that and rerun the same command, which resumes"
          " from the last checkpoint (files written before are intact).")


@contextlib.contextmanager
def replaced(path: str, binary: bool = False) -> Iterator[IO]:
  """A file to write `path`'s new content into; it replaces `path` when the block ends.

  If the block raises, `path` keeps its old content and the temporary file
  is removed; an OSError (a full disk, no permission) becomes a WorkdirError
  naming `path`.
  """
  tmp = path + TMP_SUFFIX
  try:
    with open(tmp, "wb" if binary else "w") as f:
      yield f
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    if isinstance(e, OSError):
      raise errors.WorkdirError(write_failure(path, e)) from None
    raise
