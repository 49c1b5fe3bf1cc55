import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cnnlab
from cnnlab.cli import parse_input_size
from cnnlab.errors import CnnlabError
from _zoo_sweep import SWEPT


def test_models_json_lists_the_zoo_with_true_parameter_counts(cli):
    code, out, _ = cli(["models", "--json"])
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == cnnlab.list_models()
    lenet = next(r for r in rows if r["name"] == "lenet5")
    model = cnnlab.create_model("lenet5")
    assert lenet["params"] == sum(p.numel() for p in model.parameters())
    assert lenet["family"] == "lenet" and lenet["default_input"] == [3, 32, 32]


def test_models_pattern_table(cli):
    code, out, _ = cli(["models", "vgg1?"])
    assert code == 0 and "vgg16" in out and "138,357,544" in out and "resnet" not in out


def test_build_reports_shapes(cli):
    code, out, _ = cli(["build", "lenet5", "--input", "1x28x28", "--num-classes", "10", "--json"])
    assert code == 0
    result = json.loads(out)
    assert result["features"] == [16, 4, 4] and result["output"] == [10] and result["params"] == 61706


@pytest.mark.parametrize(
    "args, message",
    [
        (["build", "resnet05"], "Closest names: .*resnet50"),
        (["build", "lenet5", "--norm", "batch"], "Unknown normalisation 'batch'"),
        (["build", "lenet5", "--act", "relu7"], "Unknown activation 'relu7'"),
        (["build", "lenet5", "--num-classes", "0"], "num_classes must be"),
        (["summary", "lenet5", "--num-classes", "0"], "num_classes must be .*from 1"),  # create_model takes 0
        (["build", "lenet5", "--in-chans", "0"], "--in-chans must be at least 1"),
        (["build", "vgg11", "--input", "3x16x16"], "features.*MaxPool2d.*would vanish"),
        (["build", "alexnet", "--input", "1x4x4"], "features.0.conv' \\(Conv2d\\), which receives a 4x4"),
        (["build", "lenet5", "--input", "3xabc"], "Cannot read input size"),
        (["models", "nosuchmodel"], "No model matches"),
    ],
)
def test_bad_input_is_one_paragraph_and_exit_2(args, message, cli):
    code, _, err = cli(args)
    assert code == 2
    assert "Traceback" not in err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert re.search(message, err), err


@pytest.mark.parametrize("args, key", [
    (["summary", "resnet8,freeze=stage1", "--input", "1x28x28"], "freeze"),
    (["build", "resnet8,whiten=frozen"], "whiten"),
    (["compare", "resnet8", "resnet8,init_from=torchvision"], "init_from"),
])
def test_the_analysis_commands_refuse_the_keys_that_act_only_while_training(args, key, cli):
    # Built here, the network would not show them (summary printed "frozen 0" for freeze=stage1).
    code, out, err = cli(args)
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1
    assert re.search(rf"{key}=\S+ in the model .*only to `cnnlab train`", err), err


def test_every_model_key_is_built_or_left_to_training():
    """Nothing a model config sets is dropped unnamed: model_kwargs passes each key to the builder, or the key is
    one the analysis commands refuse as acting only while training."""
    import typing

    from cnnlab.config import PATH_KEYS, ModelConfig
    from cnnlab.run import TRAINING_MODEL_KEYS, model_kwargs

    passed = set(model_kwargs(ModelConfig()))
    records = {f"{key}_typed" for section, key in PATH_KEYS if section == "model"}  # how a run's path was typed
    for key in typing.get_type_hints(ModelConfig):
        if key in ("name", "options", "norm_options") or key in records:  # the builder, its options, the norm's
            continue
        assert (key in passed) != (key in TRAINING_MODEL_KEYS), key


def test_train_still_takes_the_training_keys_in_its_model_spec():
    from cnnlab.cli import _run_config

    config = _run_config(None, "resnet8,freeze=stage1,whiten=frozen", None, [])
    assert (config.model.freeze, config.model.whiten) == ("stage1", "frozen")


def test_console_script_exit_codes():
    bad = subprocess.run([sys.executable, "-m", "cnnlab.cli", "build", "vgg17"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "vgg19" in bad.stderr
    debug = subprocess.run(
        [sys.executable, "-m", "cnnlab.cli", "--debug", "build", "vgg17"], capture_output=True, text=True
    )
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "vgg19" in debug.stderr  # still bad input


def test_parse_input_size():
    assert parse_input_size("3x224x224") == (3, 224, 224)
    assert parse_input_size("28", in_chans=1) == (1, 28, 28)
    assert parse_input_size("32x40") == (3, 32, 40)
    with pytest.raises(CnnlabError):
        parse_input_size("1x32x32", in_chans=3)


@pytest.mark.parametrize("name", SWEPT)  # preact_resnet1001 through preact_resnet164 (tests/_zoo_sweep.py)
def test_build_works_at_every_models_min_size(name, cli):
    size = cnnlab.model_info(name).min_size
    code, out, err = cli(["build", name, "--input", str(size), "--num-classes", "3", "--json"])
    assert code == 0, err
    assert json.loads(out)["output"] == [3]


@pytest.mark.parametrize("command", [["eval"], ["train"], ["data", "stats"], ["probe"]])
def test_help_shows_no_value_type_for_a_flag(cli, command):
    code, out, _ = cli([*command, "--help"])
    assert code == 0 and "<bool>" not in out  # a flag takes no value: `--json <bool>` read as if it took one
    flag = "--json" if command != ["train"] else "--quiet"
    assert re.search(rf"{flag}\s+[A-Z]", out), out  # its help text follows the name directly
    assert re.search(r"--\w[\w-]*\s+<(int|str|float)", out)  # an option with a value still shows its type


# predict's IMAGES are text, not Path: Path("") is the current folder, and an empty name must reach predict as given
@pytest.mark.parametrize("command, shown", [(["train"], r"--set\s+<str>"), (["predict"], r"images\.\.\.\s+<str>"),
                                            (["report"], r"runs\.\.\.\s+<path>")])
def test_help_shows_the_type_of_one_value_of_a_repeatable_option_or_argument(cli, command, shown):
    code, out, _ = cli([*command, "--help"])
    # each --set takes one KEY=VALUE and each word of IMAGE... one path: typer showed `--set <list[str]>`
    assert code == 0 and "<list[" not in out, out
    assert re.search(shown, out), out


# Options a help text names for another program: `torchrun --nproc-per-node 2 -m cnnlab train ...`
OTHER_PROGRAMS_OPTIONS = {"--nproc-per-node"}


def every_command():
    """:func:`_commands` of the whole CLI: ``(("experiment",), command)``, ``(("data", "show"), command)``, ..."""
    import typer

    from cnnlab.cli import app

    yield from _commands(typer.main.get_command(app))


def test_every_option_a_help_text_names_is_an_option_of_that_command():
    """A help text that sends the user to an option the command lacks ends in 'No such option'."""
    checked = 0
    for path, command in every_command():
        options = {name for param in command.params for name in (*param.opts, *param.secondary_opts)}
        texts = [command.help or ""] + [getattr(param, "help", None) or "" for param in command.params]
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", " ".join(texts)))
        assert named - options - OTHER_PROGRAMS_OPTIONS - {"--help"} == set(), f"cnnlab {' '.join(path)}"
        checked += 1
    assert checked >= 20  # every command, `data stats` and `data show` included


def test_an_option_value_starting_with_a_tilde_is_the_home_folder_as_the_shell_gives_it(cli, tmp_path, monkeypatch):
    """The shell expands `--out ~/runs/a` but not `--out=~/runs/a`; both train into the home folder, none into a
    folder named ~ in the current one."""
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    code, out, err = cli(["train", "--model", "lenet5", "--data", "synthetic:classes=2,train=16,val=8,test=8",
                          "--epochs", "1", "--batch-size", "8", "--quiet", "--set", "log.curves=false", "--out=~/runs/a"])
    assert code == 0, err
    assert (home / "runs" / "a" / "last.safetensors").is_file() and list(work.iterdir()) == []
    # only the value of an --option=value word, as the shell reads a word: not a value inside it, not an argument
    from cnnlab.cli import expand_home

    assert expand_home(["--config=~/c.yaml", "~/run", "--set", "data.data_dir=~/d", "--set=x=~/y", "-o=~/z"]) == [
        f"--config={home}/c.yaml", "~/run", "--set", "data.data_dir=~/d", "--set=x=~/y", "-o=~/z"]


def test_runs_started_in_the_same_second_get_a_default_folder_each(cli, tmp_path, monkeypatch):
    """The default run folder is named by the time to the second: a second run started in that second (a shell
    loop's &) gets NAME-2 rather than a refusal that the folder is in use. A run whose set-up fails leaves no
    empty folder behind."""
    import cnnlab.cli
    import cnnlab.train.engine
    from cnnlab.errors import CnnlabError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cnnlab.cli, "_default_out", lambda *args, **kwargs: Path("runs") / "lenet5-same-second")
    args = ["train", "--model", "lenet5", "--data", "synthetic:classes=2,train=16,val=8,test=8", "--epochs", "1",
            "--batch-size", "8", "--quiet", "--set", "log.curves=false"]
    first = tmp_path / "runs" / "lenet5-same-second"
    first.mkdir(parents=True)  # claimed by a run that started a moment ago and has written nothing yet
    code, out, err = cli(args)
    assert code == 0, err
    assert list(first.iterdir()) == [] and (tmp_path / "runs" / "lenet5-same-second-2" / "last.safetensors").is_file()
    assert "runs/lenet5-same-second-2" in " ".join(out.split())

    def refuse(*args, **kwargs):
        raise CnnlabError("the data could not be read")

    monkeypatch.setattr(cnnlab.train.engine, "train", refuse)
    code, out, err = cli(args)
    assert code == 2 and "could not be read" in err
    assert not (tmp_path / "runs" / "lenet5-same-second-3").exists()
    # nor the runs/ folder made for it, in a project folder that had none
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    code, out, err = cli(args)
    assert code == 2 and "could not be read" in err and list(project.iterdir()) == []


def _commands(group, path=()):
    """(command path, click command) for every command under ``group``."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_options_that_set_a_config_key_state_its_real_default():
    """An option whose help says it sets a config key either defaults to None (the config's value applies) or
    to the dataclass default of that key, so --help shows the default a run really gets."""
    from cnnlab.config import RunConfig, config_to_dict, flatten_config

    defaults = flatten_config(config_to_dict(RunConfig()))
    checked = 0
    for path, command in every_command():
        for param in command.params:
            if getattr(param, "multiple", False):  # --set itself, whose help gives examples
                continue
            keys = re.findall(r"(?:; sets|shortcut for --set) ((?:data|train|optim|model)\.[a-z_]+)", param.help or "")
            for key in keys:
                assert param.default is None or param.default == defaults[key], (path, param.opts, key)
                checked += 1
    assert checked >= 10  # the shortcuts of train, check, lr-find and search, and the data commands' --seed


@pytest.mark.parametrize("device", ["", "  "])
def test_an_empty_device_shortcut_is_named_as_the_flag(cli, device):
    """--device '' reached the config as --set's empty value, whose message names train.device and '='."""
    code, _, err = cli(["check", "--model", "lenet5", "--data", "digits", "--device", device])
    assert code == 2
    assert "'--device'" in err and "the device is empty" in err and "nothing after '='" not in err


def test_every_usage_line_names_its_arguments_alike(cli):
    """Each positional argument on a usage line is its lower-case name, {required} or [optional], `...` when it
    repeats: `experiment` showed `{name} [NAME]...`, one argument's name in a style no other command used."""
    usages = {}
    for path, command in every_command():
        code, out, _ = cli([*path, "--help"])
        assert code == 0, path
        usage = next(line for line in out.splitlines() if "Usage:" in line)
        arguments = usage.split("[OPTIONS]", 1)[1].split()
        for word in arguments:
            assert re.fullmatch(r"(\{[a-z][a-z_]*\}|\[[a-z][a-z_]*\])(\.\.\.)?", word), f"cnnlab {' '.join(path)}: {usage}"
        usages[" ".join(path)] = arguments
    assert usages["experiment"] == ["{name}", "[names]..."]  # `list [names]...`: the experiments to show in full
    assert usages["predict"] == ["{checkpoint}", "{images}..."]  # the style every other command follows


def test_a_command_does_not_take_an_earlier_commands_signal_for_its_own(cli, monkeypatch, tmp_path):
    """A program (or test) that calls main twice: a SIGTERM the first command's run and pause between runs
    received must not make the second command's Ctrl-C "stopped by SIGTERM" with exit code 143."""
    import signal

    from cnnlab import experiments
    from cnnlab.train import between_runs, engine

    monkeypatch.setattr(engine, "_received_signal", signal.SIGTERM)  # what the earlier command left behind
    monkeypatch.setattr(between_runs, "_last", signal.SIGTERM)

    def ctrl_c_before_any_run(*args, **kwargs):
        raise KeyboardInterrupt  # Python's own, before this command's first run installed its handlers

    monkeypatch.setattr(experiments, "run_experiment", ctrl_c_before_any_run)
    code, _, err = cli(["experiment", "augmentation", "--out", str(tmp_path / "exp")])
    assert code == 130 and err.startswith("interrupted: "), (code, err)
    assert engine.received_signal() is None and between_runs.last_signal() is None


def test_the_default_transfer_folder_names_the_source_run(tmp_path, monkeypatch):
    """A checkpoint file in a run folder is named by its run and its stem: two runs' best.safetensors used to
    share runs/transfer-best-safetensors-DATA, and the second was refused as another source's folder."""
    from cnnlab.cli import _transfer_default_out

    run = tmp_path / "src"
    run.mkdir()
    (run / "config.yaml").write_text("model: {name: lenet5}\n")
    (run / "best.safetensors").write_bytes(b"")
    loose = tmp_path / "resnet18-f37072fd.pth"
    loose.write_bytes(b"")
    assert _transfer_default_out(str(run), "digits") == Path("runs/transfer-src-digits")
    assert _transfer_default_out(str(run / "best.safetensors"), "digits") == Path("runs/transfer-src-best-digits")
    assert _transfer_default_out(str(loose), "folder:/data/x") == Path("runs/transfer-resnet18-f37072fd-folder--data-x")
    # '.' and '..' stand for a folder, whose name is the source's (they gave runs/transfer--digits)
    (run / "sub").mkdir()
    monkeypatch.chdir(run / "sub")
    assert _transfer_default_out("..", "digits") == Path("runs/transfer-src-digits")
    monkeypatch.chdir(run)
    assert _transfer_default_out(".", "digits") == Path("runs/transfer-src-digits")
    (tmp_path / "latest").symlink_to(run)  # a link is named as typed: the same command finds the same folder
    monkeypatch.chdir(tmp_path)
    assert _transfer_default_out("latest", "digits") == Path("runs/transfer-latest-digits")
    monkeypatch.chdir(run)  # a checkpoint typed inside its run's folder is named by that run too
    assert _transfer_default_out("best.safetensors", "digits") == Path("runs/transfer-src-best-digits")


def test_names_with_brackets_and_backslashes_are_shown_as_they_are(tmp_path, cli):
    """rich's markup escape dropped the backslash of 'a\\[b' and doubled a trailing one: the tables showed 'a[b'
    and 'trail\\\\' for run folders named 'a\\[b' and 'trail\\'."""
    import shutil

    first = tmp_path / "a\\[b"
    code, out, err = cli(["train", "--model", "lenet5", "--data", "digits", "--epochs", "1", "--out", str(first)])
    assert code == 0, err
    for name in ("trail\\", "x[b]y"):
        shutil.copytree(first, tmp_path / name)
    code, out, err = cli(["runs", str(tmp_path)])
    assert code == 0, err
    names = {line.split()[0] for line in out.splitlines()[1:] if line.split() and "lenet5" in line}
    assert names == {"a\\[b", "trail\\", "x[b]y"}, out


def test_an_interrupted_command_does_not_count_a_part_trained_search_trial_as_kept(tmp_path, cli):
    """A search runs a trial stopped part-way again from its start (removing its folder): the `interrupted:` line
    counted it among the runs kept."""
    import json
    import shutil

    from cnnlab.cli import _kept_runs_text

    run = tmp_path / "run"
    code, out, err = cli(["train", "--model", "lenet5", "--data", "digits", "--epochs", "1", "--out", str(run)])
    assert code == 0, err
    where = tmp_path / "exp"
    trials = where / "search" / "trials"
    for name in ("study-0000", "study-0001"):
        shutil.copytree(run, trials / name)
    shutil.copytree(run, where / "plain")  # outside a search: training resumes it, so it is kept whatever its state
    for part_way in (trials / "study-0001", where / "plain"):
        (part_way / "report.txt").unlink()
        status = json.loads((part_way / "status.json").read_text())
        (part_way / "status.json").write_text(json.dumps({**status, "state": "interrupted"}))
    assert _kept_runs_text(where) == (f"2 runs are kept in {where}, and 1 search trial stopped part-way will be run "
                                      "again from its start")


def _closes_at(prefix: str, monkeypatch):
    """Make cnnlab's console meet a closed stdout (`| head`) at the first line starting with ``prefix``, as rich
    does: it points stdout at /dev/null, raises SystemExit(1) from the BrokenPipeError, and prints nothing after."""
    from cnnlab import cli as cli_module

    printed, closed = [], []
    real = cli_module.console.print

    def printing(*args, **kwargs):
        if closed:
            return
        if args and str(args[0]).startswith(prefix):
            closed.append(True)
            try:
                raise BrokenPipeError(32, "Broken pipe")
            except BrokenPipeError:
                raise SystemExit(1)
        printed.append(str(args[0]) if args else "")
        return real(*args, **kwargs)

    monkeypatch.setattr(cli_module.console, "print", printing)
    return printed


def test_a_run_whose_output_closes_after_its_last_epoch_still_writes_its_diagnosis_and_page(cli, tmp_path,
                                                                                         monkeypatch):
    """`cnnlab train ... | head -4` closing the pipe as the curve check printed: the run ended with code 1, no word,
    and no diagnosis.txt or report.html, though status.json said finished. It finished: code 0, every file."""
    from cnnlab.run import RunFolder

    _closes_at("curve check", monkeypatch)
    run = tmp_path / "run"
    code, _, err = cli(["train", "--model", "lenet5", "--data", "synthetic:classes=2,train=16,val=8,test=8",
                        "--epochs", "1", "--batch-size", "8", "--quiet", "--set", "log.curves=false", "--out", str(run)])
    assert code == 0, err
    folder = RunFolder(run)
    assert folder.diagnosis.is_file() and folder.html_report.is_file() and (run / "report.txt").is_file()


def test_a_command_whose_output_closes_early_ends_with_141_not_a_failed_checks_1(cli, monkeypatch):
    _closes_at("", monkeypatch)
    code, _, _ = cli(["data", "stats", "digits"])
    assert code == 141


@pytest.mark.parametrize("command", ["build", "summary", "compare"])
def test_an_input_written_height_width_channels_is_refused_unless_the_channels_are_given(command, cli):
    """`--input 32x32x3` built a network for 32 channels of 32x3 pixels and reported its numbers with exit 0."""
    model = ["resnet20"] if command != "compare" else ["resnet20", "lenet5"]
    code, out, err = cli([command, *model, "--input", "32x32x3"])
    assert code == 2 and "Write 3x32x32 for 3-channel 32x32 images" in err, err
    # compare has no --in-chans: it names the model option instead
    said = "in_chans=32 in each model (NAME,in_chans=32)" if command == "compare" else "--in-chans 32"
    assert said in err and (command != "compare" or "--in-chans" not in err), err
    if command == "build":
        code, out, err = cli([command, *model, "--input", "32x32x3", "--in-chans", "32"])  # meant: said so
        assert code == 0 and "input       32x32x3" in out, err
        code, out, err = cli([command, *model, "--input", "3x32x32"])
        assert code == 0 and "input       3x32x32" in out, err


def test_a_signal_after_the_command_is_done_changes_nothing():
    """A Ctrl-C or SIGTERM in the second the interpreter takes to shut down (torch's libraries) after the command
    finished printed a traceback from torch's exit handlers, or ended a command that succeeded with 130 or 143.
    Sent here right after main() returns, where that shutdown begins."""
    import subprocess
    import sys

    script = ("import os, signal, sys\nsys.argv = ['cnnlab', 'models', 'lenet5']\nfrom cnnlab.cli import main\n"
              "try:\n    main()\nfinally:\n    os.kill(os.getpid(), signal.SIGINT)\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "" and "lenet5" in done.stdout, (done.returncode, done.stderr)


def test_names_an_ascii_output_cannot_hold_are_written_escaped_not_an_internal_error(tmp_path, monkeypatch):
    """Under PYTHONIOENCODING=ascii (a terminal in another code page), a run folder named with an accent ended
    a finished training run with "internal error: UnicodeEncodeError" and exit 1 at its last line; `runs` and
    `eval` with it too. Written escaped, as Python writes such text to stderr."""
    import io

    from cnnlab.cli import main

    written = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(written, encoding="ascii"))
    with pytest.raises(SystemExit) as done:
        main(["train", "--model", "lenet5", "--data", "synthetic:classes=2,train=8,val=4,test=4", "--epochs", "1",
              "--batch-size", "4", "--set", "log.curves=false", "--out", str(tmp_path / "café")])
        raise SystemExit(0)
    sys.stdout.flush()
    assert done.value.code == 0
    assert b"caf\\xe9" in written.getvalue()


@pytest.mark.parametrize("encoding", ["ascii", "utf-8"])
def test_json_output_stays_json_whatever_the_output_encoding(tmp_path, monkeypatch, encoding):
    """`experiment NAME --json` wrote its text unescaped, and under PYTHONIOENCODING=ascii the escaped output wrote a
    folder named café as "caf\\xe9", which no JSON reader takes. In UTF-8 the text stays as written (the quotes of
    `experiment list --json` readable)."""
    import io

    from cnnlab.cli import main

    def printed(args: list[str]):
        written = io.BytesIO()
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(written, encoding=encoding))
        with pytest.raises(SystemExit) as done:
            main(args)
            raise SystemExit(0)
        sys.stdout.flush()
        assert done.value.code == 0
        return written.getvalue().decode(encoding)

    result = json.loads(printed(["experiment", "padding-stride", "--size", "tiny", "--json",
                                 "--out", str(tmp_path / "café")]))
    assert Path(result["out"]).name == "café"
    listing = printed(["experiment", "list", "--json"])
    assert "如果" in json.dumps(json.loads(listing), ensure_ascii=False)  # the notes' quotes, read back
    assert ("如果" in listing) == (encoding == "utf-8")


def test_a_table_wider_than_the_terminal_keeps_every_name_and_number_whole(monkeypatch):
    """In an 80-column terminal rich fitted the tables to it: `cnnlab models` cut 14 names to "preact_res…" (which
    then read alike) and `cnnlab summary resnet50` split 118,013,952 MACs over three lines as "118,0", "13,95",
    "2". A table prints at its own width, and the terminal wraps the longer lines."""
    import io

    from rich.console import Console

    import cnnlab.cli as cli_module

    buffer = io.StringIO()
    terminal = Console(width=80, file=buffer, force_terminal=True, color_system=None)
    monkeypatch.setattr(cli_module, "console", terminal)
    for args in (["models"], ["summary", "resnet50", "--depth", "2"]):
        with pytest.raises(SystemExit) as done:
            cli_module.main(args)
            raise SystemExit(0)
        assert done.value.code == 0
    text = buffer.getvalue()
    assert "preact_resnet1001 " in text and "…" not in text
    assert "118,013,952" in text
    assert terminal.width == 80  # the console is its own width again after each table


def test_a_terminal_whose_columns_say_0_still_gets_the_output(monkeypatch):
    """COLUMNS=0 in a terminal made rich's width 0: every command printed nothing to stdout and exited 0."""
    import io

    from cnnlab.cli import PIPED_WIDTH, TERMINAL_WIDTH, make_console

    monkeypatch.setenv("COLUMNS", "0")
    terminal = make_console(file=io.StringIO(), force_terminal=True)
    assert terminal.width == TERMINAL_WIDTH
    terminal.print("epoch 1/2  train loss 0.412", highlight=False)
    assert "epoch 1/2  train loss 0.412" in terminal.file.getvalue()
    assert make_console(file=io.StringIO()).width == PIPED_WIDTH  # not a terminal
