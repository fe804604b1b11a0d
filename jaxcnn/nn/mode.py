"""Training or evaluation mode, whether `train` is known or traced.

Every layer branches on `train` as a Python bool (BatchNorm's batch statistics, Dropout's mask),
and the backward rules read the mode the forward kept. Under `jax.jit` a `train` that is not
marked static (`static_argnames="train"`) arrives as a traced boolean scalar, so the public
functions run their whole computation (forward and backward together) through `by_mode`: a
known `train` is passed on as a Python bool, and a traced one selects between the two modes with
`lax.cond`, each branch traced with a concrete bool. Both modes are then compiled; a static
`train` compiles one.

    check_train   train as a Python bool, None when traced; a TypeError for anything else
    by_mode       body(train) for a known train, lax.cond over body(True) and body(False) else
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
from jax import lax

T = TypeVar("T")


# the public functions (jaxcnn/__init__.py) that take `train`
PUBLIC = ("manual_grad", "autodiff_grad", "per_example_grads", "per_example_grad_norms",
          "grad_statistics", "hvp")


def static_hint(fn: str) -> str:
    """The jit form that makes `train` static, for `fn`'s messages."""
    if fn in PUBLIC:
        return f'jax.jit(jaxcnn.{fn}, static_argnums=0, static_argnames="train")'
    return 'static_argnames="train" in jax.jit'


def check_train(fn: str, train: Any) -> bool | None:
    """`train` as a Python bool, or None when its value is traced (`jax.jit` without
    `static_argnames="train"`).

    Args:
      fn: the public function's name, for the message.
      train: a Python or NumPy bool, or a boolean array of shape () (concrete or traced).

    Returns:
      True / False when the value is known, None when it is traced.

    Raises:
      TypeError: anything else (an int, None, a string, an array of another dtype or shape).
    """
    if isinstance(train, bool | np.bool_):
        return bool(train)
    shape, dtype = getattr(train, "shape", None), getattr(train, "dtype", None)
    if shape != () or dtype != np.bool_:
        got = f"an array of shape {tuple(shape)} and dtype {dtype}" if shape is not None \
            else f"{type(train).__name__} {train!r}"
        raise TypeError(f"{fn}: train must be a bool (or a boolean array of shape ()); got {got}")
    try:
        return bool(train)
    except jax.errors.ConcretizationTypeError:  # a tracer: the mode is chosen at run time
        return None


def by_mode(fn: str, train: Any, body: Callable[[bool], T]) -> T:
    """`body(train)` with `train` a Python bool: directly when its value is known, else
    `lax.cond(train, body(True), body(False))` with both branches traced.

    Args:
      fn: the public function's name, for the messages.
      train: as `check_train` accepts.
      body: the whole computation in one mode (forward and backward: the backward rules read
        the mode the forward kept); both modes must return the same structure, shapes, dtypes.

    Returns:
      body's result for the mode `train` selects.

    Raises:
      TypeError: train is not a boolean scalar (`check_train`).
      ValueError: train is traced and training mode cannot be traced (e.g. Dropout without a
        key); the message names the static form, which compiles evaluation mode alone.
    """
    mode = check_train(fn, train)
    if mode is not None:
        return body(mode)

    def training() -> T:
        try:
            return body(True)
        except ValueError as err:
            if not _traces(lambda: body(False)):
                raise err from None  # evaluation mode fails too: an input error, not the mode's
            raise ValueError(
                f"{fn}: train is traced (passed through jax.jit without being static), so both "
                f"modes are compiled, and training mode cannot be ({err}). Pass what training "
                f"needs, or make train static: {static_hint(fn)}") from err

    return lax.cond(train, training, lambda: body(False))


def _traces(fn: Callable[[], Any]) -> bool:
    """Whether `fn` traces without a ValueError (shapes only: `jax.eval_shape`)."""
    try:
        jax.eval_shape(fn)
    except ValueError:
        return False
    return True
