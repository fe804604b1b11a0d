"""The training run behind `jaxcnn train`: data, epochs, metrics, checkpoints, resume, plots.

A run writes into its output directory:
    config.json      the TrainConfig
    metrics.jsonl    one JSON record per logged step ("kind": "step") and per epoch ("epoch")
    checkpoint.npz   params, state and optimizer state after the last finished epoch (atomic)
    curves.png, filters.png, grad_norms.png   (jaxcnn.plots)

Everything random derives from `seed`: the initial parameters, the order of every epoch's batches
(`data.batches(seed=seed, epoch=e)`) and every step's dropout key (`fold_in(key, step)`). So
`resume=True` continues from the last checkpoint and ends with exactly the parameters of a run
that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.nn import grads, models
from jaxcnn.nn.network import Network
from jaxcnn.training import checkpoint, data, optim, parallel, plots, steps

CHECKPOINT = "checkpoint.npz"


class TrainingStoppedError(RuntimeError):
    """The run stopped for a reason the user must see (divergence, a failed gradient check)."""


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
    devices: int | None = None
    log_every: int = 10

    def validate(self) -> None:
        """Raise ValueError with a one-line message for any bad setting."""
        if self.model not in models.MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of "
                             f"{', '.join(models.MODELS)}")
        if self.grad not in grads.GRADS:
            raise ValueError(f"--grad must be one of {', '.join(grads.GRADS)}; got {self.grad!r}")
        if self.devices is not None and self.devices < 1:
            raise ValueError(f"--devices must be >= 1; got {self.devices}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"--dtype must be float32 or float64; got {self.dtype!r}")
        for name in ("batch_size", "epochs", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1; "
                                 f"got {getattr(self, name)}")
        self.optimizer_for(1)  # checks the optimizer, lr, schedule and clip

    def optimizer_for(self, steps_per_epoch: int) -> Any:
        return optim.make_optimizer(self.optimizer, self.lr, clip=self.clip,
                                    schedule=self.schedule,
                                    total_steps=steps_per_epoch * self.epochs)


def _setup(cfg: TrainConfig, model: Network | None) -> tuple[Network, data.Dataset, Any]:
    """Check the configuration against the model, the data and the devices; returns the model,
    the data and the device mesh (None on one device)."""
    cfg.validate()
    if cfg.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    model = models.get(cfg.model) if model is None else model
    ds = data.load(cfg.data, seed=cfg.seed, dtype=np.dtype(cfg.dtype))
    if ds.image_shape != model.input_shape:
        raise ValueError(f"model {cfg.model!r} takes images of shape {model.input_shape} but "
                         f"--data {cfg.data} has images of shape {ds.image_shape}")
    if (model.head.kind == "binary") != (ds.num_classes == 2) or ds.num_classes > model.num_classes:
        raise ValueError(f"model {cfg.model!r} predicts {model.num_classes} classes but "
                         f"--data {cfg.data} has {ds.num_classes}")
    if cfg.batch_size > len(ds.x_train):
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the "
                         f"{len(ds.x_train)} training images")
    devices = cfg.devices or len(jax.local_devices())
    mesh = parallel.make_mesh(devices) if devices > 1 else None
    if cfg.batch_size % devices:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {devices} "
                         f"devices it is split over (--devices); use a multiple of {devices}")
    return model, ds, mesh


def check_gradients(model: Network, params: Any, state: Any, x: Any, y: Any, key: Any,
                    dtype: str) -> float:
    """Manual vs autodiff on one batch (training mode, same dropout key); raises
    TrainingStoppedError beyond tolerance (float64 1e-9, float32 1e-4, relative to each leaf's
    largest entry)."""
    kw = dict(state=state, train=True, key=key)
    _, g_manual = jax.jit(lambda p: grads.manual_grad(model, p, x, y, **kw))(params)
    _, g_auto = jax.jit(lambda p: grads.autodiff_grad(model, p, x, y, **kw))(params)
    rows = grads.compare(g_manual, g_auto)
    tol = grads.TOLERANCES[dtype][0]  # the manual vs autodiff bound of `jaxcnn gradcheck`
    worst = max(rows, key=lambda r: r.max_rel)
    if not worst.max_rel <= tol:
        raise TrainingStoppedError(
            f"--check-grads: manual and autodiff gradients differ on the first batch: "
            f"{worst.path} max rel diff {worst.max_rel:.2e} > {tol:.0e}")
    return worst.max_rel


def _diagnose(model: Network, m: dict, params: Any, state: Any, x: Any) -> str:
    """Which layer broke: the first non-finite gradient in backprop order (from the loss towards
    the input), else the first layer whose output overflows, else whose parameters did.

    params and state are the ones that produced the failing step (a non-finite step keeps
    them). The forward runs with XLA's convolutions (`impl="conv"`): the products of
    `impl="auto"` may spread one channel's inf to its neighbours as NaN."""
    norms = m["layer_grad_norms"]
    for layer in reversed(model.layers):
        if layer.name in norms and not math.isfinite(float(norms[layer.name])):
            return (f"the first non-finite gradient in backprop order is that of layer "
                    f"{layer.name!r}")
    acts = model.with_impl("conv").forward(params, x, state=state).activations[1:]
    for layer, y in zip(model.layers, acts):
        if not bool(jnp.isfinite(y).all()):
            return f"the gradients are finite; layer {layer.name!r} is the first whose output " \
                   f"is not"
    for layer in model.layers:
        if not all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(params.get(layer.name))):
            return f"layer {layer.name!r} has non-finite parameters"
    return "every layer's gradient, output and parameters are finite: the loss itself overflowed"


def fit(cfg: TrainConfig, out: str | Path, *, model: Network | None = None,
        resume: bool = False, progress: bool = True, log: Callable[[str], None] = print,
        stop_after_steps: int | None = None) -> dict:
    """Train per `cfg`, writing into `out`; returns a summary (final test accuracy, times).

    model: the network to train (default `models.get(cfg.model)`), for instance one built with
    another `impl`. `stop_after_steps` ends the run early, as a crash would, after that many
    steps (for tests).
    """
    model, ds, mesh = _setup(cfg, model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(cfg.seed)
    n_batches = data.num_batches(len(ds.x_train), cfg.batch_size)
    optimizer = cfg.optimizer_for(n_batches)
    params = model.init(jax.random.fold_in(key, 0), jnp.dtype(cfg.dtype))
    state = model.init_state(jnp.dtype(cfg.dtype))
    opt_state = optimizer.init(params)
    start_epoch, step = 0, 0
    ckpt = out / CHECKPOINT
    if resume and ckpt.exists():
        saved = json.loads((out / "config.json").read_text())
        if {**saved, "epochs": cfg.epochs} != dataclasses.asdict(cfg):
            raise ValueError(f"{out}: --resume needs the run's own settings (only --epochs may "
                             f"change); it was started with {saved}")
        (params, state, opt_state), meta = checkpoint.load(ckpt, (params, state, opt_state))
        start_epoch, step = meta["epoch"], meta["step"]
        _truncate_metrics(out / "metrics.jsonl", start_epoch)
        log(f"resuming {out} after epoch {start_epoch} (step {step})")
    else:
        (out / "metrics.jsonl").write_text("")
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))

    dropout_key = jax.random.fold_in(key, 1)
    if cfg.check_grads and start_epoch < cfg.epochs:
        xb, yb = next(data.batches(ds.x_train, ds.y_train, cfg.batch_size, seed=cfg.seed,
                                   epoch=start_epoch))
        worst = check_gradients(model, params, state, xb, yb,
                                jax.random.fold_in(dropout_key, step), cfg.dtype)
        log(f"--check-grads: manual == autodiff on the first batch (max rel diff {worst:.1e})")

    if mesh is not None:  # data parallel: the same step over a mesh, params replicated
        step_fn = parallel.make_parallel_train_step(model, optimizer, mesh, cfg.grad)
        params, state, opt_state = parallel.replicate((params, state, opt_state), mesh)
        log(f"data parallel over {mesh.size} devices")
    else:
        step_fn = steps.make_train_step(model, optimizer, cfg.grad)
    eval_step = steps.make_eval_step(model)
    started, summary = time.perf_counter(), {}
    with open(out / "metrics.jsonl", "a") as metrics_file:
        for epoch in range(start_epoch, cfg.epochs):
            sums = {"loss": 0.0, "accuracy": 0.0}
            bar = _progress(progress, n_batches, f"epoch {epoch + 1}/{cfg.epochs}")
            for i, (xb, yb) in enumerate(data.batches(ds.x_train, ds.y_train, cfg.batch_size,
                                                      seed=cfg.seed, epoch=epoch)):
                params, state, opt_state, m = step_fn(params, state, opt_state, (xb, yb),
                                                      jax.random.fold_in(dropout_key, step))
                step += 1
                host = jax.device_get(m)  # one transfer for every metric of the step
                loss = float(host["loss"])
                if not (math.isfinite(loss) and math.isfinite(float(host["grad_norm"]))):
                    bar.close()
                    kept = (f"the last good checkpoint is {ckpt} (epoch {epoch})" if epoch
                            else "no checkpoint was written yet")
                    raise TrainingStoppedError(
                        f"step {step} (epoch {epoch + 1}): the loss is {loss}; "
                        f"{_diagnose(model, m, params, state, xb)}; {kept}. Lower --lr or set "
                        f"--clip")
                sums["loss"] += loss
                sums["accuracy"] += float(host["accuracy"])
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss'] / (i + 1):.4f}",
                                acc=f"{sums['accuracy'] / (i + 1):.3f}")
                if step % cfg.log_every == 0:
                    _write(metrics_file, {"kind": "step", "step": step, "epoch": epoch + 1,
                                          "loss": loss, "grad_norm": float(host["grad_norm"]),
                                          "layer_grad_norms": {k: float(v) for k, v in
                                                               host["layer_grad_norms"].items()}})
                if stop_after_steps is not None and step >= stop_after_steps:
                    bar.close()
                    return {"stopped_at_step": step}
            bar.close()
            test = steps.evaluate(model, params, state, ds.x_test, ds.y_test,
                                  eval_step=eval_step)
            summary = {"kind": "epoch", "epoch": epoch + 1, "step": step,
                       "train_loss": sums["loss"] / n_batches,
                       "train_accuracy": sums["accuracy"] / n_batches,
                       "test_loss": test["loss"], "test_accuracy": test["accuracy"],
                       "seconds": time.perf_counter() - started}
            _write(metrics_file, summary)
            checkpoint.save(ckpt, (params, state, opt_state),
                            {"epoch": epoch + 1, "step": step, "config": dataclasses.asdict(cfg)})
            log(f"epoch {epoch + 1}: train loss {summary['train_loss']:.4f}, test loss "
                f"{test['loss']:.4f}, test accuracy {test['accuracy']:.4f}")
    first_conv = next((params[layer.name]["w"] for layer in model.layers
                       if layer.name in params and params[layer.name]["w"].ndim == 4), None)
    for path in plots.plot_run(out, first_conv):
        log(f"wrote {path}")
    return {**summary, "params": params, "state": state}


def _write(f: Any, record: dict) -> None:
    f.write(json.dumps(record) + "\n")
    f.flush()


def _truncate_metrics(path: Path, epoch: int) -> None:
    """Drop records of epochs after `epoch`: a crashed run may have logged part of one."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line and json.loads(line)["epoch"] <= epoch]
    path.write_text("".join(line + "\n" for line in keep))


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix(self, **kw: Any) -> None: ...
    def close(self) -> None: ...


def _progress(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

