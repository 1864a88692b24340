r"""Manual gradients written out as explicit functions.

These are the lecture's and the MLP post's formulas, computed directly rather
than through autodiff: the structured softmax-regression gradient
:math:`X^\top(Z - I_y)/B`, layer-by-layer MLP backprop, and, for the
experiment only, the naive approach that materializes the Jacobian
:math:`\partial h / \partial \Theta`. Each returns a pytree shaped like the
params and equals ``jax.grad`` of the matching loss (tests check it).
"""

from __future__ import annotations

import jax
from jax.experimental import sparse
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxsoftmax.losses import _dense as _losses
from jaxsoftmax.models import _functional as _models
from jaxsoftmax._core import numerics as _numerics
from jaxsoftmax._core import validation as v


def check_batch(x, labels, num_features, num_classes, *, allow_sparse=False):
  if isinstance(x, sparse.BCOO):
    if not allow_sparse:
      _models.check_dense("x", x)
  else:
    x = jnp.asarray(x)
  labels = jnp.asarray(labels)
  v.check_floating("x", x)
  v.check_rank("x", x, 2, "[batch, num_features]")
  v.check_integer("labels", labels)
  v.check_same_shape("labels", labels, x.shape[:1], "[batch]")
  if x.shape[1] != num_features:
    raise ValueError(
        f"x must have {num_features} features to match the params; got x of"
        f" shape {x.shape}."
    )
  v.check_labels_in_range("labels", labels, num_classes)
  if isinstance(x, sparse.BCOO):
    v.check_finite("x.data", x.data)
  else:
    v.check_finite("x", x)
  return x, labels


def _check_class_weights(class_weights, num_classes):
  """``class_weights`` as a checked ``[K]`` array, or None."""
  if class_weights is None:
    return None
  class_weights = jnp.asarray(class_weights)
  v.check_floating("class_weights", class_weights)
  v.check_same_shape(
      "class_weights", class_weights, (num_classes,), "one weight per class"
  )
  v.check_nonnegative("class_weights", class_weights)
  return class_weights


def _example_weights(class_weights, labels, num_classes):
  """``class_weights[labels]``, the per-example weights of cross_entropy."""
  class_weights = _check_class_weights(class_weights, num_classes)
  if class_weights is None:
    return None
  labels = jnp.asarray(labels)
  # Before indexing, so float labels get the labels' TypeError, not JAX's.
  v.check_integer("labels", labels)
  return class_weights[labels]


def _softmax_minus_onehot(logits, labels):
  """``Z - I_y`` in the accumulation dtype, and the per-row losses.

  The one-hot is applied as a scatter-add of -1 on the label entries, so no
  ``[B, K]`` indicator matrix is built.
  """
  hf = _numerics.upcast(logits)
  lse = _numerics.logsumexp(hf)
  z = _numerics.softmax_from_lse(hf, lse)
  rows = jnp.arange(hf.shape[0])
  # As in cross_entropy: under jit an out-of-range label (negative ones too,
  # which indexing would wrap) turns its row's loss and gradient into NaN
  # instead of reading or writing some other class's entry.
  in_range = (labels >= 0) & (labels < hf.shape[1])
  safe = jnp.where(in_range, labels, 0)
  loss = jnp.where(in_range, lse - hf[rows, safe], jnp.nan)
  g = z.at[rows, safe].add(-1)
  return jnp.where(in_range[:, None], g, jnp.nan), loss


def _batch_mean(g, rows, labels, class_weights):
  """The batch mean's gradient w.r.t. the logits, and its value.

  ``g`` is ``Z - I_y`` and ``rows`` the per-row losses. Unweighted, row i is
  scaled by 1/B; with class weights c, by c[y_i] / sum_j c[y_j], the weighted
  mean of cross_entropy.
  """
  if class_weights is None:
    return g / g.shape[0], jnp.mean(rows)
  w = class_weights.astype(g.dtype)[labels]
  denom = jnp.sum(w)
  # As cross_entropy's mean: a batch whose weights are all 0 has loss 0 and
  # gradient 0, not NaN.
  positive = denom > 0
  safe = jnp.where(positive, denom, 1)
  coef = jnp.where(positive, w / safe, 0)
  loss = jnp.where(positive, jnp.sum(w * rows) / safe, 0)
  return g * coef[:, None], loss


def _transposed_matmul(x, g, acc):
  """``x.T @ g`` with ``g`` rounded to ``x``'s dtype, accumulated in ``acc``."""
  if isinstance(x, sparse.BCOO):
    # Contracting the batch axis of x directly reads only its stored entries:
    # X^T G without densifying X, and without a BCOO transpose (which a batched
    # BCOO does not support).
    return sparse.bcoo_dot_general(
        x,
        g.astype(x.dtype),
        dimension_numbers=(([0], [0]), ([], [])),
        preferred_element_type=acc,
    )
  return jnp.matmul(x.T, g.astype(x.dtype), preferred_element_type=acc)


def softmax_regression_loss(
    params: _models.LinearParams,
    x: ArrayLike | sparse.BCOO,
    labels: ArrayLike,
    *,
    l1: ArrayLike = 0.0,
    l2: ArrayLike = 0.0,
    class_weights: ArrayLike | None = None,
) -> jax.Array:
  r"""Mean softmax loss of softmax regression plus the elastic-net penalty.

  .. math::
    L(\Theta, b) = \frac{\sum_{i=1}^{B} c_{y_i}\,
      \ell_{ce}(\Theta^\top x_i + b, y_i)}{\sum_{i=1}^{B} c_{y_i}}
      + \lambda_1 \|\Theta\|_1 + \frac{\lambda_2}{2} \|\Theta\|_2^2

  with class weights :math:`c` (all 1 by default, which gives the plain mean
  over the batch). This is :func:`cross_entropy` with
  ``weights=class_weights[labels]``: per-class weights as in scikit-learn's
  ``LogisticRegression(class_weight=...)`` (whose ``C`` matches
  :math:`\lambda_2 = 1 / (C \sum_i c_{y_i})`) and PyTorch's weighted mean. A
  batch whose weights are all 0 has loss 0.

  Args:
    params: ``{"w": [d, K], "b": [K]}``.
    x: ``[B, d]`` features, dense or a ``jax.experimental.sparse.BCOO``
      matrix.
    labels: ``[B]`` integer labels.
    l1: :math:`\lambda_1 \ge 0`.
    l2: :math:`\lambda_2 \ge 0`.
    class_weights: optional ``[K]`` non-negative weights :math:`c`.

  Returns:
    A scalar.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax import linear_init, softmax_regression_loss
    >>> params = linear_init(jax.random.key(0), 3, 2)
    >>> loss = softmax_regression_loss(
    ...     params, jnp.ones((2, 3)), jnp.array([0, 1]),
    ...     class_weights=jnp.array([1.0, 4.0]))
    >>> loss.shape
    ()

  References:
    E. Kim, "ML refresher / softmax regression", Data 188 lecture 2 (2026);
    "Multilayer perceptron (MLP)", class weights for imbalanced classes
    (blog post, 2024).
  """
  logits = _models.linear_logits(params, x)
  weights = _example_weights(class_weights, labels, logits.shape[-1])
  return _losses.cross_entropy(
      logits, labels, weights=weights
  ) + _losses.penalty(params, l1=l1, l2=l2)


def softmax_regression_value_and_grad(
    params: _models.LinearParams,
    x: ArrayLike | sparse.BCOO,
    labels: ArrayLike,
    *,
    l1: ArrayLike = 0.0,
    l2: ArrayLike = 0.0,
    class_weights: ArrayLike | None = None,
) -> tuple[jax.Array, _models.LinearParams]:
  r"""Loss and closed-form gradient of :func:`softmax_regression_loss`.

  .. math::
    Z = \operatorname{softmax}(X\Theta + b), \qquad
    \nabla_\Theta L = X^\top C (Z - I_y)
      + \lambda_1 \operatorname{sign}(\Theta) + \lambda_2 \Theta, \qquad
    \nabla_b L = \mathbf{1}^\top C (Z - I_y)

  :math:`I_y` is the ``[B, K]`` one-hot matrix of the labels (applied here as
  a scatter, never built) and :math:`C` the diagonal matrix of row weights
  :math:`c_{y_i} / \sum_j c_{y_j}`, which is :math:`I / B` without class
  weights: the lecture's :math:`X^\top (Z - I_y) / B`. Costs two
  ``[B, d] x [d, K]``-sized matmuls and :math:`O(dK)` memory beyond the
  logits, against :math:`O(dK^2)` per example for the naive Jacobian
  (:func:`naive_jacobian_grad`). The L1 term uses ``sign(0) = 0``.

  A ``BCOO`` ``x`` (bag-of-words features) stays sparse in both products:
  :math:`X\Theta` and :math:`X^\top G` run over its stored entries, so the
  cost scales with the number of non-zeros instead of :math:`Bd`.

  Args:
    params: ``{"w": [d, K], "b": [K]}``.
    x: ``[B, d]`` features, dense or a ``jax.experimental.sparse.BCOO``
      matrix (finite; checked on eager calls).
    labels: ``[B]`` integer labels in ``[0, K)``.
    l1: :math:`\lambda_1 \ge 0`.
    l2: :math:`\lambda_2 \ge 0`.
    class_weights: optional ``[K]`` non-negative weights :math:`c`.

  Returns:
    ``(loss, {"w": [d, K], "b": [K]})``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax import linear_init, softmax_regression_value_and_grad
    >>> params = linear_init(jax.random.key(0), 3, 4)
    >>> loss, grads = softmax_regression_value_and_grad(
    ...     params, jnp.ones((2, 3)), jnp.array([0, 3]))
    >>> grads["w"].shape
    (3, 4)

  References:
    E. Kim, "ML refresher / softmax regression", Data 188 lecture 2 (2026):
    :math:`\nabla_\Theta \ell_{ce}(X\Theta, y) = X^\top (Z - I_y)`;
    "Training multinomial logistic regression at scale", sparse features
    (textbook chapter).
  """
  w, b = params["w"], params["b"]
  _models.check_layer("params", w, b)
  x, labels = check_batch(
      x, labels, w.shape[0], w.shape[1], allow_sparse=True
  )
  v.check_nonnegative("l1", l1)
  v.check_nonnegative("l2", l2)
  class_weights = _check_class_weights(class_weights, w.shape[1])
  g, rows = _softmax_minus_onehot(_models.linear_logits(params, x), labels)
  g, loss = _batch_mean(g, rows, labels, class_weights)
  acc = g.dtype
  dw = _transposed_matmul(x, g, acc)
  dw = dw + _losses.penalty_weight_grad(w.astype(acc), l1, l2)
  db = jnp.sum(g, axis=0)
  loss = loss + _losses.penalty(params, l1=l1, l2=l2)
  return loss, {"w": dw.astype(w.dtype), "b": db.astype(b.dtype)}


def softmax_regression_grad(
    params: _models.LinearParams,
    x: ArrayLike | sparse.BCOO,
    labels: ArrayLike,
    *,
    l1: ArrayLike = 0.0,
    l2: ArrayLike = 0.0,
    class_weights: ArrayLike | None = None,
) -> _models.LinearParams:
  r"""Closed-form gradient :math:`X^\top(Z - I_y)/B` (+ penalty) of softmax regression.

  The gradient half of :func:`softmax_regression_value_and_grad`; see there
  for the math (class weights, sparse ``x``), shapes and reference.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax import linear_init, softmax_regression_grad
    >>> params = linear_init(jax.random.key(0), 3, 4)
    >>> softmax_regression_grad(params, jnp.ones((2, 3)), jnp.array([0, 3]))["b"].shape
    (4,)
  """
  return softmax_regression_value_and_grad(
      params, x, labels, l1=l1, l2=l2, class_weights=class_weights
  )[1]


def mlp_loss(
    params: _models.MLPParams,
    x: ArrayLike,
    labels: ArrayLike,
    *,
    l1: ArrayLike = 0.0,
    l2: ArrayLike = 0.0,
    class_weights: ArrayLike | None = None,
    dropout_rate: float = 0.0,
    key: jax.Array | None = None,
) -> jax.Array:
  r"""Mean cross-entropy of a ReLU MLP plus the elastic-net penalty on weights.

  The (class-weighted) mean of :func:`softmax_regression_loss`, on the
  logits of :func:`mlp_logits` with the same dropout options.

  Args:
    params: from :func:`mlp_init`.
    x: ``[B, d]`` features.
    labels: ``[B]`` integer labels.
    l1: :math:`\lambda_1 \ge 0`.
    l2: :math:`\lambda_2 \ge 0`.
    class_weights: optional ``[K]`` non-negative per-class weights.
    dropout_rate: probability of dropping a hidden unit, in ``[0, 1)``; a
      static Python float.
    key: a ``jax.random`` key for the dropout masks; ``None`` (the default)
      disables dropout.

  Returns:
    A scalar.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax import mlp_init, mlp_loss
    >>> params = mlp_init(jax.random.key(0), [3, 5, 4])
    >>> mlp_loss(params, jnp.ones((2, 3)), jnp.array([0, 3]),
    ...          dropout_rate=0.5, key=jax.random.key(1)).shape
    ()
  """
  logits = _models.mlp_logits(params, x, dropout_rate=dropout_rate, key=key)
  weights = _example_weights(class_weights, labels, logits.shape[-1])
  return _losses.cross_entropy(
      logits, labels, weights=weights
  ) + _losses.penalty(params, l1=l1, l2=l2)


def mlp_value_and_grad(
    params: _models.MLPParams,
    x: ArrayLike,
    labels: ArrayLike,
    *,
    l1: ArrayLike = 0.0,
    l2: ArrayLike = 0.0,
    class_weights: ArrayLike | None = None,
    dropout_rate: float = 0.0,
    key: jax.Array | None = None,
) -> tuple[jax.Array, _models.MLPParams]:
  r"""Loss and backprop gradient of :func:`mlp_loss`, written out layer by layer.

  Forward, keeping pre-activations :math:`A_l`, activations :math:`M_l` and
  the dropout scales :math:`S_l = D_l / (1 - p)` (all ones without dropout):

  .. math::
    M_0 = X, \quad A_l = M_{l-1} W_l + b_l, \quad
    M_l = \operatorname{relu}(A_l) \odot S_l,
    \quad O = A_{L+1}, \quad P = \operatorname{softmax}(O)

  Backward, from :math:`G_{L+1} = \partial L / \partial O = C (P - Y)`, where
  :math:`C` is the diagonal of row weights :math:`c_{y_i} / \sum_j c_{y_j}`
  (:math:`I / B` without class weights):

  .. math::
    \frac{\partial L}{\partial W_l} = M_{l-1}^\top G_l, \quad
    \frac{\partial L}{\partial b_l} = \mathbf{1}^\top G_l, \quad
    G_{l-1} = (G_l W_l^\top) \odot S_{l-1} \odot \mathbf{1}\{A_{l-1} > 0\}

  plus :math:`\lambda_1 \operatorname{sign}(W_l) + \lambda_2 W_l` on each
  weight. A dropped unit passes no gradient back. The masks are drawn as in
  :func:`mlp_logits` from the same ``key``, so this is the gradient of that
  forward pass. The ReLU derivative at exactly 0 is taken as 0, the
  convention of ``jax.nn.relu``, so the result equals ``jax.grad``
  everywhere.

  Args:
    params: from :func:`mlp_init`.
    x: ``[B, d]`` features (finite; checked on eager calls).
    labels: ``[B]`` integer labels in ``[0, K)``.
    l1: :math:`\lambda_1 \ge 0`.
    l2: :math:`\lambda_2 \ge 0`.
    class_weights: optional ``[K]`` non-negative per-class weights.
    dropout_rate: :math:`p \in [0, 1)`, a static Python float.
    key: a ``jax.random`` key for the dropout masks; ``None`` (the default)
      disables dropout.

  Returns:
    ``(loss, grads)`` with grads shaped like ``params``.

  References:
    "Multilayer perceptron (MLP)", backward pass: :math:`\partial L/\partial O
    = P - Y`, then layer by layer (blog post, 2024); N. Srivastava et al., "Dropout:
    a simple way to prevent neural networks from overfitting", JMLR 15
    (2014).
  """
  _models.check_dense("x", x)
  _models.check_mlp(params, jnp.shape(x))
  num_classes = params[-1]["w"].shape[1]
  x, labels = check_batch(x, labels, params[0]["w"].shape[0], num_classes)
  v.check_nonnegative("l1", l1)
  v.check_nonnegative("l2", l2)
  class_weights = _check_class_weights(class_weights, num_classes)
  keeps = _models.dropout_masks(params, x.shape, dropout_rate, key)

  activations = [x]
  pre = []
  h = x
  for i, layer in enumerate(params):
    a = _models.affine(h, layer["w"], layer["b"])
    pre.append(a)
    h = jax.nn.relu(a) if i < len(params) - 1 else a
    if keeps is not None and i < len(params) - 1:
      h = _models.dropout(h, keeps[i], dropout_rate)
    activations.append(h)

  g, rows = _softmax_minus_onehot(pre[-1], labels)
  g, loss = _batch_mean(g, rows, labels, class_weights)
  acc = g.dtype
  grads = [None] * len(params)
  for i in reversed(range(len(params))):
    w = params[i]["w"]
    m_prev = activations[i]
    dw = jnp.matmul(m_prev.T, g.astype(m_prev.dtype), preferred_element_type=acc)
    dw = dw + _losses.penalty_weight_grad(w.astype(acc), l1, l2)
    grads[i] = {"w": dw.astype(w.dtype), "b": jnp.sum(g, 0).astype(w.dtype)}
    if i > 0:
      g = jnp.matmul(g.astype(w.dtype), w.T, preferred_element_type=acc)
      if keeps is not None:
        g = _models.dropout(g, keeps[i - 1], dropout_rate)
      g = jnp.where(pre[i - 1] > 0, g, 0)
  loss = loss + _losses.penalty(params, l1=l1, l2=l2)
  return loss, grads


def mlp_grad(
    params: _models.MLPParams,
    x: ArrayLike,
    labels: ArrayLike,
    *,
    l1: ArrayLike = 0.0,
    l2: ArrayLike = 0.0,
    class_weights: ArrayLike | None = None,
    dropout_rate: float = 0.0,
    key: jax.Array | None = None,
) -> _models.MLPParams:
  r"""Backprop gradient of :func:`mlp_loss`, written out layer by layer.

  The gradient half of :func:`mlp_value_and_grad`; see there for the math
  (class weights, dropout).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxsoftmax import mlp_init, mlp_grad
    >>> params = mlp_init(jax.random.key(0), [3, 5, 4])
    >>> [g["w"].shape for g in mlp_grad(params, jnp.ones((2, 3)), jnp.array([0, 3]))]
    [(3, 5), (5, 4)]
  """
  return mlp_value_and_grad(
      params,
      x,
      labels,
      l1=l1,
      l2=l2,
      class_weights=class_weights,
      dropout_rate=dropout_rate,
      key=key,
  )[1]


def naive_jacobian_grad(
    params: _models.LinearParams,
    x: ArrayLike,
    labels: ArrayLike,
) -> _models.LinearParams:
  r"""The lecture's "approach 1": the gradient through an explicit Jacobian.

  For each example the Jacobian of the logits with respect to the weights,

  .. math::
    J_i = \frac{\partial h(x_i)}{\partial \Theta} \in \mathbb{R}^{K \times dK},
    \qquad (J_i)_{k, (a, c)} = x_{i,a}\, \delta_{kc},

  is materialized (``[B, K, d, K]`` in all) and multiplied by
  :math:`\partial \ell / \partial h = (z_i - e_{y_i})^\top`:

  .. math::
    \nabla_\Theta L = \frac{1}{B} \sum_i (z_i - e_{y_i})^\top J_i .

  Memory :math:`O(B d K^2)` and time :math:`O(B d K^2)`, a factor :math:`K`
  more than the structured :func:`softmax_regression_grad`; at
  :math:`d = K = 1000` in float32 one example's :math:`J` is 4 GB. An
  optimization barrier keeps XLA from fusing the Jacobian away, so the
  measured cost is the approach's, not a rewritten one. Exists for the
  gradient experiment; do not train with it.

  Args:
    params: ``{"w": [d, K], "b": [K]}``.
    x: ``[B, d]`` features.
    labels: ``[B]`` integer labels.

  Returns:
    ``{"w": [d, K], "b": [K]}``, the gradient of the unregularized mean loss.

  References:
    E. Kim, "ML refresher / softmax regression", Data 188 lecture 2 (2026),
    "Time, memory complexity".
  """
  w, b = params["w"], params["b"]
  _models.check_layer("params", w, b)
  x, labels = check_batch(x, labels, w.shape[0], w.shape[1])
  num_classes = w.shape[1]
  dlogits, _ = _softmax_minus_onehot(_models.linear_logits(params, x), labels)
  dlogits = dlogits.astype(w.dtype) / x.shape[0]
  eye = jnp.eye(num_classes, dtype=w.dtype)
  jac_w = x[:, None, :, None] * eye[None, :, None, :]
  jac_b = jnp.broadcast_to(eye, (x.shape[0], num_classes, num_classes))
  jac_w, jac_b = jax.lax.optimization_barrier((jac_w, jac_b))
  dw = jnp.einsum("bk,bkac->ac", dlogits, jac_w)
  db = jnp.einsum("bk,bkc->c", dlogits, jac_b)
  return {"w": dw, "b": db}
