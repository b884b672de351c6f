"""``cnn``: a plain convolutional network for image input ``(channels, height, width)``.

``depth`` blocks of ``Conv2d (same padding) → (BatchNorm2d) → activation → (MaxPool 2×2) →
(Dropout2d)``, then ``AdaptiveAvgPool2d(1) → Flatten → (Dropout) → Linear`` to the class logits.
Block ``i`` (from 0) has ``width · 2**i`` channels, capped at ``width · 8``. A block pools only while
the feature map is at least 2×2, so small inputs (8×8 digits) survive any depth.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from hpo.models.activations import ACTIVATIONS, ActivationName
from hpo.models.base import FAMILIES, ModelFamily, image_shape

#: Channels stop doubling at ``width`` × this: deeper blocks would otherwise grow parameters ×4
#: per block for little gain on small images.
MAX_WIDTH_FACTOR = 8


class CNNParams(BaseModel):
    """Tunable hyperparameters of the ``cnn`` family."""

    model_config = ConfigDict(extra="forbid")

    #: Number of convolutional blocks.
    depth: int = Field(3, ge=1)
    #: Channels of the first block; each next block doubles them, up to ``width`` × 8.
    width: int = Field(32, ge=1)
    #: Side of the square convolution kernels (odd, so "same" padding is symmetric).
    kernel_size: int = Field(3, ge=1, le=7)
    #: Dropout probability after each block (Dropout2d) and before the head's Linear.
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    #: BatchNorm2d between each convolution and its activation.
    batch_norm: bool = True
    #: Name of an activation in :data:`hpo.models.activations.ACTIVATIONS`.
    activation: ActivationName = "relu"
    #: 2×2 max-pooling at the end of each block (while the feature map is at least 2×2).
    pool: bool = True

    @field_validator("kernel_size")
    @classmethod
    def _odd_kernel(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"kernel_size must be odd (1, 3, 5 or 7), got {value}")
        return value


def block_widths(width: int, depth: int) -> list[int]:
    """Channels of each block: ``width · 2**i``, capped at ``width · MAX_WIDTH_FACTOR``."""
    return [min(width * 2**i, width * MAX_WIDTH_FACTOR) for i in range(depth)]


@FAMILIES.register("cnn")
class CNN(ModelFamily):
    """Stack of conv blocks with global average pooling and a linear head."""

    Params: ClassVar[type[BaseModel]] = CNNParams
    description: ClassVar[str] = (
        "conv net: [Conv → BatchNorm? → activation → MaxPool? → Dropout?] × depth → "
        "global avg pool → Linear"
    )
    input_kind: ClassVar[Literal["flat", "image"]] = "image"

    def build(self, params: BaseModel, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        """A ``Sequential`` with named layers (``conv1``, ``bn1``, ``act1``, ``pool1``, ``drop1`` …
        ``gap``, ``flatten``, ``drop``, ``out``)."""
        if not isinstance(params, CNNParams):
            raise TypeError(f"cnn needs CNNParams, got {type(params).__name__}")
        in_channels, height, width = image_shape("cnn", input_shape)
        activation = ACTIVATIONS.get(params.activation)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, out_channels in enumerate(block_widths(params.width, params.depth), start=1):
            layers[f"conv{i}"] = nn.Conv2d(
                in_channels,
                out_channels,
                params.kernel_size,
                padding=params.kernel_size // 2,
                # A bias right before BatchNorm is cancelled by its mean subtraction.
                bias=not params.batch_norm,
            )
            if params.batch_norm:
                layers[f"bn{i}"] = nn.BatchNorm2d(out_channels)
            layers[f"act{i}"] = activation()
            if params.pool and min(height, width) >= 2:
                layers[f"pool{i}"] = nn.MaxPool2d(2)
                height, width = height // 2, width // 2
            if params.dropout > 0:
                # Drops whole feature maps: neighbouring pixels are too correlated for
                # element-wise dropout to regularise much.
                layers[f"drop{i}"] = nn.Dropout2d(params.dropout)
            in_channels = out_channels
        layers["gap"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        if params.dropout > 0:
            layers["drop"] = nn.Dropout(params.dropout)
        layers["out"] = nn.Linear(in_channels, n_classes)
        return nn.Sequential(layers)
