"""The CLI: help, listings, spec commands, and user errors as one line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpo.cli import main


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=input)
    return result.exit_code, result.output


def test_help_lists_the_commands() -> None:
    code, out = run("--help")
    assert code == 0
    for command in ("study", "spec", "models", "datasets", "ui"):
        assert command in out
    code, out = run("study", "--help")
    for command in ("start", "list", "show", "best", "export", "delete"):
        assert command in out


def test_help_does_not_import_heavy_modules() -> None:
    # ``hpo --help`` must answer at once: torch, optuna and mlflow load only when a command needs them.
    code = (
        "import sys; from click.testing import CliRunner; from hpo.cli import main; "
        "CliRunner().invoke(main, ['--help']); "
        "print(','.join(m for m in ('torch', 'optuna', 'mlflow', 'pandas', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_models_and_datasets_list() -> None:
    code, out = run("models", "list")
    assert code == 0
    assert "mlp" in out and "dropout" in out and "batch_size" in out
    code, out = run("datasets", "list")
    assert code == 0
    for source in ("synthetic", "sklearn", "csv"):
        assert source in out


def test_spec_validate_and_schema(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("name: g\ndata: {source: sklearn, name: iris}\n")
    code, out = run("spec", "validate", str(good))
    assert code == 0 and "ok" in out
    code, out = run("spec", "schema")
    assert code == 0
    assert "search" in json.loads(out)["properties"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["spec", "validate", "missing.yaml"], "missing.yaml: study file not found"),
        (["study", "start", "missing.yaml"], "missing.yaml: study file not found"),
        (["study", "show", "nope"], "study 'nope' not found"),
        (["study", "best", "nope"], "study 'nope' not found"),
        (["study", "list", "--storage", "bogus"], "storage: invalid URL 'bogus'"),
    ],
)
def test_user_errors_are_one_line_exit_2_no_traceback(
    workdir: Path, args: list[str], expected: str
) -> None:
    code, out = run(*args)
    assert code == 2, out
    assert expected in out
    assert "Traceback" not in out
    assert len(out.strip().splitlines()) == 1, out


def test_bad_spec_leaves_nothing_behind(workdir: Path) -> None:
    bad = workdir / "bad.yaml"
    bad.write_text("name: b\nsearch:\n  lr: {type: float, low: 0.1, high: 0.01}\n")
    code, out = run("study", "start", str(bad))
    assert code == 2
    assert "search.lr" in out
    assert not (workdir / "hpo.db").exists()
    assert not (workdir / "mlflow.db").exists()


def test_missing_csv_target_leaves_nothing_behind(workdir: Path) -> None:
    (workdir / "d.csv").write_text("a,b,label\n1,2,x\n3,4,y\n5,6,x\n7,8,y\n")
    spec = workdir / "s.yaml"
    spec.write_text("name: c\ndata: {source: csv, path: d.csv, target: lable}\n")
    code, out = run("study", "start", str(spec))
    assert code == 2, out
    assert "lable" in out and "label" in out
    assert not (workdir / "hpo.db").exists()


def test_debug_shows_the_traceback(workdir: Path) -> None:
    result = CliRunner().invoke(main, ["--debug", "spec", "validate", "missing.yaml"])
    assert result.exit_code != 0
    assert result.exception is not None


def test_delete_asks_then_deletes(workdir: Path) -> None:
    import optuna

    optuna.create_study(storage="sqlite:///hpo.db", study_name="gone")
    code, out = run("study", "delete", "gone", input="n\n")
    assert code != 0
    assert "gone" in [s.study_name for s in optuna.get_all_study_summaries("sqlite:///hpo.db")]
    code, out = run("study", "delete", "gone", "--yes")
    assert code == 0 and "deleted study 'gone'" in out
    assert optuna.get_all_study_summaries("sqlite:///hpo.db") == []
