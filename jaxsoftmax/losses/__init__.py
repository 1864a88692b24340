"""Loss functions: dense, fused chunked, sampled and hierarchical.

The public names are re-exported by :mod:`jaxsoftmax`; this package holds
them one family to a file.
"""
