"""Create, load, run and inspect studies.

Everything that can fail because of the user's input (data, device, storage, tracking server) is
checked *before* the study or any run is created, so a mistake never leaves half a study behind.
The spec's identity hash and the parent MLflow run id live in the study's user attributes: every
process that runs the study nests its trial runs under that one parent, and a study file whose
search space or data changed is refused instead of silently mixing incomparable trials.

Any number of processes may start the same study at the same moment: creating the study, its
attributes and its parent run happens under :func:`hpo.storage.study_lock`, so exactly one of
them creates and the others load. How the trials are shared out is :mod:`hpo.worker`'s job.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hpo.errors import DataError, DeviceError, SpecError, StorageError, TrackingError
from hpo.registry import did_you_mean
from hpo.spec import (
    HeartbeatSpec,
    StudySpec,
    data_options,
    diff_identity,
    parse_spec,
    spec_base_dir,
    study_families,
)
from hpo.storage import (
    check_storage_url,
    mask_url,
    open_storage,
    rdb_backend,
    study_lock,
    supports_heartbeat,
)

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    import torch
    from optuna.storages import BaseStorage

    from hpo.data.base import Dataset
    from hpo.insights import ChanceCheck
    from hpo.tracking.champion import Champion
    from hpo.tracking.runs import StudyTracker
    from hpo.trial_rows import TrialRows

SPEC_HASH_ATTR = "hpo.spec_hash"
SPEC_ATTR = "hpo.spec"
#: The whole study file (as JSON) and its directory: what ``hpo worker --study NAME`` runs.
SPEC_FILE_ATTR = "hpo.spec_file"
SPEC_DIR_ATTR = "hpo.spec_dir"
PARENT_RUN_ATTR = "mlflow_parent_run_id"
#: Study attribute: why the last attempt to register the champion failed (set by
#: :func:`promote_champion`).
CHAMPION_ERROR_ATTR = "hpo.champion_error"
TRACKING_URI_ATTR = "mlflow_tracking_uri"
#: A study stops after this many trials in a row fail (not pruned): something is systematically
#: wrong, and burning the remaining budget on it helps no one.
MAX_CONSECUTIVE_FAILURES = 3

TrialCallback = Callable[["optuna.Study", "optuna.trial.FrozenTrial"], None]


@dataclass
class StudyResult:
    """What :func:`run_study` did."""

    study: optuna.Study
    ran: int
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    stopped_reason: str | None = None
    test_metrics: dict[str, float] = field(default_factory=dict)
    #: Per-family comparison (studies that search ``family``), else None.
    comparison: pd.DataFrame | None = None
    #: Best validation accuracy against chance (None when no trial recorded one).
    chance: ChanceCheck | None = None
    #: Why the study report could not be written (the trials are safe either way).
    report_error: str | None = None
    #: The registered best model (``models:/<study>@champion``), if any.
    champion: Champion | None = None
    #: Why the best model could not be registered as the champion (the trials are safe).
    champion_error: str | None = None


# -- samplers and pruners ----------------------------------------------------------------------
def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """The Optuna sampler the spec names, seeded."""
    import optuna.samplers as s

    from hpo.space import grid_search_space

    cfg = spec.sampler

    def startup(default: int) -> int:
        # Optuna's own default per sampler unless the file sets it.
        return default if cfg.n_startup_trials is None else cfg.n_startup_trials

    if cfg.name == "tpe":
        # multivariate TPE models interactions (lr × batch size); constant_liar keeps parallel
        # workers from proposing the same point.
        return s.TPESampler(
            seed=cfg.seed, multivariate=True, constant_liar=True, n_startup_trials=startup(10)
        )
    if cfg.name == "random":
        return s.RandomSampler(seed=cfg.seed)
    if cfg.name == "grid":
        return s.GridSampler(grid_search_space(spec.search), seed=cfg.seed)
    if cfg.name == "cmaes":
        return s.CmaEsSampler(
            seed=cfg.seed, warn_independent_sampling=False, n_startup_trials=startup(1)
        )
    if cfg.name == "gp":
        return s.GPSampler(
            seed=cfg.seed, warn_independent_sampling=False, n_startup_trials=startup(10)
        )
    return s.NSGAIISampler(seed=cfg.seed, population_size=cfg.population_size or 50)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The Optuna pruner the spec names; epochs are its steps."""
    import optuna.pruners as p

    cfg = spec.pruner_spec
    if cfg.name == "median":
        from hpo.pruning import cached

        return cached(
            p.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=cfg.warmup_epochs)
        )
    if cfg.name == "successive_halving":
        return p.SuccessiveHalvingPruner(
            min_resource=cfg.min_epochs, reduction_factor=cfg.reduction_factor
        )
    if cfg.name == "hyperband":
        return p.HyperbandPruner(
            min_resource=cfg.min_epochs,
            max_resource=spec.train.epochs,
            reduction_factor=cfg.reduction_factor,
        )
    return p.NopPruner()


# -- opening studies ---------------------------------------------------------------------------
def _quiet_optuna() -> None:
    import optuna

    # Our progress display replaces Optuna's per-trial INFO lines.
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def load_study(name: str, storage_url: str) -> optuna.Study:
    """Load an existing study by name; an unknown name lists the known ones."""
    import optuna

    _quiet_optuna()
    storage = open_storage(storage_url)
    # Names only: study summaries read every trial of every study (55 % of `hpo study show` on a
    # 10,000-trial study, measured by benchmarks/cli_speed.py).
    names = optuna.get_all_study_names(storage)
    if name not in names:
        hint = did_you_mean(name, names)
        known = ", ".join(sorted(names)) or "none"
        raise StorageError(
            f"study '{name}' not found in {mask_url(storage_url)}{hint}; known studies: {known}"
        )
    return optuna.load_study(study_name=name, storage=storage)


def open_study(
    spec: StudySpec,
    storage_url: str,
    *,
    source: str,
    force: bool = False,
    storage: BaseStorage | None = None,
) -> optuna.Study:
    """Create the study, or load it and check that the spec has not drifted.

    Not race-free on its own: :func:`start_session` calls it under the study lock.
    """
    import optuna

    _quiet_optuna()
    storage = storage or open_storage(storage_url)
    study = optuna.create_study(
        storage=storage,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        study_name=spec.name,
        directions=spec.objective_directions,
        load_if_exists=True,
    )
    identity = spec.identity()
    attrs = study.user_attrs
    if SPEC_HASH_ATTR not in attrs:
        study.set_user_attr(SPEC_HASH_ATTR, spec.identity_hash())
        study.set_user_attr(SPEC_ATTR, identity)
        for params in spec.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
    elif attrs[SPEC_HASH_ATTR] != spec.identity_hash():
        changes = diff_identity(attrs.get(SPEC_ATTR, {}), identity)
        if not force:
            shown = "; ".join(changes[:5]) + (
                f"; and {len(changes) - 5} more" if len(changes) > 5 else ""
            )
            raise SpecError(
                f"{source}: study '{spec.name}' in {mask_url(storage_url)} was created from a "
                f"different spec ({shown}); its trials would not be comparable. Use a new 'name', "
                "or --force to continue anyway"
            )
        study.set_user_attr(SPEC_HASH_ATTR, spec.identity_hash())
        study.set_user_attr(SPEC_ATTR, identity)
    if [d.name.lower() for d in study.directions] != spec.objective_directions:
        raise SpecError(
            f"{source}: study '{spec.name}' optimises {[d.name.lower() for d in study.directions]}, "
            f"the file says {spec.objective_directions}"
        )
    # The current file, for workers started with --study NAME (budget and timeout may change).
    dump = spec_json(spec)
    if attrs.get(SPEC_FILE_ATTR) != dump:
        study.set_user_attr(SPEC_FILE_ATTR, dump)
        base = spec_base_dir(spec)
        study.set_user_attr(SPEC_DIR_ATTR, str(base.absolute()) if base else None)
    return study


def spec_json(spec: StudySpec) -> str:
    """The study file as JSON to store with the study, passwords in its URLs masked.

    ``storage:`` and ``tracking_uri:`` may hold passwords; the storage is read by everyone who can
    read the study (optuna-dashboard, ``hpo study export``), so they are kept as ``***``. A worker
    that joins with ``--study NAME`` is given its URLs again (``--storage``, ``--tracking-uri``
    or their variables).
    """
    dump = spec.model_dump(mode="json")
    for key in ("storage", "tracking_uri"):
        if dump.get(key):
            dump[key] = mask_url(dump[key])
    return json.dumps(dump, sort_keys=True)


def stored_spec(study: optuna.Study) -> StudySpec:
    """The study file a study was last started with (for ``hpo worker --study NAME``)."""
    text = study.user_attrs.get(SPEC_FILE_ATTR)
    if not text:
        raise SpecError(
            f"study '{study.study_name}' holds no study file (it was not created by this "
            "version of hpo); start the worker with the study FILE instead"
        )
    base = study.user_attrs.get(SPEC_DIR_ATTR)
    return parse_spec(
        text, source=f"study '{study.study_name}'", base_dir=Path(base) if base else None
    )


def finished_count(study: optuna.Study) -> int:
    """Finished trials that count against the budget: complete, pruned, and failed unless
    re-queued as a retry or replaced by a recovered result (see :mod:`hpo.worker`)."""
    from hpo.worker import budget_usage

    used, running = budget_usage(study)
    return used - running


@dataclass
class Session:
    """An open study and its MLflow side, ready to run trials in this process."""

    study: optuna.Study
    tracker: StudyTracker
    parent_run_id: str
    #: The heartbeat in force (None: the storage has none, e.g. journal).
    heartbeat: HeartbeatSpec | None


def start_session(
    spec: StudySpec,
    *,
    source: str,
    storage_url: str,
    tracking_uri: str,
    force: bool = False,
) -> Session:
    """Open (or create, once) the study and its parent run, race-free across processes.

    Under :func:`hpo.storage.study_lock`, the tracking store is checked, the study is created or
    loaded and checked, and the parent run created or reopened: of N processes that
    start a new study at the same moment, one creates both and the others find them.
    """
    from hpo.tracking.runs import StudyTracker
    from hpo.worker import StaleTrialHandler

    # A mistyped storage URL is refused before the tracking store or a lock file is created.
    check_storage_url(storage_url)
    tracker = StudyTracker(tracking_uri, spec.name)
    heartbeat = spec.heartbeat if supports_heartbeat(storage_url) else None
    handler = StaleTrialHandler(spec.heartbeat, tracker)
    with study_lock(storage_url, spec.name):
        # Under the lock too: opening a new SQLite tracking store creates its tables, which
        # several processes doing at once fail at ("table experiments already exists").
        tracker.check_connection()
        storage = open_storage(storage_url, heartbeat=heartbeat, on_stale=handler)
        study = open_study(spec, storage_url, source=source, force=force, storage=storage)
        parent_id = tracker.ensure_parent_run(
            study.user_attrs.get(PARENT_RUN_ATTR),
            tags={
                "hpo.study": spec.name,
                "hpo.spec_hash": spec.identity_hash(),
                "hpo.storage": mask_url(storage_url),
            },
            params=_parent_params(spec),
        )
        if study.user_attrs.get(PARENT_RUN_ATTR) != parent_id:
            study.set_user_attr(PARENT_RUN_ATTR, parent_id)
            study.set_user_attr(TRACKING_URI_ATTR, mask_url(tracking_uri))
    return Session(study, tracker, parent_id, heartbeat)


# -- running -----------------------------------------------------------------------------------
def prepare_data(spec: StudySpec, source: str) -> Dataset:
    """Load the study's data (cached per process) and check the spec against it."""
    from hpo.data import load_dataset_cached
    from hpo.data.base import SplitOptions

    try:
        data = load_dataset_cached(
            spec.data.source,
            data_options(spec),
            SplitOptions(**spec.data.split_dict()),
            base_dir=spec_base_dir(spec),
        )
    except DataError as exc:
        # The source names the field and the value; add which study file asked for it.
        raise DataError(f"{source}: {exc}") from None
    n_train = len(data.y_train)
    sizes: list[tuple[str, Any]] = []
    if "batch_size" in spec.fixed:
        sizes.append(("fixed.batch_size", spec.fixed["batch_size"]))
    if "batch_size" in spec.search:
        param = spec.search["batch_size"]
        for i, value in enumerate(param.bounds()):
            where = f"choices.{i}" if param.type == "categorical" else ("low", "high")[i]
            sizes.append((f"search.batch_size.{where}", value))
    for where, value in sizes:
        if isinstance(value, int) and value > n_train:
            raise SpecError(
                f"{source}: {where}: batch size {value} is larger than the training split "
                f"({n_train} rows); use at most {n_train} or 'full'"
            )
    return data


def prepare_device(spec: StudySpec, source: str) -> torch.device:
    """The device ``train.device`` names; :class:`DeviceError` naming the study file if absent."""
    from hpo.training.device import resolve_device

    try:
        return resolve_device(spec.train.device)
    except DeviceError as exc:
        # The device module names the field and the value; add which study file asked for it.
        raise DeviceError(f"{source}: {exc}") from None


def run_study(
    spec: StudySpec,
    *,
    source: str,
    storage_url: str,
    tracking_uri: str,
    n_trials: int | None = None,
    timeout: float | None = None,
    force: bool = False,
    callbacks: Sequence[TrialCallback] = (),
    on_start: Callable[[optuna.Study, int], None] | None = None,
    local_workers: int = 1,
) -> StudyResult:
    """Run (or resume) the study in this process until its budget is met, ``n_trials`` more
    ran, or time is up.

    ``spec.trials`` is the study's total budget, shared by every process that runs the study
    (see :mod:`hpo.worker` for how it is counted): a resumed study runs what is left of it.
    ``n_trials`` runs that many more in this process, whatever the budget. ``local_workers``:
    how many trial processes share this machine's cores (each takes its share).
    """
    from hpo.objective import Objective
    from hpo.training.threads import configure_threads
    from hpo.worker import budget_usage

    # 1. everything the user can get wrong, before anything is created
    data = prepare_data(spec, source)
    device = prepare_device(spec, source)
    configure_threads(spec.train.threads, workers=local_workers)
    # 2. the study and the parent run, shared by every process of the study
    session = start_session(
        spec, source=source, storage_url=storage_url, tracking_uri=tracking_uri, force=force
    )
    study, tracker = session.study, session.tracker
    result = StudyResult(study, 0, session.parent_run_id, tracker.experiment_id, tracking_uri)

    # 3. the budget
    used, running = budget_usage(study)
    todo = n_trials if n_trials is not None else spec.trials - used
    if todo <= 0 and not (running and session.heartbeat):
        result.stopped_reason = (
            f"the study already has {used - running} of its {spec.trials} trials; "
            "use --n-trials N to add more"
        )
        _end_parent(study, spec, tracker)
        return result

    if on_start is not None:
        on_start(study, max(todo, 0))
    runner = TrialRunner.open(
        spec,
        session,
        Objective(spec, data, device, tracker),
        storage_url,
        budget=None if n_trials is not None else spec.trials,
        n_trials=n_trials,
        timeout=timeout if timeout is not None else spec.timeout,
        callbacks=callbacks,
        local_workers=local_workers,
    )
    try:
        runner.run()
    finally:
        result.ran = runner.loop.ran
        try:
            runner.close()
        finally:
            _end_parent(study, spec, tracker)
    failures = runner.failures
    result.stopped_reason = failures.reason
    if runner.finisher.shared:
        # A local worker of `hpo study start --workers N`: its runs may not be sent yet; the
        # process that started it does step 4 once they are (run_local_workers).
        return result
    # 4. once per study, whichever process gets here first (the others reuse its numbers)
    with study_lock(storage_url, spec.name):
        if data.X_test is not None:
            result.test_metrics = evaluate_best_on_test(study, spec, data, tracker)
        if len(study_families(spec)) > 1:
            result.comparison = log_family_comparison(study, tracker)
        summarize_study(study, spec, data, tracker, result)
    return result


@dataclass
class TrialRunner:
    """This process's trials of an open study: the trial loop (:class:`hpo.worker.TrialLoop`)
    with the per-trial callbacks every worker has, and the background sender of the trials'
    runs (:mod:`hpo.tracking.finisher`). ``run_study`` uses it, and so do the benchmarks."""

    loop: Any
    failures: _FailureGuard
    sent: _SentRuns
    finisher: Any
    summary: _ParentSummary

    @classmethod
    def open(
        cls,
        spec: StudySpec,
        session: Session,
        objective: Any,
        storage_url: str,
        *,
        budget: int | None,
        n_trials: int | None = None,
        timeout: float | None = None,
        callbacks: Sequence[TrialCallback] = (),
        local_workers: int = 1,
    ) -> TrialRunner:
        """Start the sender (in the background when training leaves a core idle, its imports
        then overlapping with the first trial: :func:`hpo.tracking.finisher.background_default`)
        and build the loop. ``local_workers``: trial processes sharing this machine's cores."""
        from hpo.tracking.finisher import background_default
        from hpo.training.threads import spare_cores
        from hpo.trial_rows import TrialRows
        from hpo.worker import TrialLoop

        study, tracker = session.study, session.tracker
        failures = _FailureGuard()
        device = str(getattr(objective, "device", "cpu"))
        background = background_default(device, spare_cores(local_workers))
        finisher = _start_finisher(tracker, background=background)
        sent = _SentRuns(study, spec, tracker)
        # One reader of the study's trials for the budget's count and the summary.
        rows = TrialRows.of(study)
        summary = _ParentSummary(tracker, spec, study=study, rows=rows)
        loop = TrialLoop(
            study,
            objective,
            storage_url,
            budget=budget,
            n_trials=n_trials,
            timeout=timeout,
            heartbeat_interval=session.heartbeat.interval if session.heartbeat else None,
            callbacks=[*callbacks, failures, summary, sent],
            should_stop=lambda: failures.reason is not None,
            on_recovered=lambda old, new, attrs: _mark_recovered(tracker, old, new, attrs),
            rows=rows,
        )
        return cls(loop, failures, sent, finisher, summary)

    def run(self) -> int:
        """Run trials until the budget, ``n_trials`` or the time is up; return how many."""
        return int(self.loop.run())

    def wait(self) -> None:
        """Wait until the runs of the trials run so far are sent (the sender stays), and write
        the parent run's summary points still kept."""
        self.summary.flush()
        self.sent.handle(self.finisher.wait())

    def close(self) -> None:
        """Write the parent run's last summary points, wait for the last runs (the study's end
        needs them) and stop the sender."""
        try:
            self.summary.flush()
            self.sent.handle(self.finisher.drain())
        finally:
            self.finisher.tracker.finisher = None


#: Study attribute: the number of finished trials the logged report describes.
REPORT_ATTR = "hpo.report_trials"


def summarize_study(
    study: optuna.Study, spec: StudySpec, data: Dataset, tracker: Any, result: StudyResult
) -> None:
    """Honest results and the study report on the parent run, once per state of the study.

    Several workers reach the end of one study; the first builds and logs the report, the others
    find it current (same number of finished trials) and only compute the chance check to print.
    A report that cannot be written is noted, never fatal: the trials are already safe.
    """
    import tempfile

    from hpo.insights import log_chance_check, study_chance_check

    result.chance = study_chance_check(study, data.y_val, data.n_classes)
    # Workers may have moved the alias in a race; settle it on the study's real best. An error
    # of an earlier attempt is cleared first: what is shown is the outcome of this last one.
    if study.user_attrs.get(CHAMPION_ERROR_ATTR):
        study.set_user_attr(CHAMPION_ERROR_ATTR, None)
    promote_champion(study, spec, tracker)
    result.champion_error = study.user_attrs.get(CHAMPION_ERROR_ATTR) or None
    if not spec.multi_objective:
        from hpo.errors import TrackingError
        from hpo.tracking.champion import current_champion

        with contextlib.suppress(TrackingError):
            result.champion = current_champion(tracker)
    # The parent run's shown counts and best value: the study's own at its end (see final()).
    _ParentSummary(tracker, spec).final(study)
    done = finished_count(study)
    if study.user_attrs.get(REPORT_ATTR) == done:
        return
    if result.chance is not None:
        log_chance_check(result.chance, tracker)
    try:
        from hpo.study_report import fetch_best_run_plots, log_study_report, write_study_report

        with tempfile.TemporaryDirectory(prefix="hpo-report-") as tmp:
            report = write_study_report(
                study,
                Path(tmp),
                metric_names=list(spec.objective_metrics),
                best_run_plots=fetch_best_run_plots(study, tracker),
                chance=result.chance,
            )
            log_study_report(report, tracker)
    except Exception as exc:  # a report is a convenience; never lose a finished study over it
        result.report_error = f"{type(exc).__name__}: {exc}"
        return
    study.set_user_attr(REPORT_ATTR, done)


def stored_chance_check(study: optuna.Study) -> ChanceCheck | None:
    """:func:`summarize_study`'s chance check for a study read back from its storage (``hpo study
    report``): the validation labels come from the data of the study file it was started with.

    None when no complete trial recorded ``val_accuracy``; :class:`~hpo.errors.HpoError` when the
    study holds no study file or its data cannot be loaded any more.
    """
    from hpo.insights import study_chance_check

    spec = stored_spec(study)
    data = prepare_data(spec, f"study '{study.study_name}'")
    return study_chance_check(study, data.y_val, data.n_classes)


def run_local_workers(
    spec: StudySpec,
    file: Path,
    workers: int,
    *,
    storage_url: str,
    tracking_uri: str,
    timeout: float | None = None,
    force: bool = False,
    extra_args: Sequence[str] = (),
    on_start: Callable[[optuna.Study, int], None] | None = None,
    on_poll: Callable[[optuna.Study], None] | None = None,
) -> StudyResult:
    """Run the study in ``workers`` local ``hpo worker`` processes (``hpo study start --workers``).

    This process checks the file and its data, starts the workers, each with its share of the
    cores, creates the study and its parent run once while they import (or stops them, if that
    fails or the budget is already met), and calls ``on_poll`` about every second while they
    run. When training leaves a core idle (trials on an accelerator, fewer threads
    than cores: :func:`hpo.tracking.finisher.background_default`), the workers only spool their
    trials' runs and this process sends them, from one thread
    (:class:`hpo.tracking.finisher.SpoolWatcher`: one warm-up, one cache of traces); else each
    worker sends its own between its trials (a third busy thread on cores the workers fill made
    their trials slower: 2 CPU workers on 2 cores ran 218-239 trials/min in steady state with
    this process sending, 265-294 sending their own). The study's end comes once every run is
    in the store. A worker that fails makes this a :class:`~hpo.errors.HpoError` that shows the
    end of its error output. CPU workers are forked from this process (:mod:`hpo.forked`), which
    must not have run parallel torch work before: else set ``HPO_WORKER_START=spawn``.
    """
    from hpo.errors import HpoError
    from hpo.forked import fork_possible, single_threaded_torch
    from hpo.tracking.finisher import Finisher, SpoolWatcher, background_default
    from hpo.training.threads import configure_threads, spare_cores
    from hpo.worker import budget_usage, spawn_workers, stop_workers, wait_for_workers

    # Forked workers (hpo.forked) start with this process's imports and loaded data: 16 reference
    # trials with --workers 2 took 16.5-18.6 s instead of 20.6-23.4 s.
    fork = fork_possible(spec.train.device)
    with single_threaded_torch(fork):
        data = prepare_data(spec, str(file))
        device = prepare_device(spec, str(file))
    # Training leaves a core (or the CPU, next to an accelerator) idle: this process sends every
    # worker's runs there (see below).
    send_here = background_default(str(device), spare_cores(workers))
    # The workers start now, with the file and its data checked: their seconds of imports overlap
    # this process opening the study and its parent run (they wait for it under the study lock).
    # Measured: 16 reference trials with --workers 2 took 14.3-14.5 s instead of 15.6-15.9 s.
    procs = spawn_workers(
        workers,
        str(file),
        storage_url=storage_url,
        tracking_uri=tracking_uri,
        study_name=spec.name,
        timeout=timeout,
        force=force,
        extra=extra_args,
        shared_sender=send_here,
        fork=fork,
    )
    try:
        session = start_session(
            spec, source=str(file), storage_url=storage_url, tracking_uri=tracking_uri, force=force
        )
        study, tracker = session.study, session.tracker
        result = StudyResult(study, 0, session.parent_run_id, tracker.experiment_id, tracking_uri)
        used, running = budget_usage(study)
        if used >= spec.trials and not running:
            stop_workers(procs)  # they would find nothing to run, after their imports
            result.stopped_reason = (
                f"the study already has {used} of its {spec.trials} trials; raise 'trials' to "
                "add more"
            )
            _end_parent(study, spec, tracker)
            return result
        before = finished_count(study)
        if on_start is not None:
            on_start(study, spec.trials - before)
        watcher = None
        configure_threads(spec.train.threads, workers=workers)  # each worker's share
        if send_here:
            # With one torch thread: the workers take the cores, and torch's default (a thread
            # per core) woke a pool of threads that competed with their training (0.4 s trials
            # instead of 0.25 s). The workers spool their runs until it starts.
            import torch

            torch.set_num_threads(1)
            watcher = SpoolWatcher(
                Finisher(tracker, background=False, shared=False),
                on_sent=_SentRuns(study, spec, tracker).handle,
            )
            tracker.finisher = watcher.finisher
            watcher.start()
    except BaseException:  # the error (or Ctrl-C) is this process's to report, not theirs
        stop_workers(procs)
        raise
    try:
        failed = wait_for_workers(procs, poll=(lambda: on_poll(study)) if on_poll else None)
    finally:
        if watcher is not None:
            try:
                watcher.close()
            finally:
                tracker.finisher = None
    result.ran = finished_count(study) - before
    if failed:
        codes = ", ".join(str(w.process.returncode) for w in failed)
        said = failed[-1].tail()
        message = f"{len(failed)} of {workers} workers failed (exit {codes})"
        if finished_count(study) < spec.trials or budget_usage(study)[1]:
            raise HpoError(f"{message}; the last one said:\n{said}" if said else message)
        # The others re-ran its trial (heartbeat) and met the budget: report, do not fail.
        result.stopped_reason = f"{message}; the other workers completed the study"
    _end_parent(study, spec, tracker)
    # The workers did these once; here they are read back (cached in the study) for printing.
    with study_lock(storage_url, spec.name):
        if data.X_test is not None:
            result.test_metrics = evaluate_best_on_test(study, spec, data, tracker)
        if len(study_families(spec)) > 1:
            from hpo.compare import family_table

            result.comparison = family_table(study)
        summarize_study(study, spec, data, tracker, result)
    return result


def _end_parent(study: optuna.Study, spec: StudySpec, tracker: Any) -> None:
    # The parent run stays RUNNING while the budget is not met (another run resumes it).
    from hpo.tracking.outage import single_attempt

    try:
        with single_attempt():
            tracker.end_parent_run(
                "FINISHED" if finished_count(study) >= spec.trials else "RUNNING"
            )
    except TrackingError as exc:
        # The store is away (the error that stops this worker says so): the next start of the
        # study reopens and ends the parent run.
        tracker._warn(f"could not end the study's parent run: {exc}")


def _mark_recovered(
    tracker: Any,
    old: optuna.trial.FrozenTrial,
    new: optuna.trial.FrozenTrial,
    attrs: dict[str, Any],
) -> None:
    from hpo.objective import RUN_ID_ATTR
    from hpo.worker import mark_run_recovered

    run_id = attrs.get(RUN_ID_ATTR)
    if run_id:
        mark_run_recovered(tracker, run_id, old.number, new)


def log_family_comparison(study: optuna.Study, tracker: Any) -> pd.DataFrame:
    """The per-family table, logged to the parent run as CSV and HTML; returned for printing."""
    from hpo.compare import family_table, table_html

    frame = family_table(study)
    tracker.log_parent_text(frame.to_csv(index=False), "family_comparison.csv")
    tracker.log_parent_text(
        table_html(frame, f"{study.study_name}: model families"), "family_comparison.html"
    )
    return frame


def _parent_params(spec: StudySpec) -> dict[str, Any]:
    params: dict[str, Any] = {
        "metric": ",".join(spec.objective_metrics),
        "direction": ",".join(spec.objective_directions),
        "family": spec.model.family,
        "data.source": spec.data.source,
        "epochs": spec.train.epochs,
        "sampler": spec.sampler.name,
        "pruner": spec.pruner_spec.name,
        "trials": spec.trials,
        "search_space": json.dumps(spec.model_dump(mode="json")["search"], sort_keys=True),
    }
    for key, value in spec.data.options.items():
        params[f"data.{key}"] = value
    for key, value in spec.fixed.items():
        params[f"fixed.{key}"] = value
    return params


class _FailureGuard:
    """Stops this process after :data:`MAX_CONSECUTIVE_FAILURES` failed trials in a row (the
    trial loop checks :attr:`reason`)."""

    def __init__(self) -> None:
        self.streak = 0
        self.reason: str | None = None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        from optuna.trial import TrialState

        if trial.state != TrialState.FAIL:
            self.streak = 0
            return
        self.streak += 1
        if self.streak >= MAX_CONSECUTIVE_FAILURES:
            error = trial.user_attrs.get("error", "unknown error")
            self.reason = f"stopped after {self.streak} failed trials in a row; last error: {error}"


#: The parent run's summary is written at most this often; every trial's point is kept and
#: goes with the next write (or the end of this process's trials).
SUMMARY_SECONDS = 2.0
#: Points kept while the store is away; older ones are dropped (the latest holds the totals).
MAX_SUMMARY_POINTS = 1000


class _ParentSummary:
    """Keeps the parent run's summary current: best value and trial, trial counts (the Pareto
    front's size and trials for a multi-objective study), one point per trial at the trial's
    number. The ``champion`` alias moves once a new best trial's model is in the store
    (:class:`_SentRuns`).

    A trial's point is the study as it stood when the trial ended: the trials finished by then.
    Points are computed and written together, at most every ``interval`` seconds (the first at
    once), and the rest by :meth:`flush`: one read of the study and one store call per write,
    not per trial. Per trial they cost 7 ms of the reference trial's 0.25 s
    (``benchmarks/overhead.py``: a read of every trial, the best trial, a store call); trials
    longer than ``interval`` still write one each.
    """

    def __init__(
        self,
        tracker: Any,
        spec: StudySpec,
        interval: float = SUMMARY_SECONDS,
        study: optuna.Study | None = None,
        rows: TrialRows | None = None,
    ) -> None:
        """``rows``: the study's trials as rows (:mod:`hpo.trial_rows`), shared with the worker's
        loop; read here for a single-objective study (a Pareto front needs whole trials)."""
        self.tracker = tracker
        self.spec = spec
        self.interval = interval
        self.study = study
        self._warned = False
        #: Trials that ended, with the time (seconds since the epoch): points to compute. None
        #: for a trial: the study's end (:meth:`final`).
        self._ended: list[tuple[int | None, float]] = []
        #: Computed points not written yet (the store was away).
        self._points: list[tuple[int, int, dict[str, float]]] = []
        self._tags: dict[str, str] = {}
        self._written: float | None = None
        #: The study's trials as rows (an RDB storage, one objective), False where not.
        self._rows: TrialRows | Literal[False] | None = None if spec.multi_objective else rows
        #: The best trial's run id (trial id → run id), read once per best trial.
        self._run_ids: dict[int, str] = {}

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.study = study
        if not self._ended or self._ended[-1][0] != trial.number:  # not a retry of this call
            self._ended.append((trial.number, time.time()))
        del self._ended[:-MAX_SUMMARY_POINTS]
        if self._written is None or time.monotonic() - self._written >= self.interval:
            self.flush()

    def _compute(self) -> None:
        """Turn the ended trials into points, from one read of the study."""
        if not self._ended or self.study is None:
            return
        from optuna.trial import TrialState

        from hpo.trial_rows import TrialRows

        directions = self.study.directions
        if self._rows is None and not self.spec.multi_objective:
            self._rows = TrialRows.of(self.study) or False
        # Rows in SQL, only those that changed (hpo.trial_rows); a Pareto front needs the
        # trials' constraints: the whole trials then.
        trials: Sequence[Any] = (
            self._rows.read() if self._rows else self.study.get_trials(deepcopy=False)
        )
        finished = [
            (t, t.datetime_complete.timestamp() if t.datetime_complete else math.inf)
            for t in trials
            if t.state.is_finished()
        ]
        for number, at in self._ended:
            if number is None:  # the study's end (final()): at its highest finished trial
                if not finished:
                    continue
                number = max(t.number for t, _ in finished)
            # Finished by then (this trial itself whatever the clocks say); at the study's end
            # (at = inf) every finished trial, whatever the workers' clocks.
            done = [t for t, ended in finished if ended <= at or t.number == number]
            counts = {s: 0 for s in ("complete", "pruned", "fail")}
            for t in done:
                key = t.state.name.lower()
                if key in counts:
                    counts[key] += 1
            metrics: dict[str, float] = {f"n_{k}": float(v) for k, v in counts.items()}
            complete = [t for t in done if t.state == TrialState.COMPLETE]
            tags: dict[str, str] = {}
            if self.spec.multi_objective:
                front_metrics, tags = _pareto_summary(_pareto_front(complete, directions))
                metrics.update(front_metrics)
            elif complete:
                best = _best_of(complete, directions[0])
                metrics[f"best_{self.spec.objective_metrics[0]}"] = float(best.value)  # type: ignore[arg-type]
                metrics["best_trial"] = float(best.number)
                tags["hpo.best_trial"] = str(best.number)
                tags["hpo.best_run_id"] = str(self._run_id_of(best) or "")
            stamp = at if math.isfinite(at) else time.time()
            self._points.append((number, int(stamp * 1000), metrics))
            self._tags.update(tags)
        self._ended = []
        del self._points[:-MAX_SUMMARY_POINTS]

    def _run_id_of(self, trial: Any) -> str | None:
        """The MLflow run id a trial (a ``FrozenTrial`` or a row) recorded."""
        from hpo.objective import RUN_ID_ATTR
        from hpo.trial_rows import TrialRow

        if not isinstance(trial, TrialRow):
            return trial.user_attrs.get(RUN_ID_ATTR)
        found = self._run_ids.get(trial.trial_id)
        if found is None and self._rows:
            found = self._rows.user_attr(trial.trial_id, RUN_ID_ATTR)
            if found:  # kept while this trial is the best
                self._run_ids = {trial.trial_id: str(found)}
        return found

    def final(self, study: optuna.Study) -> None:
        """Write the study's totals as they stand now, as one more point at the step of its
        highest-numbered finished trial, timestamped now: the parent run's values at the study's
        end. MLflow shows a run's point of the highest step (the latest of equal steps) as its
        value, and with several workers the highest-numbered trial may end, and write its point,
        before a lower-numbered one: the shown counts were then one short."""
        from hpo.tracking.outage import single_attempt

        self.study = study
        self._ended.append((None, math.inf))
        self._compute()  # one read of the study
        if self._points:
            # Already what the run shows (one worker, or the trials ended in order): no point
            # that repeats the last one.
            _, _, metrics = self._points[-1]
            try:
                with single_attempt():
                    shown = self.tracker.client.get_run(self.tracker.parent_run_id).data
                if all(shown.metrics.get(k) == v for k, v in metrics.items()) and all(
                    shown.tags.get(k) == v for k, v in self._tags.items()
                ):
                    self._points, self._tags = [], {}
            except Exception:  # unread: written anyway (flush says if the store is away)
                pass
        self.flush()

    def flush(self) -> None:
        """Write the points and tags not written yet; a store that is away keeps them for the
        next call."""
        import optuna

        from hpo.tracking.outage import single_attempt

        try:
            self._compute()
            if not self._points and not self._tags:
                return
            # One attempt, not MLflow's minutes of retries: the next trial's summary catches up.
            with single_attempt():
                self.tracker.log_parent_points(self._points, self._tags)
            self._points, self._tags = [], {}
        except (TrackingError, optuna.exceptions.StorageInternalError) as exc:
            # A summary is not worth a trial: the next trial's (or the study's end) catches up
            # (the trials it could not read stay to be computed then).
            if isinstance(exc, TrackingError):
                # Checked before the next trial starts (the trial's own run is created while it
                # trains against a server: this may be the first sign of an outage).
                self.tracker.note_unreachable()
            if not self._warned:
                self._warned = True
                self.tracker._warn(f"could not update the study's parent run: {exc}")
        finally:
            self._written = time.monotonic()


def _best_of(
    complete: Sequence[optuna.trial.FrozenTrial], direction: optuna.study.StudyDirection
) -> optuna.trial.FrozenTrial:
    """The best of ``complete`` trials (the earliest of equal values, as Optuna's storages)."""
    from optuna.study import StudyDirection

    sign = -1.0 if direction == StudyDirection.MAXIMIZE else 1.0
    return min(complete, key=lambda t: (sign * float(t.value), t.number))  # type: ignore[arg-type]


def _pareto_front(
    complete: Sequence[optuna.trial.FrozenTrial],
    directions: Sequence[optuna.study.StudyDirection],
) -> list[optuna.trial.FrozenTrial]:
    """The Pareto front of ``complete`` trials, as :attr:`optuna.Study.best_trials` computes it
    (constraints considered); Optuna's own function (optuna is pinned to 5.0.x)."""
    from optuna.study._multi_objective import _get_pareto_front_trials_by_trials

    return _get_pareto_front_trials_by_trials(complete, directions, consider_constraint=True)


def _start_finisher(tracker: Any, *, background: bool) -> Any:
    """The sender of this process's trial runs (:mod:`hpo.tracking.finisher`), its background
    process started now so its imports overlap with the first trial, and given the runs of this
    study that earlier processes on this machine left in the spool."""
    from hpo.tracking.finisher import Finisher
    from hpo.tracking.spool import list_jobs

    finisher = Finisher(tracker, background=background)
    tracker.finisher = finisher
    finisher.start()
    for path in list_jobs(tracker.study_name):
        finisher.submit(path)
    return finisher


class _SentRuns:
    """Acts on the trial runs the finisher reports sent (after each trial and at the end): a
    new best trial's model becomes the study's ``champion``, now that it is in the store."""

    def __init__(self, study: optuna.Study, spec: StudySpec, tracker: Any) -> None:
        self.study = study
        self.spec = spec
        self.tracker = tracker

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.tracker.finisher is not None:
            self.handle(self.tracker.finisher.poll())

    def handle(self, sent: Sequence[Any]) -> None:
        """Promote the study's best trial if one of ``sent`` is it."""
        if self.spec.multi_objective:
            return
        numbers = {s.trial for s in sent if s.ok and s.state == "COMPLETE"}
        if not numbers:
            return
        from hpo.tracking.outage import single_attempt

        best = _best_if_among(self.study, numbers)
        if best is not None:
            # One attempt: a registry that is away is tried again at the study's end.
            with single_attempt():
                promote_champion(self.study, self.spec, self.tracker, best)


def _best_if_among(study: optuna.Study, numbers: set[int]) -> optuna.trial.FrozenTrial | None:
    """The best trial of a single-objective study if it is one of the trials ``numbers``.

    On an RDB storage the best trial's id is one query, compared with the ids of ``numbers``
    (this worker's trials: Optuna's cache knows them); the trial is read only when it is among
    them. ``Study.best_trial`` reads the trial whatever it is (2 ms through the ORM once nothing
    else fills Optuna's cache of finished trials).
    """
    storage = study._storage
    backend = rdb_backend(storage)
    if backend is not None:
        ids = set()
        for number in numbers:
            with contextlib.suppress(KeyError):  # not in this study (a stray spooled job)
                ids.add(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))
        try:
            if backend._get_best_trial_id(study._study_id, study.direction) not in ids:
                return None
        except ValueError:  # no complete trial
            return None
    best = best_trials(study)
    return best[0] if best and best[0].number in numbers else None


#: Longest ``hpo.pareto_trials`` tag kept (MLflow refuses tag values of more than 8,000 chars).
_MAX_TAG_CHARS = 5000


def _pareto_summary(
    front: Sequence[optuna.trial.FrozenTrial],
) -> tuple[dict[str, float], dict[str, str]]:
    """A multi-objective study's summary for the parent run, from its Pareto ``front``: the
    metric ``pareto_front_size``, and the front's trial numbers and run ids as the tags
    ``hpo.pareto_trials`` and ``hpo.pareto_run_ids`` (comma-separated, by trial number; cut at
    :data:`_MAX_TAG_CHARS`)."""
    front = sorted(front, key=lambda t: t.number)

    def joined(items: list[str]) -> str:
        text = ",".join(items)
        return text if len(text) <= _MAX_TAG_CHARS else text[: _MAX_TAG_CHARS - 1] + "…"

    tags = {}
    if front:
        tags["hpo.pareto_trials"] = joined([str(t.number) for t in front])
        tags["hpo.pareto_run_ids"] = joined(
            [str(t.user_attrs.get("mlflow_run_id", "")) for t in front]
        )
    return {"pareto_front_size": float(len(front))}, tags


def promote_champion(
    study: optuna.Study,
    spec: StudySpec,
    tracker: Any,
    trial: optuna.trial.FrozenTrial | None = None,
) -> Any:
    """Register ``trial``'s (default: the best trial's) model as the study's ``champion`` if it
    beats the current one (:mod:`hpo.tracking.champion`); single-objective studies only.

    A registry that cannot be written is not worth a trial or a study: the failure is noted on
    the study (``hpo.champion_error``) and the next new best, or the study's end, tries again.
    """
    from hpo.errors import TrackingError
    from hpo.tracking.champion import promote

    if spec.multi_objective:
        return None
    if trial is None:
        best = best_trials(study)
        if not best:
            return None
        trial = best[0]
    lineage = {"spec_hash": spec.identity_hash(), "seed": spec.train.seed}
    try:
        champion = promote(
            tracker,
            trial,
            metric=spec.objective_metrics[0],
            direction=spec.objective_directions[0],
            lineage=lineage,
        )
    except TrackingError as exc:
        study.set_user_attr("hpo.champion_error", str(exc)[:500])
        return None
    if champion is not None:
        tracker.log_parent(tags={"hpo.champion_version": champion.version})
    return champion


def best_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The best trial (single objective) or the Pareto front (multi-objective); [] if none."""
    if len(study.directions) > 1:
        return list(study.best_trials)
    try:
        # One query for the best trial's id (and the trial): no read of every trial first.
        return [study.best_trial]
    except ValueError:  # no trial is complete (or none is feasible)
        return []


def evaluate_best_on_test(
    study: optuna.Study, spec: StudySpec, data: Dataset, tracker: Any
) -> dict[str, float]:
    """Evaluate the best trial's logged model once on the held-out test split."""
    from hpo.training.metrics import classification_metrics

    best = best_trials(study)
    if not best or data.X_test is None or data.y_test is None or len(study.directions) > 1:
        return {}
    trial = best[0]
    if study.user_attrs.get("hpo.test_trial") == trial.number:
        return dict(study.user_attrs.get("hpo.test_metrics", {}))
    model_uri = trial.user_attrs.get("model_uri")
    if not model_uri:
        return {}
    import numpy as np
    import torch

    model = tracker.load_model(model_uri)  # from the study's own store, not MLflow's global one
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(data.X_test)))
        proba = torch.softmax(logits, dim=1).numpy()
    metrics = {
        f"test_{k}": v
        for k, v in classification_metrics(data.y_test, proba, data.n_classes).items()
    }
    clean = {k: v for k, v in metrics.items() if math.isfinite(v)}
    tracker.log_to_run(trial.user_attrs.get("mlflow_run_id"), metrics=clean)
    tracker.log_parent(metrics=clean, tags={"hpo.test_trial": str(trial.number)})
    study.set_user_attr("hpo.test_trial", trial.number)
    study.set_user_attr("hpo.test_metrics", clean)
    return clean


# -- inspecting --------------------------------------------------------------------------------
@dataclass
class StudySummary:
    """One line of ``hpo study list``."""

    name: str
    n_trials: int
    directions: list[str]
    best_value: Any
    created: str


def list_studies(storage_url: str) -> list[StudySummary]:
    """Every study in the storage, with its size and best value."""
    import optuna

    _quiet_optuna()
    storage = open_storage(storage_url)
    out = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        best = None
        if s.best_trial is not None:
            best = s.best_trial.values if len(s.directions) > 1 else s.best_trial.value
        created = s.datetime_start.strftime("%Y-%m-%d %H:%M") if s.datetime_start else ""
        out.append(
            StudySummary(
                s.study_name, s.n_trials, [d.name.lower() for d in s.directions], best, created
            )
        )
    return out


def last_trials(study: optuna.Study, limit: int) -> tuple[list[optuna.trial.FrozenTrial], int]:
    """The study's last ``limit`` trials by number (0: all) and how many it has in total.

    Optuna reads every trial of a study to list any of them (4-5 s for 10,000 trials on SQLite,
    measured by benchmarks/cli_speed.py). On a database storage this asks for the ids of the
    last ``limit`` trials and reads only those; other storages read them all.
    """
    storage = study._storage
    backend = rdb_backend(storage)
    if limit > 0 and backend is not None:
        import sqlalchemy

        # Optuna's own schema (the ``trials`` table, stable since its first RDB version).
        with backend.engine.connect() as connection:
            total = connection.execute(
                sqlalchemy.text("SELECT COUNT(*) FROM trials WHERE study_id = :study"),
                {"study": study._study_id},
            ).scalar_one()
            ids = connection.execute(
                sqlalchemy.text(
                    "SELECT trial_id FROM trials WHERE study_id = :study "
                    "ORDER BY number DESC LIMIT :limit"
                ),
                {"study": study._study_id, "limit": limit},
            ).scalars()
            trial_ids = list(ids)
        return [backend.get_trial(i) for i in reversed(trial_ids)], int(total)
    trials = study.get_trials(deepcopy=False)
    return (trials[-limit:] if limit > 0 else list(trials)), len(trials)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """All trials as a table: number, state, value(s), params, duration, run id, metrics."""
    attrs = ("user_attrs",)
    df = study.trials_dataframe(attrs=("number", "value", "state", "duration", "params", *attrs))
    df = df.rename(columns=lambda c: c.replace("user_attrs_", "").replace("params_", "param_"))
    if "duration" in df:
        df["duration"] = df["duration"].dt.total_seconds().round(2)
    return df


def delete_study(name: str, storage_url: str) -> None:
    """Delete a study and its trials from the storage (MLflow runs are kept)."""
    import optuna

    load_study(name, storage_url)  # a clear error for an unknown name
    optuna.delete_study(study_name=name, storage=open_storage(storage_url))
