"""`cnnlab experiment`: the list and one run through the command, as a user types them."""

import json
import re
from pathlib import Path

import pytest


def test_list_names_every_registered_experiment_with_its_claim_and_times(cli):
    from cnnlab.experiments import list_experiments

    code, out, err = cli(["experiment", "list", "--json"])
    assert code == 0, err
    items = json.loads(out)
    assert [item["name"] for item in items] == [e.name for e in list_experiments()]
    for item in items:
        assert item["claim"] and item["source"]["quote"] and item["rule"]
        assert set(item["sizes"]) == {"tiny", "quick", "full"}


def test_the_seeds_help_gives_the_defaults_the_experiments_use(cli):
    """--help's default for --seeds is what the experiments take: 1 at tiny for every one (a training experiment
    otherwise runs 3, which is no default at tiny)."""
    from cnnlab.experiments import list_experiments

    assert all(e.default_seeds("tiny") == 1 for e in list_experiments())
    code, out, _ = cli(["experiment", "--help"])
    assert code == 0
    seeds_help = " ".join(out.replace("│", " ").split()).split("--seeds", 1)[1].split("--data", 1)[0]  # unwrapped
    assert "1 at --size tiny" in seeds_help and "list --json" in seeds_help


def test_list_refuses_the_options_of_a_run_rather_than_ignoring_them(cli, tmp_path):
    code, out, err = cli(["experiment", "list", "--size", "full", "--out", str(tmp_path / "x")])
    assert code == 2 and not out
    assert "takes only [names]..., --long and --json: --size and --out apply when an experiment runs" in err
    assert not (tmp_path / "x").exists()


def test_size_defaults_to_quick(cli, tmp_path, monkeypatch):
    import cnnlab.experiments
    from cnnlab.errors import CnnlabError

    seen = []

    def record(name, size, *args, **kwargs):
        seen.append(size)
        raise CnnlabError("stopped before running")

    monkeypatch.setattr(cnnlab.experiments, "run_experiment", record)
    code, _, err = cli(["experiment", "receptive-field", "--out", str(tmp_path / "y")])
    assert (code, seen) == (2, ["quick"]) and "stopped before running" in err
    code, _, err = cli(["experiment", "receptive-field", "--size", "", "--out", str(tmp_path / "y")])
    assert code == 2 and seen[-1] == ""  # an empty --size is given, not left out: run_experiment refuses it


def test_an_empty_size_or_out_is_refused_not_read_as_the_default(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["experiment", "receptive-field", "--size", ""])
    assert code == 2 and "Unknown size ''" in err
    code, _, err = cli(["experiment", "receptive-field", "--size", "tiny", "--out", ""])
    assert code == 2 and "--out is empty" in err
    assert list(tmp_path.iterdir()) == []  # nothing written in the current folder


def test_damaged_kept_files_are_refused_with_what_to_do(cli, tmp_path):
    args = ["experiment", "receptive-field", "--size", "tiny", "--out"]
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "result.json").write_text("[]")
    (kept / "table.json").write_text("[]")
    code, _, err = cli([*args, str(kept)])
    assert code == 2 and "cannot be read" in err and "result.json" in err, err
    (kept / "result.json").write_text(json.dumps({"experiment": "receptive-field", "size": "tiny", "seeds": 1,
                                                  "data": None, "checks": [{"no such key": 1}], "plots": []}))
    code, _, err = cli([*args, str(kept)])
    assert code in (0, 2) and "internal error" not in err, err
    started = tmp_path / "started"
    (started / "runs" / "a").mkdir(parents=True)
    (started / "runs" / "a" / "config.yaml").write_text("model: {name: lenet5}\n")  # a run that started: kept
    (started / "settings.json").write_text("[]")
    code, _, err = cli([*args, str(started)])
    assert code == 2 and "settings.json" in err and "cannot be read" in err, err
    # the advice is followed as given: deleting the file (the advice before) led to another refusal
    written = re.search(r"write (\{.*?\}) into settings.json and run the command again", err.replace("\n", " "))
    assert written, err
    (started / "settings.json").write_text(written.group(1))
    code, _, err = cli([*args, str(started)])
    assert code == 0, err


def test_a_run_prints_the_verdict_the_library_writes_and_a_rerun_resumes(cli, tmp_path):
    out_dir = tmp_path / "exp"
    code, out, err = cli(["experiment", "receptive-field", "--size", "tiny", "--out", str(out_dir), "--json"])
    assert code == 0, err
    printed = json.loads(out)
    written = json.loads((out_dir / "result.json").read_text())
    assert printed["verdict"] == written["verdict"] == "HOLDS"
    stamp = (out_dir / "result.json").stat().st_mtime_ns
    code, out, err = cli(["experiment", "receptive-field", "--size", "tiny", "--out", str(out_dir)])
    assert code == 0, err
    assert "experiment receptive-field verdict: HOLDS" in out  # the line names the experiment
    assert (out_dir / "result.json").stat().st_mtime_ns == stamp  # kept, not recomputed
    # and the text says so, naming the file to delete to measure again (a fresh run does not say it)
    assert "nothing was run again" in out and str(out_dir / "result.json") in out and "measure it again" in out
    code, out, err = cli(["experiment", "receptive-field", "--size", "tiny", "--out", str(tmp_path / "fresh")])
    assert code == 0 and "verdict: HOLDS" in out and "nothing was run again" not in out, err


def test_a_folder_that_holds_no_experiment_is_refused_untouched(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  name: lenet5\n")
    code, _, err = cli(["experiment", "receptive-field", "--size", "tiny", "--out", str(run)])
    assert code == 2 and "holds no experiment" in err and "config.yaml" in err, err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]  # no settings.json, no table written there
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli(["experiment", "receptive-field", "--size", "tiny", "--out", str(empty)])
    assert code == 0 and (empty / "result.json").is_file(), err


def test_an_experiment_folder_another_process_is_writing_is_refused(cli, tmp_path):
    from cnnlab.io import hold_folder
    from cnnlab.run import LOCK_FILE

    out = tmp_path / "exp"
    with hold_folder(out / LOCK_FILE, "an experiment"):
        code, _, err = cli(["experiment", "receptive-field", "--size", "tiny", "--out", str(out)])
        assert code == 2 and f"'{out}' is in use: process" in err, err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # the other's lock, and nothing of this run
    assert not (out / LOCK_FILE).exists()  # the lock file goes with the lock
    code, _, err = cli(["experiment", "receptive-field", "--size", "tiny", "--out", str(out)])
    assert code == 0 and (out / "result.json").is_file() and not (out / LOCK_FILE).exists(), err


def test_an_experiment_reads_a_local_fashion_mnist_through_cnnlab_data(cli, tmp_path, monkeypatch):
    """`experiment` takes no --data-dir; CNNLAB_DATA=DIR with DIR/fashion-mnist a link to any folder holding the
    idx files is its way to a local copy (docs/experiments.md), and the runs read the files from there."""
    from cnnlab.data import sources

    copy = sources.locate_fashion_mnist()
    assert copy is not None, "Fashion-MNIST is missing: make test installs it (apt-get install dataset-fashion-mnist)"

    def offline(target):
        raise OSError("network unreachable")

    # The copy is nowhere cnnlab looks by itself, and cannot be downloaded.
    monkeypatch.setattr(sources, "FASHION_SYSTEM_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(sources, "_download_fashion", offline)
    args = ["experiment", "normalize", "--size", "tiny", "--data", "fashion-mnist", "--out", str(tmp_path / "e"),
            "--json"]
    code, _, err = cli(args)
    assert code == 2 and "CNNLAB_DATA=DIR" in err, err
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    (shelf / "fashion-mnist").symlink_to(copy, target_is_directory=True)
    read = []
    real_read_idx = sources.read_idx

    def recording_read_idx(path, *args, **kwargs):
        read.append(Path(path).parent)
        return real_read_idx(path, *args, **kwargs)

    monkeypatch.setattr(sources, "read_idx", recording_read_idx)
    monkeypatch.setenv("CNNLAB_DATA", str(shelf))
    code, out, err = cli(args)
    assert code == 0, err
    assert json.loads(out)["data"] == "fashion-mnist"
    assert read and set(read) == {shelf / "fashion-mnist"}


@pytest.mark.parametrize("name, started, said", [
    ("receptive-field", [], "trains nothing, so nothing was kept"),
    ("bn-lr", [], "interrupted: no run was kept in "),  # stopped before its first run: no run to promise
    ("bn-lr", ["runs/a/seed0", "runs/b/seed0"], "interrupted: 2 runs are kept in "),
    ("search", ["search/grid-seed0/trials/search-0000"], "interrupted: no run was kept in "),
])
def test_ctrl_c_says_what_is_kept(cli, tmp_path, monkeypatch, name, started, said):
    import dataclasses

    from cnnlab.experiments import base

    def stop(ctx):
        for run in started:  # the config.yaml a run writes when it starts; a trial finishes no epoch here
            (ctx.out / run).mkdir(parents=True)
            (ctx.out / run / "config.yaml").write_text("model: {name: lenet5}\n")
        raise KeyboardInterrupt

    monkeypatch.setitem(base.REGISTRY._items, name, dataclasses.replace(base.REGISTRY._items[name], run=stop))
    code, _, err = cli(["experiment", name, "--size", "tiny", "--out", str(tmp_path / "x")])
    assert code == 130 and err.count("\n") == 1, err
    assert said in err, err
    if name == "search":  # a search that finished no trial is named, not counted as a run
        assert "(its search folder search/grid-seed0 finished no trial)" in err, err


def test_the_kept_line_of_a_training_experiment_says_its_runs_are_read_back_not_retrained(cli, tmp_path):
    # A finished bn-lr folder, as result.json and table.json record it: without result.json a rerun reads its
    # finished runs back, so deleting it recomputes the verdict and trains nothing.
    out_dir = tmp_path / "exp"
    out_dir.mkdir()
    (out_dir / "table.json").write_text("[]")
    (out_dir / "result.json").write_text(json.dumps({
        "experiment": "bn-lr", "size": "tiny", "seeds": 1, "data": "digits", "claim": "c", "rule": "r",
        "out": str(out_dir), "seconds": 20.0, "checks": [], "plots": [], "runs": []}))
    code, out, err = cli(["experiment", "bn-lr", "--size", "tiny", "--out", str(out_dir)])
    assert code == 0, err
    assert "nothing was run again" in out and "from the kept runs" in out and "new --out" in out
    assert "measure it again" not in out


@pytest.fixture(scope="module")
def no_test_split(tmp_path_factory):
    """Class folders only (train and val, no test split), enough images for every experiment's tiny runs."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    for label in range(8):
        (root / f"class{label}").mkdir()
        for k in range(30):
            Image.new("L", (32, 32), color=(30 * label + k) % 256).save(root / f"class{label}" / f"{k}.png")
    return root


@pytest.mark.parametrize("name", ["activations", "norm-batch", "bn-lr", "dropout", "augmentation"])
def test_an_experiment_judged_on_test_accuracy_refuses_data_without_a_test_split(cli, tmp_path, no_test_split, name):
    """Their checks compare test accuracies: without a test split a run's score would be its val accuracy (of the
    checkpoint chosen on val), reported as test accuracy. Refused before anything runs, as the docs say."""
    code, out, err = cli(["experiment", name, "--size", "tiny", "--seeds", "3", "--data", f"folder:{no_test_split}",
                          "--out", str(tmp_path / "x")])
    assert code == 2 and not out
    assert "no test split" in err and err.strip().count("\n") == 0 and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_the_list_says_its_sizes_and_times_are_for_the_default_data(cli):
    """A size that trains on all the training images takes all of another --data's (activations quick: 1,259
    digits, but about 60,000 Fashion-MNIST images), so the list's descriptions and times hold for the default data
    only: the list, its JSON and --data's help say so."""
    from cnnlab.experiments.activations import RECIPES

    assert RECIPES["quick"].train_per_class is None  # the case the note is about
    code, out, err = cli(["experiment", "list"])
    assert code == 0, err
    shown = " ".join(out.split())
    assert "for the experiment's default data" in shown and "all of that data's" in shown
    code, out, err = cli(["experiment", "list", "--json"])
    items = {item["name"]: item for item in json.loads(out)}
    assert "default data" in items["activations"]["sizes_note"] and items["complexity"]["sizes_note"] is None
    code, out, _ = cli(["experiment", "--help"])
    data_help = " ".join(out.replace("│", " ").split()).split("--data", 1)[1].split("--out", 1)[0]
    assert "are for the default data" in data_help


def _positions(out: str, *texts: str) -> list[int]:
    """Where each of ``texts`` first appears in ``out``; a missing one fails with the output shown."""
    for text in texts:
        assert text in out, f"{text!r} is not in the output:\n{out}"
    return [out.index(text) for text in texts]


@pytest.mark.parametrize("name", ["bn-lr", "receptive-field"])
def test_the_console_states_claim_notes_and_rules_before_the_first_number(cli, tmp_path, monkeypatch, name):
    """The rules are fixed before any number, and result.json and the docs give them first: so does the console,
    before the first run's line, and the verdicts stay at the end. A kept result is said in the same order.
    receptive-field runs as it is (it measures networks: no run lines); bn-lr's runs are replaced by two lines
    said as a run says them (its real tiny run's order is tests/experiments/test_preprocessing.py's, for normalize)."""
    import dataclasses

    from cnnlab.experiments import VERDICT_RULE, Check, ExperimentResult, base, get_experiment

    experiment = get_experiment(name)
    if experiment.data is not None:
        def runs(ctx):
            ctx.say("bn seed 0 first run")
            ctx.say("bn seed 1 second run")
            return ExperimentResult(rows=[{"setting": "bn"}], checks=[Check("a check", base.INCONCLUSIVE, "m")])

        monkeypatch.setitem(base.REGISTRY._items, name, dataclasses.replace(experiment, run=runs))
    statement = [f"{name}: {experiment.claim[:30]}", f"from note {experiment.source[0]}: ",
                 f"rule: {experiment.rule[:30]}", VERDICT_RULE[:30]]
    args = ["experiment", name, "--size", "tiny", "--out", str(tmp_path / "exp")]
    for call in ("run", "kept"):
        code, out, err = cli(args)
        assert code == 0, err
        flat = " ".join(out.split())  # the console wraps long lines
        statement_at = _positions(flat, *(" ".join(text.split()) for text in statement))
        assert statement_at == sorted(statement_at) and statement_at[0] == 0, flat  # the statement opens the output
        table_at, verdict_at = _positions(flat, "checks ┏", "verdict: ")
        assert statement_at[-1] < table_at < verdict_at, flat
        if experiment.data is not None and call == "run":
            assert statement_at[-1] < _positions(flat, "bn seed 0 first run")[0] < table_at, flat
        assert flat.count(f"rule: {experiment.rule[:30]}") == 1  # said once, not again beside the verdict
    assert "nothing was run again" in out  # the second call read the kept result


def test_the_statement_names_every_note_the_experiment_checks():
    from cnnlab.experiments import get_experiment
    from cnnlab.experiments.base import statement_lines

    lines = statement_lines(get_experiment("receptive-field"))
    assert lines[1].startswith("from note 004: ") and lines[1].endswith("(also checks notes 002, 000)")
    assert "also checks" not in statement_lines(get_experiment("bn-lr"))[1]  # one note: nothing more to name


def test_list_json_gives_every_note_and_keeps_the_single_source(cli):
    """`notes` lists every note an experiment checks (which ones: tests/experiments/test_static.py), the source's
    first; `source` stays as it was for readers of the older output."""
    from cnnlab.experiments import list_experiments

    code, out, err = cli(["experiment", "list", "--json"])
    assert code == 0, err
    items = {item["name"]: item for item in json.loads(out)}
    for experiment in list_experiments():
        item = items[experiment.name]
        assert item["source"] == {"note": experiment.source[0], "quote": experiment.source[1]}
        assert item["notes"] == experiment.cited_notes and item["notes"][0] == item["source"]["note"]
    assert items["receptive-field"]["notes"] == ["004", "002", "000"]


def _list_rows(out: str) -> dict[str, dict[str, str]]:
    """The list table's rows: {experiment name: {"notes": one a line, joined by ",", "claim": the claim cell's lines
    joined by spaces, "times": the first line's tiny, quick and full}}. The table draws no column rules: the cells
    are cut at the header's columns, and the times (right-aligned) are the end of a row's first line."""
    import re

    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if re.match(r"\s+name\s+notes\s+claim\s+tiny\s+quick\s+full", line))
    notes_at, claim_at = lines[header].index("notes"), lines[header].index("claim")
    times = re.compile(r"\s+(<1 s|~\d+ s|~\d+ min)\s+(<1 s|~\d+ s|~\d+ min)\s+(<1 s|~\d+ s|~\d+ min)\s*$")
    rows: dict[str, dict[str, list[str]]] = {}
    name = None
    for line in lines[header + 2:]:  # under the header's rule
        if not line.strip():
            break  # the table ends
        found = times.search(line)
        if line[:notes_at].strip():
            name = line[:notes_at].strip()
            assert found, line  # a row's first line ends with its times
            rows[name] = {"notes": [], "claim": [], "times": list(found.groups())}
        end = found.start() if found else len(line)
        rows[name]["notes"].append(line[notes_at:claim_at].strip())
        rows[name]["claim"].append(line[claim_at:end].strip())
    return {name: {"notes": ",".join(n for n in row["notes"] if n), "claim": " ".join(c for c in row["claim"] if c),
                   "times": row["times"]} for name, row in rows.items()}


@pytest.mark.parametrize("width", [80, 160])
def test_the_list_gives_each_experiment_a_few_lines_at_any_width(cli, monkeypatch, width):
    """One row each, as `cnnlab models`: the name whole (receptive-field, not receptive-fi + eld), every note, the
    times, and the start of the claim cut with an ellipsis after as many lines as the row has notes (at least
    CLAIM_LINES); no line wider than the terminal."""
    import cnnlab.cli
    from cnnlab.cli import CLAIM_LINES, _about
    from cnnlab.experiments import list_experiments

    monkeypatch.setattr(cnnlab.cli.console, "width", width)
    code, out, err = cli(["experiment", "list"])
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= width
    rows = _list_rows(out)
    assert list(rows) == [e.name for e in list_experiments()]
    table_lines = 0
    for experiment in list_experiments():
        row = rows[experiment.name]
        assert row["notes"] == ",".join(experiment.cited_notes)
        assert row["times"] == [_about(experiment.sizes[size].seconds) for size in ("tiny", "quick", "full")]
        claim = " ".join(experiment.claim.split())
        if row["claim"].endswith("…"):  # cut: what is shown is the claim's start, at least a few words of it
            assert claim.startswith(row["claim"][:-1].rstrip()) and len(row["claim"]) > 12, (experiment.name, row)
        else:
            assert row["claim"] == claim
        table_lines += max(CLAIM_LINES, len(experiment.cited_notes))
    assert out.count("\n") < table_lines + 15  # the rows, the title, header and notes below: not a folded essay
    assert "cnnlab experiment list [names]..." in " ".join(out.split())  # where the whole text is


def test_the_help_and_the_list_name_the_experiments_to_show_as_the_usage_line_does(cli, monkeypatch):
    """The usage line shows list's argument as `[names]...` (every command's style, tests/test_cli.py); the prose
    of --help, the list's closing hint and the refusal of a run's options named it `NAME...`, a second name for
    the same argument."""
    import cnnlab.cli

    monkeypatch.setenv("COLUMNS", "80")  # what --help prints in a terminal of 80 columns
    code, out, err = cli(["experiment", "--help"])
    assert code == 0, err
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if "Usage:" in line)
    usage = lines[at].split()
    assert usage[usage.index("[OPTIONS]") + 1:] == ["{name}", "[names]..."]
    names = usage[-1]
    # the docstring's paragraphs, unwrapped: from below the usage line to the arguments' panel
    prose = " ".join("\n".join(lines[at + 1:]).split("Arguments", 1)[0].split())
    assert f"list {names} or list --long" in prose
    assert "NAME" not in prose  # no second name for either argument
    monkeypatch.setattr(cnnlab.cli.console, "width", 80)
    code, out, err = cli(["experiment", "list"])
    assert code == 0, err
    assert f"cnnlab experiment list {names} (or --long: all)" in " ".join(out.split())
    code, out, err = cli(["experiment", "list", "--size", "tiny"])
    assert code == 2
    assert f"takes only {names}, --long and --json" in " ".join(err.split())


@pytest.mark.parametrize("args", [["list", "--long"], ["list", "receptive-field", "bn-lr"]])
def test_list_long_or_names_shows_claim_every_note_quote_rule_and_sizes_whole(cli, monkeypatch, args):
    import cnnlab.cli
    from cnnlab.cli import _about
    from cnnlab.experiments import get_experiment, list_experiments

    monkeypatch.setattr(cnnlab.cli.console, "width", 80)  # wrapped, never cut: compared without whitespace
    code, out, err = cli(["experiment", *args])
    assert code == 0, err
    flat = "".join(out.split())
    shown = [get_experiment(name) for name in args[1:]] if args[1] != "--long" else list_experiments()
    for experiment in shown:
        for text in (experiment.claim, experiment.source[1], experiment.rule, experiment.runs,
                     *(info.description for info in experiment.sizes.values())):
            assert "".join(text.split()) in flat, (experiment.name, text)
        assert f"fromnote{experiment.source[0]}:" in flat
        assert all(note in flat for note in experiment.cited_notes)
        assert "".join(f"quick({_about(experiment.sizes['quick'].seconds)}".split()) in flat
    positions = [flat.index("".join(f"{experiment.name}: {experiment.claim}".split())) for experiment in shown]
    assert positions == sorted(positions)  # in the order asked, each once
    for other in list_experiments():
        if other not in shown:
            assert "".join(other.claim.split()) not in flat


def test_list_refuses_an_unknown_name_and_a_run_refuses_the_list_arguments(cli):
    code, out, err = cli(["experiment", "list", "no-such"])
    assert code == 2 and "Unknown experiment 'no-such'" in err and "Traceback" not in err
    for args in (["experiment", "bn-lr", "preact"], ["experiment", "bn-lr", "--long"]):
        code, out, err = cli(args)
        assert code == 2 and not out and "cnnlab experiment list bn-lr" in err, err
        assert err.strip().count("\n") == 0  # one paragraph


def test_list_json_with_names_gives_those_items_as_the_full_list_does(cli):
    code, out, err = cli(["experiment", "list", "--json"])
    every = {item["name"]: item for item in json.loads(out)}
    code, out, err = cli(["experiment", "list", "tta", "init", "--json"])
    assert code == 0, err
    assert json.loads(out) == [every["tta"], every["init"]]


def test_a_kept_result_is_stated_with_the_claim_and_rule_that_decided_it(cli, tmp_path):
    """A result.json an older cnnlab wrote was decided by the rule it recorded, perhaps worded otherwise than the
    experiment's today: the statement before its verdict is the recorded one (notes: the experiment's, where the
    file has none)."""
    from cnnlab.experiments import get_experiment

    out_dir = tmp_path / "exp"
    out_dir.mkdir()
    (out_dir / "table.json").write_text("[]")
    (out_dir / "result.json").write_text(json.dumps({
        "experiment": "bn-lr", "size": "tiny", "seeds": 1, "data": "digits", "claim": "the claim then",
        "source": {"note": "003", "quote": "the quote then"}, "rule": "the rule then",
        "out": str(out_dir), "seconds": 20.0, "checks": [], "plots": [], "runs": []}))
    code, out, err = cli(["experiment", "bn-lr", "--size", "tiny", "--out", str(out_dir)])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[:3] == ["bn-lr: the claim then", "from note 003: the quote then", "rule: the rule then"], out
    assert get_experiment("bn-lr").rule[:30] not in " ".join(out.split())


def test_size_estimates_read_as_a_user_expects_and_none_reads_as_no_time():
    from cnnlab.cli import _about

    # f"{0.5:.0f}" is "0": an estimate under a second printed "~0 s"
    assert [_about(s) for s in (0.2, 0.5, 0.99)] == ["<1 s"] * 3
    assert (_about(1.0), _about(40.4), _about(89), _about(90), _about(720)) == (
        "~1 s", "~40 s", "~89 s", "~2 min", "~12 min")


def test_a_mistyped_experiment_gets_the_closest_name_and_every_unknown_name_is_named(cli):
    code, out, err = cli(["experiment", "Complexity"])
    assert code == 2 and "Unknown experiment 'Complexity'. Did you mean complexity?" in err
    code, out, err = cli(["experiment", "list", "bn-lr", "compexity", "nope"])
    assert code == 2 and "Unknown experiments 'compexity', 'nope'." in err and "Traceback" not in err


def test_json_of_a_kept_result_says_it_was_kept(cli, tmp_path):
    # the plain text printed a kept: line; --json printed the old result as if it were measured now
    args = ["experiment", "complexity", "--size", "tiny", "--out", str(tmp_path / "exp"), "--json"]
    code, out, err = cli(args)
    assert code == 0, err
    assert json.loads(out)["kept"] is False
    code, out, err = cli(args)
    assert code == 0 and json.loads(out)["kept"] is True


def test_a_folder_of_another_experiment_names_a_missing_setting_in_words():
    from cnnlab.experiments.base import _difference_text

    assert _difference_text("data", "synthetic:classes=2", None) == "data 'synthetic:classes=2' there, no data now"
    assert _difference_text("size", "tiny", "quick") == "size 'tiny' there, 'quick' now"


def test_a_refused_seed_count_is_answered_with_the_default_of_the_size_asked_for(cli, tmp_path):
    """--seeds 0 at --size tiny was told 'Give --seeds 3', the quick and full sizes' default, not tiny's 1."""
    from cnnlab.experiments import get_experiment

    experiment = get_experiment("degradation")
    for size in ("tiny", "quick"):
        code, _, err = cli(["experiment", "degradation", "--size", size, "--seeds", "0", "--out", str(tmp_path / size)])
        wanted = experiment.default_seeds(size)
        assert code == 2 and f"Give --seeds {wanted} (the default at --size {size})." in err, err
    assert experiment.default_seeds("tiny") != experiment.default_seeds("quick")
