"""Activation functions a model family may use, by name.

Besides the usual fixed ones there is ``learnable``: ``g(x) = k0 + k1·x`` with trainable scalars
``k0`` and ``k1``, from a "learnable activation functions" experiment. Its learned values are read
out with :func:`learned_activation_params` so the tracking layer can log them per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import torch
from pydantic import AfterValidator
from torch import nn

from hpo.registry import Registry

#: Name → zero-argument factory returning a fresh activation module.
ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation")
ACTIVATIONS.add("relu", nn.ReLU)
ACTIVATIONS.add("gelu", nn.GELU)
ACTIVATIONS.add("tanh", nn.Tanh)
ACTIVATIONS.add("sigmoid", nn.Sigmoid)


@ACTIVATIONS.register("learnable")
class LearnableActivation(nn.Module):
    """``g(x) = k0 + k1·x`` with trainable scalar parameters ``k0`` and ``k1``.

    Both start from ``N(0, init_std²)`` drawn from torch's global generator, so seeding torch before
    building the model (``seed_everything``) makes the initial values reproducible.
    """

    def __init__(self, init_std: float = 0.1) -> None:
        super().__init__()
        self.init_std = init_std
        self.k0 = nn.Parameter(torch.randn(()) * init_std)
        self.k1 = nn.Parameter(torch.randn(()) * init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # addcmul fuses the affine map into one kernel: k0 + 1·(k1 * x).
        return torch.addcmul(self.k0, self.k1, x)

    def extra_repr(self) -> str:
        return f"k0={self.k0.item():.4g}, k1={self.k1.item():.4g}"


def learned_activation_params(model: nn.Module) -> dict[str, float]:
    """The current ``k0``/``k1`` of every :class:`LearnableActivation` in ``model``, in module order.

    Keys are ``act1_k0``, ``act1_k1``, ``act2_k0`` … (numbered from 1); empty when there are none.
    """
    values: dict[str, float] = {}
    index = 0
    for module in model.modules():
        if isinstance(module, LearnableActivation):
            index += 1
            values[f"act{index}_k0"] = float(module.k0.detach().cpu())
            values[f"act{index}_k1"] = float(module.k1.detach().cpu())
    return values


def _known_activation(value: str) -> str:
    if value not in ACTIVATIONS:
        raise ValueError(ACTIVATIONS.unknown_message(value))
    return value


#: A family hyperparameter naming a registered activation (validated with "did you mean").
ActivationName = Annotated[str, AfterValidator(_known_activation)]
