"""Data loaders: the digits split and feature standardization."""

import numpy as np
import pytest
from sklearn import datasets

from jaxsoftmax import data


@pytest.fixture(scope="module")
def digits():
  return data.load_digits()


@pytest.fixture(scope="module")
def raw():
  return datasets.load_digits()


def _row_counts(x, y):
  """Multiset of (image, label) rows as {bytes: count}."""
  keys = [row.tobytes() + bytes([label]) for row, label in zip(x, y)]
  values, counts = np.unique(np.array(keys, dtype=object), return_counts=True)
  return dict(zip(values, counts))


def test_load_digits_shapes_and_dtypes(digits):
  """Pins 1797 examples in all, 64 float32 features, int32 labels, 10 classes."""
  x_train, y_train, x_test, y_test = digits
  assert len(x_train) + len(x_test) == 1797
  assert x_train.shape[1:] == x_test.shape[1:] == (64,)
  assert y_train.shape == (len(x_train),) and y_test.shape == (len(x_test),)
  assert x_train.dtype == x_test.dtype == np.float32
  assert y_train.dtype == y_test.dtype == np.int32
  assert digits.num_classes == 10
  assert set(np.unique(y_train)) == set(np.unique(y_test)) == set(range(10))


def test_load_digits_values_in_unit_interval(digits):
  """Pins pixels scaled from 0..16 to [0, 1], both ends reached."""
  x = np.concatenate([digits.x_train, digits.x_test])
  assert x.min() == 0.0 and x.max() == 1.0
  np.testing.assert_array_equal(np.round(x * 16), x * 16)


@pytest.mark.parametrize("test_fraction", [0.2, 0.5])
def test_load_digits_stratified(raw, test_fraction):
  """Pins per-class test counts == round(test_fraction * class count)."""
  split = data.load_digits(test_fraction=test_fraction)
  class_counts = np.bincount(raw.target, minlength=10)
  np.testing.assert_array_equal(
      np.bincount(split.y_test, minlength=10),
      np.round(test_fraction * class_counts).astype(int),
  )
  np.testing.assert_array_equal(
      np.bincount(split.y_train, minlength=10) + np.bincount(split.y_test, minlength=10),
      class_counts,
  )


def test_load_digits_is_a_partition_of_the_dataset(digits, raw):
  """Pins disjoint train/test whose union is exactly scikit-learn's dataset (as a multiset)."""
  expected = _row_counts((raw.data / 16.0).astype(np.float32), raw.target.astype(np.int32))
  train = _row_counts(digits.x_train, digits.y_train)
  test = _row_counts(digits.x_test, digits.y_test)
  union = dict(train)
  for key, count in test.items():
    union[key] = union.get(key, 0) + count
  # Counted with multiplicity (the data holds some identical images): every
  # example lands in exactly one split.
  assert union == expected


def test_load_digits_deterministic_by_seed(digits):
  """Pins same seed -> identical split; another seed -> another split with the same class counts."""
  again = data.load_digits()
  for a, b in zip(digits, again):
    np.testing.assert_array_equal(a, b)
  other = data.load_digits(seed=1)
  assert not np.array_equal(digits.x_test, other.x_test)
  np.testing.assert_array_equal(
      np.bincount(digits.y_test, minlength=10), np.bincount(other.y_test, minlength=10)
  )


@pytest.mark.parametrize("test_fraction", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_load_digits_rejects_bad_test_fraction(test_fraction):
  """Pins a ValueError naming test_fraction outside (0, 1)."""
  with pytest.raises(ValueError, match=r"test_fraction must lie in \(0, 1\)"):
    data.load_digits(test_fraction=test_fraction)


def test_standardize_uses_train_statistics():
  """Pins (x - train mean) / train std for every array, float32 out, constant columns finite."""
  x_train = np.array([[0.0, 5.0, 1.0], [2.0, 5.0, 3.0], [4.0, 5.0, 5.0]])
  x_test = np.array([[6.0, 7.0, -1.0]])
  out = data.standardize(x_train, x_test)
  assert isinstance(out, tuple) and len(out) == 2
  train, test = out
  assert train.dtype == test.dtype == np.float32
  std = np.sqrt(8 / 3)
  np.testing.assert_allclose(train[:, 0], [-2 / std, 0.0, 2 / std], rtol=1e-6)
  # The test row uses the *train* mean (2, 5, 3) and std, not its own.
  np.testing.assert_allclose(test[0], [4 / std, 2.0, -4 / std], rtol=1e-6)
  # The constant column is only centered.
  np.testing.assert_array_equal(train[:, 1], 0.0)


def test_standardize_digits(digits):
  """Pins zero-mean unit-std train features, finite everywhere despite always-blank pixels."""
  std_train = digits.x_train.std(axis=0)
  assert (std_train == 0).any()  # the digits have constant pixels
  train, test = data.standardize(digits.x_train, digits.x_test)
  assert np.isfinite(train).all() and np.isfinite(test).all()
  varying = std_train > 1e-6
  np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-5)
  np.testing.assert_allclose(train.std(axis=0)[varying], 1.0, rtol=1e-4)
  np.testing.assert_array_equal(train[:, ~varying], 0.0)
  only_train = data.standardize(digits.x_train)
  assert len(only_train) == 1
  np.testing.assert_array_equal(only_train[0], train)


def test_dataset_standardized_uses_training_statistics():
  digits = data.load_digits()
  out = digits.standardized()
  np.testing.assert_allclose(out.x_train.mean(axis=0), 0.0, atol=1e-5)
  x_train, x_test = data.standardize(digits.x_train, digits.x_test)
  np.testing.assert_array_equal(out.x_test, x_test)
  np.testing.assert_array_equal(out.y_train, digits.y_train)
  assert out.x_train.dtype == np.float32
