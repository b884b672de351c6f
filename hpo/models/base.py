"""The model-family contract: a pydantic ``Params`` model of tunable knobs and a ``build`` method.

Every field of ``Params`` is a hyperparameter a study file may search or fix (its default is used
otherwise). Families take the input shape and class count from the data: nothing is hard-coded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

from pydantic import BaseModel
from torch import nn

from hpo.registry import Registry


class ModelFamily(ABC):
    """A family of architectures (``mlp``, ``cnn``, …) built from hyperparameters."""

    #: Tunable hyperparameters with defaults; ``extra="forbid"``.
    Params: ClassVar[type[BaseModel]]
    #: One line for ``hpo models list``.
    description: ClassVar[str] = ""
    #: What input the family expects: ``"flat"`` takes any shape (an MLP flattens it), ``"image"``
    #: needs ``(channels, height, width)``; the study layer loads e.g. digits as 1×8×8 images for
    #: image families.
    input_kind: ClassVar[Literal["flat", "image"]] = "flat"

    @abstractmethod
    def build(self, params: BaseModel, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        """Return an untrained module mapping ``(batch, *input_shape)`` to ``(batch, n_classes)`` logits."""


FAMILIES: Registry[type[ModelFamily]] = Registry("model family")


def image_shape(family: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``input_shape`` as ``(channels, height, width)``; :class:`ValueError` if it is not one.

    Image families call this first so flat data (e.g. 64 digit features) fails with a message that
    says what to do, rather than with a shape error deep inside the first convolution.
    """
    if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
        raise ValueError(
            f"model family '{family}' needs image input of shape (channels, height, width), got "
            f"input_shape {tuple(input_shape)}; load the data as images (e.g. digits as 1×8×8) "
            "or use a flat family such as 'mlp'"
        )
    channels, height, width = (int(d) for d in input_shape)
    return channels, height, width


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
