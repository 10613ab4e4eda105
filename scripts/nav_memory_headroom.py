#!/usr/bin/env python3
"""What a supporter's memory can be worth in a CollaVN task: the team-sight expert that learns every sighting a
teammate has made so far (what a supporter with memory can tell) against the one that only learns sightings a
teammate is making at that step (what a supporter without memory can tell), with and without a radio range.

The experts are the ones the variants imitate (learn/collavn.run_team): both know a goal once it came within
--sight-m of a teammate whose message gets through, and explore until then. Their success rates bound what
memory can add to a learned agent that imitates them. With --model, a trained agent is scored the same way
with its memory on and switched off at inference (supporters answer from their current entry only, no own-memory
read): what its memory is worth to it. Writes a table to stdout and a PNG of SR against range.

Example:
  python scripts/nav_memory_headroom.py --data datasets/nav --split test --ranges 0 8 12 16 24 32 \\
      --plot docs/img/collavn_memory_headroom.png
  python scripts/nav_memory_headroom.py --split test --ranges 0 --model runs/nav/collavn/model.pt
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from collab_perception.data.nav import TASKS, NavDataset  # noqa: E402
from collab_perception.learn import collavn  # noqa: E402
from collab_perception.runtime.metrics import nav_metrics  # noqa: E402


def expert_maps(dataset: NavDataset, split: str) -> tuple[dict, dict]:
    """The split's maps without images, and placeholder descriptors: the experts look at none."""
    maps, feats = {}, {}
    for i in dataset.manifest['splits'][split]['map_ids']:
        m = dataset.map(split, i)
        maps[(split, i)] = dataclasses.replace(m, rgb=m.rgb[:0])
        feats[(split, i)] = {'views': np.zeros((m.nodes, 4, 1), np.float32)}
    return maps, feats


def task_batches(dataset: NavDataset, split: str, task: str, maps: dict, feats: dict, size: int) -> list:
    """The split's episodes of one task as EpisodeBatches, one team size per batch."""
    episodes = dataset.episodes(split, task=task)
    batches = []
    for team in sorted({e.team for e in episodes}):
        batches += collavn.batches_of([e for e in episodes if e.team == team], maps, feats, dataset.config, size)
    return batches


def success_rate(batches: list, **expert) -> float:
    outcomes = []
    for batch in batches:
        outcomes += collavn.episode_outcomes(batch, collavn.run_team(None, batch, policy='expert', **expert))
    return 100 * nav_metrics(outcomes)['success_rate']


def model_rates(model_path: str, dataset: NavDataset, split: str, ranges: list, patrol_steps: int = 0) -> list:
    """(task, range, SR with memory, SR with it switched off) of a trained agent, greedy actions."""
    encoder = collavn.load_or_pretrain_encoder(dataset, 0)
    maps, feats = collavn.map_features(dataset, encoder, split)
    model = collavn.load_agent(model_path)
    if not model.cfg.memory:
        raise SystemExit(f'{model_path}: a {model.cfg.variant} agent has no memory to switch off')
    forgetful = collavn.CollaVNAgent(dataclasses.replace(model.cfg, variant='no_memory'))
    forgetful.load_state_dict(model.state_dict())
    out = []
    for task in TASKS:
        batches = task_batches(dataset, split, task, maps, feats, 32)
        for r in ranges:
            on, off = (100 * collavn.evaluate_batches(m, batches, comm_range_m=r,
                                                      patrol_steps=patrol_steps)['success_rate']
                       for m in (model, forgetful))
            out.append((task, r, on, off))
            where = 'unlimited' if not r else f'{r:g}'
            print(f'| {task} | {where} | {on:.2f} | {off:.2f} | {on - off:+.2f} |', flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--data', default='datasets/nav', help='navigation dataset (default datasets/nav)')
    ap.add_argument('--split', default='test', help='episodes of this split (default test)')
    ap.add_argument('--ranges', type=float, nargs='+', default=[0, 8, 12, 16, 24, 32], metavar='M',
                    help='radio ranges in metres (0: unlimited; default 0 8 12 16 24 32)')
    ap.add_argument('--sight-m', type=float, default=collavn.NavTrainConfig.sight_m, metavar='M',
                    help='sighting distance of the experts (default: nav train\'s)')
    ap.add_argument('--patrol-steps', type=int, default=0, metavar='K',
                    help='episodes start after a patrol of K moves whose sightings only memory keeps (default 0)')
    ap.add_argument('--plot', default='', help='PNG: SR against range, with and without memory, per task')
    ap.add_argument('--model', default='', metavar='MODEL_PT',
                    help='also score this trained agent (nav train\'s model.pt) with its memory on and off')
    args = ap.parse_args(argv)
    try:
        for r in args.ranges:
            collavn.check_task_options(r, args.patrol_steps)
    except ValueError as e:
        ap.error(str(e))
    if args.model and not os.path.isfile(args.model):
        ap.error(f'--model {args.model}: no such file (nav train writes RUN/model.pt)')
    dataset = NavDataset(args.data)
    if args.split not in dataset.splits:
        ap.error(f'--split {args.split!r}: the dataset has {", ".join(dataset.splits)}')
    maps, feats = expert_maps(dataset, args.split)
    rows = []
    patrol = f', after a patrol of {args.patrol_steps} moves' if args.patrol_steps else ''
    print(f'{args.data}, {args.split} split, sighting within {args.sight_m:g} m{patrol}: expert SR in %')
    print('| task | own sight | range (m) | team sight, with memory | team sight, present only | memory adds |')
    print('|---|---|---|---|---|---|')
    for task in TASKS:
        batches = task_batches(dataset, args.split, task, maps, feats, 64)
        own = success_rate(batches, sight_m=args.sight_m, team_sight=False,
                           patrol_steps=args.patrol_steps)
        for r in args.ranges:
            with_memory = success_rate(batches, sight_m=args.sight_m, comm_range_m=r, patrol_steps=args.patrol_steps)
            present = success_rate(batches, sight_m=args.sight_m, comm_range_m=r, sight_memory=False,
                                   patrol_steps=args.patrol_steps)
            rows.append((task, r, own, with_memory, present))
            print(f'| {task} | {own:.1f} | {"unlimited" if not r else f"{r:g}"} | {with_memory:.1f} | {present:.1f} | '
                  f'{with_memory - present:+.1f} |', flush=True)
    if args.model:
        print(f'\n{args.model}: SR in %, every team size')
        print('| task | range (m) | memory on | memory switched off | memory adds |')
        print('|---|---|---|---|---|')
        model_rates(args.model, dataset, args.split, args.ranges, args.patrol_steps)
    if args.plot:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, len(TASKS), figsize=(5 * len(TASKS), 4.3), sharey=True)
        limited = [r for r in args.ranges if r]
        for ax, task in zip(np.atleast_1d(axes), TASKS):
            mine = {r: (own, m, p) for t, r, own, m, p in rows if t == task}
            ax.plot(limited, [mine[r][1] for r in limited], 'o-', label='team sight, with memory')
            ax.plot(limited, [mine[r][2] for r in limited], 's--', label='team sight, present only')
            ax.axhline(mine[limited[0]][0] if limited else rows[0][2], color='grey', lw=1, label='own sight')
            if 0 in mine and mine[0][1] == mine[0][2]:
                ax.axhline(mine[0][1], color='k', ls=':', lw=1, label='unlimited range (both)')
            elif 0 in mine:
                ax.axhline(mine[0][1], color='C0', ls=':', lw=1, label='unlimited range, with memory')
                ax.axhline(mine[0][2], color='C1', ls=':', lw=1, label='unlimited range, present only')
            ax.set_title(f'{collavn.TASK_NAMES[task]} ({args.split}{patrol.replace(", after a", "; a")})')
            ax.set_xlabel('radio range (m)')
            ax.grid(alpha=0.3)
        np.atleast_1d(axes)[0].set_ylabel('expert SR (%)')
        handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=8, loc='lower center', ncol=3, frameon=False)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        os.makedirs(os.path.dirname(args.plot) or '.', exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f'{args.plot}: written')
    return 0


if __name__ == '__main__':
    sys.exit(main())
