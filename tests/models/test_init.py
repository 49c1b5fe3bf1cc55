"""Weight-initialisation schemes (model.init, model.bias_init) and the zoo's default rule, SELU included.

Every expected std is computed here by hand from the layer's shape; the lecture's demonstration (a deep
tanh / ReLU net under 0.01 * randn, Xavier and Kaiming) is reproduced at width 256 instead of 4096.
"""

import math
import re

import pytest
import torch
import torchvision
from torch import nn

import cnnlab
from cnnlab.config import ModelConfig, RunConfig, apply_overrides
from cnnlab.errors import CnnlabError
from cnnlab.models import ClassifierModel, create_model
from cnnlab.models.init import apply_init, parse_init
from cnnlab.run import build_model

CLASSES = 10


class Probe(ClassifierModel):
    """One layer of each kind a scheme must fill, with shapes chosen so every fan differs."""

    def __init__(self, act=nn.ReLU) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(16, 32, 3, padding=1),  # plain: fan_in 16*9, fan_out 32*9
            nn.BatchNorm2d(32),
            act(),
            nn.Conv2d(32, 64, 3, padding=1, groups=4, bias=False),  # grouped: fan_in 8*9, fan_out 64*9
            act(),
            nn.Conv2d(64, 64, 3, padding=1, groups=64),  # depthwise: fan_in 9, fan_out 576
            act(),
        )
        head = nn.Sequential(nn.Linear(64, 128), act())  # hidden linear: fan_in 64, fan_out 128
        self.build_head(128, CLASSES, head=head)


def layer_fans(model):
    """(layer, fan_in, fan_out) written out by hand: a conv's fan_in is in/groups * kh * kw, fan_out out * kh * kw."""
    rows = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m is not model.fc:
            area = m.kernel_size[0] * m.kernel_size[1]
            rows.append((m, m.in_channels // m.groups * area, m.out_channels * area))
        elif isinstance(m, nn.Linear) and m is not model.fc:
            rows.append((m, m.in_features, m.out_features))
    return rows


def assert_normal(weight, std):
    """Mean 0 and std ``std`` within five standard errors of the n-sample estimates."""
    n = weight.numel()
    assert abs(weight.mean().item()) < 5 * std / math.sqrt(n)
    assert weight.std().item() == pytest.approx(std, rel=5 / math.sqrt(2 * n))


HAND = {  # the formula of each fan-based scheme, with a ReLU model's gain sqrt(2)
    "xavier": lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out)),
    "kaiming_in": lambda fan_in, fan_out: math.sqrt(2 / fan_in),
    "kaiming_out": lambda fan_in, fan_out: math.sqrt(2 / fan_out),
    "lecun": lambda fan_in, fan_out: math.sqrt(1 / fan_in),
    "normal:0.03": lambda fan_in, fan_out: 0.03,
}


@pytest.mark.parametrize("scheme", list(HAND))
def test_each_scheme_draws_the_std_of_its_formula(scheme):
    torch.manual_seed(0)
    model = Probe()
    classifier = model.fc.weight.clone()
    apply_init(model, scheme)
    for layer, fan_in, fan_out in layer_fans(model):
        assert_normal(layer.weight, HAND[scheme](fan_in, fan_out))
    assert torch.equal(model.fc.weight, classifier)  # the classifier keeps N(0, 0.01)


def test_kaiming_uses_the_leaky_slope_of_the_model():
    torch.manual_seed(0)
    model = Probe(act=lambda: nn.LeakyReLU(0.5))
    apply_init(model, "kaiming_in")
    for layer, fan_in, _ in layer_fans(model):
        assert_normal(layer.weight, math.sqrt(2 / ((1 + 0.5**2) * fan_in)))  # He et al. 2015, eq. 10


def test_uniform_stays_inside_its_bound_and_fills_it():
    torch.manual_seed(0)
    model = Probe()
    apply_init(model, "uniform:0.2")
    for layer, _, _ in layer_fans(model):
        w = layer.weight
        assert w.abs().max().item() <= 0.2
        assert w.abs().max().item() > 0.2 * (1 - 10 / w.numel())  # the largest of n draws nears the bound
        assert w.std().item() == pytest.approx(0.2 / math.sqrt(3), rel=5 / math.sqrt(w.numel()))  # U(-a, a)


def test_zeros_and_bias_constant_leave_norms_and_the_classifier_alone():
    torch.manual_seed(0)
    model = Probe()
    with torch.no_grad():
        model.features[1].weight.fill_(2.0)  # a norm's scale: no scheme may touch it
    fc_weight, fc_bias = model.fc.weight.clone(), model.fc.bias.clone()
    apply_init(model, "zeros", bias=0.01)
    for layer, _, _ in layer_fans(model):
        assert not layer.weight.any()
        if layer.bias is not None:
            assert torch.equal(layer.bias, torch.full_like(layer.bias, 0.01))
    assert model.features[3].bias is None  # a layer without a bias stays without
    assert torch.equal(model.features[1].weight, torch.full((32,), 2.0))
    assert torch.equal(model.fc.weight, fc_weight) and torch.equal(model.fc.bias, fc_bias)


def test_bias_alone_keeps_the_weights():
    model = Probe()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_init(model, "default", bias=0.01)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"features.0.bias", "features.5.bias", "head.0.bias"}


def test_default_changes_nothing_and_draws_no_random_numbers():
    model = Probe()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    apply_init(model, "default", None)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    apply_init(nn.Sequential(nn.Conv2d(3, 8, 3)), "default")  # not even the classifier is looked for


@pytest.mark.parametrize("spec", ["normal:-1", "normal:abc", "normal", "normal:", "normal:0", "uniform:inf",
                                  "uniform:nan", "xavier:2", "he", "", 0.01, None])
def test_bad_schemes_are_refused_with_the_choices(spec):
    with pytest.raises(CnnlabError, match=r"default, normal:STD, uniform:A, xavier, kaiming_in, kaiming_out, lecun"):
        parse_init(spec)
    with pytest.raises(CnnlabError, match=re_quote(spec)):
        create_model("lenet5", init=spec)
    if isinstance(spec, str) and spec.startswith(("normal:", "uniform:")) and spec[-1] != ":":  # quoted as written
        with pytest.raises(CnnlabError, match=f"'{re.escape(spec.partition(':')[2])}'"):
            parse_init(spec)


def re_quote(spec):
    return re.escape(repr(spec))


@pytest.mark.parametrize("bias", ["0.01", True, float("inf")])
def test_bad_bias_is_refused(bias):
    with pytest.raises(CnnlabError, match="bias_init"):
        create_model("lenet5", bias_init=bias)


def test_a_scheme_on_the_meta_device_checks_the_spec_and_sets_nothing():
    with torch.device("meta"):
        model = create_model("resnet8", init="kaiming_out", bias_init=0.1)
        with pytest.raises(CnnlabError):
            create_model("resnet8", init="normal:-1")
    assert all(p.is_meta for p in model.parameters())


def test_create_model_applies_the_scheme_and_the_loss_at_init_stays_ln_c():
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=CLASSES, init="xavier")
    stem = model.features.stem.conv  # 3 -> 16, 3x3
    assert_normal(stem.weight, math.sqrt(2 / (3 * 9 + 16 * 9)))
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.1)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, CLASSES, (64,))
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model.eval()(x), y).item()
    assert loss == pytest.approx(math.log(CLASSES), abs=0.05)  # the lecture's sanity check


def test_a_torchvision_model_keeps_its_conv_classifier():
    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_1(num_classes=CLASSES)  # what tv:squeezenet1_1 builds, found as tv: models are
    classifier = model.classifier[1]  # SqueezeNet's 1x1 conv giving one map per class
    before = classifier.weight.clone()
    apply_init(model, "lecun")
    assert torch.equal(classifier.weight, before)
    first = model.features[0]  # 3 -> 64, 3x3
    assert_normal(first.weight, 1 / math.sqrt(3 * 9))


def test_model_init_of_a_run_config_reaches_the_model():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet8", init="kaiming_out"), num_classes=CLASSES, in_chans=1)
    stem = model.features.stem.conv  # 1 -> 16, 3x3
    assert_normal(stem.weight, math.sqrt(2 / (16 * 9)))
    config = apply_overrides(RunConfig(), ["model.name=mlp", "model.init=normal:0.02", "model.bias_init=0.01",
                                           "model.options.width=64", "model.options.depth=2"])
    model = build_model(config.model, num_classes=CLASSES, in_chans=1)
    hidden = model.features.layer2.linear  # 64 x 64
    assert_normal(hidden.weight, 0.02)
    assert torch.equal(hidden.bias, torch.full((64,), 0.01))


# ---------------------------------------------------------------------------------------------
# the lecture's demonstration: dims = [width] * 7, six square layers, input N(0, 1)

WIDTH = 256  # the notes use 4096; a 16x16 one-channel image flattens to 256, so every layer is square
DEPTH = 6


def hidden_outputs(model, x):
    """Each hidden layer's output (after its activation), in order."""
    outputs = []
    hooks = [layer.register_forward_hook(lambda module, args, out: outputs.append(out))
             for name, layer in model.features.named_children() if name.startswith("layer")]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return outputs


def demo(act, init, depth=DEPTH):
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=CLASSES, in_chans=1, input_size=16, depth=depth, width=WIDTH,
                         act=act, init=init)
    return hidden_outputs(model, torch.randn(512, 1, 16, 16))


def test_small_weights_make_tanh_activations_vanish():
    stds = [h.std().item() for h in demo("tanh", "normal:0.01")]
    # tanh is the identity near 0, so each layer multiplies the std by 0.01 * sqrt(256) = 0.16.
    for k, std in enumerate(stds, start=1):
        assert std == pytest.approx((0.01 * math.sqrt(WIDTH)) ** k, rel=0.1)
    assert stds[-1] < 1e-4


def test_large_weights_saturate_tanh():
    # The notes' 0.05 at width 4096 multiplies the std by 0.05 * 64 = 3.2 per layer; the same factor here.
    std = 0.05 * math.sqrt(4096) / math.sqrt(WIDTH)
    outputs = demo("tanh", f"normal:{std}")
    for h in outputs[1:]:
        assert (h.abs() > 0.95).float().mean().item() > 0.4  # units pinned at +-1: gradients near 0


def test_xavier_keeps_tanh_activations_scaled():
    stds = [h.std().item() for h in demo("tanh", "xavier")]
    assert all(0.2 < s < 0.8 for s in stds), stds  # neither vanishing nor saturated at any layer


def second_moments(act, init):
    return [h.pow(2).mean().item() for h in demo(act, init)]


def test_kaiming_keeps_the_relu_second_moment_and_xavier_halves_it():
    kaiming = [1.0] + second_moments("relu", "kaiming_in")  # the input's E[x^2] is 1
    xavier = [1.0] + second_moments("relu", "xavier")
    for before, after in zip(kaiming, kaiming[1:]):
        assert after / before == pytest.approx(1.0, abs=0.3)
    for before, after in zip(xavier, xavier[1:]):
        assert after / before == pytest.approx(0.5, abs=0.15)  # a ReLU passes half; 1/sqrt(Din) does not make up for it
    assert xavier[-1] < 0.05 < 0.5 < kaiming[-1]


def test_selu_default_init_is_self_normalising_and_the_old_glorot_rule_was_not():
    depth = 24
    last = demo("selu", "default", depth=depth)[-1]
    assert abs(last.mean().item()) < 0.1
    assert last.var().item() == pytest.approx(1.0, abs=0.15)  # the fixed point (0, 1), Klambauer et al. 2017
    # The rule it replaces: Glorot normal with torch's SELU gain 3/4, i.e. Var(w) = 0.5625 / Din here.
    torch.manual_seed(0)
    old = create_model("mlp", num_classes=CLASSES, in_chans=1, input_size=16, depth=depth, width=WIDTH, act="selu")
    for module in old.features.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight, gain=nn.init.calculate_gain("selu"))
    old_last = hidden_outputs(old, torch.randn(512, 1, 16, 16))[-1]
    assert old_last.var().item() < 0.2  # the variance drifts away from 1


def test_selu_default_is_lecun_normal_in_the_zoo():
    torch.manual_seed(0)
    model = cnnlab.create_model("vgg_mini", act="selu")
    for layer, fan_in, _ in layer_fans(model):
        assert_normal(layer.weight, 1 / math.sqrt(fan_in))
