"""Row-sparse gradients and updates (``jaxsoftmax.sparse``).

The gradient with respect to a gathered view's rows must equal those rows of
the dense ``jax.grad`` (float64, duplicates summed, zero elsewhere) for every
method and sampler; SGD and Adagrad by rows must equal their dense updates,
Adam by rows must be lazy Adam; the row-sparse training step must equal the
dense one under SGD, embeddings included; bad calls get clear errors.
"""

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsoftmax as js
from jaxsoftmax import samplers
from jaxsoftmax import sparse
from jaxsoftmax.data import build_text_corpus
from jaxsoftmax.large_vocab import ContextModel
from jaxsoftmax.large_vocab import LargeSoftmaxHead
from jaxsoftmax.large_vocab import train_step

TIGHT = dict(rtol=1e-12, atol=1e-14)
B, D, K = 9, 5, 17
COUNTS = np.array([40, 25, 0, 12, 9, 7, 5, 5, 4, 3, 3, 2, 2, 1, 1, 1, 1])
HEADS = {
    "sampled_log_uniform": dict(method="sampled", num_samples=6),
    "sampled_unigram_rows": dict(method="sampled", sampler="unigram",
                                 num_samples=6, shared=False),
    "sampled_midx_uniform": dict(method="sampled", sampler="midx_uniform",
                                 num_samples=6, num_codewords=3),
    "sampled_midx_pop_shared": dict(method="sampled", sampler="midx_pop",
                                    num_samples=6, num_codewords=3,
                                    shared=True),
    "sampled_midx_exact": dict(method="sampled", sampler="midx_exact",
                               num_samples=6, num_codewords=3),
    "nce": dict(method="nce", num_samples=6),
    "nce_rows": dict(method="nce", num_samples=6, shared=False),
    "negative_sampling": dict(method="negative_sampling", num_samples=6),
    "hierarchical_huffman": dict(method="hierarchical_huffman"),
    "hierarchical_balanced": dict(method="hierarchical_balanced"),
    "class_based": dict(method="class_based", num_clusters=4),
}


def make_head(name, dtype=jnp.float64):
  return LargeSoftmaxHead(D, K, counts=COUNTS, rngs=nnx.Rngs(3),
                          param_dtype=dtype, **HEADS[name])


def batch(seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(B, D)))
  # Repeated labels: their rows' gradients must be summed.
  y = jnp.asarray([0, 3, 3, 16, 1, 0, 7, 3, 11])
  return x, y


# ----------------------------------------------------------------------------
# Gradients of gathered rows equal the dense gradient's rows.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HEADS))
def test_row_gradients_equal_the_dense_gradient_rows(name):
  head = make_head(name)
  x, y = batch()
  key = jax.random.key(5)
  names = head.row_params
  full = {n: getattr(head, n)[...] for n in names}

  def dense_loss(tables, x):
    return head.loss(x, y, key=key, tables={
        n: sparse.Rows(None, t) for n, t in tables.items()})

  loss, (g_dense, gx_dense) = jax.value_and_grad(dense_loss, (0, 1))(full, x)
  ids = head.rows_used(x, y, key=key)
  views = {n: sparse.gather(full[n], ids) for n in names}
  uids = views[names[0]].ids

  def row_loss(values, x):
    return head.loss(x, y, key=key, tables={
        n: views[n]._replace(values=values[n]) for n in names})

  loss_rows, (g_rows, gx_rows) = jax.value_and_grad(row_loss, (0, 1))(
      {n: v.values for n, v in views.items()}, x)
  np.testing.assert_allclose(loss_rows, loss, **TIGHT)
  np.testing.assert_allclose(gx_rows, gx_dense, **TIGHT)
  real = np.asarray(uids) != sparse.PAD
  kept = np.asarray(uids)[real]
  assert np.unique(kept).size == kept.size
  for n in names:
    dense = np.asarray(g_dense[n])
    np.testing.assert_allclose(np.asarray(g_rows[n])[real], dense[kept],
                               **TIGHT)
    # Padding rows get nothing, and the dense gradient has nothing outside.
    assert not np.asarray(g_rows[n])[~real].any()
    outside = np.setdiff1d(np.arange(dense.shape[0]), kept)
    assert not dense[outside].any()
    assert np.abs(dense[kept]).sum() > 0


def test_functional_losses_take_views_of_class_major_tables():
  rng = np.random.default_rng(1)
  x, y = batch()
  table = jnp.asarray(rng.normal(size=(K, D)))
  bias = jnp.asarray(rng.normal(size=K))
  key = jax.random.key(2)
  sampler = samplers.unigram(COUNTS + 1)
  cand, _ = sampler.sample(key, None, 6)
  ids = jnp.concatenate([y, cand])
  w_view = sparse.gather(table, ids)
  b_view = sparse.Rows(w_view.ids, jnp.take(bias, w_view.ids, mode="fill",
                                            fill_value=0))
  for fn in (js.sampled_softmax_loss, js.nce_loss, js.negative_sampling_loss):
    dense = fn(key, x, table.T, bias, y, sampler=sampler, num_samples=6)
    rows = fn(key, x, w_view, b_view, y, sampler=sampler, num_samples=6)
    np.testing.assert_allclose(rows, dense, **TIGHT)
  tree = js.balanced_tree(K)
  nodes = sparse.gather(table[:K - 1], tree.nodes[y])
  np.testing.assert_allclose(
      js.hierarchical_softmax_loss(x, nodes, y, tree),
      js.hierarchical_softmax_loss(x, table[:K - 1].T, y, tree), **TIGHT)


def test_a_view_without_a_needed_row_gives_nan_not_another_row():
  x, y = batch()
  table = jnp.ones((K, D))
  tree = js.balanced_tree(K)
  view = sparse.gather(table[:K - 1], tree.nodes[y[:1]])
  # Eagerly the NaN scores are caught; under jit they stay NaN.
  with pytest.raises(ValueError, match="not NaN"):
    js.hierarchical_softmax_loss(x, view, y, tree)
  jitted = jax.jit(lambda v: js.hierarchical_softmax_loss(x, v, y, tree))
  assert np.isnan(float(jitted(view)))


def test_views_need_every_class_for_log_probs():
  x, y = batch()
  tree = js.balanced_tree(K)
  view = sparse.gather(jnp.ones((K - 1, D)), tree.nodes[y])
  with pytest.raises(TypeError, match="node_w must hold every class"):
    js.hierarchical_log_probs(x, view, tree)


def test_gather_deduplicates_and_pads():
  view = sparse.gather(jnp.arange(10.0).reshape(5, 2), jnp.array([[4, 1],
                                                                   [4, 4]]))
  assert view.ids.tolist() == [1, 4, sparse.PAD, sparse.PAD]
  np.testing.assert_array_equal(view.values, [[2, 3], [8, 9], [0, 0], [0, 0]])
  assert sparse.gather(jnp.ones((3, 2)), jnp.array([0, 2]), size=2).ids.size == 2
  with pytest.raises(ValueError, match=r"ids must lie in \[0, 5\)"):
    sparse.gather(jnp.ones((5, 2)), jnp.array([5]))
  with pytest.raises(ValueError, match="size must be at least"):
    sparse.gather(jnp.ones((5, 2)), jnp.array([0, 1, 2]), size=2)
  with pytest.raises(TypeError, match="ids must have an integer dtype"):
    sparse.gather(jnp.ones((5, 2)), jnp.array([0.0]))


# ----------------------------------------------------------------------------
# Updates by rows.
# ----------------------------------------------------------------------------


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"w": jnp.asarray(rng.normal(size=(K, D))),
            "h": jnp.asarray(rng.normal(size=(D,)))}
  ids = jnp.asarray([1, 4, 9, sparse.PAD])
  g_rows = jnp.asarray(rng.normal(size=(4, D)))
  g_h = jnp.asarray(rng.normal(size=(D,)))
  dense_w = jnp.zeros((K, D)).at[ids].set(g_rows, mode="drop")
  return params, {"w": sparse.Rows(ids, g_rows), "h": g_h}, {
      "w": dense_w, "h": g_h}


def _dense_step(opt, grads, state, params):
  updates, state = opt.update(grads, state, params)
  return optax.apply_updates(params, updates), state


@pytest.mark.parametrize("opt", [optax.sgd(0.3), optax.adagrad(0.3)],
                         ids=["sgd", "adagrad"])
def test_sgd_and_adagrad_by_rows_equal_the_dense_update(opt):
  params, rows, dense = _problem()
  state = opt.init(params)
  p_rows, s_rows = params, state
  p_dense, s_dense = params, state
  for seed in range(3):
    _, rows, dense = _problem(seed)
    p_rows, s_rows = sparse.apply_updates(opt, rows, s_rows, p_rows)
    p_dense, s_dense = _dense_step(opt, dense, s_dense, p_dense)
  jax.tree.map(np.testing.assert_array_equal, p_rows, p_dense)
  jax.tree.map(np.testing.assert_array_equal, s_rows, s_dense)


def test_adam_by_rows_is_lazy_adam():
  opt = optax.adam(0.1)
  params, rows, dense = _problem(0)
  state = opt.init(params)
  # Step 1 touches rows {1, 4, 9}: from zero moments, dense Adam moves no
  # other row either, so the two agree.
  p1, s1 = sparse.apply_updates(opt, rows, state, params)
  p_dense, s_dense = _dense_step(opt, dense, state, params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TIGHT), p1,
               p_dense)
  # Step 2 touches rows {0, 4}: rows 1 and 9 keep parameters and moments
  # (dense Adam would keep moving them), and the touched rows follow Adam
  # on their own slice with the shared step count.
  ids = jnp.asarray([0, 4])
  g = jnp.asarray(np.random.default_rng(7).normal(size=(2, D)))
  g_h = jnp.ones(D)
  p2, s2 = sparse.apply_updates(opt, {"w": sparse.Rows(ids, g), "h": g_h},
                                s1, p1)
  untouched = np.setdiff1d(np.arange(K), [0, 4])
  np.testing.assert_array_equal(p2["w"][untouched], p1["w"][untouched])
  np.testing.assert_array_equal(s2[0].mu["w"][untouched],
                                s1[0].mu["w"][untouched])
  np.testing.assert_array_equal(s2[0].nu["w"][untouched],
                                s1[0].nu["w"][untouched])
  sliced = jax.tree.map(lambda a: a[ids] if a.ndim == 2 else a,
                        {"w": p1["w"], "h": p1["h"]})
  s_sliced = (s1[0]._replace(mu={"w": s1[0].mu["w"][ids], "h": s1[0].mu["h"]},
                             nu={"w": s1[0].nu["w"][ids], "h": s1[0].nu["h"]}),
              s1[1])
  expected, _ = _dense_step(opt, {"w": g, "h": g_h}, s_sliced, sliced)
  np.testing.assert_allclose(p2["w"][ids], expected["w"], **TIGHT)
  np.testing.assert_allclose(p2["h"], expected["h"], **TIGHT)
  assert int(s2[0].count) == 2
  p_dense2, _ = _dense_step(opt, {"w": jnp.zeros((K, D)).at[ids].set(g),
                                  "h": g_h}, s_dense, p_dense)
  assert not np.allclose(p_dense2["w"][1], p2["w"][1])


def test_row_updates_jit_with_donation():
  opt = optax.adam(0.1)
  params, rows, _ = _problem()
  state = opt.init(params)
  expected = sparse.apply_updates(opt, rows, state, params)
  step = jax.jit(lambda g, s, p: sparse.apply_updates(opt, g, s, p),
                 donate_argnums=(1, 2))
  got = step(rows, jax.tree.map(jnp.copy, state),
             jax.tree.map(jnp.copy, params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TIGHT), got,
               expected)


def test_row_update_errors_name_the_argument():
  params, rows, _ = _problem()
  opt = optax.sgd(0.1)
  state = opt.init(params)
  bad_ids = {**rows, "w": sparse.Rows(jnp.asarray([0, K, 2, 3]),
                                      rows["w"].values)}
  with pytest.raises(ValueError, match=r"grads\['w'\]\.ids must lie in"):
    sparse.apply_updates(opt, bad_ids, state, params)
  repeated = {**rows, "w": sparse.Rows(jnp.asarray([1, 1, 2, 3]),
                                       rows["w"].values)}
  with pytest.raises(ValueError, match="at most once"):
    sparse.apply_updates(opt, repeated, state, params)
  wrong = {**rows, "w": sparse.Rows(rows["w"].ids, jnp.ones((4, D + 1)))}
  with pytest.raises(ValueError, match=r"grads\['w'\] is a Rows update of"
                     r" values \(4, 6\), but the parameter has shape"):
    sparse.apply_updates(opt, wrong, state, params)
  with pytest.raises(ValueError, match="structure of params"):
    sparse.apply_updates(opt, {"w": rows["w"]}, state, params)
  factored = optax.adafactor(0.1, min_dim_size_to_factor=1)
  with pytest.raises(TypeError, match="cannot|no copy|stands for"):
    sparse.apply_updates(factored, rows, factored.init(params), params)
  with pytest.raises(TypeError, match="optax.GradientTransformation"):
    sparse.apply_updates("adam", rows, state, params)


# ----------------------------------------------------------------------------
# The training step of large_vocab.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus():
  text = ["the cat sat on the mat. the dog sat on the log. a cat saw a dog."]
  return build_text_corpus(text * 3, context=2, block_size=1,
                           test_fraction=0.2)


@pytest.mark.parametrize("name", ["sampled_log_uniform", "sampled_midx_uniform",
                                  "nce", "negative_sampling",
                                  "hierarchical_huffman", "class_based"])
@pytest.mark.parametrize("opt", [optax.sgd(0.5), optax.adagrad(0.5)],
                         ids=["sgd", "adagrad"])
def test_row_step_equals_the_dense_step(corpus, name, opt):
  k = corpus.num_classes
  config = dict(HEADS[name])
  if "num_clusters" in config:
    config["num_clusters"] = 3

  def pair():
    return (ContextModel(k, 2, 3, D, rngs=nnx.Rngs(0),
                         param_dtype=jnp.float64),
            LargeSoftmaxHead(D, k, counts=corpus.counts, rngs=nnx.Rngs(1),
                             param_dtype=jnp.float64, **config))

  args = (jnp.asarray(corpus.x_train), jnp.asarray(corpus.y_train),
          jax.random.key(0))
  results = {}
  for dense in (False, True):
    step, variables, data = train_step(pair(), opt, batch_size=8,
                                       dense_updates=dense)
    run = jax.jit(step)
    for i in range(3):
      variables, loss = run(variables, data, *args, jnp.int32(i))
    model, head = pair()
    nnx.update(model, variables[0])
    nnx.update(head, variables[1])
    results[dense] = (float(loss), nnx.to_pure_dict(nnx.state(
        (model, head), nnx.Param)))
  np.testing.assert_allclose(results[False][0], results[True][0], **TIGHT)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TIGHT),
               results[False][1], results[True][1])


def test_row_step_rejects_a_factored_optimizer(corpus):
  k = corpus.num_classes
  pair = (ContextModel(k, 2, 3, D, rngs=nnx.Rngs(0)),
          LargeSoftmaxHead(D, k, method="sampled", num_samples=4,
                           rngs=nnx.Rngs(1)))
  with pytest.raises(TypeError, match="gathered by rows"):
    train_step(pair, optax.adafactor(0.1, min_dim_size_to_factor=1),
               batch_size=4)
  with pytest.raises(TypeError, match="dense_updates must be a bool"):
    train_step(pair, optax.sgd(0.1), batch_size=4, dense_updates=1)


def test_tables_must_be_views_of_row_params():
  head = make_head("nce")
  x, y = batch()
  with pytest.raises(ValueError, match="tables may replace"):
    head.loss(x, y, key=jax.random.key(0),
              tables={"node_w": sparse.Rows(None, jnp.ones((K, D)))})
  with pytest.raises(TypeError, match="Rows views"):
    head.loss(x, y, key=jax.random.key(0), tables={"w": jnp.ones((K, D))})
  assert dataclasses.is_dataclass(make_head("sampled_midx_exact").sampler)
