"""The composition sweep: the hand-written gradients equal `jax.grad` however they are composed
and compiled (issue 18; docs/xla_traps.md, section 6, "A fused output written over a buffer the
fusion still reads through a reshape").

Why. Every rule is checked alone and every model eagerly, yet a compiler can still change a
composition: on jaxlib 0.10.2 (and 0.12.0.1), XLA:CPU gave conv -> tanh -> 2x2/2 max pool ->
conv a manual gradient with relative error ~1.2 under `jax.jit` only (the fused `* (1 - a^2)`
wrote its output over the tanh output that the same fusion still read through the max-pool
rule's reshaped view), while the eager call and `jax.grad` were right. It showed only after tanh
or sigmoid, with a convolution after the pool, and only on larger buffers (a 16x16x8 activation,
batch 2, failed; 14x14x8, batch 2, and the usual test sizes of a few hundred elements did not):
hence the "large" families, whose first activation holds 4096 elements.

What. Chains conv -> activation (ReLU, LeakyReLU, Sigmoid, Tanh) -> pool (max, average, L2;
tiling windows, stride = window, and overlapping ones, stride < window) -> conv -> activation ->
flatten -> dense, softmax head: 24 per shape family (4 x 3 x 2); families on 1, 2 and 3 spatial
axes, a large one per rank and an odd-sized 2-D one (VALID, a row no tiling window reads, 3-wide
overlapping windows). A family's chains are compiled together, one program per (family,
composition), and run on two seeds (params and data):

    jit          jax.jit(jaxcnn.manual_grad)                     vs jaxcnn.autodiff_grad
    jit+options  steps.jit_with_options (the project's CPU compiler options), the same
    jit(vmap)    per-example gradients jax.jit(jax.vmap(manual))  vs jax.vmap(jax.grad)
    vmap(jit)    jax.vmap(jax.jit(manual)), the same
    hvp          jax.jit(jaxcnn.hvp)                             vs jax.jvp(jax.grad(model.loss))
    train_step   steps.train_step_fn(grad="manual") compiled as make_train_step compiles it
                 (jit_with_options), against the autodiff gradient: the gradient the optimizer
                 received and the updated params
    eager        no jit (2d-large, one seed: op by op)

jit and jit+options run every chain of every family; the other compositions, whose programs are
up to 2.5 times larger, run half the chains of each large family (`chains(half=True)`: every
pair of activation, pool and window; the 2-D half holds issue 18's tanh and sigmoid before the
tiling max pool). The references are plain `jax.jit` programs. float64, rtol 1e-9 relative to each
leaf's largest |reference|.

Then every model of `models.MODELS`, and tempered_cnn(pool_stride=2) (issue 18's network), under
a plain `jax.jit(jaxcnn.manual_grad, static_argnums=0)` against `jaxcnn.autodiff_grad`, in
evaluation mode; and that network in `steps.make_train_step`, grad="manual" against "autodiff".

Time is XLA compiling (about 80 s of CPU on jaxlib 0.10.2): one compile per (family,
composition); params are drawn in NumPy, so that no random op is compiled.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcnn
from jaxcnn import forward
from jaxcnn.nn import layers, models
from jaxcnn.nn.network import SOFTMAX, Network
from jaxcnn.training import steps

from helpers import rel_err

RTOL = 1e-9
SEEDS = (0, 1)
CLASSES = 3
LR = 0.5  # the train step's SGD rate: the updated params differ from the old by O(1)

ACTIVATIONS = {  # in this order: see `chains` (half)
    "relu": layers.ReLU,
    "sigmoid": layers.Sigmoid,
    "leaky_relu": lambda name: layers.LeakyReLU(0.1, name=name),
    "tanh": layers.Tanh,
}
POOLS = {"max": layers.MaxPool, "avg": layers.AvgPool, "l2": layers.L2Pool}
CONVS = {1: layers.Conv1D, 2: layers.Conv2D, 3: layers.Conv3D}


class Family(NamedTuple):
    """Chains of one input shape: conv1 (features, kernel, padding) -> act -> pool, tiling
    (window 2, stride 2) or overlapping (`overlap` = (window, stride)) -> conv2 (3 features,
    kernel `k2`, SAME) -> act -> flatten -> dense CLASSES."""
    rank: int
    input_shape: tuple[int, ...]
    batch: int
    conv1: tuple[int, int, str]
    overlap: tuple[int, int]
    k2: int


FAMILIES = {
    # conv1's output 4096 elements (256 x 8, batch 2): above XLA:CPU's threshold for a split loop
    "1d-large": Family(1, (256, 1), 2, (8, 3, "SAME"), (2, 1), 3),
    "2d-large": Family(2, (16, 16, 1), 2, (8, 3, "SAME"), (2, 1), 3),  # issue 18's composition
    # overlapping 3x3x3 windows: 27 elements, past PAIRWISE_MAX: the max pool's by-index form
    "3d-large": Family(3, (8, 8, 8, 1), 2, (4, 3, "SAME"), (3, 1), 3),
    # odd sizes (a row the tiling windows never read), VALID, 3-wide overlapping windows
    "2d-odd": Family(2, (17, 15, 2), 3, (8, 3, "VALID"), (3, 2), 2),
}
LARGE = ("1d-large", "2d-large", "3d-large")


# ----------------------------------------------------------------------------- the chains
@functools.cache
def chains(family: str, half: bool = False) -> dict[str, Network]:
    """{chain name: Network}: the 24 chains of a family, or with `half` the 12 whose indices
    (activation a, pool p, window w: 0 tiling, 1 overlapping) have a + p + w + rank odd. The
    half holds every pair of an activation, a pool and a window kind; the 2-D families' half
    and the 1-D / 3-D families' half make up the whole product; the 2-D half holds tanh and
    sigmoid before the tiling max pool (issue 18's composition)."""
    f = FAMILIES[family]
    conv, (c1, k1, pad1) = CONVS[f.rank], f.conv1
    windows = {"tiling": (2, 2), "overlap": f.overlap}
    out = {}
    for a, (act_name, act) in enumerate(ACTIVATIONS.items()):
        for p, (pool_name, pool) in enumerate(POOLS.items()):
            for w, (kind, (window, stride)) in enumerate(windows.items()):
                if half and (a + p + w + f.rank) % 2 == 0:
                    continue
                name = f"{family}/{act_name}-{pool_name}-{kind}{window}s{stride}"
                out[name] = Network(name, [
                    conv(c1, k1, padding=pad1, name="conv1"), act(name="act1"),
                    pool(window, stride, name="pool"),
                    conv(3, f.k2, padding="SAME", name="conv2"), act(name="act2"),
                    layers.Flatten(name="flatten"), layers.Dense(CLASSES, name="dense"),
                ], f.input_shape, SOFTMAX)
    return out


def random_params(model: Network, rng: np.random.Generator):
    """Params with the model's structure, drawn in NumPy (no random op to compile): kernels
    N(0, 1 / fan_in) (fan_in: every axis but the last), vectors (biases, norms' gamma and
    beta) their usual value (gamma 1, else 0) + N(0, 0.1^2); float64."""
    def leaf(path, s):
        if len(s.shape) > 1:
            return jnp.asarray(rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1])))
        usual = 1.0 if path[-1].key == "gamma" else 0.0
        return jnp.asarray(usual + 0.1 * rng.standard_normal(s.shape))
    shapes = jax.eval_shape(lambda key: model.init(key, jnp.float64), jax.random.key(0))
    return jax.tree_util.tree_map_with_path(leaf, shapes)


@functools.cache
def point(family: str, seed: int):
    """(params {chain: params}, x (batch, *input_shape), y (batch,) int labels, v {chain: a
    tangent shaped like its params}) for the family's chains at `seed`; float64."""
    f = FAMILIES[family]
    rng = np.random.default_rng(seed)
    params = {n: random_params(m, rng) for n, m in chains(family).items()}
    v = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape)), params)
    x = jnp.asarray(rng.standard_normal((f.batch, *f.input_shape)))
    y = jnp.asarray(rng.integers(0, CLASSES, f.batch))
    return params, x, y, v


def recording_sgd(lr: float) -> optax.GradientTransformation:
    """SGD whose state is the gradient it was last given, so that the train step's optimizer
    state shows the gradient the step computed."""
    def init(params):
        return jax.tree.map(jnp.zeros_like, params)

    def update(g, state, params=None):
        return jax.tree.map(lambda d: -lr * d, g), g

    return optax.GradientTransformation(init, update)


def _manual_one(model: Network, params, xi, yi):
    """The manual gradient of one example's loss (xi, yi without the batch axis)."""
    return jaxcnn.manual_grad(model, params, xi[None], yi[None])[1]


# the compositions run on half the chains (see `chains`), and the reference of each composition
EXPENSIVE = ("jit(vmap)", "vmap(jit)", "hvp", "train_step")
REFERENCE = {"eager": "grads", "jit": "grads", "jit+options": "grads",
             "jit(vmap)": "per_example", "vmap(jit)": "per_example", "hvp": "hvp",
             "train_step": "train_step"}


@functools.cache
def program(family: str, mode: str):
    """The composed program of `mode` over the family's chains: (params, x, y, v) ->
    {chain: gradient tree} (the train step: {chain: {"params": updated, "grad": recorded}})."""
    ms = chains(family, mode in EXPENSIVE)

    def grads(params, x, y, v):
        return {n: jaxcnn.manual_grad(m, params[n], x, y)[1] for n, m in ms.items()}

    def per_example(params, x, y, v):
        return {n: jax.vmap(functools.partial(_manual_one, m, params[n]))(x, y)
                for n, m in ms.items()}

    def one_example(params, xi, yi):
        return {n: _manual_one(m, params[n], xi, yi) for n, m in ms.items()}

    def hvp(params, x, y, v):
        return {n: jaxcnn.hvp(m, params[n], x, y, v[n]) for n, m in ms.items()}

    def train_step(params, x, y, v):
        out, opt = {}, recording_sgd(LR)
        for n, m in ms.items():
            step = steps.train_step_fn(m, opt, "manual")
            new, _, recorded, _ = step(params[n], m.init_state(jnp.float64),
                                       opt.init(params[n]), (x, y), jax.random.key(0))
            out[n] = {"params": new, "grad": recorded}
        return out

    if mode == "vmap(jit)":
        mapped = jax.vmap(jax.jit(one_example), in_axes=(None, 0, 0))
        return lambda params, x, y, v: mapped(params, x, y)
    return {"eager": grads, "jit": jax.jit(grads), "jit+options": steps.jit_with_options(grads),
            "jit(vmap)": jax.jit(per_example), "hvp": jax.jit(hvp),
            # as make_train_step compiles it (jit_with_options), without donation
            "train_step": steps.jit_with_options(train_step)}[mode]


@functools.cache
def reference_program(family: str, key: str):
    """One plain jax.jit program of autodiff references over the chains that need `key`:
    "grads" (jaxcnn.autodiff_grad, every chain), "per_example" (jax.vmap(jax.grad) of one
    example's loss) and "hvp" (jax.jvp(jax.grad(model.loss))) over the half."""
    ms = chains(family, key != "grads")

    def run(params, x, y, v):
        out = {}
        for n, m in ms.items():
            if key == "grads":
                out[n] = jaxcnn.autodiff_grad(m, params[n], x, y)[1]
            elif key == "per_example":
                loss_i = functools.partial(lambda m, p, xi, yi: m.loss(p, xi[None], yi[None]), m)
                out[n] = jax.vmap(jax.grad(loss_i), in_axes=(None, 0, 0))(params[n], x, y)
            else:
                loss = functools.partial(lambda m, p: m.loss(p, x, y), m)
                out[n] = jax.jvp(jax.grad(loss), (params[n],), (v[n],))[1]
        return out

    return jax.jit(run)


@functools.cache
def reference(family: str, seed: int, key: str) -> dict:
    """{chain: reference tree} for the family's data at `seed`. "train_step": the update
    params - LR * g and g, with g jaxcnn.autodiff_grad's gradient (what grad="autodiff" feeds
    the optimizer: jax.value_and_grad of the same loss)."""
    if key == "train_step":
        params, grads = point(family, seed)[0], reference(family, seed, "grads")
        return {n: {"params": jax.tree.map(lambda p, g: p - LR * g, params[n], grads[n]),
                    "grad": grads[n]} for n in chains(family, True)}
    return jax.device_get(reference_program(family, key)(*point(family, seed)))


def mismatches(got, ref, where: str) -> list[str]:
    """Every leaf of `got` farther than RTOL (relative to the leaf's max |ref|) from `ref`,
    as 'where leaf: relative error'."""
    assert jax.tree.structure(got) == jax.tree.structure(ref), (
        f"{where}: tree {jax.tree.structure(got)} != reference {jax.tree.structure(ref)}")
    out = []
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(ref)):
        err = rel_err(g, r)
        if not err <= RTOL:  # NaN fails too
            out.append(f"{where}{jax.tree_util.keystr(path)}: relative error {err:.3e}")
    return out


CASES = ([(f, m) for f in FAMILIES for m in ("jit", "jit+options")]
         + [(f, m) for f in LARGE for m in EXPENSIVE] + [("2d-large", "eager")])


@pytest.mark.parametrize("family, mode", CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_composition_equals_jax_grad(family, mode):
    run, key, bad = program(family, mode), REFERENCE[mode], []
    for seed in SEEDS[:1] if mode == "eager" else SEEDS:
        got = jax.device_get(run(*point(family, seed)))
        ref = reference(family, seed, key)
        assert set(got) == set(chains(family, mode in EXPENSIVE)) <= set(ref), (mode, set(got))
        for n in got:
            bad += mismatches(got[n], ref[n], f"[{mode}, seed {seed}] {n} ")
    assert not bad, (f"{len(bad)} leaves differ from jax.grad beyond rtol {RTOL:.0e}:\n"
                     + "\n".join(bad))


def test_the_sweep_covers_every_activation_and_pool():
    """The sweep's activations and pools are all of `forward.activation` (softmax is the head's)
    and `forward.pool` (the global pool has no window), so a new one must join the sweep; their
    layers are the library's."""
    assert set(ACTIVATIONS) == set(forward.activation.__all__) - {"softmax"}
    assert {f"{p}_pool" for p in POOLS} == set(forward.pool.__all__) - {"global_avg_pool"}
    kinds = {a(name="a").spec["kind"] for a in ACTIVATIONS.values()}
    kinds |= {p(2, name="p").spec["kind"] for p in POOLS.values()}
    assert kinds == {"ReLU", "LeakyReLU", "Sigmoid", "Tanh", "MaxPool", "AvgPool", "L2Pool"}


# ----------------------------------------------------------------------------- the models
SMALLER = {  # the builder's options for a smaller input, where it takes one (compiles the same)
    "lenet5": dict(input_shape=(16, 16, 1)),
    "deep": dict(input_shape=(8, 8, 1)),
    "resnet20": dict(input_shape=(4, 4, 3)),
    "resnet20-gn": dict(input_shape=(4, 4, 3)),
    "unet": dict(input_shape=(8, 8, 1)),
    "cnn1d": dict(input_shape=(16, 1)),
    "cnn3d": dict(input_shape=(8, 8, 8, 1)),
}
MODEL_CASES = {  # every built-in model, and issue 18's network
    **{name: functools.partial(build, **SMALLER.get(name, {}))
       for name, build in models.MODELS.items()},
    "tempered-pool2": functools.partial(models.tempered_cnn, pool_stride=2),
}


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_every_model_under_plain_jit(name):
    """The documented jit of the public function, evaluation mode (train left at False),
    batch 3, float64."""
    model = MODEL_CASES[name]()
    rng = np.random.default_rng(5)
    params = random_params(model, rng)
    n = 3
    x = jnp.asarray(rng.standard_normal((n, *model.input_shape)))
    y = jnp.asarray(model.head.random_labels(rng, n, model.output_shape, np.float64))
    loss, got = jax.jit(jaxcnn.manual_grad, static_argnums=0)(model, params, x, y)
    ref_loss, ref = jax.jit(jaxcnn.autodiff_grad, static_argnums=0)(model, params, x, y)
    bad = mismatches({"loss": loss, "grads": got}, {"loss": ref_loss, "grads": ref},
                     f"[plain jax.jit] {name} ")
    assert not bad, "\n".join(bad)


def test_tempered_cnn_in_the_project_train_step():
    """Issue 18's network, tempered_cnn(pool_stride=2), in `steps.make_train_step` (the
    project's compiler options) with grad="manual" against grad="autodiff": the gradient the
    optimizer received, the updated params and the step's loss and gradient norm."""
    model = models.tempered_cnn(pool_stride=2)
    rng = np.random.default_rng(7)
    params = random_params(model, rng)
    x = jnp.asarray(rng.standard_normal((4, *model.input_shape)))
    y = jnp.asarray(rng.integers(0, 10, 4))
    out, opt = {}, recording_sgd(LR)
    for grad in ("manual", "autodiff"):
        step = steps.make_train_step(model, opt, grad, donate=False)
        new, _, recorded, metrics = step(params, model.init_state(jnp.float64),
                                         opt.init(params), (x, y), jax.random.key(0))
        out[grad] = {"params": new, "grad": recorded, "loss": metrics["loss"],
                     "grad_norm": metrics["grad_norm"]}
    bad = mismatches(out["manual"], out["autodiff"], "[make_train_step] tempered pool_stride=2 ")
    assert not bad, "\n".join(bad)
