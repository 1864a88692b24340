"""Eager value checks reduce on the device: a passing check copies no array.

Regression tests for checks that copied whole arrays to the host
(``np.asarray(labels)``) only to find nothing wrong.
"""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np
import pytest

import jaxsoftmax as js
from jaxsoftmax._core import validation as v
from jaxsoftmax import metrics

N, K = 4096, 64


@pytest.fixture
def host_copies(monkeypatch):
  """Sizes of the JAX arrays whose values reach the host during a test.

  On CPU the transfer guard never fires (device memory is host memory), but
  NumPy reads a sharded array through ``_value``, so counting there catches
  ``np.asarray(x)``, ``x.tolist()``, ``bool(x)`` and ``jax.device_get(x)``.
  """
  sizes = []
  cls = type(jnp.zeros(()))
  read = cls._value.fget

  def counted(self):
    sizes.append(self.size)
    return read(self)

  monkeypatch.setattr(cls, "_value", property(counted))
  return sizes


def _sharded(x):
  mesh = jax.make_mesh((8,), ("batch",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  return jax.device_put(x, NamedSharding(mesh, PartitionSpec("batch")))


def _inputs():
  logits = jax.random.normal(jax.random.key(0), (N, K))
  labels = jnp.arange(N, dtype=jnp.int32) % K
  weights = jnp.ones(N)
  return _sharded(logits), _sharded(labels), _sharded(weights)


def test_passing_checks_copy_only_scalars(host_copies):
  logits, labels, weights = _inputs()
  probs = _sharded(jax.nn.softmax(logits))
  # Accelerators enforce the guard; the helper's scalar is explicitly allowed.
  with jax.transfer_guard_device_to_host("disallow_explicit"):
    v.check_finite("logits", logits)
    v.check_labels_in_range("labels", labels, K, ignore_index=-100)
    v.check_nonnegative("weights", weights)
    v.check_probabilities("probs", probs)
    js.cross_entropy(logits, labels, weights=weights)
    js.binary_cross_entropy(logits, _sharded(jnp.ones((N, K))))
    metrics.roc_auc_ovr(probs, labels)
  assert host_copies and max(host_copies) == 1, host_copies


def test_failing_check_still_describes_the_values(host_copies):
  logits, labels, _ = _inputs()
  labels = labels.at[7].set(K)
  with pytest.raises(ValueError, match=rf"got \[{K}\] at index \[\(7,\)\]"
                     rf" \(1 bad of {N}\)"):
    v.check_labels_in_range("labels", labels, K)
  assert N in host_copies  # the copy happens, but only to describe this


def test_host_values_stay_on_the_host():
  # NumPy data (corpora, counts for tree building) is checked with NumPy.
  assert v.on_host(lambda xp, a: xp is np, np.ones(3))
  assert not v.on_host(lambda xp, a: xp is np, jnp.ones(3))


def test_concrete_array_seen_while_tracing_is_not_staged():
  labels, x = jnp.arange(8) % 3, jnp.ones(8)

  def check():
    v.check_labels_in_range("labels", labels, 3)
    v.check_finite("x", x)

  assert not jax.make_jaxpr(check)().eqns
