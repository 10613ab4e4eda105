"""How much a degradation level costs a single agent: the calibration behind world.degrade's defaults.

    python scripts/calibrate_degradation.py datasets/hidden-target --steps 500 \
        --level 512,5,20 --level 256,10,40 --level 256,20,60

Reads the clean target views and labels of a dataset's train and val splits, degrades them on the fly with
each level (blur reference width in px, noise std low, noise std high; kernel sizes 1..100 as the handshake
paper, §IV-B), trains one single-agent model per level (and one on the clean views) for the same number of
steps, and prints each level's validation accuracy and its distance to the clean views' (the paper's Table I:
Single degraded 19.4 points below Single normal). Same seed for every level, so only the degradation differs.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from collab_perception.data import BatchLoader, load_manifest
from collab_perception.learn.backbone import Decoder, Encoder
from collab_perception.runtime.metrics import ConfusionMatrix
from collab_perception.world.degrade import DegradeConfig, degrade


def target_views(root: str, split: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for b in BatchLoader(root, split, 64, keys=['target_rgb_clean', 'labels', 'target_index'], shuffle=False):
        images.append(b['target_rgb_clean'])
        labels.append(np.stack([lab[t] for lab, t in zip(b['labels'], b['target_index'])]))
    return np.concatenate(images)[:limit], np.concatenate(labels)[:limit]


def degraded(images: np.ndarray, cfg: DegradeConfig | None, seed: int) -> np.ndarray:
    if cfg is None:
        return images
    rng = np.random.default_rng(seed)
    return np.stack([degrade(image, rng, cfg)[0] for image in images])


def tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float().div(255.0).permute(0, 3, 1, 2).contiguous()


def accuracy_after_training(train: tuple, val: tuple, steps: int, num_classes: int, progress: bool) -> float:
    torch.manual_seed(0)
    encoder, head = Encoder(32, 16), Decoder(32, num_classes, 16)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    for step in tqdm(range(steps), disable=not progress, leave=False, dynamic_ncols=True):
        for group in optimizer.param_groups:
            group['lr'] = 2e-3 * 0.5 * (1 + np.cos(np.pi * step / steps))
        idx = rng.integers(0, len(train[0]), 16)
        loss = F.cross_entropy(head(encoder(tensor(train[0][idx]))), torch.from_numpy(train[1][idx]).long(),
                               ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    encoder.eval()
    head.eval()
    cm = ConfusionMatrix(num_classes)
    with torch.no_grad():
        for i in range(0, len(val[0]), 50):
            cm.update(head(encoder(tensor(val[0][i:i + 50]))).argmax(1).numpy(), val[1][i:i + 50])
    return 100 * cm.accuracy()


def parse_level(text: str) -> DegradeConfig:
    try:
        width, low, high = text.split(',')
        return DegradeConfig(reference_width=int(width), noise_std_min=float(low), noise_std_max=float(high))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f'--level {text!r}: expected WIDTH,NOISE_LO,NOISE_HI ({e})') from None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('dataset', help='a dataset with clean target views (e.g. datasets/hidden-target)')
    p.add_argument('--level', type=parse_level, action='append', required=True, metavar='WIDTH,LO,HI',
                   help='blur reference width (px), noise std low and high (0..255); repeat for several')
    p.add_argument('--steps', type=int, default=500, help='training steps per level (default 500)')
    p.add_argument('--val-frames', type=int, default=300, help='validation views scored (default 300)')
    p.add_argument('--threads', type=int, default=0, help='torch threads (default: all cores)')
    p.add_argument('--quiet', action='store_true', help='no progress bars')
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train, val = target_views(args.dataset, 'train', 10 ** 9), target_views(args.dataset, 'val', args.val_frames)
    num_classes = len(load_manifest(args.dataset)['classes'])
    clean = accuracy_after_training(train, val, args.steps, num_classes, not args.quiet)
    print(f'clean views: {clean:.2f}% after {args.steps} steps', flush=True)
    for cfg in args.level:
        started = time.monotonic()
        acc = accuracy_after_training((degraded(train[0], cfg, 1), train[1]), (degraded(val[0], cfg, 2), val[1]),
                                      args.steps, num_classes, not args.quiet)
        print(f'reference width {cfg.reference_width} px (kernels {cfg.kernel_range(train[0].shape[2])} px), noise '
              f'std {cfg.noise_std_min:g}..{cfg.noise_std_max:g}: {acc:.2f}%, {clean - acc:.1f} points below clean '
              f'({(time.monotonic() - started) / 60:.1f} min)', flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
