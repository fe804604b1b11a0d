"""A model by its name on the command line: a registered name, or your own `module:function`.

    jaxcnn train --model lenet5-digits              # models.MODELS
    jaxcnn train --model my_pkg.my_module:build     # build() returns a jaxcnn Network

The module is imported as `python -m` would import it: the current directory comes first on the
import path. `build` is called with no arguments; its Network is then rebuilt with the requested
`impl` (`Network.with_impl`) when that is not "conv".
"""

from __future__ import annotations

import importlib
import os
import sys

from jaxcnn.nn import models
from jaxcnn.nn.network import Network


def is_import_spec(spec: str) -> bool:
    """Whether `spec` has the form "dotted.module.path:function"."""
    module, sep, attr = spec.partition(":")
    return bool(sep) and all(part.isidentifier() for part in module.split(".")) \
        and attr.isidentifier()


def check_spec(spec: str) -> None:
    """A registered model name or a "module:function" spec, else a ValueError naming both forms."""
    if not isinstance(spec, str) or (spec not in models.MODELS and not is_import_spec(spec)):
        raise ValueError(f"unknown model {spec!r}; choose one of {', '.join(models.MODELS)}, "
                         f"or give your own as module.path:function")


def model(spec: str, *, impl: str = "conv") -> Network:
    """The Network that `spec` names (see the module docstring), its convolutions in `impl`.

    Args:
      spec: a key of `models.MODELS`, or "module.path:function".
      impl: "conv", "gemm" or "auto" (see `jaxcnn.fast.auto`).

    Returns:
      the Network.
    """
    check_spec(spec)
    if spec in models.MODELS:
        return models.get(spec, impl=impl)
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--model {spec}: cannot import module {module_name!r} ({e})") from None
    build = getattr(module, attr, None)
    if not callable(build):
        raise ValueError(f"--model {spec}: module {module_name!r} has no function {attr!r}")
    net = build()
    if not isinstance(net, Network):
        raise ValueError(f"--model {spec}: {attr}() returned {type(net).__name__}, not a "
                         f"jaxcnn.nn.network.Network")
    return net if impl == "conv" else net.with_impl(impl)
