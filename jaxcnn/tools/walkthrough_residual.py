"""The walkthrough of one residual basic block: where the shortcut's gradient and the branch's
meet.

    x (2, 4, 4, 2) -> Z1 = conv1(x, W1) -> BN1 -> A1 = relu(BN1) -> Z2 = conv2(A1, W2) -> BN2
      -> S = BN2 + x  (the residual join) -> Y = relu(S) -> L = 1/2 sum(Y^2)

He et al.'s basic block, built from `jaxcnn.nn`: `Serial(Residual(Serial(conv1, bn1, relu1,
conv2, bn2)), relu)`, both convolutions 3x3, pad 1, no bias, BatchNorm in training mode (batch
statistics over N, H, W, M = 32 elements per channel), float64. `run` pushes a fixed input
through it layer by layer, then walks the backward pass one rule of `jaxcnn.backward` at a time
(`backward.relu`, `backward.add`, `backward.batch_norm`, `backward.conv2d`, looked up at each
call): the join hands dS to both of its inputs, so the input gets two gradients, the
shortcut's dx_shortcut = dS and the branch's dx_f, and dx = dx_f + dx_shortcut. Every manual
tensor is set beside `jax.grad`'s (the rest of the block from that tensor to L, differentiated;
dx and the parameters from `jax.vjp` of the block's own forward), and the block's generic
backward (`Layer.backward` of the combinators) is checked against the step-by-step rules.
`format_text` prints it for a 100-column terminal.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import backward, forward
from jaxcnn.nn import combinators, layers

TOL = 1e-12  # the largest |manual - autodiff| a pass allows (float64)
INPUT_SHAPE = (2, 4, 4, 2)  # (N, H, W, C)

FORWARD = {  # name -> equation
    "X": "X  (the block's input)",
    "Z1": "Z1 = conv1(X, W1)  (3x3, pad 1, no bias)",
    "BN1": "BN1 = gamma1 (Z1 - mean) / sqrt(var + eps) + beta1  (batch statistics)",
    "A1": "A1 = relu(BN1)",
    "Z2": "Z2 = conv2(A1, W2)  (3x3, pad 1, no bias)",
    "BN2": "BN2 = gamma2 (Z2 - mean) / sqrt(var + eps) + beta2  (batch statistics)",
    "S": "S = BN2 + X  (the join: residual branch + identity shortcut)",
    "Y": "Y = relu(S)",
    "L": "L = 1/2 sum(Y^2)",
}
# name -> (path, formula, the rule that computes it), in the order backprop reaches them
BACKWARD = {
    "dY": ("loss", "dY = Y  (dL/dY of L = 1/2 sum(Y^2))", "the loss's derivative"),
    "dS": ("join", "dS = dY * (S > 0)", "backward.relu"),
    "dx_shortcut": ("shortcut", "dx_shortcut = dS  (the identity passes dS through)",
                    "backward.add"),
    "dBN2": ("branch", "dBN2 = dS", "backward.add"),
    "dZ2": ("branch", "dZ2 = gamma2 / (M sigma2) (M dBN2 - sum dBN2 - x_hat2 sum(dBN2 x_hat2))",
            "backward.batch_norm"),
    "dgamma2": ("branch", "dgamma2 = sum dBN2 x_hat2", "backward.batch_norm"),
    "dbeta2": ("branch", "dbeta2 = sum dBN2", "backward.batch_norm"),
    "dA1": ("branch", "dA1 = full conv(dZ2, rot180(W2), channels swapped)", "backward.conv2d"),
    "dW2": ("branch", "dW2 = conv(A1, dZ2)", "backward.conv2d"),
    "dBN1": ("branch", "dBN1 = dA1 * (BN1 > 0)", "backward.relu"),
    "dZ1": ("branch", "dZ1 = gamma1 / (M sigma1) (M dBN1 - sum dBN1 - x_hat1 sum(dBN1 x_hat1))",
            "backward.batch_norm"),
    "dgamma1": ("branch", "dgamma1 = sum dBN1 x_hat1", "backward.batch_norm"),
    "dbeta1": ("branch", "dbeta1 = sum dBN1", "backward.batch_norm"),
    "dx_f": ("branch", "dx_f = full conv(dZ1, rot180(W1), channels swapped)", "backward.conv2d"),
    "dW1": ("branch", "dW1 = conv(X, dZ1)", "backward.conv2d"),
    "dx": ("join", "dx = dx_f + dx_shortcut", "the two paths meet: their sum"),
}
PARAMS = {  # name -> (sub-layer of the branch, leaf)
    "W1": ("conv1", "w"), "gamma1": ("bn1", "gamma"), "beta1": ("bn1", "beta"),
    "W2": ("conv2", "w"), "gamma2": ("bn2", "gamma"), "beta2": ("bn2", "beta"),
}


def build_block() -> tuple[layers.Layer, dict[str, layers.Layer]]:
    """The block (N, 4, 4, 2) -> (N, 4, 4, 2) and its named sub-layers.

    Returns:
      (block, sub), block = Serial(Residual(f), relu) with f = Serial(conv1, bn1, relu1, conv2,
      bn2); params {"residual": {"f": {"conv1": {"w": (3, 3, 2, 2)}, "bn1": {"gamma": (2,),
      "beta": (2,)}, "conv2": ..., "bn2": ...}}}; sub maps conv1, bn1, relu1, conv2, bn2, relu to
      the Layer objects inside it.
    """
    c = INPUT_SHAPE[-1]
    sub = {"conv1": layers.Conv2D(c, 3, padding=1, use_bias=False, name="conv1"),
           "bn1": layers.BatchNorm(name="bn1"), "relu1": layers.ReLU(name="relu1"),
           "conv2": layers.Conv2D(c, 3, padding=1, use_bias=False, name="conv2"),
           "bn2": layers.BatchNorm(name="bn2"), "relu": layers.ReLU(name="relu")}
    f = combinators.Serial(*(sub[n] for n in ("conv1", "bn1", "relu1", "conv2", "bn2")),
                           name="f")
    block = combinators.Serial(combinators.Residual(f, name="residual"), sub["relu"],
                               name="block")
    return block, sub


def setup(seed: int = 0) -> tuple[layers.Layer, dict, Any, dict, jax.Array]:
    """The block, its params and state, its sub-layers and the input X (2, 4, 4, 2), float64.

    W1, W2 (3, 3, 2, 2): the block's He-normal init from `jax.random.key(seed)`; gamma (2,) =
    1 + 0.2 N(0, 1) and beta (2,) = 0.1 N(0, 1), and X = N(0, 1), all from
    `np.random.default_rng(seed)` (gamma and beta away from 1 and 0, so that every factor of the
    rules shows). Returns (block, params, state, sub-layers, X).
    """
    jax.config.update("jax_enable_x64", True)
    block, sub = build_block()
    _, params, state = block.init(jax.random.key(seed), INPUT_SHAPE[1:], jnp.float64)
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.standard_normal(INPUT_SHAPE))
    c = INPUT_SHAPE[-1]
    for bn in ("bn1", "bn2"):
        params["residual"]["f"][bn] = {"gamma": jnp.asarray(1 + 0.2 * rng.standard_normal(c)),
                                       "beta": jnp.asarray(0.1 * rng.standard_normal(c))}
    return block, params, state, sub, X


def _loss(Y: jax.Array) -> jax.Array:
    return 0.5 * jnp.sum(Y * Y)


def _forward(sub: dict, pf: dict, X: jax.Array) -> dict[str, jax.Array]:
    """Every forward tensor, one sub-layer's `apply` (training mode) at a time."""
    def ap(name, x):
        return sub[name].apply(pf.get(name, {}), {}, x, train=True)[0]

    t = {"X": X}
    t["Z1"] = ap("conv1", X)
    t["BN1"] = ap("bn1", t["Z1"])
    t["A1"] = ap("relu1", t["BN1"])
    t["Z2"] = ap("conv2", t["A1"])
    t["BN2"] = ap("bn2", t["Z2"])
    t["S"] = forward.add(t["BN2"], X)
    t["Y"] = ap("relu", t["S"])
    t["L"] = _loss(t["Y"])
    return t


def manual_backward(sub: dict, pf: dict, t: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Every backward tensor by its rule of `jaxcnn.backward`, no autodiff.

    Args:
      sub: the sub-layers (`build_block`); pf: the branch's params {"conv1": {"w"}, ...};
      t: the forward tensors of `_forward`, each (2, 4, 4, 2) but L ().

    Returns:
      {name: tensor} for every name of BACKWARD: the maps (2, 4, 4, 2), dW1, dW2 (3, 3, 2, 2),
      dgamma, dbeta (2,).
    """
    eps1, eps2 = sub["bn1"].spec["eps"], sub["bn2"].spec["eps"]
    g = {"dY": t["Y"]}                                     # d/dY of 1/2 sum(Y^2)
    g["dS"] = backward.relu(g["dY"], t["S"])               # the ReLU's mask
    # the join S = BN2 + X: d(a + b)/da = d(a + b)/db = 1, the whole dS to each input
    g["dBN2"], g["dx_shortcut"] = backward.add(g["dS"], t["BN2"], t["X"])
    g["dZ2"], g["dgamma2"], g["dbeta2"] = backward.batch_norm(
        g["dBN2"], t["Z2"], pf["bn2"]["gamma"], pf["bn2"]["beta"], eps=eps2)
    g["dA1"], g["dW2"], _ = backward.conv2d(g["dZ2"], t["A1"], pf["conv2"]["w"], padding=1)
    g["dBN1"] = backward.relu(g["dA1"], t["BN1"])
    g["dZ1"], g["dgamma1"], g["dbeta1"] = backward.batch_norm(
        g["dBN1"], t["Z1"], pf["bn1"]["gamma"], pf["bn1"]["beta"], eps=eps1)
    g["dx_f"], g["dW1"], _ = backward.conv2d(g["dZ1"], t["X"], pf["conv1"]["w"], padding=1)
    # x fed both paths: its gradient is the sum of theirs
    g["dx"] = g["dx_f"] + g["dx_shortcut"]
    return {name: g[name] for name in BACKWARD}


def autodiff(block: layers.Layer, sub: dict, params: dict, state: dict,
             t: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The same derivatives from JAX: for each intermediate T, `jax.grad` of the rest of the
    block (T -> L) at T's value; dx_f and dx_shortcut, `jax.grad` in x through one path with
    the other's x held fixed; dx and the parameter gradients, `jax.vjp` of the block's own
    forward (`block.apply`, training mode) on dY = jax.grad(L)(Y). Shapes as `manual_backward`.
    """
    pf, X = params["residual"]["f"], t["X"]

    def ap(name, x, p=None):
        return sub[name].apply(pf.get(name, {}) if p is None else p, {}, x, train=True)[0]

    def from_S(S):
        return _loss(ap("relu", S))

    def from_BN2(b):
        return from_S(forward.add(b, X))

    def from_Z2(z):
        return from_BN2(ap("bn2", z))

    def from_BN1(b):
        return from_Z2(ap("conv2", ap("relu1", b)))

    def branch(x):  # f(x), the residual branch
        return ap("bn2", ap("conv2", ap("relu1", ap("bn1", ap("conv1", x)))))

    d = {"dY": jax.grad(_loss)(t["Y"]), "dS": jax.grad(from_S)(t["S"])}
    d["dx_shortcut"] = jax.grad(lambda x: from_S(forward.add(t["BN2"], x)))(X)
    d["dBN2"] = jax.grad(from_BN2)(t["BN2"])
    d["dZ2"] = jax.grad(from_Z2)(t["Z2"])
    d["dA1"] = jax.grad(lambda a: from_Z2(ap("conv2", a)))(t["A1"])
    d["dBN1"] = jax.grad(from_BN1)(t["BN1"])
    d["dZ1"] = jax.grad(lambda z: from_BN1(ap("bn1", z)))(t["Z1"])
    d["dx_f"] = jax.grad(lambda x: from_S(forward.add(branch(x), X)))(X)
    _, vjp = jax.vjp(lambda p, x: block.apply(p, state, x, train=True)[0], params, X)
    dparams, d["dx"] = vjp(d["dY"])
    for name, (layer, leaf) in PARAMS.items():
        d["d" + name] = dparams["residual"]["f"][layer][leaf]
    return {name: d[name] for name in BACKWARD}


def _plain(a: Any) -> Any:
    a = np.asarray(a, np.float64)
    return a.item() if a.ndim == 0 else a.tolist()


def _maxdiff(a: Any, b: Any) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max(initial=0.0))


def _norm(a: Any) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64).ravel()))


def run(seed: int = 0) -> dict:
    """Every forward and backward tensor of the residual block, manual against autodiff.

    Turns on float64 (`jax_enable_x64`, process-wide). seed: the PRNG seed of W1, W2
    (`jax.random.key(seed)`) and of X (2, 4, 4, 2), gamma and beta (`np.random.default_rng`).

    Returns:
      A JSON-ready dict: "params", "forward" (name -> equation, shape, value as nested lists,
      norm), "backward" (name -> path: shortcut / branch / join / loss, formula, rule, shape,
      manual, autodiff, their norms, max_abs_diff), "paths" (the norms of dx_shortcut, dx_f and
      dx), "max_abs_diff" (the largest |manual - autodiff| anywhere), "network_max_abs_diff"
      (the block's generic `Layer.backward` vs the step-by-step rules, dx and every parameter),
      "forward_max_abs_diff" (`block.apply` vs the layer-by-layer Y), "tolerance" and "ok".
    """
    block, params, state, sub, X = setup(seed)
    pf = params["residual"]["f"]
    t = _forward(sub, pf, X)
    manual = manual_backward(sub, pf, t)
    auto = autodiff(block, sub, params, state, t)
    Y_block, _, residual = block.apply(params, state, X, train=True)
    dx_net, g_net = block.backward(t["Y"], params, X, residual)
    network_diff = max([_maxdiff(dx_net, manual["dx"])] + [
        _maxdiff(g_net["residual"]["f"][layer][leaf], manual["d" + name])
        for name, (layer, leaf) in PARAMS.items()])
    bwd = {name: {"path": path, "formula": formula, "rule": rule,
                  "shape": list(manual[name].shape), "manual": _plain(manual[name]),
                  "autodiff": _plain(auto[name]), "norm_manual": _norm(manual[name]),
                  "norm_autodiff": _norm(auto[name]),
                  "max_abs_diff": _maxdiff(manual[name], auto[name])}
           for name, (path, formula, rule) in BACKWARD.items()}
    largest = max(b["max_abs_diff"] for b in bwd.values())
    forward_diff = _maxdiff(Y_block, t["Y"])
    return {
        "block": "residual", "seed": seed, "input_shape": list(INPUT_SHAPE),
        "params": {n: _plain(pf[layer][leaf]) for n, (layer, leaf) in PARAMS.items()},
        "forward": {name: {"equation": eq, "shape": list(np.shape(t[name])),
                           "value": _plain(t[name]), "norm": _norm(t[name])}
                    for name, eq in FORWARD.items()},
        "backward": bwd,
        "paths": {n: _norm(manual[n]) for n in ("dx_shortcut", "dx_f", "dx")},
        "max_abs_diff": largest, "network_max_abs_diff": network_diff,
        "forward_max_abs_diff": forward_diff, "tolerance": TOL,
        "ok": bool(max(largest, network_diff, forward_diff) <= TOL),
    }


# ----------------------------------------------------------------------------- text
def _rows(a: Any, decimals: int) -> list[str]:
    """A matrix as right-aligned rows of fixed-point numbers."""
    a = np.atleast_2d(np.asarray(a, np.float64))
    cells = [[f"{v + 0.0: .{decimals}f}" for v in row] for row in a]  # + 0.0: no "-0.0"
    width = max(len(c) for row in cells for c in row)
    return [" ".join(c.rjust(width) for c in row) for row in cells]


def _columns(blocks: list[list[str]], titles: list[str], indent: str = "    ") -> list[str]:
    """Blocks of rows side by side under their titles."""
    widths = [max(len(s) for s in [*b, t]) for b, t in zip(blocks, titles)]
    out = []
    for row in [titles, *zip(*blocks)]:
        out.append((indent + "   ".join(c.ljust(w) for c, w in zip(row, widths))).rstrip())
    return out


def _slice(value: Any, pick: tuple) -> np.ndarray:
    return np.asarray(value, np.float64)[pick]


def _tensor_lines(name: str, b: dict) -> list[str]:
    """One backward tensor: its rule, manual beside jax.grad, norms and max |diff|."""
    m, a = b["manual"], b["autodiff"]
    tag = "x".join(map(str, b["shape"]))
    lines = [f"  [{b['path']}] {b['formula']}  ({tag})"]
    if len(b["shape"]) == 1:
        lines += _columns([_rows(m, 10), _rows(a, 10)], ["manual", "jax.grad"])
    else:
        pick, where = ((0, Ellipsis, 0), "example 0, channel 0") if name != "dW1" and \
            name != "dW2" else ((Ellipsis, 0, 0), "[:, :, 0, 0]")
        lines += _columns([_rows(_slice(m, pick), 6), _rows(_slice(a, pick), 6)],
                          [f"manual, {where}", "jax.grad"])
        lines.append(f"    ||manual|| = {b['norm_manual']:.12f}   ||jax.grad|| = "
                     f"{b['norm_autodiff']:.12f}")
    n = int(np.prod(b["shape"]))
    lines.append(f"    max |manual - autodiff| = {b['max_abs_diff']:.1e} over all {n} entries; "
                 f"manual: {b['rule']}")
    return lines


def format_text(result: dict) -> str:
    """The walkthrough as text for a 100-column terminal: parameters, forward tensors (example 0,
    both channels, and the norm over all of it), backward tensors (manual beside jax.grad, by
    path), the meeting of the two paths, the parameter gradients and a verdict."""
    n, h, w, c = result["input_shape"]
    p, f, b = result["params"], result["forward"], result["backward"]
    lines = [
        "A residual basic block: Y = relu(BN2(conv2(relu(BN1(conv1(X))))) + X), float64",
        "  jaxcnn.nn: Serial(Residual(Serial(conv1, bn1, relu1, conv2, bn2)), relu)",
        f"  X ({n}, {h}, {w}, {c}) and gamma, beta from np.random.default_rng({result['seed']}); "
        f"W1, W2 from jax.random.key({result['seed']})",
        f"  BatchNorm in training mode: statistics over N, H, W, M = {n * h * w} per channel",
        "", "Parameters"]
    for name in ("W1", "W2"):
        lines.append(f"  {name}  (3x3x{c}x{c}; [:, :, c_in, c_out])")
        for i in range(c):  # one row of blocks per input channel
            lines += _columns([_rows(np.asarray(p[name])[:, :, i, o], 4) for o in range(c)],
                              [f"[:, :, {i}, {o}]" for o in range(c)])
    for name in ("gamma1", "beta1", "gamma2", "beta2"):
        lines.append(f"  {name:7} = [{', '.join(f'{v:.4f}' for v in p[name])}]")
    lines += ["", "Forward pass (example 0; ||T|| over the whole batch)"]
    for name, t in f.items():
        if name == "L":
            lines.append(f"  {t['equation']} = {t['value']:.10f}")
            continue
        v = np.asarray(t["value"])
        lines.append(f"  {t['equation']}  ||{name}|| = {t['norm']:.6f}")
        lines += _columns([_rows(v[0, :, :, k], 4) for k in range(c)],
                          [f"channel {k}" for k in range(c)])
    lines += ["", "Backward pass (each step one rule of jaxcnn.backward; manual beside "
              "jax.grad's)"]
    for name, t in b.items():
        if name == "dx_shortcut":
            lines += ["  The join S = BN2 + X hands dS to both of its inputs (backward.add):",
                      "  the shortcut path ends at once, the branch path goes on through BN2, "
                      "conv2, relu1, BN1, conv1"]
        if name == "dx":
            lines += ["  The two paths meet at X: it fed both, so its gradient is their sum"]
        lines += _tensor_lines(name, t)
    q = result["paths"]
    lines += [f"    ||dx_shortcut|| = {q['dx_shortcut']:.6f} (shortcut)   ||dx_f|| = "
              f"{q['dx_f']:.6f} (branch)   ||dx|| = {q['dx']:.6f} (sum)",
              "", "Parameter gradients",
              f"  {'gradient':9} {'||manual||':>16} {'||jax.grad||':>16} {'max |diff|':>11}"]
    lines += [f"  {'d' + name:9} {b['d' + name]['norm_manual']:16.12f} "
              f"{b['d' + name]['norm_autodiff']:16.12f} {b['d' + name]['max_abs_diff']:11.1e}"
              for name in PARAMS]
    lines += ["", f"The block's own backward (Layer.backward of Serial and Residual) vs the "
              f"rules: max |diff| = {result['network_max_abs_diff']:.1e}", "", verdict(result)]
    return "\n".join(lines)


def verdict(result: dict) -> str:
    """One line: PASS or FAIL, with the largest differences and the tolerance."""
    word = "PASS" if result["ok"] else "FAIL"
    return (f"{word}: max |manual - jax.grad| = {result['max_abs_diff']:.1e}, max |manual - "
            f"block backward| = {result['network_max_abs_diff']:.1e} (tolerance "
            f"{result['tolerance']:.0e})")
