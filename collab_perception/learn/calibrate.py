"""How much a degradation level costs a single agent: the calibration behind world.degrade's defaults
(scripts/calibrate_degradation.py is its command line; docs/DATASETS.md has the numbers).

A dataset's clean target views are degraded on the fly with each level, and one single-agent model per level
trains for the same number of steps with the same seed, so that only the degradation differs.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from ..data import BatchLoader
from ..runtime.metrics import ConfusionMatrix
from ..world.degrade import DegradeConfig, degrade
from .backbone import Decoder, Encoder


def target_views(root: str, split: str, limit: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """The clean target views [N, H, W, 3] and their labels [N, H, W] of one split."""
    images, labels = [], []
    for b in BatchLoader(root, split, 64, keys=['target_rgb_clean', 'labels', 'target_index'], shuffle=False):
        images.append(b['target_rgb_clean'])
        labels.append(np.stack([lab[t] for lab, t in zip(b['labels'], b['target_index'])]))
    return np.concatenate(images)[:limit], np.concatenate(labels)[:limit]


def degraded(images: np.ndarray, cfg: Optional[DegradeConfig], seed: int) -> np.ndarray:
    if cfg is None:
        return images
    rng = np.random.default_rng(seed)
    return np.stack([degrade(image, rng, cfg)[0] for image in images])


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float().div(255.0).permute(0, 3, 1, 2).contiguous()


def single_agent_accuracy(train: tuple, val: tuple, steps: int, num_classes: int, progress: bool = True) -> float:
    """Validation accuracy (%) of an encoder + head trained `steps` steps of batch 16 on (images, labels)."""
    torch.manual_seed(0)
    encoder, head = Encoder(32, 16), Decoder(32, num_classes, 16)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    for step in tqdm(range(steps), disable=not progress, leave=False, dynamic_ncols=True):
        for group in optimizer.param_groups:
            group['lr'] = 2e-3 * 0.5 * (1 + np.cos(np.pi * step / steps))
        idx = rng.integers(0, len(train[0]), 16)
        loss = F.cross_entropy(head(encoder(_tensor(train[0][idx]))), torch.from_numpy(train[1][idx]).long(),
                               ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    encoder.eval()
    head.eval()
    cm = ConfusionMatrix(num_classes)
    with torch.no_grad():
        for i in range(0, len(val[0]), 50):
            cm.update(head(encoder(_tensor(val[0][i:i + 50]))).argmax(1).numpy(), val[1][i:i + 50])
    return 100 * cm.accuracy()


def degradation_cost(train: tuple, val: tuple, cfg: Optional[DegradeConfig], steps: int, num_classes: int,
                     progress: bool = True, threads: int = 0) -> float:
    """single_agent_accuracy with train and val degraded by `cfg` (None: the clean views); `threads`: torch
    threads (0: all cores)."""
    if threads:
        torch.set_num_threads(threads)
    return single_agent_accuracy((degraded(train[0], cfg, 1), train[1]), (degraded(val[0], cfg, 2), val[1]),
                                 steps, num_classes, progress)
