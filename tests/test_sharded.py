"""Vocab-parallel losses equal their single-device counterparts on any mesh."""

import contextlib
import functools

import jax
import jax.numpy as jnp
import jax.test_util
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from jaxsoftmax import cross_entropy
from jaxsoftmax import fused_linear_cross_entropy
from jaxsoftmax import sharded

TOL = {jnp.float64: 1e-12, jnp.float32: 2e-5}


def _mesh(*shape):
  names = ("model",) if len(shape) == 1 else ("data", "model")
  if np.prod(shape) > jax.device_count():
    pytest.skip(f"needs {np.prod(shape)} devices, have {jax.device_count()}")
  return jax.make_mesh(shape, names)


def _problem(seed, n, d, k, dtype=jnp.float64):
  ks = jax.random.split(jax.random.key(seed), 5)
  x = jax.random.normal(ks[0], (n, d), dtype)
  w = jax.random.normal(ks[1], (d, k), dtype)
  b = jax.random.normal(ks[2], (k,), dtype)
  y = jax.random.randint(ks[3], (n,), 0, k)
  wt = jax.random.uniform(ks[4], (n,), dtype, 0.1, 2.0)
  return x, w, b, y, wt


def _value_and_grads(loss):
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))


def _assert_close(a, b, tol):
  (va, ga), (vb, gb) = a, b
  np.testing.assert_allclose(va, vb, rtol=tol, atol=tol)
  for x, y in zip(ga, gb):
    np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


OPTIONS = [
    dict(),
    dict(label_smoothing=0.1, ignore_index=-1),
    dict(label_smoothing=0.2, chunk_size=3, z_loss=1e-3),
    dict(reduction="sum", chunk_size=4),
]


@pytest.mark.parametrize("devices", [1, 2, 4, 8])
@pytest.mark.parametrize("num_classes", [40, 37])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
def test_vocab_parallel_matches_fused(devices, num_classes, options):
  mesh = _mesh(devices)
  x, w, b, y, wt = _problem(devices + num_classes, 16, 6, num_classes)
  y = y.at[2].set(-1) if options.get("ignore_index") == -1 else y
  fused_opts = {k: v for k, v in options.items() if k != "chunk_size"}

  def single(x, w, b, wt):
    return fused_linear_cross_entropy(x, w, b, y, weights=wt, **fused_opts)

  def parallel(x, w, b, wt):
    return sharded.vocab_parallel_cross_entropy(
        x, w, b, y, mesh=mesh, weights=wt, **options
    )

  _assert_close(
      _value_and_grads(single)(x, w, b, wt),
      _value_and_grads(parallel)(x, w, b, wt),
      TOL[jnp.float64],
  )


@pytest.mark.parametrize("shape", [(2, 4), (4, 2), (8, 1)])
def test_data_times_model_mesh_matches_cross_entropy(shape):
  mesh = _mesh(*shape)
  x, w, b, y, wt = _problem(3, 16, 5, 29, jnp.float32)

  def single(x, w, b, wt):
    return cross_entropy(x @ w + b[None, :], y, weights=wt, label_smoothing=0.1)

  def parallel(x, w, b, wt):
    return sharded.vocab_parallel_cross_entropy(
        x, w, b, y, mesh=mesh, data_axis_name="data", weights=wt,
        label_smoothing=0.1, chunk_size=4,
    )

  _assert_close(
      jax.value_and_grad(single, argnums=(0, 1, 2, 3))(x, w, b, wt),
      _value_and_grads(parallel)(x, w, b, wt),
      TOL[jnp.float32],
  )


def test_reduction_none_on_a_data_mesh():
  mesh = _mesh(2, 4)
  x, w, b, y, _ = _problem(4, 8, 3, 21)
  out = jax.jit(
      lambda x: sharded.vocab_parallel_cross_entropy(
          x, w, b, y, mesh=mesh, data_axis_name="data", reduction="none"
      )
  )(x)
  np.testing.assert_allclose(
      out, cross_entropy(x @ w + b[None, :], y, reduction="none"), rtol=1e-12
  )


def test_check_grads_on_the_shard_mapped_function():
  mesh = _mesh(4)
  x, w, b, y, _ = _problem(5, 6, 3, 10)
  f = jax.jit(
      lambda x, w, b: sharded.vocab_parallel_cross_entropy(
          x, w, b, y, mesh=mesh, label_smoothing=0.1, chunk_size=2
      )
  )
  jax.test_util.check_grads(f, (x, w, b), order=1, modes=["rev"])


def test_smoothing_is_over_the_global_classes():
  """Pins the bug class where smoothing over the local shard makes the loss
  depend on the device count."""
  x, w, b, y, _ = _problem(6, 8, 4, 24)
  losses = [
      float(
          sharded.vocab_parallel_cross_entropy(
              x, w, b, y, mesh=_mesh(p), label_smoothing=0.3
          )
      )
      for p in (1, 2, 8)
  ]
  np.testing.assert_allclose(losses, losses[0], rtol=1e-13)


def _any_mesh(kind, shape, names):
  """The three meshes a user builds: jax.make_mesh's default (Explicit axes),
  Auto axes, and a plain jax.sharding.Mesh."""
  size = int(np.prod(shape))
  if size > jax.device_count():
    pytest.skip(f"needs {size} devices, have {jax.device_count()}")
  if kind == "make_mesh":
    return jax.make_mesh(shape, names)
  if kind == "auto":
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))
  return Mesh(np.asarray(jax.devices()[:size]).reshape(shape), names)


def _class_split(mesh, w, b):
  return sharded.shard_params((w, b), mesh, (P(None, "model"), P("model")))


# Each case: (mesh shape, mesh axes, the sharded call, its single-device
# reference, whether w and b are placed with shard_params first). Every call
# returns (outputs, a scalar to differentiate).
def _vocab_ce(mesh, x, w, b, y, wt):
  loss = sharded.vocab_parallel_cross_entropy(
      x, w, b, y, mesh=mesh, data_axis_name="data", weights=wt,
      label_smoothing=0.1, chunk_size=2)
  return loss, loss


def _feature_ce(mesh, x, w, b, y, wt):
  loss = sharded.feature_parallel_cross_entropy(
      x, w, b, y, mesh=mesh, weights=wt, label_smoothing=0.1)
  return loss, loss


def _ce_reference(mesh, x, w, b, y, wt):
  loss = cross_entropy(x @ w + b[None, :], y, weights=wt, label_smoothing=0.1)
  return loss, loss


def _top_k(mesh, x, w, b, y, wt):
  vals, ids = sharded.vocab_parallel_top_k(x, w, b, 3, mesh=mesh)
  pred = sharded.vocab_parallel_predict(x, w, b, mesh=mesh)
  return (vals, ids, pred), jnp.sum(vals * wt[:, None])


def _top_k_reference(mesh, x, w, b, y, wt):
  vals, ids = jax.lax.top_k(x @ w + b[None, :], 3)
  return (vals, ids, ids[:, 0]), jnp.sum(vals * wt[:, None])


def _placement(mesh, x, w, b, y, wt):
  w, b = _class_split(mesh, w, b)
  x = sharded.shard_params(x, mesh, P("data"))
  return (w, b, x), jnp.sum(w ** 2) + jnp.sum(x @ w * b[None, :])


def _placement_reference(mesh, x, w, b, y, wt):
  return (w, b, x), jnp.sum(w ** 2) + jnp.sum(x @ w * b[None, :])


MESH_CASES = {
    "vocab_parallel_cross_entropy": ((2, 2), ("data", "model"), _vocab_ce,
                                     _ce_reference, False),
    "vocab_parallel_cross_entropy_placed": ((2, 2), ("data", "model"),
                                            _vocab_ce, _ce_reference, True),
    "feature_parallel_cross_entropy": ((2,), ("model",), _feature_ce,
                                       _ce_reference, False),
    "vocab_parallel_top_k_and_predict": ((4,), ("model",), _top_k,
                                         _top_k_reference, True),
    "shard_params": ((2, 2), ("data", "model"), _placement,
                     _placement_reference, False),
}


@pytest.mark.parametrize("in_context", [False, True],
                         ids=["no_context", "set_mesh"])
@pytest.mark.parametrize("kind", ["make_mesh", "auto", "Mesh"])
@pytest.mark.parametrize("case", MESH_CASES)
def test_eager_jit_and_grad_agree_on_every_mesh_kind(case, kind, in_context):
  """Pins the bug where jax.grad of a sharded loss failed eagerly on a
  jax.make_mesh mesh (Explicit axes) outside jax.set_mesh: "Length of device
  assignment 1 is not equal to the size of the mesh 2"."""
  shape, names, call, reference, placed = MESH_CASES[case]
  mesh = _any_mesh(kind, shape, names)
  x, w, b, y, wt = _problem(13, 8, 4, 12)
  scope = jax.set_mesh(mesh) if in_context else contextlib.nullcontext()
  with scope:
    args = (x, *_class_split(mesh, w, b)) if placed else (x, w, b)
    outputs = lambda x, w, b: call(mesh, x, w, b, y, wt)[0]
    scalar = lambda x, w, b: call(mesh, x, w, b, y, wt)[1]
    grad = jax.grad(scalar, argnums=(0, 1, 2))
    got = {
        "eager": outputs(*args),
        "jit": jax.jit(outputs)(*args),
        "grad": grad(*args),
        "jit_grad": jax.jit(grad)(*args),
    }
  want_outputs, _ = reference(mesh, x, w, b, y, wt)
  want_grad = jax.grad(lambda *a: reference(mesh, *a, y, wt)[1],
                       argnums=(0, 1, 2))(x, w, b)
  want = {"eager": want_outputs, "jit": want_outputs, "grad": want_grad,
          "jit_grad": want_grad}
  for way in got:
    jax.tree.map(
        functools.partial(np.testing.assert_allclose, rtol=1e-12, atol=1e-12,
                          err_msg=f"{case} on {kind}, {way}"),
        got[way], want[way],
    )


def test_presharded_inputs_and_output_layout():
  mesh = _mesh(4)
  x, w, b, y, _ = _problem(8, 8, 3, 16)
  ws = jax.device_put(w, NamedSharding(mesh, P(None, "model")))
  bs = jax.device_put(b, NamedSharding(mesh, P("model")))
  assert ws.addressable_shards[0].data.shape == (3, 4)
  g = jax.jit(
      jax.grad(
          lambda w, b: sharded.vocab_parallel_cross_entropy(
              x, w, b, y, mesh=mesh
          )
      )
  )(ws, bs)
  assert g.sharding.is_equivalent_to(NamedSharding(mesh, P(None, "model")), 2)


def test_feature_parallel_matches_cross_entropy():
  mesh = _mesh(4)
  x, w, b, y, wt = _problem(9, 8, 12, 15)

  def single(x, w, b, wt):
    return cross_entropy(x @ w + b[None, :], y, weights=wt, label_smoothing=0.1)

  def parallel(x, w, b, wt):
    return sharded.feature_parallel_cross_entropy(
        x, w, b, y, mesh=mesh, weights=wt, label_smoothing=0.1
    )

  _assert_close(
      jax.value_and_grad(single, argnums=(0, 1, 2, 3))(x, w, b, wt),
      _value_and_grads(parallel)(x, w, b, wt),
      TOL[jnp.float64],
  )


@pytest.mark.parametrize("devices", [1, 2, 8])
def test_top_k_and_predict_match_the_full_logits(devices):
  mesh = _mesh(devices)
  x, w, b, _, _ = _problem(10, 6, 4, 43)
  # Ties across shard borders: the lower class id must win, as in lax.top_k.
  w = w.at[:, 30].set(w[:, 2]).at[:, 41].set(w[:, 2])
  b = b.at[30].set(b[2]).at[41].set(b[2])
  vals, ids = sharded.vocab_parallel_top_k(x, w, b, 5, mesh=mesh)
  ref_vals, ref_ids = jax.lax.top_k(x @ w + b[None, :], 5)
  np.testing.assert_array_equal(ids, ref_ids)
  np.testing.assert_allclose(vals, ref_vals, rtol=1e-12)
  np.testing.assert_array_equal(
      sharded.vocab_parallel_predict(x, w, b, mesh=mesh),
      jnp.argmax(x @ w + b[None, :], axis=1),
  )


def test_padding_classes_is_exact():
  w, b = sharded.pad_classes(jnp.ones((2, 5)), None, 4)
  assert w.shape == (2, 8) and b.shape == (8,)
  assert np.all(np.isneginf(b[5:])) and not np.any(w[:, 5:])


def test_per_device_weight_bytes_fall_as_one_over_p():
  x, w, b, y, _ = _problem(11, 8, 16, 64, jnp.float32)
  per_device = []
  for p in (1, 2, 4, 8):
    mesh = _mesh(p)
    ws = jax.device_put(w, NamedSharding(mesh, P(None, "model")))
    per_device.append(ws.addressable_shards[0].data.nbytes)
  assert per_device == [w.nbytes // p for p in (1, 2, 4, 8)]


def test_clear_errors():
  mesh = _mesh(2, 4)
  x, w, b, y, _ = _problem(12, 6, 4, 16)
  vp = functools.partial(sharded.vocab_parallel_cross_entropy, mesh=mesh)
  with pytest.raises(ValueError, match="not an axis of the mesh"):
    vp(x, w, b, y, axis_name="vocab")
  with pytest.raises(ValueError, match="divisible"):
    vp(x[:5], w, b, y[:5], data_axis_name="data")
  with pytest.raises(ValueError, match="must be sharded as"):
    bad = jax.device_put(w, NamedSharding(mesh, P("model", None)))
    vp(x, bad, b, y)
  with pytest.raises(ValueError, match="labels"):
    vp(x, w, b, y.at[0].set(16))
  with pytest.raises(ValueError, match="features"):
    vp(x[:, :2], w, b, y)
  with pytest.raises(ValueError, match="chunk_size"):
    vp(x, w, b, y, chunk_size=0)
  with pytest.raises(TypeError, match="mesh"):
    sharded.vocab_parallel_cross_entropy(x, w, b, y, mesh=None)
