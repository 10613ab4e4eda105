"""MASH's spatial handshake on ONNX Runtime (MASH §III, Fig. 2): each drone node loads only its role.

    perception (every drone)  requester.onnx: image -> query map [Hc, Wc, Q] (broadcast when asking), own class
                              distribution [K, H, W] and self-confidence [Hc, Wc] (kept for fusion), own classes
    matcher (supporters)      supporter.onnx: (received query map, own image) -> per requester cell: match
                              confidence, matched own cell (or no match) and the class distribution there
                              ('cells' patch sampling) or its classes at label resolution ('pixels');
                              only the cells with a match at or above the confidence threshold are sent
                              (msg/PatchSegments.msg): the heavy work (cost volume, smoothing) stays here
                              With the ground-plane prior (roles.json geometry 'homography'), it also gives
                              its sub-cell positions, its own expected accuracy per cell and its class
                              distribution; the plane its confident matches agree on (runtime/homography.py)
                              moves every cell, and sampler.onnx samples the distribution at the new positions
    fusion (requester)        fusion.onnx: own distribution + self-confidence + every supporter slot's patches
                              scattered into the requester's cell grid (zeros where nothing came) -> classes

A model directory is what `export_mash_run` (learn/mash_export.py) writes: the three .onnx files and
roles.json (grid, no-match index, threshold, supporter slots, wire dtypes). Supporter slots are the other
drones of the swarm in ascending id, as in training (the fusion sees at most `supporters` of them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from .codec import UINT4, UINT4_MAX, UINT8, CodecError, TensorLimits, decode_tensor, encode_tensor
from .homography import GEOMETRIES, PLANE_FEATURES, plane_matches
from .methods import EncoderOutput, register_method
from .onnx_method import OnnxRoleMethod, read_roles_json
from .wire import patches_size, pixel_labels_dtype
from ..world.geometry import cell_centres


NO_LABEL = 255     # a 'pixels' patch pixel that carries no class (outside the supporter's view)
PACKED_NO_LABEL = UINT4_MAX   # NO_LABEL as packed labels carry it: up to 15 classes travel as uint4


def need_map(self_confidence: np.ndarray, scale: float) -> np.ndarray:
    """Request.need from the requester's self-confidence [Hs, Ws]: the confidence its fusion gives its own
    cells (times `scale`), x 255 floored to uint8 [Hs * Ws], so that a supporter never withholds a cell the
    requester would take (learn/mash.py Mash.need_map)."""
    scaled = np.clip(self_confidence.reshape(-1).astype(np.float32) * np.float32(scale), 0, 1)
    return np.floor(scaled * np.float32(255)).astype(np.uint8)


def need_levels(need: np.ndarray) -> np.ndarray:
    """Request.need's bytes [C] -> the requester's confidence per cell as a supporter compares it, float32."""
    return need.astype(np.float32) / np.float32(255)


def sendable_cells(confidence: np.ndarray, match: np.ndarray, no_match: int, threshold: float,
                   need: Optional[np.ndarray] = None) -> np.ndarray:
    """A supporter's matches [C] -> the cells it may send, ascending: a real match at or above the threshold
    and, with the requester's need levels (need_levels), more confident than the requester there
    (learn/mash.py Mash.sendable)."""
    keep = (match != no_match) & (confidence >= threshold)
    if need is not None:
        keep &= confidence > need
    return np.flatnonzero(keep)


PLANE_KEYS = ('min_confidence', 'threshold_px', 'min_support')     # roles.json `plane` (+ optional weight,
                                                                  # coefficients)


def plane_settings(info: dict, model_dir: str = '') -> Optional[dict]:
    """roles.json's ground-plane settings, checked at start-up: None for geometry 'none' (the default), else
    plane_matches' keyword arguments; a ValueError names the field that is wrong."""
    geometry = info.get('geometry', 'none')
    if geometry not in GEOMETRIES:
        raise ValueError(f'{model_dir}/roles.json: geometry {geometry!r} is not one of {", ".join(GEOMETRIES)}')
    if geometry == 'none':
        return None
    plane = info.get('plane')
    if not isinstance(plane, dict):
        raise ValueError(f'{model_dir}/roles.json: geometry \'homography\' needs a `plane` mapping of '
                         f'{", ".join(PLANE_KEYS)} (and weight)')
    unknown = sorted(set(plane) - set(PLANE_KEYS) - {'weight', 'coefficients'})
    if unknown:
        raise ValueError(f'{model_dir}/roles.json: unknown plane setting(s) {", ".join(unknown)}')
    for key in PLANE_KEYS + (('weight',) if 'weight' in plane else ()):
        value = plane.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise ValueError(f'{model_dir}/roles.json: plane.{key} must be a finite number >= 0, got {value!r}')
    settings = {k: float(v) for k, v in plane.items() if k != 'coefficients'}
    if 'coefficients' in plane:
        c = plane['coefficients']
        if not (isinstance(c, list) and len(c) == len(PLANE_FEATURES) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in c)):
            raise ValueError(f'{model_dir}/roles.json: plane.coefficients must be {len(PLANE_FEATURES)} finite '
                             f'numbers ({", ".join(PLANE_FEATURES)}), got {c!r}')
        settings['coefficients'] = [float(v) for v in c]
    return settings


def supporter_matches(matcher: Any, sampler: Any, query: np.ndarray, image: np.ndarray, plane: Optional[dict],
                      centres: np.ndarray, image_size: Sequence[int], cell_size: int, no_match: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The supporter role on ONNX Runtime sessions: query [1, Hc, Wc, Q], image [1, 3, H, W] -> confidence
    [1, C], match [1, C] and the values per cell (learn/mash.py SupporterRole). With `plane` (roles.json's
    `plane`: geometry 'homography'), the matches go through the ground plane they agree on and `sampler`
    samples the supporter's distribution at the plane's positions (Mash.supporter_answers); where no plane has
    the support, the matcher's own matches stay."""
    outputs = matcher.run(None, {'query': query, 'image': image})
    confidence, match, values = outputs[:3]
    if plane is None:
        return confidence, match, values
    positions, landing, own_probs = outputs[3:6]
    planar = plane_matches(centres, confidence[0].astype(np.float64), match[0], positions[0].astype(np.float64),
                           no_match, tuple(image_size), cell_size, landing_confidence=landing[0], **plane)
    if planar is None:
        return confidence, match, values
    conf, match, positions = planar
    values = sampler.run(None, {'own_probs': own_probs, 'positions': positions[None].astype(np.float32)})[0]
    return conf[None].astype(np.float32), match[None], values


@dataclass
class PatchReply:
    """One supporter's answer for one frame: the requester's cells it matched, confident enough, with one
    class distribution per cell ('cells' patch sampling) or one class id per pixel ('pixels')."""

    cells: np.ndarray                        # [n] int, ascending, row-major in the requester's grid
    confidence: np.ndarray                   # [n] float32
    class_probs: Optional[np.ndarray] = None  # 'cells': [n, K] float32
    labels: Optional[np.ndarray] = None      # 'pixels': [n, cell, cell] uint8, NO_LABEL where not seen

    @property
    def count(self) -> int:
        return int(self.cells.size)


def encode_patches(reply: PatchReply, grid: Sequence[int], dtype: str, out: Any, num_classes: int) -> Any:
    """Fill a PatchSegments message's grid, cells, confidence and class_probs or labels (header and
    addressing are the caller's); the other of the two stays absent. Labels of a model with up to 15 classes
    travel two to a byte (uint4, 15: not seen), as wire.patches_size counts them."""
    out.grid_height, out.grid_width = int(grid[0]), int(grid[1])
    out.cells = [int(c) for c in reply.cells]
    encode_tensor(reply.confidence.astype(np.float32), dtype, out.confidence, 'patches.confidence')
    if reply.labels is not None:
        labels, dtype = reply.labels.astype(np.uint8), pixel_labels_dtype(num_classes)
        if dtype == 'uint4':
            labels = np.where(labels == NO_LABEL, PACKED_NO_LABEL, labels)
        encode_tensor(labels, dtype, out.labels, 'patches.labels')
    else:
        encode_tensor(reply.class_probs.astype(np.float32), dtype, out.class_probs, 'patches.class_probs')
    return out


def _absent(tensor: Any, field: str) -> None:
    if len(tensor.shape) or len(tensor.data):
        raise CodecError(field, 'bad_shape', 'must be absent (no shape, no data) for this model\'s patch sampling')


def decode_patches(msg: Any, grid: Sequence[int], num_classes: int,
                   limits: TensorLimits, cell_size: Optional[int] = None) -> PatchReply:
    """Validate a PatchSegments message against the requester's grid and classes, and its patch sampling
    (`cell_size`: 'pixels' patches of that many pixels a side; None: 'cells'); CodecError names the field."""
    hc, wc = int(grid[0]), int(grid[1])
    if (msg.grid_height, msg.grid_width) != (hc, wc):
        raise CodecError('patches.grid', 'bad_shape', f'grid {msg.grid_height}x{msg.grid_width} is not the '
                         f'requester\'s {hc}x{wc}')
    cells = np.asarray(msg.cells, dtype=np.int64)
    n = cells.size
    if n and (cells.min() < 0 or cells.max() >= hc * wc):
        raise CodecError('patches.cells', 'bad_index', f'cell indices must lie in 0..{hc * wc - 1}')
    if n > 1 and not (np.diff(cells) > 0).all():
        raise CodecError('patches.cells', 'bad_index', 'cell indices must be strictly ascending')
    confidence = decode_tensor(msg.confidence, limits, 'patches.confidence', expect_shape=(n,))
    if n and (confidence.min() < -1e-3 or confidence.max() > 1.0 + 1e-2):
        raise CodecError('patches.confidence', 'bad_value', 'confidences must lie in [0, 1]')
    if cell_size is None:
        _absent(msg.labels, 'patches.labels')
        probs = decode_tensor(msg.class_probs, limits, 'patches.class_probs', expect_shape=(n, num_classes))
        return PatchReply(cells, confidence, class_probs=probs)
    _absent(msg.class_probs, 'patches.class_probs')
    packed = int(msg.labels.dtype) == UINT4
    if not (packed or int(msg.labels.dtype) == UINT8) or msg.labels.scale not in (0.0, 1.0) or msg.labels.zero_point:
        raise CodecError('patches.labels', 'bad_dtype', 'class ids travel as uint4 or uint8, scale 1, zero point 0')
    labels = decode_tensor(msg.labels, limits, 'patches.labels', expect_shape=(n, cell_size, cell_size),
                           out_dtype=np.int64)
    if packed:
        labels = np.where(labels == PACKED_NO_LABEL, NO_LABEL, labels)
    if n and not np.isin(labels, [*range(num_classes), NO_LABEL]).all():
        raise CodecError('patches.labels', 'bad_value', f'class ids must lie in 0..{num_classes - 1} or be {NO_LABEL}')
    return PatchReply(cells, confidence, labels=labels.astype(np.uint8))


@register_method('mash')
class MashOnnx(OnnxRoleMethod):
    """MASH from exported ONNX roles (HardSelection or SoftSelection, as exported)."""

    ROLE_FILES = {'encoder': 'requester', 'matcher': 'supporter', 'decoder': 'fusion', 'sampler': 'sampler'}
    protocol = 'spatial'
    # The requester keeps its full-resolution class distribution for fusion (K x H x W): as uint8 (1/255 steps
    # of a probability) it is 128 kB on the local topic instead of 512 kB of float32, a size that a loaded
    # machine's shared-memory transport delivers reliably (docs/RELIABILITY.md).
    local_feature_dtype = 'uint8'

    def __init__(self, model_dir: str = '', roles: Sequence[str] = ('encoder', 'matcher', 'decoder'), **kwargs):
        super().__init__(model_dir, roles, **kwargs)
        self.grid = tuple(int(g) for g in self.info['grid'])
        self.cells = self.grid[0] * self.grid[1]
        self.no_match = int(self.info['no_match'])
        self.supporters = int(self.info['supporters'])
        self.threshold = float(self.info['confidence_threshold'])
        self.wire = dict(self.info.get('wire', {}))
        self.patch_sampling = self.info.get('patch_sampling', 'cells')
        self.pixel_cell = int(self.info['cell_size']) if self.patch_sampling == 'pixels' else None
        # the request carries the need map (Request.need): the requester's self-confidence as its fusion
        # weighs it, so a supporter withholds the cells HardSelection would not take
        self.request_need = bool(self.info.get('request_need', False))
        self.self_confidence_scale = float(self.info.get('self_confidence_scale', 1.0))
        h, w = self.image_shape()
        self.centres = cell_centres(h, w, int(self.info['cell_size'])).astype(np.float64) if self.plane else None

    def load(self, roles: Sequence[str]) -> None:
        """OnnxRoleMethod.load; with the ground-plane prior (roles.json geometry 'homography') the matcher's
        role also samples, so it brings sampler.onnx along."""
        self.plane = plane_settings(self.info, self.model_dir)
        if self.plane is not None and 'matcher' in roles and 'sampler' not in roles:
            roles = (*roles, 'sampler')
        super().load(roles)

    # ------------------------------------------------------------------ shapes
    def query_shape(self):
        return (*self.grid, int(self.info['query_size']))

    @staticmethod
    def static_feature_shape(model_dir: str) -> tuple:
        """What sending everything would cost: every cell's class distribution, or with 'pixels' patches
        every cell's class ids (the patch reply without the confidence threshold), the spatial analogue of
        CatAll's feature map."""
        info = read_roles_json(model_dir)
        cells = int(info['grid'][0]) * int(info['grid'][1])
        if info.get('patch_sampling', 'cells') == 'pixels':
            return (cells, int(info['cell_size']), int(info['cell_size']))
        return (cells, int(info['num_classes']))

    # ------------------------------------------------------------------ the patches on the wire
    def encode_reply(self, reply: PatchReply, dtype: str, out: Any) -> Any:
        """A supporter's reply into a PatchSegments message (encode_patches for this model)."""
        return encode_patches(reply, self.grid, dtype, out, self.num_classes)

    def decode_reply(self, msg: Any, limits: TensorLimits) -> PatchReply:
        """A received PatchSegments, validated against this model's grid, classes and patch sampling."""
        return decode_patches(msg, self.grid, self.num_classes, limits, self.pixel_cell)

    def image_shape(self) -> tuple:
        return tuple(self.info['image_size'])

    # ------------------------------------------------------------------ roles
    def encode(self, image: np.ndarray) -> EncoderOutput:
        """Requester role (run on every drone for its own prediction): features = own class distribution
        [K, H, W] and the self-confidence [Hc, Wc] (both stay on the drone), query = the query map; no key
        (the supporter role matches the query map against its image)."""
        query, own_probs, self_conf, own_classes = self._session('encoder').run(None, {'image': self.image_input(image)})
        return EncoderOutput(features=own_probs[0], key=None, query=query[0], own_classes=own_classes[0].astype(np.uint8),
                             self_confidence=self_conf[0])

    def max_cells(self, budget: float, dtype: str = 'uint8') -> Optional[int]:
        """The most cells one PatchSegments may carry to stay within `budget` x the label image's bytes
        (None: no cap for budget 0)."""
        if budget <= 0:
            return None
        h, w = self.image_shape()
        limit = budget * h * w
        n = 0
        while n < self.cells and patches_size(n + 1, self.num_classes, dtype, dtype,
                                              cell_size=self.pixel_cell) <= limit:
            n += 1
        return n

    def need_map(self, self_confidence: np.ndarray) -> np.ndarray:
        """Requester: its self-confidence [Hs, Ws] -> Request.need, uint8 [Hs * Ws] (need_map), empty when the
        model's request carries none."""
        if not self.request_need:
            return np.zeros(0, np.uint8)
        return need_map(self_confidence, self.self_confidence_scale)

    def decode_need(self, need: Any) -> Optional[np.ndarray]:
        """Supporter: Request.need -> the requester's confidence per cell [C] float32, or None (empty: no
        filter); CodecError for a map that does not fit the grid."""
        if not len(need):
            return None
        if len(need) != self.cells:
            raise CodecError('request.need', 'bad_shape', f'{len(need)} cells, the grid has {self.cells}')
        return need_levels(np.frombuffer(bytes(need), np.uint8))

    def patches(self, query: np.ndarray, image: np.ndarray, threshold: Optional[float] = None,
                max_cells: Optional[int] = None, need: Optional[np.ndarray] = None) -> PatchReply:
        """Supporter role: match the requester's query map against this drone's view and keep the cells that
        found a match with at least `threshold` confidence (default: the exported one) and, with the
        requester's `need` (decode_need), a higher confidence than its own there; with `max_cells`, only that
        many of them, the most confident (a hard byte budget per reply, whatever the scene)."""
        if query.shape != self.query_shape():
            raise ValueError(f'query map of shape {query.shape}, expected {self.query_shape()}')
        confidence, match, values = supporter_matches(
            self._session('matcher'), self.sessions.get('sampler'), query[None].astype(np.float32),
            self.image_input(image), self.plane, self.centres, self.image_shape(), int(self.info['cell_size']),
            self.no_match)
        t = self.threshold if threshold is None else threshold
        cells = sendable_cells(confidence[0], match[0], self.no_match, t, need)
        if max_cells is not None and cells.size > max_cells:
            keep = np.argsort(-confidence[0, cells], kind='stable')[:max_cells]
            cells = np.sort(cells[keep])
        conf = confidence[0, cells].astype(np.float32)
        if self.pixel_cell:
            return PatchReply(cells, conf, labels=values[0, cells].astype(np.uint8))
        return PatchReply(cells, conf, class_probs=values[0, cells].astype(np.float32))

    def fuse(self, own: EncoderOutput, received: dict[int, PatchReply],
             scores: Optional[dict[int, float]] = None) -> np.ndarray:
        """Fusion role. `received`: supporter slot (0..supporters-1) -> its patches."""
        if self.pixel_cell:
            name = 'patch_labels'
            patches = np.full((1, self.supporters, self.cells, self.pixel_cell, self.pixel_cell), NO_LABEL, np.int64)
        else:
            name = 'patch_probs'
            patches = np.zeros((1, self.supporters, self.cells, self.num_classes), np.float32)
        patch_conf = np.zeros((1, self.supporters, self.cells), np.float32)
        for slot, reply in received.items():
            if not 0 <= slot < self.supporters:
                raise ValueError(f'supporter slot {slot} outside 0..{self.supporters - 1}')
            patches[0, slot, reply.cells] = reply.labels if self.pixel_cell else reply.class_probs
            patch_conf[0, slot, reply.cells] = reply.confidence
        classes = self._session('decoder').run(None, {
            'own_probs': own.features[None].astype(np.float32), 'self_confidence': own.self_confidence[None].astype(np.float32),
            name: patches, 'patch_confidence': patch_conf})[0]
        return classes[0].astype(np.uint8)

    def warmup(self) -> None:
        h, w = self.image_shape()
        image = np.zeros((h, w, 3), np.uint8)
        own = self.encode(image) if 'encoder' in self.sessions else None
        if 'matcher' in self.sessions:
            self.patches(np.zeros(self.query_shape(), np.float32), image)
        if 'decoder' in self.sessions:
            k = self.num_classes
            own = own or EncoderOutput(np.full((k, h, w), 1.0 / k, np.float32), None, None, None,
                                       self_confidence=np.zeros(self.grid, np.float32))
            self.fuse(own, {})
