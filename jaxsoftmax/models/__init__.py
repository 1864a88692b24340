"""Functional models, their hand-derived gradients, inference and mixup.

The public names are re-exported by :mod:`jaxsoftmax`.
"""
