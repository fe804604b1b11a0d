"""Blocks of layers that are themselves layers, in the spirit of `jax.example_libraries.stax`'s
`serial`, `parallel`, `FanOut` and `FanInSum`: a ResNet or a U-Net is then a chain of blocks that
the sequential `jaxcnn.nn.network.Network` runs and backprops as it runs any other layer.

    Serial(*layers)         y = l_K(... l_2(l_1(x)))                 backward: the chain reversed
    Residual(f, shortcut)   y = f(x) + shortcut(x)  (identity: + x)  backward: dx = dx_f + dx_s
    SkipConcat(inner)       y = concat([x, inner(x)], channels)      backward: split dy, add

Each returns a `jaxcnn.nn.layers.Layer` (init, apply, backward, spec, with_impl) whose
    params  nest the sub-layers': Serial {sub-layer name: params}, Residual {"f": ...,
            "shortcut": ...}, SkipConcat {"inner": ...}; a sub-layer without any is left out;
    state   the same structure, for the sub-layers with state (BatchNorm's running averages);
    residual what each sub-layer's backward needs: its own residual, and for Serial the input of
            every sub-layer after the first (the block's input x is given back to backward);
            arrays and static leaves (bools, axis names) as the layers' residuals hold them;
    spec    {"kind": "Serial", "layers": [sub-spec, ...]}, {"kind": "Residual", "f": sub-spec,
            "shortcut": sub-spec or None}, {"kind": "SkipConcat", "inner": sub-spec}; a sub-spec
            is the sub-layer's spec with its "name";
    with_impl the block with every sub-layer's convolutions in another formulation (None when no
            sub-layer has a convolution);
    norms   per-example squared gradient norms through the block: the sub-layers' `norms`
            chained as their backward is, their sq (N,) summed (None when a sub-layer has none);
    decisions every sub-layer's decisions (ReLU signs, max-pool winners) on its own input, in
            the order the block applies them (None when no sub-layer has any).
A ReLU after a residual join is just the next layer of the enclosing Serial.

Sub-layer keys: a block's `apply` gets one PRNG key and folds in the sub-layer's position
(Serial: its index; Residual: 0 for f, 1 for the shortcut; SkipConcat: 0), as `Network` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import jax

from jaxcnn import forward
from jaxcnn.nn.layers import Layer, Shape

Array = jax.Array

__all__ = ["Residual", "Serial", "SkipConcat", "kinds"]


# ----------------------------------------------------------------------------- helpers
def _sub_key(key: Array | None, i: int) -> Array | None:
    return None if key is None else jax.random.fold_in(key, i)


def _check_layer(kind: str, name: str, what: str, layer: Any) -> None:
    if not isinstance(layer, Layer):
        raise TypeError(f"{kind} {name!r}: {what} must be a Layer (jaxcnn.nn.layers); got "
                        f"{type(layer).__name__}")


def _sub_spec(layer: Layer | None) -> dict | None:
    return None if layer is None else {"name": layer.name, **layer.spec}


def _rebuilt(layer: Layer | None, impl: str) -> Layer | None:
    return layer.with_impl(impl) if layer is not None and layer.with_impl else layer


def _apply(layer: Layer, params: dict, state: dict, slot: str, x: Array, key: Array | None,
           i: int, kw: dict) -> tuple[Array, dict, Any]:
    """`layer.apply` on the entries `slot` of params and state ({} when absent)."""
    return layer.apply(params.get(slot, {}), state.get(slot, {}), x, key=_sub_key(key, i), **kw)


def _decided(layer: Layer | None, slot: str, params: dict, x: Array,
             residual: Any) -> list[Array]:
    """`layer.decisions` on its entries `slot` of params; [] for a smooth or absent layer."""
    if layer is None or layer.decisions is None:
        return []
    return layer.decisions(params.get(slot, {}), x, residual)


def _decides(*layers: Layer | None) -> bool:
    return any(layer is not None and layer.decisions is not None for layer in layers)


def _mixes(*layers: Layer | None) -> bool:
    return any(layer is not None and layer.mixes_examples for layer in layers)


def kinds(layer: Layer) -> Iterator[str]:
    """The "kind" of `layer` and of every layer nested in it, depth first, read off the specs
    (for describing a block; what a block can do is in its fields, e.g. `mixes_examples`)."""
    yield from _spec_kinds(layer.spec)


def _spec_kinds(spec: dict | None) -> Iterator[str]:
    if not spec:
        return
    yield spec.get("kind", "layer")
    for sub in spec.get("layers", ()):
        yield from _spec_kinds(sub)
    for slot in ("f", "shortcut", "inner"):
        yield from _spec_kinds(spec.get(slot))


# ----------------------------------------------------------------------------- Serial
def _serial_init(layers: tuple[Layer, ...], key: Array, in_shape: Shape,
                 dtype: Any) -> tuple[Shape, dict, dict]:
    """Each sub-layer's init on the previous one's out_shape; key i folded in for layer i."""
    params, state, shape = {}, {}, tuple(in_shape)
    for i, layer in enumerate(layers):
        shape, p, s = layer.init(jax.random.fold_in(key, i), shape, dtype)
        if p:
            params[layer.name] = p
        if s:
            state[layer.name] = s
    return tuple(shape), params, state


def _serial_apply(layers: tuple[Layer, ...], params: dict, state: dict, x: Array, *,
                  train: bool = False, key: Array | None = None,
                  axis_name: str | None = None) -> tuple[Array, dict, dict]:
    """x (N, *in_shape) through every sub-layer -> (y, state, {"inputs": the inputs of
    sub-layers 2..K, "residuals": each sub-layer's residual})."""
    kw = dict(train=train, axis_name=axis_name)
    inputs, residuals, new_state = [], [], {}
    for i, layer in enumerate(layers):
        inputs.append(x)
        x, s, r = _apply(layer, params, state, layer.name, x, key, i, kw)
        residuals.append(r)
        if s:
            new_state[layer.name] = s
    # the block's own input is handed back to backward: keep only the later ones
    return x, new_state, {"inputs": inputs[1:], "residuals": residuals}


def _serial_backward(layers: tuple[Layer, ...], dy: Array, params: dict, x: Array,
                     residual: dict) -> tuple[Array, dict]:
    """dx_k = l_k.backward(dx_{k+1}, params_k, x_k, residual_k), from the last layer down."""
    inputs = [x, *residual["inputs"]]
    grads = {}
    for layer, x_k, r_k in zip(reversed(layers), reversed(inputs),
                               reversed(residual["residuals"])):
        dy, g = layer.backward(dy, params.get(layer.name, {}), x_k, r_k)
        if layer.name in params:
            grads[layer.name] = g
    return dy, {n: grads[n] for n in params}


def _serial_norms(layers: tuple[Layer, ...], g: Array, params: dict, x: Array, residual: dict,
                  method: str) -> tuple[Array, Array]:
    """`_serial_backward` for per-example rows g, summing the sub-layers' squared norms; the
    regrad gathers theirs by name."""
    inputs, sq, regrads = [x, *residual["inputs"]], 0.0, {}
    for layer, x_k, r_k in zip(reversed(layers), reversed(inputs),
                               reversed(residual["residuals"])):
        g, sq_k, regrads[layer.name] = layer.norms(g, params.get(layer.name, {}), x_k, r_k,
                                                   method)
        sq = sq + sq_k
    return g, sq, lambda w: {n: regrads[n](w) for n in params}


def _serial_decisions(layers: tuple[Layer, ...], params: dict, x: Array,
                      residual: dict) -> list[Array]:
    """Every sub-layer's decisions on its own input (x, then the inputs the residual kept)."""
    inputs = [x, *residual["inputs"]]
    return [d for layer, x_k, r_k in zip(layers, inputs, residual["residuals"])
            for d in _decided(layer, layer.name, params, x_k, r_k)]


def _norms_of(*layers: Layer | None) -> bool:
    return all(layer.norms is not None for layer in layers if layer is not None)


def Serial(*layers: Layer, name: str = "serial") -> Layer:
    """A chain of layers as one layer: y = l_K(... l_2(l_1(x))).

    Backward chains the sub-layers' rules in reverse, as `Network.backprop` does:
    dx_k = l_k.backward(dx_{k+1}, params_k, x_k, residual_k), starting from dy.

    Args:
      *layers: the sub-layers, in order; their names must be unique inside the block.
      name: the block's name.

    Returns:
      A Layer with params {sub-layer name: params} and state {sub-layer name: state} (only the
      sub-layers that have any), in_shape -> the last sub-layer's out_shape.

    Raises:
      TypeError: a sub-layer is not a Layer. ValueError: no sub-layers, or repeated names.
    """
    if not layers:
        raise ValueError(f"Serial {name!r}: needs at least one layer")
    for i, layer in enumerate(layers):
        _check_layer("Serial", name, f"layer {i}", layer)
    names = [layer.name for layer in layers]
    if repeated := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"Serial {name!r}: layer names must be unique inside the block; "
                         f"{', '.join(map(repr, repeated))} repeated in {names}")

    def with_impl(impl: str) -> Layer:
        return Serial(*(_rebuilt(layer, impl) for layer in layers), name=name)

    spec = {"kind": "Serial", "layers": [_sub_spec(layer) for layer in layers]}
    has_impl = any(layer.with_impl for layer in layers)
    return Layer(name, partial(_serial_init, layers), partial(_serial_apply, layers),
                 partial(_serial_backward, layers), spec, with_impl if has_impl else None,
                 partial(_serial_norms, layers) if _norms_of(*layers) else None,
                 partial(_serial_decisions, layers) if _decides(*layers) else None,
                 _mixes(*layers))


# ----------------------------------------------------------------------------- Residual
def _residual_init(f: Layer, shortcut: Layer | None, name: str, key: Array, in_shape: Shape,
                   dtype: Any) -> tuple[Shape, dict, dict]:
    """f's and the shortcut's init on the same input; their output shapes must be equal."""
    in_shape = tuple(in_shape)
    shape_f, p, s = f.init(jax.random.fold_in(key, 0), in_shape, dtype)
    params, state = ({"f": p} if p else {}), ({"f": s} if s else {})
    shape_s = in_shape
    if shortcut is not None:
        shape_s, p, s = shortcut.init(jax.random.fold_in(key, 1), in_shape, dtype)
        params, state = params | ({"shortcut": p} if p else {}), \
            state | ({"shortcut": s} if s else {})
    if tuple(shape_f) != tuple(shape_s):
        what = "the identity shortcut passes x through as" if shortcut is None else \
            f"the shortcut {shortcut.name!r} gives"
        fix = "; give a projection shortcut (e.g. a strided 1x1 Conv2D) that maps x to f's " \
              "output shape" if shortcut is None else ""
        raise ValueError(f"Residual {name!r}: f {f.name!r} maps {in_shape} to {tuple(shape_f)} "
                         f"but {what} {tuple(shape_s)}: the two are added, so their shapes "
                         f"must be equal{fix}")
    return tuple(shape_f), params, state


def _residual_apply(f: Layer, shortcut: Layer | None, params: dict, state: dict, x: Array, *,
                    train: bool = False, key: Array | None = None,
                    axis_name: str | None = None) -> tuple[Array, dict, dict]:
    """y = f(x) + shortcut(x) (x itself for the identity), `forward.add`; the residual holds
    each path's own ({"f": ..., "shortcut": ...})."""
    kw = dict(train=train, axis_name=axis_name)
    y_shortcut, new_state, residual = x, {}, {}
    y_f, s, residual["f"] = _apply(f, params, state, "f", x, key, 0, kw)
    if s:
        new_state["f"] = s
    if shortcut is not None:
        y_shortcut, s, residual["shortcut"] = _apply(shortcut, params, state, "shortcut", x,
                                                     key, 1, kw)
        if s:
            new_state["shortcut"] = s
    return forward.add(y_f, y_shortcut), new_state, residual


def _residual_backward(f: Layer, shortcut: Layer | None, dy: Array, params: dict, x: Array,
                       residual: dict) -> tuple[Array, dict]:
    """dy (N, *out_shape) -> (dx = dx_f + dx_shortcut, {"f": ..., "shortcut": ...})."""
    # the sum y = f(x) + shortcut(x) hands the whole dy to each path (backward.add's rule)
    grads = {}
    dx_f, grads["f"] = f.backward(dy, params.get("f", {}), x, residual["f"])
    if shortcut is None:
        dx_shortcut = dy  # the identity's Jacobian: dy passes through untouched
    else:
        dx_shortcut, grads["shortcut"] = shortcut.backward(dy, params.get("shortcut", {}), x,
                                                           residual["shortcut"])
    # THE RESIDUAL JOIN'S RULE: x fed two paths, so its gradient is the sum of theirs.
    # With the identity, dx = dy + dx_f: however small f's Jacobian gets (the overview's
    # vanishing gradients, layer after layer), dy reaches x undiminished through the
    # shortcut, which is why a deep residual network still trains its early layers.
    dx = dx_f + dx_shortcut
    return dx, {slot: grads[slot] for slot in params}


def _residual_norms(f: Layer, shortcut: Layer | None, g: Array, params: dict, x: Array,
                    residual: dict, method: str) -> tuple[Array, Array]:
    """`_residual_backward` for per-example rows g: both paths' dx added, their sq summed."""
    dx, sq, regrads = *f.norms(g, params.get("f", {}), x, residual["f"], method)[:2], {}
    regrads["f"] = f.norms(g, params.get("f", {}), x, residual["f"], method)[2]
    if shortcut is not None:
        dx_s, sq_s, regrads["shortcut"] = shortcut.norms(g, params.get("shortcut", {}), x,
                                                         residual["shortcut"], method)
        dx, sq = dx + dx_s, sq + sq_s
    else:
        dx = dx + g
    return dx, sq, lambda w: {slot: regrads[slot](w) for slot in params}


def _residual_decisions(f: Layer, shortcut: Layer | None, params: dict, x: Array,
                        residual: dict) -> list[Array]:
    """f's decisions, then the shortcut's, both on the block's input x."""
    return [*_decided(f, "f", params, x, residual["f"]),
            *_decided(shortcut, "shortcut", params, x, residual.get("shortcut"))]


def Residual(f: Layer, shortcut: Layer | None = None, *, name: str = "residual") -> Layer:
    """A residual join (He et al. 2016): y = f(x) + shortcut(x), the shortcut the identity
    (y = f(x) + x) when None.

    Both paths read the same x, and the sum sends the same dy down both (d(a + b)/da =
    d(a + b)/db = 1), so dx is the SUM of the two paths' input gradients:
    dx = f.backward(dy) + shortcut.backward(dy), with dy itself for the identity.

    Args:
      f: the residual branch, typically a Serial (conv -> BN -> ReLU -> conv -> BN).
      shortcut: None for the identity, else a layer (a projection: 1x1 conv with stride, BN)
        mapping x to f's output shape.
      name: the block's name.

    Returns:
      A Layer with params {"f": ..., "shortcut": ...} and the same structure for the state
      (entries without any left out); in_shape -> f's out_shape.

    Raises:
      TypeError: f or shortcut is not a Layer. ValueError (at init, i.e. when the network is
      built): f's and the shortcut's output shapes differ; the message names both.
    """
    _check_layer("Residual", name, "f", f)
    if shortcut is not None:
        _check_layer("Residual", name, "shortcut", shortcut)

    def with_impl(impl: str) -> Layer:
        return Residual(_rebuilt(f, impl), _rebuilt(shortcut, impl), name=name)

    spec = {"kind": "Residual", "f": _sub_spec(f), "shortcut": _sub_spec(shortcut)}
    has_impl = f.with_impl or (shortcut is not None and shortcut.with_impl)
    return Layer(name, partial(_residual_init, f, shortcut, name),
                 partial(_residual_apply, f, shortcut), partial(_residual_backward, f, shortcut),
                 spec, with_impl if has_impl else None,
                 partial(_residual_norms, f, shortcut) if _norms_of(f, shortcut) else None,
                 partial(_residual_decisions, f, shortcut) if _decides(f, shortcut) else None,
                 _mixes(f, shortcut))


# ----------------------------------------------------------------------------- SkipConcat
def SkipConcat(inner: Layer, *, name: str = "skip") -> Layer:
    """A concatenated skip (the U-Net's): y = concat([x, inner(x)], channel axis).

    The encoder's activation x is carried past `inner` and stacked under its output, channels
    first x's C, then inner's. The adjoint of a concatenation is a split, and x feeds both
    parts: dx = dy[..., :C] + inner.backward(dy[..., C:]).

    Args:
      inner: the layer between (typically a Serial going down and back up); its output must
        have x's spatial shape.
      name: the block's name.

    Returns:
      A Layer with params {"inner": ...} (left out when inner has none), state likewise;
      (..., C) -> (..., C + C_inner).

    Raises:
      TypeError: inner is not a Layer.
      ValueError: (at init) inner's output differs from x in rank or spatial shape; the
        message names both shapes.
    """
    _check_layer("SkipConcat", name, "inner", inner)

    def init(key, in_shape, dtype):
        in_shape = tuple(in_shape)
        shape, p, s = inner.init(jax.random.fold_in(key, 0), in_shape, dtype)
        shape = tuple(shape)
        if len(shape) != len(in_shape) or shape[:-1] != in_shape[:-1]:
            raise ValueError(f"SkipConcat {name!r}: inner {inner.name!r} maps {in_shape} to "
                             f"{shape}; concatenating along the channels needs the same "
                             f"spatial shape {in_shape[:-1]} (..., C) on both")
        return (*in_shape[:-1], in_shape[-1] + shape[-1]), ({"inner": p} if p else {}), \
            ({"inner": s} if s else {})

    def apply(params, state, x, *, train=False, key=None, axis_name=None):
        kw = dict(train=train, axis_name=axis_name)
        y, s, r = _apply(inner, params, state, "inner", x, key, 0, kw)
        return forward.concat(x, y), ({"inner": s} if s else {}), r

    def backward_(dy, params, x, residual):
        c = x.shape[-1]
        # the split (backward.concat's rule): the first C channels of dy are the skip's, the
        # rest inner's output's
        dx_inner, g = inner.backward(dy[..., c:], params.get("inner", {}), x, residual)
        dx = dy[..., :c] + dx_inner  # x fed both the skip and inner: the two gradients add
        return dx, ({"inner": g} if "inner" in params else {})

    def norms(g, params, x, residual, method):
        c = x.shape[-1]
        dx_inner, sq, regrad = inner.norms(g[..., c:], params.get("inner", {}), x, residual,
                                           method)
        return (g[..., :c] + dx_inner, sq,
                lambda w: {"inner": regrad(w)} if "inner" in params else {})

    def with_impl(impl: str) -> Layer:
        return SkipConcat(_rebuilt(inner, impl), name=name)

    return Layer(name, init, apply, backward_, {"kind": "SkipConcat", "inner": _sub_spec(inner)},
                 with_impl if inner.with_impl else None, norms if inner.norms else None,
                 partial(_decided, inner, "inner") if inner.decisions else None, _mixes(inner))
