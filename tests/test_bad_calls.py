"""Bad calls found by fault trials: each raises an error naming the argument.

Eager calls check values (NaN and infinities reduced on the device); under
``jit`` the documented NaN semantics stay.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsoftmax as js
from jaxsoftmax import samplers

_rng = np.random.default_rng(0)
X = _rng.normal(size=(32, 4)).astype(np.float32)
Y = (np.arange(32) % 3).astype(np.int32)
P = js.linear_init(jax.random.key(0), 4, 3)
H = jnp.array([[0.0, 1.0, 2.0]])
NAN_X = np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X)


def _fit(loss_fn, data=(X, Y)):
  return js.fit(loss_fn, P, data, optimizer=optax.sgd(0.1), epochs=1,
                batch_size=16, key=jax.random.key(0), progress=False)


def _labels_with(value):
  y = Y.copy()
  y[5] = value
  return y


BAD_CALLS = [
    ("learning rate a str", lambda: js.make_optimizer("sgd", "0.1"),
     TypeError, r"learning_rate must be a number; got str '0.1'"),
    ("params without b", lambda: js.predict_proba({"w": P["w"]}, X),
     ValueError, r"params must hold 'w' .* and 'b' .* missing \['b'\]"),
    ("params a list", lambda: js.linear_logits([P["w"], P["b"]], X),
     TypeError, r"params must be a dict .*; got list"),
    ("sampled loss int key",
     lambda: js.sampled_softmax_loss(0, X, P["w"], P["b"], Y,
                                     sampler=samplers.uniform(3), num_samples=2),
     TypeError, r"key must be a jax.random key .*; got int"),
    ("sample int key", lambda: samplers.uniform(4).sample(0, None, 2),
     TypeError, r"key must be a jax.random key .*; got int"),
    ("max_draws 1e9",
     lambda: samplers.uniform(4).sample(jax.random.key(0), None, 2,
                                        replace=False, max_draws=10**9),
     ValueError, r"max_draws must be at most 8192 \(1024 K ceil\(ln K\) for K = 4"),
    ("max_draws 1e12",
     lambda: samplers.uniform(4).sample(jax.random.key(0), None, 2,
                                        replace=False, max_draws=10**12),
     ValueError, r"max_draws must be at most 8192 .* got 1000000000000"),
    ("fit loss not scalar",
     lambda: _fit(lambda p, x, y: js.cross_entropy(js.linear_logits(p, x), y,
                                                  reduction="none")),
     ValueError, r"loss_fn must return a scalar .* returns shape \(16,\) for a"
     r" minibatch of 16 rows"),
    ("fit label out of range",
     lambda: _fit(lambda p, x, y: js.cross_entropy(js.linear_logits(p, x), y),
                  (X, _labels_with(200))),
     js.TrainingDiverged, r"loss became non-finite because the minibatch is"
     r" invalid for loss_fn: labels must lie in \[0, 3\); got \[200\]"),
    ("ce NaN logit",
     lambda: js.cross_entropy(H.at[0, 1].set(jnp.nan), jnp.array([0])),
     ValueError, r"logits must be finite or -inf .* got \[nan\] at index"
     r" \[\(0, 1\)\]"),
    ("ce +inf logit",
     lambda: js.cross_entropy(H.at[0, 2].set(jnp.inf), jnp.array([0])),
     ValueError, r"logits must be finite or -inf .* got \[inf\]"),
    ("ce inf weight",
     lambda: js.cross_entropy(H, jnp.array([0]), weights=jnp.array([jnp.inf])),
     ValueError, r"weights must be finite; got \[inf\]"),
    ("bce NaN logit",
     lambda: js.binary_cross_entropy(jnp.array([jnp.nan, 0.0]),
                                     jnp.array([1.0, 0.0])),
     ValueError, r"logits must be a number \(not NaN\); got \[nan\]"),
    ("soft NaN logit",
     lambda: js.soft_cross_entropy(H.at[0, 0].set(jnp.nan),
                                   jnp.array([[1.0, 0, 0]])),
     ValueError, r"logits must be finite or -inf"),
    ("soft inf target",
     lambda: js.soft_cross_entropy(H, jnp.array([[jnp.inf, 0, 0]])),
     ValueError, r"target_probs must be finite; got \[inf\]"),
    ("fused NaN in w",
     lambda: js.fused_linear_cross_entropy(X, P["w"].at[0, 0].set(jnp.nan),
                                           P["b"], Y),
     ValueError, r"w must be finite; got \[nan\] at index \[\(0, 0\)\]"),
    ("fused NaN in b",
     lambda: js.fused_linear_cross_entropy(X, P["w"], P["b"].at[1].set(jnp.nan),
                                           Y),
     ValueError, r"b must be finite or -inf"),
    ("predict_proba NaN in x", lambda: js.predict_proba(P, NAN_X),
     ValueError, r"x must be finite; got \[nan\] at index \[\(1, 1\)\]"),
]


@pytest.mark.parametrize("call, error, match", [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_call_raises_naming_the_argument(call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_masked_logits_and_bias_stay_accepted():
  """-inf marks a masked class, so the finiteness checks let it through."""
  assert np.isfinite(js.cross_entropy(H.at[0, 2].set(-jnp.inf), jnp.array([0])))
  b = P["b"].at[2].set(-jnp.inf)
  assert np.isfinite(js.fused_linear_cross_entropy(X, P["w"], b, Y % 2))


def test_under_jit_a_nan_logit_gives_nan_not_an_error():
  assert np.isnan(jax.jit(js.cross_entropy)(H.at[0, 1].set(jnp.nan),
                                            jnp.array([0])))
