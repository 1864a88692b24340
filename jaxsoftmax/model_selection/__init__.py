r"""Model selection for softmax regression: k-fold CV, sparsity, batch scaling.

The pieces the regularization, batch-size and optimizer experiments share:

* :func:`train_softmax_regression`, minibatch training with an Optax
  optimizer as one jitted ``lax.scan``, written so that ``jax.vmap`` can
  train many models at once (over penalty strengths, folds or learning
  rates);
* :func:`regularization_path` and :func:`cross_validate`, which train every
  strength of a grid (and every fold) in one vmapped program, on the same
  minibatches, and score the held-out rows;
* :func:`weight_sparsity`, the share of weights at (or near) zero;
* :func:`scaled_learning_rates` and :func:`linear_scaling_sweep`, the linear
  scaling rule :math:`\eta_B = \eta_0 B / B_0` and a batch size x learning
  rate grid around it; :func:`hessian_top_eigenvalue`, the curvature that
  bounds it;
* :func:`plot_panels`, the experiments' figures (matplotlib, Agg canvas).

The objective everywhere is :func:`jaxsoftmax.softmax_regression_loss`,

.. math::
  L(\Theta, b) = \frac{1}{B} \sum_{i=1}^{B} \ell_{ce}(\Theta^\top x_i + b,
  y_i) + \lambda_1 \|\Theta\|_1 + \frac{\lambda_2}{2} \|\Theta\|_2^2 ,

trained with its hand-derived gradient.
"""

from jaxsoftmax.model_selection._trainer import TrainConfig as TrainConfig
from jaxsoftmax.model_selection._trainer import evaluate_linear as evaluate_linear
from jaxsoftmax.model_selection._trainer import train_softmax_regression as train_softmax_regression
from jaxsoftmax.model_selection._cv import CrossValidation as CrossValidation
from jaxsoftmax.model_selection._cv import cross_validate as cross_validate
from jaxsoftmax.model_selection._cv import elastic_net_grid as elastic_net_grid
from jaxsoftmax.model_selection._cv import kfold_indices as kfold_indices
from jaxsoftmax.model_selection._cv import regularization_path as regularization_path
from jaxsoftmax.model_selection._cv import weight_sparsity as weight_sparsity
from jaxsoftmax.model_selection._sweeps import ScalingSweep as ScalingSweep
from jaxsoftmax.model_selection._sweeps import hessian_top_eigenvalue as hessian_top_eigenvalue
from jaxsoftmax.model_selection._sweeps import linear_scaling_sweep as linear_scaling_sweep
from jaxsoftmax.model_selection._sweeps import scaled_learning_rates as scaled_learning_rates
from jaxsoftmax.model_selection._plots import Panel as Panel
from jaxsoftmax.model_selection._plots import plot_panels as plot_panels

__all__ = [
    "CrossValidation",
    "Panel",
    "ScalingSweep",
    "TrainConfig",
    "cross_validate",
    "elastic_net_grid",
    "evaluate_linear",
    "hessian_top_eigenvalue",
    "kfold_indices",
    "linear_scaling_sweep",
    "plot_panels",
    "regularization_path",
    "scaled_learning_rates",
    "train_softmax_regression",
    "weight_sparsity",
]
