"""The PyTorch twins of `jaxcnn bench --against torch` compute jaxcnn's logits and steps.

PyTorch is an optional extra, absent from CI, so these tests live outside the default suite:
`pip install -e ".[torch]"` (the CPU build, torch==2.13.0), then `pytest tests_torch`.
"""


import jax
import numpy as np
import pytest

from jaxcnn import models
from jaxcnn.nn import layers
from jaxcnn.nn.network import SOFTMAX, Network
from jaxcnn.tools import bench_torch

NETS = [models.seed_cnn, models.lenet5, models.lenet5_digits, models.deep_cnn, models.cifar_cnn]


@pytest.fixture(scope="module")
def torch():
    import torch  # required here: this directory is only run where torch is installed

    return torch


def without_specs(net: Network) -> Network:
    """`net` with every layer's spec dropped, so that the twin must come from its name."""
    return Network(net.name, [layers.Layer(*layer[:4]) for layer in net.layers],
                   net.input_shape, net.head)


def random_nonzero_state(net: Network, rng: np.random.Generator) -> dict:
    return {name: {"mean": rng.normal(size=s["mean"].shape).astype(np.float32),
                   "var": rng.uniform(0.5, 2.0, size=s["var"].shape).astype(np.float32)}
            for name, s in net.init_state(np.float32).items()}


@pytest.mark.parametrize("make", NETS, ids=lambda f: f.__name__)
def test_twin_gives_jaxcnn_logits(torch, make):
    net = make()
    rng = np.random.default_rng(0)
    params = net.init(jax.random.key(1), np.float32)
    state = random_nonzero_state(net, rng)
    x = rng.normal(size=(5, *net.input_shape)).astype(np.float32)
    expected = np.asarray(net.forward(params, x, state=state or None).activations[-1])
    model = bench_torch.torch_model(net).eval()
    bench_torch.load_params(model, params, state)
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("make", NETS, ids=lambda f: f.__name__)
def test_one_training_step(torch, make):
    step = bench_torch.make_torch_step(make(), 8, threads=2)
    first = step()
    assert np.isfinite(first) and np.isfinite(step())
    assert torch.get_num_threads() == 2


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
def test_every_layer_kind_and_padding(torch):
    """Strided SAME (asymmetric pads), explicit pads, every pool and activation kind."""
    net = Network("zoo", [
        layers.Conv2D(4, 4, stride=2, padding="SAME", name="c1"), layers.LeakyReLU(0.1),
        layers.Conv2D(6, (2, 3), padding=((0, 1), (2, 1)), dilation=(1, 2), name="c2"),
        layers.Tanh(), layers.MaxPool(3, 2, "SAME", name="mp"),
        layers.AvgPool(2, 1, ((1, 0), (0, 1)), count_include_pad=False, name="ap"),
        layers.AvgPool(2, 1, 1, name="ap2"), layers.L2Pool(2, 1, name="l2"),
        layers.Conv2D(6, 2, padding="SAME", groups=3, name="c3"), layers.Sigmoid(),
        layers.BatchNorm(momentum=0.8, name="bn"), layers.Flatten(), layers.Dense(7, name="d"),
        layers.BatchNorm(name="bn1d"), layers.Dense(3, use_bias=False, name="out"),
    ], (9, 11, 2), SOFTMAX)
    if not all(getattr(layer, "spec", None) for layer in net.layers):
        pytest.skip("jaxcnn.nn.layers.Layer has no spec: only the registered models have twins")
    rng = np.random.default_rng(2)
    params = net.init(jax.random.key(3), np.float32)
    state = random_nonzero_state(net, rng)
    x = rng.normal(size=(4, *net.input_shape)).astype(np.float32)
    expected = np.asarray(net.forward(params, x, state=state).activations[-1])
    model = bench_torch.torch_model(net).eval()
    bench_torch.load_params(model, params, state)
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), expected,
                                   rtol=1e-4, atol=1e-4)
    assert model.body.bn.momentum == pytest.approx(0.2)


def test_layers_without_specs_are_refused_by_name(torch):
    net = without_specs(models.seed_cnn())
    with pytest.raises(ValueError, match=r"seed_cnn: layers \['conv', 'relu', 'maxpool', "
                                         r"'flatten', 'dense'\] carry no spec"):
        bench_torch.torch_model(net)
