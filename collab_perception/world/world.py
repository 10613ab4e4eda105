"""`World`: N drones flying over a procedural map, one synchronized snapshot per `step()`.

Randomness comes from `numpy.random.SeedSequence([seed, map_id])`: the map's seed is drawn from it, and the
flight and the obstructions each get a child stream, so switching obstructions on does not change the map or
the trajectories, and the same (seed, map_id) always gives the same snapshots, bit for bit, on
the same renderer (llvmpipe and an NVIDIA driver may differ in the last bit of a colour).

Fork safety: the GL context is created lazily and re-created when the process id changes, so a World
made before `os.fork()` keeps working in the child (the parent's context is abandoned there, not released).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..classes import ClassTable, load_classes
from . import geometry
from .config import WorldConfig
from .landscape import CLASS_NAMES, Landscape, generate_landscape
from .obstructions import Obstruction, place_obstruction
from .render import Camera, Renderer
from .trajectories import make_flight

@dataclass
class View:
    """One drone's camera at one snapshot. Frames: world ENU, camera optical (x right, y down, z forward)."""
    agent: int
    rgb: np.ndarray                 # (H, W, 3) uint8, what the camera sees (obstructions included)
    depth: np.ndarray               # (H, W) float32, planar depth (Z, metres) of the unobstructed surface; +inf sky
    labels: np.ndarray              # (H, W) uint8 class ids of the unobstructed surface
    position: np.ndarray            # (3,) camera position in the world, metres
    orientation_xyzw: np.ndarray    # (4,) camera-to-world rotation as a unit quaternion (x, y, z, w)
    K: np.ndarray                   # (3, 3) intrinsics
    obstruction_mask: np.ndarray    # (H, W) bool, True where an obstruction covers the surface
    rgb_clean: np.ndarray           # (H, W, 3) uint8 without obstructions (the same array as rgb when none)
    depth_obstructed: np.ndarray    # (H, W) float32 depth including obstructions (= depth when none)

    @property
    def T_world_cam(self) -> np.ndarray:
        """4x4 camera-to-world pose."""
        return geometry.pose_matrix(self.position, self.orientation_xyzw)


@dataclass
class Snapshot:
    index: int                      # snapshots since the map started
    time_s: float                   # simulated seconds, index * dt_s (one stamp for every view)
    map_id: int
    views: list[View]
    obstructions: list[Obstruction] = field(default_factory=list)


def check_class_table(classes: ClassTable) -> None:
    """The world writes the ids of landscape.CLASS_NAMES; config/classes.yaml must list them in that order."""
    if tuple(classes.names[:len(CLASS_NAMES)]) != CLASS_NAMES:
        raise ValueError(f'config/classes.yaml must start with {", ".join(CLASS_NAMES)} (the ids the world '
                         f'renders); it lists {", ".join(classes.names)}')


class World:
    """The embedded multi-drone world. `step()` returns the next synchronized `Snapshot`.

    >>> with World(WorldConfig(seed=0, drones=5)) as world:
    ...     snap = world.step()
    ...     snap.views[0].rgb.shape
    (128, 128, 3)
    """

    def __init__(self, config: Optional[WorldConfig] = None):
        self.config = config or WorldConfig()
        check_class_table(load_classes())
        c = self.config
        self.K = geometry.intrinsics_from_fov(c.image_width, c.image_height, c.fov_deg)
        self._renderer: Optional[Renderer] = None
        self._renderer_pid: Optional[int] = None
        self._uploaded_version: Optional[int] = None
        self._map_version = 0
        self._load_map(c.map_id)
        self._start_flight()

    # ------------------------------------------------------------------------------------------- maps
    def _streams(self, map_id: int) -> tuple[np.random.Generator, np.random.Generator]:
        """The flight's and the obstructions' random streams of a map (the map itself: `map_seed`)."""
        flight, obstructions = np.random.SeedSequence([self.config.seed, map_id]).spawn(2)
        return np.random.default_rng(flight), np.random.default_rng(obstructions)

    def map_seed(self, map_id: int) -> int:
        """The landscape seed of a map: derived from (seed, map_id), recorded in dataset manifests."""
        return int(np.random.SeedSequence([self.config.seed, map_id]).generate_state(1)[0])

    def reset(self, map_id: Optional[int] = None) -> None:
        """Restart the flight at time 0, on map `map_id` (default: the current map, kept as it is). The
        snapshots that follow are those of a new World on that map."""
        if map_id is not None and int(map_id) != self.map_id:
            self._load_map(int(map_id))
        self._start_flight()

    def _load_map(self, map_id: int) -> None:
        c = self.config
        self.map_id = map_id
        self.landscape: Landscape = generate_landscape(self.map_seed(map_id), c.map_size_m, c.ground_texel_m)
        self._map_version += 1

    def _start_flight(self) -> None:
        flight_rng, self._obstruction_rng = self._streams(self.map_id)
        self.flight = make_flight(self.config, self.landscape, flight_rng)
        self.index = 0

    def _render_target(self) -> Renderer:
        """This process's renderer, with the current map uploaded."""
        if self._renderer is None or self._renderer_pid != os.getpid():
            c = self.config
            self._renderer = Renderer(c.image_width, c.image_height, c.drones, c.obstructions, c.shadow_map_size)
            self._renderer_pid = os.getpid()
            self._uploaded_version = None
        if self._uploaded_version != self._map_version:
            self._renderer.set_landscape(self.landscape)
            self._uploaded_version = self._map_version
        return self._renderer

    # ------------------------------------------------------------------------------------- snapshots
    def cameras(self) -> list[Camera]:
        """The drones' cameras at the current time."""
        return [Camera(p.position, geometry.camera_rotation(p.yaw, p.pitch), self.K) for p in self.flight.poses()]

    def step(self, obstruct: Optional[Sequence[int]] = None) -> Snapshot:
        """Render the current snapshot, then advance the drones by dt_s.

        With obstructions enabled, `obstruct` chooses the drones that get an obstruction in front of their
        camera (default: `obstructions_per_snapshot` drones drawn at random)."""
        c = self.config
        cameras = self.cameras()
        placed: list[Obstruction] = []
        if c.obstructions:
            rng = self._obstruction_rng
            if obstruct is None:
                obstruct = rng.choice(c.drones, size=min(c.obstructions_per_snapshot, c.drones), replace=False)
            for agent in obstruct:
                cam = cameras[int(agent)]
                shape = c.obstruction_shapes[int(rng.integers(len(c.obstruction_shapes)))]
                placed.append(place_obstruction(rng, shape, int(agent), cam.position, cam.rotation, self.K,
                                                c.image_width, c.image_height, c.obstruction_distance_m,
                                                c.obstruction_coverage))
        elif obstruct:
            raise ValueError('obstruct= needs a World with obstructions=True')
        time_s = self.index * c.dt_s
        vertices = np.concatenate([o.vertices for o in placed]) if placed else None
        out = self._render_target().render(cameras, time_s, vertices)
        views = []
        for i, cam in enumerate(cameras):
            obstructed = out.obstruction_mask is not None
            views.append(View(
                agent=i,
                rgb=out.rgb_obstructed[i] if obstructed else out.rgb[i],
                depth=out.depth[i], labels=out.labels[i],
                position=cam.position.copy(), orientation_xyzw=geometry.quaternion_from_matrix(cam.rotation),
                K=self.K.copy(),
                obstruction_mask=out.obstruction_mask[i] if obstructed else np.zeros(out.labels[i].shape, bool),
                rgb_clean=out.rgb[i],
                depth_obstructed=out.depth_obstructed[i] if obstructed else out.depth[i]))
        snap = Snapshot(self.index, time_s, self.map_id, views, placed)
        self.index += 1
        self.flight.step(c.dt_s)
        return snap

    @property
    def render_device(self) -> str:
        """The GL renderer this World draws with (llvmpipe on CPUs, the GPU's name otherwise)."""
        return self._render_target().device

    def close(self) -> None:
        """Release the GL context (only this process's own)."""
        if self._renderer is not None and self._renderer_pid == os.getpid():
            self._renderer.release()
        self._renderer = None

    def __enter__(self) -> 'World':
        return self

    def __exit__(self, *exc) -> None:
        self.close()
