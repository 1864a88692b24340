"""Datasets as NumPy arrays, read from a local cache; nothing downloads here.

scikit-learn's digits ship with scikit-learn. MNIST, Fashion-MNIST and the
GCIDE text corpus live in the cache directory :func:`data_dir` once fetched
(``make data``, ``make data-fashion``, ``make data-text``, which run
``python -m jaxsoftmax.data.fetch``); a loader whose files are missing raises
``FileNotFoundError`` naming that command.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxsoftmax import _io
from jaxsoftmax import _validation as v


class Dataset(NamedTuple):
  """A train/test split: features ``[n, d]`` float32, labels ``[n]`` int32."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray

  @property
  def num_classes(self) -> int:
    return int(max(self.y_train.max(), self.y_test.max())) + 1

  def standardized(self) -> Dataset:
    """The same split, features standardized by the training rows' statistics.

    See :func:`standardize`.
    """
    x_train, x_test = standardize(self.x_train, self.x_test)
    return self._replace(x_train=x_train, x_test=x_test)


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
  """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes).

  The dataset ships inside scikit-learn, so this works offline. It has no
  published split, so a stratified one is drawn with a fixed ``seed``: the
  same split on every machine. Pixels (0..16) are scaled to [0, 1].

  Args:
    test_fraction: share of each class held out for testing, in (0, 1).
    seed: seed of the split.

  Returns:
    A :class:`Dataset` with ``x`` of shape ``[n, 64]``.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must lie in (0, 1); got {test_fraction}.")
  try:
    from sklearn import datasets
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "load_digits needs scikit-learn: pip install 'jaxsoftmax[dev]' or"
        " pip install scikit-learn."
    ) from e
  raw = datasets.load_digits()
  x = (raw.data / 16.0).astype(np.float32)
  y = raw.target.astype(np.int32)
  rng = np.random.default_rng(seed)
  test = np.zeros(len(y), bool)
  for c in np.unique(y):
    idx = rng.permutation(np.flatnonzero(y == c))
    test[idx[: int(round(test_fraction * len(idx)))]] = True
  return Dataset(x[~test], y[~test], x[test], y[test])


def standardize(
    x_train: np.ndarray, *others: np.ndarray, eps: float = 1e-6
) -> tuple[np.ndarray, ...]:
  """Centers and scales features with the *training* mean and std.

  Constant features (std below ``eps``, e.g. always-blank pixels) are only
  centered, not divided by ~0.

  Returns:
    ``(x_train, *others)`` standardized, float32.
  """
  mean = x_train.mean(axis=0)
  std = x_train.std(axis=0)
  std = np.where(std < eps, 1.0, std)
  return tuple(((a - mean) / std).astype(np.float32) for a in (x_train, *others))


# ----------------------------------------------------------------------------
# The cache directory and atomic writes.
# ----------------------------------------------------------------------------


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
    return (f"`make {self.make_target}` (or `python -m jaxsoftmax.data.fetch"
            f" {self.fetch_name}`)")

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


# ----------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST).
# ----------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------
# Mini-batches.
# ----------------------------------------------------------------------------


def batches(
    key: jax.Array,
    x: Any,
    y: Any,
    batch_size: int,
    *,
    drop_remainder: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """One epoch of shuffled mini-batches, as NumPy arrays.

  The order is ``jax.random.permutation(key, n)``, drawn once and moved to
  the host once, so the same key gives the same batches and every row
  appears exactly once per epoch (the last ``n mod batch_size`` rows are
  skipped when ``drop_remainder``, which keeps every batch the same shape,
  so a jitted step compiles once). Split the key per epoch for a new order.

  Arguments are checked when ``batches`` is called, not at the first
  ``next``.

  Args:
    key: a ``jax.random`` key.
    x: ``[n, ...]`` features (any array-like).
    y: ``[n, ...]`` labels or targets.
    batch_size: rows per batch, a positive int (at most ``n`` when
      ``drop_remainder``).
    drop_remainder: skip the final short batch.

  Returns:
    An iterator of ``(x_batch, y_batch)``, ``[batch_size, ...]`` each (the
    last one shorter when ``drop_remainder=False``).

  Examples:
    >>> import jax, numpy as np
    >>> from jaxsoftmax.data import batches
    >>> x, y = np.arange(10.0)[:, None], np.arange(10)
    >>> [len(yb) for _, yb in batches(jax.random.key(0), x, y, 4)]
    [4, 4]
    >>> [len(yb) for _, yb in batches(jax.random.key(0), x, y, 4, drop_remainder=False)]
    [4, 4, 2]
  """
  v.check_prng_key("key", key)
  x = np.asarray(x)
  y = np.asarray(y)
  v.check_min_rank("x", x, 1, "[n, ...]")
  v.check_min_rank("y", y, 1, "[n, ...]")
  if len(x) != len(y):
    raise ValueError(
        f"x and y must have the same number of rows; got x of shape {x.shape}"
        f" and y of shape {y.shape}."
    )
  v.check_positive_int("batch_size", batch_size)
  n = len(x)
  if drop_remainder and batch_size > n:
    raise ValueError(
        f"batch_size must be <= the number of rows ({n}) when drop_remainder"
        f" is set, or no batch would be produced; got {batch_size}."
    )
  order = np.asarray(jax.random.permutation(key, n))
  stop = n - n % batch_size if drop_remainder else n

  def generate():
    for start in range(0, stop, batch_size):
      idx = order[start : start + batch_size]
      yield x[idx], y[idx]

  return generate()


# ----------------------------------------------------------------------------
# Text: next-word prediction on the GCIDE dictionary's definitions.
# ----------------------------------------------------------------------------

UNKNOWN = "<unk>"
BOUNDARY = "<s>"

# Words are lowercase runs of letters with inner apostrophes ("one's"). A run
# of . ! ? not followed by a letter ends a sentence ("e.g." splits once,
# "2.5" not at all), and so does a blank line (senses, quotations); NUL ends a
# document. One findall over the whole text does all three.
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*|[.!?]+(?!\w)|\n[ \t]*\n|\x00")
_DOCUMENT_END = "\x00"


class TextCorpus(NamedTuple):
  """Next-word prediction examples with their vocabulary.

  ``x`` rows hold the ids of the ``context`` previous words (oldest first);
  ``y`` is the id of the word that follows. Ids index ``vocab``: id 0 is
  ``<unk>`` (any word outside the vocabulary), then the training words and
  the boundary token ``<s>`` by descending training frequency. ``<s>``
  fills the context before a sentence's first word and is the target after
  its last word. ``counts[k]`` is how often id ``k`` is a training target
  (``np.bincount(y_train)``), for unigram samplers and Huffman trees.
  """

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  vocab: list[str]
  counts: np.ndarray

  @property
  def num_classes(self) -> int:
    return len(self.vocab)

  @property
  def boundary_id(self) -> int:
    """The id of ``<s>``, which pads contexts and ends each sentence."""
    return self.vocab.index(BOUNDARY)


class _TokenStream(NamedTuple):
  """A tokenized corpus before the split.

  ``ids`` [T] index ``words`` (every distinct word, most frequent first);
  ``sentence_lengths`` [S] cut ``ids`` into sentences and
  ``doc_sentences`` [D] cut the sentences into documents.
  """

  words: list[str]
  ids: np.ndarray
  sentence_lengths: np.ndarray
  doc_sentences: np.ndarray


def _tokenize(documents: Sequence[str]) -> _TokenStream:
  """Lowercase words, cut into sentences, sentences grouped by document."""
  text = "".join(
      d.lower().replace(_DOCUMENT_END, " ") + _DOCUMENT_END for d in documents
  )
  tokens = _TOKEN.findall(text)
  # Distinct tokens in order of first occurrence, then a code per token: both
  # loops run in C, several times faster than a Python loop over 4M words.
  distinct = list(dict.fromkeys(tokens))
  code = {t: i for i, t in enumerate(distinct)}
  codes = np.fromiter(map(code.__getitem__, tokens), np.int64, len(tokens))
  # 0: word, 1: sentence end, 2: document end.
  kind_of = np.array(
      [0 if t[0].isalpha() else 1 + (t == _DOCUMENT_END) for t in distinct],
      np.int64,
  )
  kind = kind_of[codes]
  is_word = kind == 0
  breaks = np.flatnonzero(~is_word)
  lengths = np.diff(np.cumsum(is_word)[breaks], prepend=0)
  is_end = kind[breaks] == 2
  doc_of_break = np.cumsum(is_end) - is_end
  nonempty = lengths > 0

  word_codes = np.flatnonzero(kind_of == 0)
  word_of_code = np.zeros(len(distinct), np.int64)
  word_of_code[word_codes] = np.arange(len(word_codes))
  ids = word_of_code[codes[is_word]]
  # Renumber by descending frequency (ties: first occurrence), so the stored
  # stream already has the order the vocabulary is built in.
  order = np.argsort(-np.bincount(ids, minlength=len(word_codes)), kind="stable")
  rank = np.empty(len(order), np.int32)
  rank[order] = np.arange(len(order), dtype=np.int32)
  doc_sentences = np.bincount(doc_of_break[nonempty], minlength=len(documents))
  return _TokenStream(
      [distinct[word_codes[i]] for i in order],
      rank[ids],
      lengths[nonempty].astype(np.int32),
      doc_sentences.astype(np.int32),
  )


def _examples(
    ids: np.ndarray, lengths: np.ndarray, boundary: int, context: int
) -> tuple[np.ndarray, np.ndarray]:
  """``(x [n, context], y [n])``: each sentence of ``ids``, then ``boundary``."""
  spans = lengths.astype(np.int64) + 1
  ends = np.cumsum(spans)
  y = np.full(int(ends[-1]) if len(ends) else 0, boundary, np.int32)
  is_word = np.ones(len(y), bool)
  is_word[ends - 1] = False
  y[is_word] = ids
  position = np.arange(len(y)) - np.repeat(ends - spans, spans)
  x = np.full((len(y), context), boundary, np.int32)
  for back in range(1, context + 1):
    # A context never reaches into the previous sentence: slots before the
    # sentence start keep the boundary id.
    x[back:, context - back] = np.where(position[back:] >= back, y[:-back], boundary)
  return x, y


def _check_corpus_options(
    vocab_size: Any,
    context: Any,
    test_fraction: Any,
    max_tokens: Any,
    block_size: Any,
) -> None:
  """The options of :func:`build_text_corpus`, checked before any work."""
  if vocab_size is not None:
    v.check_positive_int("vocab_size", vocab_size)
    if vocab_size < 2:
      raise ValueError(
          f"vocab_size must be >= 2 (it counts {UNKNOWN} and {BOUNDARY}) or"
          f" None; got {vocab_size}."
      )
  v.check_positive_int("context", context)
  v.check_positive_int("block_size", block_size)
  if max_tokens is not None:
    v.check_positive_int("max_tokens", max_tokens)
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must lie in (0, 1); got {test_fraction}.")


def _corpus_from_stream(
    stream: _TokenStream,
    *,
    vocab_size: int | None,
    context: int,
    test_fraction: float,
    max_tokens: int | None,
    seed: int,
    block_size: int,
) -> TextCorpus:
  """Splits ``stream`` by blocks of documents and builds the examples."""
  num_docs = len(stream.doc_sentences)
  doc_of_sentence = np.repeat(np.arange(num_docs), stream.doc_sentences)
  doc_tokens = np.bincount(
      doc_of_sentence, weights=stream.sentence_lengths, minlength=num_docs
  ).astype(np.int64)
  block_of_doc = np.arange(num_docs) // block_size
  block_tokens = np.bincount(block_of_doc, weights=doc_tokens).astype(np.int64)
  # Whole blocks of neighbouring documents go to one side, so related entries
  # (a word's senses, its derived forms) never straddle the split.
  order = np.random.default_rng(seed).permutation(len(block_tokens))
  if max_tokens is not None:
    within = np.cumsum(block_tokens[order]) <= max_tokens
    order = order[: max(1, int(within.sum()))]
  cumulative = np.cumsum(block_tokens[order])
  num_test = int(np.searchsorted(cumulative, test_fraction * cumulative[-1])) + 1
  if num_test >= len(order):
    raise ValueError(
        f"test_fraction={test_fraction} leaves no training data: the corpus"
        f" has {len(order)} block(s) of {block_size} documents to split;"
        " lower block_size or test_fraction, or raise max_tokens."
    )
  side_of_block = np.full(len(block_tokens), -1)
  side_of_block[order[num_test:]] = 0
  side_of_block[order[:num_test]] = 1
  side_of_sentence = side_of_block[block_of_doc[doc_of_sentence]]
  side_of_token = np.repeat(side_of_sentence, stream.sentence_lengths)
  train_ids = stream.ids[side_of_token == 0]
  train_lengths = stream.sentence_lengths[side_of_sentence == 0]
  if not len(train_ids) or not np.any(side_of_token == 1):
    raise ValueError(
        f"the corpus ({len(stream.ids)} words in {num_docs} documents) is too"
        " small to give both a training and a test side any words."
    )

  train_counts = np.bincount(train_ids, minlength=len(stream.words))
  by_count = np.argsort(-train_counts, kind="stable")
  kept = by_count[train_counts[by_count] > 0]
  if vocab_size is not None:
    kept = kept[: vocab_size - 2]
  # <s> is ranked among the words by its own count (one per sentence), so
  # counts[1:] is non-increasing, as log-uniform samplers assume.
  first = int(np.count_nonzero(train_counts[kept] > len(train_lengths)))
  new_ids = np.arange(1, len(kept) + 1, dtype=np.int32)
  new_ids[first:] += 1
  remap = np.zeros(len(stream.words), np.int32)
  remap[kept] = new_ids
  boundary = first + 1
  vocab = [UNKNOWN, *(stream.words[i] for i in kept[:first]), BOUNDARY]
  vocab += [stream.words[i] for i in kept[first:]]

  x_train, y_train = _examples(remap[train_ids], train_lengths, boundary, context)
  x_test, y_test = _examples(
      remap[stream.ids[side_of_token == 1]],
      stream.sentence_lengths[side_of_sentence == 1],
      boundary,
      context,
  )
  counts = np.bincount(y_train, minlength=len(vocab)).astype(np.int64)
  return TextCorpus(x_train, y_train, x_test, y_test, vocab, counts)


def build_text_corpus(
    documents: Sequence[str],
    *,
    vocab_size: int | None = 10_000,
    context: int = 4,
    test_fraction: float = 0.05,
    max_tokens: int | None = None,
    seed: int = 0,
    block_size: int = 100,
) -> TextCorpus:
  """Next-word prediction examples from a list of documents.

  Text is lowercased and cut into words with the regex
  ``[a-z]+(?:'[a-z]+)*`` (so "one's" is one word and digits are dropped),
  and into sentences at ``.``, ``!``, ``?`` and blank lines. A context
  never crosses a sentence boundary: missing history is filled with
  ``<s>``, which is also the target after each sentence's last word.

  The split is by contiguous blocks of ``block_size`` documents: a seeded
  random choice of blocks holding ``test_fraction`` of the words goes to the
  test side, so no sentence or document is shared between the sides. The vocabulary is
  built from the training side only: its ``vocab_size - 2`` most frequent
  words plus ``<unk>`` and ``<s>``; everything else (including words seen
  only in the test side) maps to ``<unk>``.

  Args:
    documents: the texts, in corpus order (neighbours are kept together).
    vocab_size: number of classes :math:`K`, ``<unk>`` and ``<s>`` included
      (at least 2), or ``None`` for every training word.
    context: words of history per example.
    test_fraction: share of tokens held out, in (0, 1).
    max_tokens: use a seeded random subset of whole blocks holding at most
      this many words (at least one block), or ``None`` for everything.
    seed: seed of the block choice.
    block_size: documents per block.

  Returns:
    A :class:`TextCorpus`: ``x_train`` ``[n, context]`` and ``y_train``
    ``[n]`` int32 (likewise for test), ``vocab`` of length :math:`K`,
    ``counts`` ``[K]`` int64.

  Examples:
    >>> from jaxsoftmax.data import build_text_corpus
    >>> docs = ["The cat sat. The dog sat!", "A dog ran.", "The cat ran."]
    >>> corpus = build_text_corpus(docs, context=2, test_fraction=0.2, block_size=1)
    >>> corpus.vocab
    ['<unk>', '<s>', 'the', 'sat', 'dog', 'cat', 'ran', 'a']
    >>> [[corpus.vocab[i] for i in row] for row in corpus.x_train[:3]]
    [['<s>', '<s>'], ['<s>', 'the'], ['the', 'cat']]
    >>> [corpus.vocab[i] for i in corpus.y_train[:4]]
    ['the', 'cat', 'sat', '<s>']
    >>> corpus.counts
    array([0, 3, 2, 2, 2, 1, 1, 1])

  References:
    Y. Bengio, R. Ducharme, P. Vincent, C. Jauvin, "A neural probabilistic
    language model", JMLR 3, 2003 (n-gram contexts for next-word softmax).
  """
  if isinstance(documents, str):
    raise TypeError(
        "documents must be a sequence of str (one text per document); got a"
        " single str."
    )
  documents = list(documents)
  bad = [type(d).__name__ for d in documents if not isinstance(d, str)]
  if bad:
    raise TypeError(
        f"documents must be a sequence of str; got {len(bad)} item(s) of type"
        f" {sorted(set(bad))}."
    )
  if not documents:
    raise ValueError("documents must hold at least one text; got none.")
  _check_corpus_options(vocab_size, context, test_fraction, max_tokens, block_size)
  return _corpus_from_stream(
      _tokenize(documents),
      vocab_size=vocab_size,
      context=context,
      test_fraction=test_fraction,
      max_tokens=max_tokens,
      seed=seed,
      block_size=block_size,
  )


# dictd's index stores offsets and lengths in base 64 with this alphabet.
_DICTD_DIGITS = {
    c: i
    for i, c in enumerate(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    )
}


def _dictd_number(digits: str) -> int:
  value = 0
  for c in digits:
    value = 64 * value + _DICTD_DIGITS[c]
  return value


def _gcide_entries(dictionary: bytes, index: str) -> list[str]:
  """The dictionary's entries in file order, from the dictd index.

  Several headwords share one entry (same offset), and the ``00-database-*``
  pseudo-entries hold the licence text, not definitions: both are skipped.
  """
  spans = set()
  for line in index.splitlines():
    headword, offset, length = line.split("\t")
    if not headword.startswith("00-"):
      spans.add((_dictd_number(offset), _dictd_number(length)))
  # The dictionary is UTF-8 but for a few stray Windows-1252 bytes.
  return [
      dictionary[o : o + n].decode("utf-8", "replace") for o, n in sorted(spans)
  ]


# GCIDE markup (Webster 1913 conventions as converted for dictd):
#   Head \Head"word\ (pron), n. [etymology] -- the entry's first line;
#   [a^] ['e] [imac] ... accented letters; [Obs.] [1913 Webster] labels and
#   sources; {Word} cross-references; --Shak. quotation authors;
#   -- Col*lu"sive*ly, adv. run-on derived forms with syllable marks.
_NAMED_LETTERS = {
    "imac": "i", "aum": "a", "eth": "th", "thorn": "th", "add": "a",
    "asl": "a", "als": "a", "udd": "u", "oo^": "oo", "yogh": "y", "nbsp": " ",
}  # fmt: skip
_LETTER = re.compile(
    r"\[(?:['`\"=~^.,*-]?([A-Za-z]{1,2})\^?|("
    + "|".join(re.escape(k) for k in _NAMED_LETTERS)
    + r"))\]"
)
_POS = r"(?:(?:n|a|adj|adv|v|t|i|pl|p|pr|imp|prep|conj|interj|pron|prop|sing)\.|&)"
_HEADER = re.compile(rf"\s*[^\n]*\\[^\[\n]*(?:\s*{_POS})*")
# "-- Collusively, adv." and "See Water, v. t.": a word's part of speech.
_RUN_ON = re.compile(rf"--[ \t\n]*(?:[A-Z][^\s,]*,)?(?:[ \t\n]*{_POS})+")
_CROSS_REFERENCE_POS = re.compile(rf",(?:[ \t\n]*{_POS})+")
# Written so the scan starts at the rare mark, not at every letter (5x faster).
_SYLLABLE_MARK = re.compile(r"[*\"`](?<=[A-Za-z][*\"`])[*\"`]*(?=[A-Za-z])")
_BRACKETED = re.compile(r"\[[^\[\]\x00]*\]")
_AUTHOR = re.compile(r"--(?=\S)[^\n\x00]*")
_LABEL = re.compile(r"\n[ \t]*(?:Syn|Note|Usage|Ant|Antonym)[ \t]*:")
# (a), (iv), (Bot.), (Mar. Law), (Zool.): sense markers and subject labels.
_PAREN_LABEL = re.compile(
    r"\((?:[a-z]|[ivx]+|(?:[A-Z][A-Za-z\"']*\.?[ \t]*(?:&[ \t]*)?)+)\)"
)
_DOCUMENT_SEPARATOR = "\n\x00\n"


def _clean_gcide(entries: Sequence[str]) -> list[str]:
  """Entries reduced to their definitions, usage notes and quotations.

  Drops the headword line (spelling, pronunciation, part of speech), every
  bracketed span (etymologies, inflections, [Obs.]-style labels, source
  tags), quotation authors, run-on derived forms and subject labels; keeps
  cross-referenced words without their braces and turns accent codes into
  plain letters.
  """
  # Accents first: a pronunciation's "[a^]" would otherwise end the header
  # match early. Then one pass of each pattern over the joined text, several
  # times faster than per-entry substitution; the separator holds a NUL that
  # no pattern consumes, so entries cannot merge.
  letter = lambda m: m.group(1) or _NAMED_LETTERS[m.group(2)]  # noqa: E731
  text = _DOCUMENT_SEPARATOR.join(
      _HEADER.sub("", _LETTER.sub(letter, e), count=1) for e in entries
  )
  while True:  # Innermost brackets first, so nested spans go too.
    text, n = _BRACKETED.subn(" ", text)
    if not n:
      break
  text = _SYLLABLE_MARK.sub("", text)
  text = _RUN_ON.sub(" ", text)
  text = _CROSS_REFERENCE_POS.sub(",", text)
  text = _AUTHOR.sub(" ", text)
  text = _LABEL.sub("\n", text)
  text = _PAREN_LABEL.sub(" ", text)
  text = text.replace("{", "").replace("}", "")
  return text.split(_DOCUMENT_SEPARATOR)


# Bump the version when the cleaning or tokenizing rules change: the old
# cache is then ignored and rebuilt.
_TEXT_CACHE = "tokens-v1.npz"


def _gcide_stream() -> _TokenStream:
  """The tokenized GCIDE corpus, built once and cached as ``.npz``."""
  directory = GCIDE.require()
  cache = directory / _TEXT_CACHE
  if cache.is_file():
    try:
      with open(cache, "rb") as f, np.load(f) as z:
        return _TokenStream(
            z["words"].tobytes().decode().split("\n"),
            z["ids"],
            z["sentence_lengths"],
            z["doc_sentences"],
        )
    # Derived from the dictionary: a damaged cache is rebuilt.
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile):
      pass
  dictionary_path, index_path = (directory / f for f in GCIDE.files)
  try:
    dictionary = gzip.decompress(dictionary_path.read_bytes())
  except (OSError, EOFError, zlib.error) as error:
    raise GCIDE.damaged(
        dictionary_path, f"not a readable gzip stream ({error})"
    ) from error
  try:
    index = index_path.read_text(encoding="utf-8")
    entries = _gcide_entries(dictionary, index)
  except (UnicodeDecodeError, ValueError, KeyError) as error:
    raise GCIDE.damaged(
        index_path, f"not a dictd index of {dictionary_path.name} ({error!r})"
    ) from error
  stream = _tokenize(_clean_gcide(entries))
  _atomic_savez(
      cache,
      words=np.frombuffer("\n".join(stream.words).encode(), np.uint8),
      ids=stream.ids,
      sentence_lengths=stream.sentence_lengths,
      doc_sentences=stream.doc_sentences,
  )
  return stream


def load_text_corpus(
    *,
    vocab_size: int | None = 10_000,
    context: int = 4,
    test_fraction: float = 0.05,
    max_tokens: int | None = None,
    seed: int = 0,
    block_size: int = 100,
) -> TextCorpus:
  """Next-word prediction on the definitions of the GCIDE English dictionary.

  The Collaborative International Dictionary of English (Webster's 1913
  plus WordNet, GPL) from Debian's ``dict-gcide``, fetched once by
  ``make data-text`` (``python -m jaxsoftmax.data.fetch text``). Each of its
  126,236 entries is one document: markup, headword lines, etymologies and
  quotation authors are stripped, leaving definitions, usage notes and
  quotations: 3.56M words in 337k sentences, 112,530 distinct words. The
  tokenized stream is cached as ``.npz`` beside the dictionary (built by
  the fetch, in about 10 s), so a load takes a fraction of a second.
  Splitting, vocabulary and examples follow :func:`build_text_corpus`;
  blocks are ``block_size`` neighbouring entries (alphabetical neighbours,
  such as a word's senses and derived forms).

  With the defaults there are 3.70M training and 197k test examples; at
  ``vocab_size=10_000`` about 10% of the targets are ``<unk>``, and
  ``vocab_size=None`` gives :math:`K` = 109,594 (every training word), the
  very large :math:`K` the sampled, hierarchical and sharded softmax layers
  are for.

  Args:
    vocab_size: number of classes :math:`K` (``<unk>`` and ``<s>``
      included), or ``None`` for every training word.
    context: words of history per example.
    test_fraction: share of tokens held out, in (0, 1).
    max_tokens: a seeded random subset of whole blocks holding at most this
      many words, for quick runs; ``None`` for the whole corpus.
    seed: seed of the block choice.
    block_size: entries per block.

  Returns:
    A :class:`TextCorpus`.

  Raises:
    FileNotFoundError: the dictionary is not in the cache; the message gives
      the command that fetches it.
    ValueError: a file of the dictionary is damaged; the message names it
      and the command that fetches it again.

  Examples:
    >>> from jaxsoftmax.data import load_text_corpus
    >>> corpus = load_text_corpus(vocab_size=10_000)  # doctest: +SKIP
    >>> corpus.x_train.shape[1], corpus.num_classes  # doctest: +SKIP
    (4, 10000)

  References:
    GNU Collaborative International Dictionary of English, version 0.48
    (https://gcide.gnu.org.ua/); Debian package ``dict-gcide``.
  """
  _check_corpus_options(vocab_size, context, test_fraction, max_tokens, block_size)
  return _corpus_from_stream(
      _gcide_stream(),
      vocab_size=vocab_size,
      context=context,
      test_fraction=test_fraction,
      max_tokens=max_tokens,
      seed=seed,
      block_size=block_size,
  )
