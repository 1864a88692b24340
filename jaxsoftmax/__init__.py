"""jaxsoftmax: softmax classifiers in JAX, with hand-derived gradients.

Pure functions on pytrees: models (softmax regression, ReLU MLP), losses whose
backward rules are installed with ``jax.custom_vjp``, and the same gradients as
explicit functions. See README.md for the map.
"""

from jaxsoftmax import data as data
from jaxsoftmax import reporting as reporting
from jaxsoftmax._gradients import mlp_grad as mlp_grad
from jaxsoftmax._gradients import mlp_loss as mlp_loss
from jaxsoftmax._gradients import mlp_value_and_grad as mlp_value_and_grad
from jaxsoftmax._gradients import naive_jacobian_grad as naive_jacobian_grad
from jaxsoftmax._gradients import softmax_regression_grad as softmax_regression_grad
from jaxsoftmax._gradients import softmax_regression_loss as softmax_regression_loss
from jaxsoftmax._gradients import softmax_regression_value_and_grad as softmax_regression_value_and_grad
from jaxsoftmax._fused import fused_linear_cross_entropy as fused_linear_cross_entropy
from jaxsoftmax._losses import binary_cross_entropy as binary_cross_entropy
from jaxsoftmax._losses import cross_entropy as cross_entropy
from jaxsoftmax._losses import penalty as penalty
from jaxsoftmax._losses import soft_cross_entropy as soft_cross_entropy
from jaxsoftmax._losses import zero_one_loss as zero_one_loss
from jaxsoftmax._models import linear_init as linear_init
from jaxsoftmax._models import linear_logits as linear_logits
from jaxsoftmax._models import mlp_init as mlp_init
from jaxsoftmax._models import mlp_logits as mlp_logits
from jaxsoftmax._numerics import accumulation_dtype as accumulation_dtype

__version__ = "0.1.0"
