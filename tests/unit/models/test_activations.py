"""The activation registry and the learnable activation g(x) = k0 + k1·x."""

from __future__ import annotations

import torch
from torch import nn

from hpo.models.activations import ACTIVATIONS, LearnableActivation, learned_activation_params


def test_registry_has_the_documented_activations() -> None:
    assert ACTIVATIONS.names() == ["gelu", "learnable", "relu", "sigmoid", "tanh"]
    for name in ACTIVATIONS:
        module = ACTIVATIONS.get(name)()
        assert isinstance(module, nn.Module)
        assert module(torch.zeros(3, 4)).shape == (3, 4)


def test_learnable_computes_k0_plus_k1_x() -> None:
    act = LearnableActivation()
    with torch.no_grad():
        act.k0.fill_(0.5)
        act.k1.fill_(-2.0)
    x = torch.tensor([[0.0, 1.0, 3.0]])
    assert torch.allclose(act(x), torch.tensor([[0.5, -1.5, -5.5]]))
    assert "k0=0.5" in repr(act) and "k1=-2" in repr(act)


def test_learnable_params_are_trainable_scalars() -> None:
    act = LearnableActivation()
    params = dict(act.named_parameters())
    assert set(params) == {"k0", "k1"}
    assert all(p.requires_grad and p.shape == () for p in params.values())


def test_learnable_init_is_normal_with_std_0_1() -> None:
    torch.manual_seed(0)
    values = torch.stack(
        [torch.stack([a.k0, a.k1]) for a in (LearnableActivation() for _ in range(4000))]
    ).detach()
    # 8000 draws: the sample std of N(0, 0.1²) is within ±0.005 with overwhelming probability.
    assert abs(values.mean().item()) < 0.01
    assert abs(values.std().item() - 0.1) < 0.005


def test_learned_activation_params_in_module_order() -> None:
    first, second = LearnableActivation(), LearnableActivation()
    model = nn.Sequential(nn.Linear(2, 2), first, nn.ReLU(), nn.Linear(2, 2), second)
    values = learned_activation_params(model)
    assert list(values) == ["act1_k0", "act1_k1", "act2_k0", "act2_k1"]
    assert values["act2_k1"] == second.k1.item()
    assert learned_activation_params(nn.Sequential(nn.ReLU())) == {}
