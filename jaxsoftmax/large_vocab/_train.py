"""The budgeted trainer of a context model and a head, on the shared
training step with row-sparse updates (see :mod:`jaxsoftmax.large_vocab`)."""

from __future__ import annotations

import dataclasses

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

import numpy as np
import optax

from jaxsoftmax._core import gather as _gather

from jaxsoftmax.training import _optim

from jaxsoftmax.training import _step
from jaxsoftmax._core import validation as v
from jaxsoftmax import reporting

from jaxsoftmax import sparse
from jaxsoftmax.large_vocab._heads import LargeSoftmaxHead
from jaxsoftmax.large_vocab._context import ContextModel


#: ``method -> (batch size, Adam learning rate)``, :func:`train`'s defaults:
#: the fastest-learning settings measured at equal wall time (10 s, the full
#: GCIDE vocabulary, 2 CPU cores, row-sparse updates). Small batches, since
#: a row-sparse step costs a few milliseconds and more steps beat bigger
#: ones there; the trees take the smallest, as their per-row paths make
#: their step grow fastest with the batch.
TRAIN_DEFAULTS = {
    "full": (256, 2e-3),
    "sampled": (256, 5e-3),
    "nce": (256, 5e-3),
    "negative_sampling": (256, 5e-3),
    "hierarchical_huffman": (128, 5e-3),
    "hierarchical_balanced": (128, 5e-3),
    "class_based": (256, 5e-3),
}


@dataclasses.dataclass
class TrainHistory:
  """What :func:`train` measured; plain lists, JSON-friendly.

  Entry ``i`` of ``seconds``, ``steps``, ``perplexity`` and ``train_loss``
  belongs to evaluation ``i``; evaluation 0 is the initial model.

  Attributes:
    seconds: training wall-clock seconds before each evaluation (the sum of
      the steps' times: compilation and evaluation excluded).
    steps: optimizer steps before each evaluation.
    perplexity: held-out exact perplexity at each evaluation.
    train_loss: mean mini-batch training loss since the previous evaluation
      (NaN at evaluation 0).
    step_seconds: wall-clock seconds of every step, in order.
    compile_seconds: time to compile the step and the evaluation, and to
      run one throwaway warm-up step.
    eval_seconds: total time spent evaluating.
    refreshes: how many times an adaptive (MIDX) proposal was rebuilt.
    refresh_seconds: the time those rebuilds took; counted in ``seconds``
      (and the budget), since they are part of the method's cost.
    memory: XLA's memory analysis of the compiled step, in bytes:
      ``{"argument", "output", "temp", "total"}`` as
      :func:`jaxsoftmax.reporting.compiled_memory` reports it (read from the
      executable the run used, so the step compiles once).
    batch_size: rows per step (the method's default unless one was given),
      for examples per second: ``steps[-1] * batch_size / seconds[-1]``.
  """

  seconds: list[float] = dataclasses.field(default_factory=list)
  steps: list[int] = dataclasses.field(default_factory=list)
  perplexity: list[float] = dataclasses.field(default_factory=list)
  train_loss: list[float] = dataclasses.field(default_factory=list)
  step_seconds: list[float] = dataclasses.field(default_factory=list)
  compile_seconds: float = 0.0
  eval_seconds: float = 0.0
  refreshes: int = 0
  refresh_seconds: float = 0.0
  memory: dict[str, int] = dataclasses.field(default_factory=dict)
  batch_size: int = 0

  @property
  def median_step_seconds(self) -> float:
    """Median step time; NaN if no step ran."""
    if not self.step_seconds:
      return math.nan
    return float(statistics.median(self.step_seconds))

  def to_dict(self) -> dict[str, Any]:
    """The fields as a dict (``json.dumps``-able), with the median step."""
    return {**dataclasses.asdict(self),
            "median_step_seconds": self.median_step_seconds}


def _check_pair(model_and_head: Any) -> tuple[ContextModel, LargeSoftmaxHead]:
  if (not isinstance(model_and_head, tuple) or len(model_and_head) != 2
      or not isinstance(model_and_head[0], ContextModel)
      or not isinstance(model_and_head[1], LargeSoftmaxHead)):
    raise TypeError(
        "model_and_head must be a tuple (ContextModel, LargeSoftmaxHead); got"
        f" {type(model_and_head).__name__}."
    )
  model, head = model_and_head
  if model.hidden_dim != head.num_features:
    raise ValueError(
        f"the ContextModel's hidden_dim ({model.hidden_dim}) must equal the"
        f" head's num_features ({head.num_features})."
    )
  return model, head


def train_step(
    model_and_head: tuple[ContextModel, LargeSoftmaxHead],
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    dense_updates: bool = False,
) -> tuple[Callable[..., tuple[Any, jax.Array]], Any, Any]:
  r"""A pure training step for ``(model, head)`` and its initial state.

  ``step(variables, data, x_train, y_train, key, index) -> (variables,
  loss)`` draws ``batch_size`` rows uniformly with replacement from the
  training arrays (on the device, with ``fold_in(key, index)``, which also
  seeds the head's candidates), takes the gradient of
  :meth:`LargeSoftmaxHead.loss` with respect to every ``nnx.Param`` of the
  model and the head, and applies ``optimizer``: one step of
  :func:`jaxsoftmax.make_train_step`.

  By default the update is **row-sparse**: the step gathers the rows of the
  context's input embeddings and of the head's tables
  (:attr:`LargeSoftmaxHead.row_params`) that the batch uses
  (:meth:`LargeSoftmaxHead.rows_used`),
  differentiates the loss with respect to those rows only, and applies
  ``optimizer`` to them and to the dense parameters (the hidden layer, the
  class-based cluster layer) through :func:`jaxsoftmax.sparse.apply_updates`,
  so its cost does not grow with :math:`K`. That is exact for SGD and
  Adagrad and makes Adam lazy (see :mod:`jaxsoftmax.sparse`).
  ``dense_updates=True`` takes the gradient of every parameter as a dense
  array and applies ``optimizer`` to all of them: the reference the sparse
  path is compared with, whose cost grows as :math:`O(Kd)`. Neither guards
  against non-finite values (that would read every row); :func:`train`
  checks each step's loss.

  ``variables`` is what a step changes (parameters and optimizer state), so
  it can be donated (``jax.jit(step, donate_argnums=0)``, as :func:`train`
  does); ``data`` is the head's tree, clusters or sampler tables, constant.
  The training arrays are arguments, never closed over, so they are not
  baked into the program. The step is also what to hand to
  :func:`jaxsoftmax.reporting.compiled_memory`.

  Args:
    model_and_head: ``(ContextModel, LargeSoftmaxHead)``.
    optimizer: an Optax transformation, e.g. from
      :func:`~jaxsoftmax.make_optimizer`; with row-sparse updates its state
      must hold per-parameter copies (every optimizer but the factored
      ones).
    batch_size: rows per step.
    dense_updates: use the dense gradients and update.

  Returns:
    ``(step, variables, data)``. ``variables[0]`` and ``variables[1]`` hold
    the model's and the head's parameters (``variables[2]`` the optimizer
    state): ``nnx.update(model, variables[0])`` writes trained ones back.

  Examples:
    >>> import optax
    >>> from flax import nnx
    >>> from jaxsoftmax.large_vocab import (ContextModel, LargeSoftmaxHead,
    ...                                     train_step)
    >>> pair = (ContextModel(20, 2, 4, 8, rngs=nnx.Rngs(0)),
    ...         LargeSoftmaxHead(8, 20, method="sampled", num_samples=4,
    ...                          rngs=nnx.Rngs(1)))
    >>> step, variables, data = train_step(pair, optax.adam(1e-2),
    ...                                    batch_size=4)
    >>> sorted(variables[1]), variables[2][0].mu[1]["w"].shape
    (['b', 'w'], (20, 8))
  """
  model, head = _check_pair(model_and_head)
  v.check_positive_int("batch_size", batch_size)
  if not isinstance(dense_updates, bool):
    raise TypeError(f"dense_updates must be a bool; got {dense_updates!r}.")
  step, variables, data, _ = _build_step(model, head, optimizer, batch_size,
                                         dense_updates)
  return step, variables, data


def _batch(x_train, y_train, key, index, batch_size):
  """The step's rows (with replacement) and the key of its candidates."""
  k_batch, k_loss = jax.random.split(jax.random.fold_in(key, index))
  rows = jax.random.randint(k_batch, (batch_size,), 0, y_train.shape[0])
  return x_train[rows], y_train[rows], k_loss


def _is_rows(a: Any) -> bool:
  return isinstance(a, _gather.Rows)


def _build_step(model, head, optimizer, batch_size, dense_updates):
  """``(step, variables, data, merge)`` of :func:`train_step`.

  ``merge(params, data) -> (model, head)`` reads the modules back from the
  parameters ``variables[:2]`` and ``data``.
  """
  graphdef, params, data = nnx.split((model, head), nnx.Param, ...)
  params = nnx.to_pure_dict(params)
  params = (params[0], params[1])
  if not dense_updates:
    # Fail at build time, not inside the first traced step.
    sparse.check_optimizer(optimizer, params)
  row_params = head.row_params

  def merge(params, data):
    return nnx.merge(graphdef, {0: params[0], 1: params[1]}, data)

  def step(variables, data, x_train, y_train, key, index):
    params, opt_state = variables[:2], variables[2]
    ids, labels, k_loss = _batch(x_train, y_train, key, index, batch_size)

    def loss_fn(p, batch, key):
      ids, labels = batch
      if dense_updates:
        model, head = merge(p, data)
        return head.loss(model(ids), labels, key=key)
      # The modules keep the whole tables, which a proposal such as
      # MIDX-exact scores without a gradient; the views carry the gradient.
      model, head = merge(jax.tree.map(
          lambda a, whole: whole if _is_rows(a) else a, p, params,
          is_leaf=_is_rows), data)
      rows, _ = _gather.lookup(p[0]["embed"]["embedding"], ids)
      return head.loss(model.encode(rows), labels, key=key,
                       tables={n: p[1][n] for n in row_params})

    def rows_fn(p, batch, key):
      ids, labels = batch
      model, head = merge(p, data)
      # One ids array for all the head's tables: they share one sort.
      used = head.rows_used(model(ids), labels, key=key)
      return {(0, "embed", "embedding"): ids,
              **{(1, name): used for name in row_params}}

    train = _step.make_train_step(
        loss_fn, optimizer, rows_fn=None if dense_updates else rows_fn,
        guard=False)
    params, opt_state, metrics = train(params, opt_state, (ids, labels),
                                       k_loss)
    return (*params, opt_state), metrics["loss"]

  return step, (*params, optimizer.init(params)), data, merge


def _eval_subset(corpus: Any, eval_examples: int | None) -> tuple[Any, Any]:
  """A fixed, seeded subset of the test examples (all with ``None``)."""
  n = len(corpus.y_test)
  if eval_examples is None or eval_examples >= n:
    return corpus.x_test, corpus.y_test
  # The test side is ordered by document; a random subset keeps its mix of
  # entries. Seed 0 whatever the run, so every method sees the same rows.
  rows = np.sort(np.random.default_rng(0).choice(n, eval_examples,
                                                 replace=False))
  return corpus.x_test[rows], corpus.y_test[rows]


def train(
    model_and_head: tuple[ContextModel, LargeSoftmaxHead],
    corpus: Any,
    *,
    key: jax.Array,
    budget_seconds: float | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    optimizer: optax.GradientTransformation | None = None,
    num_checkpoints: int = 4,
    eval_examples: int | None = 4096,
    eval_batch_size: int = 1024,
    dense_updates: bool = False,
) -> TrainHistory:
  r"""Trains ``(model, head)`` on a text corpus for a wall-clock budget.

  The step of :func:`train_step` is compiled ahead of time and run once on
  a copy of the variables (neither is counted), then run until the summed
  step times reach ``budget_seconds`` or ``max_steps`` steps are done,
  whichever comes first. The held-out exact
  perplexity (:meth:`LargeSoftmaxHead.perplexity` on a fixed seeded subset
  of ``eval_examples`` test rows, the same for every run) is measured before
  the first step and at ``num_checkpoints`` evenly spaced points of the
  budget (of ``max_steps`` when there is no time budget); evaluation is not
  counted in the budget. An adaptive (MIDX) head rebuilds its proposal from
  the current ``w`` every ``refresh_every`` steps (its option; default once
  per epoch of the training rows), and that time is counted in the budget
  as part of the method's cost. Each step is blocked on, so ``step_seconds`` are
  true per-step times. The modules are updated in place with the trained
  parameters.

  Args:
    model_and_head: ``(ContextModel, LargeSoftmaxHead)``; the head's
      ``num_classes`` must match the corpus.
    corpus: a :class:`~jaxsoftmax.data.TextCorpus`.
    key: a ``jax.random`` key for the mini-batches and candidates.
    budget_seconds: training time budget in seconds (> 0), or None.
    max_steps: step limit, or None; at least one of the two limits is
      required.
    batch_size: rows per step; default :data:`TRAIN_DEFAULTS` of the
      method.
    optimizer: an Optax transformation; default Adam (lazy, with row-sparse
      updates) at the method's learning rate in :data:`TRAIN_DEFAULTS`.
    num_checkpoints: evaluations after the initial one.
    eval_examples: held-out rows to evaluate on, or None for all.
    eval_batch_size: rows per evaluation block.
    dense_updates: dense gradients and updates instead of the row-sparse
      ones (see :func:`train_step`), for comparison.

  Returns:
    A :class:`TrainHistory`.

  Raises:
    FloatingPointError: a step's loss was NaN or infinite (the modules keep
      the parameters of that step).

  Examples:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxsoftmax.data import build_text_corpus
    >>> from jaxsoftmax.large_vocab import ContextModel, LargeSoftmaxHead, train
    >>> corpus = build_text_corpus(["the cat sat. the dog sat."] * 4,
    ...                            context=2, block_size=1, test_fraction=0.3)
    >>> pair = (ContextModel(corpus.num_classes, 2, 4, 8, rngs=nnx.Rngs(0)),
    ...         LargeSoftmaxHead(8, corpus.num_classes,
    ...                          method="hierarchical_balanced",
    ...                          rngs=nnx.Rngs(1)))
    >>> history = train(pair, corpus, key=jax.random.key(0), max_steps=30,
    ...                 batch_size=8, num_checkpoints=1)
    >>> history.steps, history.perplexity[-1] < history.perplexity[0]
    ([0, 30], True)
  """
  model, head = _check_pair(model_and_head)
  _check_train(model, head, corpus, key, budget_seconds, max_steps,
               num_checkpoints, eval_examples)
  default_batch, default_lr = TRAIN_DEFAULTS[head.method]
  batch_size = default_batch if batch_size is None else batch_size
  if optimizer is None:
    optimizer = _optim.make_optimizer("adam", default_lr)
  v.check_positive_int("batch_size", batch_size)
  if not isinstance(dense_updates, bool):
    raise TypeError(f"dense_updates must be a bool; got {dense_updates!r}.")
  step, variables, data, merge = _build_step(model, head, optimizer,
                                             batch_size, dense_updates)
  # The non-trainable data must not share buffers with the parameters the
  # step donates (a MIDX-exact index holds w itself).
  data = jax.tree.map(jnp.copy, data)

  def evaluate(variables, data, ids, labels):
    model, head = merge(variables[:2], data)
    return head.perplexity(model(ids), labels, batch_size=eval_batch_size)

  def refresh(variables, data):
    model, head = merge(variables[:2], data)
    head.refresh_sampler()
    return nnx.split((model, head), nnx.Param, ...)[2]

  refresh_every = None
  if head.adaptive:
    refresh_every = (head.options["refresh_every"]
                     or math.ceil(len(corpus.y_train) / batch_size))
  arrays = (jnp.asarray(corpus.x_train), jnp.asarray(corpus.y_train), key)
  evals = tuple(jnp.asarray(a) for a in _eval_subset(corpus, eval_examples))
  index = jnp.zeros((), jnp.int32)
  t0 = time.perf_counter()
  run = jax.jit(step, donate_argnums=0).lower(
      variables, data, *arrays, index).compile()
  score = jax.jit(evaluate).lower(variables, data, *evals).compile()
  rebuild = (jax.jit(refresh).lower(variables, data).compile()
             if refresh_every else None)
  # The first execution of a CPU executable is several times slower than the
  # next ones (one-time set-up in the runtime); a throwaway step on a copy of
  # the variables keeps that out of the budget and the step times.
  warm, _ = run(jax.tree.map(jnp.copy, variables), data, *arrays, index)
  jax.block_until_ready(warm)
  del warm
  history = TrainHistory(compile_seconds=time.perf_counter() - t0,
                         memory=reporting.executable_memory(run),
                         batch_size=batch_size)
  state = {"variables": variables, "data": data}
  try:
    _train_loop(
        state, history, run=lambda s, i: run(*s, *arrays, index + i),
        score=lambda s: score(*s, *evals),
        rebuild=None if rebuild is None else (refresh_every, rebuild),
        limits=(budget_seconds, max_steps, num_checkpoints),
        method=head.method)
  finally:
    # Donation invalidated the parameter arrays the modules were split from.
    nnx.update(model, state["variables"][0])
    nnx.update(head, state["variables"][1])
    if rebuild is not None:
      head.sampler = merge(state["variables"][:2], state["data"])[1].sampler
  return history


def _check_train(model, head, corpus, key, budget_seconds, max_steps,
                 num_checkpoints, eval_examples) -> None:
  """:func:`train`'s checks of its limits and of the corpus."""
  v.check_prng_key("key", key)
  if budget_seconds is None and max_steps is None:
    raise ValueError("train needs a limit: pass budget_seconds, max_steps or"
                     " both; got neither.")
  if budget_seconds is not None:
    v.check_positive("budget_seconds", budget_seconds)
  if max_steps is not None:
    v.check_positive_int("max_steps", max_steps)
  v.check_positive_int("num_checkpoints", num_checkpoints)
  if eval_examples is not None:
    v.check_positive_int("eval_examples", eval_examples)
  if head.num_classes != corpus.num_classes:
    raise ValueError(
        f"the head has {head.num_classes} classes but the corpus has"
        f" {corpus.num_classes} (len(corpus.vocab)); build the head with"
        " num_classes=corpus.num_classes."
    )
  if corpus.x_train.shape[1] != model.context:
    raise ValueError(
        f"the ContextModel reads {model.context} ids but corpus.x_train has"
        f" shape {corpus.x_train.shape}; build it with"
        f" context={corpus.x_train.shape[1]}."
    )
  v.check_labels_in_range("corpus.x_train", corpus.x_train, model.vocab_size)


def _train_loop(state, history, *, run, score, rebuild, limits, method):
  """:func:`train`'s steps and evaluations, in place on ``state``.

  ``state`` holds ``"variables"`` and ``"data"`` (updated after every step,
  so the caller writes the latest back even when a step fails);
  ``run((variables, data), i)`` is step ``i``, ``score((variables, data))``
  the perplexity, ``rebuild`` None or ``(every, rebuild(variables, data))``
  and ``limits`` ``(budget_seconds, max_steps, num_checkpoints)``.
  """
  budget_seconds, max_steps, num_checkpoints = limits

  def checkpoint(train_seconds, steps, losses):
    t = time.perf_counter()
    ppl = float(score((state["variables"], state["data"])))
    history.eval_seconds += time.perf_counter() - t
    history.seconds.append(train_seconds)
    history.steps.append(steps)
    history.perplexity.append(ppl)
    history.train_loss.append(float(np.mean(losses)) if losses else math.nan)

  checkpoint(0.0, 0, [])
  train_seconds, steps = 0.0, 0
  for i in range(1, num_checkpoints + 1):
    losses = []
    while ((budget_seconds is None
            or train_seconds < budget_seconds * i / num_checkpoints)
           and (max_steps is None
                or steps < math.ceil(max_steps * i / num_checkpoints))):
      t = time.perf_counter()
      state["variables"], loss = run((state["variables"], state["data"]),
                                     steps)
      loss = float(loss)
      dt = time.perf_counter() - t
      if not math.isfinite(loss):
        raise FloatingPointError(
            f"method={method!r}: the training loss at step {steps + 1}"
            f" is {loss}; lower the learning rate."
        )
      train_seconds += dt
      steps += 1
      if rebuild is not None and steps % rebuild[0] == 0:
        t = time.perf_counter()
        # Copied: a rebuilt MIDX-exact index holds w itself, and the
        # next step donates the variables' buffers.
        state["data"] = jax.block_until_ready(jax.tree.map(
            jnp.copy, rebuild[1](state["variables"], state["data"])))
        history.refresh_seconds += time.perf_counter() - t
        history.refreshes += 1
        train_seconds += time.perf_counter() - t
      history.step_seconds.append(dt)
      losses.append(loss)
    checkpoint(train_seconds, steps, losses)
    if max_steps is not None and steps >= max_steps:
      break
