"""The ``cnn`` family: shapes, gradients, pooling on small inputs, validation, and that it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from hpo.data.base import Dataset
from hpo.models import FAMILIES, get_family
from hpo.models.activations import ACTIVATIONS
from hpo.models.base import count_parameters
from hpo.models.cnn import CNN, CNNParams, block_widths
from hpo.training.config import TrainParams
from hpo.training.loop import seed_everything, train

SHAPES = [(1, 8, 8), (3, 32, 32)]


def build(
    input_shape: tuple[int, ...] = (1, 8, 8), n_classes: int = 10, **params: object
) -> nn.Module:
    return CNN().build(CNNParams(**params), input_shape, n_classes)


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def test_registered_as_an_image_family() -> None:
    assert "cnn" in FAMILIES
    family = get_family("cnn")
    assert isinstance(family, CNN)
    assert family.input_kind == "image"
    assert family.description and "\n" not in family.description


@pytest.mark.parametrize("input_shape", SHAPES)
@pytest.mark.parametrize("n_classes", [2, 10])
@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("depth", [1, 3, 5])
def test_forward_backward(
    input_shape: tuple[int, int, int], n_classes: int, batch_norm: bool, depth: int
) -> None:
    model = build(input_shape, n_classes, width=4, depth=depth, batch_norm=batch_norm, dropout=0.1)
    model.train()
    logits = model(torch.randn(4, *input_shape))
    assert logits.shape == (4, n_classes)
    logits.logsumexp(dim=1).sum().backward()
    grad = first_conv(model).weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.eval()
    assert model(torch.randn(1, *input_shape)).shape == (1, n_classes)


@pytest.mark.parametrize("activation", ACTIVATIONS.names())
def test_every_activation(activation: str) -> None:
    model = build(width=4, activation=activation)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_layer_order_of_a_block_and_head() -> None:
    model = build(depth=1, width=4, dropout=0.2, activation="tanh")
    kinds = [type(m) for m in model.children()]
    assert kinds == [
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.Tanh,
        nn.MaxPool2d,
        nn.Dropout2d,
        nn.AdaptiveAvgPool2d,
        nn.Flatten,
        nn.Dropout,
        nn.Linear,
    ]
    bare = build(depth=1, width=4, batch_norm=False, pool=False)
    assert [type(m) for m in bare.children()] == [
        nn.Conv2d,
        nn.ReLU,
        nn.AdaptiveAvgPool2d,
        nn.Flatten,
        nn.Linear,
    ]
    # A bias before BatchNorm is redundant; without BatchNorm the conv needs its own.
    assert first_conv(model).bias is None
    assert first_conv(bare).bias is not None


def test_channels_double_up_to_eight_times_the_width() -> None:
    assert block_widths(8, 5) == [8, 16, 32, 64, 64]
    model = build(width=8, depth=5)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64, 64]
    assert convs[0].in_channels == 1


@pytest.mark.parametrize(
    ("input_shape", "pools"), [((1, 8, 8), 3), ((3, 32, 32), 5), ((1, 2, 16), 1), ((1, 1, 1), 0)]
)
def test_pools_only_while_the_map_is_at_least_2x2(
    input_shape: tuple[int, int, int], pools: int
) -> None:
    model = build(input_shape, width=2, depth=6, batch_norm=False)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == pools
    assert model(torch.randn(2, *input_shape)).shape == (2, 10)


@pytest.mark.parametrize("kernel_size", [1, 3, 5, 7])
def test_same_padding_keeps_the_size(kernel_size: int) -> None:
    model = build(width=2, depth=1, kernel_size=kernel_size, pool=False)
    conv = first_conv(model)
    assert conv.kernel_size == (kernel_size, kernel_size)
    assert conv(torch.randn(1, 1, 8, 8)).shape == (1, 2, 8, 8)


def test_parameter_count_grows_with_width_and_depth() -> None:
    counts = [count_parameters(build(width=w, depth=3)) for w in (4, 8, 16)]
    assert counts == sorted(counts) and len(set(counts)) == 3
    counts = [count_parameters(build(width=8, depth=d)) for d in (1, 2, 3, 4)]
    assert counts == sorted(counts) and len(set(counts)) == 4


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("kernel_size", 4, "kernel_size must be odd (1, 3, 5 or 7), got 4"),
        ("kernel_size", 9, "less than or equal to 7"),
        ("depth", 0, "greater than or equal to 1"),
        ("width", 0, "greater than or equal to 1"),
        ("dropout", 1.0, "less than 1"),
        ("activation", "rleu", "unknown activation 'rleu' (did you mean 'relu'?)"),
    ],
)
def test_invalid_params_name_the_field_and_value(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        CNNParams(**{field: value})
    text = str(info.value)
    assert field in text and message in text


def test_unknown_field_is_refused() -> None:
    with pytest.raises(ValidationError, match="extra"):
        CNNParams(widht=8)  # type: ignore[call-arg]


@pytest.mark.parametrize("input_shape", [(64,), (8, 8), (1, 1, 8, 8), (0, 8, 8)])
def test_non_image_input_is_refused_clearly(input_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"'cnn' needs image input of shape \(channels, height"):
        build(input_shape)


def test_wrong_params_type_is_refused() -> None:
    from hpo.models.mlp import MLPParams

    with pytest.raises(TypeError, match="CNNParams"):
        CNN().build(MLPParams(), (1, 8, 8), 2)


def bright_vs_dark(n: int = 400, seed: int = 0) -> Dataset:
    """1×8×8 noise images, class 1 a little brighter than class 0."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n).astype(np.int64)
    X = rng.normal(size=(n, 1, 8, 8)).astype(np.float32) + np.where(y == 1, 0.5, -0.5).astype(
        np.float32
    ).reshape(-1, 1, 1, 1)
    cut = n * 3 // 4
    return Dataset("bright", X[:cut], y[:cut], X[cut:], y[cut:], ["dark", "bright"])


def test_the_loop_trains_a_cnn_on_bright_vs_dark_images() -> None:
    data = bright_vs_dark()
    seed_everything(0)
    model = build(data.input_shape, data.n_classes, width=4, depth=2)
    result = train(model, data, TrainParams(lr=1e-2), epochs=5, device=torch.device("cpu"), seed=0)
    assert result.history[-1]["val_accuracy"] > 0.9
