"""IDX files (the MNIST format) and the MNIST and Fashion-MNIST loaders."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from jaxsoftmax.data._arrays import Dataset
from jaxsoftmax.data._cache import FASHION_MNIST, MNIST, _atomic_savez, _Source


# The third magic byte names the element type; multi-byte types are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (the MNIST format), raw or gzip-compressed.

  The header is the magic number ``0x00 0x00 <type> <ndim>`` followed by
  ``ndim`` big-endian uint32 dimensions; the data follow in C order. The
  file is rejected unless the header is well formed and the data hold
  exactly ``prod(dims)`` elements, so a truncated download cannot pass as a
  smaller dataset. Compression is detected from the gzip magic bytes, not
  the file name.

  Args:
    path: the file.

  Returns:
    An array of shape ``dims`` in native byte order (uint8 for the MNIST
    images and labels), writable.

  Raises:
    ValueError: naming the file and what is wrong with it (not gzip-readable,
      bad magic number, unknown type code, short header, or a data length
      that disagrees with the dimensions).

  Examples:
    >>> import os, tempfile
    >>> from jaxsoftmax.data import read_idx
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny-idx1-ubyte")
    >>> with open(path, "wb") as f:
    ...   _ = f.write(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 8, 9]))
    >>> read_idx(path)
    array([7, 8, 9], dtype=uint8)

  References:
    Y. LeCun, C. Cortes, C. Burges, "The MNIST database of handwritten
    digits", file format section (http://yann.lecun.com/exdb/mnist/).
  """
  path = Path(path)
  raw = path.read_bytes()
  if raw[:2] == b"\x1f\x8b":
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
      raise ValueError(f"{path}: not a readable gzip stream ({e}).") from e
  if len(raw) < 4:
    raise ValueError(
        f"{path}: {len(raw)} bytes, too short for the 4-byte IDX magic number."
    )
  if raw[:2] != b"\x00\x00":
    raise ValueError(
        f"{path}: not an IDX file; its magic number {raw[:4].hex()} should"
        " start with two zero bytes (0x0000 <type> <ndim>)."
    )
  code, ndim = raw[2], raw[3]
  if code not in _IDX_DTYPES:
    raise ValueError(
        f"{path}: unknown IDX type code 0x{code:02x}; expected one of"
        f" {[f'0x{c:02x}' for c in _IDX_DTYPES]}."
    )
  if ndim == 0:
    raise ValueError(f"{path}: IDX header declares 0 dimensions; expected >= 1.")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(
        f"{path}: truncated header; {ndim} dimensions need {header} bytes, the"
        f" file holds {len(raw)}."
    )
  dims = struct.unpack(f">{ndim}I", raw[4:header])
  dtype = _IDX_DTYPES[code]
  expected = math.prod(dims) * dtype.itemsize
  found = len(raw) - header
  if found != expected:
    what = "truncated" if found < expected else "trailing bytes"
    raise ValueError(
        f"{path}: dimensions {dims} of {dtype.name} need {expected} data"
        f" bytes, the file holds {found} ({what})."
    )
  return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(
      dtype.newbyteorder("=")
  )


_SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _idx_split(source: _Source) -> tuple[np.ndarray, ...]:
  """``(x_train, y_train, x_test, y_test)`` as uint8, images flattened."""
  directory = source.require()
  cache = directory / "arrays-v1.npz"
  # Decompressing the gzip'd Fashion files takes most of a second; the
  # uncompressed .npz loads in a few tens of milliseconds. Raw IDX files are
  # read as fast as the .npz, so MNIST is not duplicated on disk.
  compressed = any(f.endswith(".gz") for f in source.files)
  if compressed and cache.is_file():
    try:
      # Our own handle: np.load leaks its file when the archive is damaged.
      with open(cache, "rb") as f, np.load(f) as z:
        arrays = [z[k] for k in _SPLIT_KEYS]
      for i, count in enumerate(source.counts):
        images = arrays[2 * i].reshape(-1, *source.image_shape)
        _check_split(source, (cache, cache), images, arrays[2 * i + 1], count)
      return tuple(arrays)
    # The cache is derived from the IDX files: a damaged one is rebuilt.
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile):
      pass
  arrays = []
  for i, count in enumerate(source.counts):
    paths = (directory / source.files[2 * i], directory / source.files[2 * i + 1])
    images, labels = (_read_idx_of(source, path) for path in paths)
    _check_split(source, paths, images, labels, count)
    arrays += [images.reshape(len(images), -1), labels]
  if compressed:
    try:
      _atomic_savez(cache, **dict(zip(_SPLIT_KEYS, arrays)))
    except OSError:
      pass  # A read-only cache still loads, only more slowly.
  return tuple(arrays)


def _read_idx_of(source: _Source, path: Path) -> np.ndarray:
  """:func:`read_idx`, its errors saying how to fetch ``source`` again."""
  try:
    return read_idx(path)
  except ValueError as error:
    problem = str(error).removeprefix(f"{path}: ").rstrip(".")
    raise source.damaged(path, problem) from error


def _check_split(
    source: _Source,
    paths: tuple[Path, Path],
    images: np.ndarray,
    labels: np.ndarray,
    count: int,
) -> None:
  """Raises unless ``images``/``labels`` are a split of ``source``.

  That is ``count`` uint8 images of ``source.image_shape`` and as many
  uint8 labels below ``source.num_classes``; ``paths`` name the images'
  and the labels' file.
  """
  shape = (count, *source.image_shape)
  if images.dtype != np.uint8 or images.shape != shape:
    raise source.damaged(
        paths[0],
        f"images of dtype {images.dtype} and shape {images.shape}; a"
        f" {source.title} split holds uint8 images of shape {shape}",
    )
  if labels.dtype != np.uint8 or labels.shape != (count,):
    raise source.damaged(
        paths[1],
        f"labels of dtype {labels.dtype} and shape {labels.shape}; expected"
        f" uint8 of shape ({count},), one per image in {paths[0].name}",
    )
  bad = np.flatnonzero(labels >= source.num_classes)
  if bad.size:
    raise source.damaged(
        paths[1],
        f"label {labels[bad[0]]} at index {bad[0]} ({bad.size} labels out of"
        f" range); {source.title} has classes 0..{source.num_classes - 1}",
    )


def _idx_dataset(source: _Source, normalize: bool) -> Dataset:
  x_train, y_train, x_test, y_test = _idx_split(source)
  scale = np.float32(1 / 255 if normalize else 1)
  return Dataset(
      x_train.astype(np.float32) * scale,
      y_train.astype(np.int32),
      x_test.astype(np.float32) * scale,
      y_test.astype(np.int32),
  )


def load_mnist(*, normalize: bool = True) -> Dataset:
  """MNIST handwritten digits: the published 60000 / 10000 split.

  Read from ``data_dir() / "mnist"``, filled once by ``make data``
  (``python -m jaxsoftmax.data.fetch mnist``, which checks the SHA-256 of each
  file). 28x28 images are flattened row by row.

  Args:
    normalize: scale pixels from 0..255 to [0, 1] (else float32 0..255).

  Returns:
    A :class:`Dataset`: ``x_train`` ``[60000, 784]`` and ``x_test``
    ``[10000, 784]`` float32, labels int32 in 0..9.

  Raises:
    FileNotFoundError: the files are not in the cache; the message gives the
      command that fetches them.
    ValueError: a file is damaged (not IDX, truncated, or not 60000 / 10000
      uint8 28x28 images and labels 0..9); the message names the file and
      the command that fetches it again.

  Examples:
    >>> from jaxsoftmax.data import load_mnist
    >>> data = load_mnist()  # doctest: +SKIP
    >>> data.x_train.shape, data.x_test.shape  # doctest: +SKIP
    ((60000, 784), (10000, 784))

  References:
    Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning
    applied to document recognition", Proc. IEEE 86(11), 1998.
  """
  return _idx_dataset(MNIST, normalize)


def load_fashion_mnist(*, normalize: bool = True) -> Dataset:
  """Fashion-MNIST (Zalando's clothing images): the published 60000 / 10000 split.

  A drop-in replacement for MNIST (same shapes, 10 classes: T-shirt/top,
  trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot),
  read from ``data_dir() / "fashion-mnist"``, filled once by
  ``make data-fashion`` (``python -m jaxsoftmax.data.fetch fashion-mnist``).
  The first load writes an uncompressed ``.npz`` beside the gzip'd IDX
  files, so later loads skip decompression.

  Args:
    normalize: scale pixels from 0..255 to [0, 1] (else float32 0..255).

  Returns:
    A :class:`Dataset`: ``x_train`` ``[60000, 784]`` and ``x_test``
    ``[10000, 784]`` float32, labels int32 in 0..9.

  Raises:
    FileNotFoundError: the files are not in the cache; the message gives the
      command that fetches them.
    ValueError: a file is damaged (not IDX, truncated, or not 60000 / 10000
      uint8 28x28 images and labels 0..9); the message names the file and
      the command that fetches it again.

  Examples:
    >>> from jaxsoftmax.data import load_fashion_mnist
    >>> data = load_fashion_mnist()  # doctest: +SKIP
    >>> data.num_classes  # doctest: +SKIP
    10

  References:
    H. Xiao, K. Rasul, R. Vollgraf, "Fashion-MNIST: a novel image dataset for
    benchmarking machine learning algorithms", arXiv:1708.07747, 2017.
  """
  return _idx_dataset(FASHION_MNIST, normalize)
