"""cnnlab.summary against the lecture's AlexNet table, torch's FlopCounterMode, and hand counts."""


import json

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import cnnlab
from cnnlab.analysis import summary
from cnnlab.errors import CnnlabError, InputTooSmallError
from cnnlab.models import model_info
from _zoo_sweep import SWEPT


def row(result, name):
    return next(r for r in result.rows() if r.name == name)


def test_alexnet_reproduces_the_lecture_table():
    result = summary("alexnet", (3, 227, 227))
    conv1 = row(result, "features.0.conv")
    assert conv1.output_shape == (64, 56, 56)
    assert conv1.memory == 784 * 1024  # 64*56*56 floats * 4 bytes = 784 KB
    assert conv1.params == 23296
    assert conv1.macs == 72855552  # 64*56*56 outputs x 3*11*11 multiply-adds
    pool1 = row(result, "features.1")
    assert pool1.output_shape == (64, 27, 27) and pool1.pool_ops == 419904  # 64*27*27 x 3*3
    fc6 = row(result, "head.1")
    assert fc6.macs == 9216 * 4096
    assert fc6.params == 9216 * 4096 + 4096  # the notes' 37,725,832 is a typo
    # every other conv row by the formula C_out*H'*W'*C_in*K*K
    convs = [m for m in result.rows() if m.type == "Conv2d"]
    model = cnnlab.create_model("alexnet")
    modules = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for r, m in zip(convs, modules):
        c_out, h, w = r.output_shape
        assert r.macs == c_out * h * w * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        assert r.memory == c_out * h * w * 4
    assert [r.receptive_field.size[0] for r in convs] == [11, 51, 99, 131, 163]


@pytest.mark.parametrize("name", SWEPT)  # preact_resnet1001 through preact_resnet164 (tests/_zoo_sweep.py)
def test_macs_equal_flop_counter_and_params_equal_numel(name):
    info = model_info(name)
    with torch.device("meta"):
        model = cnnlab.create_model(name).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *info.default_input, device="meta"))
    result = summary(model, info.default_input)
    assert result.macs == counter.get_total_flops() // 2
    assert result.total_params == sum(p.numel() for p in model.parameters())
    assert sum(r.params for r in result.rows()) == result.total_params  # nothing counted twice or lost


def test_any_torchvision_module_and_grayscale():
    model = torchvision.models.resnet18()
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 1, 64, 64))
    result = summary(model, (1, 64, 64))
    assert result.macs == counter.get_total_flops() // 2
    assert result.total_params == sum(p.numel() for p in model.parameters())
    # torchvision's BasicBlock calls its one ReLU module twice: two rows, parameters once.
    assert sum(r.name == "layer1.0.relu" for r in result.rows()) == 2


def test_training_memory_counts_each_optimizers_state_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))  # 40 + 290 parameters
    model[0].weight.requires_grad_(False)  # 36 frozen: no gradient, no state
    result = summary(model, (1, 8, 8))
    fixed = result.activation_memory + 4 * 330  # every parameter in fp32
    trainable = 330 - 36
    assert result.training_memory("sgd") == fixed + 4 * 2 * trainable  # gradient + momentum buffer
    assert result.training_memory("muon") == fixed + 4 * 2 * trainable  # gradient + momentum buffer
    assert result.training_memory("adamw") == fixed + 4 * 3 * trainable  # gradient + two moments


def test_the_users_model_keeps_its_train_and_eval_flags():
    model = cnnlab.create_model("resnet20").train()
    model.features.stem.norm.eval()  # a frozen BatchNorm inside a model being trained
    summary(model, (3, 32, 32))
    assert model.training and model.features.stage1.training
    assert not model.features.stem.norm.training


def test_half_precision_model():
    model = cnnlab.create_model("resnet20").half()
    assert summary(model, (3, 32, 32)).macs == summary("resnet20", (3, 32, 32)).macs


def count_with_flop_counter(model, size):
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *size))
    return counter.get_total_flops() // 2


def test_transposed_conv_and_upsampling():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1),
        nn.Upsample(scale_factor=2), nn.Conv2d(4, 2, 3, padding=1),
    )
    result = summary(model, (3, 16, 16))
    assert result.macs == count_with_flop_counter(model, (3, 16, 16))
    assert row(result, "0").receptive_field.size == (3, 3)
    assert row(result, "1").receptive_field is None  # not tracked past a transposed conv


def test_attention_sees_every_position_and_adaptive_pools_are_windows():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)  # field 4, jump 4
            self.pool = nn.AdaptiveAvgPool2d(2)  # 4x4 -> 2x2: a 2x2 window with stride 2

        def forward(self, x):
            tokens = self.embed(x).flatten(2)  # (B, 8, 16)
            scores = torch.bmm(tokens.transpose(1, 2), tokens)  # (B, 16, 16)
            return scores, self.pool(self.embed(x))

    result = summary(Attention(), (3, 16, 16))
    assert result.root.receptive_field.is_global  # the scores: every token sees every token
    assert result.root.macs == 16 * 8 * 16
    pool = row(result, "pool")
    assert pool.receptive_field.size == (8, 8) and pool.receptive_field.jump == (8, 8)  # 4 + (2-1)*4


def test_an_adaptive_pool_that_enlarges_the_map_keeps_a_jump():
    """vgg11 at 64x64: the trunk's 2x2 map is pooled to 7x7; neighbours are 0 or 1 input apart and output 3
    reads both inputs. The jump stays 32 (it was 2 // 7 = 0) and the field grows by one jump."""
    pool = row(summary("vgg11", (3, 64, 64)), "global_pool")
    assert pool.receptive_field.jump == (32, 32)
    assert pool.receptive_field.size == (150 + 32, 150 + 32)


def test_conv1d_layers_are_counted_and_printable():
    from rich.console import Console

    from cnnlab.analysis.report import summary_table

    class Sequence1d(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(3, 4, 3)

        def forward(self, x):
            return self.conv(x.flatten(2)) + self.conv(x.flatten(2))  # (B, 3, H*W) -> (B, 4, H*W-2)

    model = Sequence1d()
    result = summary(model, (3, 4, 4))
    assert result.macs == count_with_flop_counter(model, (3, 4, 4))
    assert row(result, "conv").receptive_field is None
    Console(file=open("/dev/null", "w")).print(summary_table(result))


@pytest.mark.parametrize(
    "args, message",
    [
        ((nn.Conv2d(3, 4, 3), 224), "input_size must be"),
        ((nn.Conv2d(3, 4, 3), (3, -1, 4)), "input_size must be"),
        ((nn.Conv2d(3, 4, 3), (3, 8.7, 8)), "input_size must be"),
        (("not a model at all", (3, 8, 8)), "Unknown model"),
        ((42, (3, 8, 8)), "model name or an nn.Module"),
    ],
)
def test_bad_arguments_are_cnnlab_errors(args, message):
    with pytest.raises(CnnlabError, match=message):
        summary(*args)
    with pytest.raises(CnnlabError, match="batch must be"):
        summary(nn.Conv2d(3, 4, 3), (3, 8, 8), batch=2.5)
    with pytest.raises(CnnlabError, match="already built"):
        summary(nn.Conv2d(3, 4, 3), (3, 8, 8), num_classes=10)


def test_zoo_names_take_model_options():
    result = summary("resnet20", in_chans=1, num_classes=10)
    assert result.input_size == (1, 32, 32)
    assert row(result, "fc").output_shape == (10,)


def test_a_forward_that_reads_values_is_explained():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum().item() > 0 else x

    with pytest.raises(CnnlabError, match="DataDependent cannot be analysed from shapes alone in its own forward: "):
        summary(DataDependent(), (3, 8, 8))  # it said "in layer '' (DataDependent)"
    with pytest.raises(CnnlabError, match=r"from shapes alone in layer '1' \(DataDependent\): "):
        summary(nn.Sequential(nn.Conv2d(3, 3, 1), DataDependent()), (3, 8, 8))


def test_a_forward_with_two_tensors_is_refused():
    class Pair(nn.Module):
        def forward(self, x, y):
            return x + y

    with pytest.raises(CnnlabError, match="single image tensor"):
        summary(Pair(), (3, 8, 8))


@pytest.mark.parametrize("name", ["resnet8", "mlp"])
def test_a_name_is_built_for_the_inputs_channels_as_the_cli_builds_it(name, cli):
    """summary(NAME, (1, 28, 28)) is `cnnlab summary NAME --input 1x28x28`: a grayscale model, not an RGB
    one refusing its input."""
    result = summary(name, (1, 28, 28))
    code, out, _ = cli(["summary", name, "--input", "1x28x28", "--json"])
    assert code == 0
    assert result.to_dict() == json.loads(out)
    with torch.device("meta"):
        gray = cnnlab.create_model(name, in_chans=1)
    assert result.total_params == sum(p.numel() for p in gray.parameters())
    assert summary(name, (1, 28, 28), in_chans=1).total_params == result.total_params
    with pytest.raises(CnnlabError, match=r"1 channels .* in_chans=3 .*make them agree"):
        summary(name, (1, 28, 28), in_chans=3)


def test_model_options_named_like_summarys_own_arguments():
    """The mlp's input_size option shares its name with summary's input_size: model_options passes it."""
    import numpy as np

    result = summary("mlp", (1, 32, 32), model_options={"input_size": 28})
    assert row(result, "features.layer1.linear").params == 28 * 28 * 256 + 256
    assert result.input_size == (1, 32, 32)
    # without an input, the side the first layer reads (not the paper's 32, pooled to 28)
    assert summary("mlp", model_options={"input_size": 28, "in_chans": 1}).input_size == (1, 28, 28)
    assert summary("resnet8", model_options={"num_classes": 10}).to_dict() == summary("resnet8", num_classes=10).to_dict()
    with pytest.raises(CnnlabError, match="num_classes given both"):
        summary("resnet8", model_options={"num_classes": 10}, num_classes=10)
    with pytest.raises(CnnlabError, match="already built"):
        summary(nn.Conv2d(3, 4, 3), (3, 8, 8), model_options={"input_size": 28})
    # a numpy integer is a whole number here as in input_size
    assert summary("resnet8", (1, 28, 28), batch=np.int64(2)).batch == 2


@pytest.mark.parametrize("in_size, out_size", [((2, 2), (7, 7)), ((5, 7), (3, 4)), ((13, 13), (6, 6)), ((9, 4), (1, 1))])
def test_adaptive_pool_ops_sum_torchs_windows(in_size, out_size):
    """Pooling ops = the inputs each output reads, summed: read from which inputs torch's adaptive average
    pool makes each output depend on. Windows vary in size where the output does not divide the input
    (2 -> 7: windows of 1 and 2), so one ceil(H / H') per output miscounts them."""
    x = torch.zeros(1, 1, *in_size)
    jacobian = torch.autograd.functional.jacobian(lambda t: nn.functional.adaptive_avg_pool2d(t, out_size), x)
    reads = int(jacobian.count_nonzero())
    channels, batch = 3, 2
    for pool in (nn.AdaptiveAvgPool2d(out_size), nn.AdaptiveMaxPool2d(out_size)):
        result = summary(nn.Sequential(pool), (channels, *in_size), batch=batch)
        assert result.pool_ops == batch * channels * reads


@pytest.mark.parametrize("depth", [0, -1, "2", 1.5, True])
def test_rows_refuse_a_depth_that_is_not_a_level(depth):
    """As --depth is refused below 1 on the command line, rows() and to_dict() refuse it with a message
    instead of folding the model into one unnamed row or failing on a comparison."""
    result = summary("resnet8")
    with pytest.raises(CnnlabError, match="depth must be a whole number of at least 1"):
        result.rows(depth)
    with pytest.raises(CnnlabError, match="depth must be a whole number of at least 1"):
        result.to_dict(depth)
    assert [r.name for r in result.rows(1)] == ["features", "global_pool", "head", "fc"]


@pytest.mark.parametrize("name, options", [("resnet8", {"in_chans": 1, "num_classes": 10}),
                                           ("mlp", {"in_chans": 1, "input_size": 28}), ("alexnet", {})])
def test_a_model_create_model_built_has_its_default_input(name, options):
    """create_model records the name and channels, so summary(model) analyses it at the input
    summary(NAME) would use, instead of refusing it as a model outside the zoo."""
    model = cnnlab.create_model(name, **options)
    result = summary(model)
    assert result.to_dict() == summary(name, model_options=options).to_dict()
    assert result.input_size[0] == options.get("in_chans", 3)
    with pytest.raises(CnnlabError, match=r"Give the input size \(C, H, W\) to analyse this Conv2d"):
        summary(nn.Conv2d(3, 4, 3))


class ReadsAChildsWeights(nn.Module):
    """As torch's MultiheadAttention reads out_proj: the child's weights are used, its forward never called."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        x = self.conv(x).permute(0, 2, 3, 1)  # (B, H, W, 4)
        return nn.functional.linear(x, self.proj.weight, self.proj.bias)


def test_a_collapsed_row_holds_the_parameters_of_children_its_forward_read_without_calling():
    """--depth folds a block into one row with its subtree's numbers: a child the block never called (tv:vit's
    out_proj, tv:swin's qkv) is counted in it, not shown as a second row of the same name marked not run."""
    model = nn.Sequential(ReadsAChildsWeights(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    model.unused = nn.Sequential(nn.Linear(3, 3))  # never run, nor was its parent: a row of its own
    model.forward = lambda x: model[2](model[1](model[0](x)))
    result = summary(model, (3, 8, 8))
    block = sum(p.numel() for p in model[0].parameters())
    rows = result.rows(1)
    assert [(r.name, r.ran) for r in rows] == [("0", True), ("1", True), ("2", True), ("unused", False)]
    assert rows[0].params == block
    assert rows[0].macs == 4 * 6 * 6 * 3 * 3 * 3 + 6 * 6 * 4 * 4  # the conv, and the linear on 36 positions
    assert sum(r.params for r in rows) == result.total_params
    # every layer: the child is listed on its own as a module whose forward was not called
    assert [(r.name, r.ran) for r in result.rows() if not r.ran] == [("0.proj", False), ("unused.0", False)]
    # the call tree is left as it was: folding again gives the same rows
    assert [r.params for r in result.rows(1)] == [r.params for r in rows]


@pytest.mark.parametrize("depth", [1, 3, 4])
def test_torchvisions_vit_collapses_to_one_row_per_block(depth):
    result = summary("tv:vit_b_32")
    names = [r.name for r in result.rows(depth)]
    assert len(names) == len(set(names))
    assert all(r.ran for r in result.rows(depth))
    assert sum(r.params for r in result.rows(depth)) == result.total_params


def test_a_grayscale_input_to_an_rgb_model_names_both_channel_counts():
    """Torch's own words ("Invalid channel dimensions") do not say which numbers disagree or what to do."""
    with pytest.raises(CnnlabError, match=r"layer 'conv1' \(Conv2d\) reads 3 channels and receives 1 .*Give it "
                                          r"3-channel images, or a model whose first conv reads 1 channel .*in_chans=1"):
        summary(torchvision.models.resnet18(), (1, 64, 64))
    with pytest.raises(CnnlabError, match=r"reads 1 channel and receives 3 .*in_chans=3"):
        summary(cnnlab.create_model("resnet8", in_chans=1), (3, 32, 32))
    # a layer inside the network that gets the wrong channels is not the input's fault
    broken = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(5, 4, 3))
    with pytest.raises(CnnlabError, match=r"layer '1' \(Conv2d\) reads 5 channels and receives 4 .*Check the "
                                          r"channels the layers before it pass on"):
        summary(broken, (3, 8, 8))


def test_an_example_batch_given_as_the_input_size_is_answered_with_its_shape():
    """Its repr, many lines of zeros, was the message."""
    with pytest.raises(CnnlabError) as refused:
        summary("resnet8", torch.zeros(2, 3, 32, 32))
    assert str(refused.value).endswith("got a tensor of shape (2, 3, 32, 32): give its shape without the batch "
                                       "(x.shape[1:]).") and "\n" not in str(refused.value)
    assert summary("resnet8", torch.zeros(2, 3, 32, 32).shape[1:]).input_size == (3, 32, 32)


def test_a_failure_at_a_size_the_model_takes_is_not_blamed_on_the_size():
    """The message ended "Use an input size the model supports: at least 8x8" for a 32x32 input, which it takes."""
    class Net(nn.Module):
        min_size = 8  # what cnnlab's models record as the smallest side they take

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(10, 2)  # reads 10 features where the conv gives 4x30x30

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    with pytest.raises(CnnlabError) as caught:
        summary(Net(), (3, 32, 32))
    message = str(caught.value)
    assert "layer 'fc' (Linear) failed on a tensor of shape 1x3600" in message
    assert "within the sizes the model records that it takes, so the cause lies in the model" in message
    assert "Use an input size" not in message and "an option it was built with" not in message
    # a zoo model's options are named as the likely cause, as `cnnlab build` names them
    zoo = cnnlab.create_model("resnet8", num_classes=3)
    zoo.fc = nn.Linear(7, 3)  # as an option out of range would leave it: the input fits, a layer does not
    with pytest.raises(CnnlabError, match="within the sizes the model takes, so the cause lies elsewhere: an option"):
        summary(zoo, (3, 32, 32))
    # below its minimum the size is what to change, and the minimum is named
    with pytest.raises(CnnlabError, match=r"Use an input size the model supports: at least 8x8.* or check in_chans"):
        summary(Net(), (3, 6, 6))


def test_lazy_layers_before_their_first_forward_are_refused_with_what_to_do():
    """Their parameters have no shape to count yet; the message said the input did not fit and to check in_chans."""
    model = nn.Sequential(nn.LazyConv2d(4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(CnnlabError, match=r"2 lazy layers whose parameters have no shape yet \('0', '3'\).*"
                                          r"model\(torch\.zeros\(1, 3, 8, 8\)\)"):
        summary(model, (3, 8, 8))
    assert isinstance(model[0].weight, nn.parameter.UninitializedParameter)  # left as it was
    model(torch.zeros(1, 3, 8, 8))
    result = summary(model, (3, 8, 8))
    assert result.total_params == 4 * 3 * 3 * 3 + 4 + 4 * 6 * 6 * 2 + 2


def test_where_the_receptive_field_stops_being_followed_is_said():
    """The rows after an upsampling have an empty RF column; the totals and the JSON say which layer stopped it."""
    from cnnlab.analysis.report import totals_lines

    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Upsample(scale_factor=2),
                          nn.Conv2d(8, 2, 3, padding=1), nn.ConvTranspose2d(2, 2, 2, stride=2))
    result = summary(model, (3, 16, 16))
    assert [r.receptive_field is None for r in result.rows()] == [False, True, True, True]
    assert result.field_not_followed == ["'1' (Upsample)"]  # the first layer that stopped it, not every later one
    assert result.to_dict()["receptive_field_not_followed_past"] == ["'1' (Upsample)"]
    assert any("not followed past layer '1' (Upsample)" in line for line in totals_lines(result))
    plain = summary("resnet8")
    assert plain.field_not_followed == [] and plain.to_dict()["receptive_field_not_followed_past"] == []
    assert not any("not followed" in line for line in totals_lines(plain))


class GlobalPoolsAsReductions(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.conv(x)  # (B, 4, 6, 6)
        peak = x.amax((2, 3))  # global max pooling
        total = x.sum(dim=(-1, -2), keepdim=True).flatten(1)  # global sum pooling, (B, 4)
        return self.fc(torch.cat([peak, total], 1))


def test_global_pooling_written_as_a_reduction_is_pooling():
    """x.amax((2, 3)) is global max pooling as x.mean((2, 3)) is global average pooling: pooling ops of
    H*W per output, and a field that sees the whole input (it was element ops and a 3x3 field)."""
    result = summary(GlobalPoolsAsReductions(), (3, 8, 8), batch=2)
    root = result.root
    assert root.pool_ops == 2 * (2 * 4 * 6 * 6)  # two pools, each reading all 6x6 positions of 4 maps of 2 images
    assert root.element_ops == 0

    class GlobalMax(nn.Module):
        def forward(self, x):
            return x.amax((2, 3))

    pooled = row(summary(nn.Sequential(nn.Conv2d(3, 4, 3), GlobalMax()), (3, 8, 8)), "1")
    assert pooled.receptive_field.is_global and pooled.pool_ops == 4 * 6 * 6
    # a reduction over channels (CBAM's spatial attention) is not pooling: one element op per output, the field kept

    class ChannelMax(nn.Module):
        def forward(self, x):
            return x.amax(1, keepdim=True)

    channel_max = summary(nn.Sequential(nn.Conv2d(3, 4, 3), ChannelMax()), (3, 8, 8))
    assert channel_max.pool_ops == 0 and row(channel_max, "1").element_ops == 6 * 6
    assert row(channel_max, "1").receptive_field.size == (3, 3)


def test_a_compiled_model_is_analysed_as_the_model_it_wraps():
    """Through torch.compile's wrapper dynamo traced the forward under the analysis (seconds, a page of
    warnings) and every row was named '_orig_mod.*'."""
    import warnings

    model = cnnlab.create_model("resnet8", in_chans=1)
    compiled = torch.compile(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dynamo's graph-break warnings would fail the test
        result = summary(compiled, (1, 28, 28))
    assert result.to_dict() == summary(model, (1, 28, 28)).to_dict()
    assert not any(r.name.startswith("_orig_mod") for r in result.rows())
    assert summary(compiled).input_size == (1, 32, 32)  # the name's default input, read through the wrapper


def test_a_module_whose_weights_the_forward_read_without_calling_it_is_told_from_dead_weights():
    """torch's MultiheadAttention computes with out_proj.weight without calling out_proj: those rows said
    "not run" as GoogLeNet's auxiliary heads do, whose weights are unused in eval mode."""
    from rich.console import Console

    from cnnlab.analysis.report import summary_table

    vit = summary("tv:vit_b_32")
    out_proj = [r for r in vit.rows() if r.name.endswith("self_attention.out_proj")]
    assert len(out_proj) == 12 and all(not r.ran and r.weights_read for r in out_proj)
    assert all(r["weights_read"] for r in vit.to_dict()["rows"] if r["name"].endswith("out_proj"))
    googlenet = summary("googlenet")
    aux = [r for r in googlenet.rows() if not r.ran]
    assert aux and not any(r.weights_read for r in aux)
    console = Console(width=400, record=True, file=open("/dev/null", "w"))
    console.print(summary_table(vit))
    assert console.export_text().count("(used, not called)") == 12
    console.print(summary_table(googlenet, depth=1))
    assert "(not run)" in console.export_text() and "used, not called" not in console.export_text()


def test_parameters_the_forward_never_reads_are_counted_and_named():
    """A parameter on a module that ran but that its forward skips was counted with the rest and nowhere
    said to be unused; the weights of modules that did not run are listed with it."""
    from cnnlab.analysis.report import totals_lines

    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, bias=False)
            self.gain = nn.Parameter(torch.ones(4, 1, 1))  # never used below
            self.spare = nn.Linear(4, 2)  # never called
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = self.conv(x).mean((2, 3))
            return nn.functional.linear(x, self.fc.weight) + self.fc.bias  # read, not called

    result = summary(Skips(), (3, 8, 8))
    assert result.unused_params == {"gain": 4, "spare.weight": 8, "spare.bias": 2}
    assert result.to_dict()["unused_params"] == result.unused_params
    assert any(line.startswith("unused parameters    14 in 3 tensors") and "gain, spare.weight, spare.bias" in line
               for line in totals_lines(result))
    plain = summary("resnet8")
    assert plain.unused_params == {} and not any("unused" in line for line in totals_lines(plain))
    googlenet = summary("googlenet")  # the auxiliary heads do not run in eval mode
    assert sum(googlenet.unused_params.values()) == sum(r.params for r in googlenet.rows() if not r.ran)


def test_ops_that_only_move_data_count_memory_not_element_ops():
    """roll, pixel shuffle, indexing, flips and copies of permuted maps compute nothing: they were counted as
    element ops, which the conventions describe as arithmetic (norms, activations, adds)."""

    class Shuffles(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.register_buffer("order", torch.tensor([1, 0]))

        def forward(self, x):  # x: (B, 3, 4, 4)
            x = self.conv(x)  # (B, 8, 4, 4)
            x = torch.roll(x, shifts=1, dims=2)  # Swin's shifted windows
            x = nn.functional.pixel_shuffle(x, 2)  # (B, 2, 8, 8)
            x = x[:, self.order]  # aten.index
            x = x.flip(-1).permute(0, 2, 3, 1).contiguous()  # (B, 8, 8, 2), a copy
            return x.relu()  # the one op that computes

    batch = 2
    result = summary(Shuffles(), (3, 4, 4), batch=batch)
    elements = batch * 8 * 4 * 4  # every map above has this many elements
    assert result.element_ops == elements  # the relu only
    assert result.macs == elements * 3 * 3 * 3
    # every new output is memory, the moves included: conv, roll, pixel shuffle, index, flip, copy, relu
    assert result.activation_memory == 7 * elements * 4


class BlocksInAList(nn.Module):
    """A stem, three blocks held in an nn.ModuleList and run in a loop, a head: the shape of a ViT or MaxViT."""

    def __init__(self, interleaved: bool = False):
        super().__init__()
        self.interleaved = interleaved
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()) for _ in range(3))
        self.mid = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        for index, block in enumerate(self.blocks):
            x = block(x)
            if self.interleaved and index == 0:
                x = self.mid(x)
        if not self.interleaved:
            x = self.mid(x)
        return self.head(x.mean((2, 3)))


def test_blocks_in_a_module_list_merge_into_one_row_under_depth():
    """--depth 1 showed blocks.0, blocks.1, ... for blocks held in an nn.ModuleList (which the forward never
    calls); they merge into one `blocks` row by module path, as an nn.Sequential's children do."""
    result = summary(BlocksInAList(), (3, 8, 8), batch=2)
    blocks = [r for r in result.rows() if r.name.startswith("blocks.")]
    assert [r.name for r in result.rows(depth=1)] == ["", "stem", "blocks", "mid", "head"]  # '' owns the mean
    merged = row_at(result, "blocks", depth=1)
    assert merged.type == "ModuleList" and merged.output_shape == (8, 8, 8)
    for attr in ("params", "macs", "element_ops", "memory"):
        assert getattr(merged, attr) == sum(getattr(r, attr) for r in blocks) > 0
    assert merged.receptive_field.size == (9, 9)  # the stem's 3 and three more 3x3 convs: the last block's field
    assert [r.name for r in result.rows(depth=2)][2:5] == ["blocks.0", "blocks.1", "blocks.2"]
    assert "blocks" not in [r.name for r in result.rows()]  # every layer: the list adds no row of its own
    for depth in (None, 1, 2):  # the JSON rows add up to its totals at every depth
        data = result.to_dict(depth)
        for key in ("params", "macs", "pool_ops", "element_ops"):
            assert sum(r[key] for r in data["rows"]) == data["totals"][key]
        assert sum(r["memory"] for r in data["rows"]) == data["totals"]["activation_memory_bytes"]
    # blocks run apart from each other keep the order of execution: one row per run of consecutive blocks
    apart = summary(BlocksInAList(interleaved=True), (3, 8, 8))
    assert [r.name for r in apart.rows(depth=1)] == ["", "stem", "blocks", "mid", "blocks", "head"]
    assert [r.params for r in apart.rows(depth=1) if r.name == "blocks"] == [584, 2 * 584]


def row_at(result, name, depth):
    return next(r for r in result.rows(depth) if r.name == name)


def jit_script(module):
    """torch.jit.script, past a torch bug that made the test below fail now and then in the full suite.

    torch.jit's builtin table is keyed by id(). torch.compile's first use re-creates two operator objects
    (torch._ops._refresh_packet) and frees the old ones, whose ids stay in the table. A module attribute that Python
    later places at a freed address is then scripted as that operator: Conv2d's 4-tuple
    `_reversed_padding_repeated_twice` has the freed objects' size, and scripting failed with "builtin cannot be used
    as a value". An entry found for a value that cannot be called is such a dead entry, so it is dropped."""
    from torch.jit._builtins import _get_builtin_table

    table = _get_builtin_table()
    for layer in module.modules():
        for value in vars(layer).values():
            if not callable(value):
                table.pop(id(value), None)
    return torch.jit.script(module)


@pytest.mark.filterwarnings("ignore:`torch.jit")  # torch marks torch.jit.script and trace deprecated
@pytest.mark.parametrize("script", ["script", "trace"])
def test_a_torchscript_module_is_one_row_and_says_so(script):
    """Module hooks do not fire inside TorchScript, so every operation went to the scripted module's row and its
    layers were listed as "not run" with their parameters, silently: the one row is now said to be why."""
    from cnnlab.analysis.report import totals_lines

    eager = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    scripted = jit_script(eager) if script == "script" else torch.jit.trace(eager, torch.zeros(1, 3, 8, 8))
    expected = summary(eager, (3, 8, 8)).totals()
    result = summary(scripted, (3, 8, 8))
    assert result.totals() == expected
    [only] = result.rows()
    assert only.ran and only.type == "Sequential" and only.params == expected["params"]
    assert result.script_modules == ["the model (Sequential)"]
    assert result.to_dict()["script_modules"] == ["the model (Sequential)"]
    assert any(line.startswith("TorchScript          the model (Sequential) runs its layers in the TorchScript")
               for line in totals_lines(result))

    class PartlyScripted(nn.Module):  # a scripted block inside a Python model: the model's own layers stay rows
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 3, 1)
            self.block = scripted

        def forward(self, x):
            return self.block(self.stem(x))

    part = summary(PartlyScripted(), (3, 8, 8))
    assert [(r.name, r.params) for r in part.rows()] == [("stem", 12), ("block", expected["params"])]
    assert part.script_modules == ["'block' (Sequential)"]
    plain = summary(nn.Sequential(jit_script(nn.Conv2d(3, 3, 1)), nn.ReLU()), (3, 8, 8))
    assert plain.script_modules == [] and [r.type for r in plain.rows()] == ["Conv2d", "ReLU"]  # no layers inside
    assert not any(line.startswith("TorchScript") for line in totals_lines(summary(eager, (3, 8, 8))))


def test_a_module_of_ones_own_too_small_for_its_input_is_named_without_zoo_advice():
    """A bare layer is the model: the message names it (not layer '?'), and offers no zoo model as the fix."""
    with pytest.raises(InputTooSmallError) as refused:
        cnnlab.summary(nn.Conv2d(3, 4, 5), (3, 2, 2))
    message = str(refused.value)
    assert "at its own Conv2d, which receives a 2x2 feature map" in message and "'?'" not in message
    assert "input_size in Python" in message and "pick a model made for small images" not in message
    with pytest.raises(InputTooSmallError, match="pick a model made for small images"):
        cnnlab.summary("lenet5", (1, 2, 2))  # a zoo model: another one may be the fix


def test_a_norm_without_running_statistics_asks_for_a_batch_of_two_and_a_run_writes_its_summary(tmp_path):
    """BatchNorm without running statistics uses the batch's in eval mode too: at a 1x1 map one image failed, and
    the message told a 32x32 input to use "at least 32x32"; a run stopped there, before its first epoch."""
    from types import SimpleNamespace

    from cnnlab.errors import BatchOfOneError
    from cnnlab.train.engine import _write_summary

    from cnnlab.config import ModelConfig
    from cnnlab.run import build_model

    model = build_model(ModelConfig(name="resnet18", norm="bn", norm_options={"track_running_stats": False}),
                        num_classes=10, in_chans=1)
    with pytest.raises(BatchOfOneError, match=r"'features.stage4.0.conv1.norm' \(BatchNorm2d\) normalises with the "
                                              r"batch's own statistics.*1x512x1x1 input.*--batch 2"):
        summary(model, (1, 32, 32))
    assert summary(model, (1, 32, 32), batch=2).total_params == sum(p.numel() for p in model.parameters())
    _write_summary(model, SimpleNamespace(image_size=32), tmp_path / "summary.txt")
    text = (tmp_path / "summary.txt").read_text()
    assert "resnet18 at 1x32x32, batch 2" in text
    # the run's page reads MACs per image off those totals: the batch's, halved (it showed twice the figure)
    from cnnlab.report.runs import _summary_totals

    per_image = summary(cnnlab.create_model("resnet18", in_chans=1, num_classes=10), (1, 32, 32)).macs
    assert _summary_totals(text)[1] == per_image
