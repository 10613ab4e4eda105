"""The whole-drone handshake (Who2com §III-B; When2com's gate): request, reply, connect, feature.

    requester  perception broadcasts a Request with its compact query (and, for a pose-warping model, its
               camera pose); fusion collects the Replies' scores, selects (argmax, top-n or a gate), sends
               Connect to the selected drones and decodes with the FeatureMaps they send back (Eq. 4-6)
    supporter  scores the query against its key (Eq. 2-3) and replies; on Connect it sends its features

Warping is a capability of the supporter (Who2com §IV-B pose settings): a model trained on a pose setting
warps the supporter's view into the requester's (its depth, both poses, the shared camera model) and
encodes the warped view per request; key and features are then those of the warped view.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from ..codec import CodecError, decode_tensor, encode_tensor
from ..handshake import StampRing
from ..methods import EncoderOutput
from . import (CachingSupporter, PerceptionRole, Protocol, Reject, RoleContext, Send, TrackedRequester, register_protocol,
               stamp_label)


class HandshakePerception(PerceptionRole):
    def __init__(self, method, ctx: RoleContext):
        super().__init__(method, ctx)
        # a pose-warping model's request carries the requester's camera pose, joined to the image by stamp
        self.inputs = ('image', 'pose') if method.warp else ('image',)

    def fill_request(self, out: EncoderOutput, inputs: Mapping[str, Any], msg: Any) -> None:
        encode_tensor(out.query, self.ctx.dtypes['query_dtype'], msg.query, 'request.query')
        msg.pose = list(inputs['pose']) if self.method.warp else []

    def fill_local(self, out: EncoderOutput, requested: bool, msg: Any) -> None:
        local = self.ctx.dtypes['local_dtype']
        encode_tensor(out.features, self.method.local_feature_dtype or local, msg.features, 'features')
        encode_tensor(out.key, local, msg.key, 'key')
        encode_tensor(out.own_classes, 'uint8', msg.own_classes, 'own_classes')
        msg.self_score = math.nan if out.self_score is None else float(out.self_score)


class HandshakeSupporter(CachingSupporter):
    """Answers from this drone's own perception output (its key and features) of the request's stamp."""

    inputs = ('perception',)
    inbox = ('request', 'connect')
    outbox = ('reply', 'feature')

    def __init__(self, method, ctx: RoleContext):
        super().__init__(method, ctx)
        self.features_sent = 0

    def decode_local(self, msg: Any) -> EncoderOutput:
        lim = self.ctx.limits
        return EncoderOutput(features=decode_tensor(msg.features, lim, 'perception.features'),
                             key=decode_tensor(msg.key, lim, 'perception.key'), query=None, own_classes=None)

    def decode(self, kind: str, msg: Any) -> Any:
        if kind == 'request':
            return decode_tensor(msg.query, self.ctx.limits, 'request.query', expect_shape=self.method.query_shape())
        return None

    def on_message(self, kind: str, msg: Any, stamp_ns: int, payload: Any, now_ns: int) -> list:
        if kind == 'request':
            return self.request(msg, stamp_ns, (payload, list(msg.pose)), now_ns)
        features = self.features_for(stamp_ns, msg.sender)
        if features is None:
            return [Reject('no_features', f'connect from {self.ctx.name_of(msg.sender)} for frame {stamp_label(stamp_ns)}: '
                           'features of that frame are no longer (or not yet) cached')]
        self.features_sent += 1

        def fill(m: Any) -> None:
            encode_tensor(features, self.ctx.dtypes['feature_dtype'], m.features, 'feature.features')
        return [Send('feature', msg.sender, stamp_ns, fill, 'features')]

    def key_for(self, stamp_ns: int, requester: int, request: Any, own: Any) -> np.ndarray:
        return own.key

    def features_for(self, stamp_ns: int, requester: int) -> Any:
        own = self.cache.own(stamp_ns)
        return None if own is None else own.features

    def answer(self, stamp_ns: int, requester: int, request: Any, own: Any) -> list:
        query, _pose = request
        key = self.key_for(stamp_ns, requester, request, own)
        if isinstance(key, Reject):
            return [key]
        score = self.method.match(query, key)
        self.replies += 1

        def fill(m: Any) -> None:
            encode_tensor(score, self.ctx.dtypes['score_dtype'], m.score, 'reply.score')
        return [Send('reply', requester, stamp_ns, fill, f'score {float(score[0]):.3f}')]

    def counters(self) -> dict[str, int]:
        return {**super().counters(), 'features_sent': self.features_sent}


class WarpingSupporter(HandshakeSupporter):
    """Encodes its own view warped into the requester's (Who2com §IV-B): it keeps its camera image, depth and
    pose per stamp. `warp_on` says when it pays for the warp and the encoder pass:

    - 'request' (the paper): for every request, so that the score compares the warped view; the warped
      features are kept per (stamp, requester) for the Connect;
    - 'connect': only when selected; the score compares its own view's key (from its perception output), so
      a request costs a match only, and the other supporters never warp (what lets a large swarm answer in
      time; the selection may differ from the paper's)."""

    inputs = ('image', 'depth', 'pose')
    state_inputs = ('camera_info',)

    def __init__(self, method, ctx: RoleContext):
        super().__init__(method, ctx)
        self.warp_on = ctx.param('warp_on')
        if self.warp_on not in ('request', 'connect'):
            raise ValueError(f"warp_on must be 'request' or 'connect', got {self.warp_on!r}")
        if self.warp_on == 'connect':
            self.inputs = ('image', 'depth', 'pose', 'perception')
        method.load(('encoder',))
        method.warmup()
        self.K = None
        ring = 4 * int(ctx.param('cache_frames'))
        self.warped: StampRing[np.ndarray] = StampRing(ring)       # (stamp, requester) -> warped features
        self.poses: StampRing[list] = StampRing(ring)               # (stamp, requester) -> requester's pose

    def on_state(self, kind: str, value: Any) -> None:
        self.K = np.asarray(value, dtype=np.float64).reshape(3, 3)

    def own_value(self, inputs: Mapping[str, Any]) -> dict:
        from ...world import geometry
        pose = inputs['pose']
        own = {'image': inputs['image'], 'depth': inputs['depth'], 'pose': geometry.pose_matrix(pose[:3], pose[3:])}
        if 'perception' in inputs:
            own['key'] = inputs['perception'].key
        return own

    def decode(self, kind: str, msg: Any) -> Any:
        query = super().decode(kind, msg)
        if kind == 'request':
            pose = list(msg.pose)
            if len(pose) != 7 or not np.isfinite(pose).all():
                raise CodecError('request.pose', 'bad_pose', 'this model warps into the requester\'s view and needs '
                                 f'its 7-float pose, got {len(pose)} values')
        return query

    def _warped(self, own: dict, pose: list):
        from ...world import geometry
        T_req = geometry.pose_matrix(pose[:3], pose[3:])
        warped, _ = geometry.warp_to_target(own['image'], own['depth'], self.K, own['pose'], self.K, T_req)
        return self.method.encode(warped)

    def key_for(self, stamp_ns: int, requester: int, request: Any, own: dict) -> Any:
        if self.K is None:
            return Reject('no_camera_info', f'frame {stamp_label(stamp_ns)}: no camera_info yet, cannot warp')
        _query, pose = request
        if self.warp_on == 'connect':
            self.poses.put((stamp_ns, requester), pose)
            return own['key']
        out = self._warped(own, pose)
        self.warped.put((stamp_ns, requester), out.features)
        return out.key

    def features_for(self, stamp_ns: int, requester: int) -> Any:
        if self.warp_on == 'request':
            return self.warped.get((stamp_ns, requester))
        pose, own = self.poses.get((stamp_ns, requester)), self.cache.own(stamp_ns)
        if pose is None or own is None:
            return None
        return self._warped(own, pose).features


class HandshakeRequester(TrackedRequester):
    inbox = ('reply', 'feature')
    outbox = ('connect',)

    def decode_local(self, msg: Any) -> EncoderOutput:
        lim = self.ctx.limits
        return EncoderOutput(
            features=decode_tensor(msg.features, lim, 'perception.features'), key=None, query=None,
            own_classes=decode_tensor(msg.own_classes, lim, 'perception.own_classes', out_dtype='uint8'),
            self_score=None if math.isnan(msg.self_score) else float(msg.self_score))

    def decode(self, kind: str, msg: Any) -> Any:
        if kind == 'reply':
            score = decode_tensor(msg.score, self.ctx.limits, 'reply.score', expect_shape=(None,))
            if score.size < 1:
                raise CodecError('reply.score', 'bad_shape', 'empty score')
            return float(score[0])
        return decode_tensor(msg.features, self.ctx.limits, 'feature.features', expect_shape=self.method.feature_shape())

    def on_message(self, kind: str, msg: Any, stamp_ns: int, payload: Any, now_ns: int) -> list:
        if kind == 'reply':
            return self.actions(self.tracker.on_reply(stamp_ns, msg.sender, payload, now_ns))
        return self.actions(self.tracker.on_features(stamp_ns, msg.sender, payload, now_ns))

    def fuse(self, outcome) -> np.ndarray:
        own: EncoderOutput = outcome.own
        if outcome.received:
            return self.method.fuse(own, outcome.received, outcome.scores)
        if getattr(self.method, 'gate', False) and outcome.requested and not outcome.fallback:
            return self.method.fuse(own, {}, outcome.scores)   # When2com: the gate chose to decode alone
        return own.own_classes

    def summary(self, outcome) -> str:
        return 'selected ' + (','.join(self.ctx.name_of(i) for i in outcome.selected) or 'none')


@register_protocol('handshake')
class Handshake(Protocol):
    perception_role = HandshakePerception
    requester_role = HandshakeRequester
    addressed = ('reply', 'connect', 'feature')

    @classmethod
    def supporter(cls, method, ctx: RoleContext):
        return (WarpingSupporter if method.warp else HandshakeSupporter)(method, ctx)
