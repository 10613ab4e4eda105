"""The spatial handshake (MASH §III): a query map out, warped patch segments back, no connect stage.

    requester  perception broadcasts a Request with its quantized query map; fusion fuses its own class
               distribution and self-confidence with the PatchSegments that arrive, when every expected
               supporter answered or at the reply timeout (the rest of the deadline is for fusing)
    supporter  matches the query map against its own camera image (cost volume, smoothing, sampling: the
               heavy work stays on the supporter) and sends only the requester's cells it matched above
               the confidence threshold, within `patch_budget` of the label image's bytes

Supporter slots of the fusion model are the other drones in ascending id, as in training.
"""
from __future__ import annotations

import array
from typing import Any, Mapping, NamedTuple, Optional

import numpy as np

from ..codec import decode_tensor, encode_tensor
from ..methods import EncoderOutput
from . import CachingSupporter, PerceptionRole, Protocol, RoleContext, Send, TrackedRequester, register_protocol

_EMPTY = np.zeros(0, np.float32)   # what perception keeps locally on frames its drone does not fuse


class SpatialPerception(PerceptionRole):
    inputs = ('image',)

    def warnings(self) -> list[str]:
        trained = self.method.wire.get('query_dtype')
        if trained and trained != self.ctx.dtypes['query_dtype']:
            return [f'codec.query_dtype is {self.ctx.dtypes["query_dtype"]} but the model was trained with '
                    f'{trained} queries on the wire']
        return []

    def fill_request(self, out: EncoderOutput, inputs: Mapping[str, Any], msg: Any) -> None:
        encode_tensor(out.query, self.ctx.dtypes['query_dtype'], msg.query, 'request.query')
        msg.pose = []
        msg.need = array.array('B', self.method.need_map(out.self_confidence).tobytes())

    def fill_local(self, out: EncoderOutput, requested: bool, msg: Any) -> None:
        # the full-resolution class distribution and the self-confidence: only fusion needs them, and only on
        # frames it fuses
        encode_tensor(out.features if requested else _EMPTY, self.method.local_feature_dtype, msg.features,
                      'features')
        encode_tensor(out.self_confidence if requested else _EMPTY, self.ctx.dtypes['local_dtype'],
                      msg.self_confidence, 'self_confidence')
        encode_tensor(out.own_classes, 'uint8', msg.own_classes, 'own_classes')


class SpatialQuery(NamedTuple):
    query: np.ndarray                  # [Hs, Ws, Q]
    need: Optional[np.ndarray]         # [Hs * Ws] the requester's own confidence, or None


class SpatialSupporter(CachingSupporter):
    """Keeps its camera images per stamp and answers each query map with its patches."""

    inputs = ('image',)
    inbox = ('request',)
    outbox = ('patches',)

    def __init__(self, method, ctx: RoleContext):
        super().__init__(method, ctx)
        self.max_cells = method.max_cells(float(ctx.param('patch_budget')), ctx.dtypes['patch_dtype'])
        self.patch_cells = 0

    def update(self, name: str, value: Any) -> None:
        if name == 'patch_budget':
            self.max_cells = self.method.max_cells(float(value), self.ctx.dtypes['patch_dtype'])

    def decode(self, kind: str, msg: Any) -> Any:
        query = decode_tensor(msg.query, self.ctx.limits, 'request.query', expect_shape=self.method.query_shape())
        return SpatialQuery(query, self.method.decode_need(msg.need))

    def on_message(self, kind: str, msg: Any, stamp_ns: int, payload: Any, now_ns: int) -> list:
        return self.request(msg, stamp_ns, payload, now_ns)

    def answer(self, stamp_ns: int, requester: int, request: SpatialQuery, image: np.ndarray) -> list:
        patches = self.method.patches(request.query, image, max_cells=self.max_cells, need=request.need)
        self.replies += 1
        self.patch_cells += patches.count

        def fill(m: Any) -> None:
            self.method.encode_reply(patches, self.ctx.dtypes['patch_dtype'], m)
        return [Send('patches', requester, stamp_ns, fill, f'{patches.count} cells')]

    def counters(self) -> dict[str, int]:
        return {**super().counters(), 'patch_cells': self.patch_cells}


class SpatialRequester(TrackedRequester):
    inbox = ('patches',)
    spatial = True

    def __init__(self, method, ctx: RoleContext):
        super().__init__(method, ctx)
        self.slots = {peer: i for i, peer in enumerate(ctx.peers)}
        if len(self.slots) > method.supporters:
            raise ValueError(f'the swarm has {len(self.slots)} other drones but the model ({method.model_dir}) '
                             f'fuses at most {method.supporters} supporters')

    def decode_local(self, msg: Any) -> EncoderOutput:
        lim = self.ctx.limits
        return EncoderOutput(
            features=decode_tensor(msg.features, lim, 'perception.features'),
            key=None, query=None,
            own_classes=decode_tensor(msg.own_classes, lim, 'perception.own_classes', out_dtype='uint8'),
            self_confidence=decode_tensor(msg.self_confidence, lim, 'perception.self_confidence'))

    def decode(self, kind: str, msg: Any) -> Any:
        return self.method.decode_reply(msg, self.ctx.limits)

    def on_message(self, kind: str, msg: Any, stamp_ns: int, payload: Any, now_ns: int) -> list:
        # the score reported in fusion/info: the mean confidence of the cells sent (0 for none)
        score = float(payload.confidence.mean()) if payload.count else 0.0
        return self.actions(self.tracker.on_reply(stamp_ns, msg.sender, score, now_ns, payload=payload))

    def fuse(self, outcome) -> np.ndarray:
        if outcome.received:
            return self.method.fuse(outcome.own, {self.slots[s]: p for s, p in outcome.received.items()})
        return outcome.own.own_classes

    def summary(self, outcome) -> str:
        cells = ','.join(f'{self.ctx.name_of(i)}:{p.count}' for i, p in sorted(outcome.received.items()))
        return f'cells {cells or "none"}'


@register_protocol('spatial')
class Spatial(Protocol):
    perception_role = SpatialPerception
    supporter_role = SpatialSupporter
    requester_role = SpatialRequester
    addressed = ('patches',)
