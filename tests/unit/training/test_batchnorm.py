"""BatchNorm statistics recomputed for the final weights, alone and at the end of training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hpo.data.base import Dataset
from hpo.training.batchnorm import batchnorm_layers, recompute_batchnorm
from hpo.training.config import TrainParams
from hpo.training.loop import seed_everything, train

CPU = torch.device("cpu")


def features(seed: int = 0, n: int = 256) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=generator) * 3.0 + 7.0


def test_statistics_are_the_data_s_through_the_current_weights() -> None:
    bn = nn.BatchNorm1d(5)
    X = features()
    used = recompute_batchnorm(bn, X, 32, generator=torch.Generator().manual_seed(0))
    assert used == 256
    assert bn.running_mean is not None and bn.running_var is not None
    # Whole batches of one size: the average of the batch means is the mean of the data; the
    # variance is the average of the batches' unbiased variances.
    torch.testing.assert_close(bn.running_mean, X.mean(0), rtol=0, atol=1e-5)
    order = torch.randperm(256, generator=torch.Generator().manual_seed(0))
    batch_vars = torch.stack([X[idx].var(0) for idx in order.split(32)])
    torch.testing.assert_close(bn.running_var, batch_vars.mean(0), rtol=1e-5, atol=1e-5)
    # The layer is left as it was: moving average again, eval mode kept.
    assert bn.momentum == 0.1


def test_only_whole_batches_and_at_most_max_batches_are_used() -> None:
    bn = nn.BatchNorm1d(5)
    X = features(n=100)
    assert recompute_batchnorm(bn, X, 32, generator=torch.Generator().manual_seed(0)) == 96
    assert (
        recompute_batchnorm(bn, X, 8, generator=torch.Generator().manual_seed(0), max_batches=3)
        == 24
    )
    # Fewer samples than a batch: all of them, as one batch.
    assert recompute_batchnorm(bn, X[:10], 32, generator=torch.Generator().manual_seed(0)) == 10


def test_a_model_without_batchnorm_is_left_alone() -> None:
    model = nn.Sequential(nn.Linear(5, 3), nn.ReLU())
    before = [p.clone() for p in model.state_dict().values()]
    assert batchnorm_layers(model) == []
    assert recompute_batchnorm(model, features(), 32, generator=torch.Generator()) == 0
    for old, new in zip(before, model.state_dict().values(), strict=True):
        assert torch.equal(old, new)


def test_mode_and_momentum_are_restored_even_when_the_forward_pass_fails() -> None:
    model = nn.Sequential(nn.BatchNorm1d(5), nn.Linear(4, 2))  # 5 → 4: the Linear fails
    model.eval()
    with pytest.raises(RuntimeError):
        recompute_batchnorm(model, features(), 32, generator=torch.Generator())
    assert not model.training
    assert model[0].momentum == 0.1


def test_a_trained_model_is_evaluated_with_statistics_of_its_final_weights() -> None:
    """After the last epoch, each BatchNorm layer holds the statistics of the training data as
    the final weights map it, not moving averages taken while the weights moved; the last
    epoch's validation figures are those of the returned model."""
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(512, 6, generator=generator)
    y = (X[:, 0] + X[:, 1] > 0).long()
    data = Dataset(
        "toy", X[:384].numpy(), y[:384].numpy(), X[384:].numpy(), y[384:].numpy(), ["0", "1"]
    )
    seed_everything(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    # A large learning rate: the weights still move a lot in the last epoch.
    result = train(
        model,
        data,
        TrainParams(optimizer="sgd", lr=0.5, batch_size=64),
        epochs=3,
        device=CPU,
        seed=0,
    )
    bn = model[1]
    assert isinstance(bn, nn.BatchNorm1d) and bn.running_mean is not None
    with torch.no_grad():
        hidden = model[0](torch.from_numpy(data.X_train))
    torch.testing.assert_close(bn.running_mean, hidden.mean(0), rtol=0, atol=1e-5)
    with torch.no_grad():
        predicted = model(torch.from_numpy(data.X_val)).argmax(1).numpy()
    assert result.history[-1]["val_accuracy"] == pytest.approx(
        float(np.mean(predicted == data.y_val))
    )
