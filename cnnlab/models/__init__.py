"""The model zoo. Importing this package registers every architecture."""

from cnnlab.models import (  # noqa: F401  (imported for their @register_model side effect)
    alexnet,
    convnext,
    densenet,
    googlenet,
    lenet,
    mobilenet,
    nin,
    resnet,
    vgg,
)
from cnnlab.models._base import AuxLogits, ClassifierModel, check_input_size
from cnnlab.models._registry import ModelInfo, create_model, list_models, model_info, register_model
from cnnlab.models._zoo import build_on_meta, count_params, zoo_table
from cnnlab.models.torchvision_compat import load_torchvision_state_dict

__all__ = [
    "AuxLogits",
    "ClassifierModel",
    "ModelInfo",
    "build_on_meta",
    "check_input_size",
    "count_params",
    "create_model",
    "list_models",
    "load_torchvision_state_dict",
    "model_info",
    "register_model",
    "zoo_table",
]
