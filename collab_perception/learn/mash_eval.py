"""MASH's Table I on the obstruction setting (MASH §IV "Results"): evaluation, compute, report section, plot.

For each run (runs/train/obstruction/<run>/best.pt) on a split of datasets/obstruction:
  segmentation: accuracy and mIoU on the full image and in the target's obstructed region (its obstruction
      mask: the pixels of the inserted object, scored against the unobstructed labels behind it);
  bandwidth, from the serialized sizes of the messages the swarm sends (runtime/wire.py):
      per target: the Request carrying the query map [Hs, Ws, Q] in the wire dtype, as a fraction x of the
          raw image (H x W x 3 bytes);
      per supporting agent: its PatchSegments reply with the cells it sends (real match, confidence at least
          the threshold; cell indices, confidences and class distributions quantized uint8), one reply per
          supporter and frame (empty ones too: they tell the requester not to wait), averaged over supporters
          and frames, as a fraction y of the label image (H x W bytes). Baselines that send images or dense
          distributions are counted as FeatureMap messages of those tensors;
  MASH's matching: the warping grid's agreement with the ground-truth correspondences (all cells, no-match
      included), the fraction of cells sent (the paper's selection factor r) and how many of them are exactly
      (or within one cell) right, and for the cells that do have a match, how often the best real bin is it
      (the descriptors' quality, whether or not the no-match bin wins);
  compute: per target and per supporter, relative to the backbone alone on one image (t), all measured in one
      run on this machine (one thread, batch 1, the fastest of interleaved repetitions): MASH's target runs the
      requester and fusion roles, a supporter the supporter role (mash_export.py); OutputStack's target runs
      its backbone and the fusion net, its supporters their backbone.

`mash_section()` returns the Markdown section "MASH on the obstruction setting" for docs/RESULTS.md (rows not
trained yet are listed as such, with the command that trains them) and writes docs/img/mash_miou_vs_bytes.png.
Evaluations are cached next to each checkpoint (eval_mash_<split>.json) until the checkpoint changes.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..runtime import wire
from ..runtime.homography import PLANE_FEATURES, fit_plane, plane_cell_features
from ..runtime.metrics import SegmentationScore
from ..world.geometry import cell_centres
from .mash import (CELL_SIZE, SUBCELL_KEY, Mash, bilinear_cell_targets, patch_cell_accuracy, role_modules,
                   sample_cells, sample_label_resolution, within_one_cell)
from .evaluate import cached_evaluation
from .mash_data import SETTING, ObstructionLoader
from .models import ModelConfig, create_model

THRESHOLDS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)     # confidence thresholds evaluated for MASH (bytes against mIoU)


@dataclass(frozen=True)
class Row:
    group: str
    run: str                 # run directory name under runs/train/obstruction
    method: str
    title: str
    fusion: Optional[str] = None
    query_size: Optional[int] = None
    key_size: Optional[int] = None
    extra: str = ''          # further `train` options of the planned run
    iterations: Optional[int] = None   # of the planned run (default: TRAINING's)


# Our backbone's feature map has F = 32 channels on a 16 x 16 grid of 8-px cells (the paper: SegNet features,
# a 32 x 32 grid at 256 px, Q 16-64 and K 64-256). Q = 8 / 16 / 32 / 48 uint8 query channels cost 0.04 / 0.08 /
# 0.17 / 0.25 of the raw image (the paper's Q 16 / 32 / 64 rows: 0.08 / 0.17 / 0.33); K = 32 (= F) and 64.
# MAIN is the shipped models/mash_obstruction: MASH whose backbone (encoder and own head) starts from the
# Inpainting run and then trains end to end as MASH (train --init-from, 2000 steps), continued for 1500 steps
# at half the learning rate (its loss was still falling). The from-scratch runs stay as rows.
FROM_INPAINTING = Row('MASH', 'mash_from_inpainting', 'mash', 'MASH HardSelection, from Inpainting, 2000 steps',
                      'hard', 16, 32, f'--lr 0.001 --init-from runs/train/{SETTING}/inpainting/best.pt')
MAIN = Row('MASH', 'mash_from_inpainting_cont', 'mash', 'MASH HardSelection, from Inpainting, 2000 + 1500 steps '
           '(shipped)', 'hard', 16, 32, f'--lr 0.0005 --init-from runs/train/{SETTING}/mash_from_inpainting/best.pt',
           iterations=1500)
ROWS = (
    Row('Baselines', 'inpainting', 'inpainting', 'Inpainting (trained on target view)'),
    Row('Baselines', 'inpainting_all', 'inpainting_all', 'Inpainting (trained on all views)'),
    Row('Baselines', 'inputstack', 'inputstack', 'InputStack'),
    Row('Baselines', 'outputstack', 'outputstack', 'OutputStack'),
    Row('Baselines', 'warped_outputstack', 'warped_outputstack', 'WarpedOutputStack* (ground-truth warping)'),
    Row('Baselines', 'warped_outputstack_cells', 'warped_outputstack_cells',
        'WarpedOutputStack* (ground-truth warping, whole cells)'),
    Row('MASH', 'mash_q8_k32', 'mash', 'MASH HardSelection, from scratch', 'hard', 8, 32),
    Row('MASH', 'mash', 'mash', 'MASH HardSelection, from scratch', 'hard', 16, 32),
    Row('MASH', 'mash_q32_k32', 'mash', 'MASH HardSelection, from scratch', 'hard', 32, 32),
    Row('MASH', 'mash_q32_k64', 'mash', 'MASH HardSelection, from scratch', 'hard', 32, 64),
    Row('MASH', 'mash_q48_k64', 'mash', 'MASH HardSelection, from scratch', 'hard', 48, 64),
    FROM_INPAINTING,
    MAIN,
    replace(MAIN, title='MASH SoftSelection (the shipped run\'s weights)', fusion='soft'),
    Row('MASH', 'mash_stacked', 'mash_stacked', 'MASH StackedFusion', 'stacked', 16, 32),
)
# The threshold of the main table: the shipped model's, chosen on the validation split (hard@0.1 had the best
# mIoU of 0.1-0.9 there, 49.35 vs 48.83 at 0.5) and well inside the 10%-of-the-label-image budget (0.067y).
REPORTED_THRESHOLD = 0.1
TRAINING = {'iterations': 2000, 'batch_size': 8}      # the planned runs (about 1.5 s per iteration on one core)


# A MASH variant is named FUSION@THRESHOLD, with '+need' after the fusion where the request also carries the
# requester's need map (Mash.need_map, Request.need): supporters send only the cells in which their match beats
# the requester's own confidence; '+plane' after it where the supporters fit the ground plane (a model whose
# calibration chose geometry 'homography' is scored with and without it). Evaluation scores these fusions (with and without the need map) at every
# threshold; calibration chooses among CALIBRATED_FUSIONS.
NEED_SUFFIX = '+need'
EVALUATED_FUSIONS = (('hard', False), ('soft', False), ('hard', True), ('bayes', False), ('bayes', True))
CALIBRATED_FUSIONS = ('hard', 'bayes')


PLANE_SUFFIX = '+plane'     # the supporters' matches go through the ground plane they agree on (geometry)


def variant_name(fusion: str, threshold: float, need: bool = False, plane: bool = False) -> str:
    return f'{fusion}{NEED_SUFFIX if need else ""}{PLANE_SUFFIX if plane else ""}@{threshold:g}'


# ---------------------------------------------------------------------------------------------- bytes
def query_bytes(grid: tuple[int, int], query_size: int, dtype: str, need: bool = False) -> int:
    """The requester's Request with its query map [Hs, Ws, Q] (and with `need` its need map)."""
    return wire.request_size((grid[0], grid[1], query_size), dtype, need_cells=grid[0] * grid[1] if need else 0)


def patches_bytes(cells: int, num_classes: int, dtype: str, cell_size: Optional[int] = None) -> int:
    """A supporter's PatchSegments reply with `cells` cells (confidences and distributions in `dtype`; with
    `cell_size`, 'pixels' patches: one class id per pixel of each cell, packed as the wire packs it)."""
    return wire.patches_size(cells, num_classes, dtype, dtype, cell_size=cell_size)


def baseline_supporter_bytes(method: str, image_size: tuple[int, int], num_classes: int) -> Optional[int]:
    """What one supporter sends per frame in a baseline: its raw image (InputStack) or its dense class
    distribution quantized uint8 (OutputStack), as a FeatureMap; nothing for Inpainting; undefined for
    WarpedOutputStack (its warping needs the ground truth)."""
    h, w = image_size
    if method == 'inputstack':
        return wire.feature_size((h, w, 3), 'uint8')
    if method == 'outputstack':
        return wire.feature_size((num_classes, h, w), 'uint8')
    return None


# ---------------------------------------------------------------------------------------------- evaluation
class _Variant:
    """Scores of one way of running a model (a fusion kind and threshold)."""

    def __init__(self, num_classes: int):
        self.score = SegmentationScore(num_classes)
        self.target_bytes = 0
        self.supporter_bytes = 0
        self.replies = 0
        self.cells = 0
        self.sent = 0
        self.sent_exact = 0
        self.sent_near = 0

    def add_inference(self, result: dict, batch: dict, request_bytes: int, patch_dtype: str,
                      pixel_cell: Optional[int], grid: tuple[int, int]) -> None:
        """One batch of Mash.infer's output: the predictions' scores, the bytes on the wire (`request_bytes`
        per target; each supporter's PatchSegments) and the cells sent, with how many match the truth."""
        pred = result['scores'].argmax(1).numpy()
        labels, masks = batch['labels'].numpy(), batch['obstruction_mask'].numpy()
        for i in range(pred.shape[0]):
            self.score.add(pred[i], labels[i], region=masks[i])
        sent, truth = result['sent'], batch['correspondence']
        b, s = sent.shape[:2]
        self.target_bytes += b * request_bytes
        for n in sent.sum(-1).flatten().tolist():
            self.supporter_bytes += patches_bytes(int(n), self.score.num_classes, patch_dtype, pixel_cell)
        self.replies += b * s
        self.cells += sent.numel()
        self.sent += int(sent.sum())
        self.sent_exact += int((sent & (result['match'] == truth)).sum())
        self.sent_near += int((sent & within_one_cell(result['match'], truth, grid)).sum())

    def summary(self, image_size: tuple[int, int]) -> dict:
        h, w = image_size
        s = self.score.summary()
        out = {'frames': s['frames'], 'accuracy': s['overall_accuracy'], 'miou': s['miou'],
               'mean_class_accuracy': s['mean_class_accuracy'],
               'region_accuracy': s.get('region_accuracy', float('nan')),
               'region_miou': s.get('region_miou', float('nan')),
               'region_mean_class_accuracy': s.get('region_mean_class_accuracy', float('nan')),
               'target_bytes': self.target_bytes / max(s['frames'], 1),
               'supporter_bytes': self.supporter_bytes / max(self.replies, 1) if self.replies else None}
        out['target_x'] = out['target_bytes'] / (h * w * 3)
        out['supporter_y'] = None if out['supporter_bytes'] is None else out['supporter_bytes'] / (h * w)
        if self.cells:
            out['sent_fraction'] = self.sent / self.cells
            out['sent_precision'] = self.sent_exact / max(self.sent, 1)
            out['sent_precision_within_one_cell'] = self.sent_near / max(self.sent, 1)
        return out


@torch.no_grad()
def evaluate_model(model, loader: ObstructionLoader, thresholds=THRESHOLDS, progress: bool = True) -> dict:
    """Score a model on a loader's frames. MASH models: every fusion kind they have at every threshold
    (variants 'hard@0.5', ...); baselines: one variant 'default'."""
    model.eval()
    k = loader.num_classes
    h, w = loader.image_size
    hc, wc = loader.grid
    is_mash = isinstance(model, Mash)
    fusions = [('stacked', False)] if model.method_name == 'mash_stacked' else EVALUATED_FUSIONS if is_mash \
        else [('default', False)]
    geometry = getattr(model, 'geometry', 'none')
    planes = (False, True) if geometry == 'homography' else (False,)
    settings = {variant_name(f, t, n, g) if is_mash else f: (f, n, t, g)
                for g in planes for f, n in fusions for t in (thresholds if is_mash else [0])}
    variants = {name: _Variant(k) for name in settings}
    match_correct = match_total = real_correct = real_near = real_total = 0
    near_by_region = {'obstructed': [0, 0], 'clear': [0, 0]}     # real matches within one cell, by target cell
    request = query_bytes((hc, wc), model.cfg.query_size, model.query_dtype) if is_mash else 0
    need_request = query_bytes((hc, wc), model.cfg.query_size, model.query_dtype, need=True) if is_mash else 0
    sup_bytes = None if is_mash else baseline_supporter_bytes(model.method_name, (h, w), k)
    default_fusion = getattr(model, 'fusion_kind', None)
    pixel_cell = CELL_SIZE if is_mash and model.cfg.patch_sampling == 'pixels' else None
    for batch in tqdm(loader, desc=f'evaluate {model.method_name}/{SETTING}', disable=not progress,
                      dynamic_ncols=True, leave=False):
        labels = batch['labels'].numpy()
        masks = batch['obstruction_mask'].numpy()
        b, s = batch['supporters'].shape[:2]
        if not is_mash:
            pred = model.forward_batch(batch, 'eval').logits.argmax(1).numpy()
            v = variants['default']
            for i in range(b):
                v.score.add(pred[i], labels[i], region=masks[i])
                if sup_bytes is not None:
                    v.supporter_bytes += s * sup_bytes
                    v.replies += s
            continue
        state = model.handshake(batch)
        truth = batch['correspondence']
        answers = {}
        for plane in planes:
            model.geometry = 'homography' if plane else 'none'
            answers[plane] = model.supporter_answers(state)
        model.geometry = geometry
        for name, v in variants.items():
            fusion, need, threshold, plane = settings[name]
            model.fusion_kind = fusion
            result = model.infer(state, threshold, need=need, answers=answers[plane])
            v.add_inference(result, batch, need_request if need else request, model.patch_dtype, pixel_cell,
                            (hc, wc))
            if name == next(iter(variants)):
                match_correct += int((result['match'] == truth).sum())
                match_total += truth.numel()
                real = truth != hc * wc
                best_real = model.best_real_cells(state['volume'])                 # ignoring the no-match bin
                real_correct += int(((best_real == truth) & real).sum())
                near = within_one_cell(best_real, truth, (hc, wc))
                real_near += int(near.sum())
                real_total += int(real.sum())
                # a target cell is obstructed when most of its pixels are (Table I's obstructed region)
                covered = torch.nn.functional.avg_pool2d(batch['obstruction_mask'][:, None].float(), CELL_SIZE)
                covered = (covered.flatten(1) > 0.5)[:, None].expand_as(real)
                for region, where in (('obstructed', covered), ('clear', ~covered)):
                    near_by_region[region][0] += int((near & where).sum())
                    near_by_region[region][1] += int((real & where).sum())
        model.fusion_kind = default_fusion
    out = {'variants': {name: v.summary((h, w)) for name, v in variants.items()}}
    if is_mash:
        out['match_accuracy'] = match_correct / max(match_total, 1)
        out['real_match_top1'] = real_correct / max(real_total, 1)
        out['real_match_within_one_cell'] = real_near / max(real_total, 1)
        for region, (n, total) in near_by_region.items():
            out[f'real_match_within_one_cell_{region}'] = n / max(total, 1)
    return out


CALIBRATION = 'calibration_val.json'
# above 1: a supporter's patch must be expected to do that much better than the target (accuracy_confidence
# models, whose confidences on maps they never saw run higher than on their training maps)
SELF_CONFIDENCE_SCALES = (2.0, 1.5, 1.25, 1.0, 0.5, 0.35, 0.25, 0.18, 0.12, 0.08)
# the ground plane (geometry 'homography', accuracy_confidence 'pixels' models): its cells' confidence is this
# times their expected accuracy (fit_plane_confidence), tried at these self-confidence scales beside the first
# choice
PLANE_WEIGHTS = (0.9, 1.0, 1.1, 1.2, 1.3)
PLANE_SCALES = (1.0, 1.25, 1.5)
SUPPORTER_BUDGET_Y = 0.05      # MASH issue: at most 0.05 of the label image per supporter
CALIBRATION_TOLERANCE_MIOU = 0.0     # calibration: the strict best full-image mIoU (a budget, not fewer bytes, bounds the bytes)


def load_run(run_dir: str, calibrated: bool = True):
    """A run's best.pt (eval mode) and its checkpoint; with `calibrated`, MASH's inference settings from
    <run>/calibration_val.json (calibrate_mash_run) when it exists."""
    from .train import load_model
    model, ckpt = load_model(os.path.join(run_dir, 'best.pt'))
    chosen = calibration(run_dir) if calibrated and isinstance(model, Mash) else None
    if chosen:
        model.self_confidence_scale = chosen['self_confidence_scale']
        model.confidence_threshold = chosen['threshold']
        model.request_need = bool(chosen.get('need', False))
        model.fusion_kind = chosen.get('fusion', 'hard')
        model.geometry = chosen.get('geometry', 'none')
        if chosen.get('plane_weight') is not None:
            model.plane_weight = chosen['plane_weight']
        model.plane_coefficients = chosen.get('plane_coefficients')
    return model, ckpt


def calibration(run_dir: str) -> Optional[dict]:
    """The inference settings calibrate_mash_run chose for a run, or None."""
    path = os.path.join(run_dir, CALIBRATION)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)['chosen']


@torch.no_grad()
def calibrate_mash_run(run_dir: str, data_dir: str, scales=SELF_CONFIDENCE_SCALES, thresholds=THRESHOLDS,
                       budget_y: float = SUPPORTER_BUDGET_Y, progress: bool = True, force: bool = False,
                       needs=(False, True), fusions: Optional[Sequence[str]] = None,
                       tolerance_miou: float = CALIBRATION_TOLERANCE_MIOU, planes: bool = True) -> dict:
    """Choose a MASH run's fusion, self-confidence scale, confidence threshold and whether its request carries
    the need map, on the validation split of its dataset (never on the split it is scored on): every
    combination scored; among those within `budget_y` of the label image per supporter, the fewest bytes of
    the ones within `tolerance_miou` of the best full-image mIoU (default 0: the strict best; the byte budget
    bounds the bytes, and on held-out maps the strict best scored higher than the fewest bytes within 0.1
    point, docs/RESULTS.md round 7). For 'pixels' models whose confidences estimate accuracy, a second
    stage (calibrate_plane, `planes`) tries the ground-plane prior at the first stage's choice; its rows are
    the result's `plane_sweep`. `fusions` default: CALIBRATED_FUSIONS for a model whose
    confidences estimate accuracy (BayesFusion's premise), HardSelection alone otherwise. Cached in
    <run>/calibration_val.json, which load_run applies (so
    evaluation and export use the choice)."""
    with open(os.path.join(run_dir, 'config.json')) as f:
        model_cfg = json.load(f)['model']
    if fusions is None:
        fusions = CALIBRATED_FUSIONS if model_cfg.get('accuracy_confidence') else ('hard',)

    def compute() -> dict:
        model, _ = load_run(run_dir, calibrated=False)
        if not isinstance(model, Mash):
            raise ValueError(f'{run_dir} is a {model.method_name} run; only MASH runs are calibrated')
        loader = ObstructionLoader(data_dir, SETTING, 'val', 16, shuffle=False)
        pixel_cell = CELL_SIZE if model.cfg.patch_sampling == 'pixels' else None
        request = {need: query_bytes(loader.grid, model.cfg.query_size, model.query_dtype, need) for need in needs}
        scores = {(f, a, t, n): _Variant(loader.num_classes)
                  for f in fusions for a in scales for t in thresholds for n in needs}
        for batch in tqdm(loader, desc='calibrate', disable=not progress, leave=False, dynamic_ncols=True):
            state = model.handshake(batch)
            answers = model.supporter_answers(state)
            for (f, a, t, n), v in scores.items():
                model.fusion_kind, model.self_confidence_scale = f, a
                v.add_inference(model.infer(state, t, need=n, answers=answers), batch, request[n], model.patch_dtype,
                                pixel_cell, loader.grid)
        return {'sweep': [{'fusion': f, 'self_confidence_scale': a, 'threshold': t, 'need': n,
                           **v.summary(loader.image_size)} for (f, a, t, n), v in scores.items()]}
    # the sweep is the expensive part: cached by what it scored; the choice is made again from it
    result = cached_evaluation(run_dir, CALIBRATION[:-5], compute, force, scales=list(scales),
                               thresholds=list(thresholds), data=data_dir, needs=list(needs), fusions=list(fusions))
    plane_sweep = []
    if model_cfg.get('accuracy_confidence') and model_cfg.get('patch_sampling') == 'pixels' and planes:
        first = choose_calibration(result['sweep'], budget_y, tolerance_miou)
        plane_sweep = calibrate_plane(run_dir, data_dir, first, progress, force)['sweep']
    chosen = choose_calibration(result['sweep'] + plane_sweep, budget_y, tolerance_miou)
    if (result.get('chosen'), result.get('budget_y'), result.get('tolerance_miou'), result.get('plane_sweep', [])) != \
            (chosen, budget_y, tolerance_miou, plane_sweep):
        result.update(chosen=chosen, budget_y=budget_y, tolerance_miou=tolerance_miou, plane_sweep=plane_sweep)
        with open(os.path.join(run_dir, CALIBRATION), 'w') as f:
            json.dump(result, f, indent=2)
    return result


@torch.no_grad()
def fit_plane_confidence(run_dir: str, data_dir: str, progress: bool = True, force: bool = False,
                         max_batches: Optional[int] = None) -> dict:
    """The ground plane's cell confidence of a run whose confidences estimate accuracy, fitted on the training
    split of `data_dir`: a logistic model of runtime/homography.plane_cell_features against the share of each
    target cell's labelled pixels that the supporter's patch at the plane's position gets right (the
    matches' own accuracy target, Mash.accuracy_confidence_loss). Newton's method on the cross entropy.
    Cached in <run>/plane_confidence_train.json -> {'coefficients' (None where no supporter agreed on a plane),
    'features', 'cells', 'mean_accuracy'}."""
    def compute() -> dict:
        model, _ = load_run(run_dir, calibrated=False)
        if not (isinstance(model, Mash) and model.cfg.accuracy_confidence and model.cfg.patch_sampling == 'pixels'):
            raise ValueError(f'{run_dir}: the plane confidence is fitted for \'pixels\' MASH runs with accuracy '
                             'confidences (train --accuracy-confidence)')
        loader = ObstructionLoader(data_dir, SETTING, 'train', 8, shuffle=False)
        settings = {k: v for k, v in model.plane_settings().items() if k != 'weight'}
        cells = model.grid[0] * model.grid[1]
        centres = model.cell_centre_uv.reshape(2, cells).T.double().numpy()
        xs, ys = [], []
        for i, batch in enumerate(tqdm(loader, desc='fit the plane confidence', disable=not progress, leave=False,
                                       dynamic_ncols=True)):
            if max_batches is not None and i >= max_batches:
                break
            state = model.handshake(batch)
            b, s = state['volume'].shape[:2]
            confidence, match, positions = model.subcell_matches(state['volume'].flatten(0, 1))
            landing = state['supporter_confidence'].flatten(0, 1).double().numpy()
            planes = [fit_plane(centres, confidence[n].double().numpy(), match[n].numpy(),
                                positions[n].double().numpy(), cells, model.image_size, CELL_SIZE, **settings)
                      for n in range(b * s)]
            uv = torch.stack([torch.from_numpy(np.where(p.inside[:, None], p.uv, np.nan)).float() if p is not None
                              else torch.full((cells, 2), float('nan')) for p in planes])
            labels = batch['labels'][:, None].expand(b, s, *batch['labels'].shape[1:]).flatten(0, 1)
            accuracy, labelled = patch_cell_accuracy(state['own_logits'][:, 1:].flatten(0, 1).softmax(1), uv,
                                                     labels, 255)
            for n, plane in enumerate(planes):
                if plane is None:
                    continue
                use = plane.inside & labelled[n].numpy()
                xs.append(plane_cell_features(plane, confidence[n].double().numpy(), landing[n])[use])
                ys.append(accuracy[n].double().numpy()[use])
        if not xs:       # no supporter agreed on a plane: the plane cells keep the landing confidence
            return {'coefficients': None, 'features': list(PLANE_FEATURES), 'cells': 0, 'mean_accuracy': None}
        x, y = np.concatenate(xs), np.concatenate(ys)
        coefficients = np.zeros(x.shape[1])
        for _ in range(50):
            p = 1 / (1 + np.exp(-x @ coefficients))
            hessian = (x * (p * (1 - p))[:, None]).T @ x / len(y) + 1e-6 * np.eye(x.shape[1])
            step = np.linalg.solve(hessian, x.T @ (p - y) / len(y))
            coefficients -= step
            if np.abs(step).max() < 1e-8:
                break
        return {'coefficients': [float(c) for c in coefficients], 'features': list(PLANE_FEATURES),
                'cells': int(len(y)), 'mean_accuracy': float(y.mean())}
    return cached_evaluation(run_dir, 'plane_confidence_train', compute, force, data=data_dir,
                             max_batches=max_batches)


@torch.no_grad()
def calibrate_plane(run_dir: str, data_dir: str, first: dict, progress: bool = True, force: bool = False) -> dict:
    """calibrate_mash_run's second stage for a model whose confidences estimate accuracy: the ground plane
    (geometry 'homography') at the first stage's fusion, threshold and need map, every PLANE_WEIGHTS and
    PLANE_SCALES, on the validation split. Cached in <run>/calibration_plane_val.json."""
    setting = {k: first[k] for k in ('fusion', 'threshold', 'need')}

    coefficients = fit_plane_confidence(run_dir, data_dir, progress, force)['coefficients']

    def compute() -> dict:
        model, _ = load_run(run_dir, calibrated=False)
        model.geometry, model.fusion_kind = 'homography', setting['fusion']
        model.plane_coefficients = coefficients
        loader = ObstructionLoader(data_dir, SETTING, 'val', 16, shuffle=False)
        pixel_cell = CELL_SIZE if model.cfg.patch_sampling == 'pixels' else None
        request = query_bytes(loader.grid, model.cfg.query_size, model.query_dtype, setting['need'])
        scores = {(wt, a): _Variant(loader.num_classes) for wt in PLANE_WEIGHTS for a in PLANE_SCALES}
        for batch in tqdm(loader, desc='calibrate the plane', disable=not progress, leave=False, dynamic_ncols=True):
            state = model.handshake(batch)
            for wt in PLANE_WEIGHTS:
                model.plane_weight = wt
                answers = model.supporter_answers(state)
                for a in PLANE_SCALES:
                    model.self_confidence_scale = a
                    scores[wt, a].add_inference(model.infer(state, setting['threshold'], need=setting['need'],
                                                            answers=answers),
                                                batch, request, model.patch_dtype, pixel_cell, loader.grid)
        return {'sweep': [{**setting, 'self_confidence_scale': a, 'geometry': 'homography', 'plane_weight': wt,
                           'plane_coefficients': coefficients, **v.summary(loader.image_size)}
                          for (wt, a), v in scores.items()]}
    return cached_evaluation(run_dir, 'calibration_plane_val', compute, force, data=data_dir, first=setting,
                             weights=list(PLANE_WEIGHTS), scales=list(PLANE_SCALES), coefficients=coefficients)


def choose_calibration(sweep: list[dict], budget_y: float, tolerance_miou: float) -> dict:
    """calibrate_mash_run's choice from its sweep: within the byte budget (or, where nothing is, everything),
    the fewest bytes among the settings within `tolerance_miou` of the best full-image mIoU."""
    within = [r for r in sweep if r['supporter_y'] <= budget_y] or sweep
    best = max(r['miou'] for r in within)
    chosen = min((r for r in within if r['miou'] >= best - tolerance_miou), key=lambda r: (r['supporter_y'], -r['miou']))
    return {'geometry': chosen.get('geometry', 'none'), 'plane_weight': chosen.get('plane_weight'),
            'plane_coefficients': chosen.get('plane_coefficients'),
            **{k: chosen[k] for k in ('fusion', 'self_confidence_scale', 'threshold', 'need', 'miou', 'region_miou',
                                      'supporter_y', 'target_x', 'sent_fraction')}}


def evaluate_mash_run(run_dir: str, data_dir: str, split: str = 'test', batch_size: int = 16, progress: bool = True,
                      force: bool = False) -> dict:
    """Evaluate runs/.../best.pt once; cached in <run>/eval_mash_<split>.json (invalidated when the checkpoint,
    the evaluated thresholds or the calibrated self-confidence scale change)."""
    def compute() -> dict:
        model, ckpt = load_run(run_dir)
        loader = ObstructionLoader(data_dir, SETTING, split, batch_size, shuffle=False)
        result = evaluate_model(model, loader, progress=progress)
        c = ckpt['config']
        result.update({'method': c['method'], 'image_size': list(loader.image_size), 'split': split,
                       'run': os.path.basename(os.path.normpath(run_dir)), 'step': ckpt['step'],
                       'iterations': c['iterations'], 'train_minutes': round(ckpt['elapsed_s'] / 60, 1),
                       'query_size': c['model']['query_size'], 'key_size': c['model']['key_size'],
                       'command': train_command(c, run_dir)})
        return result
    chosen = calibration(run_dir)
    name = f'eval_mash_{split}' if os.path.normpath(data_dir) == os.path.normpath(_run_data(run_dir)) else \
        f'eval_mash_{split}_{os.path.basename(os.path.normpath(data_dir))}'
    return cached_evaluation(run_dir, name, compute, force, thresholds=list(THRESHOLDS),
                             self_confidence_scale=chosen['self_confidence_scale'] if chosen else None,
                             fusions=[[f, n] for f, n in EVALUATED_FUSIONS],
                             plane=[chosen.get('geometry', 'none'), chosen.get('plane_weight'),
                                    chosen.get('plane_coefficients')] if chosen else None)


def _run_data(run_dir: str) -> str:
    """The dataset a run trained on (its config.json)."""
    try:
        with open(os.path.join(run_dir, 'config.json')) as f:
            return json.load(f).get('data_dir') or ''
    except OSError:
        return ''


def train_command(config: dict, run_dir: Optional[str] = None) -> str:
    """The `collab-perception train` command of a run's config (TrainConfig as a dict)."""
    m = config['model']
    cmd = (f'collab-perception train --method {config["method"]} --setting {config["setting"]} '
           f'--iterations {config["iterations"]} --batch-size {config["batch_size"]} --lr {config["lr"]} '
           f'--seed {config["seed"]}')
    if config['method'].startswith('mash'):
        cmd += f' --query-size {m["query_size"]} --key-size {m["key_size"]}'
        if m.get('patch_sampling', 'cells') != 'cells':
            cmd += f' --patch-sampling {m["patch_sampling"]}'
        if m.get('match_stem', 0):
            cmd += f' --match-stem {m["match_stem"]}'
        if m.get('refine_flow'):
            cmd += ' --refine-flow'
        if m.get('accuracy_confidence'):
            cmd += ' --accuracy-confidence'
    data = config.get('data_dir')
    if data and os.path.normpath(data) != os.path.join('datasets', config['setting']):
        cmd += f' --data {data}'
    if m.get('freeze_encoder'):
        cmd += ' --freeze-encoder'
    if config.get('select_by', 'accuracy') != 'accuracy':
        cmd += f' --select-by {config["select_by"]}'
    if config.get('init_from'):
        cmd += f' --init-from {config["init_from"]}'
    default_out = os.path.join('runs', 'train', config['setting'], config['method'])
    out = config.get('out_dir') or run_dir
    if out and os.path.normpath(out) != default_out:
        cmd += f' --out {out}'
    return cmd


def planned_command(row: Row) -> str:
    cmd = (f'collab-perception train --method {row.method} --setting {SETTING} '
           f'--iterations {row.iterations or TRAINING["iterations"]} --batch-size {TRAINING["batch_size"]}')
    if row.query_size is not None:
        cmd += f' --query-size {row.query_size} --key-size {row.key_size}'
    if row.extra:
        cmd += ' ' + row.extra
    if row.run != row.method:
        cmd += f' --out runs/train/{SETTING}/{row.run}'
    return cmd


# ---------------------------------------------------------------------------------------------- compute
def _fastest_seconds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """The fastest of `repeats` runs of each callable, interleaved so that load changes hit all of them alike
    (on a shared machine the fastest run is the least disturbed one: the most reproducible ratio)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(ts) for name, ts in times.items()}


def role_callables(model, image_size: tuple[int, int]) -> dict[str, Callable[[], object]]:
    """What each agent runs per frame, on one image: 'target' (for MASH its two roles, 'requester' and
    'fusion') and, where the method has one, 'supporter'."""
    h, w = image_size
    s = model.cfg.supporters
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    if isinstance(model, Mash):
        roles = role_modules(model)
        query, own_probs, self_conf, _ = roles['requester'](image)
        c, k = self_conf.shape[1] * self_conf.shape[2], own_probs.shape[1]
        patch_probs = torch.rand(1, s, c, k, generator=g).softmax(-1)
        patch_conf = torch.rand(1, s, c, generator=g)
        return {'requester': lambda: roles['requester'](image),
                'fusion': lambda: roles['fusion'](own_probs, self_conf, patch_probs, patch_conf),
                'supporter': lambda: roles['supporter'](query, image)}
    if model.method_name == 'inpainting':
        return {'target': lambda: model.own_head(model.encoder(image))}
    if model.method_name == 'inputstack':
        stack = torch.rand(1, 3 * (s + 1), h, w, generator=g)
        return {'target': lambda: model.own_head(model.encoder(stack))}
    received = torch.rand(1, s, model.cfg.num_classes, h, w, generator=g).softmax(2)
    cells = (h // CELL_SIZE) * (w // CELL_SIZE)
    index = torch.randint(0, cells + 1, (s, cells), generator=g)
    centres = torch.from_numpy(cell_centres(h, w, CELL_SIZE))
    positions = torch.cat([centres, torch.full((1, 2), float('nan'))])[index]

    def outputstack_target():
        own = model.own_head(model.encoder(image)).softmax(1)
        others = received
        if model.method_name == 'warped_outputstack':
            others = sample_label_resolution(received[0], positions, CELL_SIZE)[0][None]
        elif model.method_name == 'warped_outputstack_cells':
            others = sample_cells(received[0], index, CELL_SIZE)[None]
        return model.stack_fusion(torch.cat([own[:, None], others], 1).flatten(1, 2))

    return {'target': outputstack_target, 'supporter': lambda: model.own_head(model.encoder(image))}


@torch.no_grad()
def measure_compute(models: dict[str, object], image_size: tuple[int, int], repeats: int = 30,
                    threads: int = 1) -> dict[str, dict]:
    """Per model name: target and supporter seconds relative to the backbone alone (encoder + decoder on one
    image, the paper's t), all in one interleaved measurement. Weights do not matter, only architectures."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        any_model = next(iter(models.values()))
        h, w = image_size
        image = torch.rand(1, 3, h, w).contiguous(memory_format=torch.channels_last)
        fns = {'backbone': lambda: any_model.own_head(any_model.encoder(image))}
        for name, model in models.items():
            model.eval()
            for role, fn in role_callables(model, image_size).items():
                fns[f'{name}/{role}'] = fn
        seconds = _fastest_seconds(fns, repeats)
    finally:
        torch.set_num_threads(previous)
    t = seconds['backbone']
    out = {'backbone_ms': 1000 * t, 'threads': threads, 'repeats': repeats}
    for name in models:
        out[name] = {role: seconds[key] / t for role in ('target', 'requester', 'fusion', 'supporter')
                     if (key := f'{name}/{role}') in seconds}
        if 'requester' in out[name]:
            out[name]['target'] = out[name]['requester'] + out[name]['fusion']
    return out


def row_model(row: Row, result: Optional[dict], runs_root: str, num_classes: int, supporters: int):
    """The model a row describes (a trained run's config, else the planned one) for compute timing."""
    if result is not None:
        cfg = json.load(open(os.path.join(runs_root, SETTING, row.run, 'config.json')))['model']
        model = create_model(row.method, ModelConfig(**cfg))
    else:
        kw = {} if row.query_size is None else {'query_size': row.query_size, 'key_size': row.key_size}
        model = create_model(row.method, ModelConfig(num_classes=num_classes, supporters=supporters, **kw))
    if isinstance(model, Mash) and row.fusion in ('hard', 'soft'):
        model.fusion_kind = row.fusion
    return model.eval()


# ---------------------------------------------------------------------------------------------- report
def _pct(v: Optional[float]) -> str:
    return '-' if v is None or (isinstance(v, float) and np.isnan(v)) else f'{100 * v:.2f}'


def _frac(v: Optional[float], unit: str) -> str:
    return '-' if v is None else f'{v:.3f}{unit}'


def row_variant(row: Row, result: dict, threshold: float) -> dict:
    if row.fusion is None:
        return result['variants']['default']
    return result['variants'][f'{row.fusion}@{threshold:g}']


def table(results: dict[Row, Optional[dict]], compute: dict, threshold: float) -> str:
    lines = ['| | Method | Full acc | Full mIoU | Obstructed acc | Obstructed mIoU | Query dim Q | Key dim K | '
             'Bytes per target | Bytes per supporter | Compute per target | Compute per supporter |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for row, result in results.items():
        q = row.query_size if result is None else result.get('query_size') if row.fusion else None
        k = row.key_size if result is None else result.get('key_size') if row.fusion else None
        comp = compute.get(_row_key(row), {})
        times = [f'{comp["target"]:.2f}t' if 'target' in comp else '-',
                 f'{comp["supporter"]:.2f}t' if 'supporter' in comp else '-']
        qk = ['-' if q is None else str(q), '-' if k is None else str(k)]
        if result is None:
            lines.append(f'| {row.group} | {row.title} | not trained | | | | {" | ".join(qk)} | | | '
                         f'{" | ".join(times)} |')
            continue
        v = row_variant(row, result, threshold)
        if row.method == 'inputstack':
            per_supporter = _frac(v['supporter_bytes'] / (3 * _pixels(result)), 'x')
        else:
            per_supporter = _frac(v['supporter_y'], 'y')
        per_target = _frac(v['target_x'], 'x') if v['target_bytes'] else '-'
        lines.append(f'| {row.group} | {row.title} | {_pct(v["accuracy"])} | {_pct(v["miou"])} | '
                     f'{_pct(v["region_accuracy"])} | {_pct(v["region_miou"])} | {" | ".join(qk)} | {per_target} | '
                     f'{per_supporter} | {" | ".join(times)} |')
    return '\n'.join(lines)


def _pixels(result: dict) -> int:
    return result['image_size'][0] * result['image_size'][1]


def _row_key(row: Row) -> str:
    return f'{row.run}:{row.fusion or "default"}'


def matching_table(results: dict[Row, Optional[dict]]) -> str:
    lines = ['| Run | Q | K | threshold | fusion | Full mIoU | Obstructed mIoU | cells sent (r) | '
             'sent cells exactly right | within one cell | bytes per supporter | '
             'warping grid = ground truth (all cells) | best real bin = ground truth (exact, within one cell) | '
             'best checkpoint (step of iterations, min of training) |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    done = set()
    for row, result in results.items():
        if result is None or row.fusion is None or row.run in done:
            continue
        done.add(row.run)
        for name, v in result['variants'].items():
            fusion, threshold = name.split('@')
            lines.append(f'| {row.run} | {result["query_size"]} | {result["key_size"]} | {threshold} | {fusion} | '
                         f'{_pct(v["miou"])} | {_pct(v["region_miou"])} | {_pct(v.get("sent_fraction"))}% | '
                         f'{_pct(v.get("sent_precision"))}% | {_pct(v.get("sent_precision_within_one_cell"))}% | '
                         f'{v["supporter_bytes"]:.0f} B ({v["supporter_y"]:.3f}y) | '
                         f'{_pct(result["match_accuracy"])}% | {_pct(result["real_match_top1"])}%, '
                         f'{_pct(result["real_match_within_one_cell"])}% | '
                         f'{result["step"]} of {result["iterations"]}, {result["train_minutes"]} |')
    return '\n'.join(lines)


def plot(results: dict[Row, Optional[dict]], path: str, threshold: float, supporters: int) -> Optional[str]:
    """Full-image and obstructed-region mIoU against the bytes one target frame costs (the request plus every
    supporter's reply), MASH at every evaluated threshold; methods without communication as lines."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    trained = {row: r for row, r in results.items() if r is not None}
    if not trained:
        return None
    from matplotlib.ticker import FormatStrFormatter, FuncFormatter
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    span = [x for row, r in trained.items() for x in _frame_kb(row, r, supporters)]
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for ax, key, title in ((axes[0], 'miou', 'full image'), (axes[1], 'region_miou', 'obstructed region')):
        for i, (row, result) in enumerate(trained.items()):
            color = colors[i % len(colors)]
            if row.fusion is None:
                v = result['variants']['default']
                label = row.title
                if v['supporter_bytes'] is None:
                    style = '--' if row.method == 'inpainting' else ':'
                    ax.axhline(100 * v[key], color=color, ls=style, lw=1, label=label)
                else:
                    ax.scatter([(v['target_bytes'] + supporters * v['supporter_bytes']) / 1024], [100 * v[key]],
                               color=color, marker='s', label=label, zorder=3)
                continue
            points = sorted((float(name.split('@')[1]), v) for name, v in result['variants'].items()
                            if name.startswith(row.fusion + '@'))
            xs = [(v['target_bytes'] + supporters * v['supporter_bytes']) / 1024 for _, v in points]
            ys = [100 * v[key] for _, v in points]
            label = f'{row.title.split(" (")[0]} Q{result["query_size"]} K{result["key_size"]}'
            ax.plot(xs, ys, '-o', color=color, ms=3, lw=1, label=label)
            for (t, v), x, y in zip(points, xs, ys):
                if t == threshold:
                    ax.scatter([x], [y], color=color, s=40, zorder=3)
        ax.set_xscale('log')
        if span:
            ax.set_xlim(min(span) / 2, max(span) * 2)
        ax.xaxis.set_major_formatter(FormatStrFormatter('%g'))
        ax.xaxis.set_minor_formatter(FuncFormatter(_two_five_label))
        ax.set_xlabel('kB per target frame (request + all replies; log)')
        ax.set_ylabel(f'mIoU, {title} (%)')
        ax.set_title(f'MASH on the obstruction setting: {title}')
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='lower center', ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _two_five_label(value: float, _position) -> str:
    """Labels of minor log ticks: only 2x and 5x powers of ten."""
    leading = round(value / 10 ** np.floor(np.log10(value)))
    return f'{value:g}' if leading in (2, 5) else ''


def _frame_kb(row: Row, result: dict, supporters: int) -> list[float]:
    """kB one target frame costs (request + every supporter's reply), per evaluated variant of a row."""
    out = []
    for name, v in result['variants'].items():
        if v['supporter_bytes'] is not None and (row.fusion is None or name.startswith(row.fusion + '@')):
            out.append((v['target_bytes'] + supporters * v['supporter_bytes']) / 1024)
    return out


def collect(runs_root: str, datasets_root: str, split: str = 'test',
            progress: bool = True) -> dict[Row, Optional[dict]]:
    """Row -> its run's evaluation (None: not trained)."""
    data = os.path.join(datasets_root, SETTING)
    out: dict[Row, Optional[dict]] = {}
    for row in ROWS:
        run = os.path.join(runs_root, SETTING, row.run)
        if not os.path.exists(os.path.join(run, 'best.pt')):
            out[row] = None
            continue
        out[row] = evaluate_mash_run(run, data, split, progress=progress)
    return out


def verdict(results: dict) -> list[str]:
    """The issue's offline bar in words, from the numbers of the table: the shipped MASH row against Inpainting
    and OutputStack (mIoU on the full image and in the obstructed region) and its gap to WarpedOutputStack."""
    by_run = {row.run: r for row, r in results.items() if r is not None and row.fusion in (None, 'hard')}
    ours = by_run.get(MAIN.run)
    if ours is None:
        return []
    v = ours['variants'][f'hard@{REPORTED_THRESHOLD:g}']
    lines = []
    for run, name in (('inpainting', 'Inpainting'), ('outputstack', 'OutputStack')):
        if run in by_run:
            b = by_run[run]['variants']['default']
            for key, where in (('miou', 'full-image'), ('region_miou', 'obstructed-region')):
                word = 'beats' if v[key] > b[key] else 'does NOT beat'
                lines.append(f'- Shipped MASH (HardSelection) {word} {name} in {where} mIoU: {100 * v[key]:.2f} vs '
                             f'{100 * b[key]:.2f}.')
    if 'warped_outputstack' in by_run:
        w = by_run['warped_outputstack']['variants']['default']
        lines.append(f'- Below WarpedOutputStack (ground-truth warping) by {100 * (w["miou"] - v["miou"]):.2f} mIoU '
                     f'points on the full image and {100 * (w["region_miou"] - v["region_miou"]):.2f} in the '
                     'obstructed region.')
    return lines + ([''] if lines else [])


def mash_section(runs_root: str, datasets_root: str, split: str = 'test', progress: bool = True,
                 plot_path: str = 'docs/img/mash_miou_vs_bytes.png', markdown_dir: str = 'docs',
                 compute_repeats: int = 30) -> str:
    """The Markdown section "MASH on the obstruction setting" (for docs/RESULTS.md, which lives in
    `markdown_dir`), evaluating every trained run (cached) and measuring compute; writes the plot."""
    data = os.path.join(datasets_root, SETTING)
    if not os.path.exists(os.path.join(data, 'manifest.json')):
        return '\n'.join(['## MASH on the obstruction setting', '', f'No dataset at {data} yet: make it, train the '
                          'rows, then evaluate:', '', '```bash',
                          f'collab-perception dataset generate --setting {SETTING} --frames 2400 --out {data} '
                          '--workers 2'] + [planned_command(row) for row in ROWS if row.fusion != 'soft']
                         + ['collab-perception evaluate', '```', ''])
    loader = ObstructionLoader(data, SETTING, split, 1)
    image_size, num_classes, supporters = loader.image_size, loader.num_classes, loader.agents - 1
    results = collect(runs_root, datasets_root, split, progress)
    models = {}
    for row in results:
        models.setdefault(_row_key(row), row_model(row, results[row], runs_root, num_classes, supporters))
    compute = measure_compute(models, image_size, compute_repeats)
    threshold = REPORTED_THRESHOLD
    h, w = image_size
    lines = ['## MASH on the obstruction setting', '',
             'MASH (`shared/papers/mash-spatial-handshake.txt`) and the baselines of its Table I on our `obstruction` '
             f'setting (docs/DATASETS.md: {supporters + 1} drones, {w}x{h} images, a 3D obstruction in front of the '
             f'target; {split} split, maps never seen in training). Segmentation is scored against the unobstructed '
             'labels, on the full image and inside the target\'s obstruction mask. Bytes are the serialized messages '
             f'(runtime/wire.py): per target the Request with the uint8 query map on the {h // CELL_SIZE}x'
             f'{w // CELL_SIZE} grid of {CELL_SIZE}-px cells, as a fraction of the raw image (x = {h}x{w}x3 bytes); '
             'per supporter its PatchSegments reply (cells whose argmax is a real match with confidence >= '
             f'{threshold:g}, the threshold of the shipped models/mash_obstruction, chosen on the validation split '
             'for the best mIoU; every threshold is in the second table; indices, uint8 confidences and class '
             'distributions), one per supporter and frame, as a '
             f'fraction of the label image (y = {h}x{w} bytes); InputStack\'s supporters send their raw image (x), '
             'OutputStack\'s their dense uint8 class distribution (y). Compute is relative to the backbone alone on '
             f'one image (t = {compute["backbone_ms"]:.1f} ms here, {compute["threads"]} CPU thread, the fastest of '
             f'{compute["repeats"]} interleaved runs, measured together for every row, trained or not, while other '
             'work may share the machine): MASH\'s target runs requester + fusion, a supporter the supporter role '
             '(backbone, key encoder, query-key transform, cost volume, smoothing, argmax/max, sampling).', '',
             '*WarpedOutputStack warps with the ground-truth correspondences (not available at inference): an upper '
             'bound. SoftSelection uses the shipped HardSelection run\'s weights (both are trained on the same soft '
             'fusion, learn/mash.py). "From Inpainting": the encoder and own head start from the Inpainting run\'s '
             'weights (`train --init-from`), then everything trains as MASH; "2000 + 1500 steps": that run continued '
             'at half the learning rate (all its weights, `--init-from` again); "from scratch": random start.', '',
             table(results, compute, threshold), '']
    lines += verdict(results)
    main = compute[_row_key(MAIN)]
    lines += [f'MASH\'s target compute (the `{MAIN.run}` row) is its requester role '
              f'({main["requester"]:.2f}t: backbone, context, query encoder, self-confidence) plus its fusion role '
              f'({main["fusion"]:.2f}t, with {supporters} supporters\' patches).', '']
    missing = [row for row, r in results.items() if r is None]
    trained = [r for r in results.values() if r is not None]
    lines += ['Reproduce (dataset, then each row, then this section):', '', '```bash',
              f'collab-perception dataset generate --setting {SETTING} --frames 2400 --out {data} --workers 2']
    commands = []
    for row, result in results.items():
        cmd = result['command'] if result is not None else planned_command(row)
        if cmd not in commands:
            commands.append(cmd)
    lines += commands + ['collab-perception evaluate   # runs/RESULTS.md with this section', '```', '']
    if missing:
        lines += ['Not trained yet: ' + ', '.join(f'{r.title} (Q {r.query_size}, K {r.key_size})' if r.query_size
                                                  else r.title for r in missing) + '.', '']
    if any(r['method'].startswith('mash') for r in trained):
        lines += ['### MASH\'s matching and the confidence threshold', '',
                  'Per run, threshold and fusion: cells sent (the selection factor r of Eq. 3), the fraction of them '
                  'whose match is the ground-truth cell (exactly, or within one cell), the bytes per supporter, and '
                  'how often the warping grid (argmax, all target cells and supporters) equals the ground truth.', '',
                  matching_table(results), '']
    if plot(results, plot_path, threshold, supporters):
        rel = os.path.relpath(plot_path, markdown_dir)
        lines += [f'![mIoU against bytes per target frame]({rel})', '']
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------- ceilings
WARPINGS = ('whole cells', 'label resolution (sub-cell grid)', 'per-pixel reprojection')


@torch.no_grad()
def warping_ceiling(data_dir: str, split: str = 'val', limit: Optional[int] = None,
                    progress: bool = True) -> dict[str, dict]:
    """How well each way of warping a supporter's map into the target can do at best: the supporters' true
    labels warped into the target, compared with the target's true labels on the pixels every warping
    covers (target cells with a ground-truth match). 'whole cells' moves the matched cell's block
    (`correspondence`), 'label resolution' samples through the sub-cell grid (`correspondence_uv`,
    label_resolution_grid), 'per-pixel reprojection' takes each target pixel through its depth and the poses
    (the limit of any cell-based grid). Per warping: agreement (%) on all covered pixels, inside the target's
    obstruction and outside it, and the covered share of the pixels."""
    from ..data import iter_snapshots
    from ..world import geometry as G
    agree = {w: {'all': [0, 0], 'obstructed': [0, 0], 'clear': [0, 0]} for w in WARPINGS}
    covered = [0, 0]
    frames = 0
    snapshots = iter_snapshots(data_dir, split)
    for snap in tqdm(snapshots, desc=f'warping ceiling {split}', disable=not progress, leave=False):
        if limit is not None and frames >= limit:
            break
        if 'correspondence_uv' not in snap:
            raise ValueError(f'{data_dir} has no correspondence_uv (sub-cell positions): generate it again')
        frames += 1
        t = int(snap['target_index'])
        labels = snap['labels']
        truth = labels[t]
        h, w = truth.shape
        mask = snap['obstruction_mask'][t]
        depth = snap['depth'].astype(np.float32)
        poses = [G.pose_matrix(p, q) for p, q in zip(snap['position'], snap['orientation_xyzw'])]
        for s in range(labels.shape[0]):
            if s == t:
                continue
            corr = snap['correspondence'][t, s]
            cells = G.sample_cells(labels[s], corr, CELL_SIZE, fill=255)
            base = cells != 255
            positions = torch.from_numpy(snap['correspondence_uv'][t, s].astype(np.float32))[None]
            fine, valid = sample_label_resolution(torch.from_numpy(labels[s]).float()[None, None], positions,
                                                  CELL_SIZE, mode='nearest')
            fine = np.where(valid[0, 0].numpy(), fine[0, 0].numpy().astype(np.int64), 256)
            uv, visible = G.pixel_correspondences(depth[t], snap['K'][t].astype(np.float64), poses[t], depth[s],
                                                  snap['K'][s].astype(np.float64), poses[s])
            u = np.clip(np.round(np.nan_to_num(uv[..., 0])).astype(np.int64), 0, w - 1)
            v = np.clip(np.round(np.nan_to_num(uv[..., 1])).astype(np.int64), 0, h - 1)
            pixel = np.where(visible, labels[s][v, u], 256)
            covered[0] += int(base.sum())
            covered[1] += base.size
            for name, warped in zip(WARPINGS, (cells, fine, pixel)):
                hit = (warped == truth) & base
                for part, where in (('all', base), ('obstructed', base & mask), ('clear', base & ~mask)):
                    agree[name][part][0] += int((hit & where).sum())
                    agree[name][part][1] += int(where.sum())
    return {'frames': frames, 'covered': covered[0] / max(covered[1], 1),
            'agreement': {name: {part: 100 * a / max(n, 1) for part, (a, n) in parts.items()}
                          for name, parts in agree.items()}}


@torch.no_grad()
def matcher_ceiling(run_dir: str, data_dir: str, split: str = 'val', threshold: Optional[float] = None,
                    self_confidence_scale: Optional[float] = None, progress: bool = True,
                    planes: bool = False) -> dict[str, dict]:
    """A MASH run as it is and with its matcher replaced by the ground truth (correspondence volumes peaked on
    the true source cell, or on the bilinear sub-cell targets with 'pixels' sampling), the same sampling,
    selection and fusion: what a perfect matcher would give this run (MASH issue: "ground-truth matches fed
    through MASH's own sampling and fusion"). With `planes` ('pixels' runs), also the run's matches through the
    ground plane they agree on (geometry 'homography', Mash.planar_matches) and the ground-truth matches'
    plane, the ceiling of that prior. HardSelection at `threshold` and `self_confidence_scale` (default: the
    run's). Per variant: accuracy and mIoU (%) on the full image and in the obstructed region."""
    model, _ = load_run(run_dir)
    if self_confidence_scale is not None:
        model.self_confidence_scale = self_confidence_scale
    if not isinstance(model, Mash):
        raise ValueError(f'{run_dir} is a {model.method_name} run; the matcher ceiling needs a MASH run')
    if planes and model.cfg.patch_sampling != 'pixels':
        raise ValueError(f'{run_dir} samples whole cells; the ground-plane variants need a \'pixels\' run')
    model.fusion_kind = 'hard'
    loader = ObstructionLoader(data_dir, SETTING, split, 8, shuffle=False)
    names = ['the run', 'ground-truth matching'] + (['its matches through their plane',
                                                    'the ground-truth plane'] if planes else [])
    scores = {name: SegmentationScore(loader.num_classes) for name in names}
    cells = loader.grid[0] * loader.grid[1]
    for batch in tqdm(loader, desc=f'matcher ceiling {split}', disable=not progress, leave=False):
        state = model.handshake(batch)
        b, s = state['volume'].shape[:2]
        if model.cfg.patch_sampling == 'pixels':
            truth = bilinear_cell_targets(batch[SUBCELL_KEY].flatten(0, 1), loader.grid)
        else:
            truth = torch.nn.functional.one_hot(batch['correspondence'].flatten(0, 1), cells + 1).transpose(1, 2)
        perfect = dict(state, volume=(40.0 * truth.float() - 20.0).view(*state['volume'].shape))
        predictions = {}
        for name, st in (('the run', state), ('ground-truth matching', perfect)):
            model.geometry = 'none'
            predictions[name] = model.infer(st, threshold)['scores']
            if planes:
                model.geometry = 'homography'
                plane_name = 'its matches through their plane' if name == 'the run' else 'the ground-truth plane'
                predictions[plane_name] = model.infer(st, threshold)['scores']
        model.geometry = 'none'
        for name, scores_ in predictions.items():
            pred = scores_.argmax(1).numpy()
            for i in range(b):
                scores[name].add(pred[i], batch['labels'][i].numpy(), region=batch['obstruction_mask'][i].numpy())
    out = {}
    for name, score in scores.items():
        sm = score.summary()
        out[name] = {'accuracy': 100 * sm['overall_accuracy'], 'miou': 100 * sm['miou'],
                     'region_accuracy': 100 * sm['region_accuracy'], 'region_miou': 100 * sm['region_miou']}
    return out
