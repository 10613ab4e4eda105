"""Foreground obstructions (MASH §IV Dataset): procedural 3D objects placed close to a camera.

MASH "spawn[s] random obstructions in the 3D scene (such as birds and trees)" and renders them "in the views
of each observer" from pose and depth. Here they are real geometry in the world: `place_obstruction` puts
one in front of a chosen camera, and the renderer draws it in every view (render.py, pass 3), so another
drone that looks at the same spot sees the same object; labels and depth keep the surface behind it.

Shapes (each built around the origin with a bounding radius of about 1, then scaled):
  bird     body, head, beak, flapping wings and tail (dark, brown, grey, white or teal plumage);
  branch   a crooked stick with twigs and leaf clusters;
  balloon  a glossy, slightly tall sphere on a string;
  drone    another quadcopter: body, arms, rotor discs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import meshes
from .meshes import Material

NO_CLASS = 255  # obstructions are no class of the label map (the labels keep the surface behind them)

# Fraction of the bounding disc (radius 1) that each shape covers on average, seen from a random direction
# (measured by rendering; see test_world_obstruction). Used to size a shape for a requested coverage.
FILL_FACTOR = {'bird': 0.155, 'branch': 0.17, 'balloon': 0.51, 'drone': 0.33}


@dataclass
class Obstruction:
    shape: str
    anchor: int              # index of the drone it was placed in front of
    position: np.ndarray     # (3,) world ENU centre
    radius_m: float          # bounding radius
    target_coverage: float   # fraction of the anchor view it was sized to cover
    vertices: np.ndarray     # meshes.VERTEX_DTYPE triangle list, world coordinates


def _part(template, scale, translation, color, material, rotation=None, rand=0):
    R = np.eye(3)[None] if rotation is None else np.asarray(rotation)[None]
    return meshes.instance(template, R, np.asarray([scale], float), np.asarray([translation], float),
                           np.asarray([[*color, 255]], np.uint8), NO_CLASS, material, rand)


def _segment(a, b, radius, color, material, sides=5, rand=0):
    """A cylinder from point a to point b."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    length = np.linalg.norm(d)
    z = d / length
    x = np.cross(z, [0.0, 0.0, 1.0]) if abs(z[2]) < 0.9 else np.cross(z, [1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z], axis=1)
    return _part(meshes.unit_cylinder(sides), [radius, radius, length], a, color, material, R, rand)


def _bird(rng) -> np.ndarray:
    plumage = [(0.12, 0.11, 0.10), (0.35, 0.25, 0.16), (0.55, 0.55, 0.57), (0.90, 0.90, 0.88), (0.10, 0.45, 0.45)]
    base = np.clip(np.array(plumage[rng.integers(len(plumage))]) + rng.uniform(-0.05, 0.05, 3), 0, 1)
    color = tuple(np.round(base * 255).astype(int))
    wing_color = tuple(np.round(np.clip(base * rng.uniform(0.7, 1.1), 0, 1) * 255).astype(int))
    rand = int(rng.integers(256))
    sphere = meshes.unit_icosphere(1)
    parts = [_part(sphere, [0.42, 0.13, 0.13], [0, 0, 0], color, Material.MATTE, rand=rand),
             _part(sphere, [0.1, 0.09, 0.09], [0.45, 0, 0.05], color, Material.MATTE, rand=rand),
             _part(meshes.unit_cone(5), [0.035, 0.035, 0.12], [0.53, 0, 0.05], (230, 180, 40), Material.MATTE,
                   meshes.rotation_xyz(0, math.pi / 2, 0), rand)]
    flap = rng.uniform(-0.7, 0.7)
    sweep = rng.uniform(0.0, 0.35)
    for side in (-1.0, 1.0):
        # a wing: root chord along the body, tip swept back, lifted by the flap angle
        root_f, root_b = np.array([0.15, side * 0.1, 0.0]), np.array([-0.15, side * 0.1, 0.0])
        span = 0.95
        tip = np.array([-sweep - 0.1, side * span * math.cos(flap), span * math.sin(flap)])
        mid_f = np.array([0.05 - sweep / 2, side * span * 0.55 * math.cos(flap), span * 0.55 * math.sin(flap)])
        mid_b = mid_f + [-0.3, 0, 0]
        tris = np.array([[root_f, mid_f, root_b], [root_b, mid_f, mid_b], [mid_f, tip, mid_b]])
        if side < 0:
            tris = tris[:, ::-1]
        parts.append(meshes.flat_triangles(tris, (*wing_color, 255), NO_CLASS, Material.MATTE, rand))
    tail = np.array([[[-0.35, 0.0, 0.0], [-0.62, -0.14, 0.0], [-0.62, 0.14, 0.0]]])
    parts.append(meshes.flat_triangles(tail, (*wing_color, 255), NO_CLASS, Material.MATTE, rand))
    return np.concatenate(parts)


def _branch(rng) -> np.ndarray:
    bark = (int(rng.integers(70, 110)), int(rng.integers(50, 75)), int(rng.integers(30, 50)))
    autumn = rng.random() < 0.25
    leaf = (int(rng.integers(150, 200)), int(rng.integers(90, 140)), 30) if autumn else \
        (int(rng.integers(40, 80)), int(rng.integers(90, 140)), int(rng.integers(30, 60)))
    rand = int(rng.integers(256))
    points = [np.array([-1.0, 0.0, 0.0])]
    for k in range(1, 5):  # a crooked main stick
        points.append(np.array([-1.0 + 0.5 * k, rng.uniform(-0.12, 0.12), rng.uniform(-0.12, 0.12)]))
    parts = [_segment(a, b, 0.045 - 0.007 * i, bark, Material.MATTE, rand=rand)
             for i, (a, b) in enumerate(zip(points[:-1], points[1:]))]
    sphere = meshes.unit_icosphere(1)
    tips = [points[-1]]
    for _ in range(int(rng.integers(4, 8))):
        start = points[int(rng.integers(1, 4))]
        direction = rng.normal(size=3) * [0.4, 1.0, 1.0] + [0.3, 0, 0]
        end = start + direction / np.linalg.norm(direction) * rng.uniform(0.3, 0.55)
        parts.append(_segment(start, end, 0.02, bark, Material.MATTE, rand=rand))
        tips += [start + (end - start) * f for f in (0.55, 1.0)]   # leaves along the twig and at its end
    for tip in tips:
        r = rng.uniform(0.09, 0.17)
        parts.append(_part(sphere, [r, r * 1.3, r * 0.5], tip + rng.normal(0, 0.04, 3), leaf, Material.MATTE,
                           meshes.rotation_xyz(*rng.uniform(-1, 1, 3)), rand))
    return np.concatenate(parts)


def _balloon(rng) -> np.ndarray:
    colors = [(220, 30, 40), (240, 200, 30), (30, 90, 220), (240, 110, 180), (40, 180, 80), (250, 250, 250)]
    c = colors[rng.integers(len(colors))]
    rand = int(rng.integers(256))
    return np.concatenate([
        _part(meshes.unit_icosphere(2), [0.55, 0.55, 0.68], [0, 0, 0.3], c, Material.GLOSSY, rand=rand),
        _part(meshes.unit_cone(6), [0.08, 0.08, 0.12], [0, 0, -0.48], c, Material.GLOSSY,
              meshes.rotation_xyz(math.pi, 0, 0), rand),
        _segment([0, 0, -0.48], [rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), -1.0], 0.008, (230, 230, 230),
                 Material.MATTE, sides=3, rand=rand)])


def _drone(rng) -> np.ndarray:
    body = [(40, 40, 45), (230, 230, 230), (200, 60, 40)][rng.integers(3)]
    rand = int(rng.integers(256))
    parts = [_part(meshes.unit_box(), [0.4, 0.3, 0.14], [0, 0, 0], body, Material.GLOSSY, rand=rand)]
    for k in range(4):
        a = math.pi / 4 + k * math.pi / 2
        tip = np.array([0.62 * math.cos(a), 0.62 * math.sin(a), 0.05])
        parts.append(_segment([0, 0, 0.0], tip, 0.03, (30, 30, 30), Material.MATTE, rand=rand))
        parts.append(_part(meshes.unit_disc(10), [0.3, 0.3, 1.0], tip + [0, 0, 0.04], (70, 70, 75),
                           Material.MATTE, rand=rand))   # a spinning rotor reads as a disc
        parts.append(_segment([0.12 * math.cos(a), 0.12 * math.sin(a), -0.05],
                              [0.2 * math.cos(a), 0.2 * math.sin(a), -0.25], 0.015, (30, 30, 30), Material.MATTE,
                              sides=3, rand=rand))
    return np.concatenate(parts)


_BUILDERS = {'bird': _bird, 'branch': _branch, 'balloon': _balloon, 'drone': _drone}


def place_obstruction(rng: np.random.Generator, shape: str, anchor: int, position: np.ndarray,
                      rotation: np.ndarray, K: np.ndarray, width: int, height: int,
                      distance_m: tuple[float, float], coverage: tuple[float, float]) -> Obstruction:
    """Build `shape` and place it in front of a camera (position, camera-to-world rotation, K).

    Its centre sits on the ray of a pixel drawn from the central half of the image, at a planar depth drawn
    from `distance_m`; its size follows from a coverage drawn from `coverage` (a fraction of the image):
    projected radius rho = f r / d and covered area ~ FILL_FACTOR * pi rho^2, so
    r = d / f * sqrt(coverage * W * H / (pi * FILL_FACTOR)). It gets a random heading and a small tilt.
    """
    local = _BUILDERS[shape](rng)
    target = float(rng.uniform(*coverage))
    depth = float(rng.uniform(*distance_m))
    u = rng.uniform(0.25, 0.75) * (width - 1)
    v = rng.uniform(0.25, 0.75) * (height - 1)
    ray = np.array([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], 1.0])
    centre = position + rotation @ (ray * depth)
    f = math.sqrt(K[0, 0] * K[1, 1])
    radius = depth / f * math.sqrt(target * width * height / (math.pi * FILL_FACTOR[shape]))
    R = meshes.rotation_xyz(rng.normal(0, 0.25), rng.normal(0, 0.25), rng.uniform(-np.pi, np.pi))
    out = local.copy()
    out['position'] = (local['position'] * radius) @ R.T + centre
    normals = local['normal'] @ R.T
    out['normal'] = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    return Obstruction(shape, anchor, centre, radius, target, out)
