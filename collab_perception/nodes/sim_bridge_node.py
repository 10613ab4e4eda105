"""Camera source of the swarm: one synchronized snapshot per tick for every drone, one shared stamp.

Publishes, for each drone of `drone_names`, `/<drone>/camera/image_raw` (rgb8), and once per snapshot
`/swarm/frame` (std_msgs/Header, the snapshot stamp) so that the monitor counts frames that carry no
comm traffic. With `frames` > 0 it stops after that many snapshots plus `drain_s` and the process exits
0, which ends an embedded or launched swarm run.

Source `synthetic`: a smooth random texture that each drone sees through its own drifting window, so
that views overlap partially and the placeholder handshake has something to match.
"""
from __future__ import annotations

import time

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from ..runtime import topics
from .common import array_to_image, declare, declare_qos, declare_swarm, spin_nodes


class SyntheticViews:
    """A periodic colour texture and one drifting crop per drone (numpy only)."""

    def __init__(self, drones: int, width: int, height: int, seed: int):
        rng = np.random.default_rng(seed)
        size = 4 * max(width, height)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        tex = np.zeros((size, size, 3), np.float32)
        for c in range(3):
            for _ in range(6):
                fx, fy = rng.integers(1, 8, size=2)
                phase = rng.uniform(0, 2 * np.pi)
                tex[:, :, c] += np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
        tex -= tex.min(axis=(0, 1))
        tex /= tex.max(axis=(0, 1))
        self.texture = (tex * 255).astype(np.uint8)
        self.size, self.width, self.height = size, width, height
        self.start = rng.uniform(0, size, size=(drones, 2))
        self.velocity = rng.uniform(-6, 6, size=(drones, 2))

    def render(self, frame: int) -> list[np.ndarray]:
        views = []
        for start, vel in zip(self.start, self.velocity):
            y0, x0 = (start + vel * frame).astype(int) % self.size
            ys = (np.arange(self.height) + y0) % self.size
            xs = (np.arange(self.width) + x0) % self.size
            views.append(self.texture[np.ix_(ys, xs)])
        return views


class SimBridgeNode(Node):
    def __init__(self):
        super().__init__('sim_bridge')
        self.drones, _ = declare_swarm(self)
        self.source = declare(self, 'source', 'synthetic', 'camera source', choices=('synthetic',))
        width = declare(self, 'image_width', 128, 'image width in pixels', minimum=16, maximum=4096)
        height = declare(self, 'image_height', 128, 'image height in pixels', minimum=16, maximum=4096)
        seed = declare(self, 'seed', 0, 'seed of the synthetic scene', minimum=0)
        rate = declare(self, 'rate_hz', 5.0, 'snapshots per second', minimum=0.1, maximum=200.0)
        self.frames = declare(self, 'frames', 0, '0: run until stopped; N: stop after N snapshots', minimum=0)
        self.startup_timeout_s = declare(self, 'startup_timeout_s', 30.0,
                                         'wait at most this long for the swarm to come up', minimum=0.0)
        self.expected_nodes = set(filter(None, declare(
            self, 'expected_nodes', [''], 'fully qualified names of every node of the swarm (from the node plan); '
            'frame 1 waits until all are in the graph')))
        self.settle_s = declare(self, 'settle_s', 1.0, 'then this long for the rest of discovery', minimum=0.0)
        self.drain_s = declare(self, 'drain_s', 1.5, 'after the last snapshot, wait before exiting', minimum=0.0)
        qos = declare_qos(self, 'sensor', 'reliable', 5)

        self.views = SyntheticViews(len(self.drones), width, height, seed)
        self.image_pubs = [self.create_publisher(Image, f'/{d}/{topics.IMAGE}', qos) for d in self.drones]
        self.frame_pub = self.create_publisher(Header, topics.FRAME, 10)
        self.index = 0
        self.finished = False
        self._created = time.monotonic()
        self._ready_at = None
        self._drain_until = None
        self.timer = self.create_timer(1.0 / rate, self.tick)
        self.get_logger().info(
            f'{self.source} source for {", ".join(self.drones)}: {width}x{height} at {rate:g} Hz, '
            + (f'{self.frames} frames' if self.frames else 'until stopped'))

    def _missing(self) -> list[str]:
        """What the swarm still lacks: planned nodes not yet in the graph, cameras without a subscriber."""
        seen = {f'{ns.rstrip("/")}/{name}' for name, ns in self.get_node_names_and_namespaces()}
        missing = sorted(self.expected_nodes - seen)
        missing += [f'subscriber of /{d}/{topics.IMAGE}' for d, p in zip(self.drones, self.image_pubs)
                    if p.get_subscription_count() == 0]
        return missing

    def _graph_ready(self) -> bool:
        """The whole swarm is up (or the wait timed out), then settle_s more for endpoint discovery: frames
        published before the comm topics are matched would be lost, and the monitor would miss messages."""
        now = time.monotonic()
        if self._ready_at is None:
            missing = self._missing()
            if missing and now - self._created < self.startup_timeout_s:
                return False
            if missing:
                self.get_logger().warning(f'starting after {self.startup_timeout_s:g} s without: {", ".join(missing)}')
            else:
                self.get_logger().info(f'swarm up after {now - self._created:.1f} s; first frame in {self.settle_s:g} s')
            self._ready_at = now + self.settle_s
        return now >= self._ready_at

    def tick(self):
        if self._drain_until is not None:
            if time.monotonic() >= self._drain_until:
                self.get_logger().info(f'published {self.index} snapshots; done')
                self.finished = True
            return
        if not self._graph_ready():
            return
        stamp = self.get_clock().now().to_msg()
        header = Header(stamp=stamp, frame_id='')
        for drone, pub, view in zip(self.drones, self.image_pubs, self.views.render(self.index)):
            header_d = Header(stamp=stamp, frame_id=f'{drone}/camera')
            pub.publish(array_to_image(view, 'rgb8', header_d))
        self.frame_pub.publish(header)
        self.index += 1
        if self.index % 50 == 0:
            self.get_logger().info(f'snapshot {self.index}')
        if self.frames and self.index >= self.frames:
            self._drain_until = time.monotonic() + self.drain_s


def main(args=None) -> int:
    return spin_nodes([SimBridgeNode], args)


if __name__ == '__main__':
    raise SystemExit(main())
