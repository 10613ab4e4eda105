"""Matcher, on every drone: answers other drones' requests (Who2com §III-B, match and connect).

- /swarm/request (from any other drone): score = method.match(query, own key) -> Reply on
  /<requester>/comm/reply. A request that overtakes this drone's own perception output for the same
  stamp waits for it, until the requester's deadline.
- comm/connect (addressed to this drone): send this drone's features for that stamp as a FeatureMap on
  /<requester>/comm/feature, to the requester alone.

Comm topics are subscribed raw and deserialized here, so that a malformed payload is rejected and
counted instead of raising inside the executor. Own outputs are kept per stamp in a ring buffer.
"""
from __future__ import annotations

from rclpy.serialization import serialize_message
from std_msgs.msg import Header

from collab_perception.msg import Connect, FeatureMap, PerceptionOutput, Reply, Request

from ..runtime import topics
from ..runtime.codec import CodecError, decode_tensor, encode_tensor
from ..runtime.handshake import SupporterCache
from ..runtime.methods import EncoderOutput
from .common import DroneNode, declare, declare_codec, declare_qos, stamp_label, stamp_to_ns


class MatcherNode(DroneNode):
    def __init__(self):
        super().__init__('matcher')
        cache_frames = declare(self, 'cache_frames', 16, 'frames of own output kept', minimum=1, maximum=1000)
        self.default_deadline_ns = declare(self, 'deadline_ms', 300, 'deadline of requests that give none',
                                           minimum=1) * 1_000_000
        self.dtypes, self.limits = declare_codec(self)
        comm_qos = declare_qos(self, 'comm', 'reliable', 10)
        local_qos = declare_qos(self, 'local', 'reliable', 10)
        self.cache = SupporterCache(cache_frames)
        peers = [(i, n) for i, n in zip(self.ids, self.names) if i != self.drone_id]
        self.reply_pubs = {i: self.create_publisher(Reply, topics.reply_topic(n), comm_qos) for i, n in peers}
        self.feature_pubs = {i: self.create_publisher(FeatureMap, topics.feature_topic(n), comm_qos)
                             for i, n in peers}
        self.create_subscription(PerceptionOutput, topics.PERCEPTION, self.on_own, local_qos)
        self.create_subscription(Request, topics.REQUEST, self.on_request, comm_qos, raw=True)
        self.create_subscription(Connect, topics.connect_topic(self.drone), self.on_connect, comm_qos, raw=True)
        self.create_timer(0.1, self.expire)
        self.replies = 0
        self.features_sent = 0
        self.get_logger().info(f'{self.log_prefix}matcher ready: method {self.method.describe()}')

    # ------------------------------------------------------------------ local input
    def on_own(self, msg: PerceptionOutput):
        stamp_ns = stamp_to_ns(msg.header.stamp)
        try:
            own = EncoderOutput(
                features=decode_tensor(msg.features, self.limits, 'perception.features'),
                key=decode_tensor(msg.key, self.limits, 'perception.key'),
                query=None, own_classes=None)
        except CodecError as e:
            self.reject(e.reason, f'own output of frame {stamp_label(stamp_ns)}: {e}')
            return
        for pending in self.cache.add_own(stamp_ns, own):
            self.answer(pending.stamp_ns, pending.sender, pending.query, own)

    # ------------------------------------------------------------------ comm input
    def on_request(self, data: bytes):
        got = self.receive(data, Request, 'request', allow_broadcast=True, decode=lambda m: decode_tensor(
            m.query, self.limits, 'request.query', expect_shape=self.method.query_shape()))
        if got is None:
            return
        msg, stamp_ns, query = got
        deadline_ns = (msg.deadline_ms * 1_000_000) or self.default_deadline_ns
        if self.cache.request(stamp_ns, msg.sender, query, stamp_ns + deadline_ns):
            self.answer(stamp_ns, msg.sender, query, self.cache.own(stamp_ns))

    def answer(self, stamp_ns: int, requester: int, query, own: EncoderOutput):
        score = self.method.match(query, own.key)
        reply = Reply(header=Header(), sender=self.drone_id, receiver=requester)
        reply.header.stamp.sec, reply.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        encode_tensor(score, self.dtypes['score_dtype'], reply.score, 'reply.score')
        self.reply_pubs[requester].publish(serialize_message(reply))
        self.replies += 1

    def on_connect(self, data: bytes):
        got = self.receive(data, Connect, 'connect', decode=lambda m: None)
        if got is None:
            return
        msg, stamp_ns, _ = got
        frame = stamp_label(stamp_ns)
        own = self.cache.own(stamp_ns)
        if own is None:
            self.reject('no_features', f'connect from {self.name_of[msg.sender]} for frame {frame}: '
                        'features of that frame are no longer (or not yet) cached')
            return
        feature = FeatureMap(header=Header(stamp=msg.header.stamp), sender=self.drone_id, receiver=msg.sender)
        encode_tensor(own.features, self.dtypes['feature_dtype'], feature.features, 'feature.features')
        self.feature_pubs[msg.sender].publish(serialize_message(feature))
        self.features_sent += 1
        self.get_logger().debug(f'{self.log_prefix}frame {frame}: features -> {self.name_of[msg.sender]}')

    def expire(self):
        self.cache.expire(self.get_clock().now().nanoseconds)


def main(args=None) -> int:
    from .common import spin_nodes
    return spin_nodes([MatcherNode], args)


if __name__ == '__main__':
    raise SystemExit(main())
