"""Layer factories and the blocks every model is built from.

``blocks.py`` holds the shared conv-norm-act block; each architecture family's blocks live in a
file of their own (residual, inception, dense, mobile, convnext) and all take ``norm_layer`` /
``act_layer`` types.
"""

from cnnlab.layers.act import act_names, get_act_layer
from cnnlab.layers.blocks import ConvNormAct, DropPath
from cnnlab.layers.convnext import ConvNeXtBlock
from cnnlab.layers.dense import DenseBlock, DenseLayer, DenseTransition
from cnnlab.layers.dropout import VanillaDropout
from cnnlab.layers.inception import InceptionAux, InceptionBlock
from cnnlab.layers.mobile import DepthwiseSeparable, InvertedResidual, make_divisible
from cnnlab.layers.norm import LayerNorm2d, LayerNormCHW, get_norm_layer, norm_names
from cnnlab.layers.residual import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from cnnlab.layers.se import SqueezeExcite, make_se_layer

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ConvNeXtBlock",
    "ConvNormAct",
    "DenseBlock",
    "DenseLayer",
    "DenseTransition",
    "DepthwiseSeparable",
    "DropPath",
    "InceptionAux",
    "InceptionBlock",
    "InvertedResidual",
    "LayerNorm2d",
    "LayerNormCHW",
    "PreActBasicBlock",
    "PreActBottleneck",
    "SqueezeExcite",
    "VanillaDropout",
    "act_names",
    "get_act_layer",
    "get_norm_layer",
    "make_divisible",
    "make_se_layer",
    "norm_names",
]
