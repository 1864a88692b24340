# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The softmax layer split over devices
#
# With $K$ classes and $P$ devices, device $p$ holds the columns $w_{:, C_p}$
# of the output layer ($|C_p| = K/P$) and computes only its block of logits
# $h_{C_p} = x w_{:, C_p} + b_{C_p}$. The devices agree on the normalizer
# with three numbers per row: a `pmax` of the local log-sum-exps, a `psum`
# of the rescaled local sums, and a `psum` of the target logit, which only
# the device owning the label contributes,
# $$\operatorname{lse} = M + \log \sum_p e^{\operatorname{lse}_p - M}, \qquad
# \ell = \operatorname{lse} - h_y .$$
# The backward pass needs one `psum` of $dx$; $dw_p$ and $db_p$ stay local.
# Here: 8 simulated CPU devices, the layout, equality with the
# single-device loss, top-k, and training with `fit`. Label smoothing is
# spread over the global $K$ classes, so no result depends on $P$.

# %%
import os

# Must be set before jax is imported: 8 simulated CPU devices.
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import optax

import jaxsoftmax as js
from jaxsoftmax import sharded

jax.config.update("jax_enable_x64", True)
print(jax.device_count(), "devices:", jax.devices()[:2], "...")

# %% [markdown]
# ## The layout: which device holds which classes
#
# `shard_params` places the parameters with a `PartitionSpec` per leaf:
# `w` [d, K] split on its class dimension, `b` [K] likewise.

# %%
d, K, B = 6, 40, 16
mesh = jax.make_mesh((8,), ("model",))
kx, ky, kp = jax.random.split(jax.random.key(0), 3)
params = js.linear_init(kp, d, K, dtype=jnp.float64)
params["b"] = 0.1 * jax.random.normal(kp, (K,), jnp.float64)
x = jax.random.normal(kx, (B, d), jnp.float64)
y = jax.random.randint(ky, (B,), 0, K)

class_split = {"w": P(None, "model"), "b": P("model")}
placed = sharded.shard_params(params, mesh, class_split)
for shard in placed["w"].addressable_shards:
  cols = shard.index[1]
  print(f"{shard.device}: classes {cols.start}..{cols.stop - 1},"
        f" w block {shard.data.shape}")
jax.debug.visualize_array_sharding(placed["w"], use_color=False, scale=0.3)

# %% [markdown]
# ## Same loss and gradients as on one device (float64)

# %%
def single(params):
  return js.cross_entropy(x @ params["w"] + params["b"][None, :], y)


def split(params):
  return sharded.vocab_parallel_cross_entropy(
      x, params["w"], params["b"], y, mesh=mesh)


loss_1, grads_1 = jax.value_and_grad(single)(params)
loss_8, grads_8 = jax.jit(jax.value_and_grad(split))(placed)
# Eagerly too, on this jax.make_mesh mesh, without a jax.set_mesh context.
grads_eager = jax.grad(split)(placed)
print("loss, 1 device :", float(loss_1))
print("loss, 8 devices:", float(loss_8))
for name in ("w", "b"):
  err = float(jnp.max(jnp.abs(grads_8[name] - grads_1[name])))
  print(f"max |d{name} (8 devices) - d{name} (1 device)| = {err:.1e};"
        f" d{name} is split as {grads_8[name].sharding.spec}")
print("eager gradients equal the jitted ones:", all(
    bool(jnp.allclose(grads_eager[n], grads_8[n])) for n in ("w", "b")))

# %% [markdown]
# ## Top-k without gathering the logits
#
# Each device takes its local top $k$; only the $P \cdot k$ candidates per
# row are gathered, then merged.

# %%
values, ids = sharded.vocab_parallel_top_k(
    x, placed["w"], placed["b"], 3, mesh=mesh)
ref_values, ref_ids = jax.lax.top_k(x @ params["w"] + params["b"][None, :], 3)
print("top-3 classes of the first rows:", ids[:3].tolist())
print("same as lax.top_k on the full logits:",
      bool((ids == ref_ids).all()), bool(jnp.allclose(values, ref_values)))

# %% [markdown]
# ## Training on a data x model mesh
#
# `fit` places the params with `param_specs`, builds Adam's state with the
# same layout, and splits each minibatch's rows over the `"data"` axis.

# %%
mesh_2d = jax.make_mesh((2, 4), ("data", "model"))


def loss_2d(params, x, y):
  return sharded.vocab_parallel_cross_entropy(
      x, params["w"], params["b"], y, mesh=mesh_2d, data_axis_name="data")


trained, history = js.fit(
    loss_2d, params, (x, y), optimizer=optax.adam(0.1), epochs=5,
    batch_size=8, key=jax.random.key(1), mesh=mesh_2d,
    param_specs=class_split, progress=False)
print("epoch losses:", [round(v, 3) for v in history.loss])
print("w stays split:", trained["w"].sharding.spec,
      "->", trained["w"].addressable_shards[0].data.shape, "per device")
