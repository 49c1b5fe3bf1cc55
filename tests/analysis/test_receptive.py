"""cnnlab.receptive_field against hand-computed fields and the receptive-field column of cnnlab.summary."""

import numpy as np
import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.analysis import receptive_field, summary
from cnnlab.analysis import receptive
from cnnlab.analysis.receptive import adaptive_window
from cnnlab.errors import CnnlabError, InputTooSmallError
from cnnlab.layers import ConvNormAct
from cnnlab.models import build_on_meta, model_info


def sizes(fields):
    return [None if f.is_global else f.size[0] for f in fields]


def expected_stack(layers) -> list[int]:
    """r_out = r_in + (k - 1) * d * j_in, j_out = j_in * s, for (kernel, stride, dilation) triples."""
    field, jump, out = 1, 1, []
    for kernel, stride, dilation in layers:
        field += (kernel - 1) * dilation * jump
        jump *= stride
        out.append(field)
    return out


def test_three_3x3_convs_see_7x7():
    assert sizes(receptive_field([(3, 1)] * 3)) == [3, 5, 7]
    assert sizes(receptive_field([[3, 1]] * 3)) == [3, 5, 7]  # a list is a layer too, not "no layer"
    assert sizes(receptive_field([(3, 1), (2, 2), (3, 1, 2)])) == expected_stack([(3, 1, 1), (2, 2, 1), (3, 1, 2)])
    assert receptive_field([(np.int64(3), 1)])[0].size == (3, 3)  # numpy integers are whole numbers
    assert receptive_field([((3, 5), 1)])[0].size == (3, 5)  # an (h, w) kernel


def test_blocks_are_walked_not_skipped():
    """A ConvNormAct is a conv: its field grows (it used to pass the field on, giving 1, 2, 2, 4, ...)."""
    features = cnnlab.create_model("vgg11").features
    fields = receptive_field(features)
    assert len(fields) == len(features)
    # conv3 (stride 1), pool2 (stride 2), conv3, pool2, ...: the stack's own kernels and strides
    triples = []
    for layer in features:
        if isinstance(layer, ConvNormAct):
            triples.append((layer.conv.kernel_size[0], layer.conv.stride[0], layer.conv.dilation[0]))
        else:
            triples.append((layer.kernel_size, layer.stride, 1))
    assert sizes(fields) == expected_stack(triples)
    assert sizes(fields)[:4] == [3, 4, 8, 10]
    assert fields[-1].jump == (32, 32)  # five 2x2 pools of stride 2


def test_a_block_inside_a_block_and_activations():
    inner = nn.Sequential(nn.Conv2d(1, 1, 3, dilation=2), nn.BatchNorm2d(1))
    block = nn.Sequential(nn.Conv2d(1, 1, 3), nn.ReLU(), inner)
    assert sizes(receptive_field([block, nn.Dropout(), nn.MaxPool2d(2)])) == [3 + 4, 7, 8]


# Zoo networks whose trunk is a plain stack; the others (residual, Inception, dense blocks) are refused below.
PLAIN = ["lenet5", "alexnet", "zfnet", "vgg11", "vgg16_bn", "vgg_mini", "nin", "mobilenet_v1", "mlp"]


@pytest.mark.parametrize("name", PLAIN)
def test_equals_the_summary_column(name):
    """One field per trunk unit and the global pool, equal to the summary's row of that unit (depth 2)."""
    info = model_info(name)
    model = build_on_meta(name)
    units = [f"features.{n}" for n, _ in model.features.named_children()] + ["global_pool"]
    fields = receptive_field([*model.features, model.global_pool], input_size=info.default_input)
    rows = {r.name: r for r in summary(name).rows(depth=2)}
    assert [str(f) for f in fields] == [str(rows[unit].receptive_field) for unit in units]
    assert [f.jump for f in fields] == [rows[unit].receptive_field.jump for unit in units]


def test_vgg_global_pool_is_a_window_pool_at_224():
    """VGG pools its 7x7 map to 7x7 (a window of 1): the field stays 150, as the summary says, not 'all'."""
    model = cnnlab.create_model("vgg11")
    fields = receptive_field([*model.features, model.global_pool], input_size=(224, 224))
    assert fields[-1].size == (150, 150)
    assert str(row_of(summary("vgg11"), "global_pool").receptive_field) == "150"
    # at 64x64 the map is 2x2 and AdaptiveAvgPool2d(7) enlarges it: output 3 averages both inputs (torch's
    # windows run from floor(i * 2 / 7) to ceil((i + 1) * 2 / 7)), so its field is one jump wider
    small = receptive_field([*model.features, model.global_pool], input_size=(3, 64, 64))
    assert small[-1].size == (150 + 32, 150 + 32) and small[-1].jump == (32, 32)
    assert str(small[-1]) == str(row_of(summary("vgg11", (3, 64, 64)), "global_pool").receptive_field)
    # pooling to 1x1 is global whatever the input
    assert receptive_field([(3, 1), nn.AdaptiveMaxPool2d(1)])[-1].is_global


@pytest.mark.parametrize("in_size", range(1, 13))
@pytest.mark.parametrize("out_size", range(1, 13))
def test_adaptive_window_is_torchs(in_size, out_size):
    """The largest window and the widest step between neighbours, read from which inputs each output of
    torch's adaptive pool depends on."""
    x = torch.zeros(1, 1, 1, in_size)
    jacobian = torch.autograd.functional.jacobian(
        lambda t: nn.functional.adaptive_avg_pool2d(t, (1, out_size)), x).reshape(out_size, in_size)
    inputs = [row.nonzero().flatten().tolist() for row in jacobian]  # the inputs of each output
    kernel = max(len(used) for used in inputs)
    starts = [used[0] for used in inputs]
    stride = max([b - a for a, b in zip(starts, starts[1:])] + [1])
    assert adaptive_window(in_size, out_size) == (kernel, stride)


def test_padding_and_adaptive_pool_follow_the_map_size():
    conv = nn.Conv2d(1, 1, 3, stride=2, padding=1)  # field 3, jump 2; 12x12 -> 6x6
    # 6x6 padded to 8x8, pooled to 4x4: windows of 2 inputs, 2 apart
    fields = receptive_field([conv, nn.ZeroPad2d(1), nn.AdaptiveAvgPool2d(4)], input_size=(12, 12))
    assert sizes(fields) == [3, 3, 3 + (2 - 1) * 2] and fields[-1].jump == (2 * 2, 2 * 2)
    # pooled to 3x3: windows [0, 3), [2, 6), [5, 8): the largest has 4 inputs, the widest step is 3
    fields = receptive_field([conv, nn.ZeroPad2d(1), nn.AdaptiveAvgPool2d(3)], input_size=(12, 12))
    assert sizes(fields) == [3, 3, 3 + (4 - 1) * 2] and fields[-1].jump == (2 * 3, 2 * 3)
    # without padding the same pool sees a 6x6 map: windows of 2, 2 apart
    fields = receptive_field([conv, nn.AdaptiveAvgPool2d(3)], input_size=(12, 12))
    assert sizes(fields) == [3, 3 + (2 - 1) * 2]


def row_of(result, name):
    return next(r for r in result.rows() if r.name == name)


@pytest.mark.parametrize("layers, says", [
    ("conv", "got 'conv'"),  # a string is iterable: each letter used to pass as a layer
    ((3, 1), r"layers\[0\] is 3"),  # one layer given as the stack
    ([3], r"layers\[0\] is 3"),
    ([(3, 0)], r"\(3, 0\).*\(kernel, stride\)"),
    ([(3, 1, 1, 1)], r"\(3, 1, 1, 1\)"),
    ([(True, 1)], r"\(True, 1\)"),
    ([(3.0, 1)], r"\(3.0, 1\)"),
    ([nn.ConvTranspose2d(1, 1, 3)], "ConvTranspose2d.*does not follow"),
    ([nn.Conv1d(1, 1, 3)], "Conv1d.*does not follow"),
    ([nn.Upsample(scale_factor=2)], "Upsample.*does not follow"),
    (None, "got None"),
    (nn.Conv2d(1, 1, 3), r"single layer: wrap it in a list"),
])
def test_what_is_not_a_stack_of_layers_is_refused(layers, says):
    with pytest.raises(CnnlabError, match=says) as err:
        receptive_field(layers)
    assert "(kernel, stride)" in str(err.value) or "does not follow" in str(err.value)  # what is accepted


def test_blocks_with_their_own_forward_are_refused():
    model = cnnlab.create_model("resnet8")
    with pytest.raises(CnnlabError, match=r"layers\[1\]\.0 is a BasicBlock.*cnnlab.summary"):
        receptive_field(model.features)
    with pytest.raises(CnnlabError, match="the ResNet given is not one.*cnnlab.summary"):
        receptive_field(model)


def test_a_non_global_adaptive_pool_needs_the_input_size():
    with pytest.raises(CnnlabError, match=r"layers\[1\] is an AdaptiveAvgPool2d.*input_size=\(H, W\)"):
        receptive_field([(3, 1), nn.AdaptiveAvgPool2d(2)])
    with pytest.raises(CnnlabError, match=r"after layers\[0\] is not known"):
        receptive_field([(3, 1), nn.AdaptiveAvgPool2d(2)], input_size=(8, 8))
    with pytest.raises(CnnlabError, match="input_size must be"):
        receptive_field([(3, 1)], input_size=(0, 8))


def test_an_input_too_small_for_the_layers():
    with pytest.raises(InputTooSmallError, match=r"layers\[1\].*receives a 2x2 map"):
        receptive_field([nn.Conv2d(1, 1, 5), nn.Conv2d(1, 1, 5)], input_size=(6, 6))
    assert torch.nn.Conv2d(1, 1, 5)(torch.zeros(1, 1, 6, 6)).shape[-1] == 2  # what layers[1] receives


def test_the_jump_goes_on_growing_after_a_gate_makes_the_field_whole():
    """A squeeze-excitation gate multiplies each map by a function of the whole input, so the field after it is
    `all`; the stages after it still subsample, and their jump (effective stride) is the plain network's."""
    def stage_jumps(name, **options):
        result = summary(name, (3, 224, 224), **options)
        return {row.name: row.receptive_field for row in result.rows(2) if row.name.startswith("features.stage")}

    plain, gated = stage_jumps("resnet50"), stage_jumps("resnet50", se=16)
    assert [str(f) for f in gated.values()] == ["all"] * 4
    assert [f.jump for f in gated.values()] == [f.jump for f in plain.values()] == [(4, 4), (8, 8), (16, 16), (32, 32)]
    # the rule itself: a whole field keeps being subsampled
    assert receptive.ReceptiveField(None, (4, 4)).through((3, 3), (2, 2)) == receptive.ReceptiveField(None, (8, 8))


def _stage_fields(result, prefix):
    return {row.name: row.receptive_field for row in result.rows(2) if row.name.startswith(prefix)}


def test_swins_channels_last_patch_merging_doubles_the_jump_on_both_sides():
    """Swin subsamples a (B, H, W, C) map by slicing dims 1 and 2 (x[:, 0::2, 0::2, :]) and mixes channels with
    Linear layers run on it flattened: its stages' jumps are the 4-pixel patch times 2 per merge, square."""
    fields = _stage_fields(summary("tv:swin_t"), "features.")
    patch = 4
    assert [fields[f"features.{i}"].jump for i in (0, 2, 4, 6)] == [(patch * 2 ** k,) * 2 for k in range(4)]
    assert summary("tv:swin_t").field_not_followed == []


class _ChannelsLast(nn.Module):
    """A 3x3 conv, then its map channels-last with every second channel kept, a 3x3 conv on it again."""

    def __init__(self, step: int = 2, spatial: bool = False):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.step, self.spatial = step, spatial

    def forward(self, x):
        x = self.conv1(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        x = x[:, :: self.step, :, :4] if self.spatial else x[..., :: self.step]
        return self.conv2(x.permute(0, 3, 1, 2).contiguous())


def test_a_slice_of_the_channels_leaves_the_field_and_one_of_h_subsamples_h():
    channels = summary(_ChannelsLast(), (3, 16, 16)).rows()
    assert [(str(r.receptive_field), r.receptive_field.jump) for r in channels if r.name.startswith("conv")] \
        == [("3", (1, 1)), ("5", (1, 1))]
    rows = summary(_ChannelsLast(spatial=True), (3, 16, 16)).rows()
    # H subsampled by 2 after conv1: conv2 adds (3-1)*2 along H, (3-1)*1 along W
    assert [(str(r.receptive_field), r.receptive_field.jump) for r in rows if r.name.startswith("conv")] \
        == [("3", (1, 1)), ("7x5", (2, 1))]


@pytest.mark.parametrize("layer, name", [(nn.PixelUnshuffle(2), "PixelUnshuffle"),
                                         (nn.PixelShuffle(2), "PixelShuffle"),
                                         (nn.FractionalMaxPool2d(2, output_ratio=0.5), "FractionalMaxPool2d")])
def test_the_field_is_not_followed_past_pixel_shuffles_and_fractional_pools(layer, name):
    channels = {"PixelUnshuffle": 16, "PixelShuffle": 1}.get(name, 4)  # 4 channels in, 2x2 pixels
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), layer, nn.Conv2d(channels, 4, 3, padding=1))
    result = summary(model, (3, 16, 16))
    assert result.field_not_followed == [f"'1' ({name})"]
    assert result.rows()[-1].receptive_field is None


def test_the_field_is_not_followed_past_a_1d_pool():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool = nn.Conv2d(3, 4, 3, padding=1), nn.AvgPool1d(4, 4)

        def forward(self, x):
            return self.pool(self.conv(x).flatten(2))  # (B, C, H*W) pooled along the flattened positions

    result = summary(Flat(), (3, 8, 8))
    assert result.field_not_followed == ["'pool' (AvgPool1d)"]


class _Reduced(nn.Module):
    """A 1x1 conv, then one of: a mean over H only times the map (strip pooling), a global mean of the map made
    channels-last, a Linear along W of the (B, C, H, W) map (MLP-Mixer's token mixing); then a 1x1 conv."""

    def __init__(self, how: str):
        super().__init__()
        self.how, self.conv1, self.conv2 = how, nn.Conv2d(1, 4, 1), nn.Conv2d(4, 4, 1)
        self.mix = nn.Linear(12, 12)

    def forward(self, x):
        x = self.conv1(x)
        if self.how == "strip":
            return self.conv2(x * x.mean(2, keepdim=True))
        if self.how == "mixer":
            return self.conv2(self.mix(x))
        return x.permute(0, 2, 3, 1).mean((1, 2))  # (B, H, W, C) -> (B, C)


def _seen_pixels(model: nn.Module) -> tuple[int, int]:
    """Rows and columns of the input that one output pixel's gradient reaches: the field, measured."""
    x = torch.randn(1, 1, 10, 12, requires_grad=True)
    model(x)[0, 0, 5, 6].backward()
    reached = x.grad[0, 0] != 0
    return int(reached.any(1).sum()), int(reached.any(0).sum())


@pytest.mark.parametrize("how, layer", [("strip", "the model's own forward (_Reduced)"), ("mixer", "'mix' (Linear)")])
def test_a_mean_or_linear_along_one_side_stops_the_field_rather_than_leaving_it_at_1(how, layer):
    """Each output pixel sees a whole column (strip pooling) or row (token mixing): the field, held for both
    sides at once, cannot say so. It read 1 for every later layer, with no word that it was not followed."""
    torch.manual_seed(0)
    model = _Reduced(how)
    assert _seen_pixels(model) == ((10, 1) if how == "strip" else (1, 12))  # what the column would have to say
    result = summary(model, (1, 10, 12))
    assert result.field_not_followed == [layer]
    assert next(row for row in result.rows() if row.name == "conv2").receptive_field is None
    assert next(row for row in result.rows() if row.name == "conv1").receptive_field.size == (1, 1)


class _Windows(nn.Module):
    """A conv, its map cut into 4x4 windows channels-last (a reshape loses the layout), a mean over the channels
    subtracted per pixel (a LayerNorm written out), the windows put back, a conv."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv1(x).permute(0, 2, 3, 1)  # (B, 8, 8, C)
        b, h, w, c = y.shape
        windows = y.reshape(b, h // 4, 4, w // 4, 4, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4, 4, c)
        windows = windows - windows.mean(-1, keepdim=True)  # per pixel: over the channels
        y = windows.reshape(b, h // 4, w // 4, 4, 4, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return self.conv2(y.permute(0, 3, 1, 2).contiguous())


class _AddedInPlace(nn.Module):
    """A conv, an upsampled (not followed) path added into its map in place, an in-place ReLU, a conv."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.up, self.act = nn.Upsample(scale_factor=2), nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.conv1(x)
        y += self.up(y[:, :, ::2, ::2])
        return self.conv2(self.act(y))


class _Shuffled(nn.Module):
    """A conv, ShuffleNet's channel shuffle (a 5-d view and back: the layout is lost), a mean over W times the map."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.conv1(x)
        b, c, h, w = y.shape
        y = y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.conv2(y * y.mean(3, keepdim=True))


def test_a_mean_over_one_of_the_last_dims_of_a_map_whose_layout_a_reshape_lost_stops_the_field():
    """After a reshape the layout is not known: a mean over the last dim is over the channels of Swin-like windows
    (per pixel: the field would stay 5) or over W of a shuffled map (a whole row: 3 would be false). Nothing tells
    them apart, so the field stops there, named; the work counts as element ops either way."""
    for model, where in ((_Windows(), "the model's own forward (_Windows)"),
                         (_Shuffled(), "the model's own forward (_Shuffled)")):
        result = summary(model, (3, 8, 8))
        assert result.field_not_followed == [where]
        assert next(row for row in result.rows() if row.name == "conv2").receptive_field is None
        assert result.totals()["pool_ops"] == 0


def test_an_unfollowed_path_added_in_place_leaves_no_field_on_the_map_it_wrote_into():
    result = summary(_AddedInPlace(), (3, 8, 8))
    assert result.field_not_followed == ["'up' (Upsample)"]
    rows = {row.name: row.receptive_field for row in result.rows()}
    assert rows["conv1"] is not None and rows["act"] is None and rows["conv2"] is None


def test_a_global_mean_of_a_channels_last_map_is_global_pooling():
    """x.permute(0, 2, 3, 1).mean((1, 2)) is x.mean((2, 3)): a field of all, and pooling ops that read each of
    the map's 4 x 10 x 12 elements once, as the channels-first mean's (it counted them as 4 element ops)."""
    last, first = summary(_Reduced("global"), (1, 10, 12)), summary(_GlobalMean(), (1, 10, 12))
    assert last.rows()[0].receptive_field.is_global and first.rows()[0].receptive_field.is_global
    assert last.totals()["pool_ops"] == first.totals()["pool_ops"] == 4 * 10 * 12
    assert last.totals()["element_ops"] == first.totals()["element_ops"] == 0


class _GlobalMean(_Reduced):
    def __init__(self):
        super().__init__("global")

    def forward(self, x):
        return self.conv1(x).mean((2, 3))


def test_a_layer_it_does_not_know_is_refused_not_taken_as_keeping_the_field():
    """A leaf of the user's own (here a blur pool that subsamples by 2) may change the field: the walk refuses
    it and points to cnnlab.summary, whose column follows the convolution inside it."""
    class BlurPool(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("kernel", torch.ones(4, 1, 3, 3) / 9)

        def forward(self, x):
            return nn.functional.conv2d(x, self.kernel, stride=2, padding=1, groups=4)

    layers = [nn.Conv2d(4, 4, 3, padding=1), BlurPool(), nn.Conv2d(4, 4, 3, padding=1)]
    with pytest.raises(CnnlabError, match=r"layers\[1\] is a BlurPool.*, a layer receptive_field does not know.*"
                                          r"cnnlab.summary"):
        receptive_field(layers)
    rows = summary(nn.Sequential(*layers), (4, 16, 16)).rows()
    assert [str(row.receptive_field) for row in rows] == ["3", "5", "9"]  # 3; +2 through the blur; +2*2 after it
    # what keeps each position's field still passes: torch's activations, norms, dropout; the zoo's own layers
    from cnnlab.layers.blocks import DropPath
    from cnnlab.layers.norm import LayerNorm2d

    kept = [nn.GELU(), nn.BatchNorm2d(4), nn.Dropout2d(), LayerNorm2d(4), DropPath(0.1), nn.Softmax2d(), nn.Identity()]
    assert [str(f) for f in receptive_field([(3, 1), *kept])] == ["3"] * (1 + len(kept))
    with pytest.raises(CnnlabError, match="Softmax"):
        receptive_field([(3, 1), nn.Softmax(dim=-1)])  # over W: mixes positions


def test_a_channel_shuffle_before_a_strided_slice_keeps_the_field_followed():
    """ShuffleNet's channel shuffle views the map 5-d and back: its layout is not tracked through that, and the
    slice after it stopped the field (it was followed, correctly, before layouts were tracked)."""
    class Shuffled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            x = self.conv1(x)
            b, c, h, w = x.shape
            x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
            return self.conv2(x[:, :, ::2, ::2])

    result = summary(Shuffled(), (3, 32, 32))
    assert result.field_not_followed == []
    conv2 = next(row for row in result.rows() if row.name == "conv2")
    assert str(conv2.receptive_field) == "7" and conv2.receptive_field.jump == (2, 2)  # 3, then +(3-1)*2
