"""Every backward rule gives the same result eagerly, under jit, vmap (per-example) and jit(vmap).

"Same" is rtol 1e-13 in float64: XLA may fuse and reorder a few floating-point operations
differently in each mode, which moves the last bits but nothing more.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cases import ALL, call_args
from helpers import assert_close

B = 3  # problems stacked along a new leading axis for vmap


@functools.cache
def _vmapped(case):
    return jax.vmap(case.manual), jax.jit(jax.vmap(case.manual))


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_eager_jit_vmap_agree(case):
    problems = []
    for seed in range(B):
        args = call_args(case, np.float64, seed)
        problems.append((case.cotangent(args, np.float64, seed + 10), args))
    eager = [case.manual(dy, *args) for dy, args in problems]
    jitted = [case.jit_manual(dy, *args) for dy, args in problems]
    stacked_dy = jnp.stack([dy for dy, _ in problems])
    stacked_args = [jnp.stack(a) for a in zip(*(args for _, args in problems))]
    vmap, jit_vmap = _vmapped(case)
    for name, batched in [("vmap", vmap(stacked_dy, *stacked_args)),
                          ("jit(vmap)", jit_vmap(stacked_dy, *stacked_args))]:
        for b in range(B):
            for i, g in enumerate(batched):
                assert_close(g[b], eager[b][i], 1e-13, f"{case.id} {name} problem {b} out {i}")
    for b in range(B):
        for i, g in enumerate(jitted[b]):
            assert_close(g, eager[b][i], 1e-13, f"{case.id} jit problem {b} out {i}")
