"""Study files: parsing, defaults, and a clear one-line message for each kind of mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpo.errors import SpecError
from hpo.spec import diff_identity, json_schema, load_spec, parse_spec

MINIMAL = "name: tiny\ndata: {source: sklearn, name: iris}\ntrials: 3\n"


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_three_line_file_gets_defaults() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.name == "tiny"
    assert spec.model.family == "mlp"
    assert spec.objective_metrics == ["val_accuracy"]
    assert spec.objective_directions == ["maximize"]
    assert spec.sampler.name == "tpe"
    assert spec.pruner_spec.name == "median"
    assert spec.train.epochs == 10
    assert spec.data.options == {"name": "iris"}


def test_empty_file_uses_the_file_name_and_digits(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "", "my-study.yaml"))
    assert spec.name == "my-study"
    assert spec.data.source == "sklearn"
    assert spec.data.options == {"name": "digits"}


def test_direction_follows_the_metric() -> None:
    spec = parse_spec(MINIMAL + "metric: val_loss\n")
    assert spec.objective_directions == ["minimize"]


def test_multi_objective() -> None:
    spec = parse_spec(MINIMAL + "metrics: [val_accuracy, n_params]\nsampler: {name: nsga2}\n")
    assert spec.multi_objective
    assert spec.objective_directions == ["maximize", "minimize"]
    assert spec.pruner_spec.name == "none"


def test_issue_example_parses() -> None:
    spec = load_spec(Path(__file__).parents[2] / "studies" / "quickstart.yaml")
    assert spec.name == "quickstart-digits-mlp"
    assert spec.search["momentum"].when == {"optimizer": "sgd"}
    assert spec.search["batch_norm"].choices == [True, False]  # type: ignore[union-attr]


BAD_SPECS = [
    # (file text, the parts the one-line message must contain)
    ("name: x\ntrials: [\n", ["invalid YAML", "line"]),
    ("- just\n- a list\n", ["must be a mapping"]),
    ("name: x\ntrails: 5\n", ["unknown field 'trails'", "did you mean 'trials'"]),
    ("name: x\ntrials: many\n", ["trials", "valid integer", '"many"']),
    ("name: x\ntrials: 0\n", ["trials", "greater than or equal to 1", "0"]),
    (
        "name: x\nsearch:\n  lr: {type: float, low: 0.1, high: 0.01}\n",
        ["search.lr", "'low' must be <= 'high'"],
    ),
    (
        "name: x\nsearch:\n  lr: {type: float, low: 0, high: 0.1, log: true}\n",
        ["search.lr", "needs 'low' > 0"],
    ),
    (
        "name: x\nsearch:\n  lr: {type: float, low: 0.01, high: 0.1, log: true, step: 0.01}\n",
        ["search.lr", "cannot be combined"],
    ),
    (
        "name: x\nsearch:\n  optimizer: {type: categorical, choices: []}\n",
        ["search.optimizer.choices", "at least 1"],
    ),
    (
        "name: x\nsearch:\n  momentum: {type: float, low: 0, high: 0.9, when: {optimiser: sgd}}\n",
        ["search.momentum.when", "'optimiser'"],
    ),
    (
        "name: x\nmodel: {family: transformer}\n",
        ["model.family", "unknown model family 'transformer'", "mlp"],
    ),
    (
        "name: x\nsearch:\n  optimizer: {type: categorical, choices: [adam, lbfgs]}\n",
        ["search.optimizer.choices.1", "lbfgs"],
    ),
    (
        "name: x\nsearch:\n  activation: {type: categorical, choices: [relu, swishy]}\n",
        ["search.activation.choices.1", "swishy"],
    ),
    ("name: x\nsampler: {name: bayes}\n", ["sampler.name", "'tpe'", '"bayes"']),
    ("name: x\npruner: {name: early}\n", ["pruner.name", '"early"']),
    ("name: x\ndata: {source: parquet}\n", ["data.source", "unknown data source 'parquet'"]),
    ("name: x\ndata: {source: sklearn, name: digts}\n", ["data", "digts", "did you mean 'digits'"]),
    (
        "name: x\ndata: {source: sklearn, name: iris, val_fraction: 1.5}\n",
        ["data.val_fraction", "1.5"],
    ),
    (
        "name: x\nsearch:\n  learning_rate: {type: float, low: 0.001, high: 0.1}\n",
        ["search.learning_rate", "unknown hyperparameter", "lr"],
    ),
    ("name: x\nfixed: {dropout: 2.0}\n", ["fixed.dropout", "2.0"]),
    (
        "name: x\nsearch:\n  dropout: {type: float, low: 0.0, high: 1.5}\n",
        ["search.dropout.high", "1.5"],
    ),
    ("name: x\nmetric: accuracy\n", ["metric", "unknown metric 'accuracy'", "val_accuracy"]),
    (
        "name: x\nmetrics: [val_accuracy, n_params]\npruner: {name: median}\n",
        ["pruner.name", "multi-objective"],
    ),
    (
        "name: x\nsampler: {name: grid}\nsearch:\n  lr: {type: float, low: 0.01, high: 0.1}\n",
        ["grid sampler needs 'step'"],
    ),
    ("name: 'bad name!'\n", ["name", "letters, digits"]),
    (
        "name: x\nsearch:\n  depth: {type: int, low: 1, high: 3}\nfixed: {depth: 2}\n",
        ["'depth' is both searched and fixed"],
    ),
    ("name: x\ntrain: {epochs: 0}\n", ["train.epochs", "0"]),
    ("name: x\ntrain: {epocs: 3}\n", ["train", "unknown field 'epocs'", "did you mean 'epochs'"]),
    ("name: x\nenqueue: [{lr: 0.1}]\n", ["enqueue.0.lr", "not a searched parameter"]),
]


@pytest.mark.parametrize(("text", "parts"), BAD_SPECS, ids=[p[1][0] for p in BAD_SPECS])
def test_bad_spec_gives_one_clear_line(tmp_path: Path, text: str, parts: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(str(path) + ":"), message
    assert "\n" not in message, message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def test_missing_file() -> None:
    with pytest.raises(SpecError, match="study file not found"):
        load_spec("no/such/file.yaml")


def test_identity_ignores_budget_and_sampler_but_not_the_space() -> None:
    base = parse_spec(MINIMAL + "search:\n  lr: {type: float, low: 0.001, high: 0.1, log: true}\n")
    more = parse_spec(
        MINIMAL.replace("trials: 3", "trials: 50") + "sampler: {name: random}\n"
        "search:\n  lr: {type: float, low: 0.001, high: 0.1, log: true}\n"
    )
    assert base.identity_hash() == more.identity_hash()
    wider = parse_spec(MINIMAL + "search:\n  lr: {type: float, low: 0.001, high: 0.5, log: true}\n")
    assert base.identity_hash() != wider.identity_hash()
    assert diff_identity(base.identity(), wider.identity()) == ["search.lr.high: 0.1 -> 0.5"]


def test_json_schema_describes_the_fields() -> None:
    schema = json_schema()
    assert {"name", "search", "data", "sampler", "pruner", "trials"} <= set(schema["properties"])
    json.dumps(schema)
