"""The CLI: help, listings, spec commands, and user errors as one line with exit code 2."""

from __future__ import annotations

import json
import re
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


def table_rows(out: str) -> dict[str, list[str]]:
    """A rich table's rows by their first cell, each cell's wrapped lines joined with spaces."""
    rows: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.strip("│").split("│")]
        if cells[0]:
            current = rows.setdefault(cells[0], cells)
        elif current is not None:
            for i, cell in enumerate(cells[1:], start=1):
                if cell:
                    current[i] = f"{current[i]} {cell}".strip()
    return rows


def listed(cell: str) -> dict[str, str]:
    """``"depth=3, width=32, path (required)"`` → ``{"depth": "3", "width": "32", "path": ...}``."""
    pairs = {}
    # split before each name, not inside a default's list ("['.png', '.jpg']")
    for item in re.split(r", (?=[a-z_]+(?:=| |,|$))", cell):
        name, _, default = item.partition("=")
        pairs[name.split(" ")[0]] = default or item.removeprefix(name.split(" ")[0]).strip()
    return pairs


#: Every family with each hyperparameter and its default, as ``hpo models list`` shows them.
FAMILY_LISTING = {
    "mlp": {"depth": "2", "width": "128", "dropout": "0.0", "dropout_layers": "'all'",
            "activation": "'relu'", "batch_norm": "False", "width_decay": "1.0"},
    "cnn": {"depth": "3", "width": "32", "kernel_size": "3", "dropout": "0.0",
            "batch_norm": "True", "activation": "'relu'", "pool": "True"},
    "vgg": {"vgg_config": "'vgg11'", "width": "16", "batch_norm": "True", "dropout": "0.5",
            "activation": "'relu'"},
    "resnet": {"resnet_depth": "8", "width": "16", "dropout": "0.0", "batch_norm": "True",
               "activation": "'relu'"},
    "(every family)": {"batch_size": "64", "optimizer": "'adam'", "lr": "0.001",
                       "weight_decay": "0.0", "momentum": "0.0"},
}  # fmt: skip

#: Every data source with each option (a default, "(required)", or "" when it has none).
SOURCE_LISTING = {
    "synthetic": {"kind": "'classification'", "n_samples": "1000", "n_features": "20",
                  "n_classes": "2", "noise": "0.1", "random_state": "0", "n_informative": ""},
    "sklearn": {"name": "'digits'", "images": "False", "augment": ""},
    "csv": {"path": "(required)", "target": "(required)", "drop": "[]", "categorical": "",
            "sep": "','"},
    "npz": {"path": "(required)", "x_key": "'X'", "y_key": "'y'", "classes_key": "'classes'",
            "layout": "'auto'", "augment": ""},
    "images": {"path": "(required)", "size": "32", "color": "'auto'",
               "extensions": "['.png', '.jpg', '.jpeg', '.bmp']", "augment": ""},
    "(every source)": {"val_fraction": "0.25", "test_fraction": "0.0", "seed": "0"},
}  # fmt: skip


def test_models_list_shows_every_family_with_its_hyperparameters() -> None:
    code, out = run("models", "list")
    assert code == 0
    rows = table_rows(out)
    assert set(rows) == set(FAMILY_LISTING)
    for family, expected in FAMILY_LISTING.items():
        _, description, hyperparameters = rows[family]
        assert description, family
        assert listed(hyperparameters) == expected, family
    assert "dropout_layers" in rows["mlp"][1]  # the description says where the Dropout goes


def test_datasets_list_shows_every_source_with_its_options() -> None:
    code, out = run("datasets", "list")
    assert code == 0
    rows = table_rows(out)
    assert set(rows) == set(SOURCE_LISTING)
    for source, expected in SOURCE_LISTING.items():
        _, description, options = rows[source]
        assert description, source
        assert listed(options) == expected, source


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


def test_the_printed_command_is_one_the_user_can_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After `make demo` hpo is .venv/bin/hpo, not on the PATH: the hints say so."""
    import sys

    from hpo.report import hpo_command

    exe = tmp_path / ".venv" / "bin" / "hpo"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(sys, "argv", [str(exe), "study", "start"])
    assert hpo_command() == ".venv/bin/hpo"
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{exe.parent}:/usr/bin:/bin")
    assert hpo_command() == "hpo"
    monkeypatch.setattr(sys, "argv", ["-m"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert hpo_command().endswith(" -m hpo")


class _Exec(Exception):
    """Raised by the stand-in for ``os.execvpe``: the command ``hpo ui`` would become."""


def _ui_command(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, list[str]]:
    import os

    started: list[str] = []

    def execvpe(file: str, cmd: list[str], env: dict[str, str]) -> None:
        started.extend(cmd)
        raise _Exec

    monkeypatch.setattr(os, "execvpe", execvpe)
    result = CliRunner().invoke(main, ["ui", *args])
    assert result.exception is None or isinstance(result.exception, (_Exec, SystemExit))
    return result.exit_code, result.output, started


def test_ui_makes_a_new_sqlite_store_under_its_lock_before_the_server_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study opening a new ``mlflow.db`` makes its tables under ``mlflow.db.lock``; ``hpo ui``
    on the same new store does too, before ``mlflow server`` starts, so that the two never run
    MLflow's migrations at once. Here another process holds the lock for 1.5 s."""
    import sqlite3
    import time

    monkeypatch.chdir(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import fcntl, time; f = open('mlflow.db.lock', 'w'); fcntl.flock(f, fcntl.LOCK_EX);"
            " print('held', flush=True); time.sleep(1.5)",
        ],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    start = time.monotonic()
    _, out, cmd = _ui_command(monkeypatch, "--tracking-uri", "sqlite:///mlflow.db")
    waited = time.monotonic() - start
    holder.wait()
    db = tmp_path / "mlflow.db"
    assert cmd[1:4] == ["-m", "mlflow", "server"], out
    # hpo's store on it (hpo.tracking.server_store), the model registry on MLflow's own.
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"hpo+sqlite:///{db}"
    assert cmd[cmd.index("--registry-store-uri") + 1] == f"sqlite:///{db}"
    assert waited >= 1.0, "the store was opened while another process held its lock"
    tables = {row[0] for row in sqlite3.connect(db).execute("select name from sqlite_master")}
    assert {"experiments", "runs", "alembic_version"} <= tables


def test_ui_on_a_store_it_cannot_open_is_one_line_and_starts_no_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}"
    code, out, cmd = _ui_command(monkeypatch, "--tracking-uri", uri)
    assert code == 2 and cmd == []
    assert out.startswith("error: tracking_uri: opening the tracking store failed on "), out
    assert uri in out and len(out.strip().splitlines()) == 1 and "Traceback" not in out
