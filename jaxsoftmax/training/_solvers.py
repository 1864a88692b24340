r"""Second-order solvers for L2-regularized softmax regression.

The objective is :func:`jaxsoftmax.softmax_regression_loss` with ``l2``,

.. math::
  L(\Theta, b) = \frac{1}{B} \sum_{i=1}^{B} \ell_{ce}(\Theta^\top x_i + b,
  y_i) + \frac{\lambda}{2} \|\Theta\|_F^2 ,

written with the augmented input :math:`\tilde x = [x; 1] \in
\mathbb{R}^{d+1}` and weights :math:`\tilde W = [\Theta; b^\top] \in
\mathbb{R}^{(d+1) \times K}`, so the logits are :math:`\tilde X \tilde W`.
Here are its closed-form Hessian and Hessian-vector product, a damped Newton
method with a backtracking line search, and full-batch L-BFGS from Optax;
the two solvers run entirely inside one ``jit`` (``lax.while_loop``, no host
round trip per iteration).

Flattening order: a parameter vector is :math:`\operatorname{vec}(\tilde
W)` read row by row, entry :math:`(a, k)` at index :math:`aK + k`: the
:math:`dK` weights first (``w.reshape(-1)``), then the :math:`K` biases.
``jax.flatten_util.ravel_pytree`` orders dict leaves by key, which puts
``b`` first; the order here keeps :math:`\tilde W` a plain ``[d + 1, K]``
reshape, and the Hessian a sum of Kronecker products in it (see
:func:`softmax_regression_hessian`). :func:`ravel_linear_params` and
:func:`unravel_linear_params` convert.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np
import optax

from jaxsoftmax.models import _gradients
from jaxsoftmax.models import _functional as _models
from jaxsoftmax._core import numerics as _numerics
from jaxsoftmax.training import _optim
from jaxsoftmax._core import validation as _validation

# Armijo's sufficient-decrease constant and the most halvings of the step.
_ARMIJO_C1 = 1e-4
_MAX_HALVINGS = 40


class SolverInfo(NamedTuple):
  """How a solver stopped.

  Attributes:
    iterations: steps taken, an int32 scalar.
    value: the objective at the returned parameters.
    grad_norm: the Euclidean norm of the gradient there, over all leaves.
    converged: ``grad_norm <= tol``.
  """

  iterations: jax.Array
  value: jax.Array
  grad_norm: jax.Array
  converged: jax.Array


def ravel_linear_params(params: _models.LinearParams) -> jax.Array:
  r"""Softmax-regression params as one vector, :math:`\mathrm{vec}(\tilde W)`.

  Entry :math:`(a, k)` of :math:`\tilde W = [\Theta; b^\top]` goes to index
  :math:`aK + k`: ``w.reshape(-1)`` followed by ``b``.

  Args:
    params: ``{"w": [d, K], "b": [K]}``.

  Returns:
    ``[(d + 1) * K]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax.training._solvers import ravel_linear_params
    >>> w, b = jnp.array([[1.0, 2.0], [3.0, 4.0]]), jnp.array([5.0, 6.0])
    >>> params = {"w": w, "b": b}
    >>> ravel_linear_params(params).tolist()
    [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
  """
  w, b = params["w"], params["b"]
  _models.check_layer("params", w, b)
  return jnp.concatenate([w, b[None, :]], axis=0).reshape(-1)


def unravel_linear_params(
    flat: ArrayLike, num_classes: int
) -> _models.LinearParams:
  r"""Inverse of :func:`ravel_linear_params`.

  Args:
    flat: ``[(d + 1) * K]``.
    num_classes: :math:`K`.

  Returns:
    ``{"w": [d, K], "b": [K]}``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax.training._solvers import unravel_linear_params
    >>> params = unravel_linear_params(jnp.arange(6.0), 2)
    >>> params["w"].shape, params["b"].tolist()
    ((2, 2), [4.0, 5.0])
  """
  flat = jnp.asarray(flat)
  _validation.check_floating("flat", flat)
  _validation.check_rank("flat", flat, 1, "[(num_features + 1) * num_classes]")
  _validation.check_positive_int("num_classes", num_classes)
  if flat.shape[0] % num_classes or flat.shape[0] < 2 * num_classes:
    raise ValueError(
        f"flat must have (num_features + 1) * num_classes entries with"
        f" num_features >= 1 and num_classes={num_classes}; got shape"
        f" {flat.shape}."
    )
  rows = flat.reshape(-1, num_classes)
  return {"w": rows[:-1], "b": rows[-1]}


def softmax_regression_hessian(
    params: _models.LinearParams,
    x: ArrayLike,
    labels: ArrayLike,
    *,
    l2: ArrayLike = 0.0,
) -> jax.Array:
  r"""Closed-form Hessian of the L2-regularized softmax-regression loss.

  The logits of example :math:`i` are :math:`\tilde W^\top \tilde x_i`, the
  softmax Jacobian is :math:`\operatorname{diag}(p_i) - p_i p_i^\top`, and
  the logits are linear in :math:`\tilde W`, so in the flattening of
  :func:`!ravel_linear_params`

  .. math::
    H = \frac{1}{B} \sum_{i=1}^{B} (\tilde x_i \tilde x_i^\top) \otimes
      \bigl(\operatorname{diag}(p_i) - p_i p_i^\top\bigr)
      + \lambda \begin{bmatrix} I_d & 0 \\ 0 & 0 \end{bmatrix} \otimes I_K ,

  :math:`p_i = \operatorname{softmax}(\Theta^\top x_i + b)`. The biases are
  not penalized, so the bias block gets no :math:`\lambda`. :math:`H` does
  not depend on the labels (the cross-entropy is linear in the one-hot
  target); they are taken, and checked, so that every function here has the
  loss's signature. Building it costs :math:`O(B (d + 1)^2 K^2)` time and
  :math:`O((d + 1)^2 K^2)` memory; :func:`softmax_regression_hvp` applies it
  in :math:`O(B d K)`.

  :math:`H` is singular: each :math:`\operatorname{diag}(p) - p p^\top` has
  :math:`\mathbf 1` in its null space, so adding one vector to every class's
  column of :math:`\tilde W` is a flat direction of the cross-entropy;
  :math:`\lambda` lifts it for the weight rows but never for the bias row.

  Args:
    params: ``{"w": [d, K], "b": [K]}``.
    x: ``[B, d]`` features.
    labels: ``[B]`` integer labels in ``[0, K)``.
    l2: :math:`\lambda \ge 0`.

  Returns:
    ``[(d + 1) K, (d + 1) K]``, symmetric positive semi-definite, in the
    accumulation dtype of the params (float32 for half precision).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import softmax_regression_hessian
    >>> params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)}
    >>> x, labels = jnp.ones((2, 3)), jnp.array([0, 3])
    >>> softmax_regression_hessian(params, x, labels).shape
    (16, 16)

  References:
    D. Böhning, "Multinomial logistic regression algorithm", Annals of the
    Institute of Statistical Mathematics 44 (1992); "Training multinomial
    logistic regression at scale", second-order methods (textbook chapter).
  """
  x, labels = _check_problem(params, x, labels, l2)
  return _hessian(params, x, l2)


@jax.jit
def _hessian(params, x, l2):
  p = _probabilities(params, x)
  acc = p.dtype
  batch, num_classes = p.shape
  xt = jnp.concatenate([x.astype(acc), jnp.ones((batch, 1), acc)], axis=1)
  rows = xt.shape[1]
  # Blocks (a, k, c, l): the diag(p) part lives on k == l only, so it is a
  # [d + 1, K, d + 1] contraction expanded with an identity, never a
  # Kronecker product of full matrices.
  diag = jnp.einsum("ia,ic,ik->akc", xt, xt, p)
  eye = jnp.eye(num_classes, dtype=acc)
  outer = (xt[:, :, None] * p[:, None, :]).reshape(batch, rows * num_classes)
  h = (diag[:, :, :, None] * eye[None, :, None, :]).reshape(
      rows * num_classes, rows * num_classes
  ) - jnp.matmul(outer.T, outer)
  is_weight = jnp.arange(rows * num_classes) < (rows - 1) * num_classes
  ridge = jnp.where(is_weight, jnp.asarray(l2, acc), jnp.zeros((), acc))
  return h / batch + jnp.diag(ridge)


def softmax_regression_hvp(
    params: _models.LinearParams,
    x: ArrayLike,
    labels: ArrayLike,
    v: _models.LinearParams,
    *,
    l2: ArrayLike = 0.0,
) -> _models.LinearParams:
  r"""Hessian-vector product of softmax regression, without forming :math:`H`.

  The gradient is :math:`\tilde X^\top (P - Y) / B + \lambda [\Theta; 0]`.
  Differentiating it along :math:`\tilde V = [V_w; v_b^\top]` only moves
  :math:`P`, whose rows change by the softmax Jacobian applied to the
  directional derivative of the logits, :math:`U = \tilde X \tilde V = X V_w
  + \mathbf 1 v_b^\top`:

  .. math::
    D = P \odot U - P \odot \bigl((P \odot U) \mathbf 1 \mathbf 1^\top\bigr),
    \quad\text{i.e.}\quad
    D_{ik} = p_{ik} \Bigl(u_{ik} - \sum_l p_{il} u_{il}\Bigr),

  .. math::
    (Hv)_w = \frac{1}{B} X^\top D + \lambda V_w, \qquad
    (Hv)_b = \frac{1}{B} \mathbf 1^\top D .

  Two ``[B, d] x [d, K]`` matmuls plus the logits: :math:`O(BdK)` time and
  :math:`O(BK)` extra memory, against :math:`O(B d^2 K^2)` to build
  :math:`H`. Equals ``softmax_regression_hessian(...) @ ravel(v)`` and
  ``jax.jvp`` of ``jax.grad`` of the loss.

  Args:
    params: ``{"w": [d, K], "b": [K]}``.
    x: ``[B, d]`` features.
    labels: ``[B]`` integer labels in ``[0, K)`` (checked; :math:`H` does not
      depend on them).
    v: the direction, ``{"w": [d, K], "b": [K]}``.
    l2: :math:`\lambda \ge 0`.

  Returns:
    ``{"w": [d, K], "b": [K]}`` in the params' dtypes.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import softmax_regression_hvp
    >>> params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)}
    >>> v = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
    >>> hv = softmax_regression_hvp(params, jnp.ones((2, 3)), jnp.array([0, 3]),
    ...                             v, l2=0.1)
    >>> # Every class moves alike, which softmax ignores: only L2 acts.
    >>> [round(float(a), 6) for a in hv["w"][0]]
    [0.1, 0.1, 0.1, 0.1]

  References:
    B. A. Pearlmutter, "Fast exact multiplication by the Hessian", Neural
    Computation 6 (1994).
  """
  x, labels = _check_problem(params, x, labels, l2)
  w, b = params["w"], params["b"]
  if not isinstance(v, dict) or set(v) != {"w", "b"}:
    raise ValueError(
        f"v must be a dict with keys 'w' and 'b' like params; got {v!r}."
    )
  v = {"w": jnp.asarray(v["w"]), "b": jnp.asarray(v["b"])}
  _validation.check_floating("v['w']", v["w"])
  _validation.check_same_shape("v['w']", v["w"], w.shape, "params['w']'s shape")
  _validation.check_same_shape("v['b']", v["b"], b.shape, "params['b']'s shape")
  return _hvp(params, x, v, l2)


@jax.jit
def _hvp(params, x, v, l2):
  w, b = params["w"], params["b"]
  p = _probabilities(params, x)
  acc = p.dtype
  u = _numerics.upcast(_models.affine(x, v["w"], v["b"]))
  s = p * u
  d = (s - p * jnp.sum(s, axis=1, keepdims=True)) / x.shape[0]
  hw = jnp.matmul(x.T, d.astype(x.dtype), preferred_element_type=acc)
  hw = hw + jnp.asarray(l2, acc) * _numerics.upcast(v["w"])
  return {"w": hw.astype(w.dtype), "b": jnp.sum(d, axis=0).astype(b.dtype)}


def newton_solve(
    params: _models.LinearParams,
    x: ArrayLike,
    labels: ArrayLike,
    *,
    l2: ArrayLike,
    max_iter: int = 20,
    tol: ArrayLike = 1e-8,
    damping: ArrayLike | None = None,
) -> tuple[_models.LinearParams, SolverInfo]:
  r"""Minimizes L2-regularized softmax regression by damped Newton steps.

  Each iteration solves, by Cholesky,

  .. math::
    (H + \mu I)\, s = -g, \qquad \mu = \delta \cdot \operatorname{tr}(H) /
    n ,

  with the closed-form :math:`H` of :func:`softmax_regression_hessian`
  (:math:`n = (d + 1) K`), then backtracks :math:`t = 1, \tfrac12, \dots`
  until Armijo's condition :math:`L(\theta + t s) \le L(\theta) + c_1 t\,
  g^\top s` holds (:math:`c_1 = 10^{-4}`, with a few ulps of :math:`L` of
  slack so a full step whose decrease is below rounding is still taken).
  Far from the optimum the line search keeps the objective decreasing; near
  it :math:`t = 1` is accepted and convergence is quadratic.

  Why the damping: :math:`H` is singular along "add one vector to every
  class" (for the biases always, since they are unregularized; for the
  weights too when :math:`\lambda = 0`, and along constant features). The
  gradient has no component there (each row of :math:`P - Y` sums to 0), so
  :math:`\mu` only has to make the factorization exist: it changes the step
  along the flat directions, where the loss does not change, and shrinks the
  others by :math:`\sigma / (\sigma + \mu)`, which for :math:`\mu \ll
  \sigma` leaves Newton's rate intact. At :math:`n = 650` a Cholesky
  factorization is ~15x faster on CPU than the eigendecomposition a
  pseudo-inverse needs. Should a step still not be finite, the iteration
  falls back to :math:`-g`.

  The whole loop is one ``lax.while_loop`` under ``jit``; ``newton_solve``
  itself may be called under ``jit`` or ``vmap`` (e.g. over ``l2``).
  Each iteration costs :math:`O(B n^2 + n^3)`: meant for moderate
  :math:`(d + 1)K` (digits: 650).

  Args:
    params: the start, ``{"w": [d, K], "b": [K]}``.
    x: ``[B, d]`` features, the full batch.
    labels: ``[B]`` integer labels in ``[0, K)``.
    l2: :math:`\lambda \ge 0` (with :math:`\lambda = 0` the minimum exists
      only if the classes are not separable).
    max_iter: most Newton steps.
    tol: stop once :math:`\|g\|_2 \le` ``tol``. Reachable in float64; in
      float32 the gradient's rounding floor is around 1e-6.
    damping: :math:`\delta`; ``None`` means :math:`\sqrt{\epsilon}` of the
      accumulation dtype (1.5e-8 for float64), enough to keep the Cholesky
      factorization of a singular :math:`H` finite.

  Returns:
    ``(params, info)``: the minimizer (the params' dtypes) and a
    :class:`SolverInfo`. A line search that fails even after 40 halvings
    stops the loop with ``converged=False``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import newton_solve
    >>> x = jnp.sin(jnp.arange(120.0)).reshape(40, 3)
    >>> labels = jnp.argmax(x, axis=1)
    >>> params = {"w": jnp.zeros((3, 3)), "b": jnp.zeros(3)}
    >>> params, info = newton_solve(params, x, labels, l2=0.1, tol=1e-5)
    >>> bool(info.converged), int(info.iterations) < 10
    (True, True)

  References:
    J. Nocedal, S. J. Wright, "Numerical Optimization", 2nd ed., Springer
    (2006), Algorithm 3.1 (backtracking) and section 3.4 (Newton with
    Hessian modification); "Training multinomial logistic regression at
    scale", second-order methods (textbook chapter).
  """
  x, labels = _check_problem(params, x, labels, l2)
  _validation.check_positive_int("max_iter", max_iter)
  _validation.check_nonnegative("tol", tol)
  acc = _numerics.accumulation_dtype(jnp.result_type(params["w"], x))
  if damping is None:
    damping = float(np.sqrt(jnp.finfo(acc).eps))
  _validation.check_nonnegative("damping", damping)
  return _newton(params, x, labels, l2, max_iter, tol, damping)


@jax.jit
def _newton(params, x, labels, l2, max_iter, tol, damping):
  num_classes = params["w"].shape[1]
  # Half-precision params are iterated in float32 and rounded once at the end.
  dtype = _numerics.accumulation_dtype(
      jnp.result_type(params["w"], params["b"])
  )

  def unravel(flat):
    rows = flat.reshape(-1, num_classes)
    return {"w": rows[:-1], "b": rows[-1]}

  def objective(flat):
    return _gradients.softmax_regression_loss(unravel(flat), x, labels, l2=l2)

  def newton_step(flat, value, grad):
    """The damped Newton step from ``flat``, backtracked; (new flat, ok)."""
    h = _hessian(unravel(flat), x, l2)
    eye = jnp.eye(h.shape[0], dtype=h.dtype)
    mu = damping * jnp.trace(h) / h.shape[0]
    factor = jax.scipy.linalg.cho_factor(h + mu * eye)
    step = jax.scipy.linalg.cho_solve(factor, -grad.astype(h.dtype))
    step = jnp.where(jnp.all(jnp.isfinite(step)), step, -grad).astype(dtype)
    slope = jnp.vdot(grad, step)
    slack = 8 * jnp.finfo(value.dtype).eps * jnp.abs(value)

    def insufficient(search):
      t, trial, halvings = search
      # Written as "not <=" so that a NaN trial value keeps backtracking.
      sufficient = trial <= value + _ARMIJO_C1 * t * slope + slack
      return ~sufficient & (halvings <= _MAX_HALVINGS)

    def halve(search):
      t, _, halvings = search
      t = t / 2
      return t, objective(flat + t * step), halvings + 1

    # Starting from t = 2 with no trial value makes the first pass evaluate
    # the full step, so the objective is traced once, not twice.
    two, nan = jnp.full((), 2, dtype), jnp.full((), jnp.nan, value.dtype)
    t, trial, _ = jax.lax.while_loop(
        insufficient, halve, (two, nan, jnp.int32(0))
    )
    accepted = trial <= value + _ARMIJO_C1 * t * slope + slack
    return jnp.where(accepted, flat + t * step, flat), accepted

  # One pass per point: evaluate there, then step unless done. The value and
  # gradient are computed in one place only, and the last pass leaves the
  # figures of the returned point in the carry.
  def evaluate_then_step(carry):
    flat, _, _, iterations, _ = carry
    value, grads = _gradients.softmax_regression_value_and_grad(
        unravel(flat), x, labels, l2=l2
    )
    grad = ravel_linear_params(grads).astype(dtype)
    done = (jnp.linalg.norm(grad) <= tol) | (iterations >= max_iter)
    flat, moved = jax.lax.cond(
        done,
        lambda: (flat, jnp.ones((), bool)),
        lambda: newton_step(flat, value, grad),
    )
    # A failed line search also ends the loop, with the point it started at.
    return flat, value, grad, iterations + (~done & moved), done | ~moved

  def keep_going(carry):
    return ~carry[-1]

  flat = ravel_linear_params(params).astype(dtype)
  value, _ = jax.eval_shape(
      lambda: _gradients.softmax_regression_value_and_grad(
          unravel(flat), x, labels, l2=l2
      )
  )
  init = (
      flat,
      jnp.zeros(value.shape, value.dtype),
      jnp.zeros_like(flat),
      jnp.int32(0),
      jnp.zeros((), bool),
  )
  flat, value, grad, iterations, _ = jax.lax.while_loop(
      keep_going, evaluate_then_step, init
  )
  grad_norm = jnp.linalg.norm(grad)
  solved = jax.tree.map(lambda a, p: a.astype(p.dtype), unravel(flat), params)
  return solved, SolverInfo(iterations, value, grad_norm, grad_norm <= tol)


def lbfgs_solve(
    loss_fn: Callable[..., jax.Array],
    params: Any,
    *,
    max_iter: int = 500,
    tol: ArrayLike = 1e-6,
    args: tuple[Any, ...] = (),
    memory_size: int = 10,
) -> tuple[Any, SolverInfo]:
  r"""Minimizes ``loss_fn(params, *args)`` by full-batch L-BFGS (Optax's).

  The optimizer is ``make_optimizer("lbfgs", 1.0)``: the L-BFGS two-loop
  direction from the last ``memory_size`` curvature pairs, scaled by a zoom
  line search that enforces the strong Wolfe conditions. The line search
  evaluates the value and gradient at the point it accepts and keeps them
  in the optimizer state; ``optax.value_and_grad_from_state`` reads them
  back, so each iteration costs one value-and-gradient per line-search trial
  (usually one). Iterations stop when :math:`\|\nabla L\|_2 \le` ``tol`` or
  after ``max_iter``.

  Everything runs in one compiled ``lax.while_loop``: no host round trip per
  iteration. ``loss_fn`` and ``memory_size`` are static to the compilation
  (pass the same function object to reuse it); ``params``, ``args``,
  ``max_iter`` and ``tol`` are traced, so pass data through ``args`` rather
  than closing over it, which would bake it into the program as a constant.

  Args:
    loss_fn: ``loss_fn(params, *args) -> scalar``, differentiable by
      ``jax.grad``, e.g. :func:`jaxsoftmax.softmax_regression_loss` wrapped
      to take ``l2`` positionally.
    params: the start, any pytree of floating arrays.
    max_iter: most iterations.
    tol: gradient-norm tolerance, :math:`\ge 0`.
    args: extra positional arguments of ``loss_fn`` (the data).
    memory_size: number of curvature pairs kept.

  Returns:
    ``(params, info)``: the final parameters and a :class:`SolverInfo` with
    the objective value and gradient norm there.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxsoftmax import lbfgs_solve
    >>> def loss(w, target):
    ...   return jnp.sum((w - target) ** 2) + jnp.sum(w ** 4)
    >>> target = jnp.array([1.0, 2.0, 3.0])
    >>> w, info = lbfgs_solve(loss, jnp.zeros(3), args=(target,))
    >>> bool(info.converged)
    True

  References:
    D. Liu, J. Nocedal, "On the limited memory BFGS method for large scale
    optimization", Mathematical Programming 45 (1989); J. Nocedal, S. J.
    Wright, "Numerical Optimization" (2006), Algorithms 3.5-3.6 (zoom).
  """
  if not callable(loss_fn):
    raise TypeError(f"loss_fn must be callable; got {type(loss_fn).__name__}.")
  _validation.check_positive_int("max_iter", max_iter)
  _validation.check_nonnegative("tol", tol)
  _validation.check_positive_int("memory_size", memory_size)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    _validation.check_floating(
        f"params{jax.tree_util.keystr(path)}", jnp.asarray(leaf)
    )
  return _lbfgs(loss_fn, memory_size, params, tuple(args), max_iter, tol)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _lbfgs(loss_fn, memory_size, params, args, max_iter, tol):
  def value_fn(p):
    return loss_fn(p, *args)

  opt = _optim.make_optimizer("lbfgs", 1.0, memory_size=memory_size)
  value_and_grad = optax.value_and_grad_from_state(value_fn)
  state = opt.init(params)
  # Seeding the state with the starting value and gradient lets the loop
  # test convergence before the first step without evaluating them twice.
  value, grad = jax.value_and_grad(value_fn)(params)
  stored = optax.tree.get(state, "value")
  state = optax.tree.set(state, value=value.astype(stored.dtype), grad=grad)

  def step(carry):
    params, state, iteration = carry
    value, grad = value_and_grad(params, state=state)
    updates, new_state = opt.update(
        grad, state, params, value=value, grad=grad, value_fn=value_fn
    )
    # The line search may return its value in the loss's dtype, which can
    # differ from the state's (float32 loss with x64 on); the loop needs
    # one carry type.
    new_state = jax.tree.map(lambda n, o: n.astype(o.dtype), new_state, state)
    return optax.apply_updates(params, updates), new_state, iteration + 1

  def keep_going(carry):
    _, state, iteration = carry
    grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
    return (iteration < max_iter) & (grad_norm > tol)

  params, state, iterations = jax.lax.while_loop(
      keep_going, step, (params, state, jnp.int32(0))
  )
  grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
  value = optax.tree.get(state, "value")
  return params, SolverInfo(iterations, value, grad_norm, grad_norm <= tol)


def _check_problem(params, x, labels, l2):
  w, b = params["w"], params["b"]
  _models.check_layer("params", w, b)
  x, labels = _gradients.check_batch(x, labels, w.shape[0], w.shape[1])
  _validation.check_nonnegative("l2", l2)
  return x, labels


def _probabilities(params, x):
  """``softmax(x w + b)`` from the max-shifted log-sum-exp, accumulated."""
  logits = _numerics.upcast(_models.linear_logits(params, x))
  return _numerics.softmax_from_lse(logits, _numerics.logsumexp(logits))
