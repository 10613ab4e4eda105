"""Accuracy against pose noise: the calibration and the sweep of the inaccurate-pose setting (issue 11).

    python scripts/pose_noise_sweep.py --levels 0 0.5 1 2 3 5 \
        --runs runs/train/noisy-pose/who2com runs/train/noisy-pose/catall runs/train/noisy-pose/random \
        --reference runs/train/accurate-pose/single_degraded

For each noise level (std of each position coordinate, metres; handshake paper §IV-B (3) gives none), the test
split of the accurate-pose dataset and of its unseen worlds is warped again with that noise
(`collab-perception dataset rewarp ... --splits test`, into DATASETS/pose-noise-sweep/), so that every level
holds the same frames; the warped labels' agreement with the target's is measured, and every run given is
scored there (cached in each run as eval_sweep_<dataset>.json). Prints a Markdown table and writes a PNG:
accuracy of each run against the noise, test split solid, unseen worlds dashed, label agreement beside it.
Existing sweep datasets and scores are reused.
"""
from __future__ import annotations

import argparse
import json
import os


def run_label(run: str) -> str:
    """runs/train/<setting>/<method> -> <setting>/<method>, for tables and legends."""
    return os.path.relpath(run, 'runs/train') if run.startswith('runs/train') else run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--levels', nargs='+', type=float, default=[0, 0.5, 1, 2, 3, 5], metavar='M',
                   help='position noise levels, metres per axis (default: 0 0.5 1 2 3 5)')
    p.add_argument('--runs', nargs='*', default=[], metavar='RUN',
                   help='run directories to score (noisy-pose or accurate-pose handshake runs)')
    p.add_argument('--reference', nargs='*', default=[], metavar='RUN',
                   help='single-agent runs (e.g. runs/train/accurate-pose/single_degraded): they never read the '
                        'warped views, so they are scored once and drawn as horizontal lines')
    p.add_argument('--source', default='datasets/accurate-pose', help='pose dataset to warp again')
    p.add_argument('--unseen', default='datasets/accurate-pose-unseen',
                   help='its unseen-worlds twin ("" to skip)')
    p.add_argument('--datasets', default='datasets', help='where pose-noise-sweep/ goes')
    p.add_argument('--out', default='docs/img/pose_noise_sweep.png', help='the plot')
    p.add_argument('--json', default='', help='also write the numbers here')
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--quiet', action='store_true')
    args = p.parse_args()
    from collab_perception.data.rewarp import rewarp
    from collab_perception.data.shards import load_manifest
    from collab_perception.learn.evaluate import evaluate_run

    sources = {'test': args.source, **({'unseen': args.unseen} if args.unseen else {})}
    rows = []
    for level in args.levels:
        row = {'noise_m': level, 'agreement': {}, 'accuracy': {}}
        for split_name, src in sources.items():
            name = f'{os.path.basename(os.path.normpath(src))}-{level:g}m'
            data = os.path.join(args.datasets, 'pose-noise-sweep', name)
            if os.path.exists(os.path.join(data, 'manifest.json')):
                manifest = load_manifest(data)
            else:
                manifest = rewarp(src, data, level, splits=['test'], workers=args.workers, progress=not args.quiet)
            row['agreement'][split_name] = manifest['statistics']['warp_label_accuracy']['mean']
            for run in args.runs:
                result = evaluate_run(run, data, 'test', progress=not args.quiet, setting='noisy-pose',
                                      cache_name=f'eval_sweep_{name}')
                row['accuracy'].setdefault(run, {})[split_name] = 100 * result['overall_accuracy']
        rows.append(row)
        print(f'noise {level:g} m: labels agree {row["agreement"]}', flush=True)

    references = {}
    for run in args.reference:
        references[run] = {split_name: 100 * evaluate_run(run, src, 'test', progress=not args.quiet,
                                                          cache_name=f'eval_sweep_{os.path.basename(os.path.normpath(src))}')
                           ['overall_accuracy'] for split_name, src in sources.items()}
        print(f'{run} (reads no warped view): {references[run]}', flush=True)

    names = [run_label(r) for r in args.runs]
    print('\n| noise (m) | warped labels agree, test (unseen) |'
          + ''.join(f' {n} acc, test (unseen) |' for n in names))
    print('|---' * (2 + len(names)) + '|')
    for row in rows:
        cells = [f'{row["noise_m"]:g}',
                 ' '.join(f'{100 * row["agreement"][s]:.1f}%' if i == 0 else f'({100 * row["agreement"][s]:.1f}%)'
                          for i, s in enumerate(sources))]
        for run in args.runs:
            acc = row['accuracy'][run]
            cells.append(' '.join(f'{acc[s]:.2f}' if i == 0 else f'({acc[s]:.2f})' for i, s in enumerate(sources)))
        print('| ' + ' | '.join(cells) + ' |')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'levels': rows, 'sources': sources, 'references': references}, f, indent=1)
    _plot(rows, args.runs, names, list(sources), references, args.out)
    print(args.out)
    return 0


def _plot(rows, runs, names, splits, references, out):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    x = [r['noise_m'] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={'width_ratios': [2, 1]})
    for i, (run, name) in enumerate(zip(runs, names)):
        color = f'C{i}'
        for split, style in zip(splits, ('-', '--')):
            left.plot(x, [r['accuracy'][run][split] for r in rows], style, marker='o', color=color,
                      label=f'{name} ({"test" if split == "test" else "unseen worlds"})')
    for i, (run, accuracy) in enumerate(references.items()):
        name = run_label(run)
        for split, style in zip(splits, (':', (0, (1, 4)))):
            left.axhline(accuracy[split], color='0.4' if i == 0 else '0.65', linestyle=style, linewidth=1.2,
                         label=f'{name} ({"test" if split == "test" else "unseen worlds"}; no warped view)')
    left.set_xlabel('pose noise, std per position axis (m)')
    left.set_ylabel('overall pixel accuracy (%)')
    left.set_title('Inaccurate pose: accuracy against pose noise')
    left.grid(alpha=0.3)
    if runs or references:      # below the axes: inside, it hides the curves it names
        left.legend(fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.2), ncol=2)
    for split, style in zip(splits, ('-', '--')):
        right.plot(x, [100 * r['agreement'][split] for r in rows], style, marker='o', color='k',
                   label='test' if split == 'test' else 'unseen worlds')
    right.set_xlabel('pose noise (m)')
    right.set_ylabel('warped labels equal to the target\'s (%)')
    right.set_title('Warp consistency')
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches='tight')


if __name__ == '__main__':
    raise SystemExit(main())
