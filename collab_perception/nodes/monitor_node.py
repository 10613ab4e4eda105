"""Monitor: the bytes that cross DDS, per frame, sender and topic.

Subscribes raw (as `ros2 topic bw` does: no deserialization, the callback gets the serialized CDR
payload) to every comm topic of the swarm and to any configured extra topic. Each message is attributed
to its frame by the header stamp and to its sender by the message's sender id (comm topics) or the
topic's namespace (extra topics), read from the first bytes of the payload (runtime/cdr.py).

Sizes: between processes Fast DDS pads every payload to a multiple of 4 bytes, so `len(raw)` can exceed
the message's serialized size by up to 3 bytes. The monitor reports the exact serialized size (what
`serialize_message` gives, and what the rest of the project accounts), found by re-serializing the
message when the payload length could hold padding, and the delivered size as `wire_payload_bytes`.

Publishes BandwidthStats on /swarm/bandwidth every `period_s` (plain numeric fields for rqt_plot); on
exit writes `summary.json` and `frames.csv` (one row per frame, sender and topic) into `output_dir`.
"""
from __future__ import annotations

import os
import time
from rclpy.node import Node
from rclpy.qos import QoSProfile
from std_msgs.msg import Header

from collab_perception.msg import BandwidthStats

from ..runtime import topics
from ..runtime.bandwidth import BandwidthLedger, CsvFrameWriter, write_json
from ..runtime.cdr import CdrError, read_comm_prefix, read_header
from .common import (COMM_TYPES, StatusPublisher, declare, declare_qos, declare_swarm, ns_to_stamp, resolve_type,
                     serialized_size)


def parse_extra_topics(text: str) -> list[tuple[str, str]]:
    out = []
    for item in filter(None, (t.strip() for t in text.split(','))):
        topic, sep, type_name = item.partition(':')
        if not sep or not topic or not type_name:
            raise ValueError(f"parameter 'extra_topics': {item!r} is not 'topic:package/msg/Type'")
        out.append((topic, type_name))
    return out


class MonitorNode(Node):
    def __init__(self):
        super().__init__('monitor')
        self.names, self.ids = declare_swarm(self)
        period = declare(self, 'period_s')
        window = declare(self, 'window_s')
        horizon = declare(self, 'frame_horizon_s')
        frame_topic = declare(self, 'frame_topic')
        extra = parse_extra_topics(declare(self, 'extra_topics'))
        # summary.json and frames.csv; without one: $ROS_HOME/collab_perception/monitor-<time>
        self.output_dir = declare(self, 'output_dir')
        comm_qos = declare_qos(self, 'comm')
        # Same reliability as the publishers (a reliable reader would not match best-effort writers),
        # a deeper queue so that bursts are counted, not dropped.
        qos = QoSProfile(depth=200, reliability=comm_qos.reliability, durability=comm_qos.durability,
                         history=comm_qos.history)

        self.name_of = {i: n for i, n in zip(self.ids, self.names)}
        self.ledger = BandwidthLedger(int(horizon * 1e9), int(window * 1e9))
        if not self.output_dir:
            base = os.environ.get('ROS_HOME') or os.path.expanduser('~/.ros')
            self.output_dir = os.path.join(base, 'collab_perception', time.strftime('monitor-%Y%m%d-%H%M%S'))
        os.makedirs(self.output_dir, exist_ok=True)
        self.csv = CsvFrameWriter(os.path.join(self.output_dir, 'frames.csv'))
        self.topics = topics.comm_topics(self.names)
        for topic, kind in self.topics.items():
            self.create_subscription(COMM_TYPES[kind], topic, self._callback(topic, COMM_TYPES[kind], comm=True), qos,
                                     raw=True)
        for topic, type_name in extra:
            msg_type = resolve_type(type_name)
            fields = list(msg_type.get_fields_and_field_types().items())
            if not fields or fields[0] != ('header', 'std_msgs/Header'):
                raise ValueError(f"extra topic {topic}: {type_name} has no std_msgs/Header first; its bytes "
                                 'cannot be attributed to a frame')
            self.create_subscription(msg_type, topic, self._callback(topic, msg_type, comm=False), qos, raw=True)
            self.topics[topic] = 'other'
        self.create_subscription(Header, frame_topic, self.on_frame, 10)
        self.stats_pub = self.create_publisher(BandwidthStats, topics.BANDWIDTH, 10)
        self.create_timer(period, self.publish_stats)
        self.status = StatusPublisher(self, 'swarm/monitor', 'swarm')
        self.get_logger().info(f'measuring {len(self.topics)} topics for {", ".join(self.names)}; '
                               f'summary -> {self.output_dir}')

    def now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _serialized_size(self, data: bytes, msg_type, topic: str) -> int:
        """The message's serialized size without the transport's alignment padding."""
        try:
            return serialized_size(data, msg_type)
        except Exception:  # noqa: BLE001 - undecodable: count what arrived
            self.ledger.reject(topic, 'undecodable payload (counted at its delivered size)')
            return len(data)

    def _callback(self, topic: str, msg_type, comm: bool):
        """Raw callback for one topic. Comm messages name their sender; other topics are attributed to the
        drone whose namespace they live in."""
        owner = topics.topic_owner(topic) or 'swarm'

        def callback(data: bytes):
            try:
                if comm:
                    prefix = read_comm_prefix(data)
                    stamp_ns, sender = prefix.stamp_ns, self.name_of.get(prefix.sender, f'id{prefix.sender}')
                else:
                    stamp_ns, sender = read_header(data).stamp_ns, owner
            except CdrError as e:
                self.ledger.reject(topic, str(e))
                return
            self.ledger.record(topic, sender, stamp_ns, self._serialized_size(data, msg_type, topic),
                               self.now_ns(), wire_nbytes=len(data))
        return callback

    def on_frame(self, msg: Header):
        self.ledger.add_frame(msg.stamp.sec * 1_000_000_000 + msg.stamp.nanosec, self.now_ns())

    def publish_stats(self):
        now = self.now_ns()
        self.csv.write(self.ledger.fold(now))
        stats = self.ledger.window_stats(now)
        msg = BandwidthStats()
        ns_to_stamp(now, msg.header.stamp)
        for key, value in stats.items():
            setattr(msg, key, value)
        self.stats_pub.publish(msg)

    def close(self):
        """Write the summary (called once on shutdown)."""
        self.csv.write(self.ledger.fold(None))
        self.csv.close()
        summary = {'drones': self.names, 'topics': self.topics, **self.ledger.summary(),
                   'csv': self.csv.path, 'csv_rows': self.csv.rows}
        path = os.path.join(self.output_dir, 'summary.json')
        write_json(path, summary)
        self.get_logger().info(f'{summary["frames"]} frames, {summary["bytes_per_frame"]:.0f} B/frame; '
                               f'summary written to {path}')


def main(args=None) -> int:
    from .common import spin_nodes
    return spin_nodes([MonitorNode], args)


if __name__ == '__main__':
    raise SystemExit(main())
