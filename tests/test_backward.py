"""Every manual backward rule against jax.vjp and central differences (float64), and in float32.

Tolerances:
  * float64 vs jax.vjp: rtol 1e-9 (of the largest gradient entry). Both sides compute the same sums
    in a different order; the observed error is ~1e-15.
  * float64 vs central differences: rtol 1e-6. With step 1e-6 the truncation error is ~1e-12 and
    the rounding error ~1e-16 / 1e-6 = 1e-10 of the function's scale.
  * float32: rtol 2e-5 against the float64 result. float32's unit roundoff is 6e-8 and the largest
    gradient entries here sum up to ~300 products, so accumulated rounding can reach
    ~300 * 6e-8 = 1.8e-5 of the largest term in the worst case (typically ~sqrt(300) times less).
    jax.vjp's own float32 result is held to the same bound, so the test shows the manual rule is
    no less accurate than autodiff.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import backward, fast

from cases import ALL, CONV, CONVOLVE, call_args
from helpers import assert_close, rel_err

IDS = [c.id for c in ALL]


def _f64(case):
    args = call_args(case, np.float64)
    dy = case.cotangent(args, np.float64)
    return args, dy


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_matches_vjp_float64(case):
    args, dy = _f64(case)
    manual = case.jit_manual(dy, *args)
    auto = case.jit_vjp(dy, *args)
    assert len(manual) == len(auto)
    for i, (m, a) in enumerate(zip(manual, auto)):
        assert m.shape == a.shape and m.dtype == a.dtype == jnp.float64
        assert_close(m, a, 1e-9, f"{case.id} input {i}")


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_central_differences_float64(case):
    """<dx, v> equals (<dy, f(x + eps v)> - <dy, f(x - eps v)>) / (2 eps) for random v."""
    args, dy = _f64(case)
    manual = case.jit_manual(dy, *args)
    n = len(case.shapes)
    eps = 1e-6
    rng = np.random.default_rng(7)
    for i in range(n):
        for _ in range(3):
            v = rng.standard_normal(np.shape(args[i]))
            plus, minus = list(args), list(args)
            plus[i] = args[i] + eps * v
            minus[i] = args[i] - eps * v
            fd = (np.vdot(dy, case.jit_forward(*plus)) - np.vdot(dy, case.jit_forward(*minus)))
            fd /= 2 * eps
            analytic = np.vdot(manual[i], v)
            scale = max(np.abs(np.asarray(manual[i])).sum() * np.abs(v).max(), 1e-12)
            assert abs(fd - analytic) <= 1e-6 * scale, (case.id, i, fd, analytic)


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_float32(case):
    args64, dy64 = _f64(case)
    truth = case.jit_manual(dy64, *args64)
    args = call_args(case, np.float32)
    dy = np.asarray(dy64, np.float32)
    manual = case.jit_manual(dy, *args)
    auto = case.jit_vjp(dy, *args)
    for i, (m, a, t) in enumerate(zip(manual, auto, truth)):
        assert m.dtype == jnp.float32, (case.id, i, m.dtype)
        err_manual, err_auto = rel_err(m, t), rel_err(a, t)
        assert err_manual <= 2e-5, f"{case.id} input {i}: manual f32 error {err_manual:.2e}"
        assert err_auto <= 2e-5, f"{case.id} input {i}: jax.vjp f32 error {err_auto:.2e}"


@pytest.mark.parametrize("case", [c for c in ALL if c.op in ("conv2d", "max_pool", "dense",
                                                            "relu", "avg_pool", "sigmoid")],
                         ids=lambda c: c.id)
def test_bfloat16_accepted(case):
    """bfloat16 in, bfloat16 out, within bfloat16 accuracy of the float64 gradient taken at the
    same (bfloat16-rounded) inputs, so that max pooling routes to the same elements."""
    args = call_args(case, jnp.bfloat16)
    dy = jnp.asarray(_f64(case)[1], jnp.bfloat16)
    manual = case.jit_manual(dy, *args)
    truth = case.jit_manual(jnp.asarray(dy, jnp.float64), *(jnp.asarray(a, jnp.float64)
                                                             for a in args))
    for m, t in zip(manual, truth):
        assert m.dtype == jnp.bfloat16
        # 8 mantissa bits: unit roundoff 2^-9 = 2e-3; sums of up to ~100 products rounded in
        # bfloat16 stay within a few percent of the largest entry
        assert rel_err(np.asarray(m, np.float64), t) <= 0.05


@pytest.mark.parametrize("impl", ["gemm", "auto", "auto-per-example"])
@pytest.mark.parametrize("case", CONV + CONVOLVE, ids=lambda c: c.id)
def test_conv_formulations_match_vjp(case, impl):
    """The GEMM formulation (and the per-shape choice "auto") pass the same cross-checks as the
    default: float64 against jax.vjp at 1e-9, float32 against float64 at 2e-5."""
    args, dy = _f64(case)
    rule = "auto" if impl == "auto-per-example" else impl
    fn = jax.jit(lambda dy, x, w: getattr(backward, case.op)(dy, x, w, **case.options,
                                                              impl=rule))
    auto = case.jit_vjp(dy, *args)
    # "auto-per-example": the auto rule as per_example_grads traces it
    with fast.per_example_rule() if impl == "auto-per-example" else contextlib.nullcontext():
        got64 = fn(dy, *args[:2])
        args32 = call_args(case, np.float32)
        got32 = fn(np.asarray(dy, np.float32), *args32[:2])
    for i, (m, a) in enumerate(zip(got64, auto)):
        assert m.dtype == jnp.float64
        assert_close(m, a, 1e-9, f"{case.id} {impl} input {i}")
    for i, (m, t) in enumerate(zip(got32, auto)):
        assert m.dtype == jnp.float32 and rel_err(m, t) <= 2e-5, (case.id, impl, i)


def test_computed_once_is_exact_and_a_product():
    """fast.products.computed_once returns y bit for bit (finite y) and, on the CPU, as a product
    XLA will not fuse into its consumers (the barrier the broadcast forms rely on)."""
    from jaxcnn import fast
    for dtype in (np.float32, np.float64):
        y = np.random.default_rng(0).normal(size=(3, 5, 5, 6)).astype(dtype) * 1e3
        y[0, 0, 0] = 0.0
        once = jax.jit(fast.products.computed_once)
        np.testing.assert_array_equal(np.asarray(once(y)), y)
        hlo = once.lower(y).compile().as_text()
        assert ("dot(" in hlo or "dot_general" in hlo) == (jax.default_backend() == "cpu")
