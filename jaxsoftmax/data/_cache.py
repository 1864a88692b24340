"""The dataset cache: its directory, atomic writes, and each fetched dataset.

A ``_Source`` says where a dataset lives in the cache, which files it needs
and the command that fetches it, so every loader's error names that command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxsoftmax._core import io as _io


def data_dir() -> Path:
  """The dataset cache: ``$JAXSOFTMAX_DATA``, else ``~/.cache/jaxsoftmax``.

  Read at every call, so setting the variable after import takes effect.

  Returns:
    The directory (it need not exist yet).

  Examples:
    >>> from jaxsoftmax.data import data_dir
    >>> data_dir().is_absolute()
    True
  """
  root = os.environ.get("JAXSOFTMAX_DATA")
  path = Path(root).expanduser() if root else Path.home() / ".cache" / "jaxsoftmax"
  return path.absolute()


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
  """``np.savez`` through a temporary file and a rename.

  A reader (or a second process building the same cache) sees either no file
  or a complete one, never a half-written archive.
  """
  with _io.atomic_open(path) as f:
    np.savez(f, **arrays)


# The fetcher's command line, which every "not fetched" error names.
FETCH_COMMAND = "python -m jaxsoftmax.data.fetch"


class _Source(NamedTuple):
  """Where a fetched dataset lives in the cache and how to fetch it.

  The IDX datasets also say what their files must hold: ``counts`` examples
  in the train and test split, images of ``image_shape`` (uint8) and uint8
  labels below ``num_classes``.
  """

  title: str
  subdir: str
  files: tuple[str, ...]
  make_target: str
  fetch_name: str
  counts: tuple[int, ...] = ()
  image_shape: tuple[int, ...] = ()
  num_classes: int = 0

  def directory(self) -> Path:
    return data_dir() / self.subdir

  def fetch_command(self) -> str:
    return f"`make {self.make_target}` (or `{FETCH_COMMAND} {self.fetch_name}`)"

  def require(self) -> Path:
    """The dataset's directory; FileNotFoundError naming the fetch command."""
    directory = self.directory()
    missing = [f for f in self.files if not (directory / f).is_file()]
    if missing:
      raise FileNotFoundError(
          f"{self.title} is not in {directory} (missing {', '.join(missing)})."
          f" Fetch it once with {self.fetch_command()}, or set"
          " JAXSOFTMAX_DATA to a directory that holds it."
      )
    return directory

  def damaged(self, path: Path, problem: str) -> ValueError:
    """The error for a damaged file of this dataset: what, and the fix."""
    return ValueError(
        f"{path}: {problem}. The file is damaged: delete it and fetch"
        f" {self.title} again with {self.fetch_command()}."
    )


# Order: train images, train labels, test images, test labels.
MNIST = _Source(
    "MNIST",
    "mnist",
    (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ),
    "data",
    "mnist",
    counts=(60_000, 10_000),
    image_shape=(28, 28),
    num_classes=10,
)
FASHION_MNIST = _Source(
    "Fashion-MNIST",
    "fashion-mnist",
    tuple(f + ".gz" for f in MNIST.files),
    "data-fashion",
    "fashion-mnist",
    counts=(60_000, 10_000),
    image_shape=(28, 28),
    num_classes=10,
)
GCIDE = _Source(
    "The GCIDE dictionary (text corpus)",
    "gcide",
    ("gcide.dict.dz", "gcide.index"),
    "data-text",
    "text",
)
