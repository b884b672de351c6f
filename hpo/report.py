"""What the CLI prints: study results, trial tables, listings of families and data sources."""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from hpo.storage import mask_url

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from hpo.reproduce import Reproduction
    from hpo.spec import StudySpec
    from hpo.study import StudyResult, StudySummary

# Rich assumes 80 columns when stdout is not a terminal (a log, CI, a pipe), which truncates wide
# tables; such output has no width to respect, so give tables room.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value.is_integer() and abs(value) >= 1e4:
            return f"{int(value):,}"  # counts (parameters, rows) read better whole
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def print_result(result: StudyResult, spec: StudySpec, storage_url: str) -> None:
    """The end of ``hpo study start``: what ran, the best trial, and where to look."""
    from hpo.study import best_trials, finished_count

    study = result.study
    console.print(
        f"study '{study.study_name}': {result.ran} trials run now, "
        f"{finished_count(study)} in total (budget {spec.trials}) in {mask_url(storage_url)}"
    )
    if result.stopped_reason:
        console.print(f"[yellow]{result.stopped_reason}[/yellow]")
    best = best_trials(study)
    if not best:
        console.print("no trial has completed yet")
    else:
        print_best(study)
    if result.comparison is not None and not result.comparison.empty:
        print_comparison(result.comparison, study.study_name)
    if result.chance is not None:
        if result.chance.within_noise:
            console.print(f"[yellow]{result.chance.message()}[/yellow]")
        else:
            console.print(
                f"best val_accuracy {result.chance.best_accuracy:.4f} is above chance "
                f"(95% bound {result.chance.upper_95:.4f} for a majority-class rate of "
                f"{result.chance.majority_rate:.3f})"
            )
    if result.report_error:
        console.print(
            f"[yellow]the study report could not be written: {result.report_error}[/yellow]"
        )
    if result.test_metrics:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(result.test_metrics.items()))
        console.print(f"held-out test split (best trial): {shown}")
    if result.champion_error:
        console.print(
            f"[yellow]the best model could not be registered as the champion: "
            f"{result.champion_error}[/yellow]"
        )
    if result.champion is not None:
        c = result.champion
        console.print(
            f"registered model '{c.name}' version {c.version} (trial {c.trial}) is the champion: "
            f"models:/{c.name}@champion; serve it with: {hpo_command()} serve {c.name}"
        )
    uri = result.tracking_uri
    # MLflow 3's UI opens on its GenAI views unless told this is model training.
    where = (
        f"#/experiments/{result.experiment_id}/runs/{result.parent_run_id}"
        "?workflowType=machine_learning"
    )
    if uri.startswith(("http://", "https://")):
        console.print(f"MLflow: {mask_url(uri).rstrip('/')}/{where}")
    else:
        console.print(f"browse it: {hpo_command()} ui   then open http://127.0.0.1:5000/{where}")
    if not result.report_error:
        console.print("the parent run holds the study report: study_report/report.html")


def best_payload(study: optuna.Study) -> dict[str, Any]:
    """The best trial(s) as plain data (for ``--json``); ``objectives`` maps each objective's
    name to the trial's value."""
    from hpo.study import best_trials
    from hpo.study_report import study_metric_names

    names = study_metric_names(study)

    def one(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return {
            "number": t.number,
            "values": t.values,
            "value": t.values[0] if t.values and len(t.values) == 1 else None,
            "objectives": dict(zip(names, t.values or [], strict=False)),
            "params": t.params,
            "metrics": {
                k: v for k, v in t.user_attrs.items() if k.startswith(("val_", "n_params"))
            },
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
            "model_uri": t.user_attrs.get("model_uri"),
        }

    trials = best_trials(study)
    payload: dict[str, Any] = {
        "study": study.study_name,
        "metrics": names,
        "directions": [d.name.lower() for d in study.directions],
        "n_trials": len(study.trials),
    }
    if len(study.directions) > 1:
        payload["pareto_front"] = [one(t) for t in trials]
    else:
        payload["best_trial"] = one(trials[0]) if trials else None
    return payload


def print_best(study: optuna.Study) -> None:
    """The best trial's value, parameters and run id (each trial of the Pareto front if multi-objective).

    One trial per block, a parameter per line: a study may search a dozen parameters, which no
    terminal fits side by side.
    """
    from hpo.study import best_trials
    from hpo.study_report import study_metric_names

    trials = best_trials(study)
    if not trials:
        console.print(f"study '{study.study_name}' has no completed trial yet")
        return
    names = study_metric_names(study)
    multi = len(study.directions) > 1
    if multi:
        console.print(
            f"Pareto front of '{study.study_name}' ({', '.join(names)}): {len(trials)} trials"
        )
    for t in trials:
        values = ", ".join(
            f"{name} {_fmt(v)}" for name, v in zip(names, t.values or [], strict=False)
        )
        table = Table(
            title=f"{'Pareto-optimal' if multi else 'best'} trial {t.number}: {values}",
            title_justify="left",
            show_header=False,
        )
        table.add_column("name", style="bold")
        table.add_column("value")
        for name in sorted(t.params):
            table.add_row(name, _fmt(t.params[name]))
        for key in ("val_accuracy", "val_f1", "val_roc_auc", "val_loss", "n_params"):
            if key in t.user_attrs:
                table.add_row(key, _fmt(t.user_attrs[key]))
        table.add_row("mlflow run", str(t.user_attrs.get("mlflow_run_id", "")))
        console.print(table)


def print_trials(study: optuna.Study, limit: int = 50) -> None:
    """A table of the study's trials (the last ``limit``, 0 for all)."""
    from hpo.study import last_trials

    shown, total = last_trials(study, limit)
    params = sorted({p for t in shown for p in t.params})
    table = Table(title=f"{study.study_name}: {total} trials", title_justify="left")
    for col in ("#", "state", "value", *params, "seconds"):
        table.add_column(col, justify="right" if col in ("#", "value", "seconds") else "left")
    for t in shown:
        seconds = t.duration.total_seconds() if t.duration else None
        table.add_row(
            str(t.number),
            t.state.name.lower(),
            _fmt(t.values if t.values and len(t.values) > 1 else t.value),
            *[_fmt(t.params.get(p)) for p in params],
            _fmt(seconds),
        )
    console.print(table)
    if limit and total > limit:
        console.print(f"(showing the last {limit}; --limit 0 shows all)")


def print_study_list(studies: list[StudySummary], storage_url: str) -> None:
    """``hpo study list``."""
    if not studies:
        console.print(f"no studies in {mask_url(storage_url)}")
        return
    table = Table(title=f"studies in {mask_url(storage_url)}", title_justify="left")
    for col in ("name", "trials", "direction", "best", "created"):
        table.add_column(col)
    for s in studies:
        table.add_row(
            s.name, str(s.n_trials), ", ".join(s.directions), _fmt(s.best_value), s.created
        )
    console.print(table)


def _fields_text(model: Any) -> str:
    parts = []
    for name, info in model.model_fields.items():
        if info.is_required():
            parts.append(f"{name} (required)")
            continue
        default = info.get_default(call_default_factory=True)
        parts.append(f"{name}={default!r}" if default is not None else name)
    return ", ".join(parts)


def print_models() -> None:
    """``hpo models list``: each family with its hyperparameters and defaults."""
    from hpo.models import FAMILIES
    from hpo.training.config import TrainParams

    table = Table(title="model families", title_justify="left")
    table.add_column("family")
    table.add_column("description")
    table.add_column("hyperparameters (default)")
    for name in FAMILIES.names():
        fam = FAMILIES.get(name)
        table.add_row(name, fam.description, _fields_text(fam.Params))
    table.add_row("(every family)", "training", _fields_text(TrainParams))
    console.print(table)


def print_datasets() -> None:
    """``hpo datasets list``: each data source with its options."""
    from hpo.data import SOURCES

    table = Table(title="data sources", title_justify="left")
    table.add_column("source")
    table.add_column("description")
    table.add_column("options (default)")
    for name in SOURCES.names():
        src = SOURCES.get(name)
        table.add_row(name, src.description, _fields_text(src.Options))
    table.add_row("(every source)", "split", "val_fraction=0.25, test_fraction=0.0, seed=0")
    console.print(table)


def print_comparison(frame: pd.DataFrame, study_name: str) -> None:
    """The per-family table of an architecture study."""
    table = Table(title=f"{study_name}: model families (best trial of each)", title_justify="left")
    for col in frame.columns:
        table.add_column(col, justify="left" if col == "family" else "right")
    for row in frame.itertuples(index=False):
        table.add_row(*[_fmt(None if _missing(v) else v) for v in row])
    console.print(table)


def _missing(value: Any) -> bool:
    try:
        return bool(value is None or value != value)  # NaN and pandas' NA
    except TypeError:
        return True


def print_reproduction(rep: Reproduction) -> None:
    """``hpo trial reproduce``: each metric as stored and as retrained, and their difference."""
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in rep.params.items())
    console.print(
        f"[bold]study '{rep.study}', trial {rep.number}[/] ({rep.family} on {rep.device}): {params}"
    )
    table = Table("metric", "original", "reproduced", "difference")
    for name, (old, new) in rep.metrics.items():
        diff = "" if old is None else f"{new - old:+.2g}"
        table.add_row(name, _fmt(old) if old is not None else "not kept", _fmt(new), diff)
    console.print(table)
    gap = rep.max_abs_difference()
    verdict = (
        "reproduced exactly"
        if gap == 0
        else f"reproduced within {gap:.2g}"
        if gap < 1e-3
        else f"differs by {gap:.3g} (another machine, thread count or library version?)"
    )
    console.print(verdict)


def hpo_command() -> str:
    """How to run hpo again from this shell: ``hpo`` if that is this program on the PATH, else
    the path of this executable (``.venv/bin/hpo`` after ``make demo``), else ``python -m hpo``."""
    import os
    import shlex
    import shutil

    argv0 = sys.argv[0] if sys.argv else ""
    on_path = shutil.which("hpo")
    if os.path.basename(argv0) in ("hpo", "hpo.exe") and os.path.isfile(argv0):
        if on_path and os.path.samefile(on_path, argv0):
            return "hpo"
        path = os.path.abspath(argv0)
        relative = os.path.relpath(path)
        if relative.startswith(".."):
            return shlex.quote(path)
        return shlex.quote(relative if os.sep in relative else f".{os.sep}{relative}")
    return "hpo" if on_path else f"{shlex.quote(sys.executable)} -m hpo"
