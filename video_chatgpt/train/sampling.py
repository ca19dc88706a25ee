"""``--group_by_length``: the training order in batches of samples of similar length (docs/packing.md).

As LLaVA's ``group_by_modality_length`` and transformers' ``LengthGroupedSampler``, but over this project's lengths
(``SupervisedVideoDataset.lengths``: exact rendered lengths, or estimated from the records without tokenizing):

1. shuffle every index with a generator seeded by ``seed + epoch`` (every process draws the same order);
2. cut the shuffled order into megabatches of up to 50 steps (a step: ``batch_size x world_size`` samples, the
   samples all processes train on at once; fewer steps per megabatch on small data, as transformers does), and sort
   each megabatch by length, longest first;
3. cut each megabatch into steps, shuffle the steps (same generator) and put the step holding the longest sample
   first, so a batch that does not fit in memory fails at step 1, not hours in.

Within a step, accelerate hands consecutive ``batch_size`` slices to the processes in turn (``BatchSamplerShard``),
so every process gets samples of about the same length and none waits for a much longer batch elsewhere. The sampler
depends only on the lengths, the sizes, the seed and the epoch: a resumed run replays the same order and skips the
batches it already trained on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

MAX_STEPS_PER_MEGABATCH = 50


def grouped_indices(lengths: Sequence[int], batch_size: int, world_size: int, seed: int) -> list[int]:
    """The indices of ``lengths`` in the order described in the module docstring."""
    n = len(lengths)
    if n == 0:
        return []
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).tolist()
    step = max(1, batch_size * world_size)
    megabatch = step * max(1, min(MAX_STEPS_PER_MEGABATCH, n // (4 * step)))
    steps: list[list[int]] = []
    for begin in range(0, n, megabatch):
        chunk = sorted(order[begin : begin + megabatch], key=lambda i: -lengths[i])
        steps.extend(chunk[s : s + step] for s in range(0, len(chunk), step))
    full = [s for s in steps if len(s) == step]
    partial = [s for s in steps if len(s) != step]  # at most one per megabatch: kept at the end, in order
    full = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
    steps = full + partial
    longest = max(range(len(steps)), key=lambda k: max(lengths[i] for i in steps[k]))
    if len(steps[longest]) == step:
        steps.insert(0, steps.pop(longest))
    return [i for s in steps for i in s]


class LengthGroupedSampler(Sampler[int]):
    """Sampler over ``lengths``: batches of similar length, shuffled with ``seed`` (``set_epoch`` reshuffles)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, world_size: int = 1, seed: int = 0):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(grouped_indices(self.lengths, self.batch_size, self.world_size, self.seed + self.epoch))


def padding_fraction(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> float:
    """The share of a padded batch's token positions that are padding, over ``order`` in batches of ``batch_size``
    (what ``--group_by_length`` lowers and ``--packing`` removes)."""
    real = slots = 0
    for begin in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[begin : begin + batch_size]]
        real += sum(batch)
        slots += len(batch) * max(batch)
    return 1 - real / slots if slots else 0.0
