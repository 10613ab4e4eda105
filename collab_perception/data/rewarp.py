"""Derive a noisy-pose dataset from a pose dataset without rendering again: the same snapshots (views, labels,
depth, true poses, degradations), the other agents warped into the target's view with new pose noise.

    from collab_perception.data.rewarp import rewarp
    manifest = rewarp('datasets/accurate-pose', 'datasets/noisy-pose-1m', pose_noise_m=1.0)

Used to calibrate the noise level of the inaccurate-pose setting (handshake paper §IV-B (3) gives none) and to
sweep it: every level shares the source's frames exactly, so accuracy against noise compares like with like.
The warps are recomputed from the stored float16 depth, so at noise 0 they agree with the source's own
(warped from the renderer's float32 depth) on all but a few pixels per view, not byte for byte.
Randomness: one stream per map from (seed, map id), the same arguments give the same files.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from typing import Optional, Sequence

import numpy as np

from ..config import ConfigError
from ..world import geometry as G
from .generate import _summary, warp_into_target
from .settings import SETTINGS
from .shards import SPLITS, load_manifest, read_shard, write_manifest, write_npz

_REWARP_STREAM = 0x9E3A


def _check_number(name: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ConfigError(name, f'expected a number in {lo:g}..{hi:g}, got {value!r}')
    return float(value)


def _rewarp_shard(job: tuple) -> dict:
    src, dst, rel, map_id, shard_of_map, seed, noise_m, noise_deg = job
    arrays = read_shard(os.path.join(src, rel))
    rng = np.random.default_rng(np.random.SeedSequence([seed, map_id, _REWARP_STREAM, shard_of_map]))
    fields = {k: [] for k in ('warped_rgb', 'warped_labels', 'warped_valid', 'warp_position', 'warp_orientation_xyzw')}
    valid_share, label_agreement = [], []
    for s in range(arrays['rgb'].shape[0]):
        target = int(arrays['target_index'][s])
        poses = [G.pose_matrix(p, q) for p, q in zip(arrays['position'][s], arrays['orientation_xyzw'][s])]
        warped = warp_into_target(arrays['rgb'][s], arrays['labels'][s], arrays['depth'][s].astype(np.float32),
                                  arrays['K'][s].astype(np.float64), poses, target, rng, noise_m, noise_deg)
        for k in fields:
            fields[k].append(warped[k])
        for i in range(len(poses)):
            valid = warped['warped_valid'][i]
            if i != target and valid.any():
                valid_share.append(float(valid.mean()))
                label_agreement.append(float(np.mean(warped['warped_labels'][i][valid]
                                                     == arrays['labels'][s][target][valid])))
    arrays.update({k: np.stack(v) for k, v in fields.items()})
    os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
    size = write_npz(os.path.join(dst, rel), arrays)
    return {'path': rel, 'bytes': size, 'warp_valid': valid_share, 'warp_label_accuracy': label_agreement}


def rewarp(src: str, out_dir: str, pose_noise_m: float, pose_noise_deg: float = 0.0, seed: int = 0,
           splits: Optional[Sequence[str]] = None, workers: int = 1, progress: bool = True) -> dict:
    """Write to `out_dir` a noisy-pose copy of the pose dataset `src` (its `splits`, default all) with Gaussian
    position noise of `pose_noise_m` metres per axis (and rotation noise of `pose_noise_deg` degrees) on every
    agent's pose before warping. Returns the manifest (also written to out_dir/manifest.json)."""
    manifest = load_manifest(src)
    if manifest.get('pose_noise') is None:
        raise ConfigError('src', f'{src} is a {manifest.get("setting")!r} dataset: it has no warped views to redo '
                                 f'(use accurate-pose, noisy-pose or random-exploration)')
    pose_noise_m = _check_number('pose_noise_m', pose_noise_m, 0, 100)
    pose_noise_deg = _check_number('pose_noise_deg', pose_noise_deg, 0, 100)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError('seed', f'expected a non-negative integer, got {seed!r}')
    splits = list(splits or SPLITS)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ConfigError('splits', f'{unknown[0]!r} is not one of: {", ".join(SPLITS)}')
    if os.path.abspath(src) == os.path.abspath(out_dir):
        raise ConfigError('out', 'must differ from the source dataset')
    if os.path.exists(os.path.join(out_dir, 'manifest.json')):
        raise ConfigError('out', f'{out_dir} already holds a dataset; choose another directory or delete it')
    jobs, seen = [], {}
    for split in splits:
        for shard in manifest['splits'][split]['shards']:
            ordinal = seen[shard['map_id']] = seen.get(shard['map_id'], -1) + 1   # its place among its map's
            jobs.append((src, out_dir, shard['path'], shard['map_id'], ordinal, seed, pose_noise_m, pose_noise_deg))
    started = time.monotonic()
    from tqdm import tqdm
    results = []
    with tqdm(total=len(jobs), desc=f'rewarp {pose_noise_m:g} m', unit='shard', disable=not progress,
              dynamic_ncols=True) as bar:
        if workers <= 1:
            for job in jobs:
                results.append(_rewarp_shard(job))
                bar.update(1)
        else:
            with multiprocessing.get_context('fork').Pool(min(workers, len(jobs))) as pool:
                for result in pool.imap(_rewarp_shard, jobs):
                    results.append(result)
                    bar.update(1)
    sizes = {r['path']: r['bytes'] for r in results}
    out = dict(manifest)
    out.update(setting='noisy-pose', paper=SETTINGS['noisy-pose'].paper, summary=SETTINGS['noisy-pose'].summary)
    out['derived_from'] = {'dataset': os.path.abspath(src), 'setting': manifest['setting'],
                           'command': 'collab-perception dataset rewarp', 'seed': seed,
                           'splits': splits}
    out['options'] = dict(manifest['options'], setting='noisy-pose', pose_noise_m=pose_noise_m,
                          pose_noise_deg=pose_noise_deg)
    out['pose_noise'] = {'position_std_m': pose_noise_m, 'rotation_std_deg': pose_noise_deg}
    out['splits'] = {}
    for split in SPLITS:
        entry = manifest['splits'][split]
        kept = split in splits
        out['splits'][split] = {
            'maps': entry['maps'] if kept else [],
            'snapshots': entry['snapshots'] if kept else 0,
            'shards': [dict(s, bytes=sizes[s['path']]) for s in entry['shards']] if kept else []}
    valid = [v for r in results for v in r['warp_valid']]
    agreement = [v for r in results for v in r['warp_label_accuracy']]
    out['statistics'] = dict(manifest['statistics'], warp_valid_fraction=_summary(valid),
                             warp_label_accuracy=_summary(agreement))
    out['size_bytes'] = sum(sizes.values())
    out['generation'] = {'seconds': round(time.monotonic() - started, 1), 'workers': workers, 'rewarp': True}
    write_manifest(out_dir, out)
    return out
