"""Every study file we ship is valid and its data loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.spec import load_spec
from hpo.study import prepare_data

STUDIES = sorted((Path(__file__).parents[1] / "studies").glob("*.yaml"))


def test_there_are_shipped_studies() -> None:
    assert any(p.name == "quickstart.yaml" for p in STUDIES)


@pytest.mark.parametrize("path", STUDIES, ids=[p.name for p in STUDIES])
def test_shipped_study_is_valid_and_its_data_loads(path: Path) -> None:
    spec = load_spec(path)
    data = prepare_data(spec, str(path))
    assert len(data.y_train) > 0 and len(data.y_val) > 0
