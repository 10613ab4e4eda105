"""The world's navigation mode (CollaVN §3 on our landscape): a lattice of ground positions among buildings,
trees and cars, each with a panorama rendered once, so that an episode's step is a table lookup.

    from collab_perception.world.nav import NavConfig, build_nav_map
    nav = build_nav_map(NavConfig(), map_id=3)          # numpy arrays; renders with moderngl once
    nav.neighbours[node, action], nav.distances_from(goal), nav.rgb[node, view]

The paper's agents drive on the floor of Gibson houses with continuous actions; ours stand on the nodes of a
square lattice (`lattice_m` apart) over an `region_m` square cut out of one landscape map and move one node
east / north / west / south or stop, as graph-based navigation benchmarks do. Drones carry GPS and a compass,
so the four moves and the four views of the panorama are in world directions (E, N, W, S: yaw 0, 90, 180,
270 degrees, counter-clockwise from east, world.geometry.camera_rotation). Distances are geodesic: moves on
the lattice graph, `lattice_m` each. The paper's bands and success radius (1.5-3 / 3-5 / 5-10 m, 1 m) are
scaled by `band_scale` to a world whose obstacles are houses and trees, not furniture (docs/DATASETS.md).

Occupancy (`occupancy_m` cells over the region): every triangle of a building, tree or car that reaches into
`obstacle_band_m` above the terrain, building footprints filled, and water. A node is free when no occupied
cell lies within `clearance_m` of it; an edge when the straight segment between two free nodes keeps that
clearance. Only the largest connected part of the free lattice is kept, so every node reaches every other.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from ..config import ConfigError
from . import geometry
from .config import _check_range, _check_scalar, dataclass_from_mapping

ACTIONS = ('east', 'north', 'west', 'south', 'stop')
STOP = 4
MOVES = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])        # lattice (column, row) step of each move
VIEW_YAWS_DEG = (0.0, 90.0, 180.0, 270.0)                   # the panorama's views, the moves' directions
BANDS = ('easy', 'medium', 'hard')
PAPER_BANDS_M = {'easy': (1.5, 3.0), 'medium': (3.0, 5.0), 'hard': (5.0, 10.0)}   # CollaVN §3.2
PAPER_SUCCESS_M = 1.0
BUILDING_PAD_M = 24.0        # more than a building's longest side
def action_velocity(action: int) -> tuple[float, float]:
    """A move as a unit velocity (east, north); STOP: zero. The policy node sends it as geometry_msgs/Twist."""
    if action == STOP:
        return 0.0, 0.0
    dx, dy = MOVES[action]
    return float(dx), float(dy)


def velocity_action(vx: float, vy: float, still: float = 1e-3) -> int:
    """The lattice move a velocity command asks for: the dominant axis and its sign; below `still`: STOP."""
    if max(abs(vx), abs(vy)) < still:
        return STOP
    if abs(vx) >= abs(vy):
        return 0 if vx > 0 else 2
    return 1 if vy > 0 else 3


UNREACHABLE_STEPS = np.iinfo(np.int32).max      # bfs_steps' value for a node it cannot reach


@dataclass(frozen=True)
class NavConfig:
    """Every knob of the navigation mode; a bad value raises ConfigError naming the field."""

    seed: int = 0                                   # world seed: maps come from (seed, map_id)
    region_m: float = 64.0                          # side of the square region cut out of a landscape map
    lattice_m: float = 2.0                          # distance between neighbouring nodes (one move)
    camera_height_m: float = 1.5                    # above the terrain under the node
    camera_pitch_deg: float = -5.0
    image_size: int = 48                            # every panorama view is image_size x image_size pixels
    occupancy_m: float = 0.5
    clearance_m: float = 0.6                        # the drone's radius plus a margin
    obstacle_band_m: tuple[float, float] = (0.2, 2.5)   # heights above the terrain that block
    band_scale: float = 4.0                         # the paper's bands and success radius times this
    max_steps: int = 60                             # T_max of an episode
    obstacle_fraction: tuple[float, float] = (0.08, 0.35)   # regions are chosen with this much obstacle
    map_size_m: float = 400.0                       # the landscape maps regions are cut from
    ground_texel_m: float = 0.25

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        _check_scalar('seed', self.seed, int, 0)
        _check_scalar('region_m', self.region_m, float, 8.0, 200.0)
        _check_scalar('lattice_m', self.lattice_m, float, 0.5, 10.0)
        if self.region_m / self.lattice_m < 4:
            raise ConfigError('lattice_m', f'{self.lattice_m} leaves fewer than 4 nodes across region_m={self.region_m}')
        _check_scalar('camera_height_m', self.camera_height_m, float, 0.3, 20.0)
        _check_scalar('camera_pitch_deg', self.camera_pitch_deg, float, -60.0, 30.0)
        _check_scalar('image_size', self.image_size, int, 16, 512)
        _check_scalar('occupancy_m', self.occupancy_m, float, 0.1, 2.0)
        _check_scalar('clearance_m', self.clearance_m, float, 0.0, 5.0)
        _check_range('obstacle_band_m', self.obstacle_band_m, 0.0, 50.0)
        _check_scalar('band_scale', self.band_scale, float, 0.1, 100.0)
        _check_scalar('max_steps', self.max_steps, int, 1, 10000)
        _check_range('obstacle_fraction', self.obstacle_fraction, 0.0, 1.0)
        _check_scalar('map_size_m', self.map_size_m, float, 100.0, 2000.0)
        _check_scalar('ground_texel_m', self.ground_texel_m, float, 0.05, 2.0)
        if self.region_m > self.map_size_m / 2:
            raise ConfigError('region_m', f'{self.region_m} is more than half of map_size_m={self.map_size_m}')

    @classmethod
    def from_mapping(cls, data: Optional[Mapping[str, Any]], source: str = '', path: str = 'nav') -> 'NavConfig':
        return dataclass_from_mapping(cls, data, source, path)

    def to_dict(self) -> dict:
        """The fields as YAML / JSON values; numbers in their field's type (24 and 24.0 write the same)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple):
                v = [float(x) for x in v]
            elif f.type in ('float', float):
                v = float(v)
            out[f.name] = v
        return out

    @property
    def success_m(self) -> float:
        """Success: ending within this geodesic distance of the goal (the paper's 1 m, scaled)."""
        return PAPER_SUCCESS_M * self.band_scale

    def band_m(self, band: str) -> tuple[float, float]:
        """Start-goal geodesic distance of a difficulty band (the paper's, scaled)."""
        if band not in PAPER_BANDS_M:
            raise ConfigError('band', f'{band!r} is not one of: {", ".join(BANDS)}')
        lo, hi = PAPER_BANDS_M[band]
        return lo * self.band_scale, hi * self.band_scale


@dataclass
class NavMap:
    """One navigation map: a free lattice graph with a rendered panorama per node."""

    map_id: int
    landscape_seed: int
    origin: np.ndarray          # (2,) world xy of the region's south-west corner
    lattice_m: float
    occupancy_m: float
    occupancy: np.ndarray       # (R, R) uint8, 1 = obstacle; row = y (north up when flipped), col = x
    cells: np.ndarray           # (N, 2) int lattice (column, row) of each node
    positions: np.ndarray       # (N, 3) float world position of each node's camera
    neighbours: np.ndarray      # (N, 4) int32: the node each move reaches, -1 where blocked
    rgb: np.ndarray             # (N, 4, S, S, 3) uint8 panorama views E, N, W, S
    labels: np.ndarray          # (N, 4, S, S) uint8 class ids of those views

    @property
    def nodes(self) -> int:
        return len(self.cells)

    def distances_from(self, node: int) -> np.ndarray:
        """Geodesic distance (metres) of every node from `node` over the lattice graph (BFS); inf where
        unreachable (never on a built map: it keeps one connected part)."""
        steps = bfs_steps(self.neighbours, node)
        return np.where(steps == UNREACHABLE_STEPS, np.inf, self.lattice_m * steps.astype(np.float64))

    def step(self, node: int, action: int) -> tuple[int, bool]:
        """(next node, collided): a move into an obstacle keeps the node and counts a collision."""
        if not 0 <= action < len(ACTIONS):
            raise ValueError(f'action {action} is not one of 0..{len(ACTIONS) - 1} ({", ".join(ACTIONS)})')
        if action == STOP:
            return node, False
        nxt = int(self.neighbours[node, action])
        return (node, True) if nxt < 0 else (nxt, False)

    def arrays(self) -> dict[str, np.ndarray]:
        """The map as named arrays (for np.savez); `from_arrays` is the inverse."""
        return {'map_id': np.int64(self.map_id), 'landscape_seed': np.int64(self.landscape_seed),
                'origin': self.origin, 'lattice_m': np.float64(self.lattice_m),
                'occupancy_m': np.float64(self.occupancy_m), 'occupancy': self.occupancy, 'cells': self.cells,
                'positions': self.positions, 'neighbours': self.neighbours, 'rgb': self.rgb, 'labels': self.labels}

    @classmethod
    def from_arrays(cls, a: Mapping[str, np.ndarray]) -> 'NavMap':
        def scalar(name):         # () or (1,): writers may store scalars as one-element arrays
            return np.asarray(a[name]).item()
        return cls(map_id=int(scalar('map_id')), landscape_seed=int(scalar('landscape_seed')),
                   origin=np.asarray(a['origin']), lattice_m=float(scalar('lattice_m')),
                   occupancy_m=float(scalar('occupancy_m')),
                   occupancy=np.asarray(a['occupancy']), cells=np.asarray(a['cells']),
                   positions=np.asarray(a['positions']), neighbours=np.asarray(a['neighbours']),
                   rgb=np.asarray(a['rgb']), labels=np.asarray(a['labels']))


def bfs_steps(neighbours: np.ndarray, source: int) -> np.ndarray:
    """Moves from `source` to every node over `neighbours` (N, 4); a large number where unreachable."""
    n = len(neighbours)
    unreachable = UNREACHABLE_STEPS
    dist = np.full(n, unreachable, np.int32)
    dist[source] = 0
    frontier = np.array([source])
    d = 0
    while len(frontier):
        d += 1
        nxt = neighbours[frontier].ravel()
        nxt = np.unique(nxt[nxt >= 0])
        nxt = nxt[dist[nxt] == unreachable]
        dist[nxt] = d
        frontier = nxt
    return dist


def landscape_seed(seed: int, map_id: int) -> int:
    """The landscape of nav map `map_id`: the same derivation as world.World.map_seed."""
    return int(np.random.SeedSequence([seed, map_id]).generate_state(1)[0])


def obstacle_grid(landscape, origin: np.ndarray, region_m: float, cell_m: float,
                  band_m: tuple[float, float]) -> np.ndarray:
    """(R, R) uint8 occupancy of a square region: buildings (footprints filled), trees and cars whose
    triangles reach into `band_m` above the terrain, and water."""
    import cv2

    from .landscape import BUILDING, CAR, TREE, WATER

    pad = int(round(BUILDING_PAD_M / cell_m))    # buildings cut by the region's edge close outside it
    n = int(round(region_m / cell_m))
    origin = np.asarray(origin, np.float64) - pad * cell_m
    region_m = region_m + 2 * pad * cell_m
    full = n + 2 * pad
    v, tri = landscape.vertices, landscape.indices.reshape(-1, 3)
    cls = v['attr'][tri[:, 0], 0]
    grids = {}
    for kind, classes in (('building', (BUILDING,)), ('other', (TREE, CAR))):
        pts = v['position'][tri[np.isin(cls, classes)]].astype(np.float64)     # (T, 3, 3)
        xy = pts[:, :, :2] - origin
        inside = np.all((xy > -2.0) & (xy < region_m + 2.0), axis=(1, 2))
        pts, xy = pts[inside], xy[inside]
        ground = landscape.ground_height(pts[:, :, 0].mean(1), pts[:, :, 1].mean(1))
        lo, hi = pts[:, :, 2].min(1) - ground, pts[:, :, 2].max(1) - ground
        pts_xy = xy[(hi > band_m[0]) & (lo < band_m[1])]
        grid = np.zeros((full, full), np.uint8)
        fixed = np.round(pts_xy / cell_m * 16).astype(np.int32)    # 4 bits of sub-cell precision
        for t in fixed:
            cv2.fillConvexPoly(grid, t, 1, cv2.LINE_8, 4)
            cv2.polylines(grid, [t], True, 1, 1, cv2.LINE_8, 4)
        grids[kind] = grid
    # walls are vertical: their triangles draw the outline; a building's inside is as blocked
    contours, _ = cv2.findContours(grids['building'], cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(grids['building'], contours, -1, 1, thickness=cv2.FILLED)
    centres = (np.arange(full) + 0.5) * cell_m
    gx, gy = np.meshgrid(centres + origin[0], centres + origin[1])
    water = (landscape.ground_class(gx, gy) == WATER).astype(np.uint8)
    return (grids['building'] | grids['other'] | water)[pad:pad + n, pad:pad + n]


def free_lattice(occupancy: np.ndarray, cell_m: float, lattice_m: float, clearance_m: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(cells (N, 2) column/row, neighbours (N, 4)) of the largest connected part of the free lattice."""
    import cv2

    radius = int(math.ceil(clearance_m / cell_m))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    blocked = cv2.dilate(occupancy, kernel) if radius else occupancy
    R = occupancy.shape[0]
    side = int(round(R * cell_m / lattice_m))

    def cell_of(lattice_xy: np.ndarray) -> np.ndarray:      # lattice coordinates -> occupancy indices
        return np.clip(((lattice_xy + 0.5) * lattice_m / cell_m).astype(int), 0, R - 1)

    ij = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)
    oc = cell_of(ij.astype(np.float64))
    free = blocked[oc[:, 1], oc[:, 0]] == 0
    index = np.full(side * side, -1, np.int64)
    index[free] = np.arange(free.sum())
    cells = ij[free]
    samples = np.linspace(0.0, 1.0, max(3, int(math.ceil(lattice_m / cell_m)) * 2 + 1))
    neighbours = np.full((len(cells), 4), -1, np.int32)
    for k, move in enumerate(MOVES):
        target = cells + move
        ok = np.all((target >= 0) & (target < side), axis=1)
        tgt_index = np.where(ok, index[np.clip(target[:, 1], 0, side - 1) * side + np.clip(target[:, 0], 0, side - 1)], -1)
        ok &= tgt_index >= 0
        for s in samples:                   # the segment between the two nodes keeps the clearance
            oc = cell_of(cells + s * move)
            ok &= blocked[oc[:, 1], oc[:, 0]] == 0
        neighbours[ok, k] = tgt_index[ok]
    # keep the largest connected component
    label = np.full(len(cells), -1)
    sizes = []
    for start in range(len(cells)):
        if label[start] >= 0:
            continue
        reach = bfs_steps(neighbours, start) < UNREACHABLE_STEPS
        label[reach] = len(sizes)
        sizes.append(int(reach.sum()))
    if not sizes:
        return np.zeros((0, 2), int), np.zeros((0, 4), np.int32)
    keep = label == int(np.argmax(sizes))
    renumber = np.full(len(cells), -1, np.int32)
    renumber[keep] = np.arange(keep.sum())
    kept = neighbours[keep]
    kept = np.where(kept >= 0, renumber[np.maximum(kept, 0)], -1).astype(np.int32)
    return cells[keep], kept


def choose_region(landscape, config: NavConfig, rng: np.random.Generator, tries: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """(origin, occupancy) of a region whose obstacle share lies in `config.obstacle_fraction` (the first of
    `tries` random candidates that does; else the candidate nearest the range)."""
    half = landscape.half
    margin = 0.12 * landscape.size_m            # the flattened border has few objects
    lo_f, hi_f = config.obstacle_fraction
    best = None
    for _ in range(tries):
        origin = rng.uniform(-half + margin, half - margin - config.region_m, size=2)
        occ = obstacle_grid(landscape, origin, config.region_m, config.occupancy_m, config.obstacle_band_m)
        share = float(occ.mean())
        miss = max(lo_f - share, share - hi_f, 0.0)
        if best is None or miss < best[0]:
            best = (miss, origin, occ)
        if miss == 0.0:
            break
    return best[1], best[2]


def build_nav_map(config: NavConfig, map_id: int, renderer=None) -> NavMap:
    """Build nav map `map_id` of `config.seed`: its landscape, a region, the free lattice and its
    panoramas. Deterministic for (config, map_id). `renderer`: a world.render.Renderer to reuse (its size
    must be config.image_size)."""
    from .landscape import generate_landscape
    from .render import Camera, Renderer

    seed = landscape_seed(config.seed, map_id)
    landscape = generate_landscape(seed, config.map_size_m, config.ground_texel_m)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, map_id, 0x4E4156]))
    origin, occupancy = choose_region(landscape, config, rng)
    cells, neighbours = free_lattice(occupancy, config.occupancy_m, config.lattice_m, config.clearance_m)
    if len(cells) < 16:
        raise ValueError(f'nav map {map_id} (seed {config.seed}): only {len(cells)} free nodes')
    xy = origin + (cells + 0.5) * config.lattice_m
    z = landscape.ground_height(xy[:, 0], xy[:, 1]) + config.camera_height_m
    positions = np.concatenate([xy, z[:, None]], axis=1)

    S = config.image_size
    K = geometry.intrinsics_from_fov(S, S, 90.0)
    batch = 64
    own = renderer is None
    renderer = renderer or Renderer(S, S, batch)
    if (renderer.width, renderer.height) != (S, S):
        raise ValueError(f'the renderer draws {renderer.width}x{renderer.height} views; image_size is {S}')
    try:
        renderer.set_landscape(landscape)
        rotations = [geometry.camera_rotation(math.radians(y), math.radians(config.camera_pitch_deg))
                     for y in VIEW_YAWS_DEG]
        cameras = [Camera(p, R, K) for p in positions for R in rotations]
        rgb = np.zeros((len(cameras), S, S, 3), np.uint8)
        labels = np.zeros((len(cameras), S, S), np.uint8)
        for start in range(0, len(cameras), renderer.views):
            chunk = cameras[start:start + renderer.views]
            # the renderer draws a fixed number of views: the last batch repeats its first camera
            out = renderer.render(chunk + [chunk[0]] * (renderer.views - len(chunk)))
            rgb[start:start + len(chunk)] = out.rgb[:len(chunk)]
            labels[start:start + len(chunk)] = out.labels[:len(chunk)]
    finally:
        if own:
            renderer.release()
    n = len(cells)
    return NavMap(map_id=map_id, landscape_seed=seed, origin=origin, lattice_m=config.lattice_m,
                  occupancy_m=config.occupancy_m, occupancy=occupancy, cells=cells.astype(np.int32),
                  positions=positions, neighbours=neighbours, rgb=rgb.reshape(n, 4, S, S, 3),
                  labels=labels.reshape(n, 4, S, S))
