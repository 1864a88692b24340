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
# # Proposals for sampled softmax: static samplers against MIDX
#
# Sampled softmax replaces the normalizer $\sum_k e^{s_k}$ by an importance
# estimate from $m$ classes drawn from a proposal $q$, with the correction
# $s_k - \log(m\,q_k)$. The estimate (and its gradient) is unbiased only when
# $q$ is the model's own softmax $p$; the further $q$ is from $p$, the more
# samples it takes. Static proposals (uniform, unigram) ignore the query.
# MIDX (`jaxsoftmax.samplers.midx`) product-quantizes the class embeddings
# $[w_i; b_i]$ into $K_c^2$ buckets and proposes
# $q(i \mid x) \propto e^{x^{1\top} C^1_{a_i} + x^{2\top} C^2_{b_i}}\rho_i$:
# the codeword part of the logit, exactly, at a cost in $K_c$, not $K$.
#
# Here, on a small synthetic problem ($K = 2000$ classes whose embeddings
# form clusters, as learned output embeddings do): the proposals for one
# query against $p$, and $\mathrm{KL}(q\,\|\,p)$ while a model trains.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import jaxsoftmax as js
from jaxsoftmax import diagnostics, samplers

K, D, CLUSTERS, CODEWORDS = 2000, 16, 40, 16
key = jax.random.key(0)
k_c, k_a, k_n, k_x = jax.random.split(key, 4)
centres = 1.5 * jax.random.normal(k_c, (CLUSTERS, D))
which = jax.random.randint(k_a, (K,), 0, CLUSTERS)
teacher_w = (centres[which] + 0.3 * jax.random.normal(k_n, (K, D))).T
# Zipf-like class frequencies in the teacher's biases, as in a vocabulary.
teacher_b = -1.0 * jnp.log(jnp.arange(1, K + 1.0))
x = jax.random.normal(k_x, (4096, D))
labels = jax.random.categorical(jax.random.key(1), x @ teacher_w + teacher_b)
counts = np.bincount(np.asarray(labels), minlength=K)
print(f"K = {K}, d = {D}; classes seen in the data: {(counts > 0).sum()}")

# %% [markdown]
# ## One query: each proposal against the softmax
#
# Classes sorted by $p$; MIDX-exact (the reference decomposition, $O(Kd)$ per
# query) coincides with $p$; MIDX-uniform and MIDX-pop follow its shape with
# only the codeword scores.

# %%
def proposals(w, b, key):
  return {
      "uniform": samplers.uniform(K),
      "unigram": samplers.unigram(counts),
      "midx_uniform": samplers.midx(w, b=b, num_codewords=CODEWORDS, key=key),
      "midx_pop": samplers.midx(w, b=b, num_codewords=CODEWORDS, mode="pop",
                                counts=counts, key=key),
      "midx_exact": samplers.midx(w, b=b, num_codewords=CODEWORDS,
                                  mode="exact", key=key),
  }


query = x[:1]
p = jax.nn.softmax(query @ teacher_w + teacher_b)[0]
order = jnp.argsort(-p)
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(np.asarray(p[order]), "k", lw=2, label="softmax p")
for name, s in proposals(teacher_w, teacher_b, jax.random.key(2)).items():
  ids = jnp.arange(K)[None, :] if s.query_dependent else jnp.arange(K)
  log_q = s.log_prob(query if s.query_dependent else None, ids).reshape(-1)
  ax.plot(np.asarray(jnp.exp(log_q)[order]), lw=1, label=name)
ax.set(xscale="log", yscale="log", xlabel="class rank under p",
       ylabel="probability", ylim=(1e-9, 1))
ax.legend()
plt.show()

# %% [markdown]
# ## KL(q || p) while a model trains
#
# A student linear layer learns the teacher's labels with Adam on the full
# cross-entropy. Every 40 steps each proposal is rebuilt from the student's
# current $(w, b)$ (a MIDX `refresh`) and compared with the student's softmax
# on 256 queries. A random start is near uniform, so every proposal is close;
# as the softmax sharpens the static proposals fall behind.

# %%
params = js.linear_init(jax.random.key(3), D, K)
tx = optax.adam(1e-2)
state = tx.init(params)


@jax.jit
def train_step(params, state):
  grads = js.softmax_regression_grad(params, x, labels)
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


probe = x[:256]
curves = {name: [] for name in proposals(params["w"], params["b"],
                                          jax.random.key(4))}
steps = list(range(0, 201, 40))
for step in range(steps[-1] + 1):
  if step in steps:
    for name, s in proposals(params["w"], params["b"],
                             jax.random.key(4)).items():
      div = diagnostics.proposal_divergence(s, probe, params["w"],
                                            params["b"])
      curves[name].append(float(div.mean_kl_qp))
  params, state = train_step(params, state)

fig, ax = plt.subplots(figsize=(7, 4))
for name, kl in curves.items():
  ax.plot(steps, np.maximum(kl, 1e-12), marker="o", label=name)
ax.set(yscale="log", xlabel="training step", ylabel="mean KL(q || p)")
ax.legend()
plt.show()
for name, kl in curves.items():
  print(f"{name:13s} KL(q||p): start {kl[0]:.3g}, end {kl[-1]:.3g}")

# %% [markdown]
# MIDX-exact stays at zero (up to float32 rounding): its staged sampler is
# the softmax. The cheap MIDX modes end at roughly half the static
# proposals' divergence here, at a per-query cost in $K_c$ (see
# `benchmarks/bench_samplers.py`: the time per query grows 1.3x from
# $K = 10^4$ to $10^6$ for MIDX-uniform), which is what
# `experiments/midx.py` measures on the real vocabulary.
