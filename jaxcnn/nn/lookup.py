"""A model by its name on the command line: a registered name, or your own `module:function`.

    jaxcnn train --model lenet5-digits              # models.MODELS
    jaxcnn train --model my_pkg.my_module:build     # build() returns a jaxcnn Network

The module is imported as `python -m` would import it: the current directory comes first on the
import path. `build` must be a Python function (`def` or `lambda`) defined in that module and
callable with no arguments; anything else (a built-in such as `os:system` or `builtins:input`, a
class, a function that needs arguments, one imported from elsewhere) is refused without being
called. It is then called with no arguments, stdin closed to it, and must return a Network,
which is rebuilt with the requested `impl` (`Network.with_impl`) when that is not "conv". Every
failure (a module that cannot be imported, has a syntax error or raises on import, a `build`
that raises) is a ValueError of one line naming the spec.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

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

    Raises:
      ValueError: one line naming `spec`, for every way a "module:function" can fail.
    """
    check_spec(spec)
    if spec in models.MODELS:
        return models.get(spec, impl=impl)
    module_name, _, attr = spec.partition(":")
    build = _builder(spec, _import(spec, module_name), attr)
    try:
        with _stdin_closed():
            net = build()
    except Exception as e:  # the user's code: any failure is theirs to read, in one line
        raise ValueError(f"--model {spec}: {attr}() raised {_one_line(e)}") from None
    if not isinstance(net, Network):
        raise ValueError(f"--model {spec}: {attr}() returned {type(net).__name__}, not a "
                         f"jaxcnn.nn.network.Network")
    return net if impl == "conv" else net.with_impl(impl)


def _import(spec: str, module_name: str) -> ModuleType:
    """Import the user's module (the current directory first on the path), stdin closed to it.

    Args:
      spec: the whole spec, for messages.
      module_name: the dotted module path.

    Returns:
      the module.

    Raises:
      ValueError: one line for every failure, its own code's (a SyntaxError, an exception at
        import) included.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        with _stdin_closed():
            return importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--model {spec}: cannot import module {module_name!r} ({e})") from None
    except SyntaxError as e:
        where = f"{e.filename}, line {e.lineno}" if e.filename else f"line {e.lineno}"
        raise ValueError(f"--model {spec}: module {module_name!r} has a syntax error "
                         f"({where}: {e.msg})") from None
    except Exception as e:  # its top-level code raised
        raise ValueError(f"--model {spec}: importing module {module_name!r} raised "
                         f"{_one_line(e)}") from None


def _builder(spec: str, module: ModuleType, attr: str) -> Callable[[], Any]:
    """The builder `module.attr`, checked without calling it.

    Args:
      spec: the whole spec, for messages.
      module: the imported module.
      attr: the function's name.

    Returns:
      `module.attr`, a Python function defined in `module` that needs no arguments.

    Raises:
      ValueError: saying what it is instead (a built-in, a class, another object, a function
        of another module, one that needs arguments).
    """
    build = getattr(module, attr, None)
    want = (f"--model takes a Python function defined in {module.__name__!r} that builds a "
            f"jaxcnn Network and needs no arguments")
    if build is None:
        raise ValueError(f"--model {spec}: module {module.__name__!r} has no function {attr!r}")
    if not inspect.isfunction(build):
        what = ("a built-in function" if inspect.isbuiltin(build) else "a class"
                if inspect.isclass(build) else f"an object of type {type(build).__name__}")
        raise ValueError(f"--model {spec}: {attr!r} is {what}, not a Python function; {want}")
    if build.__module__ != module.__name__:
        raise ValueError(f"--model {spec}: {attr!r} is defined in module {build.__module__!r}, "
                         f"not in {module.__name__!r}; {want}")
    needed = [p.name for p in inspect.signature(build).parameters.values()
              if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if needed:
        raise ValueError(f"--model {spec}: {attr}() needs the argument(s) {', '.join(needed)}; "
                         f"{want}")
    return build


@contextlib.contextmanager
def _stdin_closed() -> Iterator[None]:
    """sys.stdin at end of file (os.devnull) while the user's code runs: `input()` there gets
    EOFError instead of waiting for a terminal."""
    saved = sys.stdin
    with open(os.devnull) as devnull:
        sys.stdin = devnull
        try:
            yield
        finally:
            sys.stdin = saved


def _one_line(e: BaseException, limit: int = 300) -> str:
    """An exception for a one-line message.

    Args:
      e: the exception.
      limit: the most characters returned.

    Returns:
      "TypeName: message", whitespace collapsed to single spaces, cut at `limit` characters.
    """
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
