"""jaxsoftmax.plots: every function writes a whole PNG, atomically."""

import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsoftmax import metrics
from jaxsoftmax.training._fit import History
from jaxsoftmax.plots import plot_confusion_matrix
from jaxsoftmax.plots import plot_reliability_diagram
from jaxsoftmax.plots import plot_training_curves
from jaxsoftmax.plots import plot_weight_templates

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
  """(width, height) from the IHDR chunk; asserts the file is a whole PNG."""
  data = path.read_bytes()
  assert data[:8] == PNG_SIGNATURE
  assert data[12:16] == b"IHDR"
  # A complete PNG ends with the 12-byte IEND chunk.
  assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82"
  return struct.unpack(">II", data[16:24])


def only_file(directory):
  """The directory's single entry: no temporary file was left behind."""
  entries = sorted(os.listdir(directory))
  assert len(entries) == 1, entries
  return directory / entries[0]


def synthetic_history(epochs=4):
  e = np.arange(1, epochs + 1)
  return History(
      epoch=e.tolist(),
      loss=(1 / e).tolist(),
      train_accuracy=(1 - 0.5 / e).tolist(),
      test_loss=(1.1 / e).tolist(),
      test_accuracy=(1 - 0.6 / e).tolist(),
  )


def synthetic_diagram(seed, num_bins=10):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(500, 10)) * 3
  labels = rng.integers(0, 10, 500)
  probs = jnp.asarray(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
  return metrics.reliability_diagram(probs, jnp.asarray(labels),
                                     num_bins=num_bins)


def test_training_curves_png(tmp_path):
  path = plot_training_curves(synthetic_history(), tmp_path / "curves.png",
                              title="synthetic")
  assert path == tmp_path / "curves.png" and only_file(tmp_path) == path
  width, height = png_size(path)
  # Two panels (loss and accuracy) at 100 dpi: 900 x 360.
  assert (width, height) == (900, 360)


def test_training_curves_without_accuracy_is_one_panel(tmp_path):
  history = {"epoch": [1, 2, 3], "loss": [1.0, 0.7, 0.6]}
  width, _ = png_size(plot_training_curves(history, tmp_path / "c.png"))
  assert width == 480


def test_training_curves_rejects_ragged_history(tmp_path):
  history = {"epoch": [1, 2, 3], "loss": [1.0, 0.7]}
  with pytest.raises(ValueError, match=r"history\['loss'\].*\(3,\).*\(2,\)"):
    plot_training_curves(history, tmp_path / "c.png")
  with pytest.raises(ValueError, match="at least one epoch"):
    plot_training_curves({"epoch": []}, tmp_path / "c.png")
  assert os.listdir(tmp_path) == []


def test_reliability_diagram_one_panel_per_model(tmp_path):
  diagrams = {"T = 1": synthetic_diagram(0), "T = 2": synthetic_diagram(1)}
  path = plot_reliability_diagram(diagrams, tmp_path / "sub" / "rel.png")
  assert only_file(tmp_path / "sub") == path
  width, height = png_size(path)
  assert (width, height) == (840, 420)
  single = plot_reliability_diagram(synthetic_diagram(2), tmp_path / "one.png")
  assert png_size(single) == (420, 420)


def test_reliability_diagram_rejects_other_inputs(tmp_path):
  with pytest.raises(TypeError,
                     match=r"diagrams\['a'\] must be a .*ReliabilityDiagram"):
    plot_reliability_diagram({"a": (1, 2, 3, 4)}, tmp_path / "r.png")
  with pytest.raises(ValueError, match="non-empty mapping"):
    plot_reliability_diagram({}, tmp_path / "r.png")


def test_confusion_matrix_png(tmp_path):
  labels = jnp.asarray(np.arange(200) % 10)
  predictions = jnp.asarray((np.arange(200) * 7) % 10)
  counts = metrics.confusion_matrix(labels, predictions, 10)
  path = plot_confusion_matrix(counts, tmp_path / "cm.png", title="cm",
                               class_names=[f"c{i}" for i in range(10)])
  assert only_file(tmp_path) == path
  width, height = png_size(path)
  assert width > height > 0


def test_confusion_matrix_rejects_bad_counts(tmp_path):
  with pytest.raises(ValueError,
                     match=r"counts must have shape \(2, 2\).*\(2, 3\)"):
    plot_confusion_matrix(np.ones((2, 3)), tmp_path / "cm.png")
  with pytest.raises(ValueError, match="counts must be >= 0"):
    plot_confusion_matrix(np.array([[1, -1], [0, 1]]), tmp_path / "cm.png")
  with pytest.raises(ValueError, match="class_names must name all 2"):
    plot_confusion_matrix(np.eye(2), tmp_path / "cm.png", class_names=["a"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_weight_templates_png(tmp_path, dtype):
  w = jnp.asarray(np.random.default_rng(0).normal(size=(784, 10)), dtype)
  # A zero template must not break the colour scale.
  w = w.at[:, 3].set(0)
  path = plot_weight_templates(w, tmp_path / "w.png", title="templates")
  assert only_file(tmp_path) == path
  width, height = png_size(path)
  # Ten templates on a 5-wide grid: two rows.
  assert width == 900 and height > 300


def test_weight_templates_rejects_wrong_image_shape(tmp_path):
  with pytest.raises(ValueError,
                     match=r"image_shape \(28, 28\) = 784 rows.*\(64, 10\)"):
    plot_weight_templates(np.zeros((64, 10), np.float32), tmp_path / "w.png")
  with pytest.raises(TypeError, match="w must have a floating dtype"):
    plot_weight_templates(np.zeros((64, 10), np.int32), tmp_path / "w.png",
                          image_shape=(8, 8))


def test_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
  """A failed write removes its temporary file and keeps the old image."""
  target = tmp_path / "cm.png"
  plot_confusion_matrix(np.eye(3), target)
  before = target.read_bytes()

  def broken_fsync(fd):
    raise OSError("disk full")

  monkeypatch.setattr(os, "fsync", broken_fsync)
  with pytest.raises(OSError, match="disk full"):
    plot_confusion_matrix(np.ones((3, 3)), target)
  assert only_file(tmp_path) == target
  assert target.read_bytes() == before
