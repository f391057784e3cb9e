"""Which sample each rank reads, epoch after epoch, and how the loader runs (shared by
every dataset module)."""
import numpy as np


class ShardSampler:
    """Indices for one shard, re-drawn every epoch.

    Each epoch: a permutation of ``range(num_samples)`` seeded by (seed, epoch) (or the
    identity when not shuffling), padded by wrapping around to a multiple of
    ``num_shards`` (so every rank runs the same number of steps), then shard ``shard_id``
    takes every ``num_shards``-th element. Shards are disjoint when num_samples divides
    evenly, and together always cover every sample. Yields ``epoch * num_samples + index``
    so the source knows the epoch (for the augmentation seed).

    MindSpore iterates the sampler twice while building the dataset, so the count of
    ``__iter__`` calls is not the training epoch: the trainer calls ``set_epoch`` before
    iterating (also to resume). An epoch is always yielded whole: MindSpore checks that a
    generator delivers ``len(sampler)`` samples per epoch.
    """

    def __init__(self, num_samples, num_shards=1, shard_id=0, shuffle=True, seed=0, pad=True):
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id {shard_id} must be in [0, num_shards={num_shards})")
        self.num_samples, self.num_shards, self.shard_id = num_samples, num_shards, shard_id
        self.shuffle, self.seed, self.pad = shuffle, seed, pad
        self.epoch = 0

    def set_epoch(self, epoch):
        """The next ``__iter__`` yields epoch ``epoch``, the following ones the next epochs."""
        self.epoch = int(epoch)

    def indices(self, epoch):
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
                 if self.shuffle else np.arange(self.num_samples))
        if self.pad:
            total = -(-self.num_samples // self.num_shards) * self.num_shards
            order = np.resize(order, total)  # wraps around
        return order[self.shard_id::self.num_shards]

    def __len__(self):
        if self.pad:
            return -(-self.num_samples // self.num_shards)
        return len(range(self.shard_id, self.num_samples, self.num_shards))

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        return iter((epoch * self.num_samples + self.indices(epoch)).tolist())


def find_shard_sampler(dataset):
    """The ``ShardSampler`` feeding a ``mindspore.dataset`` pipeline (None: there is none).
    MindSpore wraps a Python sampler into an ``IterSampler`` that keeps it as ``.sampler``."""
    pending = [dataset]
    while pending:
        node = pending.pop()
        wrapper = getattr(node, "sampler", None)
        for candidate in (wrapper, getattr(wrapper, "sampler", None)):
            if isinstance(candidate, ShardSampler):
                return candidate
        pending.extend(getattr(node, "children", None) or [])
    return None


def generator_kwargs(cfg):
    """GeneratorDataset worker settings: separate processes only when asked for several."""
    workers = max(1, int(cfg.dataset_num_parallel_workers))
    return dict(num_parallel_workers=workers, python_multiprocessing=workers > 1)
