"""Each conv family with its shipped defaults learns scikit-learn's 8×8 digits (slow: ~10 s).

The defaults are what a study gets for every hyperparameter it neither searches nor fixes, so they
must be good on their own: ≥ 0.95 validation accuracy within 15 epochs of Adam at lr 1e-3,
batch 64. If a family misses it, tune its defaults, not this test.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from hpo.data.base import Dataset
from hpo.models import get_family
from hpo.models.base import count_parameters
from hpo.training.config import TrainParams
from hpo.training.loop import seed_everything, train

pytestmark = pytest.mark.slow

EPOCHS = 15
MIN_ACCURACY = 0.95


@pytest.fixture(scope="module")
def digits() -> Dataset:
    """Digits as 1×8×8 images in [0, 1], standardised with the training split's mean and std."""
    bunch = load_digits()
    X = (bunch.data / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    y = bunch.target.astype(np.int64)
    X_train, X_val, y_train, y_val = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=0
    )
    mean, std = X_train.mean(), X_train.std()
    return Dataset(
        "digits",
        ((X_train - mean) / std).astype(np.float32),
        y_train,
        ((X_val - mean) / std).astype(np.float32),
        y_val,
        [str(d) for d in range(10)],
    )


@pytest.mark.parametrize("family_name", ["cnn", "vgg", "resnet"])
def test_defaults_reach_95_percent_on_digits(family_name: str, digits: Dataset) -> None:
    family = get_family(family_name)
    seed_everything(0)
    model = family.build(family.Params(), digits.input_shape, digits.n_classes)
    started = time.perf_counter()
    result = train(
        model,
        digits,
        TrainParams(optimizer="adam", lr=1e-3, batch_size=64),
        epochs=EPOCHS,
        device=torch.device("cpu"),
        seed=0,
    )
    seconds = time.perf_counter() - started
    accuracy = result.history[-1]["val_accuracy"]
    # Shown with -s / on failure: the numbers quoted when the defaults are tuned.
    print(
        f"{family_name}: val_accuracy={accuracy:.4f} params={count_parameters(model)} "
        f"seconds={seconds:.1f}"
    )
    assert accuracy >= MIN_ACCURACY
