"""The live view of ``hpo study start``: a progress bar and a table of the most recent trials.

On a terminal the bar and the table redraw in place (number, state, value, best so far,
duration of the last :data:`RECENT_TRIALS` trials). Outside a terminal (CI, logs, a pipe) a
redrawn display turns into garbage, so the same facts are printed as one line per trial.
``--quiet`` shows neither.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

if TYPE_CHECKING:
    import optuna

    from hpo.spec import StudySpec

#: Rows of the live table.
RECENT_TRIALS = 8
_STATE_STYLE = {"complete": "green", "pruned": "yellow", "fail": "red"}


@dataclass(frozen=True)
class TrialRow:
    """One finished trial as the live view shows it."""

    number: int
    state: str
    value: str
    best: str
    seconds: float | None

    def duration(self) -> str:
        """Seconds with one decimal, or blank when unknown."""
        return "" if self.seconds is None else f"{self.seconds:.1f}s"


class StudyProgress:
    """A context manager that shows trial progress; silent when disabled."""

    def __init__(
        self, spec: StudySpec, *, enabled: bool = True, console: Console | None = None
    ) -> None:
        self.spec = spec
        self.console = console or Console(stderr=True)
        self.live = enabled and self.console.is_terminal
        self.lines = enabled and not self.live
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[best]}"),
            console=self.console,
        )
        self.recent: deque[TrialRow] = deque(maxlen=RECENT_TRIALS)
        self.task: TaskID | None = None
        self._display: Live | None = None
        self._start_done = 0
        self._last_done = -1
        self._seen: set[int] = set()

    def __enter__(self) -> StudyProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._display is not None:
            self._display.stop()

    def __rich__(self) -> RenderableType:
        """The bar above the table of recent trials (what :class:`~rich.live.Live` redraws)."""
        return Group(self.progress, self.table())

    def table(self) -> Table:
        """The recent trials, oldest first."""
        single = len(self.spec.objective_metrics) == 1
        value_name = self.spec.objective_metrics[0] if single else "values"
        table = Table(box=None, pad_edge=False, header_style="bold")
        for title in ("trial", "state", value_name, "best so far", "duration"):
            table.add_column(title, justify="left" if title == "state" else "right")
        for row in self.recent:
            style = _STATE_STYLE.get(row.state, "")
            table.add_row(
                str(row.number), row.state, row.value, row.best, row.duration(), style=style
            )
        return table

    def start(self, study: optuna.Study, todo: int) -> None:
        """Called once the study is open, with the number of trials this run will do."""
        from hpo.study import finished_count

        self._start_done = self._last_done = finished_count(study)
        # Trials finished before this run are history, not news.
        self._seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        if self.live:
            self.task = self.progress.add_task(self.spec.name, total=todo, best="")
            self._display = Live(self, console=self.console, refresh_per_second=4)
            self._display.start()
        elif self.lines:
            self.console.print(f"{self.spec.name}: running {todo} trials")

    def update(self, study: optuna.Study) -> None:
        """Poll the storage (``--workers``: the trials run in other processes)."""
        from hpo.study import finished_count

        done = finished_count(study)
        if done != self._last_done:
            new = [
                t
                for t in study.get_trials(deepcopy=False)
                if t.state.is_finished() and t.number not in self._seen
            ]
            for trial in sorted(
                new, key=lambda t: (t.datetime_complete is None, t.datetime_complete)
            ):
                self._record(study, trial)
        if self.task is not None:
            self.progress.update(
                self.task, completed=done - self._start_done, best=_best_text(study, self.spec)
            )
        self._last_done = done

    def on_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback: add the trial to the table and advance the bar."""
        self._record(study, trial)
        if self.task is not None:
            self.progress.update(self.task, advance=1, best=_best_text(study, self.spec))

    def _record(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._seen.add(trial.number)
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        row = TrialRow(
            number=trial.number,
            state=trial.state.name.lower(),
            value="" if trial.values is None else ", ".join(f"{v:.4g}" for v in trial.values),
            best=_best_value(study, self.spec),
            seconds=duration,
        )
        self.recent.append(row)
        if self.lines:
            self.console.print(
                f"trial {row.number:>4} {row.state:<8} {row.value:<12} "
                f"best {row.best or '-':<8} {row.duration():>7}",
                highlight=False,
            )


def _best_value(study: optuna.Study, spec: StudySpec) -> str:
    """The best value so far as text ("" for none yet, or a multi-objective study)."""
    from optuna.trial import TrialState

    if spec.multi_objective or not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return ""
    value = study.best_value
    return "" if value is None or math.isnan(value) else f"{value:.4g}"


def _best_text(study: optuna.Study, spec: StudySpec) -> str:
    """The bar's trailing text: the best value and its trial."""
    from optuna.trial import TrialState

    if spec.multi_objective or not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return ""
    best = study.best_trial
    return f"best {spec.objective_metrics[0]} {best.value:.4f} (trial {best.number})"
