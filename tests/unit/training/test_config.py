"""TrainParams validation and the optimizer registry."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from hpo.training.config import TrainParams
from hpo.training.optim import OPTIMIZERS, make_optimizer


def test_defaults() -> None:
    params = TrainParams()
    assert params.model_dump() == {
        "batch_size": 64,
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 0.0,
        "momentum": 0.0,
    }


def test_full_batch() -> None:
    params = TrainParams(batch_size="full")
    assert params.batch_size == "full"
    assert params.resolved_batch_size(1234) == 1234
    assert TrainParams(batch_size=64).resolved_batch_size(10) == 10


@pytest.mark.parametrize(
    "bad",
    [
        {"batch_size": 0},
        {"batch_size": "half"},
        {"lr": 0.0},
        {"weight_decay": -1.0},
        {"momentum": 1.0},
        {"epochs": 3},
    ],
)
def test_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TrainParams(**bad)


def test_unknown_optimizer_names_the_known_ones() -> None:
    with pytest.raises(ValidationError, match=r"unknown optimizer 'adamm'.*known: adam, adamw"):
        TrainParams(optimizer="adamm")


def test_optimizers() -> None:
    assert OPTIMIZERS.names() == ["adam", "adamw", "rmsprop", "sgd"]
    weight = [torch.nn.Parameter(torch.zeros(2))]
    expected = {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "sgd": torch.optim.SGD,
        "rmsprop": torch.optim.RMSprop,
    }
    for name, cls in expected.items():
        optimizer = make_optimizer(name, weight, lr=0.1, weight_decay=0.01, momentum=0.9)
        assert type(optimizer) is cls
        group = optimizer.param_groups[0]
        assert group["lr"] == 0.1 and group["weight_decay"] == 0.01
        if name in ("sgd", "rmsprop"):
            assert group["momentum"] == 0.9
    assert make_optimizer("sgd", weight, lr=0.1, momentum=0.9).param_groups[0]["nesterov"] is False
    with pytest.raises(KeyError, match="unknown optimizer"):
        make_optimizer("lbfgs", weight, lr=0.1)
