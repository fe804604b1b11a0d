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
DEFAULT_DELTA = 1e-5
# sigma > 0 where dp-accounting 0.6's RDP accountant answers cleanly at every sample rate down to
# 1e-9 and up to 1e12 steps (measured): below ~1e-155 sigma**2 underflows (ZeroDivisionError),
# above ~1e155 it overflows (OverflowError), and above 100 (1e4 for rates >= 1e-5) its series stop
# converging: it logs warnings and returns 0.
NOISE_RANGE = (1e-100, 100.0)
# the PLD accountant's discretised loss distribution outgrows memory for smaller sigma (measured:
# 1e-3 asks for 5e9 int64s; sigma 0.1 takes ~35 s for 100 steps, 0.5 ~8 s for 1000)
PLD_MIN_NOISE = 0.1
NO_NOISE_NOTE = "no noise (--dp-noise 0): no privacy guarantee, epsilon is infinite"


# ----------------------------------------------------------------------------- checks
def check_dp(fn: str, clip_norm: Any, noise_multiplier: Any, delta: Any = None) -> None:
    """clip_norm finite and > 0, noise_multiplier 0 or in NOISE_RANGE, delta in (0, 1) when
    given: ValueErrors naming fn and them."""
    check_clip(fn, clip_norm)
    check_noise(fn, noise_multiplier)
    if delta is not None:
        check_delta(fn, delta)


def check_clip(fn: str, clip_norm: Any) -> None:
    """Check a clip norm: `per_example.check_clip_norm`, and finite (an infinite clip bounds
    nothing and makes the noise sigma C infinite).

    Args:
      fn: the caller or flag, for the message.
      clip_norm: C.

    Raises:
      ValueError: naming fn and the value.
    """
    check_clip_norm(fn, clip_norm)
    if isinstance(clip_norm, int | float | np.floating) and not math.isfinite(clip_norm):
        raise ValueError(f"{fn}: clip_norm must be a finite number > 0; got {clip_norm!r} (an "
                         f"infinite clip bounds nothing, and the noise sigma C would be infinite)")


def check_delta(fn: str, delta: Any) -> None:
    """Check a delta.

    Args:
      fn: the caller or flag, for the message.
      delta: a number in (0, 1).

    Raises:
      ValueError: naming fn and the value.
    """
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta < 1:
        raise ValueError(f"{fn}: delta must be in (0, 1); got {delta!r}")


def check_noise(fn: str, noise_multiplier: Any) -> None:
    """Check a noise multiplier.

    Args:
      fn: the caller or flag, for the message.
      noise_multiplier: sigma, 0 (no noise: no privacy, epsilon is infinite) or a number in
        NOISE_RANGE, where the accountant answers.

    Raises:
      ValueError: naming fn, the value and the range.
    """
    low, high = NOISE_RANGE
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, int | float) \
            or not (noise_multiplier == 0 or low <= noise_multiplier <= high):
        raise ValueError(f"{fn}: noise_multiplier (sigma) must be a number >= 0: 0 (no noise, no "
                         f"privacy) or in {low:g}..{high:g}, the range the privacy accountant "
                         f"answers for; got {noise_multiplier!r}")


def check_run_settings(clip: Any, noise: Any, delta: Any, grad: str) -> None:
    """The DP settings of a run (`jaxcnn train --dp-clip C --dp-noise sigma --dp-delta d`): both
    or neither of clip and noise, valid values, a delta other than the default only with them,
    and the manual gradients."""
    if (clip is None) != (noise is None):
        raise ValueError("--dp-clip and --dp-noise go together (DP-SGD needs both)")
    if clip is None:
        if delta != DEFAULT_DELTA:
            raise ValueError(f"--dp-delta {delta!r} applies to DP-SGD runs only (it is the delta "
                             f"of the epsilon they report); add --dp-clip and --dp-noise, or "
                             f"leave it out")
        return
    check_clip("--dp-clip", clip)
    check_noise("--dp-noise", noise)
    check_delta("--dp-delta", delta)
    if grad != "manual":
        raise ValueError("--dp-clip: DP-SGD clips with the hand-written per-example norms; "
                         "use --grad manual")


def check_run_data(clip: float, noise: float, delta: float, dtype: str, batch_size: int,
                   epochs: int, n: int) -> None:
    """The DP-SGD settings that need the data, checked before any training.

    Args:
      clip, noise, delta: the run's --dp-clip, --dp-noise and --dp-delta (validated).
      dtype, batch_size, epochs: its --dtype, --batch-size and --epochs.
      n: the number of training examples.

    Raises:
      ValueError: C or sigma C not a normal number of the run's dtype, or an accountant that
        cannot answer for the run's last step (so that no epoch's record can fail).
    """
    finfo = np.finfo(np.dtype(dtype))
    if not (clip >= finfo.tiny and clip * max(noise, 1.0) < finfo.max):
        raise ValueError(f"--dp-clip {clip:g} (with --dp-noise {noise:g}): C and "
                         f"sigma C must be normal {dtype} numbers (between {finfo.tiny:.1e} "
                         f"and {finfo.max:.1e})")
    steps = (n // batch_size) * epochs
    check_accountable(noise, batch_size / n, steps, delta)


def check_accountable(noise: float, sample_rate: float, steps: int, delta: float) -> None:
    """Ask the accountant before any training, so that no epoch's record can fail after it.

    Args:
      noise: sigma; sample_rate: q; steps: the most steps the run takes; delta: its delta.

    Raises:
      ValueError: where the accountant fails (an arithmetic error, or out of memory).
    """
    try:
        epsilon(noise, sample_rate, steps, delta)
    except (ArithmeticError, MemoryError) as e:
        raise ValueError(f"--dp-noise {noise:g}: the privacy accountant fails on these settings "
                         f"({type(e).__name__}: {e}); choose another noise multiplier") from None


def privacy_record(noise: float, sample_rate: float, steps: int, delta: float) -> dict:
    """The privacy part of an epoch's record in metrics.jsonl, JSON throughout.

    Args:
      noise: sigma; sample_rate: q; steps: the steps so far; delta: the run's delta.

    Returns:
      {"epsilon": epsilon (RDP), "dp_delta": delta}; where epsilon is infinite (no noise),
      {"epsilon": None, "dp_delta": delta, "privacy": a note saying so}.
    """
    eps = epsilon(noise, sample_rate, steps, delta)
    if math.isfinite(eps):
        return {"epsilon": eps, "dp_delta": delta}
    return {"epsilon": None, "dp_delta": delta,
            "privacy": NO_NOISE_NOTE if noise == 0 else "epsilon is infinite"}


# ----------------------------------------------------------------------------- accounting
def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, *,
            accountant: str = "rdp") -> float:
    """epsilon of `steps` Poisson-sampled Gaussian steps at `delta` (dp-accounting).

    Args:
      noise_multiplier: sigma (the noise std over the clip norm): 0 or in NOISE_RANGE (the
        PLD accountant: at least PLD_MIN_NOISE).
      sample_rate: q, each example's probability of being in a batch, in (0, 1].
      steps: the number of steps taken, an int >= 0.
      delta: in (0, 1).
      accountant: "rdp" (dp_accounting.rdp.RdpAccountant) or "pld" (pld.PLDAccountant).

    Returns:
      epsilon (0 after no steps, inf without noise).

    Raises:
      ValueError: naming any argument out of its range.
    """
    check_dp("epsilon", 1.0, noise_multiplier, delta)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | float) \
            or not 0 < sample_rate <= 1:
        raise ValueError(f"epsilon: sample_rate must be in (0, 1]; got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
        raise ValueError(f"epsilon: steps must be an int >= 0; got {steps!r}")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"epsilon: accountant must be one of {', '.join(ACCOUNTANTS)}; got "
                         f"{accountant!r}")
    if accountant == "pld" and 0 < noise_multiplier < PLD_MIN_NOISE:
        raise ValueError(f"epsilon: the PLD accountant needs noise_multiplier >= {PLD_MIN_NOISE} "
                         f"(below, it outgrows memory); got {noise_multiplier!r}; use "
                         f"accountant='rdp'")
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
def privacy_text(summary: dict, delta: float) -> str:
    """The privacy part of an epoch's log line.

    Args:
      summary: the epoch's record.
      delta: the run's dp_delta.

    Returns:
      ", epsilon E (delta D)"; the record's "privacy" note where epsilon is infinite (null in
      the record); "" for a non-private run.
    """
    if "epsilon" not in summary:
        return ""
    eps = summary["epsilon"]
    return (f", epsilon {eps:.3f} (delta {delta:g})" if eps is not None else
            f", {summary.get('privacy', 'epsilon is infinite')}")


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
