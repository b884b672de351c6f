"""The study report: files, a self-contained page, robustness, and logging to the parent run."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from hpo.insights import chance_check
from hpo.study_report import (
    ARTIFACT_PATH,
    REPORT_FILE,
    StudyReport,
    log_study_report,
    study_metric_names,
    write_study_report,
)
from hpo.tracking.plots import confusion_matrix_figure, figure_png

optuna.logging.set_verbosity(optuna.logging.WARNING)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _objective(trial: optuna.Trial) -> float:
    """A cheap stand-in for training: conditional momentum, per-epoch values, pruned trials."""
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    optimizer = trial.suggest_categorical("optimizer", ["adam", "sgd"])
    depth = trial.suggest_int("depth", 1, 4)
    if optimizer == "sgd":
        trial.suggest_float("momentum", 0.0, 0.99)
    accuracy = 0.0
    for epoch in range(5):
        accuracy = min(0.99, 0.5 + 0.4 * (1 - np.exp(-epoch * lr * 50)) + 0.01 * depth)
        trial.report(accuracy, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    trial.set_user_attr("val_accuracy", accuracy)
    trial.set_user_attr("val_f1", accuracy - 0.01)
    trial.set_user_attr("mlflow_run_id", f"run{trial.number}")
    return accuracy


def _study(n_trials: int = 12, name: str = "demo") -> optuna.Study:
    study = optuna.create_study(
        study_name=name,
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    )
    study.optimize(_objective, n_trials=n_trials)
    return study


def _best_run_plots() -> dict[str, bytes]:
    """An SVG plot as trials log them now, and a PNG as runs logged before did."""
    from matplotlib.figure import Figure

    svg = confusion_matrix_figure([0, 1, 1, 0], [0, 1, 0, 0], ["a", "b"])
    old = Figure(figsize=(2, 2))
    old.add_subplot().plot([0, 1], [0, 1])
    return {"confusion_matrix.svg": svg.encode(), "roc_curves.png": figure_png(old)}


def _check_files(report: StudyReport) -> None:
    assert report.files[REPORT_FILE] == report.html_path
    for rel, path in report.files.items():
        assert path.is_file() and path.stat().st_size > 0, rel
        assert path == report.out_dir / rel
        if rel.endswith(".png"):
            assert path.read_bytes()[:8] == PNG_MAGIC, rel


def _no_external_scripts(page: str) -> None:
    """Self-contained: no script, stylesheet or image loaded from the network."""
    assert not re.search(r"<script[^>]+src=[\"']?(https?:)?//", page, re.I)
    assert not re.search(r"<link[^>]+href=[\"']?(https?:)?//", page, re.I)
    assert not re.search(r"<img[^>]+src=[\"']?(https?:)?//", page, re.I)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[optuna.Study, StudyReport]:
    """One 12-trial report (with per-plot HTML), shared by the tests that only read it."""
    import matplotlib

    study = _study()
    before = dict(matplotlib.rcParams)
    report = write_study_report(
        study,
        tmp_path_factory.mktemp("report"),
        metric_names=["val_accuracy"],
        best_run_plots=_best_run_plots(),
        chance=chance_check(study.best_value, np.arange(450) % 10, 10, n_trials=12),
        plot_html=True,
    )
    study.set_user_attr("rc_unchanged", dict(matplotlib.rcParams) == before)
    return study, report


def test_report_files_exist_and_pngs_are_pngs(
    full_report: tuple[optuna.Study, StudyReport],
) -> None:
    _, report = full_report
    _check_files(report)
    for name in (
        "optimization_history",
        "param_importances",
        "parallel_coordinate",
        "slice",
        "contour",
        "intermediate_values",
    ):
        assert f"plots/{name}.png" in report.files, report.skipped
    assert report.skipped == {}


def test_report_page_content(full_report: tuple[optuna.Study, StudyReport]) -> None:
    study, report = full_report
    page = report.html_path.read_text()
    body = page.split("</head>", 1)[1]  # plotly.js in the head has data URIs of its own
    assert "Study demo" in page
    assert f"{study.best_value:.4g}" in page  # the best value
    assert f"(trial {study.best_trial.number})" in page
    assert "maximize" in page and "val_accuracy" in page
    # the best run's images (one SVG, one PNG) and the figures' PNG-free interactive versions
    assert body.count('src="data:image/svg+xml;base64,') == 1
    assert body.count('src="data:image/png;base64,') == 1
    assert 'id="fig-optimization_history"' in page and 'id="fig-contour"' in page
    assert page.count("Plotly.newPlot") >= 6
    _no_external_scripts(page)
    # the trials table: every trial, pruned ones too, with the conditional parameter's column
    n_pruned = len(study.get_trials(states=(TrialState.PRUNED,)))
    assert page.count('<tr class="PRUNED') == n_pruned
    assert page.count('<tr class="COMPLETE') == len(study.trials) - n_pruned
    assert "<th>momentum</th>" in page and "duration (s)" in page
    assert "above chance" in page


def test_report_without_interactive_html_is_small_and_still_self_contained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without plotly (not installed), figures are embedded as PNGs.
    import optuna.visualization as vis

    monkeypatch.setattr(vis, "is_available", lambda: False)
    report = write_study_report(_study(6), tmp_path, metric_names=["val_accuracy"])
    page = report.html_path.read_text()
    n_png = sum(k.endswith(".png") for k in report.files)
    assert page.count('src="data:image/png;base64,') == n_png
    assert "plotly is not installed" in page
    assert report.html_path.stat().st_size < 2_000_000
    _no_external_scripts(page)


def test_per_plot_html_share_one_plotly_js(full_report: tuple[optuna.Study, StudyReport]) -> None:
    _, report = full_report
    assert "plots/plotly.min.js" in report.files
    page = report.files["plots/slice.html"].read_text()
    assert '<script src="plotly.min.js"></script>' in page
    assert report.files["plots/slice.html"].stat().st_size < 500_000


def test_zero_complete_trials(tmp_path: Path) -> None:
    study = optuna.create_study()
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"error": "CUDA out of memory"}))
    study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={0: 0.3}))
    report = write_study_report(study, tmp_path, metric_names=["val_loss"])
    _check_files(report)
    assert list(report.files) == [REPORT_FILE]
    page = report.html_path.read_text()
    assert "no trial has completed yet" in page
    assert "CUDA out of memory" in page


def test_empty_study(tmp_path: Path) -> None:
    report = write_study_report(optuna.create_study(), tmp_path, metric_names=[])
    assert "objective_0" in report.html_path.read_text()


def test_one_trial_single_param(tmp_path: Path) -> None:
    study = optuna.create_study()
    study.add_trial(
        create_trial(
            params={"lr": 0.1}, distributions={"lr": FloatDistribution(1e-3, 1.0)}, value=0.5
        )
    )
    report = write_study_report(study, tmp_path, metric_names=["val_loss"])
    _check_files(report)
    assert "plots/optimization_history.png" in report.files
    assert "at least 2 complete trials" in report.skipped["param_importances"]
    assert "two searched parameters" in report.skipped["contour"]
    assert "Skipped" in report.html_path.read_text()


def test_no_params(tmp_path: Path) -> None:
    study = optuna.create_study()
    study.optimize(lambda t: 1.0, n_trials=3)
    report = write_study_report(study, tmp_path, metric_names=["val_loss"])
    _check_files(report)
    assert report.skipped["param_importances"] == "no searched parameter"


def test_all_categorical_and_constant_objective(tmp_path: Path) -> None:
    dists: dict[str, optuna.distributions.BaseDistribution] = {
        "optimizer": CategoricalDistribution(["adam", "sgd", "rmsprop"]),
        "batch_norm": CategoricalDistribution([True, False]),
    }
    study = optuna.create_study(direction="maximize")
    for i in range(8):
        params = {"optimizer": ["adam", "sgd", "rmsprop"][i % 3], "batch_norm": i % 2 == 0}
        study.add_trial(create_trial(params=params, distributions=dists, value=0.5))
    report = write_study_report(study, tmp_path, metric_names=["val_accuracy"])
    _check_files(report)
    assert "plots/contour.png" in report.files or "contour" in str(report.skipped)


def test_conditional_params_and_pruned_without_values(tmp_path: Path) -> None:
    lr = FloatDistribution(1e-4, 1e-1, log=True)
    study = optuna.create_study()
    for i in range(10):
        params: dict[str, object] = {"lr": 10 ** -(1 + i % 3), "family": ["cnn", "vgg"][i % 2]}
        dists: dict[str, optuna.distributions.BaseDistribution] = {
            "lr": lr,
            "family": CategoricalDistribution(["cnn", "vgg"]),
        }
        if i % 2 == 0:
            params["depth"], dists["depth"] = 2 + i % 3, IntDistribution(2, 4)
        else:
            params["vgg_config"] = "vgg11"
            dists["vgg_config"] = CategoricalDistribution(["vgg11", "vgg13"])
        study.add_trial(
            create_trial(
                params=params,
                distributions=dists,
                value=0.1 * i,
                intermediate_values={0: 1.0, 1: 0.5 + 0.01 * i},
            )
        )
    study.add_trial(create_trial(state=TrialState.PRUNED))
    report = write_study_report(study, tmp_path, metric_names=["val_loss"])
    _check_files(report)
    assert "plots/intermediate_values.png" in report.files


def test_multi_objective(tmp_path: Path) -> None:
    def objective(trial: optuna.Trial) -> tuple[float, float]:
        width = trial.suggest_int("width", 8, 256, log=True)
        dropout = trial.suggest_float("dropout", 0.0, 0.5)
        return 1 - 1 / width - dropout / 10, float(width * 100)

    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    study.optimize(objective, n_trials=10)
    report = write_study_report(study, tmp_path, metric_names=["val_accuracy", "n_params"])
    _check_files(report)
    for rel in (
        "plots/pareto_front.png",
        "plots/param_importances.png",
        "plots/optimization_history_val_accuracy.png",
        "plots/optimization_history_n_params.png",
        "plots/contour_n_params.png",
    ):
        assert rel in report.files, (rel, report.skipped)
    # a multi-objective study cannot prune: nothing reports per-epoch values
    assert list(report.skipped) == ["intermediate_values"]
    page = report.html_path.read_text()
    assert "Pareto front" in page and "Pareto-optimal trial" in page
    # the front's own section: one row per Pareto-optimal trial, with each objective by name
    section = page.split('<h2 id="pareto-front">', 1)[1].split("<h2", 1)[0]
    front = study.best_trials
    assert section.startswith(f"Pareto front: {len(front)} trials")
    assert "<th>val_accuracy</th><th>n_params</th>" in section
    assert section.count("<tr>") == len(front) + 1  # the header and the trials
    for t in front:
        assert f'<td class="num">{t.number}</td>' in section


def test_four_objectives_skip_the_pareto_front(tmp_path: Path) -> None:
    study = optuna.create_study(directions=["minimize"] * 4)
    study.optimize(lambda t: (0.0, 1.0, 2.0, 3.0), n_trials=2)
    report = write_study_report(study, tmp_path, metric_names=["a", "b", "c", "d"])
    assert "Pareto front is drawn for 2 or 3" in report.skipped["pareto_front"]


def test_style_and_figures_do_not_leak(full_report: tuple[optuna.Study, StudyReport]) -> None:
    import matplotlib.pyplot as plt

    study, _ = full_report
    assert study.user_attrs["rc_unchanged"]  # Optuna's ggplot style is undone
    assert plt.get_fignums() == []


def test_study_metric_names_falls_back() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    assert study_metric_names(study) == ["objective_0", "objective_1"]
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(["acc", "size"])
    assert study_metric_names(study) == ["acc", "size"]


def test_log_study_report_puts_artifacts_on_the_parent_run(
    full_report: tuple[optuna.Study, StudyReport], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpo.tracking.runs import StudyTracker

    monkeypatch.chdir(tmp_path)
    _, report = full_report
    tracker = StudyTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "report-study")
    parent = tracker.ensure_parent_run(None, tags={}, params={})
    log_study_report(report, tracker)
    client = tracker.client
    top = {a.path for a in client.list_artifacts(parent, ARTIFACT_PATH)}
    assert f"{ARTIFACT_PATH}/{REPORT_FILE}" in top
    plots = {a.path for a in client.list_artifacts(parent, f"{ARTIFACT_PATH}/plots")}
    assert f"{ARTIFACT_PATH}/plots/slice.png" in plots
    assert len(plots) == len(report.files) - 1  # everything but report.html
    local = client.download_artifacts(parent, f"{ARTIFACT_PATH}/{REPORT_FILE}", str(tmp_path))
    assert Path(local).read_bytes() == report.html_path.read_bytes()
