"""``resnet``: CIFAR-style residual networks of basic blocks (He et al. 2016, section 4.2).

A 3×3 stem convolution, then three stages of ``n`` basic blocks with ``width``, ``2·width`` and
``4·width`` channels (stride 2 into stages 2 and 3), then ``AdaptiveAvgPool2d(1) → Flatten →
(Dropout) → Linear``. ``resnet_depth = 6n + 2`` counts the weighted layers: 8, 14, 20, 26, 32 …
A stage keeps stride 1 when the feature map is already 1 pixel on a side.

Shortcuts that change shape are 1×1 convolutions (option B of the paper). Without batch norm the
norms are identities and each block's last convolution starts at zero, so every block begins as
the identity: otherwise the residual sums' variance grows with depth and deep nets diverge.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from hpo.models.activations import ACTIVATIONS, ActivationName
from hpo.models.base import FAMILIES, ModelFamily, image_shape

#: Stages of a CIFAR ResNet; channels double and the resolution halves from one to the next.
N_STAGES = 3


class ResNetParams(BaseModel):
    """Tunable hyperparameters of the ``resnet`` family."""

    model_config = ConfigDict(extra="forbid")

    #: Weighted layers, ``6n + 2`` for ``n`` blocks per stage: 8, 14, 20, 26, 32 …
    resnet_depth: int = 8
    #: Channels of the stem and the first stage; doubled in each next stage.
    width: int = Field(16, ge=1)
    #: Dropout probability before the final Linear (0 = no Dropout layer).
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    #: BatchNorm2d after every convolution (identities when false).
    batch_norm: bool = True
    #: Name of an activation in :data:`hpo.models.activations.ACTIVATIONS`.
    activation: ActivationName = "relu"

    @field_validator("resnet_depth")
    @classmethod
    def _six_n_plus_two(cls, value: int) -> int:
        if value < 8 or (value - 2) % 6:
            raise ValueError(
                f"resnet_depth must be 6n+2 with n >= 1 (8, 14, 20, 26, 32, …), got {value}"
            )
        return value


def blocks_per_stage(resnet_depth: int) -> int:
    """``n`` in ``resnet_depth = 6n + 2``: each block has two convolutions, plus stem and head."""
    return (resnet_depth - 2) // 6


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


class BasicBlock(nn.Module):
    """``act(norm(conv(act(norm(conv(x))))) + shortcut(x))`` with 3×3 convolutions."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        batch_norm: bool,
        activation: Callable[[], nn.Module],
    ) -> None:
        super().__init__()
        # A bias right before BatchNorm is cancelled by its mean subtraction.
        bias = not batch_norm
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=bias)
        self.bn1 = _norm(out_channels, batch_norm)
        self.act1 = activation()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=bias)
        self.bn2 = _norm(out_channels, batch_norm)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=bias),
                _norm(out_channels, batch_norm),
            )
        self.act2 = activation()
        if not batch_norm:
            # Start as the identity (Fixup-style): nothing else keeps deep un-normalised sums
            # from exploding at initialisation.
            nn.init.zeros_(self.conv2.weight)
            if self.conv2.bias is not None:
                nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


@FAMILIES.register("resnet")
class ResNet(ModelFamily):
    """CIFAR-style ResNet-(6n+2) of basic blocks for small images."""

    Params: ClassVar[type[BaseModel]] = ResNetParams
    description: ClassVar[str] = (
        "CIFAR-style ResNet-(6n+2): stem → 3 stages of n basic blocks (width, ×2, ×4) → "
        "global avg pool → Dropout? → Linear"
    )
    input_kind: ClassVar[Literal["flat", "image"]] = "image"

    def build(self, params: BaseModel, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        """A ``Sequential`` of ``stem``, ``stage1`` … ``stage3`` (of :class:`BasicBlock`) and
        ``head`` (``gap``, ``flatten``, ``drop``, ``out``)."""
        if not isinstance(params, ResNetParams):
            raise TypeError(f"resnet needs ResNetParams, got {type(params).__name__}")
        in_channels, height, width = image_shape("resnet", input_shape)
        activation = ACTIVATIONS.get(params.activation)
        n_blocks = blocks_per_stage(params.resnet_depth)

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["stem"] = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_channels, params.width, 3, padding=1, bias=not params.batch_norm),
                bn=_norm(params.width, params.batch_norm),
                act=activation(),
            )
        )
        channels = params.width
        for stage in range(N_STAGES):
            out_channels = params.width * 2**stage
            # Downsample into every stage but the first, unless there is nothing left to halve.
            stride = 2 if stage > 0 and min(height, width) >= 2 else 1
            if stride == 2:
                # 3×3 conv, padding 1, stride 2 (and the 1×1 shortcut): ceil(size / 2).
                height, width = (height + 1) // 2, (width + 1) // 2
            blocks: list[nn.Module] = []
            for i in range(n_blocks):
                blocks.append(
                    BasicBlock(
                        channels,
                        out_channels,
                        stride if i == 0 else 1,
                        params.batch_norm,
                        activation,
                    )
                )
                channels = out_channels
            layers[f"stage{stage + 1}"] = nn.Sequential(*blocks)

        head: OrderedDict[str, nn.Module] = OrderedDict(
            gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()
        )
        if params.dropout > 0:
            head["drop"] = nn.Dropout(params.dropout)
        head["out"] = nn.Linear(channels, n_classes)
        layers["head"] = nn.Sequential(head)
        return nn.Sequential(layers)
