"""`collab-perception dataset ...`: generate the papers' datasets from the embedded world, and preview them.

`add_dataset_parser(subparsers)` adds the `dataset` command to the project's CLI (collab_perception/cli.py);
each subcommand sets `func(args) -> exit code`, and configuration errors raise ConfigError (exit code 2 there):
`collab-perception dataset --help`.
"""
from __future__ import annotations

import argparse

from ..config import ConfigError
from ..world.config import WorldConfig
from ..world.degrade import DegradeConfig
from .generate import GenerateConfig
from .settings import SETTINGS

_SETTINGS_HELP = '\n'.join(f'  {s.name:<19} {s.paper}: {s.summary}' for s in SETTINGS.values())


def add_dataset_parser(subparsers) -> argparse.ArgumentParser:
    """Add `dataset` (with `generate` and `preview`) to an argparse subparsers object."""
    p = subparsers.add_parser(
        'dataset', help='generate and preview the papers\' datasets from the embedded world',
        description='Datasets of the handshake paper (Who2com, §IV-B) and MASH (§IV) settings, rendered by the '
                    'embedded multi-drone world: sharded compressed numpy files and a JSON manifest. Files, keys '
                    'and conventions: docs/DATASETS.md.',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='dataset_command', metavar='SUBCOMMAND', required=True)

    g = sub.add_parser(
        'generate', help='render a dataset of one setting',
        description='Render N snapshots of one setting into DIR: whole maps go to train/val/test (60/20/20), '
                    'shards of compressed .npz plus manifest.json (classes, cameras, seeds, counts per split, '
                    'overlap statistics, shard list). Deterministic: the same arguments give the same files.\n\n'
                    'settings:\n' + _SETTINGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument('--setting', required=True, choices=list(SETTINGS), metavar='SETTING',
                   help='one of: ' + ', '.join(SETTINGS))
    g.add_argument('--frames', type=int, required=True, metavar='N', help='number of snapshots (all splits)')
    g.add_argument('--out', required=True, metavar='DIR', help='output directory (must not hold a dataset yet)')
    g.add_argument('--seed', type=int, default=0, help='seed of maps, flights, targets and degradations (default 0)')
    g.add_argument('--size', type=int, default=128, help='image width and height in pixels (default 128)')
    g.add_argument('--drones', type=int, default=None,
                   help='agents per snapshot (default: the setting\'s, 5; obstruction: 6)')
    g.add_argument('--shard-size', type=int, default=128, metavar='K', help='snapshots per shard at most (default 128)')
    g.add_argument('--snapshots-per-map', type=int, default=100, metavar='M',
                   help='snapshots flown over each map (default 100; at least 5 maps are used when N >= 5)')
    g.add_argument('--cell-size', type=int, default=8, metavar='PX',
                   help='correspondence cell size in pixels; must divide --size (default 8: 16x16 cells at 128)')
    g.add_argument('--pose-noise-m', type=float, default=GenerateConfig.pose_noise_m, metavar='M',
                   help='noisy-pose: std of the position noise per axis, metres (default '
                        f'{GenerateConfig.pose_noise_m:g}, calibrated: docs/DATASETS.md)')
    g.add_argument('--pose-noise-deg', type=float, default=0.0, metavar='DEG',
                   help='noisy-pose: std of an extra rotation noise, degrees (default 0, as in the paper)')
    g.add_argument('--blur-reference-width', type=int, default=None, metavar='PX',
                   help='the degraded target\'s blur: kernel sizes 1..100 (the handshake paper, §IV-B) are '
                        f'drawn at this image width and scaled to --size (default {DegradeConfig.reference_width})')
    g.add_argument('--noise-std', type=float, nargs=2, default=None, metavar=('LO', 'HI'),
                   help='the degraded target\'s Gaussian noise: its standard deviation is drawn from LO..HI, in '
                        f'0..255 units (default {DegradeConfig.noise_std_min:g} {DegradeConfig.noise_std_max:g})')
    g.add_argument('--degraded-share', type=float, default=1.0, metavar='F',
                   help='share of the snapshots whose target is degraded (default 1; below 1 the others\' '
                        'target sees clearly, and When2com\'s gate has a decision to make)')
    g.add_argument('--obstruction-coverage', type=float, nargs=2, default=None, metavar=('LO', 'HI'),
                   help='obstruction: the share of its camera\'s image an obstruction is sized to cover, drawn '
                        'from LO..HI (default {:g} {:g}, calibrated for the headroom of collaboration)'.format(
                            *WorldConfig.obstruction_coverage))
    g.add_argument('--obstruction-distance', type=float, nargs=2, default=None, metavar=('LO', 'HI'),
                   help='obstruction: its distance in front of the camera, metres, drawn from LO..HI '
                        '(default {:g} {:g})'.format(*WorldConfig.obstruction_distance_m))
    g.add_argument('--map-size', type=float, default=None, metavar='M',
                   help='side of a map in metres (default: the world\'s, 400)')
    g.add_argument('--workers', type=int, default=1, help='processes rendering maps in parallel (default 1)')
    g.add_argument('--quiet', action='store_true', help='no progress bar')
    g.set_defaults(func=cmd_generate)

    v = sub.add_parser(
        'preview', help='write a PNG contact sheet of a dataset',
        description='A PNG grid per snapshot: one column per agent; rows: camera input, labels in the class '
                    'colours, depth, and the obstruction mask or the views warped into the target where the '
                    'setting has them. The target column is framed in red.')
    v.add_argument('dir', metavar='DIR', help='a dataset directory (with manifest.json)')
    v.add_argument('--out', metavar='PNG', default=None, help='output file (default: DIR/preview.png)')
    v.add_argument('--snapshots', type=int, default=2, metavar='K', help='snapshots to show (default 2)')
    v.add_argument('--split', choices=('train', 'val', 'test'), default=None,
                   help='split to draw from (default: the first with snapshots)')
    v.add_argument('--start', type=int, default=0, metavar='I', help='first snapshot index in the split (default 0)')
    v.add_argument('--max-colors', type=int, default=None, metavar='C',
                   help='store the PNG with a palette of C colours (about 3x smaller; for documentation)')
    v.set_defaults(func=cmd_preview)

    r = sub.add_parser(
        'rewarp', help='derive a noisy-pose dataset from a pose dataset, without rendering',
        description='Copy the snapshots of a pose dataset (accurate-pose, noisy-pose or random-exploration) into '
                    'DIR as a noisy-pose dataset: the same views, labels, depth, poses and degradations, the other '
                    'agents warped into the target again with Gaussian noise on every agent\'s position (and '
                    'rotation). For calibrating and sweeping the pose noise (docs/DATASETS.md): every level shares '
                    'the source\'s frames. Deterministic: the same arguments give the same files.')
    r.add_argument('src', metavar='SRC', help='the pose dataset to copy (a directory with manifest.json)')
    r.add_argument('--out', required=True, metavar='DIR', help='output directory (must not hold a dataset yet)')
    r.add_argument('--pose-noise-m', type=float, default=GenerateConfig.pose_noise_m, metavar='M',
                   help='std of the position noise per axis, metres (0: the true poses; default '
                        f'{GenerateConfig.pose_noise_m:g}, the calibrated noisy-pose level)')
    r.add_argument('--pose-noise-deg', type=float, default=0.0, metavar='DEG',
                   help='std of an extra rotation noise, degrees (default 0, as in the paper)')
    r.add_argument('--seed', type=int, default=0, help='seed of the noise (default 0)')
    r.add_argument('--splits', nargs='+', choices=('train', 'val', 'test'), default=None, metavar='SPLIT',
                   help='splits to copy (default all; e.g. `--splits test` for a sweep that only evaluates)')
    r.add_argument('--workers', type=int, default=1, help='processes warping shards in parallel (default 1)')
    r.add_argument('--quiet', action='store_true', help='no progress bar')
    r.set_defaults(func=cmd_rewarp)
    return p


def cmd_generate(args) -> int:
    options = dict(snapshots_per_map=args.snapshots_per_map, cell_size=args.cell_size,
                   pose_noise_m=args.pose_noise_m, pose_noise_deg=args.pose_noise_deg, workers=args.workers)
    world_options = {'map_size_m': ('--map-size', args.map_size),
                     'obstruction_coverage': ('--obstruction-coverage', args.obstruction_coverage),
                     'obstruction_distance_m': ('--obstruction-distance', args.obstruction_distance)}
    world = {field: tuple(value) if isinstance(value, list) else value
             for field, (_, value) in world_options.items() if value is not None}
    if world:
        options['world'] = world
    degrade = {}
    if args.blur_reference_width is not None:
        degrade['reference_width'] = args.blur_reference_width
    if args.noise_std is not None:
        degrade['noise_std_min'], degrade['noise_std_max'] = args.noise_std
    try:
        options['degrade'] = DegradeConfig(**degrade)
    except ConfigError as e:
        option = '--blur-reference-width' if e.path == 'reference_width' else '--noise-std'
        raise ConfigError(option, str(e)) from None
    options['degraded_share'] = args.degraded_share
    from .generate import generate
    try:   # generate checks its config before it renders or writes anything
        m = generate(args.setting, args.frames, args.out, seed=args.seed, size=args.size, drones=args.drones,
                     shard_size=args.shard_size, progress=not args.quiet, **options)
    except ConfigError as e:    # a world field is named by the option that set it
        field = e.path.removeprefix('world.')
        if field in world_options:
            raise ConfigError(world_options[field][0], str(e).split(': ', 1)[-1]) from None
        raise
    ov = m['statistics']['pairwise_overlap']
    counts = ', '.join(f'{s} {m["splits"][s]["snapshots"]} ({len(m["splits"][s]["maps"])} maps)' for s in m['splits'])
    print(f'{args.out}: {m["frames"]} snapshots of {m["setting"]}: {counts}; '
          f'{m["size_bytes"] / 1e6:.1f} MB ({m["mb_per_1000_snapshots"]} MB per 1000 snapshots); '
          f'{m["generation"]["snapshots_per_s"]} snapshots/s')
    if ov:
        print(f'pairwise pixel overlap {ov["mean"]:.1%} +- {ov["std"]:.1%} (MASH: 37% +- 15%)')
    return 0


def cmd_rewarp(args) -> int:
    if args.workers < 1:
        raise ConfigError('--workers', f'expected an integer >= 1, got {args.workers}')
    from .rewarp import rewarp
    try:
        m = rewarp(args.src, args.out, args.pose_noise_m, args.pose_noise_deg, seed=args.seed, splits=args.splits,
                   workers=args.workers, progress=not args.quiet)
    except ConfigError as e:    # named by the option that set it
        option = {'src': 'SRC', 'out': '--out'}.get(e.path, '--' + e.path.replace('_', '-'))
        raise ConfigError(option, str(e).split(': ', 1)[-1]) from None
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError('SRC', str(e)) from None
    agreement = m['statistics']['warp_label_accuracy']
    counts = ', '.join(f'{s} {m["splits"][s]["snapshots"]}' for s in m['splits'] if m['splits'][s]['snapshots'])
    print(f'{args.out}: noisy-pose at {m["pose_noise"]["position_std_m"]:g} m, '
          f'{m["pose_noise"]["rotation_std_deg"]:g} deg from {args.src}: {counts} snapshots; '
          f'warped labels agree with the target on {agreement["mean"]:.1%} of the valid pixels'
          if agreement else f'{args.out}: no warped views')
    return 0


def cmd_preview(args) -> int:
    if args.snapshots < 1:
        raise ConfigError('--snapshots', f'expected an integer >= 1, got {args.snapshots}')
    from .preview import write_preview
    try:
        path = write_preview(args.dir, args.out, args.snapshots, args.split, args.start, args.max_colors)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError('DIR', str(e)) from None
    print(path)
    return 0
