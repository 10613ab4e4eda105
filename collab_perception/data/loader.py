"""Stream snapshots and training batches from a dataset's shards (numpy only; no torch here).

Only one shard is read at a time, and only the requested keys of it; snapshots are copied out of the shard
so it can be freed, so memory stays at about one shard plus the shuffle buffer, whatever the dataset size.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from .shards import SPLITS, load_manifest, read_shard


def shard_paths(root: str, split: str) -> list[str]:
    manifest = load_manifest(root)
    if split not in SPLITS:
        raise ValueError(f'unknown split {split!r}; splits: {", ".join(SPLITS)}')
    return [os.path.join(root, s['path']) for s in manifest['splits'][split]['shards']]


def _snapshots_of(path: str, keys: Optional[Sequence[str]]) -> Iterator[dict[str, np.ndarray]]:
    arrays = read_shard(path, keys)
    count = len(next(iter(arrays.values())))
    for i in range(count):
        yield {k: np.array(v[i]) for k, v in arrays.items()}


def iter_snapshots(root: str, split: str = 'train', keys: Optional[Sequence[str]] = None) -> Iterator[dict]:
    """Every snapshot of a split in file order, as a dict of arrays (without the snapshot axis)."""
    for path in shard_paths(root, split):
        yield from _snapshots_of(path, keys)


class BatchLoader:
    """Batches (dicts of stacked arrays, leading batch axis) from one split of a dataset.

    Each pass over the loader is an epoch: shards in a random order, their snapshots through a shuffle buffer
    of `buffer_size`. The order is a function of (seed, epoch number), so runs are reproducible; `shuffle=False`
    keeps file order. `transform` may rewrite each snapshot dict before batching (e.g. pick a target's views).
    """

    def __init__(self, root: str, split: str = 'train', batch_size: int = 8, keys: Optional[Sequence[str]] = None,
                 shuffle: bool = True, buffer_size: int = 256, seed: int = 0, drop_last: bool = False,
                 transform: Optional[Callable[[dict], dict]] = None):
        if batch_size < 1 or buffer_size < 1:
            raise ValueError('batch_size and buffer_size must be >= 1')
        self.root, self.split, self.batch_size, self.keys = root, split, batch_size, keys
        self.shuffle, self.buffer_size, self.seed, self.drop_last = shuffle, buffer_size, seed, drop_last
        self.transform = transform
        self.paths = shard_paths(root, split)
        self.snapshots = load_manifest(root)['splits'][split]['snapshots']
        self.epoch = 0

    def __len__(self) -> int:
        full, rest = divmod(self.snapshots, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def _stream(self, rng: Optional[np.random.Generator]) -> Iterator[dict]:
        order = rng.permutation(len(self.paths)) if rng is not None else range(len(self.paths))
        buffer: list[dict] = []
        for i in order:
            for snap in _snapshots_of(self.paths[i], self.keys):
                if rng is None:
                    yield snap
                elif len(buffer) < self.buffer_size:
                    buffer.append(snap)
                else:
                    j = int(rng.integers(len(buffer)))
                    yield buffer[j]
                    buffer[j] = snap
        if rng is not None:
            for j in rng.permutation(len(buffer)):
                yield buffer[j]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
        self.epoch += 1
        batch: list[dict] = []
        for snap in self._stream(rng):
            batch.append(self.transform(snap) if self.transform else snap)
            if len(batch) == self.batch_size:
                yield {k: np.stack([b[k] for b in batch]) for k in batch[0]}
                batch = []
        if batch and not self.drop_last:
            yield {k: np.stack([b[k] for b in batch]) for k in batch[0]}
