"""Atomic file writes: readers see the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
import tempfile
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
  """Opens a temporary file beside ``path`` that replaces it on success.

  On a clean exit of the ``with`` block the file is flushed, fsynced, given
  the permissions ``open()`` would (``0666 & ~umask``; ``mkstemp`` creates
  0600, which would hide a shared cache or results from other users) and
  renamed over ``path``. On an exception, an interrupt included, the
  temporary file is removed and ``path`` is left as it was. The parent
  directory is created if needed.

  Args:
    path: the destination.
    mode: ``"wb"`` or ``"w"``.

  Yields:
    The open temporary file.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
