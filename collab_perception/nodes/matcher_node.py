"""Matcher, on every drone: answers other drones' requests (Who2com §III-B, match and connect).

- /swarm/request (from any other drone): score = method.match(query, own key) -> Reply on
  /<requester>/comm/reply. A request that overtakes this drone's own perception output for the same
  stamp waits for it, until the requester's deadline.
- comm/connect (addressed to this drone): send this drone's features for that stamp as a FeatureMap on
  /<requester>/comm/feature, to the requester alone.

With a pose-warping model (Who2com §IV-B pose settings) the key and the features are those of this
drone's view warped into the requester's with this drone's depth and the two poses (the requester's comes
in the Request; both cameras share one camera model, whose intrinsics come from camera_info): the
matcher joins its camera image, depth and pose by stamp and encodes the warp per request.

With a spatial method (MASH §III) the matcher keeps this drone's camera images per stamp and answers a
request's query map with the supporter role (cost volume, smoothing, sampling) on /<requester>/comm/patches:
a PatchSegments with only the requester's cells it matched above the confidence threshold. There is no
connect stage.

Comm topics are subscribed raw and deserialized here, so that a malformed payload is rejected and
counted instead of raising inside the executor. Own outputs are kept per stamp in a ring buffer.
"""
from __future__ import annotations

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from collab_perception.msg import Connect, FeatureMap, PatchSegments, PerceptionOutput, Reply, Request

from ..runtime import topics
from ..runtime.codec import CodecError, decode_tensor, encode_tensor
from ..runtime.handshake import StampRing, SupporterCache
from ..runtime.methods import EncoderOutput
from ..runtime.sync import StampJoiner
from ..world import geometry
from .common import DroneNode, declare, declare_codec, declare_qos, image_to_array, stamp_label, stamp_to_ns


class MatcherNode(DroneNode):
    def __init__(self):
        super().__init__('matcher', roles=('matcher',))
        cache_frames = declare(self, 'cache_frames', 16, 'frames of own output kept', minimum=1, maximum=1000)
        self.default_deadline_ns = declare(self, 'deadline_ms', 300, 'deadline of requests that give none',
                                           minimum=1) * 1_000_000
        self.dtypes, self.limits = declare_codec(self)
        comm_qos = declare_qos(self, 'comm', 'reliable', 10)
        local_qos = declare_qos(self, 'local', 'reliable', 10)
        self.cache = SupporterCache(cache_frames)
        peers = [(i, n) for i, n in zip(self.ids, self.names) if i != self.drone_id]
        self.replies = 0
        self.features_sent = 0
        self.patch_cells = 0
        if self.method.spatial:
            # MASH: patches answer the request directly (the supporter role encodes its camera image)
            budget = declare(self, 'patch_budget', 0.1, 'most bytes of a patches reply, as a fraction of the '
                             'label image (0: no cap)', minimum=0.0, maximum=1.0)
            self.max_cells = self.method.max_cells(budget, self.dtypes['patch_dtype'])
            self.patch_pubs = {i: self.create_publisher(PatchSegments, topics.patches_topic(n), comm_qos)
                               for i, n in peers}
            sensor_qos = declare_qos(self, 'sensor', 'reliable', 5)
            self.create_subscription(Image, topics.IMAGE, self.on_image, sensor_qos)
        else:
            self.reply_pubs = {i: self.create_publisher(Reply, topics.reply_topic(n), comm_qos) for i, n in peers}
            self.feature_pubs = {i: self.create_publisher(FeatureMap, topics.feature_topic(n), comm_qos)
                                 for i, n in peers}
        if self.method.warp:
            self.method.load(('encoder',))          # the warped view is encoded here, per request
            self.method.warmup()
            sensor_qos = declare_qos(self, 'sensor', 'reliable', 5)
            self.joiner = StampJoiner(('image', 'depth', 'pose'), capacity=8)
            self.K = None
            self.warped: StampRing[np.ndarray] = StampRing(4 * cache_frames)   # (stamp, requester) -> features
            self.create_subscription(Image, topics.IMAGE, lambda m: self.on_camera('image', m), sensor_qos)
            self.create_subscription(Image, topics.DEPTH, lambda m: self.on_camera('depth', m), sensor_qos)
            self.create_subscription(PoseStamped, topics.POSE, lambda m: self.on_camera('pose', m), sensor_qos)
            self.create_subscription(CameraInfo, topics.CAMERA_INFO, self.on_camera_info, sensor_qos)
        elif not self.method.spatial:
            self.create_subscription(PerceptionOutput, topics.PERCEPTION, self.on_own, local_qos)
        self.create_subscription(Request, topics.REQUEST, self.on_request, comm_qos, raw=True)
        if not self.method.spatial:
            self.create_subscription(Connect, topics.connect_topic(self.drone), self.on_connect, comm_qos, raw=True)
        self.create_timer(0.1, self.expire)
        self.get_logger().info(f'{self.log_prefix}matcher ready: method {self.method.describe()}')

    def counters(self) -> dict[str, int]:
        return {'replies': self.replies, 'features_sent': self.features_sent, 'patch_cells': self.patch_cells,
                'expired_requests': self.cache.counters['expired_requests'],
                'stale_requests': self.cache.counters['stale_requests']}

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
        self._own_ready(stamp_ns, own)

    def _own_ready(self, stamp_ns: int, own) -> None:
        for pending in self.cache.add_own(stamp_ns, own, self.get_clock().now().nanoseconds):
            self.answer(pending.stamp_ns, pending.sender, pending.query, own)

    def on_image(self, msg: Image):
        """Spatial mode: this drone's camera image of one stamp (the supporter role encodes it per request)."""
        stamp_ns = stamp_to_ns(msg.header.stamp)
        try:
            image = image_to_array(msg, expect=('rgb8', 'bgr8'))
        except ValueError as e:
            self.reject('bad_image', f'frame {stamp_label(stamp_ns)}: {e}')
            return
        self._own_ready(stamp_ns, image)

    def on_camera_info(self, msg: CameraInfo):
        self.K = np.array(msg.k, dtype=np.float64).reshape(3, 3)

    def on_camera(self, kind: str, msg):
        """Warping mode: this drone's image, depth and camera pose of one stamp."""
        stamp_ns = stamp_to_ns(msg.header.stamp)
        try:
            if kind == 'pose':
                p, o = msg.pose.position, msg.pose.orientation
                value = geometry.pose_matrix([p.x, p.y, p.z], [o.x, o.y, o.z, o.w])
            else:
                value = image_to_array(msg, expect=('rgb8', 'bgr8') if kind == 'image' else ('32FC1',))
        except ValueError as e:
            self.reject(f'bad_{kind}', f'frame {stamp_label(stamp_ns)}: {e}')
            return
        joined = self.joiner.add(kind, stamp_ns, value)
        if joined:
            self._own_ready(stamp_ns, joined)

    def warped_view(self, stamp_ns: int, requester: int, own: dict, pose) -> EncoderOutput:
        """This drone's view warped into the requester's (its depth, both poses; Who2com §IV-B), encoded."""
        T_req = geometry.pose_matrix(pose[:3], pose[3:])
        warped, _ = geometry.warp_to_target(own['image'], own['depth'], self.K, own['pose'], self.K, T_req)
        out = self.method.encode(warped)
        self.warped.put((stamp_ns, requester), out.features)
        return out

    # ------------------------------------------------------------------ comm input
    def on_request(self, data: bytes):
        got = self.receive(data, Request, 'request', allow_broadcast=True, decode=lambda m: decode_tensor(
            m.query, self.limits, 'request.query', expect_shape=self.method.query_shape()))
        if got is None:
            return
        msg, stamp_ns, query = got
        pose = list(msg.pose)
        if self.method.warp and (len(pose) != 7 or not np.isfinite(pose).all()):
            self.reject('bad_pose', f'request from {self.name_of[msg.sender]} for frame {stamp_label(stamp_ns)}: '
                        f'request.pose: this model warps into the requester\'s view and needs its 7-float pose, '
                        f'got {len(pose)} values')
            return
        deadline_ns = (msg.deadline_ms * 1_000_000) or self.default_deadline_ns
        if self.cache.request(stamp_ns, msg.sender, (query, pose), stamp_ns + deadline_ns,
                              self.get_clock().now().nanoseconds):
            self.answer(stamp_ns, msg.sender, (query, pose), self.cache.own(stamp_ns))

    def answer(self, stamp_ns: int, requester: int, request, own):
        query, pose = request
        if self.method.spatial:
            self.answer_patches(stamp_ns, requester, query, own)
            return
        if self.method.warp and self.K is None:
            self.reject('no_camera_info', f'frame {stamp_label(stamp_ns)}: no camera_info yet, cannot warp')
            return
        key = self.warped_view(stamp_ns, requester, own, pose).key if self.method.warp else own.key
        score = self.method.match(query, key)
        reply = Reply(header=Header(), sender=self.drone_id, receiver=requester)
        reply.header.stamp.sec, reply.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        encode_tensor(score, self.dtypes['score_dtype'], reply.score, 'reply.score')
        self.reply_pubs[requester].publish(serialize_message(reply))
        self.replies += 1

    def answer_patches(self, stamp_ns: int, requester: int, query: np.ndarray, image: np.ndarray) -> None:
        """MASH §III-A: match the requester's query map against this view, send the confident cells."""
        patches = self.method.patches(query, image, max_cells=self.max_cells)
        msg = PatchSegments(header=Header(), sender=self.drone_id, receiver=requester)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        self.method.encode_reply(patches, self.dtypes['patch_dtype'], msg)
        self.patch_pubs[requester].publish(serialize_message(msg))
        self.replies += 1
        self.patch_cells += patches.count
        self.get_logger().debug(f'{self.log_prefix}frame {stamp_label(stamp_ns)}: {patches.count} cells -> '
                                f'{self.name_of[requester]}')

    def on_connect(self, data: bytes):
        got = self.receive(data, Connect, 'connect', decode=lambda m: None)
        if got is None:
            return
        msg, stamp_ns, _ = got
        frame = stamp_label(stamp_ns)
        own = self.warped.get((stamp_ns, msg.sender)) if self.method.warp else self.cache.own(stamp_ns)
        if own is None:
            self.reject('no_features', f'connect from {self.name_of[msg.sender]} for frame {frame}: '
                        'features of that frame are no longer (or not yet) cached')
            return
        feature = FeatureMap(header=Header(stamp=msg.header.stamp), sender=self.drone_id, receiver=msg.sender)
        features = own if self.method.warp else own.features
        encode_tensor(features, self.dtypes['feature_dtype'], feature.features, 'feature.features')
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
