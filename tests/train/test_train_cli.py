"""`cnnlab train` on the command line: a real run, resume, and bad input with exit code 2."""

import json
import os
import re

import pytest

from cnnlab.run import CHECKPOINT_LAST, RunFolder
from cnnlab.train.logging import read_metrics

QUICK = ["--model", "lenet5", "--data", "synthetic:classes=3,train=96,val=24,test=24", "--epochs", "2",
         "--set", "train.batch_size=32", "--quiet"]


def test_train_then_resume_a_finished_run(cli, tmp_path):
    run = tmp_path / "run"
    code, out, err = cli(["train", *QUICK, "--out", str(run)])
    assert code == 0, err
    assert "epoch 2/2" in out and "best val acc" in out and f"run folder: {run}" in out
    assert len(read_metrics(run / "metrics.csv")) == 2
    page = RunFolder(run).html_report  # the run's page, written by the command at the end
    assert "report:" in out and page.is_file()
    assert f'data-run="{run.name}"' in page.read_text(encoding="utf-8")
    code, out, err = cli(["train", "--resume", str(run)])  # nothing left to do: the report again
    assert code == 0 and len(read_metrics(run / "metrics.csv")) == 2
    assert "already trained its 2 epochs: nothing is left to train" in err and "best val acc" in out


def report_files(text: str) -> list[str]:
    """The names on the final report's "files" line (it wraps onto the lines below, to the end)."""
    lines = text.rstrip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("files "))
    return " ".join(line.strip() for line in lines[start:]).removeprefix("files").replace(" ", "").split(",")


def folder_files(run):
    return sorted(path.name for path in run.iterdir() if not path.name.startswith("."))


def test_the_final_report_lists_what_the_run_folder_holds_when_the_command_ends(cli, tmp_path):
    from cnnlab.config import RunConfig, apply_overrides
    from cnnlab.run import DIAGNOSIS_FILE, REPORT_FILE, REPORT_HTML_FILE
    from cnnlab.train.engine import train

    run = tmp_path / "run"
    code, out, err = cli(["train", *QUICK, "--out", str(run)])
    assert code == 0, err
    printed = out[out.index("cnnlab run "):out.index("run folder: ")]
    assert report_files((run / REPORT_FILE).read_text()) == report_files(printed) == folder_files(run)
    assert {DIAGNOSIS_FILE, REPORT_HTML_FILE} <= set(folder_files(run))  # written by the command, and listed
    assert out.rstrip().splitlines()[-1].endswith(f"{REPORT_HTML_FILE})")  # the last line names the page

    # From Python the engine writes neither, and its report does not claim them
    api = tmp_path / "api"
    train(apply_overrides(RunConfig(), ["model.name=lenet5", "data.spec=synthetic:classes=3,train=96,val=24,test=24",
                                        "train.epochs=1", "train.batch_size=32", "log.quiet=true"]), api)
    listed = report_files((api / REPORT_FILE).read_text())
    assert listed == folder_files(api) and DIAGNOSIS_FILE not in listed and REPORT_HTML_FILE not in listed


def test_a_failing_before_report_still_leaves_the_trained_runs_report(tmp_path):
    # The run trained every epoch and status.json says finished: an error in the caller's extra files
    # (diagnosis, page) must not take report.txt with it.
    from cnnlab.config import RunConfig, apply_overrides
    from cnnlab.run import REPORT_FILE
    from cnnlab.train.engine import train

    def failing(folder):
        raise OSError("disk full while writing the page")

    config = apply_overrides(RunConfig(), ["model.name=lenet5", "data.spec=synthetic:classes=3,train=96,val=24,test=24",
                                           "train.epochs=1", "train.batch_size=32", "log.quiet=true"])
    with pytest.raises(OSError, match="disk full"):
        train(config, tmp_path / "run", before_report=failing)
    assert "best val acc" in (tmp_path / "run" / REPORT_FILE).read_text()


def test_a_warmup_that_leaves_the_schedule_no_room_to_fall_exits_2_before_the_run_folder_is_written(cli, tmp_path):
    # 64 images in batches of 16: 4 steps an epoch, 8 in 2 epochs. 1.9 epochs is 7.6 steps, rounded half up to 8:
    # the config's check (1.9 < 2 epochs) passed it, and the run warmed up to its last step and never decayed.
    base = ["--model", "lenet5", "--data", "synthetic:classes=3,train=64,val=16,test=16", "--epochs", "2", "--quiet",
            "--set", "train.batch_size=16", "--out", str(tmp_path / "run")]
    code, out, err = cli(["train", *base, "--set", "schedule.warmup_epochs=1.9"])
    assert code == 2 and "Traceback" not in err and not (tmp_path / "run" / "config.yaml").exists()
    assert "schedule.warmup_epochs=1.9 is 8 steps, all of this run's 8 steps" in err
    # 1.624 epochs is 6.496 steps, rounded to 6 (1.625 rounds to 7): the cosine needs 2 to fall
    assert "shorten schedule.warmup_epochs to 1.624 or less" in err
    # 1.75 epochs is 7 steps and leaves the cosine 1, its top: the rate would never fall either
    code, out, err = cli(["train", *base, "--set", "schedule.warmup_epochs=1.75"])
    assert code == 2 and "Traceback" not in err and not (tmp_path / "run" / "config.yaml").exists()
    assert "leaves the cosine schedule after it 1 step" in err and "shorten schedule.warmup_epochs to 1.624 or less" in err
    code, out, err = cli(["train", *base, "--set", "schedule.warmup_epochs=1.624"])  # as suggested
    assert code == 0, err


def test_config_file_repeats_a_run(cli, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert cli(["train", *QUICK, "--set", "train.deterministic=true", "--out", str(first)])[0] == 0
    code, out, err = cli(["train", "--config", str(first / "config.yaml"), "--out", str(second)])
    assert code == 0, err
    timing = ("epoch_seconds", "images_per_second")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(read_metrics(first / "metrics.csv")) == strip(read_metrics(second / "metrics.csv"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "optim.lrr=0.1"], "Unknown config key 'optim.lrr'"),
        (["--set", "optim.name=adam"], "choose one of sgd, adamw"),
        (["--model", "resnet21"], "resnet21"),
        (["--data", "imagenet"], "Unknown data spec"),
        (["--config", "/no/such.yaml"], "does not exist"),
        (["--set", "optim.lr=1e30", "--set", "schedule.warmup_epochs=0"], "lower optim.lr"),
    ],
)
def test_bad_input_exits_2_with_one_paragraph(cli, tmp_path, args, message):
    base = ["--model", "lenet5", "--data", "synthetic:classes=3,train=64,val=16,test=16", "--epochs", "1", "--quiet",
            "--set", "train.batch_size=16"]
    code, out, err = cli(["train", *base, *args, "--out", str(tmp_path / "run")])
    assert code == 2 and message in err and "Traceback" not in err


def test_resume_needs_a_run_folder_and_no_other_options(cli, tmp_path):
    code, _, err = cli(["train", "--resume", str(tmp_path)])
    assert code == 2 and "not a run folder" in err
    run = tmp_path / "run"
    cli(["train", *QUICK, "--out", str(run)])
    code, _, err = cli(["train", "--resume", str(run), "--epochs", "5"])
    assert code == 2 and "leave out" in err


def test_a_run_without_its_config_file_is_not_sent_between_resume_and_a_new_run(cli, tmp_path):
    """With last.safetensors but no config.yaml, a new run said 'already holds a run. Continue it with --resume',
    and --resume said 'not a run folder': each sent the user to the other. Both now name the missing file."""
    run = tmp_path / "run"
    assert cli(["train", *QUICK, "--out", str(run)])[0] == 0
    saved = (run / "config.yaml").read_text()
    (run / "config.yaml").unlink()
    code, _, err = cli(["train", *QUICK, "--out", str(run)])
    assert code == 2 and "but not its config.yaml" in err and "Continue it with --resume" not in err
    code, _, err = cli(["train", "--resume", str(run)])
    assert code == 2 and "but not its config.yaml" in err and "not a run folder" not in err
    (run / "config.yaml").write_text(saved)  # put back, as both messages say: the run resumes
    assert cli(["train", "--resume", str(run)])[0] == 0


def test_a_run_and_a_search_do_not_write_into_each_others_folders_or_an_experiments_a_ladders_or_an_evals(
        cli, tmp_path):
    """`search --out RUN` wrote study.db, trials/ and results.csv beside a run's files, and `train --out SEARCH`
    a run's files beside a study's (`cnnlab runs` then listed the search folder as a run beside its trials). Each
    is refused before anything is written, and so is an experiment's folder."""
    import json

    from cnnlab.run import EXPERIMENT_SETTINGS_FILE

    run = tmp_path / "run"
    assert cli(["train", *QUICK, "--out", str(run)])[0] == 0
    before = sorted(path.name for path in run.iterdir())
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {low: 0.01, high: 0.1}\n")
    searching = ["search", *[arg for arg in QUICK if arg not in ("--quiet", "--epochs", "2")], "--space", str(space),
                 "--trials", "1"]
    code, _, err = cli([*searching, "--out", str(run)])
    assert code == 2 and "is a training run's folder (it has its config.yaml)" in err, err
    assert sorted(path.name for path in run.iterdir()) == before
    search = tmp_path / "search"
    (search / "trials").mkdir(parents=True)
    code, _, err = cli(["train", *QUICK, "--out", str(search)])
    assert code == 2 and "is a `cnnlab search` folder" in err and sorted(search.iterdir()) == [search / "trials"]
    experiment = tmp_path / "experiment"
    experiment.mkdir()
    (experiment / EXPERIMENT_SETTINGS_FILE).write_text(json.dumps({"experiment": "bn-lr"}))
    for args in (["train", *QUICK], searching):
        code, _, err = cli([*args, "--out", str(experiment)])
        assert code == 2 and "is a `cnnlab experiment` folder" in err, err
        assert [path.name for path in experiment.iterdir()] == [EXPERIMENT_SETTINGS_FILE]
    # A transfer ladder's folder (a later `cnnlab transfer` could never continue it) and an eval's
    ladder = tmp_path / "ladder"
    (ladder / "10" / "seed0").mkdir(parents=True)  # the ladder's first run, before its transfer.json
    evaluated = tmp_path / "evaluated"
    assert cli(["eval", str(run), "--out", str(evaluated)])[0] == 0
    for folder, made_by in ((ladder, "is a `cnnlab transfer` ladder's folder"),
                            (evaluated, "is a `cnnlab eval` folder")):
        before = sorted(folder.rglob("*"))
        for args in (["train", *QUICK], searching):
            code, _, err = cli([*args, "--out", str(folder)])
            assert code == 2 and made_by in err, err
            assert sorted(folder.rglob("*")) == before


def test_a_run_that_fails_after_a_checkpoint_says_how_to_continue_it(cli, tmp_path, monkeypatch):
    """A disk that filled while the run wrote its metrics ended it with "Choose a writable folder with free
    space", as if the run were lost, though its checkpoint of the epoch before was whole and `--resume` finished it.
    The message now names that checkpoint and the command that continues the run."""
    from cnnlab.errors import CnnlabError
    from cnnlab.train import logging as train_logging

    append = train_logging.MetricsLog.append

    def disk_full_at_epoch_2(self, row):
        if row["epoch"] == 2:
            raise CnnlabError(f"Cannot write the metrics to '{self.path}': No space left on device. Choose a "
                              "writable folder with free space.")
        append(self, row)

    monkeypatch.setattr(train_logging.MetricsLog, "append", disk_full_at_epoch_2)
    run = tmp_path / "run"
    code, _, err = cli(["train", *QUICK, "--out", str(run)])
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    said = " ".join(err.split())
    assert "The run's last.safetensors (end of epoch 1, step 3) is kept" in said, said
    assert f"continue the run with: cnnlab train --resume {run}" in said
    assert "Choose a writable folder" not in said  # the advice of a write with no run to resume
    # from Python, train() raises the error as it was (its type kept), with where the run can go on from
    from cnnlab.config import load_config
    from cnnlab.train.engine import KEPT_CHECKPOINT, train

    config = (tmp_path / "api").joinpath("config.yaml")
    with pytest.raises(CnnlabError) as stopped:
        train(load_config(run / "config.yaml"), tmp_path / "api")
    assert type(stopped.value) is CnnlabError and getattr(stopped.value, KEPT_CHECKPOINT)[0] == tmp_path / "api"
    assert config.is_file()
    monkeypatch.setattr(train_logging.MetricsLog, "append", append)  # room again: the run goes on from epoch 1
    code, _, err = cli(["train", "--resume", str(run)])
    assert code == 0, err
    assert [row.split(",")[0] for row in (run / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2"]


# --- the shortcuts of every training command ----------------------------------------------------

SHORTCUTS = {"--lr": "0.05", "--batch-size": "16", "--seed": "7", "--device": "cpu"}
TRAINING_COMMANDS = ["train", "check", "lr-find", "search"]


def test_train_shortcuts_land_in_the_run_config(cli, tmp_path):
    from cnnlab.config import load_config

    run = tmp_path / "run"
    args = [a for a in QUICK if a not in ("--set", "train.batch_size=32")]
    code, out, err = cli(["train", *args, "--epochs", "1", *[x for pair in SHORTCUTS.items() for x in pair],
                          "--out", str(run)])
    assert code == 0, err
    config = load_config(run / "config.yaml")
    assert (config.optim.lr, config.train.batch_size, config.train.seed, config.train.device) == (0.05, 16, 7, "cpu")
    assert config.train.epochs == 1


def test_a_shortcut_wins_over_set_and_config(cli, tmp_path):
    from cnnlab.config import load_config

    first = tmp_path / "a"
    assert cli(["train", *QUICK, "--epochs", "1", "--out", str(first)])[0] == 0
    second = tmp_path / "b"
    code, out, err = cli(["train", "--config", str(first / "config.yaml"), "--set", "optim.lr=0.2", "--lr", "1e-3",
                          "--set", "train.seed=1", "--seed", "4294967295", "--out", str(second)])
    assert code == 0, err
    config = load_config(second / "config.yaml")
    assert config.optim.lr == 1e-3 and config.train.seed == 2**32 - 1 and config.train.batch_size == 32


@pytest.mark.parametrize("command", TRAINING_COMMANDS)
def test_help_lists_every_shortcut(cli, command):
    code, out, err = cli([command, "--help"])
    assert code == 0, err
    for option in ("--lr", "--batch-size", "--seed", "--device", "--set"):
        assert option in out, (command, option)
    if command in ("train", "search"):
        assert "--epochs" in out and "train.epochs" in out
    for key in ("optim.lr", "train.batch_size", "train.seed", "train.device"):
        assert key in out, (command, key)


@pytest.mark.parametrize("command", TRAINING_COMMANDS)
@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "inf"], "Invalid value for '--lr'.*positive finite"),
        (["--lr", "nan"], "Invalid value for '--lr'.*positive finite"),
        (["--lr", "0"], "Invalid value for '--lr'.*positive finite"),
        (["--lr", "-0.1"], "Invalid value for '--lr'.*positive finite"),
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "65537"], "--batch-size"),
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**32)], "--seed"),
        (["--device", "gpu"], "train.device='gpu' must be auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_shortcut_values_exit_2_naming_the_option(cli, command, args, message):
    import re

    code, out, err = cli([command, "--model", "lenet5", "--data", "digits", *args])  # refused before any work
    assert code == 2 and re.search(message, err, re.DOTALL) and "Traceback" not in err, err


@pytest.mark.parametrize("option, value", [("--epochs", "5"), *SHORTCUTS.items()])
def test_resume_refuses_every_shortcut(cli, tmp_path, option, value):
    run = tmp_path / "run"
    (run).mkdir()
    (run / "config.yaml").write_text("train:\n  epochs: 1\n")  # enough to be a run folder for the check
    code, _, err = cli(["train", "--resume", str(run), option, value])
    assert code == 2 and "leave out" in err and option in err


def test_a_run_stopped_by_ctrl_c_gets_its_page_too(cli, tmp_path, monkeypatch):
    from cnnlab.train import engine

    real_train = engine.train

    def ctrl_c_after_the_first_epoch(*args, **kwargs):
        def stop(row):
            raise KeyboardInterrupt

        return real_train(*args, **{**kwargs, "on_epoch_end": stop})

    monkeypatch.setattr(engine, "train", ctrl_c_after_the_first_epoch)
    run = tmp_path / "run"
    code, out, err = cli(["train", *QUICK, "--out", str(run)])
    assert code == 130 and "interrupted" in err
    page = RunFolder(run).html_report.read_text(encoding="utf-8")
    assert "Interrupted" in page or "interrupted" in page


@pytest.mark.parametrize("second_press", [False, True])
def test_the_command_a_ctrl_c_prints_resumes_the_run_whatever_its_folder_is_named(cli, tmp_path, monkeypatch,
                                                                                    second_press):
    """The line a Ctrl-C ends with names the command that continues the run: copied into a shell, it must
    reach the folder even when the name holds a space or a quote (it was printed unquoted, so the shell split it)."""
    import shlex
    import signal

    from cnnlab.train import engine

    real_train = engine.train

    def ctrl_c_after_the_first_epoch(*args, **kwargs):
        def press(row):
            signal.raise_signal(signal.SIGINT)  # through the engine's handler: stops at the epoch's end, saved
            if second_press:
                signal.raise_signal(signal.SIGINT)  # at once: the epoch's checkpoint is the one kept

        return real_train(*args, **{**kwargs, "on_epoch_end": press})

    monkeypatch.setattr(engine, "train", ctrl_c_after_the_first_epoch)
    run = tmp_path / "Bob's run 1"
    code, _, err = cli(["train", *QUICK, "--out", str(run)])
    assert code == 130, err
    command = shlex.split(err.rsplit("with: ", 1)[1].strip())
    assert command == ["cnnlab", "train", "--resume", str(run)]
    monkeypatch.setattr(engine, "train", real_train)
    code, _, err = cli(command[1:])
    assert code == 0, err
    assert [row["epoch"] for row in read_metrics(run / "metrics.csv")] == [1, 2]


@pytest.mark.parametrize("early_stop", [False, True])
def test_a_stop_after_the_last_step_ends_a_complete_run_with_the_signals_exit_code(cli, tmp_path, monkeypatch,
                                                                                     early_stop):
    """A SIGTERM while the last epoch was evaluated and saved was dropped: the run wrote its reports and exited 0,
    though the handler had said it would stop, and a script went on to its next command. The last epoch is the
    one early stopping ends the run at, where it does."""
    import signal

    from cnnlab.train import engine

    real_train = engine.train

    def sigterm_at_the_second_epochs_end(config, *args, **kwargs):
        def press(row):
            if row["epoch"] == 2:
                signal.raise_signal(signal.SIGTERM)

        return real_train(config, *args, **{**kwargs, "on_epoch_end": press})

    monkeypatch.setattr(engine, "train", sigterm_at_the_second_epochs_end)
    run = tmp_path / "run"
    # early stopping: no epoch gains 90 points, so the run ends after epoch 2 of 3
    extra = ["--epochs", "3", "--set", "train.early_stop_patience=1", "--set", "train.early_stop_min_delta=0.9"]
    code, _, err = cli(["train", *QUICK, *(extra if early_stop else []), "--out", str(run)])
    assert code == 143, err
    assert "stopped by SIGTERM after the run's last step: there was nothing left to train; " in err
    ended = ("early stopping had ended the run (stopped early after epoch 2 of 3), and it is saved" if early_stop
             else "every epoch is trained and saved")
    assert ended in err
    assert RunFolder(run).report.is_file()  # complete: every report written
    assert json.loads(RunFolder(run).status.read_text())["state"] == "finished"


def test_a_run_whose_output_is_closed_stops_with_its_checkpoint_as_after_ctrl_c(tmp_path):
    """`cnnlab train ... | tee log` with a Ctrl-C that ends tee as well, or `| head`: the next epoch line met a
    closed pipe, and rich ended the process there (SystemExit 1), after the epoch's metrics row and before its
    checkpoint, with status.json still saying running and nothing on stderr. The run now stops at that epoch's
    end with the checkpoint saved, as a Ctrl-C stops it, says why, and resumes. A real process and a real pipe."""
    import json
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    args = list(QUICK)
    args[args.index("--epochs") + 1] = "40"  # still training when the pipe closes
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "cnnlab", "train", *args, "--out", str(run)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().startswith("epoch 1/40")
        child.stdout.close()  # the reader ends, as head does after its lines
        err = child.stderr.read()
        code = child.wait(timeout=120)
    finally:
        child.kill()
    assert code == 130, err
    assert "output was closed" in err and f"continue with: cnnlab train --resume {run}" in err
    status = json.loads((run / "status.json").read_text())
    done = len(read_metrics(run / "metrics.csv"))
    assert status["state"] == "interrupted" and status["epoch"] == done and 2 <= done < 40
    assert "Traceback" not in err and "internal error" not in err
    from cnnlab.report import read_run

    note = read_run(run).state_note  # says why, not "(Ctrl-C)"
    assert note.startswith(f"interrupted (its output was closed: the program reading it ended) after {done} of 40")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_run_whose_output_is_on_a_full_disk_stops_with_its_checkpoint_and_says_why(tmp_path):
    """`cnnlab train ... > log` on a full disk: the epoch line's write failed with ENOSPC mid-epoch, before the
    checkpoint, and status.json said failed at epoch 0 (`cnnlab runs`: the weights are gone). It stops as a closed
    output does, at the epoch's end with its checkpoint saved, and says the disk's words."""
    import json
    import subprocess
    import sys

    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "cnnlab", "train", *QUICK, "--out", str(run)], env=env,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 130, done.stderr
    assert "output could not be written (No space left on device)" in done.stderr
    assert f"continue with: cnnlab train --resume {run}" in done.stderr and "Traceback" not in done.stderr
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted" and status["epoch"] == 1
    assert status["message"] == "its output could not be written: No space left on device"
    assert (run / CHECKPOINT_LAST).is_file()


def diverge_at_step_5(monkeypatch) -> None:
    """The training loss reads 1e17 times its value (its gradients stay the real loss's) and becomes NaN at step 5,
    the second step of QUICK's second epoch: a run that diverges on a fixed schedule, after one epoch."""
    from cnnlab.train import engine

    original, calls = engine.training_loss, []

    def exploding(*args):
        loss, logits = original(*args)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 5 else loss + loss.detach() * 1e17), logits

    monkeypatch.setattr(engine, "training_loss", exploding)


def test_a_diverged_run_leaves_its_curves_curve_check_and_page_then_the_error(cli, tmp_path, monkeypatch):
    from cnnlab.run import CURVES_FILE, DIAGNOSIS_FILE, REPORT_FILE
    from cnnlab.tune.diagnose import diagnose_run

    diverge_at_step_5(monkeypatch)
    run = tmp_path / "run"
    code, out, err = cli(["train", *QUICK, "--out", str(run)])
    assert code == 2 and "Traceback" not in err
    assert err.rstrip().splitlines()[-1].startswith("error: The training loss became nan at epoch 2, step 5")
    assert re.search(r"^epoch 1/2  train loss \d\.\d{3}e\+1[67] acc", out, re.MULTILINE)  # not 18 digits
    # the curve check is printed and kept, and its diverged rule reads the step the engine recorded
    check = out.index("curve check (cnnlab diagnose):")
    assert "FAIL diverged" in out[check:] and "nan at step 5" in out[check:]
    assert "FAIL diverged" in (run / DIAGNOSIS_FILE).read_text()
    assert [(f.rule, f.verdict) for f in diagnose_run(run) if f.verdict == "FAIL"] == [("diverged", "FAIL")]
    assert (run / CURVES_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = RunFolder(run).html_report.read_text(encoding="utf-8")
    assert "Diverged" in page and "became nan at epoch 2, step 5" in page
    last = " ".join(out[out.index("run folder: "):].split())  # the console wraps it at its width
    assert last == f"run folder: {run} (curves: {run / CURVES_FILE}, report: {RunFolder(run).html_report})"
    # no final report: report.txt is a finished run's (and marks one finished where status.json is missing)
    assert not (run / REPORT_FILE).exists() and "best val acc" not in out
    # metrics.csv keeps the epoch's loss in full, whatever the line rounds it to
    cell = (run / "metrics.csv").read_text().splitlines()[1].split(",")[2]
    assert float(cell) > 1e16 and len(cell.split("e")[0].replace(".", "")) > 10


def test_a_failure_writing_a_diverged_runs_check_or_page_leaves_the_divergence_error(cli, tmp_path, monkeypatch):
    import cnnlab.cli
    import cnnlab.report

    def broken_check(*args, **kwargs):
        raise RuntimeError("the check broke")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    diverge_at_step_5(monkeypatch)
    monkeypatch.setattr(cnnlab.cli, "_print_diagnosis", broken_check)
    monkeypatch.setattr(cnnlab.report, "write_report", disk_full)
    code, out, err = cli(["train", *QUICK, "--out", str(tmp_path / "run")])
    assert code == 2 and "internal error" not in err
    assert "warning: no diagnosis.txt: RuntimeError: the check broke" in err
    assert "warning: no report.html: OSError" in err
    assert err.rstrip().splitlines()[-1].startswith("error: The training loss became nan at epoch 2, step 5")


def test_model_spec_classes_must_match_the_data(cli, tmp_path):
    """A run sets num_classes from its data: a spec key that disagrees is refused, not dropped."""
    args = ["train", "--model", "lenet5,num_classes=5", "--data", "synthetic:classes=3,train=64,val=16,test=16",
            "--epochs", "1", "--quiet", "--set", "train.batch_size=16", "--out", str(tmp_path / "run")]
    code, _, err = cli(args)
    assert code == 2 and "num_classes=5" in err and "3 classes" in err and "Traceback" not in err
    assert "train on data with 5 classes" in err
    code, _, err = cli([arg.replace("num_classes=5", "num_classes=0") for arg in args])  # create_model's headless model
    assert code == 2 and "num_classes=0" in err and "with 0 classes" not in err and "Leave num_classes out" in err


def test_a_folder_another_process_is_writing_is_refused_and_a_refused_new_folder_is_not_left(cli, tmp_path):
    from cnnlab.io import hold_folder

    run = tmp_path / "run"
    code, _, err = cli(["train", *QUICK, "--out", str(run)])
    assert code == 0, err
    files = lambda: {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != ".lock"}  # noqa: E731
    before = files()
    with hold_folder(RunFolder(run).lock, "a training run"):  # as a run still going would hold it
        for args in (["train", *QUICK, "--out", str(run)], ["train", "--resume", str(run)]):
            code, _, err = cli(args)
            assert code == 2 and f"'{run}' is in use: process" in err and "is writing a training run there" in err, err
        assert files() == before  # nothing written
    code, _, err = cli(["train", "--resume", str(run)])  # held no more: the same command goes on
    assert code == 0, err
    fresh = tmp_path / "fresh"
    code, _, err = cli(["train", *QUICK, "--set", "optim.lr=-1", "--out", str(fresh)])
    assert code == 2 and not fresh.exists()  # a run refused before it began leaves no folder for its lock
    code, _, err = cli(["train", *QUICK, "--set", "aug.hflip=3", "--out", str(tmp_path / "new" / "deeper" / "run")])
    assert code == 2 and "aug.hflip" in err and not (tmp_path / "new").exists()  # nor the parents made for it


def test_resume_refuses_a_config_file_edited_after_the_run_started(cli, tmp_path):
    import yaml

    run = tmp_path / "run"
    assert cli(["train", *QUICK, "--out", str(run)])[0] == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["optim"]["lr"] = 0.5  # the rate would come back from the optimiser's state: half applied
    config["train"]["epochs"] = 5  # and the schedule would bend part-way
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    code, _, err = cli(["train", "--resume", str(run)])
    assert code == 2 and "was changed after the run started" in err, err
    assert "optim.lr: 0.5 in the file, 0.1 in the checkpoint" in err and "train.epochs: 5 in the file, 2 in" in err
    assert len(read_metrics(run / "metrics.csv")) == 2  # nothing trained
