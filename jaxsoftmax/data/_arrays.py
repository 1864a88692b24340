"""``Dataset`` splits, scikit-learn's bundled digits, standardizing."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


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
