"""MASH exported to ONNX by role, so that each drone runs only its part of the network (MASH §III, Fig. 2):

    requester.onnx  image [1, 3, H, W] float32 (RGB / 255)
                    -> query [1, Hc, Wc, Q] float32       the query map to broadcast (msg/Request.msg `query`,
                                                          [Hs, Ws, Q] once the batch axis is dropped; the codec
                                                          quantizes it, uint8 by default)
                       own_probs [1, K, H, W] float32     the requester's own class distribution (kept for fusion)
                       self_confidence [1, Hc, Wc] float32  the weight of its own cells in the fusion (kept)
                       own_classes [1, H, W] int64        its own prediction (what it publishes without help)
    supporter.onnx  query [1, Hc, Wc, Q] float32 (the received query, decoded), image [1, 3, H, W] float32
                    -> confidence [1, C] float32          per requester cell (row-major, C = Hc * Wc): the max
                                                          of the smoothed matching distribution
                       match [1, C] int64                 its argmax: a cell of the supporter's grid, or C for
                                                          no match (the warping grid)
                       class_probs [1, C, K] float32      the supporter's per-cell class distribution at `match`
                                                          (zeros where match == C)
                    The node sends the cells with match != C and confidence >= the threshold of roles.json
                    (msg/PatchSegments.msg: grid_height Hc, grid_width Wc, the cell indices ascending, their
                    confidence and class_probs rows, quantized by the codec, uint8 by default).
    sampler.onnx    (geometry 'homography' only) own_probs [1, K, H, W] float32, positions [1, C, 2] float32
                    (pixels u, v; NaN: none) -> labels [1, C, cell, cell] int64: the supporter's classes at
                    the ground plane's positions. supporter.onnx then also outputs positions [1, C, 2], its own
                    expected accuracy per cell of its grid, supporter_confidence [1, C], and own_probs
                    [1, K, H, W]; the runtime fits the plane in between (runtime/onnx_mash.supporter_matches).
    fusion.onnx     own_probs [1, K, H, W], self_confidence [1, Hc, Wc] float32 (from requester.onnx),
                    patch_probs [1, S, C, K], patch_confidence [1, S, C] float32 (every supporter slot's received
                    cells decoded and scattered into the requester's grid; zeros for cells and supporters that
                    sent nothing; slots: the other drones in ascending id)
                    -> classes [1, H, W] int64            the fused segmentation

The backbone runs once per role; a drone that is both requester and supporter in a frame runs it twice.
Models are single files (weights inside), written with torch 2.13's exporter (dynamo; needs onnxscript).
`export_mash_run` also writes roles.json (these tensors, the threshold and the wire dtypes) and
model_card.yaml (training command, measured metrics, the ONNX Runtime check).
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
import torch
import yaml

from .evaluate import UNSEEN_SUFFIX
from .export import export_onnx, fp16_path
from ..runtime.onnx_mash import need_levels, need_map, sendable_cells, supporter_matches
from ..world.geometry import cell_centres
from .mash import CELL_SIZE, NO_LABEL, Mash, role_modules, role_names


def role_io(model: Mash) -> dict[str, tuple[list[str], list[str]]]:
    """Input and output names of each role; a 'pixels' model's patches are class ids per pixel."""
    values, patches = (('labels', 'patch_labels') if model.cfg.patch_sampling == 'pixels'
                       else ('class_probs', 'patch_probs'))
    planar = ['positions', 'supporter_confidence', 'own_probs'] if 'sampler' in role_names(model) else []
    return {
        'requester': (['image'], ['query', 'own_probs', 'self_confidence', 'own_classes']),
        'supporter': (['query', 'image'], ['confidence', 'match', values] + planar),
        'fusion': (['own_probs', 'self_confidence', patches, 'patch_confidence'], ['classes']),
        'sampler': (['own_probs', 'positions'], ['labels']),
    }


def example_inputs(model: Mash) -> dict[str, tuple]:
    """Inputs of the right shapes and dtypes for each role (random values)."""
    h, w = model.image_size
    hc, wc = model.grid
    k, s = model.cfg.num_classes, model.cfg.supporters
    g = torch.Generator().manual_seed(0)
    if model.cfg.patch_sampling == 'pixels':
        patches = torch.randint(0, k + 1, (1, s, hc * wc, CELL_SIZE, CELL_SIZE), generator=g)
        patches = torch.where(patches == k, NO_LABEL, patches)
    else:
        patches = torch.rand(1, s, hc * wc, k, generator=g).softmax(-1)
    return {
        'requester': (torch.rand(1, 3, h, w, generator=g),),
        'supporter': (torch.randn(1, hc, wc, model.cfg.query_size, generator=g), torch.rand(1, 3, h, w, generator=g)),
        'fusion': (torch.rand(1, k, h, w, generator=g).softmax(1), torch.rand(1, hc, wc, generator=g),
                   patches, torch.rand(1, s, hc * wc, generator=g)),
        'sampler': (torch.rand(1, k, h, w, generator=g).softmax(1),
                    torch.rand(1, hc * wc, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])),
    }


def tensor_spec(model: Mash) -> dict:
    """roles.json's description of every role's tensors."""
    h, w = model.image_size
    hc, wc = model.grid
    c, k, q, s = hc * wc, model.cfg.num_classes, model.cfg.query_size, model.cfg.supporters

    def t(shape, dtype, meaning):
        return {'shape': list(shape), 'dtype': dtype, 'meaning': meaning}

    if model.cfg.patch_sampling == 'pixels':
        cs = CELL_SIZE
        values = {'labels': t((1, c, cs, cs), 'int64', f'per requester cell: own classes sampled at label '
                              f'resolution through the sub-cell grid ({NO_LABEL}: pixel not seen)')}
        patches = {'patch_labels': t((1, s, c, cs, cs), 'int64', f'received labels per supporter slot, scattered '
                                     f'into the grid; {NO_LABEL} where nothing came')}
    else:
        values = {'class_probs': t((1, c, k), 'float32', 'own cell distribution at match (0: none)')}
        patches = {'patch_probs': t((1, s, c, k), 'float32', 'received class_probs per supporter slot, '
                                    'scattered into the grid; 0 where nothing came')}

    planar = {}
    if 'sampler' in role_names(model):
        planar = {'positions': t((1, c, 2), 'float32', 'per requester cell: where it lands in the supporter '
                                 '(pixels u, v; NaN: no match)'),
                  'supporter_confidence': t((1, c), 'float32', 'per own cell: the expected accuracy of its own '
                                            'segmentation there (the ground plane\'s cells\' confidence)'),
                  'own_probs': t((1, k, h, w), 'float32', 'own class distribution, for the sampler')}
    spec = {
        'requester': {'file': 'requester.onnx',
                      'inputs': {'image': t((1, 3, h, w), 'float32', 'RGB / 255, channels first')},
                      'outputs': {'query': t((1, hc, wc, q), 'float32', 'query map: Request.query as [Hs, Ws, Q]'),
                                  'own_probs': t((1, k, h, w), 'float32', 'own class distribution, for fusion'),
                                  'self_confidence': t((1, hc, wc), 'float32', 'own cells\' weight, for fusion'),
                                  'own_classes': t((1, h, w), 'int64', 'own segmentation (no help)')}},
        'supporter': {'file': 'supporter.onnx',
                      'inputs': {'query': t((1, hc, wc, q), 'float32', 'the received query map, decoded'),
                                 'image': t((1, 3, h, w), 'float32', 'the supporter\'s RGB / 255')},
                      'outputs': {'confidence': t((1, c), 'float32', 'per requester cell: max matching probability'),
                                  'match': t((1, c), 'int64', f'per requester cell: matched own cell, {c} = no match'),
                                  **values, **planar}},
        'fusion': {'file': 'fusion.onnx',
                   'inputs': {'own_probs': t((1, k, h, w), 'float32', 'requester.onnx own_probs'),
                              'self_confidence': t((1, hc, wc), 'float32', 'requester.onnx self_confidence'),
                              **patches,
                              'patch_confidence': t((1, s, c), 'float32', 'received confidences, same layout; 0 '
                                                    'where nothing came')},
                   'outputs': {'classes': t((1, h, w), 'int64', 'fused segmentation')}},
    }
    if planar:
        spec['sampler'] = {'file': 'sampler.onnx',
                           'inputs': {'own_probs': planar['own_probs'], 'positions': planar['positions']},
                           'outputs': {'labels': values['labels']}}
    return spec


def export_roles(model: Mash, out_dir: str, fp16: bool = False) -> dict[str, str]:
    """Write requester.onnx, supporter.onnx, fusion.onnx and roles.json for a MASH model (its current fusion
    kind and confidence threshold); with `fp16` also their .fp16.onnx twins (export.export_onnx)."""
    if not isinstance(model, Mash):
        raise ValueError(f'{type(model).__name__} has no MASH roles to export (only mash and mash_stacked do)')
    model.eval()
    os.makedirs(out_dir, exist_ok=True)
    modules, examples, io = role_modules(model), example_inputs(model), role_io(model)
    paths = {}
    for role in role_names(model):
        paths[role] = os.path.join(out_dir, f'{role}.onnx')
        export_onnx(modules[role], examples[role], paths[role], *io[role], fp16=fp16)
    hc, wc = model.grid
    with open(os.path.join(out_dir, 'roles.json'), 'w') as f:
        json.dump({'method': getattr(model, 'method_name', type(model).__name__), 'fusion': model.fusion_kind,
                   'image_size': list(model.image_size), 'cell_size': CELL_SIZE, 'grid': [hc, wc],
                   'no_match': hc * wc, 'num_classes': model.cfg.num_classes, 'query_size': model.cfg.query_size,
                   'key_size': model.cfg.key_size, 'supporters': model.cfg.supporters,
                   'confidence_threshold': model.confidence_threshold,
                   'self_confidence_scale': model.self_confidence_scale,
                   'request_need': bool(model.request_need),
                   'patch_sampling': model.cfg.patch_sampling,
                   'geometry': 'homography' if 'sampler' in paths else 'none',
                   **({'plane': model.plane_settings()} if 'sampler' in paths else {}),
                   'precisions': ['fp32', 'fp16'] if fp16 else ['fp32'],
                   'wire': {'query_dtype': model.query_dtype, 'patch_confidence_dtype': model.patch_dtype,
                            'patch_probs_dtype': model.patch_dtype},
                   'roles': tensor_spec(model)}, f, indent=2)
    return paths


def run_swarm_onnx(sessions: dict, target: np.ndarray, supporters: np.ndarray, threshold: float,
                   query_dtype: str, patch_dtype: str, need_scale: Optional[float] = None,
                   plane: Optional[dict] = None) -> tuple[np.ndarray, dict]:
    """One frame through the exported roles as the swarm runs them, the wire's codec in between: target
    [1, 3, H, W] and supporters [S, 3, H, W] float32 -> fused classes [H, W] and the intermediate outputs.
    The fusion role's patch input tells the sampling: class ids per pixel (int64) travel as they are,
    distributions are quantized to `patch_dtype`. `need_scale`: the request carries the need map (the
    requester's self-confidence times this, as uint8 steps) and supporters send only where they beat it.
    `plane`: roles.json's ground-plane settings (geometry 'homography'; `sessions` then has the sampler)."""
    from ..runtime.codec import decode_tensor, encode_tensor
    query, own_probs, self_conf, own_classes = sessions['requester'].run(None, {'image': target})
    sent_query = decode_tensor(encode_tensor(query[0], query_dtype))[None]
    need = None
    if need_scale is not None:
        need = need_levels(need_map(self_conf[0], need_scale))
    s = supporters.shape[0]
    c = self_conf.shape[1] * self_conf.shape[2]
    spec = sessions['fusion'].get_inputs()[2]
    if spec.type == 'tensor(int64)':
        patches = np.full((1, s, *spec.shape[2:]), NO_LABEL, np.int64)
    else:
        patches = np.zeros((1, s, *spec.shape[2:]), np.float32)
    patch_conf = np.zeros((1, s, c), np.float32)
    replies = []
    h, w = target.shape[-2:]
    centres = cell_centres(h, w, CELL_SIZE).astype(np.float64) if plane else None
    for i in range(s):
        confidence, match, values = supporter_matches(sessions['supporter'], sessions.get('sampler'), sent_query,
                                                      supporters[i:i + 1], plane, centres, (h, w), CELL_SIZE, c)
        cells = sendable_cells(confidence[0], match[0], c, threshold, need)
        if cells.size:
            patch_conf[0, i, cells] = decode_tensor(encode_tensor(confidence[0, cells], patch_dtype))
            if patches.dtype == np.int64:
                patches[0, i, cells] = decode_tensor(encode_tensor(values[0, cells].astype(np.uint8), 'uint8'))
            else:
                patches[0, i, cells] = decode_tensor(encode_tensor(values[0, cells], patch_dtype))
        replies.append({'confidence': confidence, 'match': match, 'values': values, 'cells': cells})
    names = [i.name for i in sessions['fusion'].get_inputs()]
    classes = sessions['fusion'].run(None, dict(zip(names, (own_probs, self_conf, patches, patch_conf))))[0]
    return classes[0], {'query': query, 'sent_query': sent_query, 'own_probs': own_probs, 'self_confidence': self_conf,
                        'own_classes': own_classes, 'replies': replies, 'patches': patches,
                        'patch_confidence': patch_conf}


def need_scale(model: Mash) -> Optional[float]:
    """run_swarm_onnx's need_scale for a model as exported: its self-confidence scale when its request carries
    the need map."""
    return model.self_confidence_scale if model.request_need else None


def plane_of(model: Mash) -> Optional[dict]:
    """run_swarm_onnx's `plane` for a model as exported: its plane settings when it exports the sampler."""
    return model.plane_settings() if 'sampler' in role_names(model) else None


def torch_supporter(model: Mash, modules: dict, query: torch.Tensor, image: torch.Tensor) -> tuple:
    """The supporter role in torch as the runtime runs it (supporter_matches): confidence, match, values."""
    out = modules['supporter'](query, image)
    if 'sampler' not in modules:
        return out[:3]
    confidence, match, _, positions, landing, own_probs = out
    planar = model.planar_matches(confidence, match, positions, landing)
    return planar[0], planar[1], modules['sampler'](own_probs, planar[2])


@torch.no_grad()
def check_fp16(model: Mash, paths: dict[str, str], loader, frames: int) -> dict:
    """The half-precision roles against the fp32 ones, the whole swarm pipeline (roles + codec) on the same
    dataset frames: the share of fused pixels that agree, and each pipeline's accuracy on the labels."""
    from ..runtime.onnx_method import onnx_session
    sessions = {precision: {r: onnx_session(fp16_path(p) if precision == 'fp16' else p, ['CPUExecutionProvider'])
                            for r, p in paths.items()} for precision in ('fp32', 'fp16')}
    same = right32 = right16 = labelled = seen = 0
    for batch in loader:
        for i in range(batch['target'].shape[0]):
            if seen >= frames:
                break
            seen += 1
            target, supporters = batch['target'][i:i + 1].numpy(), batch['supporters'][i].numpy()
            fused = {p: run_swarm_onnx(s, target, supporters, model.confidence_threshold, model.query_dtype,
                                       model.patch_dtype, need_scale(model), plane_of(model))[0] for p, s in sessions.items()}
            labels = batch['labels'][i].numpy()
            known = labels != 255
            same += int((fused['fp32'] == fused['fp16']).sum())
            right32 += int((fused['fp32'] == labels)[known].sum())
            right16 += int((fused['fp16'] == labels)[known].sum())
            labelled += int(known.sum())
        if seen >= frames:
            break
    pixels = seen * int(np.prod(model.image_size))
    return {'frames': seen, 'fused_classes_equal_share': round(same / max(pixels, 1), 6),
            'fused_accuracy_fp32': round(right32 / max(labelled, 1), 6),
            'fused_accuracy_fp16': round(right16 / max(labelled, 1), 6)}


@torch.no_grad()
def check_onnx(model: Mash, paths: dict[str, str], loader, frames: int) -> dict:
    """ONNX Runtime against torch on dataset frames: each role's outputs on the same inputs (max abs
    difference, argmax / match agreement), and the whole swarm pipeline (roles + codec) against the model's
    batched inference (`Mash.infer`, what evaluation scores)."""
    import onnxruntime as ort
    sessions = {r: ort.InferenceSession(p, providers=['CPUExecutionProvider']) for r, p in paths.items()}
    modules = role_modules(model)
    pixels = model.cfg.patch_sampling == 'pixels'
    label_agree = label_n = 0
    diff = {'requester': 0.0, 'supporter': 0.0}
    own_agree = match_agree = fusion_agree = pipeline_agree = 0
    own_n = match_n = fusion_n = pipeline_n = 0
    seen = 0
    for batch in loader:
        for i in range(batch['target'].shape[0]):
            if seen >= frames:
                break
            seen += 1
            target = batch['target'][i:i + 1].contiguous()
            supporters = batch['supporters'][i].contiguous()
            classes, mid = run_swarm_onnx(sessions, target.numpy(), supporters.numpy(), model.confidence_threshold,
                                          model.query_dtype, model.patch_dtype, need_scale(model),
                                          plane_of(model))
            ref = modules['requester'](target)
            for got, want in zip((mid['query'], mid['own_probs'], mid['self_confidence']), ref[:3]):
                diff['requester'] = max(diff['requester'], float(np.abs(got - want.numpy()).max()))
            own_agree += int((mid['own_classes'] == ref[3].numpy()).sum())
            own_n += ref[3].numel()
            query = torch.from_numpy(mid['sent_query'])     # what the supporter received
            for j, reply in enumerate(mid['replies']):
                conf, match, values = torch_supporter(model, modules, query, supporters[j:j + 1])
                diff['supporter'] = max(diff['supporter'], float(np.abs(reply['confidence'] - conf.numpy()).max()))
                if pixels:     # class ids: the share that differ, at the matched cells
                    same = reply['values'] == values.numpy()
                    label_agree += int(same.sum())
                    label_n += same.size
                else:
                    diff['supporter'] = max(diff['supporter'], float(np.abs(reply['values'] - values.numpy()).max()))
                match_agree += int((reply['match'] == match.numpy()).sum())
                match_n += match.numel()
            fusion_in = [torch.from_numpy(x) for x in (mid['own_probs'], mid['self_confidence'], mid['patches'],
                                                       mid['patch_confidence'])]
            fused = modules['fusion'](*fusion_in)
            names = [i.name for i in sessions['fusion'].get_inputs()]
            onnx_fused = sessions['fusion'].run(None, dict(zip(names, (mid['own_probs'], mid['self_confidence'],
                                                                        mid['patches'], mid['patch_confidence']))))[0]
            fusion_agree += int((onnx_fused == fused.numpy()).sum())
            fusion_n += fused.numel()
            frame = {'target': target, 'supporters': supporters[None]}
            offline = model.infer(model.handshake(frame))
            pipeline_agree += int((classes == offline['scores'].argmax(1)[0].numpy()).sum())
            pipeline_n += classes.size
        if seen >= frames:
            break
    return {'frames': seen,
            'requester_max_abs_diff': diff['requester'],
            'requester_own_classes_agreement': own_agree / max(own_n, 1),
            'supporter_max_abs_diff': diff['supporter'],
            'supporter_match_agreement': match_agree / max(match_n, 1),
            **({'supporter_label_agreement': label_agree / max(label_n, 1)} if pixels else {}),
            'fusion_classes_agreement': fusion_agree / max(fusion_n, 1),
            'swarm_pipeline_vs_offline_agreement': pipeline_agree / max(pipeline_n, 1)}


def _manifest_summary(data_dir: str) -> dict:
    with open(os.path.join(data_dir, 'manifest.json')) as f:
        manifest = json.load(f)
    return {'frames': manifest['frames'], 'seed': manifest['seed']}


def export_mash_run(run_dir: str, out_dir: str, datasets_root: str = 'datasets', fusion: Optional[str] = None,
                    threshold: Optional[float] = None, check_frames: int = 16, fp16: bool = False,
                    test_data: Optional[str] = None, unseen_data: Optional[str] = None) -> dict:
    """Export a MASH run's best.pt by role (optionally with another fusion kind or threshold), check ONNX
    Runtime against torch on test frames (with `fp16`, the half-precision swarm pipeline against the fp32 one
    on the same frames), write roles.json and model_card.yaml. Returns the card."""
    from .mash_data import ObstructionLoader
    from .mash_eval import CALIBRATION, evaluate_mash_run, load_run, train_command, variant_name

    model, ckpt = load_run(run_dir)      # with the inference settings calibrated on the validation split
    calibrated = None
    if os.path.exists(os.path.join(run_dir, CALIBRATION)):
        with open(os.path.join(run_dir, CALIBRATION)) as f:
            calibrated = json.load(f)
    if fusion is not None:
        model.fusion_kind = fusion
    if threshold is not None:
        model.confidence_threshold = threshold
    c = ckpt['config']
    trained_on = c.get('data_dir') or os.path.join(datasets_root, c['setting'])
    data = test_data or trained_on
    paths = export_roles(model, out_dir, fp16=fp16)
    loader = ObstructionLoader(data, c['setting'], 'test', 4, shuffle=False)
    check = check_onnx(model, paths, loader, check_frames)
    name = variant_name(model.fusion_kind, model.confidence_threshold, model.request_need,
                        model.geometry == 'homography')
    variant = evaluate_mash_run(run_dir, data, 'test', progress=False)['variants'].get(name)
    unseen_dir = unseen_data or os.path.normpath(data) + UNSEEN_SUFFIX   # world seeds no split uses
    unseen = (evaluate_mash_run(run_dir, unseen_dir, 'test', progress=False)['variants'].get(name)
              if os.path.exists(os.path.join(unseen_dir, 'manifest.json')) else None)
    card = {
        'name': os.path.basename(os.path.normpath(out_dir)),
        'method': c['method'], 'setting': c['setting'], 'seed': c['seed'], 'fusion': model.fusion_kind,
        'confidence_threshold': model.confidence_threshold,
        'self_confidence_scale': model.self_confidence_scale, 'request_need': bool(model.request_need),
        'geometry': model.geometry, **({'plane': model.plane_settings()} if plane_of(model) else {}),
        'trained_with': train_command(c, run_dir),
        'exported_with': f'collab-perception export --run {run_dir} --out {out_dir} --fusion {model.fusion_kind} '
                         f'--threshold {model.confidence_threshold:g}' + (' --fp16' if fp16 else '')
                         + (f' --test-data {test_data}' if test_data else '')
                         + (f' --unseen-data {unseen_data}' if unseen_data else ''),
        **({'calibrated_with': f'python scripts/evaluate_mash.py {run_dir} --data {calibrated["data"]} --split test '
                               '--calibrate (the fusion, scale, threshold, need map and ground plane, chosen on the '
                               'validation split; the plane-cell confidence fitted on the training split)'}
           if calibrated else {}),
        'training': {'steps': ckpt['step'], 'minutes': round(ckpt['elapsed_s'] / 60, 1), 'model': c['model']},
        'dataset': {'path': trained_on, **_manifest_summary(trained_on)},
        **({'test_dataset': {'path': data, 'frames': loader.manifest['frames'], 'seed': loader.manifest['seed']}}
           if data != trained_on else {}),
        'metrics_test_split': ({k: (round(v, 4) if isinstance(v, float) else v) for k, v in variant.items()}
                               if variant else 'not evaluated for this fusion / threshold'),
        'metrics_unseen_worlds': ({'dataset': unseen_dir,
                                   **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in unseen.items()}}
                                  if unseen else f'not generated ({unseen_dir})'),
        'onnx_check': check,
        'files': {r: os.path.basename(p) for r, p in paths.items()} | {'roles': 'roles.json'},
    }
    if fp16:
        card['onnx_fp16_check'] = check_fp16(model, paths, loader, check_frames)
        card['files_fp16'] = {r: os.path.basename(fp16_path(p)) for r, p in paths.items()}
    with open(os.path.join(out_dir, 'model_card.yaml'), 'w') as f:
        yaml.safe_dump(card, f, sort_keys=False)
    return card
