"""`collab-perception nav train | evaluate`: CollaVN's agents on a navigation dataset (learn/collavn.py).

Imported only when one of these commands runs (torch); `add_nav_learn_commands(sub)` adds them to the `nav`
command's subparsers (collab_perception/cli.py).
"""
from __future__ import annotations

import argparse
import os

VARIANTS = ('collavn', 'no_memory', 'no_comm')          # learn.collavn.VARIANTS, repeated: --help loads no torch
# the rows of the paper's tables (CollaVN Tables 3-5): name -> (run directory under --runs, label)
ROWS = {
    'random_walk': (None, 'Random walk'),
    'imitation': ('imitation', 'Imitation only (no DAgger)'),
    'no_comm': ('no_comm', 'w/o communication'),
    'no_memory': ('no_memory', 'w/o memory'),
    'collavn': ('collavn', 'Ours (memory-augmented communication)'),
}
ADHOC = {'2->3': ('collavn_team2', 3), '3->2': ('collavn_team3', 2)}
# the experts the variants imitate (not learned): name -> (label, whether it knows what the team saw)
# (with a radio range, the team-sight expert without memory is what w/o memory imitates; without one it
# equals the expert with memory and is left out)
REFERENCES = {'expert_own': ('Expert, own sight (what w/o communication imitates)', False, True),
              'expert_team': ('Expert, team sight (what ours imitates)', True, True),
              'expert_team_now': ('Expert, team sight of the present only (what w/o memory imitates)', True, False)}
RESULTS_BEGIN = '<!-- collavn:begin (written by `collab-perception nav evaluate`) -->'
RESULTS_END = '<!-- collavn:end -->'


def add_nav_learn_commands(sub) -> None:
    t = sub.add_parser(
        'train', help='train one CollaVN variant (imitation of the shortest-path expert, DAgger)',
        description='Train a CollaVN agent on a navigation dataset: the view encoder is pretrained once per '
                    'dataset (DIR/encoder.pt, features cached next to it), then DAgger rounds: the team rolls out '
                    'with the expert\'s move taken with probability 0.5^round, every visited state is labelled '
                    'with the shortest-path move, and the team is refitted along the recorded paths. model.pt '
                    '(best round by validation success rate) and train.json go to --out.\n\n'
                    'variants: collavn (memory-augmented communication), no_memory (supporters answer from '
                    'their current key only, no own-memory read), no_comm (no messages at all); --no-dagger '
                    'trains on the expert\'s paths only (the imitation row).',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument('--data', default='datasets/nav', help='navigation dataset (default datasets/nav)')
    t.add_argument('--variant', choices=VARIANTS, default='collavn')
    t.add_argument('--out', required=True, metavar='DIR', help='run directory, e.g. runs/nav/collavn')
    t.add_argument('--no-dagger', action='store_true', help='behaviour cloning of the expert only')
    t.add_argument('--teams', type=int, nargs='+', default=[2, 3, 4], help='team sizes trained on (default 2 3 4)')
    t.add_argument('--rounds', type=int, default=12, help='DAgger rounds (default 12, the shipped model\'s)')
    t.add_argument('--rollouts-per-round', type=int, default=12, help='episode batches recorded per round')
    t.add_argument('--steps-per-round', type=int, default=150, help='gradient steps per round')
    t.add_argument('--batch-size', type=int, default=24, help='episodes per batch')
    t.add_argument('--lr', type=float, default=1e-3)
    t.add_argument('--sight-m', type=float, default=8.0, metavar='M',
                   help='the expert knows a goal once the agent (no_comm) or any teammate (the communicating '
                        'variants) came within M metres of it; before, it explores (default 8)')
    t.add_argument('--sighting-weight', type=float, default=0.5, metavar='W',
                   help='communicating variants: weight of the auxiliary terms that teach each score whether '
                        'the supporter has seen the requester\'s goal, and each answer where that goal is '
                        '(default 0.5; 0: imitation and the score price only, round 1\'s loss)')
    t.add_argument('--read-weight', type=float, default=0.0, metavar='W',
                   help='communicating variants with memory: weight of an auxiliary term that puts the '
                        'supporter\'s attention read (the value it sends) on the stored entries near the '
                        'requester\'s goal (default 0)')
    t.add_argument('--belief-weight', type=float, default=0.0, metavar='W',
                   help='every variant: weight of an auxiliary term that teaches the recurrent state what the '
                        'expert knows, whether it knows the agent\'s goal and where the goal lies from the '
                        'agent (default 0)')
    t.add_argument('--goal-offsets', action='store_true',
                   help='the policy also reads where its goal lies from its cell, decoded from what arrived '
                        'and from its own memory read (taught, with --sighting-weight, to decode the goal\'s '
                        'cell once it has been seen)')
    t.add_argument('--comm-range-m', type=float, default=0.0, metavar='M',
                   help='radio range: messages only get through between agents within M metres of each other, '
                        'and the expert learns a teammate\'s sighting only while it is in reach (default 0: '
                        'unlimited, the paper\'s setting)')
    t.add_argument('--patrol-steps', type=int, default=0, metavar='K',
                   help='before the goals are given the team patrols K moves (the expert\'s exploration rule), '
                        'each agent storing what it sees in its memory; the episode starts where the patrol '
                        'ended (default 0: the paper\'s task)')
    t.add_argument('--encoder-steps', type=int, default=1500, help='encoder pretraining steps (once per dataset)')
    t.add_argument('--seed', type=int, default=0)
    t.add_argument('--threads', type=int, default=0, help='torch threads (default: all cores)')
    t.set_defaults(func=cmd_train)

    x = sub.add_parser(
        'export', help='export a trained agent as ONNX roles (encode, observe, act) for the swarm',
        description='Write encode.onnx (panorama views -> descriptors), observe.onnx (descriptors, goal, GPS '
                    'cell, mean of the stored values, whether the last move was blocked -> context, query, key, '
                    'value), act.onnx (context, what arrived, own-memory read, '
                    'state -> new state, action logits) and roles.json into --out: what runtime/nav_agent.py '
                    'runs (ONNX Runtime, no torch). Then plays --check episodes of the test split through ONNX '
                    'Runtime and through torch and prints whether their outcomes agree.',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    x.add_argument('run', help='run directory with model.pt (from `nav train`)')
    x.add_argument('--data', default='datasets/nav', help='the dataset it was trained on (its encoder.pt)')
    x.add_argument('--out', required=True, metavar='DIR', help='model directory, e.g. models/collavn_nav')
    x.add_argument('--check', type=int, default=32, metavar='N', help='episodes compared (default 32; 0: none)')
    x.add_argument('--card-episodes', type=int, default=0, metavar='N',
                   help='model card metrics over the first N episodes of each split (default 0: all of them)')
    x.set_defaults(func=cmd_export)

    e = sub.add_parser(
        'evaluate', help='the CollaVN tables: SR, DTS, SPL, SSR and bytes per agent per step',
        description='Evaluate every trained variant under --runs (collavn, no_memory, no_comm, imitation, and '
                    'collavn_team2 / collavn_team3 for Ad-hoCoop) and a random walk on the test split and on the '
                    'unseen world, greedy actions, and write the CollaVN section of --results (between its '
                    'collavn markers; the rest of the file is kept) and a PNG of success rate against bytes. '
                    'Missing runs are listed as not trained.',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument('--data', default='datasets/nav')
    e.add_argument('--runs', default='runs/nav', help='directory holding one run directory per variant')
    e.add_argument('--results', default='docs/RESULTS.md', help='Markdown file whose CollaVN section is rewritten')
    e.add_argument('--plot', default='docs/img/collavn_sr_bytes.png', help='PNG: success rate against bytes')
    e.add_argument('--json', default='', help='also write every number as JSON here')
    e.add_argument('--thresholds', type=float, nargs='+', default=[0.0, 0.5, 0.8, 0.95, 1.01],
                   help='select thresholds swept for ours (the plot and the saving; default 0 0.5 0.8 0.95 1.01)')
    e.add_argument('--comm-range-m', type=float, default=None, metavar='M',
                   help='radio range applied to every row (default: the range ours was trained with; 0: unlimited)')
    e.add_argument('--patrol-steps', type=int, default=None, metavar='K',
                   help='every episode after a patrol of K moves (default: as ours was trained; 0: none)')
    e.add_argument('--threads', type=int, default=0)
    e.set_defaults(func=cmd_evaluate)


def cmd_train(args) -> int:
    import torch

    from .collavn import NavTrainConfig, train_agent
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = NavTrainConfig(variant=args.variant, dagger=not args.no_dagger, rounds=args.rounds,
                             rollouts_per_round=args.rollouts_per_round, steps_per_round=args.steps_per_round,
                             batch_size=args.batch_size, teams=tuple(args.teams), lr=args.lr, sight_m=args.sight_m,
                             sighting_weight=args.sighting_weight, read_weight=args.read_weight,
                             belief_weight=args.belief_weight, goal_offsets=args.goal_offsets,
                             comm_range_m=args.comm_range_m, patrol_steps=args.patrol_steps,
                             encoder_steps=args.encoder_steps, seed=args.seed, threads=args.threads)
    except ValueError as e:
        raise SystemExit(f'nav train: {e}')
    summary = train_agent(args.data, args.out, cfg)
    print(f'{args.out}: best validation SR {summary["best_val_success_rate"]:.3f} in {summary["minutes"]:.1f} min')
    return 0


def cmd_export(args) -> int:
    from .collavn import export_run, write_model_card
    try:
        report = export_run(args.run, args.data, args.out, check=args.check)
    except ValueError as e:
        raise SystemExit(f'nav export: {e}')
    print(f'{args.out}: ' + ', '.join(f'{k} {v}' for k, v in report.items()))
    card = write_model_card(args.run, args.data, args.out, report, episodes=args.card_episodes)
    for split, m in card['metrics'].items():
        print(f'{args.out}/model_card.yaml: {split} SR {100 * m["success_rate"]:.2f}% SPL {m["spl"]:.3f} '
              f'SSR {m["ssr"]:.2f} DTS {m["dts"]:.1f} m, {m["bytes_per_agent_step"]:.0f} B per agent per step')
    return 0 if report.get('agree', True) else 1


def cmd_evaluate(args) -> int:
    import json

    import torch

    from .collavn import evaluate_table, write_results_section
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        table = evaluate_table(args.data, args.runs, ROWS, ADHOC, thresholds=args.thresholds, references=REFERENCES,
                               comm_range_m=args.comm_range_m, patrol_steps=args.patrol_steps)
    except ValueError as e:
        raise SystemExit(f'nav evaluate: {e}')
    write_results_section(args.results, table, args.plot, RESULTS_BEGIN, RESULTS_END, command=_command(args))
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump(table, f, indent=1)
    print(f'{args.results}: CollaVN section written; {args.plot}')
    return 0


def _command(args) -> str:
    parts = ['collab-perception nav evaluate', f'--data {args.data}', f'--runs {args.runs}']
    if args.comm_range_m is not None:
        parts.append(f'--comm-range-m {args.comm_range_m:g}')
    if args.patrol_steps is not None:
        parts.append(f'--patrol-steps {args.patrol_steps}')
    return ' '.join(parts)
