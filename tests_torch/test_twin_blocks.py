"""The PyTorch twins of networks built from blocks (Serial, Residual, SkipConcat) and of 1-D, 3-D,
transposed, normalising and upsampling layers are the same networks as jaxcnn's: in float64 the
twin's training loss and its autograd gradients equal jaxcnn's loss and manual gradients, and in
evaluation its logits equal `net.forward`'s.

PyTorch is an optional extra, absent from CI: `pip install -e ".[torch]"` (torch==2.13.0, CPU),
then `pytest tests_torch`.
"""

import functools

import jax
import numpy as np
import pytest
import torch

from jaxcnn import models
from jaxcnn.nn import grads, layers
from jaxcnn.nn.combinators import Residual, Serial, SkipConcat
from jaxcnn.nn.network import PIXEL_SOFTMAX, SOFTMAX, Network
from jaxcnn.tools import bench_torch

jax.config.update("jax_enable_x64", True)  # float64 on both sides, as tests/conftest.py does


def zoo_2d() -> Network:
    """Every block and the 2-D layers resnet20 and unet do not use, per-pixel logits."""
    f = Serial(layers.Conv2D(6, 3, stride=2, padding=1, name="conv"),
               layers.GroupNorm(3, name="gn"), layers.LeakyReLU(0.1, name="act"), name="f")
    shortcut = Serial(layers.Conv2D(6, 1, stride=2, use_bias=False, name="proj"),
                      layers.LayerNorm(name="ln"), name="shortcut")
    inner = Serial(layers.AvgPool(2, name="pool"), layers.Upsample(2, name="up"),
                   layers.Tanh(name="tanh"), name="inner")
    up = layers.ConvTranspose2D(5, 3, stride=2, padding=1, output_padding=1, groups=1,
                                name="deconv")
    return Network("zoo_2d", [
        Residual(f, shortcut, name="res_proj"),
        Residual(Serial(layers.Conv2D(6, 3, padding="SAME", use_bias=False, name="conv"),
                        layers.BatchNorm(name="bn"), name="f"), name="res_id"),
        SkipConcat(inner, name="skip"), up, layers.Conv2D(3, 1, name="logits"),
    ], (8, 8, 2), PIXEL_SOFTMAX)


def zoo_nd() -> list[Network]:
    """1-D and 3-D: convolutions, transposed ones, pools, BatchNorm, global pooling, dense."""
    net1 = Network("zoo_1d", [
        layers.Conv1D(4, 3, stride=2, padding="SAME", name="c1"), layers.BatchNorm(name="bn"),
        layers.ReLU(name="relu"),
        layers.ConvTranspose1D(6, 4, stride=2, padding=1, name="t1"),
        layers.MaxPool(3, 2, "SAME", name="mp"),
        layers.AvgPool(2, 1, ((1, 0),), count_include_pad=False, name="ap"),
        layers.L2Pool(2, name="l2"), layers.GlobalAvgPool(name="gap"), layers.Dense(3, name="d"),
    ], (11, 2), SOFTMAX)
    net3 = Network("zoo_3d", [
        layers.Conv3D(4, 3, padding=((0, 1), (1, 1), (1, 0)), name="c3"),
        layers.GroupNorm(2, name="gn"), layers.Sigmoid(name="sig"),
        layers.ConvTranspose3D(3, 2, stride=2, groups=1, name="t3"),
        layers.Upsample((1, 2, 1), name="up"), layers.Flatten(name="flat"),
        layers.Dense(2, name="d"),
    ], (3, 4, 3, 1), SOFTMAX)
    return [net1, net3]


NETS = {
    "resnet20": lambda: models.resnet20(input_shape=(8, 8, 3)),
    "resnet20_gn": lambda: models.resnet20(input_shape=(8, 8, 3), norm="group"),
    "unet": lambda: models.unet(num_classes=3, input_shape=(16, 16, 1)),
    "zoo_2d": zoo_2d, "zoo_1d": lambda: zoo_nd()[0], "zoo_3d": lambda: zoo_nd()[1],
}


@functools.cache
def problem(name: str, n: int = 3, seed: int = 0):
    """The network, float64 params perturbed off their initial values (biases, gammas and betas
    not 0 or 1), a nonzero BatchNorm state, inputs and valid labels; built once per network."""
    net, rng = NETS[name](), np.random.default_rng(seed)
    params = jax.tree.map(lambda a: np.asarray(a) + 0.1 * rng.standard_normal(a.shape),
                          net.init(jax.random.key(seed), np.float64))
    state = jax.tree.map(lambda a: np.asarray(a) + rng.uniform(0.2, 0.5, a.shape),
                         net.init_state(np.float64))
    x = rng.standard_normal((n, *net.input_shape))
    y = net.head.random_labels(rng, n, net.output_shape, np.float64)
    return net, params, state, x, y


def twin(net: Network, params, state) -> torch.nn.Module:
    model = bench_torch.torch_model(net).double()
    bench_torch.load_params(model, params, state)
    return model


def close(got, expected, rtol: float, what: str, scale: float | None = None) -> None:
    """|got - expected| <= rtol (|expected| + scale), scale the largest |expected| by default."""
    scale = np.abs(expected).max() if scale is None else scale
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


@pytest.mark.parametrize("name", NETS)
def test_training_loss_and_gradients_equal_the_manual_ones(name):
    """Training mode (BatchNorm on the batch's statistics): loss and every parameter's gradient
    of the twin (torch autograd) against jaxcnn's hand-written backward pass."""
    net, params, state, x, y = problem(name)
    loss, manual = jax.jit(lambda p, s, x, y: grads.manual_grad(net, p, x, y, state=s,
                                                                train=True))(params, state, x, y)
    model = twin(net, params, state).train()
    y_t = torch.from_numpy(y).long() if y.dtype.kind == "i" else torch.from_numpy(y)
    loss_t = bench_torch.twin_loss(net)(model, torch.from_numpy(x), y_t)
    loss_t.backward()
    close(loss_t.item(), float(loss), 1e-12, f"{name} loss")
    got = bench_torch.twin_grads(model, params)
    assert jax.tree.structure(got) == jax.tree.structure(manual)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(manual))
    for (path, g), t in zip(jax.tree_util.tree_leaves_with_path(manual), jax.tree.leaves(got)):
        close(t, np.asarray(g), 1e-9, f"{name} {jax.tree_util.keystr(path)}", scale)


@pytest.mark.parametrize("name", NETS)
def test_evaluation_logits_equal_the_forward(name):
    """Evaluation mode (BatchNorm on a nonzero running state): the twin's channels-last logits."""
    net, params, state, x, _ = problem(name)
    expected = np.asarray(jax.jit(lambda p, s, x: net.forward(p, x, state=s).activations[-1])(
        params, state or None, x))
    with torch.no_grad():
        got = twin(net, params, state).eval()(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape == (3, *net.output_shape)
    close(got, expected, 1e-12, f"{name} logits")


def test_blocks_nest_as_their_params():
    """The twin's modules carry jaxcnn's names and nesting: Residual .f/.shortcut (None for the
    identity), SkipConcat .inner, Serial's sub-layers by name."""
    model = bench_torch.torch_model(NETS["resnet20"]())
    t = bench_torch._torch()
    block = model.body.stage2_block1
    assert isinstance(block, t.Residual) and isinstance(block.f.conv1, torch.nn.Conv2d)
    assert block.shortcut.conv.stride == (2, 2) and model.body.stage1_block1.shortcut is None
    unet = bench_torch.torch_model(NETS["unet"]())
    assert isinstance(unet.body.skip1, t.SkipConcat)
    assert isinstance(unet.body.skip1.inner.skip2.inner.up, torch.nn.ConvTranspose2d)
    assert unet.body.skip1.inner.skip2.inner.up.weight.shape == (32, 16, 2, 2)


@pytest.mark.parametrize("name", ["resnet20", "unet"])
def test_one_float32_training_step(name):
    step = bench_torch.make_torch_step(NETS[name](), 4, threads=2)
    first, second = step(), step()
    assert np.isfinite(first) and np.isfinite(second) and first != second


def test_a_spec_naming_no_layer_is_refused():
    with pytest.raises(ValueError, match=r"its kind must name a layer of jaxcnn\.nn\.layers"):
        bench_torch.leaf({"kind": "Serial", "layers": []})
    with pytest.raises(ValueError, match="its kind must name a layer"):
        bench_torch.leaf({"kind": "NoSuchLayer"})
