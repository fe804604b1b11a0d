"""Argument checks and window geometry shared by `jaxcnn.forward` and `jaxcnn.backward`.

Everything here runs in Python on static shapes, before JAX traces anything, so a bad call fails
with a `ValueError` / `TypeError` that names the function, the argument, what it got and what it
needs, never with an XLA error. Nothing here imports the fast formulations (`jaxcnn.fast`):
validation and geometry are one thing, how a sum is computed is another.

Geometry, per spatial axis (docs/design.md, "The rules"): input size `H`, window `k`, stride
`s`, dilation `d`, pads `(lo, hi)`; `k_eff = (k - 1) * d + 1`; output
`O = (H + lo + hi - k_eff) // s + 1`.

Every shape derived here (padded input, output) is bounded by `jaxcnn._bounds` (int32 sizes).

The module is over 400 lines because it holds the checks of every op in one place (convolutions,
transposed convolutions and pools on 1, 2 or 3 spatial axes, dense layers, norms, joins,
losses), so that their messages keep one form; each block below is short and stands alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import _bounds

Pair = tuple[int, int]
Pads = tuple[Pair, Pair]
Padding = str | int | Sequence[int] | Sequence[Sequence[int]]

PADDING_FORMS = (
    '"VALID", "SAME", an int p, a pair (ph, pw), or ((top, bottom), (left, right))'
)


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def pair(fn: str, name: str, value: Any, *, minimum: int = 1) -> Pair:
    """`value` as an (H, W) pair of ints >= `minimum`: an int means the same on both axes."""
    if _is_int(value):
        value = (value, value)
    if (not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2
            or not all(_is_int(v) for v in value)):
        raise TypeError(f"{fn}: {name} must be an int or a pair of ints (h, w); got {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum} on both axes; got {tuple(value)}")
    _bounds.option(fn, name, value)
    return int(value[0]), int(value[1])


def array(fn: str, name: str, x: Any, ndim: int | None = None, layout: str = "",
          *, floating: bool = True) -> tuple[int, ...]:
    """Check that `x` is an array (of rank `ndim`, described by `layout`); return its shape."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{fn}: {name} must be a JAX or NumPy array; got {type(x).__name__}")
    if ndim is not None and len(x.shape) != ndim:
        expected = f"a {ndim}-D array {layout}".rstrip()
        raise ValueError(f"{fn}: {name} must be {expected}; got shape {tuple(x.shape)}")
    if floating and not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{fn}: {name} must have a floating-point dtype; got {x.dtype}")
    return tuple(int(n) for n in x.shape)


def same_dtype(fn: str, **arrays: Any) -> None:
    """All arrays given (None skipped) share one dtype."""
    named = [(k, v.dtype) for k, v in arrays.items() if v is not None]
    if len({d for _, d in named}) > 1:
        got = ", ".join(f"{k} is {d}" for k, d in named)
        raise TypeError(f"{fn}: {got}; cast them to one floating dtype")


def shape_is(fn: str, name: str, x: Any, expected: tuple[int, ...], why: str) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{fn}: {name} has shape {tuple(x.shape)} but {why} "
                         f"has shape {tuple(expected)}")


def padding(fn: str, value: Padding, in_hw: Pair, window_eff: Pair, stride: Pair) -> Pads:
    """Resolve any padding form to explicit ((top, bottom), (left, right)) pads.

    "SAME" pads as XLA does (`lax.padtype_to_pads` with the dilated window); `(a, b)` means `a` on
    both sides of H and `b` on both sides of W, as torch reads it.
    """
    if isinstance(value, str):
        if value.upper() not in ("VALID", "SAME"):
            raise ValueError(f"{fn}: padding must be {PADDING_FORMS}; got {value!r}")
        pads = lax.padtype_to_pads(in_hw, window_eff, stride, value.upper())
        return (tuple(pads[0]), tuple(pads[1]))  # type: ignore[return-value]
    if _is_int(value):
        pads = ((value, value), (value, value))
    elif (isinstance(value, Sequence) and len(value) == 2
          and all(_is_int(v) for v in value)):
        pads = ((value[0], value[0]), (value[1], value[1]))
    elif (isinstance(value, Sequence) and len(value) == 2
          and all(isinstance(p, Sequence) and len(p) == 2 and all(_is_int(v) for v in p)
                  for p in value)):
        pads = (tuple(value[0]), tuple(value[1]))
    else:
        raise TypeError(f"{fn}: padding must be {PADDING_FORMS}; got {value!r}")
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if min(min(p) for p in pads) < 0:
        raise ValueError(f"{fn}: padding must be >= 0; got {pads}")
    return pads  # type: ignore[return-value]


class Window(NamedTuple):
    """The resolved geometry of a sliding window (convolution kernel or pooling window)."""

    size: Pair      # k: the window (kernel) size
    stride: Pair    # s
    dilation: Pair  # d
    pads: Pads      # ((lo, hi), (lo, hi))
    in_hw: Pair     # (H, W)
    out_hw: Pair    # (O_h, O_w)

    @property
    def eff(self) -> Pair:
        """k_eff = (k - 1) * d + 1, the span of the dilated window."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.size, self.dilation))  # type: ignore

    @property
    def spread(self) -> Pair:
        """O_s = (O - 1) * s + 1, the span of the output spread back over the stride grid."""
        return tuple((o - 1) * s + 1 for o, s in zip(self.out_hw, self.stride))  # type: ignore


def window(fn: str, in_hw: Pair, size: Pair, stride: Pair, dilation: Pair,
           pad_value: Padding, what: str = "kernel") -> Window:
    """Resolve padding and check that the (dilated) window fits the padded input.

    The number of spatial axes is len(in_hw): every argument has one entry per axis (two for
    conv2d and the pools; `padding_n` resolves the padding forms of 1 and 3 axes).
    """
    eff = tuple((k - 1) * d + 1 for k, d in zip(size, dilation))
    _bounds.extents(fn, f"dilation {dilation}", eff, f"the dilated {what}'s span")
    pads = padding_n(fn, pad_value, in_hw, eff, stride)
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(in_hw, pads))
    _bounds.extents(fn, f"padding {pad_value!r}", padded, "the padded input's size")
    if any(e > p for e, p in zip(eff, padded)):
        dil = f" (dilated by {dilation})" if any(d != 1 for d in dilation) else ""
        raise ValueError(
            f"{fn}: the {what} spans {eff}{dil} but the padded input is only {padded} "
            f"(input {in_hw}, padding {pads}); use a smaller {what} or more padding")
    out = tuple((p - e) // s + 1 for p, e, s in zip(padded, eff, stride))
    return Window(size, stride, dilation, pads, in_hw, out)  # type: ignore[arg-type]


class Conv(NamedTuple):
    win: Window
    groups: int
    c_in: int
    c_out: int
    out_shape: tuple[int, ...]  # (N, *O, C_out)


def conv(fn: str, x: Any, w: Any, stride: Any, padding_: Padding, dilation: Any,
         groups: Any, b: Any = None, *, spatial: int = 2) -> Conv:
    """Check a convolution's arguments on `spatial` axes (2: conv2d): x (N, H, W, C_in),
    w (kh, kw, C_in // groups, C_out); x (N, W, C_in), w (kw, ...) for 1; (N, D, H, W, C_in),
    w (kd, kh, kw, ...) for 3 (`CONV_LAYOUTS`). The Window has one entry per spatial axis."""
    x_layout, w_layout = CONV_LAYOUTS[spatial]
    n, *in_sp, c_in = array(fn, "x", x, spatial + 2, x_layout)
    w_shape = array(fn, "w", w, spatial + 2, w_layout)
    *k, _, c_out = w_shape
    same_dtype(fn, x=x, w=w)
    _conv_groups(fn, groups, c_in, c_out, w_shape)
    _bias(fn, x, b, c_out)
    win = window(fn, tuple(in_sp), tuple(k), tuple_n(fn, "stride", stride, spatial),
                 tuple_n(fn, "dilation", dilation, spatial), padding_)
    _bounds.padded(fn, padding_, (n, *in_sp, c_in), win.pads)
    _bounds.elements(fn, f"w's {c_out} output channels", (n, *win.out_hw, c_out),
                     "the output (N, *O, C_out)")
    return Conv(win, int(groups), c_in, c_out, (n, *win.out_hw, c_out))


# ---------------------------------------------------------------- convolutions on 1, 2 or 3 axes
# conv1d / conv3d take the conv2d checks with one entry per spatial axis: an option is an int or
# a tuple of n ints, (2,) for one axis, never (a, b); padding ((lo, hi),) per axis. Two axes go
# through `pair` and `padding` themselves, so conv2d's messages and behaviour stay as they were.
CONV_LAYOUTS = {  # spatial axes: (x's layout, w's layout)
    1: ("(N, W, C)", "(kw, C_in // groups, C_out) (WIO)"),
    2: ("(N, H, W, C)", "(kh, kw, C_in // groups, C_out) (HWIO)"),
    3: ("(N, D, H, W, C)", "(kd, kh, kw, C_in // groups, C_out) (DHWIO)"),
}
_CONV_AXES = {1: "(w,)", 3: "(d, h, w)"}
_CONV_PADS = {1: "(p,) or ((lo, hi),)", 3: "(pd, ph, pw) or ((lo, hi), (lo, hi), (lo, hi))"}


def tuple_n(fn: str, name: str, value: Any, n: int, *, minimum: int = 1) -> tuple[int, ...]:
    """`value` as n ints >= `minimum`, one per spatial axis: an int means the same on every axis.

    n == 2 is `pair` (its messages). For n == 1 a tuple has one entry, (2,); (a, b) is an error.
    """
    if n == 2:
        return pair(fn, name, value, minimum=minimum)
    value = (value,) * n if _is_int(value) else value
    if (not isinstance(value, Sequence) or isinstance(value, str) or len(value) != n
            or not all(_is_int(v) for v in value)):
        ints = "1 int" if n == 1 else f"{n} ints"
        raise TypeError(f"{fn}: {name} must be an int or a tuple of {ints} {_CONV_AXES[n]}, one "
                        f"per spatial axis; got {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum} on every axis; got {tuple(value)}")
    _bounds.option(fn, name, value)
    return tuple(int(v) for v in value)


def padding_n(fn: str, value: Padding, in_sp: tuple[int, ...], window_eff: tuple[int, ...],
              stride: tuple[int, ...]) -> tuple[Pair, ...]:
    """Any padding form as one explicit (lo, hi) pair per spatial axis (n = len(in_sp)).

    Forms: "VALID", "SAME" (as XLA pads, with the dilated window), an int p, n ints (symmetric
    per axis), or n (lo, hi) pairs. n == 2 is `padding` (its forms and messages).
    """
    n = len(in_sp)
    if n == 2:
        return padding(fn, value, in_sp, window_eff, stride)  # type: ignore[arg-type]
    forms = f'"VALID", "SAME", an int p, {_CONV_PADS[n]}'
    if isinstance(value, str):
        if value.upper() not in ("VALID", "SAME"):
            raise ValueError(f"{fn}: padding must be {forms}; got {value!r}")
        pads = lax.padtype_to_pads(in_sp, window_eff, stride, value.upper())
        return tuple((int(lo), int(hi)) for lo, hi in pads)
    if _is_int(value) or (isinstance(value, Sequence) and len(value) == n
                          and all(_is_int(v) for v in value)):
        value = [(p, p) for p in ((value,) * n if _is_int(value) else value)]
    if not (isinstance(value, Sequence) and len(value) == n and all(
            isinstance(p, Sequence) and len(p) == 2 and all(_is_int(v) for v in p)
            for p in value)):
        raise TypeError(f"{fn}: padding must be {forms}, one entry per spatial axis; "
                        f"got {value!r}")
    pads = tuple((int(lo), int(hi)) for lo, hi in value)
    if min(min(p) for p in pads) < 0:
        raise ValueError(f"{fn}: padding must be >= 0; got {pads}")
    return pads


def _conv_groups(fn: str, groups: Any, c_in: int, c_out: int, w_shape: tuple[int, ...],
                 transposed: bool = False) -> None:
    """groups an int >= 1 dividing both channel counts, and x's channels matching w's."""
    if not _is_int(groups):
        raise TypeError(f"{fn}: groups must be an int; got {groups!r}")
    if groups < 1:
        raise ValueError(f"{fn}: groups must be >= 1; got {groups}")
    i = len(w_shape) - 2  # w's channel axes: i (C_in // groups for a conv) and i + 1
    if transposed:  # w (*k, C_out // groups, C_in): x's channels are w's last axis
        if c_in != w_shape[i + 1]:
            raise ValueError(f"{fn}: x has {c_in} channels but w expects {w_shape[i + 1]} "
                             f"(w.shape[{i + 1}], the channels of the convolution's output)")
        if c_in % groups:
            raise ValueError(f"{fn}: groups={groups} must divide the {c_in} input channels "
                             f"of x (w.shape[{i + 1}])")
        return
    if c_in % groups:
        raise ValueError(f"{fn}: groups={groups} must divide the {c_in} input channels of x")
    if c_out % groups:
        raise ValueError(f"{fn}: groups={groups} must divide the {c_out} output channels "
                         f"of w (w.shape[{i + 1}])")
    if w_shape[i] * groups != c_in:
        raise ValueError(f"{fn}: x has {c_in} channels but w expects {w_shape[i] * groups} "
                         f"(w.shape[{i}] * groups = {w_shape[i]} * {groups})")


def _bias(fn: str, x: Any, b: Any, c_out: int) -> None:
    if b is not None:
        array(fn, "b", b, 1, "(C_out,)")
        same_dtype(fn, x=x, b=b)
        shape_is(fn, "b", b, (c_out,), "one bias per output channel of w")


class ConvTranspose(NamedTuple):
    """A checked transposed convolution: `conv` is the convolution it transposes (that conv's
    input has this op's output shape, its output x's shape; pads (p, p - output_padding) per
    axis), `out_shape` this op's output (N, *O, C_out), `output_padding` one entry per axis."""

    conv: Conv
    out_shape: tuple[int, ...]
    output_padding: tuple[int, ...]


def conv_transpose(fn: str, x: Any, w: Any, stride: Any, padding_: Any, output_padding: Any,
                   dilation: Any, groups: Any, b: Any = None, *,
                   spatial: int) -> ConvTranspose:
    """Check a transposed convolution (torch's semantics, channels-last) on `spatial` axes.

    x (N, *H, C_in); w (*k, C_out // groups, C_in), the kernel of the convolution it transposes;
    padding and output_padding ints >= 0 (symmetric), output_padding < max(stride, dilation) on
    each axis. Output per axis: `O = (H - 1) * s - 2 * p + d * (k - 1) + output_padding + 1`.
    """
    x_layout = CONV_LAYOUTS[spatial][0]
    w_layout = CONV_LAYOUTS[spatial][1].replace("C_in // groups, C_out", "C_out // groups, C_in")
    n, *in_sp, c_in = array(fn, "x", x, spatial + 2, x_layout)
    w_shape = array(fn, "w", w, spatial + 2, w_layout)
    *k, c_out_g, _ = w_shape
    same_dtype(fn, x=x, w=w)
    _conv_groups(fn, groups, c_in, 0, w_shape, transposed=True)
    c_out = c_out_g * int(groups)
    _bias(fn, x, b, c_out)
    if isinstance(padding_, str):
        raise TypeError(f"{fn}: padding must be an int or a tuple of {spatial} ints, symmetric "
                        f"per axis as torch reads it (no \"SAME\" / \"VALID\"); got {padding_!r}")
    s, d = tuple_n(fn, "stride", stride, spatial), tuple_n(fn, "dilation", dilation, spatial)
    p = tuple_n(fn, "padding", padding_, spatial, minimum=0)
    op = tuple_n(fn, "output_padding", output_padding, spatial, minimum=0)
    if any(o >= max(si, di) for o, si, di in zip(op, s, d)):
        raise ValueError(f"{fn}: output_padding must be smaller than the stride or the dilation "
                         f"on every axis; got output_padding {op}, stride {s}, dilation {d}")
    out = tuple((h - 1) * si - 2 * pi + di * (ki - 1) + oi + 1
                for h, si, pi, di, ki, oi in zip(in_sp, s, p, d, k, op))
    if min(out) < 1:
        raise ValueError(f"{fn}: the output would have spatial size {out} (input {tuple(in_sp)}, "
                         f"padding {p}): every size must be >= 1; use less padding")
    why = f"stride {s}, dilation {d} and w's kernel {tuple(k)}"
    _bounds.elements(fn, why, (n, *out, c_out), "the output (N, *O, C_out)")
    _bounds.elements(fn, why, (n, *(o + di * (ki - 1) for o, di, ki in zip(out, d, k)), c_in),
                     "the spread, padded x that is convolved (N, *(O + k_eff - 1), C_in)")
    win = Window(tuple(k), s, d, tuple((pi, pi - oi) for pi, oi in zip(p, op)),  # type: ignore
                 out, tuple(in_sp))
    fwd = Conv(win, int(groups), c_out, c_in, tuple(x.shape))  # type: ignore[arg-type]
    return ConvTranspose(fwd, (n, *out, c_out), op)


def pool(fn: str, x: Any, size: Any, stride: Any, padding_: Padding) -> Window:
    """Check a pooling call: x (N, H, W, C); every pad smaller than the window, so that every
    window holds at least one real element."""
    _, h, w, _ = array(fn, "x", x, 4, "(N, H, W, C)")
    size = pair(fn, "window", size)
    stride = size if stride is None else pair(fn, "stride", stride)
    win = window(fn, (h, w), size, stride, (1, 1), padding_, what="window")
    for (lo, hi), k in zip(win.pads, size):
        if lo >= k or hi >= k:
            raise ValueError(f"{fn}: padding {win.pads} must be smaller than the window {size} "
                             f"on each side, so that no window is all padding")
    _bounds.padded(fn, padding_, x.shape, win.pads)
    return win


def concrete(x: Any) -> np.ndarray | None:
    """`x` as a NumPy array when its values are known (not traced), else None."""
    try:
        return np.asarray(x)
    except Exception:  # a tracer under jit / vmap: values are checked only eagerly
        return None


def window_counts(win: Window, count_include_pad: bool = True) -> np.ndarray:
    """How many elements each window averages: (1, O_h, O_w, 1), computed from static shapes."""
    if count_include_pad:
        return np.full((1, *win.out_hw, 1), win.size[0] * win.size[1], np.float64)
    per_axis = []
    for n, k, s, (lo, _), o in zip(win.in_hw, win.size, win.stride, win.pads, win.out_hw):
        start = np.arange(o) * s - lo
        per_axis.append(np.minimum(start + k, n) - np.maximum(start, 0))
    return np.outer(*per_axis).astype(np.float64)[None, :, :, None]


def dense(fn: str, x: Any, w: Any, b: Any) -> None:
    """Check a dense layer: x (N, D_in), w (D_in, D_out), b (D_out,) or None."""
    _, d_in = array(fn, "x", x, 2, "(N, D_in)")
    w_in, d_out = array(fn, "w", w, 2, "(D_in, D_out)")
    same_dtype(fn, x=x, w=w, b=b)
    if w_in != d_in:
        raise ValueError(f"{fn}: x has {d_in} features but w expects {w_in} (w.shape[0]); "
                         f"flatten the input or resize w")
    _bounds.elements(fn, f"w's {d_out} outputs", (x.shape[0], d_out), "the output (N, D_out)")
    if b is not None:
        array(fn, "b", b, 1, "(D_out,)")
        shape_is(fn, "b", b, (d_out,), "one bias per output of w")


def binary_labels(fn: str, pred: Any, y: Any, what: str) -> None:
    """Check binary-loss arguments: pred (N,) or (N, 1), y (N,) in [0, 1]."""
    shape = array(fn, what, pred)
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise ValueError(f"{fn}: {what} must have shape (N,) or (N, 1); got {shape}")
    array(fn, "y", y, 1, "(N,) of 0./1. labels")
    same_dtype(fn, **{what: pred, "y": y})
    if y.shape[0] != shape[0]:
        raise ValueError(f"{fn}: y has shape {tuple(y.shape)} but {what} has {shape[0]} rows; "
                         f"it needs one label per example, shape ({shape[0]},)")
    vals = concrete(y)
    if vals is not None and ((vals < 0) | (vals > 1)).any():
        raise ValueError(f"{fn}: y must hold labels in [0, 1]; got values in "
                         f"[{vals.min()}, {vals.max()}]")


def class_targets(fn: str, z: Any, y: Any) -> Any:
    """Check softmax-CE labels and return them as (N, K) target distributions in z's dtype."""
    n, k = array(fn, "z", z, 2, "(N, K) logits")
    array(fn, "y", y, floating=False)
    if np.issubdtype(y.dtype, np.integer):
        array(fn, "y", y, 1, "(N,) of int class ids", floating=False)
        if y.shape[0] != n:
            raise ValueError(f"{fn}: y has shape {tuple(y.shape)} but z has {n} rows; "
                             f"it needs one class id per example, shape ({n},)")
        vals = concrete(y)
        if vals is not None and ((vals < 0) | (vals >= k)).any():
            raise ValueError(f"{fn}: y must hold class ids in [0, {k}); got values in "
                             f"[{vals.min()}, {vals.max()}]")
        return jax.nn.one_hot(y, k, dtype=z.dtype)
    array(fn, "y", y, 2, "(N, K) one-hot or probabilities, or (N,) int class ids")
    same_dtype(fn, z=z, y=y)
    shape_is(fn, "y", y, (n, k), "z")
    return y


def pixel_labels(fn: str, z: Any, y: Any, *, binary: bool) -> int:
    """Check per-position loss arguments: z (N, *S, K) logits (K = 1 for binary, which also
    takes z (N, *S)), y (N, *S): int class ids, or 0./1. floats for binary; return K."""
    shape = array(fn, "z", z)
    want = "(N, *S) of 0./1. labels" if binary else "(N, *S) of int class ids"
    y_shape = array(fn, "y", y, None, floating=binary)
    if binary and tuple(y_shape) == tuple(shape):
        shape = (*shape, 1)  # z (N, *S) with y (N, *S): one logit per position
    if len(shape) < 3 or tuple(y_shape) != tuple(shape[:-1]):
        raise ValueError(f"{fn}: z must be (N, *S, K) logits with at least one spatial axis and "
                         f"y {want} with z's leading axes; got z {tuple(z.shape)} and y "
                         f"{tuple(y_shape)}")
    k = shape[-1]
    if binary and k != 1:
        raise ValueError(f"{fn}: binary z needs one logit per position, (N, *S, 1); got "
                         f"{tuple(z.shape)}")
    if not binary and not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{fn}: y must hold int class ids; got {y.dtype}")
    if binary:
        same_dtype(fn, z=z, y=y)
    vals = concrete(y)
    high = 1 if binary else k - 1
    if vals is not None and vals.size and ((vals < 0) | (vals > high)).any():
        what = "labels in [0, 1]" if binary else f"class ids in [0, {k})"
        raise ValueError(f"{fn}: y must hold {what}; got values in [{vals.min()}, {vals.max()}]")
    return k


def example_shape(fn: str, input_shape: Any) -> tuple[int, ...]:
    """Check one example's shape, a tuple of ints >= 1 such as (W, C), (H, W, C) or (D, H, W, C)."""
    if (not isinstance(input_shape, Sequence) or isinstance(input_shape, str)
            or not input_shape or not all(_is_int(d) for d in input_shape)):
        raise TypeError(f"{fn}: input_shape must be one example's shape, a tuple of ints such as "
                        f"(W, C), (H, W, C) or (D, H, W, C); got {input_shape!r}")
    if min(input_shape) < 1:
        raise ValueError(f"{fn}: input_shape must have every size >= 1; got {tuple(input_shape)}")
    return tuple(int(d) for d in input_shape)


def flatten(fn: str, x: Any) -> tuple[int, int]:
    """Check a flatten input (N, d1, d2, ...); return the output shape (N, d1 * d2 * ...)."""
    shape = array(fn, "x", x, None, floating=False)
    if len(shape) < 2:
        raise ValueError(f"{fn}: x must have a batch axis and at least one more; "
                         f"got shape {shape}")
    return shape[0], int(np.prod(shape[1:]))


def targets(fn: str, y_pred: Any, t: Any) -> None:
    """Check a regression loss: y_pred and t floating arrays of one shape and dtype."""
    array(fn, "y_pred", y_pred)
    array(fn, "t", t)
    same_dtype(fn, y_pred=y_pred, t=t)
    shape_is(fn, "t", t, tuple(y_pred.shape), "y_pred")


def batch_norm(fn: str, x: Any, gamma: Any, beta: Any, mean: Any, var: Any) -> None:
    """Check batch-norm arguments: x (N, ..., C); gamma, beta, and mean, var if given, (C,)."""
    shape = array(fn, "x", x)
    if len(shape) < 2:
        raise ValueError(f"{fn}: x must be (N, ..., C) with a batch axis; got shape {shape}")
    if (mean is None) != (var is None):
        raise ValueError(f"{fn}: give both mean and var (evaluation) or neither (training)")
    for name, v in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
        if v is not None:
            array(fn, name, v, 1, "(C,)")
            same_dtype(fn, x=x, **{name: v})
            shape_is(fn, name, v, (shape[-1],), "one value per channel of x")


def spatial(fn: str, name: str, x: Any) -> tuple[int, ...]:
    """Check a channels-last input (N, *spatial, C) with 1, 2 or 3 spatial axes (rank 3 to 5)."""
    shape = array(fn, name, x)
    if not 3 <= len(shape) <= 5:
        raise ValueError(f"{fn}: {name} must be (N, *spatial, C) with 1, 2 or 3 spatial axes "
                         f"(rank 3 to 5); got shape {shape}")
    return shape


def scale(fn: str, value: Any, n_spatial: int) -> tuple[int, ...]:
    """An upsampling factor per spatial axis, ints >= 1: an int means the same on every axis."""
    if _is_int(value):
        value = (value,) * n_spatial
    if (not isinstance(value, Sequence) or isinstance(value, str) or len(value) != n_spatial
            or not all(_is_int(v) for v in value)):
        raise TypeError(f"{fn}: scale must be an int or a tuple of {n_spatial} ints, one per "
                        f"spatial axis of x; got {value!r}")
    if min(value) < 1:
        raise ValueError(f"{fn}: scale must be >= 1 on every axis; got {tuple(value)}")
    _bounds.option(fn, "scale", value)
    return tuple(int(v) for v in value)


def _norm(fn: str, x: Any, gamma: Any, beta: Any, eps: Any) -> tuple[int, ...]:
    """x (N, ..., C) with a batch axis; gamma, beta (C,) in x's dtype; eps a number >= 0."""
    shape = array(fn, "x", x)
    if len(shape) < 2:
        raise ValueError(f"{fn}: x must be (N, ..., C) with a batch axis; got shape {shape}")
    for name, v in (("gamma", gamma), ("beta", beta)):
        array(fn, name, v, 1, "(C,)")
        same_dtype(fn, x=x, **{name: v})
        shape_is(fn, name, v, (shape[-1],), "one value per channel of x")
    if not isinstance(eps, int | float | np.integer | np.floating) or isinstance(eps, bool):
        raise TypeError(f"{fn}: eps must be a Python or NumPy number; got {eps!r}")
    if not eps >= 0:
        raise ValueError(f"{fn}: eps must be >= 0; got {eps}")
    return shape


def group_norm(fn: str, x: Any, gamma: Any, beta: Any, groups: Any, eps: Any) -> int:
    """Check group-norm arguments: x (N, ..., C); gamma, beta (C,); groups an int >= 1 dividing
    C. Returns the channels per group, C // groups."""
    shape = _norm(fn, x, gamma, beta, eps)
    if not _is_int(groups):
        raise TypeError(f"{fn}: groups must be an int; got {groups!r}")
    if groups < 1:
        raise ValueError(f"{fn}: groups must be >= 1; got {groups}")
    if shape[-1] % groups:
        raise ValueError(f"{fn}: groups={groups} must divide the {shape[-1]} channels of x")
    return shape[-1] // int(groups)


def layer_norm(fn: str, x: Any, gamma: Any, beta: Any, eps: Any) -> None:
    """Check layer-norm arguments: x (N, ..., C); gamma, beta (C,)."""
    _norm(fn, x, gamma, beta, eps)


def join(fn: str, a: Any, b: Any, *, along_channels: bool) -> None:
    """Check the two inputs of a join, of one floating dtype: of one shape (`add`), or
    (`along_channels`, `concat`) of one rank >= 2 and the same N and spatial sizes."""
    sa, sb = array(fn, "a", a), array(fn, "b", b)
    same_dtype(fn, a=a, b=b)
    if not along_channels:
        shape_is(fn, "b", b, sa, "a")
        return
    if len(sa) < 2:
        raise ValueError(f"{fn}: a must be (N, ..., C) with a batch axis; got shape {sa}")
    if len(sb) != len(sa) or sb[:-1] != sa[:-1]:
        raise ValueError(f"{fn}: b has shape {sb} but a has shape {sa}; they must agree on "
                         f"every axis but the last (channels): N and the spatial sizes")
    _bounds.elements(fn, "a and b", (*sa[:-1], sa[-1] + sb[-1]), "the output (N, ..., C_a + C_b)")


def upsample(fn: str, x: Any, scale_: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Check an upsampling call: x (N, *spatial, C); return (the scale per spatial axis, the
    output shape (N, *(size * scale), C))."""
    shape = spatial(fn, "x", x)
    factors = scale(fn, scale_, len(shape) - 2)
    out = (shape[0], *(n * s for n, s in zip(shape[1:-1], factors)), shape[-1])
    _bounds.elements(fn, f"scale {factors}", out, "the output (N, *(size * scale), C)")
    return factors, out


# ---------------------------------------------------------------- pooling on 1, 2 or 3 axes
# x (N, *spatial, C). Rank 4 is `pool` itself (its messages unchanged); ranks 3 and 5 get the
# same checks with one entry per spatial axis (`tuple_n`, `padding_n`): (2,) and ((lo, hi),) for
# 1 axis, never (a, b).
def pool_nd(fn: str, x: Any, size: Any, stride: Any, padding_: Padding) -> Window:
    """`pool` for x (N, *spatial, C) with 1, 2 or 3 spatial axes; each field of the Window has
    one entry per spatial axis. An (N, H, W, C) x goes to `pool` unchanged."""
    if len(array(fn, "x", x)) == 4:
        return pool(fn, x, size, stride, padding_)
    in_sp = spatial(fn, "x", x)[1:-1]
    size = tuple_n(fn, "window", size, len(in_sp))
    stride = size if stride is None else tuple_n(fn, "stride", stride, len(in_sp))
    win = window(fn, in_sp, size, stride, (1,) * len(in_sp), padding_, what="window")
    if any(lo >= k or hi >= k for (lo, hi), k in zip(win.pads, size)):
        raise ValueError(f"{fn}: padding {win.pads} must be smaller than the window {size} on "
                         f"each side, so that no window is all padding")
    _bounds.padded(fn, padding_, x.shape, win.pads)
    return win


def window_counts_nd(win: Window, count_include_pad: bool = True) -> np.ndarray:
    """`window_counts` on any number of spatial axes: (1, *O, 1), from static shapes."""
    if count_include_pad:
        return np.full((1, *win.out_hw, 1), int(np.prod(win.size)), np.float64)
    counts = np.ones((), np.int64)
    for n, k, s, (lo, _), o in zip(win.in_hw, win.size, win.stride, win.pads, win.out_hw):
        start = np.arange(o) * s - lo
        counts = np.multiply.outer(counts, np.minimum(start + k, n) - np.maximum(start, 0))
    return counts.astype(np.float64)[None, ..., None]
