"""Fetched datasets: IDX reader, cache layout, batching, the text corpus.

Everything but the last section runs on synthetic files in a temporary cache
(no network, no fetched data). The last section checks the real MNIST,
Fashion-MNIST and GCIDE caches and skips when they have not been fetched
(`make test` fetches them first).
"""

import functools
import gzip
import hashlib
from pathlib import Path
import re
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsoftmax import data
from jaxsoftmax.data import _gcide
from jaxsoftmax.data import _idx
from jaxsoftmax.data import _text
from jaxsoftmax.data import fetch

# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------

_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
          np.float32: 0x0D, np.float64: 0x0E}  # fmt: skip


def _idx_bytes(a, *, code=None, dims=None):
  a = np.asarray(a)
  dims = a.shape if dims is None else dims
  code = _CODES[a.dtype.type] if code is None else code
  header = bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
  return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def _write(path, payload, *, gz=False):
  path.write_bytes(gzip.compress(payload) if gz else payload)
  return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
  """An empty dataset cache that data_dir() points at.

  The IDX datasets expect the split sizes of ``_fake_mnist`` here.
  """
  root = tmp_path / "cache"
  monkeypatch.setenv("JAXSOFTMAX_DATA", str(root))
  # Patched where the loaders look them up.
  for name in ("MNIST", "FASHION_MNIST"):
    monkeypatch.setattr(_idx, name, getattr(_idx, name)._replace(counts=(6, 4)))
  return root


def _fake_mnist(directory, source, n_train=6, n_test=4, *, gz=False):
  """Small random IDX files under the names ``source`` expects."""
  rng = np.random.default_rng(0)
  directory.mkdir(parents=True)
  arrays = []
  for n in (n_train, n_test):
    arrays += [
        rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n, dtype=np.uint8),
    ]
  for name, a in zip(source.files, arrays):
    _write(directory / name, _idx_bytes(a), gz=gz)
  return arrays


# ----------------------------------------------------------------------------
# read_idx.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "dtype, shape",
    [(np.uint8, (3, 4, 5)), (np.int8, (7,)), (np.int16, (2, 3)),
     (np.int32, (4, 1)), (np.float32, (2, 2, 2)), (np.float64, (3,))],
)  # fmt: skip
def test_read_idx_round_trip(tmp_path, dtype, shape, gz):
  """Pins values, shape and native-endian dtype for every IDX type, raw and gzip."""
  a = (np.arange(np.prod(shape)) * 37 - 50).astype(dtype).reshape(shape)
  path = _write(tmp_path / "a-idx", _idx_bytes(a), gz=gz)
  out = data.read_idx(path)
  assert out.dtype == np.dtype(dtype) and out.dtype.isnative
  assert out.shape == shape
  np.testing.assert_array_equal(out, a)
  assert out.flags.writeable


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
  """Pins a gzip'd file without .gz suffix and a raw file with one both read."""
  a = np.arange(6, dtype=np.uint8).reshape(2, 3)
  np.testing.assert_array_equal(
      data.read_idx(_write(tmp_path / "plain", _idx_bytes(a), gz=True)), a
  )
  np.testing.assert_array_equal(
      data.read_idx(_write(tmp_path / "raw.gz", _idx_bytes(a))), a
  )


@pytest.mark.parametrize(
    "payload, message",
    [
        (_idx_bytes(np.zeros((2, 3), np.uint8))[:-1], r"\(2, 3\).*6 data bytes.*holds 5 \(truncated\)"),
        (_idx_bytes(np.zeros((2, 3), np.uint8)) + b"\0", r"holds 7 \(trailing bytes\)"),
        (_idx_bytes(np.zeros(6, np.uint8), dims=(2, 4)), r"\(2, 4\) of uint8 need 8 data bytes"),
        (b"\x01\x00" + _idx_bytes(np.zeros(3, np.uint8))[2:], "not an IDX file; its magic number 01000801"),
        (_idx_bytes(np.zeros(3, np.uint8), code=0x07), "unknown IDX type code 0x07"),
        (bytes([0, 0, 8, 0]), "declares 0 dimensions"),
        (bytes([0, 0, 8, 3, 0, 0, 0, 2]), "truncated header; 3 dimensions need 16 bytes"),
        (b"\x00\x00", "too short for the 4-byte IDX magic"),
    ],
    ids=["truncated", "trailing", "wrong-dims", "magic", "type", "ndim0", "header", "tiny"],
)  # fmt: skip
def test_read_idx_rejects_corrupt_files(tmp_path, payload, message):
  """Pins a ValueError naming the file and what is wrong with it."""
  path = _write(tmp_path / "bad-idx3-ubyte", payload)
  with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
    data.read_idx(path)


def test_read_idx_rejects_truncated_gzip(tmp_path):
  """Pins a cut-off gzip stream -> ValueError naming the file, not EOFError."""
  packed = gzip.compress(_idx_bytes(np.arange(1000, dtype=np.uint8)))
  path = _write(tmp_path / "cut.gz", packed[: len(packed) // 2])
  with pytest.raises(ValueError, match=re.escape(str(path)) + ": not a readable gzip"):
    data.read_idx(path)


# ----------------------------------------------------------------------------
# The cache directory and the image loaders on synthetic files.
# ----------------------------------------------------------------------------


def test_data_dir_follows_environment(tmp_path, monkeypatch):
  """Pins $JAXSOFTMAX_DATA read at call time, else ~/.cache/jaxsoftmax."""
  monkeypatch.setenv("JAXSOFTMAX_DATA", str(tmp_path / "x"))
  assert data.data_dir() == tmp_path / "x"
  monkeypatch.delenv("JAXSOFTMAX_DATA")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert data.data_dir() == tmp_path / "home" / ".cache" / "jaxsoftmax"


@pytest.mark.parametrize(
    "load, target, fetch_name",
    [
        (data.load_mnist, "make data", "mnist"),
        (data.load_fashion_mnist, "make data-fashion", "fashion-mnist"),
        (data.load_text_corpus, "make data-text", "text"),
    ],
)
def test_missing_dataset_names_the_command(cache, load, target, fetch_name):
  """Pins FileNotFoundError with the directory, the make target and the fetch module."""
  with pytest.raises(FileNotFoundError) as info:
    load()
  message = str(info.value)
  assert str(cache) in message
  assert f"`{target}`" in message
  assert f"python -m jaxsoftmax.data.fetch {fetch_name}" in message


def test_load_mnist_from_idx_files(cache):
  """Pins [n, 784] float32 in [0, 1] (pixel / 255), int32 labels, row-major flattening."""
  x_tr, y_tr, x_te, y_te = _fake_mnist(cache / "mnist", data.MNIST)
  out = data.load_mnist()
  assert out.x_train.shape == (6, 784) and out.x_test.shape == (4, 784)
  assert out.x_train.dtype == out.x_test.dtype == np.float32
  assert out.y_train.dtype == out.y_test.dtype == np.int32
  np.testing.assert_allclose(out.x_train, x_tr.reshape(6, 784) / 255, rtol=1e-6)
  np.testing.assert_array_equal(out.y_test, y_te)
  raw = data.load_mnist(normalize=False)
  np.testing.assert_array_equal(raw.x_test, x_te.reshape(4, 784).astype(np.float32))
  assert not list((cache / "mnist").glob("*.npz"))  # raw IDX is not duplicated


def test_load_fashion_mnist_caches_decompressed_arrays(cache):
  """Pins gzip'd IDX read once into an .npz, and the cached load equal to the first."""
  x_tr, y_tr, _, _ = _fake_mnist(cache / "fashion-mnist", data.FASHION_MNIST, gz=True)
  first = data.load_fashion_mnist()
  assert (cache / "fashion-mnist" / "arrays-v1.npz").is_file()
  for name in data.FASHION_MNIST.files:  # the second load must not need them
    (cache / "fashion-mnist" / name).write_bytes(b"")
  second = data.load_fashion_mnist()
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(second.y_train, y_tr)
  assert not list((cache / "fashion-mnist").glob(".*tmp"))


def test_load_mnist_rejects_mismatched_images_and_labels(cache):
  """Pins a ValueError naming both files when label and image counts differ."""
  _fake_mnist(cache / "mnist", data.MNIST)
  _write(cache / "mnist" / data.MNIST.files[1], _idx_bytes(np.zeros(5, np.uint8)))
  with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: labels of .*"
                     r" shape \(5,\); expected uint8 of shape \(6,\), one per"
                     r" image in train-images-idx3-ubyte"):
    data.load_mnist()


# Each kind of corrupt content, as (file index in MNIST.files, payload, what
# the message must say). Every message names the file and the fetch command.
_rng = np.random.default_rng(5)
_TRAIN_IMAGES = _rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
CORRUPT = {
    "label out of range": (
        1, _idx_bytes(np.array([1, 2, 200, 3, 4, 5], np.uint8)),
        r"label 200 at index 2 \(1 labels out of range\); MNIST has classes"
        r" 0..9"),
    "negative label": (
        3, _idx_bytes(np.array([1, -1, 2, 3], np.int8)),
        r"labels of dtype int8 and shape \(4,\); expected uint8"),
    "20x20 images": (
        0, _idx_bytes(_rng.integers(0, 256, (6, 20, 20), dtype=np.uint8)),
        r"images of dtype uint8 and shape \(6, 20, 20\); a MNIST split holds"
        r" uint8 images of shape \(6, 28, 28\)"),
    "float32 images": (
        2, _idx_bytes(np.zeros((4, 28, 28), np.float32)),
        r"images of dtype float32 and shape \(4, 28, 28\)"),
    "too few images": (
        0, _idx_bytes(_TRAIN_IMAGES[:5]), r"shape \(5, 28, 28\); a MNIST split"
        r" holds uint8 images of shape \(6, 28, 28\)"),
    "flat images": (
        2, _idx_bytes(np.zeros((4, 784), np.uint8)), r"shape \(4, 784\)"),
    "truncated": (0, _idx_bytes(_TRAIN_IMAGES)[:-100], r"\(truncated\)"),
    "trailing bytes": (1, _idx_bytes(np.zeros(6, np.uint8)) + b"\0",
                       r"\(trailing bytes\)"),
    "not IDX": (3, b"<html>404 Not Found</html>", r"not an IDX file"),
    "empty": (1, b"", r"0 bytes, too short"),
}


@pytest.mark.parametrize("corrupt", list(CORRUPT))
def test_load_mnist_names_a_corrupt_file_and_the_fetch_command(cache, corrupt):
  """Pins a ValueError naming the damaged file, the problem and `make data`."""
  index, payload, problem = CORRUPT[corrupt]
  _fake_mnist(cache / "mnist", data.MNIST)
  path = _write(cache / "mnist" / data.MNIST.files[index], payload)
  with pytest.raises(ValueError, match=problem) as info:
    data.load_mnist()
  message = str(info.value)
  assert message.startswith(f"{path}: ")
  assert ("fetch MNIST again with `make data` (or `python -m"
          " jaxsoftmax.data.fetch mnist`)") in message


def test_load_fashion_mnist_names_a_corrupt_gzip_file(cache):
  """Pins a damaged .gz: the file and `make data-fashion` in the message."""
  _fake_mnist(cache / "fashion-mnist", data.FASHION_MNIST, gz=True)
  path = cache / "fashion-mnist" / data.FASHION_MNIST.files[2]
  path.write_bytes(path.read_bytes()[:40])
  with pytest.raises(ValueError, match=r"not a readable gzip stream.*`make"
                     r" data-fashion`") as info:
    data.load_fashion_mnist()
  assert str(info.value).startswith(f"{path}: ")


def test_load_fashion_mnist_rebuilds_a_damaged_cache(cache):
  """Pins a truncated or wrong arrays cache -> rebuilt from the IDX files."""
  arrays = _fake_mnist(cache / "fashion-mnist", data.FASHION_MNIST, gz=True)
  cached = cache / "fashion-mnist" / "arrays-v1.npz"
  first = data.load_fashion_mnist(normalize=False)
  for damage in (lambda: cached.write_bytes(cached.read_bytes()[:100]),
                 lambda: np.savez(cached, x_train=np.zeros((6, 784), np.uint8),
                                  y_train=np.full(6, 10, np.uint8),
                                  x_test=first.x_test, y_test=first.y_test)):
    damage()
    again = data.load_fashion_mnist(normalize=False)
    np.testing.assert_array_equal(again.y_train, arrays[1])
    np.testing.assert_array_equal(again.x_train, first.x_train)


def test_load_text_corpus_names_a_corrupt_dictionary(cache):
  """Pins a damaged gcide.dict.dz: the file and `make data-text` in the message."""
  (cache / "gcide").mkdir(parents=True)
  path = _write(cache / "gcide" / "gcide.dict.dz", b"\x1f\x8b garbage")
  _write(cache / "gcide" / "gcide.index", b"")
  with pytest.raises(ValueError, match=r"not a readable gzip stream.*`make"
                     r" data-text`") as info:
    data.load_text_corpus()
  assert str(info.value).startswith(f"{path}: ")


# ----------------------------------------------------------------------------
# Fetch bookkeeping (no network: the download step is never reached).
# ----------------------------------------------------------------------------


def test_fetch_tables_match_the_loaders():
  """Pins one file list: what the fetchers verify is what the loaders read."""
  assert set(fetch.MNIST_FILES) == set(data.MNIST.files)
  assert set(fetch.FASHION_FILES) == set(data.FASHION_MNIST.files)
  assert set(fetch.GCIDE_FILES) == set(data.GCIDE.files)
  assert set(fetch.FETCHERS) == {"mnist", "fashion-mnist", "text"}


def test_make_test_fetches_every_dataset():
  """Pins `make test` depending on each fetch target, so a fresh machine skips no data test."""
  makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
  prerequisites = re.search(r"^test:(.*)$", makefile, re.M).group(1).split()
  assert {source.make_target for source, _ in fetch.FETCHERS.values()} <= set(prerequisites)


def test_fetch_is_a_no_op_when_files_verify(cache, monkeypatch, capsys):
  """Pins idempotence: verified files -> no download command is run."""
  _fake_mnist(cache / "mnist", data.MNIST)
  sums = {
      name: ("unused", hashlib.sha256((cache / "mnist" / name).read_bytes()).hexdigest())
      for name in data.MNIST.files
  }
  monkeypatch.setattr(fetch, "MNIST_FILES", sums)

  def no_download(*args, **kwargs):
    raise AssertionError("a verified cache must not be downloaded again")

  monkeypatch.setattr(fetch, "_run", no_download)
  assert fetch.fetch_mnist() == cache / "mnist"
  assert "already in" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "text"])
def test_failed_fetch_names_the_dataset_and_the_command(cache, monkeypatch, name):
  """Pins a fetch failure (make test runs three) -> exit naming the dataset, cause, command."""
  source, _ = fetch.FETCHERS[name]

  def fail():
    raise RuntimeError("`apt-get` is not installed")

  monkeypatch.setitem(fetch.FETCHERS, name, (source, fail))
  with pytest.raises(SystemExit) as info:
    fetch.main([name])
  message = str(info.value.code)
  assert f"Could not fetch {source.title} into {cache}" in message
  assert "RuntimeError: `apt-get` is not installed" in message
  assert f"`make {source.make_target}`" in message
  assert f"python -m jaxsoftmax.data.fetch {name}" in message


def test_verified_deletes_a_corrupt_copy(tmp_path, capsys):
  """Pins a present file with the wrong hash -> deleted and reported as not verified."""
  good = _write(tmp_path / "good", b"good")
  bad = _write(tmp_path / "bad", b"bad")
  sums = {"good": hashlib.sha256(b"good").hexdigest(), "bad": "0" * 64}
  assert not fetch._verified(tmp_path, sums)
  assert good.exists() and not bad.exists()
  assert "wrong SHA-256" in capsys.readouterr().out
  assert fetch._verified(tmp_path, {"good": sums["good"]})


def test_install_refuses_a_mismatching_file(tmp_path):
  """Pins a hash mismatch -> ValueError naming both hashes, no file left behind."""
  source = _write(tmp_path / "src", b"payload")
  dest = tmp_path / "out" / "file"
  dest.parent.mkdir()
  with pytest.raises(ValueError, match="does not match the pinned " + "1" * 64):
    fetch._install(source, dest, "1" * 64)
  assert not list(dest.parent.iterdir())
  fetch._install(source, dest, hashlib.sha256(b"payload").hexdigest())
  assert dest.read_bytes() == b"payload"


# ----------------------------------------------------------------------------
# batches.
# ----------------------------------------------------------------------------


def _epoch(key, n, batch_size, **kwargs):
  x = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
  y = np.arange(n)
  return list(data.batches(key, x, y, batch_size, **kwargs))


# One n throughout: each new n compiles another permutation.
@pytest.mark.parametrize("n, batch_size", [(10, 3), (10, 5), (10, 10), (10, 1)])
def test_batches_cover_each_row_once(n, batch_size):
  """Pins one epoch = a permutation: every row at most once, all once without drop."""
  key = jax.random.key(3)
  full = _epoch(key, n, batch_size, drop_remainder=False)
  seen = np.concatenate([yb for _, yb in full])
  np.testing.assert_array_equal(np.sort(seen), np.arange(n))
  for xb, yb in full:  # rows stay paired
    assert isinstance(xb, np.ndarray) and isinstance(yb, np.ndarray)
    np.testing.assert_array_equal(xb[:, 0], yb)
  dropped = _epoch(key, n, batch_size)
  assert [len(yb) for _, yb in dropped] == [batch_size] * (n // batch_size)
  # Dropping the remainder only cuts the tail of the same order.
  np.testing.assert_array_equal(
      np.concatenate([yb for _, yb in dropped]), seen[: n - n % batch_size]
  )


def test_batches_reproducible_for_a_key():
  """Pins same key -> same batches (typed or raw key), another key -> another order."""
  a = np.concatenate([yb for _, yb in _epoch(jax.random.key(0), 10, 2)])
  b = np.concatenate([yb for _, yb in _epoch(jax.random.key(0), 10, 2)])
  raw = np.concatenate([yb for _, yb in _epoch(jax.random.PRNGKey(0), 10, 2)])
  c = np.concatenate([yb for _, yb in _epoch(jax.random.key(1), 10, 2)])
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(np.sort(raw), np.arange(10))
  assert not np.array_equal(a, c)
  assert not np.array_equal(a, np.arange(10))


def test_batches_accepts_jax_arrays():
  """Pins jax inputs -> NumPy batches."""
  out = list(data.batches(jax.random.key(0), jnp.ones((10, 2)), jnp.arange(10), 5))
  assert len(out) == 2 and all(isinstance(xb, np.ndarray) for xb, _ in out)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"key": 0}, TypeError, "key must be a jax.random key"),
        ({"key": jax.random.split(jax.random.key(0), 2)}, ValueError, "key must be a single key"),
        ({"y": np.arange(9)}, ValueError,
         r"same number of rows; got x of shape \(10, 2\) and y of shape \(9,\)"),
        ({"x": np.float32(1.0)}, ValueError, r"x must have rank >= 1"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int"),
        ({"batch_size": 2.0}, TypeError, "batch_size must be a positive int"),
        ({"batch_size": True}, TypeError, "batch_size must be a positive int"),
        ({"batch_size": 11}, ValueError, r"batch_size must be <= the number of rows \(10\)"),
    ],
)  # fmt: skip
def test_batches_rejects_bad_arguments_at_call_time(kwargs, error, message):
  """Pins checks when batches() is called, before any iteration."""
  args = {"key": jax.random.key(0), "x": np.zeros((10, 2)), "y": np.arange(10),
          "batch_size": 4, **kwargs}  # fmt: skip
  with pytest.raises(error, match=message):
    data.batches(args["key"], args["x"], args["y"], args["batch_size"])


def test_batches_keeps_short_tail_when_asked():
  """Pins batch_size > n allowed without drop_remainder: one short batch."""
  out = _epoch(jax.random.key(0), 10, 16, drop_remainder=False)
  assert [len(yb) for _, yb in out] == [10]


# ----------------------------------------------------------------------------
# Text: tokenizer, vocabulary, contexts, split.
# ----------------------------------------------------------------------------


def _sentences(stream):
  """The stream as nested lists: documents of sentences of words."""
  words = [stream.words[i] for i in stream.ids]
  sentences, start = [], 0
  for n in stream.sentence_lengths:
    sentences.append(words[start : start + n])
    start += n
  docs, start = [], 0
  for n in stream.doc_sentences:
    docs.append(sentences[start : start + n])
    start += n
  return docs


def test_tokenize_words_sentences_documents():
  """Pins lowercase words ("cat's"), no digits, cuts at . ! ? and blank lines."""
  stream = _text._tokenize([
      "The Cat's hat, e.g. a fez! Is it 2.5 inches? Yes...\n\n  New sense here",
      "",
      "No final period\nstill one sentence",
  ])  # fmt: skip
  assert _sentences(stream) == [
      [["the", "cat's", "hat", "e", "g"], ["a", "fez"], ["is", "it", "inches"],
       ["yes"], ["new", "sense", "here"]],
      [],
      [["no", "final", "period", "still", "one", "sentence"]],
  ]  # fmt: skip
  counts = np.bincount(stream.ids, minlength=len(stream.words))
  assert np.all(np.diff(counts) <= 0)  # most frequent first
  assert stream.ids.dtype == stream.sentence_lengths.dtype == np.int32


def _reference_examples(sentences, vocab, context):
  """Plain-Python next-word examples: words -> ids via vocab (else <unk>)."""
  ids = {w: i for i, w in enumerate(vocab)}
  boundary = ids[data.BOUNDARY]
  xs, ys = [], []
  for sentence in sentences:
    seq = [ids.get(w, 0) for w in sentence] + [boundary]
    history = [boundary] * context
    for target in seq:
      xs.append(list(history))
      ys.append(target)
      history = history[1:] + [target]
  return np.array(xs, np.int32).reshape(-1, context), np.array(ys, np.int32)


def _random_documents(num_docs, seed):
  """Documents with Zipf-ish word use and one word unique to each document."""
  rng = np.random.default_rng(seed)
  common = [a + b for a in "bcdfg" for b in "aeiou"]
  docs = []
  for d in range(num_docs):
    tag = "tag" + "".join("abcdefghij"[int(c)] for c in str(d))
    sentences = []
    for _ in range(rng.integers(1, 4)):
      words = [common[min(int(rng.zipf(1.5)) - 1, len(common) - 1)]
               for _ in range(rng.integers(1, 7))]  # fmt: skip
      sentences.append(" ".join(words))
    sentences[0] += " " + tag
    docs.append(". ".join(sentences) + ".")
  return docs


@pytest.fixture(scope="module")
def documents():
  return _random_documents(60, seed=0)


def _train_documents(corpus, docs):
  """Indices of the documents on the training side: their unique tag is known."""
  return [
      d for d, doc in enumerate(docs)
      if any(w.startswith("tag") and w in corpus.vocab for s in doc for w in s)
  ]  # fmt: skip


@pytest.mark.parametrize("context", [1, 3])
def test_text_corpus_matches_reference(documents, context):
  """Pins contexts and targets of both sides against a plain loop over sentences."""
  corpus = data.build_text_corpus(
      documents, vocab_size=None, context=context, test_fraction=0.25, block_size=3
  )
  docs = _sentences(_text._tokenize(documents))
  train_docs = _train_documents(corpus, docs)
  test_docs = [d for d in range(len(docs)) if d not in train_docs]
  assert train_docs and test_docs
  for d_side, x, y in (
      (train_docs, corpus.x_train, corpus.y_train),
      (test_docs, corpus.x_test, corpus.y_test),
  ):
    x_ref, y_ref = _reference_examples(
        [s for d in d_side for s in docs[d]], corpus.vocab, context
    )
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(y, y_ref)
    assert x.dtype == y.dtype == np.int32


@pytest.mark.parametrize("vocab_size", [None, 12, 5, 2])
def test_text_corpus_vocabulary_and_counts(documents, vocab_size):
  """Pins <unk> first, K = vocab_size, counts = bincount(y_train), descending after <unk>."""
  corpus = data.build_text_corpus(
      documents, vocab_size=vocab_size, context=2, test_fraction=0.25, block_size=3
  )
  vocab = corpus.vocab
  assert vocab[0] == data.UNKNOWN and vocab[corpus.boundary_id] == data.BOUNDARY
  assert len(set(vocab)) == len(vocab) == corpus.num_classes
  if vocab_size is not None:
    assert len(vocab) == vocab_size
  for x, y in ((corpus.x_train, corpus.y_train), (corpus.x_test, corpus.y_test)):
    assert x.shape == (len(y), 2)
    assert x.min() >= 0 and max(x.max(), y.max()) < len(vocab)
  assert corpus.counts.dtype == np.int64
  np.testing.assert_array_equal(
      corpus.counts, np.bincount(corpus.y_train, minlength=len(vocab))
  )
  assert np.all(np.diff(corpus.counts[1:]) <= 0)
  # <s> is the target once per sentence, and each sentence starts with a
  # context ending in <s> (words never map to the boundary id).
  assert corpus.counts[corpus.boundary_id] == np.count_nonzero(
      corpus.x_train[:, -1] == corpus.boundary_id
  )


def test_text_corpus_unknown_words(documents):
  """Pins the vocab_size - 2 most frequent training words kept, all others -> <unk> (id 0)."""
  full = data.build_text_corpus(documents, vocab_size=None, test_fraction=0.25, block_size=3)
  capped = data.build_text_corpus(documents, vocab_size=6, test_fraction=0.25, block_size=3)
  keep = set(capped.vocab)
  words = [w for w in full.vocab[1:] if w != data.BOUNDARY]
  assert keep == {data.UNKNOWN, data.BOUNDARY, *words[:4]}
  assert capped.vocab[1:] == [w for w in full.vocab[1:] if w in keep]
  to_capped = np.array([capped.vocab.index(w) if w in keep else 0 for w in full.vocab])
  np.testing.assert_array_equal(capped.y_train, to_capped[full.y_train])
  np.testing.assert_array_equal(capped.x_test, to_capped[full.x_test])
  assert capped.counts[0] == full.counts[to_capped == 0].sum() > 0
  # Without a cap only test-only words are unknown: <unk> never a training target.
  assert full.counts[0] == 0 and np.count_nonzero(full.y_test == 0) > 0


def test_text_corpus_split_by_blocks(documents):
  """Pins whole blocks per side, >= test_fraction of the words held out (by < 1 block), seeded."""
  stream = _text._tokenize(documents)
  docs = _sentences(stream)
  split = functools.partial(
      data.build_text_corpus, documents, vocab_size=None, test_fraction=0.3, block_size=4
  )
  corpus = split()
  train_docs = _train_documents(corpus, docs)
  in_train = [d in train_docs for d in range(len(docs))]
  blocks = range(0, len(docs), 4)
  for b in blocks:
    assert len(set(in_train[b : b + 4])) == 1
  words_test = np.count_nonzero(corpus.y_test != corpus.boundary_id)
  words_train = np.count_nonzero(corpus.y_train != corpus.boundary_id)
  total = len(stream.ids)
  assert words_test + words_train == total
  largest_block = max(sum(len(s) for d in docs[b : b + 4] for s in d) for b in blocks)
  assert 0.3 * total <= words_test < 0.3 * total + largest_block
  again, other = split(), split(seed=1)
  np.testing.assert_array_equal(corpus.y_test, again.y_test)
  assert corpus.vocab == again.vocab
  assert _train_documents(other, docs) != train_docs


def test_text_corpus_max_tokens(documents):
  """Pins max_tokens -> a subset of whole blocks with at most that many words."""
  total = len(_text._tokenize(documents).ids)
  small = data.build_text_corpus(
      documents, max_tokens=total // 2, test_fraction=0.2, block_size=2
  )
  words = sum(np.count_nonzero(y != small.boundary_id) for y in (small.y_train, small.y_test))
  assert total // 4 < words <= total // 2


@pytest.mark.parametrize(
    "documents, kwargs, error, message",
    [
        ("one text", {}, TypeError, "sequence of str"),
        (["ok", 3], {}, TypeError, r"1 item\(s\) of type \['int'\]"),
        ([], {}, ValueError, "at least one text"),
        (["a b. c d."] * 4, {"vocab_size": 1}, ValueError, "vocab_size must be >= 2"),
        (["a b. c d."] * 4, {"context": 0}, ValueError, "context must be a positive int"),
        (["a b. c d."] * 4, {"test_fraction": 1.0}, ValueError, r"test_fraction must lie in \(0, 1\)"),
        (["a b. c d."] * 4, {"max_tokens": 0}, ValueError, "max_tokens must be a positive int"),
        (["a b. c d."] * 4, {"block_size": 2.0}, TypeError, "block_size must be a positive int"),
        (["a b. c d."] * 4, {"block_size": 4}, ValueError, "leaves no training data"),
        (["a b.", "", ""], {"block_size": 1}, ValueError, "too small"),
    ],
)  # fmt: skip
def test_build_text_corpus_rejects_bad_arguments(documents, kwargs, error, message):
  """Pins TypeError / ValueError naming the argument and the expectation."""
  with pytest.raises(error, match=message):
    data.build_text_corpus(documents, **{"test_fraction": 0.5, "block_size": 1, **kwargs})


# ----------------------------------------------------------------------------
# GCIDE parsing and the text cache on a synthetic dictionary.
# ----------------------------------------------------------------------------

_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd(n):
  out = _DIGITS[n % 64]
  while n >= 64:
    n //= 64
    out = _DIGITS[n % 64] + out
  return out


_ENTRIES = [
    'Abandon \\A*ban"don\\ ([.a]*b[a^]n"d[u^]n), v. t. [imp. & p. p.\n'
    "   {Abandoned}; p. pr. & vb. n. {Abandoning}.] [OF. abandoner.]\n"
    "   1. To cast or drive out; to banish. [Obs.]\n"
    "      [1913 Webster]\n\n"
    "            That he might . . . abandon them from him. --Udall.\n"
    "      [1913 Webster]\n\n"
    "   Syn: To give up; yield; forego.\n",
    "Caf['e] \\Caf['e]\\, n. (Cookery)\n"
    "   A coffee house in the Fran[,c]ais manner. -- Caf\"e*ist, n.\n"
    "   See {Coffee}, n.\n   [1913 Webster]\n",
]


def _gcide_files(directory):
  """A dictd dictionary + index holding _ENTRIES, a licence entry and shared headwords."""
  body = b"00-database-info\n   GNU licence text.\n"
  index = [f"00-database-info\t{_dictd(0)}\t{_dictd(len(body))}"]
  for headword, entry in zip(["abandon", "cafe"], _ENTRIES):
    raw = entry.encode()
    index.append(f"{headword}\t{_dictd(len(body))}\t{_dictd(len(raw))}")
    index.append(f"{headword.upper()}\t{_dictd(len(body))}\t{_dictd(len(raw))}")
    body += raw + b"\n"
  directory.mkdir(parents=True)
  (directory / "gcide.dict.dz").write_bytes(gzip.compress(body))
  (directory / "gcide.index").write_text("\n".join(index) + "\n")
  return body, "\n".join(index)


def test_dictd_numbers():
  """Pins dictd's base-64 offsets: 'A' = 0, 'BA' = 64, round trip of a large value."""
  assert _gcide._dictd_number("A") == 0 and _gcide._dictd_number("/") == 63
  assert _gcide._dictd_number("BA") == 64
  assert _gcide._dictd_number(_dictd(39952096)) == 39952096


def test_gcide_entries_and_cleaning(tmp_path):
  """Pins one document per entry (licence skipped, shared headwords once), markup gone."""
  body, index = _gcide_files(tmp_path / "g")
  entries = _gcide._gcide_entries(body, index)
  assert entries == _ENTRIES
  cleaned = _gcide._clean_gcide(entries)
  words = [_text._TOKEN.findall(doc.lower()) for doc in cleaned]
  words = [[w for w in doc if w[0].isalpha()] for doc in words]
  assert words[0] == (
      "to cast or drive out to banish that he might abandon them from him"
      " to give up yield forego"
  ).split()
  assert words[1] == "a coffee house in the francais manner see coffee".split()
  for doc in cleaned:
    assert not set("[]{}\\") & set(doc)


def test_load_text_corpus_builds_and_reuses_cache(cache):
  """Pins the corpus from the dictionary, then the same corpus from tokens-v1.npz alone."""
  _gcide_files(cache / "gcide")
  kwargs = {"vocab_size": None, "context": 2, "test_fraction": 0.5, "block_size": 1}
  first = data.load_text_corpus(**kwargs)
  assert (cache / "gcide" / _text._TEXT_CACHE).is_file()
  (cache / "gcide" / "gcide.dict.dz").write_bytes(b"")  # the cache must suffice
  second = data.load_text_corpus(**kwargs)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)
  train_words = {first.vocab[i] for i in first.y_train}
  assert train_words in (
      {"to", "cast", "or", "drive", "out", "banish", "that", "he", "might", "abandon",
       "them", "from", "him", "give", "up", "yield", "forego", data.BOUNDARY},
      {"a", "coffee", "house", "in", "the", "francais", "manner", "see", data.BOUNDARY},
  )  # fmt: skip


# ----------------------------------------------------------------------------
# The real caches (skipped until fetched).
# ----------------------------------------------------------------------------


def _require(source):
  if not all((source.directory() / f).is_file() for f in source.files):
    pytest.skip(f"{source.title} not fetched (make {source.make_target})")


def test_real_mnist():
  """Pins the published split: 60000/10000 x 784, [0, 1] pixels, known label counts."""
  _require(data.MNIST)
  mnist = data.load_mnist()
  assert mnist.x_train.shape == (60000, 784) and mnist.x_test.shape == (10000, 784)
  assert mnist.x_train.dtype == np.float32 and mnist.y_train.dtype == np.int32
  assert mnist.x_train.min() == 0.0 and mnist.x_train.max() == 1.0
  np.testing.assert_array_equal(
      np.bincount(mnist.y_train),
      [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
  )
  np.testing.assert_array_equal(
      np.bincount(mnist.y_test), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  )


def test_real_fashion_mnist():
  """Pins 60000/10000 x 784 and the balanced classes (6000 / 1000 each)."""
  _require(data.FASHION_MNIST)
  fashion = data.load_fashion_mnist()
  assert fashion.x_train.shape == (60000, 784) and fashion.x_test.shape == (10000, 784)
  assert fashion.x_test.dtype == np.float32 and fashion.y_test.dtype == np.int32
  assert 0.0 <= fashion.x_test.min() and fashion.x_test.max() <= 1.0
  np.testing.assert_array_equal(np.bincount(fashion.y_train), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(fashion.y_test), [1000] * 10)


def test_real_text_corpus():
  """Pins millions of examples, K = 10000 with <unk>/<s>, counts = bincount, ~5% held out."""
  _require(data.GCIDE)
  corpus = data.load_text_corpus(vocab_size=10_000)
  assert corpus.num_classes == 10_000 and corpus.vocab[:4] == ["<unk>", "<s>", "the", "of"]
  assert corpus.x_train.shape[1] == 4 and corpus.x_train.dtype == np.int32
  assert len(corpus.y_train) > 3_000_000
  np.testing.assert_array_equal(corpus.counts, np.bincount(corpus.y_train, minlength=10_000))
  held_out = len(corpus.y_test) / (len(corpus.y_test) + len(corpus.y_train))
  assert 0.045 < held_out < 0.065
  # Out-of-vocabulary rate: about 10% at K = 10000, on both sides.
  assert np.mean(corpus.y_train == 0) < 0.15 and np.mean(corpus.y_test == 0) < 0.15
