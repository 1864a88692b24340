"""The figure panels of the model-selection experiments."""

from __future__ import annotations

import os

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from jaxsoftmax._core import io as _io


class Panel(NamedTuple):
  """One subplot of :func:`plot_panels`.

  Attributes:
    title: the panel's title.
    xlabel: x-axis label.
    ylabel: y-axis label.
    series: legend label -> ``(x values, y values)``; one line each.
    xscale: ``"linear"`` or ``"log"``.
    yscale: ``"linear"`` or ``"log"``.
  """

  title: str
  xlabel: str
  ylabel: str
  series: Mapping[str, tuple[Sequence[float], Sequence[float]]]
  xscale: str = "linear"
  yscale: str = "linear"


def plot_panels(
    path: str | os.PathLike,
    panels: Sequence[Panel],
    *,
    title: str | None = None,
) -> Path:
  """Draws ``panels`` side by side into one PNG file.

  Uses matplotlib's object API on an Agg canvas, never ``pyplot``, so it
  changes no global backend and works without a display. The file is
  written through a temporary name and a rename, so a reader never sees a
  half-written image.

  Args:
    path: the ``.png`` file; its directory is created.
    panels: one or more :class:`Panel`.
    title: an optional title over all panels.

  Returns:
    The path written.

  Examples:
    >>> import tempfile, os
    >>> from jaxsoftmax.model_selection import Panel, plot_panels
    >>> curve = {"sgd": ([1, 2, 3], [1.0, 0.5, 0.3])}
    >>> panel = Panel("loss", "epoch", "loss", curve)
    >>> path = plot_panels(os.path.join(tempfile.mkdtemp(), "a.png"), [panel])
    >>> path.stat().st_size > 0
    True
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  if not panels:
    raise ValueError("panels must hold at least one Panel; got none.")
  for panel in panels:
    if not isinstance(panel, Panel):
      raise TypeError(
          f"panels must hold Panel entries; got {type(panel).__name__}."
      )
    for scale in (panel.xscale, panel.yscale):
      if scale not in ("linear", "log"):
        raise ValueError(
            f"panel {panel.title!r}: scales must be 'linear' or 'log'; got"
            f" {scale!r}."
        )
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig = Figure(figsize=(5.5 * len(panels), 4.2), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, panel in zip(axes, panels):
    for label, (xs, ys) in panel.series.items():
      ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_title(panel.title)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.set_xscale(panel.xscale)
    ax.set_yscale(panel.yscale)
    ax.grid(True, alpha=0.3)
    if len(panel.series) > 1:
      ax.legend(fontsize="small")
  if title:
    fig.suptitle(title)
  with _io.atomic_open(path) as f:
    fig.savefig(f, format="png", dpi=110)
  return path
