"""Where a requester's frame spends its time: a per-stage timeline across processes, from a recorded flight.

    python bench/bench_timeline.py --frames 40
    python bench/bench_timeline.py --frames 40 --set drone_defaults.warp_on=request

Flies the config's swarm with `--record` (drone1 asking every frame), then reads the bag: the recorder
received every message of the frame (the camera images, the request, each reply, the connect, the feature
map, the segmentation) on one clock, so each message's receive time minus the camera stamp places it on the
frame's timeline, whichever process sent it. Per stage, the median and p95 over the frames, in ms after the
camera stamp:

    image        the requester's camera image reaches the recorder (transport of a 49 kB image)
    request      perception has encoded and broadcast its query
    first / last reply   the supporters' scores (the last one: the slowest supporter)
    connect      fusion selected (after every expected reply, or the reply timeout)
    feature      the selected supporter's feature map (its warp and encoder pass with warp_on: connect)
    segmentation fusion decoded and published

The recorder's own receive latency is in every figure alike. Results: a Markdown table on stdout (and --out).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

from benchtools import emit_table

STAGES = ('image', 'request', 'first reply', 'last reply', 'connect', 'feature', 'segmentation')


def frame_timelines(bag: str, requester: str = 'drone1') -> list[dict[str, float]]:
    """Per camera stamp, the ms after the stamp at which each stage's message reached the recorder."""
    from collab_perception.runtime.bag import read_bag
    from collab_perception.runtime.cdr import read_header
    topics = {f'/{requester}/camera/image_raw': 'image', '/swarm/request': 'request',
              f'/{requester}/comm/reply': 'reply', f'/{requester}/comm/feature': 'feature',
              f'/{requester}/segmentation': 'segmentation'}
    frames: dict[int, dict[str, list[float]]] = {}
    for m in read_bag(bag):
        kind = topics.get(m.topic) or ('connect' if m.topic.endswith('/comm/connect') else None)
        if kind is None:
            continue
        stamp = read_header(m.data).stamp_ns
        frames.setdefault(stamp, {}).setdefault(kind, []).append((m.time_ns - stamp) / 1e6)
    out = []
    for stamp in sorted(frames):
        f = frames[stamp]
        if not all(k in f for k in ('image', 'request', 'reply', 'segmentation')):
            continue
        row = {'image': min(f['image']), 'request': min(f['request']), 'first reply': min(f['reply']),
               'last reply': max(f['reply']), 'segmentation': min(f['segmentation'])}
        if 'connect' in f and 'feature' in f:
            row['connect'], row['feature'] = min(f['connect']), min(f['feature'])
        out.append(row)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--config', default=None, help='swarm config (default: config/swarm.yaml)')
    parser.add_argument('--frames', type=int, default=40, help='camera snapshots (default 40)')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='config overrides')
    parser.add_argument('--bag', default=None, help='read this recorded bag instead of flying a new one')
    parser.add_argument('--out', default=None, help='also write the table to this file')
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix='bench-timeline-') as work:
        bag = args.bag
        if bag is None:
            run = os.path.join(work, 'run')
            cmd = [sys.executable, '-m', 'collab_perception.cli', 'swarm', '--frames', str(args.frames), '--record',
                   '--requesters', 'drone1', '--quiet', '--run-dir', run,
                   *(['--config', args.config] if args.config else []), *[x for kv in args.set for x in ('--set', kv)]]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f'swarm run failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}')
            bag = os.path.join(run, 'bag')
        rows = frame_timelines(bag)
    if not rows:
        raise SystemExit('no complete frame of drone1 in the bag')
    lines = [f'{len(rows)} frames of drone1 ({", ".join(args.set) or "the config as shipped"}); ms after the '
             'camera stamp', '', '| stage | p50 | p95 | frames |', '|---|---|---|---|']
    for stage in STAGES:
        values = [r[stage] for r in rows if stage in r]
        if values:
            lines.append(f'| {stage} | {np.percentile(values, 50):.1f} | {np.percentile(values, 95):.1f} | '
                         f'{len(values)} |')
    emit_table('\n'.join(lines), args.out)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
