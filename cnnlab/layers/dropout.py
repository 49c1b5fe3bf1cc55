"""Vanilla dropout, as the lecture's first listing writes it.

Two ways to make the test-time output equal the training-time expectation (lecture 13's listings,
where p is the probability of KEEPING a unit):

* inverted dropout (torch's ``nn.Dropout``): training multiplies by a Bernoulli(keep) mask and
  divides by keep, so E[train output] = x; at test time the layer does nothing.
* vanilla dropout (:class:`VanillaDropout`): training multiplies by the mask without scaling, so
  E[train output] = keep * x; at test time the layer multiplies by keep.

Both here take ``p`` as torch does, the probability of DROPPING a unit (keep = 1 - p), so one config
value means the same rate for either kind.

Element-wise only: each activation (a hidden unit, or one (channel, y, x) value of a feature map)
is kept or dropped on its own, as the lecture's ``U1 = np.random.rand(*H1.shape) < p`` does. Channel
dropout (``nn.Dropout2d``, Tompson et al. 2015) is a different regulariser the lecture does not
teach, and no model cnnlab builds uses it, so there is no vanilla version of it.
"""

from __future__ import annotations

import torch
from torch import nn


class VanillaDropout(nn.Dropout):
    """Dropout without training-time scaling; eval multiplies by the keep probability ``1 - p``.

    ``p`` is the drop probability (as ``nn.Dropout``'s). Training: x * m with m ~ Bernoulli(1 - p)
    per element. Eval: x * (1 - p), deterministic. A subclass of ``nn.Dropout``, so code that looks
    for dropout layers (``isinstance(m, nn.Dropout)``) finds it and ``model.eval()`` switches it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = 1.0 - self.p
        if self.training:
            if self.p == 0.0:
                return x
            mask = torch.empty_like(x).bernoulli_(keep)  # same shape as x: one draw per activation
            return x.mul_(mask) if self.inplace else x * mask
        if self.p == 0.0:
            return x
        # Test time: every unit is on, scaled to its training-time expectation keep * x.
        return x.mul_(keep) if self.inplace else x * keep
