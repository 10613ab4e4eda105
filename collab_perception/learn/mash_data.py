"""Dataset snapshots of the `obstruction` setting -> the tensors of one MASH frame (MASH §IV "Dataset").

For a snapshot with N = 6 agents and target t, the supporters are the other agents in ascending order:
    target              rgb[t], the target's image with the obstruction in it
    supporters          rgb of the S = N - 1 others, raw and unwarped (obstructions included where they see them)
    labels              labels[t]: the target's unobstructed surface (what MASH must predict)
    supporter_labels    the supporters' labels (per-agent segmentation masks, §III "Training")
    obstruction_mask    the target's obstruction pixels (Table I's "obstructed region")
    correspondence      correspondence[t, s] per supporter: for each target cell (row-major), the supporter cell
                        that sees the same surface, C = Hc*Wc for no match (the cost volume's training signal and
                        WarpedOutputStack's ground-truth warping grid)
    correspondence_uv   correspondence_uv[t, s] per supporter: where each target cell's centre lands in the
                        supporter, in pixels below the cell grid (NaN: no match); in datasets that have the key
                        (the label-resolution warping grid of WarpedOutputStack and of MASH's sub-cell targets)

Augmentation mirrors whole frames left-right: every view and label map, and the correspondences with them
(a mirrored world is consistent: target cell (r, c) of the mirror matches the mirror of the cell the original
(r, Wc - 1 - c) matched).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..data import load_manifest
from .data import ShardFrameLoader
from .mash import CELL_SIZE, SUBCELL_KEY

SETTING = 'obstruction'
KEYS = ['rgb', 'labels', 'target_index', 'correspondence', 'obstruction_mask']


def obstruction_frame(snapshot: dict) -> dict:
    """One snapshot dict (numpy, no batch axis) -> the arrays of one MASH frame."""
    t = int(snapshot['target_index'])
    others = [i for i in range(snapshot['rgb'].shape[0]) if i != t]
    frame = {
        'target': snapshot['rgb'][t],
        'supporters': snapshot['rgb'][others],
        'labels': snapshot['labels'][t],
        'supporter_labels': snapshot['labels'][others],
        'obstruction_mask': snapshot['obstruction_mask'][t],
        'correspondence': snapshot['correspondence'][t, others],
    }
    if SUBCELL_KEY in snapshot:
        frame[SUBCELL_KEY] = snapshot[SUBCELL_KEY][t, others].astype(np.float32)
    return frame


def mirror_correspondence(correspondence: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Cell correspondences [..., Hc*Wc] of a frame -> those of the left-right mirrored frame."""
    hc, wc = grid
    no_match = hc * wc
    source_of = np.arange(no_match).reshape(hc, wc)[:, ::-1].ravel()     # mirrored target cell <- original cell
    picked = correspondence[..., source_of].astype(np.int64)
    row, col = np.divmod(picked, wc)
    return np.where(picked == no_match, no_match, row * wc + (wc - 1 - col)).astype(correspondence.dtype)


def mirror_positions(positions: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Sub-cell positions [..., Hc*Wc, 2] (pixels (u, v) in the supporter) of a frame -> those of the
    left-right mirrored frame: the cells reorder as in mirror_correspondence and u becomes W - 1 - u."""
    hc, wc = grid
    source_of = np.arange(hc * wc).reshape(hc, wc)[:, ::-1].ravel()
    out = positions[..., source_of, :].copy()
    out[..., 0] = wc * CELL_SIZE - 1 - out[..., 0]
    return out


def to_tensors(batch: dict, grid: tuple[int, int], flip: Optional[np.ndarray] = None) -> dict:
    """Stacked numpy frames -> float images in [0, 1] (NCHW; the target channels_last), int64 labels and
    correspondences, bool masks. `flip` (bool per frame) mirrors the frames it marks."""
    batch = dict(batch)
    if flip is not None and flip.any():
        for key in ('target', 'supporters', 'labels', 'supporter_labels', 'obstruction_mask'):
            x = batch[key].copy()
            axis = -2 if key in ('target', 'supporters') else -1        # images end with (W, 3)
            x[flip] = np.flip(x[flip], axis=axis)
            batch[key] = x
        corr = batch['correspondence'].copy()
        corr[flip] = mirror_correspondence(corr[flip], grid)
        batch['correspondence'] = corr
        if SUBCELL_KEY in batch:
            uv = batch[SUBCELL_KEY].copy()
            uv[flip] = mirror_positions(uv[flip], grid)
            batch[SUBCELL_KEY] = uv

    def images(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0).movedim(-1, -3).contiguous()

    out = {
        'target': images(batch['target']).contiguous(memory_format=torch.channels_last),
        'supporters': images(batch['supporters']),
        'labels': torch.from_numpy(np.ascontiguousarray(batch['labels'])).long(),
        'supporter_labels': torch.from_numpy(np.ascontiguousarray(batch['supporter_labels'])).long(),
        'obstruction_mask': torch.from_numpy(np.ascontiguousarray(batch['obstruction_mask'])),
        'correspondence': torch.from_numpy(np.ascontiguousarray(batch['correspondence'])).long(),
    }
    if SUBCELL_KEY in batch:
        out[SUBCELL_KEY] = torch.from_numpy(np.ascontiguousarray(batch[SUBCELL_KEY], dtype=np.float32))
    return out


class ObstructionLoader(ShardFrameLoader):
    """Batches of MASH frames of one split, streamed from the shards; the loader of the `obstruction`
    setting in train.LOADERS."""

    def __init__(self, root: str, setting: str, split: str, batch_size: int, seed: int = 0, shuffle: bool = True,
                 augment: bool = False, limit: Optional[int] = None):
        manifest = load_manifest(root)
        if setting != SETTING or manifest['setting'] != SETTING:
            raise ValueError(f'{root} holds the {manifest["setting"]!r} setting; ObstructionLoader reads '
                             f'{SETTING!r} datasets only (asked for {setting!r})')
        if manifest['cell_size'] != CELL_SIZE:
            raise ValueError(f'{root} has {manifest["cell_size"]}-px correspondence cells; MASH\'s cell grid is '
                             f'{CELL_SIZE} px (generate with --cell-size {CELL_SIZE})')
        keys = KEYS + ([SUBCELL_KEY] if SUBCELL_KEY in manifest.get('keys', {}) else [])
        super().__init__(root, setting, split, batch_size, keys, obstruction_frame, seed=seed, shuffle=shuffle,
                         augment=augment, limit=limit)

    @property
    def grid(self) -> tuple[int, int]:
        hc, wc = self.manifest['cells']
        return int(hc), int(wc)

    def tensors(self, batch: dict, flip: Optional[np.ndarray]) -> dict:
        return to_tensors(batch, self.grid, flip)
