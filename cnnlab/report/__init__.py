"""Run reports: one self-contained HTML page per run or set of runs (``cnnlab report``), and the
list of the runs under a folder (``cnnlab runs``).

- :mod:`cnnlab.report.runs` reads a run folder into a :class:`RunRecord` (metrics, steps, config,
  status, evals, diagnosis, summary), whatever state the run is in, and finds the runs under a folder.
- :mod:`cnnlab.report.svg` draws the curves as inline SVG; :mod:`cnnlab.report.page` renders the
  page: one run, or several runs overlaid with a table of the config keys that differ.

A page needs no network and no server: images are data URIs or inline SVG, the style is inline,
and every text from a run (config values, class names) is HTML-escaped.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from cnnlab.errors import CnnlabError, counted, display_name, shell_word
from cnnlab.report.runs import (  # noqa: F401  (the package's API)
    EvalRecord,
    RunRecord,
    check_comparable,
    expand_runs,
    find_runs,
    is_run_folder,
    name_apart,
    read_run,
    runs_rows,
)
from cnnlab.run import REPORT_HTML_FILE, RunFolder, is_experiment_folder


def default_report_path(paths: Sequence[str | Path], runs: Sequence[Path]) -> Path:
    """RUN/report.html for one run folder, however often it is named (``a1 a1``, ``a1 ./a1/``); report.html in
    the current folder for several runs, or for a search (a folder that holds runs, even just one).

    CnnlabError when that report.html is a run folder's own page (``cd RUN && cnnlab report . ../other``): the
    comparison would replace the page `cnnlab train` wrote there, so the caller must name where it goes."""
    if isinstance(paths, (str, Path)):  # one folder named alone, not a sequence of its characters
        paths = [paths]
    named = {Path(path).resolve() for path in paths}  # distinct folders, not the names given
    if len(runs) == 1 and named == {Path(runs[0]).resolve()}:
        return RunFolder(runs[0]).html_report
    target = Path(REPORT_HTML_FILE)
    here = Path.cwd()
    if is_run_folder(here):
        raise CnnlabError(
            f"With no --out, the page of {counted(len(runs), 'run')} would go to {REPORT_HTML_FILE} in the current "
            f"folder, but the current folder is the run '{display_name(here.name)}', and its {REPORT_HTML_FILE} is "
            "that run's own page (`cnnlab train` writes it): this page would replace it. Name the file with --out "
            "(e.g. --out ../compare.html), or run the command from the folder above the runs.")
    return target


def _refuse_an_experiments_page(target: Path, given: bool) -> None:
    """Refuse to write ``target`` where it is one of the comparison pages the kept result of a `cnnlab experiment`
    folder lists (its ``reports``: report.html, report-DATA.html): the page would replace the experiment's, and a
    rerun of the experiment, which reads its kept result back, would not write it again. A page of an unfinished
    experiment is written again when it finishes; any other name in the folder is the user's. ``given``: whether
    --out named it."""
    import json

    from cnnlab.run import EXPERIMENT_RESULT_FILE

    folder = target.parent
    if not (target.is_file() and is_experiment_folder(folder)):
        return
    try:
        pages = json.loads((folder / EXPERIMENT_RESULT_FILE).read_text(encoding="utf-8")).get("reports") or []
    except (OSError, ValueError, AttributeError):  # no kept result (unfinished), or one that cannot be read
        return
    if target.name not in pages:
        return
    where = (f"--out '{display_name(str(target))}' is" if given else
             f"With no --out, this page would go to '{display_name(str(target))}', which is")
    raise CnnlabError(f"{where} a comparison page of the experiment in '{display_name(str(folder.resolve()))}' "
                      "(`cnnlab experiment` wrote it), which would be replaced, and not written again by the "
                      "experiment while its result is kept. Name the file otherwise (e.g. --out compare.html), or "
                      "write it outside the experiment's folder.")


def _page_of(folders: Sequence[Path]) -> str:
    """'the run b', '3 runs': what a page is of, as a message names it."""
    if len(folders) == 1:
        return f"the run '{display_name(Path(folders[0]).name)}'"
    return counted(len(folders), "run")


def build_report(paths: Sequence[str | Path], say: Optional[Callable[[str], None]] = None,
                 relative_to: Optional[str | Path] = None,
                 context: Optional[str] = None) -> tuple[str, list[RunRecord], list[Path]]:
    """(the page's HTML, the runs on it, their folders) for run folders and `cnnlab search` folders;
    ``say`` hears of runs named more than once (:func:`expand_runs`) and of runs whose files are damaged
    (the page lists the problems). ``relative_to``: a folder the page names the runs inside relative to
    (the experiment's folder, which holds the page and its runs, so that the page stays true when that
    folder is moved or copied); a run outside it by its absolute path. None: as the paths name them.
    ``context``: a line the page shows under its header, about where the runs come from (an experiment's).
    One folder may be given alone, as a str or a Path."""
    from cnnlab.report.page import render_comparison, render_run

    if isinstance(paths, (str, Path)):  # one folder named alone, not a sequence of its characters
        paths = [paths]
    if not paths:
        raise CnnlabError("Name at least one run folder (a folder `cnnlab train` wrote), or a `cnnlab search` folder.")
    folders = expand_runs(paths, say)
    records = [read_run(folder) for folder in folders]
    name_apart(records)
    for record in records:
        if record.problems and say is not None:
            say(f"{display_name(str(record.path))}: {counted(len(record.problems), 'problem')} with its files, listed "
                f"on the page (`cnnlab runs {shell_word(record.path.parent)}` names them too).")
    if relative_to is not None:
        shown = [replace(record, path=_relative(record.path, Path(relative_to))) for record in records]
    else:
        shown = records
    if len(records) == 1:
        return render_run(shown[0], context), records, folders
    check_comparable(records)
    return render_comparison(shown, context), records, folders


def _relative(path: Path, folder: Path) -> Path:
    """``path`` relative to ``folder`` when inside it, else absolute (both compared as absolute paths)."""
    run, base = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return run.relative_to(base) if run.is_relative_to(base) else run


# How many times a page is built again when a run on it moved on while it was being built
REPORT_TRIES = 3


def _progress(folders: Sequence[Path]) -> list[Optional[tuple[int, int]]]:
    """(modified time, size) of each run's status.json and metrics.csv, None where one is missing: what a run
    still training changes as it goes on (at each epoch, and as it ends)."""
    state = []
    for run in map(RunFolder, folders):
        for path in (run.status, run.metrics):
            try:
                stat = path.stat()
                state.append((stat.st_mtime_ns, stat.st_size))
            except OSError:
                state.append(None)
    return state


def write_report(paths: Sequence[str | Path], out: Optional[str | Path] = None,
                 say: Optional[Callable[[str], None]] = None, relative_to: Optional[str | Path] = None,
                 context: Optional[str] = None, experiment_page: bool = False) -> Path:
    """Write the report of ``paths`` (run folders, or `cnnlab search` folders meaning all their trials)
    atomically to ``out`` (default: :func:`default_report_path`) and return where it went; ``say``,
    ``relative_to`` and ``context`` as in :func:`build_report`. ``experiment_page``: `cnnlab experiment` writing
    its own comparison page, which any other page is refused to replace.

    A run still training may move on while its page is built: a page of it 'running' written after the run's
    own last page (which it writes as it finishes) would replace that page for good. So the page is built
    again while a run's status.json or metrics.csv changed during the build (up to :data:`REPORT_TRIES` builds;
    ``say`` hears the last build's lines)."""
    from cnnlab.io import check_output_file, write_text_atomic

    if isinstance(paths, (str, Path)):  # one folder named alone, as build_report takes it
        paths = [paths]
    if out is not None:
        # before any work; a run's own report.html is the page this writes for it, checked below
        check_output_file(out, "--out", suffixes=(".html", ".htm"))
    folders = expand_runs(paths) if paths else []  # the runs on the page, whose progress is watched below
    if out is not None:
        target = Path(out)
        owner = target.parent
        if (target.name == REPORT_HTML_FILE and is_run_folder(owner)
                and [Path(folder).resolve() for folder in folders] != [owner.resolve()]):
            raise CnnlabError(f"--out '{display_name(str(target))}' is the page of the run "
                              f"'{display_name(owner.name)}' (`cnnlab train` writes it), and this page is of "
                              f"{_page_of(folders)}: it would replace that run's page. Name the file otherwise "
                              "(e.g. --out compare.html).")
    else:
        # before any work: a comparison made inside a run folder would replace that run's page (refused)
        target = default_report_path(paths, folders) if paths else Path(REPORT_HTML_FILE)
    if not experiment_page:
        _refuse_an_experiments_page(target, given=out is not None)
    tell = say if say is not None else (lambda line: None)
    for _ in range(REPORT_TRIES):
        lines: list[str] = []
        try:
            before = _progress(folders)
            html, _, _ = build_report(paths, lines.append, relative_to, context)
        except BaseException:  # a build that refuses the runs (other data sets) says its notes before the error
            for line in lines:
                tell(line)
            raise
        if _progress(folders) == before:
            break
    for line in lines:
        tell(line)
    write_text_atomic(target, html, "the report")
    return target
