"""Differentially private SGD (Abadi et al. 2016) with the hand-written clipped gradients, Poisson
sampling and Google's `dp-accounting`.

    step = make_dp_train_step(model, optimizer, clip_norm=1.0, noise_multiplier=1.1,
                              expected_batch_size=256)
    params, state, opt_state, metrics = step(params, state, opt_state, (x, y, mask), key)

Each step takes a Poisson sample of the training set (every example in with probability q,
independently: what the accountant's `PoissonSampledDpEvent` assumes), padded to a fixed size
with `mask` 0 rows so that one program serves every step; the gradient is

    g = (1/B) [ sum_i mask_i min(1, C / ||grad l_i||) grad l_i  +  N(0, (sigma C)^2 I) ]

with B = q n the EXPECTED batch size (not the sample's size, which would leak it), C the clip
norm and sigma the noise multiplier: the clipped sum from `jaxcnn.training.per_example`'s ghost
norms and one re-weighted backward pass, the noise drawn from the step's key. Any optax
optimizer then updates the params. With a mesh, each device clips its shard, the sums are
`psum`med, and the noise is drawn from the same replicated key on every device, so it is added
once and identically everywhere.

Privacy: `epsilon(noise_multiplier, sample_rate, steps, delta)` composes
`PoissonSampledDpEvent(q, GaussianDpEvent(sigma))` over the steps with the RDP (default) or PLD
accountant of dp-accounting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxcnn.nn.network import Network
from jaxcnn.training.per_example import check_clip_norm, clipped_sum, refuse_batchnorm
from jaxcnn.training.steps import guarded_update, jit_with_options, layer_norms

Array = jax.Array
ACCOUNTANTS = ("rdp", "pld")


# ----------------------------------------------------------------------------- checks
def check_dp(fn: str, clip_norm: Any, noise_multiplier: Any, delta: Any = None) -> None:
    """clip_norm > 0, noise_multiplier >= 0, delta in (0, 1) when given: ValueErrors naming them."""
    check_clip_norm(fn, clip_norm)
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, int | float) \
            or not noise_multiplier >= 0 or math.isinf(noise_multiplier):
        raise ValueError(f"{fn}: noise_multiplier (sigma) must be a finite number >= 0; got "
                         f"{noise_multiplier!r}")
    if delta is not None and (isinstance(delta, bool) or not isinstance(delta, int | float)
                              or not 0 < delta < 1):
        raise ValueError(f"{fn}: delta must be in (0, 1); got {delta!r}")


def check_run_settings(clip: Any, noise: Any, delta: Any, grad: str) -> None:
    """The DP settings of a run (`jaxcnn train --dp-clip C --dp-noise sigma --dp-delta d`): both
    or neither of clip and noise, valid values, and the manual gradients."""
    if (clip is None) != (noise is None):
        raise ValueError("--dp-clip and --dp-noise go together (DP-SGD needs both)")
    if clip is not None:
        check_dp("--dp", clip, noise, delta)
        if grad != "manual":
            raise ValueError("--dp-clip: DP-SGD clips with the hand-written per-example norms; "
                             "use --grad manual")


def privacy_record(noise: float, sample_rate: float, steps: int, delta: float) -> dict:
    """{"epsilon": ..., "dp_delta": delta} after `steps` steps (RDP), for metrics.jsonl."""
    return {"epsilon": epsilon(noise, sample_rate, steps, delta), "dp_delta": delta}


# ----------------------------------------------------------------------------- accounting
def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, *,
            accountant: str = "rdp") -> float:
    """epsilon of `steps` Poisson-sampled Gaussian steps at `delta` (dp-accounting).

    Args:
      noise_multiplier: sigma (the noise std over the clip norm), > 0.
      sample_rate: q, each example's probability of being in a batch, in (0, 1].
      steps: the number of steps taken, >= 0.
      delta: in (0, 1).
      accountant: "rdp" (dp_accounting.rdp.RdpAccountant) or "pld" (pld.PLDAccountant).

    Returns:
      epsilon (0 after no steps, inf without noise).
    """
    check_dp("epsilon", 1.0, noise_multiplier, delta)
    if not 0 < sample_rate <= 1:
        raise ValueError(f"epsilon: sample_rate must be in (0, 1]; got {sample_rate!r}")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"epsilon: accountant must be one of {', '.join(ACCOUNTANTS)}; got "
                         f"{accountant!r}")
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    import dp_accounting  # here: only DP runs need it

    event = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
        sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)), int(steps))
    acc = dp_accounting.rdp.RdpAccountant() if accountant == "rdp" else \
        dp_accounting.pld.PLDAccountant()
    return float(acc.compose(event).get_epsilon(delta))


# ----------------------------------------------------------------------------- sampling
def padded_size(expected: float, multiple: int = 1) -> int:
    """The fixed batch size Poisson samples are padded to: B + 6 sqrt(B) + 8, which a sample of
    mean B (and variance <= B) exceeds with probability below 1e-9, rounded up to a multiple
    of `multiple` (the devices the sample is split over)."""
    size = math.ceil(expected + 6 * math.sqrt(expected) + 8)
    return -(-size // multiple) * multiple


def poisson_batches(n: int, sample_rate: float, steps: int, *, seed: int = 0,
                    start: int = 0, multiple: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For steps start..steps-1: (indices (S,), mask (S,)) with S = padded_size(q n, multiple);
    every example is in step t's sample with probability q, independently (NumPy, seeded by
    (seed, t): a resumed run draws the same samples). Padding rows repeat index 0, mask 0.

    Raises:
      RuntimeError: a sample larger than S (probability < 1e-9 per step), never truncated.
    """
    size = padded_size(sample_rate * n, multiple)
    for t in range(start, steps):
        rng = np.random.default_rng((seed, t))
        idx = np.flatnonzero(rng.random(n) < sample_rate)
        if len(idx) > size:
            raise RuntimeError(f"poisson_batches: step {t} sampled {len(idx)} examples, more "
                               f"than the padded size {size}; not truncating (it would change "
                               f"the privacy analysis)")
        mask = np.zeros(size, np.float32)
        mask[:len(idx)] = 1
        yield np.concatenate([idx, np.zeros(size - len(idx), idx.dtype)]), mask


# ----------------------------------------------------------------------------- the step
def _noisy_mean(g_sum: Any, key: Array, clip_norm: float, noise_multiplier: float,
                batch: float) -> Any:
    """(g_sum + N(0, (sigma C)^2 I)) / B, one normal draw per leaf from `key`."""
    leaves, tree = jax.tree.flatten(g_sum)
    keys = jax.random.split(key, len(leaves))
    noisy = [(v + noise_multiplier * clip_norm * jax.random.normal(k, v.shape, v.dtype)) / batch
             for v, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, noisy)


def dp_step_fn(model: Network, optimizer: optax.GradientTransformation, *, clip_norm: float,
               noise_multiplier: float, expected_batch_size: float, method: str = "auto",
               axis_name: str | None = None) -> Callable:
    """The pure DP-SGD step `(params, state, opt_state, (x, y, mask), key) -> (params, state,
    opt_state, metrics)`; x (S, ...), y (S, ...) a padded Poisson sample, mask (S,) 1. for its
    real rows. Inside `shard_map` over `axis_name`, each device passes its shard and the sums
    are taken over the axis. metrics: "loss" and "accuracy" over the real rows, "grad_norm" of
    the noisy gradient, "clipped" (the fraction of real rows that were clipped), "examples"
    (the sample's size), "finite" (a non-finite step keeps the old state)."""
    check_dp("dp_step_fn", clip_norm, noise_multiplier)
    refuse_batchnorm("DP-SGD", model)

    def total(v):
        return v if axis_name is None else lax.psum(v, axis_name)

    def step(params, state, opt_state, batch, key):
        x, y, mask = batch
        noise_key, drop_key = jax.random.split(key)
        if axis_name is not None:
            drop_key = jax.random.fold_in(drop_key, lax.axis_index(axis_name))
        out = clipped_sum(model, params, x, y, mask=mask, clip_norm=clip_norm, key=drop_key,
                          method=method)
        g = _noisy_mean(total(out["grads"]), noise_key, clip_norm, noise_multiplier,
                        expected_batch_size)  # the same key on every device: one noise draw
        count = total(jnp.sum(mask))
        loss = total(out["loss_sum"]) / jnp.maximum(count, 1)
        (params, state, opt_state), grad_norm, finite = guarded_update(
            optimizer, (params, state, opt_state), state, loss, g)
        metrics = {"loss": loss, "accuracy": total(out["correct"]) / jnp.maximum(count, 1),
                   "grad_norm": grad_norm, "layer_grad_norms": layer_norms(g),
                   "examples": count, "finite": finite,
                   "clipped": total(out["clipped"]) / jnp.maximum(count, 1)}
        return params, state, opt_state, metrics

    return step


def make_dp_train_step(model: Network, optimizer: optax.GradientTransformation, *,
                       clip_norm: float, noise_multiplier: float, expected_batch_size: float,
                       method: str = "auto", mesh: Mesh | None = None) -> Callable:
    """`dp_step_fn` jitted; with a mesh (axis "data", `jaxcnn.training.parallel.make_mesh`),
    the sample is split over its devices (its padded size must divide by their number) and
    params, state, optimizer state and key are replicated."""
    if mesh is None:
        return jit_with_options(dp_step_fn(model, optimizer, clip_norm=clip_norm,
                                           noise_multiplier=noise_multiplier,
                                           expected_batch_size=expected_batch_size,
                                           method=method))
    axis = "data"
    local = dp_step_fn(model, optimizer, clip_norm=clip_norm, noise_multiplier=noise_multiplier,
                       expected_batch_size=expected_batch_size, method=method, axis_name=axis)
    sharded = jax.shard_map(lambda p, s, o, x, y, m, k: local(p, s, o, (x, y, m), k), mesh=mesh,
                            in_specs=(P(), P(), P(), P(axis), P(axis), P(axis), P()),
                            out_specs=(P(), P(), P(), P()))
    devices = mesh.shape[axis]

    def step(params, state, opt_state, batch, key):
        x, y, mask = batch
        if x.shape[0] % devices:
            raise ValueError(f"DP-SGD: the padded sample of {x.shape[0]} rows is not divisible "
                             f"by the {devices} devices of the mesh")
        return sharded(params, state, opt_state, x, y, mask, key)

    return jit_with_options(step)


def epoch_samples(x: Any, y: Any, batch_size: int, steps_per_epoch: int, epoch: int, *,
                  seed: int, multiple: int = 1) -> Iterator[tuple[Any, Any, np.ndarray]]:
    """The run loop's DP batches for one epoch: (x[idx] (S, ...), y[idx] (S, ...), mask (S,)),
    S the padded size, for steps
    epoch * steps_per_epoch .. (epoch + 1) * steps_per_epoch - 1 of `poisson_batches` with the
    sample rate q = batch_size / len(x)."""
    q = batch_size / len(x)
    for idx, mask in poisson_batches(len(x), q, (epoch + 1) * steps_per_epoch, seed=seed,
                                     start=epoch * steps_per_epoch, multiple=multiple):
        yield x[idx], y[idx], mask.astype(x.dtype)
