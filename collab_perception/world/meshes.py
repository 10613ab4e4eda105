"""Triangle meshes of the embedded world in the renderer's vertex layout, built with numpy.

Every mesh is a flat triangle list (3 vertices per triangle, counter-clockwise seen from outside) of
`VERTEX_DTYPE` records: position and normal in world metres, an RGBA8 base colour, and four attribute bytes
(class id, material, two per-object random values). The shaders (shaders.py) turn material + randoms +
world position into procedural texture, so one baked vertex buffer holds a whole map.

Templates (unit box, icosphere, cylinder, cone) are instanced by `instance()`, which places many copies in
one vectorised step (thousands of trees per map).
"""
from __future__ import annotations

import functools
import math

import numpy as np

VERTEX_DTYPE = np.dtype([('position', '<f4', 3), ('normal', '<f4', 3), ('color', 'u1', 4), ('attr', 'u1', 4)])
VERTEX_FORMAT = '3f 3f 4f1 4f1'   # moderngl layout of VERTEX_DTYPE (bytes are normalised to 0..1)
VERTEX_ATTRIBUTES = ('in_position', 'in_normal', 'in_color', 'in_attr')

# class id 255 in a vertex: take the class from the ground texture (terrain)
GROUND_CLASS = 255


class Material:
    """Procedural material of a surface (attr[1]); the fragment shader switches on it."""
    TERRAIN = 0     # class and look from the ground texture: grass, bare ground, road, water
    WALL = 1        # facade with window rows
    ROOF_FLAT = 2   # gravel / membrane with vents
    ROOF_TILED = 3  # tile rows along the slope
    CROWN = 4       # foliage
    TRUNK = 5
    CAR_BODY = 6
    CAR_GLASS = 7
    MATTE = 8       # obstructions: feathers, leaves, bark, plastic
    GLOSSY = 9      # obstructions: balloon skin


def empty() -> np.ndarray:
    return np.zeros(0, dtype=VERTEX_DTYPE)


def _face_normals(tris: np.ndarray) -> np.ndarray:
    """(T, 3, 3) triangle corners -> (T, 3) unit normals (counter-clockwise winding)."""
    n = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


@functools.lru_cache(maxsize=None)
def unit_box() -> tuple[np.ndarray, np.ndarray]:
    """Box [-0.5, 0.5]^3: (36, 3) positions and flat normals."""
    c = np.array([[x, y, z] for x in (-.5, .5) for y in (-.5, .5) for z in (-.5, .5)])
    # corner index = 4*x + 2*y + z ; each face as two CCW triangles seen from outside
    faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    tris = np.array([[c[a], c[b], c[d]] for a, b, cc, d in faces for (a, b, d) in ((a, b, cc), (a, cc, d))])
    return _flat(tris)


def _flat(tris: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    normals = np.repeat(_face_normals(tris), 3, axis=0)
    return tris.reshape(-1, 3).astype(np.float64), normals


@functools.lru_cache(maxsize=None)
def unit_icosphere(subdivisions: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Unit sphere as a subdivided icosahedron: positions and smooth normals."""
    t = (1 + 5 ** 0.5) / 2
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
             (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5),
             (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    v = np.array(verts, dtype=np.float64)
    tris = v[np.array(faces)]
    tris /= np.linalg.norm(tris, axis=-1, keepdims=True)
    for _ in range(subdivisions):
        a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
        ab, bc, ca = [m / np.linalg.norm(m, axis=-1, keepdims=True) for m in ((a + b), (b + c), (c + a))]
        tris = np.concatenate([np.stack(x, axis=1) for x in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))])
    pos = tris.reshape(-1, 3)
    return pos, pos.copy()


@functools.lru_cache(maxsize=None)
def unit_cylinder(sides: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Radius 1 side wall from z=0 to z=1 (no caps), smooth normals."""
    a = np.linspace(0, 2 * np.pi, sides + 1)
    ring = np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], axis=1)
    top = ring + [0, 0, 1]
    tris, norms = [], []
    for i in range(sides):
        quad = (ring[i], ring[i + 1], top[i + 1], top[i])
        n = (ring[i], ring[i + 1], ring[i + 1], ring[i])
        tris += [quad[0], quad[1], quad[2], quad[0], quad[2], quad[3]]
        norms += [n[0], n[1], n[2], n[0], n[2], n[3]]
    return np.array(tris), np.array(norms)


@functools.lru_cache(maxsize=None)
def unit_disc(sides: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Radius 1 disc in the z=0 plane facing +z (a triangle fan)."""
    a = np.linspace(0, 2 * np.pi, sides + 1)
    ring = np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], axis=1)
    tris = np.array([[np.zeros(3), ring[i], ring[i + 1]] for i in range(sides)])
    return tris.reshape(-1, 3), np.tile([0.0, 0.0, 1.0], (3 * sides, 1))


@functools.lru_cache(maxsize=None)
def unit_cone(sides: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Cone with base radius 1 at z=0 and apex at z=1, with its base disc; smooth side normals."""
    a = np.linspace(0, 2 * np.pi, sides + 1)
    ring = np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], axis=1)
    apex = np.array([0.0, 0.0, 1.0])
    side_n = np.stack([np.cos(a), np.sin(a), np.full_like(a, 1.0)], axis=1) / math.sqrt(2)
    tris, norms = [], []
    for i in range(sides):
        mid = (side_n[i] + side_n[i + 1]) / 2
        tris += [ring[i], ring[i + 1], apex]
        norms += [side_n[i], side_n[i + 1], mid / np.linalg.norm(mid)]
        tris += [ring[i + 1], ring[i], np.zeros(3)]
        norms += [[0, 0, -1]] * 3
    return np.array(tris), np.array(norms)


def rotation_z(angle: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations about +z (counter-clockwise seen from above)."""
    c, s = np.cos(angle), np.sin(angle)
    z, o = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def rotation_xyz(rx, ry, rz) -> np.ndarray:
    """(..., 3, 3) rotation Rz @ Ry @ Rx from per-instance angles (radians)."""
    rx, ry, rz = np.broadcast_arrays(np.asarray(rx, float), np.asarray(ry, float), np.asarray(rz, float))
    cx, sx, cy, sy = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry)
    z, o = np.zeros_like(cx), np.ones_like(cx)
    Rx = np.stack([np.stack([o, z, z], -1), np.stack([z, cx, -sx], -1), np.stack([z, sx, cx], -1)], -2)
    Ry = np.stack([np.stack([cy, z, sy], -1), np.stack([z, o, z], -1), np.stack([-sy, z, cy], -1)], -2)
    return rotation_z(rz) @ Ry @ Rx


def instance(template: tuple[np.ndarray, np.ndarray], rotation: np.ndarray, scale: np.ndarray,
             translation: np.ndarray, color: np.ndarray, class_id, material, rand_a=0, rand_b=0,
             jitter: np.ndarray | None = None) -> np.ndarray:
    """Place T copies of a template: x_world = R @ (scale * x) + t, normals by the inverse transpose.

    rotation (T, 3, 3), scale (T, 3), translation (T, 3), color (T, 4) uint8; class_id, material, rand_a,
    rand_b scalars or (T,) bytes; jitter (T, V, 3) optional per-vertex offsets in template units, applied
    before scaling (lumpy crowns). Returns T*V vertices, instance-major.
    """
    pos, nrm = template
    T = len(translation)
    if T == 0:
        return empty()
    p = np.broadcast_to(pos, (T,) + pos.shape)
    if jitter is not None:
        p = p + jitter
    p = p * scale[:, None, :]
    world = np.einsum('tij,tvj->tvi', rotation, p) + translation[:, None, :]
    n = np.einsum('tij,tvj->tvi', rotation, nrm[None] / scale[:, None, :])
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    out = np.empty((T, len(pos)), dtype=VERTEX_DTYPE)
    out['position'] = world
    out['normal'] = n
    out['color'] = np.asarray(color, dtype=np.uint8)[:, None, :]
    attr = np.zeros((T, 4), dtype=np.uint8)
    for i, value in enumerate((class_id, material, rand_a, rand_b)):
        attr[:, i] = value
    out['attr'] = attr[:, None, :]
    return out.reshape(-1)


def triangles(positions: np.ndarray, normals: np.ndarray, color, class_id: int, material: int,
              rand_a: int = 0, rand_b: int = 0) -> np.ndarray:
    """A mesh from explicit triangle-list positions and normals (V, 3) with one colour and attribute set."""
    out = np.empty(len(positions), dtype=VERTEX_DTYPE)
    out['position'] = positions
    out['normal'] = normals
    out['color'] = color
    out['attr'] = (class_id, material, rand_a, rand_b)
    return out


def flat_triangles(tris: np.ndarray, color, class_id: int, material: int, rand_a: int = 0,
                   rand_b: int = 0) -> np.ndarray:
    """(T, 3, 3) triangles with flat normals."""
    pos, nrm = _flat(np.asarray(tris, dtype=np.float64))
    return triangles(pos, nrm, color, class_id, material, rand_a, rand_b)
