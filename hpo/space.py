"""Search-space parameters: float, int and categorical, with ``log``, ``step`` and a ``when`` condition.

A study file's ``search`` block maps hyperparameter names to one of these. ``when`` makes a
parameter conditional: ``momentum: {type: float, low: 0, high: 0.99, when: {optimizer: sgd}}`` is
only suggested on trials whose ``optimizer`` is ``sgd``, so the sampler never sees a knob that does
not apply. Conditions may name searched or fixed parameters and may list several accepted values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # optuna is slow to import; only the objective needs it at run time
    import optuna

#: The value types Optuna can store for a categorical choice.
Choice = bool | int | float | str | None


class _Param(BaseModel):
    # No NaN or infinity in bounds, steps, choices or conditions: Optuna cannot sample them, and
    # NaN makes every comparison (low <= high, a choice's duplicates) quietly false.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    #: ``{other_param: value}`` or ``{other_param: [value, …]}``: suggest only when every entry holds.
    when: dict[str, Choice | list[Choice]] | None = None

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether this parameter applies, given the values chosen so far in the trial."""
        if not self.when:
            return True
        for name, accepted in self.when.items():
            if name not in values:
                return False
            options = accepted if isinstance(accepted, list) else [accepted]
            if values[name] not in options:
                return False
        return True


class FloatParam(_Param):
    """A float in ``[low, high]``, optionally log-scaled or stepped (not both)."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ValueError("'step' and 'log: true' cannot be combined (Optuna refuses it)")
        return self

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def grid(self, name: str) -> list[Choice]:
        if self.step is None:
            raise ValueError(f"search.{name}: the grid sampler needs 'step' on float parameters")
        count = _grid_size(name, np.floor((self.high - self.low) / self.step + 1e-9) + 1)
        return [round(self.low + i * self.step, 12) for i in range(count)]

    def bounds(self) -> list[Any]:
        return [self.low, self.high]


class IntParam(_Param):
    """An integer in ``[low, high]``, optionally log-scaled or with a step other than 1."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("'step' and 'log: true' cannot be combined (Optuna refuses it)")
        return self

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log, step=self.step)

    def grid(self, name: str) -> list[Choice]:
        _grid_size(name, (self.high - self.low) // self.step + 1)
        return list(range(self.low, self.high + 1, self.step))

    def bounds(self) -> list[Any]:
        return [self.low, self.high]


class CategoricalParam(_Param):
    """One of a list of choices (numbers, strings, booleans)."""

    type: Literal["categorical"]
    choices: list[Choice] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError(f"'choices' has duplicates: {self.choices}")
        return self

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> Choice:
        return trial.suggest_categorical(name, self.choices)

    def grid(self, name: str) -> list[Choice]:
        return list(self.choices)

    def bounds(self) -> list[Any]:
        return list(self.choices)


def _check_range(low: float, high: float, log: bool) -> None:
    if low > high:
        raise ValueError(f"'low' must be <= 'high', got low={low}, high={high}")
    if log and low <= 0:
        raise ValueError(f"'log: true' needs 'low' > 0, got low={low}")


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


def suggestion_order(search: Mapping[str, _Param]) -> list[str]:
    """Order parameters so that every ``when`` condition's parameters come first.

    Raises :class:`ValueError` for a cycle (``a`` when ``b`` and ``b`` when ``a``).
    """
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = " -> ".join((*path, name))
            raise ValueError(f"'when' conditions form a cycle: {cycle}")
        state[name] = "visiting"
        for dep in (search[name].when or {}) if name in search else {}:
            if dep in search:
                visit(dep, (*path, name))
        state[name] = "done"
        order.append(name)

    for name in search:
        visit(name, ())
    return order


def suggest(
    trial: optuna.trial.BaseTrial,
    search: Mapping[str, _Param],
    fixed: Mapping[str, Any] | None = None,
    order: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Suggest every active parameter of ``search`` on ``trial``; return them with ``fixed``.

    Fixed values are visible to ``when`` conditions but are not suggested, so samplers only see
    what is really searched.
    """
    values: dict[str, Any] = dict(fixed or {})
    for name in order if order is not None else suggestion_order(search):
        param = search[name]
        if param.active(values):
            values[name] = param.suggest(trial, name)  # type: ignore[attr-defined]
    return values


#: The most points a grid may have: Optuna's grid sampler lists every combination up front.
MAX_GRID_POINTS = 1_000_000


def _grid_size(name: str, count: float) -> int:
    """``count`` grid values of ``search.<name>`` as an int; ValueError when there are too many."""
    # Checked before the values are listed: a tiny step over a wide range would exhaust memory
    # (or overflow: the count of a float grid can be infinite).
    if not count <= MAX_GRID_POINTS:
        raise ValueError(
            f"search.{name}: the grid would have {count:.3g} values, more than {MAX_GRID_POINTS:,}"
            "; raise 'step' or narrow 'low'..'high'"
        )
    return int(count)


def grid_search_space(search: Mapping[str, _Param]) -> dict[str, list[Choice]]:
    """The finite search space the grid sampler enumerates.

    Raises :class:`ValueError` when a parameter cannot be enumerated or the grid, all
    combinations, would have more than :data:`MAX_GRID_POINTS` points.
    """
    space = {name: param.grid(name) for name, param in search.items()}  # type: ignore[attr-defined]
    points = math.prod(len(values) for values in space.values())
    if points > MAX_GRID_POINTS:
        sizes = " × ".join(f"{name} {len(values)}" for name, values in space.items())
        raise ValueError(
            f"search: the grid would have {points:,} points ({sizes}), more than "
            f"{MAX_GRID_POINTS:,}; raise the steps or narrow the ranges"
        )
    return space
