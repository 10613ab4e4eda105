"""Fusion, on every drone: the requester's side of the protocol and the drone's published output.

For a frame on which this drone asked for help (perception published a Request), the protocol's requester
role (runtime/protocols) collects what the supporters send until it can fuse or the frame's deadline passes:
the handshake's replies, a Connect to the selected drones and their FeatureMaps (Who2com §III-B: reply
timeout, then argmax / top-n / threshold gate); MASH's PatchSegments (no connect stage). With nothing usable
in time it publishes its own prediction, flagged as fallback. Frames on which it did not ask are published
at once from its own prediction.

Outputs: `segmentation` (mono8 class ids), `segmentation/color` (rgb8 class colours) and `fusion/info`
(who was asked, who answered, scores, selection, deadline met, bytes in and out, latency), exactly one of
each per camera frame whose perception output arrived. A protocol whose result is a step for a policy
(CollaVN's memory protocol) names its output message instead of the class map (`Protocol.output`:
nav/step), published once per step.
"""
from __future__ import annotations

from sensor_msgs.msg import Image
from std_msgs.msg import Header

from collab_perception.msg import FusionInfo, PerceptionOutput

from ..classes import load_classes
from ..runtime import topics
from ..runtime.codec import CodecError
from ..runtime.handshake import SELECTORS, StampRing
from ..runtime.protocols import FrameResult
from .common import (DroneNode, array_to_image, declare, declare_qos, ns_to_stamp, resolve_type, stamp_label,
                     stamp_to_ns)


class FusionNode(DroneNode):
    def __init__(self):
        super().__init__('fusion', roles=('decoder',))
        params = {name: declare(self, name) for name in ('deadline_ms', 'reply_timeout_ms', 'top_n',
                                                          'score_threshold', 'cache_frames')}
        params['select'] = declare(self, 'select', choices=SELECTORS.names())
        comm_qos = declare_qos(self, 'comm')
        local_qos = declare_qos(self, 'local')
        self.classes = load_classes()
        self.requester = self.protocol.requester(self.method, self.role_context(**params))
        self.apply_at_run_time(self.requester.update)
        self.bytes: StampRing[list[int]] = StampRing(4 * params['cache_frames'])   # stamp -> [out, in]
        self.publishers_by_kind = self.comm_publishers(self.requester.outbox, comm_qos)
        self.seg_pub = self.create_publisher(Image, topics.SEGMENTATION, local_qos)
        self.color_pub = self.create_publisher(Image, topics.SEGMENTATION_COLOR, local_qos)
        self.info_pub = self.create_publisher(FusionInfo, topics.FUSION_INFO, local_qos)
        # a protocol whose result is not (only) a class map names the message fusion hands on (CollaVN: the
        # step for the policy node)
        self.output_pub = None
        if self.protocol.output:
            topic, type_name = self.protocol.output
            self.output_type = resolve_type(type_name)
            self.output_pub = self.create_publisher(self.output_type, topic, local_qos)
        self.create_subscription(PerceptionOutput, topics.PERCEPTION, self.on_own, local_qos)
        self.subscribe_comm(self.requester.inbox, self.requester, self.on_message, comm_qos)
        self.wake_timer = self.create_timer(1.0, self.on_wake, autostart=False)
        self.published = 0
        self.get_logger().info(f'{self.log_prefix}fusion ready: method {self.method.describe()}, deadline '
                               f'{params["deadline_ms"]} ms, replies {params["reply_timeout_ms"]} ms, select '
                               f'{params["select"]}')

    def counters(self) -> dict[str, int]:
        return {'published': self.published, **self.requester.counters()}

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
        wake = self.requester.next_wakeup()
        if wake is None:
            self.wake_timer.cancel()
            return
        self.wake_timer.timer_period_ns = max(wake - self.now_ns(), 1_000_000)
        self.wake_timer.reset()

    def _run(self, actions: list) -> None:
        results = self.carry_out(actions, self.publishers_by_kind,
                                 sent=lambda action, size: self._count(action.stamp_ns, out=size))
        for result in results:
            self.publish_result(result)
        self._rearm()

    # ------------------------------------------------------------------ input
    def on_own(self, msg: PerceptionOutput):
        stamp_ns = stamp_to_ns(msg.header.stamp)
        try:
            own = self.requester.decode_local(msg)
        except CodecError as e:
            self.reject(e.reason, f'own output of frame {stamp_label(stamp_ns)}: {e}')
            return
        if msg.requested:
            self._count(stamp_ns, out=msg.request_bytes)
        self._run(self.requester.on_own(stamp_ns, own, msg.requested, self.now_ns()))

    def on_message(self, kind: str, msg, stamp_ns: int, payload, size: int) -> None:
        self._count(stamp_ns, inc=size)
        self._run(self.requester.on_message(kind, msg, stamp_ns, payload, self.now_ns()))

    def on_wake(self):
        lost = self.requester.counters().get('lost_own', 0)
        self._run(self.requester.on_time(self.now_ns()))
        now_lost = self.requester.counters().get('lost_own', 0)
        if now_lost > lost:
            self.get_logger().warning(
                f'{self.log_prefix}{now_lost - lost} frame(s) got replies but this drone\'s own perception output '
                f'never arrived by the deadline: nothing to publish for them ({now_lost} so far)')

    # ------------------------------------------------------------------ output
    def publish_result(self, result: FrameResult) -> None:
        outcome = result.outcome
        header = Header(frame_id=f'{self.drone}/camera')
        ns_to_stamp(outcome.stamp_ns, header.stamp)
        if result.classes is not None:
            self.seg_pub.publish(array_to_image(result.classes, 'mono8', header))
            self.color_pub.publish(array_to_image(self.classes.colorize(result.classes), 'rgb8', header))
        if result.output is not None and self.output_pub is not None:
            out = self.output_type(header=header)
            result.output(out)
            self.output_pub.publish(out)
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
            self.get_logger().info(
                f'{self.log_prefix}frame {stamp_label(outcome.stamp_ns)}: {len(answered)}/{len(outcome.asked)} '
                f'replies, {result.summary}, {outcome.reason}'
                f'{" (FALLBACK)" if outcome.fallback else ""}, {latency_ms:.1f} ms, '
                f'{out_bytes} B out / {in_bytes} B in')


def main(args=None) -> int:
    from .common import spin_nodes
    return spin_nodes([FusionNode], args)


if __name__ == '__main__':
    raise SystemExit(main())
