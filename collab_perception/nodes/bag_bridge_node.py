"""Bag bridge: the cameras of a recorded flight (`collab-perception swarm --record`) as the swarm's source.

Reads each drone's camera/image_raw, camera/depth, camera/camera_info, camera/labels and pose from the bag
(runtime/bag.py), groups them by their recorded stamp into snapshots, and publishes them again at
`rate_hz`, through the same readiness wait and camera publishers as the other sources. The images are
published as recorded (a recorded degraded camera stays degraded; nothing is degraded twice), so the drones'
nodes see the same pixels and their fused outputs can be compared frame by frame.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, Image

from ..runtime import topics
from ..runtime.bag import bag_topics, read_bag
from .common import declare, image_to_array, spin_nodes, stamp_to_ns
from .swarm_source import SwarmSource

STREAMS = {'image': (topics.IMAGE, Image), 'depth': (topics.DEPTH, Image), 'info': (topics.CAMERA_INFO, CameraInfo),
           'labels': (topics.LABELS, Image), 'pose': (topics.POSE, PoseStamped)}


class BagBridgeNode(SwarmSource):
    def __init__(self):
        super().__init__('bag_bridge')
        self.path = declare(self, 'bag.path')
        recorded = bag_topics(self.path)
        missing = [f'/{d}/{t}' for d in self.drones for t, _ in STREAMS.values() if f'/{d}/{t}' not in recorded]
        if missing:
            raise ValueError(f'bag.path {self.path}: no recorded {", ".join(missing[:4])}'
                             f'{" and more" if len(missing) > 4 else ""} (recorded with other drones?)')
        self.owner = {f'/{d}/{t}': (d, kind) for d in self.drones for kind, (t, _) in STREAMS.items()}
        self.snapshots = self._snapshots()
        self.timer = self.create_timer(1.0 / self.rate_hz, self.tick)
        self.get_logger().info(f'replaying the cameras of {self.path} at {self.rate_hz:g} Hz')

    def _snapshots(self):
        """Complete snapshots in stamp order: every stream of every drone with one stamp."""
        pending: dict[int, dict] = {}
        need = len(self.drones) * len(STREAMS)
        for m in read_bag(self.path, self.owner):
            drone, kind = self.owner[m.topic]
            msg = deserialize_message(m.data, STREAMS[kind][1])
            stamp = stamp_to_ns(msg.header.stamp)
            parts = pending.setdefault(stamp, {})
            parts[(drone, kind)] = msg
            if len(parts) == need:
                del pending[stamp]
                yield [self._frame(parts, d) for d in self.drones]

    @staticmethod
    def _frame(parts: dict, drone: str) -> SimpleNamespace:
        pose = parts[(drone, 'pose')].pose
        p, o = pose.position, pose.orientation
        return SimpleNamespace(rgb=image_to_array(parts[(drone, 'image')], expect=('rgb8',)),
                               depth=image_to_array(parts[(drone, 'depth')], expect=('32FC1',)),
                               labels=image_to_array(parts[(drone, 'labels')], expect=('mono8',)),
                               K=np.array(parts[(drone, 'info')].k, dtype=np.float64).reshape(3, 3),
                               position=np.array([p.x, p.y, p.z]), orientation_xyzw=np.array([o.x, o.y, o.z, o.w]))

    def capture(self):
        frames = next(self.snapshots, None)
        if frames is None:
            self.get_logger().info(f'end of {self.path} after {self.index} snapshots')
        return frames


def main(args=None) -> int:
    return spin_nodes([BagBridgeNode], args)


if __name__ == '__main__':
    raise SystemExit(main())
