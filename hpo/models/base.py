"""The model-family contract: a pydantic ``Params`` model of tunable knobs and a ``build`` method.

Every field of ``Params`` is a hyperparameter a study file may search or fix (its default is used
otherwise). Families take the input shape and class count from the data: nothing is hard-coded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from pydantic import BaseModel
from torch import nn

from hpo.registry import Registry


class ModelFamily(ABC):
    """A family of architectures (``mlp``, ``cnn``, …) built from hyperparameters."""

    #: Tunable hyperparameters with defaults; ``extra="forbid"``.
    Params: ClassVar[type[BaseModel]]
    #: One line for ``hpo models list``.
    description: ClassVar[str] = ""

    @abstractmethod
    def build(self, params: BaseModel, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        """Return an untrained module mapping ``(batch, *input_shape)`` to ``(batch, n_classes)`` logits."""


FAMILIES: Registry[type[ModelFamily]] = Registry("model family")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
