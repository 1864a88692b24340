r"""Metrics for softmax classifiers: accuracy, F1, ROC-AUC, calibration.

Every metric is a pure ``jax.numpy`` function of ``logits`` or ``probs``
(``[num_examples, num_classes]``) and integer ``labels`` (``[num_examples]``),
so it runs under ``jax.jit`` and ``jax.vmap``; sizes that fix an output shape
(``num_classes``, ``num_bins``, ``k``) are static Python ints. The values
match scikit-learn's (the tests compare them), including its conventions:
confusion-matrix rows are true classes, undefined precision / recall / F1 are
0 (``zero_division=0``), and ROC-AUC counts tied scores as half a win.

The negative log-likelihood is :func:`jaxsoftmax.cross_entropy`; it is not
repeated here.

Dtypes: a metric of floating inputs comes back in their accumulation dtype
(float32 for float16 / bfloat16, else the input dtype); one of integer inputs
only (precision, recall, F1) in JAX's default float dtype.

Bad labels: outside ``jit`` a label outside ``[0, num_classes)`` raises
``ValueError``. Under ``jit`` it cannot be checked, so every floating metric
of such a batch is NaN (never a silently wrong number) and
:func:`confusion_matrix` leaves the row out.
"""

from jaxsoftmax.evaluation._metrics import accuracy as accuracy
from jaxsoftmax.evaluation._metrics import confusion_matrix as confusion_matrix
from jaxsoftmax.evaluation._metrics import precision_recall_f1 as precision_recall_f1
from jaxsoftmax.evaluation._metrics import roc_auc_ovr as roc_auc_ovr
from jaxsoftmax.evaluation._metrics import top_k_accuracy as top_k_accuracy
from jaxsoftmax.evaluation._calibration import ReliabilityDiagram as ReliabilityDiagram
from jaxsoftmax.evaluation._calibration import average_calibration_error as average_calibration_error
from jaxsoftmax.evaluation._calibration import expected_calibration_error as expected_calibration_error
from jaxsoftmax.evaluation._calibration import reliability_diagram as reliability_diagram

__all__ = [
    "ReliabilityDiagram",
    "accuracy",
    "average_calibration_error",
    "confusion_matrix",
    "expected_calibration_error",
    "precision_recall_f1",
    "reliability_diagram",
    "roc_auc_ovr",
    "top_k_accuracy",
]
