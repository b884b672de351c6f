"""``mlp``: a fully connected network (Flatten → hidden blocks → Linear to the class logits).

Each hidden block is ``Linear → (BatchNorm1d) → activation → (Dropout)``. Widths may shrink layer
by layer through ``width_decay``, and ``dropout_layers`` says which blocks end in the Dropout, as
a Keras ``Dropout`` layer sits after the ``Dense`` layers it is placed after: the founding
experiment's "Dense 128 ReLU → Dropout 0.5 → Dense 64 ReLU → Dense 10" is ``depth=2, width=128,
width_decay=0.5, dropout=0.5, dropout_layers=first``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from hpo.models.activations import ACTIVATIONS, ActivationName
from hpo.models.base import FAMILIES, ModelFamily


class MLPParams(BaseModel):
    """Tunable hyperparameters of the ``mlp`` family."""

    model_config = ConfigDict(extra="forbid")

    #: Number of hidden layers.
    depth: int = Field(2, ge=1)
    #: Width of the first hidden layer.
    width: int = Field(128, ge=1)
    #: Dropout probability after the activation of each hidden layer named by ``dropout_layers``
    #: (0 = no Dropout layer).
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    #: Which hidden layers end in the Dropout: ``all``, ``first``, ``last``, or hidden-layer numbers
    #: counted from 1 (``"1"``, ``"1,3"``; an int or a list of ints in YAML is read the same).
    #: A string, so a study can search it as a categorical choice.
    dropout_layers: str = "all"
    #: Name of an activation in :data:`hpo.models.activations.ACTIVATIONS`.
    activation: ActivationName = "relu"
    #: BatchNorm1d between each hidden Linear and its activation.
    batch_norm: bool = False
    #: Each next hidden layer is the previous one's width × this (rounded, at least 1).
    width_decay: float = Field(1.0, gt=0.0, le=1.0)

    @field_validator("dropout_layers", mode="before")
    @classmethod
    def _dropout_layers(cls, value: Any) -> str:
        return normalize_dropout_layers(value)


_DROPOUT_LAYERS_RULE = (
    "must be 'all', 'first', 'last' or hidden-layer numbers counted from 1 such as '1' or '1,3'"
)


def normalize_dropout_layers(value: Any) -> str:
    """``dropout_layers`` in its one spelling: a keyword, or sorted numbers joined by commas.

    Accepts a keyword, ``"1, 3"``, ``1`` or ``[1, 3]``; raises :class:`ValueError` otherwise.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, list | tuple):
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ValueError(_DROPOUT_LAYERS_RULE)
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str):
        raise ValueError(_DROPOUT_LAYERS_RULE)
    text = value.strip().lower()
    if text in ("all", "first", "last"):
        return text
    if not re.fullmatch(r"\d+(\s*,\s*\d+)*", text):
        raise ValueError(_DROPOUT_LAYERS_RULE)
    numbers = sorted({int(part) for part in text.split(",")})
    if numbers[0] < 1:
        raise ValueError(f"{_DROPOUT_LAYERS_RULE} (layer 1 is the first)")
    return ",".join(str(n) for n in numbers)


def dropout_layer_numbers(dropout_layers: str, depth: int) -> list[int]:
    """The hidden layers (numbered 1 … ``depth``) that end in a Dropout.

    A number beyond ``depth`` is a :class:`ValueError` (the trial fails and says so); a study that
    searches ``depth`` should use ``all``, ``first`` or ``last``, which fit every depth.
    """
    spelled = normalize_dropout_layers(dropout_layers)
    if spelled == "all":
        return list(range(1, depth + 1))
    if spelled == "first":
        return [1]
    if spelled == "last":
        return [depth]
    numbers = [int(part) for part in spelled.split(",")]
    if numbers[-1] > depth:
        raise ValueError(
            f"dropout_layers '{spelled}' names hidden layer {numbers[-1]}, but depth is {depth} "
            "(all, first and last fit any depth)"
        )
    return numbers


def hidden_widths(width: int, depth: int, width_decay: float) -> list[int]:
    """Widths of the hidden layers: ``width``, then each previous × ``width_decay``, rounded, ≥ 1."""
    widths = [width]
    for _ in range(depth - 1):
        widths.append(max(1, round(widths[-1] * width_decay)))
    return widths


@FAMILIES.register("mlp")
class MLP(ModelFamily):
    """Multi-layer perceptron on the flattened input."""

    Params: ClassVar[type[BaseModel]] = MLPParams
    description: ClassVar[str] = (
        "fully connected: Flatten → [Linear → BatchNorm? → activation → Dropout?] × depth → "
        "Linear; Dropout on the hidden layers in dropout_layers"
    )

    def build(self, params: BaseModel, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        """A ``Sequential`` with named layers (``fc1``, ``bn1``, ``act1``, ``drop1`` … ``out``)."""
        if not isinstance(params, MLPParams):
            raise TypeError(f"mlp needs MLPParams, got {type(params).__name__}")
        in_features = 1
        for dim in input_shape:
            in_features *= dim
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        activation = ACTIVATIONS.get(params.activation)
        with_dropout = (
            set(dropout_layer_numbers(params.dropout_layers, params.depth))
            if params.dropout > 0
            else set()
        )
        for i, out_features in enumerate(
            hidden_widths(params.width, params.depth, params.width_decay), start=1
        ):
            layers[f"fc{i}"] = nn.Linear(in_features, out_features)
            if params.batch_norm:
                layers[f"bn{i}"] = nn.BatchNorm1d(out_features)
            layers[f"act{i}"] = activation()
            if i in with_dropout:
                layers[f"drop{i}"] = nn.Dropout(params.dropout)
            in_features = out_features
        layers["out"] = nn.Linear(in_features, n_classes)
        return nn.Sequential(layers)
