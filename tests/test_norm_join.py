"""group_norm, layer_norm, global_avg_pool, upsample_nearest and the joins (add, concat): every
rule against jax.vjp of its forward and central differences, in every transformation, in float32,
against NumPy (and torch, where installed) references, over a hypothesis sweep, and on bad input.

Tolerances (float64 unless said):
  * vs jax.vjp: rtol 1e-9 of the largest entry. The same sums in another order; observed ~1e-15.
  * central differences: |fd - <g, v>| <= 1e-6 * sum|g| max|v| (tests/test_backward.py's bound):
    step 1e-6 gives truncation ~1e-12 and rounding ~1e-16 / 1e-6 = 1e-10 of the function's scale.
  * float32: see F32_RTOL.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxcnn import backward as B  # noqa: N812
from jaxcnn import forward as F  # noqa: N812

from cases import Case, call_args
from helpers import assert_close, central_difference_vjp, rel_err

RTOL_VJP = 1e-9
RTOL_FD = 1e-6


def _norm(op, x, groups=None):
    c = x[-1]
    kw = () if groups is None else (("groups", groups),)
    return Case(f"{op}-{'x'.join(map(str, x))}" + ("" if groups is None else f"-g{groups}"),
                op, (x, (c,), (c,)), kw)


CASES = [
    # group norm: 1, 2, 3 spatial axes and (N, C); groups = 1, = C (instance norm), and between
    _norm("group_norm", (2, 7, 6), 1),
    _norm("group_norm", (2, 7, 6), 3),
    _norm("group_norm", (2, 7, 6), 6),
    _norm("group_norm", (2, 4, 5, 8), 1),
    _norm("group_norm", (2, 4, 5, 8), 2),
    _norm("group_norm", (2, 4, 5, 8), 8),
    _norm("group_norm", (2, 3, 2, 3, 6), 3),
    _norm("group_norm", (3, 6), 2),
    # layer norm
    _norm("layer_norm", (2, 5, 4)),
    _norm("layer_norm", (2, 3, 4, 6)),
    _norm("layer_norm", (2, 2, 3, 2, 5)),
    _norm("layer_norm", (4, 7)),
    # global average pooling
    Case("global_avg_pool-1d", "global_avg_pool", ((2, 7, 3),)),
    Case("global_avg_pool-2d", "global_avg_pool", ((2, 4, 5, 3),)),
    Case("global_avg_pool-3d", "global_avg_pool", ((2, 3, 2, 4, 3),)),
    # upsampling
    Case("upsample-1d-s3", "upsample_nearest", ((2, 4, 3),), (("scale", 3),)),
    Case("upsample-2d-s2", "upsample_nearest", ((2, 3, 4, 2),)),
    Case("upsample-2d-s(1,3)", "upsample_nearest", ((2, 3, 2, 2),), (("scale", (1, 3)),)),
    Case("upsample-3d-s(2,1,3)", "upsample_nearest", ((1, 2, 3, 2, 2),),
         (("scale", (2, 1, 3)),)),
    Case("upsample-2d-s1", "upsample_nearest", ((2, 3, 3, 2),), (("scale", 1),)),
    # joins
    Case("add-2d", "add", ((2, 4, 5, 3), (2, 4, 5, 3))),
    Case("add-3d", "add", ((2, 2, 3, 2, 2), (2, 2, 3, 2, 2))),
    Case("concat-1d", "concat", ((2, 5, 3), (2, 5, 1))),
    Case("concat-2d", "concat", ((2, 4, 3, 2), (2, 4, 3, 5))),
    Case("concat-3d", "concat", ((1, 2, 3, 2, 4), (1, 2, 3, 2, 2))),
]
IDS = [c.id for c in CASES]
# every op under eager, jit, vmap and jit(vmap), on 1 and 3 spatial axes at least once (eager and
# vmap without jit run op by op, each primitive compiled per shape: about a second a case)
TRANSFORMED = [c for c in CASES if c.id in (
    "group_norm-2x7x6-g3", "group_norm-2x3x2x3x6-g3", "layer_norm-2x3x4x6", "layer_norm-4x7",
    "global_avg_pool-1d", "global_avg_pool-3d", "upsample-2d-s(1,3)", "upsample-3d-s(2,1,3)",
    "add-3d", "concat-1d")]

# float32 against the float64 gradient, relative to the largest entry; u = 2^-24 = 6e-8 is
# float32's unit roundoff. Bounds are worst-case counts of roundings (observed errors are 2-25x
# smaller, in brackets):
#   add, concat: copies; the one rounding is dy's to float32, u/2 <= 6e-8 [3e-8].
#   global_avg_pool: dy's rounding and one division, 2u -> 2e-7 [7e-8].
#   upsample_nearest: sums of at most 6 rounded copies, 6u -> 4e-7 [1e-7].
#   group_norm, layer_norm: mean, var and the two means in dx are sums of M <= 160 terms (group
#     norm on (2, 4, 5, 8) with groups = 1), error <= M u = 1e-5 in the worst case [4e-7].
#     jax.vjp's own float32 result is held to the same bound: the rules are no less accurate.
F32_RTOL = {"add": 6e-8, "concat": 6e-8, "global_avg_pool": 2e-7, "upsample_nearest": 4e-7,
            "group_norm": 1e-5, "layer_norm": 1e-5}


def _problem(case, seed=0, dtype=np.float64):
    args = call_args(case, dtype, seed)
    dy = case.cotangent(args, np.float64, seed + 10).astype(dtype)
    return dy, args


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_vjp_and_finite_differences_float64(case):
    dy, args = _problem(case)
    manual = case.jit_manual(dy, *args)
    auto = case.jit_vjp(dy, *args)
    assert len(manual) == len(auto) == len(case.shapes)
    for i, (m, a) in enumerate(zip(manual, auto)):
        assert m.shape == a.shape == np.shape(args[i]) and m.dtype == jnp.float64
        assert_close(m, a, RTOL_VJP, f"{case.id} input {i}")
        scale = np.abs(np.asarray(m)).sum()
        for fd, v in central_difference_vjp(case.jit_forward, args, dy, i, n_dirs=3, seed=i):
            analytic = np.vdot(np.asarray(m), v)
            assert abs(fd - analytic) <= RTOL_FD * max(scale * np.abs(v).max(), 1e-12), (
                case.id, i, fd, analytic)


@functools.cache
def _vmapped(case):
    return jax.vmap(case.manual), jax.jit(jax.vmap(case.manual))


@pytest.mark.parametrize("case", TRANSFORMED, ids=lambda c: c.id)
def test_eager_jit_vmap_jit_vmap_match_vjp(case):
    """Each mode against jax.vjp of the forward (jitted) on every problem; vmap maps an extra
    leading axis of every input (gamma and beta included) and of dy."""
    problems = [_problem(case, seed) for seed in range(3)]
    truth = [case.jit_vjp(dy, *args) for dy, args in problems]
    stacked_dy = jnp.stack([dy for dy, _ in problems])
    stacked = [jnp.stack(a) for a in zip(*(args for _, args in problems))]
    vmap, jit_vmap = _vmapped(case)
    modes = {"eager": [case.manual(dy, *args) for dy, args in problems],
             "jit": [case.jit_manual(dy, *args) for dy, args in problems]}
    for name, out in (("vmap", vmap(stacked_dy, *stacked)),
                      ("jit(vmap)", jit_vmap(stacked_dy, *stacked))):
        modes[name] = [[g[b] for g in out] for b in range(len(problems))]
    for name, results in modes.items():
        for b, (got, want) in enumerate(zip(results, truth)):
            for i, (g, w) in enumerate(zip(got, want)):
                assert_close(g, w, RTOL_VJP, f"{case.id} {name} problem {b} input {i}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float32(case):
    dy64, args64 = _problem(case)
    truth = case.jit_manual(dy64, *args64)
    dy, args = _problem(case, dtype=np.float32)
    manual, auto = case.jit_manual(dy, *args), case.jit_vjp(dy, *args)
    assert case.jit_forward(*args).dtype == jnp.float32
    tol = F32_RTOL[case.op]
    for i, (m, a, t) in enumerate(zip(manual, auto, truth)):
        assert m.dtype == jnp.float32, (case.id, i, m.dtype)
        assert rel_err(m, t) <= tol, f"{case.id} input {i}: manual {rel_err(m, t):.2e}"
        assert rel_err(a, t) <= tol, f"{case.id} input {i}: jax.vjp {rel_err(a, t):.2e}"



@pytest.mark.parametrize("case", list({c.op: c for c in TRANSFORMED}.values()),
                         ids=lambda c: c.op)
def test_bfloat16_accepted(case):
    """bfloat16 in, bfloat16 out, within bfloat16 accuracy of the float64 gradient at the same
    (bfloat16-rounded) inputs: 8 mantissa bits, u = 2^-9 = 2e-3, and a few roundings per entry
    (observed <= 7e-3 for the norms)."""
    dy, args = _problem(case)
    args16 = [jnp.asarray(a, jnp.bfloat16) for a in args]
    dy16 = jnp.asarray(dy, jnp.bfloat16)
    truth = case.jit_manual(jnp.asarray(dy16, jnp.float64),
                            *(jnp.asarray(a, jnp.float64) for a in args16))
    assert case.jit_forward(*args16).dtype == jnp.bfloat16
    for m, t in zip(case.jit_manual(dy16, *args16), truth):
        assert m.dtype == jnp.bfloat16
        assert rel_err(np.asarray(m, np.float64), t) <= 0.05


# ----------------------------------------------------------------------------- references
def group_norm_ref(x, gamma, beta, groups, eps=1e-5):
    """torch's F.group_norm, written in NumPy on channels-first x: (N, C, *S) -> (N, G, -1),
    biased variance per row; then back to channels-last."""
    xc = np.moveaxis(np.asarray(x), -1, 1)
    rows = xc.reshape(xc.shape[0], groups, -1)
    mean = rows.mean(-1, keepdims=True)
    var = rows.var(-1, keepdims=True)  # ddof=0: biased
    xn = ((rows - mean) / np.sqrt(var + eps)).reshape(xc.shape)
    bshape = (1, -1) + (1,) * (xc.ndim - 2)
    return np.moveaxis(xn * gamma.reshape(bshape) + beta.reshape(bshape), 1, -1)


def layer_norm_ref(x, gamma, beta, eps=1e-5):
    """torch's F.layer_norm(x, (C,)): over the last axis, biased variance."""
    x = np.asarray(x)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def upsample_ref(x, factors):
    """torch's nearest rule with an integer scale: output index i reads input index i // s."""
    x = np.asarray(x)
    for axis, s in enumerate(factors, start=1):
        x = np.take(x, np.arange(x.shape[axis] * s) // s, axis=axis)
    return x


def _ref_forward(case, args):
    kw, a = case.options, [np.asarray(v) for v in args]
    return {
        "group_norm": lambda: group_norm_ref(*a, kw.get("groups")),
        "layer_norm": lambda: layer_norm_ref(*a),
        "global_avg_pool": lambda: a[0].mean(tuple(range(1, a[0].ndim - 1))),
        "upsample_nearest": lambda: upsample_ref(a[0], _factors(kw.get("scale", 2), a[0].ndim)),
        "add": lambda: a[0] + a[1],
        "concat": lambda: np.concatenate(a, -1),
    }[case.op]()


def _factors(scale, ndim):
    return (scale,) * (ndim - 2) if isinstance(scale, int) else scale


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_matches_numpy_reference(case):
    args = call_args(case)
    assert_close(case.jit_forward(*args), _ref_forward(case, args), 1e-12, case.id)


def test_group_norm_groups_c_is_instance_norm_and_groups_1_is_per_example():
    _, (x, gamma, beta) = _problem(CASES[5])  # (2, 4, 5, 8), groups=8
    inst = (x - x.mean((1, 2), keepdims=True)) / jnp.sqrt(x.var((1, 2), keepdims=True) + 1e-5)
    assert_close(F.group_norm(x, gamma, beta, groups=8), inst * gamma + beta, 1e-12, "groups=C")
    whole = (x - x.mean((1, 2, 3), keepdims=True)) / jnp.sqrt(x.var((1, 2, 3), keepdims=True)
                                                             + 1e-5)
    assert_close(F.group_norm(x, gamma, beta, groups=1), whole * gamma + beta, 1e-12, "groups=1")


# ----------------------------------------------------------------------------- hypothesis sweep
@functools.cache
def _rules(op, kw):
    """One jitted function per op and options giving (y, manual rule, jax.vjp of the forward):
    one compile per input shape (jit's cache), shared by the three."""
    case = Case(op, op, (), kw)

    def all_three(dy, *args):
        y, pullback = jax.vjp(case.forward, *args)
        return y, case.manual(dy, *args), pullback(dy)

    return case.forward, jax.jit(all_three)


def _check(op, kw, args, seed):
    forward, all_three = _rules(op, kw)
    out = jax.eval_shape(forward, *args)  # the output's shape, without compiling
    dy = np.random.default_rng(seed).standard_normal(out.shape)
    y, manual, auto = all_three(dy, *args)
    for i, (m, a) in enumerate(zip(manual, auto)):
        assert_close(m, a, RTOL_VJP, f"{op} {kw} {[np.shape(v) for v in args]} input {i}")
    return y


SPATIAL = st.lists(st.integers(1, 4), min_size=1, max_size=3)


@settings(max_examples=50)
@given(n=st.integers(1, 2), spatial=SPATIAL, groups=st.sampled_from([1, 2, 3]),
       per_group=st.integers(1, 3), layer=st.booleans(), seed=st.integers(0, 2**16))
def test_sweep_norms(n, spatial, groups, per_group, layer, seed):
    """group_norm over random shapes and groups (1 element per slice included, where var = 0),
    layer_norm on the same shapes: the rules against jax.vjp, the forwards against NumPy."""
    rng = np.random.default_rng(seed)
    c = groups * per_group
    x, gamma, beta = (rng.standard_normal(s) for s in ((n, *spatial, c), (c,), (c,)))
    if layer:
        y = _check("layer_norm", (), (x, gamma, beta), seed)
        assert_close(y, layer_norm_ref(x, gamma, beta), 1e-12, "layer_norm forward")
    else:
        y = _check("group_norm", (("groups", groups),), (x, gamma, beta), seed)
        assert_close(y, group_norm_ref(x, gamma, beta, groups), 1e-12, "group_norm forward")


@settings(max_examples=50)
@given(spatial=SPATIAL, c=st.integers(1, 3), data=st.data(), op=st.sampled_from(
    ["upsample_nearest", "global_avg_pool", "concat", "add"]), seed=st.integers(0, 2**16))
def test_sweep_pool_upsample_joins(spatial, c, data, op, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, *spatial, c))
    kw, args = (), (x,)
    if op == "upsample_nearest":
        factors = data.draw(st.lists(st.integers(1, 3), min_size=len(spatial),
                                     max_size=len(spatial)))
        scale = factors[0] if len(set(factors)) == 1 else tuple(factors)
        kw = (("scale", scale),)
    elif op in ("concat", "add"):
        c_b = data.draw(st.integers(1, 3)) if op == "concat" else c
        args = (x, rng.standard_normal((2, *spatial, c_b)))
    y = _check(op, kw, args, seed)
    case = Case(op, op, tuple(np.shape(a) for a in args), kw)
    assert_close(y, _ref_forward(case, args), 1e-12, f"{op} forward")


# ----------------------------------------------------------------------------- bad input
x8 = np.zeros((2, 4, 4, 8))
c8 = np.ones(8)
x3 = np.zeros((2, 3, 3, 3))

BAD = [
    ("gn-groups-divide", lambda: F.group_norm(x8, c8, c8, groups=3), ValueError,
     "group_norm: groups=3 must divide the 8 channels of x"),
    ("gn-groups-zero", lambda: F.group_norm(x8, c8, c8, groups=0), ValueError,
     "group_norm: groups must be >= 1; got 0"),
    ("gn-groups-type", lambda: F.group_norm(x8, c8, c8, groups=2.0), TypeError,
     "group_norm: groups must be an int; got 2.0"),
    ("gn-groups-bool", lambda: F.group_norm(x8, c8, c8, groups=True), TypeError,
     "groups must be an int; got True"),
    ("gn-gamma-shape", lambda: F.group_norm(x8, np.ones(4), c8, groups=2), ValueError,
     "group_norm: gamma has shape (4,) but one value per channel of x has shape (8,)"),
    ("gn-beta-rank", lambda: F.group_norm(x8, c8, np.ones((8, 1)), groups=2), ValueError,
     "group_norm: beta must be a 1-D array (C,); got shape (8, 1)"),
    ("gn-x-rank", lambda: F.group_norm(c8, c8, c8, groups=2), ValueError,
     "group_norm: x must be (N, ..., C) with a batch axis; got shape (8,)"),
    ("gn-dtype-mix", lambda: F.group_norm(x8, c8.astype(np.float32), c8, groups=2), TypeError,
     "group_norm: x is float64, gamma is float32"),
    ("gn-eps-negative", lambda: F.group_norm(x8, c8, c8, groups=2, eps=-1e-5), ValueError,
     "group_norm: eps must be >= 0; got -1e-05"),
    ("gn-eps-type", lambda: F.group_norm(x8, c8, c8, groups=2, eps="1e-5"), TypeError,
     "group_norm: eps must be a Python or NumPy number"),
    ("gn-x-int", lambda: F.group_norm(x8.astype(np.int32), c8, c8, groups=2), TypeError,
     "group_norm: x must have a floating-point dtype; got int32"),
    ("gn-dy-shape", lambda: B.group_norm(x8[:1], x8, c8, c8, groups=2), ValueError,
     "backward.group_norm: dy has shape (1, 4, 4, 8) but x has shape (2, 4, 4, 8)"),
    ("gn-backward-groups", lambda: B.group_norm(x8, x8, c8, c8, groups=5), ValueError,
     "backward.group_norm: groups=5 must divide the 8 channels of x"),
    ("ln-gamma-shape", lambda: F.layer_norm(x8, np.ones(3), c8), ValueError,
     "layer_norm: gamma has shape (3,) but one value per channel of x has shape (8,)"),
    ("ln-not-array", lambda: F.layer_norm(x8.tolist(), c8, c8), TypeError,
     "layer_norm: x must be a JAX or NumPy array; got list"),
    ("ln-dy-dtype", lambda: B.layer_norm(x8.astype(np.float32), x8, c8, c8), TypeError,
     "backward.layer_norm: dy is float32, x is float64"),
    ("gap-rank-2", lambda: F.global_avg_pool(np.zeros((2, 3))), ValueError,
     "global_avg_pool: x must be (N, *spatial, C) with 1, 2 or 3 spatial axes (rank 3 to 5); got "
     "shape (2, 3)"),
    ("gap-rank-6", lambda: F.global_avg_pool(np.zeros((1, 2, 2, 2, 2, 1))), ValueError,
     "rank 3 to 5); got shape (1, 2, 2, 2, 2, 1)"),
    ("gap-dy-shape", lambda: B.global_avg_pool(np.zeros((2, 4)), x3), ValueError,
     "backward.global_avg_pool: dy has shape (2, 4) but the forward output has shape (2, 3)"),
    ("up-scale-zero", lambda: F.upsample_nearest(x3, scale=0), ValueError,
     "upsample_nearest: scale must be >= 1 on every axis; got (0, 0)"),
    ("up-scale-float", lambda: F.upsample_nearest(x3, scale=1.5), TypeError,
     "upsample_nearest: scale must be an int or a tuple of 2 ints, one per spatial axis of x; got "
     "1.5"),
    ("up-scale-length", lambda: F.upsample_nearest(x3, scale=(2, 2, 2)), TypeError,
     "scale must be an int or a tuple of 2 ints"),
    ("up-scale-bool", lambda: F.upsample_nearest(x3, scale=True), TypeError, "got True"),
    ("up-scale-negative", lambda: F.upsample_nearest(x3, scale=(2, -1)), ValueError,
     "scale must be >= 1 on every axis; got (2, -1)"),
    ("up-x-rank", lambda: F.upsample_nearest(np.zeros((2, 3))), ValueError,
     "upsample_nearest: x must be (N, *spatial, C) with 1, 2 or 3 spatial axes"),
    ("up-dy-shape", lambda: B.upsample_nearest(x3, x3), ValueError,
     "backward.upsample_nearest: dy has shape (2, 3, 3, 3) but the forward output has shape (2, "
     "6, 6, 3)"),
    ("add-shapes", lambda: F.add(x3, x3[:, :2]), ValueError,
     "add: b has shape (2, 2, 3, 3) but a has shape (2, 3, 3, 3)"),
    ("add-dtypes", lambda: F.add(x3, x3.astype(np.float32)), TypeError,
     "add: a is float64, b is float32"),
    ("add-dy-shape", lambda: B.add(x3[0], x3, x3), ValueError,
     "backward.add: dy must be a 4-D array"),
    ("concat-n", lambda: F.concat(x3, x3[:1]), ValueError,
     "concat: b has shape (1, 3, 3, 3) but a has shape (2, 3, 3, 3); they must agree on every "
     "axis but the last (channels): N and the spatial sizes"),
    ("concat-spatial", lambda: F.concat(x3, x3[:, :, :2]), ValueError,
     "concat: b has shape (2, 3, 2, 3) but a has shape (2, 3, 3, 3)"),
    ("concat-rank", lambda: F.concat(x3, x3[..., 0]), ValueError,
     "concat: b has shape (2, 3, 3) but a has shape (2, 3, 3, 3)"),
    ("concat-a-rank", lambda: F.concat(np.zeros(3), np.zeros(3)), ValueError,
     "concat: a must be (N, ..., C) with a batch axis; got shape (3,)"),
    ("concat-b-int", lambda: F.concat(x3, x3.astype(np.int32)), TypeError,
     "concat: b must have a floating-point dtype; got int32"),
    ("concat-dy-shape", lambda: B.concat(x3, x3, x3), ValueError,
     "backward.concat: dy has shape (2, 3, 3, 3) but the forward output has shape (2, 3, 3, 6)"),
]


@pytest.mark.parametrize("fn, exc, message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_names_the_argument(fn, exc, message):
    with pytest.raises(exc, match=re.escape(message)):
        fn()


def test_errors_come_from_python_under_jit_and_vmap():
    with pytest.raises(ValueError, match=re.escape("groups=3 must divide the 8 channels of x")):
        jax.jit(functools.partial(B.group_norm, groups=3))(x8, x8, c8, c8)
    with pytest.raises(ValueError, match=re.escape("concat: b has shape (3, 2, 3)")):
        jax.vmap(F.concat)(jnp.asarray(x3), jnp.asarray(x3[:, :, :2]))
