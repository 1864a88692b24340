"""Tests for the large-vocabulary language model (``jaxsoftmax.large_vocab``).

Every head's ``log_probs`` must be a normalized distribution; the exact heads'
training losses (full, hierarchical, class-based) must equal the negative
log-likelihood read off those log-probabilities, and every head's ``nll`` and
``perplexity`` (chunked or not, eager or jitted, vmapped) must agree with
them, in float64. The sampled heads' losses must be finite and go down under
an optimizer. ``train`` must lower the held-out perplexity, keep its
bookkeeping straight and leave the modules usable after donating their
buffers.
"""

import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsoftmax import sampled_softmax_loss
from jaxsoftmax.data import build_text_corpus
from jaxsoftmax.large_vocab import METHODS
from jaxsoftmax.large_vocab import ContextModel
from jaxsoftmax.large_vocab import LargeSoftmaxHead
from jaxsoftmax.large_vocab import train

F64 = dict(rtol=1e-10, atol=1e-12)
B, D, K = 10, 5, 13
COUNTS = np.array([30, 0, 12, 9, 7, 5, 5, 4, 3, 2, 2, 1, 1])
# One head per configuration, covering every method and sampler.
CONFIGS = {
    "full": dict(method="full", chunk_size=4),
    "sampled_uniform": dict(method="sampled", sampler="uniform",
                            num_samples=6),
    "sampled_log_uniform": dict(method="sampled", sampler="log_uniform",
                                num_samples=6),
    "sampled_unigram": dict(method="sampled", sampler="unigram",
                            num_samples=6),
    "nce": dict(method="nce", num_samples=6),
    "negative_sampling": dict(method="negative_sampling", num_samples=6),
    "hierarchical_huffman": dict(method="hierarchical_huffman"),
    "hierarchical_balanced": dict(method="hierarchical_balanced"),
    "class_based": dict(method="class_based", num_clusters=4),
}
EXACT = ("full", "hierarchical_huffman", "hierarchical_balanced",
         "class_based")
# The w-based heads share log_probs, nll and perplexity (they differ only in
# their training loss), so "nce" stands for the four others there.
EVALUATED = EXACT + ("nce",)
SAMPLED = ("sampled_log_uniform", "nce", "negative_sampling")


def make_head(name, seed=0):
  return LargeSoftmaxHead(D, K, counts=COUNTS, rngs=nnx.Rngs(seed),
                          param_dtype=jnp.float64, **CONFIGS[name])


# NumPy draws, not jax.random: every new shape of a jax.random draw compiles
# its own sampler, which costs more than these tests' arithmetic.
RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def heads():
  heads = {name: make_head(name) for name in CONFIGS}
  # Non-zero biases, so they are part of every check.
  for head in heads.values():
    for name in ("b", "node_b", "cluster_b"):
      if hasattr(head, name):
        p = getattr(head, name)
        p[...] = jnp.asarray(0.3 * RNG.standard_normal(p.shape))
  return heads


@pytest.fixture(scope="module")
def batch():
  x = jnp.asarray(2.0 * RNG.standard_normal((B, D)))
  y = RNG.integers(0, K, B)
  # The last class and the zero-count class 1 are among the labels.
  y[:2] = K - 1, 1
  return x, jnp.asarray(y)


def test_methods_cover_every_head():
  assert {c["method"] for c in CONFIGS.values()} == set(METHODS)


# ----------------------------------------------------------------------------
# The context model.
# ----------------------------------------------------------------------------


# The training tests' sizes (their corpus has V = 13 words), so the models
# here reuse the same compiled initializers.
V, CONTEXT, EMBED, HIDDEN = 13, 2, 8, 16


@pytest.mark.parametrize("combine", ["concat", "mean"])
def test_context_model_maps_ids_to_features(combine):
  model = ContextModel(V, CONTEXT, EMBED, HIDDEN, combine=combine,
                       rngs=nnx.Rngs(0))
  ids = jnp.array([[0, 12], [5, 5]], jnp.int32)
  out = model(ids)
  assert out.shape == (2, HIDDEN)
  assert bool(jnp.all(jnp.abs(out) < 1))  # tanh
  # Word order matters only to concat.
  swapped = model(ids[:, ::-1])
  assert bool(jnp.allclose(out[1], swapped[1]))
  assert bool(jnp.allclose(out[0], swapped[0])) == (combine == "mean")


def test_context_model_relu_and_boundary_id_as_ordinary_id():
  model = ContextModel(V, CONTEXT, EMBED, HIDDEN, activation="relu",
                       rngs=nnx.Rngs(1))
  out = model(jnp.array([[1, 1], [1, 0]], jnp.int32))
  assert out.shape == (2, HIDDEN) and bool(jnp.all(out >= 0))
  assert not bool(jnp.allclose(out[0], out[1]))


def test_context_model_rejects_bad_ids():
  model = ContextModel(V, CONTEXT, EMBED, HIDDEN, rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match="ids"):
    model(jnp.zeros((4, 2)))
  with pytest.raises(ValueError, match=r"ids must have shape \[batch, 2\]"):
    model(jnp.zeros((4, 3), jnp.int32))
  with pytest.raises(ValueError, match=r"ids must lie in \[0, 13\)"):
    model(jnp.array([[0, 13]]))
  with pytest.raises(ValueError, match="combine"):
    ContextModel(V, CONTEXT, EMBED, HIDDEN, combine="sum", rngs=nnx.Rngs(0))

  graphdef, state = nnx.split(model)
  out = jax.jit(lambda s, i: nnx.merge(graphdef, s)(i))(
      state, jnp.array([[0, 1], [0, 13]]))
  # Under jit the out-of-range id cannot raise; its row is NaN instead.
  assert bool(jnp.all(jnp.isfinite(out[0])))
  assert bool(jnp.all(jnp.isnan(out[1])))


# ----------------------------------------------------------------------------
# The heads: normalization and exactness.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results(heads, batch):
  """Everything the evaluated heads compute on ``batch``, in one jitted call.

  One compile instead of one per eager call of each loop-bearing op (the
  fused cross-entropy, the tree scan, the perplexity's blocks).
  """
  graphdef, state = nnx.split(tuple(heads[name] for name in EVALUATED))

  @jax.jit
  def run(state, x, y):
    out = {}
    for name, head in zip(EVALUATED, nnx.merge(graphdef, state)):
      lp = head.log_probs(x)
      out[name] = {
          "log_probs": lp,
          "label_log_probs": jnp.take_along_axis(lp, y[:, None], 1)[:, 0],
          "nll": head.nll(x, y),
          "vmapped_nll": jax.vmap(head.nll)(
              x.reshape(2, B // 2, D), y.reshape(2, B // 2)).reshape(B),
          # 3 does not divide B = 10: the last block is padded.
          "perplexity_3": head.perplexity(x, y, batch_size=3),
      }
      if name in EXACT:
        out[name]["loss"] = head.loss(x, y)
    return out

  return run(state, *batch)


@pytest.mark.parametrize("name", CONFIGS)
def test_log_probs_rows_are_normalized(heads, batch, name):
  lp = heads[name].log_probs(batch[0])
  assert lp.shape == (B, K) and lp.dtype == jnp.float64
  np.testing.assert_allclose(jax.nn.logsumexp(lp, axis=1), 0, **F64)


@pytest.mark.parametrize("name", EXACT)
def test_exact_losses_are_the_mean_nll_of_log_probs(results, name):
  r = results[name]
  np.testing.assert_allclose(r["loss"], -jnp.mean(r["label_log_probs"]),
                             **F64)


@pytest.mark.parametrize("name", EVALUATED)
def test_nll_is_minus_the_label_log_prob_also_under_vmap(results, name):
  r = results[name]
  np.testing.assert_allclose(r["nll"], -r["label_log_probs"], **F64)
  np.testing.assert_allclose(r["vmapped_nll"], r["nll"], **F64)


@pytest.mark.parametrize("name", EVALUATED)
def test_perplexity_in_chunks_equals_the_unchunked_value(results, name):
  r = results[name]
  # The unchunked value: the whole [B, K] log_probs at once.
  expected = math.exp(-float(jnp.mean(r["label_log_probs"])))
  np.testing.assert_allclose(r["perplexity_3"], expected, **F64)


def test_score_heads_evaluate_the_full_softmax_of_their_scores(
    heads, batch, results):
  x, _ = batch
  head = heads["nce"]
  scores = x @ head.w[...].T + head.b[...][None, :]
  np.testing.assert_allclose(results["nce"]["log_probs"],
                             jax.nn.log_softmax(scores, axis=1), **F64)


def test_eager_perplexity_equals_the_jitted_one(heads, batch, results):
  x, y = batch
  np.testing.assert_allclose(
      heads["hierarchical_balanced"].perplexity(x, y, batch_size=3),
      results["hierarchical_balanced"]["perplexity_3"], **F64)


def test_parameters_match_the_method():
  def params(name):
    flat = nnx.to_flat_state(nnx.state(make_head(name), nnx.Param))
    return {path: variable.shape for path, variable in flat}

  # Per-class tables are class-major; the cluster layer is dense.
  assert params("full") == {("w",): (D, K), ("b",): (K,)}
  assert params("nce") == {("w",): (K, D), ("b",): (K,)}
  assert params("hierarchical_huffman") == {("node_w",): (K - 1, D),
                                            ("node_b",): (K - 1,)}
  assert params("class_based") == {
      ("cluster_w",): (D, 4), ("cluster_b",): (4,), ("w",): (K, D),
      ("b",): (K,)}


# ----------------------------------------------------------------------------
# Sampled heads train.
# ----------------------------------------------------------------------------


def test_sampled_losses_are_finite_and_decrease(batch):
  x, y = batch
  # All sampled heads train in one jitted step (their parameters are
  # disjoint, so summing the losses trains each on its own), with one
  # candidate set per step.
  sampled = tuple(make_head(name, seed=1) for name in SAMPLED)
  opt = nnx.Optimizer(sampled, optax.adam(0.1), wrt=nnx.Param)
  graphdef, state = nnx.split((sampled, opt))

  @jax.jit
  def step(state, key):
    sampled, opt = nnx.merge(graphdef, state)

    def total(sampled):
      losses = jnp.stack([h.loss(x, y, key=key) for h in sampled])
      return jnp.sum(losses), losses

    grads, losses = nnx.grad(total, has_aux=True)(sampled)
    opt.update(sampled, grads)
    return nnx.state((sampled, opt)), losses

  history = []
  for i in range(25):
    state, losses = step(state, jax.random.fold_in(jax.random.key(7), i))
    history.append(np.asarray(losses))
  history = np.stack(history)
  assert np.all(np.isfinite(history)), history
  first, last = history[:5].mean(0), history[-5:].mean(0)
  for name, a, b in zip(SAMPLED, first, last):
    assert b < 0.7 * a, (name, a, b)


# ----------------------------------------------------------------------------
# Bad arguments.
# ----------------------------------------------------------------------------


def test_each_method_builds_its_own_head_class(heads, batch):
  """LargeSoftmaxHead(method=...) returns the method's subclass, whose
  constructor takes the options directly and which survives split/merge."""
  x, _ = batch
  types = {name: type(head) for name, head in heads.items()}
  assert all(isinstance(head, LargeSoftmaxHead) for head in heads.values())
  assert types["sampled_uniform"] is types["sampled_unigram"]
  assert len({types[name] for name in ("full", "sampled_uniform", "nce",
                                       "negative_sampling",
                                       "hierarchical_huffman",
                                       "class_based")}) == 6
  for name, config in CONFIGS.items():
    config = {k: val for k, val in config.items() if k != "method"}
    if name.startswith("hierarchical"):
      config["tree"] = name.removeprefix("hierarchical_")
    direct = types[name](D, K, counts=COUNTS, rngs=nnx.Rngs(0),
                         param_dtype=jnp.float64, **config)
    assert direct.method == heads[name].method
    assert direct.options == heads[name].options
    merged = nnx.merge(*nnx.split(heads[name]))
    assert type(merged) is types[name]
    np.testing.assert_array_equal(merged.log_probs(x),
                                  heads[name].log_probs(x))


def test_head_rejects_bad_arguments(heads, batch):
  x, y = batch
  with pytest.raises(ValueError, match="method must be one of"):
    LargeSoftmaxHead(D, K, method="adaptive", rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match=r"unexpected \['num_samples'\]"):
    LargeSoftmaxHead(D, K, method="full", num_samples=5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="sampler must be one of"):
    LargeSoftmaxHead(D, K, method="sampled", sampler="midx", rngs=nnx.Rngs(0))
  for config in (dict(method="hierarchical_huffman"),
                 dict(method="class_based"),
                 dict(method="nce")):  # unigram noise by default
    with pytest.raises(ValueError, match=r"needs counts, the \[num_classes\]"):
      LargeSoftmaxHead(D, K, rngs=nnx.Rngs(0), **config)
  with pytest.raises(ValueError, match=r"counts must have shape \(13,\)"):
    LargeSoftmaxHead(D, K, method="class_based", counts=COUNTS[:-1],
                     rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="pass key="):
    heads["sampled_uniform"].loss(x, y)
  with pytest.raises(ValueError, match=r"must have shape \[batch, 5\]"):
    heads["full"].log_probs(x[:, :3])
  with pytest.raises(TypeError, match="features"):
    heads["full"].log_probs(jnp.ones((2, D), jnp.int32))
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 13\)"):
    heads["hierarchical_balanced"].perplexity(x, y.at[2].set(K))
  with pytest.raises(ValueError, match=r"labels must have shape \(10,\)"):
    heads["full"].perplexity(x, y[:4])


# ----------------------------------------------------------------------------
# Training under a budget.
# ----------------------------------------------------------------------------


DOCS = [
    "The cat sat on the mat. The dog sat on the log.",
    "A cat ran to the dog. The dog ran to a cat!",
    "The bird sat on the dog. A bird ran on the mat.",
] * 6


@pytest.fixture(scope="module")
def corpus():
  return build_text_corpus(DOCS, context=2, test_fraction=0.2, block_size=2)


def make_pair(corpus, method):
  assert corpus.num_classes == V and corpus.x_train.shape[1] == CONTEXT
  return (ContextModel(V, CONTEXT, EMBED, HIDDEN, rngs=nnx.Rngs(0)),
          LargeSoftmaxHead(HIDDEN, V, method=method, counts=corpus.counts,
                           rngs=nnx.Rngs(1)))


def test_training_full_softmax_lowers_held_out_perplexity(corpus):
  pair = make_pair(corpus, "full")
  before = nnx.state(pair[1], nnx.Param)["w"][...].copy()
  history = train(pair, corpus, key=jax.random.key(0), max_steps=40,
                  batch_size=16, optimizer=optax.adam(1e-2),
                  num_checkpoints=2, eval_examples=None)
  assert history.steps == [0, 20, 40]
  assert history.perplexity[-1] < 0.6 * history.perplexity[0]
  assert history.seconds[0] == 0 and history.seconds == sorted(history.seconds)
  assert math.isnan(history.train_loss[0])
  assert len(history.step_seconds) == 40
  assert math.isclose(sum(history.step_seconds), history.seconds[-1])
  assert history.memory["temp"] > 0
  # The modules hold the trained parameters, usable after the donation.
  model, head = pair
  after = head.w[...]
  assert not np.allclose(after, before)
  features = model(jnp.asarray(corpus.x_test))
  np.testing.assert_allclose(
      head.perplexity(features, jnp.asarray(corpus.y_test)),
      history.perplexity[-1], rtol=1e-5)


def test_training_stops_at_the_time_budget_and_keeps_the_tree(corpus):
  pair = make_pair(corpus, "hierarchical_huffman")
  tree = pair[1].tree
  history = train(pair, corpus, key=jax.random.key(1), budget_seconds=0.3,
                  batch_size=16, optimizer=optax.adam(1e-2),
                  num_checkpoints=2)
  assert history.perplexity[-1] < history.perplexity[0]
  # Each segment stops at its first step past its share of the budget.
  assert history.seconds[1] >= 0.15 and history.seconds[2] >= 0.3
  assert history.seconds[2] - history.step_seconds[-1] < 0.3
  assert pair[1].tree is tree
  np.testing.assert_array_equal(pair[1].tree.nodes, tree.nodes)


def test_train_rejects_a_mismatched_corpus(corpus):
  model, head = make_pair(corpus, "full")
  bigger = corpus._replace(vocab=corpus.vocab + ["extra"])
  with pytest.raises(ValueError, match="13 classes but the corpus has 14"):
    train((model, head), bigger, key=jax.random.key(0), max_steps=1)
  with pytest.raises(ValueError, match="needs a limit"):
    train((model, head), corpus, key=jax.random.key(0))
  with pytest.raises(TypeError, match="model_and_head must be a tuple"):
    train([model, head], corpus, key=jax.random.key(0), max_steps=1)


@pytest.mark.parametrize("sampler, shared", [
    ("midx_pop", None), ("midx_exact", None), ("midx_pop", True)])
def test_midx_heads_train_and_refresh_their_index(corpus, sampler, shared):
  model = ContextModel(V, CONTEXT, EMBED, HIDDEN, rngs=nnx.Rngs(0))
  head = LargeSoftmaxHead(HIDDEN, V, method="sampled", sampler=sampler,
                          num_samples=4, num_codewords=3, refresh_every=5,
                          counts=corpus.counts, shared=shared,
                          rngs=nnx.Rngs(1))
  assert head.adaptive and head.sampler.mode == sampler[5:]
  before = head.sampler.codebook1
  history = train((model, head), corpus, key=jax.random.key(0), max_steps=12,
                  batch_size=8, num_checkpoints=1)
  assert history.refreshes == 2 and history.refresh_seconds > 0
  assert history.perplexity[-1] < history.perplexity[0]
  # The refreshed index is written back and follows the trained w.
  assert not np.allclose(head.sampler.codebook1, before)
  fresh = head.sampler.refresh(head.w[...].T, head.b[...])
  np.testing.assert_array_equal(np.sort(fresh.order), np.arange(V))
  x = model(jnp.asarray(corpus.x_test[:4]))
  loss = head.loss(x, jnp.asarray(corpus.y_test[:4]), key=jax.random.key(1))
  assert np.isfinite(float(loss))
  if sampler == "midx_pop":
    counts = np.asarray(corpus.counts)
    ids, _ = head.sampler.sample(jax.random.key(2), x, 50)
    assert counts[np.asarray(ids)].min() > 0


@pytest.mark.parametrize("sampler", ["unigram", "midx_uniform"])
def test_shared_option_picks_the_candidate_sets(corpus, sampler):
  """shared=None is the sampler's default (a batch set for static samplers,
  per row for MIDX); True/False give sampled_softmax_loss's sets."""
  x = jax.random.normal(jax.random.key(0), (6, HIDDEN))
  y = jnp.asarray(corpus.y_test[:6])
  key = jax.random.key(1)
  losses = {}
  for shared in (None, True, False):
    head = LargeSoftmaxHead(HIDDEN, V, method="sampled", sampler=sampler,
                            num_samples=4, num_codewords=3,
                            counts=corpus.counts, shared=shared,
                            rngs=nnx.Rngs(1))
    losses[shared] = float(head.loss(x, y, key=key))
    if shared is not None:
      expected = sampled_softmax_loss(
          key, x, head.w[...].T, head.b[...], y, sampler=head.sampler,
          num_samples=4, shared=shared)
      assert losses[shared] == pytest.approx(float(expected), rel=1e-6)
  assert losses[None] == losses[sampler == "unigram"]
  assert losses[True] != losses[False]
  with pytest.raises(TypeError, match="shared must be None"):
    LargeSoftmaxHead(HIDDEN, V, method="sampled", shared="yes",
                     rngs=nnx.Rngs(1))


def test_midx_exact_index_survives_donation_without_refresh(corpus):
  # The exact index holds w; before the first refresh it must not share
  # the buffer the step donates.
  model = ContextModel(V, CONTEXT, EMBED, HIDDEN, rngs=nnx.Rngs(0))
  head = LargeSoftmaxHead(HIDDEN, V, method="sampled", sampler="midx_exact",
                          num_samples=4, num_codewords=3, refresh_every=100,
                          rngs=nnx.Rngs(1))
  history = train((model, head), corpus, key=jax.random.key(0), max_steps=3,
                  batch_size=8, num_checkpoints=1)
  assert history.refreshes == 0
  x = model(jnp.asarray(corpus.x_test[:2]))
  ids, _ = head.sampler.sample(jax.random.key(1), x, 3)
  assert ids.shape == (2, 3)
