"""`cnnlab lr-find` and `cnnlab diagnose` on the command line, including a deliberately broken run."""

import json

import torch

DIGITS = ["--model", "lenet5", "--data", "digits", "--set", "train.batch_size=32", "--set", "train.threads=1"]
LENET_DIGITS_LR = 0.05  # recipes/lenet5-digits.yaml, the run `make demo` trains


def test_lr_find_prints_the_rule_and_saves_the_plot(cli, tmp_path):
    threads = torch.get_num_threads()
    plot = tmp_path / "sweep.png"
    try:
        code, out, err = cli(["lr-find", *DIGITS, "--steps", "60", "--end-lr", "100", "--out", str(plot), "--json"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    report = json.loads(out)
    assert report["plot"] == str(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["stopped"].startswith("diverged")  # lr 100 blows LeNet-5 up long before the end
    assert 1e-7 <= report["suggestion"] < report["lrs"][-1]
    assert "running median" in report["rule"] and "divided by 10" in report["rule"]
    assert report["use_lr"] == report["suggestion"] and report["lr_batch"] is None  # the step lr is optim.lr
    assert "short for the rule's filters" not in err  # 60 steps: the filters read 11 of them


def test_lr_find_json_gives_the_lr_to_pass_when_lr_batch_is_set(cli, tmp_path):
    threads = torch.get_num_threads()
    try:
        code, out, err = cli(["lr-find", *DIGITS, "--set", "optim.lr_batch=256", "--steps", "30", "--end-lr", "100",
                              "--out", str(tmp_path / "lr.png"), "--json"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    report = json.loads(out)
    assert (report["lr_batch"], report["batch_size"]) == (256, 32)
    # the sweep steps at the suggestion with batches of 32; optim.lr is quoted per 256 images: 8 times it
    assert report["use_lr"] == report["suggestion"] * 256 / 32
    # 30 steps: the filters' 11 steps are over a third of the sweep, said on stderr (stdout stays JSON)
    assert "warning: a sweep of 30 steps is short for the rule's filters" in err and "44 steps or more" in err


def test_lr_find_refuses_a_non_png_output(cli, tmp_path):
    code, out, err = cli(["lr-find", *DIGITS, "--out", str(tmp_path / "curve.jpg")])
    assert code == 2 and "must be a .png" in err


def test_training_prints_the_curve_check_and_a_100x_lr_run_is_diagnosed_as_diverged(cli, tmp_path):
    # 50 training images per class (500 of the split's 1,259): 15 steps an epoch, still plenty for a learning rate
    # 100x too high to blow up; diagnose reads metrics.csv, not curves.png, so neither run draws it
    runs = [*DIGITS, "--set", "data.train_per_class=50", "--set", "log.curves=false", "--epochs", "3", "--quiet"]
    healthy = tmp_path / "healthy"
    code, out, err = cli(["train", *runs, "--out", str(healthy), "--set", f"optim.lr={LENET_DIGITS_LR}"])
    assert code == 0, err
    assert "curve check (cnnlab diagnose):" in out
    saved = (healthy / "diagnosis.txt").read_text().splitlines()
    assert "NOTE not_checked" in saved[0]  # 3 epochs are too few for some rules, and it says so
    assert "\n".join(f"  {line}" for line in saved) in out  # printed as saved, each line indented, none broken

    broken = tmp_path / "broken"  # the same run with a learning rate 100 times too high
    code, out, err = cli(["train", *runs, "--out", str(broken), "--set", f"optim.lr={LENET_DIGITS_LR * 100}",
                          "--set", "schedule.name=constant"])
    code, out, err = cli(["diagnose", str(broken), "--json"])
    assert code == 1, err  # a FAIL: the run diverged
    findings = json.loads(out)["findings"]
    assert [f["rule"] for f in findings] == ["diverged"]
    assert findings[0]["verdict"] == "FAIL" and "lr" in findings[0]["remedy"].lower()

    code, out, err = cli(["diagnose", str(healthy)])
    assert code == 0 and "curve check" in out


def test_diagnose_refuses_a_folder_that_is_not_a_run(cli, tmp_path):
    code, out, err = cli(["diagnose", str(tmp_path)])
    assert code == 2 and "is not a run folder" in err and "Traceback" not in err


# --- the shortcuts: --lr, --batch-size, --seed, --device set the config the command runs with ----

SHORTCUTS = ["--lr", "0.02", "--batch-size", "24", "--seed", "11", "--device", "cpu"]


class Captured(Exception):
    """Raised by a stand-in for the library entry point once it has the config: no training runs."""


def capture(monkeypatch, module, name):
    seen = {}

    def stand_in(config, **kwargs):
        seen["config"] = config
        raise Captured

    monkeypatch.setattr(module, name, stand_in)
    return seen


def shortcut_values(config):
    return config.optim.lr, config.train.batch_size, config.train.seed, config.train.device


def test_check_shortcuts_set_the_config_it_checks(cli, monkeypatch):
    import cnnlab.tune.check as check

    seen = capture(monkeypatch, check, "run_checks")
    code, out, err = cli(["check", "--model", "lenet5", "--data", "digits", *SHORTCUTS])
    assert code == 1 and "Captured" in err  # the stand-in's exception: an internal error, exit 1
    assert shortcut_values(seen["config"]) == (0.02, 24, 11, "cpu")
    assert seen["config"].model.name == "lenet5"


def test_lr_find_shortcuts_set_the_config_it_sweeps(cli, monkeypatch, tmp_path):
    import cnnlab.tune.lr_find as lr_find

    seen = capture(monkeypatch, lr_find, "lr_sweep")
    code, out, err = cli(["lr-find", "--model", "lenet5", "--data", "digits", *SHORTCUTS, "--json",
                          "--out", str(tmp_path / "lr.png")])
    assert code == 1 and "Captured" in err
    assert shortcut_values(seen["config"]) == (0.02, 24, 11, "cpu")


def test_shortcuts_win_over_set_on_check(cli, monkeypatch):
    import cnnlab.tune.check as check

    seen = capture(monkeypatch, check, "run_checks")
    code, out, err = cli(["check", "--model", "lenet5", "--data", "digits", "--set", "optim.lr=0.5", "--set",
                          "train.batch_size=8", "--lr", "0.25"])
    assert seen["config"].optim.lr == 0.25 and seen["config"].train.batch_size == 8
    # the --set that lost is named; the one nothing overrules is not
    assert "note: --set optim.lr=0.5 is overruled by the command's option for optim.lr (optim.lr=0.25)" in err
    assert "train.batch_size=8 is overruled" not in err


def test_an_overruled_set_is_not_applied(cli, monkeypatch, tmp_path):
    # The note says the option wins: the --set it overrules is not applied, so a value the key would not
    # take is not refused after the note.
    import cnnlab.train.engine as engine

    seen = {}

    def stand_in(config, out, **kwargs):
        seen["config"] = config
        raise Captured

    monkeypatch.setattr(engine, "train", stand_in)
    code, out, err = cli(["train", "--model", "lenet5", "--data", "digits", "--set", "train.epochs=abc",
                          "--epochs", "1", "--out", str(tmp_path / "run")])
    assert code == 1 and "Captured" in err and "must be int" not in err
    assert seen["config"].train.epochs == 1
    assert "note: --set train.epochs=abc is overruled by the command's option for train.epochs" in err
    import cnnlab.tune.check as check

    seen = capture(monkeypatch, check, "run_checks")
    code, out, err = cli(["check", "--model", "lenet5", "--data", "digits", "--set", "optim.lr=-1", "--lr", "0.25"])
    assert code == 1 and "Captured" in err and seen["config"].optim.lr == 0.25
    # a --set nothing overrules is still applied and checked
    code, out, err = cli(["check", "--model", "lenet5", "--data", "digits", "--set", "train.batch_size=abc",
                          "--lr", "0.25"])
    assert code == 2 and "train.batch_size must be int" in err


def test_a_config_s_builder_options_stay_with_its_model(cli, monkeypatch, tmp_path):
    import cnnlab.tune.check as check

    config = tmp_path / "se.yaml"
    config.write_text("model:\n  name: resnet18\n  options: {se: 16}\ndata:\n  spec: digits\n")
    seen = capture(monkeypatch, check, "run_checks")
    # another model: the options written for resnet18 are left out, and the note names them and the file
    code, out, err = cli(["check", "--config", str(config), "--model", "lenet5"])
    assert seen["config"].model.name == "lenet5" and seen["config"].model.options == {}
    assert f"note: {config} sets model.options (se=16) for resnet18; --model names another model (lenet5)" in err
    # the same model keeps them and adds the spec's; a --set after --model still counts
    code, out, err = cli(["check", "--config", str(config), "--model", "resnet18,zero_init_residual=true"])
    assert seen["config"].model.options == {"se": 16, "zero_init_residual": True} and "note:" not in err
    code, out, err = cli(["check", "--config", str(config), "--model", "resnet34", "--set", "model.options.se=8"])
    assert seen["config"].model.options == {"se": 8} and "left out" in err


def fake_sweep(suggestion):
    """A finished range test whose suggestion is ``suggestion`` (a step lr), without training anything."""
    from cnnlab.tune.lr_find import LrSweep

    lrs = [suggestion * 10 ** (k / 10 - 2) for k in range(40)]
    losses = [2.0 - k / 40 for k in range(40)]
    return LrSweep(lrs=lrs, losses=losses, smoothed=losses, suggestion=suggestion, min_loss_lr=suggestion * 10,
                   rule="the rule", stopped="reached end_lr")


def test_lr_find_without_a_suggestion_says_there_is_none_and_why(cli, monkeypatch, tmp_path):
    """A curve that never fell: the first line said "lowest filtered loss at lr -"; it says none, and the text and
    --json give the same reason."""
    import cnnlab.tune.lr_find as lr_find

    lrs = [1e-7 * 10 ** (k / 5) for k in range(40)]
    losses = [2.3] * 40
    suggestion, min_loss_lr, smoothed, rule = lr_find.suggest_lr(lrs, losses)
    flat = lr_find.LrSweep(lrs=lrs, losses=losses, smoothed=smoothed, suggestion=suggestion, min_loss_lr=min_loss_lr,
                           rule=rule, stopped="reached end_lr")
    monkeypatch.setattr(lr_find, "lr_sweep", lambda config, **kwargs: flat)
    code, out, err = cli(["lr-find", *DIGITS, "--set", "optim.lr=0.1", "--out", str(tmp_path / "lr.png")])
    assert code == 0, err
    assert out.startswith("suggested step lr")  # no empty first line: the progress bar shows on a terminal only
    lines = out.splitlines()
    first = next(line for line in lines if line.startswith("suggested"))
    assert first == "suggested step lr (batch 32): none   (configured optim.lr 0.1)"
    assert " -" not in out and "use it:" not in out
    start = next(k for k, line in enumerate(lines) if line.startswith("why none: "))
    end = next(k for k in range(start + 1, len(lines)) if lines[k].startswith("rule: "))
    why = " ".join(lines[start:end]).removeprefix("why none: ")  # the console wraps it at its width
    assert "never fell 1% below its start" in why
    rule_line = next(line for line in lines if line.startswith("rule: "))
    assert "No suggestion" not in rule_line  # said once, on its own line
    code, out, err = cli(["lr-find", *DIGITS, "--out", str(tmp_path / "lr.png"), "--json"])
    assert code == 0, err
    data = json.loads(out)
    assert data["suggestion"] is None and data["use_lr"] is None and data["no_suggestion"] == why


def test_lr_find_quotes_the_configured_lr_as_a_step_lr_next_to_the_suggestion(cli, monkeypatch, tmp_path):
    """With optim.lr_batch, optim.lr is a rate per lr_batch images: the first line converts it to the step lr the
    suggestion is in (0.1 per 256 images is 0.0125 per step at batch 32), and the `use it:` line gives the unit."""
    import cnnlab.tune.lr_find as lr_find

    monkeypatch.setattr(lr_find, "lr_sweep", lambda config, **kwargs: fake_sweep(0.004))
    code, out, err = cli(["lr-find", *DIGITS, "--set", "optim.lr=0.1", "--set", "optim.lr_batch=256",
                          "--out", str(tmp_path / "lr.png")])
    assert code == 0, err
    first = next(line for line in out.splitlines() if line.startswith("suggested"))
    use = next(line for line in out.splitlines() if line.startswith("use it:"))
    assert first.startswith("suggested step lr (batch 32): 0.004 ")
    assert "configured optim.lr 0.1 per 256 images = step lr 0.0125)" in first
    assert use.startswith("use it: --lr 0.032  (per 256 images")

    code, out, err = cli(["lr-find", *DIGITS, "--set", "optim.lr=0.1", "--out", str(tmp_path / "lr.png")])
    assert code == 0, err
    first = next(line for line in out.splitlines() if line.startswith("suggested"))
    assert first.startswith("suggested step lr (batch 32): 0.004 ") and first.endswith("configured optim.lr 0.1)")
    assert "use it: --lr 0.004" in out

    # train.accum_steps=4: the sweep steps on single batches of 32, while the run's optimiser steps add up 4 of them
    # and optim.lr_batch scales its rate by their 128 images: 0.1 per 256 images steps at 0.05, not 0.0125
    code, out, err = cli(["lr-find", *DIGITS, "--set", "optim.lr=0.1", "--set", "optim.lr_batch=256",
                          "--set", "train.accum_steps=4", "--out", str(tmp_path / "lr.png")])
    assert code == 0, err
    text = " ".join(out.split())  # the lines wrap at the console's width
    assert ("configured optim.lr 0.1 per 256 images = step lr 0.0125 at batch 32, 0.05 for the run's steps of "
            "4 x 32 images (train.accum_steps=4))") in text
    assert ("use it: --lr 0.032 (per 256 images, as optim.lr_batch=256 quotes it: that steps at 0.004 with batches "
            "of 32, and at 0.016 with the run's steps of 4 x 32 images (train.accum_steps=4))") in text


def test_lr_find_with_no_finite_loss_prints_the_result_skips_the_plot_and_names_the_init(cli, tmp_path):
    """mlp,init=normal:1e20: step 1's loss is NaN. The command ended with exit 2 "nothing to plot", with no reason,
    no remedy and no JSON."""
    args = ["lr-find", "--model", "mlp,init=normal:1e20", "--data", "digits", "--set", "train.precision=fp32",
            "--set", "train.threads=1", "--out", str(tmp_path / "o3.png")]
    code, out, err = cli(args)
    assert code == 0, err
    assert "suggested step lr (batch 128): none" in out and "plot: none" in out
    assert "no plot written" in err and not (tmp_path / "o3.png").exists()
    why = " ".join(out.split())  # the console wraps at its width
    assert "starting weights" in why and "cnnlab check" in why and "sweep: 1 step," in why
    code, out, err = cli([*args, "--json"])
    assert code == 0, err
    data = json.loads(out)
    assert data["plot"] is None and data["suggestion"] is None and "starting weights" in data["no_suggestion"]
    (tmp_path / "o3.png").write_bytes(b"an earlier sweep's plot")  # left there: the warning says whose it is
    code, out, err = cli(args)
    assert code == 0 and "no plot written to" in err and "(the file there is an earlier sweep's)" in " ".join(err.split())


def test_check_and_lr_find_name_the_schedule_and_accumulation_keys_they_ignore(cli, monkeypatch, tmp_path):
    """--set schedule.* (and train.accum_steps for check) did nothing there without a word, where --set
    train.epochs got a note."""
    import cnnlab.tune.check as check
    import cnnlab.tune.lr_find as lr_find

    monkeypatch.setattr(lr_find, "lr_sweep", lambda config, **kwargs: fake_sweep(0.01))
    monkeypatch.setattr(check, "run_checks", lambda config, **kwargs: [])
    sets = ["--set", "schedule.name=constant", "--set", "schedule.warmup_epochs=2", "--set", "train.accum_steps=2"]
    code, out, err = cli(["lr-find", *DIGITS, *sets, "--out", str(tmp_path / "lr.png")])
    assert code == 0, err
    err = " ".join(err.split())
    for key in ("schedule.name", "schedule.warmup_epochs"):
        assert f"--set {key} does nothing in cnnlab lr-find" in err
    assert "train.accum_steps accumulates nothing" not in err  # the sweep's output converts for it
    code, out, err = cli(["check", *DIGITS, *sets])
    err = " ".join(err.split())
    for key in ("schedule.name", "schedule.warmup_epochs"):
        assert f"--set {key} does nothing in cnnlab check" in err
    assert "--set train.accum_steps accumulates nothing in cnnlab check" in err
