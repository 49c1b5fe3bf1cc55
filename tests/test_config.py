"""Run configs: YAML and --set overrides, each bad key or value named with the allowed ones."""

import pytest

from cnnlab.config import RunConfig, apply_overrides, config_to_dict, load_config, save_config
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
        ("train.ema_decay=1.5", "train.ema_decay=1.5 must lie in (0, 1)"),
        ("train.device=tpu", "auto, cpu, cuda"),
        ("lr=0.1", "SECTION.KEY"),
        ("optim.lr", "SECTION.KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(CnnlabError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        apply_overrides(RunConfig(), [override])


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
    with pytest.raises(CnnlabError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "d.yaml").write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(CnnlabError, match="YAML"):
        load_config(tmp_path / "d.yaml")  # the safe loader refuses to build Python objects


def test_text_values_stay_text_on_the_command_line(tmp_path):
    config = apply_overrides(RunConfig(), ["data.buckets=4:3,1:1", "model.name=resnet8", "data.spec=folder:/x/y"])
    assert config.data.buckets == "4:3,1:1" and config.data.spec == "folder:/x/y"
    assert apply_overrides(RunConfig(), ["data.buckets=null"]).data.buckets is None
    (tmp_path / "a.yaml").write_text("data:\n  buckets: 4:3\n")
    with pytest.raises(CnnlabError, match="quote text values"):
        load_config(tmp_path / "a.yaml")
