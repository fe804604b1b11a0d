"""jaxcnn.tools.bench_dp on a tiny network: every program compiles and runs, the figures are
there, and the vmap(jax.grad) + clip step it races against computes what the DP step computes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.nn import models
from jaxcnn.tools import bench_dp
from jaxcnn.training import dp, optim


def test_bench_dp_tiny():
    result = bench_dp.run((("cnn1d", 8),), rounds=1)
    net = result["networks"][0]
    assert set(net["variants"]) == {"step", "dp", "dp[ghost]", "dp[instantiate]", "vmap_clip",
                                    "norms", "batch_grad"}
    for v in net["variants"].values():
        assert v["median_ms"] > 0 and v["compile_s"] > 0
    for r in ("dp_vs_step", "dp_vs_vmap_clip", "norms_vs_batch_grad"):
        assert net["ratios"][r]["median"] > 0
    text = bench_dp.to_markdown(result)
    assert "### cnn1d, batch 8" in text and "dp_vs_vmap_clip" in text


def test_the_vmap_clip_baseline_is_the_same_dp_step():
    """float64: the baseline and the DP step give the same params from the same key."""
    model = models.cnn1d(input_shape=(16, 1))
    rng = np.random.default_rng(0)
    params = model.init(jax.random.key(0), jnp.float64)
    x = jnp.asarray(rng.standard_normal((6, 16, 1)))
    y = jnp.asarray(rng.integers(0, 4, 6))
    mask = jnp.ones((6,))
    opt = optim.make_optimizer("sgd", 0.1)
    key = jax.random.key(4)
    ours = dp.make_dp_train_step(model, opt, clip_norm=0.2, noise_multiplier=1.1,
                                 expected_batch_size=6)
    base = bench_dp.vmap_clip_step(model, opt, 0.2, 1.1, 6)
    a = ours(params, {}, opt.init(params), (x, y, mask), key)[0]
    # the DP step splits its key into (noise, dropout): give the baseline the noise key
    b = base(params, {}, opt.init(params), (x, y, mask), jax.random.split(key)[0])[0]
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-14)
