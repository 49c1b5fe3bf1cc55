import functools
import math

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.errors import CnnlabError, UnknownNameError
from cnnlab.layers import ConvNormAct, get_act_layer, get_norm_layer, norm_names
from cnnlab.layers.act import QuickGELU
from cnnlab.layers.norm import NoNorm


def test_every_norm_builds_for_a_channel_count():
    for name in norm_names():
        layer = get_norm_layer(name)(24)
        out = layer(torch.randn(2, 24, 5, 5))
        assert out.shape == (2, 24, 5, 5), name


def test_norm_classes():
    assert type(get_norm_layer("bn")(8)) is nn.BatchNorm2d
    assert isinstance(get_norm_layer("in")(8), nn.InstanceNorm2d) and get_norm_layer("in")(8).affine
    assert isinstance(get_norm_layer("none")(8), NoNorm)
    assert get_norm_layer(None) is NoNorm


def test_ln_normalises_each_sample_over_c_h_w():
    x = torch.randn(3, 6, 4, 5) * 4 + 2
    out = get_norm_layer("ln")(6)(x)
    flat = x.flatten(1)
    expected = (flat - flat.mean(1, keepdim=True)) / torch.sqrt(flat.var(1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(out.flatten(1), expected, atol=1e-5, rtol=1e-5)


def test_ln2d_normalises_each_pixel_over_channels_only():
    x = torch.randn(2, 8, 3, 3) * 3 - 1
    out = get_norm_layer("ln2d")(8)(x)
    mean = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    torch.testing.assert_close(out, (x - mean) / torch.sqrt(var + 1e-5), atol=1e-5, rtol=1e-5)
    # different per pixel: a per-sample (C,H,W) norm would not give zero mean at every pixel
    assert out.mean(1).abs().max() < 1e-5


def test_gn_groups_default_32_fewer_when_needed_and_configurable():
    assert get_norm_layer("gn")(64).num_groups == 32
    assert get_norm_layer("gn")(24).num_groups == 24
    assert get_norm_layer("gn")(48).num_groups == 24  # largest divisor of 48 not above 32
    assert get_norm_layer("gn", groups=8)(64).num_groups == 8


def test_norm_accepts_types_partials_and_kwargs():
    assert get_norm_layer(nn.BatchNorm2d) is nn.BatchNorm2d
    assert get_norm_layer("bn", eps=1e-3)(4).eps == 1e-3
    assert get_norm_layer(functools.partial(nn.BatchNorm2d, momentum=0.01))(4).momentum == 0.01


def test_unknown_norm_names_the_choices():
    with pytest.raises(UnknownNameError, match="bn, gn, ln, ln2d, in, none.*Did you mean bn"):
        get_norm_layer("bnn")


@pytest.mark.parametrize(
    "name, cls",
    [
        ("sigmoid", nn.Sigmoid),
        ("tanh", nn.Tanh),
        ("relu", nn.ReLU),
        ("leaky_relu", nn.LeakyReLU),
        ("prelu", nn.PReLU),
        ("elu", nn.ELU),
        ("selu", nn.SELU),
        ("gelu", nn.GELU),
        ("quick_gelu", QuickGELU),
        ("silu", nn.SiLU),
        ("identity", nn.Identity),
    ],
)
def test_act_names(name, cls):
    assert type(get_act_layer(name)()) is cls


def test_quick_gelu_is_the_lectures_sigmoid_approximation_of_gelu():
    """The lecture's gelu(x) = x P(X <= x) = x/2 (1 + erf(x / sqrt 2)) ~ x sigmoid(1.702 x), each side computed
    here point by point with Python's math module."""
    points = [i / 100 for i in range(-600, 601)]
    x = torch.tensor(points, dtype=torch.float64)
    quick = get_act_layer("quick_gelu")()(x).tolist()
    by_hand = [v / (1 + math.exp(-1.702 * v)) for v in points]
    exact = [v / 2 * (1 + math.erf(v / math.sqrt(2))) for v in points]
    assert max(abs(a - b) for a, b in zip(quick, by_hand)) < 1e-12
    gap = [abs(a - b) for a, b in zip(quick, exact)]
    assert 0.01 < max(gap) < 0.021  # an approximation: close to GELU, but not GELU
    assert torch.allclose(nn.GELU()(x), torch.tensor(exact, dtype=torch.float64), atol=1e-12)  # `gelu` is exact
    assert max(gap[points.index(0.0) - 10:points.index(0.0) + 11]) < 1e-3  # near 0 the two agree closely


def test_elu_and_selu_use_the_lectures_constants():
    """The lecture: ELU with alpha = 1 by default; SELU = lambda x (x > 0), lambda alpha (e^x - 1) (x <= 0) with
    alpha = 1.6732632423543772848170429916717, lambda = 1.0507009873554804934193349852946."""
    alpha, scale = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
    points = [i / 50 for i in range(-250, 251)]
    x = torch.tensor(points, dtype=torch.float64)
    selu = get_act_layer("selu")()(x).tolist()
    by_hand = [scale * v if v > 0 else scale * alpha * (math.exp(v) - 1) for v in points]
    assert max(abs(a - b) for a, b in zip(selu, by_hand)) < 1e-12
    elu = get_act_layer("elu")()(x).tolist()
    assert max(abs(a - (v if v > 0 else math.exp(v) - 1)) for a, v in zip(elu, points)) < 1e-12


def test_quick_gelu_works_as_a_model_activation():
    model = cnnlab.create_model("resnet8", num_classes=10, in_chans=1, act="quick_gelu")
    assert any(isinstance(m, QuickGELU) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    # initialised as gelu is (He, the ReLU family's rule), not with Glorot as tanh or identity would be
    weights = {}
    for act in ("quick_gelu", "gelu", "tanh"):
        torch.manual_seed(0)
        weights[act] = [p for n, p in cnnlab.create_model("resnet8", num_classes=10, in_chans=1, act=act).named_parameters()
                        if n.endswith("conv.weight")]
    assert all(torch.equal(a, b) for a, b in zip(weights["quick_gelu"], weights["gelu"]))
    assert not all(torch.equal(a, b) for a, b in zip(weights["quick_gelu"], weights["tanh"]))


def test_leaky_relu_slope_is_configurable():
    assert get_act_layer("leaky_relu", negative_slope=0.2)().negative_slope == 0.2
    assert get_act_layer("leaky_relu:0.3")().negative_slope == 0.3
    with pytest.raises(UnknownNameError, match="leaky_relu:SLOPE"):
        get_act_layer("relu:0.3")
    for bad in ("nan", "inf", "-inf"):  # a number, not a finite one: it was told only leaky_relu takes one
        with pytest.raises(UnknownNameError, match="the number after 'leaky_relu:' must be finite"):
            get_act_layer(f"leaky_relu:{bad}")
    with pytest.raises(UnknownNameError, match="the number after 'elu:' must be finite"):
        get_act_layer("elu:inf")
    # not a number at all: it was told only leaky_relu, elu and prelu take a number, leaky_relu among them
    with pytest.raises(UnknownNameError, match=r"'abc' after 'leaky_relu:' is not a number \(e\.g\. leaky_relu:0\.1\)"):
        get_act_layer("leaky_relu:abc")


def test_unknown_act_suggests():
    with pytest.raises(UnknownNameError, match="Did you mean.*relu"):
        get_act_layer("rellu")


def test_conv_norm_act_orders_and_bias():
    block = ConvNormAct(3, 8, 3, norm_layer=get_norm_layer("bn"), act_layer=get_act_layer("relu"))
    assert [type(m) for m in block] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert block.conv.bias is None  # the norm's shift replaces the bias
    plain = ConvNormAct(3, 8, 3, norm_layer=get_norm_layer("none"), act_layer=None)
    assert [type(m) for m in plain] == [nn.Conv2d] and plain.conv.bias is not None
    pre = ConvNormAct(3, 8, 3, norm_layer=get_norm_layer("bn"), act_layer=get_act_layer("relu"), preact=True)
    assert [type(m) for m in pre] == [nn.BatchNorm2d, nn.ReLU, nn.Conv2d]
    assert pre.norm.num_features == 3  # the norm sees the block input
    assert ConvNormAct(3, 8, 5, stride=2)(torch.randn(1, 3, 16, 16)).shape == (1, 8, 8, 8)


def test_conv_norm_act_pools_between_the_conv_and_its_norm():
    block = ConvNormAct(3, 8, 3, norm_layer=get_norm_layer("bn"), act_layer=get_act_layer("relu"),
                        pool=nn.MaxPool2d(2))
    assert list(block._modules) == ["conv", "pool", "norm", "act"]
    assert block(torch.randn(2, 3, 16, 16)).shape == (2, 8, 8, 8)
    with pytest.raises(CnnlabError, match="conv -> norm -> act order only.*with preact=True"):
        ConvNormAct(3, 8, 3, preact=True, pool=nn.MaxPool2d(2))
    with pytest.raises(CnnlabError, match="takes pool as a layer .*got 2"):
        ConvNormAct(3, 8, 3, pool=2)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's note about its own copy
@pytest.mark.parametrize("kernel, stride, dilation", [(2, 1, 1), (4, 1, 1), (4, 2, 1), (6, 3, 1), (2, 1, 3), (3, 2, 1), (5, 1, 2)])
@pytest.mark.parametrize("preact", [False, True])
def test_conv_norm_act_keeps_the_size_for_odd_and_even_kernels(kernel, stride, dilation, preact):
    """The lecture's padding rule: p = k - 1 rows in all (k the dilated kernel), ceil(p/2) on top and floor(p/2)
    below, give the output floor((n - k + p + s) / s). An even kernel used to lose a row: its padding, (k - 1) // 2
    on each side, is p - 1 in all."""
    block = ConvNormAct(2, 3, kernel, stride=stride, dilation=dilation, norm_layer=None, act_layer=None, preact=preact)
    span = dilation * (kernel - 1)  # p
    top, bottom = span - span // 2, span // 2  # ceil(p/2), floor(p/2)
    for n in (7, 8, 9, 16):
        x = torch.randn(1, 2, n, n)
        out = block(x)
        assert out.shape[-2:] == ((n - (span + 1) + span + stride) // stride,) * 2
        # the same numbers as the conv on the input padded by hand, top and left first
        by_hand = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (top, bottom, top, bottom)), block.conv.weight,
                                             block.conv.bias, stride=stride, dilation=dilation)
        assert torch.allclose(out, by_hand, atol=1e-6)
    if stride == 1:  # torch's own 'same' padding gives the same size (it puts the extra row below instead)
        reference = nn.Conv2d(2, 3, kernel, dilation=dilation, padding="same")
        assert reference(torch.randn(1, 2, 9, 9)).shape == block(torch.randn(1, 2, 9, 9)).shape
    assert hasattr(block, "pad") == bool(span % 2)  # odd kernels keep the plain conv padding


@pytest.mark.parametrize("key, name, factory", [("norm_layer", "bn", "get_norm_layer"), ("act_layer", "relu", "get_act_layer")])
def test_a_block_given_a_layer_name_says_to_resolve_it(key, name, factory):
    """README's ConvNormAct takes layer types: a name used to fail as "'str' object is not callable"."""
    from cnnlab.layers import BasicBlock

    with pytest.raises(CnnlabError, match=rf"ConvNormAct takes {key} as a layer type.*got '{name}'.*{factory}\('{name}'\)"):
        ConvNormAct(3, 8, 3, **{key: name})
    with pytest.raises(CnnlabError, match=rf"takes {key} as a layer type"):
        BasicBlock(8, 8, **{key: name})
    assert len(ConvNormAct(3, 8, 3, **{key: None})) == 2  # None still leaves the layer out


def test_an_activation_option_the_layer_does_not_take_is_refused_where_it_is_given():
    """get_act_layer("relu", foo=1) used to return a layer type that failed only when a model built it."""
    with pytest.raises(CnnlabError, match="Activation 'leaky_relu' does not take slope: it takes negative_slope, inplace"):
        get_act_layer("leaky_relu", slope=0.1)
    with pytest.raises(CnnlabError, match="Activation 'tanh' does not take inplace: it takes no options"):
        get_act_layer("tanh", inplace=True)
    assert get_act_layer("leaky_relu", negative_slope=0.2)().negative_slope == 0.2
    assert get_act_layer("relu", inplace=True)().inplace


def test_options_given_with_a_layer_type_or_bound_in_a_partial_are_checked_where_they_are_given():
    """They used to fail only inside the model's first block, where create_model blamed the model's options."""
    from cnnlab.models import create_model

    with pytest.raises(CnnlabError, match="Activation 'LeakyReLU' does not take slope: it takes negative_slope"):
        get_act_layer(nn.LeakyReLU, slope=0.1)
    with pytest.raises(CnnlabError, match="Activation 'LeakyReLU' does not take slope"):
        create_model("vgg11", act=functools.partial(nn.LeakyReLU, slope=0.1))
    with pytest.raises(CnnlabError, match="Normalisation 'GroupNorm' does not take the option momentum"):
        create_model("resnet8", norm=functools.partial(nn.GroupNorm, 2, momentum=0.1))
    # a keyword bound to the parameter the channel count goes to would be given twice
    with pytest.raises(CnnlabError, match="'BatchNorm2d' binds num_features=16 by keyword.*channel count as the first"):
        create_model("resnet8", norm=functools.partial(nn.BatchNorm2d, num_features=16))
    with pytest.raises(CnnlabError, match=r"'GroupNorm' binds num_groups=2 by keyword.*partial\(nn.GroupNorm, 2\)"):
        create_model("resnet8", norm=functools.partial(nn.GroupNorm, num_groups=2))
    # What a layer takes still builds: options by keyword, the groups bound by position, a function of no arguments,
    # device bound in a partial, and an activation of one's own whose __init__ takes **kwargs
    model = create_model("resnet8", norm=functools.partial(nn.GroupNorm, 2), act=get_act_layer(nn.LeakyReLU,
                         negative_slope=0.2))
    assert {m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)} == {2}
    assert {m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)} == {0.2}
    assert any(isinstance(m, nn.Tanh) for m in create_model("lenet5", act=lambda: nn.Tanh()).modules())
    assert create_model("resnet8", norm=functools.partial(nn.BatchNorm2d, device="cpu")) is not None

    class Scaled(nn.Module):
        def __init__(self, **options):
            super().__init__()
            self.alpha = options.get("alpha", 1.0)

        def forward(self, x):
            return self.alpha * torch.relu(x)

    model = create_model("resnet8", act=functools.partial(Scaled, alpha=0.2))
    assert {m.alpha for m in model.modules() if isinstance(m, Scaled)} == {0.2}
    assert get_act_layer(Scaled, alpha=0.5)().alpha == 0.5


@pytest.mark.parametrize("given, what", [(nn.GELU(), "a layer: got an instance of GELU"),
                                         (torch.relu, "a function: got the function relu")])
def test_a_layer_or_a_function_in_place_of_a_layer_type_is_refused_with_what_to_give(given, what):
    """nn.GELU() for nn.GELU used to fail inside torch ("forward() missing 1 required positional argument")."""
    from cnnlab.models import create_model

    with pytest.raises(UnknownNameError, match=rf"Activation must be a layer type, not {what}"):
        create_model("resnet8", act=given)
    with pytest.raises(CnnlabError, match=rf"ConvNormAct's act_layer must be a layer type, not {what}"):
        ConvNormAct(3, 8, 3, act_layer=given)
    with pytest.raises(UnknownNameError, match=r"Normalisation must be a layer type, not a layer: got an instance of "
                                               r"BatchNorm2d.*\(BatchNorm2d, without the brackets\)"):
        create_model("resnet8", norm=nn.BatchNorm2d(16))


@pytest.mark.parametrize("options, named", [({"kernel_size": 0}, "kernel_size=0"), ({"stride": 0}, "stride=0"),
                                            ({"dilation": -1}, "dilation=-1"),
                                            ({"kernel_size": 2.5}, "kernel_size=2.5")])
def test_a_block_refuses_a_kernel_stride_or_dilation_below_1_where_it_is_built(options, named):
    """torch's Conv2d takes them and fails only at the first forward pass, far from the call that gave them."""
    with pytest.raises(CnnlabError, match=rf"ConvNormAct: {named}: the kernel size, stride and dilation are whole"):
        ConvNormAct(3, 8, **options)


@pytest.mark.parametrize("reduction", [0, -1, 2.5, True])
def test_a_squeeze_excite_reduction_that_is_not_a_whole_number_of_at_least_1_is_refused(reduction):
    """0 divided by zero; a fraction or a negative built some width the paper never meant."""
    from cnnlab.errors import CnnlabError
    from cnnlab.layers import SqueezeExcite

    with pytest.raises(CnnlabError, match="reduction must be a whole number of at least 1"):
        SqueezeExcite(16, reduction=reduction)
    assert SqueezeExcite(16, reduction=1).fc1.out_channels == 16


@pytest.mark.parametrize("kind, attribute, value", [("leaky_relu:1e-3", "negative_slope", 1e-3),
                                                     ("leaky-relu:-0.1", "negative_slope", -0.1),
                                                     ("elu:1e-1", "alpha", 0.1)])
def test_an_activation_s_number_keeps_its_sign_and_exponent(kind, attribute, value):
    # the dash-to-underscore spelling rule reached the number too: 1e-3 became 1e_3 and -0.1 became _0.1
    from cnnlab.layers.act import get_act_layer

    assert getattr(get_act_layer(kind)(), attribute) == pytest.approx(value)


def test_drop_path_at_one_drops_every_branch_and_out_of_range_rates_are_refused():
    from cnnlab.layers import DropPath

    x = torch.ones(4, 3, 2, 2)
    assert torch.equal(DropPath(1.0).train()(x), torch.zeros_like(x))  # x * 0 / 0 was NaN
    assert torch.equal(DropPath(1.0).eval()(x), x)
    torch.manual_seed(0)
    kept = DropPath(0.5).train()(x)[:, 0, 0, 0]  # each sample whole or dropped, the kept ones scaled by 1 / 0.5
    assert set(kept.tolist()) <= {0.0, 2.0}
    for bad in (-0.5, 1.5, "0.1", True):
        with pytest.raises(CnnlabError, match=r"drop_prob must be a probability in \[0, 1\]"):
            DropPath(bad)


def test_a_model_of_ones_own_is_told_how_its_classifier_is_found():
    """A tutorial model has a Linear, but no top-level layer named as the zoo's and torchvision's heads are: the
    message said its head had no Linear layer."""
    from cnnlab.models.init import apply_init

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    with pytest.raises(CnnlabError, match=r"found by the name of a top-level layer.*none of its top-level "
                                          r"layers \(0, 1, 2, 3, 4\) is named so"):
        apply_init(model, "xavier")
