"""Evaluation of trained methods and the handshake paper's Table I (§IV-D, §V).

For each run (runs/train/<setting>/<method>/best.pt) on the test split:
  overall accuracy and mIoU of the fused prediction (and of the own head, where the model has one),
  bytes per frame of what the swarm would really send for the method (runtime/wire.py: serialized
  Request, Reply, Connect and FeatureMap messages with the codec's dtypes, the same accounting for every
  method), selection accuracy against the world's best supporter (hidden view / largest overlap), and BIS
  (Eq. 7) against the setting's Single degraded and Single normal runs.

`collab-perception evaluate` writes runs/RESULTS.md (a table shaped like Table I, every number with the
command that reproduces it, and what is not trained yet; docs/RESULTS.md is curated from it) and
runs/img/results_accuracy_vs_bytes.png.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from ..data.shards import IGNORE_LABEL
from ..runtime import wire
from ..runtime.codec import decode_tensor, encode_tensor
from ..runtime.metrics import ConfusionMatrix, SegmentationScore, bis, gap_recovered
from .data import WARPED_SETTINGS, FrameLoader
from .models import CollabModel, WireSpec
from .train import forward, load_model

DEFAULT_DTYPES = {'query': 'float32', 'score': 'float32', 'feature': 'float16'}


@dataclass
class FrameBytes:
    """Bytes one frame of a method costs on the wire, by message kind."""

    request: int = 0
    reply: int = 0
    connect: int = 0
    feature: int = 0

    @property
    def total(self) -> int:
        return self.request + self.reply + self.connect + self.feature


def frame_bytes(spec: WireSpec, feature_hw: tuple[int, int], supporters: int, selected: int, pose: bool,
                dtypes: dict = DEFAULT_DTYPES) -> FrameBytes:
    """Bytes of one requester's frame: a handshake (request + S replies + a connect per selected supporter)
    and the features of the selected supporters; centralized methods receive every supporter's features
    unasked; random selection asks one supporter directly (a connect, no matching)."""
    if spec.features_sent == 'none':
        return FrameBytes()
    feature_shape = (spec.feature_shape[0],) + tuple(feature_hw)
    one_feature = wire.feature_size(feature_shape, dtypes['feature'])
    if spec.features_sent == 'all':
        return FrameBytes(feature=supporters * one_feature)
    out = FrameBytes(connect=selected * wire.connect_size(), feature=selected * one_feature)
    if spec.handshake:
        out.request = wire.request_size(spec.query_shape, dtypes['query'], pose=pose)
        out.reply = supporters * wire.reply_size(spec.score_shape, dtypes['score'])
    return out


WIRE_DTYPES = ('float32', 'float16', 'int8', 'uint8')


def wire_round_trip(dtype: str):
    """Feature maps [N, C, h, w] through the real codec (runtime/codec.py), one message per map: what a
    requester decodes from a FeatureMap of that dtype (int8 / uint8: per-tensor affine quantization)."""
    def round_trip(features: torch.Tensor) -> torch.Tensor:
        maps = [decode_tensor(encode_tensor(f.numpy(), dtype), field='feature') for f in features]
        return torch.from_numpy(np.stack(maps)).to(features.dtype)
    return round_trip


@torch.no_grad()
def evaluate_model(model: CollabModel, loader: FrameLoader, setting: str, progress: bool = True,
                   dtypes: dict = DEFAULT_DTYPES) -> dict:
    model.eval()
    model.received_on_wire = wire_round_trip(dtypes['feature'])
    fused = SegmentationScore(model.cfg.num_classes)
    own = SegmentationScore(model.cfg.num_classes)
    spec = model.wire()
    pose = setting in WARPED_SETTINGS
    kinds = FrameBytes()
    generator = torch.Generator().manual_seed(0)
    for batch in tqdm(loader, desc=f'evaluate {model.method_name}/{setting}', disable=not progress,
                      dynamic_ncols=True, leave=False):
        if model.method_name == 'random':
            with model.inputs_of(batch):
                out = model(batch['target'], batch['supporters'], mode='eval', generator=generator)
        else:
            out = forward(model, batch, 'eval')
        pred = out.logits.argmax(1).numpy()
        labels = batch['labels'].numpy()
        b, s = batch['supporters'].shape[:2]
        h, w = batch['target'].shape[-2:]
        feature_hw = (h, w) if batch.get('encoded') else (h // 4, w // 4)
        for i in range(b):
            n_sel = int(out.selected[i].sum()) if out.selected is not None else (1 if spec.features_sent == 'selected' else 0)
            fb = frame_bytes(spec, feature_hw, s, n_sel, pose, dtypes)
            for k in ('request', 'reply', 'connect', 'feature'):
                setattr(kinds, k, getattr(kinds, k) + getattr(fb, k))
            # Selection accuracy (handshake paper §V, Fig. 5): the best supporter is among those connected
            # (exactly the one, for top-1 methods). Frames where no supporter sees the target do not count.
            best = int(batch['best'][i])
            correct = bool(out.selected[i, best]) if out.selected is not None and best >= 0 else None
            fused.add(pred[i], labels[i], fb.total, selected_correctly=correct)
            if out.own_logits is not None:
                own.add(out.own_logits[i].argmax(0).numpy(), labels[i])
    model.received_on_wire = None
    result = fused.summary()
    result['feature_dtype'] = dtypes['feature']
    frames = max(fused.frames, 1)
    result['bytes_by_kind'] = {k: getattr(kinds, k) / frames for k in ('request', 'reply', 'connect', 'feature')}
    if own.frames:
        result['own_accuracy'] = own.summary()['overall_accuracy']
        result['own_miou'] = own.summary()['miou']
    return result


def cached_evaluation(run_dir: str, name: str, compute, force: bool = False, **key) -> dict:
    """Run `compute()` once per checkpoint: the result is cached in <run>/<name>.json and recomputed when
    best.pt changes or any of `key` (e.g. the evaluated thresholds) differs."""
    stamp = os.path.getmtime(os.path.join(run_dir, 'best.pt'))
    cache = os.path.join(run_dir, f'{name}.json')
    if not force and os.path.exists(cache):
        with open(cache) as f:
            cached = json.load(f)
        if cached.get('checkpoint_mtime') == stamp and all(cached.get(k) == v for k, v in key.items()):
            return cached
    result = {**compute(), 'checkpoint_mtime': stamp, **key}
    with open(cache, 'w') as f:
        json.dump(result, f, indent=2)
    return result


def evaluate_run(run_dir: str, data_dir: str, split: str = 'test', batch_size: int = 16, progress: bool = True,
                 force: bool = False, setting: str = '', cache_name: str = '', feature_dtype: str = '') -> dict:
    """Evaluate runs/.../best.pt on a split (cached in <run>/eval_<split>.json). `setting`: evaluate on another
    setting's dataset than the run's (cached in <run>/eval_<split>_<setting>.json). `cache_name`: another
    cache file, for another dataset of the same setting (the unseen worlds). `feature_dtype`: the received
    feature maps' wire dtype (default: DEFAULT_DTYPES['feature'], float16), cached apart."""
    dtypes = {**DEFAULT_DTYPES, 'feature': feature_dtype or DEFAULT_DTYPES['feature']}
    def compute() -> dict:
        model, ckpt = load_model(os.path.join(run_dir, 'best.pt'))
        gate = None
        if ckpt['config']['method'] == 'when2com':
            gate = choose_gate_threshold(run_dir, trained_data, batch_size, progress)
            model.cfg.gate_threshold = gate['threshold']
        loader = FrameLoader(data_dir, evaluated_setting, split, batch_size, shuffle=False)
        result = evaluate_model(model, loader, evaluated_setting, progress, dtypes)
        if gate:
            result['gate_threshold'] = gate['threshold']
        result.update({'method': ckpt['config']['method'], 'setting': evaluated_setting, 'split': split,
                       'step': ckpt['step'],
                       'train_minutes': round(ckpt['elapsed_s'] / 60, 1), 'iterations': ckpt['config']['iterations']})
        return result
    with open(os.path.join(run_dir, 'config.json')) as f:
        trained = json.load(f)
    trained_setting, trained_data = trained['setting'], trained['data_dir']
    evaluated_setting = setting or trained_setting
    name = cache_name or (f'eval_{split}' if evaluated_setting == trained_setting else f'eval_{split}_{evaluated_setting}')
    if dtypes['feature'] != DEFAULT_DTYPES['feature']:
        name += f'_{dtypes["feature"]}'
    return cached_evaluation(run_dir, name, compute, force, data_dir=os.path.abspath(data_dir),
                             feature_dtype=dtypes['feature'])


UNSEEN_SUFFIX = '-unseen'


def unseen_dataset(datasets_root: str, setting: str) -> Optional[str]:
    """datasets/<setting>-unseen: the setting generated from a world seed that no training or validation set
    uses (`dataset generate --seed 1000`); None when it has not been made."""
    return unseen_twin(os.path.join(datasets_root, setting))


def unseen_twin(data_dir: str) -> Optional[str]:
    """<data_dir>-unseen, the unseen-worlds twin of a dataset, where it has been generated."""
    path = os.path.normpath(data_dir) + UNSEEN_SUFFIX
    return path if os.path.exists(os.path.join(path, 'manifest.json')) else None


def evaluate_unseen(run_dir: str, datasets_root: str, setting: str, progress: bool = True,
                    data_dir: str = '') -> Optional[dict]:
    """A run on the test split of the unseen worlds: datasets/<setting>-unseen, or with `data_dir` (a variant
    of the setting, the mixed one) that dataset's twin (cached in <run>/eval_unseen_<dataset name>.json);
    None when it has not been made."""
    source = data_dir or os.path.join(datasets_root, setting)
    data = unseen_twin(source)
    if data is None:
        return None
    return evaluate_run(run_dir, data, 'test', progress=progress, setting=setting,
                        cache_name=f'eval_unseen_{os.path.basename(os.path.normpath(source))}')


@torch.no_grad()
def handshake_ceiling(run_dir: str, backbone_checkpoint: str, data_dir: str, split: str = 'test') -> dict[str, float]:
    """Where a handshake run loses accuracy (%): the backbone on the clean and the degraded target views, the
    run's fused decoder handed the labelled best supporter (hidden target: the slot holding the clean target
    view; pose settings: the one with the largest overlap), the supporter that scores best in hindsight (per
    frame: the ceiling of any one-supporter selection for this decoder), and the run as it is (argmax
    selection); then how often it selects the labelled best, and on the frames where it does not: the run,
    the labelled best and the run's own head. Pose settings add how much of the target's view the warped
    supporters cover: the best one, all of them together, and the share of frames where three or more cover
    over 20 %. The setting is the run's."""
    backbone, _ = load_model(backbone_checkpoint)
    model, _ = load_model(os.path.join(run_dir, 'best.pt'))
    with open(os.path.join(run_dir, 'config.json')) as f:
        setting = json.load(f)['setting']
    names = ('backbone on clean views', 'backbone on degraded views', 'decoder, labelled best supporter',
             'decoder, best supporter in hindsight', 'decoder, argmax selection (the run)',
             'wrong selections: the run', 'wrong selections: labelled best supporter', 'wrong selections: own head')
    scores = {n: ConfusionMatrix(backbone.cfg.num_classes) for n in names}
    right = frames = 0
    covered = {'coverage: best supporter': 0.0, 'coverage: all supporters together': 0.0,
               'frames where 3+ supporters cover > 20 %': 0.0}
    for b in FrameLoader(data_dir, setting, split, 32, shuffle=False):
        y = b['labels'].numpy()
        share = b['valid'].flatten(2).mean(2)                              # B, S: covered share of each warp
        covered['coverage: best supporter'] += float(share.max(1).values.sum())
        covered['coverage: all supporters together'] += float(b['valid'].amax(1).flatten(1).mean(1).sum())
        covered['frames where 3+ supporters cover > 20 %'] += float(((share > 0.2).sum(1) >= 3).sum())
        scores[names[0]].update(backbone.own_head(backbone.encoder(b['clean'])).argmax(1).numpy(), y)
        scores[names[1]].update(backbone.own_head(backbone.encoder(b['target'])).argmax(1).numpy(), y)
        # every view encoded once; the decodes below and the run itself read those features (CollabModel's
        # encoded inputs, as the feature cache feeds them), the run's valid mask applied as in training
        n, s = b['supporters'].shape[:2]
        feats = model.encoder(torch.cat([b['target'], b['supporters'].flatten(0, 1)], 0))
        raw_t, raw_s = feats[:n], feats[n:].view(n, s, *feats.shape[1:])
        with model.inputs_of({'encoded': True, 'valid': b['valid']}):
            f_t, f_s = model.encode_all(raw_t, raw_s)
            each = torch.stack([model.decoder(torch.cat([f_t, f_s[:, i]], 1)).argmax(1) for i in range(s)],
                               1).numpy()                                  # B, S, H, W
            out = model(raw_t, raw_s, mode='eval')
        frame = np.arange(len(y))
        perfect = each[frame, b['best'].clamp(min=0).numpy()]
        hits = ((each == y[:, None]) & (y[:, None] != IGNORE_LABEL)).sum((2, 3))
        hindsight = each[frame, hits.argmax(1)]
        run = out.logits.argmax(1).numpy()
        for name, pred in zip(names[2:5], (perfect, hindsight, run)):
            scores[name].update(pred, y)
        wrong = (out.selected.float().argmax(-1) != b['best']).numpy()
        right, frames = right + int((~wrong).sum()), frames + len(y)
        if wrong.any():
            scores[names[5]].update(run[wrong], y[wrong])
            scores[names[6]].update(perfect[wrong], y[wrong])
            scores[names[7]].update(out.own_logits[torch.from_numpy(wrong)].argmax(1).numpy(), y[wrong])
    result = {name: 100 * cm.accuracy() for name, cm in scores.items()}
    result['selection right'] = 100 * right / max(frames, 1)
    if setting != 'hidden-target':
        result.update({name: 100 * total / max(frames, 1) for name, total in covered.items()})
    return result


GATE_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
GATE_TOLERANCE = 0.005      # the fewest bytes within half a point of the best validation accuracy


def choose_gate_threshold(run_dir: str, data_dir: str, batch_size: int = 16, progress: bool = True) -> dict:
    """When2com's threshold, chosen on the validation split of the run's own dataset (never on the split it is
    scored on): every threshold of GATE_THRESHOLDS is tried; the one sending the fewest bytes while keeping the
    validation accuracy within GATE_TOLERANCE of the best wins. Cached in <run>/gate_val.json."""
    def compute() -> dict:
        model, _ = load_model(os.path.join(run_dir, 'best.pt'))
        loader = FrameLoader(data_dir, setting, 'val', batch_size, shuffle=False)
        sweep = gate_sweep(model, loader, setting, GATE_THRESHOLDS, progress=progress)
        best = max(r['accuracy'] for r in sweep)
        chosen = min((r for r in sweep if r['accuracy'] >= best - GATE_TOLERANCE),
                     key=lambda r: (r['bytes_per_frame'], -r['accuracy']))
        return {'threshold': chosen['threshold'], 'sweep': sweep}
    with open(os.path.join(run_dir, 'config.json')) as f:
        setting = json.load(f)['setting']
    return cached_evaluation(run_dir, 'gate_val', compute, data_dir=os.path.abspath(data_dir),
                             thresholds=list(GATE_THRESHOLDS))


@torch.no_grad()
def gate_sweep(model: CollabModel, loader: FrameLoader, setting: str, thresholds, progress: bool = True,
               dtypes: dict = DEFAULT_DTYPES) -> list[dict]:
    """A When2com model's accuracy and bytes per frame at each threshold, as `evaluate_model` scores them one
    threshold at a time, in one pass over the frames: every view is encoded once, and every frame decoded once
    per distinct set of supporters the thresholds connect it to (a few sets, not one decode per threshold)."""
    model.eval()
    model.received_on_wire = wire_round_trip(dtypes['feature'])
    fused = {t: SegmentationScore(model.cfg.num_classes) for t in thresholds}
    spec = model.wire()
    pose = setting in WARPED_SETTINGS
    try:
        for batch in tqdm(loader, desc=f'gate sweep, {len(thresholds)} thresholds', disable=not progress,
                          dynamic_ncols=True, leave=False):
            with model.inputs_of(batch):
                f_t, f_s = model.encode_all(batch['target'], batch['supporters'])
            b, s = f_s.shape[:2]
            probs = model.gate_scores(f_t, f_s).softmax(-1)
            stacked = torch.cat([f_t.unsqueeze(1), model.received(f_s.flatten(0, 1)).view(f_s.shape)], 1)
            connected = {t: [tuple(row) for row in (probs[:, 1:] >= t).tolist()] for t in thresholds}
            # the distinct (frame, connected set) pairs, decoded together
            pairs = sorted({(i, connected[t][i]) for t in thresholds for i in range(b)})
            frame = torch.tensor([i for i, _ in pairs])
            sel = torch.tensor([mask for _, mask in pairs], dtype=torch.bool)
            weights = model.gate_weights(probs[frame], sel)
            preds = {}
            for start in range(0, len(pairs), b):
                chunk = slice(start, start + b)
                logits = model.decode_weighted(f_t[frame[chunk]], stacked[frame[chunk]], weights[chunk])
                for pair, pred in zip(pairs[chunk], logits.argmax(1).numpy()):
                    preds[pair] = pred
            labels = batch['labels'].numpy()
            # a frame's bytes depend only on how many supporters it connects to
            total = [frame_bytes(spec, tuple(f_t.shape[-2:]), s, n, pose, dtypes).total for n in range(s + 1)]
            for t in thresholds:
                for i, mask in enumerate(connected[t]):
                    best = int(batch['best'][i])
                    fused[t].add(preds[(i, mask)], labels[i], total[sum(mask)],
                                 selected_correctly=bool(mask[best]) if best >= 0 else None)
    finally:
        model.received_on_wire = None
    sweep = []
    for t in thresholds:
        r = fused[t].summary()
        sweep.append({'threshold': t, 'accuracy': r['overall_accuracy'], 'bytes_per_frame': r['bytes_per_frame']})
    return sweep


def add_bis(results: dict[str, dict]) -> None:
    """BIS and the recovered gap for every method of one setting, from its two bounds (in place)."""
    low = results.get('single_degraded', {}).get('overall_accuracy')
    high = results.get('single_normal', {}).get('overall_accuracy')
    for r in results.values():
        if low is None or high is None:
            r['bis'] = r['gap_recovered'] = float('nan')
            continue
        r['bis'] = bis(100 * r['overall_accuracy'], 100 * low, 100 * high, r['bytes_per_frame'])
        r['gap_recovered'] = gap_recovered(r['overall_accuracy'], low, high)


def fmt(value: Optional[float], pct: bool = True, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return '-'
    return f'{100 * value:.{digits}f}' if pct else f'{value:.{digits}f}'
