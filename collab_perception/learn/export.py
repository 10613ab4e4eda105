"""ONNX export split by role, so that each drone runs only its part of the network (Who2com §III-B):

    encoder.onnx   image [1, 3, H, W] float in [0, 1] -> features [1, C, H/4, W/4], key [1, k], query [1, m],
                   own_classes [1, H, W] int64 (the own head's argmax), and for When2com self_score [1]
    matcher.onnx   query [1, m], key [1, k] -> score [1]                                        (Eq. 2-3)
    decoder.onnx   own [1, C, h, w], received [1, C, h, w] -> classes [1, H, W] int64            (Eq. 4)

`received` is what the requester got: the selected supporter's features (argmax), or for the gate the
normalized weighted sum of its own and the selected supporters' features (runtime/onnx_method.py). Models
are written as single files (weights inside), with torch 2.13's exporter (dynamo, which needs onnxscript).
A model card (model_card.yaml) goes next to them: how it was trained and its measured metrics. With `fp16`
each role also gets a half-precision twin, <role>.fp16.onnx (weights and arithmetic in float16, inputs and
outputs float32 as in the fp32 file, so the runtime feeds both alike): what a drone with `precision: fp16`
loads, for GPUs and Jetsons whose fp16 units it is made for; the export checks it against the fp32 file.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from typing import Optional, Sequence

import numpy as np
import torch
import yaml
from torch import nn

from ..config import PRECISION_SUFFIXES
from .models import CollabModel, When2com, _Handshake
from .train import TrainConfig

OPSET = 18


class EncoderRole(nn.Module):
    def __init__(self, model: _Handshake):
        super().__init__()
        self.model = model
        self.gate = isinstance(model, When2com)

    def forward(self, image: torch.Tensor):
        m = self.model
        f = m.encoder(image)
        key = m.key(f)
        query = m.query(f)
        own = m.own_head(f).argmax(1)
        if self.gate:
            self_score = m.match(query, key.unsqueeze(1))[:, 0]
            return f, key, query, own, self_score
        return f, key, query, own


class MatcherRole(nn.Module):
    def __init__(self, model: _Handshake):
        super().__init__()
        self.model = model

    def forward(self, query: torch.Tensor, key: torch.Tensor):
        return self.model.match(query, key.unsqueeze(1))[:, 0]


class DecoderRole(nn.Module):
    def __init__(self, model: _Handshake):
        super().__init__()
        self.model = model

    def forward(self, own: torch.Tensor, received: torch.Tensor):
        return self.model.decoder(torch.cat([own, received], 1)).argmax(1)


def fp16_path(path: str) -> str:
    """models/x/encoder.onnx -> models/x/encoder.fp16.onnx (config.PRECISION_SUFFIXES)"""
    return path[:-len(PRECISION_SUFFIXES['fp32'])] + PRECISION_SUFFIXES['fp16']


class HalfPrecision(nn.Module):
    """A role with its weights and arithmetic in float16 and the fp32 file's interface: float inputs cast
    to float16 on entry, float outputs back to float32 on exit (integer ones, e.g. argmax classes, as they are)."""

    def __init__(self, role: nn.Module):
        super().__init__()
        self.role = copy.deepcopy(role).half().eval()

    def forward(self, *args):
        outs = self.role(*(a.half() if a.is_floating_point() else a for a in args))
        single = not isinstance(outs, tuple)
        outs = tuple(o.float() if o.is_floating_point() else o for o in ((outs,) if single else outs))
        return outs[0] if single else outs


def export_onnx(module: nn.Module, args: tuple, path: str, inputs: list[str], outputs: list[str],
                fp16: bool = False) -> None:
    """One role as one ONNX file (weights inside); with `fp16` also its half-precision twin (fp16_path)."""
    logging.getLogger('torch.onnx').setLevel(logging.ERROR)
    variants = [(module, path)] + ([(HalfPrecision(module), fp16_path(path))] if fp16 else [])
    for m, target in variants:
        m.eval()
        program = torch.onnx.export(m, args, input_names=inputs, output_names=outputs, opset_version=OPSET,
                                    dynamo=True, external_data=False, verbose=False)
        program.save(target, external_data=False)


def compare_fp16(paths: dict[str, str], feeds: dict[str, Sequence[dict]]) -> dict[str, dict]:
    """Each role's fp16 twin against its fp32 file on the same inputs (`feeds`: role -> input dicts): per
    float output the largest absolute difference and the largest fp32 magnitude, per integer output (classes)
    the share of equal elements."""
    from ..runtime.onnx_method import onnx_session
    out = {}
    for role, path in paths.items():
        s32 = onnx_session(path, ['CPUExecutionProvider'])
        s16 = onnx_session(fp16_path(path), ['CPUExecutionProvider'])
        names = [o.name for o in s32.get_outputs()]
        floats = {o.name: o.type == 'tensor(float)' for o in s32.get_outputs()}     # the others: classes
        stats: dict[str, list] = {n: [0.0, 0.0] for n in names}
        for feed in feeds.get(role, ()):
            for name, a, b in zip(names, s32.run(None, feed), s16.run(None, feed)):
                if floats[name]:
                    stats[name][0] = max(stats[name][0], float(np.abs(a.astype(np.float64) - b).max()))
                    stats[name][1] = max(stats[name][1], float(np.abs(a).max()))
                else:
                    stats[name][0] += int((a == b).sum())
                    stats[name][1] += int(a.size)
        out[role] = {name: ({'max_abs_diff': round(x, 6), 'max_abs_fp32': round(y, 4)} if floats[name]
                            else {'equal_share': round(x / max(y, 1), 6)}) for name, (x, y) in stats.items()}
    return out



def export_roles(model: CollabModel, out_dir: str, image_size: tuple[int, int], setting: str = '',
                 card: Optional[dict] = None, fp16: bool = False) -> dict[str, str]:
    """Write encoder.onnx, matcher.onnx, decoder.onnx (and model_card.yaml) for a handshake model; with
    `fp16` also their .fp16.onnx twins. Returns the fp32 paths by role."""
    if not isinstance(model, _Handshake):
        raise ValueError(f'{model.method_name} has no handshake roles to export (only who2com, who2com_nomsg, '
                         'when2com do)')
    model.eval()
    os.makedirs(out_dir, exist_ok=True)
    h, w = image_size
    cfg = model.cfg
    image = torch.rand(1, 3, h, w)
    with torch.no_grad():
        features = model.encoder(image)
    paths = {role: os.path.join(out_dir, f'{role}.onnx') for role in ('encoder', 'matcher', 'decoder')}
    enc = EncoderRole(model)
    export_onnx(enc, (image,), paths['encoder'], ['image'],
                ['features', 'key', 'query', 'own_classes'] + (['self_score'] if enc.gate else []), fp16)
    export_onnx(MatcherRole(model), (torch.rand(1, cfg.query_size), torch.rand(1, cfg.key_size)),
                paths['matcher'], ['query', 'key'], ['score'], fp16)
    # two distinct example tensors: the exporter folds one tensor passed twice into a single graph input
    export_onnx(DecoderRole(model), (features, torch.rand_like(features)), paths['decoder'], ['own', 'received'],
                ['classes'], fp16)
    if card is not None:
        with open(os.path.join(out_dir, 'model_card.yaml'), 'w') as f:
            yaml.safe_dump(card, f, sort_keys=False)
    with open(os.path.join(out_dir, 'roles.json'), 'w') as f:
        json.dump({'method': model.method_name, 'setting': setting, 'image_size': [h, w],
                   'precisions': ['fp32', 'fp16'] if fp16 else ['fp32'],
                   'feature_shape': list(features.shape[1:]),
                   'query_size': cfg.query_size, 'key_size': cfg.key_size, 'num_classes': cfg.num_classes,
                   'gate': enc.gate, 'gate_threshold': cfg.gate_threshold}, f, indent=2)
    return paths


def training_command(c: dict) -> str:
    """The `collab-perception train` command line of a run's config.json / checkpoint config."""
    cmd = (f'collab-perception train --method {c["method"]} --setting {c["setting"]} --iterations {c["iterations"]} '
           f'--batch-size {c["batch_size"]} --lr {c["lr"]} --seed {c["seed"]}')
    # a run on another dataset (the mixed variant) or in another folder is reproducible only with both spelled out
    default = TrainConfig(method=c['method'], setting=c['setting']).resolve()
    for option, key, path in (('--data', 'data_dir', default.data_dir), ('--out', 'out_dir', default.out_dir)):
        if c.get(key) and os.path.normpath(c[key]) != path:
            cmd += f' {option} {c[key]}'
    m = c['model']
    if m.get('selection', 'soft') != 'soft':
        cmd += f' --selection {m["selection"]}'
    if c.get('init_from'):
        cmd += f' --init-from {c["init_from"]}'
    if m.get('freeze_encoder'):
        cmd += ' --freeze-encoder'
    if c.get('select_by', 'accuracy') != 'accuracy':
        cmd += f' --select-by {c["select_by"]}'
    return cmd


def export_run(run_dir: str, out_dir: str, datasets_root: str = 'datasets', check_frames: int = 16,
               fp16: bool = False) -> dict:
    """Export a run's best.pt by role, check ONNX Runtime against torch on test frames (and with `fp16` the
    half-precision twins against the fp32 files on the same frames), write the model card."""
    import numpy as np
    import onnxruntime as ort

    from .data import FrameLoader
    from .evaluate import evaluate_run, evaluate_unseen, unseen_twin
    from .train import load_model

    model, ckpt = load_model(os.path.join(run_dir, 'best.pt'))
    c = ckpt['config']
    if model.cfg.valid_mask:
        raise ValueError(f'{run_dir}: a --valid-mask run needs its supporters to send their warp\'s validity, which '
                         'the ONNX roles and the swarm do not carry yet; it can be trained and evaluated offline only')
    data = os.path.join(datasets_root, c['setting'])
    if c.get('data_dir') and os.path.exists(os.path.join(c['data_dir'], 'manifest.json')):
        data = c['data_dir']            # a variant of the setting (the mixed one) is scored on its own frames
    test = evaluate_run(run_dir, data, 'test', progress=False)
    if 'gate_threshold' in test:        # When2com: the threshold chosen on the validation split goes with it
        model.cfg.gate_threshold = test['gate_threshold']
    loader = FrameLoader(data, c['setting'], 'test', 1, shuffle=False, limit=check_frames)
    size = (loader.manifest['image']['height'], loader.manifest['image']['width'])
    paths = export_roles(model, out_dir, size, setting=c['setting'], fp16=fp16)
    sessions = {r: ort.InferenceSession(p, providers=['CPUExecutionProvider']) for r, p in paths.items()}
    max_diff, agree, pixels = 0.0, 0, 0
    feeds: dict[str, list] = {'encoder': [], 'matcher': [], 'decoder': []}
    with torch.no_grad():
        for batch in loader:
            image = batch['target']
            f, key, query, own = (o for o in sessions['encoder'].run(None, {'image': image.numpy()})[:4])
            tf = model.encoder(image)
            max_diff = max(max_diff, float(np.abs(f - tf.numpy()).max()), float(np.abs(key - model.key(tf).numpy()).max()))
            sup = model.encoder(batch['supporters'][:, 0])
            classes = sessions['decoder'].run(None, {'own': f, 'received': sup.numpy()})[0]
            feeds['encoder'].append({'image': image.numpy()})
            feeds['matcher'].append({'query': query, 'key': key})
            feeds['decoder'].append({'own': f, 'received': sup.numpy()})
            ref = model.decoder(torch.cat([tf, sup], 1)).argmax(1).numpy()
            agree += int((classes == ref).sum())
            pixels += ref.size
    unseen = evaluate_unseen(run_dir, datasets_root, c['setting'], progress=False, data_dir=data)
    metric_keys = ('frames', 'overall_accuracy', 'miou', 'own_accuracy', 'own_miou', 'selection_accuracy',
                   'bytes_per_frame')
    card = {
        'name': os.path.basename(os.path.normpath(out_dir)),
        'method': c['method'], 'setting': c['setting'], 'seed': c['seed'],
        'trained_with': training_command(c),
        'init_from_trained_with': (training_command(torch.load(c['init_from'], map_location='cpu',
                                                               weights_only=False)['config'])
                                   if c.get('init_from') and os.path.exists(c['init_from']) else None),
        'exported_with': f'collab-perception export --run {run_dir} --out {out_dir}' + (' --fp16' if fp16 else ''),
        'training': {'steps': ckpt['step'], 'minutes': round(ckpt['elapsed_s'] / 60, 1), 'model': c['model']},
        'dataset': {'path': data, 'frames': loader.manifest['frames'], 'seed': loader.manifest['seed'],
                    # what a swarm running this model should degrade with (swarm.source.degrade)
                    'degradation': {k: v for k, v in (loader.manifest.get('degradation') or {}).items()
                                    if k in ('kernel_min', 'kernel_max', 'reference_width', 'noise_std_min',
                                             'noise_std_max')} or None},
        **({'gate_threshold': test['gate_threshold'], 'run_with': 'select: threshold, score_threshold: '
            f'{test["gate_threshold"]} (the drone config)'} if 'gate_threshold' in test else {}),
        'metrics_test_split': {k: (round(v, 4) if isinstance(v, float) else v) for k, v in test.items()
                               if k in metric_keys},
        'metrics_unseen_worlds': ({'dataset': unseen_twin(data),
                                   **{k: (round(v, 4) if isinstance(v, float) else v)
                                      for k, v in unseen.items() if k in metric_keys}}
                                  if unseen else 'not generated (datasets/<setting>-unseen)'),
        'onnx_check': {'frames': check_frames, 'max_abs_diff_features_key': max_diff,
                       'decoder_argmax_agreement': agree / max(pixels, 1)},
        'files': {r: os.path.basename(p) for r, p in paths.items()},
    }
    if fp16:
        card['onnx_fp16_check'] = {'frames': check_frames, 'against': 'the fp32 files, same inputs',
                                   **compare_fp16(paths, feeds)}
        card['files_fp16'] = {r: os.path.basename(fp16_path(p)) for r, p in paths.items()}
    with open(os.path.join(out_dir, 'model_card.yaml'), 'w') as f:
        yaml.safe_dump(card, f, sort_keys=False)
    report = {'max_abs_diff': f'{max_diff:.2e}', 'argmax_agreement': f'{agree / max(pixels, 1):.5f}',
              'test_accuracy': f'{test["overall_accuracy"]:.4f}'}
    if fp16:
        report['fp16_decoder_classes_equal'] = f'{card["onnx_fp16_check"]["decoder"]["classes"]["equal_share"]:.5f}'
    return report
