"""Residual blocks: basic and bottleneck (He et al. 2016, "Deep Residual Learning"), their
pre-activation versions (He et al. 2016, "Identity Mappings in Deep Residual Networks"), and the
same blocks without a shortcut (the paper's "plain" baselines).

Every block takes ``norm_layer`` / ``act_layer`` *types* and builds its layers with
:class:`ConvNormAct`. The shortcut is chosen by name:

* ``"projection"``: identity when the shape is kept, else a strided 1x1 conv (+ norm): the
  paper's option B, used by its ImageNet nets and by torchvision.
* ``"zero_pad"``: identity when the shape is kept, else stride-2 subsampling plus zero channels
  (option A, section 4.2): parameter-free, used by the CIFAR nets so plain and residual nets
  have the same parameters.
* ``"none"``: no shortcut at all, the block is a plain stack of convs.

``se_layer`` (from :func:`cnnlab.layers.se.make_se_layer`) adds Squeeze-and-Excitation on the
residual branch, after its last conv (and norm) and before the addition: the SE-ResNet module of
Hu et al. 2018, Fig. 3. A plain block gates its output at the same place.

Post-activation blocks register their layers in torchvision's order (conv1, bn1, conv2, bn2[,
conv3, bn3], downsample conv, downsample bn), so torchvision state_dicts map onto them by position.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.layers import fused
from cnnlab.layers.act import ActLayer
from cnnlab.layers.blocks import ConvNormAct, drop_path_or_identity
from cnnlab.layers.norm import NormLayer, is_no_norm
from cnnlab.layers.se import SELayer

SHORTCUTS = ("projection", "zero_pad", "none")


class NormAct(nn.Sequential):
    """norm -> act: the pre-activation of a pre-act block and the final norm of a pre-act net.

    Like :class:`ConvNormAct`, a 'none' norm and a None act are left out.
    """

    def __init__(self, num_chs: int, norm_layer: Optional[NormLayer], act_layer: Optional[ActLayer]) -> None:
        super().__init__()
        if norm_layer is not None and not is_no_norm(norm_layer):
            self.add_module("norm", norm_layer(num_chs))
        if act_layer is not None:
            self.add_module("act", act_layer())


class ZeroPadShortcut(nn.Module):
    """Option A shortcut (He et al. 2016, section 4.2): subsample by ``stride``, zero-pad channels.

    (B, C_in, H, W) -> (B, C_out, ceil(H / s), ceil(W / s)). Taking every s-th pixel gives the same
    size as the branch's 3x3 conv with padding 1 and stride s, for odd sizes too. The extra
    C_out - C_in channels are zeros, so the shortcut has no parameters.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        if out_chs < in_chs:
            raise ValueError(f"a zero-pad shortcut cannot reduce channels ({in_chs} -> {out_chs})")
        self.stride = stride
        self.extra_chs = out_chs - in_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Every s-th pixel, as x[:, :, ::s, ::s] would take it, but through a 1x1 average pool: the slice's
        # backward writes its gradient into a fresh NCHW tensor whatever the input's layout, and under
        # channels_last the block's ReLU backward then mixes two layouts, 23x slower on a 2-core CPU
        # (5.2 ms against 0.22 ms at 128x16x28x28). The pool's backward keeps the input's layout: resnet8
        # trains 1.12x as many images a second for it (bench/train_throughput.py, docs/speed.md).
        x = F.avg_pool2d(x, kernel_size=1, stride=self.stride)  # (B, C_in, H/s, W/s)
        # F.pad reads pairs from the last dim backwards: (W left, W right, H top, H bottom, C front, C back)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_chs))  # (B, C_out, H/s, W/s)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_chs={self.extra_chs}"


class _ZeroPadSplit(torch.autograd.Function):
    """x -> (x for the residual branch, the zero-pad shortcut of x) as one autograd node, for the fused path.

    Through torch's operators the shortcut's backward zero-fills a gradient the size of x, scatters the
    shortcut's gradient into every s-th pixel of it, and autograd then adds that whole tensor to the branch's
    gradient. As one node, backward gets both gradients at once and adds the shortcut's into the branch's where
    it lands, in place: forward and backward take 0.55-0.8 ms instead of 1.3-1.8 at 128x16x28x28 on a 2-core
    Xeon, the same numbers bit for bit where the block's input feeds only the block (docs/speed.md). The branch's
    gradient comes fresh from its first conv's backward, so nothing else holds it: the caller checks that the
    branch starts with a conv and that no hook could see it (``_ResidualBlock._splits_shortcut``). The addition
    is torch's, so second derivatives go through it.
    """

    @staticmethod
    def forward(ctx, x, stride, extra_chs):
        ctx.stride, ctx.in_chs = stride, x.shape[1]
        taken = x[:, :, ::stride, ::stride]  # (B, C_in, H/s, W/s), every s-th pixel
        # channels_last, as the kernel reads the residual (F.pad would give NCHW at odd sizes, copied back each step)
        shortcut = torch.empty((x.shape[0], x.shape[1] + extra_chs) + taken.shape[2:], dtype=x.dtype,
                               device=x.device, memory_format=torch.channels_last)  # (B, C_out, H/s, W/s)
        shortcut[:, :ctx.in_chs] = taken
        shortcut[:, ctx.in_chs:] = 0
        return x.view_as(x), shortcut

    @staticmethod
    def backward(ctx, grad_branch, grad_shortcut):
        s = ctx.stride
        grad_branch[:, :, ::s, ::s] += grad_shortcut[:, :ctx.in_chs]  # (B, C_in, H/s, W/s) of (B, C_in, H, W)
        return grad_branch, None, None


def make_shortcut(
    kind: str,
    in_chs: int,
    out_chs: int,
    stride: int,
    norm_layer: Optional[NormLayer],
    preact: bool = False,
) -> Optional[nn.Module]:
    """The shortcut module of a block, or None for the identity (and for ``kind="none"``).

    A pre-act projection is a bare 1x1 conv: its input is already normalised and activated, and its
    output joins the stream that the next block's norm reads.
    """
    if kind not in SHORTCUTS:
        raise ValueError(f"unknown shortcut '{kind}', choose one of {', '.join(SHORTCUTS)}")
    if kind == "none" or (stride == 1 and in_chs == out_chs):
        return None
    if kind == "zero_pad":
        return ZeroPadShortcut(in_chs, out_chs, stride)
    if preact:
        return ConvNormAct(in_chs, out_chs, 1, stride, bias=is_no_norm(norm_layer), norm_layer=None, act_layer=None)
    return ConvNormAct(in_chs, out_chs, 1, stride, norm_layer=norm_layer, act_layer=None)


def _bottleneck_width(planes: int, groups: int, base_width: int) -> int:
    """Channels of the bottleneck's 3x3 conv: ``planes`` scaled by ``base_width / 64``, per group.

    ResNet: groups=1, base_width=64 -> planes. ResNeXt-50 32x4d: 32 groups of 4 channels at the first
    stage (planes 64) -> 128. Wide ResNet-50-2: base_width=128 -> 2 x planes. (torchvision's rule.)
    """
    return int(planes * (base_width / 64.0)) * groups


class _ResidualBlock(nn.Module):
    """What every block shares: ``out_chs``, whether it has a shortcut, and stochastic depth."""

    expansion = 1  # out_chs = planes * expansion
    is_preact = False  # True: norm-act-conv order, no activation after the addition
    last_conv = ""  # the branch's last conv-norm block, whose norm meets the activation after the addition

    def __init__(self, out_chs: int, shortcut: str, drop_path: float) -> None:
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"unknown shortcut '{shortcut}', choose one of {', '.join(SHORTCUTS)}")
        if shortcut == "none" and drop_path > 0:
            raise ValueError("stochastic depth drops the residual branch; a block without shortcut has none")
        self.out_chs = out_chs
        self.residual = shortcut != "none"  # False: a plain block, out = branch(x)

    def fusable_tail(self) -> Optional[ConvNormAct]:
        """The branch's last conv-norm block when its norm, the addition and the block's activation can run as
        one kernel (cnnlab.layers.fused): a post-activation block with a shortcut, no SE and no stochastic depth
        between the norm and the addition, and a BatchNorm2d meeting a ReLU. None otherwise."""
        last = getattr(self, self.last_conv, None) if self.last_conv else None
        if (not self.residual or getattr(self, "se", None) is not None or not isinstance(self.drop_path, nn.Identity)
                or not isinstance(last, ConvNormAct) or tuple(last._modules)[-1:] != ("norm",)
                or not fused.fusable(last.norm, getattr(self, "act", None))):
            return None
        return last

    def _fused_forward(self, x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor],
                       last: ConvNormAct) -> Optional[torch.Tensor]:
        """act(last(branch(x)) + shortcut(x)) by the fused kernel (switched on: the caller checks), or None, having
        run nothing, when the block's tail is not one it takes. ``branch``: the branch's modules before ``last``."""
        if self.fusable_tail() is not last or fused.observed(last, self.drop_path):
            return None
        if self._splits_shortcut(x):  # the zero-pad shortcut as one node with the branch's input
            x_branch, shortcut = _ZeroPadSplit.apply(x, self.shortcut.stride, self.shortcut.extra_chs)
            pre = last.pre_norm(branch(x_branch))  # (B, out_chs, H/s, W/s), before the norm
        else:
            pre = last.pre_norm(branch(x))
            shortcut = x if self.shortcut is None else self.shortcut(x)  # (B, out_chs, H/s, W/s)
        out = fused.batch_norm_relu(pre, last.norm, self.act, residual=shortcut)
        return out if out is not None else self.act(last.norm(pre) + shortcut)

    def _splits_shortcut(self, x: torch.Tensor) -> bool:
        """Whether the shortcut runs as :class:`_ZeroPadSplit`: a zero-pad shortcut where the kernel would run
        (training, a gradient to take, a map it takes). Its backward adds into the gradient of the branch's
        input in place, which is safe only when that gradient is fresh: the branch must start with cnnlab's own
        conv block, its conv (or its pad) first, and no hook may see the gradient (or miss the shortcut's call).
        torch.compile and dispatch modes (FlopCounterMode) see torch's operators, as for the kernel."""
        if not isinstance(self.shortcut, ZeroPadShortcut):
            return False
        first = next(iter(self.conv1.children()), None)
        return (self.training and torch.is_grad_enabled() and x.requires_grad and fused.takes(x) and fused.untraced()
                and type(self.conv1) is ConvNormAct and type(first) in (nn.Conv2d, nn.ZeroPad2d)
                and not fused.observed(self.shortcut, *self.conv1.modules()))


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs (He et al. 2016, Fig. 2 left): out = act(bn2(conv2(act(bn1(conv1(x))))) + x).

    The first conv carries the stride. (B, C_in, H, W) -> (B, planes, H/s, W/s).
    """

    expansion = 1
    last_conv = "conv2"

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        *,
        groups: int = 1,
        base_width: int = 64,
        shortcut: str = "projection",
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = nn.ReLU,
        drop_path: float = 0.0,
        se_layer: Optional[SELayer] = None,
    ) -> None:
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock has no grouped or widened form; use Bottleneck (ResNeXt, wide ResNet)")
        super().__init__(planes * self.expansion, shortcut, drop_path)
        out_chs = self.out_chs
        self.conv1 = ConvNormAct(in_chs, planes, 3, stride, norm_layer=norm_layer, act_layer=act_layer)
        # No act here: it comes after the addition, so the shortcut's signal is activated too.
        self.conv2 = ConvNormAct(planes, out_chs, 3, norm_layer=norm_layer, act_layer=None)
        self.se = None if se_layer is None else se_layer(out_chs)  # left out, not an Identity, when off
        self.shortcut = make_shortcut(shortcut, in_chs, out_chs, stride, norm_layer)
        self.drop_path = drop_path_or_identity(drop_path)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused.active() and (out := self._fused_forward(x, self.conv1, self.conv2)) is not None:
            return out
        branch = self.conv1(x)  # (B, planes, H/s, W/s)
        out = self.conv2(branch)  # (B, planes, H/s, W/s)
        if self.se is not None:
            out = self.se(out)  # the branch's channels reweighted, before the addition
        if self.residual:
            out = self.drop_path(out) + (x if self.shortcut is None else self.shortcut(x))
        return self.act(out)

    def zero_init_last(self) -> None:
        """Zero the branch's last norm scale, so a residual block starts as act(shortcut(x)).

        A block without shortcut has no residual branch and is left alone: zeroing it would
        cut the network's signal.
        """
        if self.residual:
            self.conv2.zero_output()


class Bottleneck(_ResidualBlock):
    """1x1 reduce -> 3x3 -> 1x1 expand x4 (He et al. 2016, Fig. 5 right).

    The stride sits on the 3x3 conv, as in torchvision's "ResNet v1.5" (the paper strides the first
    1x1, which skips three quarters of its input). ``groups`` and ``base_width`` set the 3x3 conv's
    width for ResNeXt (Xie et al. 2017) and wide ResNet (Zagoruyko & Komodakis 2016).
    (B, C_in, H, W) -> (B, 4 * planes, H/s, W/s).
    """

    expansion = 4
    last_conv = "conv3"

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        *,
        groups: int = 1,
        base_width: int = 64,
        shortcut: str = "projection",
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = nn.ReLU,
        drop_path: float = 0.0,
        se_layer: Optional[SELayer] = None,
    ) -> None:
        super().__init__(planes * self.expansion, shortcut, drop_path)
        width = _bottleneck_width(planes, groups, base_width)
        out_chs = self.out_chs
        self.conv1 = ConvNormAct(in_chs, width, 1, norm_layer=norm_layer, act_layer=act_layer)
        self.conv2 = ConvNormAct(width, width, 3, stride, groups=groups, norm_layer=norm_layer, act_layer=act_layer)
        self.conv3 = ConvNormAct(width, out_chs, 1, norm_layer=norm_layer, act_layer=None)  # act after the sum
        self.se = None if se_layer is None else se_layer(out_chs)
        self.shortcut = make_shortcut(shortcut, in_chs, out_chs, stride, norm_layer)
        self.drop_path = drop_path_or_identity(drop_path)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused.active() and (out := self._fused_forward(x, self._branch_head, self.conv3)) is not None:
            return out
        out = self.conv3(self._branch_head(x))  # (B, 4 * planes, H/s, W/s)
        if self.se is not None:
            out = self.se(out)
        if self.residual:
            out = self.drop_path(out) + (x if self.shortcut is None else self.shortcut(x))
        return self.act(out)

    def _branch_head(self, x: torch.Tensor) -> torch.Tensor:
        """The branch before its last conv block: 1x1 reduce, then the 3x3 conv."""
        return self.conv2(self.conv1(x))  # (B, width, H/s, W/s)

    def zero_init_last(self) -> None:
        """Zero the branch's last norm scale (see :meth:`BasicBlock.zero_init_last`)."""
        if self.residual:
            self.conv3.zero_output()


class PreActBasicBlock(_ResidualBlock):
    """Pre-activation basic block (He et al. 2016, "Identity Mappings", Fig. 4e):
    out = x + conv2(act(bn2(conv1(act(bn1(x)))))), nothing after the addition.

    The shortcut stays a clean identity, so the signal of any block reaches any later one
    unchanged. When the shape changes, the projection reads the pre-activated input, shared with the
    branch (the paper's code, and section 4: "the first activation right after conv1 and before
    splitting into two paths").
    """

    expansion = 1
    is_preact = True

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        *,
        groups: int = 1,
        base_width: int = 64,
        shortcut: str = "projection",
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = nn.ReLU,
        drop_path: float = 0.0,
        se_layer: Optional[SELayer] = None,
    ) -> None:
        if groups != 1 or base_width != 64:
            raise ValueError("PreActBasicBlock has no grouped or widened form; use PreActBottleneck")
        super().__init__(planes * self.expansion, shortcut, drop_path)
        out_chs = self.out_chs
        no_norm = is_no_norm(norm_layer)
        self.preact = NormAct(in_chs, norm_layer, act_layer)  # norm -> act of the block's input
        # The conv's output meets conv2's norm, which would cancel a bias.
        self.conv1 = ConvNormAct(in_chs, planes, 3, stride, bias=no_norm, norm_layer=None, act_layer=None)
        self.conv2 = ConvNormAct(planes, out_chs, 3, norm_layer=norm_layer, act_layer=act_layer, preact=True)
        self.se = None if se_layer is None else se_layer(out_chs)
        self.shortcut = make_shortcut(shortcut, in_chs, out_chs, stride, norm_layer, preact=True)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_pre = self.preact(x)  # (B, C_in, H, W)
        out = self.conv2(self.conv1(x_pre))  # (B, planes, H/s, W/s)
        if self.se is not None:
            out = self.se(out)
        if not self.residual:
            return out
        return self.drop_path(out) + (x if self.shortcut is None else self.shortcut(x_pre))

    def zero_init_last(self) -> None:
        """Zero the branch's last layer, its conv, so the block starts as the identity.

        (A pre-act branch ends in a conv; zeroing the norm before it would give conv(act(0)),
        which is zero only for activations with act(0) = 0.)
        """
        if self.residual:
            self.conv2.zero_conv()


class PreActBottleneck(_ResidualBlock):
    """Pre-activation bottleneck: norm-act-conv three times (1x1, 3x3 with the stride, 1x1 x4).

    (B, C_in, H, W) -> (B, 4 * planes, H/s, W/s); see :class:`PreActBasicBlock` for the shortcut.
    """

    expansion = 4
    is_preact = True

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        *,
        groups: int = 1,
        base_width: int = 64,
        shortcut: str = "projection",
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = nn.ReLU,
        drop_path: float = 0.0,
        se_layer: Optional[SELayer] = None,
    ) -> None:
        super().__init__(planes * self.expansion, shortcut, drop_path)
        width = _bottleneck_width(planes, groups, base_width)
        out_chs = self.out_chs
        no_norm = is_no_norm(norm_layer)
        self.preact = NormAct(in_chs, norm_layer, act_layer)
        self.conv1 = ConvNormAct(in_chs, width, 1, bias=no_norm, norm_layer=None, act_layer=None)
        self.conv2 = ConvNormAct(
            width, width, 3, stride, groups=groups, norm_layer=norm_layer, act_layer=act_layer, preact=True
        )
        self.conv3 = ConvNormAct(width, out_chs, 1, norm_layer=norm_layer, act_layer=act_layer, preact=True)
        self.se = None if se_layer is None else se_layer(out_chs)
        self.shortcut = make_shortcut(shortcut, in_chs, out_chs, stride, norm_layer, preact=True)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_pre = self.preact(x)  # (B, C_in, H, W)
        out = self.conv3(self.conv2(self.conv1(x_pre)))  # (B, 4 * planes, H/s, W/s)
        if self.se is not None:
            out = self.se(out)
        if not self.residual:
            return out
        return self.drop_path(out) + (x if self.shortcut is None else self.shortcut(x_pre))

    def zero_init_last(self) -> None:
        """Zero the branch's last conv (see :meth:`PreActBasicBlock.zero_init_last`)."""
        if self.residual:
            self.conv3.zero_conv()
