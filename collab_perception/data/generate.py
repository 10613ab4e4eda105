"""Generate a dataset of one setting (settings.py) from the embedded world.

    from collab_perception.data import generate
    manifest = generate('accurate-pose', frames=2000, out_dir='datasets/accurate-pose', seed=0)

Maps and splits: the frames are spread over maps (landscape tiles), `snapshots_per_map` per map (at least 5
maps when there are 5 frames or more, so every split gets one), and whole maps go to train / val / test in
a 60/20/20 ratio, so test views are places never seen in training (handshake paper §IV-B: "roughly
60%/20%/20% train/val/test split"). Map ids and their split depend only on the seed and the number of maps,
so the five settings generated with one seed fly over the same maps with the same split.

Randomness: the world's streams (map, flight, obstructions; see world.world) and, per map, one more for what
the dataset adds (target choice, blur and noise, hidden slot, pose noise). Same arguments, same seed: the same
files, byte for byte; `workers` changes only the speed.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from ..classes import load_classes
from ..config import ConfigError
from ..world.config import WorldConfig
from ..world import geometry as G
from ..world.degrade import DegradeConfig, degrade
from .settings import SETTINGS, Setting
from .shards import FORMAT, IGNORE_LABEL, KEYS, SPLITS, shard_keys, write_manifest, write_npz

if TYPE_CHECKING:
    from ..world.world import Snapshot

SPLIT_FRACTIONS = {'train': 0.6, 'val': 0.2, 'test': 0.2}


@dataclass(frozen=True)
class GenerateConfig:
    """Everything that determines a dataset. Invalid values raise ConfigError naming the field."""
    setting: str
    frames: int
    seed: int = 0
    size: int = 128
    drones: Optional[int] = None          # default: the setting's (5, or 6 for obstruction)
    shard_size: int = 128
    snapshots_per_map: int = 100
    cell_size: int = 8
    pose_noise_m: float = 1.0             # noisy-pose: Gaussian std of each position coordinate (calibrated)
    pose_noise_deg: float = 0.0           # noisy-pose: rotation noise (the paper perturbs positions only)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    degraded_share: float = 1.0           # share of snapshots whose target is degraded (the rest see clearly)
    world: dict = field(default_factory=dict)   # further WorldConfig fields (e.g. map_size_m)
    workers: int = 1

    def __post_init__(self):
        if self.setting not in SETTINGS:
            raise ConfigError('setting', f'{self.setting!r} is not one of: {", ".join(SETTINGS)}')
        for name, lo, hi in (('frames', 1, 10_000_000), ('seed', 0, 2 ** 63 - 1), ('size', 16, 2048),
                             ('shard_size', 1, 100_000), ('snapshots_per_map', 1, 1_000_000), ('cell_size', 1, 512),
                             ('workers', 1, 256)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(name, f'expected an integer in {lo}..{hi}, got {value!r}')
        if self.drones is not None and (isinstance(self.drones, bool) or not isinstance(self.drones, int)
                                        or not 2 <= self.drones <= 16):
            raise ConfigError('drones', f'expected an integer in 2..16, got {self.drones!r}')
        if self.size % self.cell_size:
            raise ConfigError('cell_size', f'{self.cell_size} must divide the image size {self.size}')
        if isinstance(self.degraded_share, bool) or not isinstance(self.degraded_share, (int, float)) \
                or not 0 <= self.degraded_share <= 1:
            raise ConfigError('degraded_share', f'expected a number in 0..1, got {self.degraded_share!r}')
        for name in ('pose_noise_m', 'pose_noise_deg'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                raise ConfigError(name, f'expected a number in 0..100, got {value!r}')
        reserved = {'seed', 'map_id', 'drones', 'image_width', 'image_height', 'trajectory', 'obstructions'}
        if not isinstance(self.world, dict):
            raise ConfigError('world', f'expected a mapping of WorldConfig fields, got {self.world!r}')
        clash = sorted(reserved & set(self.world))
        if clash:
            raise ConfigError(f'world.{clash[0]}', 'is set by the dataset (use the option of the same meaning)')
        self.world_config(0)   # validates the world fields, naming them as world.<field>

    @property
    def spec(self) -> Setting:
        return SETTINGS[self.setting]

    @property
    def agents(self) -> int:
        return self.drones or self.spec.drones

    def world_config(self, map_id: int) -> WorldConfig:
        s = self.spec
        return WorldConfig.from_mapping(dict(self.world, seed=self.seed, map_id=map_id, drones=self.agents,
                                             image_width=self.size, image_height=self.size,
                                             trajectory=s.trajectory, obstructions=s.obstructions), path='world')


# ---------------------------------------------------------------------------------------- map plan


def plan_maps(frames: int, snapshots_per_map: int, seed: int) -> list[tuple[int, str, int]]:
    """[(map_id, split, snapshots)]: frames spread evenly over the maps, whole maps per split (60/20/20)."""
    n_maps = max(math.ceil(frames / snapshots_per_map), min(frames, 5))
    per_map = [frames // n_maps + (1 if i < frames % n_maps else 0) for i in range(n_maps)]
    if n_maps >= 3:
        n_val = max(1, round(SPLIT_FRACTIONS['val'] * n_maps))
        n_test = max(1, round(SPLIT_FRACTIONS['test'] * n_maps))
    else:
        n_val, n_test = 0, n_maps - 1
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x5B117])).permutation(n_maps)
    split_of = {}
    for rank, m in enumerate(order):
        split_of[int(m)] = 'train' if rank < n_maps - n_val - n_test else ('val' if rank < n_maps - n_test else 'test')
    return [(m, split_of[m], per_map[m]) for m in range(n_maps)]


# ------------------------------------------------------------------------------------ one snapshot


def build_sample(snap: Snapshot, cfg: GenerateConfig, target: int, rng: np.random.Generator) -> dict[str, Any]:
    """The arrays of one dataset snapshot (see shards.KEYS)."""
    s = cfg.spec
    views = snap.views
    n = len(views)
    clean = np.stack([v.rgb_clean for v in views])
    rgb = np.stack([v.rgb for v in views])
    labels = np.stack([v.labels for v in views])
    depth = np.stack([v.depth for v in views])
    position = np.stack([v.position for v in views])
    orientation = np.stack([v.orientation_xyzw for v in views])
    K = np.stack([v.K for v in views]).astype(np.float32)
    mask = np.stack([v.obstruction_mask for v in views])
    source = np.arange(n, dtype=np.int8)
    out: dict[str, Any] = {}

    if s.hidden_target:   # one normal slot carries the un-degraded target view (and its geometry)
        hidden = int(rng.choice([i for i in range(n) if i != target]))
        rgb[hidden], labels[hidden], depth[hidden] = clean[target], labels[target], depth[target]
        position[hidden], orientation[hidden], K[hidden] = position[target], orientation[target], K[target]
        mask[hidden] = mask[target]
        source[hidden] = target
        out['hidden_index'] = np.int8(hidden)

    degraded = np.zeros(n, bool)
    kernel = np.zeros(n, np.int16)
    noise = np.zeros(n, np.float32)
    # the draw is skipped at share 1 so that datasets made before the option stay the same
    if s.degrade_target and (cfg.degraded_share >= 1 or rng.random() < cfg.degraded_share):
        rgb[target], d = degrade(clean[target], rng, cfg.degrade)
        degraded[target], kernel[target], noise[target] = True, d.kernel_size, d.noise_std

    poses = [G.pose_matrix(p, q) for p, q in zip(position, orientation)]
    gt = G.swarm_ground_truth(list(depth), list(K.astype(np.float64)), poses, cfg.cell_size)
    out.update(rgb=rgb, labels=labels, depth=depth.astype(np.float16), position=position,
               orientation_xyzw=orientation, K=K, source_agent=source, target_index=np.int8(target),
               target_rgb_clean=clean[target], degraded=degraded, blur_kernel=kernel, noise_std=noise,
               overlap=gt['overlap'], best_supporter=gt['best_supporter'], correspondence=gt['correspondence'],
               correspondence_uv=gt['correspondence_uv'].astype(np.float16),
               obstruction_mask=mask, obstructed=mask.any(axis=(1, 2)), time_s=np.float64(snap.time_s),
               map_id=np.int32(snap.map_id), snapshot=np.int32(snap.index))

    if s.warp:   # normals warped into the target view with their depth and the (accurate or noisy) poses
        noise = (cfg.pose_noise_m, cfg.pose_noise_deg) if s.warp == 'noisy' else (0.0, 0.0)
        out.update(warp_into_target(rgb, labels, depth, K, poses, target, rng, *noise))
    return out


def warp_into_target(rgb: np.ndarray, labels: np.ndarray, depth: np.ndarray, K: np.ndarray, poses: list,
                     target: int, rng: Optional[np.random.Generator] = None, pose_noise_m: float = 0.0,
                     pose_noise_deg: float = 0.0) -> dict[str, np.ndarray]:
    """Every other agent's rgb and labels forward-warped into the target's view with its depth and the poses,
    perturbed by `pose_noise_*` (each pose in turn, drawing from `rng`) when either is above 0: the
    `warped_*` and `warp_*` keys of a snapshot."""
    used = poses if pose_noise_m <= 0 and pose_noise_deg <= 0 else \
        [G.perturb_pose(T, rng, pose_noise_m, pose_noise_deg) for T in poses]
    n, H, W = labels.shape
    warped_rgb = np.zeros_like(rgb)
    warped_labels = np.full((n, H, W), IGNORE_LABEL, np.uint8)
    warped_valid = np.zeros((n, H, W), bool)
    for i in range(n):
        if i == target:
            continue
        mapping = G.forward_warp_map(depth[i], K[i], used[i], K[target], used[target])
        warped_rgb[i], warped_valid[i] = G.apply_warp_map(rgb[i], mapping)
        warped_labels[i], _ = G.apply_warp_map(labels[i], mapping, fill=IGNORE_LABEL)
    return {'warped_rgb': warped_rgb, 'warped_labels': warped_labels, 'warped_valid': warped_valid,
            'warp_position': np.stack([T[:3, 3] for T in used]),
            'warp_orientation_xyzw': np.stack([G.quaternion_from_matrix(T[:3, :3]) for T in used])}


# ------------------------------------------------------------------------------------------ one map


def _generate_map(cfg: GenerateConfig, map_id: int, split: str, frames: int, out_dir: str,
                  on_snapshot: Optional[Callable[[], None]] = None) -> dict:
    """Fly one map, write its shards, return what the manifest needs (shards, map facts, statistics)."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, map_id, 0xDA7A]))
    world_cfg = cfg.world_config(map_id)
    n = cfg.agents
    stats = {'pair_overlap': [], 'target_best_overlap': [], 'class_pixels': np.zeros(256, np.int64),
             'blur_kernel': [], 'noise_std': [], 'obstruction_coverage': [], 'obstruction_seen_by_others': [],
             'warp_valid': [], 'warp_label_accuracy': []}
    shards, buffer, written = [], [], 0
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)

    def flush():
        nonlocal buffer
        if not buffer:
            return
        name = f'{split}/map{map_id:05d}_{len(shards):03d}.npz'
        stacked = {k: np.stack([b[k] for b in buffer]) for k in buffer[0]}
        size = write_npz(os.path.join(out_dir, name), stacked)
        shards.append({'path': name, 'map_id': map_id, 'snapshots': len(buffer), 'bytes': size})
        buffer = []

    from ..world.world import World    # the renderer: only generating needs it, not reading a dataset
    with World(world_cfg) as world:
        for _ in range(frames):
            target = int(rng.integers(n))
            if world_cfg.obstructions:
                extra = world_cfg.obstructions_per_snapshot - 1
                others = rng.choice([i for i in range(n) if i != target], size=min(extra, n - 1), replace=False)
                snap = world.step(obstruct=[target, *map(int, others)])
            else:
                snap = world.step()
            sample = build_sample(snap, cfg, target, rng)
            _accumulate(stats, sample, target)
            buffer.append(sample)
            written += 1
            if len(buffer) >= cfg.shard_size:
                flush()
            if on_snapshot:
                on_snapshot()
        flush()
        facts = {'map_id': map_id, 'split': split, 'landscape_seed': world.map_seed(map_id), 'snapshots': written,
                 **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in world.landscape.counts.items()}}
    return {'shards': shards, 'map': facts, 'stats': stats}


def _accumulate(stats: dict, sample: dict, target: int) -> None:
    n = len(sample['source_agent'])
    original = [i for i in range(n) if sample['source_agent'][i] == i]
    ov = sample['overlap']
    stats['pair_overlap'].extend(float(ov[a, b]) for a in original for b in original if a != b)
    best = int(sample['best_supporter'][target])
    stats['target_best_overlap'].append(float(ov[target, best]) if best >= 0 else 0.0)
    stats['class_pixels'] += np.bincount(sample['labels'][original].ravel(), minlength=256)
    if sample['degraded'][target]:
        stats['blur_kernel'].append(int(sample['blur_kernel'][target]))
        stats['noise_std'].append(float(sample['noise_std'][target]))
    if sample['obstructed'].any():
        stats['obstruction_coverage'].append(float(sample['obstruction_mask'][target].mean()))
        stats['obstruction_seen_by_others'].append(bool(np.delete(sample['obstructed'], target).any()))
    if 'warped_valid' in sample:
        for i in range(n):
            valid = sample['warped_valid'][i]
            if i == target or not valid.any():
                continue
            stats['warp_valid'].append(float(valid.mean()))
            stats['warp_label_accuracy'].append(
                float(np.mean(sample['warped_labels'][i][valid] == sample['labels'][target][valid])))


def _map_job(args) -> dict:
    return _generate_map(*args)


# ---------------------------------------------------------------------------------------- whole set


def generate(setting: str, frames: int, out_dir: str, seed: int = 0, size: int = 128, drones: Optional[int] = None,
             shard_size: int = 128, progress: bool = True, **options) -> dict:
    """Generate `frames` snapshots of `setting` into `out_dir` (created; must not hold a dataset yet).
    Further options: the fields of GenerateConfig. Returns the manifest (also written to manifest.json)."""
    cfg = GenerateConfig(setting=setting, frames=frames, seed=seed, size=size, drones=drones,
                         shard_size=shard_size, **options)
    if os.path.exists(os.path.join(out_dir, 'manifest.json')):
        raise ConfigError('out', f'{out_dir} already holds a dataset; choose another directory or delete it')
    os.makedirs(out_dir, exist_ok=True)
    plan = plan_maps(cfg.frames, cfg.snapshots_per_map, cfg.seed)
    started = time.monotonic()
    from tqdm import tqdm
    bar = tqdm(total=cfg.frames, desc=f'{cfg.setting}', unit='snapshot', disable=not progress, dynamic_ncols=True)
    jobs = [(cfg, m, split, count, out_dir) for m, split, count in plan]
    results = []
    try:
        if cfg.workers == 1:
            for job in jobs:
                results.append(_generate_map(*job, on_snapshot=lambda: bar.update(1)))
        else:
            # fork: each worker builds its own World (and GL context) after the fork
            with multiprocessing.get_context('fork').Pool(min(cfg.workers, len(jobs))) as pool:
                for result in pool.imap(_map_job, jobs):
                    results.append(result)
                    bar.update(result['map']['snapshots'])
    finally:
        bar.close()
    seconds = time.monotonic() - started
    manifest = _manifest(cfg, out_dir, results, seconds)
    write_manifest(out_dir, manifest)
    return manifest


def _summary(values, digits=4) -> Optional[dict]:
    if not len(values):
        return None
    a = np.asarray(values, dtype=float)
    return {'mean': round(float(a.mean()), digits), 'std': round(float(a.std()), digits),
            'min': round(float(a.min()), digits), 'max': round(float(a.max()), digits), 'count': int(a.size)}


def _manifest(cfg: GenerateConfig, out_dir: str, results: list[dict], seconds: float) -> dict:
    classes = load_classes()
    world = cfg.world_config(0)
    stats = {k: [] for k in results[0]['stats'] if k != 'class_pixels'}
    class_pixels = {split: np.zeros(256, np.int64) for split in SPLITS}
    for r in results:
        for k in stats:
            stats[k].extend(r['stats'][k])
        class_pixels[r['map']['split']] += r['stats']['class_pixels']
    splits = {}
    for split in SPLITS:
        rs = [r for r in results if r['map']['split'] == split]
        splits[split] = {'maps': [r['map']['map_id'] for r in rs],
                         'snapshots': sum(r['map']['snapshots'] for r in rs),
                         'shards': [s for r in rs for s in r['shards']]}
    total_bytes = sum(s['bytes'] for r in results for s in r['shards'])
    pair = np.asarray(stats['pair_overlap'])
    first_shard = next(s for r in results for s in r['shards'])
    present = sorted(shard_keys(os.path.join(out_dir, first_shard['path'])), key=list(KEYS).index)
    spec = cfg.spec
    Hc = Wc = cfg.size // cfg.cell_size
    K = G.intrinsics_from_fov(cfg.size, cfg.size, world.fov_deg)
    return {
        'format': FORMAT,
        'setting': spec.name,
        'paper': spec.paper,
        'summary': spec.summary,
        'seed': cfg.seed,
        'frames': cfg.frames,
        'options': {k: v for k, v in asdict(cfg).items() if k not in ('degrade', 'world')},
        'classes': [{'id': i, 'name': n, 'color': [int(c) for c in classes.colors[i]]}
                    for i, n in enumerate(classes.names)],
        'ignore_label': IGNORE_LABEL,
        'agents': cfg.agents,
        'image': {'width': cfg.size, 'height': cfg.size},
        'cell_size': cfg.cell_size,
        'cells': [Hc, Wc],
        'no_match': Hc * Wc,
        'camera': {'fov_deg': world.fov_deg, 'pitch_deg': world.pitch_deg, 'pitch_jitter_deg': world.pitch_jitter_deg,
                   'K': K.round(6).tolist()},
        'world': {k: v for k, v in world.to_dict().items() if k not in ('seed', 'map_id')},
        'degradation': ({**asdict(cfg.degrade), 'kernel_range_px': list(cfg.degrade.kernel_range(cfg.size)),
                         'blur_kernel': _summary(stats['blur_kernel']), 'noise_std': _summary(stats['noise_std'])}
                        if spec.degrade_target else None),
        'pose_noise': ({'position_std_m': cfg.pose_noise_m if spec.warp == 'noisy' else 0.0,
                        'rotation_std_deg': cfg.pose_noise_deg if spec.warp == 'noisy' else 0.0}
                       if spec.warp else None),
        'obstruction': ({'per_snapshot': world.obstructions_per_snapshot, 'shapes': list(world.obstruction_shapes),
                         'distance_m': list(world.obstruction_distance_m),
                         'coverage_config': list(world.obstruction_coverage),
                         'target_coverage': _summary(stats['obstruction_coverage']),
                         'seen_by_another_agent_fraction': round(float(np.mean(stats['obstruction_seen_by_others'])), 4)
                         if stats['obstruction_seen_by_others'] else 0.0}
                        if spec.obstructions else None),
        'conventions': {
            'world_frame': 'ENU: x east, y north, z up, metres',
            'camera_frame': 'optical: x right, y down, z forward',
            'pose': 'camera-to-world: X_world = R(orientation_xyzw) @ X_cam + position',
            'pixels': '(u, v) = (column, row), integer coordinates at pixel centres; u = fx X/Z + cx',
            'depth': 'planar (Z), metres, +inf for sky',
        },
        'keys': {k: {'shape': KEYS[k][0], 'description': KEYS[k][1]} for k in present},
        'splits': splits,
        'maps': [r['map'] for r in results],
        'statistics': {
            'pairwise_overlap': ({'mean': round(float(pair.mean()), 4), 'std': round(float(pair.std()), 4),
                                  'median': round(float(np.median(pair)), 4),
                                  'zero_fraction': round(float(np.mean(pair < 0.005)), 4),
                                  'histogram_0_to_1_by_0.1': np.histogram(pair, bins=10, range=(0, 1))[0].tolist(),
                                  'pairs': int(pair.size)} if pair.size else None),
            'target_best_supporter_overlap': _summary(stats['target_best_overlap']),
            'warp_valid_fraction': _summary(stats['warp_valid']),
            'warp_label_accuracy': _summary(stats['warp_label_accuracy']),
            'class_fractions': {split: ({classes.names[c]: round(float(px[c] / px.sum()), 5)
                                         for c in range(len(classes))} if px.sum() else None)
                                for split, px in class_pixels.items()},
        },
        'size_bytes': total_bytes,
        'mb_per_1000_snapshots': round(total_bytes / cfg.frames * 1000 / 1e6, 1),
        'generation': {'seconds': round(seconds, 1), 'snapshots_per_s': round(cfg.frames / max(seconds, 1e-9), 2),
                       'workers': cfg.workers},
    }
