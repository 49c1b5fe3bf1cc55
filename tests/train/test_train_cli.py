"""`cnnlab train` on the command line: a real run, resume, and bad input with exit code 2."""

import pytest

from cnnlab.train.logging import read_metrics

QUICK = ["--model", "lenet5", "--data", "synthetic:classes=3,train=96,val=24,test=24", "--epochs", "2",
         "--set", "train.batch_size=32", "--quiet"]


def test_train_then_resume_a_finished_run(cli, tmp_path):
    run = tmp_path / "run"
    code, out, err = cli(["train", *QUICK, "--out", str(run)])
    assert code == 0, err
    assert "epoch 2/2" in out and "best val acc" in out and f"run folder: {run}" in out
    assert len(read_metrics(run / "metrics.csv")) == 2
    code, out, err = cli(["train", "--resume", str(run)])  # nothing left to do: the report again
    assert code == 0 and len(read_metrics(run / "metrics.csv")) == 2


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
