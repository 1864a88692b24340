"""Writes the API reference pages from the live package before each build.

Every page is generated, so a name added to a module's ``__all__`` (or, for a
module without one, a new public definition or top-level re-export) appears
without editing the docs. Names are documented at their public import path
(``jaxsoftmax.cross_entropy``), never at the private module that defines
them, so the internal layout can move without breaking links.

Top-level names are grouped by the layer of the module that defines them
(``LAYER_OF``); a module not listed there lands on the "Other" page rather
than being dropped.
"""

import dataclasses
import importlib
import inspect
import types
from pathlib import Path

# Layer of each public submodule; it is documented on that page after the
# layer's top-level names. One not listed lands on the "Other" page.
SUBMODULE_LAYER = {
    "nn": "models",
    "samplers": "large_k",
    "diagnostics": "large_k",
    "sparse": "large_k",
    "large_vocab": "large_vocab",
    "sharded": "sharded",
    "metrics": "evaluation",
    "model_selection": "model_selection",
    "data": "data",
    "reporting": "reporting",
    "plots": "reporting",
}
# Public submodules that ``jaxsoftmax/__init__.py`` does not import.
NOT_IMPORTED = ("plots",)

# Defining module below ``jaxsoftmax`` -> layer: its file within a layer
# subpackage when listed (``losses._fused``), else the subpackage.
LAYER_OF = {
    "_core": "core",
    "models": "models", "models._gradients": "gradients",
    "losses": "losses", "losses._fused": "large_k",
    "losses._sampled": "large_k", "losses._hierarchical": "large_k",
    "losses._class_based": "large_k", "_core.gather": "large_k",
    "samplers": "large_k", "sparse": "large_k",
    "sharded": "sharded",
    "training": "training",
    "evaluation": "evaluation",
    "model_selection": "model_selection", "large_vocab": "large_vocab",
    "data": "data",
    "reporting": "reporting", "plots": "reporting",
}

# Page order and titles, bottom layer first (DESIGN.md's layering).
LAYERS = {
    "core": ("Numerics", "Dtype policy shared by every loss."),
    "models": ("Models", "Parameter pytrees, logits, and the flax.nnx adapters."),
    "losses": ("Losses", "Dense losses with hand-written backward rules."),
    "gradients": (
        "Manual gradients",
        "The closed-form gradients as plain functions, equal to ``jax.grad``."),
    "large_k": (
        "Very large K",
        "Fused, sampled, NCE, hierarchical and class-based losses; samplers "
        "and their diagnostics."),
    "sharded": ("Sharded", "The class dimension split across devices."),
    "training": (
        "Training",
        "``fit``, Optax optimizers and schedules, second-order solvers, "
        "checkpoints."),
    "evaluation": (
        "Evaluation", "Inference, temperature scaling and metrics."),
    "model_selection": (
        "Model selection",
        "Cross-validation, regularization paths, scaling sweeps."),
    "large_vocab": (
        "Large-vocabulary models", "One head for every large-K method."),
    "data": ("Data", "Dataset loaders, the cache and batching."),
    "reporting": (
        "Reporting and plots", "Measurement helpers and figures."),
    "other": ("Other", "Public names whose layer is not yet listed."),
}


def public_names(module):
  """The names a module exports: its ``__all__``, else its public definitions.

  Without ``__all__`` a name counts when it does not start with an underscore
  and is a public ``jaxsoftmax`` submodule or an object defined inside the
  package (a re-export such as ``from jaxsoftmax.losses._dense import cross_entropy
  as cross_entropy``); imported helpers such as ``jnp`` do not.
  """
  if hasattr(module, "__all__"):
    return list(module.__all__)
  names = []
  for name, value in vars(module).items():
    if name.startswith("_"):
      continue
    if isinstance(value, types.ModuleType):
      if value.__name__ == f"{module.__name__}.{name}":
        names.append(name)
    elif _defining_module(value).startswith("jaxsoftmax"):
      names.append(name)
  return names


def _defining_module(value):
  owner = getattr(value, "__module__", None)
  if not isinstance(owner, str) and not inspect.isroutine(value):
    owner = type(value).__module__
  return owner or ""


def _directive(value):
  if inspect.isclass(value):
    options = ["   :members:"]
    # Fields are described by the docstring's Attributes section already.
    fields = list(getattr(value, "_fields", ()))
    if dataclasses.is_dataclass(value):
      fields += [f.name for f in dataclasses.fields(value)]
    if fields:
      options.append(f"   :exclude-members: {', '.join(fields)}")
    return "autoclass", options
  if callable(value):
    return "autofunction", []
  return "autodata", ["   :annotation:"]


def _entries(module_name, names, module):
  lines = [".. autosummary::", "   :nosignatures:", ""]
  lines += [f"   {name}" for name in names]
  lines.append("")
  for name in names:
    directive, options = _directive(getattr(module, name))
    lines += [f".. {directive}:: {module_name}.{name}", *options, ""]
  return lines


def _heading(text, char):
  return [text, char * len(text), ""]


def render_pages():
  """Returns {file name: reStructuredText} for the whole API reference."""
  package = importlib.import_module("jaxsoftmax")
  by_layer = {layer: [] for layer in LAYERS}
  for name in public_names(package):
    value = getattr(package, name)
    if isinstance(value, types.ModuleType):
      continue
    parts = _defining_module(value).split(".")[1:3]
    layer = LAYER_OF.get(".".join(parts)) or LAYER_OF.get(
        parts[0] if parts else "", "other")
    by_layer[layer].append(name)
  submodules = [n for n in public_names(package)
                if isinstance(getattr(package, n), types.ModuleType)]
  submodules += [n for n in NOT_IMPORTED if n not in submodules]

  pages = {}
  toc = []
  for layer, (title, blurb) in LAYERS.items():
    subs = [s for s, lay in SUBMODULE_LAYER.items()
            if lay == layer and s in submodules]
    if layer == "other":
      subs = [s for s in submodules if s not in SUBMODULE_LAYER]
    if not by_layer[layer] and not subs:
      continue
    lines = _heading(title, "=") + [blurb, ""]
    if by_layer[layer]:
      lines += [".. currentmodule:: jaxsoftmax", ""]
      if subs:
        lines += _heading("Top-level names", "-")
      lines += _entries("jaxsoftmax", by_layer[layer], package)
    for sub in subs:
      module_name = f"jaxsoftmax.{sub}"
      module = importlib.import_module(module_name)
      lines += _heading(f"``{module_name}``", "-")
      lines += [f".. automodule:: {module_name}", "   :no-members:", ""]
      lines += [f".. currentmodule:: {module_name}", ""]
      lines += _entries(module_name, public_names(module), module)
    pages[f"{layer}.rst"] = "\n".join(lines)
    toc.append(layer)

  index = _heading("API reference", "=") + [
      ".. automodule:: jaxsoftmax", "   :no-members:", "",
      "Every name is documented at the path you import it from. Pages follow",
      "the package's layers, bottom to top; each lists the top-level",
      "``jaxsoftmax`` names of that layer, then its public submodules.", "",
      ".. toctree::", "   :maxdepth: 1", "",
      *[f"   {layer}" for layer in toc], ""]
  pages["index.rst"] = "\n".join(index)
  return pages


def write_pages(app):
  """Writes the pages into ``<srcdir>/api``, touching only changed files."""
  out = Path(app.srcdir) / "api"
  out.mkdir(exist_ok=True)
  pages = render_pages()
  for stale in set(p.name for p in out.glob("*.rst")) - set(pages):
    (out / stale).unlink()
  for name, text in pages.items():
    path = out / name
    if not path.exists() or path.read_text() != text:
      path.write_text(text)


def setup(app):
  app.connect("builder-inited", write_pages)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
