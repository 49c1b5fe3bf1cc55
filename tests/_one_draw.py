"""Building a model whose own initialisation draws every Linear weight again, without torch's first draw.

cnnlab's models end their __init__ in init_weights, and torchvision's VGG in its _initialize_weights: each fills
every Linear weight and zeroes its bias, so torch's default draw before it (nn.Linear.reset_parameters) is
overwritten unread. For a VGG that first draw is half of the build: 119M head weights, 1.6 s of 3.4 s on 2 busy
cores. The model's values still come from its own initialisation, from the same seed each time; a weight that
initialisation missed would keep torch.empty's contents, which a finite-output check still sees.
"""

from contextlib import contextmanager

import pytest
from torch import nn


@contextmanager
def one_draw_of_each_weight():
    """Within the block, nn.Linear leaves its new weight and bias as allocated, for the model's own init to fill."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nn.Linear, "reset_parameters", lambda self: None)
        yield
