"""The training run behind `jaxcnn train`: data, epochs, metrics, checkpoints, resume, plots.

A run writes into its output directory (see `jaxcnn.training.rundir`, which also holds its lock):
    config.json      the TrainConfig, with the device count it resolved to
    metrics.jsonl    one JSON record per logged step ("kind": "step") and per epoch ("epoch")
    checkpoint.npz   params, state and optimizer state after the last finished epoch (atomic),
                     with the configuration and a fingerprint of the data in its meta
    curves.png, filters.png, grad_norms.png   (jaxcnn.training.plots)

Everything random derives from `seed`: the initial parameters, the order of every epoch's batches
(`data.batches(seed=seed, epoch=e)`) and every step's dropout key (`fold_in(key, step)`). So
`resume=True` continues from the last checkpoint and ends with exactly the parameters of a run
that was never interrupted; it refuses a checkpoint written under other settings or on other
data. Only `epochs` may change, and only with the constant schedule: the cosine schedule is laid
out over all the epochs, so a finished 3-epoch run continued to 6 would not end where an
uninterrupted 6-epoch run does (that resume is refused, saying how to go on). A fresh run refuses
a directory that holds a run unless `overwrite=True`. Ctrl-C raises `Interrupted`, which says
where the run can be resumed from.

DP-SGD (`dp_clip` and `dp_noise`, `jaxcnn.training.dp`): every step a Poisson sample (rate
batch_size / n, seeded by (seed, step), so resume draws the same ones), the clipped sum from
the hand-written per-example norms, Gaussian noise; `epsilon` (RDP, at `dp_delta`) joins each
epoch's record and log line (null, with a note, for `dp_noise=0`: no privacy). The settings are
checked before any training, the accountant included (it answers for the run's last step before
the first), so no epoch ends in an accountant error. BatchNorm models are refused.

Several processes (`jaxcnn.training.processes`, joined before `fit`): the mesh spans them all,
each feeds its rows of every batch, and process 0 alone owns the directory (lock, files,
checkpoint; on resume it reads the checkpoint and sends it to the others). `processes` is recorded
in config.json, and resuming with another count is refused: the gradient's sums run in another
order, so the run would not continue bit for bit.

The module is over 400 lines because the run is one story read top to bottom: the settings,
their checks, start or resume, the epochs with their two kinds of batches, evaluation and
checkpoint, the plots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.nn import grads, lookup
from jaxcnn.nn.network import Network
from jaxcnn.training import (
    checkpoint,
    data,
    dp,
    optim,
    parallel,
    plots,
    processes,
    rundir,
    steps,
)
from jaxcnn.training.diagnose import TrainingStoppedError, check_gradients, diagnose

CHECKPOINT = rundir.CHECKPOINT
MAX_SEED = data.MAX_SEED


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run: `step` steps were done; `checkpoint_epoch` (None: no checkpoint yet)
    is where `resume=True` continues from."""

    def __init__(self, step: int, checkpoint_epoch: int | None, path: Path):
        super().__init__(step, checkpoint_epoch, path)
        self.step, self.checkpoint_epoch, self.path = step, checkpoint_epoch, path

    def __str__(self) -> str:
        if self.checkpoint_epoch is None:
            return (f"interrupted after step {self.step}; no checkpoint was written yet; "
                    "--resume starts the run again")
        return (f"interrupted after step {self.step}; the last checkpoint is epoch "
                f"{self.checkpoint_epoch} ({self.path}); --resume continues")


_NUMBER, _NONE = (int, float), type(None)
_TYPES = {"model": str, "data": str, "grad": str, "optimizer": str, "lr": _NUMBER,
          "schedule": str, "batch_size": int, "epochs": int, "clip": (*_NUMBER, _NONE),
          "seed": int, "dtype": str, "check_grads": bool, "devices": (int, _NONE),
          "processes": (int, _NONE), "log_every": int, "dp_clip": (*_NUMBER, _NONE),
          "dp_noise": (*_NUMBER, _NONE), "dp_delta": _NUMBER}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: str = "lenet5-digits"
    data: str = "digits"
    grad: str = "manual"
    optimizer: str = "adam"
    lr: float = 2e-3
    schedule: str = "cosine"
    batch_size: int = 32
    epochs: int = 40
    clip: float | None = None
    seed: int = 0
    dtype: str = "float32"
    check_grads: bool = False
    devices: int | None = None  # None: all local devices (a run records the count it used)
    processes: int | None = None  # None: the processes joined (processes.count(); recorded)
    log_every: int = 10
    dp_clip: float | None = None   # DP-SGD (jaxcnn.training.dp): the per-example clip norm C,
    dp_noise: float | None = None  # the noise multiplier sigma (both or neither),
    dp_delta: float = dp.DEFAULT_DELTA  # and the delta of the epsilon reported after each epoch

    @property
    def private(self) -> bool:
        return self.dp_clip is not None

    def validate(self) -> None:
        """Raise TypeError / ValueError with a one-line message naming any bad setting."""
        for name, kind in _TYPES.items():
            value = getattr(self, name)
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                kinds = kind if isinstance(kind, tuple) else (kind,)
                what = f"an int in 0..{MAX_SEED}" if name == "seed" else \
                    " or ".join(k.__name__ for k in kinds)
                raise TypeError(f"--{name.replace('_', '-')} must be {what}; got {value!r}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"--seed must be an int in 0..{MAX_SEED}; got {self.seed}")
        lookup.check_spec(self.model)
        if self.grad not in grads.GRADS:
            raise ValueError(f"--grad must be one of {', '.join(grads.GRADS)}; got {self.grad!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"--dtype must be float32 or float64; got {self.dtype!r}")
        for name in ("batch_size", "epochs", "log_every", "devices", "processes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {value}")
        if not math.isfinite(self.lr):
            raise ValueError(f"--lr must be a finite number > 0; got {self.lr}")
        self.optimizer_for(1)  # checks the optimizer, lr, schedule and clip
        dp.check_run_settings(self.dp_clip, self.dp_noise, self.dp_delta, self.grad)

    def optimizer_for(self, steps_per_epoch: int) -> Any:
        """The optax optimizer of this configuration for `steps_per_epoch` steps an epoch."""
        return optim.make_optimizer(self.optimizer, self.lr, clip=self.clip,
                                    schedule=self.schedule,
                                    total_steps=steps_per_epoch * self.epochs)


@dataclasses.dataclass
class _Run:
    """One run's fixed parts and its moving state (params, state, opt_state, epoch, step)."""

    cfg: TrainConfig
    model: Network
    ds: data.DataSplit
    mesh: Any
    data_sha256: str
    out: Path
    log: Callable[[str], None]
    params: Any = None
    state: Any = None
    opt_state: Any = None
    start_epoch: int = 0
    step: int = 0

    @property
    def ckpt(self) -> Path:
        return self.out / CHECKPOINT

    @property
    def n_batches(self) -> int:
        return data.num_batches(len(self.ds.x_train), self.cfg.batch_size)

    @property
    def key(self) -> Any:
        return jax.random.key(self.cfg.seed)


def _setup(cfg: TrainConfig, model: Network | None) -> tuple[TrainConfig, Network,
                                                             data.DataSplit, Any]:
    """Check the configuration against the model, the data and the devices; returns the config
    with its device count resolved, the model, the data and the mesh (None on one device)."""
    if cfg.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    model = lookup.model(cfg.model) if model is None else model
    ds = data.load(cfg.data, seed=cfg.seed, dtype=np.dtype(cfg.dtype))
    if len(ds.x_test) == 0:
        raise ValueError(f"--data {cfg.data}: the test split is empty; every epoch ends with an "
                         "evaluation on it")
    data.check_model_fits(model, ds, model_spec=cfg.model, data_spec=cfg.data)
    if cfg.batch_size > len(ds.x_train):
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the "
                         f"{len(ds.x_train)} training images")
    devices, procs = processes.run_counts(cfg.devices, cfg.processes)
    if cfg.private:
        dp.refuse_batchnorm("--dp-clip", model)
        dp.check_run_data(cfg.dp_clip, cfg.dp_noise, cfg.dp_delta, cfg.dtype, cfg.batch_size,
                          cfg.epochs, len(ds.x_train))
    total = devices * procs
    if cfg.batch_size % total and not cfg.private:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {total} "
                         f"devices it is split over (--devices, --processes); use a multiple of "
                         f"{total}")
    mesh = None if total == 1 else parallel.make_mesh(None if procs > 1 else devices)
    return dataclasses.replace(cfg, devices=devices, processes=procs), model, ds, mesh


def fit(cfg: TrainConfig, out: str | Path, *, model: Network | None = None,
        resume: bool = False, overwrite: bool = False, progress: bool = True,
        log: Callable[[str], None] = print, stop_after_steps: int | None = None) -> dict:
    """Train per `cfg`, writing into `out`.

    Args:
      cfg: the configuration (`TrainConfig.validate` is called first).
      out: the run directory; created if absent, locked (`rundir.locked`) while the run lasts.
      model: the network to train (default `lookup.model(cfg.model)`), for instance one built with
        another `impl`.
      resume: continue from `out`'s checkpoint (logging "no checkpoint in OUT; starting from
        scratch" where there is none); refused if it was written under other settings (only
        `epochs` may change, and only with the constant schedule) or on other data.
      overwrite: start over in a directory that holds a run, deleting it (else refused).
      progress: a tqdm bar per epoch, only where stderr is a terminal.
      log: where the run's lines go (a closed pipe there does not stop the run).
      stop_after_steps: end the run early, as a crash would, after that many steps (for tests).

    Returns:
      The last epoch's record (epoch, step, train/test loss and accuracy, seconds; and
      "test_mean_iou" for a per-position head, whose accuracy is the pixel accuracy) with the
      final "params" and "state"; {"stopped_at_step": n} if `stop_after_steps` ended it.

    Raises:
      ValueError / TypeError: bad settings, or a directory that cannot be used.
      TrainingStoppedError: divergence, or a failed --check-grads.
      Interrupted: Ctrl-C.
    """
    cfg.validate()
    out, log = Path(out), _safe(log) if processes.is_leader() else _silent
    cfg, model, ds, mesh = _setup(cfg, model)  # bad settings first, whatever `out` holds
    if processes.is_leader():
        rundir.check_start(out, resume=resume, overwrite=overwrite)
        out.mkdir(parents=True, exist_ok=True)
    with rundir.locked(out) if processes.is_leader() else contextlib.nullcontext():
        run = _Run(cfg, model, ds, mesh, data.fingerprint(ds), out, log)
        try:
            _start(run, resume=resume, overwrite=overwrite)
            return _train(run, progress, stop_after_steps)
        except Interrupted:
            raise
        except KeyboardInterrupt:
            meta = checkpoint.read_meta(run.ckpt)
            raise Interrupted(run.step, meta and meta.get("epoch"), run.ckpt) from None


def _silent(line: str) -> None:
    """The log of every process but process 0 (its lines would repeat process 0's)."""


def _safe(log: Callable[[str], None]) -> Callable[[str], None]:
    """`log`, silenced for good once its reader has gone (BrokenPipeError): the run's results
    are its files, so a closed stdout (`jaxcnn train | head -1`) must not end it."""
    gone = False

    def safe(line: str) -> None:
        nonlocal gone
        if not gone:
            try:
                log(line)
            except BrokenPipeError:
                gone = True

    return safe


def _start(run: _Run, *, resume: bool, overwrite: bool) -> None:
    """Fresh params, then the checkpoint's (resume), or a fresh directory; process 0's choice,
    sent to the other processes."""
    dt = jnp.dtype(run.cfg.dtype)
    run.params = run.model.init(jax.random.fold_in(run.key, 0), dt)
    run.state = run.model.init_state(dt)
    run.opt_state = run.cfg.optimizer_for(run.n_batches).init(run.params)
    if processes.is_leader():
        rundir.check_start(run.out, resume=resume, overwrite=overwrite)  # again, under the lock
        rundir.remove_temps(run.out)
        if resume and os.path.lexists(run.ckpt):  # a dangling link is refused, not skipped
            _restore(run)
        else:
            if resume:
                run.log(f"no checkpoint in {run.out}; starting from scratch")
            rundir.start_fresh(run.out, dataclasses.asdict(run.cfg))
    if processes.count() > 1:
        shared = processes.broadcast((run.params, run.state, run.opt_state,
                                      np.array([run.start_epoch, run.step])))
        run.params, run.state, run.opt_state = shared[:3]  # NumPy: `replicate` places them
        run.start_epoch, run.step = (int(v) for v in shared[3])


def _restore(run: _Run) -> None:
    """Load the checkpoint after checking every file it is resumed with; nothing is written
    before all checks pass."""
    config = dataclasses.asdict(run.cfg)
    meta = checkpoint.load_meta(run.ckpt)
    epoch, step = rundir.check_resumable(run.ckpt, meta, config, run.data_sha256, run.cfg.data)
    rundir.check_horizon(run.ckpt, meta["config"]["epochs"], epoch, run.cfg.epochs,
                         run.cfg.schedule)
    template = (run.params, run.state, run.opt_state)
    (run.params, run.state, run.opt_state), _ = checkpoint.load(run.ckpt, template)
    rundir.continue_after(run.out, epoch, config, run.log)
    run.start_epoch, run.step = epoch, step
    run.log(f"resuming {run.out} after epoch {epoch} (step {step})")


def _train(run: _Run, progress: bool, stop_after_steps: int | None) -> dict:
    """Every remaining epoch, then the plots."""
    cfg = run.cfg
    if cfg.check_grads and run.start_epoch < cfg.epochs:
        _check_first_batch(run)
    step_fn = _make_step(run)
    eval_step = steps.make_eval_step(run.model)
    started, summary = time.perf_counter(), {}
    with (rundir.MetricsLog(run.out / rundir.METRICS) if processes.is_leader()
          else contextlib.nullcontext(_NoMetrics())) as metrics:
        for epoch in range(run.start_epoch, cfg.epochs):
            sums = _one_epoch(run, epoch, step_fn, metrics, progress, stop_after_steps)
            if sums is None:
                return {"stopped_at_step": run.step}
            summary = _end_epoch(run, epoch, sums, eval_step, metrics, started)
    if not summary:
        run.log(f"{run.out}: all {cfg.epochs} epochs were already done")
    if processes.is_leader():
        _plots(run)
    return {**summary, "params": run.params, "state": run.state}


def _check_first_batch(run: _Run) -> None:
    cfg = run.cfg
    xb, yb = next(data.batches(run.ds.x_train, run.ds.y_train, cfg.batch_size, seed=cfg.seed,
                               epoch=run.start_epoch))
    key = jax.random.fold_in(jax.random.fold_in(run.key, 1), run.step)
    worst = check_gradients(run.model, run.params, run.state, xb, yb, key, cfg.dtype)
    run.log(f"--check-grads: manual == autodiff on the first batch (max rel diff {worst:.1e})")


def _make_step(run: _Run) -> Callable:
    """The jitted train step; over a mesh (params replicated) with several devices."""
    cfg, optimizer = run.cfg, run.cfg.optimizer_for(run.n_batches)
    if cfg.private:
        step_fn = dp.make_dp_train_step(run.model, optimizer, clip_norm=cfg.dp_clip,
                                        noise_multiplier=cfg.dp_noise,
                                        expected_batch_size=cfg.batch_size, mesh=run.mesh)
    elif run.mesh is None:
        return steps.make_train_step(run.model, optimizer, cfg.grad)
    else:
        step_fn = parallel.make_parallel_train_step(run.model, optimizer, run.mesh, cfg.grad)
    if run.mesh is None:
        return step_fn
    run.params, run.state, run.opt_state = parallel.replicate(
        (run.params, run.state, run.opt_state), run.mesh)
    run.log(f"data parallel over {run.mesh.size} devices")
    return step_fn


def _one_epoch(run: _Run, epoch: int, step_fn: Callable, metrics: rundir.MetricsLog,
               progress: bool, stop_after_steps: int | None) -> dict | None:
    """The steps of one epoch; returns the summed loss and accuracy, or None if stopped early.
    Raises TrainingStoppedError at the first non-finite loss or gradient."""
    cfg, dropout_key = run.cfg, jax.random.fold_in(run.key, 1)
    sums = {"loss": 0.0, "accuracy": 0.0}
    bar = _progress(progress, run.n_batches, f"epoch {epoch + 1}/{cfg.epochs}")
    try:
        for i, batch in enumerate(_batches(run, epoch)):
            xb = batch[0]
            run.params, run.state, run.opt_state, m = step_fn(
                run.params, run.state, run.opt_state, processes.feed(batch, run.mesh),
                jax.random.fold_in(dropout_key, run.step))
            run.step += 1
            host = processes.to_host(m)  # one transfer for every metric of the step
            loss, grad_norm = float(host["loss"]), float(host["grad_norm"])
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                kept = (f"the last good checkpoint is {run.ckpt} (epoch {epoch})" if epoch
                        else "no checkpoint was written yet")
                raise TrainingStoppedError(
                    f"step {run.step} (epoch {epoch + 1}): the loss is {loss}; "
                    f"{diagnose(run.model, m, run.params, run.state, xb)}; {kept}. Lower --lr "
                    f"or set --clip")
            sums["loss"] += loss
            sums["accuracy"] += float(host["accuracy"])
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss'] / (i + 1):.4f}",
                            acc=f"{sums['accuracy'] / (i + 1):.3f}")
            if run.step % cfg.log_every == 0:
                metrics.append({"kind": "step", "step": run.step, "epoch": epoch + 1,
                                "loss": loss, "grad_norm": grad_norm,
                                "layer_grad_norms": {k: float(v) for k, v in
                                                     host["layer_grad_norms"].items()}})
            if stop_after_steps is not None and run.step >= stop_after_steps:
                return None
    finally:
        bar.close()
    return sums


def _batches(run: _Run, epoch: int) -> Any:
    """The epoch's batches: shuffled (x, y), or for DP-SGD Poisson samples (x, y, mask)."""
    cfg, ds = run.cfg, run.ds
    if not cfg.private:
        return data.batches(ds.x_train, ds.y_train, cfg.batch_size, seed=cfg.seed, epoch=epoch)
    return dp.epoch_samples(ds.x_train, ds.y_train, cfg.batch_size, run.n_batches, epoch,
                            seed=cfg.seed, multiple=1 if run.mesh is None else run.mesh.size)


def _end_epoch(run: _Run, epoch: int, sums: dict, eval_step: Callable,
               metrics: rundir.MetricsLog, started: float) -> dict:
    """Evaluate, log the epoch's record, then checkpoint (in that order: a crash between the two
    redoes the epoch on resume, whose records are then dropped and written again); process 0
    only."""
    if not processes.is_leader():
        return {"epoch": epoch + 1, "step": run.step}
    trees = processes.to_host((run.params, run.state, run.opt_state))  # one transfer, kept
    params, state = ((run.params, run.state) if processes.count() == 1
                     else jax.device_put(trees[:2]))  # this process's device, for the evaluation
    test = steps.evaluate(run.model, params, state, run.ds.x_test, run.ds.y_test,
                          eval_step=eval_step)
    n, iou, cfg = run.n_batches, test.get("mean_iou"), run.cfg  # IoU: per-position heads
    private = {} if not cfg.private else dp.privacy_record(  # epsilon after the steps so far
        cfg.dp_noise, cfg.batch_size / len(run.ds.x_train), run.step, cfg.dp_delta)
    summary = {"kind": "epoch", "epoch": epoch + 1, "step": run.step,
               "train_loss": sums["loss"] / n, "train_accuracy": sums["accuracy"] / n,
               "test_loss": test["loss"], "test_accuracy": test["accuracy"],
               **({} if iou is None else {"test_mean_iou": iou}), **private,
               "seconds": time.perf_counter() - started}
    metrics.append(summary)
    checkpoint.save(run.ckpt, trees,
                    {"epoch": epoch + 1, "step": run.step, "config": dataclasses.asdict(run.cfg),
                     "data_sha256": run.data_sha256})
    run.log(f"epoch {epoch + 1}: train loss {summary['train_loss']:.4f}, test loss "
            f"{test['loss']:.4f}, test accuracy {test['accuracy']:.4f}"
            + ("" if iou is None else f", test mean IoU {iou:.4f}")
            + dp.privacy_text(summary, cfg.dp_delta))
    return summary


def _plots(run: _Run) -> None:
    params = processes.to_host(run.params)
    first_conv = plots.first_conv([params.get(layer.name) for layer in run.model.layers])
    for path in plots.plot_run(run.out, first_conv):
        run.log(f"wrote {path}")


class _NoMetrics:
    def append(self, record: dict) -> None: ...


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix(self, **kw: Any) -> None: ...
    def close(self) -> None: ...


def _progress(enabled: bool, total: int, desc: str) -> Any:
    """A tqdm bar on a terminal; nothing where stderr is a file or a pipe (a log file would fill
    with carriage returns; the run logs one line per epoch anyway)."""
    if not (enabled and sys.stderr.isatty()):
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
