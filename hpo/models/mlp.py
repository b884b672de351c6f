"""``mlp``: a fully connected network (Flatten → hidden blocks → Linear to the class logits).

Each hidden block is ``Linear → (BatchNorm1d) → activation → (Dropout)``. Widths may shrink layer
by layer through ``width_decay``: the founding experiment's "Dense 128 → Dropout → Dense 64" is
``depth=2, width=128, width_decay=0.5`` (with ``dropout``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field
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
    #: Dropout probability after each hidden activation (0 = no Dropout layer).
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    #: Name of an activation in :data:`hpo.models.activations.ACTIVATIONS`.
    activation: ActivationName = "relu"
    #: BatchNorm1d between each hidden Linear and its activation.
    batch_norm: bool = False
    #: Each next hidden layer is the previous one's width × this (rounded, at least 1).
    width_decay: float = Field(1.0, gt=0.0, le=1.0)


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
        "fully connected: Flatten → [Linear → BatchNorm? → activation → Dropout?] × depth → Linear"
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
        for i, out_features in enumerate(
            hidden_widths(params.width, params.depth, params.width_decay), start=1
        ):
            layers[f"fc{i}"] = nn.Linear(in_features, out_features)
            if params.batch_norm:
                layers[f"bn{i}"] = nn.BatchNorm1d(out_features)
            layers[f"act{i}"] = activation()
            if params.dropout > 0:
                layers[f"drop{i}"] = nn.Dropout(params.dropout)
            in_features = out_features
        layers["out"] = nn.Linear(in_features, n_classes)
        return nn.Sequential(layers)
