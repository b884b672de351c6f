"""A small SVG writer for the trial plots: a canvas, axes with linear scales and ticks, lines,
areas, rectangles, text and legends.

Why not matplotlib for the per-trial plots: every trial draws them, and on the 2 CPU cores that
also train, matplotlib took 0.64 s for the four plots of a 10-class trial (building the figures
0.31 s, Agg rendering 0.32 s, nearly all of it FreeType text layout), twice the training time of
the reference trial in ``benchmarks/overhead.py``. Writing the same plots as SVG text takes a few
milliseconds. MLflow's artifact viewer shows ``.svg`` files as images (it gives their blobs the
``image/svg+xml`` type), browsers draw the text crisply at any zoom, and a plot is a few KB of
text that can be searched and diffed.

What it does not do: text is not measured (there are no font metrics here); its width is
estimated at :data:`CHAR_WIDTH` of the font size per character, which is enough to size legends
and margins. Elements carry ``class`` names (``series``, ``legend-entry``, ``count`` …) and series
carry their data (``data-x``/``data-y``), so the numbers behind a plot can be read back from the
file, by a test or by a user.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from xml.sax.saxutils import escape as _escape
from xml.sax.saxutils import quoteattr

#: Fonts every browser has one of; the sizes below are in px (1 px = 1 pt at 72 dpi is close
#: enough at these sizes).
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
#: Estimated advance of one character, as a fraction of the font size (DejaVu Sans averages
#: ~0.55-0.6 for lower-case text and digits).
CHAR_WIDTH = 0.6
#: Matplotlib's default colour cycle (tab10) and its paired extension (tab20), as hex.
TAB10 = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
TAB20 = (
    "#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896",
    "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7",
    "#bcbd22", "#dbdb8d", "#17becf", "#9edae5",
)  # fmt: skip
#: ColorBrewer's sequential "Blues" (9 classes), light to dark.
BLUES = (
    "#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6",
    "#4292c6", "#2171b5", "#08519c", "#08306b",
)  # fmt: skip
#: Viridis at 9 evenly spaced points, for more classes than tab20 has colours.
VIRIDIS = (
    "#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c",
    "#28ae80", "#5ec962", "#addc30", "#fde725",
)  # fmt: skip


def num(value: float) -> str:
    """A coordinate with one decimal, without a trailing ``.0`` (keeps the files small)."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


#: A ``.0`` that ends a number in a list of points (``num``'s rule, applied to all at once).
_TRAILING_ZERO = re.compile(r"\.0(?=[, ]|$)")


def points_text(points: Iterable[tuple[float, float]]) -> str:
    """``x,y x,y …`` with each number as :func:`num` writes it, formatted in one pass: a ROC
    figure has thousands of points, and a call of ``num`` per number took most of its time."""
    return _TRAILING_ZERO.sub("", " ".join([f"{x:.1f},{y:.1f}" for x, y in points]))


def escape(text: object) -> str:
    """``text`` as XML character data."""
    return _escape(str(text))


def text_width(text: str, size: float) -> float:
    """Estimated width in px of ``text`` at font ``size`` (see the module doc)."""
    return len(text) * size * CHAR_WIDTH


def interpolate(colors: Sequence[str], t: float) -> str:
    """The colour at ``t`` in [0, 1] along ``colors`` (hex), linearly in RGB."""
    t = min(max(float(t), 0.0), 1.0) if math.isfinite(t) else 0.0
    position = t * (len(colors) - 1)
    i = min(int(position), len(colors) - 2)
    frac = position - i
    a, b = _rgb(colors[i]), _rgb(colors[i + 1])
    mixed = (round(x + (y - x) * frac) for x, y in zip(a, b, strict=True))
    return "#{:02x}{:02x}{:02x}".format(*mixed)


def class_colors(n: int) -> list[str]:
    """Distinct colours: tab10 up to 10 classes, tab20 up to 20, viridis beyond."""
    if n <= 10:
        return list(TAB10[:n])
    if n <= 20:
        return list(TAB20[:n])
    return [interpolate(VIRIDIS, i / max(n - 1, 1)) for i in range(n)]


def nice_ticks(low: float, high: float, target: int = 6, *, integer: bool = False) -> list[float]:
    """Round tick values covering [low, high]: steps of 1, 2, 2.5 or 5 times a power of ten,
    about ``target`` of them; whole numbers only with ``integer``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        return [low]
    raw = (high - low) / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = magnitude
    for factor in (1.0, 2.0, 2.5, 5.0, 10.0):
        step = factor * magnitude
        if step >= raw:
            break
    if integer:
        step = max(1.0, float(math.ceil(step)))
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    return [round(k * step, 10) for k in range(first, last + 1)]


def tick_label(value: float, ticks: Sequence[float]) -> str:
    """``value`` with as many decimals as the tick step needs (0.25 → 2, 0.2 → 1, 5 → 0)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(value) or 1.0
    decimals = 0
    while decimals < 6 and abs(round(step, decimals) - step) > 1e-9 * max(step, 1.0):
        decimals += 1
    text = f"{value:.{decimals}f}"
    return "0" if text.strip("-0.") == "" else text


def padded_range(values: Sequence[float], margin: float = 0.05) -> tuple[float, float]:
    """The finite values' range widened by ``margin`` of it each side (±0.5 for one value)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if high == low:
        return low - 0.5, high + 0.5
    pad = (high - low) * margin
    return low - pad, high + pad


@dataclass(frozen=True)
class LegendEntry:
    """One legend row: a swatch (``line``, ``dashed``, ``dotted``, ``box`` or ``none``) and text."""

    label: str
    color: str = "#000000"
    swatch: str = "line"
    width: float = 1.5


class Svg:
    """An SVG document of ``width`` x ``height`` px on a white background."""

    def __init__(self, width: float, height: float, title: str) -> None:
        self.width = width
        self.height = height
        self.title = title
        self._parts: list[str] = []

    def add(self, element: str) -> None:
        """Append raw SVG markup (already escaped)."""
        self._parts.append(element)

    @contextmanager
    def group(self, css_class: str, **attributes: str) -> Iterator[None]:
        """Elements added inside go into one ``<g class=…>``."""
        self.add(f'<g class="{css_class}"{_data(attributes)}>')
        try:
            yield
        finally:
            self.add("</g>")

    def line(
        self,
        x1: float,
        y1: float,
        x2: float,
        y2: float,
        color: str = "#000000",
        width: float = 1.0,
        dash: str | None = None,
        opacity: float | None = None,
    ) -> None:
        """A straight line in px."""
        style = _stroke(color, width, dash, opacity)
        self.add(f'<line x1="{num(x1)}" y1="{num(y1)}" x2="{num(x2)}" y2="{num(y2)}"{style}/>')

    def polyline(
        self,
        points: Sequence[tuple[float, float]],
        color: str,
        width: float = 1.5,
        dash: str | None = None,
        opacity: float | None = None,
    ) -> None:
        """Connected points in px."""
        coords = points_text(points)
        style = _stroke(color, width, dash, opacity)
        self.add(f'<polyline fill="none" points="{coords}"{style} stroke-linejoin="round"/>')

    def polygon(
        self, points: Sequence[tuple[float, float]], fill: str, css_class: str = "", **data: str
    ) -> None:
        """A filled area in px, with optional ``data-*`` attributes."""
        coords = points_text(points)
        self.add(
            f'<polygon{_class(css_class)} points="{coords}" fill="{fill}" stroke="#ffffff" '
            f'stroke-width="0.3"{_data(data)}/>'
        )

    def rect(
        self,
        x: float,
        y: float,
        width: float,
        height: float,
        fill: str,
        stroke: str | None = None,
        css_class: str = "",
        **data: str,
    ) -> None:
        """A rectangle in px (top-left corner, size)."""
        edge = f' stroke="{stroke}" stroke-width="0.8"' if stroke else ""
        self.add(
            f'<rect{_class(css_class)} x="{num(x)}" y="{num(y)}" width="{num(width)}" '
            f'height="{num(height)}" fill="{fill}"{edge}{_data(data)}/>'
        )

    def circle(self, x: float, y: float, radius: float, color: str) -> None:
        """A filled dot in px."""
        self.add(f'<circle cx="{num(x)}" cy="{num(y)}" r="{num(radius)}" fill="{color}"/>')

    def text(
        self,
        x: float,
        y: float,
        text: str,
        size: float = 9,
        anchor: str = "start",
        color: str = "#000000",
        rotate: float = 0,
        bold: bool = False,
        css_class: str = "",
    ) -> None:
        """``text`` at (x, y) px, vertically centred there; ``anchor``: start, middle or end."""
        turn = f' transform="rotate({num(rotate)} {num(x)} {num(y)})"' if rotate else ""
        weight = ' font-weight="bold"' if bold else ""
        fill = "" if color == "#000000" else f' fill="{color}"'
        self.add(
            f'<text{_class(css_class)} x="{num(x)}" y="{num(y)}" font-size="{num(size)}" '
            f'text-anchor="{anchor}" dominant-baseline="central"{fill}{weight}{turn}>'
            f"{escape(text)}</text>"
        )

    def render(self) -> str:
        """The document as a string (UTF-8 text for an ``.svg`` file)."""
        w, h = num(self.width), num(self.height)
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
            f'viewBox="0 0 {w} {h}" font-family="{FONT}">'
            f"<title>{escape(self.title)}</title>"
            f'<rect width="{w}" height="{h}" fill="#ffffff"/>'
        )
        return head + "".join(self._parts) + "</svg>\n"


class Axes:
    """A rectangular plot area of an :class:`Svg` mapping data (x right, y up) to px."""

    def __init__(
        self,
        svg: Svg,
        box: tuple[float, float, float, float],
        xlim: tuple[float, float],
        ylim: tuple[float, float],
    ) -> None:
        self.svg = svg
        self.left, self.top, self.width, self.height = box
        self.xlim = xlim
        self.ylim = ylim

    @property
    def right(self) -> float:
        return self.left + self.width

    @property
    def bottom(self) -> float:
        return self.top + self.height

    def px(self, x: float) -> float:
        """Data x → px."""
        lo, hi = self.xlim
        return self.left + (x - lo) / ((hi - lo) or 1.0) * self.width

    def py(self, y: float) -> float:
        """Data y → px (up is smaller)."""
        lo, hi = self.ylim
        return self.bottom - (y - lo) / ((hi - lo) or 1.0) * self.height

    # -- decorations ----------------------------------------------------------------------------
    def frame(self) -> None:
        """The axes' box."""
        self.svg.rect(self.left, self.top, self.width, self.height, "none", stroke="#000000")

    def grid(self, xticks: Sequence[float], yticks: Sequence[float]) -> None:
        """Faint lines at the ticks."""
        with self.svg.group("grid"):
            for x in xticks:
                self.svg.line(
                    self.px(x), self.top, self.px(x), self.bottom, "#b0b0b0", 0.8, None, 0.3
                )
            for y in yticks:
                self.svg.line(
                    self.left, self.py(y), self.right, self.py(y), "#b0b0b0", 0.8, None, 0.3
                )

    def xticks(
        self,
        ticks: Sequence[float],
        labels: Sequence[str] | None = None,
        size: float = 8,
        rotate: bool = False,
    ) -> None:
        """Tick marks and labels under the axes; ``rotate``: labels at 45°, ending at their tick."""
        texts = labels if labels is not None else [tick_label(t, ticks) for t in ticks]
        with self.svg.group("xticks"):
            for value, text in zip(ticks, texts, strict=True):
                x = self.px(value)
                self.svg.line(x, self.bottom, x, self.bottom + 3.5, "#000000", 0.8)
                if rotate:
                    y = self.bottom + 8
                    self.svg.text(x, y, text, size, "end", rotate=-45, css_class="tick")
                else:
                    self.svg.text(
                        x, self.bottom + 5 + size * 0.7, text, size, "middle", css_class="tick"
                    )

    def yticks(
        self, ticks: Sequence[float], labels: Sequence[str] | None = None, size: float = 8
    ) -> None:
        """Tick marks and labels left of the axes."""
        texts = labels if labels is not None else [tick_label(t, ticks) for t in ticks]
        with self.svg.group("yticks"):
            for value, text in zip(ticks, texts, strict=True):
                y = self.py(value)
                self.svg.line(self.left - 3.5, y, self.left, y, "#000000", 0.8)
                self.svg.text(self.left - 5, y, text, size, "end", css_class="tick")

    def title(self, text: str, size: float = 10) -> None:
        """Centred above the axes."""
        self.svg.text(
            self.left + self.width / 2,
            self.top - size,
            text,
            size,
            "middle",
            css_class="axes-title",
        )

    def xlabel(self, text: str, offset: float = 28, size: float = 9) -> None:
        """Centred ``offset`` px under the axes."""
        self.svg.text(
            self.left + self.width / 2,
            self.bottom + offset,
            text,
            size,
            "middle",
            css_class="xlabel",
        )

    def ylabel(self, text: str, offset: float = 36, size: float = 9) -> None:
        """Rotated, ``offset`` px left of the axes."""
        x, y = self.left - offset, self.top + self.height / 2
        self.svg.text(x, y, text, size, "middle", rotate=-90, css_class="ylabel")

    def note(self, text: str, size: float = 10) -> None:
        """Centred text in the axes (one line per ``\\n``), for a plot that has nothing to draw."""
        lines = text.split("\n")
        middle = self.top + self.height / 2
        for i, line in enumerate(lines):
            y = middle + (i - (len(lines) - 1) / 2) * size * 1.3
            self.svg.text(self.left + self.width / 2, y, line, size, "middle", css_class="note")

    # -- data ------------------------------------------------------------------------------------
    def series(
        self,
        xs: Iterable[float],
        ys: Iterable[float],
        color: str,
        label: str,
        width: float = 1.5,
        dash: str | None = None,
        opacity: float | None = None,
        markers: bool = False,
    ) -> None:
        """A line through the finite points (a NaN breaks it), in a ``<g class="series">`` that
        carries the label and the data."""
        xs, ys = list(map(float, xs)), list(map(float, ys))
        data = {"data_label": label, "data_x": _data_nums(xs), "data_y": _data_nums(ys)}
        # px() and py() inlined (the same arithmetic, so the same digits): thousands of points.
        left, (x_lo, x_hi), x_span = self.left, self.xlim, self.width
        bottom, (y_lo, y_hi), y_span = self.bottom, self.ylim, self.height
        x_range, y_range = (x_hi - x_lo) or 1.0, (y_hi - y_lo) or 1.0
        isfinite = math.isfinite
        with self.svg.group("series", **data):
            run: list[tuple[float, float]] = []
            for x, y in [*zip(xs, ys, strict=True), (math.nan, math.nan)]:
                if isfinite(x) and isfinite(y):
                    run.append(
                        (
                            left + (x - x_lo) / x_range * x_span,
                            bottom - (y - y_lo) / y_range * y_span,
                        )
                    )
                    continue
                if len(run) > 1:
                    self.svg.polyline(run, color, width, dash, opacity)
                if markers or len(run) == 1:
                    for px, py in run:
                        self.svg.circle(px, py, 2.0 if markers else 1.5, color)
                run = []

    def legend(
        self,
        entries: Sequence[LegendEntry],
        corner: str = "lower right",
        size: float = 7,
        columns: int = 1,
        title: str | None = None,
        at: tuple[float, float] | None = None,
        frame: bool = True,
    ) -> None:
        """A legend box in a ``corner`` of the axes (``upper``/``lower`` + ``left``/``right``),
        or with its top-left corner ``at`` px."""
        if not entries:
            return
        row = size * 1.45
        swatch = size * 2.2
        rows = math.ceil(len(entries) / columns)
        per_column: list[list[LegendEntry]] = [
            list(entries[c * rows : (c + 1) * rows]) for c in range(columns)
        ]
        col_widths = [
            max((text_width(e.label, size) for e in column), default=0.0) + swatch + size * 0.8
            for column in per_column
        ]
        head = row if title else 0.0
        box_w = sum(col_widths) + size * 0.8
        box_h = rows * row + head + size * 0.6
        pad = 6.0
        if at is not None:
            x0, y0 = at
        else:
            x0 = self.left + pad if "left" in corner else self.right - pad - box_w
            y0 = self.top + pad if "upper" in corner else self.bottom - pad - box_h
        with self.svg.group("legend"):
            if frame:
                self.svg.add(
                    f'<rect x="{num(x0)}" y="{num(y0)}" width="{num(box_w)}" height="{num(box_h)}" '
                    'rx="2" fill="#ffffff" fill-opacity="0.85" stroke="#cccccc" stroke-width="0.8"/>'
                )
            if title:
                self.svg.text(x0 + size * 0.4, y0 + size * 0.3 + row / 2, title, size + 1)
            x = x0 + size * 0.4
            for column, col_width in zip(per_column, col_widths, strict=True):
                for i, entry in enumerate(column):
                    y = y0 + size * 0.3 + head + row * (i + 0.5)
                    self._swatch(entry, x, y, swatch, size)
                    self.svg.text(
                        x + swatch + size * 0.4, y, entry.label, size, css_class="legend-entry"
                    )
                x += col_width

    def _swatch(self, entry: LegendEntry, x: float, y: float, length: float, size: float) -> None:
        if entry.swatch == "box":
            self.svg.rect(x + length * 0.2, y - size * 0.4, length * 0.6, size * 0.8, entry.color)
        elif entry.swatch in ("line", "dashed", "dotted"):
            dash = {"line": None, "dashed": "5,2", "dotted": "1.5,2"}[entry.swatch]
            self.svg.line(x, y, x + length, y, entry.color, entry.width, dash)


# -- helpers -------------------------------------------------------------------------------------
def _rgb(color: str) -> tuple[int, int, int]:
    value = color.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def _stroke(color: str, width: float, dash: str | None, opacity: float | None) -> str:
    style = f' stroke="{color}" stroke-width="{num(width)}"'
    if dash:
        style += f' stroke-dasharray="{dash}"'
    if opacity is not None:
        style += f' stroke-opacity="{opacity:g}"'
    return style


def _class(css_class: str) -> str:
    return f' class="{css_class}"' if css_class else ""


def _data(data: dict[str, str]) -> str:
    return "".join(f" {k.replace('_', '-')}={quoteattr(v)}" for k, v in data.items())


#: An infinity as ``{:.6g}`` writes it.
_INFINITY = re.compile(r"-?inf")


def _data_nums(values: Sequence[float]) -> str:
    """``values`` with 6 significant digits (``nan`` for any non-finite one), space-separated,
    formatted in one pass."""
    return _INFINITY.sub("nan", " ".join(map("{:.6g}".format, values)))
