"""Every shipped recipe is a complete, valid config that builds its model on its data's image size."""

from pathlib import Path

import pytest
import torch
import yaml

from cnnlab.config import load_config
from cnnlab.models import check_input_size, create_model
from cnnlab.models._base import first_conv
from cnnlab.train.whiten import whiten_first_conv

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def test_the_recipes_are_there():
    assert {p.name for p in RECIPES} >= {"lenet5-digits.yaml", "fashion-mnist-fast.yaml", "fashion-mnist-best.yaml",
                                     "fashion-mnist-45min.yaml", "fashion-mnist-5min.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_names_its_model_data_and_training(path):
    raw = yaml.safe_load(path.read_text())
    # A recipe that lost its body would silently train the defaults: each must say what it trains.
    assert isinstance(raw, dict) and {"model", "data", "optim", "train"} <= set(raw), path.name
    config = load_config(path)
    assert config.model.name == raw["model"]["name"] and config.data.spec == raw["data"]["spec"]
    size = 32 if config.data.spec == "digits" else 28  # the 8x8 digits are upscaled to 32x32; Fashion-MNIST is 28x28
    model = create_model(config.model.name, num_classes=10, in_chans=1, **config.model.options)
    assert check_input_size(model, (1, size, size), config.model.name) == (10,)
    if config.model.whiten != "none":
        # The whitened first conv must fit its patches (at most 2 x C*kh*kw filters), or training stops at
        # set-up: a recipe whose first stage grew past that would load and build, and fail only there.
        images = torch.randn(8, 1, size, size, generator=torch.Generator().manual_seed(0))
        report = whiten_first_conv(model, images, config.model.whiten)
        conv = first_conv(model)[1]
        (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
        valid = (size - dh * (kh - 1)) * (size - dw * (kw - 1))  # patch positions per image
        assert report.filters == conv.out_channels and report.patches == len(images) * valid
