"""The worked example's walkthrough for a learner: every tensor of the 15-parameter CNN, by hand
and by JAX.

`run` pushes one 6x6 image through the 15-parameter CNN (`models.seed_cnn`), keeps every forward
tensor, computes every backward tensor by its formula (`worked_example.seed_backward`) and again
with `jax.grad` (`worked_example.seed_autodiff`), and returns it all as a plain, JSON-ready dict.
`format_text` prints it for a terminal, `plot` draws the maps as annotated heatmaps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.nn import grads, models
from jaxcnn.tools.worked_example import seed_autodiff, seed_backward, seed_forward, seed_grads
from jaxcnn.training import safefiles

TOL = 1e-12  # the largest |manual - autodiff| a pass allows (float64)
IMAGE_SHAPE = (6, 6)

FORWARD = {  # name -> equation (the worked example's forward propagation)
    "X": "X  (the input image)",
    "Z1": "Z1 = conv(X, W1) + B1",
    "A1": "A1 = ReLU(Z1)",
    "P1": "P1 = MaxPool(A1)  (2x2 windows, stride 2)",
    "F": "F = Flatten(P1)",
    "Z2": "Z2 = F W2 + B2",
    "A2": "A2 = sigmoid(Z2)  (the prediction y_hat)",
    "L": "L = BCE(Y, A2) = -[Y log A2 + (1 - Y) log(1 - A2)]",
}
BACKWARD = {  # name -> formula, in the order the worked example derives them
    "dL/dA2": "dL/dA2 = (A2 - Y) / (A2 (1 - A2))",
    "dA2/dZ2": "dA2/dZ2 = A2 (1 - A2)",
    "dZ2": "dZ2 = A2 - Y",
    "dW2": "dW2 = F^T dZ2",
    "dB2": "dB2 = dZ2",
    "dF": "dF = dZ2 W2^T",
    "dP1": "dP1 = reshape(dF)",
    "dA1": "dA1 = route dP1 to each window's maximum",
    "dZ1": "dZ1 = dA1 * (Z1 > 0)",
    "dB1": "dB1 = sum(dZ1)",
    "dW1": "dW1 = conv(X, dZ1)",
}
PARAMS = {"W1": ("conv", "w"), "B1": ("conv", "b"), "W2": ("dense", "w"), "B2": ("dense", "b")}


def default_image(seed: int = 0) -> np.ndarray:
    """A deterministic 6x6 image: a bright diagonal stroke, two pixels wide, plus small noise
    from `np.random.default_rng(seed)`."""
    stroke = np.eye(6) + np.eye(6, k=1)
    return stroke + 0.1 * np.random.default_rng(seed).standard_normal(IMAGE_SHAPE)


def check_image(image: Any) -> np.ndarray:
    """A 6x6 or 6x6x1 array of finite real numbers, as a float64 (6, 6) array.

    Raises:
      TypeError: a complex image (never cast: that would drop its imaginary part).
      ValueError: anything else that is not a 6x6 array of finite numbers.
    """
    if np.iscomplexobj(image):
        raise TypeError(f"the image must hold real numbers; got a complex array "
                        f"({np.asarray(image).dtype}), which would lose its imaginary part")
    try:
        a = np.asarray(image, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the image must be a numeric array of shape (6, 6) or (6, 6, 1): {e}"
                         ) from None
    if a.shape not in ((6, 6), (6, 6, 1)):
        raise ValueError(f"the image must have shape (6, 6) or (6, 6, 1); got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("the image must hold finite numbers; it has NaN or inf")
    return a.reshape(IMAGE_SHAPE)


def load_image(path: str | Path) -> np.ndarray:
    """A 6x6 (or 6x6x1) image from a .npy file.

    Args:
      path: the .npy file.

    Returns:
      the image as a float64 (6, 6) array.

    Raises:
      OSError: naming the path, if it cannot be opened.
      ValueError: naming the path, if it is empty, not a .npy file, truncated or damaged, or
        not a 6x6 array of finite numbers.
    """
    with open(path, "rb") as f:  # FileNotFoundError, IsADirectoryError: they name the path
        magic = f.read(6)
    if not magic:
        raise ValueError(f"cannot read {path}: the file is empty (0 bytes); expected a .npy file "
                         "holding one 6x6 array")
    if magic.startswith(b"PK"):
        raise ValueError(f"{path} holds several arrays (.npz); give one 6x6 array in a .npy")
    if magic != b"\x93NUMPY":
        raise ValueError(f"cannot read {path}: not a NumPy .npy file (it does not start with "
                         "the .npy magic bytes)")
    try:  # the header checked before anything is allocated (16 bytes: complex128 is named)
        a = safefiles.load_npy(path, max_bytes=6 * 6 * 16, bound="--image (one 6x6 array)")
    except (EOFError, ValueError) as e:  # a cut header or payload, or Python objects inside
        raise ValueError(f"cannot read {path}: a truncated or damaged .npy file, or one holding "
                         f"Python objects ({e})") from None
    try:
        return check_image(a)
    except TypeError as e:  # a complex .npy: bad input, named like the rest
        raise ValueError(f"cannot use {path}: {e}") from None


def _plain(a: Any) -> Any:
    """An array as nested lists of floats for display and JSON: a float if it has one element,
    a map (N=1, H, W, C=1) or W1 (3, 3, 1, 1) as its (H, W) matrix, a matrix (F, W2) as is."""
    a = np.asarray(a, np.float64)
    return a.item() if a.size == 1 else (np.squeeze(a) if a.ndim == 4 else a).tolist()


def _maxdiff(a: Any, b: Any) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max(initial=0.0))


def _finite_diff(pairs: list[tuple[Any, Any]]) -> float | None:
    """max |a - b| over the places where both are finite, if every pair is non-finite (inf or
    NaN) at exactly the same places on both sides; None if some place is non-finite on one
    side only (then the two disagree there)."""
    largest = 0.0
    for a, b in pairs:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if not np.array_equal(np.isfinite(a), np.isfinite(b)):
            return None
        ok = np.isfinite(a)
        largest = max(largest, _maxdiff(a[ok], b[ok]))
    return largest


def _numerics(img: np.ndarray, fwd: dict, pairs: list[tuple[Any, Any]]) -> str | None:
    """Why the comparison is void, when float64 itself fails (None when it does not): the
    forward pass overflows, or some gradient is inf or NaN on both sides at the same places
    (e.g. dL/dA2 = (A2 - Y) / (A2 (1 - A2)) is 0/0 once the sigmoid rounds A2 to exactly 1)
    while every finite value agrees within TOL. Not a fault of the rule either way."""
    diff = _finite_diff(pairs)
    if diff is None or diff > TOL or all(np.isfinite(np.asarray(a)).all() for a, _ in pairs):
        return None
    peak = f"X's largest |value| is {np.abs(img).max():.3g}"
    bad = [name for name in FORWARD if not np.isfinite(np.asarray(fwd[name])).all()]
    if bad:
        return (f"the input overflows float64: {FORWARD[bad[0]].split('  ')[0]} is not finite "
                f"({peak}), so neither gradient is; this says nothing about the rule")
    return (f"float64 cannot hold every gradient of this input: some are inf or NaN on both "
            f"sides, at the same places (A2 = {float(np.ravel(fwd['A2'])[0]):.17g}; {peak}), and "
            f"every finite value agrees; this says nothing about the rule")


def _ties(A1: np.ndarray) -> list[dict[str, Any]]:
    """MaxPool windows of A1 (4x4) whose maximum occurs more than once."""
    out = []
    for r in range(2):
        for c in range(2):
            win = A1[2 * r:2 * r + 2, 2 * c:2 * c + 2]
            count = int((win == win.max()).sum())
            if count > 1:
                out.append({"window": [r, c], "count": count, "max": float(win.max())})
    return out


def _param_table(manual: dict, auto: dict) -> list[dict[str, Any]]:
    """The 15 parameter gradients, one row each: name (W1[i,j], B1, W2[i], B2), manual,
    autodiff and |diff|, from the seed formulas' (`manual`) and jax.grad's (`auto`) dW1 (3, 3,
    1, 1), dB1 (1,), dW2 (4, 1), dB2 (1,)."""
    table = []
    for pname in PARAMS:
        m = np.asarray(manual["d" + pname], np.float64)
        a = np.asarray(auto["d" + pname], np.float64)
        for idx in np.ndindex(m.shape):  # W1 (3, 3, 1, 1) -> W1[i,j]; W2 (4, 1) -> W2[i]
            sub = {"W1": idx[:2], "W2": idx[:1]}.get(pname, ())
            name = f"{pname}[{','.join(map(str, sub))}]" if sub else pname
            table.append({"name": name, "manual": float(m[idx]), "autodiff": float(a[idx]),
                          "diff": float(abs(m[idx] - a[idx]))})
    return table


def run(seed: int = 0, label: float = 1.0, image: np.ndarray | None = None) -> dict:
    """Every forward and backward tensor of the seed net on one image, manual against autodiff.

    Turns on float64 (`jax_enable_x64`, process-wide). seed: the PRNG seed of the parameters
    (`jax.random.key(seed)`) and of the default image; label: Y, 0 or 1; image: 6x6 or 6x6x1, or
    None for `default_image(seed)`. Returns a JSON-ready dict: "forward" and "backward" map each
    tensor's name to its equation/formula and values (nested lists, batch and channel axes
    dropped; "shape" is the shape inside the network), "parameters" is the 15-row table,
    "max_abs_diff" the largest |manual - autodiff| anywhere, "network_max_abs_diff" the largest
    difference to the generic backprop `grads.manual_grad`, and "ok" whether both are <= TOL.
    """
    jax.config.update("jax_enable_x64", True)
    if label not in (0, 1):
        raise ValueError(f"the label Y must be 0 or 1; got {label}")
    img = default_image(seed) if image is None else check_image(image)
    model = models.seed_cnn()
    params = model.init(jax.random.key(seed), jnp.float64)
    X = jnp.asarray(img, jnp.float64).reshape(1, 6, 6, 1)
    Y = jnp.array([float(label)], jnp.float64)

    fwd = seed_forward(params, X, Y)
    manual = seed_backward(params, fwd, Y)
    auto = seed_autodiff(params, fwd, Y)
    _, network = grads.manual_grad(model, params, X, Y)
    seed_params = seed_grads(manual)

    backward = {name: {"formula": formula, "shape": list(manual[name].shape),
                       "manual": _plain(manual[name]), "autodiff": _plain(auto[name]),
                       "max_abs_diff": _maxdiff(manual[name], auto[name])}
                for name, formula in BACKWARD.items()}
    table = _param_table(manual, auto)
    # np.max, not max(): a NaN difference must win (Python's max can drop it, and PASS)
    largest = float(np.max([*(b["max_abs_diff"] for b in backward.values()),
                            *(row["diff"] for row in table)]))
    network_diff = float(np.max([_maxdiff(a, b) for a, b in zip(jax.tree.leaves(seed_params),
                                                                jax.tree.leaves(network))]))
    numerics = _numerics(img, fwd, [(manual[n], auto[n]) for n in BACKWARD] + list(zip(
        jax.tree.leaves(seed_params), jax.tree.leaves(network))))
    return {
        "seed": seed, "label": float(label),
        "image": "default" if image is None else "given",
        "params": {p: _plain(params[layer][leaf]) for p, (layer, leaf) in PARAMS.items()},
        "forward": {name: {"equation": eq, "shape": list(fwd[name].shape),
                           "value": _plain(fwd[name])} for name, eq in FORWARD.items()},
        "backward": backward,
        "maxpool_ties": _ties(np.asarray(fwd["A1"])[0, :, :, 0]),
        "parameters": table,
        "max_abs_diff": largest,
        "network_max_abs_diff": network_diff,
        "tolerance": TOL,
        "numerics": numerics,
        "ok": bool(largest <= TOL and network_diff <= TOL),
    }


# ----------------------------------------------------------------------------- text
def _shape_tag(value: Any) -> str:
    shape = np.shape(value)
    return f"  ({'x'.join(map(str, shape))})" if len(shape) == 2 else \
        f"  ({shape[0]},)" if len(shape) == 1 else ""


def _block(value: Any, decimals: int) -> list[str]:
    """A vector or matrix as right-aligned rows of fixed-point numbers."""
    a = np.atleast_2d(np.asarray(value, np.float64))
    cells = [[f"{v + 0.0: .{decimals}f}" for v in row] for row in a]  # + 0.0: no "-0.0"
    width = max(len(c) for row in cells for c in row)
    return [" ".join(c.rjust(width) for c in row) for row in cells]


def _side_by_side(left: list[str], right: list[str], titles: tuple[str, str],
                  indent: str = "    ") -> list[str]:
    width = max(len(s) for s in [*left, titles[0]])
    rows = [titles, *zip(left, right)]
    return [f"{indent}{a.ljust(width)}   {b}".rstrip() for a, b in rows]


def format_text(result: dict) -> str:
    """The walkthrough as text for a 100-column terminal: parameters, forward tensors, backward
    tensors (manual beside jax.grad), the 15-parameter table and a verdict."""
    image = f"default_image({result['seed']}): a diagonal stroke plus noise" \
        if result["image"] == "default" else "the given image"
    lines = [f"The seed CNN of the worked example: params from jax.random.key({result['seed']}), "
             f"label Y = {result['label']:g},", f"X = {image}", "", "Parameters"]
    for name, value in result["params"].items():
        lines += [f"  {name}{_shape_tag(value)}", *("    " + s for s in _block(value, 4))]
    lines += ["", "Forward pass"]
    for t in result["forward"].values():
        v = t["value"]
        if np.ndim(v) == 0:
            lines.append(f"  {t['equation']} = {v:.10f}")
        else:
            lines += [f"  {t['equation']}{_shape_tag(v)}", *("    " + s for s in _block(v, 4))]
    lines += ["", "Backward pass (seed formula; manual value beside jax.grad's)"]
    for name, t in result["backward"].items():
        m, a = t["manual"], t["autodiff"]
        if np.ndim(m) == 0:
            lines += [f"  {t['formula']}", f"    manual {m: .12f}    jax.grad {a: .12f}"]
        else:
            lines.append(f"  {t['formula']}{_shape_tag(m)}")
            lines += _side_by_side(_block(m, 6), _block(a, 6), ("manual", "jax.grad"))
        lines.append(f"    max |manual - autodiff| = {t['max_abs_diff']:.1e}")
        if name == "dA1":
            for tie in result["maxpool_ties"]:
                r, c = tie["window"]
                lines.append(f"    note: window ({r},{c}) of A1 has {tie['count']} equal maxima "
                             f"({tie['max']:.4f}); its dP1 goes to the first in row-major order,")
                lines.append("          as jax.grad routes it" +
                             (" (the ReLU mask then zeroes it)" if tie["max"] <= 0 else ""))
    lines += ["", "The 15 parameter gradients",
              f"  {'parameter':10} {'manual':>18} {'jax.grad':>18} {'|diff|':>10}"]
    lines += [f"  {r['name']:10} {r['manual']:18.12f} {r['autodiff']:18.12f} {r['diff']:10.1e}"
              for r in result["parameters"]]
    lines += ["", f"Generic network backprop (grads.manual_grad) vs the seed formulas: "
                  f"max |diff| = {result['network_max_abs_diff']:.1e}", "", verdict(result)]
    return "\n".join(lines)


def verdict(result: dict) -> str:
    """One line: PASS or FAIL, with the largest differences and the tolerance; where float64
    itself failed (`result["numerics"]`), FAIL with that reason first, not blaming the rule."""
    word = "PASS" if result["ok"] else "FAIL"
    why = f"{result['numerics']} (" if result.get("numerics") else ""
    return (f"{word}: {why}max |manual - jax.grad| = {result['max_abs_diff']:.1e}, max |manual - "
            f"network backprop| = {result['network_max_abs_diff']:.1e} (tolerance "
            f"{result['tolerance']:.0e}){')' if why else ''}")


# ----------------------------------------------------------------------------- figure
def _summary(result: dict) -> str:
    """The figure's scalars: loss, prediction and the dense layer's gradients."""
    f, b = result["forward"], result["backward"]
    m = {name: b[name]["manual"] for name in ("dZ2", "dB2", "dB1")}
    return "\n".join([
        f"Y  = {result['label']:g}", f"A2 = {f['A2']['value']:.4f}", f"L  = {f['L']['value']:.4f}",
        "", f"dZ2 = A2 - Y   = {m['dZ2']:.4f}", f"dB2 = dZ2      = {m['dB2']:.4f}",
        f"dB1 = sum(dZ1) = {m['dB1']:.4f}", "dW2 = F^T dZ2  =",
        *(f"  [{v:7.4f}]" for v in np.ravel(b["dW2"]["manual"])), "",
        "max |manual - jax.grad|", f"  = {result['max_abs_diff']:.1e}"])


def plot(result: dict, path: str | Path) -> None:
    """Annotated heatmaps of every forward tensor (X, W1, Z1, A1, P1, F, W2, Z2) over every
    backward one, in the order backprop reaches them (dZ2, dW2, dF, dP1, dA1, dZ1, dW1), saved as
    a PNG. Uses the Agg canvas; never opens a window."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    f, b = result["forward"], result["backward"]
    panels = [
        [("X", f["X"]["value"]), ("W1", result["params"]["W1"]), ("Z1", f["Z1"]["value"]),
         ("A1 = ReLU(Z1)", f["A1"]["value"]), ("P1 = MaxPool(A1)", f["P1"]["value"]),
         ("F = Flatten(P1)", f["F"]["value"]), ("W2", result["params"]["W2"]),
         ("Z2 = F W2 + B2", f["Z2"]["value"])],
        [("dZ2 = A2 - Y", b["dZ2"]["manual"]), ("dW2 = F^T dZ2", b["dW2"]["manual"]),
         ("dF = dZ2 W2^T", b["dF"]["manual"]), ("dP1", b["dP1"]["manual"]),
         ("dA1", b["dA1"]["manual"]), ("dZ1", b["dZ1"]["manual"]),
         ("dW1 = conv(X, dZ1)", b["dW1"]["manual"])],
    ]
    cols = max(len(r) for r in panels) + (len(panels[0]) == len(panels[1]))
    fig = Figure(figsize=(3.2 * cols, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, cols)
    fig.suptitle(f"Seed CNN walkthrough (seed {result['seed']}, Y = {result['label']:g}): "
                 f"forward maps (top), manual gradients (bottom)")
    for row, (panel_row, decimals) in enumerate(zip(panels, (2, 4))):
        for col in range(cols):
            ax = axes[row, col]
            if col >= len(panel_row):  # the last cell: the scalars, as text
                ax.axis("off")
                ax.text(0.0, 0.5, _summary(result), va="center", family="monospace", fontsize=9)
                continue
            title, value = panel_row[col]
            a = np.atleast_2d(np.asarray(value, np.float64))
            lim = float(np.abs(a).max()) or 1.0
            im = ax.imshow(a, cmap="RdBu_r", vmin=-lim, vmax=lim)
            fig.colorbar(im, ax=ax, shrink=0.8)
            ax.set_title(f"{title}  ({a.shape[0]}x{a.shape[1]})")
            ax.set_xticks(range(a.shape[1]))
            ax.set_yticks(range(a.shape[0]))
            for (i, j), v in np.ndenumerate(a):
                ax.text(j, i, f"{v:.{decimals}f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(v) > 0.6 * lim else "black")
    fig.savefig(path, format="png", dpi=100)
