"""Training step time of the handshake (Who2com) with and without the frozen, cached backbone.

    python bench/bench_train_step.py --data datasets/hidden-target --steps 30

Three ways to train one step of batch 16 on the same frames, timed in interleaved rounds so that a busy machine
slows all of them alike (the ratios are what to read; docs/BENCHMARKS.md):
  end to end      encoder trained too, images in (the paper's recipe; the project's before issue 11)
  frozen encoder  encoder fixed, images still encoded at every step
  cached          encoder fixed, features encoded once (learn/feature_cache.py), what --freeze-encoder does
The cache's one-off cost (encoding every training frame, both flips) is printed beside it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchtools import emit_table  # noqa: E402

from collab_perception.learn.data import FrameLoader  # noqa: E402
from collab_perception.learn.feature_cache import EncodedFrames  # noqa: E402
from collab_perception.learn.models import ModelConfig, create_model  # noqa: E402


def step_fn(model, optimizer, batch):
    def step():
        out = model.forward_batch(batch, 'train')
        loss = model.loss(out, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', default='datasets/hidden-target', help='a hidden-target dataset')
    p.add_argument('--steps', type=int, default=30, help='timed steps per way (default 30)')
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--threads', type=int, default=0, help='torch threads (default: all cores)')
    p.add_argument('--out', default=None, help='also write the table to this file')
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loader = FrameLoader(args.data, 'hidden-target', 'train', args.batch_size, shuffle=False)
    images = next(iter(loader))
    cfg = dict(num_classes=loader.num_classes, supporters=loader.agents - 1)
    ways = {}
    for name, frozen in (('end to end', False), ('frozen encoder', True), ('cached', True)):
        torch.manual_seed(0)
        model = create_model('who2com', ModelConfig(**cfg, selection='soft' if not frozen else 'hard',
                                                    freeze_encoder=frozen)).to(memory_format=torch.channels_last)
        model.train()
        optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)
        batch = images
        if name == 'cached':
            started = time.perf_counter()
            cache = EncodedFrames(loader, model.encoder, args.batch_size, progress=False)
            cache_s = time.perf_counter() - started
            batch = next(iter(cache))
        ways[name] = step_fn(model, optimizer, batch)
    for step in ways.values():      # warm-up
        step()
    times = {name: [] for name in ways}
    for _ in range(args.steps):
        for name, step in ways.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    base = statistics.median(times['end to end'])
    lines = ['| way | median ms per step | relative to end to end |', '|---|---|---|']
    for name, t in times.items():
        lines.append(f'| {name} | {1000 * statistics.median(t):.1f} | {statistics.median(t) / base:.2f}x |')
    lines.append(f'| cache, once: every training frame ({len(cache.frames["best"])}), both flips | '
                 f'{1000 * cache_s:.0f} in all | {cache_s / base:.0f} end-to-end steps |')
    emit_table('\n'.join(lines), args.out)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
