"""Networks built from layers whose backward passes are written by hand.

    layers    a layer is init + apply + backward (stax, plus the third function)
    combinators  blocks that are layers: Serial, Residual (y = f(x) + shortcut(x)), SkipConcat
    network   `Network`: a chain of layers with a fused loss head, and its backprop
    models    the worked example's `seed_cnn`, `lenet5`, `lenet5_digits`, `deep_cnn`, `cifar_cnn`,
              `resnet20` (BatchNorm or GroupNorm)
    lookup    a model by its CLI name or as `module:function`
    grads     `manual_grad`, `autodiff_grad`, `value_and_grad`, finite differences, `compare`
    mode      `train` known or traced (jax.jit): `by_mode` runs the computation in its mode

Nothing here knows about training (`jaxcnn.training`) or the tools (`jaxcnn.tools`).
"""

from jaxcnn.nn import combinators, grads, layers, lookup, models, network
from jaxcnn.nn.grads import autodiff_grad, compare, finite_difference_grad, manual_grad
from jaxcnn.nn.layers import Layer
from jaxcnn.nn.network import BINARY, SOFTMAX, Head, Network

__all__ = ["BINARY", "SOFTMAX", "Head", "Layer", "Network", "autodiff_grad", "combinators",
           "compare", "finite_difference_grad", "grads", "layers", "lookup", "manual_grad",
           "models", "network"]
