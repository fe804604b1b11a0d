"""The structure checks of a network's parameters and state (`Network.check_params`,
`check_state`): a dict {layer name: {leaf name: array}} against the shapes `init` makes, every
message naming the path, e.g. `seed_cnn: params['conv']['w'] has shape (5, 5, 1, 1) but the
layer needs (3, 3, 1, 1)`. Static: only structure, shapes and dtypes are read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

Shapes = dict[str, dict[str, Any]]  # {layer name: {leaf name: shape, or a nested dict of them}}


def _needs(leaves: dict[str, Any]) -> str:
    """'w' (3, 3, 1, 1), 'b' (1,): what a layer's entry must hold."""
    return ", ".join(f"{k!r} {v}" for k, v in leaves.items())


def check_tree(name: str, kinds: dict[str, str], what: str, tree: Any, expected: Shapes,
               dtype: Any, partial: bool) -> None:
    """The check behind `Network.check_params` (partial=False: every layer and leaf required)
    and `check_state` (partial=True: a layer may be absent or {}, else complete).

    Args:
      name: the network's, for the messages; kinds: {layer name: its kind}; what: "params" or
      "state"; tree: what was given; expected: {layer: {leaf: shape, or a nested dict}};
      dtype: the dtype every leaf must have, or None; partial: as above.

    Raises:
      TypeError / ValueError: naming the path, e.g. `params['conv']['w']`.
    """
    if not isinstance(tree, Mapping):
        raise TypeError(f"{name}: {what} must be a dict {{layer name: {{leaf name: array}}}} "
                        f"as {'init' if what == 'params' else 'init_state'} returns; got "
                        f"{type(tree).__name__}")
    owners = ", ".join(map(repr, expected)) or "none"
    noun = "parameters" if what == "params" else "state"
    for layer in tree:
        if layer in expected:
            continue
        if layer in kinds:
            raise ValueError(f"{name}: {what}[{layer!r}] is given but layer {layer!r} "
                             f"({kinds[layer]}) has no {noun}")
        raise ValueError(f"{name}: {what}[{layer!r}] names no layer of this model; the layers "
                         f"with {what} are {owners}")

    for layer, leaves in expected.items():
        if layer not in tree:
            if partial:
                continue
            raise ValueError(f"{name}: {what}[{layer!r}] is missing; layer {layer!r} "
                             f"({kinds[layer]}) needs {_needs(leaves)}")
        _check_entry(name, kinds, f"{what}[{layer!r}]", tree[layer], leaves, layer, dtype,
                     partial)

def _check_entry(name: str, kinds: dict[str, str], path: str, entry: Any,
                 leaves: dict[str, Any], layer: str, dtype: Any, partial: bool) -> None:
    """One layer's entry (or, inside a block, one sub-layer's) against its expected shapes;
    a nested dict of shapes is checked the same way, one level down."""
    kind = kinds[layer]
    if not isinstance(entry, Mapping):
        raise TypeError(f"{name}: {path} must be a dict of arrays "
                        f"({', '.join(map(repr, leaves))}); got {type(entry).__name__}")
    if partial and not entry:
        return
    for leaf in entry:
        if leaf not in leaves:
            raise ValueError(f"{name}: {path}[{leaf!r}] is not a leaf of layer {layer!r} "
                             f"({kind}), which has {', '.join(map(repr, leaves))}")
    for leaf, shape in leaves.items():
        sub = f"{path}[{leaf!r}]"
        if leaf not in entry:
            if partial and isinstance(shape, dict):
                continue  # a sub-layer's state left out: it starts from its initial one
            raise ValueError(f"{name}: {sub} is missing; layer {layer!r} ({kind}) needs "
                             f"{_needs(leaves)}")
        if isinstance(shape, dict):
            _check_entry(name, kinds, sub, entry[leaf], shape, layer, dtype, partial)
            continue
        v = entry[leaf]
        if not hasattr(v, "shape") or not hasattr(v, "dtype"):
            raise TypeError(f"{name}: {sub} must be an array of shape {shape}; got "
                            f"{type(v).__name__}")
        if not jnp.issubdtype(v.dtype, jnp.floating):
            raise TypeError(f"{name}: {sub} must have a floating dtype; got {v.dtype}")
        if dtype is not None and jnp.dtype(v.dtype) != jnp.dtype(dtype):
            raise TypeError(f"{name}: {sub} is {v.dtype} but x is {jnp.dtype(dtype)}; "
                            f"the network computes in one dtype (init it with x's)")
        if tuple(v.shape) != shape:
            raise ValueError(f"{name}: {sub} has shape {tuple(v.shape)} but the layer "
                             f"needs {shape}")
