"""Datasets of the papers' settings from the embedded world, and loaders for training (numpy only).

    collab-perception dataset generate --setting accurate-pose --frames 2000 --out datasets/accurate-pose
    collab-perception dataset preview datasets/accurate-pose

    from collab_perception.data import generate, BatchLoader
    for batch in BatchLoader('datasets/accurate-pose', 'train', batch_size=8, keys=['rgb', 'labels']):
        batch['rgb']   # (8, N, H, W, 3) uint8

Files, keys and conventions: docs/DATASETS.md and collab_perception/data/shards.py.
"""
from .generate import GenerateConfig, generate, plan_maps
from .loader import BatchLoader, iter_snapshots
from .settings import SETTINGS, Setting
from .shards import KEYS, load_manifest, read_shard

__all__ = ['generate', 'GenerateConfig', 'plan_maps', 'BatchLoader', 'iter_snapshots', 'SETTINGS', 'Setting',
           'KEYS', 'load_manifest', 'read_shard']
