"""Elementwise nonlinearities (and softmax along one axis); every one takes any shape."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcnn import _geometry

Array = jax.Array

__all__ = ["leaky_relu", "relu", "sigmoid", "softmax", "tanh"]


def relu(x: Array) -> Array:
    """`y = max(x, 0)` elementwise (the worked example's `A1 = ReLU(Z1)`); x: any shape."""
    _geometry.array("relu", "x", x)
    return jax.nn.relu(x)


def leaky_relu(x: Array, negative_slope: float = 0.01) -> Array:
    """`y = x` where `x >= 0`, else `negative_slope * x`; x: any shape."""
    _geometry.array("leaky_relu", "x", x)
    return jnp.where(x >= 0, x, negative_slope * x)


def sigmoid(x: Array) -> Array:
    """`y = 1 / (1 + exp(-x))` elementwise (the worked example's `A2 = sigmoid(Z2)`); x: any
    shape."""
    _geometry.array("sigmoid", "x", x)
    return jax.nn.sigmoid(x)


def tanh(x: Array) -> Array:
    """`y = tanh(x)` elementwise; x: any shape."""
    _geometry.array("tanh", "x", x)
    return jnp.tanh(x)


def softmax(x: Array, axis: int = -1) -> Array:
    """`y = exp(x) / sum(exp(x))` along `axis` (max-subtracted for stability); x: any shape."""
    _geometry.array("softmax", "x", x)
    return jax.nn.softmax(x, axis=axis)
