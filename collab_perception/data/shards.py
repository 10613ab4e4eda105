"""Dataset files: the manifest, the keys of a snapshot, and reproducible compressed shards.

A dataset directory holds `manifest.json` and one folder per split (`train/`, `val/`, `test/`) of shards,
`map<id>_<k>.npz`: compressed numpy archives whose arrays all have a leading snapshot axis S. Shards never
mix maps (a map belongs to exactly one split). The archives are written with fixed zip timestamps, so the
same seed gives byte-identical files.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Iterable, Mapping, Optional

import numpy as np

FORMAT = 'collab_perception.dataset/1'
MANIFEST = 'manifest.json'
SPLITS = ('train', 'val', 'test')
IGNORE_LABEL = 255

# Every key a snapshot can have: (shape without the snapshot axis; N agents, H x W pixels, C = Hc*Wc cells,
# description). `present` in the manifest says which ones a dataset holds.
KEYS: dict[str, tuple[str, str]] = {
    'rgb': ('N,H,W,3 uint8', 'each agent\'s camera input: the degraded target (blur + noise) in the handshake '
                             'settings, obstructions included in the obstruction setting, the clean target view '
                             'in the hidden slot of hidden-target'),
    'labels': ('N,H,W uint8', 'class ids of each slot\'s view (the unobstructed surface); see classes'),
    'depth': ('N,H,W float16', 'planar depth (Z in the optical frame), metres; +inf for sky'),
    'position': ('N,3 float64', 'camera position in the world frame (ENU, metres)'),
    'orientation_xyzw': ('N,4 float64', 'camera-to-world rotation, unit quaternion (x, y, z, w)'),
    'K': ('N,3,3 float32', 'camera intrinsics'),
    'source_agent': ('N int8', 'which drone each slot\'s data comes from (the hidden slot: the target)'),
    'target_index': ('int8', 'the target (degraded / obstructed) agent'),
    'target_rgb_clean': ('H,W,3 uint8', 'the target\'s view without degradation or obstruction'),
    'degraded': ('N bool', 'blur + noise applied to this slot\'s rgb'),
    'blur_kernel': ('N int16', 'Gaussian kernel size in pixels (odd), 0 if not degraded'),
    'noise_std': ('N float32', 'Gaussian noise std (0..255 units), 0 if not degraded'),
    'hidden_index': ('int8', 'hidden-target only: the slot holding the clean target view'),
    'overlap': ('N,N float32', 'overlap[t, s]: fraction of t\'s pixels that s sees (depth + pose, occlusion-'
                               'checked); diagonal 1'),
    'best_supporter': ('N int8', 'for each agent as target, the other agent with the largest overlap; -1 if none'),
    'correspondence': ('N,N,C int16', 'correspondence[t, s, i]: the cell of s that target cell i matches '
                                      '(row-major Hc x Wc grid), or C for no match; diagonal: identity'),
    'correspondence_uv': ('N,N,C,2 float16', 'correspondence_uv[t, s, i]: where target cell i\'s centre lands in s, '
                                             'pixels (u, v) below the cell grid; NaN for no match; diagonal: the '
                                             'cell centres'),
    'obstruction_mask': ('N,H,W bool', 'pixels covered by an obstruction'),
    'obstructed': ('N bool', 'the slot\'s view contains obstruction pixels'),
    'warped_rgb': ('N,H,W,3 uint8', 'pose settings: each normal agent\'s rgb forward-warped into the target view '
                                    '(its depth + the relative pose used, see warp_position); 0 where nothing '
                                    'lands and in the target\'s own slot'),
    'warped_labels': ('N,H,W uint8', 'pose settings: the same warp of the labels; 255 where nothing lands'),
    'warped_valid': ('N,H,W bool', 'pose settings: where the warp landed'),
    'warp_position': ('N,3 float64', 'pose settings: the positions the warp used (noisy in noisy-pose)'),
    'warp_orientation_xyzw': ('N,4 float64', 'pose settings: the orientations the warp used'),
    'time_s': ('float64', 'simulated time of the snapshot (one stamp for all views)'),
    'map_id': ('int32', 'the map (landscape tile) of the snapshot'),
    'snapshot': ('int32', 'index of the snapshot within its map\'s flight'),
}


def write_npz(path: str, arrays: Mapping[str, np.ndarray], compresslevel: int = 6) -> int:
    """np.savez_compressed, but with fixed zip timestamps (byte-identical output for identical arrays).
    Returns the file size in bytes."""
    tmp = path + '.tmp'
    with zipfile.ZipFile(tmp, 'w', compression=zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f'{key}.npy', date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=compresslevel)
    os.replace(tmp, path)
    return os.path.getsize(path)


def read_shard(path: str, keys: Optional[Iterable[str]] = None) -> dict[str, np.ndarray]:
    """The arrays of one shard (only `keys`, when given; unknown keys raise KeyError naming the present ones)."""
    with np.load(path, allow_pickle=False) as npz:
        wanted = list(npz.files) if keys is None else list(keys)
        missing = [k for k in wanted if k not in npz.files]
        if missing:
            raise KeyError(f'{path}: no key {missing[0]!r}; keys: {", ".join(sorted(npz.files))}')
        return {k: npz[k] for k in wanted}


def shard_keys(path: str) -> list[str]:
    """The keys of a shard, without reading its arrays."""
    with np.load(path, allow_pickle=False) as npz:
        return list(npz.files)


def write_manifest(root: str, manifest: dict) -> None:
    with open(os.path.join(root, MANIFEST), 'w', encoding='utf-8') as f:
        json.dump(manifest, f, indent=1, sort_keys=False)
        f.write('\n')


def load_manifest(root: str, fmt: str = FORMAT, kind: str = 'dataset',
                  command: str = 'collab-perception dataset generate') -> dict:
    """root/manifest.json, checked to be JSON of format `fmt` (errors say what `kind` of directory and which
    `command` makes one)."""
    path = os.path.join(root, MANIFEST)
    try:
        with open(path, encoding='utf-8') as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f'{root} is not a {kind}: no {MANIFEST} (make one with `{command}`)') from None
    except json.JSONDecodeError as e:
        raise ValueError(f'{path}: not valid JSON: {e}') from None
    found = manifest.get('format') if isinstance(manifest, dict) else None
    if found != fmt:
        raise ValueError(f'{path}: format {found!r}, expected {fmt!r}')
    return manifest
