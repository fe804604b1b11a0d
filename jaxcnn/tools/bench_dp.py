"""`jaxcnn bench --dp`: the price of DP-SGD with the hand-written per-example norms, side by side.

Per network and batch, interleaved as `jaxcnn.tools.bench.interleaved` does (ratios round by
round, then their median and spread):

    step          the non-private manual train step (`steps.make_train_step`, grad="manual")
    dp            the DP-SGD step: ghost norms + clipped sum by re-weighted deltas + noise
                  (`training.dp.make_dp_train_step`, the cost model choosing per layer)
    dp[ghost] / dp[instantiate]   the same with one norm method forced on every convolution
    vmap_clip     what JAX users write today: vmap(jax.grad) per example, clip, sum, noise
    norms         `per_example_grad_norms` alone, against
    batch_grad    one manual batch gradient

and XLA's temporary memory of each compiled program. Every step uses the same optimizer (SGD)
and float32, every program the project's compiler options (`steps.jit_with_options`); the DP
sample is a full batch (mask all ones), so the programs do equal work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxcnn.nn import grads, models
from jaxcnn.nn.network import Network
from jaxcnn.tools.bench import compiled, example_batch, interleaved, machine, ratios, summarise
from jaxcnn.training import dp, optim, steps
from jaxcnn.training.per_example import clip_weights, per_example_grad_norms

NETWORKS = (("cifar-gn", 64), ("resnet20-gn", 64))
CLIP, SIGMA = 1.0, 1.1


def vmap_clip_step(model: Network, optimizer: optax.GradientTransformation, clip: float,
                   sigma: float, batch: int) -> Callable:
    """The DP step as JAX users write it: per-example jax.grad under vmap, each clipped to
    `clip`, summed, Gaussian noise sigma * clip, divided by the batch, optax update."""

    def loss_i(p, xi, yi):
        return model.loss(p, xi[None], yi[None], train=True)

    def step(params, state, opt_state, xym, key):
        x, y, _ = xym
        g = jax.vmap(jax.grad(loss_i), in_axes=(None, 0, 0))(params, x, y)
        sq = sum(jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=1) for v in jax.tree.leaves(g))
        w = clip_weights(jnp.sqrt(sq), clip)
        g_sum = jax.tree.map(lambda v: jnp.tensordot(w, v, axes=1), g)
        leaves, tree = jax.tree.flatten(g_sum)
        keys = jax.random.split(key, len(leaves))
        noisy = jax.tree.unflatten(tree, [(v + sigma * clip * jax.random.normal(k, v.shape))
                                          / batch for v, k in zip(leaves, keys)])
        updates, opt_state = optimizer.update(noisy, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, {}

    return steps.jit_with_options(step)


def programs(model: Network, batch: int) -> tuple[dict[str, Callable], dict[str, Any]]:
    """The compiled programs of the module docstring and their compile time and memory."""
    opt = optim.make_optimizer("sgd", 1e-3)
    params, state = model.init(jax.random.key(0)), model.init_state()
    opt_state = opt.init(params)
    x, y = example_batch(model, batch)
    mask = jnp.ones((batch,), jnp.float32)
    key = jax.random.key(2)
    step_args = (params, state, opt_state, (x, y), key)
    dp_args = (params, state, opt_state, (x, y, mask), key)
    jitted = {"step": (steps.make_train_step(model, opt, donate=False), step_args),
              "vmap_clip": (vmap_clip_step(model, opt, CLIP, SIGMA, batch), dp_args),
              "norms": (steps.jit_with_options(lambda p, x, y: per_example_grad_norms(
                  model, p, x, y, train=True)), (params, x, y)),
              "batch_grad": (steps.jit_with_options(lambda p, x, y: grads.manual_grad(
                  model, p, x, y, train=True)[1]), (params, x, y))}
    for method in ("auto", "ghost", "instantiate"):
        label = "dp" if method == "auto" else f"dp[{method}]"
        jitted[label] = (dp.make_dp_train_step(model, opt, clip_norm=CLIP, noise_multiplier=SIGMA,
                                               expected_batch_size=batch, method=method),
                         dp_args)
    fns, info = {}, {}
    for label, (fn, args) in jitted.items():
        fns[label], info[label] = compiled(fn, *args)
    return fns, info


def bench_dp_network(name: str, batch: int, rounds: int = 7) -> dict[str, Any]:
    """Every figure of the module docstring for one network at one batch size."""
    model = models.get(name)
    fns, info = programs(model, batch)
    times = interleaved(fns, rounds=rounds)
    out: dict[str, Any] = {"network": name, "batch": batch, "variants": {}}
    for label, t in times.items():
        out["variants"][label] = {**info[label], **summarise(t)}
    out["ratios"] = {
        "dp_vs_step": ratios(times["dp"], times["step"]),
        "dp_vs_vmap_clip": ratios(times["dp"], times["vmap_clip"]),
        "norms_vs_batch_grad": ratios(times["norms"], times["batch_grad"]),
        "dp_ghost_vs_dp_instantiate": ratios(times["dp[ghost]"], times["dp[instantiate]"]),
    }
    mem = {k: v["temp_bytes"] for k, v in out["variants"].items()}
    if mem["dp"] and mem["step"]:
        out["ratios"]["dp_temp_vs_step_temp"] = mem["dp"] / mem["step"]
    return out


def run(networks: tuple[tuple[str, int], ...] = NETWORKS, rounds: int = 7) -> dict[str, Any]:
    """The DP benchmark of every (network, batch): {"machine": ..., "networks": [...]}."""
    return {"machine": machine(), "clip_norm": CLIP, "noise_multiplier": SIGMA,
            "networks": [bench_dp_network(n, b, rounds) for n, b in networks]}


def to_markdown(result: dict[str, Any]) -> str:
    """The result as markdown tables: step times and memory, then the ratios."""
    m = result["machine"]
    lines = [f"DP-SGD benchmark: {m['device']} ({m['backend']}, {m['cores']} cores), jax "
             f"{m['jax']}; clip {result['clip_norm']}, sigma {result['noise_multiplier']}", ""]
    for net in result["networks"]:
        lines += [f"### {net['network']}, batch {net['batch']}", "",
                  "| program | median ms | min-max ms | temp MB | compile s |",
                  "|---|---|---|---|---|"]
        for label, v in net["variants"].items():
            temp = "-" if v["temp_bytes"] is None else f"{v['temp_bytes'] / 2**20:.1f}"
            lines.append(f"| {label} | {v['median_ms']:.1f} | {v['min_ms']:.1f}-"
                         f"{v['max_ms']:.1f} | {temp} | {v['compile_s']:.1f} |")
        lines += ["", "| ratio | median (min-max) |", "|---|---|"]
        for k, r in net["ratios"].items():
            cell = f"{r:.2f}" if isinstance(r, float) else \
                f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"
            lines.append(f"| {k} | {cell} |")
        lines.append("")
    return "\n".join(lines)


__all__ = ["NETWORKS", "bench_dp_network", "programs", "run", "to_markdown", "vmap_clip_step"]
