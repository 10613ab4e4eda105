"""Navigation episodes on the world's nav maps (CollaVN §3): sampling, the dataset on disk and its loader.

    collab-perception nav generate --out datasets/nav          # maps + episodes + manifest.json
    collab-perception nav preview datasets/nav --split test    # a PNG of one episode

    from collab_perception.data.nav import NavDataset
    ds = NavDataset('datasets/nav')
    for ep in ds.episodes('train', task='common', team=2, band='easy'):
        nav = ds.map(ep.map_split, ep.map_id)                  # world.nav.NavMap, cached
        nav.rgb[ep.starts[0]], nav.rgb[ep.goals[0], ep.goal_views[0]]

Tasks: CommonGoal ('common', one goal node for the whole team) and SpecificGoal ('specific', a goal node per
agent, all different). The goal is given as one view of the goal node's panorama. Every agent's start lies
in the episode's band of geodesic start-goal distance (`NavConfig.band_m`, both ends inclusive); the starts
of a team are different nodes. Ad-hoCoop needs no episodes of its own: it tests a team size on episodes of
that size with a model trained on another.

Splits: train / val / test are disjoint map ids of the world seed `config.seed`; 'unseen' holds maps of
the world seed `config.seed + UNSEEN_SEED_OFFSET`, a world seed that no training or validation set uses.
Files and keys: docs/DATASETS.md ("Navigation (CollaVN)"). numpy only: no torch, no ROS.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..config import ConfigError, resource_path
from ..world.config import read_yaml_section
from ..world.nav import BANDS, UNREACHABLE_STEPS, NavConfig, NavMap, bfs_steps, build_nav_map
from .shards import MANIFEST as SHARDS_MANIFEST, load_manifest, write_manifest, write_npz

FORMAT = 'collab_perception.nav/1'
MANIFEST = SHARDS_MANIFEST      # the same file name as the papers' datasets
TASKS = ('common', 'specific')
SPLITS = ('train', 'val', 'test', 'unseen')
SEEN_SPLITS = SPLITS[:3]                 # maps of the world seed config.seed, in this order of map ids
UNSEEN_SEED_OFFSET = 1000                # the unseen split's world seed is config.seed plus this
MAX_SKY_SHARE = 0.6                      # a goal view more sky than this shows little of the place
GOAL_TRIES = 200                         # goal draws per episode before a band is declared infeasible
_EPISODE_STREAM = 0x45504953             # 'EPIS': the episode rng of a map, apart from its build rng
_BAND_TOLERANCE_M = 1e-6                 # lattice multiples such as 3 * 0.1 m are not exact in binary


def nav_config_path() -> str:
    return resource_path('config', 'nav.yaml')


def load_nav_config(path: Optional[str] = None, **overrides) -> NavConfig:
    """The `nav:` section of a YAML file (default config/nav.yaml), then keyword overrides; unknown keys are
    errors naming the valid ones."""
    path = path or nav_config_path()
    section = read_yaml_section(path, 'nav')
    return NavConfig.from_mapping({**section, **overrides}, source=path, path='nav')


# ------------------------------------------------------------------------------------------- episodes


@dataclass
class Episode:
    """One episode: a team on one map, each agent with a start node and a goal (node and goal view).

    `seed`: the episode's own seed; its goals, goal views and starts were drawn from
    np.random.default_rng(seed), and a run of the episode may seed what it draws (a stochastic policy) from it.
    """

    map_split: str
    map_id: int
    task: str
    band: str
    team: int
    starts: list[int]           # start node of each agent, all different
    goals: list[int]            # goal node of each agent (common: one node repeated)
    goal_views: list[int]       # 0..3 (E, N, W, S): the goal image is nav.rgb[goal, view]
    shortest_m: list[float]     # geodesic start -> goal distance of each agent
    seed: int

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f'episode task {self.task!r} is not one of: {", ".join(TASKS)}')
        if self.band not in BANDS:
            raise ValueError(f'episode band {self.band!r} is not one of: {", ".join(BANDS)}')
        for name in ('starts', 'goals', 'goal_views', 'shortest_m'):
            if len(getattr(self, name)) != self.team:
                raise ValueError(f'episode {name}: {len(getattr(self, name))} entries for a team of {self.team}')

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'Episode':
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            raise ValueError(f'episode {dict(data)!r}: ' + '; '.join(
                ([f'missing {", ".join(missing)}'] if missing else []) +
                ([f'unknown {", ".join(unknown)}'] if unknown else [])))
        return cls(map_split=str(data['map_split']), map_id=int(data['map_id']), task=data['task'],
                   band=data['band'], team=int(data['team']), starts=[int(s) for s in data['starts']],
                   goals=[int(g) for g in data['goals']], goal_views=[int(v) for v in data['goal_views']],
                   shortest_m=[float(d) for d in data['shortest_m']], seed=int(data['seed']))


def shortest_path(nav_map: NavMap, start: int, goal: int) -> list[int]:
    """The nodes of a shortest path from `start` to `goal` (both included): the walk down the BFS distance
    field of the goal, taking the first move (E, N, W, S) that gets one step closer."""
    steps = bfs_steps(nav_map.neighbours, goal)
    if steps[start] == UNREACHABLE_STEPS:
        raise ValueError(f'map {nav_map.map_id}: node {goal} is not reachable from node {start}')
    path = [start]
    while path[-1] != goal:
        nxt = nav_map.neighbours[path[-1]]
        closer = nxt[(nxt >= 0) & (steps[np.maximum(nxt, 0)] == steps[path[-1]] - 1)]
        path.append(int(closer[0]))
    return path


def _goal_view(nav_map: NavMap, goal: int, rng: np.random.Generator) -> int:
    """A view of the goal's panorama, uniformly among those at most MAX_SKY_SHARE sky (all four if none is)."""
    from ..world.landscape import SKY      # here: the landscape module pulls in OpenCV, `nav --help` must not
    sky = (nav_map.labels[goal] == SKY).mean(axis=(1, 2))
    views = np.flatnonzero(sky <= MAX_SKY_SHARE)
    return int(rng.choice(views if len(views) else np.arange(len(sky))))


def sample_episodes(nav_map: NavMap, config: NavConfig, rng: np.random.Generator, count: int, task: str,
                    team: int, band: str, map_split: str = '') -> list[Episode]:
    """`count` episodes of `task` for a team of `team` agents whose start-goal distances lie in `band`.

    A goal node is drawn uniformly among the map's nodes (SpecificGoal: one per agent, all different), its
    goal view by `_goal_view`, and each agent's start uniformly among the nodes whose geodesic distance to its
    goal lies in the band, different from the other agents' starts. A goal with fewer than `team` nodes in
    the band is drawn again; after GOAL_TRIES draws in one episode, ValueError names the map and the band.
    """
    if task not in TASKS:
        raise ConfigError('task', f'{task!r} is not one of: {", ".join(TASKS)}')
    if not isinstance(team, int) or not 1 <= team <= nav_map.nodes:
        raise ConfigError('team', f'expected an integer in 1..{nav_map.nodes} (the map\'s nodes), got {team!r}')
    lo, hi = config.band_m(band)
    episodes = []
    for _ in range(count):
        seed = int(rng.integers(2 ** 31))
        episode_rng = np.random.default_rng(seed)
        goals, views, starts, shortest = [], [], [], []
        tries = 0
        while len(starts) < team:
            tries += 1
            if tries > GOAL_TRIES:
                where = f'{map_split} map' if map_split else 'map'
                raise ValueError(f'{where} {nav_map.map_id} ({nav_map.nodes} nodes): no goal with {team} start nodes '
                                 f'in band {band} ({lo:g}-{hi:g} m) in {GOAL_TRIES} tries; a larger region_m or a '
                                 f'smaller band_scale makes room')
            goal = int(episode_rng.integers(nav_map.nodes))
            if goal in goals:               # SpecificGoal: every agent its own goal
                continue
            distance = nav_map.distances_from(goal)
            in_band = np.flatnonzero((distance >= lo - _BAND_TOLERANCE_M) & (distance <= hi + _BAND_TOLERANCE_M))
            if len(in_band) < team:
                continue
            if task == 'common':
                views = [_goal_view(nav_map, goal, episode_rng)] * team
                goals = [goal] * team
                starts = [int(s) for s in episode_rng.choice(in_band, team, replace=False)]
                shortest = [float(distance[s]) for s in starts]
            else:
                start = int(episode_rng.choice(np.setdiff1d(in_band, starts)))
                goals.append(goal)
                views.append(_goal_view(nav_map, goal, episode_rng))
                starts.append(start)
                shortest.append(float(distance[start]))
        episodes.append(Episode(map_split=map_split, map_id=nav_map.map_id, task=task, band=band, team=team,
                                starts=starts, goals=goals, goal_views=views, shortest_m=shortest, seed=seed))
    return episodes


# ------------------------------------------------------------------------------------------- the dataset


def map_file(split: str, map_id: int) -> str:
    """A map's file, relative to the dataset directory."""
    return f'maps/{split}-{map_id:03d}.npz'


def episodes_file(split: str) -> str:
    return f'episodes/{split}.json'


def split_plan(config: NavConfig, maps: Mapping[str, int], unseen_maps: int) -> dict[str, tuple[int, list[int]]]:
    """split -> (world seed, map ids) for the splits with at least one map: train, val and test count up
    the map ids of config.seed in that order; unseen counts from 0 in config.seed + UNSEEN_SEED_OFFSET."""
    unknown = sorted(set(maps) - set(SEEN_SPLITS))
    if unknown:
        raise ConfigError(f'maps.{unknown[0]}', f'unknown split; splits: {", ".join(SEEN_SPLITS)}')
    counts = {**{s: maps.get(s, 0) for s in SEEN_SPLITS}, 'unseen': unseen_maps}
    for split, n in counts.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ConfigError('unseen_maps' if split == 'unseen' else f'maps.{split}',
                              f'expected an integer >= 0, got {n!r}')
    if not any(counts.values()):
        raise ConfigError('maps', 'no maps in any split')
    plan, first = {}, 0
    for split in SEEN_SPLITS:
        if counts[split]:
            plan[split] = (config.seed, list(range(first, first + counts[split])))
        first += counts[split]
    if unseen_maps:
        plan['unseen'] = (config.seed + UNSEEN_SEED_OFFSET, list(range(unseen_maps)))
    return plan


def _check_choices(name: str, values: Sequence, valid: Optional[Sequence] = None) -> list:
    values = list(values)
    if not values or len(set(values)) != len(values):
        raise ConfigError(name, f'expected a non-empty list without repeats, got {values!r}')
    bad = [v for v in values if (v not in valid if valid is not None else
                                 not isinstance(v, int) or isinstance(v, bool) or v < 1)]
    if bad:
        allowed = ', '.join(map(str, valid)) if valid is not None else 'integers >= 1'
        raise ConfigError(name, f'{bad[0]!r} is not one of: {allowed}')
    return values


def _write_episodes(path: str, episodes: list[Episode]) -> None:
    """A JSON list with one episode per line (readable, diffable)."""
    with open(path, 'w', encoding='utf-8') as f:
        f.write('[\n' + ',\n'.join(json.dumps(e.to_dict()) for e in episodes) + '\n]\n')


def generate_nav_dataset(out_dir: str, config: NavConfig, maps: Mapping[str, int], unseen_maps: int,
                         episodes_per_map: int, teams: Sequence[int] = (2, 3, 4), tasks: Sequence[str] = TASKS,
                         bands: Sequence[str] = BANDS, progress: bool = True) -> dict:
    """Build the maps of every split, sample their episodes and write the dataset into `out_dir` (created;
    must not hold a manifest.json). `maps`: split -> number of maps for train / val / test; `unseen_maps`:
    maps of the unseen world seed. Each map's `episodes_per_map` episodes go round-robin over every (task,
    team, band). Deterministic: the same arguments give the same files (but the manifest's timing).
    Returns the manifest (also written to manifest.json)."""
    if os.path.exists(os.path.join(out_dir, MANIFEST)):
        raise ConfigError('out', f'{out_dir} already holds a navigation dataset ({MANIFEST}); choose another '
                                 f'directory or delete it')
    plan = split_plan(config, maps, unseen_maps)
    if not isinstance(episodes_per_map, int) or episodes_per_map < 1:
        raise ConfigError('episodes_per_map', f'expected an integer >= 1, got {episodes_per_map!r}')
    tasks = _check_choices('tasks', tasks, TASKS)
    bands = _check_choices('bands', bands, BANDS)
    teams = _check_choices('teams', teams)
    combos = [(task, team, band) for task in tasks for team in teams for band in bands]

    from tqdm import tqdm

    from ..world.render import Renderer

    os.makedirs(os.path.join(out_dir, 'maps'), exist_ok=True)
    os.makedirs(os.path.join(out_dir, 'episodes'), exist_ok=True)
    started = time.monotonic()
    splits = {}
    bar = tqdm(total=sum(len(ids) for _, ids in plan.values()), desc='nav maps', unit='map',
               disable=not progress, dynamic_ncols=True)
    renderer = Renderer(config.image_size, config.image_size, 64)    # one GL context for every map
    try:
        for split, (world_seed, map_ids) in plan.items():
            world = dataclasses.replace(config, seed=world_seed)
            entries, episodes = [], []
            for map_id in map_ids:
                bar.set_postfix_str(f'{split} {map_id}')
                nav_map = build_nav_map(world, map_id, renderer)
                write_npz(os.path.join(out_dir, map_file(split, map_id)), nav_map.arrays())
                rng = np.random.default_rng(np.random.SeedSequence([world_seed, map_id, _EPISODE_STREAM]))
                for i in range(episodes_per_map):
                    task, team, band = combos[i % len(combos)]
                    episodes += sample_episodes(nav_map, world, rng, 1, task, team, band, map_split=split)
                entries.append({'map_id': map_id, 'file': map_file(split, map_id), 'nodes': nav_map.nodes,
                                'landscape_seed': nav_map.landscape_seed,
                                'origin': [round(float(v), 6) for v in nav_map.origin]})
                bar.update(1)
            _write_episodes(os.path.join(out_dir, episodes_file(split)), episodes)
            counts = {task: {str(team): {band: 0 for band in bands} for team in teams} for task in tasks}
            for e in episodes:
                counts[e.task][str(e.team)][e.band] += 1
            splits[split] = {'world_seed': world_seed, 'map_ids': map_ids, 'maps': entries,
                             'nodes': sum(m['nodes'] for m in entries),
                             'episodes_file': episodes_file(split), 'episodes': len(episodes),
                             'episode_counts': counts}
    finally:
        renderer.release()
        bar.close()
    seconds = time.monotonic() - started
    maps_built = sum(len(s['maps']) for s in splits.values())
    manifest = {
        'format': FORMAT,
        'config': config.to_dict(),
        'tasks': tasks, 'teams': teams, 'bands': bands,
        'bands_m': {band: list(config.band_m(band)) for band in bands},
        'success_m': config.success_m,
        'episodes_per_map': episodes_per_map,
        'unseen_seed_offset': UNSEEN_SEED_OFFSET,
        'splits': splits,
        'generation': {'seconds': round(seconds, 1), 'seconds_per_map': round(seconds / maps_built, 2)},
    }
    write_manifest(out_dir, manifest)
    return manifest


class NavDataset:
    """A navigation dataset written by `generate_nav_dataset`: its config, maps (cached) and episodes."""

    def __init__(self, path: str, cached_maps: int = 8):
        """`cached_maps`: how many loaded maps to keep (one default-size map is about 20 MB)."""
        self.path = path
        manifest_path = os.path.join(path, MANIFEST)
        manifest = load_manifest(path, FORMAT, 'navigation dataset', 'collab-perception nav generate')
        missing = [k for k in ('config', 'splits') if k not in manifest]
        if missing:
            raise ValueError(f'{manifest_path}: missing {", ".join(missing)}')
        for split, entry in manifest['splits'].items():
            if split not in SPLITS:
                raise ValueError(f'{manifest_path}: unknown split {split!r}; splits: {", ".join(SPLITS)}')
            absent = [k for k in ('world_seed', 'map_ids', 'maps', 'episodes_file') if k not in entry]
            if absent:
                raise ValueError(f'{manifest_path}: splits.{split} lacks {", ".join(absent)}')
        self.manifest = manifest
        self.config = NavConfig.from_mapping(manifest['config'], source=manifest_path, path='config')
        self._episodes: dict[str, list[Episode]] = {}
        self._load_map = functools.lru_cache(maxsize=cached_maps)(self._read_map)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.manifest['splits'])

    def _split(self, split: str) -> dict:
        if split not in self.manifest['splits']:
            raise ValueError(f'{self.path}: no split {split!r}; splits: {", ".join(self.splits)}')
        return self.manifest['splits'][split]

    def _read_map(self, split: str, map_id: int) -> NavMap:
        with np.load(os.path.join(self.path, map_file(split, map_id)), allow_pickle=False) as npz:
            return NavMap.from_arrays({k: npz[k] for k in npz.files})

    def map(self, split: str, map_id: int) -> NavMap:
        """Nav map `map_id` of `split` (the last `cached_maps` loaded stay in memory)."""
        ids = self._split(split)['map_ids']
        if map_id not in ids:
            raise ValueError(f'{self.path}: split {split} has no map {map_id}; its maps: {ids}')
        return self._load_map(split, int(map_id))

    def episodes(self, split: str, task: Optional[str] = None, team: Optional[int] = None,
                 band: Optional[str] = None) -> list[Episode]:
        """The episodes of `split` in file order, only those of `task`, `team` and `band` where given."""
        entry = self._split(split)
        if task is not None and task not in TASKS:
            raise ValueError(f'task {task!r} is not one of: {", ".join(TASKS)}')
        if band is not None and band not in BANDS:
            raise ValueError(f'band {band!r} is not one of: {", ".join(BANDS)}')
        if split not in self._episodes:
            with open(os.path.join(self.path, entry['episodes_file']), encoding='utf-8') as f:
                self._episodes[split] = [Episode.from_dict(d) for d in json.load(f)]
        return [e for e in self._episodes[split]
                if (task is None or e.task == task) and (team is None or e.team == team)
                and (band is None or e.band == band)]
