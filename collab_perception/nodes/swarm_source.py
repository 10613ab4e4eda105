"""What the camera bridges (embedded world, AirSim) share: the drone list, sensor degradation of chosen
drones, readiness before frame 1, and a bounded run that ends the swarm.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node

from ..runtime import topics
from ..runtime.readiness import NODE_KEY, Endpoints, group_endpoints, parse_endpoint_values, unmatched
from ..world.degrade import DegradeConfig, degrade
from .camera_publishers import CameraPublishers
from .common import declare, declare_dataclass, declare_qos, declare_swarm, endpoint_pairs


class SwarmSource(Node):
    """What both camera bridges share: the drone list, readiness before frame 1, a bounded run."""

    def __init__(self, node_name: str):
        super().__init__(node_name)
        self.drones, _ = declare_swarm(self)
        for name in ('rate_hz', 'frames', 'startup_timeout_s', 'settle_s', 'drain_s'):
            setattr(self, name, declare(self, name))
        self.expected_nodes = set(filter(None, declare(self, 'expected_nodes')))
        self.expected_endpoints = []
        for item in filter(None, declare(self, 'expected_endpoints')):
            topic, pubs, subs = item.rsplit(':', 2)
            self.expected_endpoints.append((topic, int(pubs), int(subs)))
        self.degraded_drones = self.declare_drones('degraded_drones')
        self.degrade_config = DegradeConfig(**declare_dataclass(self, 'degrade', DegradeConfig(), 'sensor degradation'))
        self.degrade_rng = np.random.default_rng(declare(self, 'degrade_seed'))
        self.sensor_qos = declare_qos(self, 'sensor')
        self.cameras = CameraPublishers(self, self.drones, self.sensor_qos)
        # the planned nodes' matched endpoints, from their /diagnostics status (runtime/readiness.py)
        self.reports: dict[str, Endpoints] = {}
        self._diagnostics_sub = self.create_subscription(DiagnosticArray, '/diagnostics', self.on_diagnostics, 50)
        self._next_wait_log = time.monotonic() + 5.0
        self.index = 0
        self.finished = False
        self._created = time.monotonic()
        self._ready_at = None
        self._drain_until = None

    def declare_drones(self, name: str) -> set[str]:
        """A parameter naming some of the swarm's drones ([''] for none); an unknown name fails start-up."""
        chosen = set(filter(None, declare(self, name)))
        unknown = chosen - set(self.drones)
        if unknown:
            raise ValueError(f"parameter '{name}': {', '.join(sorted(unknown))} not in 'drone_names'")
        return chosen

    def on_diagnostics(self, msg: DiagnosticArray):
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            node = values.get(NODE_KEY)
            if node not in self.expected_nodes:
                continue
            try:
                self.reports[node] = parse_endpoint_values(values)
            except ValueError as e:
                self.get_logger().warning(f'status of {node}: {e}')

    def _missing(self) -> list[str]:
        """What the swarm still lacks: planned nodes not yet in the graph, comm topics without all their
        planned endpoints, planned endpoints that have not matched all their peers (each node's own count,
        runtime/readiness.py), cameras without a subscriber."""
        seen = {f'{ns.rstrip("/")}/{name}' for name, ns in self.get_node_names_and_namespaces()}
        missing = sorted(self.expected_nodes - seen)
        for topic, pubs, subs in self.expected_endpoints:
            have_pubs, have_subs = self.count_publishers(topic), self.count_subscribers(topic)
            if have_pubs < pubs or have_subs < subs:
                missing.append(f'{topic} ({have_pubs}/{pubs} publishers, {have_subs}/{subs} subscribers)')
        if self.expected_nodes:
            me = self.get_fully_qualified_name()
            reports = {**self.reports, me: group_endpoints(*endpoint_pairs(self))}
            missing += unmatched(reports, self.expected_nodes | {me})
        return missing + [f'subscriber of /{d}/{topics.IMAGE}' for d in self.cameras.image_subscribers_missing()]

    def _graph_ready(self) -> bool:
        """The whole swarm is up and every planned endpoint matched (or the wait timed out), then settle_s
        more: frames published before the endpoints are matched would be lost, and the monitor would miss
        messages."""
        now = time.monotonic()
        if self._ready_at is None:
            missing = self._missing()
            if missing and now - self._created < self.startup_timeout_s:
                if now >= self._next_wait_log:
                    self._next_wait_log = now + 5.0
                    shown = ', '.join(missing[:6]) + (f' and {len(missing) - 6} more' if len(missing) > 6 else '')
                    self.get_logger().info(f'waiting {now - self._created:.0f} s for: {shown}')
                return False
            if missing:
                self.get_logger().warning(f'starting after {self.startup_timeout_s:g} s without: {", ".join(missing)}')
            else:
                self.get_logger().info(f'swarm up and matched after {now - self._created:.1f} s; '
                                       f'first frame in {self.settle_s:g} s')
            self._ready_at = now + self.settle_s
            # the reports served start-up only: stop taking every node's status for the rest of the flight
            self.destroy_subscription(self._diagnostics_sub)
        return now >= self._ready_at

    def maybe_degrade(self, drone: str, rgb: np.ndarray) -> np.ndarray:
        if drone not in self.degraded_drones:
            return rgb
        return degrade(rgb, self.degrade_rng, self.degrade_config)[0]

    def tick(self):
        if self._drain_until is not None:
            if time.monotonic() >= self._drain_until:
                self.get_logger().info(f'published {self.index} snapshots; done')
                self.finished = True
            return
        if not self._graph_ready():
            return
        frames = self.capture()
        if frames is None:                      # the source ran out (a replayed split): drain and stop
            self._drain_until = time.monotonic() + self.drain_s
            return
        # The stamp is taken when the images exist (after rendering / fetching), as a camera driver stamps
        # at capture: latency downstream is then transport and processing, not the simulator's rendering.
        stamp = self.get_clock().now().to_msg()
        for i, f in enumerate(frames):
            self.cameras.publish(stamp, i, self.maybe_degrade(self.drones[i], f.rgb), f.depth, f.labels, f.K,
                                 f.position, f.orientation_xyzw)
        self.cameras.publish_frame(stamp)
        self.index += 1
        if self.index % 50 == 0:
            self.get_logger().info(f'snapshot {self.index}')
        if self.frames and self.index >= self.frames:
            self._drain_until = time.monotonic() + self.drain_s

    def capture(self) -> Optional[list]:
        """One snapshot: a frame per drone, in `drone_names` order (objects with rgb, depth, labels, K,
        position, orientation_xyzw), or None when the source has no more."""
        raise NotImplementedError
