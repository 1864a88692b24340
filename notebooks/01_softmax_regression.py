# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Softmax regression, by hand and by autodiff
#
# The lecture's result: for logits $H = X\Theta + b$ and $Z = \mathrm{softmax}(H)$,
# the gradient of the mean softmax loss is
# $$\nabla_\Theta L = \tfrac{1}{B} X^\top (Z - I_y).$$
# This notebook checks that jaxsoftmax's closed form equals `jax.grad`, shows why
# the naive Jacobian route is $K$ times more expensive, and trains on digits.

# %%
import jax
import jax.numpy as jnp
import optax

import jaxsoftmax as js

jax.config.update("jax_enable_x64", True)

# %% [markdown]
# ## The closed form equals autodiff (float64)

# %%
key = jax.random.key(0)
kx, ky, kp = jax.random.split(key, 3)
x = jax.random.normal(kx, (32, 20), jnp.float64)
y = jax.random.randint(ky, (32,), 0, 7)
params = js.linear_init(kp, 20, 7, dtype=jnp.float64)


def reference_loss(p):
  h = x @ p["w"] + p["b"]
  return jnp.mean(jax.nn.logsumexp(h, axis=-1) - h[jnp.arange(32), y])


manual = js.softmax_regression_grad(params, x, y)
auto = jax.grad(reference_loss)(params)
naive = js.naive_jacobian_grad(params, x, y)
for name in ("w", "b"):
  print(
      name,
      "max |manual - jax.grad| =", float(jnp.max(jnp.abs(manual[name] - auto[name]))),
      " max |naive - jax.grad| =", float(jnp.max(jnp.abs(naive[name] - auto[name]))),
  )

# %% [markdown]
# ## Why not build $\partial h / \partial \Theta$?
#
# XLA's memory analysis of the two gradient programs at batch size 1, $K = d$
# (compiled from shapes only, nothing is allocated):

# %%
for k in (64, 256, 1000):
  p = {"w": jax.ShapeDtypeStruct((k, k), jnp.float32), "b": jax.ShapeDtypeStruct((k,), jnp.float32)}
  xs = jax.ShapeDtypeStruct((1, k), jnp.float32)
  ys = jax.ShapeDtypeStruct((1,), jnp.int32)
  naive_mem = js.reporting.compiled_memory(js.naive_jacobian_grad, p, xs, ys)["total"]
  fast_mem = js.reporting.compiled_memory(js.softmax_regression_grad, p, xs, ys)["total"]
  print(
      f"K = d = {k:5d}: naive {js.reporting.format_bytes(naive_mem):>10}, "
      f"structured {js.reporting.format_bytes(fast_mem):>10}, ratio {naive_mem / fast_mem:7.1f}"
  )

# %% [markdown]
# ## Training on digits with the manual gradient and an Optax optimizer

# %%
data = js.data.load_digits()
x_train, x_test = js.data.standardize(data.x_train, data.x_test)
params = js.linear_init(jax.random.key(1), 64, 10)
optimizer = optax.sgd(0.2, momentum=0.9)
opt_state = optimizer.init(params)


@jax.jit
def step(params, opt_state, x, y):
  loss, grads = js.softmax_regression_value_and_grad(params, x, y, l2=1e-3)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


# Full-batch steps keep the cell short; experiments/softmax_regression.py
# runs the minibatch version.
for i in range(200):
  params, opt_state, loss = step(params, opt_state, x_train, data.y_train)
test_error = float(js.zero_one_loss(js.linear_logits(params, x_test), data.y_test))
print(f"train loss {float(loss):.4f}, test accuracy {1 - test_error:.4f}")
assert 1 - test_error > 0.93
