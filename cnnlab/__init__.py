"""cnnlab: build, analyse, train, tune, evaluate and transfer convolutional image classifiers."""

from cnnlab.analysis import receptive_field, summary
from cnnlab.errors import CnnlabError
from cnnlab.models import (
    AuxLogits,
    check_input_size,
    create_model,
    list_models,
    load_torchvision_state_dict,
    model_info,
)

__version__ = "0.1.0"

__all__ = [
    "AuxLogits",
    "CnnlabError",
    "check_input_size",
    "create_model",
    "list_models",
    "load_torchvision_state_dict",
    "model_info",
    "receptive_field",
    "summary",
]
