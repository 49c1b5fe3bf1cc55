"""The mlp model: sizes computed from the input, norms for vectors, the zoo interface, and a few training steps."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.layers import get_norm_layer
from cnnlab.models import count_params, create_model, model_info

CLASSES = 10


def assert_close(actual, expected):
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-6), (actual - expected).abs().max()


def small(**kwargs):
    kwargs = {"num_classes": CLASSES, "in_chans": 1, "input_size": 8, "depth": 2, "width": 16, **kwargs}
    return create_model("mlp", **kwargs)


def hand_params(in_features, depth, width, classes, bias=True):
    """Linear layers of in -> width, (depth - 1) x width -> width, and width -> classes."""
    bias_count = width if bias else 0
    return (in_features * width + bias_count) + (depth - 1) * (width * width + bias_count) + width * classes + classes


def test_the_first_layer_reads_every_pixel_and_the_count_is_the_hand_count():
    model = create_model("mlp", num_classes=CLASSES, in_chans=3, input_size=20, depth=4, width=32)
    assert model.features.layer1.linear.in_features == 3 * 20 * 20
    assert sum(p.numel() for p in model.parameters()) == hand_params(3 * 20 * 20, 4, 32, CLASSES)
    info = model_info("mlp")
    assert info.default_input == (3, 32, 32) and info.min_size == 28


def test_the_notes_demonstration_net_has_six_4096_square_layers():
    # dims = [4096] * 7: a one-channel 64x64 image flattens to 4096, so every hidden layer is 4096 x 4096.
    with torch.device("meta"):
        model = create_model("mlp", num_classes=CLASSES, in_chans=1, input_size=64, depth=6, width=4096,
                             act="tanh", init="normal:0.01")
    hidden = [m for m in model.features.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in hidden] == [(4096, 4096)] * 6
    assert count_params(model) == hand_params(4096, 6, 4096, CLASSES)
    assert all(isinstance(m.act, nn.Tanh) for m in model.features.children() if hasattr(m, "act"))


def reference_forward(model, x):
    """The same network written as plain matrix products on the flattened image."""
    h = x.flatten(1)
    for layer in (model.features.layer1, model.features.layer2):
        h = torch.relu(h @ layer.linear.weight.T + layer.linear.bias)
    return h @ model.fc.weight.T + model.fc.bias


def test_forward_is_flatten_then_matrix_products_and_other_sizes_are_average_pooled():
    torch.manual_seed(0)
    model = small().eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert_close(model(x), reference_forward(model, x))
        big = torch.randn(4, 1, 16, 16)  # twice the side: each input pixel is the mean of a 2x2 block
        assert_close(model(big), reference_forward(model, F.avg_pool2d(big, 2)))
        features = model.forward_features(x)
    assert features.shape == (4, 16, 1, 1)  # the zoo's (B, F, h, w)


@pytest.mark.parametrize("norm, kind", [("bn", nn.BatchNorm1d), ("gn", nn.GroupNorm), ("ln", nn.GroupNorm),
                                        ("ln2d", nn.LayerNorm)])
def test_each_norm_becomes_a_norm_of_vectors(norm, kind):
    model = small(norm=norm)
    norms = [m.norm for m in model.features.children() if hasattr(m, "norm")]
    assert len(norms) == 2 and all(type(n) is kind or isinstance(n, kind) for n in norms)
    assert all(m.linear.bias is None for m in model.features.children() if hasattr(m, "linear"))  # the norm shifts
    assert count_params(model) == hand_params(64, 2, 16, CLASSES, bias=False) + 2 * 2 * 16  # + scale and shift
    model.train()(torch.randn(4, 1, 8, 8)).sum().backward()


def test_ln_normalises_over_the_units_of_each_sample():
    torch.manual_seed(0)
    norm = small(norm="ln").features.layer1.norm
    h = torch.randn(5, 16) * 3 + 1
    assert_close(norm(h), F.layer_norm(h, (16,), eps=norm.eps))


def test_bn_normalises_each_unit_over_the_batch_with_the_given_options():
    model = small(norm=get_norm_layer("bn", eps=1e-3))
    norm = model.features.layer1.norm
    assert isinstance(norm, nn.BatchNorm1d) and norm.eps == 1e-3
    h = torch.randn(8, 16) * 2 - 1
    expected = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-3)
    assert_close(norm.train()(h), expected)
    assert small(norm="gn:4").features.layer1.norm.num_groups == 4


def test_no_norm_keeps_the_bias_and_instance_norm_is_refused():
    model = small()
    assert not any(hasattr(m, "norm") for m in model.features.children())
    assert model.features.layer1.linear.bias is not None
    for norm in ("in", nn.InstanceNorm2d, functools.partial(nn.InstanceNorm2d, affine=True)):
        with pytest.raises(CnnlabError, match="instance normalisation.*bn, gn, ln, ln2d or none"):
            small(norm=norm)


def test_options_set_the_activation_and_dropout():
    model = small(act="tanh", drop_rate=0.3)
    assert isinstance(model.features.layer2.act, nn.Tanh)
    assert isinstance(model.head, nn.Dropout) and model.head.p == 0.3
    assert isinstance(small().features.layer1.act, nn.ReLU)  # the default


@pytest.mark.parametrize("kwargs", [dict(depth=0), dict(width=-1), dict(input_size=2.5), dict(depth=True),
                                    dict(width="wide")])
def test_bad_sizes_are_refused(kwargs):
    label = next(iter(kwargs))
    with pytest.raises(CnnlabError, match=f"mlp's {label} must be a whole number"):
        small(**kwargs)


def test_it_trains_without_nan():
    torch.manual_seed(0)
    model = small(width=64, norm="bn").train()
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, CLASSES, (32,))
    losses = []
    for _ in range(5):  # plain gradient descent, lr 0.1
        loss = F.cross_entropy(model(x), y)
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for param in model.parameters():
                param -= 0.1 * param.grad
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[0] == pytest.approx(math.log(CLASSES), abs=0.1)  # the classifier starts small
    assert losses[-1] < losses[0] - 0.2  # it learns the batch


def test_the_zoo_interface_freezes_the_trunk_and_gives_pre_logits():
    from cnnlab.models import frozen_stage_names, pre_logits, set_requires_grad

    model = small()
    set_requires_grad(model, frozen_stage_names(model, "backbone"), False)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        features = pre_logits(model, x)
        assert features.shape == (3, 16)
        assert_close(model.fc(features), model(x))


def test_a_run_sets_input_size_from_the_data_records_it_and_rebuilds_the_same_net(tmp_path):
    from cnnlab.config import ModelConfig, RunConfig, apply_overrides, load_config
    from cnnlab.run import build_model, sized_for_data
    from cnnlab.train.checkpoint import load_run_model
    from cnnlab.train.engine import train

    assert sized_for_data(ModelConfig(name="mlp"), 20).options == {"input_size": 20}
    assert sized_for_data(ModelConfig(name="mlp", options={"input_size": 8}), 20).options == {"input_size": 8}
    assert sized_for_data(ModelConfig(name="lenet5"), 20).options == {}  # only models that read a fixed side
    threads = torch.get_num_threads()
    try:
        config = apply_overrides(RunConfig(), ["model.name=mlp", "data.spec=synthetic:classes=3,train=24,val=6,test=6",
                                               "data.image_size=12", "train.epochs=1", "train.batch_size=8",
                                               "log.quiet=true"])
        run = train(config, tmp_path / "run").run_dir
    finally:
        torch.set_num_threads(threads)
    recorded = load_config(run / "config.yaml").model
    assert recorded.options == {"input_size": 12}
    first = build_model(recorded, num_classes=3, in_chans=3).features.layer1.linear
    assert first.in_features == 3 * 12 * 12  # reads the pixels as they are: no resampling
    model = load_run_model(run).model
    assert model.features.layer1.linear.in_features == 3 * 12 * 12
