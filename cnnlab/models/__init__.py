"""The model zoo. Importing this package registers every architecture."""

from cnnlab.models import (  # noqa: F401  (imported for their @register_model side effect)
    alexnet,
    convnext,
    densenet,
    googlenet,
    lenet,
    mlp,
    mobilenet,
    nin,
    resnet,
    vgg,
)
from cnnlab.models._base import AuxLogits, ClassifierModel, check_input_size
from cnnlab.models._registry import (
    ModelInfo,
    create_model,
    default_input,
    is_torchvision_name,
    list_models,
    model_exists,
    model_info,
    register_model,
)
from cnnlab.models._zoo import build_on_meta, count_params, torchvision_table, zoo_table
from cnnlab.models.stages import (
    Stage,
    classifier_names,
    freeze_choices,
    frozen_stage_names,
    model_stages,
    pre_logits,
    reset_classifier,
    set_requires_grad,
    stage_of_parameters,
)
from cnnlab.models.torchvision_compat import load_torchvision_state_dict
from cnnlab.models.tv import list_torchvision_models

__all__ = [
    "AuxLogits",
    "ClassifierModel",
    "ModelInfo",
    "Stage",
    "build_on_meta",
    "check_input_size",
    "classifier_names",
    "count_params",
    "create_model",
    "default_input",
    "freeze_choices",
    "frozen_stage_names",
    "is_torchvision_name",
    "list_models",
    "list_torchvision_models",
    "load_torchvision_state_dict",
    "model_exists",
    "model_info",
    "model_stages",
    "pre_logits",
    "register_model",
    "reset_classifier",
    "set_requires_grad",
    "stage_of_parameters",
    "torchvision_table",
    "zoo_table",
]
