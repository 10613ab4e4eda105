"""Training step time of the handshake (Who2com) and of MASH with and without the frozen, cached backbone.

    python bench/bench_train_step.py --data datasets/hidden-target --steps 30
    python bench/bench_train_step.py --setting obstruction --data datasets/obs-cal-0.25-0.6 --steps 10

Three ways to train one step of batch 16 on the same frames, timed in interleaved rounds so that a busy machine
slows all of them alike (the ratios are what to read; docs/BENCHMARKS.md):
  end to end      encoder trained too, images in (the paper's recipe; the project's before issue 11)
  frozen encoder  encoder fixed, images still encoded at every step
  cached          encoder fixed, features encoded once (learn/feature_cache.py), what --freeze-encoder does
The cache's one-off cost (encoding every training frame, both flips) is printed beside it. With --setting
obstruction: MASH ('pixels' patches, Q16/K32, batch 8) end to end and cached (the encoder and the own head
frozen, every view's features and class distributions cached: what --freeze-encoder does for MASH); the cache
cost is for the frames timed, scale it by the training split's size.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchtools import emit_table  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--setting', default='hidden-target', choices=('hidden-target', 'obstruction'),
                   help='hidden-target (Who2com, default) or obstruction (MASH)')
    p.add_argument('--data', default='', help='a dataset of that setting (default: datasets/<setting>)')
    p.add_argument('--steps', type=int, default=30, help='timed steps per way (default 30)')
    p.add_argument('--batch-size', type=int, default=0, help='default: 16 (Who2com), 8 (MASH)')
    p.add_argument('--threads', type=int, default=0, help='torch threads (default: all cores)')
    p.add_argument('--out', default=None, help='also write the table to this file')
    args = p.parse_args()
    from collab_perception.learn.feature_cache import mash_training_step_times, training_step_times
    data = args.data or os.path.join('datasets', args.setting)
    if args.setting == 'obstruction':
        t = mash_training_step_times(data, args.steps, args.batch_size or 8, args.threads)
        ways = ('end to end', 'cached')
    else:
        t = training_step_times(data, args.steps, args.batch_size or 16, args.threads)
        ways = ('end to end', 'frozen encoder', 'cached')
    base = t['end to end']
    lines = ['| way | median ms per step | relative to end to end |', '|---|---|---|']
    for name in ways:
        lines.append(f'| {name} | {1000 * t[name]:.1f} | {t[name] / base:.2f}x |')
    lines.append(f'| cache, once: the frames cached ({t["cached_frames"]}), both flips | '
                 f'{1000 * t["cache_s"]:.0f} in all | {t["cache_s"] / base:.0f} end-to-end steps |')
    emit_table('\n'.join(lines), args.out)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
