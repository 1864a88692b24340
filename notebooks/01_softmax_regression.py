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
# # Softmax regression on MNIST, by hand and with the library
#
# The lecture's three ingredients of a machine-learning algorithm, on real
# handwritten digits:
#
# 1. **hypothesis class**: the linear map $h_\Theta(x) = \Theta^\top x$, or for
#    a batch $X \in \mathbb{R}^{B \times n}$, $h = X\Theta + b$ with
#    $\Theta \in \mathbb{R}^{n \times k}$;
# 2. **loss**: the softmax (cross-entropy) loss
#    $\ell_{ce}(h, y) = -h_y + \log \sum_{j=1}^k \exp h_j$;
# 3. **optimizer**: minibatch gradient descent with the closed-form gradient
#    $\nabla_\Theta = \tfrac{1}{B} X^\top (Z - I_y)$, $Z = \mathrm{softmax}(h)$.
#
# To run in a few seconds (it runs in CI) the notebook trains on a 5000-image
# subset; `python experiments/mnist.py` trains on all 55000 training images
# (about 7.3% test error).

# %%
import tempfile
from pathlib import Path

from IPython.display import Image, display
import jax
import jax.numpy as jnp
import numpy as np

import jaxsoftmax as js
from jaxsoftmax import metrics, plots

# float64 for the gradient comparison below; the training runs in float32.
jax.config.update("jax_enable_x64", True)
figures = Path(tempfile.mkdtemp())

# %% [markdown]
# ## Data
#
# MNIST: $n = 28 \cdot 28 = 784$ pixels, $k = 10$ classes. It must be fetched
# once with `make data`; without it the notebook falls back to scikit-learn's
# 8x8 digits ($n = 64$), which ship with scikit-learn.

# %%
try:
  data = js.data.load_mnist()
  image_shape, epochs = (28, 28), 5
except FileNotFoundError as e:
  print(f"{e}\nFalling back to scikit-learn's 8x8 digits.")
  data = js.data.load_digits()
  # 1438 training images give 11 steps an epoch: take more epochs.
  image_shape, epochs = (8, 8), 60
# Pixels come scaled to [0, 1]; with Adam they need no further standardizing.
x_train, y_train = data.x_train[:5000], data.y_train[:5000]
x_test, y_test = data.x_test[:1000], data.y_test[:1000]
num_features, num_classes = x_train.shape[1], 10
print(f"train {x_train.shape}, test {x_test.shape}")

# %% [markdown]
# ## Hypothesis and loss
#
# `linear_logits` computes $h = X\Theta + b$; softmax turns each row into
# probabilities. The problem is convex, so training can start from
# $\Theta = 0$, where every class gets probability $1/k$ and the loss is
# $\log k$. The loss is computed from the logits with a max-shifted
# log-sum-exp, never as `log(softmax(h))`, which underflows to `log(0)` for
# confidently wrong predictions.

# %%
params = {"w": jnp.zeros((num_features, num_classes), jnp.float32),
          "b": jnp.zeros((num_classes,), jnp.float32)}
h = js.linear_logits(params, x_train[:5])
print("h:", h.shape, " softmax(h)[0]:", jax.nn.softmax(h)[0])

target_logit = jnp.take_along_axis(h, y_train[:5, None], axis=1)[:, 0]
by_hand = jnp.mean(jax.nn.logsumexp(h, axis=1) - target_logit)
library = js.cross_entropy(h, y_train[:5])
print(f"softmax loss by hand {float(by_hand):.4f}, js.cross_entropy"
      f" {float(library):.4f}, log k = {np.log(num_classes):.4f}")

# %% [markdown]
# ## The closed-form gradient equals `jax.grad`
#
# The chain rule through $h$ gives $\nabla_\Theta \ell = x (z - e_y)^\top$
# per example, $\frac{1}{B} X^\top (Z - I_y)$ per batch, and
# $\frac{1}{B}\mathbf{1}^\top (Z - I_y)$ for the bias. Below: the formula
# typed out (subtracting 1 at each label instead of building $I_y$), the
# library's `softmax_regression_grad`, and `jax.grad` of the plain loss, in
# float64 on 256 images.

# %%
rng = np.random.default_rng(0)
theta = {
    "w": rng.normal(size=(num_features, num_classes)) / np.sqrt(num_features),
    "b": rng.normal(size=(num_classes,)),
}
xb = jnp.asarray(x_train[:256], jnp.float64)
yb = jnp.asarray(y_train[:256])


def reference_loss(p):
  logits = xb @ p["w"] + p["b"][None, :]
  target = jnp.take_along_axis(logits, yb[:, None], axis=1)[:, 0]
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - target)


@jax.jit
def three_gradients(p):
  z_minus_iy = jax.nn.softmax(xb @ p["w"] + p["b"][None, :])
  z_minus_iy = z_minus_iy.at[jnp.arange(len(yb)), yb].add(-1.0) / len(yb)
  typed = {"w": xb.T @ z_minus_iy, "b": z_minus_iy.sum(axis=0)}
  manual = js.softmax_regression_grad(p, xb, yb)
  return typed, manual, jax.grad(reference_loss)(p)


typed, manual, auto = three_gradients(jax.tree.map(jnp.asarray, theta))
for name in ("w", "b"):
  library_gap = float(jnp.max(jnp.abs(manual[name] - auto[name])))
  typed_gap = float(jnp.max(jnp.abs(typed[name] - auto[name])))
  print(f"{name}: max |library - jax.grad| = {library_gap:.2e},"
        f" max |typed formula - jax.grad| = {typed_gap:.2e}")

# %% [markdown]
# The lecture's "approach 1", which materializes the $[k, nk]$ Jacobian
# $\partial h / \partial \Theta$, needs $k$ times the memory;
# `make gradient-check` measures it.

# %% [markdown]
# ## Training with `fit`
#
# `fit` runs minibatch epochs as one jitted `lax.scan` each, with the
# hand-derived gradient (it picks `softmax_regression_value_and_grad` for
# `softmax_regression_loss`) and an Optax optimizer: Adam with a cosine
# learning-rate decay. Test loss and accuracy are recorded after each epoch.

# %%
batch_size = 128
optimizer = js.make_optimizer(
    "adam", 1e-2, schedule="cosine",
    total_steps=epochs * (len(y_train) // batch_size),
)
params, history = js.fit(
    js.softmax_regression_loss, params, (x_train, y_train),
    optimizer=optimizer, epochs=epochs, batch_size=batch_size,
    key=jax.random.key(1), eval_data=(x_test, y_test),
    logits_fn=js.linear_logits, progress=False,
)
print(f"test accuracy after epoch 1: {history.test_accuracy[0]:.4f},"
      f" after epoch {epochs}: {history.test_accuracy[-1]:.4f}")
display(Image(filename=plots.plot_training_curves(
    history, figures / "curves.png", title="softmax regression")))

# %% [markdown]
# ## Metrics
#
# Accuracy and the confusion matrix (rows: true class, columns: predicted),
# then calibration: the expected calibration error (ECE) compares the
# top-label confidence with the accuracy in confidence bins
# (`experiments/mnist.py` also fits a temperature to lower it).

# %%
test_logits = js.linear_logits(params, x_test)
predictions = js.predict(params, x_test)
print(f"test accuracy {float(metrics.accuracy(test_logits, y_test)):.4f}")
confusion = metrics.confusion_matrix(y_test, predictions, num_classes)
print(confusion)
display(Image(filename=plots.plot_confusion_matrix(
    confusion, figures / "confusion.png", title="test confusion matrix")))

# %%
probs = js.predict_proba(params, x_test)
ece = float(metrics.expected_calibration_error(probs, y_test))
nll = float(js.cross_entropy(test_logits, y_test))
print(f"test ECE {ece:.2%}, test NLL {nll:.4f}")
display(Image(filename=plots.plot_reliability_diagram(
    metrics.reliability_diagram(probs, y_test, num_bins=10),
    figures / "reliability.png")))

# %% [markdown]
# ## What the model learned
#
# Column $j$ of $\Theta$ scores class $j$: $h_j = x^\top \Theta_{:,j} + b_j$.
# Reshaped to the image grid, each column is a template that the image is
# matched against; red pixels are evidence for the digit, blue against.

# %%
display(Image(filename=plots.plot_weight_templates(
    params["w"], figures / "weights.png", image_shape=image_shape)))
