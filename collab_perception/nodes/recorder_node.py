"""Recorder: the swarm's topics into a rosbag2 bag (MCAP), as `ros2 bag record` would, without a ROS install.

Subscribes raw to every topic of `record_topics` ('topic:package/msg/Type:qos', from the node plan: each
drone's camera streams, segmentation and fusion/info, every comm topic, /swarm/frame and /swarm/bandwidth)
and writes each message's serialized bytes (the transport's padding removed) with its receive time
(runtime/bag.py). `collab-perception replay BAG` flies the recorded cameras through the nodes again, and
`runtime.bag.bandwidth_from_bag` recomputes the monitor's numbers from the comm messages.
"""
from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node

from ..runtime.bag import BagWriter
from .common import ParameterError, StatusPublisher, declare, declare_qos, resolve_type, serialized_size, spin_nodes


class RecorderNode(Node):
    def __init__(self):
        super().__init__('recorder')
        path = declare(self, 'output_dir')
        if not path:
            raise ParameterError("parameter 'output_dir': the bag's path is required")
        entries = [e for e in declare(self, 'record_topics') if e]
        qos = {name: declare_qos(self, name) for name in ('sensor', 'comm', 'local')}
        self.bag = BagWriter(path)
        self.undecodable = 0
        for entry in entries:
            topic, type_name, qos_name = entry.rsplit(':', 2)
            msg_type = resolve_type(type_name)
            self.bag.add(topic, type_name)
            self.create_subscription(msg_type, topic, self._callback(topic, msg_type), qos[qos_name], raw=True)
        self.status = StatusPublisher(self, 'swarm/recorder', 'swarm', self.status_values)
        self.get_logger().info(f'recording {len(entries)} topics into {path}')

    def status_values(self):
        return DiagnosticStatus.OK, 'ok', {'messages': sum(self.bag.counts.values()), 'undecodable': self.undecodable}

    def _callback(self, topic: str, msg_type):
        def callback(data: bytes) -> None:
            try:
                data = data[:serialized_size(data, msg_type)]
            except Exception:  # noqa: BLE001 - a payload that does not decode is kept as delivered
                self.undecodable += 1
            self.bag.write(topic, self.get_clock().now().nanoseconds, bytes(data))
        return callback

    def close(self) -> None:
        self.bag.close()
        self.get_logger().info(f'{sum(self.bag.counts.values())} messages on {len(self.bag.counts)} topics '
                               f'written to {self.bag.path}')


def main(args=None) -> int:
    return spin_nodes([RecorderNode], args)


if __name__ == '__main__':
    raise SystemExit(main())
