"""The GCIDE dictionary as dictd ships it: index decoding and markup removal.

Pure text in, text out; tokenizing and caching live in ``_text``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


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
