"""Score MASH runs and their baselines on one obstruction dataset, as the swarm would run them.

    python scripts/evaluate_mash.py runs/train/obstruction/inpainting runs/train/obstruction/mash \
        --data datasets/obstruction --split test

Per run (evaluations are cached in the run directory, learn/mash_eval.evaluate_mash_run): full-image and
obstructed-region pixel accuracy, mean per-class accuracy and mIoU; for MASH every fusion and confidence
threshold with the bytes per target (x = the raw image) and per supporter (y = the label image) and the cells
sent. `--variants` limits MASH's rows (e.g. hard@0.3 hard+need@0.3 bayes+need@0.1). `--calibrate` first
chooses each MASH run's fusion (hard or bayes), self-confidence scale, confidence threshold, need map and
ground-plane prior (runs whose confidences estimate accuracy) on the validation split of --data (the best mIoU within 0.05 of the label image per supporter;
learn/mash_eval.calibrate_mash_run), which its evaluation then uses.
"""
from __future__ import annotations

import argparse
import json
import os


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('runs', nargs='+', help='run directories (best.pt)')
    p.add_argument('--data', default='datasets/obstruction')
    p.add_argument('--split', default='test', choices=('train', 'val', 'test'))
    p.add_argument('--variants', nargs='*', default=None, metavar='FUSION@T', help='MASH variants to show')
    p.add_argument('--calibrate', action='store_true', help='calibrate MASH runs on the validation split first')
    p.add_argument('--tolerance', type=float, default=None, metavar='MIOU',
                   help='with --calibrate: settings this close to the best validation mIoU (a fraction, e.g. '
                        '0.001 for 0.1 point) count as equal, and the fewest bytes among them wins (default 0: '
                        'the strict best within the byte budget)')
    p.add_argument('--scales', type=float, nargs='+', default=None, metavar='X',
                   help='with --calibrate: the self-confidence scales to try (default: learn/mash_eval.py '
                        'SELF_CONFIDENCE_SCALES, 2 to 0.08; fewer scales calibrate faster)')
    args = p.parse_args()
    from collab_perception.learn.mash_eval import calibrate_mash_run, evaluate_mash_run
    print(f'{args.data}, {args.split} split: accuracy / mean class accuracy / mIoU, full image | obstructed region')
    for run in args.runs:
        with open(os.path.join(run, 'config.json')) as f:
            is_mash = json.load(f)['method'].startswith('mash')
        if args.calibrate and is_mash:
            options = {} if args.tolerance is None else {'tolerance_miou': args.tolerance}
            if args.scales:
                options['scales'] = tuple(args.scales)
            c = calibrate_mash_run(run, args.data, **options)['chosen']
            print(f'{os.path.basename(os.path.normpath(run))}: calibrated on val: {c.get("fusion", "hard")} fusion, '
                  f'self-confidence x '
                  f'{c["self_confidence_scale"]:g}, threshold {c["threshold"]:g}'
                  f'{", the request carries the need map" if c.get("need") else ""}'
                  f'{", the ground plane x %g" % c["plane_weight"] if c.get("geometry") == "homography" else ""}'
                  f' (val mIoU {100 * c["miou"]:.2f}, '
                  f'{c["supporter_y"]:.3f}y per supporter)')
        result = evaluate_mash_run(run, args.data, args.split)
        for name, v in result['variants'].items():
            if args.variants is not None and name != 'default' and name not in args.variants:
                continue
            label = os.path.basename(os.path.normpath(run)) + ('' if name == 'default' else f' {name}')
            line = (f'{label}: {100 * v["accuracy"]:.2f} / {100 * v["mean_class_accuracy"]:.2f} / '
                    f'{100 * v["miou"]:.2f} | {100 * v["region_accuracy"]:.2f} / '
                    f'{100 * v["region_mean_class_accuracy"]:.2f} / {100 * v["region_miou"]:.2f}')
            if v.get('supporter_y') is not None and 'sent_fraction' in v:
                line += (f'; {v["target_x"]:.3f}x per target, {v["supporter_y"]:.3f}y per supporter, '
                         f'{v["sent_fraction"]:.1%} of the cells sent')
            print(line)
        if 'match_accuracy' in result:
            print(f'  matching: {result["real_match_top1"]:.1%} of the real matches exact, '
                  f'{result["real_match_within_one_cell"]:.1%} within one cell (obstructed target cells '
                  f'{result.get("real_match_within_one_cell_obstructed", float("nan")):.1%}, clear '
                  f'{result.get("real_match_within_one_cell_clear", float("nan")):.1%})')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
