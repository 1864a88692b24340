"""Package-internal numerics, validation, row gathering and file I/O.

Nothing here imports another part of jaxsoftmax; every layer above may
import it. Its names are documented but not part of the public API.
"""
