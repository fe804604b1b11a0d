"""jaxcnn: convolutional networks whose every gradient is written by hand in JAX.

`jaxcnn.forward` holds the pure forward ops, `jaxcnn.backward` the hand-written rule for each,
under the same names.
"""

from jaxcnn import backward, forward

__all__ = ["backward", "forward"]
__version__ = "0.1.0"
