"""ResNet family: the CIFAR nets against the paper's Table 6, plain vs residual, zero-init, the
pre-activation order, ResNeXt / wide widths, and every model at its smallest input.

(Parameter counts and logits against torchvision are checked for all families in
tests/test_torchvision_compat.py.)
"""

import json
import re

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.layers.residual import (
    BasicBlock,
    Bottleneck,
    NormAct,
    PreActBasicBlock,
    PreActBottleneck,
    ZeroPadShortcut,
)
from cnnlab.models import model_info
from _one_draw import one_draw_of_each_weight
from _zoo_sweep import SWEPT

FAMILIES = ("resnet", "preact_resnet", "resnet_cifar", "plain_cifar", "preact_resnet_cifar")
NAMES = [name for name in cnnlab.list_models() if model_info(name).family in FAMILIES]
BLOCK_TYPES = (BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck)
PREACT_TYPES = (PreActBasicBlock, PreActBottleneck)

# He et al. 2016, Table 6: parameters of the CIFAR-10 nets, as printed (in millions).
TABLE_6_MILLIONS = {20: "0.27", 32: "0.46", 44: "0.66", 56: "0.85", 110: "1.7"}


def num_params(model):
    return sum(p.numel() for p in model.parameters())


def blocks_of(model):
    return [m for m in model.modules() if isinstance(m, BLOCK_TYPES)]


def test_the_family_is_registered():
    expected = {f"resnet{d}" for d in (18, 34, 50, 101, 152, 8, 20, 32, 44, 56, 110)}
    expected |= {f"plain{d}" for d in (20, 32, 44, 56, 110)}
    expected |= {"preact_resnet18", "preact_resnet34", "preact_resnet50", "resnext50_32x4d", "wide_resnet50_2"}
    expected |= {f"preact_resnet{d}" for d in (20, 56, 110, 164, 1001)}
    assert set(NAMES) == expected


@pytest.mark.parametrize("depth", sorted(TABLE_6_MILLIONS))
def test_cifar_parameters_match_table_6_and_plain_equals_residual(depth):
    printed = TABLE_6_MILLIONS[depth]
    decimals = len(printed.split(".")[1])
    resnet = cnnlab.create_model(f"resnet{depth}", num_classes=10)
    plain = cnnlab.create_model(f"plain{depth}", num_classes=10)
    assert f"{num_params(resnet) / 1e6:.{decimals}f}" == printed
    # Option-A shortcuts have no parameters, so the two nets differ only in their wiring.
    assert num_params(plain) == num_params(resnet)
    assert [tuple(p.shape) for p in plain.parameters()] == [tuple(p.shape) for p in resnet.parameters()]


def preact_cifar_params_by_hand(depth, num_classes):
    """The parameters of a 6n+2 pre-activation net counted from the paper's description, not from the
    modules: a bare 3x3 stem conv (16 filters); per block bn1 on its input, a 3x3 conv, bn2, a 3x3 conv (no
    conv biases: a norm follows each); option-A shortcuts (no weights); a final BN(64); the fc."""
    n = (depth - 2) // 6
    params = 3 * 9 * 16  # stem
    chs = 16
    for planes in (16, 32, 64):  # section 4.2: three stages of 16, 32 and 64 filters
        for _ in range(n):
            params += 2 * chs + 9 * chs * planes + 2 * planes + 9 * planes * planes  # bn1, conv1, bn2, conv2
            chs = planes
    return params + 2 * chs + chs * num_classes + num_classes  # final BN, fc weight and bias


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_preact_cifar_parameters_by_hand_and_as_printed(depth):
    """In "Identity Mappings" the pre-activation ResNet-110 has 1.7M parameters, as the original one
    (Table 6 of He et al.): moving each BN before its conv keeps the count (the stem's BN becomes the final one,
    and the downsampling blocks' bn1 read 16 and 32 channels where bn1 of a post-act block would have 32 and 64)."""
    model = cnnlab.create_model(f"preact_resnet{depth}", num_classes=10)
    assert num_params(model) == preact_cifar_params_by_hand(depth, 10)
    assert num_params(model) == num_params(cnnlab.create_model(f"resnet{depth}", num_classes=10))
    printed = TABLE_6_MILLIONS[depth]
    assert f"{num_params(model) / 1e6:.{len(printed.split('.')[1])}f}" == printed


def hand_built_preact_resnet56(**options):
    """The pre-activation ResNet-56 as the residual-init experiment once assembled it from parts: ResNet with
    PreActBasicBlock on the CIFAR table and zero-pad shortcuts."""
    from cnnlab.models.resnet import CIFAR_STAGES, ResNet, cifar_blocks_per_stage

    stages = [(n, planes, stride) for n, (planes, stride) in zip(cifar_blocks_per_stage(56), CIFAR_STAGES)]
    return ResNet(PreActBasicBlock, stages, stem="cifar", shortcut="zero_pad", **options)


@pytest.mark.parametrize("norm, zero_init", [("bn", False), ("none", True)])
def test_preact_resnet56_is_the_hand_built_one(norm, zero_init):
    options = dict(num_classes=10, norm=norm, zero_init_residual=zero_init)
    torch.manual_seed(0)
    zoo = cnnlab.create_model("preact_resnet56", **options)
    torch.manual_seed(0)
    hand = hand_built_preact_resnet56(**options)
    assert str(zoo) == str(hand)  # module for module, with every layer's arguments
    assert [type(m) for m in zoo.modules()] == [type(m) for m in hand.modules()]
    zoo_state, hand_state = zoo.state_dict(), hand.state_dict()
    assert zoo_state.keys() == hand_state.keys()
    assert all(torch.equal(zoo_state[k], hand_state[k]) for k in zoo_state)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(zoo.train()(x), hand.train()(x))


def test_preact_cifar_layout_16_32_64_and_option_a_shortcuts():
    model = cnnlab.create_model("preact_resnet110", num_classes=10)
    stages = [model.features.stage1, model.features.stage2, model.features.stage3]
    assert [len(stage) for stage in stages] == [18, 18, 18]  # n = (110 - 2) / 6
    assert all(isinstance(b, PreActBasicBlock) for b in blocks_of(model))
    assert [stage[-1].out_chs for stage in stages] == [16, 32, 64]
    shortcuts = [b.shortcut for b in blocks_of(model) if b.shortcut is not None]
    assert len(shortcuts) == 2 and all(isinstance(s, ZeroPadShortcut) for s in shortcuts)
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 64, 8, 8)


# "Identity Mappings", section 4: the bottleneck nets' parameters as printed (in millions), the same for
# CIFAR-10 and CIFAR-100.
IDENTITY_MAPPINGS_MILLIONS = {164: "1.7", 1001: "10.2"}
BOTTLENECK_WIDTHS = (16, 32, 64)  # each stage's 1x1-reduced width; the stage outputs 4x that


def preact_bottleneck_params_by_hand(depth, num_classes, with_norms=True):
    """The parameters of a 9n+2 pre-activation bottleneck net counted from the paper's description and its
    code (KaimingHe/resnet-1k-layers), not from the modules: a bare 3x3 stem conv with 16 filters; per block a
    BN on its input, a 1x1 conv to the stage's width w, BN, a 3x3 conv, BN, a 1x1 conv to 4w, no conv biases
    (that code drops them; a norm follows each conv); in each stage's first block a bare 1x1 projection
    shortcut (16 -> 64, 64 -> 128, 128 -> 256); a final BN; the fc. ``with_norms=False`` leaves out the
    BNs' scale and shift (2 per channel)."""
    n = (depth - 2) // 9
    norm = 2 if with_norms else 0
    params = 3 * 3 * 3 * 16  # stem
    chs = 16
    for width in BOTTLENECK_WIDTHS:
        out = 4 * width
        for block in range(n):
            params += norm * chs + chs * width  # BN of the block's input, 1x1 reduce
            params += norm * width + 9 * width * width  # BN, 3x3
            params += norm * width + width * out  # BN, 1x1 expand
            if block == 0:
                params += chs * out  # the projection shortcut
            chs = out
    return params + norm * chs + chs * num_classes + num_classes  # final BN, fc weight and bias


def preact_bottleneck_macs_by_hand(depth, num_classes, strided_conv):
    """Multiply-adds of the convs and the fc at 32x32, with the stride of a stage's first block on its
    ``"3x3"`` conv (the zoo's bottleneck) or on its first ``"1x1"`` (the paper's code)."""
    n = (depth - 2) // 9
    side = 32
    macs = side * side * 16 * 3 * 3 * 3  # stem
    chs = 16
    for width, stride in zip(BOTTLENECK_WIDTHS, (1, 2, 2)):
        out, low = 4 * width, side // stride  # low: the side after the stride
        reduce_side = side if strided_conv == "3x3" else low
        macs += reduce_side**2 * chs * width + low**2 * (9 * width * width + width * out + chs * out)  # + shortcut
        macs += (n - 1) * low**2 * (out * width + 9 * width * width + width * out)
        chs, side = out, low
    return macs + chs * num_classes


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("depth", sorted(IDENTITY_MAPPINGS_MILLIONS))
def test_preact_bottleneck_parameters_by_hand_and_as_printed(depth, num_classes):
    with torch.device("meta"):  # shapes only: preact_resnet1001 builds in half a second
        model = cnnlab.create_model(f"preact_resnet{depth}", num_classes=num_classes)
    assert num_params(model) == preact_bottleneck_params_by_hand(depth, num_classes)
    printed = IDENTITY_MAPPINGS_MILLIONS[depth]
    decimals = len(printed.split(".")[1])
    # The paper's figures are those of the convs and the fc: with the BNs' scales and shifts ResNet-164 still
    # rounds to 1.7M, but ResNet-1001 has 10.33M (10.35M at 100 classes), 149,216 of them in its norms.
    weights = preact_bottleneck_params_by_hand(depth, num_classes, with_norms=False)
    assert f"{weights / 1e6:.{decimals}f}" == printed
    assert (f"{num_params(model) / 1e6:.{decimals}f}" == printed) == (depth == 164)


def test_preact_resnet164_layout_bottlenecks_and_projection_shortcuts():
    model = cnnlab.create_model("preact_resnet164", num_classes=10)
    stages = [model.features.stage1, model.features.stage2, model.features.stage3]
    assert [len(stage) for stage in stages] == [18, 18, 18]  # n = (164 - 2) / 9
    assert all(isinstance(b, PreActBottleneck) for b in blocks_of(model))
    assert [stage[-1].out_chs for stage in stages] == [64, 128, 256]
    assert [stage[0].conv2.conv.out_channels for stage in stages] == list(BOTTLENECK_WIDTHS)
    assert model.features.stem.conv.out_channels == 16 and not hasattr(model.features.stem, "norm")
    assert isinstance(model.features.final_norm, NormAct)
    # A bare strided 1x1 conv in each stage's first block, the identity everywhere else.
    assert [b for b in blocks_of(model) if b.shortcut is not None] == [stage[0] for stage in stages]
    projections = [stage[0].shortcut for stage in stages]
    assert [(p.conv.in_channels, p.conv.out_channels, p.conv.stride) for p in projections] == [
        (16, 64, (1, 1)), (64, 128, (2, 2)), (128, 256, (2, 2))]
    assert all(p.conv.kernel_size == (1, 1) and p.conv.bias is None and not hasattr(p, "norm") for p in projections)
    # The stride sits on the 3x3 conv (the zoo's choice; the paper's code strides the first 1x1)
    assert [(stage[0].conv1.conv.stride, stage[0].conv2.conv.stride) for stage in stages[1:]] == [((1, 1), (2, 2))] * 2
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 256, 8, 8)


def test_preact_resnet164_summary_counts_the_hand_macs(cli):
    code, out, err = cli(["summary", "preact_resnet164", "--input", "3x32x32", "--num-classes", "10", "--json"])
    assert code == 0, err
    totals = json.loads(out)["totals"]
    assert totals["params"] == preact_bottleneck_params_by_hand(164, 10)
    assert totals["macs"] == preact_bottleneck_macs_by_hand(164, 10, strided_conv="3x3")
    # docs/models.md: striding the 3x3 costs 3.1M more multiply-adds than the paper's code (1.3%)
    extra = totals["macs"] - preact_bottleneck_macs_by_hand(164, 10, strided_conv="1x1")
    assert f"{extra / 1e6:.1f}M" == "3.1M" and f"{extra / (totals['macs'] - extra):.1%}" == "1.3%"


def test_preact_resnet1001_layout_and_its_untrained_eval_overflow():
    torch.manual_seed(0)
    model = cnnlab.create_model("preact_resnet1001", num_classes=10)
    stages = [model.features.stage1, model.features.stage2, model.features.stage3]
    assert [len(stage) for stage in stages] == [111, 111, 111]  # n = (1001 - 2) / 9
    assert [stage[-1].out_chs for stage in stages] == [64, 128, 256]
    x = torch.randn(2, 3, 32, 32)  # two images: enough for batch statistics, and half the cost of 333 blocks
    with torch.no_grad():
        # docs/models.md: untrained, in eval mode each BN is the identity of its initial statistics, and every
        # block adds its branch to the stream, which overflows float32 before the last of 333 blocks.
        assert not torch.isfinite(model.eval()(x)).all()
        assert torch.isfinite(model.train()(x)).all()  # batch statistics normalise each branch's input
    torch.manual_seed(0)
    zero_init = cnnlab.create_model("preact_resnet1001", num_classes=10, zero_init_residual=True).eval()
    with torch.no_grad():
        assert torch.isfinite(zero_init(x)).all()  # every block starts as the identity


@pytest.mark.parametrize("name", NAMES)
def test_depth_in_the_name_counts_the_weighted_layers(name):
    with torch.device("meta"):
        model = cnnlab.create_model(name)
    shortcut_convs = {id(m) for block in blocks_of(model) if block.shortcut is not None
                      for m in block.shortcut.modules()}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and id(m) not in shortcut_convs]
    depth = int(re.search(r"\d+", name).group())  # resnext50_32x4d -> 50, plain110 -> 110
    assert len(convs) + 1 == depth  # + the fc


def test_cifar_layout_16_32_64_and_option_a_shortcuts():
    model = cnnlab.create_model("resnet56", num_classes=10)
    stages = [model.features.stage1, model.features.stage2, model.features.stage3]
    assert [len(stage) for stage in stages] == [9, 9, 9]  # n = (56 - 2) / 6
    assert [stage[-1].out_chs for stage in stages] == [16, 32, 64]
    shortcuts = [b.shortcut for b in blocks_of(model) if b.shortcut is not None]
    assert len(shortcuts) == 2 and all(isinstance(s, ZeroPadShortcut) for s in shortcuts)
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_features(x).shape == (2, 64, 8, 8)


def test_zero_pad_shortcut_subsamples_and_pads_with_zeros():
    shortcut = ZeroPadShortcut(16, 32, stride=2)
    x = torch.randn(2, 16, 7, 7)
    out = shortcut(x)
    assert out.shape == (2, 32, 4, 4)  # same size as a 3x3 stride-2 conv with padding 1 on 7x7
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, 16:]) == 0
    assert num_params(shortcut) == 0


def test_zero_pad_shortcut_keeps_the_gradient_channels_last():
    # A gradient in NCHW meeting a channels_last activation makes the ReLU backward several times slower.
    # (A leaf's .grad follows the leaf's layout whatever arrives, so the gradient is caught on its way.)
    leaf = torch.randn(4, 16, 7, 7).to(memory_format=torch.channels_last).requires_grad_()
    x = leaf * 1.0  # (4, 16, 7, 7) channels_last, not a leaf
    arrived = []
    x.register_hook(arrived.append)
    shortcut = ZeroPadShortcut(16, 32, stride=2)
    out = shortcut(x)
    out.backward(torch.randn_like(out))
    assert arrived[0].is_contiguous(memory_format=torch.channels_last)
    expected = torch.zeros(4, 16, 7, 7)
    grad_out = torch.randn(4, 32, 4, 4)
    y = torch.randn(4, 16, 7, 7, requires_grad=True)
    shortcut(y).backward(grad_out)
    expected[:, :, ::2, ::2] = grad_out[:, :16]  # the subsampled pixels get the kept channels' gradient
    assert torch.equal(y.grad, expected)


@pytest.mark.parametrize("name", ["resnet8", "resnet20"])
def test_cifar_resnets_keep_channels_last_gradients_through_their_shortcuts(name):
    model = cnnlab.create_model(name, num_classes=10, in_chans=1).to(memory_format=torch.channels_last)
    layouts = []
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.register_full_backward_hook(
                lambda module, grad_in, grad_out: layouts.append(grad_out[0].is_contiguous(memory_format=torch.channels_last)))
    x = torch.randn(4, 1, 28, 28).to(memory_format=torch.channels_last)
    model(x).sum().backward()
    # Backward meets the last ReLU first; its gradient comes from the global pool, in NCHW (a 7x7 map: cheap).
    # Every other ReLU, those of the blocks after a zero-pad shortcut included, gets a channels_last gradient.
    assert len(layouts) == sum(isinstance(module, nn.ReLU) for module in model.modules())
    assert all(layouts[1:]), layouts


@pytest.mark.parametrize("block_type", [BasicBlock, PreActBasicBlock])
def test_a_plain_block_has_no_shortcut(block_type):
    torch.manual_seed(0)
    x = torch.rand(2, 16, 8, 8) + 0.5  # positive, so act(x) = x for ReLU
    outputs = {}
    for shortcut in ("zero_pad", "none"):
        block = block_type(16, 16, shortcut=shortcut, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU).eval()
        for module in block.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.zeros_(module.weight)  # the branch now outputs zero
        with torch.no_grad():
            outputs[shortcut] = block(x)
    assert torch.allclose(outputs["zero_pad"], x)  # what is left is the shortcut
    assert torch.count_nonzero(outputs["none"]) == 0  # nothing is left


def test_cutting_one_block_cuts_a_plain_net_but_not_a_residual_one():
    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    for name, depends_on_input in (("resnet20", True), ("plain20", False)):
        model = cnnlab.create_model(name, num_classes=10).eval()
        nn.init.zeros_(model.features.stage2[1].conv1.conv.weight)
        with torch.no_grad():
            differs = not torch.allclose(model(x1), model(x2))
        assert differs == depends_on_input, name


def expected_identity_output(block, x):
    """What a block whose branch is zero returns: (act of) the shortcut alone."""
    if block.is_preact:
        return x if block.shortcut is None else block.shortcut(block.preact(x))
    return block.act(x if block.shortcut is None else block.shortcut(x))


def block_inputs_outputs(model, x):
    records = []
    hooks = [b.register_forward_hook(lambda m, args, out: records.append((m, args[0], out)))
             for b in blocks_of(model)]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return records


@pytest.mark.parametrize(
    "name, norm",
    [("resnet18", "bn"), ("resnet50", "bn"), ("preact_resnet18", "bn"), ("preact_resnet50", "bn"),
     ("resnet20", "bn"), ("resnet20", "none"), ("preact_resnet18", "gn")],
)
def test_zero_init_residual_makes_every_block_start_as_its_shortcut(name, norm):
    x = torch.randn(2, 3, 32, 32)
    for flag in (True, False):
        torch.manual_seed(0)
        model = cnnlab.create_model(name, num_classes=10, norm=norm, zero_init_residual=flag).eval()
        records = block_inputs_outputs(model, x)
        assert len(records) == len(blocks_of(model))
        for block, block_in, block_out in records:
            with torch.no_grad():
                matches = torch.allclose(block_out, expected_identity_output(block, block_in), atol=1e-6)
            assert matches == flag, (name, norm, flag)
            if flag and block.shortcut is None:  # shapes kept: act(x) after the sum, x for pre-act
                assert torch.allclose(block_out, block_in if block.is_preact else torch.relu(block_in))


def test_zero_init_residual_on_a_plain_net_is_refused_rather_than_ignored(cli):
    # A plain net has no residual branch to zero: the option used to build the same net without a word
    with pytest.raises(cnnlab.CnnlabError, match="plain net .* has no residual blocks") as refused:
        cnnlab.create_model("plain20", num_classes=10, zero_init_residual=True)
    assert "resnet20 for plain20" in str(refused.value)
    torch.manual_seed(0)
    default = cnnlab.create_model("plain20", num_classes=10)
    torch.manual_seed(0)
    unflagged = cnnlab.create_model("plain20", num_classes=10, zero_init_residual=False)  # asks for nothing
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), unflagged.state_dict().values()))
    code, out, err = cli(["summary", "plain56,zero_init_residual=true", "--input", "3x32x32"])
    assert code == 2 and "has no residual blocks" in err and "Traceback" not in err
    with pytest.raises(cnnlab.CnnlabError, match="must be true or false"):
        cnnlab.create_model("resnet20", zero_init_residual="yes")  # a non-empty string is not taken for true


def test_zero_init_residual_is_taken_exactly_by_the_models_with_residual_blocks():
    from cnnlab.models._base import RESIDUAL_MODELS

    residual_families = {"resnet", "preact_resnet", "resnet_cifar", "preact_resnet_cifar", "convnext"}  # mobilenet: v2 only
    # preact_resnet1001 (1 to 2 s a build even on meta) is checked through preact_resnet164, its builder and blocks
    # with fewer of them, as in the registry-wide sweeps (tests/_zoo_sweep.py)
    for name in SWEPT:
        has_residual_blocks = model_info(name).family in residual_families or name == "mobilenet_v2"
        try:
            with torch.device("meta"):
                cnnlab.create_model(name, zero_init_residual=True)
        except cnnlab.CnnlabError as err:
            assert not has_residual_blocks, (name, str(err))
            assert "has no residual blocks" in str(err) and "Leave the option out" in str(err), name
        else:
            assert has_residual_blocks, name
            # the refusal's list of models that take it names this one (its name up to the depth)
            assert re.sub(r"\d.*$", "", name) in RESIDUAL_MODELS, name
        # false asks for nothing, on every model: refused nowhere (vgg16 used to say it "does not take" it)
        with torch.device("meta"):
            cnnlab.create_model(name, zero_init_residual=False)


@pytest.mark.parametrize("name", ["lenet5", "mobilenet_v1", "vgg11"])
def test_zero_init_residual_false_builds_the_default_model_without_residual_blocks(name, cli):
    with one_draw_of_each_weight():  # the values init_weights draws from the seed, once (vgg11: 119M head weights)
        torch.manual_seed(0)
        default = cnnlab.create_model(name, num_classes=10)
        torch.manual_seed(0)
        unflagged = cnnlab.create_model(name, num_classes=10, zero_init_residual=False)
    assert default.state_dict().keys() == unflagged.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), unflagged.state_dict().values()))
    with pytest.raises(cnnlab.CnnlabError, match="must be true or false"):
        cnnlab.create_model(name, zero_init_residual=0)  # checked as on the models that take it, not taken for false
    code, out, err = cli(["build", f"{name},zero_init_residual=false", "--input", "3x32x32", "--json"])
    assert code == 0, err
    code, out, err = cli(["build", f"{name},zero_init_residual=true", "--input", "3x32x32"])
    assert code == 2 and "has no residual blocks" in err and "does not take" not in err


@pytest.mark.parametrize("name", ["preact_resnet18", "preact_resnet50", "preact_resnet20"])
def test_preact_blocks_are_norm_act_conv(name):
    model = cnnlab.create_model(name, num_classes=10)
    blocks = blocks_of(model)
    assert blocks and all(isinstance(b, PREACT_TYPES) for b in blocks)
    for block in blocks:
        first = next(block.children())
        assert isinstance(first, NormAct)
        assert [type(m) for m in first] == [nn.BatchNorm2d, nn.ReLU]
        assert [type(m) for m in block.conv1] == [nn.Conv2d]  # its norm -> act is the shared `preact`
        later_convs = [block.conv2, block.conv3] if isinstance(block, PreActBottleneck) else [block.conv2]
        for layer in later_convs:
            assert [type(m) for m in layer] == [nn.BatchNorm2d, nn.ReLU, nn.Conv2d]
        assert not hasattr(block, "act")  # nothing after the addition
    # The stem is a bare conv (the first block normalises it); the trunk ends in norm -> act.
    assert [type(m) for m in model.features.stem] == [nn.Conv2d]
    assert [type(m) for m in model.features[-1]] == [nn.BatchNorm2d, nn.ReLU]
    # Behaviour: a post-act block's ReLU after the sum makes outputs non-negative; a pre-act one's
    # sum is not activated.
    records = block_inputs_outputs(model.eval(), torch.randn(2, 3, 32, 32))
    assert all((out < 0).any() for _, _, out in records)
    post = block_inputs_outputs(cnnlab.create_model("resnet18").eval(), torch.randn(2, 3, 32, 32))
    assert all((out >= 0).all() for _, _, out in post)


def test_resnext_groups_and_wide_widths():
    resnet = cnnlab.create_model("resnet50")
    resnext = cnnlab.create_model("resnext50_32x4d")
    wide = cnnlab.create_model("wide_resnet50_2")
    for block in blocks_of(resnext):
        assert block.conv2.conv.groups == 32
    pairs = list(zip(blocks_of(resnet), blocks_of(wide), blocks_of(resnext)))
    assert len(pairs) == 16
    for plain_block, wide_block, next_block in pairs:
        width = plain_block.conv2.conv.out_channels
        assert wide_block.conv2.conv.out_channels == 2 * width
        assert next_block.conv2.conv.out_channels == 2 * width  # 32 groups x 4 at planes 64 = 128
        assert wide_block.out_chs == next_block.out_chs == plain_block.out_chs == 4 * width


@pytest.mark.parametrize("name", NAMES)
def test_every_model_at_its_min_size_with_one_channel(name):
    info = model_info(name)
    size = info.min_size
    model = cnnlab.create_model(name, num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 1, size, size))
        assert model.forward_head(features).shape == (2, 10)
        model.reset_classifier(3)
        assert model.forward_head(features).shape == (2, 3)
        if info.family in ("resnet_cifar", "plain_cifar", "preact_resnet_cifar"):
            assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("name", ["resnet20", "plain20", "resnet32"])
def test_cifar_nets_at_other_class_counts(name):
    for num_classes in (2, 100):
        model = cnnlab.create_model(name, num_classes=num_classes).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 3, 28, 28)).shape == (2, num_classes)


def test_drop_path_rises_linearly_to_the_last_block_and_is_off_in_eval():
    model = cnnlab.create_model("resnet20", num_classes=10, drop_path_rate=0.3)
    rates = [b.drop_path.drop_prob for b in blocks_of(model)]
    assert rates == pytest.approx([0.3 * (i + 1) / 9 for i in range(9)])
    x = torch.randn(8, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    with pytest.raises(cnnlab.CnnlabError):
        cnnlab.create_model("plain20", drop_path_rate=0.1)


def test_drop_rate_puts_dropout_in_the_head():
    assert isinstance(cnnlab.create_model("resnet20", drop_rate=0.2).head, nn.Dropout)
    assert isinstance(cnnlab.create_model("resnet20").head, nn.Identity)


def test_resnet8_is_the_n1_member_counted_by_hand():
    # stem 3x3x3x16 + BN(16); one 16-block (2 convs of 3x3x16x16 + 2 BN); one 32-block (3x3x16x32,
    # 3x3x32x32, 2 BN(32)); one 64-block (3x3x32x64, 3x3x64x64, 2 BN(64)); fc 64x10 + 10. Option A: no shortcut weights.
    convs = 3 * 9 * 16 + 2 * 9 * 16 * 16 + 9 * 16 * 32 + 9 * 32 * 32 + 9 * 32 * 64 + 9 * 64 * 64
    norms = 2 * (16 + 2 * 16 + 2 * 32 + 2 * 64)
    assert num_params(cnnlab.create_model("resnet8", num_classes=10)) == convs + norms + 64 * 10 + 10
