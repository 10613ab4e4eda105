#!/usr/bin/env python3
"""Snapshots per second of the embedded world: N drones, RGB + labels + planar depth, one shared stamp.

    python bench/bench_world.py --drones 5 --size 128 --frames 200 --cpus 1

Times `World.step()` (render every view and read everything back) after a warm-up (the first frames compile
shaders and upload the map), excluding map generation. `--correspondences` adds the ground truth a dataset
stores (overlap, cell correspondences, best supporter for every ordered pair); `--obstructions` renders MASH
obstructions too. `--cpus 1` pins the process to one CPU core (the issue's "on one core" figure).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from collab_perception.world import World, WorldConfig  # noqa: E402
from collab_perception.world import geometry as G  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--drones', type=int, default=5, help='drones (views per snapshot), default 5')
    p.add_argument('--size', type=int, default=128, help='image width and height, default 128')
    p.add_argument('--frames', type=int, default=200, help='timed snapshots, default 200')
    p.add_argument('--warmup', type=int, default=5, help='untimed snapshots first, default 5')
    p.add_argument('--trajectory', choices=('waypoint', 'explore'), default='waypoint')
    p.add_argument('--obstructions', action='store_true', help='render an obstruction per snapshot')
    p.add_argument('--correspondences', action='store_true', help='also compute the dataset ground truth')
    p.add_argument('--cpus', type=int, default=None, help='pin the process to the first N CPU cores')
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    if args.cpus:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.cpus]))
    cfg = WorldConfig(seed=args.seed, drones=args.drones, image_width=args.size, image_height=args.size,
                      trajectory=args.trajectory, obstructions=args.obstructions)
    t0 = time.perf_counter()
    with World(cfg) as world:
        for _ in range(args.warmup):
            world.step()
        ready = time.perf_counter()
        render_s = gt_s = 0.0
        for _ in range(args.frames):
            t = time.perf_counter()
            snap = world.step()
            render_s += time.perf_counter() - t
            if args.correspondences:
                t = time.perf_counter()
                G.swarm_ground_truth([v.depth for v in snap.views], [v.K for v in snap.views],
                                     [v.T_world_cam for v in snap.views])
                gt_s += time.perf_counter() - t
        renderer = world.render_device
    total = render_s + gt_s
    cores = len(os.sched_getaffinity(0))
    print(f'renderer: {renderer}; CPU cores available: {cores}; LP_NUM_THREADS={os.environ.get("LP_NUM_THREADS")}')
    print(f'{args.drones} drones x {args.size}x{args.size}, {args.trajectory}'
          f'{", obstructions" if args.obstructions else ""}: world ready + warm-up {ready - t0:.2f} s')
    print(f'render + read-back: {render_s / args.frames * 1000:.1f} ms per snapshot')
    if args.correspondences:
        print(f'ground truth (overlap, cell correspondences, best supporter): {gt_s / args.frames * 1000:.1f} ms '
              f'per snapshot')
    print(f'{args.frames / total:.1f} snapshots/s ({args.frames * args.drones / total:.0f} views/s)'
          f'{" with correspondences" if args.correspondences else ""}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
