"""TrainParams validation and the optimizer registry."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError

from hpo.training.config import TrainParams
from hpo.training.optim import OPTIMIZERS, fused_kernel, make_optimizer


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


def test_optimizers_use_torchs_fused_or_foreach_step_on_the_cpu() -> None:
    """torch loops over the parameters in Python on the CPU unless told otherwise; hpo asks
    for the fused step (Adam, AdamW, SGD) or the foreach one (RMSprop)."""
    weight = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    for name in ("adam", "adamw", "sgd"):
        group = make_optimizer(name, weight, lr=0.1, momentum=0.9).param_groups[0]
        assert group["fused"] is True and not group["foreach"], name
    assert make_optimizer("rmsprop", weight, lr=0.1).param_groups[0]["foreach"] is True
    assert fused_kernel([]) == {}
    assert fused_kernel([torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))]) == {
        "fused": True
    }
    meta = [torch.nn.Parameter(torch.zeros(2, device="meta"))]
    assert fused_kernel(meta) == {"foreach": True}
    assert fused_kernel([*weight, *meta]) == {}


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop"])
def test_the_fast_steps_train_as_torchs_default_step_does(name: str) -> None:
    """The same algorithm: 60 steps of a small MLP with hpo's optimizer and with torch's
    default (per-parameter) step end at the same weights, up to float rounding."""
    classes = {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "sgd": torch.optim.SGD,
        "rmsprop": torch.optim.RMSprop,
    }
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(64, 10, generator=generator)
    y = torch.randint(0, 3, (64,), generator=generator)

    def trained(build: Any) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
        )
        optimizer = build(model.parameters())
        for _ in range(60):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(X), y).backward()
            optimizer.step()
        return [p.detach() for p in model.parameters()]

    options = {"lr": 0.01, "weight_decay": 0.01}
    momentum = {"momentum": 0.9} if name in ("sgd", "rmsprop") else {}
    fast = trained(lambda p: make_optimizer(name, p, **options, momentum=0.9))
    default = trained(lambda p: classes[name](p, **options, **momentum, foreach=False))
    for a, b in zip(fast, default, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
