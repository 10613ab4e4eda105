"""Where MASH loses: the warping itself, or the matcher.

    python scripts/probe_mash_ceiling.py --data datasets/obstruction                 # warping only
    python scripts/probe_mash_ceiling.py --data datasets/obstruction --run runs/train/obstruction/mash
    python scripts/probe_mash_ceiling.py --data datasets/obs-cal-0.25-0.6 --run RUN --planes --no-warping

Warping (no model): the supporters' true labels warped into the target by whole cells, by the label-
resolution sub-cell grid and by per-pixel reprojection, against the target's true labels (learn/mash_eval.
warping_ceiling): the best any fusion of perfect supporter segmentations could agree. With --run: the run as
it is and with its matcher replaced by the ground truth, through its own sampling and fusion
(mash_eval.matcher_ceiling); with --planes also its matches and the ground truth's through the ground plane
they agree on (MASH geometry 'homography', runtime/homography.py).
"""
from __future__ import annotations

import argparse


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', default='datasets/obstruction', help='an obstruction dataset with correspondence_uv')
    p.add_argument('--split', default='val', choices=('train', 'val', 'test'))
    p.add_argument('--run', default='', help='a MASH run directory (best.pt): also the matcher ceiling')
    p.add_argument('--threshold', type=float, default=None, help='the run\'s confidence threshold (default: its own)')
    p.add_argument('--self-confidence-scale', type=float, default=None,
                   help='the run\'s self-confidence scale (default: its calibrated one, else 1)')
    p.add_argument('--limit', type=int, default=None, help='at most this many snapshots for the warping ceiling')
    p.add_argument('--planes', action='store_true',
                   help='with --run: also the run\'s and the ground truth\'s matches through their ground plane')
    p.add_argument('--no-warping', action='store_true', help='skip the warping ceiling (labels only)')
    args = p.parse_args()
    from collab_perception.learn.mash_eval import matcher_ceiling, warping_ceiling
    if not args.no_warping:
        w = warping_ceiling(args.data, args.split, args.limit)
        print(f'warping ceiling, {args.split} ({w["frames"]} snapshots; {w["covered"]:.1%} of the target pixels have '
              'a ground-truth cell match in a supporter): label agreement all / obstructed / clear')
        for name, a in w['agreement'].items():
            print(f'  {name}: {a["all"]:.2f}% / {a["obstructed"]:.2f}% / {a["clear"]:.2f}%')
    if args.run:
        print(f'matcher ceiling of {args.run}, {args.split}: accuracy, mIoU full / obstructed')
        for name, r in matcher_ceiling(args.run, args.data, args.split, args.threshold,
                                       args.self_confidence_scale, planes=args.planes).items():
            print(f'  {name}: {r["accuracy"]:.2f} / {r["region_accuracy"]:.2f}, '
                  f'{r["miou"]:.2f} / {r["region_miou"]:.2f}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
