"""Training: the shared step, ``fit`` and its callbacks, optimizers,
second-order solvers and checkpoints.

The public names are re-exported by :mod:`jaxsoftmax`.
"""
