"""The handshake paper's Fig. 5 on our data: Who2com's selection and accuracy against the message and key sizes.

    python scripts/message_size_sweep.py --train --threads 1          # trains what is missing, then scores

Fig. 5 (`shared/papers/handshake-who2com.txt` §V, "Message and key sizes") varies, on Hidden Target View,
(a) the broadcast message from 1 to 64 values with the key fixed, and (b) the local key from 4 to 1024 with the
message fixed, and reports selection accuracy and overall accuracy; Ours w/o msg is the reference. Every run
here is the round-2 recipe of docs/RESULTS.md (hidden-target's shared backbone, frozen and cached encoder, hard
selection, 1000 steps), trained by `collab-perception train --method who2com --query-size M --key-size K` into
RUNS/q<M>-k<K>, and scored on the test split and on the unseen worlds. Our fixed sizes are the shipped
model's (message 8, key 256), not the paper's 1024-wide key: see docs/RESULTS.md.

Several workers may share the queue (each run is taken under a lock; the last to finish scores them all):
    python scripts/message_size_sweep.py --train --threads 1 & python scripts/message_size_sweep.py --train --threads 1 &
Without --train only finished runs are scored. Prints a Markdown table and writes a PNG with the two panels.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys


def run_dir(root: str, message: int, key: int) -> str:
    return os.path.join(root, f'q{message}-k{key}' if message else f'nomsg-k{key}')


def train_missing(points, args) -> None:
    from collab_perception.learn.report import run_finished
    os.makedirs(os.path.join(args.runs, 'locks'), exist_ok=True)
    for message, key in points:
        run = run_dir(args.runs, message, key)
        if run_finished(run):
            continue
        with open(os.path.join(args.runs, 'locks', f'{os.path.basename(run)}.lock'), 'w') as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f'[sweep] {run}: another worker has it', flush=True)
                continue
            command = [sys.executable, '-m', 'collab_perception.cli', 'train',
                       '--method', 'who2com' if message else 'who2com_nomsg', '--setting', args.setting,
                       '--data', args.data, '--out', run, '--query-size', str(message or args.fixed_message),
                       '--key-size', str(key), '--selection', 'hard', '--init-from', args.backbone,
                       '--freeze-encoder', '--iterations', str(args.iterations), '--resume', '--quiet',
                       *(['--threads', str(args.threads)] if args.threads else [])]
            print('[sweep] ' + ' '.join(command[3:]), flush=True)
            subprocess.run(command, check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--messages', nargs='+', type=int, default=[1, 2, 4, 8, 16, 64], metavar='M',
                   help='message sizes of panel (a), with the key fixed (default: 1 2 4 8 16 64)')
    p.add_argument('--keys', nargs='+', type=int, default=[4, 16, 64, 256, 1024], metavar='K',
                   help='key sizes of panel (b), with the message fixed (default: 4 16 64 256 1024)')
    p.add_argument('--fixed-message', type=int, default=8, help='the message size of panel (b) (default 8)')
    p.add_argument('--fixed-key', type=int, default=256, help='the key size of panel (a) (default 256)')
    p.add_argument('--setting', default='hidden-target')
    p.add_argument('--data', default='datasets/hidden-target')
    p.add_argument('--unseen', default='datasets/hidden-target-unseen', help='unseen-worlds dataset ("" to skip)')
    p.add_argument('--backbone', default='runs/train/hidden-target/backbone/best.pt',
                   help='the shared backbone every run starts from')
    p.add_argument('--runs', default='runs/train/hidden-target-fig5', help='where the sweep\'s runs go')
    p.add_argument('--iterations', type=int, default=1000)
    p.add_argument('--train', action='store_true', help='train the runs that are missing (else only score)')
    p.add_argument('--threads', type=int, default=0, help='torch threads per training run (default: all cores)')
    p.add_argument('--out', default='docs/img/who2com_message_key_sizes.png', help='the plot')
    p.add_argument('--json', default='', help='also write the numbers here')
    p.add_argument('--quiet', action='store_true')
    args = p.parse_args()
    for name in ('messages', 'keys'):
        bad = [v for v in getattr(args, name) if v < 1]
        if bad:
            p.error(f'--{name} must be positive integers, got {bad}')

    panel_a = [(m, args.fixed_key) for m in args.messages]
    panel_b = [(args.fixed_message, k) for k in args.keys]
    points = list(dict.fromkeys(panel_a + panel_b + [(0, args.fixed_key)]))   # (0, k): Ours w/o msg
    if args.train:
        if not os.path.exists(args.backbone):
            p.error(f'--backbone {args.backbone} does not exist; train it first: collab-perception train '
                    f'--method backbone --setting {args.setting} --iterations 2000')
        train_missing(points, args)

    from collab_perception.learn.evaluate import evaluate_run
    from collab_perception.learn.report import run_finished
    scores = {}
    for point in points:
        run = run_dir(args.runs, *point)
        if not run_finished(run):
            print(f'[sweep] {run}: not trained yet', flush=True)
            continue
        test = evaluate_run(run, args.data, 'test', progress=not args.quiet)
        row = {'run': run, 'test': test}
        if args.unseen:
            row['unseen'] = evaluate_run(run, args.unseen, 'test', progress=not args.quiet,
                                         cache_name=f'eval_unseen_{args.setting}')
        scores[point] = row

    def cell(point, key):
        row = scores.get(point)
        if row is None:
            return 'not trained'
        test = 100 * row['test'][key]
        unseen = f' ({100 * row["unseen"][key]:.1f})' if 'unseen' in row else ''
        return f'{test:.1f}{unseen}'

    print('\n| panel | message size | key size | selection acc, test (unseen) | overall acc, test (unseen) | '
          'request kB/frame |')
    print('|---|---|---|---|---|---|')
    for panel, pts in (('(a)', panel_a), ('(b)', panel_b), ('w/o msg', [(0, args.fixed_key)])):
        for point in pts:
            kb = f'{scores[point]["test"]["bytes_by_kind"]["request"] / 1024:.3f}' if point in scores else '-'
            print(f'| {panel} | {point[0] or "-"} | {point[1]} | {cell(point, "selection_accuracy")} | '
                  f'{cell(point, "overall_accuracy")} | {kb} |')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump([{'message': m, 'key': k, **{s: row[s] for s in ('test', 'unseen') if s in row}}
                       for (m, k), row in scores.items()], f, indent=1)
    if scores:
        _plot(scores, panel_a, panel_b, (0, args.fixed_key), args)
        print(args.out)
    return 0


def _plot(scores, panel_a, panel_b, nomsg, args):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    panels = ((axes[0], panel_a, 0, f'(a) message size (key {args.fixed_key})'),
              (axes[1], panel_b, 1, f'(b) key size (message {args.fixed_message})'))
    for ax, pts, axis, title in panels:
        pts = [pt for pt in pts if pt in scores]
        x = [pt[axis] for pt in pts]
        for metric, color, label in (('selection_accuracy', 'C0', 'selection acc'),
                                     ('overall_accuracy', 'C1', 'overall acc')):
            for split, style in (('test', '-'), ('unseen', '--')):
                if pts and split in scores[pts[0]]:
                    ax.plot(x, [100 * scores[pt][split][metric] for pt in pts], style, marker='o', color=color,
                            label=f'{label} ({"test" if split == "test" else "unseen worlds"})')
            if nomsg in scores:
                ax.axhline(100 * scores[nomsg]['test'][metric], color=color, linestyle=':', linewidth=1,
                           label=f'{label}, w/o msg (test)')
        ax.set_xscale('log', base=2)
        ax.set_xticks(x, [str(v) for v in x])
        ax.set_xlabel(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel('%')
    axes[1].legend(fontsize=7, loc='lower right')
    fig.suptitle(f'Who2com on {args.setting}: message and key sizes (handshake paper Fig. 5)')
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
    fig.savefig(args.out, dpi=110)


if __name__ == '__main__':
    raise SystemExit(main())
