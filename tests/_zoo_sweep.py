"""The models the registry-wide sweeps build: every registered model, but for the very deep ones that a
smaller net of the same builder and blocks stands for.

A sweep runs its check once per model, several of them on the meta device, where a forward pass costs
per layer rather than per pixel: preact_resnet1001 (333 bottlenecks) took 0.5 to 5 s in each of eight
sweeps, 23 s in all on 2 busy cores, where preact_resnet164 (the same builder and blocks, n = 18 a stage
for 111) took at most 1 s in each. tests/models/test_resnet.py builds preact_resnet1001 itself: its parameters by hand,
its layout, its depth, and its forward at the smallest input.
"""

import cnnlab

# deep model -> the model of the same builder and block type that the sweeps check in its place
STANDS_IN_FOR = {"preact_resnet1001": "preact_resnet164"}

SWEPT = [name for name in cnnlab.list_models() if name not in STANDS_IN_FOR]
