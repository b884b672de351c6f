"""Search-space parameters: validation, suggestion with ``when``, grids."""

from __future__ import annotations

import optuna
import pytest
from pydantic import TypeAdapter, ValidationError

from hpo.space import Param, grid_search_space, suggest, suggestion_order

adapter: TypeAdapter = TypeAdapter(Param)


def space(**params: dict) -> dict:
    return {name: adapter.validate_python(p) for name, p in params.items()}


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ({"type": "float", "low": 1.0, "high": 0.1}, "'low' must be <= 'high'"),
        ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "needs 'low' > 0"),
        (
            {"type": "float", "low": 0.1, "high": 1.0, "log": True, "step": 0.1},
            "cannot be combined",
        ),
        ({"type": "int", "low": 1, "high": 8, "log": True, "step": 2}, "cannot be combined"),
        ({"type": "categorical", "choices": []}, "at least 1 item"),
        ({"type": "categorical", "choices": [1, 1]}, "duplicates"),
        ({"type": "uniform", "low": 0, "high": 1}, "does not match any of the expected tags"),
    ],
)
def test_invalid_parameters_are_refused_with_the_rule(param: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        adapter.validate_python(param)


def test_when_condition_skips_inactive_parameters() -> None:
    search = space(
        optimizer={"type": "categorical", "choices": ["adam", "sgd"]},
        momentum={"type": "float", "low": 0.0, "high": 0.99, "when": {"optimizer": "sgd"}},
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = {"adam": 0, "sgd": 0}
    for _ in range(30):
        trial = study.ask()
        values = suggest(trial, search)
        seen[values["optimizer"]] += 1
        # the sampler must never see momentum on an adam trial
        assert ("momentum" in trial.params) == (values["optimizer"] == "sgd")
        assert ("momentum" in values) == (values["optimizer"] == "sgd")
        study.tell(trial, 0.0)
    assert seen["adam"] and seen["sgd"]


def test_when_accepts_a_list_and_fixed_values() -> None:
    search = space(
        momentum={
            "type": "float",
            "low": 0.0,
            "high": 0.9,
            "when": {"optimizer": ["sgd", "rmsprop"]},
        },
    )
    trial = optuna.create_study().ask()
    assert "momentum" in suggest(trial, search, fixed={"optimizer": "rmsprop"})
    trial = optuna.create_study().ask()
    values = suggest(trial, search, fixed={"optimizer": "adam"})
    assert values == {"optimizer": "adam"}


def test_conditions_are_suggested_after_what_they_depend_on() -> None:
    # declared before its condition in the file: still ordered correctly
    search = space(
        momentum={"type": "float", "low": 0.0, "high": 0.9, "when": {"optimizer": "sgd"}},
        optimizer={"type": "categorical", "choices": ["sgd"]},
    )
    assert suggestion_order(search) == ["optimizer", "momentum"]
    assert "momentum" in suggest(optuna.create_study().ask(), search)


def test_cyclic_conditions_are_refused() -> None:
    search = space(
        a={"type": "categorical", "choices": [1], "when": {"b": 1}},
        b={"type": "categorical", "choices": [1], "when": {"a": 1}},
    )
    with pytest.raises(ValueError, match="cycle"):
        suggestion_order(search)


def test_log_and_step_reach_optuna() -> None:
    search = space(
        lr={"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        width={"type": "int", "low": 16, "high": 64, "step": 16},
    )
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    values = suggest(trial, search)
    assert 1e-4 <= values["lr"] <= 1e-1
    assert values["width"] in (16, 32, 48, 64)
    dist = trial.distributions
    assert dist["lr"].log is True
    assert dist["width"].step == 16


def test_grid_space() -> None:
    search = space(
        dropout={"type": "float", "low": 0.0, "high": 0.5, "step": 0.25},
        depth={"type": "int", "low": 1, "high": 3},
        act={"type": "categorical", "choices": ["relu", "tanh"]},
    )
    assert grid_search_space(search) == {
        "dropout": [0.0, 0.25, 0.5],
        "depth": [1, 2, 3],
        "act": ["relu", "tanh"],
    }
    with pytest.raises(ValueError, match="needs 'step'"):
        grid_search_space(space(lr={"type": "float", "low": 0.1, "high": 0.2}))
