"""Where a handshake run loses accuracy: the backbone, the decoder or the selection.

    python scripts/probe_handshake_ceiling.py runs/train/hidden-target/who2com \
        --backbone runs/train/hidden-target/backbone/best.pt

On a hidden-target split, overall accuracy of: the backbone on the clean and on the degraded target views;
the run's fused decoder handed the slot that holds the clean target view (a perfect selection); and the run as
it is (argmax selection). The gap between the last two is what selection errors cost.
"""
from __future__ import annotations

import argparse
import os

import torch

from collab_perception.learn.data import FrameLoader
from collab_perception.learn.train import load_model
from collab_perception.runtime.metrics import ConfusionMatrix


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('run', help='a who2com run directory (best.pt)')
    p.add_argument('--backbone', required=True, help='the backbone checkpoint it started from')
    p.add_argument('--data', default='datasets/hidden-target')
    p.add_argument('--split', default='test', choices=('train', 'val', 'test'))
    args = p.parse_args()
    backbone, _ = load_model(args.backbone)
    model, _ = load_model(os.path.join(args.run, 'best.pt'))
    names = ('backbone on clean views', 'backbone on degraded views', 'decoder, perfect selection',
             'decoder, argmax selection (the run)')
    scores = {n: ConfusionMatrix(backbone.cfg.num_classes) for n in names}
    with torch.no_grad():
        for b in FrameLoader(args.data, 'hidden-target', args.split, 32, shuffle=False):
            y = b['labels'].numpy()
            scores[names[0]].update(backbone.own_head(backbone.encoder(b['clean'])).argmax(1).numpy(), y)
            scores[names[1]].update(backbone.own_head(backbone.encoder(b['target'])).argmax(1).numpy(), y)
            f_t, f_s = model.encode_all(b['target'], b['supporters'])
            f_best = f_s[torch.arange(len(y)), b['best'].clamp(min=0)]
            scores[names[2]].update(model.decoder(torch.cat([f_t, f_best], 1)).argmax(1).numpy(), y)
            scores[names[3]].update(model.forward_batch(b, 'eval').logits.argmax(1).numpy(), y)
    for name, cm in scores.items():
        print(f'{name}: {100 * cm.accuracy():.2f}%')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
