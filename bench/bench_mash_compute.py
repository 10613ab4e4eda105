#!/usr/bin/env python3
"""MASH's compute per role in units of the backbone's time t (MASH §IV, Table I: target 1.09t, supporter 1.69t).

    python bench/bench_mash_compute.py --model models/mash_obstruction --repeats 50

What a drone really runs, on ONNX Runtime (one thread per session, batch 1, CPU unless --providers says
otherwise):
  t           the backbone segmentation network alone: image -> class distribution, cut out of the shipped
              requester.onnx itself (onnx.utils.extract_model, inputs 'image' -> output 'own_probs'), so the
              weights and kernels are those of the roles
  requester   requester.onnx (backbone + query encoder + self-confidence) + fusion.onnx (with every supporter
              slot's patches filled: the most the fusion ever does)
  supporter   supporter.onnx (backbone + query-key transform, cost volume, smoothing, sampling)
  plane fit   (models with roles.json geometry 'homography') the runtime's ground-plane fit on one reply's
              matches (runtime/homography.plane_matches; planted: half the cells matched on a known plane
              with 3 px of noise, as many voters as a typical reply) and sampler.onnx at the plane's positions

The networks are timed interleaved (t, requester, fusion, supporter, t, ...) in one process, so machine noise
hits them alike; the report gives medians and the ratios to t. Results: docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time

# as a drone node runs it (collab_perception/nodes/__init__.py): one BLAS thread, set before numpy loads
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from collab_perception.runtime.homography import plane_matches, project  # noqa: E402
from collab_perception.runtime.onnx_mash import plane_settings  # noqa: E402
from collab_perception.runtime.onnx_method import onnx_session, read_roles_json, resolve_model_dir  # noqa: E402
from collab_perception.world.geometry import cell_centres  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='models/mash_obstruction', help='exported MASH model directory')
    p.add_argument('--repeats', type=int, default=50, help='timed rounds (each runs every network once)')
    p.add_argument('--warmup', type=int, default=5, help='untimed rounds first')
    p.add_argument('--threads', type=int, default=1, help='ONNX Runtime threads per session (default 1)')
    p.add_argument('--providers', default='CPUExecutionProvider', help='comma-separated execution providers')
    p.add_argument('--json', metavar='PATH', help='also write the results as JSON')
    args = p.parse_args(argv)
    import onnx
    from onnx.utils import extract_model

    model_dir = resolve_model_dir(args.model)
    info = read_roles_json(model_dir)
    providers = args.providers.split(',')
    h, w = info['image_size']
    hc, wc = info['grid']
    k, s, q = info['num_classes'], info['supporters'], info['query_size']
    with tempfile.TemporaryDirectory() as tmp:
        backbone_path = os.path.join(tmp, 'backbone.onnx')
        extract_model(os.path.join(model_dir, 'requester.onnx'), backbone_path, ['image'], ['own_probs'])
        onnx.checker.check_model(backbone_path)
        nets = {'backbone': onnx_session(backbone_path, providers, args.threads)}
        plane = plane_settings(info, model_dir)
        for role in ('requester', 'supporter', 'fusion') + (('sampler',) if plane else ()):
            nets[role] = onnx_session(os.path.join(model_dir, f'{role}.onnx'), providers, args.threads)
    rng = np.random.default_rng(0)
    image = rng.random((1, 3, h, w), dtype=np.float32)
    _, own_probs, self_conf, _ = nets['requester'].run(None, {'image': image})
    if info.get('patch_sampling', 'cells') == 'pixels':      # class ids per pixel of every cell
        cell = int(info['cell_size'])
        patches = {'patch_labels': rng.integers(0, k, (1, s, hc * wc, cell, cell), dtype=np.int64)}
    else:                                                      # one class distribution per cell
        probs = rng.random((1, s, hc * wc, k), dtype=np.float32)
        patches = {'patch_probs': probs / probs.sum(-1, keepdims=True)}
    inputs = {
        'backbone': {'image': image},
        'requester': {'image': image},
        'fusion': {'own_probs': own_probs, 'self_confidence': self_conf, **patches,
                   'patch_confidence': rng.random((1, s, hc * wc), dtype=np.float32)},
        'supporter': {'query': rng.random((1, hc, wc, q), dtype=np.float32), 'image': image},
    }
    runs = {name: (lambda sess=sess, feed=inputs.get(name): sess.run(None, feed)) for name, sess in nets.items()}
    if plane:
        centres = cell_centres(h, w, int(info['cell_size'])).astype(np.float64)
        cells = len(centres)
        truth = project(np.array([[1.0, 0.05, 6.0], [-0.03, 1.0, 4.0], [1e-4, 0.0, 1.0]]), centres)
        matched = rng.random(cells) < 0.5
        positions = np.where(matched[:, None], truth + rng.normal(0, 3, truth.shape), np.nan)
        confidence = np.where(matched, 0.7, 0.3)
        match = np.where(matched, np.arange(cells), cells)
        fit_plane = functools.partial(plane_matches, centres, confidence, match, positions, cells, (h, w),
                                      int(info['cell_size']), landing_confidence=rng.random(cells), **plane)
        fit = fit_plane()
        if fit is None:
            raise RuntimeError('the planted matches found no plane: check roles.json plane settings')
        inputs['sampler'] = {'own_probs': own_probs, 'positions': fit[2][None].astype(np.float32)}
        runs['sampler'] = lambda: nets['sampler'].run(None, inputs['sampler'])
        runs['plane'] = fit_plane
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(args.warmup + args.repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    t = med['backbone']
    result = {
        'model': args.model, 'providers': nets['backbone'].get_providers(), 'threads': args.threads,
        'repeats': args.repeats, 'image': [h, w], 'grid': [hc, wc], 'supporter_slots': s,
        'median_ms': {name: round(v, 3) for name, v in med.items()},
        'requester_t': round((med['requester'] + med['fusion']) / t, 3),
        'requester_without_fusion_t': round(med['requester'] / t, 3),
        'fusion_t': round(med['fusion'] / t, 3),
        'supporter_t': round(med['supporter'] / t, 3),
    }
    if plane:
        result['plane_fit_t'] = round(med['plane'] / t, 3)
        result['sampler_t'] = round(med['sampler'] / t, 3)
        result['supporter_with_plane_t'] = round((med['supporter'] + med['plane'] + med['sampler']) / t, 3)
    print(f'MASH compute on {result["providers"][0]} ({args.threads} thread(s), {args.repeats} interleaved rounds, '
          f'{h}x{w}, {hc}x{wc} cells):')
    print(f'  t (backbone alone)   {t:8.2f} ms')
    print(f'  requester            {med["requester"] + med["fusion"]:8.2f} ms = {result["requester_t"]:.2f} t  '
          f'(query/own {result["requester_without_fusion_t"]:.2f} t + fusion {result["fusion_t"]:.2f} t)   '
          f'[MASH Table I: 1.09 t]')
    print(f'  supporter            {med["supporter"]:8.2f} ms = {result["supporter_t"]:.2f} t   [MASH Table I: 1.69 t]')
    if plane:
        total = med['supporter'] + med['plane'] + med['sampler']
        print(f'  + the ground plane   {total:8.2f} ms = {result["supporter_with_plane_t"]:.2f} t  (plane fit '
              f'{result["plane_fit_t"]:.2f} t + sampler.onnx {result["sampler_t"]:.2f} t)')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
