"""fit on a mesh: class-sharded training equals single-device training.

Runs on the eight simulated CPU devices of conftest.py. Each fit compiles
its epoch once, so the configurations are few and shared through
module-level fixtures.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from jaxsoftmax import fused_linear_cross_entropy
from jaxsoftmax import linear_init
from jaxsoftmax.training._fit import fit
from jaxsoftmax.sharded import shard_params
from jaxsoftmax.sharded import vocab_parallel_cross_entropy

N, D, K, B = 48, 5, 40, 16
EPOCHS = 3
KEY = jax.random.key(3)
ADAM = optax.adam(0.05)
CLASS_SPLIT = {"w": P(None, "model"), "b": P("model")}
# Float64 runs take the same arithmetic up to summation order; float32 ones
# drift by rounding over the Adam steps.
TOL = {jnp.float64: 1e-12, jnp.float32: 1e-5}


def _mesh(*shape):
  if np.prod(shape) > jax.device_count():
    pytest.skip(f"needs {np.prod(shape)} devices, have {jax.device_count()}")
  names = ("model",) if len(shape) == 1 else ("data", "model")
  return jax.make_mesh(shape, names)


def _data(dtype):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, D)).astype(dtype)
  y = rng.integers(0, K, size=N).astype(np.int32)
  return x, y


def _single_device_loss(p, x, y):
  return fused_linear_cross_entropy(x, p["w"], p["b"], y)


def _fit(loss, dtype, **kwargs):
  params = linear_init(jax.random.key(0), D, K, dtype=dtype)
  options = dict(optimizer=ADAM, epochs=EPOCHS, batch_size=B, key=KEY)
  return fit(loss, params, _data(dtype), **{**options, **kwargs})


@pytest.fixture(scope="module", params=[jnp.float64, jnp.float32],
                ids=["float64", "float32"])
def reference(request):
  return request.param, _fit(_single_device_loss, request.param)


# Model-only mesh in float64 (tight), data x model mesh in float32.
MESHES = {jnp.float64: (8,), jnp.float32: (2, 4)}


@functools.cache
def _sharded_loss(shape):
  """One loss object per mesh, so fit's compiled epoch is reused."""
  mesh = _mesh(*shape)
  data_axis = "data" if "data" in mesh.axis_names else None

  def loss(p, x, y):
    return vocab_parallel_cross_entropy(
        x, p["w"], p["b"], y, mesh=mesh, data_axis_name=data_axis
    )

  return mesh, loss


def test_class_sharded_fit_equals_single_device_fit(reference):
  dtype, (ref_params, ref_history) = reference
  mesh, loss = _sharded_loss(MESHES[dtype])
  params, history = _fit(loss, dtype, mesh=mesh, param_specs=CLASS_SPLIT)
  tol = TOL[dtype]
  np.testing.assert_allclose(history.loss, ref_history.loss, rtol=tol)
  for name in ("w", "b"):
    got, want = params[name], ref_params[name]
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=tol,
                               atol=tol * float(jnp.max(jnp.abs(want))))
    # The params come back split as specified: each device holds K/P classes.
    assert got.sharding.is_equivalent_to(
        NamedSharding(mesh, CLASS_SPLIT[name]), got.ndim)
    assert got.addressable_shards[0].data.shape[-1] == K // mesh.shape["model"]


def test_sharded_resume_equals_a_straight_run_and_keeps_the_layout(tmp_path):
  mesh, loss = _sharded_loss(MESHES[jnp.float32])
  options = dict(mesh=mesh, param_specs=CLASS_SPLIT)
  straight, _ = _fit(loss, jnp.float32, **options)
  _fit(loss, jnp.float32, checkpoint_dir=tmp_path, epochs=2, **options)
  resumed, history = _fit(loss, jnp.float32, checkpoint_dir=tmp_path,
                          resume=True, **options)
  assert history.epoch == [1, 2, 3]
  for name in ("w", "b"):
    np.testing.assert_array_equal(resumed[name], straight[name])
    assert resumed[name].sharding.spec == CLASS_SPLIT[name]


def test_optimizer_state_follows_the_params_layout():
  """fit builds the state with jit(init) in the mesh scope; Adam's moments
  must come out split like w (an eager init leaves the count on one device)."""
  mesh = _mesh(2, 4)
  params = shard_params(linear_init(jax.random.key(0), D, K), mesh, CLASS_SPLIT)
  with jax.set_mesh(mesh):
    adam_state = jax.jit(ADAM.init)(params)[0]
  for moment in (adam_state.mu, adam_state.nu):
    for name, spec in CLASS_SPLIT.items():
      assert moment[name].sharding.is_equivalent_to(
          NamedSharding(mesh, spec), moment[name].ndim)
  assert adam_state.count.sharding.is_fully_replicated


def test_fit_keeps_presharded_params_and_splits_minibatch_rows():
  mesh = _mesh(2, 4)
  w = shard_params(jnp.ones((D, K)), mesh, P(None, "model"))
  seen = []

  def loss(p, x, y):
    seen.append(tuple(jax.typeof(a).sharding.spec for a in (p["w"], p["b"], x)))
    return vocab_parallel_cross_entropy(x, p["w"], p["b"], y, mesh=mesh,
                                        data_axis_name="data")

  params, _ = fit(loss, {"w": w, "b": jnp.zeros(K)}, _data(np.float32),
                  optimizer=optax.sgd(0.1), epochs=1, batch_size=B, key=KEY,
                  mesh=mesh)
  # w keeps its split, b (unplaced) is replicated, x's rows are split.
  assert seen[0] == (P(None, "model"), P(None), P("data", None))
  assert params["w"].sharding.spec == P(None, "model")
  assert params["b"].sharding.is_fully_replicated


def test_shard_params_takes_a_prefix_of_specs_and_constrains_under_jit():
  mesh = _mesh(2, 4)
  tree = {"head": {"w": np.ones((8, 3)), "b": np.ones(8)}, "emb": np.ones(4)}
  placed = shard_params(tree, mesh, {"head": P("model"), "emb": P()})
  assert placed["head"]["w"].sharding.spec == P("model")
  assert placed["head"]["b"].sharding.spec == P("model")
  assert placed["emb"].sharding.is_fully_replicated
  assert all(a.sharding.is_fully_replicated
             for a in jax.tree.leaves(shard_params(tree, mesh)))
  rows = jax.jit(lambda x: shard_params(x * 2, mesh, P("data")))(
      placed["emb"])
  assert rows.sharding.spec == P("data")
  np.testing.assert_array_equal(rows, 2 * np.ones(4))


def test_clear_errors():
  mesh = _mesh(2, 4)
  params = linear_init(jax.random.key(0), D, K)
  options = dict(optimizer=ADAM, epochs=1, key=KEY)
  with pytest.raises(ValueError, match=r"batch_size \(5\) must be divisible"
                     r" by the size of mesh axis 'data' \(2\)"):
    fit(_single_device_loss, params, _data(np.float32), batch_size=5,
        mesh=mesh, **options)
  with pytest.raises(ValueError, match="param_specs needs a mesh"):
    fit(_single_device_loss, params, _data(np.float32), batch_size=B,
        param_specs=CLASS_SPLIT, **options)
  with pytest.raises(TypeError, match="mesh must be None or a"):
    fit(_single_device_loss, params, _data(np.float32), batch_size=B,
        mesh="model", **options)
  with pytest.raises(ValueError, match=r"params\['b'\] has shape \(42,\);"
                     r" its dimension 0 \(42\) must be divisible by 4"):
    shard_params(linear_init(jax.random.key(0), D, 42), mesh, CLASS_SPLIT)
  with pytest.raises(ValueError, match="not an axis of the mesh"):
    shard_params(params, mesh, P("vocab"))
  with pytest.raises(ValueError, match="prefix of params"):
    shard_params(params, mesh, {"w": P()})
  with pytest.raises(TypeError, match="PartitionSpec"):
    shard_params(params, mesh, {"w": "model", "b": P()})
