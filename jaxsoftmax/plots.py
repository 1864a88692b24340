"""Figures of a training run and a trained classifier, written as PNG files.

Each function takes data the library already produces (a :class:`~jaxsoftmax.History`, a
:class:`~jaxsoftmax.metrics.ReliabilityDiagram`, a confusion matrix, the
weights of softmax regression), draws it on a figure of its own with
matplotlib's object-oriented API and the Agg canvas, and writes a PNG. No
``pyplot``: nothing global changes, no display is needed, and the caller's
matplotlib backend is left alone. Files are written atomically (a temporary
file in the same directory, then a rename), so a reader sees the old image or
the new one, never a truncated one. Each function returns the path written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
import os
from pathlib import Path
import tempfile
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import numpy as np

from jaxsoftmax._core import io as _io
from jaxsoftmax._core import validation as v
from jaxsoftmax import metrics

_DPI = 100


def _new_figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height), layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
  """Writes ``fig`` as a PNG to ``path`` via a temporary file and a rename."""
  with _io.atomic_open(path) as f:
    fig.savefig(f, format="png", dpi=_DPI)
  return Path(path)


def _host_float(name: str, x: Any) -> np.ndarray:
  """``x`` as a float32 NumPy array (bfloat16 has no NumPy arithmetic)."""
  a = np.asarray(x)
  if not (np.issubdtype(a.dtype, np.number) or a.dtype.name == "bfloat16"):
    raise TypeError(
        f"{name} must be numeric; got {a.dtype} with shape {a.shape}."
    )
  return a.astype(np.float32)


# ----------------------------------------------------------------------------
# Training curves.
# ----------------------------------------------------------------------------

_SPLITS = (("train", "loss", "train_accuracy"), ("validation", "val_loss",
           "val_accuracy"), ("test", "test_loss", "test_accuracy"))


def plot_training_curves(
    history: Any,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
  r"""Loss and accuracy per epoch of a :func:`~jaxsoftmax.fit` run.

  The left panel shows the mean training loss of each epoch and, where
  recorded, the validation and test losses; the right panel the train,
  validation and test accuracies (left out when none was recorded, i.e. when
  ``fit`` had no ``logits_fn``). The training loss is the mean over the
  epoch's minibatches, each taken before its update, so it lags the
  end-of-epoch losses by about half an epoch.

  Args:
    history: a :class:`~jaxsoftmax.History`, or its ``to_dict()``: ``epoch``
      ``[E]`` and the lists ``loss``, ``train_accuracy``, ``val_loss``,
      ``val_accuracy``, ``test_loss``, ``test_accuracy``, each empty or of
      length ``E``.
    path: the PNG file to write (parent directories are created).
    title: figure title.

  Returns:
    ``path`` as a :class:`pathlib.Path`.

  Raises:
    ValueError: no epoch recorded, or a list whose length is not ``E``.

  Examples:
    >>> import os, tempfile
    >>> from jaxsoftmax.plots import plot_training_curves
    >>> history = {"epoch": [1, 2], "loss": [0.9, 0.5],
    ...            "test_accuracy": [0.8, 0.9]}
    >>> path = os.path.join(tempfile.mkdtemp(), "curves.png")
    >>> path = plot_training_curves(history, path)
    >>> path.stat().st_size > 0
    True
  """
  record = history.to_dict() if hasattr(history, "to_dict") else dict(history)
  epochs = np.asarray(record.get("epoch", []))
  if epochs.ndim != 1 or epochs.size == 0:
    raise ValueError(
        "history must record at least one epoch ([num_epochs] 'epoch'); got"
        f" 'epoch' of shape {epochs.shape}."
    )
  series = {}
  for name in (n for split in _SPLITS for n in split[1:]):
    values = np.asarray(record.get(name, []), np.float64)
    if values.size and values.shape != epochs.shape:
      raise ValueError(
          f"history[{name!r}] must hold one value per epoch, shape"
          f" {epochs.shape}, or none; got shape {values.shape}."
      )
    series[name] = values
  has_accuracy = any(series[acc].size for _, _, acc in _SPLITS)

  fig = _new_figure(9.0 if has_accuracy else 4.8, 3.6)
  axes = fig.subplots(1, 2 if has_accuracy else 1, squeeze=False)[0]
  for split, loss, acc in _SPLITS:
    for ax, key in zip(axes, (loss, acc)):
      if series[key].size:
        label = "train (epoch mean)" if key == "loss" else split
        ax.plot(epochs, series[key], marker="o", markersize=3, label=label)
  axes[0].set_ylabel("loss")
  if has_accuracy:
    axes[1].set_ylabel("accuracy")
  for ax in axes:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
  if title:
    fig.suptitle(title)
  return _save(fig, path)


# ----------------------------------------------------------------------------
# Reliability diagrams.
# ----------------------------------------------------------------------------


def _diagram_arrays(name: str, diagram: Any) -> tuple[np.ndarray, ...]:
  """(confidence, accuracy, count, edges) on the host, checked."""
  if not isinstance(diagram, metrics.ReliabilityDiagram):
    raise TypeError(
        f"{name} must be a jaxsoftmax.metrics.ReliabilityDiagram (from"
        f" metrics.reliability_diagram); got {type(diagram).__name__}."
    )
  confidence, accuracy, count, edges = (
      _host_float(f"{name}.{field}", getattr(diagram, field))
      for field in diagram._fields
  )
  v.check_rank(f"{name}.confidence", confidence, 1, "[num_bins]")
  m = confidence.shape[0]
  for field, a, shape in (
      ("accuracy", accuracy, (m,)),
      ("count", count, (m,)),
      ("edges", edges, (m + 1,)),
  ):
    v.check_same_shape(f"{name}.{field}", a, shape, "one per bin")
  return confidence, accuracy, count, edges


def plot_reliability_diagram(
    diagrams: (
        metrics.ReliabilityDiagram | Mapping[str, metrics.ReliabilityDiagram]
    ),
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
  r"""Reliability diagrams, one panel per model (e.g. before / after scaling).

  Each panel draws, for every non-empty confidence bin :math:`B_m`, a bar of
  height :math:`\operatorname{acc}(B_m)` and, shaded, the gap to the bin's
  mean confidence :math:`\operatorname{conf}(B_m)`; a calibrated model's bars
  reach the diagonal. The panel title gives the ECE recomputed from the bins,

  .. math::
    \operatorname{ECE} = \sum_m \frac{|B_m|}{N}
      \big|\operatorname{acc}(B_m) - \operatorname{conf}(B_m)\big|,

  which equals :func:`~jaxsoftmax.metrics.expected_calibration_error` with
  the same bins. A second axis shows each bin's share of the examples.

  Args:
    diagrams: one :class:`~jaxsoftmax.metrics.ReliabilityDiagram`, or a
      mapping of panel label to diagram (``[num_bins]`` fields, ``[num_bins +
      1]`` edges).
    path: the PNG file to write (parent directories are created).
    title: figure title.

  Returns:
    ``path`` as a :class:`pathlib.Path`.

  Raises:
    TypeError: an entry is not a ``ReliabilityDiagram``.
    ValueError: no diagram, or fields whose shapes disagree.

  Examples:
    >>> import os, tempfile, jax.numpy as jnp
    >>> from jaxsoftmax import metrics
    >>> from jaxsoftmax.plots import plot_reliability_diagram
    >>> probs = jnp.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    >>> labels = jnp.array([0, 1, 1])
    >>> diagram = metrics.reliability_diagram(probs, labels, num_bins=5)
    >>> path = os.path.join(tempfile.mkdtemp(), "rel.png")
    >>> plot_reliability_diagram({"model": diagram}, path).stat().st_size > 0
    True

  References:
    C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger, "On calibration of modern
    neural networks", ICML (2017), figure 1.
  """
  if isinstance(diagrams, metrics.ReliabilityDiagram):
    diagrams = {"": diagrams}
  if not isinstance(diagrams, Mapping) or not diagrams:
    raise ValueError(
        "diagrams must be a ReliabilityDiagram or a non-empty mapping of"
        f" label to ReliabilityDiagram; got {diagrams!r}."
    )
  panels = {
      label: _diagram_arrays(f"diagrams[{label!r}]", d)
      for label, d in diagrams.items()
  }
  fig = _new_figure(4.2 * len(panels), 4.2)
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, (label, (confidence, accuracy, count, edges)) in zip(
      axes, panels.items()
  ):
    filled = count > 0
    left = edges[:-1][filled]
    width = np.diff(edges)[filled]
    acc, conf = accuracy[filled], confidence[filled]
    share = count[filled] / max(count.sum(), 1)
    ece = float(np.sum(share * np.abs(acc - conf)))
    ax.bar(left, acc, width=width, align="edge", color="tab:blue",
           edgecolor="white", label="accuracy")
    ax.bar(left, conf - acc, bottom=acc, width=width, align="edge",
           color="tab:red", alpha=0.3, hatch="//", edgecolor="tab:red",
           label="gap to confidence")
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{label}: ECE {ece:.2%}" if label else f"ECE {ece:.2%}")
    ax.legend(loc="upper left")
    twin = ax.twinx()
    twin.plot(left + width / 2, share, color="black", marker=".",
              linewidth=0.8)
    twin.set_ylim(0, 1)
    twin.set_ylabel("share of examples")
  if title:
    fig.suptitle(title)
  return _save(fig, path)


# ----------------------------------------------------------------------------
# Confusion matrix.
# ----------------------------------------------------------------------------


def plot_confusion_matrix(
    counts: Any,
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
  r"""A confusion matrix as a heat map of row-normalized rates.

  Cell :math:`(a, b)` is coloured by :math:`C_{ab} / \sum_{b'} C_{ab'}`, the
  share of class :math:`a` predicted as :math:`b` (the diagonal is each
  class's recall), so frequent and rare classes read on one scale; the raw
  counts are written in the cells when there are at most 20 classes. Rows
  are true classes and columns predicted ones, as
  :func:`~jaxsoftmax.metrics.confusion_matrix` returns them.

  Args:
    counts: ``[num_classes, num_classes]`` non-negative counts.
    path: the PNG file to write (parent directories are created).
    class_names: ``num_classes`` tick labels; default ``0 .. K-1``.
    title: axes title.

  Returns:
    ``path`` as a :class:`pathlib.Path`.

  Raises:
    ValueError: ``counts`` not square, negative or not finite, or
      ``class_names`` of the wrong length.

  Examples:
    >>> import os, tempfile
    >>> from jaxsoftmax.plots import plot_confusion_matrix
    >>> path = os.path.join(tempfile.mkdtemp(), "cm.png")
    >>> plot_confusion_matrix([[5, 1], [0, 4]], path).stat().st_size > 0
    True
  """
  c = _host_float("counts", counts)
  v.check_rank("counts", c, 2, "[num_classes, num_classes]")
  k = c.shape[0]
  v.check_same_shape("counts", c, (k, k), "square, [num_classes, num_classes]")
  v.check_finite("counts", c)
  v.check_nonnegative("counts", c)
  names = (
      [str(i) for i in range(k)] if class_names is None else list(class_names)
  )
  if len(names) != k:
    raise ValueError(
        f"class_names must name all {k} classes of counts {c.shape}; got"
        f" {len(names)} names."
    )
  support = c.sum(axis=1, keepdims=True)
  rates = np.divide(c, support, out=np.zeros_like(c), where=support > 0)

  side = max(4.0, 0.45 * k + 1.5)
  fig = _new_figure(side + 1.0, side)
  ax = fig.subplots()
  image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
  fig.colorbar(image, ax=ax, label="share of the true class")
  if k <= 20:
    for (a, b), n in np.ndenumerate(c):
      ax.text(b, a, f"{n:.0f}", ha="center", va="center", fontsize=7,
              color="white" if rates[a, b] > 0.5 else "black")
  ticks = np.arange(k)
  ax.set_xticks(ticks, names, rotation=90 if k > 10 else 0)
  ax.set_yticks(ticks, names)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  if title:
    ax.set_title(title)
  return _save(fig, path)


# ----------------------------------------------------------------------------
# Weight templates.
# ----------------------------------------------------------------------------


def plot_weight_templates(
    w: Any,
    path: str | os.PathLike[str],
    *,
    image_shape: tuple[int, int] = (28, 28),
    class_names: Sequence[str] | None = None,
    columns: int = 5,
    title: str | None = None,
) -> Path:
  r"""The columns of softmax regression's :math:`\Theta` drawn as images.

  Class :math:`j`'s logit is :math:`h_j = x^\top \Theta_{:, j} + b_j`, a
  match of the input image against the template :math:`\Theta_{:, j}`
  reshaped to the image's shape: red pixels add evidence for the class, blue
  ones count against it. Each template has its own symmetric colour range
  :math:`[-\max|\Theta_{:, j}|, \max|\Theta_{:, j}|]`, so its pattern shows
  whatever its scale.

  Args:
    w: ``[num_features, num_classes]`` weights (``params["w"]``), with
      ``num_features`` equal to ``rows * cols`` of ``image_shape``.
    path: the PNG file to write (parent directories are created).
    image_shape: ``(rows, cols)`` of an input image, row-major as the
      features were flattened; ``(28, 28)`` for MNIST, ``(8, 8)`` for digits.
    class_names: ``num_classes`` panel titles; default ``0 .. K-1``.
    columns: templates per row of the grid.
    title: figure title.

  Returns:
    ``path`` as a :class:`pathlib.Path`.

  Raises:
    TypeError: ``w`` is not floating.
    ValueError: ``w`` not of rank 2, ``num_features`` not matching
      ``image_shape``, or ``class_names`` of the wrong length.

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from jaxsoftmax.plots import plot_weight_templates
    >>> w = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
    >>> path = os.path.join(tempfile.mkdtemp(), "w.png")
    >>> plot_weight_templates(w, path, image_shape=(8, 8)).stat().st_size > 0
    True

  References:
    E. Kim, "ML refresher / softmax regression", Data 188 lecture 2 (2026):
    the linear hypothesis :math:`h = \Theta^\top x`.
  """
  w = np.asarray(w)
  v.check_floating("w", w)
  v.check_rank("w", w, 2, "[num_features, num_classes]")
  v.check_positive_int("columns", columns)
  rows, cols = image_shape
  if w.shape[0] != rows * cols:
    raise ValueError(
        f"w must have image_shape {tuple(image_shape)} = {rows * cols} rows"
        f" (one per pixel); got w of shape {w.shape}."
    )
  w = w.astype(np.float32)
  k = w.shape[1]
  names = (
      [str(i) for i in range(k)] if class_names is None else list(class_names)
  )
  if len(names) != k:
    raise ValueError(
        f"class_names must name all {k} classes of w {w.shape}; got"
        f" {len(names)} names."
    )
  grid_cols = min(columns, k)
  grid_rows = math.ceil(k / grid_cols)
  fig = _new_figure(1.8 * grid_cols, 1.9 * grid_rows + (0.4 if title else 0))
  axes = fig.subplots(grid_rows, grid_cols, squeeze=False).ravel()
  for j, ax in enumerate(axes):
    ax.set_axis_off()
    if j >= k:
      continue
    template = w[:, j].reshape(rows, cols)
    # A template of zeros would give a zero-width range; any positive
    # bound then draws it uniformly white.
    bound = float(np.max(np.abs(template))) or 1.0
    ax.imshow(template, cmap="RdBu_r", vmin=-bound, vmax=bound)
    ax.set_title(names[j])
  if title:
    fig.suptitle(title)
  return _save(fig, path)
