"""Evaluation, TTA, ensembles, prediction and export on small trained runs (synthetic RGB data)."""

import json
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from cnnlab.config import RunConfig, apply_overrides
from cnnlab.data.memory import translate_batch
from cnnlab.errors import CnnlabError
from cnnlab.evaluate import tta
from cnnlab.evaluate.ensemble import run_ensemble
from cnnlab.evaluate.evaluate import classification_report, load_model, run_eval
from cnnlab.train.engine import train
from cnnlab.train.logging import read_metrics

DATA = "synthetic:classes=4,train=192,val=64,test=64"
# log.curves=false: no test here reads a run's curves.png, and drawing it was most of each small run's time
BASE = ["model.name=lenet5", f"data.spec={DATA}", "train.batch_size=32", "train.epochs=3", "train.threads=1",
        "optim.lr=0.05", "log.quiet=true", "log.curves=false"]


def train_run(folder, *extra):
    config = apply_overrides(RunConfig(), BASE + list(extra))
    train(config, folder)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three trained members (seeds 0-2, EMA on) and a cyclic run with 3 snapshots."""
    root = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    try:
        members = [train_run(root / f"seed{seed}", f"train.seed={seed}", "train.ema=true") for seed in range(3)]
        cyclic = train_run(root / "cyclic", "schedule.name=cyclic", "schedule.cycles=3", "train.snapshots=true")
    finally:
        torch.set_num_threads(threads)
    return {"members": members, "cyclic": cyclic}


# --- evaluation ----------------------------------------------------------------------------------


def test_a_ctrl_c_while_an_eval_writes_its_files_leaves_them_one_evaluations(runs, tmp_path, monkeypatch):
    """Evaluating into a folder an earlier eval wrote, a Ctrl-C between its files left the new confusion matrix
    beside the old metrics.json (whose numbers the run's page shows with it). The set is written whole, then the
    Ctrl-C takes effect."""
    import signal

    from cnnlab.evaluate import evaluate as evaluate_module

    out = tmp_path / "eval"
    run_eval(runs["members"][1], split="val", out=out)  # the earlier eval
    real = evaluate_module.save_confusion_png

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C between the confusion matrix and the metrics
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "save_confusion_png", interrupted)
    # Ctrl-C as a terminal's command gets it, whatever this test process was set to do with SIGINT
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_eval(runs["members"][0], split="val", out=out)
    finally:
        signal.signal(signal.SIGINT, before)
    metrics = json.loads((out / "metrics.json").read_text())
    confusion = json.loads((out / "confusion.json").read_text())
    assert metrics["confusion"] == confusion["matrix"]
    assert Path(metrics["checkpoint"]).parent == runs["members"][0]  # the new eval's, whole


def test_a_ctrl_c_held_until_the_eval_s_files_were_written_is_said(runs, tmp_path, monkeypatch, cli):
    """The command ended with exit code 130 and not a word, though its evaluation was whole on disk."""
    import signal

    from cnnlab.evaluate import evaluate as evaluate_module

    real = evaluate_module.save_confusion_png

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "save_confusion_png", interrupted)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, out, err = cli(["eval", str(runs["members"][0]), "--split", "val", "--out", str(tmp_path / "eval")])
    finally:
        signal.signal(signal.SIGINT, before)
    assert code == 130 and out == "", (code, out, err)
    assert err.startswith("interrupted: the evaluation was done, and its files in ") and \
        f"'{tmp_path / 'eval'}' are all written" in err and "metrics.json" in err, err
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["split"] == "val"


def test_eval_reproduces_the_accuracy_the_run_recorded(runs, tmp_path):
    run = runs["members"][0]
    rows = read_metrics(run / "metrics.csv")
    best = max(rows, key=lambda r: r["val_acc"])  # best.safetensors holds the first epoch with the best val acc
    best = next(r for r in rows if r["val_acc"] == best["val_acc"])
    report = run_eval(run, split="val", out=tmp_path / "val")
    assert report["top1"] == best["val_acc"]  # exactly: same weights, same split, same preprocessing
    assert report["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    ema = run_eval(run, split="val", ema=True, out=tmp_path / "ema")
    assert ema["top1"] == pytest.approx(best["ema_val_acc"]) and ema["weights"] == "ema"
    files = report["files"]
    assert json.loads(open(files["metrics"]).read())["top1"] == report["top1"]
    assert json.loads(open(files["confusion"]).read())["matrix"] == report["confusion"]
    for png in (files["confusion_png"], files["mistakes_png"]):
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_classification_report_matches_sklearn():
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(300, 7, generator=generator) * 2, dim=1)
    labels = torch.randint(0, 7, (300,), generator=generator)
    labels[:5] = 6  # make sure every class has images
    report = classification_report(probs, labels, [f"c{i}" for i in range(7)])
    predicted = probs.argmax(1).numpy()
    precision, recall, f1, support = precision_recall_fscore_support(labels.numpy(), predicted, labels=range(7),
                                                                     zero_division=0)
    assert [r["precision"] for r in report["per_class"]] == pytest.approx(precision)
    assert [r["recall"] for r in report["per_class"]] == pytest.approx(recall)
    assert [r["f1"] for r in report["per_class"]] == pytest.approx(f1)
    assert [r["support"] for r in report["per_class"]] == list(support)
    assert report["confusion"] == confusion_matrix(labels.numpy(), predicted, labels=range(7)).tolist()
    top5 = np.mean([labels[i].item() in np.argsort(-probs[i].numpy())[:5] for i in range(300)])
    assert report["top5"] == pytest.approx(top5)
    assert report["loss"] == pytest.approx(-np.mean(np.log(probs.numpy()[range(300), labels.numpy()])), rel=1e-5)


def test_macro_f1_leaves_out_a_class_the_split_lacks_as_sklearn_does():
    # A split without images of class 2 (a test folder missing one class): class 2 has no F1, and counting it
    # as 0 put a perfect model's macro F1 at 0.667.
    from sklearn.metrics import f1_score

    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 2, (40,), generator=generator)
    labels[:2] = torch.tensor([0, 1])
    logits = torch.randn(40, 3, generator=generator)
    logits[:, 2] -= 10  # class 2 is never predicted
    perfect = torch.nn.functional.one_hot(labels, 3).float() * 5 - 2.5
    for scores in (logits, perfect):
        probs = torch.softmax(scores, dim=1)
        report = classification_report(probs, labels, ["a", "b", "c"])
        assert report["macro_f1"] == pytest.approx(f1_score(labels.numpy(), probs.argmax(1).numpy(), average="macro"))
        assert report["per_class"][2]["support"] == 0
    assert report["macro_f1"] == 1.0
    # a class the model predicts without images keeps its F1 of 0: its false positives count
    wrong = torch.softmax(perfect.index_fill(1, torch.tensor([2]), 10.0)[:5].clone(), dim=1)
    report = classification_report(wrong, labels[:5], ["a", "b", "c"])
    assert report["macro_f1"] == pytest.approx(f1_score(labels[:5].numpy(), [2] * 5, average="macro",
                                                        zero_division=0))


def test_top5_is_the_exact_fraction_of_images():
    generator = torch.Generator().manual_seed(2)
    probs = torch.softmax(torch.randn(269, 10, generator=generator), dim=1)
    labels = torch.randint(0, 10, (269,), generator=generator)
    hits = sum(labels[i].item() in probs[i].topk(5).indices.tolist() for i in range(269))
    assert classification_report(probs, labels, [str(i) for i in range(10)])["top5"] == hits / 269


# --- test-time augmentation -----------------------------------------------------------------------


def test_tta_views_are_shifts_and_mirrors_of_the_image():
    x = torch.randn(2, 3, 16, 16)
    fill = torch.tensor([-1.0, -2.0, -3.0])  # black after normalisation, per channel
    shift = tta.default_shift(16)
    assert shift == 2
    five = tta.views(x, "5crop", fill=fill)
    assert len(five) == 5 and torch.equal(five[0], x)
    # Independent reference: the training recipe's translate (zeros), on x - fill so that zeros are black.
    for view, (dy, dx) in zip(five[1:], ((1, 1), (1, -1), (-1, 1), (-1, -1))):
        shifted = translate_batch(x - fill.view(1, 3, 1, 1), torch.full((2,), dx * shift), torch.full((2,), dy * shift),
                                  shift) + fill.view(1, 3, 1, 1)
        assert torch.allclose(view, shifted, atol=1e-6)
    ten = tta.views(x, "10crop", fill=fill)
    assert len(ten) == 10 and all(torch.equal(a.flip(-1), b) for a, b in zip(ten[:5], ten[5:]))
    assert len(tta.views(x, "10crop", fill=fill, flips=False)) == 5
    multi = tta.views(x, "multiscale", fill=fill, scales=(0.75, 1.0, 1.25))
    assert len(multi) == 30 and all(v.shape == x.shape for v in multi)
    assert all(torch.equal(a, b) for a, b in zip(multi[10:20], ten))  # scale 1.0 is the 10-crop
    assert tta.view_count("multiscale", True, (0.75, 1.0, 1.25)) == 30 and tta.view_count("flip", False) == 1


def test_tta_probabilities_average_the_views():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5)).eval()
    x, fill = torch.randn(4, 3, 8, 8), torch.zeros(3)
    expected = (torch.softmax(model(x), 1) + torch.softmax(model(x.flip(-1)), 1)) / 2
    assert torch.allclose(tta.tta_log_probabilities(model, x, "flip", fill=fill).exp(), expected, atol=1e-6)


def test_a_confidently_wrong_image_keeps_its_whole_loss_with_tta():
    # Logits 100 apart: the wrong class's probability is e^-100, below float32's smallest normal number,
    # so a log of clamped probabilities would read 27.6 (-log 1e-12) where the loss is 100.
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.0], [0.0]]))
        model[1].bias.copy_(torch.tensor([100.0, 0.0]))
    x, fill = torch.ones(1, 1, 1, 1), torch.zeros(1)
    log_probs = tta.tta_log_probabilities(model, x, "flip", fill=fill)  # both views give the same logits
    assert log_probs[0, 1].item() == pytest.approx(-100.0, abs=1e-3)
    report = classification_report(log_probs.exp(), torch.tensor([1]), ["a", "b"], log_probs)
    assert report["loss"] == pytest.approx(100.0, abs=1e-3)
    members = torch.stack([torch.log_softmax(torch.tensor([[100.0, 0.0]]), 1),
                           torch.log_softmax(torch.tensor([[0.0, 100.0]]), 1)])  # (2 members, 1, 2)
    assert torch.allclose(tta.mean_of_probabilities(members).exp(), torch.tensor([[0.5, 0.5]]))


def test_the_fill_of_shifted_views_is_a_black_pixel_normalised():
    from torchvision.transforms import v2

    from cnnlab.evaluate.evaluate import black_fill
    from cnnlab.run import MetaKey

    mean, std = [0.2, 0.5, 0.7], [0.3, 0.25, 0.1]
    black = torch.zeros(3, 1, 1)  # (C, H, W) one black pixel, as the data arrives in [0, 1]
    expected = v2.Normalize(mean, std)(black).flatten()
    assert torch.allclose(black_fill({MetaKey.MEAN: mean, MetaKey.STD: std}), expected)


# --- ensembles ------------------------------------------------------------------------------------


def test_ensemble_averages_member_probabilities(runs, cli):
    from cnnlab.evaluate.evaluate import classification_report, eval_loader, predict_probabilities, black_fill

    members = runs["members"]
    code, out, err = cli(["ensemble", *map(str, members), "--json"])
    assert code == 0, err
    result = json.loads(out)
    probs, labels = [], None
    for run in members:  # an independent recomputation of each member's probabilities
        loaded = load_model(run)
        _, loader = eval_loader(loaded)
        p, labels, _ = predict_probabilities(loaded.model, loader, fill=black_fill(loaded.meta))
        probs.append(p)
    expected = classification_report(sum(probs) / 3, labels, load_model(members[0]).classes)
    assert result["ensemble"]["top1"] == pytest.approx(expected["top1"])
    assert result["ensemble"]["loss"] == pytest.approx(expected["loss"], rel=1e-5)  # of the mean of probabilities
    assert [m["top1"] for m in result["members"]] == pytest.approx(
        [(p.argmax(1) == labels).double().mean().item() for p in probs])
    assert result["gain_over_best_member"] == pytest.approx(result["ensemble"]["top1"] - max(
        m["top1"] for m in result["members"]))

    code, out, err = cli(["ensemble", str(runs["cyclic"]), "--snapshots", "--json"])
    assert code == 0, err
    assert [m["checkpoint"].rsplit("/", 1)[1] for m in json.loads(out)["members"]] == [
        "snapshot-1.safetensors", "snapshot-2.safetensors", "snapshot-3.safetensors"]


def test_ensemble_batch_size_reaches_every_member_as_eval_s_does(runs, cli, monkeypatch):
    from cnnlab.evaluate import evaluate

    members = [str(run) for run in runs["members"][:2]]
    code, out, err = cli(["ensemble", *members, "--json"])
    assert code == 0, err
    default = json.loads(out)
    seen = []
    real_loader = evaluate.eval_loader

    def recording_loader(loaded, **options):
        seen.append(options["batch_size"])
        return real_loader(loaded, **options)

    monkeypatch.setattr(evaluate, "eval_loader", recording_loader)
    code, out, err = cli(["ensemble", *members, "--batch-size", "5", "--json"])
    assert code == 0, err
    assert seen == [5, 5]  # every member's loader
    assert json.loads(out)["ensemble"] == pytest.approx(default["ensemble"])  # the batches change no result
    seen.clear()
    code, out, err = cli(["eval", members[0], "--batch-size", "5", "--json"])
    assert code == 0 and seen == [5], err
    for command in (["ensemble", *members], ["eval", members[0]]):  # the same checks: at least 1
        code, out, err = cli([*command, "--batch-size", "0"])
        assert code == 2 and "--batch-size" in err and "Traceback" not in err
    with pytest.raises(CnnlabError, match="batch_size=0 must be a whole number of at least 1"):
        run_ensemble(members, batch_size=0)


@pytest.mark.parametrize("out", ["", ".", "./"])
def test_eval_and_ensemble_refuse_an_empty_or_current_folder_out_alike(runs, tmp_path, cli, monkeypatch, out):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    members = [str(run) for run in runs["members"][:2]]
    with pytest.raises(CnnlabError, match="would land among whatever it holds") as eval_refused:
        run_eval(members[0], out=out)
    with pytest.raises(CnnlabError, match="would land among whatever it holds") as ensemble_refused:
        run_ensemble(members, out=out)
    for refused in (eval_refused, ensemble_refused):
        assert str(refused.value).startswith("--out is empty" if out == "" else f"--out '{out}' is the current folder")
    for command in (["eval", members[0]], ["ensemble", *members]):
        code, _, err = cli([*command, "--out", out])
        assert code == 2 and "Traceback" not in err
        assert str(eval_refused.value).partition(":")[0] in err and "would land among whatever it holds" in err
    assert not list(here.iterdir())  # nothing was written there


def test_eval_out_refuses_a_folder_holding_what_an_eval_does_not_write(runs, tmp_path, cli):
    """Another run's folder, or a data set's class folder (whose images the eval's PNGs would join): refused
    before any work, nothing written. An earlier eval's folder, with a killed write's leftover, is replaced, and the
    leftover removed; a temporary copy changed after the eval began (another eval writing there now) stays."""
    member, other = map(str, runs["members"][:2])
    images = tmp_path / "data" / "cat"
    images.mkdir(parents=True)
    (images / "0.png").write_bytes(b"png")
    own_notes = tmp_path / "notes"
    own_notes.mkdir()
    (own_notes / "metrics.json").write_text('{"my_experiment": "keep me"}')  # an eval's name, not an eval's file
    photo = tmp_path / "photo"
    photo.mkdir()
    Image.new("RGB", (4, 4)).save(photo / "mistakes.png")  # an image that no plot wrote
    for folder, named in ((Path(other), "config.yaml"), (images, "0.png"), (own_notes, "metrics.json"),
                          (photo, "mistakes.png")):
        before = sorted(p.name for p in folder.iterdir())
        code, out, err = cli(["eval", member, "--out", str(folder)])
        assert code == 2 and "holds files an eval does not write" in err and named in err, err
        assert "Traceback" not in err and sorted(p.name for p in folder.iterdir()) == before
    earlier = tmp_path / "eval-here"
    code, out, err = cli(["eval", member, "--out", str(earlier)])
    assert code == 0, err
    killed = [earlier / ".metrics.json.abc123.tmp", earlier / ".confusion.png.def456.tmp"]  # writes killed part-way
    for leftover in killed:
        leftover.write_text("")
    live = earlier / ".mistakes.png.ghi789.tmp"
    live.write_text("")
    os.utime(live, (time.time() + 3600, time.time() + 3600))  # changed after the eval below starts
    code, out, err = cli(["eval", member, "--out", str(earlier)])
    assert code == 0, err
    assert not any(leftover.exists() for leftover in killed) and live.exists()


def test_other_commands_do_not_write_over_an_evals_own_files(runs, tmp_path, cli):
    """`data show --out EVAL/mistakes.png` replaced the eval's mistakes with an augmentation grid, which the run's
    page then showed as "the most confidently wrong images"; the same for compare's plot (ensemble's JSON: below)."""
    member = str(runs["members"][0])
    evaluated = tmp_path / "evaluated"
    assert cli(["eval", member, "--out", str(evaluated)])[0] == 0
    before = {path.name: path.read_bytes() for path in evaluated.iterdir()}
    for command in (["data", "show", "digits", "--out", str(evaluated / "mistakes.png")],
                    ["compare", "lenet5", "alexnet", "--plot", str(evaluated / "confusion.png")]):
        code, _, err = cli(command)
        assert code == 2 and "is an eval's own" in err and "Traceback" not in err, err
    assert {path.name: path.read_bytes() for path in evaluated.iterdir()} == before


def test_snapshots_of_a_run_with_one_snapshot_are_refused_without_advising_snapshots(runs, tmp_path, cli):
    # "An ensemble needs at least 2 members ... or use RUN --snapshots" told a user who had just used --snapshots.
    run = tmp_path / "one-snapshot"
    shutil.copytree(runs["cyclic"], run)
    for extra in sorted(run.glob("snapshot-*.safetensors"))[1:]:
        extra.unlink()
    code, out, err = cli(["ensemble", str(run), "--snapshots"])
    assert code == 2 and "holds one snapshot (snapshot-1.safetensors)" in err and "2 or more" in err, err
    assert "use RUN --snapshots" not in err and "Traceback" not in err, err
    # the remedy is the one that gives this run more snapshots, read from its status.json (one fixed text told an
    # early-stopped run of 2 cycles to train with 2 cycles, or to resume, which trains nothing)
    assert "train with schedule.cycles=2 or more" in err and "resume" not in err
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "message": "stopped early after epoch 2 of 4: ..."}))
    code, out, err = cli(["ensemble", str(run), "--snapshots"])
    assert "early stopping ended the run before its next cycle" in err and "schedule.cycles" not in err, err
    (run / "status.json").write_text(json.dumps({**status, "state": "interrupted"}))
    code, out, err = cli(["ensemble", str(run), "--snapshots"])
    assert f"let the run finish, which saves the rest (cnnlab train --resume {run})" in err, err
    # a path that is no folder is named so ("holds no snapshot" sent a typo off to train a cyclic run)
    code, out, err = cli(["ensemble", str(tmp_path / "no-such-run"), "--snapshots"])
    assert code == 2 and "does not exist: --snapshots takes the folder of a run" in err, err
    code, out, err = cli(["ensemble", str(run / "status.json"), "--snapshots"])
    assert code == 2 and "is a file, not a run folder" in err, err


def test_ensemble_takes_the_multiscale_scales_eval_takes(runs, tmp_path, cli):
    from cnnlab.evaluate.evaluate import run_eval

    members = runs["members"][:2]
    code, out, err = cli(["ensemble", *map(str, members), "--tta", "multiscale", "--scales", "0.75,1.25", "--json"])
    assert code == 0, err
    # the loss, which moves with the views even where every image stays right
    expected = [run_eval(run, tta="multiscale", scales=(0.75, 1.25), out=tmp_path / f"eval-{i}")["loss"]
                for i, run in enumerate(members)]
    default = [run_eval(run, tta="multiscale", out=tmp_path / f"default-{i}")["loss"] for i, run in enumerate(members)]
    assert [m["loss"] for m in json.loads(out)["members"]] == pytest.approx(expected, rel=1e-6)
    assert expected != default  # the scales matter on these members, so the test would see them dropped
    code, out, err = cli(["ensemble", *map(str, members), "--tta", "multiscale", "--scales", "9"])
    assert code == 2 and "between 0.25 and 4" in err


def test_ensemble_refuses_members_with_other_classes(runs, tmp_path, cli):
    other = train_run(tmp_path / "five", "data.spec=synthetic:classes=5,train=160,val=40,test=40")
    report = tmp_path / "new" / "ensemble.json"
    code, out, err = cli(["ensemble", str(runs["members"][0]), str(other), "--out", str(report)])
    assert code == 2 and "classes that differ" in err and "Traceback" not in err
    assert "choose members trained on the same classes" in err and "Evaluate on data" not in err
    assert not (tmp_path / "new").exists()  # refused before anything was written, the --out folder included
    code, out, err = cli(["ensemble", str(runs["members"][0])])
    assert code == 2 and "at least 2 members" in err


def test_ensemble_replaces_only_an_earlier_report_and_says_where_it_wrote(runs, tmp_path, cli):
    """--out on an existing script or image would have become the report: refused before any work, the file
    kept; so is a JSON file that is not an earlier ensemble report (an eval's metrics.json: replacing it would
    change the run's recorded test accuracy). An earlier report is replaced, and the command names the file."""
    members = list(map(str, runs["members"][:2]))
    script = tmp_path / "train.py"
    script.write_text("print('mine')\n")
    code, out, err = cli(["ensemble", *members, "--out", str(script)])
    assert code == 2 and "already exists" in err and "train.json" in err and "Traceback" not in err, err
    assert script.read_text() == "print('mine')\n"
    code, out, err = cli(["eval", members[0], "--out", str(tmp_path / "eval")])
    assert code == 0, err
    for other, said in ((tmp_path / "eval" / "metrics.json", "is an eval's own metrics.json"),
                        (tmp_path / "notes.json", "is not an earlier ensemble report")):
        if not other.exists():
            other.write_text('{"mine": 1}')
        before = other.read_text()
        code, out, err = cli(["ensemble", *members, "--out", str(other)])
        assert code == 2 and said in err and "Traceback" not in err, err
        assert other.read_text() == before
    report = tmp_path / "ensemble.json"
    code, out, err = cli(["ensemble", *members, "--out", str(report)])
    assert code == 0, err
    killed = tmp_path / ".ensemble.json.abc123.tmp"  # a write of the report killed part-way: gone once it is written
    killed.write_text("{")
    code, out, err = cli(["ensemble", *members, "--batch-size", "7", "--out", str(report)])  # the earlier report
    assert code == 0, err
    assert not killed.exists()
    assert f"report written to {report}" in " ".join(out.split()) and json.loads(report.read_text())["members"]
    code, out, err = cli(["ensemble", *members, "--out", str(tmp_path)])  # a folder: a file inside it is suggested
    assert code == 2 and f"such as '{tmp_path / 'ensemble.json'}'" in err, err


def test_ensemble_prints_each_data_note_once(tmp_path, cli, capsys):
    """Every member loads the data, and each load used to print the data's notes again: a note per member."""
    members = [str(train_run(tmp_path / f"kept{seed}", "data.classes=[0,1,2]", "train.epochs=1",
                             f"train.seed={seed}")) for seed in range(3)]
    capsys.readouterr()  # the trainings' own notes
    note = "note: kept 3 of 4 classes"
    for _ in range(2):  # a second ensemble in the same process shows the note again: each command's own record
        code, out, err = cli(["ensemble", *members])
        assert code == 0, err
        assert err.count(note) == 1, err
    code, out, err = cli(["eval", members[0], "--out", str(tmp_path / "eval")])
    assert code == 0 and err.count(note) == 1, err


def test_ensemble_of_members_trained_on_other_data_says_whose_data_it_reads(runs, tmp_path, cli, capsys):
    """Members trained on other data sets with the same classes are evaluated on the first member's data: the
    result followed the order of the members, and only the header line named the data."""
    other = str(train_run(tmp_path / "other", "data.spec=synthetic:classes=4,train=96,val=64,test=64",
                          "train.epochs=1"))
    first = str(runs["members"][0])
    capsys.readouterr()  # the trainings' own lines
    code, out, err = cli(["ensemble", first, other, "--json"])
    assert code == 0, err
    note = (f"members were trained on other data (synthetic:classes=4,train=96,val=64,test=64): every member is "
            f"evaluated on the first member's, {DATA}")
    assert any(n.startswith(note) for n in json.loads(out)["notes"]), out
    code, out, err = cli(["ensemble", first, other, "--data", DATA, "--json"])  # the data named: nothing to say
    assert code == 0 and not any("trained on other data" in n for n in json.loads(out)["notes"]), out
    # the same data written another way is no other data
    spelled = str(train_run(tmp_path / "spelled", f"data.spec={DATA.replace('synthetic:', 'Synthetic: ')}",
                            "train.epochs=1"))
    capsys.readouterr()
    code, out, err = cli(["ensemble", first, spelled, "--json"])
    assert code == 0 and not any("trained on other data" in n for n in json.loads(out)["notes"]), out


def test_a_spec_key_is_the_data_a_spec_names_however_it_is_written(tmp_path):
    from cnnlab.data.sources import spec_key

    (tmp_path / "imgs").mkdir()
    assert spec_key("Digits") == spec_key(" digits") != spec_key("fashion-mnist")
    assert spec_key("fashion_mnist") == spec_key("FashionMNIST") == spec_key("fashion-mnist")
    assert spec_key("cifar-10") == spec_key("CIFAR10") != spec_key("cifar100")
    assert spec_key("cifar100:Coarse") == spec_key("cifar-100:coarse") != spec_key("cifar100")
    assert spec_key(f"folder: {tmp_path / 'imgs'}") == spec_key(f"folder:{tmp_path}/./imgs")
    assert spec_key("synthetic:classes = 3") == spec_key("synthetic:classes=3") != spec_key("synthetic:classes=4")


def test_ensemble_refuses_a_member_named_twice(runs, tmp_path, cli):
    """A member counted twice would weigh double in the average and shift the gain over the best member."""
    first, second = map(str, runs["members"][:2])
    for again in (first, f"{first}/best.safetensors"):  # the run folder names its best checkpoint
        code, out, err = cli(["ensemble", first, second, again])
        assert code == 2 and "same checkpoint" in err and f"{first}/best.safetensors" in err, err
    copy = shutil.copytree(first, tmp_path / "copy")  # another file, the same weights
    code, out, err = cli(["ensemble", first, str(copy), second])
    assert code == 2 and "the same weights" in err and str(copy) in err and "Traceback" not in err, err


# --- prediction -----------------------------------------------------------------------------------


def test_predict_uses_the_training_preprocessing_and_lists_undecodable_files(runs, tmp_path, cli):
    run = runs["members"][0]
    loaded = load_model(run)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "rgb.png")
    Image.fromarray(pixels[:, :, 0]).save(folder / "gray.png")  # a gray image for an RGB model: converted
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "notes.txt").write_text("not an image")
    code, out, err = cli(["predict", str(run), str(folder), "--topk", "2", "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert sorted(p["path"].rsplit("/", 1)[1] for p in result["predictions"]) == ["gray.png", "rgb.png"]
    skipped = {s["path"].rsplit("/", 1)[1]: s["reason"] for s in result["skipped"]}
    assert set(skipped) == {"broken.png", "notes.txt"} and "Cannot decode" in skipped["broken.png"]
    # Independent preprocessing: PIL resize of the 20x20 image to the training size, then mean/std.
    size = loaded.meta["image_size"]
    image = np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
    x = (torch.from_numpy(image).permute(2, 0, 1) - torch.tensor(loaded.meta["mean"]).view(3, 1, 1)) / torch.tensor(
        loaded.meta["std"]).view(3, 1, 1)
    with torch.no_grad():
        expected = torch.softmax(loaded.model(x.unsqueeze(0)), 1)[0]
    rgb = next(p for p in result["predictions"] if p["path"].endswith("rgb.png"))
    assert len(rgb["top"]) == 2
    assert rgb["top"][0]["class"] == loaded.classes[int(expected.argmax())]
    assert rgb["top"][0]["probability"] == pytest.approx(expected.max().item(), abs=0.02)  # resize kernels differ
    code, out, err = cli(["predict", str(run), str(folder / "rgb.png")])
    assert code == 0 and out.splitlines()[0].startswith(f"lenet5 from {run / 'best.safetensors'} (raw weights)")


def test_predict_refuses_more_classes_than_the_model_has(runs, tmp_path, cli):
    run = runs["members"][0]
    classes = len(load_model(run).classes)
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(image)
    code, out, err = cli(["predict", str(run), str(image), "--topk", str(classes + 1)])
    assert code == 2 and f"--topk {classes + 1}" in err and f"{classes} classes" in err and "Traceback" not in err, err
    code, out, err = cli(["predict", str(run), str(image), "--topk", str(classes), "--json"])
    assert code == 0 and len(json.loads(out)["predictions"][0]["top"]) == classes, err
    code, out, err = cli(["predict", str(run), str(image), "--json"])  # the default lists up to 5: all of fewer
    assert code == 0 and len(json.loads(out)["predictions"][0]["top"]) == min(5, classes), err


# --- export ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_matches_pytorch_and_carries_the_preprocessing(runs, tmp_path, cli, fmt):
    run = runs["members"][0]
    target = tmp_path / f"model.{'pt' if fmt == 'torchscript' else 'onnx'}"
    killed = tmp_path / f".{target.name}.abc123.tmp"  # an export killed part-way: gone once this one is kept
    killed.mkdir()
    (killed / target.name).write_bytes(b"half")
    code, out, err = cli(["export", str(run), "--format", fmt, "--out", str(target), "--json"])
    assert code == 0, err
    assert not killed.exists()
    result = json.loads(out)
    assert result["max_abs_difference"] <= 1e-4 and result["checked_batches"] == [8, 3]
    loaded = load_model(run)
    x = torch.randn(5, 3, loaded.meta["image_size"], loaded.meta["image_size"])
    with torch.no_grad():
        expected = loaded.model(x)
    if fmt == "torchscript":
        extra = {"cnnlab.json": ""}
        scripted = torch.jit.load(str(target), _extra_files=extra)
        info = json.loads(extra["cnnlab.json"])
        got = scripted(x)
    else:
        import onnx
        import onnxruntime

        info = json.loads({p.key: p.value for p in onnx.load(str(target)).metadata_props}["cnnlab"])
        session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    assert torch.allclose(got, expected, atol=1e-4)
    assert info["classes"] == loaded.classes and info["mean"] == loaded.meta["mean"]
    assert info["image_size"] == loaded.meta["image_size"] and info["channels"] == 3


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_the_export_s_recorded_preprocessing_reproduces_predict_on_a_photo_that_is_not_square(runs, tmp_path):
    """The metadata named mean/std and the input shape, not how an image reaches that shape: a deployment that
    squashed a 3:5 photo to a square (or converted it to gray another way) got other probabilities than predict.
    Followed as written (torchvision's resize and centre crop, not cnnlab's code), it gives predict's numbers."""
    from torchvision.transforms.v2 import functional as tvf

    from cnnlab.evaluate.export import export_model
    from cnnlab.evaluate.predict import predict_files

    run = runs["members"][0]
    target = export_model(run, "torchscript", out=tmp_path / "model.pt")["file"]
    extra = {"cnnlab.json": ""}
    scripted = torch.jit.load(target, _extra_files=extra)
    info = json.loads(extra["cnnlab.json"])
    assert "short side resized to image_size" in info["resize"] and "centre-cropped" in info["resize"]
    # the resize by name: PIL's bilinear resize, which the text alone allowed, gave probabilities 1.6e-3 off
    assert "torchvision.transforms.v2.functional.resize(image, [height, width], antialias=True)" in info["resize"]
    assert "RGB" in info["pixels"] and info["channels"] == 3
    pixels = np.random.default_rng(1).integers(0, 256, (50, 30, 3), dtype=np.uint8)  # (H, W, C): tall
    Image.fromarray(pixels).save(tmp_path / "tall.png")
    size = info["image_size"]
    x = tvf.center_crop(tvf.resize(torch.from_numpy(pixels).permute(2, 0, 1), [size], antialias=True), [size, size])
    x = (x.float() / 255 - torch.tensor(info["mean"]).view(3, 1, 1)) / torch.tensor(info["std"]).view(3, 1, 1)
    with torch.no_grad():
        probs = torch.softmax(scripted(x.unsqueeze(0)), 1)[0]
    (row,) = predict_files(run, tmp_path / "tall.png", topk=len(info["classes"]))["predictions"]
    for top in row["top"]:
        assert top["probability"] == pytest.approx(probs[info["classes"].index(top["class"])].item(), abs=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_has_no_size_switch_and_its_trace_takes_other_shapes(tmp_path):
    """ONNX's graph fixes its spatial axes unless any_size frees them; a trace fixes none, so the TorchScript
    exporter takes no such argument (it had one, and ignored it)."""
    from cnnlab.evaluate.export import _export_torchscript, _run_torchscript

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    path = tmp_path / "model.pt"
    _export_torchscript(model, torch.randn(2, 3, 32, 32), path, {"model": "tiny"})
    for height, width in ((24, 32), (32, 24), (40, 40)):  # traced at 32x32, run at bucket-like shapes
        x = torch.randn(3, 3, height, width)
        with torch.no_grad():
            assert torch.allclose(_run_torchscript(path, x), model(x), atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_of_the_ema_weights_goes_beside_the_raw_export_and_says_which(runs, tmp_path, cli):
    import shutil

    run = shutil.copytree(runs["members"][0], tmp_path / "run")  # the default names land in the run folder
    names = {}
    for extra, weights in (([], "raw"), (["--ema"], "ema")):
        code, out, err = cli(["export", str(run), "--format", "torchscript", "--json", *extra])
        assert code == 0, err
        names[weights] = Path(json.loads(out)["file"])
        files = {"cnnlab.json": ""}
        torch.jit.load(str(names[weights]), _extra_files=files)
        assert json.loads(files["cnnlab.json"])["weights"] == weights
    assert names == {"raw": run / "best.pt", "ema": run / "best-ema.pt"}  # neither overwrites the other
    assert names["raw"].is_file() and names["ema"].is_file()


def test_export_never_replaces_a_file_whose_name_is_not_an_export_s(runs, tmp_path, cli):
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  name: lenet5\n")
    code, out, err = cli(["export", str(runs["members"][0]), "--format", "torchscript", "--out", str(config)])
    assert code == 2 and "already exists" in err and "config.pt" in err
    assert config.read_text() == "model:\n  name: lenet5\n"
    earlier = tmp_path / "model.pt"  # an earlier export is replaced, told apart by its content
    code, out, err = cli(["export", str(runs["members"][1]), "--format", "torchscript", "--out", str(earlier)])
    before = earlier.read_bytes()
    code, out, err = cli(["export", str(runs["members"][0]), "--format", "torchscript", "--out", str(earlier)])
    assert code == 0 and earlier.read_bytes() != before, err
    # a file named like an export that is none (weights a program saved), or a link so named to a run's checkpoint,
    # was replaced (through the link: the other run lost its weights)
    weights = tmp_path / "mine.pth"
    torch.save({"w": torch.zeros(3)}, weights)
    link = tmp_path / "link.pt"
    checkpoint = Path(runs["members"][1]) / "best.safetensors"
    link.symlink_to(checkpoint)
    kept = checkpoint.read_bytes()
    for target, through in ((weights, ""), (link, f" (a link to '{checkpoint.resolve()}')")):
        saved = target.read_bytes()
        code, out, err = cli(["export", str(runs["members"][0]), "--format", "torchscript", "--out", str(target)])
        said = " ".join(err.split())
        assert code == 2 and f"'{target}'{through} already holds a file that is no export" in said, err
        assert target.read_bytes() == saved
    assert checkpoint.read_bytes() == kept


def test_the_parity_bar_scales_with_the_largest_logit(runs, tmp_path, monkeypatch):
    """A float-exact export of a barely trained network whose logits reach hundreds differs by a few parts in 1e7 of
    them, over the absolute 1e-4: densenet121's ONNX export was refused, its message blaming the model. The same
    relative error is allowed; a larger one is not."""
    import cnnlab.train.checkpoint as checkpoint
    from cnnlab.evaluate import export

    real_model, real_run = checkpoint.load_run_model, export._run_torchscript

    def loud(*args, **kwargs):  # logits 1000 times as large: the model's last layer scaled
        loaded = real_model(*args, **kwargs)
        last = [m for m in loaded.model.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.mul_(1000.0)
            last.bias.mul_(1000.0)
        return loaded

    monkeypatch.setattr(checkpoint, "load_run_model", loud)  # export_model imports it when it runs
    monkeypatch.setattr(export, "_run_torchscript", lambda path, x: real_run(path, x) * (1 + 3e-7))
    result = export.export_model(runs["members"][0], "torchscript", out=tmp_path / "a.pt")
    assert result["max_abs_difference"] > 1e-4 and result["allowed"] > result["max_abs_difference"]
    monkeypatch.setattr(export, "_run_torchscript", lambda path, x: real_run(path, x) * (1 + 3e-4))
    with pytest.raises(CnnlabError, match=r"times the largest logit's size"):
        export.export_model(runs["members"][0], "torchscript", out=tmp_path / "b.pt")


def test_export_that_fails_its_parity_check_writes_nothing(runs, tmp_path, cli, monkeypatch):
    from cnnlab.evaluate import export

    real = export._run_torchscript
    monkeypatch.setattr(export, "_run_torchscript", lambda path, x: real(path, x) + 1.0)
    target = tmp_path / "model.pt"
    code, out, err = cli(["export", str(runs["members"][0]), "--format", "torchscript", "--out", str(target)])
    assert code == 2 and "differs from PyTorch by up to" in err
    assert not target.exists() and list(tmp_path.iterdir()) == []  # not even a temporary file


@pytest.mark.parametrize("fmt, stage", [("onnx", "export"), ("onnx", "run"), ("torchscript", "export")])
def test_an_export_the_exporter_or_runtime_cannot_make_is_refused_and_writes_nothing(runs, tmp_path, cli,
                                                                                     monkeypatch, fmt, stage):
    """torch.export's and onnxruntime's own errors (a model whose size arithmetic one graph cannot hold) ended as
    an internal error, exit 1, after hundreds of lines of torch's log."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    from cnnlab.evaluate import export

    def failing(*args, **kwargs):
        raise RuntimeError("\x1b[96mshape guard\x1b[0m failed\nsecond line")

    monkeypatch.setattr(export, f"_{stage}_{fmt}", failing)
    target = tmp_path / f"model{export.SUFFIX[fmt]}"
    code, out, err = cli(["export", str(runs["members"][0]), "--format", fmt, "--out", str(target)])
    assert code == 2 and "Traceback" not in err and "internal error" not in err, err
    what = "cannot be exported" if stage == "export" else "fails on a batch of shape (8, 3,"
    other = "torchscript" if fmt == "onnx" else "onnx"
    assert what in err and "(RuntimeError: shape guard failed)" in err and f"Try --format {other}" in err, err
    assert list(tmp_path.iterdir()) == []  # not even a temporary file


def test_onnx_export_without_onnxscript_names_the_extra(runs, tmp_path, cli, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    code, out, err = cli(["export", str(runs["members"][0]), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert code == 2 and "onnx, onnxruntime and onnxscript" in err and "pip install 'cnnlab[onnx]'" in err, err


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_a_sample_count_of_3_is_still_checked_at_a_second_batch_size(runs, tmp_path):
    from cnnlab.evaluate.export import export_model

    result = export_model(runs["members"][0], "torchscript", out=tmp_path / "m.pt", samples=3)
    assert result["checked_batches"] == [3, 2]


def test_an_out_folder_is_answered_with_a_file_name_that_keeps_the_format_s_suffix(runs, tmp_path, cli):
    code, out, err = cli(["export", str(runs["members"][0]), "--format", "onnx", "--out", str(tmp_path)])
    assert code == 2 and f"such as '{tmp_path / 'best.onnx'}'" in err, err


def test_an_export_under_any_name_or_an_image_given_as_the_run_is_named_for_what_it_is(runs, tmp_path, cli):
    pytest.importorskip("onnxruntime")
    deployed = tmp_path / "model"  # an ONNX graph without its suffix: known by its content
    code, out, err = cli(["export", str(runs["members"][0]), "--format", "onnx", "--out", str(deployed)])
    assert code == 0, err
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    code, out, err = cli(["predict", str(deployed), str(image)])
    assert code == 2 and "is an ONNX graph, a model exported for deployment" in err and "damaged" not in err, err
    code, out, err = cli(["predict", str(image), str(runs["members"][0])])  # the arguments swapped
    assert code == 2 and "is an image (PNG), not a checkpoint" in err and "cnnlab predict RUN IMAGE" in err, err
    code, out, err = cli(["eval", str(image), "--out", str(tmp_path / "eval")])  # predict's order is not eval's
    assert code == 2 and "is an image (PNG), not a checkpoint" in err and "predict" not in err, err


@pytest.mark.parametrize("fmt, name", [("torchscript", "model.onnx"), ("onnx", "model.pt"), ("onnx", "model.TS"),
                                       ("torchscript", "model.safetensors")])
def test_export_refuses_a_file_name_of_another_format(runs, tmp_path, cli, fmt, name):
    """--format chooses the format; a name that says another one would hide what the file holds."""
    code, out, err = cli(["export", str(runs["members"][0]), "--format", fmt, "--out", str(tmp_path / name)])
    assert code == 2 and name in err and f"--format {fmt}" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


# --- bad input ------------------------------------------------------------------------------------


def test_a_run_without_a_checkpoint_yet_is_named_as_a_run_with_how_to_get_one(runs, tmp_path, cli):
    """A run killed in its first epoch was "holds no best.safetensors ...: point at a run folder written by
    `cnnlab train`", which it is; the message now says it stopped before a checkpoint, and the command it gives
    trains the run again in its folder. A run still in its first epoch (its lock held) is told to be waited for, and
    a finished run whose weights are gone is said to be one."""
    import fcntl

    from cnnlab.run import RunFolder

    weightless = RunFolder(tmp_path / "weightless")  # a finished run copied without its weights (git, rsync)
    shutil.copytree(runs["members"][0], weightless.path)
    for checkpoint in weightless.path.glob("*.safetensors"):
        checkpoint.unlink()
    code, out, err = cli(["eval", str(weightless.path)])
    said = " ".join(err.split())
    assert code == 2 and "is a run whose 3 epochs finished, but neither best.safetensors nor" in said, said
    assert "Train it again" not in said  # retraining would replace the records of the run whose weights are gone
    full = RunFolder(tmp_path / "full")  # a disk that filled while the first checkpoint was written: its row is there
    shutil.copytree(weightless.path, full.path)
    full.metrics.write_text("\n".join(full.metrics.read_text().splitlines()[:2]) + "\n")
    full.status.write_text(json.dumps({**json.loads(full.status.read_text()), "state": "failed", "epoch": 1}))
    code, out, err = cli(["eval", str(full.path)])
    assert code == 2 and "is a run that stopped before it saved a checkpoint" in err, err
    # killed in its second epoch: status.json took epoch 1 after its checkpoint, so the weights were there
    full.status.write_text(json.dumps({**json.loads(full.status.read_text()), "state": "running", "epoch": 1}))
    code, out, err = cli(["eval", str(full.path)])
    assert code == 2 and "is a run whose 1 epoch finished, but neither" in " ".join(err.split()), err
    full.status.write_text(json.dumps({**json.loads(full.status.read_text()), "state": "running", "epoch": 0}))
    code, out, err = cli(["eval", str(full.path)])  # killed between the row and the first checkpoint
    assert code == 2 and "is a run that stopped before it saved a checkpoint" in err, err
    killed = RunFolder(tmp_path / "killed")
    shutil.copytree(weightless.path, killed.path)
    killed.metrics.unlink()
    os.mkfifo(killed.metrics)  # not read: a pipe would wait forever
    code, out, err = cli(["eval", str(killed.path)])
    assert code == 2 and "is a run that stopped before it saved a checkpoint" in err, err
    killed.metrics.unlink()
    header = full.metrics.read_text().splitlines()[0]
    killed.metrics.write_text(header + "\n")  # killed in its first epoch: no epoch recorded
    trial = RunFolder(tmp_path / "search" / "trials" / "search-0000")  # a search reruns only its stopped trials
    shutil.copytree(killed.path, trial.path)
    (tmp_path / "search" / "study.db").write_bytes(b"")
    for state, ending in (("interrupted", "runs its parameters again in a new trial"),
                          ("failed", "a search does not run a failed trial again")):
        trial.status.write_text(json.dumps({**json.loads(trial.status.read_text()), "state": state, "epoch": 0}))
        code, out, err = cli(["eval", str(trial.path)])
        said = " ".join(err.split())
        assert code == 2 and "is a search trial that saved no checkpoint" in said and ending in said, said
    for args in (["eval", str(killed.path)], ["export", str(killed.path), "--format", "onnx"]):
        code, out, err = cli(args)
        assert code == 2 and "is a run that stopped before it saved a checkpoint" in err and "Traceback" not in err, err
    again = re.search(r"Train it again in its folder: (cnnlab train .*)$", " ".join(err.split())).group(1)
    assert shlex.split(again)[1:] == ["train", "--config", str(killed.config), "--out", str(killed.path)]
    with open(killed.lock, "w") as lock:  # the run's own process holds its lock while it trains
        lock.write("process 1 on host (`cnnlab train ...`)")
        lock.flush()
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        code, out, err = cli(["eval", str(killed.path)])
    assert code == 2 and "is a run still training (process 1 on host" in err and "Wait for it" in err, err


def test_a_read_only_run_folder_is_told_the_way_on_that_fits_the_command(runs, tmp_path, cli, monkeypatch):
    """"Choose a folder you can write to" for the folder eval or export chose in a read-only run, or for a resumed
    run's own folder, named no way to do so: eval and export now name --out, a resume its folder (or a copy)."""
    from cnnlab import io

    run = tmp_path / "read-only run"
    shutil.copytree(runs["members"][0], run)
    folder_problem = io._folder_problem

    def read_only(path, bytes_needed=0):  # as a read-only folder answers (root may write anywhere: a test cannot chmod)
        inside = Path(path).resolve().is_relative_to(run.resolve())
        return f"Permission denied in '{run}'. Choose a folder you can write to" if inside else folder_problem(
            path, bytes_needed)

    monkeypatch.setattr(io, "_folder_problem", read_only)
    for args, way in ((["eval", str(run)], "Give --out a folder you can write to"),
                      (["export", str(run), "--format", "onnx"], "Give --out a file in a folder you can write to"),
                      (["train", "--resume", str(run)], "make it writable (chmod -R u+w")):
        code, out, err = cli(args)
        said = " ".join(err.split())
        assert code == 2 and "Permission denied" in said and way in said, said
        assert "Choose a folder you can write to" not in said
    code, out, err = cli(["eval", str(run), "--out", str(tmp_path / "elsewhere")])  # the way it names
    assert code == 0, err
    disk_usage = shutil.disk_usage  # a full disk keeps its own advice: no chmod would free space
    monkeypatch.setattr(shutil, "disk_usage", lambda path: disk_usage(path)._replace(free=2**20))
    monkeypatch.setattr(io, "_folder_problem", folder_problem)
    code, out, err = cli(["train", "--resume", str(run)])
    said = " ".join(err.split())
    assert code == 2 and "Free some space or choose a folder on another disk" in said and "chmod" not in said, said


def test_bad_checkpoints_and_options_exit_2(runs, tmp_path, cli):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    no_ema = runs["cyclic"]
    cases = [
        (["eval", str(tmp_path / "missing.safetensors")], "does not exist"),
        (["eval", str(tmp_path)], "holds no best.safetensors"),
        (["eval", str(corrupt)], str(corrupt)),
        (["eval", str(no_ema), "--ema"], "holds no EMA weights"),
        (["eval", str(runs["members"][0]), "--tta", "20crop"], "choose one of none, flip"),
        (["eval", str(runs["members"][0]), "--split", "holdout"], "no 'holdout' split"),
        (["eval", str(runs["members"][0]), "--scales", "0.9,big"], "comma-separated numbers"),
        # a scale given twice counted its views twice in the average, as a repeated resnet10crop side would
        (["eval", str(runs["members"][0]), "--tta", "multiscale", "--scales", "0.9,1,1.1,1.10"],
         "names the scale 1.1 more than once"),
        (["predict", str(runs["members"][0]), str(tmp_path / "nothing.png")], "does not exist"),
        (["export", str(runs["members"][0]), "--format", "tflite"], "choose torchscript or onnx"),
    ]
    for args, message in cases:
        code, out, err = cli(args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)


def test_ema_of_a_snapshot_is_refused_in_words_about_ema_not_resuming(runs, cli):
    # A snapshot holds the raw weights only; the refusal must say so, not talk of resuming a run.
    snapshot = runs["cyclic"] / "snapshot-1.safetensors"
    for args in (["eval", str(snapshot), "--ema"], ["ensemble", str(runs["cyclic"]), "--snapshots", "--ema"],
                 ["predict", str(snapshot), str(snapshot), "--ema"], ["export", str(snapshot), "--format",
                                                                      "torchscript", "--ema"]):
        code, out, err = cli(args)
        assert code == 2 and "is a snapshot" in err and "--ema" in err, (args, err)
        assert "resum" not in err and "Traceback" not in err, (args, err)


def test_reports_record_the_multiscale_scales_and_each_member_s_shift(runs, tmp_path, cli, capsys):
    """metrics.json and the ensemble's JSON named neither multiscale's scales nor the pixels each member's
    corner views were shifted by (each member's own training translation), so reports made with other
    settings could not be told apart."""
    run = runs["members"][0]
    own = tta_shift_of(run)
    other = train_run(tmp_path / "other-shift", "train.seed=7", "aug.crop=translate", f"aug.translate={own + 1}")
    capsys.readouterr()  # the training's epoch lines, not the eval's JSON
    code, out, err = cli(["eval", str(run), "--tta", "multiscale", "--scales", "0.8,1.2", "--out",
                          str(tmp_path / "ms"), "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert report["scales"] == [0.8, 1.2] and report["shift"] == own
    assert json.loads((tmp_path / "ms" / "metrics.json").read_text())["scales"] == [0.8, 1.2]
    code, out, err = cli(["eval", str(run), "--tta", "multiscale", "--scales", "0.8,1.2", "--out",
                          str(tmp_path / "ms")])
    assert code == 0 and f"at scales 0.8, 1.2, corners shifted {own} px" in out, out
    code, out, err = cli(["eval", str(run), "--tta", "flip", "--out", str(tmp_path / "flip"), "--json"])
    assert code == 0 and json.loads(out)["scales"] is None and json.loads(out)["shift"] is None

    code, out, err = cli(["ensemble", str(run), str(other), "--tta", "5crop", "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert [row["shift"] for row in result["members"]] == [own, own + 1]
    assert [row["views"] for row in result["members"]] == [5, 5] and result["scales"] is None
    code, out, err = cli(["ensemble", str(run), str(other), "--tta", "multiscale", "--scales", "0.9,1.1", "--json"])
    assert code == 0 and json.loads(out)["scales"] == [0.9, 1.1], err
    code, out, err = cli(["ensemble", str(run), str(other), "--tta", "5crop"])
    assert code == 0 and f"{own} px" in out and f"{own + 1} px" in out, out


def tta_shift_of(run) -> int:
    """The corner shift eval gives a run by default: its training translation, as tta_settings resolves it."""
    from cnnlab.evaluate.evaluate import eval_loader, tta_settings

    loaded = load_model(run)
    dataset, _ = eval_loader(loaded)
    return tta_settings(loaded, dataset, "5crop")[1]


def test_corner_views_shift_by_the_training_translation(runs, tmp_path):
    from cnnlab.data import resolve_aug
    from cnnlab.evaluate.evaluate import eval_loader, tta_settings

    loaded = load_model(runs["members"][0])
    dataset, _ = eval_loader(loaded)
    trained = resolve_aug(loaded.config.aug, dataset.image_size, dataset.channels, dataset.hflip_safe)
    assert trained.crop == "translate" and trained.translate > 0  # the standard preset shifts
    assert tta_settings(loaded, dataset, "10crop") == (True, trained.translate, [])
    assert tta_settings(loaded, dataset, "10crop", shift=1)[1] == 1
    loaded.config.aug.preset, loaded.config.aug.crop = "none", None  # as if trained without shifts
    flips, shift, notes = tta_settings(loaded, dataset, "5crop")
    assert shift == tta.default_shift(dataset.image_size) and "trained without pad-and-crop shifts" in notes[0]
    report = run_eval(runs["members"][0], tta="10crop", shift=2, out=tmp_path / "e")
    assert report["shift"] == 2 and report["views"] == 10


def _edit_recorded_config(checkpoint, edit):
    """Rewrite the training config a checkpoint's metadata records, as a hand edit would (tensors untouched)."""
    import safetensors
    import safetensors.torch

    with safetensors.safe_open(str(checkpoint), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not iterable)
    meta = json.loads(metadata["meta"])
    edit(meta["config"])
    safetensors.torch.save_file(tensors, str(checkpoint), metadata={**metadata, "meta": json.dumps(meta)})


def test_tta_shift_is_the_translation_the_run_recorded(runs, tmp_path):
    import shutil

    from cnnlab.config import load_config
    from cnnlab.data.transforms import unresolved_fields

    run = tmp_path / "run"
    shutil.copytree(runs["members"][0], run)
    recorded = load_config(run / "config.yaml")
    assert not unresolved_fields(recorded.aug) and recorded.aug.crop == "translate"  # the standard preset, resolved
    assert load_model(run).config == recorded  # the checkpoint records the same resolved config
    assert run_eval(run, tta="10crop", out=tmp_path / "as-trained")["shift"] == recorded.aug.translate
    edited = recorded.aug.translate + 1  # a value the preset would not give for this image size
    _edit_recorded_config(run / "best.safetensors", lambda config: config["aug"].update(translate=edited))
    report = run_eval(run, tta="10crop", out=tmp_path / "edited")
    assert report["shift"] == edited and report["notes"] == []  # read from the record, not derived again


def test_tta_shift_of_a_run_from_before_the_record_resolves_its_preset_once(runs, tmp_path):
    """Older runs recorded the preset's augmentation fields as null (and train.label_smoothing): the legacy path."""
    import shutil
    from dataclasses import fields

    from cnnlab.config import AugConfig, load_config

    run = tmp_path / "old"
    shutil.copytree(runs["members"][0], run)
    resolved = load_config(run / "config.yaml").aug

    def as_before(config):
        config["aug"].update({f.name: None for f in fields(AugConfig) if f.default is None})
        config["train"]["label_smoothing"] = None

    _edit_recorded_config(run / "best.safetensors", as_before)
    assert load_model(run).config.aug.translate is None
    assert run_eval(run, tta="10crop", out=tmp_path / "e")["shift"] == resolved.translate


def test_tta_options_the_mode_does_not_use_are_refused(runs, tmp_path, cli):
    """--scales only moves multiscale, --shift only the corner views; a shift as large as the image leaves
    none of it in a corner view."""
    run, second = map(str, runs["members"][:2])
    size = load_model(run).image_size
    cases = [(["--scales", "0.9,1.1"], "--scales applies only to --tta multiscale"),
             (["--tta", "10crop", "--scales", "0.9"], "--scales applies only to --tta multiscale"),
             # short sides in pixels without --tta resnet10crop: named as the mode's mistake, not a range's
             (["--scales", f"{size},{size + 8}"], "--scales applies only to --tta multiscale"),
             (["--tta", "10crop", "--scales", str(size)], "--scales applies only to --tta multiscale"),
             (["--shift", "2"], "--shift applies only to --tta 5crop, 10crop and multiscale"),
             (["--tta", "flip", "--shift", "2"], "--shift applies only to --tta 5crop, 10crop and multiscale"),
             (["--tta", "5crop", "--shift", str(size)], f"smaller than the {size}x{size} images"),
             (["--tta", "multiscale", "--shift", "1000"], f"smaller than the {size}x{size} images")]
    for command in (["eval", run, "--out", str(tmp_path / "eval")], ["ensemble", run, second]):
        for extra, message in cases:
            code, out, err = cli(command + extra)
            assert code == 2 and message in err and "Traceback" not in err, (command + extra, err)
    assert not (tmp_path / "eval").exists()
    code, out, err = cli(["eval", run, "--tta", "multiscale", "--scales", f"{size},{size + 8}"])
    assert code == 2 and "short sides in pixels are --tta resnet10crop's" in err
    # ensemble refuses resnet10crop: its range error does not point there
    code, out, err = cli(["ensemble", run, second, "--tta", "multiscale", "--scales", f"{size},{size + 8}"])
    assert code == 2 and "must lie between" in err and "resnet10crop" not in err
    with pytest.raises(CnnlabError, match="--scales applies only"):  # the library decides, not the CLI
        run_eval(run, tta="flip", scales=(0.9, 1.1), out=tmp_path / "library")
    report = run_eval(run, tta="5crop", shift=size - 1, out=tmp_path / "largest")  # one pixel of the image is left
    assert report["shift"] == size - 1


# --- the Python API's arguments -------------------------------------------------------------------


def test_library_device_names_are_checked_before_any_work(runs, tmp_path, monkeypatch):
    """device="gpu" is refused naming the devices cnnlab runs on (train.device's rule), not with torch's list
    of every device type; nothing is written."""
    from cnnlab.evaluate.ensemble import run_ensemble
    from cnnlab.evaluate.predict import predict_files

    run, second = runs["members"][:2]
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(image)
    calls = {"run_eval": lambda device: run_eval(run, out=tmp_path / "eval", device=device),
             "predict_files": lambda device: predict_files(run, [image], device=device),
             "run_ensemble": lambda device: run_ensemble([run, second], out=tmp_path / "ensemble.json", device=device),
             "load_model": lambda device: load_model(run, device=device)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name, call in calls.items():
        with pytest.raises(CnnlabError, match="device='gpu' is not a device cnnlab runs on: use auto, cpu, cuda or "
                                              "cuda:N"):
            call("gpu")
        with pytest.raises(CnnlabError, match="device='cuda' but no CUDA GPU is available here"):
            call("cuda")
        with pytest.raises(CnnlabError, match="device='cpu:1' is not a device cnnlab runs on"):
            call("cpu:1")  # torch takes it; it names no other processor
    # a GPU the machine does not have: as torch's "invalid device ordinal" it was an internal error at the first copy
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for name, call in calls.items():
        with pytest.raises(CnnlabError, match=r"device='cuda:2' but this machine has 2 CUDA GPUs, cuda:0 to cuda:1"):
            call("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not (tmp_path / "eval").exists() and not (tmp_path / "ensemble.json").exists()
    # auto and a torch.device are device names too
    assert predict_files(run, [image], device="auto") == predict_files(run, [image], device=torch.device("cpu"))


def test_every_command_that_runs_a_network_on_the_cpu_keeps_the_heap(runs, tmp_path, monkeypatch):
    """eval, predict, ensembles and probe keep the memory a batch frees for the next one, as training does
    (cnnlab/heap.py): `cnnlab eval` ran 1.3-1.65x as fast with it."""
    from cnnlab import heap
    from cnnlab.evaluate.ensemble import run_ensemble
    from cnnlab.evaluate.predict import predict_files
    from cnnlab.transfer.probe import load_probe_source

    run, second = runs["members"][:2]
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(image)
    calls = {"run_eval": lambda: run_eval(run, out=tmp_path / "eval", device="cpu"),
             "predict_files": lambda: predict_files(run, [image], device="cpu"),
             "run_ensemble": lambda: run_ensemble([run, second], out=tmp_path / "ensemble.json", device="cpu"),
             "load_probe_source": lambda: load_probe_source(str(run), device="cpu")}
    for name, call in calls.items():
        kept = []
        monkeypatch.setattr(heap, "keep_freed_memory", lambda: kept.append(True) or "kept")
        call()
        assert kept, name


def test_negative_counts_are_refused_not_sliced(runs, tmp_path):
    """mistakes=-1 used to run and report all mistakes but the last ([:count]); batch_size=0 and samples=0 failed
    inside torch or range()."""
    from cnnlab.evaluate.evaluate import most_confident_mistakes
    from cnnlab.evaluate.ensemble import run_ensemble
    from cnnlab.evaluate.export import export_model
    from cnnlab.evaluate.predict import predict_files

    run, second = runs["members"][:2]
    probs = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6]])  # (N=3, K=2): images 0 and 1 wrong
    labels = torch.tensor([0, 1, 1])
    assert [m["index"] for m in most_confident_mistakes(probs, labels, 2)] == [0, 1]
    assert most_confident_mistakes(probs, labels, 0) == []
    for count in (-1, 1.5, True):
        with pytest.raises(CnnlabError, match="count=.* must be a whole number of at least 0"):
            most_confident_mistakes(probs, labels, count)
    with pytest.raises(CnnlabError, match="mistakes=-1 must be a whole number of at least 0"):
        run_eval(run, mistakes=-1, out=tmp_path / "eval")
    assert not (tmp_path / "eval").exists()
    assert run_eval(run, mistakes=0, out=tmp_path / "none")["mistakes"] == []
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(image)
    calls = [lambda: run_eval(run, batch_size=0, out=tmp_path / "eval"),
             lambda: predict_files(run, [image], batch_size=0),
             lambda: run_ensemble([run, second], batch_size=-1)]
    for call in calls:
        with pytest.raises(CnnlabError, match="batch_size=-?[0-9]+ must be a whole number of at least 1"):
            call()
    for samples in (0, -1):
        with pytest.raises(CnnlabError, match=f"samples={samples} must be a whole number of at least 1"):
            export_model(run, "torchscript", out=tmp_path / "model.pt", samples=samples)
    assert not (tmp_path / "model.pt").exists()


def test_shift_and_topk_must_be_whole_numbers_in_the_library_too(runs, tmp_path):
    """shift=2.5 and shift="2" failed inside torch or at a comparison, shift=True ran as a 1-pixel shift, and
    topk=2.5 or True failed inside torch's topk: each is refused with the name of the argument."""
    from cnnlab.evaluate.ensemble import run_ensemble
    from cnnlab.evaluate.predict import predict_files

    run, second = runs["members"][:2]
    for shift in (2.5, "2", True):
        with pytest.raises(CnnlabError, match="shift=.* must be a whole number of at least 0"):
            run_eval(run, tta="5crop", shift=shift, out=tmp_path / "eval")
        with pytest.raises(CnnlabError, match="shift=.* must be a whole number of at least 0"):
            run_ensemble([run, second], tta="5crop", shift=shift)
    assert not (tmp_path / "eval").exists()
    assert run_eval(run, tta="5crop", shift=np.int64(1), out=tmp_path / "numpy")["shift"] == 1  # numpy ints count
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(image)
    for topk in (2.5, True, 0):
        with pytest.raises(CnnlabError, match="topk=.* must be a whole number of at least 1"):
            predict_files(run, [image], topk=topk)
    assert len(predict_files(run, [image], topk=np.int64(2))["predictions"][0]["top"]) == 2


def test_export_tolerance_and_seed_are_checked_before_any_work(runs, tmp_path):
    """A negative or NaN tolerance made every export fail its parity check ("report the model"); a text tolerance
    or a float seed failed inside torch."""
    from cnnlab.evaluate.export import export_model

    run = runs["members"][0]
    for tolerance in (-1.0, float("nan"), "1e-4", None):
        with pytest.raises(CnnlabError, match="tolerance=.* must be a number of at least 0"):
            export_model(run, "torchscript", out=tmp_path / "model.pt", tolerance=tolerance)
    for seed in (1.5, None, True):
        with pytest.raises(CnnlabError, match="seed=.* must be a whole number"):
            export_model(run, "torchscript", out=tmp_path / "model.pt", seed=seed)
    assert not (tmp_path / "model.pt").exists()
    assert export_model(run, "torchscript", out=tmp_path / "model.pt", tolerance=0.01, seed=np.int64(3))["tolerance"] == 0.01


def test_scales_must_be_a_list_of_scales_in_the_library_too(runs, tmp_path):
    """A string was read a character at a time (a TypeError deep in the resize); a negative scale ran."""
    from cnnlab.evaluate.ensemble import run_ensemble

    run, second = runs["members"][:2]
    for scales, message in [("0.9", "must be a non-empty list of numbers"), ([], "must be a non-empty list"),
                            ([-1.0], "between 0.25 and 4"), ([0.9, 9], "between 0.25 and 4, got 9"),
                            ([0.9, "1.1"], "between 0.25 and 4")]:
        with pytest.raises(CnnlabError, match=message):
            run_eval(run, tta="multiscale", scales=scales, out=tmp_path / "eval")
        with pytest.raises(CnnlabError, match=message):
            run_ensemble([run, second], tta="multiscale", scales=scales)
    assert not (tmp_path / "eval").exists()
    assert run_eval(run, tta="multiscale", scales=[1.0], out=tmp_path / "one")["views"] == 10  # a list is taken


def test_ensemble_refuses_one_path_instead_of_a_list(runs):
    """run_ensemble("runs/a") used to take each character for a member ('/' first)."""
    from cnnlab.evaluate.ensemble import run_ensemble

    for one in (str(runs["cyclic"]), runs["cyclic"]):
        with pytest.raises(CnnlabError, match="takes a list of 2 or more run folders or checkpoint files.*"
                                              "snapshot_paths"):
            run_ensemble(one)


@pytest.mark.parametrize("not_a_path", [5, None, 3.5])
def test_a_checkpoint_that_is_not_a_path_is_named_as_such(not_a_path, tmp_path):
    """run_eval(5), predict_files(None, ...) and export_model(3.5, ...) used to end in pathlib's "expected str,
    bytes or os.PathLike object"; run_ensemble(5) in "'int' object is not iterable"."""
    from cnnlab.evaluate.export import export_model
    from cnnlab.evaluate.predict import predict_files

    named = rf"A checkpoint is named by its path \(a str or Path\) or its run folder's, got {type(not_a_path).__name__}"
    image = tmp_path / "a.png"
    Image.new("L", (8, 8)).save(image)
    for call in (lambda: run_eval(not_a_path, out=tmp_path / "eval"), lambda: predict_files(not_a_path, image),
                 lambda: export_model(not_a_path, "onnx", out=tmp_path / "m.onnx"),
                 lambda: run_ensemble([not_a_path, not_a_path])):
        with pytest.raises(CnnlabError, match=named):
            call()
    with pytest.raises(CnnlabError, match=f"takes a list of 2 or more run folders or checkpoint files, got "
                                          f"{type(not_a_path).__name__}"):
        run_ensemble(not_a_path)


def test_the_eval_summary_line_names_both_accuracies_alike(runs, cli, tmp_path):
    code, out, err = cli(["eval", str(runs["members"][0]), "--out", str(tmp_path / "eval")])
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # 4 classes: a top-4 (or top-5) accuracy would be 100% whatever the model, so the line has none
    assert f"top-1 {report['top1']:.2%}, loss {report['loss']:.4f}" in out
    assert "top-4" not in out and "top-5" not in out
    assert [key for key in report if key.startswith("top")] == ["top1"]


def test_top5_is_left_out_where_five_guesses_cover_every_class():
    generator = torch.Generator().manual_seed(3)
    for classes in (2, 4, 5):
        probs = torch.softmax(torch.randn(50, classes, generator=generator), dim=1)
        labels = torch.randint(0, classes, (50,), generator=generator)
        report = classification_report(probs, labels, [str(i) for i in range(classes)])
        assert [key for key in report if key.startswith("top")] == ["top1"], classes
    # 6 classes: the true class can fall outside the 5 guesses, so top-5 says something and is reported
    probs = torch.softmax(torch.randn(50, 6, generator=generator), dim=1)
    labels = probs.argmin(dim=1)  # the least probable class: never among the 5 guesses
    assert classification_report(probs, labels, [str(i) for i in range(6)])["top5"] == 0.0


def test_the_eval_summary_line_names_the_checkpoint_a_run_without_best_falls_back_to(runs, cli, tmp_path):
    run = tmp_path / "no-best"
    shutil.copytree(runs["members"][0], run, ignore=shutil.ignore_patterns("eval-*"))
    (run / "best.safetensors").unlink()  # a run interrupted, or a best checkpoint deleted to save space
    code, out, err = cli(["eval", str(run), "--out", str(tmp_path / "eval")])
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"lenet5 from {run / 'last.safetensors'} (raw weights) on ")
    code, out, err = cli(["eval", str(runs["members"][0]), "--out", str(tmp_path / "eval-best")])
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"lenet5 from {runs['members'][0] / 'best.safetensors'} (raw weights) on ")


def test_eval_and_ensemble_take_the_device_the_library_takes(runs, cli, tmp_path, monkeypatch):
    members = [str(path) for path in runs["members"][:2]]
    for args in (["eval", members[0], "--out", str(tmp_path / "e")], ["ensemble", *members]):
        code, _, err = cli([*args, "--device", "gpu"])
        assert code == 2 and "--device='gpu' is not a device cnnlab runs on" in err, err  # the option typed
    import cnnlab.evaluate.evaluate as evaluate_module  # run_ensemble imports predict_probabilities from it per call

    seen = []
    original = evaluate_module.predict_probabilities

    def recording(model, loader, **kwargs):
        seen.append(next(model.parameters()).device.type)
        return original(model, loader, **kwargs)

    monkeypatch.setattr(evaluate_module, "predict_probabilities", recording)
    code, out, err = cli(["eval", members[0], "--out", str(tmp_path / "e"), "--device", "cpu", "--json"])
    assert code == 0, err
    assert json.loads(out)["top1"] == run_eval(members[0], out=tmp_path / "default")["top1"]
    code, _, err = cli(["ensemble", *members, "--device", "auto"])
    assert code == 0, err
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert seen == ["cpu", "cpu", expected, expected], seen  # eval --device cpu, run_eval's default, 2 members


def test_eval_refuses_to_write_into_another_run_s_eval_folder(runs, cli, tmp_path):
    # `cnnlab runs` read seed1's eval-test-none as seed1's test accuracy while it measured seed0's weights
    from cnnlab.report.runs import read_run

    root = tmp_path / "runs"
    for name in ("seed0", "seed1"):
        shutil.copytree(runs["members"][int(name[-1])], root / name, ignore=shutil.ignore_patterns("eval-*"))
    code, _, err = cli(["eval", str(root / "seed0"), "--out", str(root / "seed1" / "eval-test-none")])
    assert code == 2 and "is an eval folder of the run" in err and "seed0" in err, err
    assert not (root / "seed1" / "eval-test-none").exists()
    assert read_run(root / "seed1", diagnose=False).test_acc is None
    # its own run's eval folders, and folders of other names, stay open to --out
    code, _, err = cli(["eval", str(root / "seed0" / "last.safetensors"), "--out", str(root / "seed0" / "eval-val-x")])
    assert code == 0, err
    code, _, err = cli(["eval", str(root / "seed0"), "--out", str(root / "seed1" / "seed0-eval")])
    assert code == 0, err
