"""The package's shape: its public names, its layers and the size of its functions.

Pins every public name (removing or adding one is a deliberate edit here), and
checks the import graph: no cycle between modules, imports between layers
pointing down only, and no private (underscore) name used outside the layer
that defines it. Functions stay small: at most 80 lines of their own code.
"""

import ast
import importlib
from pathlib import Path
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxsoftmax"
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
from api_pages import public_names  # noqa: E402

PUBLIC = {
    'jaxsoftmax': ['Clusters', 'History', 'SolverInfo', 'TrainingDiverged', 'Tree', 'accumulation_dtype', 'balanced_tree', 'binary_cross_entropy', 'class_based_init', 'class_based_log_probs', 'class_based_softmax_loss', 'cross_entropy', 'data', 'diagnostics', 'fit', 'fit_temperature', 'frequency_clusters', 'fused_linear_cross_entropy', 'hierarchical_init', 'hierarchical_log_probs', 'hierarchical_softmax_loss', 'huffman_tree', 'large_vocab', 'lbfgs_solve', 'linear_init', 'linear_logits', 'load_params', 'make_optimizer', 'make_schedule', 'make_train_step', 'metrics', 'mixup', 'mlp_grad', 'mlp_init', 'mlp_logits', 'mlp_loss', 'mlp_value_and_grad', 'model_selection', 'naive_jacobian_grad', 'nce_loss', 'negative_sampling_loss', 'newton_solve', 'nn', 'penalty', 'predict', 'predict_proba', 'reporting', 'sampled_softmax_loss', 'samplers', 'save_params', 'sharded', 'soft_cross_entropy', 'softmax_regression_grad', 'softmax_regression_hessian', 'softmax_regression_hvp', 'softmax_regression_loss', 'softmax_regression_value_and_grad', 'sparse', 'top_k', 'zero_one_loss'],
    'jaxsoftmax.data': ['Dataset', 'FASHION_MNIST', 'GCIDE', 'MNIST', 'TextCorpus', 'batches', 'build_text_corpus', 'data_dir', 'load_digits', 'load_fashion_mnist', 'load_mnist', 'load_text_corpus', 'read_idx', 'standardize'],
    'jaxsoftmax.diagnostics': ['Divergence', 'GradientBias', 'gradient_bias', 'importance_ess', 'proposal_divergence'],
    'jaxsoftmax.large_vocab': ['ContextModel', 'LargeSoftmaxHead', 'METHODS', 'SAMPLERS', 'TRAIN_DEFAULTS', 'TrainHistory', 'train', 'train_step'],
    'jaxsoftmax.metrics': ['ReliabilityDiagram', 'accuracy', 'average_calibration_error', 'confusion_matrix', 'expected_calibration_error', 'precision_recall_f1', 'reliability_diagram', 'roc_auc_ovr', 'top_k_accuracy'],
    'jaxsoftmax.model_selection': ['CrossValidation', 'Panel', 'ScalingSweep', 'TrainConfig', 'cross_validate', 'elastic_net_grid', 'evaluate_linear', 'hessian_top_eigenvalue', 'kfold_indices', 'linear_scaling_sweep', 'plot_panels', 'regularization_path', 'scaled_learning_rates', 'train_softmax_regression', 'weight_sparsity'],
    'jaxsoftmax.nn': ['MLP', 'SoftmaxRegression'],
    'jaxsoftmax.plots': ['plot_confusion_matrix', 'plot_reliability_diagram', 'plot_training_curves', 'plot_weight_templates'],
    'jaxsoftmax.reporting': ['alternate', 'block', 'compiled_memory', 'executable_memory', 'format_bytes', 'format_table', 'gemm_gflops', 'machine', 'median', 'save_results'],
    'jaxsoftmax.samplers': ['AliasSampler', 'MidxSampler', 'Sampler', 'UniformSampler', 'log_uniform', 'midx', 'uniform', 'unigram'],
    'jaxsoftmax.sharded': ['cross_entropy', 'feature_parallel_cross_entropy', 'pad_classes', 'shard_params', 'vocab_parallel_cross_entropy', 'vocab_parallel_predict', 'vocab_parallel_top_k'],
    'jaxsoftmax.sparse': ['PAD', 'Rows', 'apply_updates', 'check_optimizer', 'gather'],
}

# Each layer may import only layers of a lower rank (and itself).
RANKS = {
    "_core": 0,
    "data": 1, "reporting": 1, "samplers": 1, "sparse": 1,
    "losses": 2,
    "models": 3, "sharded": 3,
    "evaluation": 4, "nn": 4,
    # The public modules that re-export evaluation/.
    "metrics": 5, "diagnostics": 5, "training": 5,
    "plots": 6,
    "large_vocab": 7, "model_selection": 7,
    "jaxsoftmax": 9,
}
MAX_OWN_LINES = 80


def _modules():
  """``{dotted module name: path}`` for every module of the package."""
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    out[".".join(parts)] = path
  return out


MODULES = _modules()


def _layer(module):
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "jaxsoftmax"


def _imports(module):
  """``(imported module, names taken from it)`` for each import in ``module``,
  at any depth (an import inside a function still couples the modules)."""
  for node in ast.walk(ast.parse(MODULES[module].read_text())):
    if isinstance(node, ast.ImportFrom) and node.level == 0 and (
        node.module or "").startswith("jaxsoftmax"):
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        if sub in MODULES:
          yield sub, ()
        else:
          yield node.module, (alias.name,)
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("jaxsoftmax"):
          yield alias.name, ()


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_are_pinned(module):
  mod = importlib.import_module(module)
  assert sorted(public_names(mod)) == PUBLIC[module]
  for name in PUBLIC[module]:
    namespace = {}
    exec(f"from {module} import {name}", namespace)  # noqa: S102


def test_module_import_graph_has_no_cycle():
  graph = {m: {t for t, _ in _imports(m) if t in MODULES} for m in MODULES}
  # The package root re-exports everything; submodules never import it.
  assert not any("jaxsoftmax" in deps for deps in graph.values())
  state = {}

  def visit(m, path):
    state[m] = "open"
    for t in graph[m]:
      if state.get(t) == "open":
        raise AssertionError("import cycle: " + " -> ".join(path + [t]))
      if t not in state:
        visit(t, path + [t])
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])


def test_layers_import_downward_only():
  assert set(RANKS) == {_layer(m) for m in MODULES}
  upward = sorted(
      f"{m} imports {t}" for m in MODULES for t, _ in _imports(m)
      if _layer(t) != _layer(m) and RANKS[_layer(t)] >= RANKS[_layer(m)])
  assert not upward


def test_no_private_name_crosses_layers():
  crossing = []
  for m in MODULES:
    aliases = {}
    tree = ast.parse(MODULES[m].read_text())
    for t, names in _imports(m):
      if _layer(t) == _layer(m):
        continue
      crossing += [f"{m}: from {t} import {n}" for n in names
                   if n.startswith("_")]
    # Attribute access through a module imported from another layer.
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.level == 0 and (
          node.module or "").startswith("jaxsoftmax"):
        for a in node.names:
          target = f"{node.module}.{a.name}"
          if target in MODULES and _layer(target) != _layer(m):
            aliases[a.asname or a.name] = target
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in aliases and node.attr.startswith("_")):
        crossing.append(f"{m}: {aliases[node.value.id]}.{node.attr}")
  assert not crossing


def _own_lines(fn, lines):
  """Lines of ``fn`` that are its own code: no docstring, comment, blank
  line, or nested function or class body."""
  skip = set()
  for node in ast.walk(fn):
    if node is not fn and isinstance(
        node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      skip.update(range(node.lineno, node.end_lineno + 1))
  first = fn.body[0]
  if isinstance(first, ast.Expr) and isinstance(
      getattr(first, "value", None), ast.Constant) and isinstance(
          first.value.value, str):
    skip.update(range(first.lineno, first.end_lineno + 1))
  return sum(
      1 for i in range(fn.lineno, fn.end_lineno + 1)
      if i not in skip and lines[i - 1].strip()
      and not lines[i - 1].strip().startswith("#"))


def test_functions_have_at_most_80_lines_of_their_own():
  long = []
  for m, path in MODULES.items():
    text = path.read_text()
    lines = text.splitlines()
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = _own_lines(node, lines)
        if n > MAX_OWN_LINES:
          long.append(f"{m}.{node.name}: {n}")
  assert not long
