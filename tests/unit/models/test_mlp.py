"""The ``mlp`` family: shapes, layer order, width decay, dropout placement, validation, learnable
activations."""

from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from hpo.models import FAMILIES, get_family
from hpo.models.activations import ACTIVATIONS, LearnableActivation
from hpo.models.base import count_parameters
from hpo.models.mlp import MLP, MLPParams, dropout_layer_numbers, hidden_widths


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


def structure(model: nn.Module) -> list[str]:
    """The model's layers as names a Keras summary would show: ``Dense 128``, ``ReLU``, ``Dropout 0.5``."""
    names = []
    for layer in model.children():
        if isinstance(layer, nn.Linear):
            names.append(f"Dense {layer.out_features}")
        elif isinstance(layer, nn.Dropout):
            names.append(f"Dropout {layer.p}")
        elif not isinstance(layer, nn.Flatten):
            names.append(type(layer).__name__)
    return names


def test_the_original_keras_model_dropout_after_the_first_layer_only() -> None:
    # Dense 128 ReLU → Dropout 0.5 → Dense 64 ReLU → Dense 10 (softmax: in the loss)
    model = build(
        input_shape=(100,), n_classes=10, depth=2, width=128, width_decay=0.5,
        dropout=0.5, dropout_layers="first",
    )  # fmt: skip
    assert structure(model) == ["Dense 128", "ReLU", "Dropout 0.5", "Dense 64", "ReLU", "Dense 10"]
    assert [name for name, _ in model.named_children()] == [
        "flatten", "fc1", "act1", "drop1", "fc2", "act2", "out"
    ]  # fmt: skip


def test_dropout_layers_default_is_every_hidden_layer() -> None:
    assert MLPParams().dropout_layers == "all"
    default = build(depth=3, width=8, dropout=0.25)
    assert structure(default) == ["Dense 8", "ReLU", "Dropout 0.25"] * 3 + ["Dense 3"]
    assert structure(build(depth=3, width=8, dropout=0.25, dropout_layers="all")) == structure(
        default
    )


@pytest.mark.parametrize(
    ("dropout_layers", "with_dropout"),
    [
        ("all", [1, 2, 3]),
        ("first", [1]),
        ("last", [3]),
        ("2", [2]),
        ("1,3", [1, 3]),
        ("3, 1", [1, 3]),
        (2, [2]),
        ([3, 1], [1, 3]),
    ],
)
def test_dropout_layers_pick_the_hidden_layers(
    dropout_layers: object, with_dropout: list[int]
) -> None:
    model = build(depth=3, width=8, dropout=0.3, dropout_layers=dropout_layers, batch_norm=True)
    names = [name for name, _ in model.named_children()]
    assert [int(n.removeprefix("drop")) for n in names if n.startswith("drop")] == with_dropout
    for i in with_dropout:  # each Dropout right after its layer's activation
        assert names[names.index(f"act{i}") + 1] == f"drop{i}"
    assert model(torch.randn(5, 20)).shape == (5, 3)


def test_dropout_layers_spelled_one_way() -> None:
    assert MLPParams(dropout_layers="First").dropout_layers == "first"
    assert MLPParams(dropout_layers=" 3 ,1").dropout_layers == "1,3"
    assert MLPParams(dropout_layers=[2]).dropout_layers == "2"
    assert dropout_layer_numbers("last", 1) == [1]
    assert dropout_layer_numbers("first", 4) == [1]


def test_no_dropout_means_no_dropout_layer_wherever_it_would_go() -> None:
    for where in ("all", "first", "last", "1,2"):
        model = build(depth=2, dropout=0.0, dropout_layers=where)
        assert not any(isinstance(m, nn.Dropout) for m in model.modules())


@pytest.mark.parametrize("bad", ["none", "middle", "0", "1,,2", "-1", "", True, [], 1.5, None])
def test_dropout_layers_rejects_what_it_cannot_place(bad: object) -> None:
    with pytest.raises(ValidationError, match="must be 'all', 'first', 'last' or hidden-layer"):
        MLPParams(dropout_layers=bad)


def test_a_dropout_layer_beyond_the_depth_fails_the_build_with_the_reason() -> None:
    with pytest.raises(ValueError, match="names hidden layer 3, but depth is 2"):
        build(depth=2, dropout=0.5, dropout_layers="1,3")


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
