"""The ``vgg`` family: configurations, width scaling, pooling on small inputs, validation."""

from __future__ import annotations

from typing import TypeVar

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from hpo.models import FAMILIES, get_family
from hpo.models.base import count_parameters
from hpo.models.vgg import VGG, VGG_CONFIGS, VGGParams, scaled_channels

SHAPES = [(1, 8, 8), (3, 32, 32)]
M = TypeVar("M", bound=nn.Module)


def build(
    input_shape: tuple[int, ...] = (1, 8, 8), n_classes: int = 10, **params: object
) -> nn.Module:
    return VGG().build(VGGParams(**params), input_shape, n_classes)


def submodule(model: nn.Module, path: str, kind: type[M]) -> M:
    """``model``'s submodule at ``path`` (``"stem.conv"``), checked to be a ``kind``."""
    module = model.get_submodule(path)
    assert isinstance(module, kind)
    return module


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_registered_as_an_image_family() -> None:
    assert "vgg" in FAMILIES
    family = get_family("vgg")
    assert isinstance(family, VGG)
    assert family.input_kind == "image"
    assert family.description and "\n" not in family.description


@pytest.mark.parametrize("input_shape", SHAPES)
@pytest.mark.parametrize("n_classes", [2, 10])
@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("vgg_config", list(VGG_CONFIGS))
def test_forward_backward(
    input_shape: tuple[int, int, int], n_classes: int, batch_norm: bool, vgg_config: str
) -> None:
    model = build(input_shape, n_classes, vgg_config=vgg_config, width=4, batch_norm=batch_norm)
    model.train()
    logits = model(torch.randn(4, *input_shape))
    assert logits.shape == (4, n_classes)
    logits.logsumexp(dim=1).sum().backward()
    grad = convs(model)[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.eval()
    assert model(torch.randn(1, *input_shape)).shape == (1, n_classes)


@pytest.mark.parametrize(("vgg_config", "n_conv"), [("vgg11", 8), ("vgg13", 10), ("vgg16", 13)])
def test_each_configuration_has_its_convolutions(vgg_config: str, n_conv: int) -> None:
    model = build(vgg_config=vgg_config, width=4)
    assert len(convs(model)) == n_conv
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs(model))


def test_width_scales_every_stage() -> None:
    assert [c.out_channels for c in convs(build(width=64))] == [
        64,
        128,
        256,
        256,
        512,
        512,
        512,
        512,
    ]
    assert [c.out_channels for c in convs(build(width=16))] == [16, 32, 64, 64, 128, 128, 128, 128]
    assert scaled_channels(64, 1) == 1 and scaled_channels(128, 1) == 2
    # Even the narrowest network still has one channel per layer.
    assert all(c.out_channels >= 1 for c in convs(build(width=1)))


@pytest.mark.parametrize(
    ("input_shape", "pools"), [((1, 8, 8), 2), ((3, 32, 32), 4), ((1, 3, 3), 0), ((1, 1, 1), 0)]
)
def test_pools_leave_at_least_a_2x2_map(input_shape: tuple[int, int, int], pools: int) -> None:
    model = build(input_shape, width=2)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == pools
    assert model(torch.randn(2, *input_shape)).shape == (2, 10)


def test_head_is_a_small_classifier() -> None:
    model = build(width=16, dropout=0.5, activation="gelu")
    head = submodule(model, "classifier", nn.Sequential)
    kinds = [type(m) for m in head.children()]
    assert kinds == [
        nn.AdaptiveAvgPool2d,
        nn.Flatten,
        nn.Linear,
        nn.GELU,
        nn.Dropout,
        nn.Linear,
    ]
    fc, out = submodule(head, "fc", nn.Linear), submodule(head, "out", nn.Linear)
    assert (fc.in_features, fc.out_features) == (128, 128)
    assert (out.in_features, out.out_features) == (128, 10)
    no_dropout = submodule(build(dropout=0.0), "classifier", nn.Sequential)
    assert not any(isinstance(m, nn.Dropout) for m in no_dropout.modules())


def test_batch_norm_toggles_norms_and_conv_biases() -> None:
    with_bn, without = build(width=4), build(width=4, batch_norm=False)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 8
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.modules())
    assert all(c.bias is None for c in convs(with_bn))
    assert all(c.bias is not None for c in convs(without))


def test_parameter_count_grows_with_width_and_depth() -> None:
    counts = [count_parameters(build(width=w)) for w in (4, 8, 16)]
    assert counts == sorted(counts) and len(set(counts)) == 3
    counts = [count_parameters(build(width=8, vgg_config=c)) for c in ("vgg11", "vgg13", "vgg16")]
    assert counts == sorted(counts) and len(set(counts)) == 3


def test_unknown_configuration_lists_the_known_ones_with_a_suggestion() -> None:
    with pytest.raises(ValidationError) as info:
        VGGParams(vgg_config="vgg61")
    text = str(info.value)
    assert "vgg_config" in text
    assert "unknown vgg_config 'vgg61' (did you mean 'vgg16'?); known: vgg11, vgg13, vgg16" in text


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("width", 0, "greater than or equal to 1"),
        ("dropout", 1.0, "less than 1"),
        ("activation", "gleu", "unknown activation 'gleu' (did you mean 'gelu'?)"),
    ],
)
def test_invalid_params_name_the_field_and_value(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        VGGParams(**{field: value})
    text = str(info.value)
    assert field in text and message in text


@pytest.mark.parametrize("input_shape", [(64,), (8, 8)])
def test_non_image_input_is_refused_clearly(input_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"'vgg' needs image input of shape \(channels, height"):
        build(input_shape)
