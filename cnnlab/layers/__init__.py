"""Layer factories and shared blocks."""

from cnnlab.layers.act import act_names, get_act_layer
from cnnlab.layers.blocks import ConvNormAct, DropPath
from cnnlab.layers.norm import LayerNorm2d, LayerNormCHW, get_norm_layer, norm_names

__all__ = [
    "ConvNormAct",
    "DropPath",
    "LayerNorm2d",
    "LayerNormCHW",
    "act_names",
    "get_act_layer",
    "get_norm_layer",
    "norm_names",
]
