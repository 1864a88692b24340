"""jaxsoftmax: softmax classifiers in JAX, with hand-derived gradients.

Pure functions on pytrees: models (softmax regression, ReLU MLP), losses whose
backward rules are installed with ``jax.custom_vjp``, and the same gradients as
explicit functions. See README.md for the map.
"""

from jaxsoftmax import data as data
from jaxsoftmax import diagnostics as diagnostics
from jaxsoftmax import large_vocab as large_vocab
from jaxsoftmax import metrics as metrics
from jaxsoftmax import model_selection as model_selection
from jaxsoftmax import nn as nn
from jaxsoftmax import reporting as reporting
from jaxsoftmax import samplers as samplers
from jaxsoftmax import sharded as sharded
from jaxsoftmax import sparse as sparse
from jaxsoftmax._core.numerics import accumulation_dtype as accumulation_dtype
from jaxsoftmax.evaluation._inference import fit_temperature as fit_temperature
from jaxsoftmax.evaluation._inference import predict as predict
from jaxsoftmax.evaluation._inference import predict_proba as predict_proba
from jaxsoftmax.evaluation._inference import top_k as top_k
from jaxsoftmax.losses._class_based import Clusters as Clusters
from jaxsoftmax.losses._class_based import class_based_init as class_based_init
from jaxsoftmax.losses._class_based import class_based_log_probs as class_based_log_probs
from jaxsoftmax.losses._class_based import class_based_softmax_loss as class_based_softmax_loss
from jaxsoftmax.losses._class_based import frequency_clusters as frequency_clusters
from jaxsoftmax.losses._dense import binary_cross_entropy as binary_cross_entropy
from jaxsoftmax.losses._dense import cross_entropy as cross_entropy
from jaxsoftmax.losses._dense import penalty as penalty
from jaxsoftmax.losses._dense import soft_cross_entropy as soft_cross_entropy
from jaxsoftmax.losses._dense import zero_one_loss as zero_one_loss
from jaxsoftmax.losses._fused import fused_linear_cross_entropy as fused_linear_cross_entropy
from jaxsoftmax.losses._hierarchical import Tree as Tree
from jaxsoftmax.losses._hierarchical import balanced_tree as balanced_tree
from jaxsoftmax.losses._hierarchical import hierarchical_init as hierarchical_init
from jaxsoftmax.losses._hierarchical import hierarchical_log_probs as hierarchical_log_probs
from jaxsoftmax.losses._hierarchical import hierarchical_softmax_loss as hierarchical_softmax_loss
from jaxsoftmax.losses._hierarchical import huffman_tree as huffman_tree
from jaxsoftmax.losses._sampled import nce_loss as nce_loss
from jaxsoftmax.losses._sampled import negative_sampling_loss as negative_sampling_loss
from jaxsoftmax.losses._sampled import sampled_softmax_loss as sampled_softmax_loss
from jaxsoftmax.models._augment import mixup as mixup
from jaxsoftmax.models._functional import linear_init as linear_init
from jaxsoftmax.models._functional import linear_logits as linear_logits
from jaxsoftmax.models._functional import mlp_init as mlp_init
from jaxsoftmax.models._functional import mlp_logits as mlp_logits
from jaxsoftmax.models._gradients import mlp_grad as mlp_grad
from jaxsoftmax.models._gradients import mlp_loss as mlp_loss
from jaxsoftmax.models._gradients import mlp_value_and_grad as mlp_value_and_grad
from jaxsoftmax.models._gradients import naive_jacobian_grad as naive_jacobian_grad
from jaxsoftmax.models._gradients import softmax_regression_grad as softmax_regression_grad
from jaxsoftmax.models._gradients import softmax_regression_loss as softmax_regression_loss
from jaxsoftmax.models._gradients import softmax_regression_value_and_grad as softmax_regression_value_and_grad
from jaxsoftmax.training._checkpoint import load_params as load_params
from jaxsoftmax.training._checkpoint import save_params as save_params
from jaxsoftmax.training._fit import History as History
from jaxsoftmax.training._fit import TrainingDiverged as TrainingDiverged
from jaxsoftmax.training._fit import fit as fit
from jaxsoftmax.training._optim import make_optimizer as make_optimizer
from jaxsoftmax.training._optim import make_schedule as make_schedule
from jaxsoftmax.training._solvers import SolverInfo as SolverInfo
from jaxsoftmax.training._solvers import lbfgs_solve as lbfgs_solve
from jaxsoftmax.training._solvers import newton_solve as newton_solve
from jaxsoftmax.training._solvers import softmax_regression_hessian as softmax_regression_hessian
from jaxsoftmax.training._solvers import softmax_regression_hvp as softmax_regression_hvp
from jaxsoftmax.training._step import make_train_step as make_train_step

# The layer subpackages (losses, models, training, ...) are the code's
# layout, not a second address: the public names are these.
__all__ = [
    "Clusters",
    "History",
    "SolverInfo",
    "TrainingDiverged",
    "Tree",
    "accumulation_dtype",
    "balanced_tree",
    "binary_cross_entropy",
    "class_based_init",
    "class_based_log_probs",
    "class_based_softmax_loss",
    "cross_entropy",
    "data",
    "diagnostics",
    "fit",
    "fit_temperature",
    "frequency_clusters",
    "fused_linear_cross_entropy",
    "hierarchical_init",
    "hierarchical_log_probs",
    "hierarchical_softmax_loss",
    "huffman_tree",
    "large_vocab",
    "lbfgs_solve",
    "linear_init",
    "linear_logits",
    "load_params",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "metrics",
    "mixup",
    "mlp_grad",
    "mlp_init",
    "mlp_logits",
    "mlp_loss",
    "mlp_value_and_grad",
    "model_selection",
    "naive_jacobian_grad",
    "nce_loss",
    "negative_sampling_loss",
    "newton_solve",
    "nn",
    "penalty",
    "predict",
    "predict_proba",
    "reporting",
    "sampled_softmax_loss",
    "samplers",
    "save_params",
    "sharded",
    "soft_cross_entropy",
    "softmax_regression_grad",
    "softmax_regression_hessian",
    "softmax_regression_hvp",
    "softmax_regression_loss",
    "softmax_regression_value_and_grad",
    "sparse",
    "top_k",
    "zero_one_loss",
]

__version__ = "0.1.0"
