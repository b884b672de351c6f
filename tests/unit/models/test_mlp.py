"""The ``mlp`` family: shapes, layer order, width decay, validation, learnable activations."""

from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from hpo.models import FAMILIES, get_family
from hpo.models.activations import ACTIVATIONS, LearnableActivation
from hpo.models.base import count_parameters
from hpo.models.mlp import MLP, MLPParams, hidden_widths


def build(input_shape: tuple[int, ...] = (20,), n_classes: int = 3, **params: object) -> nn.Module:
    return MLP().build(MLPParams(**params), input_shape, n_classes)


def test_registered_and_get_family() -> None:
    assert "mlp" in FAMILIES
    assert isinstance(get_family("mlp"), MLP)
    with pytest.raises(KeyError, match=r"known: .*mlp"):
        get_family("mlpp")


@pytest.mark.parametrize("activation", ACTIVATIONS.names())
@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_output_shape(activation: str, batch_norm: bool, depth: int) -> None:
    model = build(
        n_classes=5, activation=activation, batch_norm=batch_norm, depth=depth, dropout=0.3
    )
    model.train()
    assert model(torch.randn(7, 20)).shape == (7, 5)
    model.eval()
    assert model(torch.randn(1, 20)).shape == (1, 5)
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == depth + 1


def test_image_shaped_input_is_flattened() -> None:
    model = build(input_shape=(1, 8, 8), n_classes=10)
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    assert model[1].in_features == 64  # type: ignore[index]


def test_founding_experiment_shape_128_to_64() -> None:
    model = build(
        input_shape=(100,), n_classes=10, width=128, width_decay=0.5, depth=2, dropout=0.2
    )
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(100, 128), (128, 64), (64, 10)]
    # 100·128+128 + 128·64+64 + 64·10+10
    assert count_parameters(model) == 12928 + 8256 + 650


def test_hidden_widths_round_and_never_reach_zero() -> None:
    assert hidden_widths(128, 3, 1.0) == [128, 128, 128]
    assert hidden_widths(128, 3, 0.5) == [128, 64, 32]
    assert hidden_widths(3, 4, 0.1) == [3, 1, 1, 1]


def test_layer_order_of_a_block() -> None:
    model = build(depth=1, batch_norm=True, dropout=0.5, activation="tanh")
    kinds = [type(m) for m in model.children()]
    assert kinds == [nn.Flatten, nn.Linear, nn.BatchNorm1d, nn.Tanh, nn.Dropout, nn.Linear]
    no_extras = build(depth=1)
    assert [type(m) for m in no_extras.children()] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]


def test_unknown_activation_is_rejected_with_the_known_ones() -> None:
    with pytest.raises(ValidationError) as info:
        MLPParams(activation="relux")
    message = str(info.value)
    assert "unknown activation 'relux'" in message
    assert "did you mean 'relu'" in message
    assert "known: gelu, learnable, relu, sigmoid, tanh" in message


@pytest.mark.parametrize(
    "bad",
    [
        {"depth": 0},
        {"width": 0},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"width_decay": 0.0},
        {"width_decay": 1.5},
        {"layers": 3},
    ],
)
def test_params_bounds(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        MLPParams(**bad)


def test_build_rejects_other_params() -> None:
    class Other(BaseModel):
        width: int = 3

    with pytest.raises(TypeError, match="MLPParams"):
        MLP().build(Other(), (4,), 2)


def test_learnable_activation_parameters_train() -> None:
    torch.manual_seed(0)
    model = build(activation="learnable", depth=2)
    acts = [m for m in model.modules() if isinstance(m, LearnableActivation)]
    assert len(acts) == 2
    own = {id(p) for p in model.parameters()}
    assert all(id(a.k0) in own and id(a.k1) in own for a in acts)
    before = [(a.k0.item(), a.k1.item()) for a in acts]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(16, 20)), torch.randint(0, 3, (16,)))
    loss.backward()
    optimizer.step()
    after = [(a.k0.item(), a.k1.item()) for a in acts]
    for (k0, k1), (k0_new, k1_new) in zip(before, after, strict=True):
        assert k0 != k0_new and k1 != k1_new
