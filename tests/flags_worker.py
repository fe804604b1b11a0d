"""Compute every case's manual gradients in float64 and save them: `python flags_worker.py OUT`.

Run by tests/test_xla_flags.py in a fresh process whose XLA_FLAGS it controls.
"""

import sys

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from cases import ALL, call_args  # noqa: E402


def gradients() -> dict[str, np.ndarray]:
    out = {}
    for case in ALL:
        args = call_args(case, np.float64)
        dy = case.cotangent(args, np.float64)
        for i, g in enumerate(case.jit_manual(dy, *args)):
            out[f"{case.id}/{i}"] = np.asarray(g)
    return out


if __name__ == "__main__":
    np.savez(sys.argv[1], **gradients())
