"""Perception, on every drone: camera image -> the method's encoder (Who2com §III-B, Eq. 1-2).

Publishes the drone's features, key and own prediction on the local `perception/output` topic for its
matcher and fusion nodes. When the drone asks for help on this frame (role `requester`, or role `auto`
and the method's gate says so) it broadcasts a Request with its compact query on /swarm/request; with a
pose-warping model (trained on a pose setting, Who2com §IV-B) the request also carries this camera's pose,
joined to the image by stamp, so that supporters can warp their views into this one. With a spatial method
(MASH §III) the query is a quantized query map and the locally published output holds what fusion needs
(own class distribution, self-confidence) only on frames this drone asks about.
"""
from __future__ import annotations

import math

import numpy as np
from rclpy.serialization import serialize_message
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from collab_perception.msg import PerceptionOutput, Request

from ..config import BROADCAST_ID
from ..runtime import topics
from ..runtime.codec import CodecError, encode_tensor
from ..runtime.sync import StampJoiner
from .common import DroneNode, declare, declare_codec, declare_qos, image_to_array, stamp_label, stamp_to_ns


_EMPTY = np.zeros(0, np.float32)   # what a spatial method's drone keeps locally on frames it does not fuse


class PerceptionNode(DroneNode):
    def __init__(self):
        super().__init__('perception', roles=('encoder',))
        self.role = declare(self, 'role', 'supporter', 'requester: asks every frame; supporter: never; '
                            'auto: when the method gate says so', choices=('requester', 'supporter', 'auto'))
        self.deadline_ms = declare(self, 'deadline_ms', 300, 'how long the requester waits (sent along)',
                                   minimum=1, maximum=65535)
        self.dtypes, _ = declare_codec(self)
        sensor_qos = declare_qos(self, 'sensor', 'reliable', 5)
        comm_qos = declare_qos(self, 'comm', 'reliable', 10)
        local_qos = declare_qos(self, 'local', 'reliable', 10)
        self.request_pub = self.create_publisher(Request, topics.REQUEST, comm_qos)
        self.output_pub = self.create_publisher(PerceptionOutput, topics.PERCEPTION, local_qos)
        self.create_subscription(Image, topics.IMAGE, self.on_image, sensor_qos)
        if self.method.warp:
            self.joiner = StampJoiner(('image', 'pose'), capacity=8)
            self.create_subscription(PoseStamped, topics.POSE, self.on_pose, sensor_qos)
        self.frames = 0
        self.requests = 0
        wire = getattr(self.method, 'wire', {}).get('query_dtype')
        if wire and wire != self.dtypes['query_dtype']:
            self.get_logger().warning(f'{self.log_prefix}codec.query_dtype is {self.dtypes["query_dtype"]} but the '
                                      f'model was trained with {wire} queries on the wire')
        self.get_logger().info(f'{self.log_prefix}perception ready: method {self.method.describe()}, '
                               f'role {self.role}')

    def counters(self) -> dict[str, int]:
        return {'frames': self.frames, 'requests': self.requests}

    def on_pose(self, msg: PoseStamped):
        p, o = msg.pose.position, msg.pose.orientation
        pose = [p.x, p.y, p.z, o.x, o.y, o.z, o.w]
        joined = self.joiner.add('pose', stamp_to_ns(msg.header.stamp), pose)
        if joined:
            self.process(joined['image'], joined['pose'])

    def on_image(self, msg: Image):
        if self.method.warp:
            joined = self.joiner.add('image', stamp_to_ns(msg.header.stamp), msg)
            if joined:
                self.process(joined['image'], joined['pose'])
        else:
            self.process(msg, None)

    def process(self, msg: Image, pose):
        stamp_ns = stamp_to_ns(msg.header.stamp)
        try:
            image = image_to_array(msg, expect=('rgb8', 'bgr8'))
            out = self.method.encode(image)
        except ValueError as e:
            self.reject('bad_image', f'frame {stamp_label(stamp_ns)}: {e}')
            return
        requested = self.role == 'requester' or (self.role == 'auto' and bool(out.needs_help))
        request_bytes = 0
        if requested:
            request = Request(header=Header(stamp=msg.header.stamp), sender=self.drone_id, receiver=BROADCAST_ID,
                              deadline_ms=self.deadline_ms, pose=pose or [])
            try:
                encode_tensor(out.query, self.dtypes['query_dtype'], request.query, 'request.query')
            except CodecError as e:
                self.get_logger().error(f'{self.log_prefix}frame {stamp_label(stamp_ns)}: query not sent: {e}')
                requested = False
            else:
                payload = serialize_message(request)
                request_bytes = len(payload)
                self.request_pub.publish(payload)
                self.requests += 1
        local = PerceptionOutput(header=Header(stamp=msg.header.stamp, frame_id=self.drone), drone=self.drone_id, requested=requested,
                                 request_bytes=request_bytes,
                                 self_score=math.nan if out.self_score is None else float(out.self_score))
        # a spatial method's local output is the full-resolution class distribution: only fusion needs it, and
        # only on frames it fuses
        keep = requested or not self.method.spatial
        encode_tensor(out.features if keep else _EMPTY, self.method.local_feature_dtype or self.dtypes['local_dtype'],
                      local.features, 'features')
        encode_tensor(out.key if keep else _EMPTY, self.dtypes['local_dtype'], local.key, 'key')
        encode_tensor(out.own_classes, 'uint8', local.own_classes, 'own_classes')
        self.output_pub.publish(local)
        self.frames += 1


def main(args=None) -> int:
    from .common import spin_nodes
    return spin_nodes([PerceptionNode], args)


if __name__ == '__main__':
    raise SystemExit(main())
