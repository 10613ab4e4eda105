"""Where a handshake run loses accuracy: the backbone, the decoder or the selection.

    python scripts/probe_handshake_ceiling.py runs/train/accurate-pose/who2com --data datasets/accurate-pose \
        --backbone runs/train/accurate-pose/backbone/best.pt

On a split of the run's setting, overall accuracy of: the backbone on the clean and on the degraded target
views; the run's fused decoder handed the labelled best supporter (hidden target: the slot holding the clean
target view; pose settings: the largest overlap) and, per frame, the supporter that scores best in hindsight
(what any one-supporter selection could reach with this decoder); and the run as it is (argmax selection).
Then the share of frames whose selection is the labelled best, and on the others the run, the labelled best
and the run's own head; in the pose settings, how much of the target's view the warped supporters cover
(learn/evaluate.handshake_ceiling). --data datasets/<setting>-unseen: the same on
unseen worlds.
"""
from __future__ import annotations

import argparse


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('run', help='a who2com run directory (best.pt)')
    p.add_argument('--backbone', required=True, help='the backbone checkpoint it started from')
    p.add_argument('--data', required=True, help='the dataset to score, e.g. datasets/accurate-pose')
    p.add_argument('--split', default='test', choices=('train', 'val', 'test'))
    args = p.parse_args()
    from collab_perception.learn.evaluate import handshake_ceiling
    for name, accuracy in handshake_ceiling(args.run, args.backbone, args.data, args.split).items():
        print(f'{name}: {accuracy:.2f}%')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
