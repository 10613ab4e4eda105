"""A PNG contact sheet of a dataset: per snapshot, one column per agent and one row per modality.

Rows: the camera input (degraded / obstructed as the network sees it), the labels in the class colours,
depth (log scale), then, where the setting has them, the obstruction mask over the clean view and each normal
agent warped into the target view. Column titles say which agent is the target, how it was degraded, the
hidden slot, the best supporter and each agent's overlap with the target.
"""
from __future__ import annotations

import io
import os
from typing import Optional

import numpy as np

from ..classes import load_classes
from .loader import shard_paths
from .shards import SPLITS, load_manifest, read_shard

def depth_range(depths: np.ndarray) -> tuple[float, float]:
    """A robust display range of planar depths (2nd..98th percentile of the finite ones)."""
    finite = depths[np.isfinite(depths)].astype(np.float32)
    if not finite.size:
        return 1.0, 1000.0
    lo, hi = np.percentile(finite, [2, 98])
    return max(float(lo), 0.1), max(float(hi), float(lo) * 1.5, 0.2)


def _depth_image(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Planar depth -> RGB (near bright, far dark, log scale over lo..hi), sky in white."""
    from matplotlib import colormaps
    d = depth.astype(np.float32)
    finite = np.isfinite(d)
    t = (np.log(np.clip(np.where(finite, d, hi), lo, hi)) - np.log(lo)) / (np.log(hi) - np.log(lo))
    rgb = (colormaps['magma'](1.0 - t)[..., :3] * 255).astype(np.uint8)
    rgb[~finite] = 255
    return rgb


def _mask_image(clean: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The clean view dimmed, the obstruction mask in magenta."""
    out = (clean.astype(np.float32) * 0.45).astype(np.uint8)
    out[mask] = (255, 0, 200)
    return out


def _pick(root: str, manifest: dict, split: Optional[str], count: int, start: int):
    """`count` snapshots spread over the split (first split with data when None), as dicts."""
    splits = [split] if split else [s for s in SPLITS if manifest['splits'][s]['snapshots']]
    if not splits or not manifest['splits'][splits[0]]['snapshots']:
        raise ValueError(f'{root}: no snapshots in split {split or "any"}')
    split = splits[0]
    total = manifest['splits'][split]['snapshots']
    wanted = sorted({min(total - 1, start + i * max(1, (total - start) // max(count, 1))) for i in range(count)})
    picked, offset = [], 0
    for path, shard in zip(shard_paths(root, split), manifest['splits'][split]['shards']):
        local = [w - offset for w in wanted if offset <= w < offset + shard['snapshots']]
        if local:
            arrays = read_shard(path)
            picked += [{k: v[i] for k, v in arrays.items()} for i in local]
        offset += shard['snapshots']
    return split, picked


def write_preview(root: str, out_png: Optional[str] = None, snapshots: int = 2, split: Optional[str] = None,
                  start: int = 0, max_colors: Optional[int] = None) -> str:
    """Write the contact sheet of `snapshots` snapshots (default: <root>/preview.png) and return its path.
    `max_colors` (e.g. 256) stores the PNG with a palette: about 3x smaller, for documentation."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from PIL import Image

    manifest = load_manifest(root)
    classes = load_classes()
    split, picked = _pick(root, manifest, split, snapshots, start)
    has_mask = manifest.get('obstruction') is not None
    has_warp = 'warped_rgb' in manifest['keys']
    row_names = ['camera input', 'labels', 'depth (log)'] + (['obstruction'] if has_mask else []) + \
        (['warped to target'] if has_warp else [])
    n = manifest['agents']
    tile = 1.3
    block_h = len(row_names) * tile + 0.75
    head, foot = 0.3, 0.3
    fig = plt.figure(figsize=(n * tile + 0.6, block_h * len(picked) + head + foot))
    parts = fig.subfigures(len(picked) + 2, 1, squeeze=False,
                           height_ratios=[head] + [block_h] * len(picked) + [foot])[:, 0]
    noise = (manifest.get('pose_noise') or {}).get('position_std_m', 0)
    title = f'{manifest["setting"]}: {manifest["summary"]}' + (f' (position noise {noise:g} m per axis)' if noise else '')
    parts[0].text(0.01, 0.5, title, fontsize=7.5, va='center', wrap=True)
    parts[-1].legend(handles=[Patch(color=np.array(c) / 255, label=nm) for nm, c in zip(classes.names, classes.colors)],
                     loc='center', ncol=len(classes), fontsize=6.5, frameon=False, handlelength=1.2)
    for block, snap in zip(parts[1:-1], picked):
        axes = block.subplots(len(row_names), n, squeeze=False,
                              gridspec_kw={'wspace': 0.04, 'hspace': 0.04, 'left': 0.5 / (n * tile + 0.6),
                                           'right': 0.995, 'top': 1 - 0.62 / block_h, 'bottom': 0.02})
        t = int(snap['target_index'])
        hidden = int(snap['hidden_index']) if 'hidden_index' in snap else -1
        best = int(snap['best_supporter'][t])
        lo, hi = depth_range(snap['depth'])
        labels_of_rows = [r if r != 'depth (log)' else f'depth {lo:.0f}-{hi:.0f} m' for r in row_names]
        for a in range(n):
            if a == t:
                title = 'TARGET'
                if snap['degraded'][a]:
                    title += f'\nblur {int(snap["blur_kernel"][a])}px, noise {snap["noise_std"][a]:.0f}'
                elif snap['obstructed'][a]:
                    title += f'\nobstructed {snap["obstruction_mask"][a].mean():.0%}'
            else:
                title = f'agent {a}' + (' = hidden' if a == hidden else '') + (' (best)' if a == best else '')
                title += f'\noverlap {snap["overlap"][t, a]:.0%}'
            images = [snap['rgb'][a], classes.colorize(snap['labels'][a]), _depth_image(snap['depth'][a], lo, hi)]
            if has_mask:
                clean = snap['target_rgb_clean'] if a == t else snap['rgb'][a]
                images.append(_mask_image(clean, snap['obstruction_mask'][a]))
            if has_warp:
                images.append(snap['warped_rgb'][a] if a != t else snap['target_rgb_clean'])
            for r, img in enumerate(images):
                ax = axes[r, a]
                ax.imshow(img, interpolation='nearest')
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_color('red' if a == t else '#888888')
                    spine.set_linewidth(1.5 if a == t else 0.5)
                if r == 0:
                    ax.set_title(title, fontsize=6.5, pad=2, color='red' if a == t else 'black')
                if a == 0:
                    label = labels_of_rows[r] if row_names[r] != 'warped to target' else 'warped to target\n(target: clean)'
                    ax.set_ylabel(label, fontsize=6.5)
        block.text(0.5 / (n * tile + 0.6), 1 - 0.12 / block_h,
                   f'{split} · map {int(snap["map_id"])} · snapshot {int(snap["snapshot"])} · '
                   f't = {float(snap["time_s"]):.1f} s', fontsize=7, ha='left', va='top')
    out_png = out_png or os.path.join(root, 'preview.png')
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=100)
    plt.close(fig)
    image = Image.open(buf).convert('RGB')
    if max_colors:
        # the class colours and the marks (target frame, mask, text, background) keep their exact colours;
        # the rest of the palette adapts to the images
        exact = [tuple(int(v) for v in c) for c in classes.colors] + \
            [(255, 0, 0), (255, 0, 200), (0, 0, 0), (255, 255, 255)]
        adaptive = image.quantize(colors=max(2, max_colors - len(exact)), method=Image.Quantize.MEDIANCUT,
                                  dither=Image.Dither.NONE).getpalette()[:3 * max(2, max_colors - len(exact))]
        palette = np.concatenate([np.array(exact, np.int32), np.array(adaptive, np.int32).reshape(-1, 3)])
        pixels = np.asarray(image).reshape(-1, 3).astype(np.int32)
        colours, inverse = np.unique(pixels, axis=0, return_inverse=True)
        nearest = np.argmin(((colours[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)   # exact nearest
        indexed = Image.fromarray(nearest[inverse.ravel()].astype(np.uint8).reshape(image.size[1], image.size[0]), 'P')
        indexed.putpalette(palette.astype(np.uint8).ravel().tolist())
        image = indexed
    image.save(out_png, optimize=True)
    return out_png
