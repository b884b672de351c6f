"""The ``hpo`` command line: thin commands that parse, call the library, and print.

Heavy modules (torch, optuna, mlflow, pandas) are imported inside the commands that need them so
that ``hpo --help`` answers at once. Any :class:`~hpo.errors.HpoError` is printed as one line on
stderr with exit code 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hpo import __version__
from hpo.errors import HpoError

if TYPE_CHECKING:
    import optuna

STORAGE_HELP = (
    "Optuna storage URL (default: $HPO_STORAGE, the file's 'storage:', or sqlite:///hpo.db)."
)
TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, the file's 'tracking_uri:', or sqlite:///mlflow.db)."


def _quiet_libraries() -> None:
    # Keep the terminal for our own output: MLflow's "View run" lines and git probe warnings, and
    # library deprecation chatter, tell the user nothing actionable.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow sets its loggers' level from this when it is imported, overriding setLevel calls
    # made before; its INFO lines ("Creating initial MLflow database tables...") are noise here.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
    warnings.filterwarnings("ignore", message=".*ExperimentalWarning.*")
    import logging

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)


class HpoGroup(click.Group):
    """A group that renders user errors as one line and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HpoError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(
                "interrupted: finished trials are saved; run the same command to resume", err=True
            )
            sys.exit(130)


@click.group(cls=HpoGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(__version__, prog_name="hpo")
def main(debug: bool) -> None:
    """Hyperparameter optimization for PyTorch classifiers: a YAML study file in, a tuned,
    logged, comparable model out."""
    if not debug:
        _quiet_libraries()


def run() -> None:
    """The ``hpo`` console script (and ``python -m hpo``): :func:`main`, then an exit without
    the interpreter's teardown of torch, MLflow and the rest (:func:`hpo.quick_exit.exit_now`:
    about 2 s, which a study's end otherwise waits for in every worker and sender)."""
    try:
        main()
    except SystemExit as exc:  # click always ends with one
        from hpo.quick_exit import exit_now

        exit_now(exc.code)


# -- study -------------------------------------------------------------------------------------
@main.group(cls=HpoGroup)
def study() -> None:
    """Run and inspect studies."""


def _tracking_uri(cli: str | None, spec_value: str | None) -> str:
    from hpo.tracking.runs import default_tracking_uri

    return cli or os.environ.get("MLFLOW_TRACKING_URI") or spec_value or default_tracking_uri()


def _heartbeat_options(command: Any) -> Any:
    """``--heartbeat-interval``, ``--heartbeat-grace``, ``--max-retries`` (override the file)."""
    for option in reversed(
        [
            click.option(
                "--heartbeat-interval",
                type=click.IntRange(min=1),
                help="Seconds between a running trial's heartbeats (file: heartbeat.interval).",
            ),
            click.option(
                "--heartbeat-grace",
                type=click.IntRange(min=2),
                help="Seconds without a heartbeat before a trial is failed and re-run "
                "(file: heartbeat.grace).",
            ),
            click.option(
                "--max-retries",
                type=click.IntRange(min=0),
                help="Re-runs of a trial whose worker died (file: heartbeat.max_retries).",
            ),
        ]
    ):
        command = option(command)
    return command


def _with_heartbeat(spec: Any, interval: int | None, grace: int | None, retries: int | None) -> Any:
    from pydantic import ValidationError

    from hpo.spec import HeartbeatSpec

    values = spec.heartbeat.model_dump()
    for key, value in (("interval", interval), ("grace", grace), ("max_retries", retries)):
        if value is not None:
            values[key] = value
    try:
        heartbeat = HeartbeatSpec(**values)
    except ValidationError as exc:
        raise click.UsageError(f"heartbeat: {exc.errors()[0]['msg']}") from None
    return spec.model_copy(update={"heartbeat": heartbeat})


def _heartbeat_args(interval: int | None, grace: int | None, retries: int | None) -> list[str]:
    out: list[str] = []
    for flag, value in (
        ("--heartbeat-interval", interval),
        ("--heartbeat-grace", grace),
        ("--max-retries", retries),
    ):
        if value is not None:
            out += [flag, str(value)]
    return out


@study.command("start")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--n-trials",
    type=click.IntRange(min=1),
    help="Run this many more trials (default: what is left of the file's 'trials').",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop starting trials after this many seconds.",
)
@click.option("--storage", help=STORAGE_HELP)
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option("--study-name", help="Use this study name instead of the file's 'name'.")
@click.option("--force", is_flag=True, help="Continue a study whose spec has changed.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display (for logs and CI).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run the trials in this many local worker processes (they share the budget).",
)
@_heartbeat_options
def study_start(
    file: Path,
    n_trials: int | None,
    timeout: float | None,
    storage: str | None,
    tracking_uri: str | None,
    study_name: str | None,
    force: bool,
    quiet: bool,
    workers: int,
    heartbeat_interval: int | None,
    heartbeat_grace: int | None,
    max_retries: int | None,
) -> None:
    """Run (or resume) the study that FILE describes."""
    from hpo.spec import load_spec
    from hpo.storage import resolve_storage_url
    from hpo.study import run_study

    spec = load_spec(file)
    if study_name:
        spec = spec.model_copy(update={"name": study_name})
    spec = _with_heartbeat(spec, heartbeat_interval, heartbeat_grace, max_retries)
    storage_url = resolve_storage_url(storage, spec.storage)
    uri = _tracking_uri(tracking_uri, spec.tracking_uri)
    from hpo.progress import StudyProgress

    if workers > 1:
        if n_trials is not None:
            raise click.UsageError(
                "--n-trials runs more trials in one process; with --workers, raise the file's "
                "'trials' (the budget all workers share) instead"
            )
        from hpo.report import print_result
        from hpo.study import run_local_workers

        beat = _heartbeat_args(heartbeat_interval, heartbeat_grace, max_retries)
        with StudyProgress(spec, enabled=not quiet) as progress:
            result = run_local_workers(
                spec,
                file,
                workers,
                storage_url=storage_url,
                tracking_uri=uri,
                timeout=timeout,
                force=force,
                extra_args=beat,
                on_start=progress.start,
                on_poll=progress.update,
            )
        print_result(result, spec, storage_url)
        return
    with StudyProgress(spec, enabled=not quiet) as progress:
        result = run_study(
            spec,
            source=str(file),
            storage_url=storage_url,
            tracking_uri=uri,
            n_trials=n_trials,
            timeout=timeout,
            force=force,
            callbacks=[progress.on_trial],
            on_start=progress.start,
        )
    from hpo.report import print_result

    print_result(result, spec, storage_url)


@main.command("worker")
@click.argument("file", type=click.Path(path_type=Path), required=False)
@click.option(
    "--study",
    "--study-name",
    "study_name",
    help="Join this study (with --storage); with FILE, use this name instead of the file's.",
)
@click.option("--storage", help=STORAGE_HELP)
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop starting trials after this many seconds.",
)
@click.option("--force", is_flag=True, help="Continue a study whose spec has changed.")
@click.option("--quiet", "-q", is_flag=True, help="Print only errors.")
@click.option(
    "--local-workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="How many worker processes share this machine's cores: each takes its share of them "
    "for torch (oversubscribed cores slow training many times over).",
)
@_heartbeat_options
def worker(
    file: Path | None,
    study_name: str | None,
    storage: str | None,
    tracking_uri: str | None,
    timeout: float | None,
    force: bool,
    quiet: bool,
    local_workers: int,
    heartbeat_interval: int | None,
    heartbeat_grace: int | None,
    max_retries: int | None,
) -> None:
    """Join a study and run its trials until its total budget is met (across all workers).

    Start as many as you like, on any machine that reaches the storage and the tracking server:
    with FILE (the study is created if it does not exist yet), or with --study NAME --storage URL
    (the study file it was started with is kept in the storage).
    """
    from hpo.spec import load_spec
    from hpo.storage import resolve_storage_url
    from hpo.study import TRACKING_URI_ATTR, load_study, run_study, stored_spec

    source: str
    if file is not None:
        spec = load_spec(file)
        if study_name:
            spec = spec.model_copy(update={"name": study_name})
        source = str(file)
        storage_url = resolve_storage_url(storage, spec.storage)
        known_uri = spec.tracking_uri
    elif study_name:
        storage_url = resolve_storage_url(storage)
        existing = load_study(study_name, storage_url)
        spec = stored_spec(existing)
        source = f"study '{study_name}'"
        known_uri = existing.user_attrs.get(TRACKING_URI_ATTR) or spec.tracking_uri
        if known_uri and "***" in known_uri:
            # Stored with its password masked: the worker must be given the real one.
            if not (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
                raise click.UsageError(
                    f"study '{study_name}' logs to {known_uri}, whose password is not stored; "
                    "give the tracking URI with --tracking-uri or $MLFLOW_TRACKING_URI"
                )
            known_uri = None
    else:
        raise click.UsageError("give a study FILE, or --study NAME (and --storage URL)")
    spec = _with_heartbeat(spec, heartbeat_interval, heartbeat_grace, max_retries)
    result = run_study(
        spec,
        source=source,
        storage_url=storage_url,
        tracking_uri=_tracking_uri(tracking_uri, known_uri),
        timeout=timeout,
        force=force,
        local_workers=local_workers,
    )
    if not quiet:
        from hpo.study import finished_count

        click.echo(
            f"worker {os.getpid()}: ran {result.ran} trials; study '{spec.name}' has "
            f"{finished_count(result.study)} of {spec.trials}"
            + (f" ({result.stopped_reason})" if result.stopped_reason else "")
        )
    elif result.stopped_reason and result.ran:
        click.echo(f"worker {os.getpid()}: {result.stopped_reason}", err=True)


@main.command("sync")
@click.argument("name")
@click.option("--storage", help=STORAGE_HELP)
@click.option("--tracking-uri", help=TRACKING_HELP)
def sync(name: str, storage: str | None, tracking_uri: str | None) -> None:
    """Send the runs of study NAME's trials that wait in this machine's spool.

    A trial's run is written to the spool ($HPO_SPOOL_DIR, else ./.hpo-spool) before it is sent
    to the tracking store; runs that could not be sent (the store was away longer than a worker
    waited, or the worker was stopped) wait there. Workers send them when they start; this sends
    them now, then registers the study's best model.
    """
    from hpo.errors import TrackingError
    from hpo.storage import mask_url
    from hpo.study import load_study, promote_champion, stored_spec
    from hpo.tracking.finisher import sync_spool
    from hpo.tracking.runs import StudyTracker
    from hpo.tracking.spool import list_jobs, study_spool

    jobs = list_jobs(name)
    if not jobs:
        click.echo(f"nothing to send: no runs of study '{name}' wait in {study_spool(name)}")
        return
    st = None
    try:
        st = load_study(name, _storage(storage))
    except HpoError as exc:
        click.echo(f"note: {exc}; sending the runs without the study", err=True)
    tracker = (_parent_tracker(st, tracking_uri) if st is not None else None) or StudyTracker(
        _tracking_uri(tracking_uri, None), name
    )
    sent = sync_spool(name, tracker)
    ok = [s for s in sent if s.ok]
    click.echo(
        f"sent {len(ok)} of {len(jobs)} trial runs of study '{name}' to "
        f"{mask_url(tracker.tracking_uri)}"
    )
    if st is not None and ok:
        with contextlib.suppress(TrackingError):
            champion = promote_champion(st, stored_spec(st), tracker)
            if champion is not None:
                click.echo(f"trial {champion.trial} is the champion: models:/{name}@champion")
    failed = [s for s in sent if not s.ok]
    if failed or len(sent) < len(jobs):
        first = failed[0] if failed else None
        why = f" (trial {first.trial}: {first.error})" if first and first.error else ""
        raise HpoError(
            f"{len(jobs) - len(ok)} trial runs were not sent{why}; they stay in {study_spool(name)}"
        )


def _storage(storage: str | None) -> str:
    from hpo.storage import resolve_storage_url

    return resolve_storage_url(storage)


@study.command("list")
@click.option("--storage", help=STORAGE_HELP)
def study_list(storage: str | None) -> None:
    """List the studies in the storage."""
    from hpo.report import print_study_list
    from hpo.study import list_studies

    url = _storage(storage)
    print_study_list(list_studies(url), url)


@study.command("show")
@click.argument("name")
@click.option("--storage", help=STORAGE_HELP)
@click.option(
    "--limit", type=int, default=50, show_default=True, help="Show the last N trials (0: all)."
)
def study_show(name: str, storage: str | None, limit: int) -> None:
    """Show a study's trials as a table."""
    from hpo.report import print_trials
    from hpo.study import load_study

    print_trials(load_study(name, _storage(storage)), limit)


@study.command("best")
@click.argument("name")
@click.option("--storage", help=STORAGE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def study_best(name: str, storage: str | None, as_json: bool) -> None:
    """Show the best trial (the Pareto front for multi-objective studies)."""
    from hpo.report import best_payload, print_best
    from hpo.study import load_study

    st = load_study(name, _storage(storage))
    if as_json:
        click.echo(json.dumps(best_payload(st), indent=2, default=str))
    else:
        print_best(st)


def _parent_tracker(st: optuna.Study, tracking_uri: str | None) -> Any:
    """A tracker on the study's parent run, or None if the study has none yet."""
    from hpo.study import PARENT_RUN_ATTR, TRACKING_URI_ATTR
    from hpo.tracking.runs import StudyTracker

    parent = st.user_attrs.get(PARENT_RUN_ATTR)
    if not parent:
        return None
    # The study remembers where it logged (unless the URI held a password, which is never stored).
    stored = st.user_attrs.get(TRACKING_URI_ATTR)
    known = stored if stored and "***" not in stored else None
    tracker = StudyTracker(_tracking_uri(tracking_uri, known), st.study_name)
    tracker.parent_run_id = parent
    return tracker


@study.command("compare")
@click.argument("name")
@click.option("--storage", help=STORAGE_HELP)
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option("--no-log", is_flag=True, help="Only print; do not log the table to the parent run.")
def study_compare(name: str, storage: str | None, tracking_uri: str | None, no_log: bool) -> None:
    """Compare the model families a study tried (best trial of each)."""
    from hpo.compare import family_table
    from hpo.report import print_comparison
    from hpo.study import load_study, log_family_comparison

    st = load_study(name, _storage(storage))
    frame = family_table(st)
    if frame.empty:
        raise HpoError(f"study '{name}' has no trial with a model family to compare")
    print_comparison(frame, name)
    tracker = None if no_log else _parent_tracker(st, tracking_uri)
    if tracker is not None:
        log_family_comparison(st, tracker)
        click.echo(
            f"logged family_comparison.csv and .html to the parent run {tracker.parent_run_id}"
        )


@study.command("report")
@click.argument("name")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Directory to write (default: ./NAME-report).",
)
@click.option("--storage", help=STORAGE_HELP)
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option(
    "--no-log", is_flag=True, help="Only write the files; do not log them to the parent run."
)
def study_report(
    name: str, output: Path | None, storage: str | None, tracking_uri: str | None, no_log: bool
) -> None:
    """Write the study's self-contained HTML report and plots (and log them to its parent run)."""
    from hpo.insights import log_chance_check
    from hpo.study import load_study, stored_chance_check
    from hpo.study_report import (
        fetch_best_run_plots,
        log_study_report,
        study_metric_names,
        write_study_report,
    )

    st = load_study(name, _storage(storage))
    out = output or Path(f"{name}-report")
    tracker = _parent_tracker(st, tracking_uri)
    plots = fetch_best_run_plots(st, tracker) if tracker else {}
    # The chance verdict, as at the study's end: the report logged here replaces that one.
    try:
        chance = stored_chance_check(st)
    except HpoError as exc:
        chance = None
        click.echo(f"skipped the chance check: {exc}")
    if chance is not None:
        click.echo(chance.message())
    try:
        report = write_study_report(
            st, out, metric_names=study_metric_names(st), best_run_plots=plots, chance=chance
        )
    except OSError as exc:
        raise HpoError(f"--output: cannot write '{out}': {exc.strerror}") from None
    for what, why in report.skipped.items():
        click.echo(f"skipped {what}: {why}")
    click.echo(f"wrote {report.html_path} ({len(report.files)} files)")
    if tracker and not no_log:
        log_study_report(report, tracker)
        if chance is not None:
            log_chance_check(chance, tracker)
        click.echo(f"logged them to the parent run {tracker.parent_run_id} under study_report/")


@study.command("export")
@click.argument("name")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="CSV file to write."
)
@click.option("--storage", help=STORAGE_HELP)
def study_export(name: str, output: Path, storage: str | None) -> None:
    """Export a study's trials to CSV."""
    from hpo.study import load_study, trials_frame

    frame = trials_frame(load_study(name, _storage(storage)))
    try:
        frame.to_csv(output, index=False)
    except OSError as exc:
        raise HpoError(f"--output: cannot write '{output}': {exc.strerror}") from None
    click.echo(f"wrote {len(frame)} trials to {output}")


@study.command("delete")
@click.argument("name")
@click.option("--storage", help=STORAGE_HELP)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def study_delete(name: str, storage: str | None, yes: bool) -> None:
    """Delete a study and its trials from the storage (MLflow runs are kept)."""
    from hpo.study import delete_study, load_study

    url = _storage(storage)
    st: optuna.Study = load_study(name, url)
    if not yes:
        click.confirm(f"Delete study '{name}' and its {len(st.trials)} trials?", abort=True)
    delete_study(name, url)
    click.echo(f"deleted study '{name}'")


# -- trial -------------------------------------------------------------------------------------
@main.group(cls=HpoGroup)
def trial() -> None:
    """Work with one trial of a study."""


@trial.command("reproduce")
@click.argument("name")
@click.argument("number", type=int)
@click.option("--storage", help=STORAGE_HELP)
@click.option("--device", help="Train on this device instead of the study file's (cpu, cuda …).")
def trial_reproduce(name: str, number: int, storage: str | None, device: str | None) -> None:
    """Retrain a trial from its stored parameters and seed; show its metrics beside the original."""
    from hpo.report import print_reproduction
    from hpo.reproduce import reproduce_trial

    print_reproduction(reproduce_trial(name, number, _storage(storage), device=device))


# -- spec --------------------------------------------------------------------------------------
@main.group(cls=HpoGroup)
def spec() -> None:
    """Check study files."""


@spec.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def spec_validate(files: tuple[Path, ...]) -> None:
    """Check one or more study files; exit 2 at the first invalid one."""
    from hpo.spec import load_spec

    for file in files:
        s = load_spec(file)
        searched = ", ".join(s.search) or "nothing"
        click.echo(f"{file}: ok — study '{s.name}', {s.trials} trials, searching {searched}")


@spec.command("schema")
def spec_schema() -> None:
    """Print the JSON Schema of a study file (for editor completion)."""
    from hpo.spec import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


# -- listings ----------------------------------------------------------------------------------
@main.group(cls=HpoGroup)
def models() -> None:
    """Model families."""


@models.command("list")
def models_list() -> None:
    """List model families and their hyperparameters."""
    from hpo.report import print_models

    print_models()


@main.group(cls=HpoGroup)
def datasets() -> None:
    """Data sources."""


@datasets.command("list")
def datasets_list() -> None:
    """List data sources and their options."""
    from hpo.report import print_datasets

    print_datasets()


# -- serve -------------------------------------------------------------------------------------
@main.command("serve")
@click.argument("name")
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option("--alias", default="champion", show_default=True, help="Registry alias to serve.")
@click.option("--version", "version", help="Serve this registered version instead of the alias.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5001, show_default=True, type=int)
def serve(
    name: str, tracking_uri: str | None, alias: str, version: str | None, host: str, port: int
) -> None:
    """Serve a study's best model (models:/NAME@champion) over REST, on raw rows."""
    from hpo.serving.app import load_served_model
    from hpo.serving.app import serve as run_server

    served = load_served_model(
        name, _tracking_uri(tracking_uri, None), alias=alias, version=version
    )
    info = served.info
    lineage = info["lineage"]
    value = lineage.get("hpo.value", "?")
    click.echo(
        f"serving '{name}' version {info['version']} (trial {lineage.get('hpo.trial', '?')}, "
        f"{lineage.get('hpo.metric', 'value')} {value}) on http://{host}:{port}: "
        "POST /invocations, GET /metadata; Ctrl-C stops it"
    )
    run_server(served, host, port)


# -- ui ----------------------------------------------------------------------------------------
@main.command("ui")
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
def ui(tracking_uri: str | None, host: str, port: int) -> None:
    """Serve the MLflow UI on the study store."""
    from hpo.tracking.runs import default_tracking_uri

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        raise HpoError(f"--tracking-uri: {uri} is already a tracking server: open it in a browser")
    from hpo.storage import sqlite_lock_file
    from hpo.tracking.runs import absolute_store_uri, open_client
    from hpo.tracking.server import SERVER_OPTIONS, server_env, store_options

    uri = absolute_store_uri(uri)
    if sqlite_lock_file(uri) is not None:
        # Made (or migrated) here, under the lock a study takes to do it: a server creating a
        # new store while a study does would race it ("table runs already exists").
        open_client(uri)
    env = server_env(os.environ)
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        *store_options(uri),
        "--host", host, "--port", str(port),
        *SERVER_OPTIONS,
    ]  # fmt: skip
    click.echo(f"MLflow UI on http://{host}:{port} (store: {uri}); Ctrl-C stops it")
    os.execvpe(cmd[0], cmd, env)
