"""DP-SGD on forced CPU devices vs one device: `python dp_worker.py` prints one JSON object.

Run by tests/test_dp.py in a fresh process whose XLA_FLAGS add
`--xla_force_host_platform_device_count=8`. float64; the test asserts on the numbers.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from jaxcnn.nn import grads, models  # noqa: E402
from jaxcnn.training import dp, optim, parallel  # noqa: E402

STEPS, ROWS = 3, 16


def max_rel(a, b) -> float:
    return max(r.max_rel for r in grads.compare(a, b))


def main() -> None:
    model = models.cnn1d(input_shape=(16, 1))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((ROWS, 16, 1)))
    y = jnp.asarray(rng.integers(0, 4, ROWS))
    mask = jnp.asarray((np.arange(ROWS) < 13).astype(np.float64))
    opt = optim.make_optimizer("adam", 1e-2)
    kw = dict(clip_norm=0.3, noise_multiplier=1.1, expected_batch_size=12.0)
    results = {"devices": len(jax.devices())}
    runs = {}
    for devices in (1, 8):
        mesh = parallel.make_mesh(devices) if devices > 1 else None
        step = dp.make_dp_train_step(model, opt, mesh=mesh, **kw)
        params = model.init(jax.random.key(0), jnp.float64)
        opt_state = opt.init(params)
        if mesh is not None:
            params, opt_state = parallel.replicate((params, opt_state), mesh)
        for t in range(STEPS):
            params, _, opt_state, m = step(params, {}, opt_state, (x, y, mask),
                                           jax.random.key(t))
        runs[devices] = (jax.device_get(params), {k: float(v) for k, v in m.items()
                                                  if k != "layer_grad_norms"})
    results["params_rel"] = max_rel(runs[8][0], runs[1][0])
    results["loss_rel"] = abs(runs[8][1]["loss"] - runs[1][1]["loss"]) / abs(runs[1][1]["loss"])
    results["metrics_8"] = runs[8][1]
    step8 = dp.make_dp_train_step(model, opt, mesh=parallel.make_mesh(8), **kw)
    try:
        step8(params, {}, opt_state, (x[:12], y[:12], mask[:12]), jax.random.key(0))
        results["indivisible"] = "no error"
    except ValueError as e:
        results["indivisible"] = str(e)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
