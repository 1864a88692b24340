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
from jaxsoftmax import sharded as sharded
from jaxsoftmax import sparse as sparse
from jaxsoftmax import reporting as reporting
from jaxsoftmax import samplers as samplers
from jaxsoftmax._augment import mixup as mixup
from jaxsoftmax._checkpoint import load_params as load_params
from jaxsoftmax._checkpoint import save_params as save_params
from jaxsoftmax._fused import fused_linear_cross_entropy as fused_linear_cross_entropy
from jaxsoftmax._gradients import mlp_grad as mlp_grad
from jaxsoftmax._gradients import mlp_loss as mlp_loss
from jaxsoftmax._gradients import mlp_value_and_grad as mlp_value_and_grad
from jaxsoftmax._gradients import naive_jacobian_grad as naive_jacobian_grad
from jaxsoftmax._gradients import softmax_regression_grad as softmax_regression_grad
from jaxsoftmax._gradients import softmax_regression_loss as softmax_regression_loss
from jaxsoftmax._gradients import softmax_regression_value_and_grad as softmax_regression_value_and_grad
from jaxsoftmax._hierarchical import balanced_tree as balanced_tree
from jaxsoftmax._hierarchical import class_based_init as class_based_init
from jaxsoftmax._hierarchical import class_based_log_probs as class_based_log_probs
from jaxsoftmax._hierarchical import class_based_softmax_loss as class_based_softmax_loss
from jaxsoftmax._hierarchical import Clusters as Clusters
from jaxsoftmax._hierarchical import frequency_clusters as frequency_clusters
from jaxsoftmax._hierarchical import hierarchical_init as hierarchical_init
from jaxsoftmax._hierarchical import hierarchical_log_probs as hierarchical_log_probs
from jaxsoftmax._hierarchical import hierarchical_softmax_loss as hierarchical_softmax_loss
from jaxsoftmax._hierarchical import huffman_tree as huffman_tree
from jaxsoftmax._hierarchical import Tree as Tree
from jaxsoftmax._inference import fit_temperature as fit_temperature
from jaxsoftmax._inference import predict as predict
from jaxsoftmax._inference import predict_proba as predict_proba
from jaxsoftmax._inference import top_k as top_k
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
from jaxsoftmax._optim import make_optimizer as make_optimizer
from jaxsoftmax._optim import make_schedule as make_schedule
from jaxsoftmax._solvers import lbfgs_solve as lbfgs_solve
from jaxsoftmax._solvers import newton_solve as newton_solve
from jaxsoftmax._solvers import softmax_regression_hessian as softmax_regression_hessian
from jaxsoftmax._solvers import softmax_regression_hvp as softmax_regression_hvp
from jaxsoftmax._sampled import negative_sampling_loss as negative_sampling_loss
from jaxsoftmax._sampled import nce_loss as nce_loss
from jaxsoftmax._sampled import sampled_softmax_loss as sampled_softmax_loss
from jaxsoftmax._solvers import SolverInfo as SolverInfo
from jaxsoftmax._training import fit as fit
from jaxsoftmax._training import History as History
from jaxsoftmax._training import TrainingDiverged as TrainingDiverged

__version__ = "0.1.0"
