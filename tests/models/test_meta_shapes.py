"""shapes_on_meta: a forward pass on the meta device that answers the norms and activations keeping their input's
shape at once, instead of through torch's Python reference kernels. Checked against torch's own meta kernels (the
same forward without it): every leaf layer's output shape, dtype and layout, and the errors torch raises for
arguments it refuses."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import cnnlab
from cnnlab.models import check_input_size
from cnnlab.models._meta import shapes_on_meta


def _leaf_outputs(model: nn.Module, x: torch.Tensor, fast: bool) -> dict:
    """name -> (shape, dtype, strides) of each leaf layer's output in one forward pass."""
    seen = {}

    def record(name):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor):
                seen[name] = (tuple(output.shape), output.dtype, output.stride())
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if not list(m.children())]
    try:
        with torch.no_grad():
            if fast:
                with shapes_on_meta():
                    model(x)
            else:
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


class _AtenOps(TorchDispatchMode):
    """The names of the aten operators dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


# Every norm and activation the fast path answers, in zoo and torchvision models (torchvision's own ReLU(inplace=True)
# and MobileNetV3's hardswish and hardsigmoid), in eval and training mode.
MODELS = [("resnet18", {"norm": "bn", "act": "relu"}), ("resnet20", {"norm": "gn", "act": "relu6"}),
          ("convnext_tiny", {}), ("vgg_mini", {"norm": "ln2d", "act": "leaky_relu"}),
          ("densenet121", {"act": "elu"}), ("mobilenet_v2", {"act": "gelu"}), ("alexnet", {"norm": "ln"}),
          ("tv:resnet18", {}), ("tv:mobilenet_v3_small", {})]


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name, options", MODELS)
def test_every_layer_has_the_shape_dtype_and_layout_torchs_meta_kernels_give(name, options, training):
    with torch.device("meta"):
        model = cnnlab.create_model(name, num_classes=5, **options).train(training)
    side = cnnlab.model_info(name).min_size if not name.startswith("tv:") else 64
    x = torch.zeros(2, 3, side, side, device="meta")
    plain = _leaf_outputs(model, x, fast=False)
    assert plain and _leaf_outputs(model, x, fast=True) == plain
    wide = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    assert _leaf_outputs(model.to(torch.bfloat16), wide, fast=True) == _leaf_outputs(model, wide, fast=False)


def test_the_norms_and_activations_reach_no_aten_kernel_inside_it():
    with torch.device("meta"):
        model = cnnlab.create_model("resnet18", num_classes=5).eval()
        x = torch.zeros(2, 3, 32, 32)
    with _AtenOps() as plain, torch.no_grad():
        model(x)
    with _AtenOps() as fast, torch.no_grad(), shapes_on_meta():
        model(x)
    answered = {name for name in plain.names if "batch_norm" in name or name.startswith("relu")}
    assert answered, plain.names  # torch's forward runs them (the check has something to miss)
    assert not answered & fast.names, fast.names
    assert {"convolution", "add"} <= fast.names  # the rest still runs torch's meta kernels


def test_in_place_activations_give_their_input_back():
    x = torch.zeros(2, 4, 6, 6, device="meta")
    with shapes_on_meta():
        assert F.relu(x, inplace=True) is x and torch.relu_(x) is x and x.relu_() is x
        assert F.hardtanh(x, 0.0, 6.0, True) is x and nn.ReLU(inplace=True)(x) is x
        assert F.relu(x) is not x


def _stats(channels):
    return torch.zeros(channels, device="meta"), torch.ones(channels, device="meta")


REFUSED = {
    "bn-stats": lambda x: F.batch_norm(x, *_stats(3)),  # statistics for 3 channels, 4 given
    "bn-weight": lambda x: F.batch_norm(x, *_stats(4), weight=torch.ones(5, device="meta")),
    "bn-one-value": lambda x: F.batch_norm(x[:1, :, :1, :1], None, None, training=True),  # one value per channel
    "bn-eval-no-stats": lambda x: F.batch_norm(x, None, None, torch.ones(4, device="meta"), training=False),
    "bn-eval-mean-only": lambda x: F.batch_norm(x, _stats(4)[0], None),
    "bn-eps-negative": lambda x: F.batch_norm(x, *_stats(4), eps=-1.0),
    "bn-eps-0-training": lambda x: F.batch_norm(x, None, None, training=True, eps=0.0),
    "ln-shape": lambda x: F.layer_norm(x, (5,)),
    "ln-weight": lambda x: F.layer_norm(x, (6,), weight=torch.ones(5, device="meta")),
    "ln-int": lambda x: F.layer_norm(x, 6),
    "gn-groups": lambda x: F.group_norm(x, 3),  # 4 channels in 3 groups
    "gn-weight": lambda x: F.group_norm(x, 2, weight=torch.ones(3, device="meta")),
    "gn-one-value": lambda x: F.group_norm(x[:1, :, :1, :1], 4),
    "gelu-approximate": lambda x: F.gelu(x, approximate="foo"),
    "hardtanh-bounds": lambda x: F.hardtanh(x, 6.0, 0.0),
    "hardtanh-bounds-in-place": lambda x: F.hardtanh(x, 6.0, 0.0, True),
    "leaky-slope": lambda x: F.leaky_relu(x, "0.1"),
    "elu-alpha": lambda x: F.elu(x, "1"),
    "relu6-bool": lambda x: F.relu6(x > 0),
    "ln-int64": lambda x: F.layer_norm(x.long(), (6,)),
}


@pytest.mark.parametrize("call", REFUSED.values(), ids=REFUSED.keys())
def test_arguments_torch_refuses_are_refused_with_torchs_own_error(call):
    x = torch.zeros(2, 4, 6, 6, device="meta")
    with pytest.raises(Exception) as plain:
        call(x)
    with shapes_on_meta(), pytest.raises(type(plain.value)) as fast:
        call(x)
    assert str(fast.value) == str(plain.value)


def test_tensors_with_values_are_computed_as_ever():
    x = torch.randn(2, 4, 6, 6)
    mean, var = torch.randn(4), torch.rand(4) + 0.5
    normalised, rectified = F.batch_norm(x, mean, var), F.relu(x)
    with shapes_on_meta():
        assert torch.equal(F.batch_norm(x, mean, var), normalised) and torch.equal(F.relu(x), rectified)


@pytest.mark.parametrize("name", ["resnet50", "densenet121", "vgg11_bn", "mobilenet_v2"])
def test_check_input_size_gives_torchs_answer(name, monkeypatch):
    import cnnlab.models._base as base

    info = cnnlab.model_info(name)
    with torch.device("meta"):
        model = cnnlab.create_model(name, num_classes=7)
    fast = check_input_size(model, info.default_input, name)
    monkeypatch.setattr(base, "shapes_on_meta", lambda: torch.no_grad())  # torch's meta kernels throughout
    assert check_input_size(model, info.default_input, name) == fast == (7,)
