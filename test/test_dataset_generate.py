"""Tiny real datasets of every setting: generate -> manifest -> load round trips, determinism, splits, CLI,
preview, validation."""
import argparse
import hashlib
import os

import numpy as np
import pytest

from collab_perception.config import ConfigError
from collab_perception.data import SETTINGS, BatchLoader, GenerateConfig, generate, iter_snapshots, load_manifest
from collab_perception.data.cli import add_dataset_parser
from collab_perception.data.generate import plan_maps
from collab_perception.data.preview import write_preview
from collab_perception.data.rewarp import rewarp

TINY_WORLD = {'map_size_m': 120.0, 'ground_texel_m': 0.5, 'shadow_map_size': 512}
TINY = dict(frames=6, size=32, snapshots_per_map=2, cell_size=8, shard_size=2, world=TINY_WORLD, progress=False)


@pytest.fixture(scope='module')
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp('datasets')
    return {name: (str(root / name), generate(name, out_dir=str(root / name), seed=3, **TINY)) for name in SETTINGS}


@pytest.mark.parametrize('name', list(SETTINGS))
def test_generate_then_load_round_trip(datasets, name):
    root, manifest = datasets[name]
    assert load_manifest(root) == manifest
    setting = SETTINGS[name]
    n, H, C = setting.drones, 32, 16
    assert manifest['agents'] == n and manifest['no_match'] == C and manifest['cells'] == [4, 4]
    # whole maps per split, 60/20/20 of 5 maps, every snapshot once
    assert [len(manifest['splits'][s]['maps']) for s in ('train', 'val', 'test')] == [3, 1, 1]
    maps = [set(manifest['splits'][s]['maps']) for s in ('train', 'val', 'test')]
    assert not (maps[0] & maps[1] or maps[0] & maps[2] or maps[1] & maps[2])
    assert sum(manifest['splits'][s]['snapshots'] for s in ('train', 'val', 'test')) == 6
    seen = 0
    for split in ('train', 'val', 'test'):
        for snap in iter_snapshots(root, split):
            seen += 1
            assert int(snap['map_id']) in manifest['splits'][split]['maps']
            assert snap['rgb'].shape == (n, H, H, 3) and snap['rgb'].dtype == np.uint8
            assert snap['labels'].shape == (n, H, H) and snap['depth'].dtype == np.float16
            assert snap['correspondence'].shape == (n, n, C) and snap['overlap'].shape == (n, n)
            assert snap['K'].shape == (n, 3, 3) and snap['orientation_xyzw'].shape == (n, 4)
            t = int(snap['target_index'])
            assert np.array_equal(np.flatnonzero(snap['degraded']), [t] if setting.degrade_target else [])
            if setting.degrade_target:
                lo, hi = manifest['degradation']['kernel_range_px']
                noise = manifest['degradation']['noise_std_min'], manifest['degradation']['noise_std_max']
                assert lo <= snap['blur_kernel'][t] <= hi and noise[0] <= snap['noise_std'][t] <= noise[1]
                assert not np.array_equal(snap['rgb'][t], snap['target_rgb_clean'])
            if setting.hidden_target:
                h = int(snap['hidden_index'])
                assert h != t and snap['source_agent'][h] == t
                assert np.array_equal(snap['rgb'][h], snap['target_rgb_clean'])
                assert np.array_equal(snap['labels'][h], snap['labels'][t])
                assert snap['best_supporter'][t] == h and snap['overlap'][t, h] > 0.99
            if setting.obstructions:
                assert snap['obstructed'][t] and snap['obstruction_mask'][t].any()
                assert not np.array_equal(snap['rgb'][t], snap['target_rgb_clean'])
                assert manifest['obstruction']['target_coverage']['mean'] > 0.02
            else:
                assert not snap['obstruction_mask'].any()
            if setting.warp:
                assert snap['warped_rgb'].shape == (n, H, H, 3) and not snap['warped_valid'][t].any()
                moved = np.linalg.norm(snap['warp_position'] - snap['position'], axis=1)
                assert (moved.max() == 0) == (setting.warp == 'accurate')
                valid = snap['warped_valid']
                assert np.all(snap['warped_labels'][~valid] == 255)
            else:
                assert 'warped_rgb' not in snap
    assert seen == 6
    assert set(manifest['keys']) == set(snap)
    ov = manifest['statistics']['pairwise_overlap']
    assert 0 <= ov['mean'] <= 1 and ov['pairs'] > 0


def test_noisy_pose_warps_worse_than_accurate_pose(datasets):
    acc = datasets['accurate-pose'][1]['statistics']['warp_label_accuracy']['mean']
    noisy = datasets['noisy-pose'][1]['statistics']['warp_label_accuracy']['mean']
    assert acc > 0.8 and noisy < acc


def test_rewarp_redoes_the_warps_with_new_pose_noise_and_keeps_the_frames(datasets, tmp_path):
    src, manifest = datasets['accurate-pose']
    exact = rewarp(src, str(tmp_path / 'zero'), pose_noise_m=0.0, progress=False)
    noisy = rewarp(src, str(tmp_path / 'far'), pose_noise_m=8.0, splits=['train', 'test'], workers=2, progress=False)
    assert exact['setting'] == noisy['setting'] == 'noisy-pose' and 'noisy' in noisy['summary']
    assert noisy['pose_noise'] == {'position_std_m': 8.0, 'rotation_std_deg': 0.0}
    assert noisy['splits']['val']['snapshots'] == 0 and noisy['splits']['test'] == \
        dict(manifest['splits']['test'], shards=noisy['splits']['test']['shards'])
    # no noise: the source's warps again (float16 depth moves a few pixels at most)
    agree = exact['statistics']['warp_label_accuracy']['mean']
    assert abs(agree - manifest['statistics']['warp_label_accuracy']['mean']) < 0.02
    assert noisy['statistics']['warp_label_accuracy']['mean'] < agree - 0.05
    for split in ('train', 'test'):
        before, after = list(iter_snapshots(src, split)), list(iter_snapshots(str(tmp_path / 'far'), split))
        assert len(before) == len(after)
        for a, b in zip(before, after):
            for key in ('rgb', 'labels', 'position', 'correspondence', 'target_index'):
                assert np.array_equal(a[key], b[key]), key
            assert not np.array_equal(a['warp_position'], b['warp_position'])
            assert np.allclose(b['warp_position'][a['target_index']], a['position'][a['target_index']], atol=40)
    # deterministic
    again = rewarp(src, str(tmp_path / 'again'), pose_noise_m=8.0, splits=['train', 'test'], progress=False)
    assert _digest(str(tmp_path / 'far')) == _digest(str(tmp_path / 'again'))
    assert again['statistics'] == noisy['statistics']


def test_rewarp_rejects_what_it_cannot_use(datasets, tmp_path):
    with pytest.raises(ConfigError, match='SRC: .*hidden-target.*no warped views'):
        _cli(['dataset', 'rewarp', datasets['hidden-target'][0], '--out', str(tmp_path / 'x'), '--pose-noise-m', '1'])
    with pytest.raises(ConfigError, match='--pose-noise-m: expected a number in 0..100, got -1'):
        _cli(['dataset', 'rewarp', datasets['accurate-pose'][0], '--out', str(tmp_path / 'x'), '--pose-noise-m', '-1'])
    with pytest.raises(ConfigError, match='SRC: .*no manifest.json'):
        _cli(['dataset', 'rewarp', str(tmp_path), '--out', str(tmp_path / 'x'), '--pose-noise-m', '1'])
    with pytest.raises(ConfigError, match='--out: .*already holds a dataset'):
        _cli(['dataset', 'rewarp', datasets['accurate-pose'][0], '--out', datasets['noisy-pose'][0],
              '--pose-noise-m', '1'])


def test_cli_rewarp_reports_the_label_agreement(datasets, tmp_path, capsys):
    assert _cli(['dataset', 'rewarp', datasets['random-exploration'][0], '--out', str(tmp_path / 'r'),
                 '--pose-noise-m', '2', '--splits', 'test', '--quiet']) == 0
    assert 'noisy-pose at 2 m, 0 deg' in capsys.readouterr().out
    assert load_manifest(str(tmp_path / 'r'))['derived_from']['setting'] == 'random-exploration'


def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            if f.endswith('.npz'):
                with open(os.path.join(dirpath, f), 'rb') as fh:
                    h.update(f.encode() + fh.read())
    return h.hexdigest()


def test_same_seed_gives_identical_files_and_other_seeds_differ(datasets, tmp_path):
    root, manifest = datasets['obstruction']
    again = generate('obstruction', out_dir=str(tmp_path / 'again'), seed=3, **TINY)
    other = generate('obstruction', out_dir=str(tmp_path / 'other'), seed=4, **TINY)
    assert _digest(root) == _digest(str(tmp_path / 'again'))
    drop = ('generation',)
    assert {k: v for k, v in manifest.items() if k not in drop} == {k: v for k, v in again.items() if k not in drop}
    assert _digest(root) != _digest(str(tmp_path / 'other'))
    assert other['maps'] != manifest['maps']


def test_settings_share_maps_and_splits_for_one_seed(datasets):
    splits = {name: {s: m['splits'][s]['maps'] for s in ('train', 'val', 'test')} for name, (_, m) in datasets.items()}
    assert len({repr(v) for v in splits.values()}) == 1


def test_plan_maps_spreads_frames_and_keeps_60_20_20():
    plan = plan_maps(1000, 100, seed=0)
    assert len(plan) == 10 and sum(c for _, _, c in plan) == 1000
    assert [sum(1 for _, s, _ in plan if s == split) for split in ('train', 'val', 'test')] == [6, 2, 2]
    assert [s for _, s, _ in plan_maps(2, 100, 0)].count('train') == 1
    assert plan_maps(1000, 100, 0) == plan and plan_maps(1000, 100, 1) != plan


def test_loader_batches_every_snapshot_once_per_epoch_reproducibly(datasets):
    root, manifest = datasets['accurate-pose']
    loader = BatchLoader(root, 'train', batch_size=2, keys=['rgb', 'labels', 'map_id', 'snapshot', 'target_index'],
                         buffer_size=3, seed=5)
    n = manifest['splits']['train']['snapshots']
    assert len(loader) == (n + 1) // 2
    epochs = [[(int(m), int(s)) for b in loader for m, s in zip(b['map_id'], b['snapshot'])] for _ in range(3)]
    assert all(sorted(e) == sorted(epochs[0]) and len(e) == n for e in epochs)
    replay = BatchLoader(root, 'train', batch_size=2, keys=['map_id', 'snapshot'], buffer_size=3, seed=5)
    assert [[(int(m), int(s)) for b in replay for m, s in zip(b['map_id'], b['snapshot'])] for _ in range(3)] == epochs
    batch = next(iter(BatchLoader(root, 'train', batch_size=2, keys=['rgb', 'labels'])))
    assert set(batch) == {'rgb', 'labels'} and batch['rgb'].shape == (2, 5, 32, 32, 3)
    ordered = BatchLoader(root, 'train', batch_size=4, keys=['map_id', 'snapshot'], shuffle=False, drop_last=True)
    first = next(iter(ordered))
    in_files = [(int(s['map_id']), int(s['snapshot'])) for s in iter_snapshots(root, 'train', ['map_id', 'snapshot'])]
    assert list(zip(first['map_id'].tolist(), first['snapshot'].tolist())) == in_files[:4]
    with pytest.raises(KeyError, match='no key'):
        next(iter(BatchLoader(root, 'train', keys=['nope'])))


def test_preview_writes_a_png(datasets, tmp_path):
    from PIL import Image
    for name in ('obstruction', 'noisy-pose'):
        out = write_preview(datasets[name][0], str(tmp_path / f'{name}.png'), snapshots=2)
        with Image.open(out) as im:
            assert im.format == 'PNG' and im.size[0] > 400 and im.size[1] > 600
    small = write_preview(datasets['hidden-target'][0], str(tmp_path / 'small.png'), snapshots=1, max_colors=128)
    with Image.open(small) as im:
        assert im.mode == 'P'


def _cli(argv):
    parser = argparse.ArgumentParser()
    add_dataset_parser(parser.add_subparsers(dest='command', required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_generate_and_preview(tmp_path, capsys):
    out = str(tmp_path / 'cli')
    assert _cli(['dataset', 'generate', '--setting', 'random-exploration', '--frames', '5', '--out', out, '--size', '32',
                 '--snapshots-per-map', '1', '--map-size', '120', '--quiet', '--seed', '2']) == 0
    assert 'pairwise pixel overlap' in capsys.readouterr().out
    assert load_manifest(out)['setting'] == 'random-exploration'
    assert _cli(['dataset', 'preview', out, '--out', str(tmp_path / 'p.png'), '--snapshots', '1']) == 0
    assert os.path.getsize(tmp_path / 'p.png') > 10_000
    with pytest.raises(ConfigError, match='already holds a dataset'):
        _cli(['dataset', 'generate', '--setting', 'random-exploration', '--frames', '5', '--out', out, '--quiet'])
    with pytest.raises(SystemExit):
        _cli(['dataset', 'generate', '--setting', 'sideways', '--frames', '5', '--out', out])


@pytest.mark.parametrize('kwargs, field', [
    (dict(setting='sideways'), 'setting'),
    (dict(frames=0), 'frames'),
    (dict(size=100, cell_size=8), 'cell_size'),
    (dict(drones=1), 'drones'),
    (dict(pose_noise_m=-1.0), 'pose_noise_m'),
    (dict(degraded_share=1.5), 'degraded_share'),
    (dict(world={'fov_deg': 500.0}), r'world\.fov_deg'),
    (dict(world={'seed': 3}), r'world\.seed'),
    (dict(world={'colour': 'red'}), r'world\.colour'),
])
def test_bad_generate_values_name_the_field(kwargs, field):
    base = dict(setting='obstruction', frames=4)
    with pytest.raises(ConfigError, match=f'^{field}: '):
        GenerateConfig(**{**base, **kwargs})


def test_cli_sets_the_degradation_and_the_share_of_degraded_targets(tmp_path):
    out = str(tmp_path / 'mixed')
    assert _cli(['dataset', 'generate', '--setting', 'hidden-target', '--frames', '8', '--out', out, '--size', '32',
                 '--snapshots-per-map', '2', '--map-size', '120', '--quiet', '--noise-std', '30', '40',
                 '--blur-reference-width', '256', '--degraded-share', '0.5']) == 0
    m = load_manifest(out)
    assert m['options']['degraded_share'] == 0.5
    assert (m['degradation']['noise_std_min'], m['degradation']['noise_std_max']) == (30, 40)
    assert m['degradation']['kernel_range_px'] == [1, 13]          # 1..100 at 256 px is 1..13 at 32 px
    degraded = [bool(s['degraded'][s['target_index']]) for s in iter_snapshots(out, 'train')]
    assert 0 < sum(degraded) < len(degraded), degraded
    with pytest.raises(ConfigError, match='^--noise-std: noise_std_max'):
        _cli(['dataset', 'generate', '--setting', 'hidden-target', '--frames', '4', '--out', str(tmp_path / 'bad'),
              '--noise-std', '40', '30'])


def test_cli_sizes_and_places_the_obstructions(tmp_path):
    out = str(tmp_path / 'big')
    assert _cli(['dataset', 'generate', '--setting', 'obstruction', '--frames', '6', '--out', out, '--size', '64',
                 '--snapshots-per-map', '2', '--map-size', '120', '--quiet', '--obstruction-coverage', '0.3', '0.4',
                 '--obstruction-distance', '3', '4']) == 0
    m = load_manifest(out)
    assert m['obstruction']['coverage_config'] == [0.3, 0.4] and m['obstruction']['distance_m'] == [3.0, 4.0]
    assert m['obstruction']['target_coverage']['mean'] > 0.15
    assert 'correspondence_uv' in m['keys']
    for option, values in (('--obstruction-coverage', ['0.5', '0.95']), ('--obstruction-distance', ['0', '4'])):
        with pytest.raises(ConfigError, match=f'^{option}: '):
            _cli(['dataset', 'generate', '--setting', 'obstruction', '--frames', '4',
                  '--out', str(tmp_path / 'bad'), option, *values])
    assert not os.path.exists(tmp_path / 'bad')
