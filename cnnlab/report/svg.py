"""Line charts as inline SVG text: axes, nice ticks, labelled axes, a legend; no plotting library.

A report is written at the end of every training run, so a chart must cost milliseconds: matplotlib
would take longer to import than the whole page takes to write. The charts are plain ``<svg>``
elements meant to sit inside an HTML page (no ``xmlns``: the HTML parser puts inline ``<svg>`` in the
SVG namespace itself, and a page with no ``http`` in it is easy to check for external references).
Each chart has a ``viewBox`` and ``width="100%"``, so it scales with its container.

==========================  ================================================================
name                        what
==========================  ================================================================
:class:`Series`             one named line: x, y, dashed or solid, an optional colour
:func:`line_chart`          the ``<svg>`` of one or more series on shared axes
:func:`downsample`          at most ``max_points`` points that keep the curve's shape
:func:`nice_ticks`          tick values at 1, 2 or 5 x 10^k covering a range
:data:`PALETTE`             the Okabe-Ito colours, in the order series take them
==========================  ================================================================

A value that is not finite (NaN or inf: a diverged run) breaks the line where it occurs and is
marked with a cross at the top of the plot (bottom for -inf), with a tooltip giving x and the value.
"""

from __future__ import annotations

import html
import math
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

# Okabe & Ito (2008), "Color Universal Design": told apart by people with every common colour-vision
# deficiency. Their yellow (#F0E442) is left out: it is barely visible on white.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")

# Dash patterns: the caller's dashed lines, and the lines of a second or third trip round the palette
# (more series than colours), so that no two series look alike.
_DASHED = "6 4"
_CYCLE_DASHES = ("", "1.5 3", "8 3 2 3")

_FONT_SIZE = 12  # px in viewBox units: tick labels and legend
_CHAR_WIDTH = 6.9  # estimated advance of one character at _FONT_SIZE (system sans-serif), for layout
_MARGIN_LEFT = 58  # room for the y tick labels and the rotated y label, at least (wider labels widen it)
_Y_TITLE_ROOM = 22  # x from 0 to here: the rotated y label (its baseline at x=14, its descenders) and a gap
_TICK_GAP = 5  # between a y tick label's right end and the plot
_MARGIN_RIGHT = 26  # half of the widest x tick label ("10,000") centred on the right edge
_MARGIN_TOP = 30  # room for the title
_MARGIN_BOTTOM = 40  # x tick labels and the x label
_LEGEND_ROW = 17  # height of one legend row
_MARKER_POINTS = 60  # series with at most this many points also get a dot at each point (epoch curves)
_MAX_MARKS = 50  # non-finite crosses drawn per series at most (a tooltip on the last says how many more)
_NOT_FINITE_COLOR = "#cf222e"


@dataclass
class Series:
    """One named line of a chart; ``color`` None takes the next colour of :data:`PALETTE`."""

    name: str
    x: list[float]
    y: list[float]
    dashed: bool = False
    color: Optional[str] = None


# ---------------------------------------------------------------------------------------------
# ticks and downsampling


def _nice_step(span: float, target: int) -> float:
    """The smallest of 1, 2, 5 x 10^k that cuts ``span`` into at most about ``target`` intervals."""
    raw = span / max(target, 1)
    base = 10.0 ** math.floor(math.log10(raw))
    for multiple in (1.0, 2.0, 5.0, 10.0):
        if raw <= multiple * base * (1 + 1e-9):
            return multiple * base
    return 10.0 * base  # unreachable: raw < 10 * base by the choice of base


def _decimals(step: float) -> int:
    """Decimals that show every multiple of ``step`` exactly (step is 1, 2 or 5 x 10^k)."""
    return max(0, -math.floor(math.log10(step) + 1e-9))


def nice_ticks(lo: float, hi: float, target: int = 5, integer: bool = False, floor: Optional[float] = None,
               ceiling: Optional[float] = None) -> list[float]:
    """Ticks at multiples of 1, 2 or 5 x 10^k from at or below ``lo`` to at or above ``hi``.

    ``target`` is about how many intervals to make; ``integer`` keeps the step at 1 or more (epochs,
    steps). A range of zero width is widened around its value, but not past ``floor`` or ``ceiling``, the
    bounds of the quantity (0 and 100 for an accuracy in %: a run at 100% gets ticks 90 to 100, not 90 to 110).
    The first and last tick bound the axis. Ticks past the largest float (a value near 1.8e308) end at it.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"Ticks need a finite range, got {lo!r} to {hi!r}.")
    lo, hi = min(lo, hi), max(lo, hi)
    if hi == lo:
        pad = abs(lo) * 0.1
        if pad == 0:  # the value 0, or a tenth of it below the smallest float (5e-324)
            pad = 1.0
        # within the floats: 1.7e308 padded by a tenth would be inf
        padded = max(lo - pad, -sys.float_info.max), min(hi + pad, sys.float_info.max)
        below, above = padded
        # a bound the value sits inside of stops the padding; one the value is past already cannot
        if floor is not None and below < floor <= lo:
            below = floor
        if ceiling is not None and hi <= ceiling < above:
            above = ceiling
        # the bounds may leave no room (floor == ceiling == the value): then padded both ways
        lo, hi = (below, above) if above > below else padded
    span = hi - lo
    if not math.isfinite(span):  # values near the largest float, one negative: each end divided first
        parts = max(target, 1)
        step = _nice_step(hi / parts - lo / parts, 1)
    else:
        step = _nice_step(span, target)
    if integer:
        step = max(step, 1.0)
    decimals = _decimals(step)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    # round: 3 * 0.1 is 0.30000000000000004; + 0.0 turns -0.0 into 0.0
    ticks = [round(k * step, decimals) + 0.0 for k in range(first, last + 1)]
    # k * step past the largest float is inf: the axis ends at the largest float instead
    ticks = [min(max(tick, -sys.float_info.max), sys.float_info.max) for tick in ticks]
    return sorted(set(ticks))


MAX_LOG_TICKS = 8  # decades a log axis labels at most: beyond, every 2nd, 3rd, ... decade
# The decades a float holds: 10^309 overflows (a loss of 1.7e308 is finite), and below 10^-307 the floats are
# subnormal (10^-324 is 0.0). A log axis has its ticks within these; a value beyond extends the axis past its
# last tick (line_chart).
_MAX_DECADE = math.floor(math.log10(sys.float_info.max))  # 308
_MIN_DECADE = math.ceil(math.log10(sys.float_info.min))  # -307


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log axis over [lo, hi] (both > 0): the decades, with 2 and 5 when they span at most two.
    Decades beyond what a float holds are left out, so the ticks may not reach a value near 1.8e308 or 5e-324."""
    first = min(max(math.floor(math.log10(lo) + 1e-9), _MIN_DECADE), _MAX_DECADE)
    last = min(max(math.ceil(math.log10(hi) - 1e-9), _MIN_DECADE), _MAX_DECADE)
    if last == first:  # one decade, or lo and hi both past the same end
        if last < _MAX_DECADE:
            last += 1
        else:
            first -= 1
    step = math.ceil((last - first) / MAX_LOG_TICKS)  # every decade of an exploded loss (1 to 1e34) would crowd
    if step > 1:
        last = first + step * math.ceil((last - first) / step)  # the axis ends on a tick
        while last > _MAX_DECADE:  # unless that tick is past the largest float: the axis goes on past the last
            last -= step
        return [10.0 ** k for k in range(first, last + 1, step)]
    multiples = (1, 2, 5) if last - first <= 2 else (1,)
    ticks = [m * 10.0 ** k for k in range(first, last) for m in multiples]
    ticks.append(10.0 ** last)
    # keep the decades that bound the data, and the 2s and 5s inside it
    return [t for t in ticks if t == 10.0 ** first or t == 10.0 ** last or lo <= t <= hi]


def downsample(xs: Sequence[float], ys: Sequence[float], max_points: int = 1000) -> tuple[list, list]:
    """At most ``max_points`` of the points, keeping the curve's shape.

    The first and last points are kept; the points between are cut into equal buckets and each bucket
    keeps its smallest and largest finite y (in x order), so spikes, the global minimum and the global
    maximum survive. When some y is not finite, each bucket also keeps its first non-finite point (the
    chart marks it) and the buckets are fewer, so the bound still holds. Shorter input is returned whole.
    """
    if len(xs) != len(ys):
        raise ValueError(f"downsample needs as many x as y values, got {len(xs)} and {len(ys)}.")
    if max_points < 4:
        raise ValueError(f"downsample keeps at least 4 points (first, last, a bucket's min and max), got {max_points}.")
    n = len(xs)
    if n <= max_points:
        return list(xs), list(ys)
    y = np.asarray(ys, dtype=np.float64)
    finite = np.isfinite(y)
    any_bad = not bool(finite.all())
    per_bucket = 3 if any_bad else 2  # min, max (and the first non-finite)
    buckets = (max_points - 2) // per_bucket
    # bucket edges over the interior points 1 .. n-2 (indices into y)
    edges = np.linspace(1, n - 1, buckets + 1).round().astype(int)
    keep = [0]
    for start, stop in zip(edges[:-1], edges[1:]):
        if stop <= start:
            continue
        chosen = set()
        good = finite[start:stop]
        if good.any():
            segment = y[start:stop]
            chosen.add(start + int(np.argmin(np.where(good, segment, np.inf))))
            chosen.add(start + int(np.argmax(np.where(good, segment, -np.inf))))
        if not good.all():
            chosen.add(start + int(np.argmin(good)))  # first False: the first non-finite point
        keep.extend(sorted(chosen))
    keep.append(n - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


# ---------------------------------------------------------------------------------------------
# drawing


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _num(value: float) -> str:
    """A coordinate: 0.1 of a viewBox unit is finer than any screen shows."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


# From this size up a tick label takes an exponent: a diverged run's loss axis otherwise reads
# "4999999999999999727876154935214080.00"; below it every step count and img/s of a real run prints in full.
LARGE_TICK = 1e7


def _format_ticks(ticks: list[float], fmt: Optional[str], log: bool = False) -> list[str]:
    """Tick labels: ``fmt`` when it tells every tick apart, else as many decimals as the step needs; ticks from
    :data:`LARGE_TICK` up with an exponent and the fewest digits that tell them apart (5e+33, 1.5e+34)."""
    if ticks and max(abs(t) for t in ticks) >= LARGE_TICK:
        for digits in range(2, 18):
            labels = [f"{t:.{digits}g}" for t in ticks]
            if len(set(labels)) == len(labels):
                return labels
    if fmt is not None:
        try:
            labels = [fmt.format(t) for t in ticks]
        except (ValueError, IndexError, KeyError):
            labels = []
        if labels and len(set(labels)) == len(labels):
            return labels
    if log:
        return [f"{t:g}" for t in ticks]
    step = min((b - a for a, b in zip(ticks, ticks[1:])), default=1.0) or 1.0
    decimals = _decimals(step)
    return [f"{t:,.{decimals}f}" for t in ticks]


def _value_text(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def _style_of(index: int, series: Series) -> tuple[str, str]:
    """(colour, stroke-dasharray) of the series at ``index``."""
    color = series.color or PALETTE[index % len(PALETTE)]
    dash = _CYCLE_DASHES[(index // len(PALETTE)) % len(_CYCLE_DASHES)]
    if series.dashed:
        dash = _DASHED
    return color, dash


def line_swatch(index: int) -> str:
    """A short ``<svg>`` line drawn as the ``index``-th series without a colour of its own is drawn: its colour and,
    past the palette's length, its dash pattern, so that a table row shows which line is its run."""
    color, dash = _style_of(index, Series("", [], []))
    dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<svg class="swatch" viewBox="0 0 22 12" width="22" height="12" aria-hidden="true">'
            f'<path d="M1 6h20" stroke="{_esc(color)}" stroke-width="2.5"{dash_attr}/></svg>')


def _left_margin(y_labels: list[str]) -> float:
    """Room left of the plot for the y tick labels (right-aligned, the widest estimated) and the rotated y label
    beside them: a label such as 0.00025 (an AdamW rate) or 1e+06 (a log loss axis) is wider than the usual 1.50."""
    widest = max((len(label) for label in y_labels), default=0) * _CHAR_WIDTH
    return max(_MARGIN_LEFT, math.ceil(_Y_TITLE_ROOM + widest + _TICK_GAP))


def _legend_layout(labels: list[str], width: float, left: float = _MARGIN_LEFT) -> list[tuple[float, int]]:
    """(x, row) of each legend item, from the plot's left edge ``left``, wrapping rows to fit ``width``."""
    places = []
    x, row = left, 0
    for label in labels:
        item = 26 + len(label) * _CHAR_WIDTH + 14  # swatch, text, gap
        if x + item > width - _MARGIN_RIGHT and x > left:
            x, row = left, row + 1
        places.append((x, row))
        x += item
    return places


def _fit_label(label: str, width: float, left: float = _MARGIN_LEFT) -> str:
    """``label`` cut in the middle with "…" when its legend row, from the plot's left edge ``left``, would run past
    the chart's right edge (the SVG clips it there); the start and the end stay, so that run names which differ
    only at the end (``...-lr0.01``, ``...-lr0.1``) stay apart. The legend keeps the whole name as a tooltip."""
    room = int((width - left - _MARGIN_RIGHT - 26 - 14) / _CHAR_WIDTH)  # minus swatch and gap
    if len(label) <= room or room < 3:
        return label
    head = (room - 1) // 2
    return label[:head] + "…" + label[len(label) - (room - 1 - head):]


def _empty_chart(title: str, x_label: str, y_label: str, width: int, height: int, message: str) -> str:
    left, top = _MARGIN_LEFT, _MARGIN_TOP
    plot_w, plot_h = width - left - _MARGIN_RIGHT, height - top - _MARGIN_BOTTOM
    return (f'<svg class="chart chart-empty" viewBox="0 0 {width} {height}" width="100%" role="img" '
            f'aria-label="{_esc(title)}: {_esc(message)}" font-family="system-ui, sans-serif" '
            f'font-size="{_FONT_SIZE}">'
            f'<title>{_esc(title)}</title>'
            f'<text x="{width / 2:.0f}" y="19" text-anchor="middle" font-size="14" font-weight="600" '
            f'fill="#1d2125">{_esc(title)}</text>'
            f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafbfc" stroke="#d0d7de"/>'
            f'<text x="{left + plot_w / 2:.0f}" y="{top + plot_h / 2:.0f}" text-anchor="middle" '
            f'fill="#57606a" font-size="13">{_esc(message)}</text>'
            f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" text-anchor="middle" fill="#57606a">'
            f'{_esc(x_label)}</text>'
            f'<text transform="translate(14 {top + plot_h / 2:.0f}) rotate(-90)" text-anchor="middle" '
            f'fill="#57606a">{_esc(y_label)}</text>'
            '</svg>')


def line_chart(series: list[Series], *, title: str, x_label: str, y_label: str, width: int = 640,
               height: int = 320, y_format: str = "{:.2f}", log_y: bool = False,
               max_points: int = 1000, x_bounds: tuple[Optional[float], Optional[float]] = (None, None),
               y_bounds: tuple[Optional[float], Optional[float]] = (None, None)) -> str:
    """An inline ``<svg>`` with every series on shared axes, a title, labelled axes and a legend.

    ``x_label`` and ``y_label`` name the quantity and its unit ("training time (s)"). ``y_format``
    formats the y tick labels (more decimals are used when it would print two ticks alike).
    ``log_y`` draws y on a log scale (values <= 0 break the line there). A series longer than
    ``max_points`` is thinned with :func:`downsample`. With no point in any series the chart says
    "no data yet" (and says when every value is nan/inf). ``height`` is the plot's; the legend's rows
    are added below it. ``x_bounds`` and ``y_bounds``: (lowest, highest) the quantity can be, None for no
    bound (0 and 100 for an accuracy in %, the first epoch for an epoch axis): a flat curve's axis is widened
    around it but not past them (:func:`nice_ticks`; a log axis has its own ticks). The left margin grows
    with the widest y tick label.
    """
    prepared = []  # (series, xs, ys) after downsampling
    for item in series:
        if len(item.x) != len(item.y):
            raise ValueError(f"Series '{item.name}' has {len(item.x)} x and {len(item.y)} y values.")
        xs, ys = downsample(list(item.x), list(item.y), max_points)
        prepared.append((item, [float(v) for v in xs], [float(v) for v in ys]))

    def plottable(x: float, y: float) -> bool:
        return math.isfinite(x) and math.isfinite(y) and (y > 0 or not log_y)

    points = [(x, y) for _, xs, ys in prepared for x, y in zip(xs, ys) if plottable(x, y)]
    if not points:
        seen = any(math.isfinite(x) for _, xs, _ in prepared for x in xs)  # points exist, none plottable
        message = "no finite value to draw (nan/inf)" if seen else "no data yet"
        return _empty_chart(title, x_label, y_label, width, height, message)

    # --- axes
    # a nan or inf is marked with a cross at its x: the x axis must reach it (a run that diverged in its last
    # epoch had the cross drawn past the plot's right edge)
    marked_x = [x for _, xs, ys in prepared for x, y in zip(xs, ys) if math.isfinite(x) and not math.isfinite(y)]
    all_x = [p[0] for p in points] + marked_x
    all_y = [p[1] for p in points]
    integer_x = all(float(v).is_integer() for v in all_x)
    x_ticks = nice_ticks(min(all_x), max(all_x), target=6, integer=integer_x, floor=x_bounds[0], ceiling=x_bounds[1])
    x0, x1 = x_ticks[0], x_ticks[-1]
    if log_y:
        y_ticks = _log_ticks(min(all_y), max(all_y))
        # the ticks stay within the decades a float holds: a value beyond (1.7e308) widens the axis past them
        y0 = min(math.log10(y_ticks[0]), math.log10(min(all_y)))
        y1 = max(math.log10(y_ticks[-1]), math.log10(max(all_y)))
    else:
        y_ticks = nice_ticks(min(all_y), max(all_y), target=5, floor=y_bounds[0], ceiling=y_bounds[1])
        y0, y1 = y_ticks[0], y_ticks[-1]
    y_tick_labels = _format_ticks(y_ticks, y_format, log=log_y)
    # a third of the chart at most: labels that long (ticks of a value near 1e-300 written out) are cut at its edge
    left = min(_left_margin(y_tick_labels), width // 3)

    labels = [item.name if any(plottable(x, y) for x, y in zip(xs, ys)) else f"{item.name} (no data)"
              for item, xs, ys in prepared]
    any_bad = any(math.isfinite(x) and not math.isfinite(y) for _, xs, ys in prepared for x, y in zip(xs, ys))
    if any_bad:
        labels.append("not a finite number (nan/inf)")
    shown = [_fit_label(label, width, left) for label in labels]
    places = _legend_layout(shown, width, left)
    legend_rows = 1 + max(row for _, row in places)
    total_height = height + legend_rows * _LEGEND_ROW

    top = _MARGIN_TOP
    plot_w, plot_h = width - left - _MARGIN_RIGHT, height - top - _MARGIN_BOTTOM
    bottom = top + plot_h

    def share(value: float, start: float, end: float) -> float:
        """Where ``value`` lies from ``start`` (0) to ``end`` (1); halved first, as end - start overflows to inf
        for an axis from -1.7e308 to 1.7e308."""
        return (value / 2 - start / 2) / (end / 2 - start / 2)

    def px(x: float) -> float:
        return left + share(x, x0, x1) * plot_w

    def py(y: float) -> float:
        value = math.log10(y) if log_y else y
        return bottom - share(value, y0, y1) * plot_h

    out = [f'<svg class="chart" viewBox="0 0 {width} {total_height}" width="100%" role="img" '
           f'aria-label="{_esc(title)}" font-family="system-ui, sans-serif" font-size="{_FONT_SIZE}">',
           f'<title>{_esc(title)}</title>',
           f'<text x="{width / 2:.0f}" y="19" text-anchor="middle" font-size="14" font-weight="600" '
           f'fill="#1d2125">{_esc(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#ffffff" stroke="#d0d7de"/>']

    # grid lines and tick labels
    grid, tick_text = [], []
    for value, label in zip(x_ticks, _format_ticks(x_ticks, None)):
        x = px(value)
        grid.append(f"M{_num(x)} {top}V{bottom}")
        tick_text.append(f'<text x="{_num(x)}" y="{bottom + 14}" text-anchor="middle">{_esc(label)}</text>')
    for value, label in zip(y_ticks, y_tick_labels):
        y = py(value)
        grid.append(f"M{left} {_num(y)}H{left + plot_w}")
        tick_text.append(f'<text x="{left - 5}" y="{_num(y + 4)}" text-anchor="end">{_esc(label)}</text>')
    out.append(f'<path d="{"".join(grid)}" stroke="#eaeef2" fill="none"/>')
    out.append(f'<g fill="#57606a">{"".join(tick_text)}</g>')
    out.append(f'<text x="{left + plot_w / 2:.0f}" y="{bottom + 32}" text-anchor="middle" fill="#1d2125">'
               f'{_esc(x_label)}</text>')
    out.append(f'<text transform="translate(14 {top + plot_h / 2:.0f}) rotate(-90)" text-anchor="middle" '
               f'fill="#1d2125">{_esc(y_label)}</text>')

    # the lines: one <path>, a new subpath (M) after every gap
    for index, (item, xs, ys) in enumerate(prepared):
        color, dash = _style_of(index, item)
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts, pen_down, dots, marks = [], False, [], []
        for x, y in zip(xs, ys):
            if plottable(x, y):
                parts.append(f"{'L' if pen_down else 'M'}{_num(px(x))} {_num(py(y))}")
                pen_down = True
                dots.append((px(x), py(y)))
            else:
                pen_down = False
                if math.isfinite(x) and not math.isfinite(y):
                    marks.append((x, y))
        if parts:
            out.append(f'<path d="{"".join(parts)}" fill="none" stroke="{_esc(color)}" stroke-width="1.6" '
                       f'stroke-linejoin="round"{dash_attr}><title>{_esc(item.name)}</title></path>')
        if 0 < len(dots) <= _MARKER_POINTS:
            out.append(f'<g fill="{_esc(color)}">' + "".join(
                f'<circle cx="{_num(cx)}" cy="{_num(cy)}" r="2.6"/>' for cx, cy in dots) + "</g>")
        for count, (x, y) in enumerate(marks[:_MAX_MARKS]):
            cx = px(x)
            cy = bottom - 6 if y == -math.inf else top + 6
            more = len(marks) - _MAX_MARKS
            note = f" ({more} more not shown)" if count == _MAX_MARKS - 1 and more > 0 else ""
            out.append(f'<path d="M{_num(cx - 4)} {_num(cy - 4)}l8 8m0 -8l-8 8" stroke="{_NOT_FINITE_COLOR}" '
                       f'stroke-width="2"><title>{_esc(item.name)}: {_value_text(y)} at x = {x:g}{note}'
                       f'</title></path>')

    # legend below the plot
    legend = []
    legend_top = height + 4
    for index, (label, text, (x, row)) in enumerate(zip(labels, shown, places)):
        y = legend_top + row * _LEGEND_ROW
        if index < len(prepared):
            color, dash = _style_of(index, prepared[index][0])
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            legend.append(f'<path d="M{_num(x)} {_num(y)}h20" stroke="{_esc(color)}" stroke-width="2"{dash_attr}/>')
        else:  # the non-finite marker's entry
            legend.append(f'<path d="M{_num(x + 6)} {_num(y - 4)}l8 8m0 -8l-8 8" stroke="{_NOT_FINITE_COLOR}" '
                          'stroke-width="2"/>')
        entry = f'<text x="{_num(x + 26)}" y="{_num(y + 4)}" fill="#1d2125">{_esc(text)}</text>'
        if text != label:  # shortened: the whole name shows on hover
            entry = f"<g><title>{_esc(label)}</title>{entry}</g>"
        legend.append(entry)
    out.append(f'<g class="legend">{"".join(legend)}</g>')
    out.append("</svg>")
    return "".join(out)
