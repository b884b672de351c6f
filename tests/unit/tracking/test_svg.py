"""The SVG writer's scales: ticks a reader expects, colours, escaping, broken lines."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from hpo.tracking.svg import (
    Axes,
    LegendEntry,
    Svg,
    class_colors,
    interpolate,
    nice_ticks,
    padded_range,
    tick_label,
)


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (0.47, 0.96, [0.5, 0.6, 0.7, 0.8, 0.9]),
        (-0.5, 20.5, [0.0, 5.0, 10.0, 15.0, 20.0]),
        (1.0, 3.0, [1.0, 1.5, 2.0, 2.5, 3.0]),
    ],
)
def test_nice_ticks_are_round_and_inside(low: float, high: float, expected: list[float]) -> None:
    assert nice_ticks(low, high, 6) == pytest.approx(expected)


def test_integer_ticks_for_epochs() -> None:
    ticks = nice_ticks(0.9, 3.1, 8, integer=True)
    assert ticks == [1.0, 2.0, 3.0]
    assert all(t == int(t) for t in nice_ticks(0.05, 200.0, 8, integer=True))


def test_degenerate_ranges() -> None:
    assert nice_ticks(2.0, 2.0) == [2.0]
    assert nice_ticks(math.nan, 1.0) == []
    assert padded_range([3.0, 3.0]) == (2.5, 3.5)
    assert padded_range([math.nan]) == (0.0, 1.0)
    assert padded_range([0.0, 10.0, math.nan]) == (-0.5, 10.5)


def test_tick_labels_have_the_decimals_of_the_step() -> None:
    assert [tick_label(t, [0.0, 0.25]) for t in (0.0, 0.25, 0.5)] == ["0", "0.25", "0.50"]
    assert tick_label(0.4, [0.2, 0.4]) == "0.4"
    assert tick_label(15.0, [5.0, 10.0]) == "15"
    assert tick_label(-0.0, [0.0, 0.5]) == "0"


def test_colours() -> None:
    assert interpolate(["#000000", "#ffffff"], 0.5) == "#808080"
    assert interpolate(["#000000", "#ffffff"], 2.0) == "#ffffff"  # clipped
    assert interpolate(["#000000", "#ffffff"], math.nan) == "#000000"
    for n in (2, 10, 20, 40):
        colors = class_colors(n)
        assert len(set(colors)) == n


def test_a_document_with_a_line_broken_by_nan_and_a_legend_parses() -> None:
    doc = Svg(400, 300, 'a "title" <with> & marks')
    ax = Axes(doc, (50, 20, 300, 240), (0.0, 4.0), (0.0, 1.0))
    ax.series([0, 1, 2, 3, 4], [0.1, 0.2, math.nan, 0.4, 0.5], "#1f77b4", "a & b")
    ax.legend([LegendEntry("a & b", "#1f77b4"), LegendEntry("none", swatch="none")])
    root = ET.fromstring(doc.render())
    ns = "{http://www.w3.org/2000/svg}"
    assert root.find(f"{ns}title") is not None
    assert root.find(f"{ns}title").text == 'a "title" <with> & marks'  # type: ignore[union-attr]
    (series,) = [g for g in root.iter(f"{ns}g") if g.get("class") == "series"]
    assert series.get("data-label") == "a & b"
    assert series.get("data-y") == "0.1 0.2 nan 0.4 0.5"
    assert len(series.findall(f"{ns}polyline")) == 2
    # data (0, 0.1) sits at the left edge, 10 % up from the bottom
    first = series.find(f"{ns}polyline").get("points", "").split()[0]  # type: ignore[union-attr]
    assert first == "50,236"
    entries = [t.text for t in root.iter(f"{ns}text") if t.get("class") == "legend-entry"]
    assert entries == ["a & b", "none"]
