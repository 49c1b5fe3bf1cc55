"""Per-layer analysis: output shape, activation memory, parameters, MACs, receptive field.

How it counts. The forward pass runs on the meta device (shapes only: no memory, no arithmetic),
with module hooks that keep a stack of the modules being executed and a dispatch mode that sees
every tensor operation. Each operation is charged to the innermost module running it, so a
residual add inside a block is charged to the block, and a container never adds up its
children's numbers: every operation is counted exactly once. Module hooks do not fire inside a
TorchScript module, so its layers' operations and parameters stay in its own row (and
``Summary.script_modules`` says so).

How it stays fast. The dispatch mode computes the output of the ops a CNN runs most (conv, batch
norm, activations, adds, pooling, linear, concat) from shapes alone (``SHAPE_RULES``), instead of
torch's Python meta kernels, which cost about a millisecond each and import sympy and
torch._dynamo on first use; other ops run torch's meta kernel. The model's own parameters stay
where they are: rules read their shapes, and an op without a rule gets meta copies of them.

Conventions (the lecture's, per batch of N images):

* conv MACs = C_out * H' * W' * (C_in / groups) * K_h * K_w; linear MACs = in * out; a matrix product
  (attention's Q K^T and A V, matmul, bmm) m * n * k. Their sum is the "conv+linear MACs" total, equal to
  torch's FlopCounterMode FLOPs / 2 for the zoo's models (the counter misses the attention products of torch's
  CPU attention kernel: docs/analysis.md). Biases are not counted.
* pooling ops = output elements * K_h * K_w (adaptive and global pooling: each window's size, summed);
  shown per layer and in its own total, not in the conv+linear total.
* element ops: one per output element of everything else that computes (norms, activations,
  adds, multiplies); reported in their own column as element counts. Ops that only move data
  (copies, concat, padding, roll, pixel shuffle, indexing, nearest upsampling) count no ops: their
  outputs are memory.
* memory: bytes of each newly allocated output at fp32 (4 bytes per element); views and in-place
  operations allocate nothing. KB = 1024 bytes.
"""

from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map_only

from cnnlab.analysis.receptive import ReceptiveField, adaptive_window
from cnnlab.analysis.shapes import SHAPE_RULES
from cnnlab.errors import BatchOfOneError, CnnlabError, InputTooSmallError, counted, shown_value
from cnnlab.models._base import (SIZE_FITS_REMEDY, eval_mode, first_conv, fixed_input_side, input_size_remedy,
                                 refuse_other_side, size_fits, too_small_message)

BYTES_PER_ELEMENT = 4  # fp32
OPTIMIZER_STATE_PER_PARAM = {"sgd": 1, "adamw": 2, "muon": 1}  # momentum buffer; AdamW's two moments; Muon: a buffer
UNITS = ("macs", "flops")  # how multiply-adds are reported: as MACs, or as FLOPs = 2 x MACs


def unit_factor(units: str) -> int:
    """FLOPs count a multiply-add as two operations: 2 for 'flops', 1 for 'macs'."""
    if units not in UNITS:
        raise CnnlabError(f"units (--units) must be 'macs' or 'flops', not {shown_value(units)}.")
    return 2 if units == "flops" else 1

aten = torch.ops.aten
CONV_OPS = {aten.convolution, aten._convolution}
MATMUL_OPS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm}
WINDOW_POOL_OPS = {aten.max_pool2d_with_indices, aten.max_pool2d, aten.avg_pool2d}
ADAPTIVE_POOL_OPS = {aten._adaptive_avg_pool2d, aten.adaptive_max_pool2d, aten.adaptive_avg_pool2d}
# Reductions that are global pooling when they reduce H and W: x.mean((2, 3)) (SE blocks), x.amax((2, 3))
# (global max pooling), x.sum((2, 3)).
REDUCTION_OPS = {aten.mean, aten.amax, aten.amin, aten.sum}
# Ops after which the receptive field is not tracked (its size and jump stop being whole pixels).
# Pixel (un)shuffle moves pixels between the channels and the map, unpooling scatters them back, and a
# fractional max pool's windows are random: none keeps whole-pixel windows at one spacing.
UNTRACKED_OPS = {
    aten.upsample_nearest2d, aten.upsample_bilinear2d, aten.upsample_bicubic2d, aten._upsample_nearest_exact2d,
    aten._upsample_bilinear2d_aa, aten.grid_sampler_2d, aten.pixel_shuffle, aten.pixel_unshuffle,
    aten.max_unpool2d, aten.fractional_max_pool2d,
}
# Ops that only reinterpret memory: no arithmetic, no new storage (the in-place ones change a
# tensor's shape or strides, not its data).
VIEW_OPS = {
    aten.view, aten._unsafe_view, aten.reshape, aten.permute, aten.transpose, aten.t, aten.expand,
    aten.unsqueeze, aten.squeeze, aten.alias, aten.detach, aten.slice, aten.select, aten.as_strided,
    aten.split, aten.split_with_sizes, aten.chunk, aten.unbind, aten.narrow, aten.lift_fresh, aten.unfold,
    aten.diagonal, aten.as_strided_, aten.squeeze_, aten.unsqueeze_, aten.t_, aten.transpose_,
}
# Ops that move data but compute nothing: copies, concatenation, padding, rearranging (roll, flip,
# pixel shuffle, window partition copies), indexing and selecting (index, gather, masked_fill, where),
# filling and creating tensors. Their new outputs count as memory, never as element ops, which are
# arithmetic (docs/analysis.md); a MAC is never among them, so the conv+linear total does not move.
COPY_OPS = {
    aten.clone, aten.cat, aten.stack, aten.constant_pad_nd, aten.reflection_pad2d, aten.replication_pad2d,
    aten._to_copy, aten.copy_, aten.zeros, aten.zeros_like, aten.empty, aten.empty_like, aten.new_zeros,
    aten.new_empty, aten.full, aten.full_like, aten.new_full, aten.ones, aten.ones_like, aten.new_ones,
    aten.new_empty_strided, aten.empty_strided, aten.fill, aten.fill_, aten.zero_, aten.scalar_tensor,
    aten.arange,
    # rearranging
    aten.roll, aten.flip, aten.repeat, aten.pixel_shuffle, aten.pixel_unshuffle, aten.channel_shuffle,
    aten.native_channel_shuffle, aten.im2col, aten.upsample_nearest2d, aten._upsample_nearest_exact2d,
    # indexing and selecting
    aten.index, aten.index_select, aten.gather, aten.take, aten.masked_fill, aten.index_fill, aten.where,
    aten.tril, aten.triu, aten.scatter, aten.index_put, aten.index_copy, aten.masked_scatter,
    # copying versions of the view ops (what a view becomes where a view cannot be kept)
    aten.permute_copy, aten.transpose_copy, aten.view_copy, aten._reshape_copy, aten.expand_copy,
    aten.slice_copy, aten.select_copy, aten.unsqueeze_copy, aten.squeeze_copy, aten.t_copy, aten.alias_copy,
    aten.unfold_copy, aten.narrow_copy, aten.split_copy, aten.unbind_copy, aten.as_strided_copy,
    aten.diagonal_copy, aten.detach_copy,
}


@dataclass
class LayerRow:
    """One module call's own numbers (its children's are in their own rows)."""

    name: str  # module path, '' for the model itself
    type: str  # class name
    depth: int  # nesting level: 0 for the model, 1 for its children, ...
    output_shape: Optional[tuple[int, ...]]  # per image, without the batch dimension
    memory: int = 0  # bytes allocated by this row's own operations, whole batch, fp32
    params: int = 0  # parameters owned directly by this module (first call only)
    trainable: int = 0  # of which require grad
    macs: int = 0  # conv + linear multiply-adds
    pool_ops: int = 0  # pooling: output elements x window size
    element_ops: int = 0  # elements produced by norms, activations, adds, ...
    receptive_field: Optional[ReceptiveField] = None
    ran: bool = True  # False for modules the forward never called (e.g. aux heads in eval)
    # For a module that never ran: True when the forward read its weights all the same (torch's
    # MultiheadAttention computes with out_proj.weight without calling out_proj), so they are not unused.
    weights_read: bool = False
    is_leaf: bool = True
    children: list["LayerRow"] = field(default_factory=list, repr=False)

    def has_own_numbers(self) -> bool:
        return bool(self.params or self.macs or self.pool_ops or self.element_ops or self.memory)


@dataclass
class Summary:
    """The result of :func:`summary`: rows in execution order and totals."""

    model_name: str
    input_size: tuple[int, ...]  # (C, H, W)
    batch: int
    root: LayerRow  # call tree; ``rows()`` flattens it
    total_params: int
    trainable_params: int
    # Layers past which the receptive field is not followed (upsampling, transposed or 1-d convs), as
    # "'name' (Type)" in execution order: the rows after them have no field.
    field_not_followed: list[str] = field(default_factory=list)
    # Parameters no operation of the forward read (name -> elements), in named_parameters() order: the
    # weights of modules that did not run (GoogLeNet's auxiliary heads in eval mode) and any the forward skips.
    unused_params: dict[str, int] = field(default_factory=dict)
    # TorchScript modules with layers inside (torch.jit.script or torch.jit.trace), as "'name' (Type)": their
    # layers run in the TorchScript interpreter, where module hooks do not fire, so each one's operations and
    # parameters are counted in its own row. The totals are exact; only the split into layers is missing.
    script_modules: list[str] = field(default_factory=list)

    @property
    def frozen_params(self) -> int:
        return self.total_params - self.trainable_params

    def rows(self, depth: Optional[int] = None) -> list[LayerRow]:
        """Rows in execution order: every leaf call and every container with own numbers; with
        ``depth`` K, the subtrees below depth K collapsed into one row each (numbers summed)."""
        if depth is not None and (not isinstance(depth, numbers.Integral) or isinstance(depth, bool) or depth < 1):
            # 0 or a negative depth would fold the whole model into one unnamed row; a float compares oddly
            raise CnnlabError(f"depth must be a whole number of at least 1 (1: the model's children), or None for "
                              f"every layer; got {depth!r}.")
        out: list[LayerRow] = []
        _flatten(self.root, depth, out)
        if depth is None:
            return out
        # Modules that never ran have no call tree: group them by their name's first ``depth`` parts. Where
        # that prefix is a module that ran (a ViT block whose attention reads out_proj's weights without
        # calling it), its row is the whole subtree, so the parameters join it: a second row of that name
        # marked "(not run)" would say a block that ran did not.
        merged: list[LayerRow] = []
        ran_at_depth: dict[str, int] = {}  # name -> index in ``merged`` of the first row that ran at ``depth``
        copied: set[int] = set()  # indices whose row is already a copy (the call tree's rows stay untouched)
        groups: dict[str, LayerRow] = {}
        for row in out:
            if row.ran or row.depth <= depth:
                if row.ran and row.depth == depth and row.name not in ran_at_depth:
                    ran_at_depth[row.name] = len(merged)
                merged.append(row)
                continue
            prefix = ".".join(row.name.split(".")[:depth])
            if prefix in ran_at_depth:
                index = ran_at_depth[prefix]
                if index not in copied:
                    merged[index] = replace(merged[index], is_leaf=False)
                    copied.add(index)
                target = merged[index]
            else:
                if prefix not in groups:
                    groups[prefix] = LayerRow(prefix, "(not run)", depth, None, ran=False, is_leaf=False)
                    merged.append(groups[prefix])
                target = groups[prefix]
            target.params += row.params
            target.trainable += row.trainable
            if not target.ran:
                target.weights_read = target.weights_read or row.weights_read
        return merged

    def _sum(self, attr: str) -> int:
        return sum(getattr(r, attr) for r in self.rows())

    @property
    def macs(self) -> int:
        return self._sum("macs")

    @property
    def pool_ops(self) -> int:
        return self._sum("pool_ops")

    @property
    def element_ops(self) -> int:
        return self._sum("element_ops")

    @property
    def all_ops(self) -> int:
        """conv+linear MACs + pooling ops + element ops."""
        return self.macs + self.pool_ops + self.element_ops

    @property
    def activation_memory(self) -> int:
        """Bytes of all forward outputs for the batch (fp32)."""
        return self._sum("memory")

    def training_memory(self, optimizer: str = "sgd") -> int:
        """Estimate for one training step: activations kept for backward (every forward output of an
        eval-mode trace: not dropout's masks nor max-pooling's indices, so not an upper bound), fp32 parameters,
        their gradients and the optimizer's state per trainable parameter (SGD-momentum and Muon: 1 buffer,
        AdamW: 2)."""
        if optimizer not in OPTIMIZER_STATE_PER_PARAM:
            raise CnnlabError(f"optimizer must be one of {', '.join(OPTIMIZER_STATE_PER_PARAM)}, not '{optimizer}'.")
        per_trainable = 1 + OPTIMIZER_STATE_PER_PARAM[optimizer]  # gradient + state
        return self.activation_memory + BYTES_PER_ELEMENT * (
            self.total_params + per_trainable * self.trainable_params
        )

    def totals(self) -> dict[str, int]:
        return {
            "params": self.total_params,
            "trainable_params": self.trainable_params,
            "frozen_params": self.frozen_params,
            "macs": self.macs,
            "pool_ops": self.pool_ops,
            "element_ops": self.element_ops,
            "all_ops": self.all_ops,
            "activation_memory_bytes": self.activation_memory,
            "training_memory_bytes_sgd": self.training_memory("sgd"),
            "training_memory_bytes_adamw": self.training_memory("adamw"),
        }

    def to_dict(self, depth: Optional[int] = None, units: str = "macs") -> dict[str, Any]:
        """Rows (collapsed below ``depth``) and totals as plain JSON-ready values: what
        ``cnnlab summary --json`` prints.

        With ``units="flops"`` every multiply-add count is doubled (FLOPs = 2 x MACs): the ``macs``
        of each row and of the totals, and so ``all_ops``; and each row and the totals get a ``flops``
        key, the conv+linear FLOPs, the name to read them by. ``macs`` then holds the same doubled
        count, as it did before ``flops`` was added (``units`` says which unit the counts hold). Pooling
        ops and element ops stay counts of elements read or written: a max or mean over a window is
        one comparison or addition per element, not a multiply-add.
        """
        factor = unit_factor(units)
        rows = []
        for row in self.rows(depth):
            item = {k: v for k, v in asdict(row).items() if k not in ("children", "receptive_field")}
            item["output_shape"] = list(row.output_shape) if row.output_shape else None
            rf = row.receptive_field
            item["receptive_field"] = None if rf is None else ("all" if rf.is_global else list(rf.size))
            item["jump"] = None if rf is None else list(rf.jump)
            item["macs"] = item["macs"] * factor
            if units == "flops":
                item["flops"] = item["macs"]
            rows.append(item)
        totals = self.totals()
        totals["macs"] = totals["macs"] * factor
        if units == "flops":
            totals["flops"] = totals["macs"]
        totals["all_ops"] = totals["macs"] + totals["pool_ops"] + totals["element_ops"]
        return {
            "model": self.model_name,
            "input_size": list(self.input_size),
            "batch": self.batch,
            "units": units,
            "conventions": CONVENTIONS,
            "totals": totals,
            "receptive_field_not_followed_past": list(self.field_not_followed),
            "unused_params": dict(self.unused_params),
            "script_modules": list(self.script_modules),
            "rows": rows,
        }


CONVENTIONS = (
    "MACs: conv = C_out*H'*W'*(C_in/groups)*K_h*K_w, linear = in*out (no bias), matrix products (attention's "
    "Q*K^T and A*V, matmul, bmm) = m*n*k, all in the conv+linear total; pooling = output "
    "elements*K_h*K_w, kept out of the conv+linear total; element ops = output elements of norms, "
    "activations, adds and other arithmetic (ops that only move data count none); FLOPs = 2*MACs "
    "(pooling and element ops stay counts); "
    "memory = fp32 bytes of each new output for the batch."
)


def summary(
    model_or_name: Union[nn.Module, str],
    input_size: Optional[Sequence[int]] = None,
    *,
    batch: int = 1,
    model_options: Optional[Mapping[str, Any]] = None,
    **model_kwargs,
) -> Summary:
    """Analyse a model layer by layer at ``input_size`` = (C, H, W).

    ``model_or_name`` is any ``nn.Module`` taking one image tensor, or a registered model name
    (built on the meta device with ``model_kwargs``; ``input_size`` then defaults to the paper's, or
    for the mlp to its ``input_size`` option). A name is built for the input's channels, as
    ``cnnlab summary NAME --input 1x28x28`` builds it: C is its ``in_chans`` (an ``in_chans`` in
    ``model_kwargs`` must agree with C). ``model_options`` is a dict of the same model options, for
    one whose name this function takes itself: ``summary("mlp", (1, 28, 28), model_options={"input_size": 28})``.
    A model ``create_model`` built defaults to the same input as its name (with its channels); any other
    module needs ``input_size``.
    Nothing is computed on real data, so even large models take well under a second.
    """
    if input_size is not None:
        input_size = _checked_input_size(input_size)
    if not isinstance(batch, numbers.Integral) or isinstance(batch, bool) or batch < 1:
        raise CnnlabError(f"batch must be a whole number of at least 1, got {batch!r}.")
    batch = int(batch)
    if model_options is not None and not isinstance(model_options, Mapping):
        raise CnnlabError(f"model_options must be a dict of model options, got {type(model_options).__name__}.")
    twice = sorted(set(model_options or {}) & set(model_kwargs))
    if twice:
        raise CnnlabError(f"{', '.join(twice)} given both in model_options and as a keyword argument: give each once.")
    model_kwargs = {**(model_options or {}), **model_kwargs}
    if isinstance(model_or_name, str):
        from cnnlab.models import create_model, default_input

        options = dict(model_kwargs)
        if input_size is not None:  # the model reads the input's channels
            if options.get("in_chans", input_size[0]) != input_size[0]:
                raise CnnlabError(
                    f"The input has {input_size[0]} channels (input_size {input_size}) but in_chans="
                    f"{options['in_chans']!r} asks {model_or_name} for another number: give one of the two, "
                    "or make them agree."
                )
            options["in_chans"] = input_size[0]
        with torch.device("meta"):
            model = create_model(model_or_name, **options)  # checks in_chans
        if input_size is None:  # the paper's size, with the channels (and the mlp's side) the model was built for
            input_size = _checked_input_size(default_input(model_or_name, options))
        name = model_or_name
    elif isinstance(model_or_name, nn.Module):
        if model_kwargs:
            raise CnnlabError(
                f"Model options ({', '.join(model_kwargs)}) apply to a model name; this model is already built."
            )
        model = _uncompiled(model_or_name)
        name = getattr(model, "model_name", type(model).__name__)
        if input_size is None:
            input_size = _built_model_input(model)
        _refuse_uninitialized_lazy_layers(model, name, input_size)
    else:
        raise CnnlabError(f"summary takes a model name or an nn.Module, not {type(model_or_name).__name__}.")
    refuse_other_side(model, input_size, name)
    root, field_not_followed, params_read, script_modules = _trace(model, name, input_size, batch)
    unique = {id(p): p for p in model.parameters()}.values()
    return Summary(
        model_name=name,
        input_size=input_size,
        batch=batch,
        root=root,
        total_params=sum(p.numel() for p in unique),
        trainable_params=sum(p.numel() for p in unique if p.requires_grad),
        field_not_followed=field_not_followed,
        script_modules=script_modules,
        unused_params={n: p.numel() for n, p in model.named_parameters() if id(p) not in params_read},
    )


def _uncompiled(model: nn.Module) -> nn.Module:
    """The module torch.compile wrapped: the same parameters, analysed eagerly. Through the wrapper the forward
    is traced by dynamo under the dispatch mode (seconds, and warnings) and every row is named '_orig_mod.*'.
    Checked by name, so that summary does not import torch._dynamo (over a second) for every model."""
    while type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
        model = model._orig_mod
    return model


def _refuse_uninitialized_lazy_layers(model: nn.Module, name: str, input_size: tuple[int, int, int]) -> None:
    """A LazyConv2d or LazyLinear has no weight shapes before its first forward, so its parameters cannot be
    counted. Initialising them here would change the user's model, so the first forward is left to them."""
    lazy = [
        module_name or name for module_name, module in model.named_modules()
        if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params()
    ]
    if not lazy:
        return
    shown = ", ".join(f"'{n}'" for n in lazy[:3]) + (f" and {len(lazy) - 3} more" if len(lazy) > 3 else "")
    c, h, w = input_size
    raise CnnlabError(
        f"{name} has {counted(len(lazy), 'lazy layer')} whose parameters have no shape yet ({shown}): they take "
        f"it from their first input. Run the model once on a batch (model(torch.zeros(1, {c}, {h}, {w}))), "
        "then analyse it; summary does not run that forward itself, as it would change the model."
    )


def _built_model_input(model: nn.Module) -> tuple[int, int, int]:
    """The default input of a model ``create_model`` built (it records its name and channels): the paper's
    size with those channels, as ``summary(NAME)`` takes. Any other module has no size to fall back on."""
    from cnnlab.models import default_input, model_exists

    name, channels = getattr(model, "model_name", None), getattr(model, "in_chans", None)
    if not isinstance(name, str) or not model_exists(name) or channels is None:
        raise CnnlabError(
            f"Give the input size (C, H, W) to analyse this {type(model).__name__}: summary(model, (3, 224, 224)). "
            "Only a model made by cnnlab.create_model (or a zoo name) has a default input."
        )
    return _checked_input_size(default_input(name, {"in_chans": channels, "input_size": getattr(model, "input_size", None),
                                                    "image_size": fixed_input_side(model)}))


def _checked_input_size(input_size) -> tuple[int, int, int]:
    """``input_size`` as (C, H, W), three whole numbers of at least 1 (numpy and torch integers too); else refused."""
    if (
        not isinstance(input_size, (tuple, list))
        or len(input_size) != 3
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in input_size)
    ):
        if isinstance(input_size, torch.Tensor):  # an example batch for its shape: its repr runs over many lines
            raise CnnlabError(f"input_size must be (C, H, W), three whole numbers of at least 1, got a tensor of shape "
                              f"{tuple(input_size.shape)}: give its shape without the batch (x.shape[1:]).")
        raise CnnlabError(f"input_size must be (C, H, W), three whole numbers of at least 1, got {input_size!r}.")
    return tuple(int(v) for v in input_size)


@dataclass
class _ModuleInfo:
    """What the hooks need about one module, gathered once before the forward."""

    name: str  # first path under which named_modules() reaches it
    type: str
    params: list[nn.Parameter]  # registered directly on it
    is_leaf: bool
    is_script: bool = False  # a TorchScript module: its submodules' calls are not seen

    @property
    def depth(self) -> int:
        return 0 if self.name == "" else self.name.count(".") + 1


def _module_infos(model: nn.Module) -> dict[int, _ModuleInfo]:
    """id(module) -> its info, in named_modules() order (a shared module keeps its first name)."""
    infos: dict[int, _ModuleInfo] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        if id(module) not in infos:
            is_script = isinstance(module, torch.jit.ScriptModule)
            type_name = type(module).__name__
            if is_script:  # its class is RecursiveScriptModule or TracedModule; the one it was made from says more
                type_name = getattr(module, "original_name", None) or type_name
            infos[id(module)] = _ModuleInfo(
                name=module_name,
                type=type_name,
                params=[p for p in module._parameters.values() if p is not None],
                is_leaf=not any(child is not None for child in module._modules.values()),
                is_script=is_script,
            )
    return infos


def _trace(model: nn.Module, name: str, input_size: tuple[int, ...], batch: int
           ) -> tuple[LayerRow, list[str], set[int], list[str]]:
    """The call tree of one forward at ``input_size``, the layers past which the receptive field is
    not followed (``Summary.field_not_followed``), the ids of the parameters an operation read and
    the TorchScript modules whose layers are not split into rows (``Summary.script_modules``)."""
    infos = _module_infos(model)
    stack: list[LayerRow] = []
    inputs: list[Any] = []  # input shape of each module on the stack, for error messages
    modules: list[nn.Module] = []  # the module of each row on the stack, for error messages
    counted_params: set[int] = set()
    called: set[int] = set()
    fields: dict[int, ReceptiveField] = {}
    keep_alive: list[torch.Tensor] = []  # so ids in ``fields`` are not reused during the trace
    root_holder: list[LayerRow] = []
    script_calls: list[tuple[nn.Module, LayerRow]] = []  # TorchScript modules called, with their first row
    # Rows standing for a module the forward did not call but whose children it called, in order: a
    # ModuleList or ModuleDict (``for block in self.blocks: x = block(x)``). They hold those calls as an
    # nn.Sequential's row holds its children's, so that --depth merges them by module path into one row.
    groups: list[LayerRow] = []
    group_ids: set[int] = set()
    by_name: dict[str, _ModuleInfo] = {}  # filled on first use: most models never need it

    def parent_row(caller: LayerRow, name: str) -> LayerRow:
        """The row a call of module ``name`` from ``caller`` goes under: ``caller``, or the group rows for
        the paths between the two (``blocks`` for ``blocks.0`` called from the model's own forward)."""
        prefix = caller.name + "." if caller.name else ""
        if not name.startswith(prefix):  # a shared module called under another path stays under its caller
            return caller
        if not by_name:
            by_name.update((info.name, info) for info in infos.values())
        parts = name.split(".")
        parent = caller
        for level in range(caller.depth + 1, len(parts)):
            path = ".".join(parts[:level])
            last = parent.children[-1] if parent.children else None
            if last is not None and last.name == path and id(last) in group_ids:
                parent = last  # the next block of the same list, right after the previous one
                continue
            info = by_name.get(path)
            if info is None:
                return parent
            group = LayerRow(name=path, type=info.type, depth=level, output_shape=None, is_leaf=False)
            groups.append(group)
            group_ids.add(id(group))  # the rows live in the call tree until the end, so their ids stay theirs
            parent.children.append(group)
            parent = group
        return parent

    def own_params(info: _ModuleInfo) -> list[nn.Parameter]:
        """The module's parameters not yet charged to an earlier call (shared ones count once)."""
        own = []
        for p in info.params:
            if id(p) not in counted_params:
                counted_params.add(id(p))
                own.append(p)
        return own

    def pre_hook(module, args):
        info = infos.get(id(module))
        if info is None:  # a module outside the model (the hooks are global)
            return
        own = own_params(info)
        called.add(id(module))
        row = LayerRow(
            name=info.name,
            type=info.type,
            depth=info.depth,
            output_shape=None,
            params=sum(p.numel() for p in own),
            trainable=sum(p.numel() for p in own if p.requires_grad),
            is_leaf=info.is_leaf,
        )
        if stack:
            caller = stack[-1]
            # deeper than a child of the caller: the module path skips a module the forward did not call
            parent = parent_row(caller, info.name) if info.depth > caller.depth + 1 else caller
            parent.children.append(row)
        else:
            root_holder.append(row)
        stack.append(row)
        if info.is_script and not info.is_leaf:
            script_calls.append((module, row))
        first = _first_tensor(args)
        inputs.append(tuple(first.shape) if first is not None else None)
        modules.append(module)

    def post_hook(module, args, output):
        if id(module) not in infos:
            return
        row = stack.pop()
        inputs.pop()
        modules.pop()
        first = _first_tensor(output)
        if first is not None:
            row.output_shape = tuple(first.shape[1:])
            row.receptive_field = fields.get(id(first))

    param_ids = {id(p) for info in infos.values() for p in info.params}
    recorder = _OpRecorder(stack, fields, keep_alive, batch, param_ids)
    x = torch.zeros((batch, *input_size), device="meta", dtype=_float_dtype(model))
    fields[id(x)] = ReceptiveField()
    recorder.spatial_dims[id(x)] = (2, 3)  # (B, C, H, W)
    # Global hooks: two handles instead of two per module (registering 1,452 handles on the 726
    # modules of a ResNet-152 takes about 10 ms). Modules outside the model are skipped. Global
    # hooks run before a module's own hooks, so an output replaced by a module's hook is not seen.
    handles = [register_module_forward_pre_hook(pre_hook), register_module_forward_hook(post_hook)]
    try:
        # eval mode: the inference graph, without dropout or BN statistics updates. The model's
        # own tensors stay where they are: the recorder reads their shapes, or gives an op meta
        # copies of them, so every output is a meta tensor.
        with torch.no_grad(), eval_mode(model), recorder:
            model(x)
    except CnnlabError:
        raise
    except Exception as err:  # the user's model rejected the input: say where and with what
        if batch == 1 and stack and "Expected more than 1 value per channel" in str(err):
            # torch's batch norm without running statistics normalises with the batch's in eval mode too: at a 1x1
            # map one image is one value per channel. The input's size is not the fault, the batch's is.
            got = "x".join(map(str, inputs[-1])) if inputs and inputs[-1] else "?"
            raise BatchOfOneError(
                f"{name}'s layer '{stack[-1].name}' ({stack[-1].type}) normalises with the batch's own statistics, "
                f"also in eval mode (a norm without running statistics: track_running_stats=false), and one image "
                f"gives it one value per channel on its {got} input. Analyse it with a batch of 2 or more "
                "(--batch 2, or batch=2).") from None
        # A map too small for a layer is explained as `cnnlab build` explains it (not "when training").
        # a module of one's own is named by its class: given as that, it would be taken for a zoo model's name
        zoo_name = None if name == type(model).__name__ else name
        small = (too_small_message(model, input_size, stack[-1].name, modules[-1], inputs[-1], zoo_name)
                 if stack else None)
        if small is not None:
            raise InputTooSmallError(small) from None
        raise CnnlabError(_failure_message(name, input_size, stack, inputs, err, model, modules)) from None
    finally:
        for handle in handles:
            handle.remove()
    root = root_holder[0]
    # A group's output and field are its last call's, as a Sequential's are its last child's; an inner
    # group is made after the group holding it, so it is filled first.
    for group in reversed(groups):
        last = group.children[-1]
        group.output_shape, group.receptive_field = last.output_shape, last.receptive_field
    # Inside a TorchScript module the layers ran without their hooks firing: their operations are in the
    # module's row, and so are their parameters (listed as "not run", they would say the layers did not run).
    script_modules: list[str] = []
    inside_script: dict[int, LayerRow] = {}
    for module, row in script_calls:
        if any(id(m) not in called for m in module.modules()):
            script_modules.append(f"'{row.name}' ({row.type})" if row.name else f"the model ({row.type})")
        for inner in module.modules():
            inside_script.setdefault(id(inner), row)
    # Modules the forward never reached still own parameters: list them, never drop them.
    for module_id, info in infos.items():
        if module_id in called:
            continue
        own = own_params(info)
        if own and module_id in inside_script:
            row = inside_script[module_id]
            row.params += sum(p.numel() for p in own)
            row.trainable += sum(p.numel() for p in own if p.requires_grad)
        elif own:
            root.children.append(LayerRow(
                name=info.name, type=info.type, depth=info.depth, output_shape=None,
                params=sum(p.numel() for p in own), trainable=sum(p.numel() for p in own if p.requires_grad),
                ran=False, weights_read=any(id(p) in recorder.params_read for p in own),
            ))
    return root, recorder.field_not_followed, recorder.params_read, script_modules


def _first_tensor(value) -> Optional[torch.Tensor]:
    """The first tensor in a module's inputs or outputs (usually ``value`` or ``value[0]``)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return next((t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)), None)


def _float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's floating tensors (a .half() model gets a half probe)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


@dataclass(frozen=True)
class _OpInfo:
    """How an aten op is counted; worked out once per op overload from its packet and schema."""

    # "conv", "matmul", "window_pool", "adaptive_pool", "mean", "view", "copy" or "element"; a "mean" is told
    # apart when it runs (_OpRecorder._reduction_kind): "spatial_reduce", "side_reduce" or "element"
    kind: str
    in_place: bool  # writes into an input: allocates nothing
    untracked: bool  # the receptive field is not followed past it


_OP_INFO: dict[Any, _OpInfo] = {}


def _op_info(func) -> _OpInfo:
    info = _OP_INFO.get(func)
    if info is None:
        packet = func._overloadpacket
        if packet in CONV_OPS:
            kind = "conv"
        elif packet in MATMUL_OPS:
            kind = "matmul"
        elif packet in WINDOW_POOL_OPS:
            kind = "window_pool"
        elif packet in ADAPTIVE_POOL_OPS:
            kind = "adaptive_pool"
        elif packet in REDUCTION_OPS:
            kind = "mean"  # global pooling when it reduces H and W, pooling along one side, or element ops
        elif packet in VIEW_OPS:
            kind = "view"
        elif packet in COPY_OPS:
            kind = "copy"
        else:
            kind = "element"
        in_place = func._schema.name.endswith("_") or any(
            a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments
        )
        info = _OP_INFO[func] = _OpInfo(kind, in_place, packet in UNTRACKED_OPS)
    return info


class _OpRecorder(TorchDispatchMode):
    """Charges every aten op to the innermost running module and propagates receptive fields."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # By default torch wraps __torch_dispatch__ in torch._dynamo.disable, which imports
        # torch._dynamo (over a second) on the first op and adds a wrapper to every op. This
        # mode only runs eagerly inside summary(), never under torch.compile. (Should torch drop
        # this switch, the wrapper comes back: slower, not wrong.)
        return False

    def __init__(self, stack, fields, keep_alive, batch, param_ids: set[int]):
        super().__init__()
        self.stack, self.fields, self.keep_alive, self.batch = stack, fields, keep_alive, batch
        # id -> (H dim, W dim) of a tensor whose field is followed, where known: (2, 3) for the input (set by
        # summary) and the maps of convs and pools, moved by permutes (Swin's (B, H, W, C)); a strided slice
        # subsamples the map only along these
        self.spatial_dims: dict[int, tuple[int, int]] = {}
        # id -> (leading shape, (H dim, W dim)) of a 2-d tensor whose rows are a map's positions: a Linear on a
        # (B, H, W, C) map runs as a view to (B*H*W, C), a matrix product and a view back; the view back to
        # that leading shape gives the map its dims again
        self.flattened: dict[int, tuple[tuple[int, ...], tuple[int, int]]] = {}
        # ids of 2-d views whose rows hold one of a map's sides (its last dim is H or W): a matrix product
        # with them mixes positions along that side
        self.side_rows: set[int] = set()
        self.field_not_followed: list[str] = []  # "'name' (Type)" of each layer that stopped the field, once
        self.unfollowed: set[int] = set()  # ids of tensors computed past such a layer: no field
        self.param_ids = param_ids  # ids of the model's parameters
        self.params_read: set[int] = set()  # those an op read: a module not called may still have its weights used

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = _run_on_meta(func, args, kwargs)
        first_out = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(first_out, torch.Tensor) or not self.stack:
            return out
        row = self.stack[-1]
        info = _op_info(func)
        kind = info.kind
        if kind == "mean":
            kind = self._reduction_kind(args)
        if kind == "conv" and _is_transposed(args):
            weight = args[1]  # (C_in, C_out/g, K_h, K_w): each input element scatters into a window
            row.macs += args[0].numel() * math.prod(weight.shape[1:])
        elif kind == "conv":
            weight = args[1]
            row.macs += first_out.numel() * math.prod(weight.shape[1:])  # N*C_out*H'*W' x C_in/g*K_h*K_w
        elif kind == "matmul":
            a, b = (args[1], args[2]) if func._overloadpacket in (aten.addmm, aten.baddbmm) else (args[0], args[1])
            row.macs += a.numel() * b.shape[-1]  # (.., M, K) @ (.., K, N): M*K*N per matrix
        elif kind == "window_pool":
            row.pool_ops += first_out.numel() * math.prod(_pair(args[1]))
        elif kind == "adaptive_pool":
            row.pool_ops += _adaptive_pool_ops(args[0], first_out)
        elif kind in ("spatial_reduce", "side_reduce"):
            row.pool_ops += args[0].numel()  # every input element read once into its output's window
        elif kind in ("element", "unknown_reduce"):
            row.element_ops += first_out.numel()
        if kind != "view" and not info.in_place:
            row.memory += first_out.numel() * BYTES_PER_ELEMENT
        tensors = _tensors_in(args, kwargs)
        self.params_read.update(id(t) for t in tensors if id(t) in self.param_ids)
        self._propagate_field(func, info, kind, args, tensors, out, first_out)
        return out

    def _reduction_kind(self, args) -> str:
        """What a mean (amax, amin, sum) of a map does: "spatial_reduce" when it reduces both H and W (global
        pooling written as a reduction: x.mean((2, 3)), or x.mean((1, 2)) of a channels-last map), "side_reduce"
        when only one of them (strip pooling, coordinate attention: each output sees a whole row or column),
        "element" when neither (a mean over the channels, per pixel). A 4-d tensor whose layout is not known
        (a reshape lost it) is taken as (B, C, H, W) for a reduction over both of its last dims, as for global
        pooling; over one of them it is "unknown_reduce": a mean over W of a channel-shuffled map or over the
        channels of Swin-like (B, h, w, C) windows, told apart by nothing the op shows, so the field stops there
        and its work counts as element ops."""
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.ndim == 0:
            return "element"
        known = self.spatial_dims.get(id(x))
        sides = known or ((2, 3) if x.ndim == 4 else None)
        if sides is None:
            return "element"
        dims = args[1] if len(args) > 1 else None
        if dims is None or (isinstance(dims, (tuple, list)) and len(dims) == 0):
            reduced = set(range(x.ndim))  # x.mean(), x.sum(): every dim
        else:
            reduced = {d % x.ndim for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
        if reduced >= set(sides):
            return "spatial_reduce"
        if not reduced & set(sides):
            return "element"
        return "side_reduce" if known else "unknown_reduce"

    def _stop_following(self, out) -> None:
        """The field is not tracked past this op; the output names the layer where it stopped, rather than
        leaving the later rows blank without a reason. What ``out`` meets later has no field either."""
        row = self.stack[-1]
        where = f"'{row.name}' ({row.type})" if row.name else f"the model's own forward ({row.type})"
        if where not in self.field_not_followed:
            self.field_not_followed.append(where)
        self._mark_unfollowed(out)

    def _mark_unfollowed(self, out) -> None:
        for tensor in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(tensor, torch.Tensor):
                self.fields.pop(id(tensor), None)  # an in-place op (x += up(y)) writes into a followed map
                self.unfollowed.add(id(tensor))
                self.keep_alive.append(tensor)  # its id stays its own while the model runs

    def _follow_flattening(self, packet, kind: str, args, tensors, first_out) -> Optional[tuple[int, int]]:
        """A map's positions as the rows of a 2-d tensor (:attr:`flattened`): recorded for ``first_out`` when a
        view makes them rows or a matrix product or elementwise op keeps them; the dims again when a view
        restores the leading shape."""
        followed = [t for t in tensors if id(t) in self.fields]
        if not followed:
            return None
        source = followed[0]
        dims = self.spatial_dims.get(id(source))
        if packet in (aten.view, aten._unsafe_view, aten.reshape):
            leading = tuple(source.shape[:-1])
            if dims is not None and first_out.ndim == 2 and max(dims) < source.ndim - 1 \
                    and first_out.shape[0] == math.prod(leading):
                self.flattened[id(first_out)] = (leading, dims)
            elif dims is not None and first_out.ndim == 2 and source.ndim - 1 in dims \
                    and first_out.shape[0] == math.prod(leading):
                self.side_rows.add(id(first_out))
            elif id(source) in self.flattened and tuple(first_out.shape[:-1]) == self.flattened[id(source)][0]:
                return self.flattened[id(source)][1]
            return None
        rows = args[1] if packet is aten.addmm else args[0] if kind == "matmul" else None
        for tensor in followed if rows is None else [rows]:
            if id(tensor) in self.flattened and first_out.ndim == 2 and first_out.shape[0] == tensor.shape[0]:
                self.flattened[id(first_out)] = self.flattened[id(tensor)]
                break
        return None

    def _out_spatial_dims(self, packet, kind: str, args, tensors, first_out) -> Optional[tuple[int, int]]:
        """Where H and W lie in the op's output: a conv's or pool's map is (B, C, H, W); a permute or transpose
        moves them; an op whose output has its input's rank keeps them (norms, activations, adds, pads); a
        Linear on a channels-last map keeps them through its flattening (:meth:`_follow_flattening`)."""
        if kind in ("conv", "window_pool", "adaptive_pool") and first_out.ndim == 4:
            return (2, 3)
        restored = self._follow_flattening(packet, kind, args, tensors, first_out)
        if restored is not None:
            return restored
        followed = [(t, self.spatial_dims.get(id(t))) for t in tensors if id(t) in self.fields]
        source = next(((t, dims) for t, dims in followed if dims is not None), None)
        if source is None:
            return None
        tensor, dims = source
        if packet is aten.permute:
            order = [d % tensor.ndim for d in args[1]]
            return (order.index(dims[0]), order.index(dims[1]))
        if packet in (aten.transpose, aten.transpose_):
            swap = {args[1] % tensor.ndim: args[2] % tensor.ndim, args[2] % tensor.ndim: args[1] % tensor.ndim}
            return (swap.get(dims[0], dims[0]), swap.get(dims[1], dims[1]))
        return dims if first_out.ndim == tensor.ndim else None

    def _propagate_field(self, func, info: _OpInfo, kind: str, args, tensors, out, first_out) -> None:
        if any(id(t) in self.unfollowed for t in tensors):
            # a path whose field stopped: where it meets a followed one (x * x.mean(2), an upsampled map added
            # to a skip), the sum's field is not the followed path's alone
            self._mark_unfollowed(out)
            return
        known = [self.fields[id(t)] for t in tensors if id(t) in self.fields]
        if not known:
            return
        field = ReceptiveField.merge(known)
        packet = func._overloadpacket
        row = self.stack[-1]
        if info.untracked or (kind in ("window_pool", "adaptive_pool") and row.type.endswith("1d")):
            # upsampling, pixel shuffles, unpooling; a 1-d pool (run as a 2-d one on an unsqueezed map)
            self._stop_following(out)
            return
        if kind in ("conv", "window_pool") and (args[0].ndim != 4 or (kind == "conv" and _is_transposed(args))):
            self._stop_following(out)  # transposed or non-2-d layers
            return
        if kind == "conv":
            weight, stride, dilation = args[1], args[3], args[5]
            field = field.through(tuple(weight.shape[2:]), _pair(stride), _pair(dilation))
        elif kind == "window_pool":
            kernel = _pair(args[1])
            stride = _pair(args[2]) if len(args) > 2 and args[2] else kernel
            dilation = _pair(args[4]) if packet is not aten.avg_pool2d and len(args) > 4 else (1, 1)
            field = field.through(kernel, stride, dilation)
        elif kind == "spatial_reduce":
            field = ReceptiveField(None, field.jump)  # global pooling sees the whole input
        elif kind in ("side_reduce", "unknown_reduce"):  # whole along one side only (or perhaps none): not held
            self._stop_following(out)
            return
        elif kind == "adaptive_pool":
            in_h, in_w = args[0].shape[2], args[0].shape[3]
            out_h, out_w = (first_out.shape[2], first_out.shape[3]) if first_out.ndim == 4 else (1, 1)
            if out_h == 1 and out_w == 1:
                field = ReceptiveField(None, field.jump)  # global pooling sees the whole input
            else:  # an adaptive pool is a window pool: its largest window and step along each side
                (k_h, s_h), (k_w, s_w) = adaptive_window(in_h, out_h), adaptive_window(in_w, out_w)
                field = field.through((k_h, k_w), (s_h, s_w))
        elif packet in (aten.bmm, aten.baddbmm):
            field = ReceptiveField(None, field.jump)  # attention: every token sees every token
        elif kind == "matmul":
            a = args[1] if packet is aten.addmm else args[0]
            # One row per image: a flattened feature vector, every position mixed. More rows than
            # images: rows are pixel positions (a 1x1 conv written as Linear, as in ConvNeXt), unless a view
            # made one of the map's sides the row's entries: a Linear along W of a (B, C, H, W) map mixes a
            # whole row of positions (MLP-Mixer's token mixing), which the field does not hold
            if a.shape[0] == self.batch:
                field = ReceptiveField(None, field.jump)
            elif id(a) in self.side_rows:
                self._stop_following(out)
                return
        elif packet is aten.slice and len(args) > 4 and args[4] != 1:
            # strided subsampling by a slice, x[:, :, ::2, ::2] (or Swin's x[:, 0::2, 0::2, :]): the jump
            # grows along the side sliced; a slice of the channels leaves the field as it was
            dims = self.spatial_dims.get(id(args[0]))
            if dims is None and args[0].ndim == 4:
                # a map whose layout a reshape lost (ShuffleNet's channel shuffle views it 5-d and back): taken as
                # (B, C, H, W), the layout of every map the convs and pools give
                dims = (2, 3)
            if dims is None:  # which side a slice of this tensor subsamples is not known
                self._stop_following(out)
                return
            dim = args[1] % args[0].ndim
            if dim in dims:
                jump = list(field.jump)
                jump[dims.index(dim)] *= args[4]
                field = ReceptiveField(field.size, tuple(jump))
        spatial = self._out_spatial_dims(packet, kind, args, tensors, first_out)
        for tensor in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(tensor, torch.Tensor):
                self.fields[id(tensor)] = field
                if spatial is not None and tensor.ndim == first_out.ndim:
                    self.spatial_dims[id(tensor)] = spatial
                self.keep_alive.append(tensor)


def _tensors_in(args, kwargs) -> list[torch.Tensor]:
    """The tensors among an aten op's arguments (aten arguments nest one level: tensor lists)."""
    tensors = []
    for value in itertools.chain(args, kwargs.values()):
        if isinstance(value, torch.Tensor):
            tensors.append(value)
        elif isinstance(value, (tuple, list)):
            tensors.extend(v for v in value if isinstance(v, torch.Tensor))
    return tensors


def _run_on_meta(func, args, kwargs):
    """``func(*args, **kwargs)`` with meta outputs: by a shape rule below when one applies, else by
    torch's own meta kernel, with the model's real parameters and buffers swapped for meta copies."""
    rule = SHAPE_RULES.get(func)
    if rule is not None:
        out = rule(*args, **kwargs)
        if out is not None:
            return out
    if any(t.device.type != "meta" for t in _tensors_in(args, kwargs)):
        args, kwargs = tree_map_only(torch.Tensor, _meta_copy, (args, kwargs))
    return func(*args, **kwargs)


def _meta_copy(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.device.type == "meta":
        return tensor
    return torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device="meta")


def _is_transposed(args) -> bool:
    """A convolution's ``transposed`` flag (aten.convolution's 7th argument)."""
    return len(args) > 6 and bool(args[6])


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1])) if value else (1, 1)
    return (int(value), int(value))


def _adaptive_pool_ops(inp: torch.Tensor, out: torch.Tensor) -> int:
    """Pooling ops of an adaptive pool: each output's window size, summed.

    Where H' divides H every window has H / H' rows; otherwise torch's windows differ in size (2x2 pooled
    to 7x7 reads windows of 1 and 2 rows), so they are summed side by side rather than taken as one size.
    """
    if out.ndim == 4:
        out_h, out_w = out.shape[2], out.shape[3]
    else:  # a reduction: one value per (B, C)
        out_h = out_w = 1
    planes = out.numel() // (out_h * out_w)  # B x C
    return planes * _window_rows(inp.shape[2], out_h) * _window_rows(inp.shape[3], out_w)


def _window_rows(in_size: int, out_size: int) -> int:
    """Inputs read along one side by an adaptive pool, summed over its outputs: output i reads inputs
    floor(i * in / out) to ceil((i + 1) * in / out) - 1, as torch's adaptive pooling does."""
    return sum(-((-(i + 1) * in_size) // out_size) - (i * in_size) // out_size for i in range(out_size))


def _flatten(row: LayerRow, depth: Optional[int], out: list[LayerRow]) -> None:
    if depth is not None and row.depth >= depth and row.children:
        out.append(_collapse(row))
        return
    if row.is_leaf or row.has_own_numbers() or not row.ran:
        if row.depth > 0 or row.has_own_numbers():
            out.append(row)
    for child in row.children:
        _flatten(child, depth, out)


def _collapse(row: LayerRow) -> LayerRow:
    """One row for a whole subtree: its numbers summed, the subtree's output and field."""
    total = LayerRow(row.name, row.type, row.depth, row.output_shape, receptive_field=row.receptive_field,
                     ran=row.ran, is_leaf=False)
    stack = [row]
    while stack:
        node = stack.pop()
        for attr in ("memory", "params", "trainable", "macs", "pool_ops", "element_ops"):
            setattr(total, attr, getattr(total, attr) + getattr(node, attr))
        stack.extend(node.children)
    return total


def _failure_message(name, input_size, stack, inputs, err, model=None, modules=()) -> str:
    size = "x".join(map(str, input_size))
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, TypeError) and "positional argument" in detail and len(stack) <= 1:
        return (
            f"{name}'s forward does not take a single image tensor ({detail}). cnnlab analyses models "
            "whose forward is model(images); wrap the model in a module that builds its other inputs."
        )
    if isinstance(err, NotImplementedError) or "meta" in detail.lower():
        where = ""
        if stack:
            # the model itself is the stack's first entry, named '': its own forward, not a layer of it
            where = f" in layer '{stack[-1].name}' ({stack[-1].type})" if stack[-1].name else " in its own forward"
        return (
            f"{name} cannot be analysed from shapes alone{where}: its forward reads tensor values or "
            f"makes tensors on a fixed device ({detail}). cnnlab runs the forward on the meta device; "
            "make the forward depend only on shapes (create tensors with device=x.device)."
        )
    if not stack:
        return f"{name} failed on a {size} input before any layer ran: {detail}."
    layer = stack[-1]
    got = inputs[-1]
    shape = "x".join(map(str, got)) if got else "?"
    module = modules[-1] if modules else None
    if isinstance(module, nn.Conv2d) and got and len(got) == 4 and got[1] != module.in_channels:
        # A grayscale input to an RGB model (or the reverse): say which numbers disagree, not torch's
        # "Invalid channel dimensions".
        first = first_conv(model) if model is not None else None
        if first is not None and first[1] is module and got[1] == input_size[0]:
            remedy = (f"Give it {module.in_channels}-channel images, or a model whose first conv reads "
                      f"{counted(input_size[0], 'channel')} (cnnlab.create_model(NAME, in_chans={input_size[0]}) "
                      "builds one).")
        else:
            remedy = "Check the channels the layers before it pass on."
        return (
            f"{name} cannot take a {size} input: layer '{layer.name or name}' (Conv2d) reads "
            f"{counted(module.in_channels, 'channel')} and receives {got[1]} (a tensor of shape {shape}). {remedy}"
        )
    if model is not None and size_fits(model, input_size):
        if getattr(model, "model_name", None):
            remedy = SIZE_FITS_REMEDY  # a zoo model: an option it was built with may be out of range
        else:  # a module of one's own, wired as its author wired it
            remedy = ("The input is within the sizes the model records that it takes, so the cause lies in the "
                      "model: check that layer and what the layers before it pass on.")
    else:
        remedy = input_size_remedy(model, input_size) if model is not None else "Use an input size the model supports."
        if fixed_input_side(model) is None:
            remedy = remedy[:-1] + " or check in_chans."
    return (
        f"{name} cannot take a {size} input: layer '{layer.name or name}' ({layer.type}) failed on a "
        f"tensor of shape {shape} ({detail}). {remedy}"
    )
