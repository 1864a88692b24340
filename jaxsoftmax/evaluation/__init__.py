"""Evaluation: metrics, calibration, inference and sampler diagnostics.

The public names are re-exported by :mod:`jaxsoftmax`,
:mod:`jaxsoftmax.metrics` and :mod:`jaxsoftmax.diagnostics`.
"""
