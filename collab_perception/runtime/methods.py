"""Collaborative-perception methods, found by name (config/swarm.yaml `method:`).

A method splits its network by role, so that each drone runs only its part (Who2com §III-B):

    encode(image)            perception, every drone: features (kept), key (kept), query (sent when asking),
                             the drone's own class map, and optionally a self-score for a When2com gate
    match(query, key)        matcher, every other drone: the matching score sent back (Eq. 2-3)
    fuse(own, received)      fusion, the requester: its final class map from its own output and the
                             features of the drones it connected to (Eq. 4)

Methods are registered with `@register_method('name')` and created with `create_method(name, **args)`;
an unknown name raises an error that lists the valid ones.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..registry import Registry


@dataclass
class EncoderOutput:
    features: np.ndarray              # [C, Hf, Wf] float32, sent to a requester that connects
    key: np.ndarray                   # [k] float32, stays on the drone
    query: np.ndarray                 # [m] float32, broadcast in a Request when the drone asks for help
    own_classes: np.ndarray           # [H, W] uint8, the drone's own prediction
    self_score: Optional[float] = None  # When2com's self-attention score, if the method has a gate
    needs_help: Optional[bool] = None   # the method's own decision to ask (role: auto)
    self_confidence: Optional[np.ndarray] = None   # MASH: [Hc, Wc] confidence in its own cells (fusion)


class Method:
    """Base class of every method. Subclasses set `name` and implement the three roles."""

    registry_name = 'base'     # set by the registry
    num_classes = 0

    @property
    def name(self) -> str:
        return self.registry_name

    def encode(self, image: np.ndarray) -> EncoderOutput:
        raise NotImplementedError

    def match(self, query: np.ndarray, key: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fuse(self, own: EncoderOutput, received: dict[int, np.ndarray],
             scores: Optional[dict[int, float]] = None) -> np.ndarray:
        raise NotImplementedError

    # The protocol the method speaks (runtime/protocols: 'handshake', 'spatial' or 'memory'); the nodes run its
    # roles.
    protocol = 'handshake'
    # Pose warping (Who2com §IV-B pose settings): the handshake's supporters encode their view warped into
    # the requester's.
    warp = False
    # dtype of `features` on the drone's local perception -> fusion topic (None: codec.local_dtype)
    local_feature_dtype: Optional[str] = None

    def load(self, roles) -> None:
        """Load the parts of more roles (a supporter that warps also encodes); nothing to load by default."""

    def warmup(self) -> None:
        """Run each loaded part once so that the first frame does not pay one-time costs."""

    def feature_shape(self) -> Optional[tuple]:
        """The shape every FeatureMap must have (None: any); used to validate received features."""
        return None

    def query_shape(self) -> Optional[tuple]:
        return None

    def describe(self) -> str:
        return self.name


METHODS: Registry[Method] = Registry('method')
register_method = METHODS.register


# Methods whose modules need ONNX Runtime sessions register themselves when their module is imported, which
# happens when one of them is first named: a drone loads only the method it runs, and this module imports
# none of them (they import it).
LAZY_METHODS = {'who2com': 'onnx_method', 'when2com': 'onnx_method', 'mash': 'onnx_mash', 'collavn': 'nav_method'}


def method_factory(name: str):
    if name not in METHODS and name in LAZY_METHODS:
        importlib.import_module(f'.{LAZY_METHODS[name]}', __package__)
    return METHODS.get(name)


def method_names() -> list[str]:
    return sorted(set(METHODS.names()) | set(LAZY_METHODS))


def create_method(name: str, **args) -> Method:
    return method_factory(name)(**args)


def protocol_of(name: str) -> str:
    """The protocol a registered method speaks (runtime/protocols), without creating it."""
    return getattr(method_factory(name), 'protocol', Method.protocol)


def feature_shape_of(name: str, model_dir: str = '') -> tuple:
    """The FeatureMap shape a method sends, without loading it (for byte accounting)."""
    factory = method_factory(name)
    shape = getattr(factory, 'static_feature_shape', None)
    if shape is None:
        raise ValueError(f'method {name!r} does not say its feature shape')
    return tuple(shape(model_dir))


@register_method('placeholder')
class PlaceholderMethod(Method):
    """A protocol stand-in with no learning, so the swarm can run before any model is trained.

    features: the image average-pooled to a `grid` x `grid` RGB map; key and query: per-channel mean and
    standard deviation (6 numbers); score: minus the distance between query and key (views with similar
    colour statistics match); own classes: brightness quantized into `num_classes` bins; fusion: returns
    the requester's own classes unchanged (there is nothing learned to fuse with). It exercises every
    message of the handshake with realistic shapes, nothing more.
    """

    def __init__(self, num_classes: int = 4, grid: int = 8, **_unused):
        self.num_classes = int(num_classes)
        self.grid = int(grid)

    def encode(self, image: np.ndarray) -> EncoderOutput:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f'expected an HxWx3 image, got shape {image.shape}')
        x = image.astype(np.float32) / 255.0
        h, w, _ = x.shape
        g = self.grid
        hh, ww = (h // g) * g, (w // g) * g
        pooled = x[:hh, :ww].reshape(g, hh // g, g, ww // g, 3).mean(axis=(1, 3))
        features = np.ascontiguousarray(pooled.transpose(2, 0, 1))
        stats = np.concatenate([x.mean(axis=(0, 1)), x.std(axis=(0, 1))]).astype(np.float32)
        brightness = x.mean(axis=2)
        own = np.minimum((brightness * self.num_classes).astype(np.int32), self.num_classes - 1)
        return EncoderOutput(features=features, key=stats, query=stats.copy(), own_classes=own.astype(np.uint8))

    def match(self, query: np.ndarray, key: np.ndarray) -> np.ndarray:
        return np.array([-float(np.linalg.norm(query - key))], dtype=np.float32)

    def fuse(self, own: EncoderOutput, received: dict[int, np.ndarray],
             scores: Optional[dict[int, float]] = None) -> np.ndarray:
        return own.own_classes

    def feature_shape(self):
        return (3, self.grid, self.grid)

    @staticmethod
    def static_feature_shape(model_dir: str = '') -> tuple:
        return (3, 8, 8)

    def query_shape(self):
        return (6,)
