"""Moons through the per-process data cache, as a study loads them."""

from __future__ import annotations

import pytest

from hpo.data import clear_cache, load_dataset_cached
from hpo.data.base import SplitOptions
from hpo.data.synthetic import SyntheticOptions
from hpo.errors import DataError


def test_moons_load_through_the_cache_with_n_features_unset() -> None:
    # The cache re-validates the options from their dump: the default n_features (20) must not
    # come back as an explicit value that moons refuse.
    clear_cache()
    data = load_dataset_cached("synthetic", {"kind": "moons", "n_samples": 60}, SplitOptions())
    assert data.input_shape == (2,)
    assert data.feature_names == ["x0", "x1"]
    assert SyntheticOptions(kind="moons").n_features == 2
    assert SyntheticOptions(kind="moons", n_features=2).n_features == 2
    clear_cache()


def test_moons_still_refuse_an_explicit_other_width() -> None:
    clear_cache()
    with pytest.raises(DataError, match="moons are always 2-D, got 5"):
        load_dataset_cached("synthetic", {"kind": "moons", "n_features": 5}, SplitOptions())
    clear_cache()
