"""Fine-tuning in the engine: model.init_from, model.freeze, train.bn_eval, per-stage rates, train.probe_epochs.

A small source run (resnet8, BatchNorm, three stages) is trained once; each test starts target runs from it.
"""

import csv
import json

import pytest
import torch

from cnnlab.config import RunConfig, apply_overrides, load_config
from cnnlab.errors import CnnlabError
from cnnlab.models.stages import model_stages, stage_of_parameters
from cnnlab.run import RunFolder
from cnnlab.train import engine, finetune
from cnnlab.train.checkpoint import load_weights
from cnnlab.train.logging import read_metrics, read_steps
from cnnlab.train.schedule import lr_factor

SOURCE = [
    "model.name=resnet8", "data.spec=synthetic:classes=4,train=128,val=32,test=32", "data.image_size=16",
    "train.batch_size=32", "train.epochs=1", "optim.lr=0.05", "train.deterministic=true", "log.quiet=true",
    "aug.preset=none",
]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("source") / "run"
    engine.train(apply_overrides(RunConfig(), SOURCE), run_dir)
    return run_dir


def target_config(source, *extra):
    """Three classes of other synthetic images, starting from the source run: a transfer target."""
    return apply_overrides(RunConfig(), [
        "model.name=resnet8", "data.spec=synthetic:classes=3,train=96,val=32,test=32", "data.seed=5",
        "train.batch_size=32", "train.epochs=3", "optim.lr=0.05", "train.deterministic=true", "log.quiet=true",
        "aug.preset=none", f"model.init_from={source}", *extra])


def _parameters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _bn_buffers(model, stage_names=None) -> dict[str, torch.Tensor]:
    """Running statistics of the BatchNorm layers (in the given stages), by name."""
    stages = {stage.name: stage.modules for stage in model_stages(model)}
    prefixes = [m for name in (stage_names or stages) for m in stages[name]]
    return {name: b.detach().clone() for name, b in model.named_buffers()
            if "running" in name and any(name.startswith(prefix + ".") for prefix in prefixes)}


def _one_step(run):
    x, y = next(iter(run.train_loader))
    run.train_mode(0)
    engine.train_step(run.model, x, y, run.optimizer, run.scaler, run.step_settings)


def test_a_run_starts_from_the_source_weights_and_records_what_it_loaded(source, tmp_path):
    config = target_config(source)
    run = engine.setup_run(config, loaders=False)
    saved, meta = load_weights(RunFolder(source).checkpoint())
    fresh = set(run.init_report.skipped)
    assert fresh == {"fc.weight", "fc.bias"}  # 4 -> 3 classes: the classifier starts fresh
    for name, tensor in run.model.state_dict().items():
        if name not in fresh:
            assert torch.equal(tensor, saved[name]), name
    # Preprocessing follows the weights: the source run's mean/std, written into the recorded config.
    assert run.normalization.name == "source"
    assert run.stats.mean == pytest.approx(meta["mean"]) and run.stats.std == pytest.approx(meta["std"])
    assert run.config.data.mean == pytest.approx(meta["mean"]) and run.config.data.image_size == 16

    engine.train(target_config(source, "train.epochs=1"), tmp_path / "run")
    record = json.loads(RunFolder(tmp_path / "run").init.read_text())
    assert record["skipped"] == sorted(fresh) or set(record["skipped"]) == fresh
    assert len(record["loaded"]) == len(saved) - len(fresh)
    # The recorded config repeats the run without reading the source's preprocessing again.
    repeated = load_config(RunFolder(tmp_path / "run").config)
    assert repeated.data.mean == run.config.data.mean and repeated.model.init_from == str(source)


def test_frozen_stages_do_not_change_and_have_no_optimiser_state(source):
    run = engine.setup_run(target_config(source, "model.freeze=stage2"))
    stage_of = stage_of_parameters(run.model)
    assert run.plan.frozen == ["stem", "stage1", "stage2"]
    before = _parameters(run.model)
    _one_step(run)
    in_optimizer = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    for name, param in run.model.named_parameters():
        frozen = stage_of[name] in run.plan.frozen
        assert torch.equal(param, before[name]) == frozen, name
        assert (param.grad is None) == frozen, name
        assert (id(param) in in_optimizer) != frozen, name
        assert (param in run.optimizer.state) != frozen, name


def test_bn_eval_keeps_running_statistics(source):
    run = engine.setup_run(target_config(source, "train.bn_eval=all"))
    before = _bn_buffers(run.model)
    _one_step(run)
    assert before and all(torch.equal(b, _bn_buffers(run.model)[name]) for name, b in before.items())

    # 'frozen': only the frozen stages' BatchNorm layers keep theirs; the trained stages' move.
    run = engine.setup_run(target_config(source, "train.bn_eval=frozen", "model.freeze=stage1"))
    frozen, trained = _bn_buffers(run.model, ["stem", "stage1"]), _bn_buffers(run.model, ["stage3"])
    _one_step(run)
    after = _bn_buffers(run.model)
    assert all(torch.equal(b, after[name]) for name, b in frozen.items())
    assert any(not torch.equal(b, after[name]) for name, b in trained.items())


def test_group_rates_are_what_the_config_asks(source):
    run = engine.setup_run(target_config(source, "optim.backbone_lr_mult=0.1", "optim.layer_decay=0.5"),
                           loaders=False)
    stages = [stage.name for stage in model_stages(run.model)]  # stem, stage1..3, head
    depth = {name: len(stages) - 1 - index for index, name in enumerate(stages)}  # head 0, stem 4
    stage_of = stage_of_parameters(run.model)
    rate = {id(p): group["peak_lr"] for group in run.optimizer.param_groups for p in group["params"]}
    for name, param in run.model.named_parameters():
        d = depth[stage_of[name]]
        expected = 0.05 * 0.5 ** d * (0.1 if d > 0 else 1.0)
        assert rate[id(param)] == pytest.approx(expected, rel=1e-12), name
    with pytest.raises(CnnlabError, match="backbone_lr_mult.*model.init_from is not set"):
        apply_overrides(RunConfig(), ["optim.backbone_lr_mult=0.1"])


def test_every_group_starts_at_its_own_peak_rate(source):
    """The optimiser's groups took the constructor's one rate until the engine set each before a step: cnnlab
    check's overfit run (and a loop of one's own over train_step) stepped Muon's weights at 0.1, not muon_lr, and
    every stage at optim.lr whatever layer_decay or backbone_lr_mult asked."""
    for extra in (["optim.backbone_lr_mult=0.1", "optim.layer_decay=0.5"], ["optim.name=muon"]):
        run = engine.setup_run(target_config(source, *extra), loaders=False)
        groups = run.optimizer.param_groups
        assert len({group["peak_lr"] for group in groups}) > 1, extra  # several rates to tell apart
        assert all(group["lr"] == group["peak_lr"] for group in groups), extra


@pytest.mark.parametrize("decay", ["5e-4", "0"])
@pytest.mark.parametrize("name", ["sgd", "muon"])
def test_the_recorded_lr_is_the_classifiers_whatever_the_groups_order(source, tmp_path, name, decay):
    """With backbone_lr_mult above 1 the pretrained groups come first (fastest first): lr read the first group, the
    classifier's rate for Muon with weight decay and the pretrained biases' (twice it) without. lr is the rate at
    optim.lr, whatever the groups' order (a constant schedule: the peak itself)."""
    out = tmp_path / "run"
    engine.train(target_config(source, f"optim.name={name}", "optim.backbone_lr_mult=2", "schedule.name=constant",
                               f"optim.weight_decay={decay}", "train.epochs=1"), out)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    steps = list(csv.DictReader((out / "steps.csv").open()))
    assert float(rows[-1]["lr"]) == pytest.approx(0.05) and {float(row["lr"]) for row in steps} == {0.05}


@pytest.fixture(scope="module")
def lenet_source(tmp_path_factory):
    """A lenet5 run: its head holds two hidden fully connected layers before the classifier."""
    run_dir = tmp_path_factory.mktemp("lenet") / "run"
    engine.train(apply_overrides(RunConfig(), [
        "model.name=lenet5", "data.spec=synthetic:classes=4,train=32,val=8,test=8", "data.image_size=28",
        "train.batch_size=16", "train.epochs=1", "log.quiet=true", "aug.preset=none"]), run_dir)
    return run_dir


def lenet_target(source, *extra):
    return apply_overrides(RunConfig(), [
        "model.name=lenet5", "data.spec=synthetic:classes=3,train=32,val=8,test=8", "data.seed=5",
        "train.batch_size=16", "train.epochs=1", "optim.lr=0.05", "log.quiet=true", "aug.preset=none",
        f"model.init_from={source}", "optim.backbone_lr_mult=0.1", *extra])


def train_at_the_earlier_head_rates(monkeypatch, config, run_dir):
    """Train ``config`` as cnnlab did before the head's pretrained layers trained at the pretrained rate."""
    original = finetune.parameter_lr_scales
    monkeypatch.setattr(finetune, "parameter_lr_scales",
                        lambda model, plan, config, **_: original(model, plan, config, pretrained_head=False))
    engine.train(config, run_dir)
    monkeypatch.undo()


def test_a_run_started_at_the_earlier_head_rates_is_refused_on_resume_naming_the_change(lenet_source, tmp_path,
                                                                                         monkeypatch):
    old = tmp_path / "old"
    train_at_the_earlier_head_rates(monkeypatch, lenet_target(lenet_source), old)
    assert finetune.checkpoint_predates_head_rates(RunFolder(old).last)
    with pytest.raises(CnnlabError) as error:
        engine.train(load_config(old / "config.yaml"), old, resume=True)
    message = str(error.value)
    assert "earlier cnnlab" in message and "head's pretrained layers" in message and "no_decay_norm_bias" not in message
    assert "Start the run again" in message and "version that started it" in message

    # A run of this version resumes, and its checkpoint is not taken for an earlier one's.
    new = tmp_path / "new"
    engine.train(lenet_target(lenet_source), new)
    assert not finetune.checkpoint_predates_head_rates(RunFolder(new).last)
    engine.train(load_config(new / "config.yaml"), new, resume=True)
    # At backbone_lr_mult=1 both versions build the same groups: nothing to tell apart.
    run = engine.setup_run(lenet_target(lenet_source, "optim.backbone_lr_mult=1"), loaders=False)
    assert finetune.groups_before_head_rates(run.model, run.plan, run.config) is None


def test_pretrained_layers_inside_the_head_train_at_the_pretrained_rate(tmp_path):
    # lenet5's head holds two hidden fully connected layers before its classifier: model.init_from loads
    # them, so backbone_lr_mult slows them like the stages below; only the classifier trains at optim.lr.
    source = tmp_path / "lenet"
    engine.train(apply_overrides(RunConfig(), [
        "model.name=lenet5", "data.spec=synthetic:classes=4,train=32,val=8,test=8", "data.image_size=28",
        "train.batch_size=16", "train.epochs=1", "log.quiet=true", "aug.preset=none"]), source)
    config = apply_overrides(RunConfig(), [
        "model.name=lenet5", "data.spec=synthetic:classes=3,train=24,val=8,test=8", "data.seed=5",
        "optim.lr=0.05", "log.quiet=true", f"model.init_from={source}", "optim.backbone_lr_mult=0.1"])
    run = engine.setup_run(config, loaders=False)
    loaded = set(run.init_report.loaded) | set(run.init_report.adapted)
    stage_of = stage_of_parameters(run.model)
    assert any(stage_of[name] == "head" and name in loaded for name, _ in run.model.named_parameters())
    rate = {id(p): group["peak_lr"] for group in run.optimizer.param_groups for p in group["params"]}
    for name, param in run.model.named_parameters():
        expected = 0.05 * 0.1 if name in loaded else 0.05  # the fresh classifier alone at optim.lr
        assert rate[id(param)] == pytest.approx(expected, rel=1e-12), name


def test_probe_epochs_train_the_head_first_then_unfreeze_at_the_epoch_boundary(source, tmp_path, monkeypatch, capsys):
    config = target_config(source, "train.probe_epochs=1", "train.bn_eval=frozen", "schedule.warmup_epochs=0.5",
                           "schedule.warmup_start=0.1")
    # (requires_grad of a backbone weight, of the classifier, whether the backbone's BatchNorm updates its
    # statistics) at every step: bn_eval=frozen holds the backbone's BatchNorm in eval mode while it is held back
    seen = []
    original = engine.train_step

    factors = []  # every group's rate over its peak rate at every step

    def recording(model, x, y, optimizer, *args, **kwargs):
        stem = model.get_submodule("features.stem")
        seen.append((stem.conv.weight.requires_grad, model.fc.weight.requires_grad, stem.norm.training))
        factors.append({group["lr"] / group["peak_lr"] for group in optimizer.param_groups})
        return original(model, x, y, optimizer, *args, **kwargs)

    monkeypatch.setattr(engine, "train_step", recording)
    capsys.readouterr()
    engine.train(config, tmp_path / "run")
    # one head-only epoch in words: not "the first 1 epoch train"
    assert "note: the first epoch trains only the head; then stem, stage1, stage2, stage3, head train" in (
        capsys.readouterr().err)
    steps_per_epoch = 96 // 32
    assert seen == [(False, True, False)] * steps_per_epoch + [(True, True, True)] * 2 * steps_per_epoch
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert rows[0]["lr"] == pytest.approx(0.05)  # the head-only epoch trains at the peak rate
    # ... then the schedule starts from its beginning (its warmup) over the 2 fine-tuning epochs, as a 2-epoch
    # run's would
    tuned = 2 * steps_per_epoch
    expected = [1.0] * steps_per_epoch + [lr_factor(config.schedule, k, tuned, steps_per_epoch) for k in range(tuned)]
    assert [len(f) for f in factors] == [1] * len(expected)  # every group at the same point of the schedule
    assert [f.pop() for f in factors] == pytest.approx(expected, rel=1e-12)
    assert expected[steps_per_epoch] != expected[steps_per_epoch + 1]  # the schedule moves: the comparison tells


@pytest.mark.parametrize("epochs, words", [(1, "the first epoch"), (2, "the first 2 epochs"),
                                           (38, "the first 38 epochs")])
def test_the_head_only_epochs_in_words(epochs, words):
    plan = finetune.FineTunePlan(stages=["stem", "stage1", "head"], frozen=[], probe_epochs=epochs, bn_eval="off",
                                 modules={})
    assert plan.head_first == words


def test_resume_across_the_switch_is_bit_identical(source, tmp_path, monkeypatch):
    extra = ("train.probe_epochs=1", "train.bn_eval=frozen", "optim.backbone_lr_mult=0.1", "train.ema=true")
    engine.train(target_config(source, *extra), tmp_path / "whole")

    # Stop for good in epoch 2, the first fine-tuning epoch: the checkpoint kept is the end of the head-only epoch.
    original = finetune.FineTunePlan.lr_factor

    def interrupting(self, schedule, step, total, per_epoch):
        if step == 4:
            raise KeyboardInterrupt
        return original(self, schedule, step, total, per_epoch)

    monkeypatch.setattr(finetune.FineTunePlan, "lr_factor", interrupting)
    stopped = engine.train(target_config(source, *extra), tmp_path / "split")
    assert stopped.last_checkpoint == {"epoch": 1, "batch": 0, "step": 3}
    monkeypatch.undo()
    # The resumed run does not read the source again: it may be gone.
    engine.train(load_config(tmp_path / "split" / "config.yaml"), tmp_path / "split", resume=True)

    timing = {"epoch_seconds", "images_per_second"}
    a, b = read_metrics(tmp_path / "whole" / "metrics.csv"), read_metrics(tmp_path / "split" / "metrics.csv")
    assert [{k: v for k, v in r.items() if k not in timing} for r in a] == \
        [{k: v for k, v in r.items() if k not in timing} for r in b]
    whole, _ = load_weights(tmp_path / "whole" / "last.safetensors")
    split, _ = load_weights(tmp_path / "split" / "last.safetensors")
    assert whole.keys() == split.keys() and all(torch.equal(whole[k], split[k]) for k in whole)


def test_bad_fine_tuning_settings_are_refused(source, tmp_path):
    with pytest.raises(CnnlabError, match=r"model.freeze 'stage7'.*backbone, stem, stage1, stage2, stage3"):
        engine.setup_run(target_config(source, "model.freeze=stage7"), loaders=False)
    with pytest.raises(CnnlabError, match="does not exist"):
        engine.train(target_config(tmp_path / "missing"), tmp_path / "run")
    assert not (tmp_path / "run" / "last.safetensors").exists()  # never a run from scratch instead
    with pytest.raises(CnnlabError, match="probe_epochs=3 must lie in 0..2"):
        target_config(source, "train.probe_epochs=3")


def test_a_ctrl_c_inside_the_head_only_phase_resumes_bit_identical(source, tmp_path, monkeypatch):
    """Ctrl-C (the engine's deferred stop) mid-epoch in the head-only phase: the checkpoint is taken at a
    step boundary inside the phase, and the resumed run crosses the switch as the whole one did."""
    extra = ("train.probe_epochs=1", "train.bn_eval=frozen", "optim.backbone_lr_mult=0.1")
    engine.train(target_config(source, *extra), tmp_path / "whole")

    stops = []
    original_install = engine.StopRequest.install

    def install(self):
        stops.append(self)
        original_install(self)

    original = finetune.FineTunePlan.lr_factor

    def press_ctrl_c(self, schedule, step, total, per_epoch):
        if step == 1:
            stops[-1].requested = True  # as the SIGINT handler would: stop after this step
        return original(self, schedule, step, total, per_epoch)

    monkeypatch.setattr(engine.StopRequest, "install", install)
    monkeypatch.setattr(finetune.FineTunePlan, "lr_factor", press_ctrl_c)
    stopped = engine.train(target_config(source, *extra), tmp_path / "split")
    assert stopped.checkpoint_saved and stopped.last_checkpoint == {"epoch": 0, "batch": 2, "step": 2}
    monkeypatch.undo()
    engine.train(load_config(tmp_path / "split" / "config.yaml"), tmp_path / "split", resume=True)
    whole, _ = load_weights(tmp_path / "whole" / "last.safetensors")
    split, _ = load_weights(tmp_path / "split" / "last.safetensors")
    assert all(torch.equal(whole[k], split[k]) for k in whole)


def test_the_recorded_config_keeps_the_sources_image_size_whatever_the_normalisation(source):
    """The target data is 32x32 on its own; the source's 16 must survive into the record (a resume reads
    only the record), also when the run normalises with its own data's statistics."""
    run = engine.setup_run(target_config(source, "data.normalize=dataset"), loaders=False)
    assert run.dataset.image_size == 16 and run.config.data.image_size == 16
    assert run.normalization.name == "dataset" and run.config.data.mean is None


def _notes(config) -> list[str]:
    run = engine.setup_run(config, loaders=False)
    return finetune.unused_fine_tune_settings(run.model, run.plan, run.config, run.optimizer)


def test_fine_tuning_settings_that_do_nothing_get_a_note(source, lenet_source):
    # train.bn_eval=frozen with nothing frozen; with a frozen stage (or a head-only phase) it acts
    (note,) = _notes(target_config(source, "train.bn_eval=frozen"))
    assert note.startswith("train.bn_eval=frozen does nothing in this run: no stage is frozen")
    assert _notes(target_config(source, "train.bn_eval=frozen", "model.freeze=stage1")) == []
    assert _notes(target_config(source, "train.bn_eval=frozen", "train.probe_epochs=1")) == []
    assert _notes(target_config(source, "train.bn_eval=all")) == []
    # on a model without BatchNorm (lenet5) neither mode has a running statistic to keep
    plain = apply_overrides(RunConfig(), ["model.name=lenet5", "data.spec=synthetic:classes=3,train=32,val=8,test=8",
                                          "train.bn_eval=all", "log.quiet=true"])
    (note,) = _notes(plain)
    assert note.startswith("train.bn_eval=all does nothing in this run: the model has no BatchNorm layer")

    # train.probe_epochs without weights to start from: the head learns from a random backbone
    scratch = apply_overrides(RunConfig(), [s for s in SOURCE if not s.startswith("train.epochs")] +
                              ["train.epochs=2", "train.probe_epochs=1"])
    (note,) = _notes(scratch)
    assert note.startswith("train.probe_epochs=1 trains only the head for the first epoch, but model.init_from is "
                           "not set")
    assert _notes(target_config(source, "train.probe_epochs=1")) == []

    # optim.backbone_lr_mult where every pretrained weight is frozen: resnet8's head is its classifier alone
    (note,) = _notes(target_config(source, "optim.backbone_lr_mult=0.1", "model.freeze=backbone"))
    assert note.startswith("optim.backbone_lr_mult=0.1 does nothing in this run") and "(fc)" in note
    assert _notes(target_config(source, "optim.backbone_lr_mult=0.1", "model.freeze=stage2")) == []
    # lenet5's head holds pretrained hidden layers, which still train at the multiplied rate
    assert _notes(lenet_target(lenet_source, "model.freeze=backbone")) == []


def test_a_setting_that_does_nothing_is_noted_once_when_the_run_starts(source, tmp_path, capsys):
    engine.train(target_config(source, "train.bn_eval=frozen", "train.epochs=2"), tmp_path / "run")
    err = capsys.readouterr().err
    assert err.count("note: train.bn_eval=frozen does nothing in this run") == 1, err


def test_a_layer_decay_that_changes_no_rate_gets_a_note(source, lenet_source):
    # model.freeze=backbone leaves resnet8's head alone to train: layer_decay ** 0 is every rate
    (note,) = _notes(target_config(source, "optim.layer_decay=0.5", "model.freeze=backbone"))
    assert note.startswith("optim.layer_decay=0.5 does nothing in this run") and "only the head trains" in note
    assert "model.freeze=backbone" in note
    # one stage below the head left to train: it trains at half the head's rate
    assert _notes(target_config(source, "optim.layer_decay=0.5", "model.freeze=stage2")) == []
    assert _notes(target_config(source, "optim.layer_decay=0.5")) == []
    # lenet5's head trains at two rates (its pretrained hidden layers at backbone_lr_mult, the classifier at
    # optim.lr), so the rates are not all equal, yet layer_decay changes none of them
    run = engine.setup_run(lenet_target(lenet_source, "model.freeze=backbone", "optim.layer_decay=0.5"), loaders=False)
    assert len({group["peak_lr"] for group in run.optimizer.param_groups}) == 2
    (note,) = finetune.unused_fine_tune_settings(run.model, run.plan, run.config, run.optimizer)
    assert note.startswith("optim.layer_decay=0.5 does nothing in this run")
    assert _notes(lenet_target(lenet_source, "optim.layer_decay=0.5")) == []


def test_lr_find_and_check_note_a_setting_that_does_nothing_once(source, capsys):
    from cnnlab.tune.check import run_checks
    from cnnlab.tune.lr_find import lr_sweep

    config = target_config(source, "train.bn_eval=frozen", "optim.layer_decay=0.5", "model.freeze=backbone")
    lr_sweep(config, num_steps=12)
    err = capsys.readouterr().err
    assert err.count("note: optim.layer_decay=0.5 does nothing in this run") == 1, err
    config = target_config(source, "train.bn_eval=frozen")
    run_checks(config, batches=1, samples=8, steps=2)  # it sets up the run twice: the second says nothing
    err = capsys.readouterr().err
    assert err.count("note: train.bn_eval=frozen does nothing in this run") == 1, err


def test_the_recorded_lr_is_the_classifiers_rate_and_the_others_follow_from_the_config(source, tmp_path):
    """docs/training.md, "Which rate lr is": metrics.csv's lr is the first group's rate, that group holds the
    classifier's weight at optim.lr, and every other group's rate is lr times its factor from the config."""
    config = target_config(source, "optim.layer_decay=0.5", "optim.backbone_lr_mult=0.1", "optim.name=muon",
                           "optim.muon_lr=0.02", "train.epochs=1", "schedule.name=cosine")
    engine.train(config, tmp_path / "run")
    folder = RunFolder(tmp_path / "run")
    steps = read_steps(folder.steps)
    lr = steps[1]["lr"]  # part-way down the cosine: the schedule's factor is neither 1 nor 0
    assert 0 < lr < 0.05 and read_metrics(folder.metrics)[-1]["lr"] == steps[-1]["lr"]
    run = engine.setup_run(config, loaders=False)
    first = run.optimizer.param_groups[0]
    assert any(p is run.model.fc.weight for p in first["params"]) and first["peak_lr"] == 0.05
    factor = lr / 0.05  # the schedule's, shared by every group
    stage_of = stage_of_parameters(run.model)
    depth = {name: k for k, name in enumerate(reversed(run.plan.stages))}
    classifier = {"fc.weight", "fc.bias"}
    for name, param in run.model.named_parameters():
        (group,) = [g for g in run.optimizer.param_groups if any(p is param for p in g["params"])]
        expected = lr * 0.5 ** depth[stage_of[name]] * (1.0 if name in classifier else 0.1)
        if group["muon"]:
            expected *= 0.02 / 0.05
        assert group["peak_lr"] * factor == pytest.approx(expected, rel=1e-12), name

    # with a multiplier above 1 the first group is the pretrained layers' with the highest factor
    run = engine.setup_run(target_config(source, "optim.backbone_lr_mult=2"), loaders=False)
    assert run.optimizer.param_groups[0]["peak_lr"] == pytest.approx(0.05 * 2)
    assert not any(p is run.model.fc.weight for p in run.optimizer.param_groups[0]["params"])


def _stage_outputs_twice(model, plan, x) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Stage name -> its output on two forward passes of ``x`` in the mode the plan left the model in."""
    outputs: dict[str, list[torch.Tensor]] = {stage: [] for stage in plan.stages}
    last = {plan.modules[stage][-1]: stage for stage in plan.stages}  # a stage's output is its last module's
    handles = [model.get_submodule(name).register_forward_hook(
        lambda module, args, out, stage=stage: outputs[stage].append(out.detach().clone()))
        for name, stage in last.items()]
    try:
        with torch.no_grad():
            model(x)
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {stage: tuple(pair) for stage, pair in outputs.items()}


# Dropout after every stage, stochastic depth in every residual block and dropout before the classifier:
# each stage and the head has a layer that acts differently while training.
DROPPING = ["model.name=resnet8", "model.stage_drop_rate=0.5", "model.options={drop_path_rate: 0.5}",
            "model.drop_rate=0.5"]


@pytest.mark.parametrize("bn_eval", ["off", "frozen"])
def test_a_frozen_stage_runs_without_dropout_and_the_stages_that_train_still_drop(bn_eval):
    from cnnlab.models._base import eval_mode
    from cnnlab.run import build_model

    config = apply_overrides(RunConfig(), [*DROPPING, "model.freeze=stage1", "train.probe_epochs=1",
                                           f"train.bn_eval={bn_eval}"])
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=3, in_chans=3)
    plan = finetune.fine_tune_plan(model, config)
    x = torch.randn(8, 3, 16, 16)
    for epoch in (0, 1):  # the head-only phase, then fine-tuning with stem and stage1 frozen
        plan.apply(model, epoch)
        trains = plan.trainable(epoch)
        outputs = _stage_outputs_twice(model, plan, x)
        for stage, (first, second) in outputs.items():
            # A stage that does not train is a fixed feature extractor: the same input, the same features
            # (its input is the same too, since the stages below it do not train either).
            assert torch.equal(first, second) == (stage not in trains), (epoch, stage)
        # The frozen stages' BatchNorm layers follow train.bn_eval, not the freezing: with 'off' they keep
        # normalising with the batch's statistics.
        held_norms = [module for stage in plan.stages if stage not in trains for name in plan.modules[stage]
                      for module in model.get_submodule(name).modules()
                      if isinstance(module, torch.nn.BatchNorm2d)]
        assert held_norms and all(module.training == (bn_eval == "off") for module in held_norms)
        if bn_eval == "frozen":  # then a stage that does not train computes what torch's eval mode does
            with eval_mode(model):
                reference = _stage_outputs_twice(model, plan, x)
            for stage in plan.stages:
                if stage not in trains:
                    assert torch.allclose(outputs[stage][0], reference[stage][0], rtol=0, atol=1e-6), (epoch, stage)
        assert model.training  # the model itself trains (its own forward may ask, as googlenet's aux heads do)
