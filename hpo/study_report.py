"""The study report: Optuna's plots as PNG files and one self-contained, interactive HTML page.

:func:`write_study_report` writes, under ``out_dir``::

    report.html                    summary, best trial, its plots, every Optuna figure, all trials
    plots/<name>.png               each Optuna figure as a PNG (optuna.visualization.matplotlib)
    plots/<name>.html              only with ``plot_html=True``: each figure alone, interactive,
    plots/plotly.min.js              sharing this one copy of plotly.js

and :func:`log_study_report` puts them on the study's parent run (``study_report/…``).

Choices, and why:

* **Self-contained HTML, plotly.js once.** Users (and this environment) may have no internet, so
  nothing is loaded from a CDN. plotly.js is ~4.8 MB; embedded in every per-plot HTML file it
  would cost ~30 MB per study in the artifact store, so ``report.html`` embeds it once and holds
  every figure (~5 MB in all). MLflow's UI shows an HTML artifact in a sandboxed ``srcdoc``
  iframe, where a relative ``<script src>`` does not resolve: only the self-contained page works
  there, which is why per-plot HTML files are opt-in.
* **PNGs from matplotlib, not kaleido.** Plotly's PNG export (kaleido 1.x) drives a Chrome it
  downloads at run time, which fails offline. Optuna's matplotlib versions of the same plots use
  ``pyplot`` (and ``plt.style.use("ggplot")``, a process-wide change); they run here inside
  ``matplotlib.rc_context()`` so the style is undone, on the Agg backend when no one chose another,
  and every figure is closed after rendering.
* **Robust.** A plot that does not apply (no complete trial, one parameter for a contour, no
  per-epoch values, > 3 objectives for a Pareto front) is skipped with the reason, and so is one
  that raises: the report lists both, and never fails because of a plot.
* **Without plotly** (not installed), the report embeds the PNGs instead of interactive figures.

Measured on 2 CPU cores (50 trials, 5 parameters of which one conditional, 15 per-epoch values
each): 3.5 s in a fresh process, of which ~2 s are first imports (plotly, pyplot, Optuna's
importance code); 1.6 s once they are loaded, most of it rendering the six PNGs. report.html is
4.9 MB (plotly.js 4.8 MB of it).
"""

from __future__ import annotations

import base64
import html
import logging
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from hpo.insights import ChanceCheck
    from hpo.tracking.runs import StudyTracker

#: The report's page, relative to ``out_dir``.
REPORT_FILE = "report.html"
#: Where the per-plot files go, relative to ``out_dir``.
PLOTS_DIR = "plots"
#: The parent run's artifact folder for the report.
ARTIFACT_PATH = "study_report"
#: The best trial's plots that :func:`fetch_best_run_plots` fetches from its run (see
#: :meth:`hpo.tracking.runs.TrialRun.log_plots`), in the order the report shows them. Runs
#: logged before the plots became SVG have PNGs of the same names: those are taken instead.
BEST_RUN_PLOTS = ("confusion_matrix.svg", "roc_curves.svg", "learning_curves.svg")
#: Trial user attributes shown as the best trial's metrics (what the objective records).
_METRIC_PREFIXES = ("val_", "test_", "train_", "n_params", "samples_per_second")
#: Characters kept of a failed or pruned trial's reason in the trials table.
_NOTE_CHARS = 160

Target = Callable[["FrozenTrial"], float] | None


@dataclass
class StudyReport:
    """What :func:`write_study_report` wrote."""

    #: Relative path (``plots/slice.png``, ``report.html``) → file on disk.
    files: dict[str, Path]
    #: Plot name → why it was not drawn (or why one of its two renderings failed).
    skipped: dict[str, str] = field(default_factory=dict)
    #: The directory the files are in.
    out_dir: Path = Path(".")

    @property
    def html_path(self) -> Path:
        """The report page."""
        return self.files[REPORT_FILE]


@dataclass
class _Plot:
    """One Optuna figure: its file stem, title, and how to draw it with each library."""

    name: str
    title: str
    plotly: Callable[[Any], Any]  # the optuna.visualization module → go.Figure
    matplotlib: Callable[[Any], Any]  # the optuna.visualization.matplotlib module → Axes
    html: str = ""  # the interactive figure as a <div> (empty without plotly)
    png: bytes = b""
    notes: list[str] = field(default_factory=list)


# -- the public API ----------------------------------------------------------------------------
def write_study_report(
    study: optuna.Study,
    out_dir: Path,
    *,
    metric_names: list[str],
    best_run_plots: Mapping[str, bytes] | None = None,
    chance: ChanceCheck | None = None,
    plot_html: bool = False,
) -> StudyReport:
    """Write the study's report under ``out_dir`` (created if needed) and list what it wrote.

    ``metric_names``: the objectives' names, in the study's order (``["val_accuracy"]``).
    ``best_run_plots``: SVG or PNG bytes by file name (``confusion_matrix.svg`` …) of the best trial's
    run, embedded in the page (:func:`fetch_best_run_plots` gets them from MLflow).
    ``chance``: the chance-level check (:mod:`hpo.insights`), shown in the summary when given.
    ``plot_html``: also write each figure as its own interactive HTML file (see the module doc).
    Never raises because of a plot; raises :class:`OSError` when ``out_dir`` cannot be written.
    """
    from optuna.trial import TrialState

    out_dir = Path(out_dir)
    plots_dir = out_dir / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    names = _metric_names(study, metric_names)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]

    report = StudyReport(files={}, out_dir=out_dir)
    plots = _plan(study, complete, names, report.skipped)
    with _optuna_log() as log:
        _draw_plotly(plots, report.skipped, log)
        _draw_matplotlib(plots, report.skipped, log)

    for plot in plots:
        if plot.png:
            rel = f"{PLOTS_DIR}/{plot.name}.png"
            report.files[rel] = _write(out_dir / rel, plot.png)
    if plot_html and any(p.html for p in plots):
        import plotly.offline

        js = f"{PLOTS_DIR}/plotly.min.js"
        report.files[js] = _write(out_dir / js, plotly.offline.get_plotlyjs().encode())
        for plot in plots:
            if plot.html:
                rel = f"{PLOTS_DIR}/{plot.name}.html"
                page = _page(
                    f"{study.study_name}: {plot.title}",
                    '<script src="plotly.min.js"></script>',
                    plot.html,
                )
                report.files[rel] = _write(out_dir / rel, page.encode())

    page = _report_page(
        study, trials, complete, names, plots, report.skipped, best_run_plots, chance
    )
    report.files[REPORT_FILE] = _write(out_dir / REPORT_FILE, page.encode())
    return report


def log_study_report(
    report: StudyReport, tracker: StudyTracker, *, artifact_path: str = ARTIFACT_PATH
) -> None:
    """Log the report's files as artifacts of the study's parent run, under ``artifact_path``
    (``study_report/report.html``, ``study_report/plots/…``), keeping their relative layout.

    Raises :class:`hpo.errors.TrackingError` when the store refuses (the tracker's usual error).
    """
    from hpo.tracking.runs import _tracking_errors

    if tracker.parent_run_id is None:
        raise RuntimeError("ensure_parent_run() must be called first (or set parent_run_id)")
    # One upload of a staging folder rather than one call per file: a remote server then gets
    # the files in one go, and out_dir may hold other files (``-o .``) that must not be logged.
    with tempfile.TemporaryDirectory(prefix="hpo-report-") as tmp:
        for rel, path in report.files.items():
            target = Path(tmp, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
        with _tracking_errors("logging the study report", tracker.tracking_uri):
            tracker.client.log_artifacts(tracker.parent_run_id, tmp, artifact_path=artifact_path)


def fetch_best_run_plots(study: optuna.Study, tracker: StudyTracker) -> dict[str, bytes]:
    """The plots of the best trial's run (:data:`BEST_RUN_PLOTS`), for ``best_run_plots``.

    Multi-objective: the lowest-numbered trial of the Pareto front. Whatever is missing (no
    complete trial, no run id, a run logged without plots, an unreachable store) is left out:
    the report is still worth writing without them.
    """
    from hpo.study import best_trials

    best = sorted(best_trials(study), key=lambda t: t.number)
    run_id = best[0].user_attrs.get("mlflow_run_id") if best else None
    if not run_id:
        return {}
    images: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="hpo-best-plots-") as tmp:
        for name in BEST_RUN_PLOTS:
            for candidate in (name, str(Path(name).with_suffix(".png"))):
                try:
                    local = tracker.client.download_artifacts(run_id, candidate, tmp)
                except Exception:  # a missing plot only leaves it out of the report
                    continue
                images[candidate] = Path(local).read_bytes()
                break
    return images


def study_metric_names(study: optuna.Study) -> list[str]:
    """The objectives' names: from the study file the study was started with, else Optuna's
    ``metric_names``, else ``objective_0`` …"""
    try:
        from hpo.study import stored_spec

        names = list(stored_spec(study).objective_metrics)
        if len(names) == len(study.directions):
            return names
    except Exception:  # a study not created by hpo, or an older file: fall back
        pass
    return _metric_names(study, list(study.metric_names or []))


# -- planning: which plots apply -----------------------------------------------------------------
def _metric_names(study: optuna.Study, names: Sequence[str]) -> list[str]:
    n = len(study.directions)
    given = [str(x) for x in names][:n]
    return given + [f"objective_{i}" for i in range(len(given), n)]


def _plan(
    study: optuna.Study,
    complete: list[FrozenTrial],
    names: list[str],
    skipped: dict[str, str],
) -> list[_Plot]:
    """The figures that apply to this study; the others go to ``skipped`` with the reason."""
    multi = len(names) > 1
    if not complete:
        skipped["all plots"] = "no trial has completed yet"
        return []
    params = _params_by_frequency(complete)
    plots: list[_Plot] = []
    if multi:
        if len(names) > 3:
            skipped["pareto_front"] = f"{len(names)} objectives: a Pareto front is drawn for 2 or 3"
        else:
            plots.append(
                _Plot(
                    "pareto_front",
                    "Pareto front",
                    lambda v: v.plot_pareto_front(study, target_names=names),
                    lambda v: v.plot_pareto_front(study, target_names=names),
                )
            )
    # One set of per-objective plots per objective; a single objective has no suffix.
    targets: list[tuple[str, str, Target, str]] = (
        [(f"_{_slug(n)}", f" ({n})", _objective(i), n) for i, n in enumerate(names)]
        if multi
        else [("", "", None, names[0])]
    )
    for suffix, label, target, metric in targets:
        plots.append(
            _per_target(
                study,
                "optimization_history",
                "Optimization history",
                suffix,
                label,
                target,
                metric,
                lambda v: v.plot_optimization_history,
            )
        )
    if len(complete) < 2:
        skipped["param_importances"] = "needs at least 2 complete trials"
    elif not params:
        skipped["param_importances"] = "no searched parameter"
    else:
        # PED-ANOVA (Optuna's default evaluator) takes conditional parameters and, without a
        # target, every objective of a multi-objective study in one figure.
        plots.append(
            _Plot(
                "param_importances",
                "Parameter importances",
                lambda v: v.plot_param_importances(study),
                lambda v: v.plot_param_importances(study),
            )
        )
    if not params:
        skipped["parallel_coordinate / slice / contour"] = "no searched parameter"
    for suffix, label, target, metric in targets:
        if params:
            plots.append(
                _per_target(
                    study, "slice", "Slice", suffix, label, target, metric, lambda v: v.plot_slice
                )
            )
            plots.append(
                _per_target(
                    study,
                    "parallel_coordinate",
                    "Parallel coordinates",
                    suffix,
                    label,
                    target,
                    metric,
                    lambda v: v.plot_parallel_coordinate,
                )
            )
        if len(params) >= 2:
            pair = _top_two(study, complete, params, target)
            plots.append(
                _per_target(
                    study,
                    "contour",
                    f"Contour of {pair[0]} and {pair[1]}",
                    suffix,
                    label,
                    target,
                    metric,
                    lambda v: v.plot_contour,
                    params=pair,
                )
            )
        elif params:
            skipped[f"contour{suffix}"] = (
                f"needs two searched parameters, the study has one ({params[0]})"
            )
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        plots.append(
            _Plot(
                "intermediate_values",
                "Intermediate values (per epoch)",
                lambda v: v.plot_intermediate_values(study),
                lambda v: v.plot_intermediate_values(study),
            )
        )
    else:
        skipped["intermediate_values"] = "no trial reported per-epoch values (pruning is off)"
    return plots


def _per_target(
    study: optuna.Study,
    name: str,
    title: str,
    suffix: str,
    label: str,
    target: Target,
    metric: str,
    pick: Callable[[Any], Callable[..., Any]],
    **kwargs: Any,
) -> _Plot:
    # The same call for both libraries: optuna.visualization and .matplotlib share signatures.
    extra = {"target": target, "target_name": metric, **kwargs}
    return _Plot(
        name + suffix,
        title + label,
        lambda v: pick(v)(study, **extra),
        lambda v: pick(v)(study, **extra),
    )


def _objective(i: int) -> Callable[[FrozenTrial], float]:
    def value(trial: FrozenTrial) -> float:
        return float(trial.values[i])

    return value


def _params_by_frequency(complete: list[FrozenTrial]) -> list[str]:
    """Parameter names of the complete trials, the most often present first (conditional last)."""
    counts: dict[str, int] = {}
    for trial in complete:
        for name in trial.params:
            counts[name] = counts.get(name, 0) + 1
    return sorted(counts, key=lambda n: (-counts[n], n))


def _top_two(
    study: optuna.Study, complete: list[FrozenTrial], params: list[str], target: Target
) -> list[str]:
    """The two most important parameters for the contour; the two most frequent when the
    importances cannot be computed (too few trials, a constant objective)."""
    if len(complete) >= 2:
        try:
            from optuna.importance import get_param_importances

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ranked = list(get_param_importances(study, target=target))
            if len(ranked) >= 2:
                return ranked[:2]
        except Exception:  # only a preference: fall back to frequency
            pass
    return params[:2]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "objective"


# -- drawing -------------------------------------------------------------------------------------
@contextmanager
def _optuna_log() -> Iterator[list[str]]:
    """Collect what Optuna logs while drawing (e.g. "Param lr unique value length is less than
    2.") instead of printing it: the report shows it under the figure it concerns."""
    logger = logging.getLogger("optuna")
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    saved_handlers, saved_level, saved_propagate = (
        logger.handlers[:],
        logger.level,
        logger.propagate,
    )
    logger.handlers = [_Collect(logging.WARNING)]
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.handlers, logger.propagate = saved_handlers, saved_propagate
        logger.setLevel(saved_level)


def _draw_plotly(plots: list[_Plot], skipped: dict[str, str], log: list[str]) -> None:
    """Each plot as a plotly ``<div>`` (no plotly.js: the page includes it once)."""
    import optuna.visualization as vis

    if not plots or not vis.is_available():
        if plots:
            skipped["interactive figures"] = "plotly is not installed: the report shows PNGs"
        return
    import plotly.io as pio

    for plot in plots:
        del log[:]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = plot.plotly(vis)
            fig.update_layout(title=plot.title)
            plot.html = pio.to_html(
                fig,
                full_html=False,
                include_plotlyjs=False,
                div_id=f"fig-{plot.name}",
                config={"displaylogo": False, "responsive": True},
            )
        except Exception as exc:  # a plot never fails the report
            skipped[f"{plot.name} (interactive)"] = _reason(exc)
        plot.notes.extend(m for m in log if m not in plot.notes)


def _draw_matplotlib(plots: list[_Plot], skipped: dict[str, str], log: list[str]) -> None:
    """Each plot as PNG bytes, via optuna.visualization.matplotlib (see the module doc)."""
    if not plots:
        return
    import matplotlib

    # pyplot picks a GUI backend when a display is there; a report needs none. Only when no one
    # (the user, MPLBACKEND, a notebook) chose one already: that choice is theirs.
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as mvis

    from hpo.tracking.plots import figure_png

    # rc_context undoes Optuna's plt.style.use("ggplot"), which would otherwise restyle the
    # trial plots this process draws afterwards.
    with matplotlib.rc_context():
        for plot in plots:
            del log[:]
            figure = None
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # ExperimentalWarning on every call
                    axes = plot.matplotlib(mvis)
                    figure = _figure_of(axes)
                    plot.png = figure_png(figure)
            except Exception as exc:  # a plot never fails the report
                skipped[f"{plot.name} (PNG)"] = _reason(exc)
            finally:
                if figure is not None:
                    plt.close(figure)
                else:
                    plt.close("all")  # a figure made before the error is not reachable otherwise
            plot.notes.extend(m for m in log if m not in plot.notes)


def _figure_of(axes: Any) -> Any:
    """The figure of what Optuna returns: one Axes, or an array of them (slice, contour)."""
    import numpy as np

    if isinstance(axes, np.ndarray):
        axes = axes.flat[0]
    return axes.figure


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- the page ------------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.COMPLETE td.state { color: #1a7f37; } tr.PRUNED td.state { color: #9a6700; }
tr.FAIL td.state { color: #cf222e; } tr.best { background: #eef6ff; }
.figure { margin: 1em 0; overflow-x: auto; } .note { color: #666; font-size: 0.85em; }
.warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: 0.6em 1em; }
.ok { background: #eefbee; border-left: 4px solid #2da44e; padding: 0.6em 1em; }
img { max-width: 100%; } .images img { max-width: 48%; margin: 0 1% 1% 0; }
"""


def _page(title: str, head: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n{head}\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def _report_page(
    study: optuna.Study,
    trials: list[FrozenTrial],
    complete: list[FrozenTrial],
    names: list[str],
    plots: list[_Plot],
    skipped: dict[str, str],
    best_run_plots: Mapping[str, bytes] | None,
    chance: ChanceCheck | None,
) -> str:
    from hpo.study import best_trials

    best = sorted(best_trials(study), key=lambda t: t.number)
    parts = [f"<h1>Study {html.escape(study.study_name)}</h1>"]
    parts.append(_summary(study, trials, names, best))
    if chance is not None:
        css = "warn" if chance.within_noise else "ok"
        parts.append(f'<p class="{css}">{html.escape(chance.message())}</p>')
    if len(names) > 1 and best:
        parts.append(_pareto_section(best, names))
    if best:
        parts.append(_best_section(best, names, best_run_plots))
    interactive = any(p.html for p in plots)
    if plots:
        parts.append("<h2>Optuna figures</h2>")
    for plot in plots:
        if plot.html:
            figure = plot.html
        elif plot.png:
            figure = _img(plot.png, plot.title)
        else:
            continue
        notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in plot.notes)
        parts.append(f'<div class="figure" id="{plot.name}">{figure}{notes}</div>')
    if skipped:
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
            for k, v in skipped.items()
        )
        parts.append(f"<h2>Skipped</h2><table><tr><th>plot</th><th>why</th></tr>{rows}</table>")
    parts.append(_trials_table(trials, names, {t.number for t in best}))
    parts.append(
        f'<p class="note">Written by hpo on {datetime.now().isoformat(timespec="seconds")}; '
        "self-contained (no network needed).</p>"
    )
    head = ""
    if interactive:
        import plotly.offline

        # plotly.js once for every figure; inline, so the page works offline and in MLflow's UI.
        head = f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>'
    return _page(f"Study {study.study_name}", head, "\n".join(parts))


def _summary(
    study: optuna.Study, trials: list[FrozenTrial], names: list[str], best: list[FrozenTrial]
) -> str:
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    objectives = ", ".join(
        f"{n} ({d.name.lower()})" for n, d in zip(names, study.directions, strict=True)
    )
    shown = ", ".join(f"{counts[s]} {s.lower()}" for s in sorted(counts)) or "none"
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    rows = [
        ("study", study.study_name),
        ("objectives", objectives),
        ("trials", f"{len(trials)}: {shown}"),
    ]
    if starts and ends:
        rows.append(("ran", f"{min(starts):%Y-%m-%d %H:%M:%S} – {max(ends):%Y-%m-%d %H:%M:%S}"))
    if not best:
        rows.append(("best", "no trial has completed yet"))
    elif len(names) == 1:
        rows.append(("best value", f"{_fmt(best[0].value)} (trial {best[0].number})"))
        rows.append(("best params", _params_text(best[0].params)))
    else:
        rows.append(
            ("Pareto front", f"{len(best)} trials: {', '.join(str(t.number) for t in best)}")
        )
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<h2>Summary</h2><table>{body}</table>"


def _pareto_section(front: list[FrozenTrial], names: list[str]) -> str:
    """The Pareto front of a multi-objective study: each trial's objective values and parameters,
    by the first objective (then trial number), so the trade-off reads row by row."""

    def order(trial: FrozenTrial) -> tuple[float, int]:
        first = (trial.values or [math.nan])[0]
        return (first if not math.isnan(first) else math.inf, trial.number)

    head = ["#", *names, "params", "MLflow run"]
    rows = []
    for trial in sorted(front, key=order):
        values = list(trial.values or [])
        cells = [f'<td class="num">{trial.number}</td>']
        cells += [
            f'<td class="num">{_fmt(values[i]) if i < len(values) else ""}</td>'
            for i in range(len(names))
        ]
        cells.append(f"<td>{html.escape(_params_text(trial.params))}</td>")
        cells.append(f"<td>{html.escape(str(trial.user_attrs.get('mlflow_run_id', '')))}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return (
        f'<h2 id="pareto-front">Pareto front: {len(front)} trials</h2>'
        '<p class="note">No other complete trial is at least as good in every objective and '
        "better in one.</p>"
        f"<table><tr>{header}</tr>{''.join(rows)}</table>"
    )


def _best_section(
    best: list[FrozenTrial], names: list[str], best_run_plots: Mapping[str, bytes] | None
) -> str:
    trial = best[0]
    which = "Best trial" if len(names) == 1 else "A Pareto-optimal trial"
    metrics = {
        k: v
        for k, v in sorted(trial.user_attrs.items())
        if k.startswith(_METRIC_PREFIXES) and isinstance(v, int | float) and not isinstance(v, bool)
    }
    for name, value in zip(names, trial.values or [], strict=False):
        metrics.setdefault(name, value)
    rows = "".join(
        f'<tr><th>{html.escape(k)}</th><td class="num">{_fmt(v)}</td></tr>'
        for k, v in metrics.items()
    )
    parts = [f"<h2>{which}: {trial.number}</h2>"]
    if "mlflow_run_id" in trial.user_attrs:
        parts.append(
            f'<p class="note">MLflow run {html.escape(str(trial.user_attrs["mlflow_run_id"]))}</p>'
        )
    parts.append(f"<table>{rows}</table>" if rows else '<p class="note">no metrics recorded</p>')
    images = [_img(data, name) for name, data in (best_run_plots or {}).items() if data]
    if images:
        parts.append(f'<div class="images">{"".join(images)}</div>')
    return "\n".join(parts)


def _trials_table(trials: list[FrozenTrial], names: list[str], best: set[int]) -> str:
    params: list[str] = []
    for trial in trials:  # the union: conditional parameters get a column, blank where unused
        params.extend(p for p in trial.params if p not in params)
    head = ["#", "state", *names, *params, "duration (s)", "note"]
    rows = []
    for trial in sorted(trials, key=lambda t: t.number):
        values = list(trial.values or [])
        cells = [
            f'<td class="num">{trial.number}</td>',
            f'<td class="state">{trial.state.name}</td>',
        ]
        cells += [
            f'<td class="num">{_fmt(values[i]) if i < len(values) else ""}</td>'
            for i in range(len(names))
        ]
        cells += [
            f"<td>{html.escape(_fmt(trial.params[p])) if p in trial.params else ''}</td>"
            for p in params
        ]
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        cells.append(f'<td class="num">{_fmt(duration)}</td>')
        note = str(trial.user_attrs.get("error") or trial.user_attrs.get("pruned_reason") or "")
        cells.append(f"<td>{html.escape(note[:_NOTE_CHARS])}</td>")
        css = f"{trial.state.name}{' best' if trial.number in best else ''}"
        rows.append(f'<tr class="{css}">{"".join(cells)}</tr>')
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<h2>Trials</h2><table><tr>{header}</tr>{''.join(rows)}</table>"


def _img(data: bytes, alt: str) -> str:
    """An ``<img>`` of PNG or SVG bytes (told apart by their content), embedded as a data URI."""
    encoded = base64.b64encode(data).decode("ascii")
    mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/svg+xml"
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{encoded}">'


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()) or "none"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value.is_integer() and abs(value) >= 1e4:
            return f"{int(value):,}"  # counts (parameters) read better whole
        return f"{value:.4g}"
    return str(value)
