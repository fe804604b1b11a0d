"""The check every rule makes of its upstream gradient `dy`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcnn import _geometry

Array = jax.Array


def upstream(fn: str, dy: Any, like: Array, shape: tuple[int, ...], what: str) -> None:
    """dy must be a floating array of `shape` (the forward output's) in `like`'s dtype."""
    _geometry.array(fn, "dy", dy, len(shape))
    _geometry.same_dtype(fn, dy=dy, x=like)
    _geometry.shape_is(fn, "dy", dy, shape, what)


def scalar(fn: str, dl: Any, like: Array) -> Array:
    """A loss's upstream gradient: a scalar (usually 1.0), in `like`'s dtype."""
    dl = jnp.asarray(dl, like.dtype)
    if dl.shape != ():
        raise ValueError(f"{fn}: dl must be a scalar (the upstream gradient of the loss, "
                         f"usually 1.0); got shape {dl.shape}")
    return dl
