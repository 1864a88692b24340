"""Sphinx configuration: `make docs` builds docs/_build/html (see docs/README.md)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The checkout's package, not whichever copy is installed elsewhere.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent / "_ext"))

import jaxsoftmax  # noqa: E402

project = "jaxsoftmax"
author = "the jaxsoftmax authors"
copyright = "2026, the jaxsoftmax authors"
release = jaxsoftmax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # MathJax 3 copied into _static/mathjax: math renders with no network.
    "sphinx-mathjax-offline",
    "sphinx_copybutton",
    "myst_nb",
    "api_pages",
    "notebook_pages",
]

exclude_patterns = ["_build", "README.md", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = f"jaxsoftmax {release}"
html_static_path = []

# Google-style docstrings; types live in the prose (shapes), not in signatures.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_typehints = "none"
autodoc_member_order = "bysource"
autosummary_generate = False
add_module_names = False

# Every cross-reference inside the package must resolve (`-n` in CI); names
# from other libraries are not linked (intersphinx would need the network).
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(abc|jax|jnp|np|numpy|optax|flax|nnx|orbax|chex|matplotlib|plt|typing|collections|pathlib|dataclasses|functools)(\..*)?"),
    (r"py:.*", r"(int|float|bool|str|bytes|tuple|list|dict|None|callable|object|Callable|Any|Sequence|Mapping|Iterator|Iterable|Array|ArrayLike|PyTree|Path)"),
]

# Notebooks: myst-nb; whether it executes is set by notebook_pages.
myst_enable_extensions = ["dollarmath", "amsmath"]
nb_execution_raise_on_error = True
nb_execution_timeout = 600
nb_execution_cache_path = str(Path(__file__).parent / "_build" / ".jupyter_cache")
nb_merge_streams = True

copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
