"""Inline SVG charts: nice ticks, min/max downsampling, and charts that stay well-formed with NaN and inf."""

import math
import random
import re
import xml.etree.ElementTree as ET

import pytest

from cnnlab.report import svg
from cnnlab.report.svg import PALETTE, Series, downsample, line_chart, nice_ticks


def parse(chart: str) -> ET.Element:
    """The chart as XML: raises when it is not well-formed."""
    return ET.fromstring(chart)


def texts(root: ET.Element) -> list[str]:
    return ["".join(element.itertext()) for element in root.iter("text")]


def series_paths(root: ET.Element) -> list[ET.Element]:
    """The <path> of each drawn line (they carry the series name as a <title>)."""
    return [p for p in root.iter("path") if p.find("title") is not None and p.get("fill") == "none"]


def points_of(path: ET.Element) -> list[tuple[str, float, float]]:
    """(command, x, y) of each point of a path written as M/L commands."""
    return [(c, float(x), float(y)) for c, x, y in re.findall(r"([ML])(-?[\d.]+) (-?[\d.]+)", path.get("d"))]


# --- ticks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lo, hi, integer, expected", [
    (0, 1, False, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),  # span 1 / 5 intervals = 0.2, a nice step
    (0.13, 0.87, False, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),  # 0.148 rounds up to 0.2; ends widen to multiples
    (1, 45, True, [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]),  # epochs: 8.8 -> 10
    (0, 10_000, False, [0.0, 2000.0, 4000.0, 6000.0, 8000.0, 10000.0]),
    (-0.3, 0.7, False, [-0.4, -0.2, 0.0, 0.2, 0.4, 0.6, 0.8]),  # 0.2 step; no -0.0
    (1, 3, True, [1.0, 2.0, 3.0]),  # a 0.5 step would give half epochs: integer axes step by 1 at least
    (0.0012, 0.0049, False, [0.001, 0.002, 0.003, 0.004, 0.005]),  # 0.00074 -> 0.001, no float noise
])
def test_nice_ticks_hand_checked(lo, hi, integer, expected):
    assert nice_ticks(lo, hi, target=5, integer=integer) == expected


def test_nice_ticks_widen_a_flat_range_and_refuse_non_finite():
    ticks = nice_ticks(2.3, 2.3)
    assert ticks[0] < 2.3 < ticks[-1]  # a constant curve sits inside the axis, not on its edge
    assert nice_ticks(0, 0)[0] < 0 < nice_ticks(0, 0)[-1]
    with pytest.raises(ValueError):
        nice_ticks(0, math.nan)


def test_ticks_are_1_2_5_times_a_power_of_ten():
    generator = random.Random(0)
    for _ in range(200):
        lo = generator.uniform(-1e4, 1e4)
        hi = lo + 10 ** generator.uniform(-4, 4)
        ticks = nice_ticks(lo, hi)
        step = ticks[1] - ticks[0]
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-6, (lo, hi, ticks)
        assert ticks[0] <= lo and ticks[-1] >= hi
        assert 3 <= len(ticks) <= 12


def test_log_ticks_are_decades_with_2_and_5_in_a_short_span():
    assert svg._log_ticks(1e-4, 0.05) == [1e-4, 1e-3, 1e-2, 0.1]
    assert svg._log_ticks(0.001, 0.1) == [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]


# --- downsampling -----------------------------------------------------------------------------------


def test_downsample_hand_checked():
    # 8 interior points in 2 buckets: indices 1-4 keep min (1, at 1) and max (9, at 2); 5-8 keep max 8 (at 5)
    # and min 2 (at 6); plus the first and last points
    xs = list(range(10))
    ys = [5, 1, 9, 3, 4, 8, 2, 7, 6, 0]
    assert downsample(xs, ys, max_points=6) == ([0, 1, 2, 5, 6, 9], [5, 1, 9, 8, 2, 0])


def test_downsample_keeps_the_ends_the_extremes_and_the_order():
    generator = random.Random(1)
    xs = list(range(10_000))
    ys = [math.exp(-i / 3000) + generator.gauss(0, 0.1) for i in xs]
    ys[4321] = 5.0  # a spike must survive
    small_x, small_y = downsample(xs, ys, 1000)
    assert len(small_x) <= 1000 and len(small_x) == len(small_y)
    assert (small_x[0], small_y[0]) == (xs[0], ys[0]) and (small_x[-1], small_y[-1]) == (xs[-1], ys[-1])
    assert max(small_y) == max(ys) == 5.0 and min(small_y) == min(ys)
    assert all(a < b for a, b in zip(small_x, small_x[1:]))  # x order kept, no point twice
    assert all(ys[x] == y for x, y in zip(small_x, small_y))  # real points, not averages


def test_downsample_keeps_non_finite_points_within_the_bound():
    ys = [1.0] * 5000
    ys[2500] = math.nan
    ys[4000] = math.inf
    small_x, small_y = downsample(list(range(5000)), ys, 100)
    assert len(small_x) <= 100
    assert 2500 in small_x and 4000 in small_x


def test_downsample_returns_short_input_whole_and_checks_arguments():
    assert downsample([1, 2, 3], [4, 5, 6], 1000) == ([1, 2, 3], [4, 5, 6])
    with pytest.raises(ValueError):
        downsample([1, 2], [1], 1000)
    with pytest.raises(ValueError):
        downsample([1, 2], [1, 2], 3)


# --- charts -----------------------------------------------------------------------------------------


def test_chart_has_title_labelled_axes_legend_and_scales():
    chart = line_chart([Series("train loss", [1, 2, 3], [2.0, 1.0, 0.5]),
                        Series("val loss", [1, 2, 3], [2.2, 1.4, 1.1], dashed=True)],
                       title="Loss per epoch", x_label="epoch", y_label="loss")
    root = parse(chart)
    assert root.tag == "svg" and root.get("width") == "100%" and root.get("viewBox", "").startswith("0 0 640 ")
    shown = texts(root)
    for label in ("Loss per epoch", "epoch", "loss", "train loss", "val loss"):
        assert label in shown
    assert "1" in shown and "3" in shown  # x ticks at whole epochs
    assert "<script" not in chart and "http" not in chart  # no script, no namespace URL, nothing to fetch


def test_a_loss_axis_of_a_diverged_run_labels_its_ticks_with_an_exponent():
    chart = line_chart([Series("train loss", [1, 2, 3], [2.3, 1.6e33, 2.4e35])], title="Loss per epoch",
                       x_label="epoch", y_label="loss")
    shown = texts(parse(chart))
    assert "2.5e+35" in shown and not any(len(label) > 10 for label in shown if label[:1].isdigit())
    # a healthy run's axes keep their fixed-point labels, thousands of steps included
    healthy = texts(parse(line_chart([Series("loss", [0, 250_000], [2.3, 0.1])], title="t", x_label="step",
                                     y_label="loss")))
    assert "250,000" in healthy and "2.50" in healthy


def test_chart_maps_values_onto_the_plot_box():
    chart = line_chart([Series("a", [0, 10], [0.0, 1.0])], title="t", x_label="x", y_label="y")
    (path,) = series_paths(parse(chart))
    (_, x_start, y_start), (_, x_end, y_end) = points_of(path)
    plot_right = 640 - svg._MARGIN_RIGHT
    plot_bottom = 320 - svg._MARGIN_BOTTOM
    # ticks 0..1 and 0..10 bound the axes exactly, so the ends sit on the corners of the plot box
    assert (x_start, y_start) == (svg._MARGIN_LEFT, plot_bottom)
    assert (x_end, y_end) == (plot_right, svg._MARGIN_TOP)


def test_series_get_distinct_palette_colours_and_dashes():
    series = [Series(f"run{i}", [0, 1], [i, i + 1.0]) for i in range(3)]
    series.append(Series("val", [0, 1], [1.0, 2.0], dashed=True))
    paths = series_paths(parse(line_chart(series, title="t", x_label="x", y_label="y")))
    colours = [p.get("stroke") for p in paths]
    assert colours == list(PALETTE[:4])
    assert [p.get("stroke-dasharray") for p in paths] == [None, None, None, svg._DASHED]
    # past the palette's end the colours repeat with another dash pattern, so lines stay distinct
    many = [Series(f"s{i}", [0, 1], [0.0, 1.0]) for i in range(len(PALETTE) + 1)]
    paths = series_paths(parse(line_chart(many, title="t", x_label="x", y_label="y")))
    first, again = paths[0], paths[len(PALETTE)]
    assert first.get("stroke") == again.get("stroke") and first.get("stroke-dasharray") != again.get("stroke-dasharray")


def test_nan_and_inf_break_the_line_and_are_marked():
    ys = [2.0, 1.5, math.nan, 1.2, 1.1, math.inf, 0.9]
    chart = line_chart([Series("loss", list(range(7)), ys)], title="diverging", x_label="step", y_label="loss")
    root = parse(chart)  # well-formed XML despite nan/inf
    (path,) = series_paths(root)
    commands = [c for c, _, _ in points_of(path)]
    assert commands == ["M", "L", "M", "L", "M"]  # three pieces: before nan, between, after inf
    assert "nan" not in path.get("d") and "inf" not in path.get("d")
    marks = [t.text for t in root.iter("title") if t.text and " at x = " in t.text]
    assert marks == ["loss: nan at x = 2", "loss: inf at x = 5"]
    assert "not a finite number (nan/inf)" in texts(root)


def test_empty_and_all_nan_charts_say_so():
    root = parse(line_chart([], title="Loss", x_label="step", y_label="loss"))
    assert "no data yet" in texts(root) and "step" in texts(root) and "loss" in texts(root)
    root = parse(line_chart([Series("loss", [], [])], title="Loss", x_label="step", y_label="loss"))
    assert "no data yet" in texts(root)
    root = parse(line_chart([Series("loss", [1, 2], [math.nan, math.nan])], title="L", x_label="x", y_label="y"))
    assert "no finite value to draw (nan/inf)" in texts(root)


def test_a_series_without_points_is_named_in_the_legend():
    root = parse(line_chart([Series("a", [1, 2], [1.0, 2.0]), Series("b", [], [])], title="t", x_label="x",
                            y_label="y"))
    assert "b (no data)" in texts(root)


def test_names_are_escaped():
    name = '<b>&"run"</b>'
    chart = line_chart([Series(name, [1, 2], [1.0, 2.0])], title="<i>t</i>", x_label="x&y", y_label="y")
    assert name not in chart and "<i>" not in chart
    root = parse(chart)
    assert name in texts(root) and "<i>t</i>" in texts(root) and "x&y" in texts(root)


def test_log_axis_skips_non_positive_values():
    lr = [0.0] + [0.05 * 0.9 ** i for i in range(1, 50)]  # warm-up starts at lr 0
    root = parse(line_chart([Series("lr", list(range(50)), lr)], title="lr", x_label="step",
                            y_label="learning rate", log_y=True))
    (path,) = series_paths(root)
    assert len(points_of(path)) == 49
    assert "0.1" in texts(root) and "0.001" in texts(root)


def test_long_series_are_downsampled_in_the_chart():
    xs = list(range(20_000))
    chart = line_chart([Series("loss", xs, [1.0 / (1 + x) for x in xs])], title="t", x_label="step", y_label="loss")
    (path,) = series_paths(parse(chart))
    assert len(points_of(path)) <= 1000
    assert len(chart) < 40_000  # about 20 bytes per point


def test_a_long_series_name_is_shortened_in_the_middle_to_fit_the_legend():
    """The SVG clips what runs past its right edge: a run named by a long path lost its end in the legend, and two
    names that differ only there (...-lr0.01, ...-lr0.1) looked alike. Each legend entry now fits, keeps its
    start and end, and holds the whole name as a tooltip."""
    prefix = "resnet20-cifar10-batch128-cosine-warmup5-weightdecay5e-4-label-smoothing0.1-mixup0.2-"
    names = [prefix + "lr0.01", prefix + "lr0.1", "short"]
    width = 560
    root = parse(line_chart([Series(name, [1, 2], [1.0, 2.0 + i]) for i, name in enumerate(names)], title="t",
                            x_label="x", y_label="y", width=width, height=300))
    legend = root.find("g[@class='legend']")
    entries = [(float(text.get("x")), text.text) for text in legend.iter("text")]
    shown = [text for _, text in entries]
    assert len(set(shown)) == 3 and "short" in shown
    for x, text in entries:
        assert x + len(text) * svg._CHAR_WIDTH <= width, f"{text!r} runs past the chart's edge"
    for name in names[:2]:
        cut = next(text for text in shown if text.endswith(name[-6:]))
        assert "…" in cut and cut.startswith("resnet20-cifar10")
    assert sorted(title.text for title in legend.iter("title")) == names[:2]


def test_a_log_axis_over_many_decades_labels_every_few_and_ends_on_a_tick():
    # a loss that exploded to 4e34 drew 37 labels, one a decade, over each other
    ticks = svg._log_ticks(0.8, 4e34)
    assert len(ticks) <= svg.MAX_LOG_TICKS + 1 and ticks[0] <= 0.8 and ticks[-1] >= 4e34
    exponents = [round(math.log10(t)) for t in ticks]
    assert len({b - a for a, b in zip(exponents, exponents[1:])}) == 1  # evenly spaced decades


def test_the_page_draws_an_exploded_loss_on_a_log_axis(tmp_path):
    # curves.png switched to a log axis for a diverged run; the page's linear axis showed every loss before the
    # explosion as 0
    from cnnlab.report.page import _loss_chart
    from cnnlab.report.svg import Series

    exploded = _loss_chart([Series("train loss", [1, 2, 3, 4], [2.3, 1.1, 0.9, 4e34])], title="t", x_label="epoch",
                           y_label="loss")
    calm = _loss_chart([Series("train loss", [1, 2, 3, 4], [2.3, 1.1, 0.9, 0.8])], title="t", x_label="epoch",
                       y_label="loss")
    assert ">0.1<" in exploded and ">1e+34<" in exploded  # the start's loss and the explosion, decades apart
    assert "e+" not in calm


# --- the plot box holds what is drawn ------------------------------------------------------------------


def plot_box(root: ET.Element) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the plot's frame: the first <rect>."""
    rect = root.find("rect")
    left, top = float(rect.get("x")), float(rect.get("y"))
    return left, top, left + float(rect.get("width")), top + float(rect.get("height"))


def crosses(root: ET.Element) -> list[tuple[float, float]]:
    """(x, y) of the centre of each non-finite marker of the plot (the legend's swatch has no tooltip)."""
    found = []
    for path in root.iter("path"):
        if path.get("stroke") == svg._NOT_FINITE_COLOR and path.find("title") is not None:
            x, y = re.match(r"M(-?[\d.]+) (-?[\d.]+)", path.get("d")).groups()
            found.append((float(x) + 4, float(y) + 4))  # drawn from its top-left corner, 8 units wide
    return found


def y_tick_labels(root: ET.Element) -> list[tuple[float, str]]:
    """(x of the right end, text) of each y tick label (the only right-aligned texts)."""
    return [(float(t.get("x")), t.text) for t in root.iter("text") if t.get("text-anchor") == "end"]


def test_a_nan_in_the_last_epoch_is_marked_inside_the_plot():
    """The x axis was sized from the finite points only: a run whose loss became nan in its last epoch (21) had
    its cross drawn at x = 553.8, past the plot's right edge at 534."""
    ys = [2 - 0.05 * i for i in range(20)] + [math.nan]
    root = parse(line_chart([Series("loss", list(range(1, 22)), ys)], title="t", x_label="epoch", y_label="loss",
                            width=560))
    left, top, right, bottom = plot_box(root)
    ((x, y),) = crosses(root)
    assert left <= x <= right and top <= y <= bottom
    # an inf marked at an x far past the finite points: still inside
    root = parse(line_chart([Series("loss", [0, 1, 2, 1000], [1.0, 0.9, 0.8, math.inf])], title="t", x_label="step",
                            y_label="loss", width=560))
    left, _, right, _ = plot_box(root)
    ((x, _),) = crosses(root)
    assert left <= x <= right


@pytest.mark.parametrize("ys, log_y, y_format, widest", [
    ([0.0001, 0.0002, 0.0003], False, "{:g}", "0.00025"),  # AdamW's learning rate
    ([1.0, 1e3, 1e6], True, "{:.3g}", "1e+06"),  # a loss that exploded, on a log axis
])
def test_wide_y_tick_labels_get_room_between_the_y_label_and_the_plot(ys, log_y, y_format, widest):
    """The left margin was a fixed 58 units: 0.00025 and 1e+06 ran into the rotated y label (its baseline at
    x = 14) and past the chart's left edge."""
    root = parse(line_chart([Series("s", [1, 2, 3], ys)], title="t", x_label="step", y_label="learning rate",
                            y_format=y_format, log_y=log_y, width=560))
    labels = y_tick_labels(root)
    assert widest in [text for _, text in labels]
    left = plot_box(root)[0]
    for right_end, text in labels:
        assert right_end < left  # the label ends before the plot
        assert right_end - len(text) * svg._CHAR_WIDTH >= svg._Y_TITLE_ROOM, f"{text!r} runs into the y label"
    # short labels keep the usual margin
    assert plot_box(parse(line_chart([Series("s", [1, 2], [1.0, 2.0])], title="t", x_label="x", y_label="y")))[0] \
        == svg._MARGIN_LEFT


@pytest.mark.parametrize("log_y", [False, True])
@pytest.mark.parametrize("ys", [[2.3, 1.7e308, 1.1], [1.7e308], [1.6e308, 1.7e308], [-1.7e308, 1.7e308],
                                [5e-324], [5e-324, 1.0]])
def test_values_near_the_largest_and_smallest_float_are_drawn_inside_the_plot(ys, log_y):
    """A loss of 1.7e308 (finite) made the log axis compute 10.0 ** 309: OverflowError, and no page."""
    root = parse(line_chart([Series("loss", list(range(len(ys))), ys)], title="t", x_label="epoch", y_label="loss",
                            log_y=log_y))
    left, top, right, bottom = plot_box(root)
    drawn = [point for path in series_paths(root) for point in points_of(path)]
    assert drawn, "no point drawn"
    for _, x, y in drawn:
        assert left - 0.1 <= x <= right + 0.1 and top - 0.1 <= y <= bottom + 0.1
    assert not any(word in text for _, text in y_tick_labels(root) for word in ("inf", "nan"))


def test_log_ticks_stay_within_the_decades_a_float_holds():
    for lo, hi in ((1.0, 1.7e308), (1e308, 1.7e308), (5e-324, 1.0), (5e-324, 5e-324), (1.7e308, 1.7e308)):
        ticks = svg._log_ticks(lo, hi)
        assert len(ticks) >= 2 and all(1e-307 <= t <= 1e308 and math.isfinite(t) for t in ticks), (lo, hi, ticks)
        assert ticks == sorted(ticks)


# --- a flat curve's axis stays within what its quantity can be ----------------------------------------


def test_a_flat_range_is_widened_but_not_past_the_bounds_of_its_quantity():
    assert nice_ticks(100, 100, floor=0, ceiling=100) == [90.0, 92.0, 94.0, 96.0, 98.0, 100.0]  # not 90 to 110
    assert nice_ticks(0, 0, floor=0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]  # a loss or rate of 0: not below 0
    assert nice_ticks(1, 1, target=6, integer=True, floor=1) == [1.0, 2.0]  # one epoch: not epochs 0, 1, 2
    assert nice_ticks(50, 50, floor=0, ceiling=100)[0] < 50 < nice_ticks(50, 50, floor=0, ceiling=100)[-1]
    assert nice_ticks(7, 7, floor=7, ceiling=7)[0] < 7  # bounds that leave no room: widened both ways
    # a value already past a bound (a file edited by hand) keeps its usual padding
    assert nice_ticks(105, 105, ceiling=100)[-1] > 105
    # a range of some width is not changed by the bounds
    assert nice_ticks(93, 99.5, floor=0, ceiling=100) == nice_ticks(93, 99.5)


def test_the_page_draws_a_one_epoch_run_at_100_percent_on_possible_axes():
    """A one-epoch run at 100% val accuracy got accuracy ticks 90 to 110 and epoch ticks 0, 1, 2."""
    from cnnlab.report.page import _accuracy_chart, _chart, _loss_chart

    def ticks(chart: str) -> tuple[list[float], list[float]]:
        root = parse(chart)
        y = [float(text) for _, text in y_tick_labels(root)]
        bottom = plot_box(root)[3]
        x = [float(t.text.replace(",", "")) for t in root.iter("text")
             if t.get("text-anchor") == "middle" and t.get("y") == svg._num(bottom + 14)]
        return x, y

    x, y = ticks(_accuracy_chart([Series("val accuracy", [1], [100.0])], title="t", x_label="epoch",
                                 y_label="accuracy (%)"))
    assert max(y) == 100 and min(y) < 100 and min(x) == 1
    x, y = ticks(_loss_chart([Series("loss", [1], [0.0])], title="t", x_label="epoch", y_label="loss"))
    assert min(y) == 0 and min(x) == 1
    x, y = ticks(_chart([Series("lr", [0], [0.0])], title="t", x_label="step", y_label="learning rate",
                        y_format="{:g}", y_bounds=(0.0, None)))
    assert min(y) == 0 and min(x) == 0
