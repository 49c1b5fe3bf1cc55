"""Run configs: YAML and --set overrides, each bad key or value named with the allowed ones."""

import os

import pytest

from cnnlab.config import (AugConfig, RunConfig, apply_overrides, config_from_dict, config_to_dict, load_config,
                           model_spec_overrides, save_config, validate_config)
from cnnlab.errors import CnnlabError


def test_yaml_round_trip_repeats_the_config(tmp_path):
    config = apply_overrides(RunConfig(), [
        "optim.lr=0.05", "schedule.step_epochs=[5, 8]", "aug.crop_scale=[0.2, 1]",
        "model.options={drop_path_rate: 0.1}", "train.label_smoothing=null", "optim.name=adamw", "train.ema=true",
    ])
    assert config.optim.lr == 0.05 and config.schedule.step_epochs == [5, 8]
    assert config.aug.crop_scale == (0.2, 1.0) and config.model.options == {"drop_path_rate": 0.1}
    save_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == config and config_to_dict(again) == config_to_dict(config)


def test_partial_yaml_keeps_defaults(tmp_path):
    (tmp_path / "run.yaml").write_text("optim:\n  lr: 0.2\ntrain:\n  epochs: 3\n")
    config = load_config(tmp_path / "run.yaml")
    assert config.optim.lr == 0.2 and config.train.epochs == 3
    assert config.optim.momentum == RunConfig().optim.momentum


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=abc", "optim.lr must be float"),
        ("optim.nme=sgd", "section 'optim' has name, lr"),
        ("optimx.lr=1", "SECTION one of model, data, aug"),
        ("optim.name=adam", "choose one of sgd, adamw"),
        ("schedule.name=linear", "constant, step, cosine, cyclic, onecycle"),
        ("train.epochs=0", "train.epochs=0 must lie in 1..10000000"),
        ("train.epochs=2.5", "train.epochs must be int"),
        ("aug.crop_ratio=[1]", "needs 2 values"),
        ("aug.crop_ratio=1", "needs 2 values"),
        ("data.mean=0.5,half", "'half' is not a number. Give the numbers separated by commas, data.mean=0.5,0.5,0.5"),
        ("schedule.step_epochs=30,x", "schedule.step_epochs=30,60 on the command line, or as a YAML list [30, 60]"),
        ("train.ema_decay=1.5", "train.ema_decay=1.5 must lie in (0, 1)"),
        ("optim.betas=[0.9,2]", "optim.betas=[0.9, 2.0] must both lie in [0, 1)"),
        ("optim.betas=[1,0.999]", "optim.betas=[1.0, 0.999] must both lie in [0, 1)"),
        ("optim.eps=-1e-8", "optim.eps=-1e-08 must be positive"),
        ("optim.eps=0", "optim.eps=0.0 must be positive"),
        ("optim.muon_lr=1e39", "optim.muon_lr=1e.39 is above 1e.30, far beyond any value that trains"),
        ("optim.weight_decay=2e6", "optim.weight_decay=2e.06 is above 1e.06"),
        ("train.device=tpu", "auto, cpu, cuda"),
        # only the spelling is checked here (a config may be checked away from its GPU): anything after 'cuda' was
        ("train.device=cudafoo", "train.device='cudafoo' must be auto, cpu, cuda or cuda:N"),
        ("train.device=cuda:x", "train.device='cuda:x' must be auto, cpu, cuda or cuda:N"),
        ("train.device=cpu:1", "train.device='cpu:1' must be auto, cpu, cuda or cuda:N"),
        ("train.device=cuda:01", "train.device='cuda:01' must be auto, cpu, cuda or cuda:N"),  # torch refuses it
        ("train.snapshots=true", "schedule.name='cosine' has no cycles, so no snapshot would be saved"),
        ("lr=0.1", "SECTION.KEY"),
        ("optim.lr", "SECTION.KEY=VALUE"),
        ("data.classes=[0,1", "data.classes=[0,1': the value starts a list ([) that YAML cannot read"),
        ("aug.crop_ratio=[0.5, 1", "the value starts a list ([)"),
        ("data.classes={a: 1", "the value starts a mapping ({)"),
        ("optim.lr='0.1", "the value starts quoted text (')"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(CnnlabError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        apply_overrides(RunConfig(), [override])


@pytest.mark.parametrize("typed, as_yaml", [
    (["data.mean=0.5,0.4,0.3", "data.std=0.2, 0.25, 0.3"], ["data.mean=[0.5, 0.4, 0.3]", "data.std=[0.2, 0.25, 0.3]"]),
    (["data.mean=0.5", "data.std=0.25"], ["data.mean=[0.5]", "data.std=[0.25]"]),
    (["aug.crop_scale=0.2,1", "aug.crop=resized"], ["aug.crop_scale=[0.2, 1]", "aug.crop=resized"]),
    (["schedule.name=step", "schedule.step_epochs=3,6"], ["schedule.name=step", "schedule.step_epochs=[3, 6]"]),
    (["optim.betas=0.8,0.99"], ["optim.betas=[0.8, 0.99]"]),
])
def test_lists_of_numbers_take_comma_text_as_data_classes_does(typed, as_yaml):
    """--set data.mean=0.5,0.5,0.5 is the list YAML's [0.5, 0.5, 0.5] is, not a refused text."""
    assert apply_overrides(RunConfig(), typed) == apply_overrides(RunConfig(), as_yaml)


def test_snapshots_need_the_cyclic_schedule():
    for name in ("constant", "step", "cosine", "onecycle"):
        with pytest.raises(CnnlabError, match=f"schedule.name='{name}' has no cycles.*set schedule.name=cyclic"):
            apply_overrides(RunConfig(), [f"schedule.name={name}", "train.snapshots=true"])
    config = apply_overrides(RunConfig(), ["schedule.name=cyclic", "schedule.cycles=3", "train.snapshots=true"])
    assert config.train.snapshots and config.schedule.name == "cyclic"


def test_zero_epochs_is_named_alone_without_a_probe_range_that_cannot_hold():
    with pytest.raises(CnnlabError) as refused:
        apply_overrides(RunConfig(), ["train.epochs=0"])
    assert "train.epochs=0 must lie in 1.." in str(refused.value)
    assert "probe_epochs" not in str(refused.value)  # it once added "probe_epochs=0 must lie in 0..-1"
    # A negative count the same: the unset swa_epochs was named too, as 0.0 outside 0..train.epochs (-3)
    with pytest.raises(CnnlabError) as refused:
        apply_overrides(RunConfig(), ["train.epochs=-3"])
    assert str(refused.value) == "Bad config: train.epochs=-3 must lie in 1..10000000."
    with pytest.raises(CnnlabError, match=r"train.swa_epochs=-1.0 must lie in 0..train.epochs \(-3\)"):
        apply_overrides(RunConfig(), ["train.epochs=-3", "train.ema=true", "train.swa_epochs=-1"])


def test_bad_yaml_files(tmp_path):
    (tmp_path / "a.yaml").write_text("optim: [1, 2]\n")
    with pytest.raises(CnnlabError, match="must be a mapping"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("optim: {lr: 0.1\n")
    with pytest.raises(CnnlabError, match="It must be YAML"):
        load_config(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("trainer:\n  epochs: 3\n")
    with pytest.raises(CnnlabError, match="Unknown config section 'trainer'"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "key.yaml").write_text("lr: 0.1\n")  # a key without its section: named, as --set lr=0.1 names it
    with pytest.raises(CnnlabError, match=r"Unknown config section 'lr'.*Did you mean optim\.lr\? In a file a key "
                                          r"goes inside its section"):
        load_config(tmp_path / "key.yaml")
    with pytest.raises(CnnlabError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    os.mkfifo(tmp_path / "pipe.yaml")  # as the shell's <(...) gives: it was called a file that does not exist
    with pytest.raises(CnnlabError, match="is not a regular file .* Write the config to a file"):
        load_config(tmp_path / "pipe.yaml")
    (tmp_path / "twice.yaml").write_text("optim: {lr: 0.05}\ntrain: {epochs: 1}\noptim: {momentum: 0.5}\n")
    with pytest.raises(CnnlabError, match=r"the key 'optim' appears twice \(lines 1 and 3\)"):
        load_config(tmp_path / "twice.yaml")  # safe_load would keep momentum and drop lr 0.05 without a word
    (tmp_path / "nested.yaml").write_text("optim:\n  lr: 0.05\n  lr: 0.5\n")
    with pytest.raises(CnnlabError, match=r"the key 'lr' appears twice \(lines 2 and 3\)"):
        load_config(tmp_path / "nested.yaml")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CnnlabError, match="is a folder, not a file: name a YAML file"):
        load_config(tmp_path / "plain")
    (tmp_path / "d.yaml").write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(CnnlabError, match="YAML"):
        load_config(tmp_path / "d.yaml")  # the safe loader refuses to build Python objects


def test_text_values_stay_text_on_the_command_line(tmp_path):
    config = apply_overrides(RunConfig(), ["data.buckets=4:3,1:1", "model.name=resnet8", "data.spec=folder:/x/y"])
    assert config.data.buckets == "4:3,1:1" and config.data.spec == "folder:/x/y"
    assert apply_overrides(RunConfig(), ["data.buckets=null"]).data.buckets is None
    (tmp_path / "a.yaml").write_text("data:\n  buckets: 4:3\n")
    assert load_config(tmp_path / "a.yaml").data.buckets == "4:3"  # YAML 1.1 read 243 (base 60); 1.2 text


def test_removed_train_label_smoothing_is_read_as_aug_label_smoothing_with_a_notice(tmp_path, capsys):
    from dataclasses import fields

    from cnnlab.config import TrainConfig

    assert "label_smoothing" not in {f.name for f in fields(TrainConfig)}  # one knob: aug.label_smoothing
    assert apply_overrides(RunConfig(), ["train.label_smoothing=0.2"]).aug.label_smoothing == 0.2
    err = capsys.readouterr().err
    assert "train.label_smoothing is deprecated" in err and "write aug.label_smoothing instead" in err
    (tmp_path / "old.yaml").write_text("train:\n  label_smoothing: 0.05\n")
    assert load_config(tmp_path / "old.yaml").aug.label_smoothing == 0.05
    assert "aug.label_smoothing=0.05" in capsys.readouterr().err
    (tmp_path / "same.yaml").write_text("train:\n  label_smoothing: 0.1\naug:\n  label_smoothing: 0.1\n")
    assert load_config(tmp_path / "same.yaml").aug.label_smoothing == 0.1
    # The config.yaml of a run from before holds it as null ("not set"): nothing to carry over, nothing to say.
    (tmp_path / "run.yaml").write_text("aug:\n  label_smoothing: 0.1\ntrain:\n  label_smoothing: null\n")
    capsys.readouterr()
    assert load_config(tmp_path / "run.yaml").aug.label_smoothing == 0.1 and capsys.readouterr().err == ""


@pytest.mark.parametrize("order", ["aug first", "train first"])
def test_both_label_smoothing_keys_that_disagree_are_refused(tmp_path, order):
    sections = ["aug:\n  label_smoothing: 0.1\n", "train:\n  label_smoothing: 0.2\n"]
    (tmp_path / "both.yaml").write_text("".join(sections if order == "aug first" else sections[::-1]))
    message = r"both aug.label_smoothing=0.1 and train.label_smoothing=0.2\. .*Keep only aug.label_smoothing"
    with pytest.raises(CnnlabError, match=message):
        load_config(tmp_path / "both.yaml")
    sets = ["aug.label_smoothing=0.1", "train.label_smoothing=0.2"]
    with pytest.raises(CnnlabError, match=message):
        apply_overrides(RunConfig(), sets if order == "aug first" else sets[::-1])


@pytest.mark.parametrize("field, value, message", [
    ("step_gamma", -0.1, "schedule.step_gamma=-0.1 must lie in (0, 1]"),
    ("warmup_epochs", 20.0, "schedule.warmup_epochs=20.0 must be shorter than the run (train.epochs=10)"),
    ("cycles", 0, "schedule.cycles=0 must lie in 1..10000000"),
])
def test_a_config_and_a_schedule_alone_are_checked_by_the_same_rule(field, value, message):
    from dataclasses import replace

    from cnnlab.config import ScheduleConfig
    from cnnlab.train.schedule import validate_schedule

    with pytest.raises(CnnlabError) as from_config:
        apply_overrides(RunConfig(), [f"schedule.{field}={value}"])
    with pytest.raises(CnnlabError) as alone:
        validate_schedule(replace(ScheduleConfig(), **{field: value}), RunConfig().train.epochs)
    assert message in str(from_config.value) and message in str(alone.value)
    assert str(from_config.value).count(f"schedule.{field}=") == 1  # said once, not by two checks in other words


def test_a_removed_key_on_top_of_a_recorded_config_replaces_the_recorded_value():
    # A run's config.yaml records aug.label_smoothing; --set of the old key is one setting, not a clash.
    recorded = apply_overrides(RunConfig(), ["aug.label_smoothing=0.1"])
    again = apply_overrides(recorded, ["train.label_smoothing=0.2"])
    assert again.aug.label_smoothing == 0.2


# --- model specs (NAME,KEY=VALUE,...) and single entries of the model's open mappings


def test_a_model_spec_sets_model_keys_and_builder_options():
    from cnnlab.config import parse_model_spec

    model = parse_model_spec("resnet20,norm=gn:4,init=normal:0.01,bias_init=0.01,se=16,naive=true,dropout=vanilla")
    assert model.name == "resnet20"
    assert (model.norm, model.init, model.bias_init, model.dropout) == ("gn:4", "normal:0.01", 0.01, "vanilla")
    assert model.options == {"se": 16, "naive": True}  # typed by YAML, not left as text


def test_a_model_spec_is_what_the_same_set_texts_give():
    from cnnlab.config import model_spec_overrides

    by_spec = apply_overrides(RunConfig(), model_spec_overrides("googlenet,naive=true,hidden_drop_rate=0.5"))
    by_hand = apply_overrides(RunConfig(), ["model.name=googlenet", "model.options.naive=true",
                                            "model.hidden_drop_rate=0.5"])
    assert by_spec == by_hand


def test_a_model_spec_reads_keys_written_as_set_writes_them():
    """model.act=gelu in a spec is the key act, as the help's "a model.* key" invites writing it; it was
    passed to the builder as an option named 'model.act'."""
    from cnnlab.config import parse_model_spec

    assert parse_model_spec("resnet8,model.act=gelu,model.norm_options.eps=0.001,model.norm=bn,model.options.se=4") == \
        parse_model_spec("resnet8,act=gelu,norm_options.eps=0.001,norm=bn,se=4")
    with pytest.raises(CnnlabError, match="gives act twice"):
        parse_model_spec("resnet8,act=gelu,model.act=relu")


def test_set_reaches_one_entry_of_model_options_and_norm_options():
    config = apply_overrides(RunConfig(), ["model.options.depth=6", "model.options.width=64", "model.norm=bn",
                                           "model.norm_options.eps=0.001"])
    assert config.model.options == {"depth": 6, "width": 64}
    assert config.model.norm_options == {"eps": 0.001}


def test_a_model_spec_sets_one_norm_option_per_key():
    from cnnlab.config import model_spec_overrides, parse_model_spec

    model = parse_model_spec("resnet8,norm=bn,norm_options.eps=0.001,norm_options.momentum=null,se=4")
    assert model.norm_options == {"eps": 0.001, "momentum": None}
    assert model.options == {"se": 4}  # not read as a builder option named norm_options
    assert parse_model_spec("resnet8,options.se=4").options == {"se": 4}  # the config's dotted key, same option
    by_hand = apply_overrides(RunConfig(), ["model.name=resnet8", "model.norm=bn", "model.norm_options.eps=0.001"])
    assert apply_overrides(RunConfig(), model_spec_overrides("resnet8,norm=bn,norm_options.eps=0.001")) == by_hand


@pytest.mark.parametrize("spec, pattern", [
    (",se=16", "starts with a name"),
    ("resnet8,norm=bn,norm_options={eps:0.001}", r"'norm_options=\{eps:0.001\}'.*norm_options.KEY=VALUE, e.g. "
                                                 r"norm_options.eps=0.001"),
    ("resnet8,norm=bn,norm_options.=1", "norm_options.KEY=VALUE"),
    ("resnet8,norm=bn,norm_options.eps=abc", r"eps=\"abc\": eps must be a positive finite number"),
    ("resnet8,norm_options.eps=0.001", "model.norm_options.*needs model.norm"),
    ("resnet20,se", "Cannot read 'se'"),
    ("resnet20,=3", "Cannot read '=3'"),
    ("resnet20,dropout=sometimes", "choose one of inverted, vanilla"),
    ("resnet20,stage_drop_rate=-0.1", r"stage_drop_rate=-0.1 must lie in \[0, 1\)"),
    ("resnet20,name=lenet5", r"the model's name is what comes before the first comma \(resnet20\)"),
    ("resnet20,se=", r"'se=' in the model 'resnet20,se=' has no value: write se=VALUE, or se=null"),
    ("resnet20,norm= ", "has no value"),
    ("resnet20,se=16,se=4", r"gives se twice \(16 and 4\)"),
    ("resnet20,norm=bn, norm =gn:4", r"gives norm twice \(bn and gn:4\)"),
    ("resnet20,options=3", r"'options=3'.*its own KEY=VALUE \(resnet20,se=16"),
    ("resnet20,se=4,options.se=8", r"gives se twice \(4 and 8\)"),
    ("resnet20,norm=bogus", r"model.norm: Unknown normalisation 'bogus'"),
    ("resnet20,act=gelx", r"model.act: Unknown activation 'gelx'.*Did you mean gelu"),
])
def test_a_bad_model_spec_names_the_problem(spec, pattern):
    from cnnlab.config import parse_model_spec

    with pytest.raises(CnnlabError, match=pattern):
        parse_model_spec(spec)


def test_a_name_among_the_builder_options_is_refused():
    with pytest.raises(CnnlabError, match="model.options.name='x': the model's name is model.name"):
        validate_config(apply_overrides(RunConfig(), ["model.options.name=x"]))


def test_text_yaml_cannot_read_is_still_taken_as_typed_unless_it_opens_a_list():
    assert apply_overrides(RunConfig(), ["data.classes=@home,@work"]).data.classes == ["@home", "@work"]
    assert apply_overrides(RunConfig(), ["data.classes=[0, 1]"]).data.classes == [0, 1]


@pytest.mark.parametrize("value", ["3", "Bag", "[3]"])
def test_one_class_is_refused_as_too_few_however_it_is_written(value):
    # a number reads as a list of one, as text does, not as a value of the wrong type
    with pytest.raises(CnnlabError, match=r"data.classes=\[.*\] must list at least 2 classes"):
        apply_overrides(RunConfig(), [f"data.classes={value}"])


def test_notes_pass_through_once_as_they_are_written(capsys):
    import sys

    import cnnlab.config

    with cnnlab.config.quiet_notes():
        print("note: the same subset", file=sys.stderr)
        assert capsys.readouterr().err == "note: the same subset\n"  # at once, not at the end
        print("note: the same subset", file=sys.stderr)
        sys.stderr.write("warning: skipped 1 file")  # no newline yet: passed on at the end
    assert capsys.readouterr().err == "warning: skipped 1 file\n"


def test_notes_inside_nested_quiet_blocks_are_shown_once_and_a_later_block_starts_afresh(capsys):
    """An experiment's block holds its runs' own blocks: a line first written inside the inner one is shown (a
    second filter over the same lines dropped it), once. A later command in the process shows its notes again."""
    import sys

    import cnnlab.config

    with cnnlab.config.quiet_notes():
        print("note: outer", file=sys.stderr)
        with cnnlab.config.quiet_notes():
            print("note: inner", file=sys.stderr)
            print("note: outer", file=sys.stderr)
        print("note: inner", file=sys.stderr)
    assert capsys.readouterr().err == "note: outer\nnote: inner\n"
    with cnnlab.config.quiet_notes():
        print("note: inner", file=sys.stderr)
    assert capsys.readouterr().err == "note: inner\n"


def test_a_config_built_in_python_is_read_as_a_config_file_would_be(tmp_path):
    """Dataclass fields set in Python meet the checks YAML and --set values meet: a boolean bn_eval is
    mapped as YAML's true is (it was left as True, which the engine read as off), an unknown choice and a
    number written as text are refused by name, and a Path is taken as the text a file would give."""
    from cnnlab.config import DataConfig, ModelConfig, OptimConfig, TrainConfig

    config = RunConfig(train=TrainConfig(bn_eval=True, compile=False), model=ModelConfig(init_from=tmp_path / "w.pt"),
                       data=DataConfig(data_dir=tmp_path))
    validate_config(config)
    assert (config.train.bn_eval, config.train.compile) == ("all", "off")
    assert config.model.init_from == str(tmp_path / "w.pt") and config.data.data_dir == str(tmp_path)
    assert config == config_from_dict({"train": {"bn_eval": True, "compile": False},
                                       "model": {"init_from": str(tmp_path / "w.pt")}, "data": {"data_dir": str(tmp_path)}})
    for bad, pattern in ((dict(train=TrainConfig(precision="bf32")), r"train.precision='bf32' is not allowed: choose "
                                                                      "one of auto, fp32, bf16, fp16"),
                         (dict(train=TrainConfig(epochs="3")), "train.epochs must be int, got '3'"),
                         (dict(optim=OptimConfig(momentum=[0.9])), "optim.momentum must be float")):
        with pytest.raises(CnnlabError, match=pattern):
            validate_config(RunConfig(**bad))


def test_numpy_numbers_in_a_config_built_in_python_are_taken_as_numbers():
    import numpy as np

    from cnnlab.config import OptimConfig, TrainConfig

    config = RunConfig(train=TrainConfig(epochs=np.int64(4), batch_size=np.int32(16)), optim=OptimConfig(lr=np.float32(0.5)))
    validate_config(config)  # a sweep over np.arange / np.logspace hands these over
    assert (config.train.epochs, config.train.batch_size, config.optim.lr) == (4, 16, 0.5)
    assert (type(config.train.epochs), type(config.optim.lr)) == (int, float)  # written to YAML as plain numbers
    with pytest.raises(CnnlabError, match="train.epochs must be int, got np.float64"):
        validate_config(RunConfig(train=TrainConfig(epochs=np.float64(4.0))))
    # a bool drawn with numpy (rng.random() < 0.5) was refused as "must be bool, got np.True_"
    config = RunConfig(train=TrainConfig(ema=np.bool_(True), deterministic=np.random.default_rng(0).random() > 2))
    validate_config(config)
    assert (config.train.ema, config.train.deterministic) == (True, False)
    assert type(config.train.ema) is bool and type(config.train.deterministic) is bool
    with pytest.raises(CnnlabError, match="train.ema must be bool, got np.int64"):  # a number is not a bool
        validate_config(RunConfig(train=TrainConfig(ema=np.int64(1))))


def test_numpy_numbers_in_the_untyped_fields_are_taken_as_numbers(tmp_path):
    """model.options, model.norm_options and data.classes take any value: numpy numbers there were written to
    config.yaml as YAML cannot (RepresenterError, an internal error as the run started), and refused by the
    checks of a positive number (norm eps) and of a class index."""
    import numpy as np
    import torch

    from cnnlab.config import DataConfig, ModelConfig, config_to_dict, load_config, save_config

    config = RunConfig(model=ModelConfig(name="resnet8", norm="bn", options={"drop_path_rate": np.float64(0.1),
                                                                             "widths": (np.int64(8), 16)},
                                         norm_options={"eps": np.float32(0.5), "momentum": torch.tensor(0.25)}),
                       data=DataConfig(spec="digits", classes=list(np.arange(3))))
    validate_config(config)
    assert config.model.options == {"drop_path_rate": 0.1, "widths": (8, 16)}
    assert config.model.norm_options == {"eps": 0.5, "momentum": 0.25} and config.data.classes == [0, 1, 2]
    assert type(config.model.options["widths"][0]) is int and type(config.data.classes[0]) is int
    save_config(config, tmp_path / "config.yaml")  # plain YAML numbers
    assert config_to_dict(load_config(tmp_path / "config.yaml")) == config_to_dict(config)


def test_a_data_config_built_in_python_is_checked_by_load_source(tmp_path):
    from pathlib import Path

    from cnnlab.config import DataConfig
    from cnnlab.data import load_source

    with pytest.raises(CnnlabError, match="data.image_size must be int, got '28'"):
        load_source(DataConfig(spec="digits", image_size="28"))
    with pytest.raises(CnnlabError, match="takes a data spec .* or a DataConfig, not PosixPath"):
        load_source(Path("digits"))
    given = DataConfig(spec="synthetic:classes=3,train=30,val=3,test=3", data_dir=tmp_path)
    with pytest.raises(CnnlabError, match="is read only for fashion-mnist and the CIFAR sets"):  # not an AttributeError
        load_source(given)
    assert given.data_dir == tmp_path  # the caller's config is not changed


def test_set_model_name_over_a_config_names_the_file_whose_options_the_model_refuses(tmp_path, cli):
    """--set model.name=resnet8 over a VGG config keeps the file's model.options.cfg, which a ResNet does not
    take: the refusal names the file as the option's source and the two ways out, and both ways work."""
    from cnnlab.cli import _run_config

    config = tmp_path / "vgg.yaml"
    save_config(apply_overrides(RunConfig(), ["model.name=vgg11", "model.options.cfg=[[1, 8], [1, 16]]",
                                              "data.spec=synthetic:classes=3,train=32,val=16,test=16"]), config)
    out = tmp_path / "run"
    code, _, err = cli(["train", "--config", str(config), "--set", "model.name=resnet8", "--out", str(out)])
    assert code == 2
    message = " ".join(err.split())  # one paragraph, however the console wrapped it
    assert str(config) in message and "'cfg'" in message and "vgg11" in message
    assert "--set model.options={}" in message and "--model resnet8" in message
    assert not out.exists()  # refused before the run folder was made

    # the remedies the message names: the model is then built without the file's options
    assert _run_config(config, None, None, ["model.name=resnet8", "model.options={}"]).model.options == {}
    assert _run_config(config, "resnet8", None, []).model.options == {}
    # an option the new model does take is no reason to refuse: vgg13 takes cfg
    assert _run_config(config, None, None, ["model.name=vgg13"]).model.options == {"cfg": [[1, 8], [1, 16]]}


def test_numbers_in_exponent_form_are_numbers_in_every_value(tmp_path):
    """1e-3 has no dot, so YAML 1.1 would read it as text: in the untyped values (builder and norm options, class
    lists) a builder then met the text '1e-1'. Config files, --set and model specs read it as a number."""
    from cnnlab.config import parse_model_spec

    config = apply_overrides(RunConfig(), ["model.options.drop_path_rate=1e-1", "model.norm=bn",
                                           "model.norm_options.eps=1E-3", "optim.lr=5e-2"])
    assert config.model.options == {"drop_path_rate": 0.1} and config.model.norm_options == {"eps": 0.001}
    assert config.optim.lr == 0.05
    assert parse_model_spec("resnet8,drop_path_rate=2e-1").options == {"drop_path_rate": 0.2}
    (tmp_path / "c.yaml").write_text("model:\n  norm: bn\n  norm_options: {eps: 1e-5}\n  options:\n"
                                     "    drop_path_rate: 5e-2\n")
    loaded = load_config(tmp_path / "c.yaml")
    assert loaded.model.norm_options == {"eps": 1e-5} and loaded.model.options == {"drop_path_rate": 0.05}
    assert isinstance(loaded.model.options["drop_path_rate"], float)


def test_text_that_reads_as_a_number_is_quoted_in_config_yaml_and_stays_text(tmp_path):
    config = RunConfig()
    config.data.classes = ["1e3", "2E-1", "coat"]  # class names that a reader of 1e3 as a number would change
    config.model.options = {"tag": "5e-2", "rate": 5e-2}
    save_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again.data.classes == ["1e3", "2E-1", "coat"]
    assert again.model.options == {"tag": "5e-2", "rate": 0.05}


@pytest.mark.parametrize("override, suggestion", [
    ("optim.lrr=0.1", "Did you mean optim.lr?"),
    ("opt.lr=0.1", "Did you mean optim.lr?"),  # the section mistyped
    ("batch_size=64", "Did you mean train.batch_size?"),  # the section left out
    ("model.option.se=16", "Did you mean model.options.se?"),
    ("schedule.name=cosin", "Did you mean cosine?"),
    ("train.precision=FP32", "Did you mean fp32?"),
    # a right key with more after it: the suggestion once repeated the key as typed ("Did you mean optim.lr.x?")
    ("optim.lr.x=0.1", "optim.lr is one value, with no keys below it: set optim.lr=VALUE."),
    ("model.options.=3", "Name the entry after the dot: model.options.NAME=VALUE."),
])
def test_a_mistyped_key_or_choice_is_answered_with_the_closest_one(override, suggestion):
    with pytest.raises(CnnlabError) as error:
        apply_overrides(RunConfig(), [override])
    assert str(error.value).endswith(suggestion)


def test_a_mistyped_section_in_a_file_is_answered_with_the_closest_one_and_nothing_far_is_suggested():
    with pytest.raises(CnnlabError, match=r"Unknown config section 'modle'.*Did you mean model\?$"):
        config_from_dict({"modle": {"name": "resnet8"}})
    with pytest.raises(CnnlabError) as error:
        apply_overrides(RunConfig(), ["optim.zzzz=1"])
    assert "Did you mean" not in str(error.value)


@pytest.mark.parametrize("text, message", [
    ("optim:\n\tlr: 0.1\n", r"found character '\\t' that cannot start any token \(line 2, column 1\); YAML indents "
                            "with spaces, not tabs"),
    ("optim:\n  betas: [0.9, 0.99\n", r"expected ',' or '\]', but got '<stream end>' \(line 3, column 1\)"),
    ("optim:\n  lr: 0.1\n bad: 1\n", r"expected <block end>, but found .* \(line 3, column 2\)"),
])
def test_a_config_file_yaml_cannot_read_is_named_with_the_problem_and_its_line(tmp_path, text, message):
    """The first line of PyYAML's error is its context ('while scanning for the next token'), which names
    neither what is wrong nor where."""
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(CnnlabError, match=r"Cannot read the config file '.*c.yaml': " + message) as error:
        load_config(tmp_path / "c.yaml")
    assert "while " not in str(error.value)


def test_a_key_set_twice_to_different_values_takes_the_last_with_a_note(capsys):
    """--set used to keep the last value silently: it still holds (an appended --set changes one setting of a
    command line), and a note names both values. The same value twice needs no note."""
    config = apply_overrides(RunConfig(), ["optim.lr=0.1", "train.epochs=2", "optim.lr=0.2"])
    assert config.optim.lr == 0.2
    assert "--set gives optim.lr twice (optim.lr=0.1 and optim.lr=0.2): the last, 0.2, holds" in capsys.readouterr().err
    assert apply_overrides(RunConfig(), ["optim.lr=0.2", " optim.lr = 0.2"]).optim.lr == 0.2
    assert "twice" not in capsys.readouterr().err


@pytest.mark.parametrize("text", ["", "\n\n", "# optim:\n#   lr: 0.1\n"])
def test_an_empty_config_file_is_refused_rather_than_read_as_every_default(tmp_path, text):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(CnnlabError, match=r"The config file '.*c.yaml' is empty .* every default"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "nothing.yaml").write_text("{}\n")  # a mapping that sets nothing, written so on purpose
    assert load_config(tmp_path / "nothing.yaml") == RunConfig()


@pytest.mark.parametrize("override, key, value", [
    ("model.name='resnet8'", "name", "resnet8"),  # --set "model.name='resnet8'": the quotes are YAML's, not the name's
    ('data.spec="synthetic"', "spec", "synthetic"),
    ("data.buckets='4:3,1:1'", "buckets", "4:3,1:1"),
])
def test_quoted_text_on_the_command_line_loses_its_quotes_as_in_a_config_file(override, key, value):
    config = apply_overrides(RunConfig(), [override])
    section = override.partition(".")[0]
    assert getattr(getattr(config, section), key) == value


def test_null_for_a_key_that_needs_a_value_says_null_and_how_to_mend_it():
    with pytest.raises(CnnlabError, match=r"train.epochs must be int, got null .* leave the key out for its default"):
        apply_overrides(RunConfig(), ["train.epochs=null"])
    with pytest.raises(CnnlabError) as error:
        apply_overrides(RunConfig(), ["optim.name=null"])
    assert "got null" in str(error.value) and "4:3" not in str(error.value)  # not the hint about text values
    with pytest.raises(CnnlabError) as error:  # left empty: a slip, not null
        apply_overrides(RunConfig(), ["optim.name="])
    assert "gives no value" in str(error.value) and "4:3" not in str(error.value)


@pytest.mark.parametrize("word, compile_value, bn_eval_value", [
    ("yes", "on", "all"), ("on", "on", "all"), ("true", "on", "all"), ("Yes", "on", "all"),
    ("no", "off", "off"), ("off", "off", "off"), ("false", "off", "off"), ("NO", "off", "off"),
])
def test_a_boolean_word_means_the_same_in_a_config_file_and_in_set(tmp_path, word, compile_value, bn_eval_value):
    """A file's `compile: yes` is YAML's true (on); --set passes these choice fields' values on as text, and
    refused 'yes' that the file took."""
    (tmp_path / "c.yaml").write_text(f"train:\n  compile: {word}\n  bn_eval: {word}\n")
    from_file = load_config(tmp_path / "c.yaml").train
    from_set = apply_overrides(RunConfig(), [f"train.compile={word}", f"train.bn_eval={word}"]).train
    assert (from_file.compile, from_file.bn_eval) == (from_set.compile, from_set.bn_eval) == (compile_value, bn_eval_value)


def test_a_word_that_is_no_boolean_is_still_refused_by_a_choice_field_that_reads_booleans():
    with pytest.raises(CnnlabError, match=r"train.compile='yess' is not allowed: choose one of auto, on, off"):
        apply_overrides(RunConfig(), ["train.compile=yess"])


@pytest.mark.parametrize("sets", [
    ["model.options.se=16", "model.options={}"],
    ["model.options={}", "model.options.se=16"],
])
def test_a_mapping_and_one_of_its_entries_set_together_are_refused_whatever_their_order(sets):
    """model.options={} after model.options.se=16 dropped se without a word (and kept it in the other order):
    the repeated-key check compared whole keys only."""
    with pytest.raises(CnnlabError, match=r"Both model.options=\{\} and model.options.se=16 are given .* "
                                          r"\(--set \"model.options=\{se: 16\}\"\), or give only model.options.se\."):
        apply_overrides(RunConfig(), sets)
    # the value suggested keeps the mapping's other entries (it offered {b: 2} alone, dropping a)
    with pytest.raises(CnnlabError, match=r"\(--set \"model.options=\{a: 1, b: 2\}\"\)"):
        apply_overrides(RunConfig(), ["model.options={a: 1}", "model.options.b=2"])
    with pytest.raises(CnnlabError, match=r"\(--set \"model.options=\{a: \{b: 2, c: 3\}, d: x\}\"\)"):
        apply_overrides(RunConfig(), ["model.options.a.b=2", "model.options={a: {c: 3}, d: x}"])
    # Keys that only share a prefix of their name are not a mapping and its entry
    config = apply_overrides(RunConfig(), ["model.options.se=16", "model.options.se_ratio=4"])
    assert config.model.options == {"se": 16, "se_ratio": 4}


def test_a_setting_the_chosen_optimiser_or_schedule_does_not_read_gets_a_note(cli, tmp_path):
    """--set optim.betas with SGD or schedule.cycles with a cosine would do nothing without a word. Keys at their
    default say nothing, and a key the choice reads says nothing."""
    from cnnlab.config import unread_choice_settings

    config = apply_overrides(RunConfig(), ["optim.betas=[0.5,0.5]", "schedule.cycles=3", "optim.momentum=0.8"])
    notes = unread_choice_settings(config)
    assert notes == [
        "optim.betas=[0.5, 0.5] does nothing here: only optim.name=adamw reads it, and this run's is sgd.",
        "schedule.cycles=3 does nothing here: only schedule.name=cyclic reads it, and this run's is cosine."]
    assert unread_choice_settings(config, ("optim",)) == notes[:1]
    adamw = apply_overrides(RunConfig(), ["optim.name=adamw", "optim.betas=[0.5,0.5]", "optim.nesterov=false"])
    assert unread_choice_settings(adamw) == ["optim.nesterov=False does nothing here: only optim.name=sgd or muon "
                                             "reads it, and this run's is adamw."]
    assert unread_choice_settings(apply_overrides(RunConfig(), ["optim.betas=[0.9,0.999]"])) == []  # the default
    # one-cycle rises its own way: warmup_start is not read, where the no-warm-up note's advice is refused for it
    onecycle = apply_overrides(RunConfig(), ["schedule.name=onecycle", "schedule.warmup_start=0.5"])
    assert unread_choice_settings(onecycle) == ["schedule.warmup_start=0.5 does nothing here: only schedule.name="
                                                "constant or step or cosine or cyclic reads it, and this run's is "
                                                "onecycle."]
    from cnnlab.models import create_model
    from cnnlab.train.engine import unused_train_settings

    assert unused_train_settings(onecycle, create_model("lenet5", num_classes=10)) == []
    code, out, err = cli(["train", "--model", "lenet5", "--data", "synthetic:classes=2,train=16,val=8,test=8",
                          "--epochs", "1", "--batch-size", "8", "--quiet", "--set", "log.curves=false",
                          "--set", "schedule.cycles=3", "--out", str(tmp_path / "run")])
    assert code == 0 and err.count("note: schedule.cycles=3 does nothing here") == 1, err


def test_training_keys_the_run_never_reads_get_a_note(cli, tmp_path):
    """The EMA's decay without the EMA, aux_weight without auxiliary classifiers and a warm-up's start without a
    warm-up did nothing without a word. Each switched on where it belongs says nothing."""
    from cnnlab.models import create_model
    from cnnlab.train.engine import unused_train_settings

    sets = ["train.ema_decay=0.9", "train.ema_warmup=false", "train.aux_weight=0.9", "schedule.warmup_start=0.5"]
    config = apply_overrides(RunConfig(), sets)
    notes = unused_train_settings(config, create_model("lenet5", num_classes=10))
    assert [note.split(" does nothing here")[0] for note in notes] == [
        "train.ema_decay=0.9", "train.ema_warmup=False", "train.aux_weight=0.9", "schedule.warmup_start=0.5"]
    assert "lenet5 has none" in notes[2]
    # lr-find and check (schedule=False) keep no EMA and set the rate themselves: only aux_weight is theirs to say
    assert unused_train_settings(config, create_model("lenet5", num_classes=10), schedule=False) == notes[2:3]
    used = apply_overrides(RunConfig(), [*sets, "train.ema=true", "schedule.warmup_epochs=1", "model.name=googlenet"])
    assert unused_train_settings(used, create_model("googlenet", num_classes=10)) == []
    # vanilla dropout on a net with none, channels_last on one with no convolution: both changed nothing unsaid
    layout = apply_overrides(RunConfig(), ["model.name=mlp", "model.dropout=vanilla", "train.channels_last=true"])
    notes = unused_train_settings(layout, create_model("mlp", num_classes=10))
    assert [note.split(" does nothing here")[0] for note in notes] == ["model.dropout=vanilla",
                                                                      "train.channels_last=true"], notes
    with_dropout = unused_train_settings(layout, create_model("mlp", num_classes=10, hidden_drop_rate=0.5))
    assert [note.split(" does nothing here")[0] for note in with_dropout] == ["train.channels_last=true"]
    assert unused_train_settings(layout, create_model("lenet5", num_classes=10, drop_rate=0.5)) == []
    code, out, err = cli(["train", "--model", "lenet5", "--data", "synthetic:classes=2,train=16,val=8,test=8",
                          "--epochs", "1", "--batch-size", "8", "--quiet", "--set", "log.curves=false",
                          "--set", "train.ema_decay=0.9", "--out", str(tmp_path / "run")])
    assert code == 0 and err.count("note: train.ema_decay=0.9 does nothing here") == 1, err


def test_in_memory_false_is_said_to_be_unused_where_there_are_no_files(cli, tmp_path):
    """digits and synthetic come as arrays: data.in_memory=false changes nothing there, and the run says so."""
    args = ["train", "--model", "lenet5", "--data", "synthetic:classes=2,train=16,val=8,test=8", "--epochs", "1",
            "--batch-size", "8", "--quiet", "--set", "log.curves=false", "--set", "data.in_memory=false"]
    code, out, err = cli([*args, "--out", str(tmp_path / "run")])
    assert code == 0 and err.count("note: data.in_memory=false is not used: synthetic:") == 1, err
    # nor do loader workers, who read files: the batches are cut from the array in the process
    code, out, err = cli([*args, "--set", "train.num_workers=2", "--out", str(tmp_path / "workers")])
    assert code == 0 and err.count("note: train.num_workers=2 is not used: the training images are held in "
                                   "memory") == 1, err


@pytest.mark.parametrize("text, value", [("010", 10), ("09", 9), ("0x0A", 10), ("0o17", 15), ("-0b101", -5),
                                         ("1_000", 1000), ("+5", 5), ("2:30", "2:30"), ("'010'", "010"),
                                         # base 60 with a fraction was still read (2:30.0 as 150.0)
                                         ("2:30.0", "2:30.0"), ("-1:30.5", "-1:30.5"), ("1.5", 1.5), (".5", 0.5),
                                         ("-2.", -2.0), ("1_000.5", 1000.5), ("1.0e+3", 1000.0)])
def test_whole_numbers_read_as_yaml_1_2_reads_them(text, value):
    # PyYAML follows YAML 1.1: 010 was octal 8 (--set train.epochs=010 trained 8 epochs) and 2:30 was 150
    from cnnlab.config import dump_yaml, safe_load_unique

    read = safe_load_unique(f"a: {text}")["a"]
    assert read == value and type(read) is type(value)
    assert safe_load_unique(dump_yaml({"a": read})) == {"a": read}  # written back, it reads the same


def test_a_leading_zero_or_base_60_in_a_setting_is_not_another_number():
    assert apply_overrides(RunConfig(), ["train.epochs=010"]).train.epochs == 10
    with pytest.raises(CnnlabError, match=r"train.epochs must be int, got '2:30'"):
        apply_overrides(RunConfig(), ["train.epochs=2:30"])
    with pytest.raises(CnnlabError, match=r"train.minutes must be float, got '2:30.0'"):
        apply_overrides(RunConfig(), ["train.minutes=2:30.0"])
    # cnnlab's loader reads so on its own: the safe loader every other caller uses is left as PyYAML made it (its
    # float rules were once removed for every yaml.safe_load in the process)
    import yaml

    assert yaml.safe_load("a: 1.5\nb: 1.0e-06\nc: 2:30.0") == {"a": 1.5, "b": 1e-06, "c": 150.0}


def test_a_number_too_large_for_any_value_is_bad_input_not_an_internal_error(tmp_path, capsys):
    # a whole number past float's range was an OverflowError, and one of 5,000 digits Python's ValueError
    with pytest.raises(CnnlabError, match=r"optim.lr must be a finite number, got 1000.*\(401 characters\)"):
        apply_overrides(RunConfig(), ["optim.lr=1" + "0" * 400])
    path = tmp_path / "big.yaml"
    path.write_text("train:\n  epochs: " + "1" * 5000 + "\n")
    too_long = r"a whole number of 5,000 digits \(111111111111...\) is longer than any value"
    with pytest.raises(CnnlabError, match=r"config file '.*big.yaml': " + too_long + r".*\(line 2, column 11\)"):
        load_config(path)
    # the same from --set and a model spec, where YAML's refusal used to make it text ("must be int, got '111...'")
    with pytest.raises(CnnlabError, match=r"Cannot read train.epochs \(given by --set or a model spec\): " + too_long):
        apply_overrides(RunConfig(), ["train.epochs=" + "1" * 5000])
    with pytest.raises(CnnlabError, match=r"Cannot read model.options.width_mult .*" + too_long):
        apply_overrides(RunConfig(), model_spec_overrides("tv:mobilenet_v2,width_mult=" + "1" * 5000))
    with pytest.raises(CnnlabError, match=r"Cannot read data.mean.*: " + too_long):  # a list's item
        apply_overrides(RunConfig(), ["data.mean=0.5," + "1" * 5000])
    import yaml

    from cnnlab.config import safe_load_unique

    with pytest.raises(yaml.YAMLError, match="has no digits to read as a whole number"):  # not "too long"
        safe_load_unique("a: 0x_")
    with pytest.raises(CnnlabError, match=r"Both model.options=.* are given"):  # the example keeps the text
        apply_overrides(RunConfig(), ["model.options.se=16", "model.options={a: " + "1" * 5000 + "}"])
    # a range check quotes the value shortened (all 401 digits were printed)
    with pytest.raises(CnnlabError, match=r"train.epochs=100000000000...0000 \(401 digits\) must lie in 1\.\."):
        apply_overrides(RunConfig(), ["train.epochs=1" + "0" * 400])
    # ... and so do a choice's refusal and the note on a key given twice
    with pytest.raises(CnnlabError, match=r"model.dropout='9{59}\.\.\.9{9}' \(402 characters\) is not allowed"):
        apply_overrides(RunConfig(), ["model.dropout=" + "9" * 400])
    assert apply_overrides(RunConfig(), ["train.epochs=1" + "0" * 400, "train.epochs=2"]).train.epochs == 2
    assert "train.epochs=100000000000...0000 (401 digits) and train.epochs=2" in capsys.readouterr().err


def test_yaml_merge_keys_are_read_and_a_list_as_a_key_is_refused_in_words(tmp_path):
    # A merge key was refused as "could not determine a constructor", and a list as a key crashed (TypeError)
    from cnnlab.config import safe_load_unique

    assert safe_load_unique("d: &d {epochs: 1, batch_size: 8}\ntrain: {<<: *d, batch_size: 32}")["train"] == {
        "epochs": 1, "batch_size": 32}  # the mapping's own key overrides the merged one, as YAML defines
    with pytest.raises(Exception, match="appears twice"):
        safe_load_unique("train: {epochs: 1, epochs: 2}")
    listed = tmp_path / "listed.yaml"
    listed.write_text("train:\n  epochs: 1\n  ? [a, b]\n  : 3\n")
    with pytest.raises(CnnlabError, match=r"a key is a list .*keys are names"):
        load_config(listed)


def test_a_merge_of_several_mappings_takes_a_key_from_the_first_that_gives_it():
    """YAML's merge: of `<<: [*a, *b]`, a key both give takes *a's value. PyYAML 6.0.4 kept *b's for names longer
    than a character ('epochs'), *a's for short ones: the same file trained 5 epochs where it meant 3."""
    from cnnlab.config import safe_load_shown, safe_load_unique

    text = "a: &a {epochs: 3, lr: 0.1}\nb: &b {epochs: 5, e: 7, batch_size: 16}\nc: &c {e: 8}\ntrain:\n  <<: [*a, *b, *c]\n"
    for load in (safe_load_unique, safe_load_shown):
        assert load(text)["train"] == {"epochs": 3, "lr": 0.1, "e": 7, "batch_size": 16}
        assert load(text + "  epochs: 9\n")["train"]["epochs"] == 9  # the mapping's own key still wins
        # merges nested in the merged mappings are read the same way, a merged mapping's own keys winning over
        # what it merged itself (its own merge's first pass took 'base's epochs over 'mid's)
        assert load("a: &a {x: 1}\nb: &b {x: 2}\nn: &n {<<: [*a, *b]}\ntrain: {<<: *n}\n")["train"] == {"x": 1}
        assert load("base: &b {epochs: 1, lr: 2}\nmid: &m {<<: *b, epochs: 5}\ntop: {<<: *m}\n")["top"] == {
            "epochs": 5, "lr": 2}
        # such a mapping reached through aliases before it is built itself is no mapping giving a key twice
        nested = "base: &b {lr: 0.1, m: 0.9}\na:\n  b: &mid {<<: *b, lr: 0.05}\nc: {<<: *mid}\nd: {<<: *mid}\n"
        assert load(nested)["a"]["b"] == load(nested)["d"] == {"lr": 0.05, "m": 0.9}
        assert load("a: &a {x: 1, <<: *a}\n") == {"a": {"x": 1}}  # a mapping that merges itself, as PyYAML reads it
    with pytest.raises(Exception, match=r"expected a mapping for merging, but found scalar"):
        safe_load_unique("o: &o {a: 1}\ntrain: {<<: [*o, 1], epochs: 1}\n")  # the item that is no mapping
    for text in ("a: {<<: {k: 1, k: 2}, y: 2}\n", "r: {<<: [{a: 1, a: 2}], c: 3}\n"):  # never built on its own
        with pytest.raises(Exception, match=r"appears twice"):
            safe_load_unique(text)


@pytest.mark.parametrize("text, words", [
    ("data:\n  classes: &c [0, *c]\n", "or a list or mapping that holds itself"),
    ("model:\n  options:\n    x: " + "[" * 3000 + "]" * 3000 + "\n", "nest too deeply to read"),
    # "billion laughs": each alias repeats the one before ten times, 10^8 values from a few hundred bytes
    ("model:\n  options:\n" + "".join(f"    a{i}: &a{i} [" + ",".join([f"*a{i - 1}" if i else "1"] * 10) + "]\n"
                                        for i in range(8)), "holds more than 100,000 values"),
])
def test_yaml_that_holds_itself_nests_too_deeply_or_expands_too_far_is_refused_in_words(tmp_path, text, words):
    """A list holding itself and 3,000 nested lists were internal errors (RecursionError, exit 1); aliases of
    aliases took minutes and gigabytes before the checks refused them. In a file or in a --set value."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    with pytest.raises(CnnlabError, match=f"Cannot read the config file '.*recipe.yaml': .*{words}") as refused:
        load_config(recipe)
    assert "It must be YAML" not in str(refused.value)  # it is YAML
    value = text.split("x: ", 1)[1].strip() if "x: " in text else "&a [1, *a]"
    with pytest.raises(CnnlabError, match=r"Cannot read model.options.x \(given by --set or a model spec\): "):
        apply_overrides(RunConfig(), [f"model.options.x={value}"])


def test_a_long_plain_yaml_list_is_read_up_to_the_bound():
    """The bound on a file's values refuses what aliases expand to, not a long list written out (read once: 3 s)."""
    from cnnlab.config import MAX_YAML_VALUES

    assert len(safe_load_unique_of(f"x: [{', '.join(['1'] * (MAX_YAML_VALUES - 3))}]")["x"]) == MAX_YAML_VALUES - 3


def safe_load_unique_of(text):
    from cnnlab.config import safe_load_unique

    return safe_load_unique(text)


def test_a_key_set_twice_reads_only_the_last_value_and_an_empty_value_is_refused(capsys):
    """The note said the last --set holds, then the first one's bad value refused the run: appending a --set to
    fix a value is how command lines are edited. An empty value (an unset $VAR) silently set model.norm_options
    entries to None (a BatchNorm's momentum None is a cumulative average): refused for every key."""
    config = apply_overrides(RunConfig(), ["optim.lr=abc", "optim.lr=0.1", "train.bn_eval=bogus", "train.bn_eval=off",
                                           "data.classes=[0,1", "data.classes=[0,1]", "train.epochs=", "train.epochs=3"])
    assert config.optim.lr == 0.1 and config.train.bn_eval == "off"
    assert config.data.classes == [0, 1] and config.train.epochs == 3  # a value YAML cannot read, replaced unread
    assert "the last, 0.1, holds" in capsys.readouterr().err
    # three times: one note, true of the value that holds (the second read "the last, 0.2, holds" before)
    assert apply_overrides(RunConfig(), ["optim.lr=0.1", "optim.lr=0.2", "optim.lr=0.1"]).optim.lr == 0.1
    assert capsys.readouterr().err == ("note: --set gives optim.lr 3 times (optim.lr=0.1, optim.lr=0.2, optim.lr=0.1): "
                                       "the last, 0.1, holds\n")
    for key in ("model.norm_options.momentum", "model.options.se", "train.minutes", "optim.lr"):
        with pytest.raises(CnnlabError, match=f"--set {key}= gives no value .* write {key}=VALUE, or {key}=null"):
            apply_overrides(RunConfig(), [f"{key}="])
    config = apply_overrides(RunConfig(), ["model.norm=bn", "model.norm_options.momentum=null"])  # as asked: null
    assert config.model.norm_options == {"momentum": None}


@pytest.mark.parametrize("sets, words", [
    (["train.minutes=1e308"], "train.minutes=1e+308 must lie in (0, 10,000,000]"),
    (["model.init_from=weights.safetensors", "optim.backbone_lr_mult=1e300"], "is a rate above 1e+30"),
    (["data.memory_limit_mb=-5"], "data.memory_limit_mb=-5 must not be negative"),
])
def test_values_that_overflowed_deep_inside_are_refused_with_their_range(sets, words):
    with pytest.raises(CnnlabError) as refused:
        apply_overrides(RunConfig(), sets)
    assert words in str(refused.value)


def test_a_rate_too_high_is_named_once_not_again_as_one_for_loaded_weights():
    """optim.lr=1e32 was refused twice in one message, the second time as "optim.backbone_lr_mult=1 times optim.lr
    ... for the loaded weights", with no weights loaded: the product is checked only where the factor raises it."""
    with pytest.raises(CnnlabError) as refused:
        apply_overrides(RunConfig(), ["optim.lr=1e32"])
    assert "optim.lr=1e+32 is above 1e+30" in str(refused.value) and "backbone_lr_mult" not in str(refused.value)


def test_lr_find_and_check_name_the_set_keys_only_a_training_run_reads(cli, tmp_path):
    # --set train.epochs=50 or train.ema=true was taken by lr-find and check and did nothing without a word; a
    # config file's such keys are its run's, and say nothing
    from cnnlab.train.engine import training_run_keys

    assert training_run_keys(["train.epochs=50", "optim.lr=0.1", "train.ema=true", "train.epochs=3",
                              "log.tensorboard=true", "schedule.warmup_epochs=3"]) == [
        "train.epochs", "train.ema", "log.tensorboard"]
    data = ["--model", "lenet5", "--data", "synthetic:classes=2,train=32,val=8,test=8", "--batch-size", "8"]
    code, out, err = cli(["lr-find", *data, "--steps", "12", "--set", "train.epochs=50", "--set", "train.minutes=5",
                          "--out", str(tmp_path / "lr.png")])
    assert code == 0, err
    assert "note: --set train.epochs does nothing in cnnlab lr-find: only cnnlab train reads it" in err
    assert "note: --set train.minutes does nothing in cnnlab lr-find" in err
    code, out, err = cli(["check", *data, "--steps", "5", "--set", "train.ema_decay=0.9"])
    assert "note: --set train.ema_decay does nothing in cnnlab check" in err
    assert "EMA weights are off" not in err  # one note for it, not two


def test_a_new_preset_over_an_augmentation_recorded_in_full_fills_it_again(capsys):
    """A run's config.yaml records every augmentation value its preset filled: --set aug.preset=none over it
    recorded 'none' and trained with the old preset's values, which win over any preset."""
    from cnnlab.data.transforms import resolve_aug

    recorded = RunConfig()
    recorded.aug = resolve_aug(recorded.aug, 28, 1, hflip_safe=False)  # as a run records it ('standard')
    config = apply_overrides(recorded, ["aug.preset=none", "aug.color_jitter=0.3"])
    assert "aug.preset=none over an augmentation recorded in full" in capsys.readouterr().err
    none = resolve_aug(config.aug, 28, 1, hflip_safe=False)
    assert none == resolve_aug(AugConfig(preset="none", color_jitter=0.3), 28, 1, hflip_safe=False)
    assert (none.crop, none.label_smoothing, none.color_jitter) == ("none", 0.0, 0.3)  # what --set gave stays
    # a config that leaves fields to its preset keeps every one it sets (a recipe's deliberate choice)
    recipe = RunConfig(aug=AugConfig(preset="standard", erasing=0.5))
    assert apply_overrides(recipe, ["aug.preset=strong"]).aug.erasing == 0.5
    assert "recorded in full" not in capsys.readouterr().err
    # the same preset again changes nothing, also as the last of two (the last --set of a key holds)
    assert apply_overrides(recorded, ["aug.preset=standard"]).aug == recorded.aug
    assert apply_overrides(recorded, ["aug.preset=strong", "aug.preset=standard"]).aug == recorded.aug
    assert "recorded in full" not in capsys.readouterr().err
    assert apply_overrides(recorded, ["aug.preset=light", "aug.preset=strong"]).aug.crop is None
    assert "aug.preset=strong over an augmentation recorded in full" in capsys.readouterr().err
    # a preset that is not one is refused, with no note first that it "fills them again"
    for wrong in ("heavy", "Strong"):
        with pytest.raises(CnnlabError, match=f"aug.preset='{wrong}' is not allowed"):
            apply_overrides(recorded, [f"aug.preset={wrong}"])
        assert "recorded in full" not in capsys.readouterr().err
