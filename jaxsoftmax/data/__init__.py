"""Datasets as NumPy arrays, read from a local cache; nothing downloads here.

scikit-learn's digits ship with scikit-learn. MNIST, Fashion-MNIST and the
GCIDE text corpus live in the cache directory :func:`data_dir` once fetched
(``make data``, ``make data-fashion``, ``make data-text``, which run
``python -m jaxsoftmax.data.fetch``); a loader whose files are missing raises
``FileNotFoundError`` naming that command.
"""

from jaxsoftmax.data._arrays import Dataset as Dataset
from jaxsoftmax.data._arrays import load_digits as load_digits
from jaxsoftmax.data._arrays import standardize as standardize
from jaxsoftmax.data._cache import data_dir as data_dir
from jaxsoftmax.data._cache import MNIST as MNIST
from jaxsoftmax.data._cache import FASHION_MNIST as FASHION_MNIST
from jaxsoftmax.data._cache import GCIDE as GCIDE
from jaxsoftmax.data._idx import read_idx as read_idx
from jaxsoftmax.data._idx import load_mnist as load_mnist
from jaxsoftmax.data._idx import load_fashion_mnist as load_fashion_mnist
from jaxsoftmax.data._batching import batches as batches
from jaxsoftmax.data._text import UNKNOWN as UNKNOWN
from jaxsoftmax.data._text import BOUNDARY as BOUNDARY
from jaxsoftmax.data._text import TextCorpus as TextCorpus
from jaxsoftmax.data._text import build_text_corpus as build_text_corpus
from jaxsoftmax.data._text import load_text_corpus as load_text_corpus

# The documented names, as before the split. Without __all__ the API pages
# would also expect the ``fetch`` submodule (a command, not an API) whenever
# an import has loaded it. UNKNOWN and BOUNDARY stay importable but, as
# before, undocumented: TextCorpus explains them.
__all__ = [
    "Dataset",
    "load_digits",
    "standardize",
    "data_dir",
    "MNIST",
    "FASHION_MNIST",
    "GCIDE",
    "read_idx",
    "load_mnist",
    "load_fashion_mnist",
    "batches",
    "TextCorpus",
    "build_text_corpus",
    "load_text_corpus",
]
