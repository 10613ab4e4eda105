"""Navigation episodes and their dataset (data/nav.py, data/nav_cli.py, data/nav_preview.py): sampling rules,
splits and world seeds, the loader, determinism, and the `nav generate` / `nav preview` commands."""
import argparse
import dataclasses
import filecmp
import json
import os

import numpy as np
import pytest
from PIL import Image

from collab_perception.config import ConfigError
from collab_perception.data.nav import (TASKS, UNSEEN_SEED_OFFSET, Episode, NavDataset, generate_nav_dataset,
                                        sample_episodes, shortest_path)
from collab_perception.data.nav_cli import add_nav_data_commands
from collab_perception.world.landscape import SKY
from collab_perception.world.nav import BANDS, NavConfig, build_nav_map, landscape_seed

SMALL = NavConfig(region_m=24.0, image_size=16)
EPISODES_PER_MAP = 18            # one of every (task, team, band)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('nav') / 'ds')
    generate_nav_dataset(out, SMALL, {'train': 1, 'val': 1, 'test': 1}, 1, EPISODES_PER_MAP, progress=False)
    return NavDataset(out)


def _all_episodes(ds):
    return [e for split in ds.splits for e in ds.episodes(split)]


def test_episodes_lie_in_their_band_at_their_geodesic_distance(dataset):
    for e in _all_episodes(dataset):
        nav = dataset.map(e.map_split, e.map_id)
        lo, hi = SMALL.band_m(e.band)
        assert len(set(e.starts)) == e.team == len(e.goals) == len(e.goal_views) == len(e.shortest_m)
        for start, goal, view, shortest in zip(e.starts, e.goals, e.goal_views, e.shortest_m):
            assert lo <= shortest <= hi
            assert shortest == nav.distances_from(goal)[start]
            assert len(shortest_path(nav, start, goal)) - 1 == shortest / nav.lattice_m
            sky = (nav.labels[goal] == SKY).mean(axis=(1, 2))
            assert sky[view] <= 0.6 or sky.min() > 0.6


def test_common_goal_is_shared_and_specific_goals_are_each_agents_own(dataset):
    episodes = _all_episodes(dataset)
    common = [e for e in episodes if e.task == 'common']
    specific = [e for e in episodes if e.task == 'specific']
    assert common and specific
    for e in common:
        assert len(set(e.goals)) == 1 and len(set(e.goal_views)) == 1
    for e in specific:
        assert len(set(e.goals)) == e.team


def test_splits_have_disjoint_maps_and_unseen_has_its_own_world_seed(dataset):
    splits = dataset.manifest['splits']
    assert dataset.splits == ('train', 'val', 'test', 'unseen')
    assert [splits[s]['map_ids'] for s in ('train', 'val', 'test')] == [[0], [1], [2]]
    assert {splits[s]['world_seed'] for s in ('train', 'val', 'test')} == {SMALL.seed}
    assert splits['unseen']['world_seed'] == SMALL.seed + UNSEEN_SEED_OFFSET and splits['unseen']['map_ids'] == [0]
    for split, entry in splits.items():
        for m in entry['maps']:
            assert dataset.map(split, m['map_id']).landscape_seed == landscape_seed(entry['world_seed'], m['map_id'])
        counts = entry['episode_counts']
        assert {(t, int(n), b) for t in counts for n in counts[t] for b in counts[t][n] if counts[t][n][b] == 1} == \
            {(t, n, b) for t in TASKS for n in (2, 3, 4) for b in BANDS}
    # the unseen map 0 is another landscape than the train map 0
    assert dataset.map('unseen', 0).landscape_seed != dataset.map('train', 0).landscape_seed


def test_loader_round_trips_maps_and_filters_episodes(dataset):
    built = build_nav_map(SMALL, 0).arrays()
    loaded = dataset.map('train', 0)
    assert dataset.map('train', 0) is loaded                       # cached
    for key, value in loaded.arrays().items():
        assert np.array_equal(value, built[key]), key
    assert dataset.config == SMALL
    hard3 = dataset.episodes('val', task='specific', team=3, band='hard')
    assert len(hard3) == 1 and (hard3[0].task, hard3[0].team, hard3[0].band) == ('specific', 3, 'hard')
    assert len(dataset.episodes('val', team=2)) == EPISODES_PER_MAP // 3
    assert Episode.from_dict(json.loads(json.dumps(hard3[0].to_dict()))) == hard3[0]
    with pytest.raises(ValueError, match="no split 'nope'; splits: train, val, test, unseen"):
        dataset.episodes('nope')
    with pytest.raises(ValueError, match='split val has no map 0'):
        dataset.map('val', 0)
    with pytest.raises(ValueError, match="task 'commons' is not one of: common, specific"):
        dataset.episodes('val', task='commons')


def test_loader_names_what_is_wrong_with_a_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match='not a navigation dataset: no manifest.json'):
        NavDataset(str(tmp_path))
    (tmp_path / 'manifest.json').write_text(json.dumps({'format': 'collab_perception.nav/1', 'splits': {}}))
    with pytest.raises(ValueError, match='missing config'):
        NavDataset(str(tmp_path))
    (tmp_path / 'manifest.json').write_text(json.dumps({'format': 'collab_perception.dataset/1'}))
    with pytest.raises(ValueError, match="format 'collab_perception.dataset/1', expected 'collab_perception.nav/1'"):
        NavDataset(str(tmp_path))


def test_a_band_the_map_cannot_hold_names_the_map_and_the_band(dataset):
    nav = dataset.map('test', 2)
    wide = dataclasses.replace(SMALL, band_scale=20.0)               # hard: 100-200 m in a 24 m region
    with pytest.raises(ValueError, match=r'test map 2 .*band hard \(100-200 m\)'):
        sample_episodes(nav, wide, np.random.default_rng(0), 1, 'common', 2, 'hard', map_split='test')


def test_generation_is_deterministic_and_refuses_an_existing_dataset(tmp_path):
    dirs = [str(tmp_path / name) for name in ('a', 'b')]
    for out in dirs:
        generate_nav_dataset(out, SMALL, {'test': 1}, 0, 6, teams=(2,), progress=False)
    for name in ('maps/test-000.npz', 'episodes/test.json'):
        assert filecmp.cmp(os.path.join(dirs[0], name), os.path.join(dirs[1], name), shallow=False), name
    manifests = [json.load(open(os.path.join(out, 'manifest.json'))) for out in dirs]
    for m in manifests:
        m.pop('generation')
    assert manifests[0] == manifests[1]
    with pytest.raises(ConfigError, match='already holds a navigation dataset'):
        generate_nav_dataset(dirs[0], SMALL, {'test': 1}, 0, 6, progress=False)


def _cli(argv):
    parser = argparse.ArgumentParser()
    nav = parser.add_subparsers(dest='command', required=True).add_parser('nav')
    add_nav_data_commands(nav.add_subparsers(dest='nav_command', required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_generate_then_preview(tmp_path, capsys):
    out = str(tmp_path / 'cli')
    assert _cli(['nav', 'generate', '--out', out, '--maps', '0', '0', '1', '--unseen-maps', '0',
                 '--episodes-per-map', '4', '--image-size', '16', '--set', 'region_m=24', '--quiet']) == 0
    assert 'test 1 maps' in capsys.readouterr().out
    assert NavDataset(out).config == SMALL
    png = str(tmp_path / 'episode.png')
    assert _cli(['nav', 'preview', out, '--episode', '3', '--out', png]) == 0
    with Image.open(png) as im:
        image = np.asarray(im.convert('RGB'))
    assert image.shape[0] > 400 and image.shape[1] > 800
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50     # a drawing, not a blank page
    with pytest.raises(ConfigError, match='already holds a navigation dataset'):
        _cli(['nav', 'generate', '--out', out, '--quiet'])
    with pytest.raises(ConfigError, match='--image-size: expected an integer >= 16'):
        _cli(['nav', 'generate', '--out', str(tmp_path / 'bad'), '--image-size', '8'])
    with pytest.raises(ConfigError, match='--episodes-per-map: expected an integer >= 1'):
        _cli(['nav', 'generate', '--out', str(tmp_path / 'bad'), '--episodes-per-map', '0'])
    with pytest.raises(ConfigError, match='--episode: 4 is not in 0..3'):
        _cli(['nav', 'preview', out, '--episode', '4'])
