"""`collab-perception nav generate | preview`: the navigation dataset of CollaVN on the embedded world.

`add_nav_data_commands(sub)` adds both subcommands to the `nav` command's argparse subparsers object
(collab_perception/cli.py creates `nav`); each sets `func(args) -> exit code`, and configuration errors raise
ConfigError (exit code 2 there).
"""
from __future__ import annotations

import argparse
import os

from ..config import ConfigError, parse_override
from ..world.nav import BANDS
from .nav import MANIFEST, TASKS, UNSEEN_SEED_OFFSET

# generate_nav_dataset's argument names -> the options that set them
_OPTIONS = {'maps': '--maps', 'unseen_maps': '--unseen-maps', 'episodes_per_map': '--episodes-per-map'}


def add_nav_data_commands(sub) -> None:
    """Add `generate` and `preview` to an argparse subparsers object (the `nav` command's)."""
    g = sub.add_parser(
        'generate', help='build navigation maps and sample their episodes',
        description='Build nav maps of the embedded world (a region of a landscape map, its occupancy, the free '
                    'lattice graph and a four-view panorama per node, rendered once) and sample episodes on them '
                    f'into DIR: maps/<split>-<id>.npz, episodes/<split>.json and {MANIFEST}. train / val / test '
                    'are disjoint maps of the world seed; unseen holds maps of the world seed + '
                    f'{UNSEEN_SEED_OFFSET}, which no training or validation set uses. Each map\'s episodes go '
                    f'round-robin over every task ({", ".join(TASKS)}), team size (2, 3, 4) and band '
                    f'({", ".join(BANDS)}). Deterministic: the same arguments give the same files. Files and '
                    'keys: docs/DATASETS.md.',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument('--out', required=True, metavar='DIR', help='output directory (must not hold a dataset yet)')
    g.add_argument('--config', metavar='PATH', default=None,
                   help='navigation config with a nav: section (default: config/nav.yaml of the package)')
    g.add_argument('--maps', type=int, nargs=3, default=[12, 3, 3], metavar=('TRAIN', 'VAL', 'TEST'),
                   help='maps of the train, val and test splits (default 12 3 3)')
    g.add_argument('--unseen-maps', type=int, default=3, metavar='K',
                   help=f'maps of the unseen world seed (config seed + {UNSEEN_SEED_OFFSET}; default 3)')
    g.add_argument('--episodes-per-map', type=int, default=72, metavar='N',
                   help='episodes sampled on each map, spread evenly over the 18 (task, team, band) '
                        'combinations (default 72: 4 of each)')
    g.add_argument('--seed', type=int, default=None, metavar='S', help='world seed (default: the config\'s, 0)')
    g.add_argument('--image-size', type=int, default=None, metavar='PX',
                   help='width and height of a panorama view in pixels (default: the config\'s, 48)')
    g.add_argument('--set', metavar='KEY=VALUE', action='append', default=[], dest='overrides',
                   help='override a nav config value, e.g. --set region_m=48 --set band_scale=3 (repeatable; '
                        'VALUE is parsed as YAML; keys: config/nav.yaml)')
    g.add_argument('--quiet', action='store_true', help='no progress bar')
    g.set_defaults(func=cmd_generate)

    v = sub.add_parser(
        'preview', help='write a PNG of one episode: map, occupancy, paths, goal image, panoramas',
        description='One PNG of an episode: the occupancy grid of its map (north up), the free lattice nodes, each '
                    'agent\'s start and shortest path to its goal, the goal with the direction of its goal view; '
                    'beside it the goal image, enlarged, and each agent\'s start panorama (E, N, W, S).')
    v.add_argument('dir', metavar='DIR', help=f'a navigation dataset directory (with {MANIFEST})')
    v.add_argument('--split', default='test', help='split of the episode: train, val, test or unseen (default test)')
    v.add_argument('--episode', type=int, default=0, metavar='I', help='index of the episode in the split (default 0)')
    v.add_argument('--out', metavar='PNG', default=None, help='output file (default: DIR/preview.png)')
    v.set_defaults(func=cmd_preview)


def _nav_config(args):
    from .nav import load_nav_config
    overrides = {}
    for text in args.overrides:
        key, value = parse_override(text)
        overrides[key.removeprefix('nav.')] = value
    own_options = {'seed': ('--seed', args.seed), 'image_size': ('--image-size', args.image_size)}
    overrides.update({field: value for field, (_, value) in own_options.items() if value is not None})
    try:
        return load_nav_config(args.config, **overrides)
    except ConfigError as e:      # a field set by its own option is named by that option
        option, value = own_options.get(e.path.removeprefix('nav.'), (None, None))
        if value is not None:
            raise ConfigError(option, str(e).split(f'{e.path}: ', 1)[-1]) from None
        raise


def cmd_generate(args) -> int:
    config = _nav_config(args)
    from .nav import generate_nav_dataset
    train, val, test = args.maps
    try:
        m = generate_nav_dataset(args.out, config, {'train': train, 'val': val, 'test': test}, args.unseen_maps,
                                 args.episodes_per_map, progress=not args.quiet)
    except ConfigError as e:
        field = e.path.split('.', 1)[0]
        if field in _OPTIONS:
            raise ConfigError(_OPTIONS[field], str(e).split(': ', 1)[-1]) from None
        raise
    except ValueError as e:        # a band that the config's regions cannot hold, a map without free nodes
        raise ConfigError('nav', str(e)) from None
    splits = ', '.join(f'{s} {len(v["maps"])} maps / {v["nodes"]} nodes / {v["episodes"]} episodes'
                       for s, v in m['splits'].items())
    print(f'{args.out}: {splits}; {m["generation"]["seconds"]:.0f} s ({m["generation"]["seconds_per_map"]} s per map)')
    return 0


def cmd_preview(args) -> int:
    from .nav import NavDataset
    from .nav_preview import preview_nav
    try:
        ds = NavDataset(args.dir)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError('DIR', str(e)) from None
    if args.split not in ds.splits:
        raise ConfigError('--split', f'{args.split!r} is not a split of {args.dir}; splits: {", ".join(ds.splits)}')
    count = len(ds.episodes(args.split))
    if not 0 <= args.episode < count:
        raise ConfigError('--episode', f'{args.episode} is not in 0..{count - 1} (episodes of {args.split})')
    print(preview_nav(ds, args.split, args.episode, args.out or os.path.join(args.dir, 'preview.png')))
    return 0
