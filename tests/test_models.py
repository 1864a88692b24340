"""Models: init shapes, dtypes and statistics; logits against NumPy references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsoftmax as js

INIT_DTYPES = [jnp.float32, jnp.float64, jnp.bfloat16]
# Few distinct weight shapes: each (shape, dtype) of jax.random.normal compiles
# once per process, and that dominates this file's runtime.
D, K = 6, 4
MLP_SIZES = [D, K, K]  # weights (6, 4) and (4, 4)
WIDE = (256, 1024)
# Tolerance per dtype for logits against a float64 NumPy reference.
LOGITS_RTOL = {
    np.dtype(np.float32): 1e-5,
    np.dtype(np.float64): 1e-12,
    np.dtype(jnp.bfloat16): 2e-2,
}


def _np_linear(params, x):
  w = np.asarray(params["w"], np.float64)
  return np.asarray(x, np.float64) @ w + np.asarray(params["b"], np.float64)


def _np_mlp(params, x):
  h = np.asarray(x, np.float64)
  for i, layer in enumerate(params):
    h = h @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
    if i < len(params) - 1:
      h = np.maximum(h, 0.0)
  return h


def _random_mlp(seed, sizes, dtype=np.float64):
  rng = np.random.default_rng(seed)
  return [
      {
          "w": jnp.asarray(rng.normal(size=(a, b)) / np.sqrt(a), dtype),
          "b": jnp.asarray(rng.normal(size=(b,)), dtype),
      }
      for a, b in zip(sizes[:-1], sizes[1:])
  ]


def _assert_close(actual, expected, dtype):
  rtol = LOGITS_RTOL[np.dtype(dtype)]
  scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
  np.testing.assert_allclose(
      np.asarray(actual, np.float64), expected, rtol=rtol, atol=rtol * scale
  )


# ----------------------------------------------------------------------------
# linear_init / mlp_init.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", INIT_DTYPES)
def test_linear_init_shapes_dtypes_zero_bias(dtype):
  """Pins linear_init -> {"w": [d, K], "b": [K]} in the requested dtype, b = 0."""
  params = js.linear_init(jax.random.key(0), D, K, dtype=dtype)
  assert set(params) == {"w", "b"}
  chex.assert_shape(params["w"], (D, K))
  chex.assert_shape(params["b"], (K,))
  chex.assert_type([params["w"], params["b"]], dtype)
  np.testing.assert_array_equal(np.asarray(params["b"], np.float32), 0.0)
  assert np.all(np.isfinite(np.asarray(params["w"], np.float32)))


def test_linear_init_default_dtype_is_float32():
  """Pins the float32 default even with x64 enabled."""
  params = js.linear_init(jax.random.key(0), D, K)
  chex.assert_type([params["w"], params["b"]], jnp.float32)
  for layer in js.mlp_init(jax.random.key(0), MLP_SIZES):
    chex.assert_type([layer["w"], layer["b"]], jnp.float32)


def test_linear_init_lecun_statistics():
  """Pins w ~ N(0, 1/d): mean ~0 and variance ~1/d on a wide layer (loose statistical tolerance)."""
  d, k = WIDE
  w = np.asarray(js.linear_init(jax.random.key(1), d, k, dtype=jnp.float64)["w"])
  assert abs(w.mean()) < 5 * np.sqrt(1 / d / w.size)
  np.testing.assert_allclose(w.var(), 1 / d, rtol=0.03)


def test_linear_init_deterministic_by_key():
  """Pins same key -> identical params, different key -> different weights."""
  a = js.linear_init(jax.random.key(3), D, K)
  b = js.linear_init(jax.random.key(3), D, K)
  c = js.linear_init(jax.random.key(4), D, K)
  chex.assert_trees_all_equal(a, b)
  assert not np.array_equal(a["w"], c["w"])


@pytest.mark.parametrize("dtype", INIT_DTYPES)
def test_mlp_init_shapes_dtypes_zero_bias(dtype):
  """Pins mlp_init -> one {"w": [fan_in, fan_out], "b": [fan_out]} per layer, requested dtype, b = 0."""
  sizes = MLP_SIZES
  params = js.mlp_init(jax.random.key(0), sizes, dtype=dtype)
  assert isinstance(params, list) and len(params) == 2
  for layer, fan_in, fan_out in zip(params, sizes[:-1], sizes[1:]):
    assert set(layer) == {"w", "b"}
    chex.assert_shape(layer["w"], (fan_in, fan_out))
    chex.assert_shape(layer["b"], (fan_out,))
    chex.assert_type([layer["w"], layer["b"]], dtype)
    np.testing.assert_array_equal(np.asarray(layer["b"], np.float32), 0.0)


def test_mlp_init_accepts_tuple_and_single_layer():
  """Pins that layer_sizes may be any sequence and [d, K] gives one (output) layer."""
  params = js.mlp_init(jax.random.key(0), (D, K))
  assert len(params) == 1
  chex.assert_shape(params[0]["w"], (D, K))
  # A lone layer is the output layer: Glorot scale, same draw as linear_init's.
  lecun = js.linear_init(jax.random.split(jax.random.key(0), 1)[0], D, K)["w"]
  np.testing.assert_allclose(
      params[0]["w"], lecun * np.sqrt(D) * np.sqrt(2 / (D + K)), rtol=1e-6
  )


def test_mlp_init_he_hidden_glorot_output_statistics():
  """Pins He variance 2/fan_in for hidden layers and Glorot 2/(fan_in+fan_out) for the output layer."""
  sizes = [*WIDE, 384]  # fan_in != fan_out, so He and Glorot differ by >= 25%
  hidden, output = js.mlp_init(jax.random.key(5), sizes, dtype=jnp.float64)
  w_hidden = np.asarray(hidden["w"])
  w_output = np.asarray(output["w"])
  np.testing.assert_allclose(w_hidden.var(), 2 / 256, rtol=0.03)
  np.testing.assert_allclose(w_output.var(), 2 / (1024 + 384), rtol=0.03)
  assert abs(w_hidden.mean()) < 5 * np.sqrt(2 / 256 / w_hidden.size)
  assert abs(w_output.mean()) < 5 * np.sqrt(2 / 1408 / w_output.size)


def test_mlp_init_deterministic_by_key_and_layers_independent():
  """Pins same key -> identical params, different key -> different, and equal-shaped layers differ."""
  sizes = [D, K, K, K]
  a = js.mlp_init(jax.random.key(7), sizes)
  b = js.mlp_init(jax.random.key(7), sizes)
  c = js.mlp_init(jax.random.key(8), sizes)
  chex.assert_trees_all_equal(a, b)
  assert not np.array_equal(a[0]["w"], c[0]["w"])
  # Layers 1 (He) and 2 (Glorot) share a shape; rescaled to unit variance
  # they would be equal if they shared a key.
  unit_1 = np.asarray(a[1]["w"]) / np.sqrt(2 / K)
  unit_2 = np.asarray(a[2]["w"]) / np.sqrt(2 / (2 * K))
  assert not np.allclose(unit_1, unit_2)


@pytest.mark.parametrize(
    "num_features, num_classes", [(0, 3), (3, 0), (-1, 3), (2.5, 3), (3, None)]
)
def test_linear_init_rejects_bad_sizes(num_features, num_classes):
  """Pins a ValueError for non-positive or non-integer sizes."""
  with pytest.raises(ValueError, match=r"must be a positive int"):
    js.linear_init(jax.random.key(0), num_features, num_classes)


@pytest.mark.parametrize(
    "sizes, match",
    [
        ([], r"layer_sizes must list at least"),
        ([5], r"layer_sizes must list at least"),
        ([5, 0, 3], r"layer_sizes\[1\] must be a positive int"),
        ([5, 4, -2], r"layer_sizes\[2\] must be a positive int"),
        ([5.0, 3], r"layer_sizes\[0\] must be a positive int"),
    ],
)
def test_mlp_init_rejects_bad_sizes(sizes, match):
  """Pins a ValueError naming the bad entry of layer_sizes."""
  with pytest.raises(ValueError, match=match):
    js.mlp_init(jax.random.key(0), sizes)


# ----------------------------------------------------------------------------
# linear_logits / mlp_logits.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_logits_matches_numpy(dtype):
  """Pins linear_logits(params, x) == x @ w + b (NumPy, float64) with per-dtype tolerance."""
  rng = np.random.default_rng(0)
  params = {
      "w": jnp.asarray(rng.normal(size=(5, 4)), dtype),
      "b": jnp.asarray(rng.normal(size=(4,)), dtype),
  }
  x = jnp.asarray(rng.normal(size=(6, 5)), dtype)
  logits = js.linear_logits(params, x)
  chex.assert_shape(logits, (6, 4))
  chex.assert_type(logits, dtype)
  _assert_close(logits, _np_linear(params, x), dtype)


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)])
def test_linear_logits_leading_batch_dims(lead):
  """Pins [..., d] -> [..., K] for any leading dims, each row as in the 2-D call."""
  rng = np.random.default_rng(1)
  params = {"w": jnp.asarray(rng.normal(size=(5, 4))), "b": jnp.asarray(rng.normal(size=(4,)))}
  x = jnp.asarray(rng.normal(size=(*lead, 5)))
  logits = js.linear_logits(params, x)
  chex.assert_shape(logits, (*lead, 4))
  _assert_close(logits, _np_linear(params, x), np.float64)


@pytest.mark.parametrize("sizes", [[5, 3], [5, 6, 3], [5, 6, 7, 3]])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mlp_logits_matches_numpy(sizes, dtype):
  """Pins mlp_logits == NumPy ReLU MLP (ReLU on hidden layers only), 0-2 hidden layers."""
  params = _random_mlp(2, sizes, dtype)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(6, 5)), dtype)
  logits = js.mlp_logits(params, x)
  chex.assert_shape(logits, (6, 3))
  chex.assert_type(logits, dtype)
  _assert_close(logits, _np_mlp(params, x), dtype)


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)])
def test_mlp_logits_leading_batch_dims(lead):
  """Pins [..., d] -> [..., K] for the MLP with any leading dims."""
  params = _random_mlp(4, [5, 6, 3])
  x = jnp.asarray(np.random.default_rng(5).normal(size=(*lead, 5)))
  logits = js.mlp_logits(params, x)
  chex.assert_shape(logits, (*lead, 3))
  _assert_close(logits, _np_mlp(params, x), np.float64)


def test_mlp_logits_of_init_params():
  """Pins that mlp_init's output feeds mlp_logits (zero biases, float32)."""
  params = js.mlp_init(jax.random.key(0), MLP_SIZES)
  x = jnp.ones((2, D), jnp.float32)
  _assert_close(js.mlp_logits(params, x), _np_mlp(params, x), np.float32)


def _linear_params():
  return {"w": jnp.ones((5, 4)), "b": jnp.zeros((4,))}


@pytest.mark.parametrize(
    "params, x, error, match",
    [
        (_linear_params, np.ones((2, 3)), ValueError, r"x must have 5 features"),
        (_linear_params, np.ones(()), ValueError, r"x must have rank >= 1"),
        (_linear_params, np.ones((2, 5), np.int32), TypeError, r"x must have a floating dtype"),
        (lambda: {"w": jnp.ones((5, 4)), "b": jnp.zeros((3,))}, np.ones((2, 5)), ValueError, r"params\['b'\] must have shape \(4,\)"),
        (lambda: {"w": jnp.ones((5,)), "b": jnp.zeros((4,))}, np.ones((2, 5)), ValueError, r"params\['w'\] must have rank 2"),
        (lambda: {"w": jnp.ones((5, 4), jnp.int32), "b": jnp.zeros((4,))}, np.ones((2, 5)), TypeError, r"params\['w'\] must have a floating dtype"),
    ],
    ids=["x_features", "x_scalar", "x_integer", "bias_shape", "w_rank", "w_integer"],
)
def test_linear_logits_rejects_bad_input(params, x, error, match):
  """Pins clear errors naming the argument for bad x or params."""
  with pytest.raises(error, match=match):
    js.linear_logits(params(), x)


@pytest.mark.parametrize(
    "params, x, match",
    [
        (lambda: _random_mlp(0, [5, 6, 3]), np.ones((2, 4)), r"x must have 5 features \(params\[0\]\['w'\] is \(5, 6\)\)"),
        (lambda: _random_mlp(0, [5, 6]) + _random_mlp(0, [7, 3]), np.ones((2, 5)), r"params\[1\]\['w'\] has shape \(7, 3\)"),
        (lambda: [_random_mlp(0, [5, 6])[0], {"w": jnp.ones((6, 3)), "b": jnp.ones((2,))}], np.ones((2, 5)), r"params\[1\]\['b'\] must have shape"),
        (lambda: _random_mlp(0, [5, 3]), np.ones(()), r"x must have rank >= 1"),
    ],
    ids=["x_features", "width_mismatch", "bias_shape", "x_scalar"],
)
def test_mlp_logits_rejects_bad_input(params, x, match):
  """Pins a ValueError naming the offending layer or argument."""
  with pytest.raises(ValueError, match=match):
    js.mlp_logits(params(), x)


def test_mlp_logits_rejects_empty_params():
  """Pins that an MLP with no layer is an error, not the identity (x returned as "logits")."""
  with pytest.raises(ValueError, match=r"params"):
    js.mlp_logits([], jnp.ones((2, 5)))


# ----------------------------------------------------------------------------
# Half precision: bfloat16 storage, float32 accumulation.
# ----------------------------------------------------------------------------


def _bf16_problem():
  rng = np.random.default_rng(6)
  params = _random_mlp(6, [64, 32, 10], jnp.bfloat16)
  x = jnp.asarray(rng.normal(size=(8, 64)), jnp.bfloat16)
  return params, x


def test_bf16_logits_close_to_float32():
  """Pins bf16 params/inputs -> bf16 logits within bf16 tolerance of the float32 computation."""
  params, x = _bf16_problem()
  as_f32 = lambda tree: jax.tree.map(lambda a: a.astype(jnp.float32), tree)
  linear = params[0]
  logits = js.linear_logits(linear, x)
  chex.assert_type(logits, jnp.bfloat16)
  _assert_close(logits, np.asarray(js.linear_logits(as_f32(linear), as_f32(x)), np.float64), jnp.bfloat16)
  mlp = js.mlp_logits(params, x)
  chex.assert_type(mlp, jnp.bfloat16)
  _assert_close(mlp, np.asarray(js.mlp_logits(as_f32(params), as_f32(x)), np.float64), jnp.bfloat16)


def test_bf16_matmul_accumulates_in_float32():
  """Pins float32 accumulation: 1 + 256 * 2^-9 == 1.5 (a bf16 running sum would stall at 1)."""
  x = jnp.concatenate([jnp.ones((1,)), jnp.full((256,), 2.0**-9)]).astype(jnp.bfloat16)[None]
  params = {"w": jnp.ones((257, 1), jnp.bfloat16), "b": jnp.zeros((1,), jnp.bfloat16)}
  np.testing.assert_array_equal(np.asarray(js.linear_logits(params, x), np.float32), [[1.5]])
  np.testing.assert_array_equal(np.asarray(js.mlp_logits([params], x), np.float32), [[1.5]])
  # Structurally: every matmul asks XLA for a float32 result.
  jaxpr = jax.make_jaxpr(js.linear_logits)(params, x)
  dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
  assert dots and all(
      e.params["preferred_element_type"] == jnp.float32 for e in dots
  )
