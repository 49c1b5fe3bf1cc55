"""Seeds derived from (seed, epoch, index): shared by the in-memory loader, the file loaders and the bucket sampler.

Kept apart from the loaders so that each of them imports it without importing the others.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 63-bit generator seed from (seed, epoch), well mixed so that nearby pairs give unrelated streams.

    ``stream`` > 0 gives another, unrelated seed for the same pair: for draws that must not share a
    generator with others whose order varies (stream 0 is the two-number seed, unchanged).
    """
    entropy = [int(seed), int(epoch)] + ([int(stream)] if stream else [])
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1  # torch.Generator.manual_seed takes 64-bit values; keep it non-negative


def seeded_transform(transform: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, seed: int,
                     index: int) -> torch.Tensor:
    """``transform(image)`` under torch's global generator seeded from (``seed``, ``index``).

    torchvision's random transforms draw from the global generator; forking it and seeding it per
    image makes an image's view depend only on (epoch seed, index), whatever the number of DataLoader
    workers, and leaves the caller's global random state as it was.
    """
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only: torch.manual_seed would reseed every GPU too, which fork_rng(devices=[])
        # does not restore (torchvision's transforms draw on the CPU)
        torch.default_generator.manual_seed(epoch_seed(seed, index))
        return transform(image)


def epoch_order(count: int, generator: torch.Generator) -> torch.Tensor:
    """(count,) a shuffled order of the split's indices: the first draw from ``generator``, seeded from (seed, epoch).

    The one rule for both loaders, so that the same seed puts the same images in the same batches whether a
    split is held in memory or read from files (data.in_memory, or memory_limit_mb, decides which).
    """
    return torch.randperm(count, generator=generator)
