"""The report page: one self-contained HTML document for one run, or for several runs side by side.

The page needs no network and no server: the style sheet is inline, the curves are inline SVG
(:mod:`cnnlab.report.svg`), PNG images are ``data:`` URIs, and there is no script (``<details>``
collapses what is long). Every text that comes from a run (names, config values, class names,
file names, findings, notes) goes through :func:`html.escape`, so a class folder named
``<script>...`` shows as text.

=========================  ===================================================================
name                       what
=========================  ===================================================================
:func:`render_run`         the page of one :class:`~cnnlab.report.runs.RunRecord`
:func:`render_comparison`  the page of several runs: overlaid curves and a table of the config
                           keys that differ and can change a result, the best run (highest best
                           val accuracy) starred; keys that change none (log.*, the records of
                           how a path was typed) in a collapsed table of their own
=========================  ===================================================================

Stable hooks for tests and scripts (class names and data attributes):

- each run's name: an element with class ``run-name`` and ``data-run="NAME"``;
- accuracies: class ``best-val``, ``final-val`` and ``test-acc``, each with ``data-value`` holding the
  fraction as Python writes a float (absent when the value is unknown);
- the comparison table: ``<tr class="run-row" data-run="NAME">``, the best run's row also ``best``;
- the keys that differ but change no result: ``<details class="result-free">``, one ``<tr data-run="NAME">`` per run.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from cnnlab import __version__
from cnnlab.config import dump_yaml
from cnnlab.errors import CnnlabError, counted, display_name, is_finite_number, is_number
from cnnlab.report.runs import compared_config, data_groups, stale_remedy
from cnnlab.report.svg import PALETTE, Series, line_chart, line_swatch
from cnnlab.run import CONFIG_FILE
from cnnlab.text import duration_text
from cnnlab.train.logging import LOG_SCALE_SPAN, moving_average

if TYPE_CHECKING:
    from cnnlab.report.runs import EvalRecord, RunRecord

# A PNG larger than this is not embedded (the page names the file instead): a report must stay small
# enough to mail (the 45-epoch Fashion-MNIST report is under 3 MB with its ~100 KB mistakes.png).
MAX_EMBEDDED_PNG_BYTES = 1_500_000
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The full confusion matrix is drawn as a table up to this many classes; beyond, the most confused
# pairs are listed instead (a 100x100 table is 10,000 cells nobody reads).
MAX_CONFUSION_CLASSES = 30
CONFUSED_PAIRS = 10  # most confused (true, predicted) pairs listed under the matrix
_SHADES = 8  # shading levels of a confusion cell: its share of the true class's images, in eighths
PER_CLASS_OPEN = 20  # the per-class table starts open up to this many classes, collapsed above

STEP_SMOOTHING = 50  # steps in the moving average of the step loss when the config does not say (log.smoothing)
# Chart size in viewBox units: about the width a chart gets in the two-column grid at 1280 px, so its
# 12-unit text shows at about 11 px there (the chart scales down on a phone; pinch-zoom keeps it sharp).
CHART_WIDTH, CHART_HEIGHT = 560, 300
TITLE_NAMES_CHARS = 70  # a comparison's <title> lists run names up to about this many characters

_STATE_LABELS = {
    "finished": "Finished",
    "running": "Still running",
    "interrupted": "Interrupted",
    "diverged": "Diverged",
    "failed": "Failed",
    "stopped": "Stopped (its process is gone)",
    "incomplete": "Incomplete",
    "empty": "No epoch finished yet",
}
# banner colour of each state: a run that broke (FAIL), one that stopped short (WARN), one under way (NOTE)
_STATE_VERDICT = {"diverged": "FAIL", "failed": "FAIL", "interrupted": "WARN", "stopped": "WARN",
                  "incomplete": "WARN", "empty": "WARN", "running": "NOTE", "finished": "PASS"}
_VERDICTS = ("PASS", "WARN", "FAIL", "NOTE")

_CSS = """
:root{--fg:#1d2125;--muted:#57606a;--bg:#f3f4f6;--card:#fff;--line:#d0d7de;--soft:#f6f8fa;
--PASS:#1a7f37;--WARN:#9a6700;--FAIL:#cf222e;--NOTE:#0969da;color-scheme:light}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",sans-serif}
main{max-width:1100px;margin:0 auto;padding:16px}
h1{font-size:1.55rem;line-height:1.25;margin:0 0 4px;overflow-wrap:anywhere}
h2{font-size:1.15rem;margin:0 0 12px}
h3{font-size:1rem;margin:16px 0 8px;overflow-wrap:anywhere}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:16px;margin:0 0 16px;min-width:0}
.sub{color:var(--muted);margin:0 0 12px;overflow-wrap:anywhere}
nav{font-size:.9rem;margin:0 0 12px;color:var(--muted)}
nav a{color:var(--NOTE);margin-right:12px;text-decoration:none;white-space:nowrap}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px 18px;margin:0}
.facts div{min-width:0}
.facts div.wide{grid-column:1/-1}
.facts dt{font-size:.78rem;color:var(--muted);text-transform:uppercase;letter-spacing:.03em}
.facts dd{margin:0;font-size:1.05rem;font-variant-numeric:tabular-nums;overflow-wrap:anywhere}
.facts dd small{color:var(--muted);font-size:.85rem}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:.8rem;font-weight:600;color:#fff;
vertical-align:middle;white-space:nowrap}
.v-PASS{background:var(--PASS)}.v-WARN{background:var(--WARN)}.v-FAIL{background:var(--FAIL)}.v-NOTE{background:var(--NOTE)}
.banner{border-left:5px solid var(--NOTE);background:var(--card);border-radius:6px;padding:10px 14px;margin:0 0 16px;
border-top:1px solid var(--line);border-right:1px solid var(--line);border-bottom:1px solid var(--line)}
.banner.b-WARN{border-left-color:var(--WARN)}.banner.b-FAIL{border-left-color:var(--FAIL)}
.banner p{margin:2px 0;overflow-wrap:anywhere}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,440px),1fr));gap:16px}
.charts figure,figure{margin:0;min-width:0}
svg.chart{display:block;width:100%;height:auto;max-width:100%}
.table-wrap{overflow-x:auto;-webkit-overflow-scrolling:touch;max-width:100%;margin:0 0 8px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:.92rem}
th,td{padding:5px 9px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap;vertical-align:top}
th{background:var(--soft);font-weight:600}
td.num,th.num{text-align:right}
td.wrap{white-space:normal;min-width:16em}
tr.best td{background:#fff8c5}
.star{color:#bf8700;font-size:1.1rem}
svg.swatch{display:inline-block;width:22px;height:12px;margin-right:6px;vertical-align:-1px}
table.cm td{text-align:right;min-width:2.6em}
table.cm th.true{text-align:right}
""" + "".join(
    # confusion cells: diagonal in blue, errors in vermillion (Okabe-Ito), darker = larger share of the row
    f"table.cm td.d{k}{{background:rgba(0,114,178,{0.9 * k / _SHADES:.3f})}}"
    f"table.cm td.o{k}{{background:rgba(213,94,0,{0.9 * k / _SHADES:.3f})}}"
    for k in range(1, _SHADES + 1)
) + "".join(f"table.cm td.d{k},table.cm td.o{k}{{color:#fff}}" for k in range(_SHADES // 2 + 1, _SHADES + 1)) + """
table.cm td.z{color:#afb8c1}
.finding{border-top:1px solid var(--line);padding:10px 0}
.finding:first-of-type{border-top:0;padding-top:0}
.finding p{margin:4px 0;overflow-wrap:anywhere}
.muted{color:var(--muted)}
.stale{color:var(--WARN)}
pre{background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:10px;overflow:auto;
font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;margin:8px 0 0}
pre.config{max-height:32em}
details{margin:8px 0}
summary{cursor:pointer;font-weight:600}
img{max-width:100%;height:auto;display:block}
ul{margin:4px 0;padding-left:1.3em}
li{overflow-wrap:anywhere}
footer{color:var(--muted);font-size:.82rem;text-align:center;margin:8px 0 24px;overflow-wrap:anywhere}
@media (max-width:600px){main{padding:8px}.card{padding:12px}h1{font-size:1.3rem}
.facts{grid-template-columns:repeat(2,minmax(0,1fr))}}
"""


# ---------------------------------------------------------------------------------------------
# text and numbers


# A lone surrogate: a byte of a file or folder name that is not UTF-8 (Python's surrogateescape), or a "\udXXX"
# escape in a JSON file. No UTF-8 page can hold one, so it is shown as display_name shows it (\xff).
_SURROGATE = re.compile("[\ud800-\udfff]")


def _e(value) -> str:
    """Any value as escaped HTML text (quotes too: the result may sit in an attribute); a lone surrogate as its
    escape, so that no name read from disk stops the page from being written."""
    text = _SURROGATE.sub(lambda found: display_name(found.group()), str(value))
    return html.escape(text, quote=True)


def _path(path) -> str:
    """A run's folder as the page shows it: as display_name shows names (a byte that is not UTF-8 as \\xff, a
    newline as \\n), escaped."""
    return _e(display_name(str(path)))


def _pct(fraction) -> str:
    """A fraction as a percentage with two decimals (0.932 -> 93.20%); "—" when unknown."""
    if not is_number(fraction):
        return "—"
    if not math.isfinite(fraction):
        return str(fraction)
    return f"{100 * fraction:,.2f}%"


def _int(value) -> str:
    return f"{int(value):,}" if is_finite_number(value) else "—"


def _compact(value) -> str:
    """A large count as 1.82 G; smaller than a million as it is."""
    if not is_finite_number(value):
        return "—"
    for size, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit}"
    return f"{int(value):,}"


def _real(value, digits: int = 4) -> str:
    """A loss or similar: ``digits`` decimals below 1,000, thousands separators above."""
    if not is_number(value):
        return "—"
    if not math.isfinite(value):
        return str(value)
    return f"{value:,.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"


def _duration(seconds) -> str:
    """A duration as `cnnlab runs` writes it (:func:`cnnlab.text.duration_text`); "—" when unknown."""
    if not is_finite_number(seconds) or seconds < 0:
        return "—"
    return duration_text(seconds)


def _value_attr(fraction) -> str:
    """`` data-value="0.9320..."`` (Python's repr of the float) or nothing when unknown."""
    return f' data-value="{_e(repr(float(fraction)))}"' if is_number(fraction) else ""


def _config_text(value) -> str:
    """A config value for a table cell: scalars as YAML writes them, lists and maps as JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _lookup(config: Optional[dict], dotted: str):
    """The value at ``dotted`` ("optim.lr") in a nested config; (False, None) when absent."""
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _token(value: str, allowed: Sequence[str], default: str) -> str:
    """A value safe to put in a class name: one of ``allowed``, else ``default``."""
    return value if value in allowed else default


# ---------------------------------------------------------------------------------------------
# building blocks


def _table(headers: Sequence[tuple[str, bool]], rows: Sequence[str], css_class: str = "") -> str:
    """A table in a horizontal-scroll wrapper. ``headers``: (escaped HTML, numeric?); ``rows``: <tr> HTML."""
    head = "".join(f'<th class="num">{text}</th>' if numeric else f"<th>{text}</th>" for text, numeric in headers)
    cls = f' class="{css_class}"' if css_class else ""
    return f'<div class="table-wrap"><table{cls}><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _cells(values: Sequence[tuple[str, bool]]) -> str:
    """<td> cells from (escaped HTML, numeric?) pairs."""
    return "".join(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>" for text, numeric in values)


def _facts(items: Sequence[tuple[str, str]], wide: Sequence[str] = ()) -> str:
    """A grid of label/value pairs; labels are plain text, values escaped HTML. Labels in ``wide`` take a whole row."""
    body = "".join(('<div class="wide">' if label in wide else "<div>") + f"<dt>{_e(label)}</dt><dd>{value}</dd></div>"
                   for label, value in items)
    return f'<dl class="facts">{body}</dl>'


def _badge(verdict: str) -> str:
    verdict = _token(str(verdict), _VERDICTS, "NOTE")
    return f'<span class="badge v-{verdict}">{verdict}</span>'


def _state_badge(state: str) -> str:
    label = _STATE_LABELS.get(state, str(state))
    return f'<span class="badge v-{_STATE_VERDICT.get(state, "NOTE")}">{_e(label)}</span>'


def _png_data_uri(path: Optional[Path]) -> tuple[Optional[str], Optional[str]]:
    """(data URI, None) for a readable PNG file, else (None, why it is not shown)."""
    if path is None:
        return None, None
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return None, f"{Path(path).name} could not be read ({err.strerror or err})."
    if not data.startswith(_PNG_SIGNATURE):
        return None, f"{Path(path).name} is not a PNG image."
    if len(data) > MAX_EMBEDDED_PNG_BYTES:
        return None, (f"{Path(path).name} ({len(data):,} bytes) is larger than {MAX_EMBEDDED_PNG_BYTES:,} bytes and "
                      "is not embedded; open it from the eval folder.")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii"), None


def _document(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="cnnlab {_e(__version__)}">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")


def _footer(text: str) -> str:
    return f"<footer>{_e(text)}</footer>"


def _context(context: Optional[str]) -> str:
    """The line a caller gives about where the runs come from (an experiment's name, size and torch's thread
    count), under the page's header; nothing when None."""
    return f'<p class="sub context">{_e(context)}</p>' if context else ""


# ---------------------------------------------------------------------------------------------
# one run: sections


def _machine(environment: Optional[dict]) -> str:
    """The machine a run trained on, from environment.json; "not recorded" for older runs. A run resumed on
    another machine (or with other cores) names each, from the epoch it took over."""
    if not isinstance(environment, dict) or not environment:
        return '<span class="muted">not recorded</span>'
    earlier = environment.get("earlier")
    records = [r for r in (earlier if isinstance(earlier, list) else []) if isinstance(r, dict)] + [environment]
    shown: list[tuple[str, object]] = []  # (text, first epoch): a part on the same machine as the one before joins it
    for record in records:
        text = _machine_text(record)
        if not shown or shown[-1][0] != text:
            shown.append((text, record.get("first_epoch")))
    if len(shown) > 1:
        text = "; ".join(f"from epoch {first}: {part}" if isinstance(first, int) else part for part, first in shown)
    else:
        text = shown[0][0]
    platform = environment.get("platform")
    title = f' title="{_e(platform)}"' if platform else ""
    return f"<span{title}>{_e(text)}</span>"


def _machine_text(environment: dict) -> str:
    """One machine record as text: device, CPU and cores, DDP processes, versions."""
    parts = []
    if environment.get("device"):
        parts.append(str(environment["device"]))
    cpu = environment.get("cpu")
    cores = environment.get("cores")
    if cpu or cores:
        cores_text = counted(cores, "core") if isinstance(cores, int) else (f"{cores} cores" if cores else None)
        parts.append(", ".join(str(p) for p in (cpu, cores_text) if p))
    processes = environment.get("processes")
    if isinstance(processes, int) and processes > 1:  # torchrun's DDP ranks; a record without the key is one process
        parts.append(f"{processes} processes (DDP)")
    for key, label in (("torch", "torch"), ("python", "Python"), ("cnnlab", "cnnlab")):
        if environment.get(key):
            parts.append(f"{label} {environment[key]}")
    return " · ".join(parts) or "not recorded"


def _epochs(record: RunRecord) -> str:
    done = record.rows[-1].get("epoch", len(record.rows)) if record.rows else 0
    planned = record.epochs_planned
    return f"{_int(done)} / {_int(planned)}" if planned else f"{_int(done)} <small>(planned: unknown)</small>"


def _has_training_time(record: RunRecord) -> bool:
    """The run's training time is known: metrics.csv records epoch times only for finished epochs, so a run
    with none (stopped, diverged or failed in its first epoch) has no time to show (`cnnlab runs` shows none),
    and neither has one whose metrics.csv has no epoch_seconds column."""
    return record.has_training_time and is_finite_number(record.seconds)


def _header(record: RunRecord) -> str:
    best = f'<span class="best-val"{_value_attr(record.best_val_acc)}>{_pct(record.best_val_acc)}</span>'
    if record.best_epoch is not None:
        best += f" <small>epoch {_int(record.best_epoch)}</small>"
    final = f'<span class="final-val"{_value_attr(record.final_val_acc)}>{_pct(record.final_val_acc)}</span>'
    if record.test_acc is not None:
        test = f'<span class="test-acc"{_value_attr(record.test_acc)}>{_pct(record.test_acc)}</span>'
    elif record.test_stale:
        test = '<span class="muted test-stale">stale: the run was trained on after its eval; evaluate it again</span>'
    elif record.test_elsewhere:  # an eval folder copied in: the page would seem to contradict "not evaluated"
        test = ('<span class="muted test-elsewhere">not evaluated: its test eval measured another run\'s weights'
                '</span>')
    else:
        test = '<span class="muted">not evaluated</span>'
    macs = _int(record.macs)
    if is_finite_number(record.macs) and record.macs >= 1e6:
        macs += f" <small>({_compact(record.macs)})</small>"
    ips = record.images_per_second
    items = [
        ("model", _e(record.model)),
        ("data", _e(record.data)),
        ("parameters", _int(record.params)),
        ("MACs per image", macs),
        ("best val accuracy", best),
        ("final val accuracy", final),
        ("test accuracy", test),
        ("epochs", _epochs(record)),
        ("training time", f'<span title="{_e(f"{record.seconds:.1f} s")}">{_duration(record.seconds)}</span>'
         if _has_training_time(record) else "—"),
        ("images / s", _int(round(ips)) if is_finite_number(ips) else "—"),
        ("machine", _machine(record.environment)),
    ]
    # a run that finished before its planned epochs says why (early stopping's sentence, from status.json); the
    # banner says it for a run that did not finish
    ended = (f'<p class="sub ended-early">{_e(record.state_note)}</p>'
             if record.state == "finished" and ": " in record.state_note else "")  # "finished 3 of 10 epochs: why"
    return (f'<header class="card"><h1 class="run-name" data-run="{_e(record.name)}">{_e(record.name)}</h1>'
            f'<p class="sub">{_state_badge(record.state)} {_path(record.path)}</p>{ended}'
            f'{_facts(items, wide=("machine",))}</header>')


def _banner(record: RunRecord) -> str:
    """What a reader must know before trusting the numbers: the run did not finish, files were damaged, results
    measured weights that have been replaced since."""
    lines = []
    if record.state != "finished":
        label = _STATE_LABELS.get(record.state, str(record.state))
        lines.append(f"<p><strong>{_e(label)}:</strong> {_e(record.state_note)}</p>")
    if record.problems:
        count = len(record.problems)
        lines.append(f'<p><strong>{count:,} file problem{"s" if count != 1 else ""}:</strong> '
                     f'some files were missing, unreadable or cut short; see <a href="#problems">problems</a>.</p>')
    stale = record.stale_results
    if stale:
        names = ", ".join(name for name, _ in stale)
        lines.append(f"<p><strong>Stale results:</strong> {_e(names)} measured weights that have been replaced "
                     f"since (a resumed run rewrites its checkpoints), so they do not describe the run now; "
                     f"{_e(stale_remedy(record))}.</p>")
    if not lines:
        return ""
    verdict = _STATE_VERDICT.get(record.state, "WARN")
    if verdict == "PASS":  # finished, but its files have problems
        verdict = "WARN"
    return f'<div class="banner b-{verdict}" role="status">{"".join(lines)}</div>'


# What the charts' quantities can be (lowest, highest): a flat curve's axis is widened around it, never past them (a
# one-epoch run at 100% val accuracy drew ticks up to 110%). A loss and a learning rate are never negative.
ACCURACY_BOUNDS = (0.0, 100.0)  # accuracy in %
NON_NEGATIVE = (0.0, None)


def _chart(series: list[Series], **labels) -> str:
    """A :func:`~cnnlab.report.svg.line_chart` at the page's chart size. Its x axis (epoch, step, training time)
    starts no lower than the first x of the series: a one-epoch run's axis is not widened back to epoch 0."""
    first = min((x for item in series for x in item.x if is_finite_number(x)), default=None)
    return line_chart(series, width=CHART_WIDTH, height=CHART_HEIGHT, x_bounds=(first, None), **labels)


def _accuracy_chart(series: list[Series], **labels) -> str:
    """An accuracy chart (values in %, 0 to 100)."""
    return _chart(series, y_bounds=ACCURACY_BOUNDS, y_format="{:.0f}", **labels)


def _loss_chart(series: list[Series], **labels) -> str:
    """A loss chart, on a log axis where the positive finite losses span more than LOG_SCALE_SPAN (a run that
    exploded), as curves.png draws it: a linear axis up to 1e34 shows every loss before the explosion as 0."""
    values = [y for item in series for y in item.y if is_finite_number(y) and y > 0]
    if values and max(values) > LOG_SCALE_SPAN * min(values):
        labels = {**labels, "log_y": True, "y_format": "{:.3g}"}
    return _chart(series, y_bounds=NON_NEGATIVE, **labels)


def _smoothing(record: RunRecord) -> int:
    found, value = _lookup(record.config, "log.smoothing")
    return value if found and isinstance(value, int) and not isinstance(value, bool) and value >= 1 else STEP_SMOOTHING


def _epoch_series(rows: list[dict], key: str, scale: float = 1.0) -> tuple[list, list]:
    """(epochs, values) of the rows that have ``key`` (non-finite values kept: the chart marks them)."""
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if is_number(value) and is_number(row.get("epoch")):
            xs.append(row["epoch"])
            ys.append(value * scale)
    return xs, ys


def _curves(record: RunRecord) -> str:
    charts = []
    # --- step loss and its moving average (over the finite losses: one inf must not blank the rest)
    steps = [(s, loss) for s, loss, _ in record.steps if is_number(s) and is_number(loss)]
    step_x = [s for s, _ in steps]
    step_y = [loss for _, loss in steps]
    finite = [(s, loss) for s, loss in steps if math.isfinite(loss)]
    window = _smoothing(record)
    mean = moving_average([loss for _, loss in finite], window).tolist() if finite else []
    charts.append(_loss_chart(
        [Series("train loss per step", step_x, step_y, color=PALETTE[5]),
         Series(f"{window}-step mean", [s for s, _ in finite], mean, color=PALETTE[0])],
        title="Training loss per step", x_label="step", y_label="loss", y_format="{:.2f}"))
    # --- per epoch: loss, accuracy
    rows = record.rows
    loss_series = [Series("train loss", *_epoch_series(rows, "train_loss"), color=PALETTE[0]),
                   Series("val loss", *_epoch_series(rows, "val_loss"), dashed=True, color=PALETTE[1])]
    acc_series = [Series("train accuracy", *_epoch_series(rows, "train_acc", 100.0), color=PALETTE[0]),
                  Series("val accuracy", *_epoch_series(rows, "val_acc", 100.0), dashed=True, color=PALETTE[1])]
    ema_loss, ema_acc = _epoch_series(rows, "ema_val_loss"), _epoch_series(rows, "ema_val_acc", 100.0)
    if ema_loss[0]:
        loss_series.append(Series("EMA val loss", *ema_loss, dashed=True, color=PALETTE[2]))
    if ema_acc[0]:
        acc_series.append(Series("EMA val accuracy", *ema_acc, dashed=True, color=PALETTE[2]))
    charts.append(_loss_chart(loss_series, title="Loss per epoch", x_label="epoch", y_label="loss"))
    charts.append(_accuracy_chart(acc_series, title="Accuracy per epoch", x_label="epoch", y_label="accuracy (%)"))
    # --- learning rate: per step when recorded, else per epoch
    lr_steps = [(s, lr) for s, _, lr in record.steps if is_number(s) and is_number(lr)]
    whose = _lr_whose(record.config)
    if lr_steps:
        lr_chart = _chart([Series("learning rate", [s for s, _ in lr_steps], [lr for _, lr in lr_steps],
                                      color=PALETTE[2])],
                              title=f"Learning rate per step{whose}", x_label="step", y_label="learning rate",
                              y_format="{:g}", y_bounds=NON_NEGATIVE)
    else:
        lr_chart = _chart([Series("learning rate", *_epoch_series(rows, "lr"), color=PALETTE[2])],
                              title=f"Learning rate per epoch{whose}", x_label="epoch", y_label="learning rate",
                              y_format="{:g}", y_bounds=NON_NEGATIVE)
    charts.append(lr_chart)
    figures = "".join(f"<figure>{chart}</figure>" for chart in charts)
    return f'<section class="card" id="curves"><h2>Curves</h2><div class="charts">{figures}</div></section>'


def _lr_whose(config: Optional[dict]) -> str:
    """Whose rate the lr column is, for the chart's title, where the run's parameters train at several rates.

    The column is the classifier's rate, at optim.lr (docs/training.md, "Which rate lr is"). Empty where one rate
    is every parameter's (or the config does not say)."""
    _, name = _lookup(config, "optim.name")
    _, mult = _lookup(config, "optim.backbone_lr_mult")
    _, decay = _lookup(config, "optim.layer_decay")
    mult = mult if is_number(mult) else 1.0
    decay = decay if is_number(decay) else 1.0
    if mult != 1 or decay != 1 or name == "muon":
        return " (the classifier's; the other rates follow from the config)"
    return ""


def _findings(record: RunRecord) -> str:
    parts = []
    for finding in record.findings:
        verdict = getattr(finding, "verdict", "NOTE")
        title = getattr(finding, "title", "")
        rule = getattr(finding, "rule", "")
        evidence = getattr(finding, "evidence", "")
        remedy = getattr(finding, "remedy", "")
        parts.append(f'<div class="finding">{_badge(verdict)} <strong>{_e(title)}</strong> '
                     f'<span class="muted">({_e(rule)})</span>'
                     f"<p>{_e(evidence)}</p>"
                     + (f"<p><strong>Try:</strong> {_e(remedy)}</p>" if remedy else "")
                     + "</div>")
    # a NOTE (a line left out, rules a short run could not check) is no verdict: the PASS line still says
    # that the rules which read the curves found nothing
    if all(getattr(finding, "verdict", "NOTE") == "NOTE" for finding in record.findings):
        if record.rows:
            from cnnlab.tune.diagnose import NOT_CHECKED  # here, as runs.py does: the page module stays light

            unchecked = any(getattr(finding, "rule", "") == NOT_CHECKED for finding in record.findings)
            which = "No rule that could read the curves" if unchecked else "No rule"
            parts.append(f'<div class="finding">{_badge("PASS")} {which} found a problem in the curves.</div>')
        elif record.steps:  # the step rules found nothing, and the epoch rules had nothing to read: no verdict
            parts.append('<p class="muted">Nothing to judge yet: steps were recorded, but no epoch has finished, '
                         'and most rules read epochs.</p>')
        else:
            parts.append('<p class="muted">Nothing to read yet: no epoch or step has been recorded.</p>')
    return f'<section class="card" id="diagnosis"><h2>Diagnosis of the curves</h2>{"".join(parts)}</section>'


def _per_class(metrics: dict) -> str:
    per_class = metrics.get("per_class")
    if not isinstance(per_class, list) or not per_class:
        return ""
    rows = []
    for item in per_class:
        if not isinstance(item, dict):
            continue
        rows.append("<tr>" + _cells([(_e(item.get("class", "?")), False),
                                     (_real(item.get("precision"), 3), True),
                                     (_real(item.get("recall"), 3), True),
                                     (_real(item.get("f1"), 3), True),
                                     (_int(item.get("support")), True)]) + "</tr>")
    table = _table([("class", False), ("precision", True), ("recall", True), ("F1", True), ("images", True)],
                   rows)
    opened = " open" if len(rows) <= PER_CLASS_OPEN else ""
    return f"<details{opened}><summary>Per class: precision, recall, F1 ({len(rows):,} classes)</summary>{table}</details>"


def _class_names(metrics: dict, size: int) -> list[str]:
    per_class = metrics.get("per_class")
    names = [str(item.get("class", i)) for i, item in enumerate(per_class)
             if isinstance(item, dict)] if isinstance(per_class, list) else []
    return names if len(names) == size else [str(i) for i in range(size)]


def _confusion(metrics: dict) -> str:
    matrix = metrics.get("confusion")
    if (not isinstance(matrix, list) or not matrix
            or not all(isinstance(row, list) and len(row) == len(matrix) for row in matrix)
            or not all(is_finite_number(v) for row in matrix for v in row)):
        return ""
    size = len(matrix)
    names = _class_names(metrics, size)
    parts = []
    if size <= MAX_CONFUSION_CLASSES:
        head = [("true \\ predicted", False)] + [(_e(name), True) for name in names]
        rows = []
        for i, row in enumerate(matrix):
            total = sum(row)
            cells = []
            for j, count in enumerate(row):
                share = count / total if total else 0.0
                level = round(share * _SHADES)
                css = "z" if count == 0 else f"{'d' if i == j else 'o'}{level}"
                tip = f"{names[i]} shown as {names[j]}: {int(count):,} of {int(total):,} ({100 * share:.1f}%)"
                cells.append(f'<td class="{css}" title="{_e(tip)}">{int(count):,}</td>')
            rows.append(f'<tr><th class="true">{_e(names[i])}</th>{"".join(cells)}</tr>')
        parts.append("<h3>Confusion matrix</h3><p class='muted'>Rows: the true class; columns: the predicted "
                     "class; shading: the share of the true class's images.</p>" + _table(head, rows, "cm"))
    pairs = sorted(((matrix[i][j], i, j) for i in range(size) for j in range(size) if i != j and matrix[i][j] > 0),
                   key=lambda item: (-item[0], item[1], item[2]))[:CONFUSED_PAIRS]
    if pairs:
        rows = []
        for count, i, j in pairs:
            total = sum(matrix[i])
            rows.append("<tr>" + _cells([(_e(names[i]), False), (_e(names[j]), False), (_int(count), True),
                                         (_pct(count / total) if total else "—", True)]) + "</tr>")
        title = ("Most confused pairs" if size <= MAX_CONFUSION_CLASSES
                 else f"Most confused pairs ({size:,} classes: too many for the full matrix)")
        parts.append(f"<h3>{_e(title)}</h3>" + _table([("true class", False), ("predicted as", False),
                                                        ("images", True), ("of the true class", True)], rows))
    return "".join(parts)


def _mistakes(record: EvalRecord) -> str:
    parts = []
    uri, why = _png_data_uri(record.mistakes_png)
    if uri is not None:
        parts.append(f'<h3>Most confidently wrong images</h3><figure><img src="{uri}" '
                     f'alt="{_e(f"the most confidently wrong images of {record.name}")}"></figure>')
    elif why is not None:
        parts.append(f'<p class="muted">{_e(why)}</p>')
    mistakes = record.metrics.get("mistakes")
    if isinstance(mistakes, list) and mistakes and all(isinstance(m, dict) for m in mistakes):
        keys = list(dict.fromkeys(key for m in mistakes for key in m))
        rows = []
        for mistake in mistakes:
            cells = []
            for key in keys:
                value = mistake.get(key)
                if isinstance(value, float):
                    cells.append((_pct(value) if 0 <= value <= 1 else _real(value), True))
                elif is_number(value):
                    cells.append((_int(value), True))
                else:
                    cells.append((_e("" if value is None else value), False))
            rows.append("<tr>" + _cells(cells) + "</tr>")
        header = [(_e(key), False) for key in keys]
        # metrics.json keeps the most confident few of the mistakes: the title says of how many
        images, top1 = record.metrics.get("images"), record.metrics.get("top1")
        wrong = round(images * (1 - top1)) if is_number(images) and is_finite_number(top1) else None
        title = (f"The {len(rows):,} most confident of {wrong:,} mistakes as a table" if wrong and wrong > len(rows)
                 else f"The {len(rows):,} mistakes as a table")
        parts.append(f"<details><summary>{_e(title)}</summary>{_table(header, rows)}</details>")
    return "".join(parts)


def _eval_section(record: EvalRecord, index: int) -> str:
    metrics = record.metrics if isinstance(record.metrics, dict) else {}
    views = metrics.get("views")
    tta = record.tta_text + (f" ({views} views)" if is_number(views) and views > 1 else "")
    checkpoint = metrics.get("checkpoint")
    items = [
        ("split", _e(metrics.get("split", "?"))),
        ("test-time augmentation", _e(tta)),
        ("weights", _e(metrics.get("weights", "?"))),
        ("checkpoint", _e(Path(str(checkpoint)).name) if checkpoint else "—"),
        ("images", _int(metrics.get("images"))),
        ("top-1", f'<span class="eval-top1"{_value_attr(metrics.get("top1"))}>{_pct(metrics.get("top1"))}</span>'),
        ("top-5", _pct(metrics.get("top5"))),
        ("loss", _real(metrics.get("loss"))),
        ("macro F1", _real(metrics.get("macro_f1"), 3)),
        ("time", _duration(metrics.get("seconds"))),
        ("images / s", _int(round(metrics["images_per_second"])) if is_finite_number(metrics.get("images_per_second")) else "—"),
    ]
    notes = metrics.get("notes")
    notes_html = ("<ul>" + "".join(f"<li>{_e(note)}</li>" for note in notes) + "</ul>"
                  if isinstance(notes, list) and notes else "")
    title = (f"Evaluation: {_e(record.name)}" + (" (stale)" if record.stale else "")
             + (" (another run's weights)" if record.elsewhere else ""))
    stale = (f'<p class="stale"><strong>Stale:</strong> {_e(record.stale)}. These numbers describe weights the run '
             "no longer holds.</p>" if record.stale else "")
    if record.elsewhere:
        stale += (f'<p class="stale"><strong>Another run\'s weights:</strong> it measured {_e(record.elsewhere)}, '
                  "not this run's checkpoint, so it is not this run's test accuracy.</p>")
    return (f'<section class="card eval" id="eval-{index}"><h2>{title}</h2>{stale}'
            f"{_facts(items)}{notes_html}{_per_class(metrics)}{_confusion(metrics)}{_mistakes(record)}</section>")


def _tta_and_ensembles(record: RunRecord) -> str:
    if not record.evals and not record.ensembles:
        return ""
    parts = ['<section class="card" id="tta"><h2>Test-time augmentation and ensembles</h2>']
    if record.evals:
        rows = []
        for item in sorted(record.evals, key=lambda e: (str(e.metrics.get("split")), str(e.metrics.get("tta")),
                                                        str(e.metrics.get("weights")), e.name)):
            m = item.metrics
            name = (_e(item.name) + (' <span class="stale">(stale)</span>' if item.stale else "")
                    + (' <span class="stale">(another run\'s weights)</span>' if item.elsewhere else ""))
            rows.append("<tr>" + _cells([(name, False), (_e(m.get("split", "?")), False),
                                         (_e(item.tta_text), False), (_int(m.get("views")), True),
                                         (_e(m.get("weights", "?")), False), (_pct(m.get("top1")), True),
                                         (_pct(m.get("top5")), True), (_real(m.get("loss")), True),
                                         (_int(m.get("images")), True)]) + "</tr>")
        parts.append("<h3>Evaluations</h3>" + _table(
            [("folder", False), ("split", False), ("TTA", False), ("views", True), ("weights", False),
             ("top-1", True), ("top-5", True), ("loss", True), ("images", True)], rows))
    for number, ensemble in enumerate(record.ensembles, 1):
        if not isinstance(ensemble, dict):
            continue
        result = ensemble.get("ensemble") if isinstance(ensemble.get("ensemble"), dict) else {}
        members = [m for m in ensemble.get("members") or [] if isinstance(m, dict)]
        gain = ensemble.get("gain_over_best_member")
        gain_text = f"{100 * gain:+.2f} points" if is_finite_number(gain) else "—"
        source = ensemble.get("file")
        heading = f"Ensemble {number}" + (f" ({Path(str(source)).name})" if source else "")
        if ensemble.get("stale"):
            heading += " (stale)"
        items = [("members", _int(len(members))), ("split", _e(ensemble.get("split", "?"))),
                 ("TTA", _e(ensemble.get("tta", "?"))), ("weights", _e(ensemble.get("weights", "?"))),
                 ("ensemble top-1", _pct(result.get("top1"))), ("best member top-1", _pct(ensemble.get("best_member_top1"))),
                 ("gain over the best member", gain_text), ("ensemble loss", _real(result.get("loss")))]
        rows = ["<tr>" + _cells([(_e(m.get("checkpoint", "?")), False), (_e(m.get("model", "?")), False),
                                 (_pct(m.get("top1")), True), (_real(m.get("loss")), True)]) + "</tr>"
                for m in members]
        stale = (f'<p class="stale"><strong>Stale:</strong> {_e(ensemble["stale"])}. These numbers describe weights '
                 "that are no longer there.</p>" if ensemble.get("stale") else "")
        parts.append(f"<h3>{_e(heading)}</h3>{stale}{_facts(items)}")
        if rows:
            parts.append("<details><summary>Members</summary>" + _table(
                [("checkpoint", False), ("model", False), ("top-1", True), ("loss", True)], rows) + "</details>")
    parts.append("</section>")
    return "".join(parts)


def _init(record: RunRecord) -> str:
    init = record.init
    if not isinstance(init, dict) or not init:
        return ""
    items = []
    for key, label in (("source", "source"), ("kind", "kind"), ("source_model", "source model")):
        if init.get(key) is not None:
            items.append((label, _e(init[key])))
    lists = []
    for key in ("loaded", "skipped", "adapted", "unused"):
        value = init.get(key)
        if isinstance(value, list):
            items.append((f"tensors {key}", _int(len(value))))
            if value:
                names = "".join(f"<li>{_e(name)}</li>" for name in value)
                lists.append(f"<details><summary>{_e(key)} ({len(value):,})</summary><ul>{names}</ul></details>")
    text = f"<p>{_e(init['text'])}</p>" if init.get("text") else ""
    return (f'<section class="card" id="init"><h2>Started from weights</h2>{text}{_facts(items)}'
            f'{"".join(lists)}</section>')


def _config(record: RunRecord) -> str:
    if not isinstance(record.config, dict):
        body = '<p class="muted">The config could not be read; see the problems below.</p>'
    else:
        # As config.yaml is written: text that cnnlab's reader would take for a number (a class named 1e3) is
        # quoted, so that the config copied from the page reads back as the run's
        text = dump_yaml(record.config, sort_keys=False, default_flow_style=False, width=100, allow_unicode=True)
        body = f'<details open><summary>Resolved config</summary><pre class="config">{_e(text)}</pre></details>'
    return f'<section class="card" id="config"><h2>Config</h2>{body}</section>'


def _summary(record: RunRecord) -> str:
    if record.summary_text:
        body = f"<details><summary>Per-layer summary</summary><pre>{_e(record.summary_text)}</pre></details>"
    else:
        body = '<p class="muted">No per-layer summary recorded.</p>'
    return f'<section class="card" id="layers"><h2>Layers</h2>{body}</section>'


def _problems(problems: Sequence[str], anchor: str = "problems") -> str:
    if not problems:
        return ""
    items = "".join(f"<li>{_e(problem)}</li>" for problem in problems)
    return f'<section class="card" id="{anchor}"><h2>Problems reading the run</h2><ul>{items}</ul></section>'


def _nav(links: Sequence[tuple[str, str]]) -> str:
    # joined by spaces: the links wrap onto more lines on a phone
    return "<nav>" + " ".join(f'<a href="#{anchor}">{_e(label)}</a>' for anchor, label in links) + "</nav>"


# ---------------------------------------------------------------------------------------------
# public API


def render_run(record: RunRecord, context: Optional[str] = None) -> str:
    """The whole self-contained HTML page of one run; ``context``: a line under its header (:func:`_context`)."""
    links = [("curves", "Curves"), ("diagnosis", "Diagnosis")]
    links += [(f"eval-{i}", item.name) for i, item in enumerate(record.evals, 1)]
    if record.evals or record.ensembles:
        links.append(("tta", "TTA & ensembles"))
    if isinstance(record.init, dict) and record.init:
        links.append(("init", "Start weights"))
    links += [("config", "Config"), ("layers", "Layers")]
    if record.problems:
        links.append(("problems", "Problems"))
    body = [_header(record), _context(context), _banner(record), _nav(links), _curves(record), _findings(record)]
    body += [_eval_section(item, i) for i, item in enumerate(record.evals, 1)]
    body += [_tta_and_ensembles(record), _init(record), _config(record), _summary(record),
             _problems(record.problems), _footer(f"cnnlab {__version__} · report of {display_name(str(record.path))}")]
    return _document(record.name, "".join(body))


def _comparison_title(records: Sequence[RunRecord]) -> str:
    """ "3 runs: a, b, c", the names cut with "…" after about TITLE_NAMES_CHARS characters."""
    names = ""
    for index, record in enumerate(records):
        piece = record.name if index == 0 else f", {record.name}"
        if len(names) + len(piece) > TITLE_NAMES_CHARS:
            names += ", …" if names else record.name[:TITLE_NAMES_CHARS] + "…"
            break
        names += piece
    return f"{len(records)} runs: {names}"


def _best_index(records: Sequence[RunRecord]) -> Optional[int]:
    """The run with the highest finite best val accuracy (the first of equals), None when no run has one."""
    scored = [(record.best_val_acc, -i) for i, record in enumerate(records) if is_finite_number(record.best_val_acc)]
    return -max(scored)[1] if scored else None


def _findings_count(record: RunRecord) -> str:
    counts: dict[str, int] = {}
    for finding in record.findings:
        verdict = _token(str(getattr(finding, "verdict", "NOTE")), _VERDICTS, "NOTE")
        counts[verdict] = counts.get(verdict, 0) + 1
    if not counts:
        return '<span class="muted">none</span>' if (record.rows or record.steps) else "—"
    return " ".join(f"{_badge(v)} {counts[v]}" for v in _VERDICTS if v in counts)


def trained_precision(record: RunRecord) -> Optional[str]:
    """The precision the run trained in, from environment.json (train.precision resolved on each machine: auto is
    bf16 on a CPU with bf16 units, fp32 elsewhere): 'bf16', or 'bf16, then fp32' for a run resumed where auto chose
    another; None for a run without the record."""
    environment = record.environment if isinstance(record.environment, dict) else {}
    earlier = environment.get("earlier")
    parts = [*(earlier if isinstance(earlier, list) else []), environment]
    names = [part["precision"] for part in parts
             if isinstance(part, dict) and isinstance(part.get("precision"), str)]
    distinct = [name for index, name in enumerate(names) if index == 0 or name != names[index - 1]]
    return ", then ".join(distinct) or None


def _comparison_table(records: Sequence[RunRecord], keys: list[str], best: Optional[int]) -> str:
    # results first, then the config keys that differ: at 1280 px the results must not need scrolling
    # The precision each run trained in, where they differ: config.yaml's train.precision: auto reads alike for a
    # run in bf16 (a CPU with bf16 units) and one in fp32, whose results differ for it
    precisions = [trained_precision(record) for record in records]
    show_precision = len(set(precisions)) > 1
    headers = [("", False), ("run", False), ("best val", True), ("best epoch", True), ("final val", True),
               ("test", True), ("epochs", True), ("time", True), ("images / s", True), ("state", False),
               ("diagnosis", False)] + [(_e(key), False) for key in keys]
    if show_precision:
        headers.append(("trained in", False))
    rows = []
    for index, record in enumerate(records):
        is_best = index == best
        star = '<span class="star" title="best val accuracy" aria-label="best">★</span>' if is_best else ""
        cells = [f"<td>{line_swatch(index)}{star}</td>",
                 f'<td class="run-name" data-run="{_e(record.name)}">{_e(record.name)}</td>']
        ips = record.images_per_second
        cells += [f'<td class="num best-val"{_value_attr(record.best_val_acc)}>{_pct(record.best_val_acc)}</td>',
                  f'<td class="num">{_int(record.best_epoch)}</td>',
                  f'<td class="num final-val"{_value_attr(record.final_val_acc)}>{_pct(record.final_val_acc)}</td>',
                  f'<td class="num test-acc"{_value_attr(record.test_acc)}>{_pct(record.test_acc)}</td>'
                  if record.test_acc is not None else
                  '<td class="num muted test-stale" title="its test evals measured weights it has replaced since">'
                  'stale</td>' if record.test_stale else
                  '<td class="num muted test-elsewhere" title="its test eval measured another run\'s weights">—</td>'
                  if record.test_elsewhere else '<td class="num muted">—</td>',
                  f'<td class="num">{_epochs(record)}</td>',
                  f'<td class="num">{_duration(record.seconds) if _has_training_time(record) else "—"}</td>',
                  f'<td class="num">{_int(round(ips)) if is_finite_number(ips) else "—"}</td>',
                  f'<td title="{_e(record.state_note)}">{_state_badge(record.state)}</td>',
                  f"<td>{_findings_count(record)}</td>"]
        for key in keys:
            found, value = _lookup(record.config, key)
            cells.append(f"<td>{_e(_config_text(value))}</td>" if found else '<td class="muted">—</td>')
        if show_precision:
            cells.append(f'<td class="precision">{_e(precisions[index])}</td>' if precisions[index] else
                         '<td class="muted precision">—</td>')
        css = "run-row best" if is_best else "run-row"
        rows.append(f'<tr class="{css}" data-run="{_e(record.name)}">{"".join(cells)}</tr>')
    return _table(headers, rows, "runs")


def _result_free_table(records: Sequence[RunRecord], keys: list[str]) -> str:
    """The config keys that differ between the runs but change no result (log.quiet, data.spec_typed, a data
    folder one run recorded as typed and another as its absolute path: :func:`cnnlab.report.runs.compared_config`),
    each run's value as it recorded it, collapsed below the runs' table, so that they neither crowd it nor read as
    a reason two runs' results differ; '' when there are none."""
    if not keys:
        return ""
    rows = []
    for record in records:
        cells = [f'<td>{_e(record.name)}</td>']
        for key in keys:
            found, value = _lookup(record.config, key)
            cells.append(f"<td>{_e(_config_text(value))}</td>" if found else '<td class="muted">—</td>')
        rows.append(f'<tr data-run="{_e(record.name)}">{"".join(cells)}</tr>')
    one = len(keys) == 1
    summary = (f"{len(keys):,} more setting{'' if one else 's'} differ{'s' if one else ''} but change"
               f"{'s' if one else ''} no result (what a run logs and draws, and how a path was typed)")
    return (f'<details class="result-free"><summary>{_e(summary)}</summary>'
            + _table([("run", False)] + [(_e(key), False) for key in keys], rows) + "</details>")


def _data_text(records: Sequence[RunRecord]) -> str:
    """The data set(s) of the runs, one per data set as :func:`cnnlab.report.runs.data_groups` tells them apart (a
    folder an older run recorded as typed and a newer one as its absolute path is one): the spelling most of its
    runs recorded (the first run's among equals), and any other in brackets; '?' when no run's config names one."""
    texts = []
    for group in data_groups(records).values():
        counts: dict[str, int] = {}
        for record in group:
            counts[record.data] = counts.get(record.data, 0) + 1
        spellings = sorted(counts, key=lambda spec: -counts[spec])  # stable: the first run's first among equals
        others = f" (also written {', '.join(spellings[1:])})" if len(spellings) > 1 else ""
        texts.append(spellings[0] + others)
    unknown = [record.name for record in records if record.data == "?"]
    if unknown and texts:  # compared with nothing: the data of a run whose config cannot be read is not known
        texts.append(f"not known for {', '.join(unknown)} ({CONFIG_FILE} cannot be read)")
    return "; ".join(texts) or "?"


def _differing_text(records: Sequence[RunRecord], keys: Sequence[str]) -> str:
    """'3 config keys differ' in the header; where some runs' config cannot be read, among which runs, and where
    fewer than two can be, that none were compared (0 differing keys would say the runs were set alike)."""
    unread = [record.name for record in records if not isinstance(record.config, dict)]
    if len(records) - len(unread) < 2:
        return f"config keys not compared ({CONFIG_FILE} cannot be read for " + ", ".join(unread) + ")"
    text = f"{len(keys):,} config key{'s' if len(keys) != 1 else ''} differ{'' if len(keys) != 1 else 's'}"
    return text + (f" (not counting {', '.join(unread)}: {CONFIG_FILE} cannot be read)" if unread else "")


def render_comparison(records: list[RunRecord], context: Optional[str] = None) -> str:
    """The whole self-contained HTML page of several runs of one data set, overlaid on shared axes; ``context``: a
    line under its header (:func:`_context`).

    The caller checks that the runs compare (:func:`cnnlab.report.runs.check_comparable`).
    """
    records = list(records)
    if not records:
        raise CnnlabError("A comparison needs at least one run; name the run folders to compare.")
    title = _comparison_title(records)
    keys, result_free = compared_config(records)
    best = _best_index(records)

    head = (f'<header class="card"><h1>{_e(f"{len(records):,} runs")}</h1>'
            f'<p class="sub">data: {_e(_data_text(records))} · {_e(_differing_text(records, keys))}'
            + (f' · best: <strong>{_e(records[best].name)}</strong> ({_pct(records[best].best_val_acc)} val)'
               if best is not None else "") + "</p>"
            + _comparison_table(records, keys, best)
            + _result_free_table(records, result_free) + "</header>")

    # the note says where the run stands in its own words ("interrupted (Ctrl-C) after 1 of 3 epochs; ..."), and its
    # row's badge gives the state: the label before it repeated the note's first word ("Interrupted, interrupted")
    notes = [f"<p><strong>{_e(record.name)}:</strong> {_e(record.state_note)}</p>" for record in records
             if record.state != "finished"]
    damaged = [record for record in records if record.problems]
    if damaged:
        notes.append(f"<p><strong>File problems</strong> in {len(damaged):,} run{'s' if len(damaged) != 1 else ''}: "
                     f'see <a href="#problems">problems</a>.</p>')
    worst = "FAIL" if any(_STATE_VERDICT.get(r.state) == "FAIL" for r in records) else "WARN"
    banner = f'<div class="banner b-{worst}" role="status">{"".join(notes)}</div>' if notes else ""

    def overlay(key: str, scale: float, against_time: bool) -> list[Series]:
        series = []
        for record in records:
            xs, ys = [], []
            for position, row in enumerate(record.rows):
                value = row.get(key)
                if not is_number(value):
                    continue
                if against_time:
                    # an epoch whose time is not recorded has no place on the time axis (not at 0 s)
                    if position >= len(record.wall_seconds) or not is_finite_number(row.get("epoch_seconds")):
                        continue
                    xs.append(record.wall_seconds[position])
                else:
                    if not is_number(row.get("epoch")):
                        continue
                    xs.append(row["epoch"])
                ys.append(value * scale)
            series.append(Series(record.name, xs, ys))
        return series

    charts = [
        _accuracy_chart(overlay("val_acc", 100.0, False), title="Val accuracy per epoch", x_label="epoch",
                        y_label="accuracy (%)"),
        _loss_chart(overlay("train_loss", 1.0, False), title="Train loss per epoch", x_label="epoch", y_label="loss"),
        _accuracy_chart(overlay("val_acc", 100.0, True), title="Val accuracy against training time",
                        x_label="training time (s)", y_label="accuracy (%)"),
        _loss_chart(overlay("train_loss", 1.0, True), title="Train loss against training time",
                    x_label="training time (s)", y_label="loss"),
    ]
    figures = "".join(f"<figure>{chart}</figure>" for chart in charts)
    curves = f'<section class="card" id="curves"><h2>Curves</h2><div class="charts">{figures}</div></section>'

    problems = [f"{record.name}: {problem}" for record in records for problem in record.problems]
    paths = "".join(f"<li><strong>{_e(r.name)}</strong>: {_path(r.path)}</li>" for r in records)
    folders = f'<section class="card" id="folders"><h2>Run folders</h2><ul>{paths}</ul></section>'
    body = [head, _context(context), banner, curves, folders, _problems(problems),
            _footer(f"cnnlab {__version__} · comparison of {len(records):,} runs")]
    return _document(title, "".join(body))
