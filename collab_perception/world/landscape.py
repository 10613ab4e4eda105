"""One procedural landscape tile ("map"), deterministic from a seed (numpy + OpenCV, no GL).

What a map holds, in the order it is built:
1. terrain: gentle relief (a few metres to ~12 m over the tile) from smooth noise, flattened towards the tile
   border so that it meets a flat countryside "skirt" that runs to the horizon;
2. water: lakes in the low ground (a flat surface at the map's water level) and sometimes a river channel;
3. roads: a jittered, rotated grid graph with curved edges (arterials with lane markings, local asphalt
   streets, dirt tracks that look much like bare ground); road crossings over water become causeways;
4. land use: parcels (Voronoi cells) of grass or bare ground whose share follows town / farmland / forest
   zones, each with its own tint and stripe direction (mowing, ploughing), plus worn patches;
5. buildings along the roads in town zones (flat or gabled roofs, per-building colours), trees (deciduous
   crowns or conifers) dense in forest zones and scattered elsewhere, cars on the asphalt lanes;
6. lighting: sun elevation and azimuth, colour, ambient, haze, and per-map colour palettes.

Everything 3D is baked into one indexed triangle mesh (meshes.VERTEX_DTYPE vertices, shared corners
deduplicated so the GL vertex cache reuses them) whose triangles are sorted into square chunks, so the
renderer draws only the chunks inside each camera's frustum. The ground's class and appearance come from a
texture (`ground`, RGBA8: class id, tint, variant, marking) sampled by the fragment shader, which keeps
class borders sharp at any mesh resolution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from . import meshes
from .meshes import GROUND_CLASS, Material

# class ids of config/classes.yaml (checked against the table by world.World at start-up)
BARE_GROUND, GRASS, ROAD, BUILDING, TREE, WATER, CAR, SKY = range(8)
CLASS_NAMES = ('bare_ground', 'grass', 'road', 'building', 'tree', 'water', 'car', 'sky')

HEIGHT_SPACING_M = 4.0     # terrain mesh resolution
CHUNK_M = 50.0             # culling granularity
SKIRT_M = 4000.0           # the flat countryside around the tile reaches this far (the horizon)
BORDER_FRACTION = 0.12     # relief fades to the base height over this outer fraction of the tile


@dataclass
class Lighting:
    """Per-map light; directions point from the scene towards the sun."""
    sun_direction: np.ndarray
    sun_color: np.ndarray
    ambient_color: np.ndarray
    sky_zenith: np.ndarray
    sky_horizon: np.ndarray
    haze_density: float        # 1/m, aerial perspective towards sky_horizon
    cloud_cover: float         # 0..1, sky only


@dataclass
class Landscape:
    seed: int
    size_m: float
    texel_m: float
    heights: np.ndarray        # (n+1, n+1) metres on a HEIGHT_SPACING_M grid from (-size/2, -size/2), row = y
    water_level: float
    ground: np.ndarray         # (T, T, 4) uint8: class, tint, variant, marking; row = y from -size/2
    vertices: np.ndarray       # meshes.VERTEX_DTYPE, unique
    indices: np.ndarray        # (3 * triangles,) uint32 into vertices, triangles sorted by chunk
    chunk_ranges: np.ndarray   # (C, 2) first index, index count
    chunk_bounds: np.ndarray   # (C, 6) xmin, xmax, ymin, ymax, zmin, zmax
    skirt_range: tuple[int, int]  # (first index, index count) of the skirt, drawn in every view
    road_nodes: np.ndarray     # (K, 2) xy
    road_edges: list[tuple[int, int]]
    road_polylines: list[np.ndarray]
    lighting: Lighting
    palette: dict = field(default_factory=dict)  # name -> (3,) float RGB in 0..1, shader uniforms
    counts: dict = field(default_factory=dict)   # buildings, trees, cars

    @property
    def half(self) -> float:
        return self.size_m / 2

    def ground_height(self, x, y) -> np.ndarray:
        """Terrain height (metres) under world points, bilinear on the mesh grid; base height outside."""
        return _bilinear(self.heights, (np.asarray(x, dtype=np.float64) + self.half) / HEIGHT_SPACING_M,
                         (np.asarray(y, dtype=np.float64) + self.half) / HEIGHT_SPACING_M)

    def ground_class(self, x, y) -> np.ndarray:
        """Ground texture class under world points (inside the tile)."""
        T = self.ground.shape[0]
        j = np.clip(((np.asarray(x) + self.half) / self.texel_m).astype(int), 0, T - 1)
        i = np.clip(((np.asarray(y) + self.half) / self.texel_m).astype(int), 0, T - 1)
        return self.ground[i, j, 0]

    def intersections(self, bounds: tuple[float, float, float, float]) -> np.ndarray:
        """Road nodes of degree >= 3 inside (xmin, xmax, ymin, ymax): the swarm's waypoints."""
        degree = np.zeros(len(self.road_nodes), dtype=int)
        for a, b in self.road_edges:
            degree[a] += 1
            degree[b] += 1
        x, y = self.road_nodes[:, 0], self.road_nodes[:, 1]
        inside = (x >= bounds[0]) & (x <= bounds[1]) & (y >= bounds[2]) & (y <= bounds[3])
        return self.road_nodes[(degree >= 3) & inside]


# -------------------------------------------------------------------------------------------- noise


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """A smooth random field in about [-1, 1] with `cells` features across (bicubic-upsampled lattice)."""
    lattice = rng.uniform(-1, 1, size=(cells + 3, cells + 3)).astype(np.float32)
    big = cv2.resize(lattice, (shape[1] * (cells + 3) // cells, shape[0] * (cells + 3) // cells),
                     interpolation=cv2.INTER_CUBIC)
    oy, ox = (big.shape[0] - shape[0]) // 2, (big.shape[1] - shape[1]) // 2
    return big[oy:oy + shape[0], ox:ox + shape[1]]


def fbm(rng: np.random.Generator, shape: tuple[int, int], cells: int, octaves: int = 3) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        out += amp * smooth_noise(rng, shape, cells * 2 ** o)
        total += amp
        amp *= 0.5
    return out / total


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0, 1)
    return t * t * (3 - 2 * t)


def _resize(a: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    return cv2.resize(a, (size, size), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


# ------------------------------------------------------------------------------------------ generate


def generate_landscape(seed: int, size_m: float = 400.0, texel_m: float = 0.25) -> Landscape:
    """Build map `seed` (any non-negative integer; the same seed gives the same map, bit for bit)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1A2D]))
    half = size_m / 2
    n = int(round(size_m / HEIGHT_SPACING_M))
    T = int(round(size_m / texel_m))

    # 1) relief
    relief = rng.uniform(3.0, 12.0)
    grid_x = np.linspace(-half, half, n + 1)
    gx, gy = np.meshgrid(grid_x, grid_x)
    heights = relief * fbm(rng, (n + 1, n + 1), cells=max(2, int(size_m / 150)), octaves=3).astype(np.float64)
    edge = np.minimum(half - np.abs(gx), half - np.abs(gy)) / (BORDER_FRACTION * size_m)
    heights *= _smoothstep(0.0, 1.0, edge)

    # zones (texel resolution): town, forest, farmland (the rest)
    zone_shape = (T, T)
    town = fbm(rng, zone_shape, cells=max(2, int(size_m / 160)), octaves=2) + rng.uniform(-0.1, 0.45)
    forest = fbm(rng, zone_shape, cells=max(2, int(size_m / 120)), octaves=3) + rng.uniform(-0.3, 0.15)
    forest = np.where(town > 0.1, forest - 0.6, forest)

    # 2) water: lakes in the low ground (flat, at the map's water level) and sometimes a river, a channel
    #    whose surface follows the heavily smoothed terrain (gently downhill, level across its width)
    water_fraction = rng.uniform(0.0, 0.08)
    level = float(np.quantile(heights, water_fraction)) if water_fraction > 0.005 else float(heights.min() - 1.0)
    river = np.zeros((T, T), np.uint8)
    uncarved = heights.copy()
    if rng.random() < 0.45:
        line = _bezier(*_random_crossing(rng, half), rng=rng, n_points=120, bend=0.25)
        width = rng.uniform(8.0, 18.0)
        tex = np.round((line + half) / texel_m * 16).astype(np.int32)
        cv2.polylines(river, [tex], False, 1, max(1, int(round(width / texel_m))), cv2.LINE_8, 4)
        # distance (m) from every mesh vertex to the water, for the banks
        river_v = _resize(river, n + 1, nearest=True)
        dist = cv2.distanceTransform((1 - river_v).astype(np.uint8), cv2.DIST_L2, 5) * HEIGHT_SPACING_M
        profile = 1.0 - _smoothstep(0.0, 12.0, dist)
        surface = cv2.GaussianBlur(heights.astype(np.float32), (0, 0), 40.0 / HEIGHT_SPACING_M) - 1.5
        heights = (1 - profile) * heights + profile * np.minimum(heights, surface)
    heights_texel = _resize(heights.astype(np.float32), T)
    lake = heights_texel < level
    water = lake | river.astype(bool)

    # 3) roads
    nodes, edges, edge_kind = _road_graph(rng, half, town)
    polylines, widths, kinds = [], [], []
    for (a, b), kind in zip(edges, edge_kind):
        pts = _bezier(nodes[a], nodes[b], rng=rng, n_points=max(8, int(np.linalg.norm(nodes[b] - nodes[a]) / 3)))
        polylines.append(pts)
        widths.append({'arterial': rng.uniform(9.0, 12.0), 'street': rng.uniform(5.5, 7.5),
                       'dirt': rng.uniform(3.5, 5.0)}[kind])
        kinds.append(kind)

    # 4) ground texture channels: class, tint, variant, marking
    cls, tint, variant = _parcels(rng, size_m, T, town, forest)
    worn = fbm(rng, zone_shape, cells=max(4, int(size_m / 25)), octaves=3)
    cls = np.where((cls == GRASS) & (worn > 0.42), BARE_GROUND, cls).astype(np.uint8)
    # water: tint = distance from the shore (0..6 m), the shader's shallow-to-deep colour ramp
    shore = cv2.distanceTransform(water.astype(np.uint8), cv2.DIST_L2, 5) * texel_m
    cls[water] = WATER
    tint[water] = (np.clip(shore[water] / 6.0, 0, 1) * 255).astype(np.uint8)
    marking = np.zeros((T, T), np.uint8)
    road_mask = np.zeros((T, T), np.uint8)
    scale = 1.0 / texel_m
    shift = 4  # cv2 fixed-point sub-texel precision
    for pts, width, kind in zip(polylines, widths, kinds):
        tex = np.round((pts + half) * scale * (1 << shift)).astype(np.int32)
        thickness = max(1, int(round(width * scale)))
        stamp = np.zeros((T, T), np.uint8)
        cv2.polylines(stamp, [tex], False, 1, thickness, cv2.LINE_8, shift)
        on = stamp.astype(bool)
        road_mask |= stamp
        cls[on] = ROAD
        tint[on] = rng.integers(0, 256)
        variant[on] = 255 if kind == 'dirt' else rng.integers(0, 100)  # variant >= 128: dirt track
        marking[on] = 0                # a later road crossing an arterial paves over its paint
        if kind == 'arterial':  # dashed centre line: 3 m paint, 6 m gap
            _dashed(marking, pts, half, scale, shift, dash_m=3.0, gap_m=6.0,
                    thickness=max(1, int(round(0.2 * scale))))
    ground = np.stack([cls, tint, variant, marking], axis=-1)
    road_on = road_mask.astype(bool)
    # causeways: where a road crosses water the terrain stays uncarved and above the lake level
    road_vertices = _resize(road_on.astype(np.uint8), n + 1, nearest=True)
    road_vertices = cv2.dilate(road_vertices, np.ones((3, 3), np.uint8)).astype(bool)
    heights = np.where(road_vertices, np.maximum(uncarved, level + 0.4), heights)
    heights = np.maximum(heights, level)  # the lake surface is flat

    # occupancy at 1 m for object placement: roads (with a margin), water, then placed objects
    occ_res = 1.0
    occ_n = int(round(size_m / occ_res))
    occupied = _resize((road_on | water).astype(np.uint8), occ_n, nearest=True)
    occupied = cv2.dilate(occupied, np.ones((3, 3), np.uint8))
    town_occ = _resize(town, occ_n)
    forest_occ = _resize(forest, occ_n)

    def height_at(x, y):   # the final terrain under object footprints
        return _bilinear(heights, (np.asarray(x) + half) / HEIGHT_SPACING_M, (np.asarray(y) + half) / HEIGHT_SPACING_M)

    palette = _palette(rng)
    buildings = _buildings(rng, polylines, widths, kinds, town_occ, occupied, half, occ_res, height_at)
    trees = _trees(rng, size_m, town_occ, forest_occ, occupied, half, occ_res, height_at, palette)
    cars = _cars(rng, polylines, widths, kinds, height_at, half)

    # objects before the ground in each chunk: drawn first, they hide the ground under them from shading
    objects = buildings['meshes'] + trees['meshes'] + cars['meshes'] + [_terrain_mesh(heights, half)]
    triangles, ranges, bounds = _chunk(objects, half)
    skirt = _skirt_mesh(half)
    skirt_range = (len(triangles), len(skirt))
    vertices, indices = _index(np.concatenate([triangles, skirt]))

    return Landscape(
        seed=seed, size_m=size_m, texel_m=texel_m, heights=heights, water_level=level, ground=ground,
        vertices=vertices, indices=indices, chunk_ranges=ranges, chunk_bounds=bounds, skirt_range=skirt_range,
        road_nodes=nodes, road_edges=edges, road_polylines=polylines, lighting=_lighting(rng), palette=palette,
        counts={'buildings': buildings['count'], 'trees': trees['count'], 'cars': cars['count'],
                'water_fraction': float(water.mean()), 'road_fraction': float(road_on.mean())})


# ------------------------------------------------------------------------------------------- helpers


def _bilinear(grid: np.ndarray, gx, gy) -> np.ndarray:
    n = grid.shape[0] - 1
    gx, gy = np.clip(gx, 0, n - 1e-9), np.clip(gy, 0, n - 1e-9)
    j, i = np.floor(gx).astype(int), np.floor(gy).astype(int)
    fx, fy = gx - j, gy - i
    return ((1 - fy) * ((1 - fx) * grid[i, j] + fx * grid[i, j + 1])
            + fy * ((1 - fx) * grid[i + 1, j] + fx * grid[i + 1, j + 1]))


def _random_crossing(rng, half):
    """Two points on opposite sides of the tile (slightly outside it)."""
    t = rng.uniform(-0.6, 0.6, size=2) * half
    if rng.random() < 0.5:
        return np.array([-half * 1.1, t[0]]), np.array([half * 1.1, t[1]])
    return np.array([t[0], -half * 1.1]), np.array([t[1], half * 1.1])


def _bezier(a, b, rng=None, n_points=32, bend=0.12):
    """Quadratic Bézier from a to b with a control point pushed sideways (curved roads and rivers)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    normal = np.array([-d[1], d[0]])
    rng = rng or np.random.default_rng(0)
    control = (a + b) / 2 + normal * rng.normal(0, bend)
    t = np.linspace(0, 1, n_points)[:, None]
    return (1 - t) ** 2 * a + 2 * (1 - t) * t * control + t ** 2 * b


def _road_graph(rng, half, town):
    """Jittered grid of road nodes, rotated, with some edges dropped; edge kinds from the town field."""
    spacing = rng.uniform(70.0, 110.0)
    angle = rng.uniform(0, np.pi / 2)
    extent = half * 1.5
    k = int(np.ceil(extent / spacing))
    ii, jj = np.meshgrid(np.arange(-k, k + 1), np.arange(-k, k + 1), indexing='ij')
    local = np.stack([jj, ii], -1).reshape(-1, 2) * spacing + rng.normal(0, spacing * 0.12, size=(ii.size, 2))
    c, s = math.cos(angle), math.sin(angle)
    nodes = local @ np.array([[c, s], [-s, c]])
    index = {(int(a), int(b)): t for t, (a, b) in enumerate(zip(ii.ravel(), jj.ravel()))}
    keep = np.all(np.abs(nodes) < half + spacing * 0.8, axis=1)
    arterial_rows = {r for r in range(-k, k + 1) if rng.random() < 0.3}
    arterial_cols = {cc for cc in range(-k, k + 1) if rng.random() < 0.3}
    T = town.shape[0]
    edges, kinds = [], []
    for (a_i, a_j), a in index.items():
        for (di, dj) in ((0, 1), (1, 0)):
            b = index.get((a_i + di, a_j + dj))
            if b is None or not (keep[a] and keep[b]):
                continue
            mid = (nodes[a] + nodes[b]) / 2
            if np.any(np.abs(mid) > half + spacing * 0.5):
                continue
            arterial = (di == 0 and a_i in arterial_rows) or (dj == 0 and a_j in arterial_cols)
            px = np.clip(((mid + half) / (2 * half) * T).astype(int), 0, T - 1)
            in_town = town[px[1], px[0]] > 0.0
            if not arterial and rng.random() < (0.15 if in_town else 0.45):
                continue
            kind = 'arterial' if arterial else ('street' if in_town or rng.random() < 0.4 else 'dirt')
            edges.append((a, b))
            kinds.append(kind)
    return nodes, edges, kinds


def _dashed(channel, pts, half, scale, shift, dash_m, gap_m, thickness):
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)])
    period = dash_m + gap_m
    for start in np.arange(0, s[-1], period):
        t = np.linspace(start, min(start + dash_m, s[-1]), 4)
        dash = np.stack([np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])], -1)
        tex = np.round((dash + half) * scale * (1 << shift)).astype(np.int32)
        cv2.polylines(channel, [tex], False, 255, thickness, cv2.LINE_8, shift)


def _parcels(rng, size_m, T, town, forest):
    """Voronoi parcels at 0.5 m: class (grass / bare ground by zone), tint and stripe variant per parcel."""
    res = max(0.5, size_m / T)
    m = int(round(size_m / res))
    spacing = rng.uniform(28.0, 45.0)
    g = int(np.ceil(size_m / spacing)) + 2
    seeds = (np.stack(np.meshgrid(np.arange(g), np.arange(g), indexing='ij'), -1)[..., ::-1] - 1
             + rng.uniform(0, 1, size=(g, g, 2))) * spacing  # (row, col, xy) in metres from the tile corner
    yy, xx = (np.mgrid[0:m, 0:m] + 0.5) * res
    ci, cj = (yy // spacing).astype(int) + 1, (xx // spacing).astype(int) + 1
    best_d = np.full((m, m), np.inf)
    best_id = np.zeros((m, m), np.int64)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            si, sj = np.clip(ci + di, 0, g - 1), np.clip(cj + dj, 0, g - 1)
            s = seeds[si, sj]
            d = (s[..., 0] - xx) ** 2 + (s[..., 1] - yy) ** 2
            better = d < best_d
            best_d = np.where(better, d, best_d)
            best_id = np.where(better, si * g + sj, best_id)
    n_parcels = g * g
    parcel_tint = rng.integers(0, 256, size=n_parcels).astype(np.uint8)
    parcel_variant = rng.integers(0, 256, size=n_parcels).astype(np.uint8)
    parcel_draw = rng.random(n_parcels)
    ids = _resize(best_id.astype(np.float32), T, nearest=True).astype(np.int64)
    # bare-ground share by zone: farmland fields are often ploughed, lawns and forest floor rarely bare
    p_bare = np.where(town > 0.1, 0.15, np.where(forest > 0.1, 0.2, 0.45))
    bare = parcel_draw[ids] < p_bare
    cls = np.where(bare, BARE_GROUND, GRASS).astype(np.uint8)
    return cls, parcel_tint[ids], parcel_variant[ids]


def _palette(rng) -> dict:
    """Per-map base colours (RGB 0..1). Ranges overlap on purpose: dry grass vs soil, dirt roads vs soil,
    grey roofs vs asphalt, dark water vs shadowed trees, so that colour alone does not give the class."""
    def jitter(rgb, amount=0.06):
        return np.clip(np.array(rgb) + rng.uniform(-amount, amount, 3), 0, 1)
    season = rng.uniform(0, 1)  # 0 lush summer .. 1 dry late summer
    return {
        'grass_lush': jitter([0.26, 0.45, 0.16]),
        'grass_dry': jitter([0.52 + 0.1 * season, 0.50, 0.28]),
        'soil_light': jitter([0.58, 0.50, 0.38]),
        'soil_dark': jitter([0.36, 0.28, 0.20]),
        'asphalt': jitter([0.30, 0.30, 0.31], 0.05),
        'dirt_road': jitter([0.55, 0.47, 0.36]),
        'water_deep': jitter([0.07, 0.18, 0.24], 0.04),
        'water_shallow': jitter([0.22, 0.33, 0.28], 0.05),
        'foliage': jitter([0.16 + 0.2 * season * rng.random(), 0.30, 0.12]),
        'conifer': jitter([0.10, 0.22, 0.12], 0.03),
    }


def _lighting(rng) -> Lighting:
    elevation = math.radians(rng.uniform(25.0, 70.0))
    azimuth = rng.uniform(0, 2 * np.pi)
    sun_dir = np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                        math.sin(elevation)])
    warmth = 1.0 - (math.degrees(elevation) - 25.0) / 45.0   # low sun is warmer
    overcast = rng.uniform(0, 0.6)
    sun = np.array([1.0, 0.93 - 0.08 * warmth, 0.82 - 0.15 * warmth]) * rng.uniform(0.95, 1.25) * (1 - 0.55 * overcast)
    ambient = np.array([0.42, 0.47, 0.56]) * rng.uniform(0.75, 1.0) * (1 + 0.6 * overcast)
    zenith = np.array([0.25, 0.45, 0.80]) * (1 - 0.4 * overcast) + 0.4 * overcast * np.array([0.7, 0.72, 0.75])
    horizon = np.array([0.70, 0.78, 0.88]) * rng.uniform(0.9, 1.05)
    return Lighting(sun_direction=sun_dir, sun_color=sun, ambient_color=ambient, sky_zenith=zenith,
                    sky_horizon=np.clip(horizon, 0, 1), haze_density=float(rng.uniform(0.0002, 0.0015)),
                    cloud_cover=float(rng.uniform(0.0, 0.8)))


def _color(rgb) -> np.ndarray:
    return np.clip(np.round(np.asarray(rgb) * 255), 0, 255).astype(np.uint8)


def _polygon_free(occupied, corners, half, res, margin_cells=1):
    """Is a convex footprint (4, 2) free in the occupancy grid? If so, mark it (with a margin)."""
    n = occupied.shape[0]
    pix = ((corners + half) / res).astype(np.int32)
    x0, y0 = pix.min(axis=0) - margin_cells - 1
    x1, y1 = pix.max(axis=0) + margin_cells + 2
    if x0 < 0 or y0 < 0 or x1 > n or y1 > n:
        return False
    stamp = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillConvexPoly(stamp, pix - [x0, y0], 1)
    if margin_cells:
        stamp = cv2.dilate(stamp, np.ones((2 * margin_cells + 1,) * 2, np.uint8))
    window = occupied[y0:y1, x0:x1]
    if np.any(window[stamp.astype(bool)]):
        return False
    window[stamp.astype(bool)] = 1
    return True


def _buildings(rng, polylines, widths, kinds, town, occupied, half, res, height_at):
    walls = [[0.82, 0.78, 0.70], [0.90, 0.88, 0.84], [0.62, 0.60, 0.58], [0.66, 0.40, 0.32], [0.75, 0.68, 0.52]]
    tiled = [[0.62, 0.28, 0.20], [0.45, 0.25, 0.18], [0.30, 0.30, 0.33], [0.52, 0.36, 0.28], [0.24, 0.26, 0.30]]
    flat = [[0.36, 0.36, 0.37], [0.55, 0.55, 0.54], [0.75, 0.75, 0.73], [0.28, 0.27, 0.26], [0.45, 0.42, 0.38]]
    out, count = [], 0
    n = town.shape[0]
    for pts, width, kind in zip(polylines, widths, kinds):
        if kind == 'dirt':
            continue
        seg = np.diff(pts, axis=0)
        s = np.concatenate([[0], np.cumsum(np.linalg.norm(seg, axis=1))])
        pos = rng.uniform(0, 6)
        while pos < s[-1]:
            w, d = rng.uniform(8, 20), rng.uniform(8, 16)
            k = min(np.searchsorted(s, pos, side='right') - 1, len(seg) - 1)
            tangent = seg[k] / max(np.linalg.norm(seg[k]), 1e-9)
            normal = np.array([-tangent[1], tangent[0]])
            base = np.array([np.interp(pos, s, pts[:, 0]), np.interp(pos, s, pts[:, 1])])
            for side, row in ((-1.0, 0), (1.0, 0), (-1.0, 1), (1.0, 1)):   # two rows on each side
                centre = base + side * normal * (width / 2 + rng.uniform(3, 8) + d / 2 + row * (d + rng.uniform(4, 10)))
                ij = np.clip(((centre + half) / res).astype(int), 0, n - 1)
                density = town[ij[1], ij[0]]
                if density < 0.0 or rng.random() > min(0.9, 0.4 + density):
                    continue
                corners = centre + np.array([[-w / 2, -d / 2], [w / 2, -d / 2], [w / 2, d / 2], [-w / 2, d / 2]]) \
                    @ np.stack([tangent, normal])
                if not _polygon_free(occupied, corners, half, res, margin_cells=2):
                    continue
                height = rng.uniform(4, 9) + 6 * max(0.0, density) * rng.random()
                z0 = float(np.min(height_at(corners[:, 0], corners[:, 1]))) - 0.3
                gabled = rng.random() < 0.5
                palette_roof = tiled if gabled else flat
                out.append(_building_mesh(corners, z0, height, gabled, rng.uniform(1.5, 4.0),
                                          _color(np.clip(np.array(walls[rng.integers(len(walls))])
                                                         + rng.uniform(-0.05, 0.05, 3), 0, 1)),
                                          _color(np.clip(np.array(palette_roof[rng.integers(len(palette_roof))])
                                                         + rng.uniform(-0.05, 0.05, 3), 0, 1)),
                                          int(rng.integers(256))))
                count += 1
            pos += w + rng.uniform(2, 12)
    return {'meshes': out, 'count': count}


def _building_mesh(corners, z0, height, gabled, ridge, wall_color, roof_color, rand):
    """Walls as quads around the footprint; a flat roof or a gabled one (ridge along the longer side)."""
    z1 = z0 + height
    tris = []
    for a, b in zip(corners, np.roll(corners, -1, axis=0)):
        A0, B0, A1, B1 = [*a, z0], [*b, z0], [*a, z1], [*b, z1]
        tris += [[A0, B0, B1], [A0, B1, A1]]
    wall = meshes.flat_triangles(np.array(tris), (*wall_color, 255), BUILDING, Material.WALL, rand)
    c = [[*p, z1] for p in corners]
    if not gabled:
        roof = meshes.flat_triangles(np.array([[c[0], c[1], c[2]], [c[0], c[2], c[3]]]), (*roof_color, 255),
                                     BUILDING, Material.ROOF_FLAT, rand)
        return np.concatenate([wall, roof])
    # ridge along edge 0-1 (the side parallel to the road, the longer on average)
    m03 = (np.array(c[0]) + np.array(c[3])) / 2 + [0, 0, ridge]
    m12 = (np.array(c[1]) + np.array(c[2])) / 2 + [0, 0, ridge]
    roof = meshes.flat_triangles(np.array([[c[0], c[1], m12], [c[0], m12, m03], [c[2], c[3], m03],
                                           [c[2], m03, m12]]), (*roof_color, 255), BUILDING, Material.ROOF_TILED, rand)
    gables = meshes.flat_triangles(np.array([[c[1], c[2], m12], [c[3], c[0], m03]]), (*wall_color, 255),
                                   BUILDING, Material.WALL, rand)
    return np.concatenate([wall, roof, gables])


def _trees(rng, size_m, town, forest, occupied, half, res, height_at, palette):
    """Jittered-grid candidates accepted by zone density: dense forest, scattered in meadows and yards."""
    spacing = 5.0
    g = int(size_m / spacing)
    cand = (np.stack(np.meshgrid(np.arange(g), np.arange(g)), -1).reshape(-1, 2) + rng.uniform(0.15, 0.85, (g * g, 2))) \
        * spacing - half
    n = town.shape[0]
    ij = np.clip(((cand + half) / res).astype(int), 0, n - 1)
    f, t = forest[ij[:, 1], ij[:, 0]], town[ij[:, 1], ij[:, 0]]
    density = np.where(f > 0.05, 0.55 + 0.4 * np.clip(f * 3, 0, 1), np.where(t > 0.1, 0.07, 0.025))
    cand = cand[rng.random(len(cand)) < density]
    keep = []
    for p in cand:
        q = ((p + half) / res).astype(int)
        if 1 <= q[0] < n - 1 and 1 <= q[1] < n - 1 and not occupied[q[1], q[0]]:
            occupied[q[1] - 1:q[1] + 2, q[0] - 1:q[0] + 2] = 1
            keep.append(p)
    pos = np.array(keep).reshape(-1, 2)
    count = len(pos)
    if count == 0:
        return {'meshes': [], 'count': 0}
    z = height_at(pos[:, 0], pos[:, 1])
    conifer_share = rng.uniform(0.0, 0.6)
    conifer = rng.random(count) < conifer_share
    height = rng.uniform(7, 17, count)
    crown_r = rng.uniform(2.0, 4.2, count) * np.where(conifer, 0.8, 1.0)
    yaw = rng.uniform(0, 2 * np.pi, count)
    R = meshes.rotation_z(yaw)
    tint = rng.integers(0, 256, count)
    base_leaf = np.where(conifer[:, None], palette['conifer'], palette['foliage'])
    leaf = _color(np.clip(base_leaf * rng.uniform(0.75, 1.25, (count, 1)) + rng.uniform(-0.04, 0.04, (count, 3)), 0, 1))
    leaf = np.concatenate([leaf, np.full((count, 1), 255, np.uint8)], axis=1)
    bark = np.tile(_color([0.30, 0.22, 0.16]).tolist() + [255], (count, 1)).astype(np.uint8)

    out = []
    trunk_h = np.where(conifer, 0.25, 0.45) * height
    trunk = meshes.instance(meshes.unit_cylinder(5), R, np.stack([np.full(count, 0.25), np.full(count, 0.25),
                                                                  trunk_h + 0.5], -1),
                            np.stack([pos[:, 0], pos[:, 1], z - 0.5], -1), bark, TREE, Material.TRUNK, tint)
    out.append(trunk)
    d = ~conifer
    if d.any():
        sphere = meshes.unit_icosphere(0)
        jitter = rng.uniform(-0.18, 0.18, (int(d.sum()), len(sphere[0]), 3))
        # identical vertices of neighbouring faces must move together, or the crown cracks open
        keys = np.round(sphere[0] * 1000).astype(int)
        _, inverse = np.unique(keys, axis=0, return_inverse=True)
        jitter = jitter[:, inverse.ravel(), :]
        rv = crown_r[d] * rng.uniform(0.8, 1.1, int(d.sum()))
        out.append(meshes.instance(sphere, R[d], np.stack([crown_r[d], crown_r[d], rv], -1),
                                   np.stack([pos[d, 0], pos[d, 1], z[d] + height[d] - rv], -1), leaf[d], TREE,
                                   Material.CROWN, tint[d], jitter=jitter))
    c = conifer
    if c.any():
        out.append(meshes.instance(meshes.unit_cone(7), R[c], np.stack([crown_r[c], crown_r[c], height[c] * 0.7], -1),
                                   np.stack([pos[c, 0], pos[c, 1], z[c] + height[c] * 0.2], -1), leaf[c], TREE,
                                   Material.CROWN, tint[c]))
    return {'meshes': out, 'count': count}


def _cars(rng, polylines, widths, kinds, height_at, half):
    """Cars on the asphalt lanes (a body box and a cabin box), facing along their lane."""
    body_colors = [[0.85, 0.85, 0.86], [0.08, 0.08, 0.09], [0.55, 0.56, 0.58], [0.60, 0.08, 0.07],
                   [0.10, 0.20, 0.50], [0.80, 0.75, 0.60], [0.20, 0.35, 0.25], [0.90, 0.60, 0.10]]
    positions, yaws, colors = [], [], []
    for pts, width, kind in zip(polylines, widths, kinds):
        if kind == 'dirt':
            continue
        seg = np.diff(pts, axis=0)
        s = np.concatenate([[0], np.cumsum(np.linalg.norm(seg, axis=1))])
        n_cars = rng.poisson(s[-1] / (45.0 if kind == 'arterial' else 90.0))
        for at in np.sort(rng.uniform(0, s[-1], n_cars)):
            k = min(np.searchsorted(s, at, side='right') - 1, len(seg) - 1)
            tangent = seg[k] / max(np.linalg.norm(seg[k]), 1e-9)
            normal = np.array([-tangent[1], tangent[0]])
            lane = 1.0 if rng.random() < 0.5 else -1.0   # +1: right-hand lane in the edge's direction
            p = np.array([np.interp(at, s, pts[:, 0]), np.interp(at, s, pts[:, 1])]) - lane * normal * width / 4
            if np.any(np.abs(p) > half - 2) or any(np.linalg.norm(p - q) < 6 for q in positions[-4:]):
                continue
            positions.append(p)
            yaws.append(math.atan2(tangent[1], tangent[0]) + (0.0 if lane > 0 else np.pi))
            colors.append(np.array(body_colors[rng.integers(len(body_colors))]) + rng.uniform(-0.04, 0.04, 3))
    k = len(positions)
    if k == 0:
        return {'meshes': [], 'count': 0}
    p = np.array(positions)
    col = np.concatenate([_color(np.clip(colors, 0, 1)), np.full((k, 1), 255, np.uint8)], axis=1)
    rand = rng.integers(0, 256, k)
    z = height_at(p[:, 0], p[:, 1])
    R = meshes.rotation_z(np.array(yaws))
    length = rng.uniform(3.9, 4.8, k)
    body = meshes.instance(meshes.unit_box(), R, np.stack([length, np.full(k, 1.8), np.full(k, 0.85)], -1),
                           np.stack([p[:, 0], p[:, 1], z + 0.72], -1), col, CAR, Material.CAR_BODY, rand)
    back = np.einsum('tij,j->ti', R, np.array([-0.12, 0.0, 0.0]))[:, :2] * length[:, None]
    cabin = meshes.instance(meshes.unit_box(), R, np.stack([length * 0.55, np.full(k, 1.6), np.full(k, 0.6)], -1),
                            np.stack([p[:, 0] + back[:, 0], p[:, 1] + back[:, 1], z + 1.42], -1), col, CAR,
                            Material.CAR_GLASS, rand)
    return {'meshes': [body, cabin], 'count': k}


def _terrain_mesh(heights: np.ndarray, half: float) -> np.ndarray:
    """Two triangles per grid cell, smooth normals from the height gradient."""
    n = heights.shape[0] - 1
    xs = np.linspace(-half, half, n + 1)
    X, Y = np.meshgrid(xs, xs)
    dzdx = np.gradient(heights, HEIGHT_SPACING_M, axis=1)
    dzdy = np.gradient(heights, HEIGHT_SPACING_M, axis=0)
    normal = np.stack([-dzdx, -dzdy, np.ones_like(heights)], -1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    P = np.stack([X, Y, heights], -1)
    i, j = np.mgrid[0:n, 0:n]
    corners = [(i, j), (i, j + 1), (i + 1, j + 1), (i, j), (i + 1, j + 1), (i + 1, j)]  # CCW from above
    idx = np.stack([a * (n + 1) + b for a, b in corners], -1).reshape(-1)
    out = np.zeros(idx.size, dtype=meshes.VERTEX_DTYPE)
    out['position'] = P.reshape(-1, 3)[idx]
    out['normal'] = normal.reshape(-1, 3)[idx]
    out['attr'] = (GROUND_CLASS, Material.TERRAIN, 0, 0)
    return out


def _skirt_mesh(half: float) -> np.ndarray:
    """Four flat trapezoids around the tile out to SKIRT_M, at the base height 0 (the tile border's)."""
    inner = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    outer = inner / half * SKIRT_M
    tris = []
    for k in range(4):
        a, b = inner[k], inner[(k + 1) % 4]
        A, B = outer[k], outer[(k + 1) % 4]
        quad = [[*a, 0.0], [*A, 0.0], [*B, 0.0], [*b, 0.0]]
        tris += [[quad[0], quad[1], quad[2]], [quad[0], quad[2], quad[3]]]
    tris = np.array(tris)
    out = np.zeros(tris.size // 3, dtype=meshes.VERTEX_DTYPE)
    out['position'] = tris.reshape(-1, 3)
    out['normal'] = (0, 0, 1)
    out['attr'] = (GROUND_CLASS, Material.TERRAIN, 0, 0)
    return out


def _chunk(parts: list[np.ndarray], half: float):
    """Sort triangles into CHUNK_M squares by centroid; return vertices, (first, count) and bounds per chunk.
    Objects straddling a border stay whole in effect: bounds come from the actual vertices of each chunk."""
    verts = np.concatenate([p for p in parts if len(p)])
    tri = verts['position'].reshape(-1, 3, 3)
    centroid = tri.mean(axis=1)
    k = max(1, int(np.ceil(2 * half / CHUNK_M)))
    cx = np.clip(((centroid[:, 0] + half) / (2 * half) * k).astype(int), 0, k - 1)
    cy = np.clip(((centroid[:, 1] + half) / (2 * half) * k).astype(int), 0, k - 1)
    chunk = cy * k + cx
    order = np.argsort(chunk, kind='stable')
    tri_sorted = verts.reshape(-1, 3)[order]
    chunk = chunk[order]
    starts = np.searchsorted(chunk, np.arange(k * k), side='left')
    ends = np.searchsorted(chunk, np.arange(k * k), side='right')
    ranges = np.stack([starts * 3, (ends - starts) * 3], -1)
    pos = tri_sorted['position']
    bounds = np.zeros((k * k, 6))
    for c in range(k * k):
        if ends[c] > starts[c]:
            p = pos[starts[c]:ends[c]].reshape(-1, 3)
            bounds[c] = [p[:, 0].min(), p[:, 0].max(), p[:, 1].min(), p[:, 1].max(), p[:, 2].min(), p[:, 2].max()]
    return tri_sorted.reshape(-1), ranges, bounds


def _index(triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Triangle list -> (unique vertices in first-use order, uint32 indices), keeping the triangle order."""
    keys = np.ascontiguousarray(triangles).view(np.dtype((np.void, triangles.dtype.itemsize)))
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first)                  # first-use order keeps shared corners close in memory
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return triangles[first[order]], rank[inverse.ravel()].astype(np.uint32)
