"""Next-word prediction corpora: tokenizer, split, vocabulary, examples.

:func:`build_text_corpus` works on any list of documents;
:func:`load_text_corpus` on the GCIDE dictionary in the cache, whose markup
``_gcide`` strips.
"""

from __future__ import annotations

import gzip
import re
import zipfile
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxsoftmax._core import validation as v
from jaxsoftmax.data._cache import GCIDE, _atomic_savez
from jaxsoftmax.data._gcide import _clean_gcide, _gcide_entries


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
