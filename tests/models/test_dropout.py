"""Dropout as the lecture teaches it: vanilla vs inverted, and dropout added after hidden FC layers and stages.

References: the lecture's two listings (keep probability k = 1 - p: vanilla trains with x * mask and
tests with k * x; inverted trains with x * mask / k and tests with x), torch's nn.Dropout, hand counts
of each architecture's hidden FC layers, and model_stages of a model built without dropout.
"""

import copy

import pytest
import torch
from torch import nn

from cnnlab.analysis import summary
from cnnlab.config import ModelConfig, RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.layers import VanillaDropout
from cnnlab.models import create_model
from cnnlab.models.dropout import apply_dropout
from cnnlab.models.stages import HEAD, STEM, model_stages
from cnnlab.run import build_model
from cnnlab.tune.check import regularisation_off

P = 0.3  # drop probability; the lecture's keep probability is 1 - P


def dropouts(model):
    """name -> rate of every dropout module."""
    return {name: m.p for name, m in model.named_modules() if isinstance(m, nn.Dropout)}


def call_order(model, input_size):
    """(name, module) of the layers one forward pass runs, in order: the rows of cnnlab's summary, which
    traces the model in eval mode on the meta device (dropout layers are still called there)."""
    return [(row.name, model.get_submodule(row.name)) for row in summary(model, input_size).rows()]


def dropout_rates_after_each_linear(model, input_size):
    """For each Linear called, in order: the rates of the dropouts called before the next Linear."""
    groups = []
    for _, module in call_order(model, input_size):
        if isinstance(module, nn.Linear):
            groups.append([])
        elif isinstance(module, nn.Dropout) and groups:
            groups[-1].append(module.p)
    return groups


# ---------------------------------------------------------------------------------------------
# the layer


@pytest.mark.parametrize("layer_type", [VanillaDropout, nn.Dropout])
def test_train_mean_equals_eval_output_as_the_notes_derive(layer_type):
    torch.manual_seed(0)
    keep = 1 - P
    x = torch.tensor([-2.0, -0.5, 0.25, 1.0, 3.0])
    layer = layer_type(P)
    samples = 40_000
    layer.train()
    out = layer(x.expand(samples, -1).clone())  # (samples, 5): one independent mask per row
    layer.eval()
    at_test = layer(x)
    if layer_type is VanillaDropout:
        # vanilla: train output x * m, m in {0, 1}; E = keep * x; test time multiplies by keep
        scale = 1.0
        expected_mean = keep * x
    else:
        # inverted: train output x * m / keep; E = x; test time leaves x alone
        scale = 1.0 / keep
        expected_mean = x
    assert torch.allclose(at_test, expected_mean, rtol=0, atol=1e-6)
    # Standard error of the mean per element: |x| * sqrt(keep (1 - keep)) * scale / sqrt(samples); 5 of them.
    tolerance = 5 * x.abs() * (keep * (1 - keep)) ** 0.5 * scale / samples ** 0.5
    assert ((out.mean(0) - expected_mean).abs() <= tolerance).all()
    # Each output is 0 or x * scale, and the kept share is Bernoulli(keep): within 5 standard errors.
    ratio = out / x
    assert torch.all((ratio == 0) | torch.isclose(ratio, torch.tensor(scale)))
    kept = (ratio != 0).float().mean().item()
    assert abs(kept - keep) <= 5 * (keep * (1 - keep) / ratio.numel()) ** 0.5


def test_eval_is_deterministic_and_p_zero_is_the_identity():
    x = torch.randn(64, 10)
    vanilla = VanillaDropout(P).eval()
    assert torch.equal(vanilla(x), vanilla(x))
    assert torch.equal(vanilla(x), x * (1 - P))
    assert VanillaDropout(0.0).train()(x) is x
    train = VanillaDropout(P).train()
    assert not torch.equal(train(x), train(x))  # fresh masks each call


# ---------------------------------------------------------------------------------------------
# the kind


def test_vanilla_kind_keeps_the_weights_and_scales_eval_exactly_where_dropout_sits():
    torch.manual_seed(1)
    inverted = create_model("lenet5", num_classes=10, in_chans=1, drop_rate=0.5).eval()
    torch.manual_seed(1)
    vanilla = create_model("lenet5", num_classes=10, in_chans=1, drop_rate=0.5, dropout="vanilla").eval()
    assert list(vanilla.state_dict()) == list(inverted.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(vanilla.state_dict().values(), inverted.state_dict().values()))
    assert {n: type(m) for n, m in vanilla.named_modules() if isinstance(m, nn.Dropout)} == {"head.4": VanillaDropout}
    x = torch.randn(3, 1, 28, 28)
    # LeNet's only dropout is the last layer of the head: the trunk agrees, the pre-logits are (1 - p) x.
    features = inverted.forward_features(x)
    assert torch.equal(vanilla.forward_features(x), features)
    pre_inverted = inverted.forward_head(features, pre_logits=True)
    pre_vanilla = vanilla.forward_head(features, pre_logits=True)
    assert torch.allclose(pre_vanilla, 0.5 * pre_inverted)
    fc = inverted.fc
    assert torch.allclose(vanilla(x), 0.5 * (pre_inverted @ fc.weight.T) + fc.bias, atol=1e-6)


def test_bad_kind_and_rates_are_refused():
    model = create_model("lenet5", num_classes=10)
    with pytest.raises(CnnlabError, match="inverse"):
        apply_dropout(model, kind="inverse")
    with pytest.raises(CnnlabError, match="inverted"):
        create_model("lenet5", num_classes=10, dropout="Vanilla")
    with pytest.raises(CnnlabError, match="1.0"):
        apply_dropout(model, hidden_rate=1.0)
    with pytest.raises(CnnlabError, match="hidden fully connected"):
        create_model("resnet8", num_classes=10, hidden_drop_rate=0.5)  # pool -> classifier: nowhere to put it


# ---------------------------------------------------------------------------------------------
# dropout after hidden FC layers


@pytest.mark.parametrize("name, x", [("alexnet", (3, 64, 64)), ("vgg11", (3, 32, 32)),
                                     ("lenet5", (3, 32, 32))])
def test_one_dropout_after_each_hidden_fc_and_none_after_the_classifier(name, x):
    # By hand: AlexNet fc6, fc7; VGG fc6, fc7; LeNet C5, F6 -- then the classifier.
    with torch.device("meta"):
        plain = create_model(name, num_classes=10, drop_rate=0.5)
        model = create_model(name, num_classes=10, drop_rate=0.5, hidden_drop_rate=P)
    assert list(model.state_dict()) == list(plain.state_dict())
    groups = dropout_rates_after_each_linear(model, x)
    assert groups == [[P], [P], []]
    assert dropout_rates_after_each_linear(plain, x) == {
        "alexnet": [[0.5], [], []], "vgg11": [[0.5], [0.5], []], "lenet5": [[], [0.5], []]}[name]
    # AlexNet's dropout in front of fc6 is not after a hidden FC layer: it keeps drop_rate.
    if name == "alexnet":
        assert dropouts(model)["head.0"] == 0.5


def test_mlp_hidden_layers_get_their_dropout_after_norm_and_activation():
    plain = create_model("mlp", num_classes=10, norm="bn", width=16)
    model = create_model("mlp", num_classes=10, norm="bn", width=16, hidden_drop_rate=P).eval()
    assert list(model.state_dict()) == list(plain.state_dict())
    # A second reader of the execution order: hooks on a real forward pass (CPU, eval).
    names = {id(m): n for n, m in model.named_modules()}
    calls = []
    handles = [m.register_forward_pre_hook(lambda mod, args: calls.append(names[id(mod)])) for m in model.modules()]
    with torch.no_grad():
        model(torch.zeros(2, 3, 32, 32))
    for h in handles:
        h.remove()
    for k in (1, 2, 3):  # three hidden layers: Linear -> BatchNorm1d -> ReLU -> the dropout
        first = calls.index(f"features.layer{k}.linear")
        assert calls[first:first + 4] == [f"features.layer{k}.{part}" for part in
                                          ("linear", "norm", "act", "act.drop_after")]
    assert dropouts(model) == {f"features.layer{k}.act.drop_after": P for k in (1, 2, 3)}
    assert calls[-1] == "fc"  # nothing after the classifier


def test_added_dropout_follows_the_activation():
    with torch.device("meta"):
        model = create_model("alexnet", num_classes=10, hidden_drop_rate=P)
    # fc7 (head.4) -> ReLU (head.5) -> the added dropout; fc6's ReLU is followed by AlexNet's own head.3.
    names = [n for n, _ in call_order(model, (3, 64, 64))]
    assert names[names.index("head.4"):names.index("fc")] == ["head.4", "head.5", "head.5.drop_after"]
    assert dropouts(model) == {"head.0": 0.5, "head.3": P, "head.5.drop_after": P}


# ---------------------------------------------------------------------------------------------
# dropout after stages


@pytest.mark.parametrize("name, x", [("resnet8", (3, 32, 32)), ("lenet5", (3, 32, 32))])
def test_one_dropout_after_each_stage(name, x):
    with torch.device("meta"):
        plain = create_model(name, num_classes=10)
        model = create_model(name, num_classes=10, stage_drop_rate=0.2)
    stages = [s for s in model_stages(plain) if s.name not in (STEM, HEAD)]
    assert len(stages) == {"resnet8": 3, "lenet5": 2}[name]
    assert list(model.state_dict()) == list(plain.state_dict())
    added = {n: p for n, p in dropouts(model).items() if p == 0.2}
    assert len(added) == len(stages)
    calls = call_order(model, x)
    for stage in stages:
        inside = [(n, m) for n, m in calls if any(n == p or n.startswith(p + ".") for p in stage.modules)]
        # The stage's last call is its dropout, and it has no other.
        assert isinstance(inside[-1][1], nn.Dropout) and inside[-1][1].p == 0.2, stage
        assert sum(n in added for n, _ in inside) == 1


def test_train_drops_eval_repeats_and_a_copy_has_its_own_dropout():
    model = create_model("lenet5", num_classes=10, hidden_drop_rate=P, stage_drop_rate=0.2, dropout="vanilla")
    x = torch.randn(4, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    # EMA keeps a deep copy in eval mode while the model trains: the copy must not run the model's dropout.
    ema = copy.deepcopy(model).eval()
    model.train()
    assert ema.features[1].drop_after is not model.features[1].drop_after
    assert torch.equal(ema(x), ema(x))
    model.eval()
    assert torch.equal(ema(x), model(x))


def test_applying_again_sets_rates_and_kind_without_stacking():
    model = create_model("lenet5", num_classes=10, hidden_drop_rate=P, stage_drop_rate=0.2, dropout="vanilla")
    names = list(dropouts(model))
    apply_dropout(model, kind="vanilla", hidden_rate=P, stage_rate=0.2)
    assert list(dropouts(model)) == names
    apply_dropout(model, kind="inverted", hidden_rate=0.1, stage_rate=0.4)
    assert dropouts(model) == {"features.1.drop_after": 0.4, "features.3.drop_after": 0.4,
                               "head.1.drop_after": 0.1, "head.4": 0.1}
    assert all(type(m) is nn.Dropout for m in model.modules() if isinstance(m, nn.Dropout))


def test_a_rate_of_zero_sets_the_dropouts_already_there_and_adds_none():
    """docs/models.md: a second call sets the rates of the dropouts already there; 0 left them as they were."""
    model = create_model("lenet5", num_classes=10, hidden_drop_rate=P, stage_drop_rate=0.2)
    names = list(dropouts(model))
    apply_dropout(model, hidden_rate=0.0, stage_rate=0.0)
    assert dropouts(model) == dict.fromkeys(names, 0.0)
    fresh = create_model("resnet8", num_classes=10)  # no hidden FC layer: 0 is no error, and adds nothing
    apply_dropout(fresh, hidden_rate=0.0, stage_rate=0.0)
    assert dropouts(fresh) == {}


def test_summary_lists_the_added_dropout():
    model = create_model("lenet5", num_classes=10, hidden_drop_rate=P, stage_drop_rate=0.2)
    rows = {row.name: row for row in summary(model, (3, 32, 32)).rows()}
    assert rows["features.1.drop_after"].output_shape == (6, 14, 14)
    assert rows["head.1.drop_after"].output_shape == (120,)


# ---------------------------------------------------------------------------------------------
# config


def test_config_path_builds_the_lectures_vanilla_lenet():
    model = build_model(ModelConfig(name="lenet5", hidden_drop_rate=0.3, dropout="vanilla"), num_classes=10,
                        in_chans=1)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Dropout)}
    assert {n: (type(m), m.p) for n, m in layers.items()} == {
        "head.1.drop_after": (VanillaDropout, 0.3), "head.4": (VanillaDropout, 0.3)}
    assert model.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_regularisation_off_removes_every_dropout():
    config = RunConfig(model=ModelConfig(name="lenet5", drop_rate=0.5, hidden_drop_rate=0.3, stage_drop_rate=0.2,
                                         dropout="vanilla"))
    off = regularisation_off(config).model
    assert (off.drop_rate, off.hidden_drop_rate, off.stage_drop_rate) == (0.0, None, None)
    with torch.device("meta"):
        assert len(dropouts(build_model(config.model, num_classes=10, in_chans=1))) == 4
        assert set(dropouts(build_model(off, num_classes=10, in_chans=1)).values()) == {0.0}
