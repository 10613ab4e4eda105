"""Where a handshake run loses accuracy: the backbone, the decoder or the selection.

    python scripts/probe_handshake_ceiling.py runs/train/hidden-target/who2com \
        --backbone runs/train/hidden-target/backbone/best.pt

On a hidden-target split, overall accuracy of: the backbone on the clean and on the degraded target views;
the run's fused decoder handed the slot that holds the clean target view (a perfect selection); and the run as
it is (argmax selection). The gap between the last two is what selection errors cost; then the share of
frames whose selection is right, and on the others the run, a perfect selection and the run's own head
(learn/evaluate.handshake_ceiling). --data datasets/hidden-target-unseen: the same on unseen worlds.
"""
from __future__ import annotations

import argparse


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('run', help='a who2com run directory (best.pt)')
    p.add_argument('--backbone', required=True, help='the backbone checkpoint it started from')
    p.add_argument('--data', default='datasets/hidden-target')
    p.add_argument('--split', default='test', choices=('train', 'val', 'test'))
    args = p.parse_args()
    from collab_perception.learn.evaluate import handshake_ceiling
    for name, accuracy in handshake_ceiling(args.run, args.backbone, args.data, args.split).items():
        print(f'{name}: {accuracy:.2f}%')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
