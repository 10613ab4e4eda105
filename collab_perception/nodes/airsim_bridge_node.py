"""AirSim bridge: the same camera topics as the embedded-world bridge, from AirSim or Cosys-AirSim.

Each tick requests Scene, DepthPlanar and Segmentation images of every vehicle of `airsim_config`
(config/airsim.yaml, mirroring settings.json) and their poses, converts them to the project's conventions
(ENU world, optical camera frame, class ids from the segmentation colour table; see
world/airsim_adapter.py) and publishes them per drone with one stamp. The client package (`airsim` or
`cosysairsim`) is chosen in that file; an unreachable server or a missing vehicle fails at start-up.
"""
from __future__ import annotations

from ..classes import load_classes
from ..world.airsim_adapter import AirSimSource, load_airsim_config
from .common import declare, spin_nodes
from .swarm_source import SwarmSource


class AirSimBridgeNode(SwarmSource):
    def __init__(self):
        super().__init__('airsim_bridge')
        path = declare(self, 'airsim_config')
        self.config = load_airsim_config(path, load_classes().names)
        feeds = {v.drone for v in self.config.vehicles}
        missing = [d for d in self.drones if d not in feeds]
        if missing:
            raise ValueError(f'{path}: no AirSim vehicle feeds drone(s) {", ".join(missing)}')
        self.source = AirSimSource(self.config)
        self.timer = self.create_timer(1.0 / self.rate_hz, self.tick)
        self.get_logger().info(
            f'{self.config.client} at {self.config.host}:{self.config.port} (server version '
            f'{self.source.server_version}): ' + ', '.join(f'{v.name}/{v.camera} -> {v.drone}' for v in self.config.vehicles)
            + f' at {self.rate_hz:g} Hz')

    def capture(self):
        frames = {f.drone: f for f in self.source.snapshot()}
        return [frames[d] for d in self.drones]


def main(args=None) -> int:
    return spin_nodes([AirSimBridgeNode], args)


if __name__ == '__main__':
    raise SystemExit(main())
