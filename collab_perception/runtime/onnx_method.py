"""The learned handshake on ONNX Runtime: each drone node loads only its role of the exported network.

    perception (every drone)  encoder.onnx: image -> features, key, query, own classes (+ self-score)
    matcher (supporters)      matcher.onnx: (query, key) -> score; with pose warping also encoder.onnx,
                              to encode its view warped into the requester's (Who2com §IV-B)
    fusion (requester)        decoder.onnx: (own features, received) -> classes

A model directory is what `collab-perception export` writes: encoder/matcher/decoder.onnx, roles.json
(shapes, method, whether it has a gate, the setting it was trained on) and model_card.yaml.
Execution providers come from config in order of preference (TensorRT, CUDA, CPU); `providers_used`
reports what each session really got, not what is available. `precision` picks the files: fp32
(<role>.onnx) or fp16 (<role>.fp16.onnx, `collab-perception export --fp16`; same inputs and outputs).
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np

from ..config import PRECISION_SUFFIXES, resource_path
from .methods import EncoderOutput, Method, register_method

ROLES = ('encoder', 'matcher', 'decoder')
WARPED_SETTINGS = ('accurate-pose', 'noisy-pose', 'random-exploration')


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def resolve_model_dir(model_dir: str) -> str:
    return model_dir if os.path.isabs(model_dir) else resource_path(model_dir)


def read_roles_json(model_dir: str) -> dict:
    path = resolve_model_dir(model_dir)
    info_path = os.path.join(path, 'roles.json')
    if not os.path.exists(info_path):
        raise FileNotFoundError(f'{path}: no roles.json; export a model with `collab-perception export`')
    with open(info_path) as f:
        return json.load(f)


def onnxruntime():
    """The ONNX Runtime module, CPU or GPU build, whichever is installed (they cannot be installed together)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError('ONNX Runtime is not installed: pip install "collab_perception[cpu]" (onnxruntime), or on '
                          'a CUDA / Jetson machine "collab_perception[gpu]" or NVIDIA\'s onnxruntime-gpu wheel '
                          '(docs/DEPLOY.md)') from None
    return ort


def onnx_session(path: str, providers: Sequence, threads: int = 1):
    """An ONNX Runtime session as every drone node opens one: `threads` intra-op threads, one inter-op
    thread, warnings off; `providers` must be available ones (names, or (name, options) pairs)."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=list(providers))


class OnnxRoleMethod(Method):
    """A method whose network is exported as one ONNX file per role. A node asks for its node roles
    (encoder: perception, matcher: matcher, decoder: fusion); ROLE_FILES maps them to the files."""

    ROLE_FILES = {'encoder': 'encoder', 'matcher': 'matcher', 'decoder': 'decoder'}

    def __init__(self, model_dir: str = '', roles: Sequence[str] = ROLES,
                 providers: Sequence[str] = ('CPUExecutionProvider',), threads: int = 1,
                 provider_options: Optional[dict] = None, precision: str = 'fp32', **_unused):
        ort = onnxruntime()
        if precision not in PRECISION_SUFFIXES:
            raise ValueError(f'unknown precision {precision!r}; valid: {", ".join(PRECISION_SUFFIXES)}')
        self.precision = precision
        if not model_dir:
            raise ValueError(f'method {self.name!r} needs a model directory (drones[].models.dir in config/swarm.yaml)')
        self.info = read_roles_json(model_dir)
        self.model_dir = resolve_model_dir(model_dir)
        self.num_classes = int(self.info['num_classes'])
        available = set(ort.get_available_providers())
        wanted = [p for p in providers if p in available]
        if not wanted:
            raise ValueError(f'none of the execution providers {list(providers)} is available '
                             f'(available: {sorted(available)})')
        self._threads = threads
        # ONNX Runtime takes (name, options) pairs; options of providers this machine lacks never reach it
        options = provider_options or {}
        self._providers = [(p, dict(options[p])) if p in options else p for p in wanted]
        self.sessions = {}
        self.load(roles)

    def load(self, roles: Sequence[str]) -> None:
        """Open ONNX Runtime sessions for these node roles (those already open stay)."""
        for role in roles:
            if role not in self.ROLE_FILES:
                raise ValueError(f'unknown role {role!r}; roles: {", ".join(self.ROLE_FILES)}')
            if role in self.sessions:
                continue
            file = os.path.join(self.model_dir, self.ROLE_FILES[role] + PRECISION_SUFFIXES[self.precision])
            if not os.path.exists(file):
                hint = (' (precision fp16 needs the half-precision export: collab-perception export --fp16)'
                        if self.precision == 'fp16' else '')
                raise FileNotFoundError(f'{file} is missing{hint}')
            self.sessions[role] = onnx_session(file, self._providers, self._threads)

    @property
    def providers_used(self) -> dict[str, list[str]]:
        """What each session really got (not what is available)."""
        return {self.ROLE_FILES[role]: s.get_providers() for role, s in self.sessions.items()}

    def describe(self) -> str:
        used = ', '.join(f'{r}: {"/".join(p)}' for r, p in self.providers_used.items())
        return f'{self.name} ({os.path.basename(self.model_dir)}, {self.precision}; {used})'

    def _session(self, role: str):
        try:
            return self.sessions[role]
        except KeyError:
            raise RuntimeError(f'this node did not load the {role} role') from None

    def image_input(self, image: np.ndarray) -> np.ndarray:
        """An HxWx3 uint8 camera image -> the [1, 3, H, W] float32 (RGB / 255) every role takes."""
        h, w = self.info['image_size']
        if image.shape != (h, w, 3):
            raise ValueError(f'expected a {h}x{w}x3 image (the model was trained at that size), got {image.shape}')
        return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255.0)


class OnnxHandshake(OnnxRoleMethod):
    """Who2com / When2com from exported ONNX roles. `roles` lists the roles this node needs."""

    def __init__(self, model_dir: str = '', roles: Sequence[str] = ROLES, **kwargs):
        super().__init__(model_dir, roles, **kwargs)
        self.gate = bool(self.info.get('gate'))
        self.warp = self.info.get('setting') in WARPED_SETTINGS

    def feature_shape(self):
        return tuple(self.info['feature_shape'])

    @staticmethod
    def static_feature_shape(model_dir: str) -> tuple:
        return tuple(read_roles_json(model_dir)['feature_shape'])

    def query_shape(self):
        return (int(self.info['query_size']),)

    def encode(self, image: np.ndarray) -> EncoderOutput:
        outs = self._session('encoder').run(None, {'image': self.image_input(image)})
        features, key, query, own = outs[:4]
        return EncoderOutput(features=features[0], key=key[0], query=query[0], own_classes=own[0].astype(np.uint8),
                             self_score=float(outs[4][0]) if self.gate else None)

    def match(self, query: np.ndarray, key: np.ndarray) -> np.ndarray:
        score = self._session('matcher').run(None, {'query': query[None].astype(np.float32),
                                                    'key': key[None].astype(np.float32)})[0]
        return score.astype(np.float32)

    def combine(self, own: EncoderOutput, received: dict[int, np.ndarray], scores: dict[int, float]) -> np.ndarray:
        """What the decoder receives (Who2com Eq. 5 at inference): the one selected supporter's features, or the
        softmax-weighted sum of the selected ones (top-n) and, for the gate, the requester's own features with
        its self-score (When2com)."""
        ids = sorted(received)
        if len(ids) == 1 and not self.gate:
            return received[ids[0]]
        logits = [scores[i] for i in ids]
        stack = [received[i] for i in ids]
        if self.gate and own.self_score is not None:
            logits.insert(0, own.self_score)
            stack.insert(0, own.features)
        weights = _softmax(np.asarray(logits, dtype=np.float64))
        return np.tensordot(weights, np.stack(stack), axes=1).astype(np.float32)

    def fuse(self, own: EncoderOutput, received: dict[int, np.ndarray],
             scores: Optional[dict[int, float]] = None) -> np.ndarray:
        if not received and not self.gate:
            return own.own_classes     # nothing selected (select: threshold): the drone's own head, as on the swarm
        combined = self.combine(own, received, scores or {})
        classes = self._session('decoder').run(None, {'own': own.features[None].astype(np.float32),
                                                      'received': combined[None].astype(np.float32)})[0]
        return classes[0].astype(np.uint8)

    def warmup(self) -> None:
        """Run every loaded role once (first ONNX Runtime calls allocate and are slow)."""
        h, w = self.info['image_size']
        c, fh, fw = self.info['feature_shape']
        if 'encoder' in self.sessions:
            self.encode(np.zeros((h, w, 3), np.uint8))
        if 'matcher' in self.sessions:
            self.match(np.zeros(self.info['query_size'], np.float32), np.zeros(self.info['key_size'], np.float32))
        if 'decoder' in self.sessions:
            f = np.zeros((c, fh, fw), np.float32)
            self.fuse(EncoderOutput(f, None, None, None), {0: f}, {0: 0.0})


@register_method('who2com')
class Who2comOnnx(OnnxHandshake):
    """Ours w/ msg (argmax selection)."""


@register_method('when2com')
class When2comOnnx(OnnxHandshake):
    """Ours with the When2com gate (select: threshold in config)."""
