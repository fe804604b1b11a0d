"""The networks: the worked example's 15-parameter CNN, LeNet-5, a deeper CNN, a CIFAR-shaped CNN,
the tempered-sigmoid MNIST CNN of DP-SGD (Papernot et al. 2020), the CIFAR ResNet-20 (He et al.
2016) with BatchNorm or GroupNorm, a small U-Net (Ronneberger et al. 2015) with per-pixel
logits, a 1-D CNN for signals and a small 3-D CNN for volumes.

Each function returns a `jaxcnn.nn.network.Network`; `get(name)` looks one up by its CLI name.
`impl` ("conv", "gemm", "auto") is the formulation of every convolution of the model (see
`jaxcnn.fast.auto`); `Network.with_impl` changes it on a model already built.
"""

from __future__ import annotations

from collections.abc import Callable

from jaxcnn.forward.conv import IMPLS
from jaxcnn.nn.combinators import Residual, Serial, SkipConcat
from jaxcnn.nn.layers import (
    BatchNorm,
    Conv1D,
    Conv2D,
    Conv3D,
    ConvTranspose2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    GroupNorm,
    Layer,
    MaxPool,
    ReLU,
    Tanh,
)
from jaxcnn.nn.network import BINARY, PIXEL_SOFTMAX, SOFTMAX, Network


def seed_cnn(*, impl: str = "conv") -> Network:
    """The worked example: 15 trainable parameters.

    X (6, 6, 1) -> conv 3x3, one filter (W1, B1) -> Z1 (4, 4, 1) -> ReLU -> A1 -> max pool 2x2/2
    -> P1 (2, 2, 1) -> flatten -> F (4,) -> dense 4 -> 1 (W2, B2) -> Z2 -> sigmoid -> A2; binary
    cross-entropy. params: {"conv": {"w": (3, 3, 1, 1), "b": (1,)},
    "dense": {"w": (4, 1), "b": (1,)}}.
    """
    return Network("seed_cnn", [
        Conv2D(1, 3, impl=impl, name="conv"), ReLU(name="relu"), MaxPool(2, name="maxpool"),
        Flatten(name="flatten"), Dense(1, name="dense"),
    ], (6, 6, 1), BINARY)


def lenet5(input_shape: tuple[int, int, int] = (28, 28, 1), num_classes: int = 10, *,
           impl: str = "conv") -> Network:
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling, for 28x28 images.

    conv 5x5, 6 (SAME: 28 -> 28, as the original's 32x32 input gave) -> pool -> conv 5x5, 16
    (VALID: 14 -> 10) -> pool -> 400 -> dense 120 -> 84 -> num_classes.
    """
    return Network("lenet5", [
        Conv2D(6, 5, padding="SAME", impl=impl, name="conv1"), ReLU(name="relu1"),
        MaxPool(2, name="pool1"),
        Conv2D(16, 5, impl=impl, name="conv2"), ReLU(name="relu2"), MaxPool(2, name="pool2"),
        Flatten(), Dense(120, name="dense1"), ReLU(name="relu3"),
        Dense(84, name="dense2"), ReLU(name="relu4"), Dense(num_classes, name="dense3"),
    ], input_shape, SOFTMAX)


def lenet5_digits(num_classes: int = 10, dropout: float = 0.3, *,
                  impl: str = "conv") -> Network:
    """A LeNet-style net for scikit-learn's 8x8 digits: two conv 3x3 SAME + max-pool stages
    (8 -> 4 -> 2), then 256 -> dense 120 -> dropout -> 84 -> num_classes.

    Wider than LeNet-5 (32 and 64 filters for 6 and 16): with 6 and 16 the default run reached
    96-97% test accuracy; with 32 and 64 and dropout, 98.3-99.2% over five seeds (40 epochs).
    """
    return Network("lenet5_digits", [
        Conv2D(32, 3, padding="SAME", impl=impl, name="conv1"), ReLU(name="relu1"),
        MaxPool(2, name="pool1"),
        Conv2D(64, 3, padding="SAME", impl=impl, name="conv2"), ReLU(name="relu2"),
        MaxPool(2, name="pool2"), Flatten(), Dense(120, name="dense1"), ReLU(name="relu3"),
        Dropout(dropout), Dense(84, name="dense2"), ReLU(name="relu4"),
        Dense(num_classes, name="dense3"),
    ], (8, 8, 1), SOFTMAX)


def deep_cnn(input_shape: tuple[int, int, int] = (28, 28, 1), num_classes: int = 10,
             dropout: float = 0.3, *, impl: str = "conv") -> Network:
    """The "more complex CNN architecture" the lecture notes plan as their last part: four
    convolutions with several filters and channels, a strided one, padding, a depthwise dilated
    one, BatchNorm and Dropout.

    conv 3x3, 16, SAME -> BN -> ReLU -> conv 3x3, 32, stride 2, pad 1 -> BN -> ReLU ->
    depthwise 3x3 dilation 2, SAME -> ReLU -> conv 1x1, 64 -> BN -> ReLU -> max pool 2 ->
    flatten -> dropout -> dense num_classes. Convolutions followed by BatchNorm have no bias:
    BatchNorm subtracts the mean, so a bias there would only add a parameter whose gradient is 0.
    """
    return Network("deep_cnn", [
        Conv2D(16, 3, padding="SAME", use_bias=False, impl=impl, name="conv1"),
        BatchNorm(name="bn1"),
        ReLU(name="relu1"),
        Conv2D(32, 3, stride=2, padding=1, use_bias=False, impl=impl, name="conv2"),
        BatchNorm(name="bn2"),
        ReLU(name="relu2"),
        Conv2D(32, 3, padding="SAME", dilation=2, groups=32, impl=impl, name="depthwise3"),
        ReLU(name="relu3"),
        Conv2D(64, 1, use_bias=False, impl=impl, name="conv4"), BatchNorm(name="bn4"),
        ReLU(name="relu4"),
        MaxPool(2, name="pool"), Flatten(), Dropout(dropout), Dense(num_classes, name="dense"),
    ], input_shape, SOFTMAX)


def cifar_cnn(num_classes: int = 10, *, norm: str | None = None, impl: str = "conv") -> Network:
    """A CIFAR-shaped CNN for 32x32x3 images: conv 3x3, 32 SAME -> conv 3x3, 64 SAME -> pool ->
    conv 3x3, 128 SAME -> pool -> flatten (8 * 8 * 128) -> dense num_classes; ReLU after each
    convolution. norm="group": a GroupNorm (8 groups) between each convolution and its ReLU
    ("cifar-gn", for per-example gradients and DP-SGD)."""
    if norm not in (None, "group"):
        raise ValueError(f"cifar_cnn: norm must be None or 'group'; got {norm!r}")

    def unit(c: int, i: int) -> list[Layer]:
        conv = [Conv2D(c, 3, padding="SAME", impl=impl, name=f"conv{i}")]
        gn = [GroupNorm(8, name=f"norm{i}")] if norm == "group" else []
        return [*conv, *gn, ReLU(name=f"relu{i}")]

    return Network("cifar_cnn" if norm is None else "cifar_cnn_gn", [
        *unit(32, 1), *unit(64, 2), MaxPool(2, name="pool1"), *unit(128, 3),
        MaxPool(2, name="pool2"), Flatten(), Dense(num_classes, name="dense"),
    ], (32, 32, 3), SOFTMAX)


def tempered_cnn(input_shape: tuple[int, int, int] = (28, 28, 1), num_classes: int = 10, *,
                 pool_stride: int = 1, impl: str = "conv") -> Network:
    """The tempered-sigmoid CNN of DP-SGD (Papernot et al. 2020, "Tempered Sigmoid Activations
    for Deep Learning with Differential Privacy"): TF-Privacy's MNIST CNN with tanh activations.

    (28, 28, 1) -> conv 8x8, 16, stride 2, SAME -> (14, 14, 16) -> tanh -> max pool 2x2 stride
    `pool_stride` -> conv 4x4, 32, stride 2, VALID -> tanh -> max pool 2x2 stride
    `pool_stride` -> flatten -> dense 32 -> tanh -> dense num_classes (softmax).
    pool_stride=1 (the paper's): (13, 13, 16) -> (5, 5, 32) -> (4, 4, 32) -> 512 features,
    26,010 parameters for 10 classes. pool_stride=2 (tiling 2x2/2 pools, the composition of
    docs/xla_traps.md section 6): (7, 7, 16) -> (2, 2, 32) -> (1, 1, 32) -> 32 features.
    Layers conv1, tanh1, pool1, conv2, tanh2, pool2, flatten, dense1, tanh3, dense2.
    """
    if isinstance(pool_stride, bool) or not isinstance(pool_stride, int) or pool_stride < 1:
        raise ValueError(f"tempered_cnn: pool_stride must be an int >= 1; got {pool_stride!r}")
    return Network("tempered_cnn", [
        Conv2D(16, 8, stride=2, padding="SAME", impl=impl, name="conv1"), Tanh(name="tanh1"),
        MaxPool(2, pool_stride, name="pool1"),
        Conv2D(32, 4, stride=2, impl=impl, name="conv2"), Tanh(name="tanh2"),
        MaxPool(2, pool_stride, name="pool2"),
        Flatten(), Dense(32, name="dense1"), Tanh(name="tanh3"), Dense(num_classes, name="dense2"),
    ], input_shape, SOFTMAX)


# ----------------------------------------------------------------------------- ResNet-20
NORMS = ("batch", "group")
GN_GROUPS = 8  # GroupNorm's groups in resnet20(norm="group"): min(8, C), 2 / 4 / 8 channels each


def _norm(norm: str, channels: int, name: str) -> Layer:
    """BatchNorm, or GroupNorm with min(GN_GROUPS, C) groups (C = 16, 32, 64 here: 8 groups)."""
    if norm == "batch":
        return BatchNorm(name=name)
    return GroupNorm(min(GN_GROUPS, channels), name=name)


def _basic_block(c_in: int, c_out: int, stride: int, norm: str, impl: str, name: str) -> Layer:
    """He et al.'s basic block without its final ReLU: f = conv 3x3 (stride) -> norm -> ReLU ->
    conv 3x3 -> norm, added to the shortcut: the identity, or, where the block changes the
    shape (stride 2, more filters), the projection conv 1x1 stride 2 -> norm ("option B")."""
    f = Serial(
        Conv2D(c_out, 3, stride=stride, padding=1, use_bias=False, impl=impl, name="conv1"),
        _norm(norm, c_out, "norm1"), ReLU(name="relu1"),
        Conv2D(c_out, 3, padding=1, use_bias=False, impl=impl, name="conv2"),
        _norm(norm, c_out, "norm2"), name="f")
    shortcut = None
    if stride != 1 or c_in != c_out:
        shortcut = Serial(Conv2D(c_out, 1, stride=stride, use_bias=False, impl=impl, name="conv"),
                          _norm(norm, c_out, "norm"), name="projection")
    return Residual(f, shortcut, name=name)


def resnet20(num_classes: int = 10, input_shape: tuple[int, int, int] = (32, 32, 3), *,
             norm: str = "batch", impl: str = "conv") -> Network:
    """ResNet-20, the CIFAR variant of He et al. 2016 (section 4.2, n = 3): 272,474 parameters.

    conv 3x3, 16 (no bias) -> norm -> ReLU; three stages of three basic blocks with 16, 32 and
    64 filters (32x32 -> 16x16 -> 8x8), each block `Residual(conv 3x3 -> norm -> ReLU ->
    conv 3x3 -> norm, shortcut)` followed by a ReLU; the first block of stages 2 and 3 has
    stride 2 and a projection shortcut (conv 1x1 stride 2 + norm); global average pooling ->
    dense num_classes. Every 3x3 convolution pads 1 (SAME for stride 1; stride 2 halves the map,
    rounding up); convolutions have no bias (the norm after each subtracts the mean).

    Layers: conv, norm, relu, stage{s}_block{b} and stage{s}_block{b}_relu for s, b in 1..3,
    pool, dense; a block's params {"f": {"conv1", "norm1", "conv2", "norm2"}, "shortcut":
    {"conv", "norm"}} (shortcut only in stage2_block1 and stage3_block1).
    Parameters, 10 classes: 272,474 (the paper's 0.27M; its option A, zero-padded identity
    shortcuts, would have 269,722): 432 + 32 (stem), 14,016 (stage 1), 51,648 (stage 2),
    205,696 (stage 3), 650 (dense); the same for both norms.

    Args:
      num_classes: the logits of the softmax head.
      input_shape: (H, W, C) of one image.
      norm: "batch" (BatchNorm, the paper's) or "group" (GroupNorm, min(8, C) groups: each
        example normalised on its own, for per-example gradients and DP-SGD, which BatchNorm's
        batch statistics rule out).
      impl: the formulation of every convolution ("conv", "gemm", "auto").

    Returns:
      The Network "resnet20" (norm="batch") or "resnet20_gn".
    """
    if norm not in NORMS:
        raise ValueError(f"resnet20: norm must be one of {', '.join(NORMS)}; got {norm!r}")
    layers = [Conv2D(16, 3, padding=1, use_bias=False, impl=impl, name="conv"),
              _norm(norm, 16, "norm"), ReLU(name="relu")]
    c_in = 16
    for stage, c_out in enumerate((16, 32, 64), start=1):
        for block in range(1, 4):
            stride = 2 if stage > 1 and block == 1 else 1
            name = f"stage{stage}_block{block}"
            layers += [_basic_block(c_in, c_out, stride, norm, impl, name),
                       ReLU(name=f"{name}_relu")]
            c_in = c_out
    layers += [GlobalAvgPool(name="pool"), Dense(num_classes, name="dense")]
    return Network("resnet20" if norm == "batch" else "resnet20_gn", layers, input_shape, SOFTMAX)


# ----------------------------------------------------------------------------- U-Net
def _double_conv(features: int, impl: str, name: str) -> Layer:
    """conv 3x3 SAME -> ReLU -> conv 3x3 SAME -> ReLU, the U-Net's unit at every level."""
    return Serial(Conv2D(features, 3, padding="SAME", impl=impl, name="conv1"),
                  ReLU(name="relu1"),
                  Conv2D(features, 3, padding="SAME", impl=impl, name="conv2"),
                  ReLU(name="relu2"), name=name)


def unet(num_classes: int = 2, input_shape: tuple[int, int, int] = (32, 32, 1), *,
         width: int = 8, impl: str = "conv") -> Network:
    """A small U-Net (Ronneberger et al. 2015): two levels down, two up, per-pixel logits.

        enc1  double conv, width                                  (H, W)       <- skip1 --+
        skip1 = SkipConcat(down 1)                                                         |
          down 1: max pool 2 -> enc2 double conv, 2 width          (H/2, W/2)  <- skip2 -+ |
            skip2 = SkipConcat(down 2)                                                   | |
              down 2: max pool 2 -> bottom double conv, 4 width    (H/4, W/4)            | |
                      -> transposed conv 2x2 stride 2, 2 width     (H/2, W/2)            | |
            concat [enc2, up]: 4 width -> dec2 double conv, 2 width ---------------------+ |
          -> transposed conv 2x2 stride 2, width                   (H, W)                  |
        concat [enc1, up]: 2 width -> dec1 double conv, width  -----------------------------+
        -> conv 1x1 num_classes: logits (H, W, num_classes)

    Upsampling is learned (ConvTranspose2D, kernel 2, stride 2); each decoder level
    concatenates the encoder activation of its size (SkipConcat), whose backward splits dy by
    channels and adds the skip's part to the encoder's gradient. Loss: per-pixel softmax
    cross-entropy, the mean over each image's pixels and then over the batch (`PIXEL_SOFTMAX`);
    y: (N, H, W) int class ids.

    Args:
      num_classes: the logits per pixel.
      input_shape: (H, W, C), H and W divisible by 4.
      width: the filters of the first level (doubled at each level down).
      impl: the formulation of every (non-transposed) convolution.

    Returns:
      The Network "unet"; layers enc1, skip1 (the rest of the U inside), dec1, logits.
    """
    if (not isinstance(input_shape, tuple | list) or len(input_shape) != 3
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in input_shape)):
        raise TypeError(f"unet: input_shape must be (H, W, C), three ints; got {input_shape!r}")
    h, w = input_shape[:2]
    if h % 4 or w % 4:
        raise ValueError(f"unet: input_shape {tuple(input_shape)} needs H and W divisible by 4 "
                         f"(two 2x2 poolings undone by two stride-2 transposed convolutions)")
    down2 = Serial(MaxPool(2, name="pool"), _double_conv(4 * width, impl, "bottom"),
                   ConvTranspose2D(2 * width, 2, stride=2, name="up"), name="down2")
    down1 = Serial(MaxPool(2, name="pool"), _double_conv(2 * width, impl, "enc2"),
                   SkipConcat(down2, name="skip2"), _double_conv(2 * width, impl, "dec2"),
                   ConvTranspose2D(width, 2, stride=2, name="up"), name="down1")
    return Network("unet", [
        _double_conv(width, impl, "enc1"), SkipConcat(down1, name="skip1"),
        _double_conv(width, impl, "dec1"), Conv2D(num_classes, 1, impl=impl, name="logits"),
    ], input_shape, PIXEL_SOFTMAX)


# ----------------------------------------------------------------------------- 1-D and 3-D
def cnn1d(num_classes: int = 4, input_shape: tuple[int, int] = (128, 1), *,
          impl: str = "conv") -> Network:
    """A 1-D CNN for signals (N, L, C): conv 7, 16 SAME -> GroupNorm 4 -> ReLU -> max pool 2 ->
    conv 5, 32 SAME -> ReLU -> max pool 2 -> conv 3, 64, dilation 2, SAME -> ReLU -> global
    average pool -> dense num_classes (softmax). For `jaxcnn.training.synthetic.signals`
    (sine, square, sawtooth, chirp)."""
    return Network("cnn1d", [
        Conv1D(16, 7, padding="SAME", impl=impl, name="conv1"), GroupNorm(4, name="norm1"),
        ReLU(name="relu1"), MaxPool(2, name="pool1"),
        Conv1D(32, 5, padding="SAME", impl=impl, name="conv2"), ReLU(name="relu2"),
        MaxPool(2, name="pool2"),
        Conv1D(64, 3, padding="SAME", dilation=2, impl=impl, name="conv3"), ReLU(name="relu3"),
        GlobalAvgPool(name="pool"), Dense(num_classes, name="dense"),
    ], input_shape, SOFTMAX)


def cnn3d(num_classes: int = 3, input_shape: tuple[int, int, int, int] = (16, 16, 16, 1), *,
          impl: str = "conv") -> Network:
    """A small 3-D CNN for volumes (N, D, H, W, C): conv 3x3x3, 8 SAME -> ReLU -> max pool 2 ->
    conv 3x3x3, 16 SAME -> ReLU -> max pool 2 -> conv 3x3x3, 32, stride 2, pad 1 -> ReLU ->
    global average pool -> dense num_classes (softmax). For
    `jaxcnn.training.synthetic.volumes` (sphere, cube, rod)."""
    return Network("cnn3d", [
        Conv3D(8, 3, padding="SAME", impl=impl, name="conv1"), ReLU(name="relu1"),
        MaxPool(2, name="pool1"),
        Conv3D(16, 3, padding="SAME", impl=impl, name="conv2"), ReLU(name="relu2"),
        MaxPool(2, name="pool2"),
        Conv3D(32, 3, stride=2, padding=1, impl=impl, name="conv3"), ReLU(name="relu3"),
        GlobalAvgPool(name="pool"), Dense(num_classes, name="dense"),
    ], input_shape, SOFTMAX)


__all__ = ["IMPLS", "MODELS", "NORMS", "cifar_cnn", "cnn1d", "cnn3d", "deep_cnn", "get",
           "lenet5", "lenet5_digits", "resnet20", "seed_cnn", "tempered_cnn", "unet"]

MODELS: dict[str, Callable[..., Network]] = {
    "seed": seed_cnn,
    "lenet5": lenet5,
    "lenet5-digits": lenet5_digits,
    "deep": deep_cnn,
    "deep-digits": lambda **kw: deep_cnn((8, 8, 1), **kw),
    "cifar": cifar_cnn,
    "cifar-gn": lambda **kw: cifar_cnn(norm="group", **kw),
    "tempered": tempered_cnn,
    "resnet20": resnet20,
    "resnet20-gn": lambda **kw: resnet20(norm="group", **kw),
    # for --data shapes: background, disc, square (jaxcnn.training.synthetic.SHAPE_CLASSES)
    "unet": lambda **kw: unet(num_classes=3, **kw),
    "cnn1d": cnn1d,
    "cnn3d": cnn3d,
}


def get(name: str, *, impl: str = "conv") -> Network:
    """The network registered under `name` (see `MODELS`), its convolutions in `impl`."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](impl=impl)
