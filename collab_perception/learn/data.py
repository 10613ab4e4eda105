"""Dataset snapshots -> the tensors of one collaborative frame (handshake paper §IV-B settings).

For a snapshot with N agents and target t:
    target      the degraded target image (rgb[t])
    supporters  the S = N - 1 other agents' images, in slot order: raw views in `hidden-target` (one slot holds
                the clean target view), views warped into the target with depth + pose in the pose settings
                (`accurate-pose`, `noisy-pose`, `random-exploration`; Who2com §IV-B)
    clean       the target's view without degradation (Single normal, the upper bound)
    labels      the target's labels
    best        the supporter slot a perfect selection would pick: the hidden clean view, or the supporter with
                the largest overlap; -1 when no supporter sees the target at all
    valid       per supporter, the target pixels its warped view covers (pose settings; all valid for raw views)
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch

from ..data import BatchLoader, load_manifest

WARPED_SETTINGS = ('accurate-pose', 'noisy-pose', 'random-exploration')
HANDSHAKE_SETTINGS = ('hidden-target',) + WARPED_SETTINGS
KEYS = ('rgb', 'labels', 'target_index', 'target_rgb_clean', 'best_supporter', 'hidden_index', 'warped_rgb')


def dataset_keys(setting: str) -> list[str]:
    keys = ['rgb', 'labels', 'target_index', 'target_rgb_clean', 'best_supporter']
    keys += ['hidden_index'] if setting == 'hidden-target' else ['warped_rgb', 'warped_valid']
    return keys


def collab_frame(snapshot: dict, setting: str) -> dict:
    """One snapshot dict (numpy, no batch axis) -> the arrays of one collaborative frame."""
    t = int(snapshot['target_index'])
    n = snapshot['rgb'].shape[0]
    others = [i for i in range(n) if i != t]
    source = snapshot['warped_rgb'] if setting in WARPED_SETTINGS else snapshot['rgb']
    valid = (snapshot['warped_valid'][others] if setting in WARPED_SETTINGS
             else np.ones((n - 1,) + source.shape[1:3], bool))
    if setting == 'hidden-target':
        best_agent = int(snapshot['hidden_index'])
    else:
        best_agent = int(snapshot['best_supporter'][t])
    return {
        'target': snapshot['rgb'][t],
        'supporters': source[others],
        'clean': snapshot['target_rgb_clean'],
        'labels': snapshot['labels'][t],
        'best': np.int64(others.index(best_agent) if best_agent in others else -1),
        'valid': valid,
    }


def to_tensors(batch: dict, flip: Optional[np.ndarray] = None) -> dict:
    """Stacked numpy frames -> float tensors in [0, 1], NCHW (channels_last), labels int64. `flip` (bool per
    frame) mirrors every view of a frame left-right (a consistent augmentation: warped views stay aligned)."""
    def images(x: np.ndarray) -> torch.Tensor:
        if flip is not None and flip.any():
            x = x.copy()
            x[flip] = x[flip][..., :, ::-1, :]
        t = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
        return t.movedim(-1, -3).contiguous()

    labels, valid = batch['labels'], batch['valid']
    if flip is not None and flip.any():
        labels, valid = labels.copy(), valid.copy()
        labels[flip] = labels[flip][..., ::-1]
        valid[flip] = valid[flip][..., ::-1]
    out = {
        'target': images(batch['target']).contiguous(memory_format=torch.channels_last),
        'supporters': images(batch['supporters']),
        'clean': images(batch['clean']).contiguous(memory_format=torch.channels_last),
        'labels': torch.from_numpy(np.ascontiguousarray(labels)).long(),
        'best': torch.from_numpy(batch['best']).long(),
        'valid': torch.from_numpy(np.ascontiguousarray(valid)).unsqueeze(2).float(),      # [B, S, 1, H, W]
    }
    return out


class ShardFrameLoader:
    """Batches of one split streamed from the shards (data.BatchLoader), converted to tensors, with optional
    left-right flips: what every setting's loader shares. Subclasses give the keys, the per-snapshot
    `transform` and `tensors(batch, flip)`; train.LOADERS maps settings to them."""

    def __init__(self, root: str, setting: str, split: str, batch_size: int, keys: list[str], transform,
                 seed: int = 0, shuffle: bool = True, augment: bool = False, limit: Optional[int] = None):
        self.manifest = load_manifest(root)
        self.setting = setting
        self.loader = BatchLoader(root, split, batch_size, keys=keys, shuffle=shuffle, seed=seed, transform=transform)
        self.augment = augment
        self.rng = np.random.default_rng(seed + 7919)
        self.limit = limit

    @property
    def agents(self) -> int:
        return int(self.manifest['agents'])

    @property
    def num_classes(self) -> int:
        return len(self.manifest['classes'])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.manifest['image']['height']), int(self.manifest['image']['width'])

    def __len__(self) -> int:
        return len(self.loader) if self.limit is None else min(self.limit, len(self.loader))

    def tensors(self, batch: dict, flip: Optional[np.ndarray]) -> dict:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        self.loader.epoch = epoch

    def __iter__(self) -> Iterator[dict]:
        for i, batch in enumerate(self.loader):
            if self.limit is not None and i >= self.limit:
                break
            flip = self.rng.random(len(batch['labels'])) < 0.5 if self.augment else None
            yield self.tensors(batch, flip)


class FrameLoader(ShardFrameLoader):
    """Batches of collaborative frames of one split of a handshake setting."""

    def __init__(self, root: str, setting: str, split: str, batch_size: int, seed: int = 0, shuffle: bool = True,
                 augment: bool = False, limit: Optional[int] = None):
        manifest = load_manifest(root)
        if manifest['setting'] != setting:
            raise ValueError(f'{root} holds the {manifest["setting"]!r} setting, not {setting!r}')
        if setting not in HANDSHAKE_SETTINGS:
            raise ValueError(f'setting {setting!r} is not a handshake setting; valid: {", ".join(HANDSHAKE_SETTINGS)}')
        super().__init__(root, setting, split, batch_size, dataset_keys(setting), lambda s: collab_frame(s, setting),
                         seed=seed, shuffle=shuffle, augment=augment, limit=limit)

    def tensors(self, batch: dict, flip: Optional[np.ndarray]) -> dict:
        return to_tensors(batch, flip)
