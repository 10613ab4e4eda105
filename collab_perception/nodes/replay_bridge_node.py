"""Dataset replay bridge: publishes the snapshots of a generated dataset split as the drones' cameras.

The same frames can then be scored offline and through the running swarm (the handshake swarm's
"same accuracy offline and online" check). Each snapshot's target agent (the degraded view the dataset was
built around) is published as `target_drone`, the other agents as the other drones in slot order; per
drone the same topics as the live bridges (image, depth, camera_info, labels, pose; one stamp) and
/swarm/frame. Stops after `frames` snapshots (or the end of the split) plus `drain_s`.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np

from ..config import resource_path
from ..data import iter_snapshots, load_manifest
from ..runtime.offline import slot_order
from .common import ParameterError, declare, spin_nodes
from .swarm_source import SwarmSource

REPLAY_KEYS = ['rgb', 'depth', 'labels', 'position', 'orientation_xyzw', 'K', 'target_index']


class ReplayBridgeNode(SwarmSource):
    def __init__(self):
        super().__init__('replay_bridge')
        path = declare(self, 'replay.dataset')
        self.split = declare(self, 'replay.split')
        self.target_drone = declare(self, 'replay.target_drone') or self.drones[0]
        if self.target_drone not in self.drones:
            raise ParameterError(f"parameter 'replay.target_drone': {self.target_drone!r} is not a drone of the "
                                 f'swarm ({", ".join(self.drones)})')
        self.root = path if os.path.exists(path) else resource_path(path)
        manifest = load_manifest(self.root)
        if manifest['agents'] != len(self.drones):
            raise ValueError(f'replay.dataset {self.root} has {manifest["agents"]} agents per snapshot, the swarm '
                             f'{len(self.drones)} drones')
        self.snapshots = iter_snapshots(self.root, self.split, REPLAY_KEYS)
        others = [d for d in self.drones if d != self.target_drone]
        self.drone_order = [self.target_drone] + others
        self.timer = self.create_timer(1.0 / self.rate_hz, self.tick)
        self.get_logger().info(f'replaying {self.split} of {self.root} ({manifest["setting"]}): target -> '
                               f'{self.target_drone}, at {self.rate_hz:g} Hz')

    def capture(self):
        snap = next(self.snapshots, None)
        if snap is None:
            self.get_logger().info(f'end of the {self.split} split after {self.index} snapshots')
            return None
        slots = dict(zip(self.drone_order, slot_order(int(snap['target_index']), len(self.drones))))
        return [SimpleNamespace(rgb=snap['rgb'][k], depth=snap['depth'][k].astype(np.float32),
                                labels=snap['labels'][k], K=snap['K'][k], position=snap['position'][k],
                                orientation_xyzw=snap['orientation_xyzw'][k])
                for k in (slots[d] for d in self.drones)]


def main(args=None) -> int:
    return spin_nodes([ReplayBridgeNode], args)


if __name__ == '__main__':
    raise SystemExit(main())
