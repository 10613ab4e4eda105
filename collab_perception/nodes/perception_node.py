"""Perception, on every drone: camera image -> the method's encoder (Who2com §III-B, Eq. 1-2).

Publishes the drone's own output (features, key, own prediction) on the local `perception/output` topic for
its matcher and fusion nodes. When the drone asks for help on this frame (role `requester`, or role `auto`
and the method's gate says so) it broadcasts a Request on /swarm/request. What the Request and the local
output carry is the protocol's (runtime/protocols): the handshake's compact query, with the camera pose for
a pose-warping model; MASH's query map. The inputs it needs (the image, and the pose where the protocol
asks for it) are joined by stamp.
"""
from __future__ import annotations

from rclpy.serialization import serialize_message
from std_msgs.msg import Header

from collab_perception.msg import PerceptionOutput, Request

from ..config import BROADCAST_ID
from ..runtime import topics
from ..runtime.codec import CodecError
from .common import DroneNode, declare, declare_qos, ns_to_stamp, stamp_label


class PerceptionNode(DroneNode):
    def __init__(self):
        super().__init__('perception', roles=('encoder',))
        self.role = declare(self, 'role')
        self.deadline_ms = declare(self, 'deadline_ms')     # sent along: how long the requester waits
        qos = {name: declare_qos(self, name) for name in ('sensor', 'comm', 'local')}
        self.perception = self.protocol.perception(self.method, self.role_context())
        self.request_pub = self.create_publisher(Request, topics.REQUEST, qos['comm'])
        self.output_pub = self.create_publisher(PerceptionOutput, topics.PERCEPTION, qos['local'])
        self.subscribe_inputs(self.perception.inputs, (), self.process, qos)
        self.frames = 0
        self.requests = 0
        for note in self.perception.warnings():
            self.get_logger().warning(f'{self.log_prefix}{note}')
        self.get_logger().info(f'{self.log_prefix}perception ready: method {self.method.describe()}, '
                               f'role {self.role}')

    def counters(self) -> dict[str, int]:
        return {'frames': self.frames, 'requests': self.requests}

    def process(self, stamp_ns: int, inputs: dict) -> None:
        try:
            out = self.perception.encode(inputs)
        except ValueError as e:
            self.reject('bad_image', f'frame {stamp_label(stamp_ns)}: {e}')
            return
        requested = self.role == 'requester' or (self.role == 'auto' and bool(out.needs_help))
        request_bytes = 0
        if requested:
            request = Request(sender=self.drone_id, receiver=BROADCAST_ID, deadline_ms=self.deadline_ms)
            ns_to_stamp(stamp_ns, request.header.stamp)
            try:
                self.perception.fill_request(out, inputs, request)
            except CodecError as e:
                self.get_logger().error(f'{self.log_prefix}frame {stamp_label(stamp_ns)}: request not sent: {e}')
                requested = False
            else:
                payload = serialize_message(request)
                request_bytes = len(payload)
                self.request_pub.publish(payload)
                self.requests += 1
        local = PerceptionOutput(header=Header(frame_id=self.drone), drone=self.drone_id, requested=requested,
                                 request_bytes=request_bytes)
        ns_to_stamp(stamp_ns, local.header.stamp)
        self.perception.fill_local(out, requested, local)
        self.output_pub.publish(local)
        self.frames += 1


def main(args=None) -> int:
    from .common import spin_nodes
    return spin_nodes([PerceptionNode], args)


if __name__ == '__main__':
    raise SystemExit(main())
