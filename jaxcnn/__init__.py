"""jaxcnn: convolutional networks whose every gradient is written by hand in JAX.

    jaxcnn.forward      pure forward ops, one module per family (conv, pool, linear, ...)
    jaxcnn.backward     the same modules and names, one hand-written rule each
    jaxcnn.nn           layers, networks, models, whole-network gradients
    jaxcnn.bridge       the rules inside any jax.grad (jax.custom_vjp)
    jaxcnn.training     train steps, per-example gradients, data-parallel steps, the run loop
    jaxcnn.tools        the walkthrough, gradcheck, bench and the `jaxcnn` command

The layout and the rules are described in docs/design.md.
"""

from jaxcnn import backward, forward
from jaxcnn.nn import models
from jaxcnn.nn.grads import autodiff_grad, manual_grad
from jaxcnn.training.curvature import ggn_diagonal, hvp
from jaxcnn.training.per_example import (
    clipped_grad,
    grad_statistics,
    per_example_grad_norms,
    per_example_grads,
)

__all__ = ["autodiff_grad", "backward", "clipped_grad", "forward", "ggn_diagonal",
           "grad_statistics", "hvp", "manual_grad", "models", "per_example_grad_norms",
           "per_example_grads"]
__version__ = "0.1.0"
