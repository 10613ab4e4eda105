"""How much a degradation level costs a single agent: the calibration behind world.degrade's defaults.

    python scripts/calibrate_degradation.py datasets/hidden-target --steps 500 \
        --level 512,5,20 --level 256,10,40 --level 256,20,60

Reads the clean target views and labels of a dataset's train and val splits, degrades them on the fly with
each level (blur reference width in px, noise std low, noise std high; kernel sizes 1..100 as the handshake
paper, §IV-B), trains one single-agent model per level (and one on the clean views) for the same number of
steps, and prints each level's validation accuracy and its distance to the clean views' (the paper's Table I:
Single degraded 19.4 points below Single normal). Same seed for every level, so only the degradation differs
(learn/calibrate.py).
"""
from __future__ import annotations

import argparse
import time

from collab_perception.data import load_manifest
from collab_perception.world.degrade import DegradeConfig


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
    from collab_perception.learn.calibrate import degradation_cost, target_views
    train, val = target_views(args.dataset, 'train'), target_views(args.dataset, 'val', args.val_frames)
    num_classes = len(load_manifest(args.dataset)['classes'])
    clean = degradation_cost(train, val, None, args.steps, num_classes, not args.quiet, args.threads)
    print(f'clean views: {clean:.2f}% after {args.steps} steps', flush=True)
    for cfg in args.level:
        started = time.monotonic()
        acc = degradation_cost(train, val, cfg, args.steps, num_classes, not args.quiet, args.threads)
        print(f'reference width {cfg.reference_width} px (kernels {cfg.kernel_range(train[0].shape[2])} px), noise '
              f'std {cfg.noise_std_min:g}..{cfg.noise_std_max:g}: {acc:.2f}%, {clean - acc:.1f} points below clean '
              f'({(time.monotonic() - started) / 60:.1f} min)', flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
