"""The live progress display of ``hpo study start``: a bar with the best value so far."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

if TYPE_CHECKING:
    import optuna

    from hpo.spec import StudySpec


class StudyProgress:
    """A context manager that shows trial progress; silent when disabled or not on a terminal."""

    def __init__(
        self, spec: StudySpec, *, enabled: bool = True, console: Console | None = None
    ) -> None:
        self.spec = spec
        self.console = console or Console(stderr=True)
        # Outside a terminal (CI, logs) a bar redraws into garbage: print one line per trial.
        self.live = enabled and self.console.is_terminal
        self.lines = enabled and not self.live
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[best]}"),
            console=self.console,
            transient=False,
        )
        self.task: TaskID | None = None
        self._start_done = 0
        self._last_done = -1

    def __enter__(self) -> StudyProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.task is not None:
            self.progress.stop()

    def start(self, study: optuna.Study, todo: int) -> None:
        """Called once the study is open, with the number of trials this run will do."""
        from hpo.study import finished_count

        self._start_done = self._last_done = finished_count(study)
        if self.live:
            self.progress.start()
            self.task = self.progress.add_task(self.spec.name, total=todo, best="")
        elif self.lines:
            self.console.print(f"{self.spec.name}: running {todo} trials")

    def update(self, study: optuna.Study) -> None:
        """Poll the storage (``--workers``: the trials run in other processes)."""
        from hpo.study import finished_count

        done = finished_count(study)
        best = _best_text(study, self.spec.objective_metrics)
        if self.task is not None:
            self.progress.update(self.task, completed=done - self._start_done, best=best)
        elif self.lines and done != self._last_done:
            self.console.print(f"{done}/{self.spec.trials} trials finished {best}", highlight=False)
        self._last_done = done

    def on_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback: advance the bar and show the best value so far."""
        best = _best_text(study, self.spec.objective_metrics)
        if self.task is not None:
            self.progress.update(self.task, advance=1, best=best)
        elif self.lines:
            value = "" if trial.values is None else ", ".join(f"{v:.4g}" for v in trial.values)
            self.console.print(
                f"trial {trial.number:>4} {trial.state.name.lower():<8} {value:<12} {best}",
                highlight=False,
            )


def _best_text(study: optuna.Study, metrics: list[str]) -> str:
    from optuna.trial import TrialState

    if len(metrics) > 1 or not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return ""
    best = study.best_trial
    return f"best {metrics[0]} {best.value:.4f} (trial {best.number})"
