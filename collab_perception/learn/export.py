"""ONNX export split by role, so that each drone runs only its part of the network (Who2com §III-B):

    encoder.onnx   image [1, 3, H, W] float in [0, 1] -> features [1, C, H/4, W/4], key [1, k], query [1, m],
                   own_classes [1, H, W] int64 (the own head's argmax), and for When2com self_score [1]
    matcher.onnx   query [1, m], key [1, k] -> score [1]                                        (Eq. 2-3)
    decoder.onnx   own [1, C, h, w], received [1, C, h, w] -> classes [1, H, W] int64            (Eq. 4)

`received` is what the requester got: the selected supporter's features (argmax), or for the gate the
normalized weighted sum of its own and the selected supporters' features (runtime/onnx_method.py). Models
are written as single files (weights inside), with torch 2.13's exporter (dynamo, which needs onnxscript).
A model card (model_card.yaml) goes next to them: how it was trained and its measured metrics.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import torch
import yaml
from torch import nn

from .models import CollabModel, When2com, _Handshake

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


def _export(module: nn.Module, args: tuple, path: str, inputs: list[str], outputs: list[str]) -> None:
    module.eval()
    program = torch.onnx.export(module, args, input_names=inputs, output_names=outputs, opset_version=OPSET,
                                dynamo=True, external_data=False, verbose=False)
    program.save(path, external_data=False)


def export_roles(model: CollabModel, out_dir: str, image_size: tuple[int, int], setting: str = '',
                 card: Optional[dict] = None) -> dict[str, str]:
    """Write encoder.onnx, matcher.onnx, decoder.onnx (and model_card.yaml) for a handshake model."""
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
    _export(enc, (image,), paths['encoder'], ['image'],
            ['features', 'key', 'query', 'own_classes'] + (['self_score'] if enc.gate else []))
    _export(MatcherRole(model), (torch.rand(1, cfg.query_size), torch.rand(1, cfg.key_size)), paths['matcher'],
            ['query', 'key'], ['score'])
    # two distinct example tensors: the exporter folds one tensor passed twice into a single graph input
    _export(DecoderRole(model), (features, torch.rand_like(features)), paths['decoder'], ['own', 'received'],
            ['classes'])
    if card is not None:
        with open(os.path.join(out_dir, 'model_card.yaml'), 'w') as f:
            yaml.safe_dump(card, f, sort_keys=False)
    with open(os.path.join(out_dir, 'roles.json'), 'w') as f:
        json.dump({'method': model.method_name, 'setting': setting, 'image_size': [h, w],
                   'feature_shape': list(features.shape[1:]),
                   'query_size': cfg.query_size, 'key_size': cfg.key_size, 'num_classes': cfg.num_classes,
                   'gate': enc.gate, 'gate_threshold': cfg.gate_threshold}, f, indent=2)
    return paths


def training_command(c: dict) -> str:
    """The `collab-perception train` command line of a run's config.json / checkpoint config."""
    cmd = (f'collab-perception train --method {c["method"]} --setting {c["setting"]} --iterations {c["iterations"]} '
           f'--batch-size {c["batch_size"]} --lr {c["lr"]} --seed {c["seed"]}')
    m = c['model']
    if m.get('selection', 'soft') != 'soft':
        cmd += f' --selection {m["selection"]}'
    if c.get('init_from'):
        cmd += f' --init-from {c["init_from"]}'
    if m.get('freeze_encoder'):
        cmd += ' --freeze-encoder'
    return cmd


def export_run(run_dir: str, out_dir: str, datasets_root: str = 'datasets', check_frames: int = 16) -> dict:
    """Export a run's best.pt by role, check ONNX Runtime against torch on test frames, write the model card."""
    import numpy as np
    import onnxruntime as ort

    from .data import FrameLoader
    from .evaluate import evaluate_run, evaluate_unseen, unseen_dataset
    from .train import load_model

    model, ckpt = load_model(os.path.join(run_dir, 'best.pt'))
    c = ckpt['config']
    data = os.path.join(datasets_root, c['setting'])
    loader = FrameLoader(data, c['setting'], 'test', 1, shuffle=False, limit=check_frames)
    size = (loader.manifest['image']['height'], loader.manifest['image']['width'])
    paths = export_roles(model, out_dir, size, setting=c['setting'])
    sessions = {r: ort.InferenceSession(p, providers=['CPUExecutionProvider']) for r, p in paths.items()}
    max_diff, agree, pixels = 0.0, 0, 0
    with torch.no_grad():
        for batch in loader:
            image = batch['target']
            f, key, query, own = (o for o in sessions['encoder'].run(None, {'image': image.numpy()})[:4])
            tf = model.encoder(image)
            max_diff = max(max_diff, float(np.abs(f - tf.numpy()).max()), float(np.abs(key - model.key(tf).numpy()).max()))
            sup = model.encoder(batch['supporters'][:, 0])
            classes = sessions['decoder'].run(None, {'own': f, 'received': sup.numpy()})[0]
            ref = model.decoder(torch.cat([tf, sup], 1)).argmax(1).numpy()
            agree += int((classes == ref).sum())
            pixels += ref.size
    test = evaluate_run(run_dir, data, 'test', progress=False)
    unseen = evaluate_unseen(run_dir, datasets_root, c['setting'], progress=False)
    metric_keys = ('frames', 'overall_accuracy', 'miou', 'own_accuracy', 'own_miou', 'selection_accuracy',
                   'bytes_per_frame')
    card = {
        'name': os.path.basename(os.path.normpath(out_dir)),
        'method': c['method'], 'setting': c['setting'], 'seed': c['seed'],
        'trained_with': training_command(c),
        'init_from_trained_with': (training_command(torch.load(c['init_from'], map_location='cpu',
                                                               weights_only=False)['config'])
                                   if c.get('init_from') and os.path.exists(c['init_from']) else None),
        'exported_with': f'collab-perception export --run {run_dir} --out {out_dir}',
        'training': {'steps': ckpt['step'], 'minutes': round(ckpt['elapsed_s'] / 60, 1), 'model': c['model']},
        'dataset': {'path': data, 'frames': loader.manifest['frames'], 'seed': loader.manifest['seed'],
                    # what a swarm running this model should degrade with (swarm.source.degrade)
                    'degradation': {k: v for k, v in (loader.manifest.get('degradation') or {}).items()
                                    if k in ('kernel_min', 'kernel_max', 'reference_width', 'noise_std_min',
                                             'noise_std_max')} or None},
        'metrics_test_split': {k: (round(v, 4) if isinstance(v, float) else v) for k, v in test.items()
                               if k in metric_keys},
        'metrics_unseen_worlds': ({'dataset': unseen_dataset(datasets_root, c['setting']),
                                   **{k: (round(v, 4) if isinstance(v, float) else v)
                                      for k, v in unseen.items() if k in metric_keys}}
                                  if unseen else 'not generated (datasets/<setting>-unseen)'),
        'onnx_check': {'frames': check_frames, 'max_abs_diff_features_key': max_diff,
                       'decoder_argmax_agreement': agree / max(pixels, 1)},
        'files': {r: os.path.basename(p) for r, p in paths.items()},
    }
    with open(os.path.join(out_dir, 'model_card.yaml'), 'w') as f:
        yaml.safe_dump(card, f, sort_keys=False)
    return {'max_abs_diff': f'{max_diff:.2e}', 'argmax_agreement': f'{agree / max(pixels, 1):.5f}',
            'test_accuracy': f'{test["overall_accuracy"]:.4f}'}
