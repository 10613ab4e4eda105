"""Fusion, on every drone: the requester's side of the handshake and the drone's published output.

For a frame on which this drone asked for help (perception published a Request), it collects replies on
comm/reply until all expected ones are in or `reply_timeout_ms` after the camera stamp, selects partners
(argmax / top-n / threshold gate), sends them a Connect, collects their FeatureMaps on comm/feature until
`deadline_ms`, and fuses. With nothing usable in time it publishes its own prediction, flagged as
fallback. Frames on which it did not ask are published at once from its own prediction.

With a spatial method (MASH §III) there is no connect stage: supporters answer the query map with patches
(PatchSegments on comm/patches); the frame is fused when every expected supporter answered, or at
`deadline_ms` with what came. Supporter slots of the fusion model are the other drones in ascending id.

Outputs: `segmentation` (mono8 class ids), `segmentation/color` (rgb8 class colours) and `fusion/info`
(who was asked, who answered, scores, selection, deadline met, bytes in and out, latency), exactly one of
each per camera frame whose perception output arrived.
"""
from __future__ import annotations

import math

from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from collab_perception.msg import Connect, FeatureMap, FusionInfo, PatchSegments, PerceptionOutput, Reply

from ..classes import load_classes
from ..runtime import topics
from ..runtime.codec import CodecError, decode_tensor
from ..runtime.handshake import SELECTORS, Connect as ConnectAction, FrameOutcome, RequesterTracker, StampRing
from ..runtime.methods import EncoderOutput
from .common import DroneNode, array_to_image, declare, declare_codec, declare_qos, stamp_label, stamp_to_ns


class FusionNode(DroneNode):
    def __init__(self):
        super().__init__('fusion', roles=('decoder',))
        deadline_ms = declare(self, 'deadline_ms', 300, 'camera stamp -> publish, with or without help',
                              minimum=1, maximum=60000)
        reply_ms = declare(self, 'reply_timeout_ms', 120, 'camera stamp -> stop waiting for replies',
                           minimum=1, maximum=60000)
        if reply_ms >= deadline_ms:
            raise ValueError(f"parameter 'reply_timeout_ms' ({reply_ms}) must be below 'deadline_ms' "
                             f'({deadline_ms})')
        select = declare(self, 'select', 'argmax', 'partner selection', choices=tuple(SELECTORS.names()))
        top_n = declare(self, 'top_n', 1, 'partners for select: top_n', minimum=1, maximum=16)
        threshold = declare(self, 'score_threshold', 0.0, 'gate threshold for select: threshold')
        cache_frames = declare(self, 'cache_frames', 16, 'open frames kept', minimum=1, maximum=1000)
        self.dtypes, self.limits = declare_codec(self)
        comm_qos = declare_qos(self, 'comm', 'reliable', 10)
        local_qos = declare_qos(self, 'local', 'reliable', 10)
        self.classes = load_classes()
        spatial = self.method.spatial
        self.tracker = RequesterTracker(self.drone_id, self.ids, deadline_ms * 1_000_000, reply_ms * 1_000_000,
                                        select=select, top_n=top_n, threshold=threshold, capacity=cache_frames,
                                        spatial=spatial)
        self.bytes: StampRing[list[int]] = StampRing(4 * cache_frames)   # stamp -> [out, in]
        if spatial:
            # the fusion model's supporter slots: the other drones in ascending id, as in training
            self.slots = {peer: i for i, peer in enumerate(self.tracker.peers)}
            if len(self.slots) > self.method.supporters:
                raise ValueError(f'the swarm has {len(self.slots)} other drones but the model '
                                 f'({self.method.model_dir}) fuses at most {self.method.supporters} supporters')
            self.connect_pubs = {}
            self.create_subscription(PatchSegments, topics.patches_topic(self.drone), self.on_patches, comm_qos,
                                     raw=True)
        else:
            self.connect_pubs = {i: self.create_publisher(Connect, topics.connect_topic(n), comm_qos)
                                 for i, n in zip(self.ids, self.names) if i != self.drone_id}
        self.seg_pub = self.create_publisher(Image, topics.SEGMENTATION, local_qos)
        self.color_pub = self.create_publisher(Image, topics.SEGMENTATION_COLOR, local_qos)
        self.info_pub = self.create_publisher(FusionInfo, topics.FUSION_INFO, local_qos)
        self.create_subscription(PerceptionOutput, topics.PERCEPTION, self.on_own, local_qos)
        if not spatial:
            self.create_subscription(Reply, topics.reply_topic(self.drone), self.on_reply, comm_qos, raw=True)
            self.create_subscription(FeatureMap, topics.feature_topic(self.drone), self.on_features, comm_qos,
                                     raw=True)
        self.wake_timer = self.create_timer(1.0, self.on_wake, autostart=False)
        self.published = 0
        self.get_logger().info(f'{self.log_prefix}fusion ready: method {self.method.describe()}, '
                               f'deadline {deadline_ms} ms, replies {reply_ms} ms, select {select}')

    def counters(self) -> dict[str, int]:
        return {'published': self.published, **{k: int(v) for k, v in self.tracker.counters.items()}}

    # ------------------------------------------------------------------ helpers
    def now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _count(self, stamp_ns: int, out: int = 0, inc: int = 0) -> None:
        entry = self.bytes.get(stamp_ns)
        if entry is None:
            entry = [0, 0]
            self.bytes.put(stamp_ns, entry)
        entry[0] += out
        entry[1] += inc

    def _rearm(self) -> None:
        wake = self.tracker.next_wakeup()
        if wake is None:
            self.wake_timer.cancel()
            return
        self.wake_timer.timer_period_ns = max(wake - self.now_ns(), 1_000_000)
        self.wake_timer.reset()

    def _run(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, ConnectAction):
                self.send_connect(action)
            elif isinstance(action, FrameOutcome):
                self.publish_outcome(action)
        self._rearm()

    # ------------------------------------------------------------------ input
    def on_own(self, msg: PerceptionOutput):
        stamp_ns = stamp_to_ns(msg.header.stamp)
        try:
            own = EncoderOutput(
                features=decode_tensor(msg.features, self.limits, 'perception.features'),
                # spatial methods keep their self-confidence map in `key` (runtime/onnx_mash.py)
                key=decode_tensor(msg.key, self.limits, 'perception.key') if self.method.spatial else None,
                query=None,
                own_classes=decode_tensor(msg.own_classes, self.limits, 'perception.own_classes',
                                          out_dtype='uint8'))
        except CodecError as e:
            self.reject(e.reason, f'own output of frame {stamp_label(stamp_ns)}: {e}')
            return
        if msg.requested:
            self._count(stamp_ns, out=msg.request_bytes)
        self_score = None if math.isnan(msg.self_score) else float(msg.self_score)
        own.self_score = self_score
        self._run(self.tracker.on_own(stamp_ns, own, msg.requested, self_score, self.now_ns()))

    def on_reply(self, data: bytes):
        got = self.receive(data, Reply, 'reply', decode=lambda m: decode_tensor(
            m.score, self.limits, 'reply.score', expect_shape=(None,)))
        if got is None:
            return
        msg, stamp_ns, score = got
        if score.size < 1:
            self.reject('bad_shape', f'reply from {self.name_of[msg.sender]} for frame {stamp_label(stamp_ns)}: '
                        'reply.score.shape: empty score')
            return
        self._count(stamp_ns, inc=len(data))
        self._run(self.tracker.on_reply(stamp_ns, msg.sender, float(score[0]), self.now_ns()))

    def on_features(self, data: bytes):
        got = self.receive(data, FeatureMap, 'features', decode=lambda m: decode_tensor(
            m.features, self.limits, 'feature.features', expect_shape=self.method.feature_shape()))
        if got is None:
            return
        msg, stamp_ns, features = got
        self._count(stamp_ns, inc=len(data))
        self._run(self.tracker.on_features(stamp_ns, msg.sender, features, self.now_ns()))

    def on_patches(self, data: bytes):
        got = self.receive(data, PatchSegments, 'patches', decode=lambda m: self.method.decode_reply(m, self.limits))
        if got is None:
            return
        msg, stamp_ns, patches = got
        self._count(stamp_ns, inc=len(data))
        # the score reported in fusion/info: the mean confidence of the cells sent (0 for none)
        score = float(patches.confidence.mean()) if patches.count else 0.0
        self._run(self.tracker.on_reply(stamp_ns, msg.sender, score, self.now_ns(), payload=patches))

    def on_wake(self):
        lost = self.tracker.counters['lost_own']
        self._run(self.tracker.on_time(self.now_ns()))
        if self.tracker.counters['lost_own'] > lost:
            self.get_logger().warning(
                f'{self.log_prefix}{self.tracker.counters["lost_own"] - lost} frame(s) got replies but this drone\'s '
                f'own perception output never arrived by the deadline: nothing to publish for them '
                f'({self.tracker.counters["lost_own"]} so far)')

    # ------------------------------------------------------------------ output
    def send_connect(self, action: ConnectAction) -> None:
        for receiver in action.receivers:
            msg = Connect(header=Header(), sender=self.drone_id, receiver=receiver)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(action.stamp_ns, 1_000_000_000)
            payload = serialize_message(msg)
            self.connect_pubs[receiver].publish(payload)
            self._count(action.stamp_ns, out=len(payload))

    def publish_outcome(self, outcome: FrameOutcome) -> None:
        own: EncoderOutput = outcome.own
        if outcome.received and self.method.spatial:
            classes = self.method.fuse(own, {self.slots[s]: p for s, p in outcome.received.items()})
        elif outcome.received:
            classes = self.method.fuse(own, outcome.received, outcome.scores)
        elif getattr(self.method, 'gate', False) and outcome.requested and not outcome.fallback:
            classes = self.method.fuse(own, {}, outcome.scores)   # When2com: the gate chose to decode alone
        else:
            classes = own.own_classes
        header = Header(frame_id=f'{self.drone}/camera')
        header.stamp.sec, header.stamp.nanosec = divmod(outcome.stamp_ns, 1_000_000_000)
        self.seg_pub.publish(array_to_image(classes, 'mono8', header))
        self.color_pub.publish(array_to_image(self.classes.colorize(classes), 'rgb8', header))
        out_bytes, in_bytes = self.bytes.pop(outcome.stamp_ns, [0, 0])
        latency_ms = (self.now_ns() - outcome.stamp_ns) / 1e6
        answered = sorted(outcome.scores)
        info = FusionInfo(header=header, drone=self.drone_id, method=self.method_name,
                          requested=outcome.requested, asked=outcome.asked, answered=answered,
                          scores=[outcome.scores[i] for i in answered], selected=outcome.selected,
                          received=sorted(outcome.received), deadline_met=outcome.deadline_met,
                          fallback=outcome.fallback, bytes_out=out_bytes, bytes_in=in_bytes,
                          latency_ms=latency_ms)
        self.info_pub.publish(info)
        self.published += 1
        if outcome.requested:
            if self.method.spatial:
                chosen = ','.join(f'{self.name_of.get(i, str(i))}:{p.count}' for i, p in sorted(outcome.received.items()))
                chosen = f'cells {chosen or "none"}'
            else:
                chosen = 'selected ' + (','.join(self.name_of.get(i, str(i)) for i in outcome.selected) or 'none')
            self.get_logger().info(
                f'{self.log_prefix}frame {stamp_label(outcome.stamp_ns)}: {len(answered)}/{len(outcome.asked)} '
                f'replies, {chosen}, {outcome.reason}'
                f'{" (FALLBACK)" if outcome.fallback else ""}, {latency_ms:.1f} ms, '
                f'{out_bytes} B out / {in_bytes} B in')


def main(args=None) -> int:
    from .common import spin_nodes
    return spin_nodes([FusionNode], args)


if __name__ == '__main__':
    raise SystemExit(main())
