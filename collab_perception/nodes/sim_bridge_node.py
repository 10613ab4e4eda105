"""Embedded-world bridge: steps the multi-drone world at `rate_hz` and publishes every drone's camera.

Per drone, with the snapshot's one stamp: camera/image_raw (rgb8), camera/depth (32FC1), camera/camera_info,
camera/labels (mono8 ground truth), pose (PoseStamped, camera optical frame in the ENU world frame); and
/swarm/frame once per snapshot. Drones listed in `degraded_drones` get the handshake paper's sensor
degradation (Gaussian blur of random size + noise, §IV-B) on their RGB; labels stay clean. Drones listed in
`obstructed_drones` get a 3D obstruction in front of their camera every snapshot (MASH §IV: a bird, a
branch, ...); their labels and depth stay those of the surface behind it.

Frame 1 waits until every node of the plan is in the graph (`expected_nodes`) and every camera has a
subscriber, then `settle_s`. With `frames` > 0 the node stops after that many snapshots plus `drain_s`
and the process exits 0, which ends an embedded or launched swarm run.
"""
from __future__ import annotations

from ..world import World, WorldConfig
from .common import declare_dataclass, spin_nodes
from .swarm_source import SwarmSource


class SimBridgeNode(SwarmSource):
    def __init__(self):
        super().__init__('sim_bridge')
        values = declare_dataclass(self, 'world', WorldConfig(), 'embedded world (config/world.yaml)')
        values['drones'] = len(self.drones)
        obstructed = self.declare_drones('obstructed_drones')
        self.obstruct = [i for i, d in enumerate(self.drones) if d in obstructed]
        if self.obstruct:
            values['obstructions'] = True
        self.world = World(WorldConfig.from_mapping(values, path='world'))
        c = self.world.config
        # Warm up the renderer (shader compilation, first uploads) before the swarm starts, then restart the
        # flight: frame 1 must not arrive late because of one-time costs.
        self.world.step()
        self.world.reset()
        self.timer = self.create_timer(1.0 / self.rate_hz, self.tick)
        self.get_logger().info(
            f'embedded world (seed {c.seed}, map {c.map_id}, {c.trajectory}) for {", ".join(self.drones)}: '
            f'{c.image_width}x{c.image_height} at {self.rate_hz:g} Hz, '
            + (f'{self.frames} frames' if self.frames else 'until stopped')
            + (f'; degraded: {", ".join(sorted(self.degraded_drones))}' if self.degraded_drones else '')
            + (f'; obstructed: {", ".join(sorted(obstructed))}' if obstructed else ''))

    def capture(self):
        # no obstructed drone: world.obstructions (if set) draws obstructed cameras at random
        return self.world.step(obstruct=self.obstruct or None).views

    def close(self):
        self.world.close()


def main(args=None) -> int:
    return spin_nodes([SimBridgeNode], args)


if __name__ == '__main__':
    raise SystemExit(main())
