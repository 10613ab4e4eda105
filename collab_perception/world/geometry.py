"""Camera geometry and the ground truth that learning needs, from depth + pose (numpy only).

Conventions (the same everywhere in the project, see collab_perception/world/__init__.py):
- world frame ENU: x east, y north, z up, metres;
- camera optical frame: x right, y down, z forward (OpenCV / ROS REP 103 `*_optical_frame`);
- a pose is camera-to-world: `X_world = R @ X_cam + position`, `R` from the quaternion (x, y, z, w);
  as a 4x4 matrix `T_world_cam`;
- pixels: (u, v) = (column, row); integer coordinates are pixel centres (OpenCV), so
  `u = fx * X / Z + cx` with `cx = (W - 1) / 2` for a centred principal point;
- depth is "planar" (AirSim DepthPlanar): Z in the camera frame, metres; +inf where nothing is hit (sky),
  as REP 118 asks for 32FC1 depth images.

Ground truth for the papers:
- `reproject_pixels` / `pixel_correspondences`: a pixel of one view through its depth and the two poses into
  another view, with an occlusion test against the other view's depth;
- `cells_from_pixels`: for each target cell (a block of `cell_size` x `cell_size` pixels, MASH's
  Hs x Ws grid), the supporter cell it matches or the no-match value Hc*Wc (MASH §III, the extra
  "no-match" bin of the cost volume; §IV "ground truth dense pixel correspondences ... computed from the
  raw pose and depth");
- `swarm_ground_truth`: every ordered pair of a snapshot: overlap fractions, cell correspondences, and the
  best supporter of each agent (largest overlap; the handshake paper's selection target, §IV-D);
- `warp_to_target` (`forward_warp_map` + `apply_warp_map`): forward warping of a supporter's image or class
  map into the target view with the supporter's depth and the relative pose, accurate or with `perturb_pose` noise (handshake paper §IV-B:
  "we use 3D information from the depth maps of each normal agent's view and an accurate relative pose
  transformation to the target view to warp the pixels"; the noisy-pose setting adds position noise);
- `sample_cells`: a supporter's map resampled into the target's cells through cell correspondences, the
  ground-truth warping grid of MASH's WarpedOutputStack upper bound.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

# ------------------------------------------------------------------------------------------- rotations


def quaternion_from_matrix(R: np.ndarray) -> np.ndarray:
    """3x3 rotation -> unit quaternion (x, y, z, w) with w >= 0 (Shepperd's method, stable for any angle)."""
    R = np.asarray(R, dtype=np.float64)
    trace = R[0, 0] + R[1, 1] + R[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * math.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * math.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def matrix_from_quaternion(q_xyzw: Sequence[float]) -> np.ndarray:
    """Unit quaternion (x, y, z, w) -> 3x3 rotation matrix (normalises first)."""
    x, y, z, w = np.asarray(q_xyzw, dtype=np.float64) / np.linalg.norm(q_xyzw)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def camera_rotation(yaw_rad: float, pitch_rad: float) -> np.ndarray:
    """Camera-to-world rotation of a level (roll-free) camera: columns are the optical axes in ENU.

    yaw: heading of the optical axis, counter-clockwise from east (0 looks east, pi/2 north);
    pitch: elevation of the optical axis (negative looks down, -pi/2 is nadir).
    """
    cy, sy, cp, sp = math.cos(yaw_rad), math.sin(yaw_rad), math.cos(pitch_rad), math.sin(pitch_rad)
    forward = np.array([cp * cy, cp * sy, sp])
    right = np.array([sy, -cy, 0.0])
    down = np.cross(forward, right)
    return np.stack([right, down, forward], axis=1)


def pose_matrix(position: Sequence[float], orientation_xyzw: Sequence[float]) -> np.ndarray:
    """Camera-to-world 4x4 `T_world_cam` from a position and a quaternion (x, y, z, w)."""
    T = np.eye(4)
    T[:3, :3] = matrix_from_quaternion(orientation_xyzw)
    T[:3, 3] = position
    return T


def intrinsics_from_fov(width: int, height: int, fov_deg: float) -> np.ndarray:
    """Pinhole K (3x3, float64) for a horizontal field of view, square pixels, centred principal point."""
    fx = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[fx, 0.0, (width - 1) / 2.0], [0.0, fx, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def perturb_pose(T_world_cam: np.ndarray, rng: np.random.Generator, position_std_m: float = 0.0,
                 rotation_std_deg: float = 0.0) -> np.ndarray:
    """A noisy copy of a pose: Gaussian position noise (per axis, metres) and a rotation about a random
    axis with a Gaussian angle (degrees), applied in the world frame. The handshake paper's inaccurate-pose
    setting (§IV-B) perturbs positions only (rotation_std_deg=0)."""
    T = np.array(T_world_cam, dtype=np.float64, copy=True)
    T[:3, 3] += rng.normal(0.0, position_std_m, size=3) if position_std_m > 0 else 0.0
    if rotation_std_deg > 0:
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = math.radians(rng.normal(0.0, rotation_std_deg))
        K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        dR = np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * (K @ K)
        T[:3, :3] = dR @ T[:3, :3]
    return T


# ------------------------------------------------------------------------------------------ projection


def pixel_grid(height: int, width: int) -> np.ndarray:
    """(H, W, 2) float64 pixel centres (u, v)."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([u, v], axis=-1)


def backproject(depth: np.ndarray, K: np.ndarray, uv: Optional[np.ndarray] = None) -> np.ndarray:
    """Planar depth -> camera-frame points (..., 3). `uv` defaults to every pixel centre of `depth`."""
    depth = np.asarray(depth, dtype=np.float64)
    if uv is None:
        uv = pixel_grid(*depth.shape)
    x = (uv[..., 0] - K[0, 2]) / K[0, 0]
    y = (uv[..., 1] - K[1, 2]) / K[1, 1]
    with np.errstate(invalid='ignore'):   # sky (inf depth) on the principal axis: 0 * inf -> nan, unused
        return np.stack([x * depth, y * depth, depth], axis=-1)


def project(points_cam: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame points (..., 3) -> pixel coordinates (..., 2) and planar depth (...).
    Points at or behind the camera (Z <= 0) get NaN coordinates."""
    z = points_cam[..., 2]
    with np.errstate(divide='ignore', invalid='ignore'):
        safe = np.where(z > 1e-9, z, np.nan)
        u = K[0, 0] * points_cam[..., 0] / safe + K[0, 2]
        v = K[1, 1] * points_cam[..., 1] / safe + K[1, 2]
    return np.stack([u, v], axis=-1), z


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 rigid transform to points (..., 3) (non-finite points stay non-finite)."""
    with np.errstate(invalid='ignore'):
        return points @ T[:3, :3].T + T[:3, 3]


def reproject_pixels(uv: np.ndarray, depth: np.ndarray, K_src: np.ndarray, T_src: np.ndarray,
                     K_dst: np.ndarray, T_dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (..., 2) of the source view with their planar depth (...) -> pixel coordinates (..., 2) and
    planar depth (...) in the destination view. T_* are camera-to-world. No visibility test: see
    `visible_in`."""
    T_dst_src = np.linalg.inv(T_dst) @ T_src
    return project(transform_points(T_dst_src, backproject(depth, K_src, uv)), K_dst)


def visible_in(uv: np.ndarray, z: np.ndarray, depth_dst: np.ndarray, rel_tol: float = 0.01,
               abs_tol: float = 0.15) -> np.ndarray:
    """Which reprojected points (uv (..., 2), planar depth z (...)) the destination view actually sees.

    A point is visible when it lands inside the image, in front of the camera, and its depth lies within
    the depths of the 2x2 pixel centres around it (plus a tolerance): comparing with the neighbourhood
    rather than the nearest pixel keeps slanted surfaces seen at grazing angles, while a point behind
    another surface (occluded) is deeper than all four and fails.
    """
    H, W = depth_dst.shape
    u, v = uv[..., 0], uv[..., 1]
    inside = (u >= -0.5) & (u < W - 0.5) & (v >= -0.5) & (v < H - 0.5) & (z > 0) & np.isfinite(z)
    u0 = np.clip(np.floor(np.nan_to_num(u)), 0, W - 1).astype(np.intp)
    v0 = np.clip(np.floor(np.nan_to_num(v)), 0, H - 1).astype(np.intp)
    i00 = v0 * W + u0                                               # flat indices of the 2x2 neighbours
    i01 = i00 + (u0 < W - 1)
    i10 = i00 + W * (v0 < H - 1)
    i11 = i10 + (u0 < W - 1)
    flat = depth_dst.ravel()
    finite = np.where(np.isfinite(flat), flat, -np.inf)             # sky never bounds a surface from above
    lo = np.minimum(np.minimum(flat[i00], flat[i01]), np.minimum(flat[i10], flat[i11]))
    hi = np.maximum(np.maximum(finite[i00], finite[i01]), np.maximum(finite[i10], finite[i11]))
    with np.errstate(invalid='ignore'):
        tol = abs_tol + rel_tol * z
        ok = (z >= lo - tol) & (z <= hi + tol)
    return inside & ok


def pixel_correspondences(depth_src: np.ndarray, K_src: np.ndarray, T_src: np.ndarray,
                          depth_dst: np.ndarray, K_dst: np.ndarray, T_dst: np.ndarray,
                          rel_tol: float = 0.01, abs_tol: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Every source pixel -> (uv in the destination view (H, W, 2), visible (H, W) bool).
    Sky pixels (infinite depth) are never visible."""
    uv, z = reproject_pixels(pixel_grid(*depth_src.shape), depth_src, K_src, T_src, K_dst, T_dst)
    valid = visible_in(uv, z, depth_dst, rel_tol, abs_tol) & np.isfinite(depth_src)
    return uv, valid


def overlap_fraction(depth_src: np.ndarray, K_src: np.ndarray, T_src: np.ndarray,
                     depth_dst: np.ndarray, K_dst: np.ndarray, T_dst: np.ndarray) -> float:
    """Fraction of the source view's pixels that the destination view sees (0..1; not symmetric)."""
    return float(pixel_correspondences(depth_src, K_src, T_src, depth_dst, K_dst, T_dst)[1].mean())


# ------------------------------------------------------------------------------------- cell-level GT


def cell_grid(height: int, width: int, cell_size: int) -> tuple[int, int]:
    """(Hc, Wc) of a cell_size grid; the image must tile exactly."""
    if cell_size < 1 or height % cell_size or width % cell_size:
        raise ValueError(f'cell_size {cell_size} must divide the image size {width}x{height}')
    return height // cell_size, width // cell_size


def cells_from_pixels(uv: np.ndarray, valid: np.ndarray, height: int, width: int, cell_size: int,
                      min_valid_fraction: float = 0.5) -> np.ndarray:
    """Per-pixel correspondences into another view -> one cell index per target cell.

    Each target cell takes the destination cell that most of its visible pixels land in (a vote, robust at
    cell borders), or the no-match value Hc*Wc when fewer than `min_valid_fraction` of its pixels are
    visible in the other view. Returns (Hc*Wc,) int16 in row-major cell order.
    """
    Hc, Wc = cell_grid(height, width, cell_size)
    n_cells, no_match = Hc * Wc, Hc * Wc
    with np.errstate(invalid='ignore'):
        cu = np.clip(np.floor((uv[..., 0] + 0.5) / cell_size), 0, Wc - 1)
        cv = np.clip(np.floor((uv[..., 1] + 0.5) / cell_size), 0, Hc - 1)
    dst_cell = np.where(valid, np.nan_to_num(cv) * Wc + np.nan_to_num(cu), no_match).astype(np.int64)
    # target cell of every source pixel, in the same (H, W) layout
    rows, cols = np.mgrid[0:height, 0:width]
    src_cell = (rows // cell_size) * Wc + cols // cell_size
    votes = np.bincount((src_cell * (n_cells + 1) + dst_cell).ravel(), minlength=n_cells * (n_cells + 1))
    votes = votes.reshape(n_cells, n_cells + 1)
    valid_count = votes[:, :n_cells].sum(axis=1)
    best = np.argmax(votes[:, :n_cells], axis=1)
    enough = valid_count >= min_valid_fraction * cell_size * cell_size
    return np.where(enough, best, no_match).astype(np.int16)


def cell_positions(uv: np.ndarray, valid: np.ndarray, cell_size: int, min_valid_fraction: float = 0.5) -> np.ndarray:
    """Per-pixel correspondences into another view -> where each target cell lands there, below the cell grid.

    For every target cell, the mean (u, v) in the other view of its visible pixels: the sub-cell position of
    the cell's centre (integer cell indices quantize it by up to half a cell, which costs a block-sampled
    label map several points of agreement; docs/DATASETS.md). NaN where the cell has no match (the same rule
    as `cells_from_pixels`). Returns (Hc*Wc, 2) float32 in row-major cell order.
    """
    H, W = valid.shape
    Hc, Wc = cell_grid(H, W, cell_size)
    blocks = valid.reshape(Hc, cell_size, Wc, cell_size)
    count = blocks.sum(axis=(1, 3))
    out = np.empty((Hc, Wc, 2), np.float32)
    for axis in range(2):
        values = np.where(valid, np.nan_to_num(uv[..., axis]), 0.0).reshape(Hc, cell_size, Wc, cell_size)
        with np.errstate(invalid='ignore', divide='ignore'):
            out[..., axis] = values.sum(axis=(1, 3)) / count
    out[count < min_valid_fraction * cell_size * cell_size] = np.nan
    return out.reshape(Hc * Wc, 2)


def cell_centres(height: int, width: int, cell_size: int) -> np.ndarray:
    """(Hc*Wc, 2) float32 pixel coordinates (u, v) of every cell's centre, row-major."""
    Hc, Wc = cell_grid(height, width, cell_size)
    v, u = np.mgrid[0:Hc, 0:Wc]
    half = (cell_size - 1) / 2
    return np.stack([u * cell_size + half, v * cell_size + half], -1).reshape(-1, 2).astype(np.float32)


def swarm_ground_truth(depths: Sequence[np.ndarray], Ks: Sequence[np.ndarray], poses: Sequence[np.ndarray],
                       cell_size: int = 8, min_valid_fraction: float = 0.5) -> dict:
    """Ground truth of one snapshot for every ordered (target, supporter) pair of N views:

    overlap (N, N) float32: fraction of the target's pixels the supporter sees (diagonal 1);
    correspondence (N, N, Hc*Wc) int16: for each target cell the supporter cell that sees the same surface, or
        Hc*Wc (no match), from `pixel_correspondences` and `cells_from_pixels` (diagonal: identity);
    correspondence_uv (N, N, Hc*Wc, 2) float32: where in the supporter each target cell's centre lands, in
        pixels (`cell_positions`; NaN for no match; diagonal: the cell centres);
    best_supporter (N,) int8: for each target, the other agent with the largest overlap, -1 if none.
    """
    n = len(depths)
    H, W = depths[0].shape
    Hc, Wc = cell_grid(H, W, cell_size)
    grid = pixel_grid(H, W)
    # each view's pixels as world points, once
    world = [transform_points(T, backproject(d, K, grid)) for d, K, T in zip(depths, Ks, poses)]
    overlap = np.eye(n, dtype=np.float32)
    corr = np.empty((n, n, Hc * Wc), dtype=np.int16)
    corr_uv = np.empty((n, n, Hc * Wc, 2), dtype=np.float32)
    for t in range(n):
        corr[t, t] = np.arange(Hc * Wc)
        corr_uv[t, t] = cell_centres(H, W, cell_size)
        finite = np.isfinite(depths[t])
        for s in range(n):
            if s == t:
                continue
            uv, z = project(transform_points(np.linalg.inv(poses[s]), world[t]), Ks[s])
            valid = visible_in(uv, z, depths[s]) & finite
            overlap[t, s] = valid.mean()
            corr[t, s] = cells_from_pixels(uv, valid, H, W, cell_size, min_valid_fraction)
            corr_uv[t, s] = cell_positions(uv.reshape(H, W, 2), valid.reshape(H, W), cell_size, min_valid_fraction)
    others = np.where(np.eye(n, dtype=bool), -1.0, overlap)
    best = np.argmax(others, axis=1)
    best = np.where(others[np.arange(n), best] > 0, best, -1).astype(np.int8)
    return {'overlap': overlap, 'correspondence': corr, 'correspondence_uv': corr_uv, 'best_supporter': best}


# -------------------------------------------------------------------------------------------- warping


def forward_warp_map(depth_src: np.ndarray, K_src: np.ndarray, T_src: np.ndarray, K_tgt: np.ndarray,
                     T_tgt: np.ndarray, target_size: Optional[tuple[int, int]] = None,
                     max_footprint: int = 8) -> np.ndarray:
    """Where each target pixel comes from when a supporter's view is forward-warped into the target view:
    (h, w) int64 flat supporter pixel indices, -1 where nothing lands.

    Every supporter pixel goes through its own depth and the relative pose to the target view, where it
    covers the pixels of its footprint: the size of its pixel there, estimated from where its right and lower
    neighbours on the same surface land (so a surface the target sees magnified has no holes), up to
    `max_footprint` pixels across (1: single points). Where several land on one pixel the nearest wins
    (z-buffer). Only the supporter's depth is needed, so a supporter can do this locally (handshake paper
    §IV-B); pass a `perturb_pose` copy of either pose for the inaccurate-pose setting.
    """
    if max_footprint < 1:
        raise ValueError(f'max_footprint must be >= 1, got {max_footprint}')
    h, w = target_size or depth_src.shape
    H, W = depth_src.shape
    uv, z = reproject_pixels(pixel_grid(H, W), depth_src, K_src, T_src, K_tgt, T_tgt)
    ok = np.isfinite(depth_src) & np.isfinite(uv[..., 0]) & (z > 0)
    extent = np.ones((H, W, 2))
    if max_footprint > 1:
        # a neighbour is on the same surface when the inverse depth (linear in pixels on a plane) steps to it
        # by no more than about the step before: depth edges are spikes, grazing ground is a steady ramp
        # (both sides: a pixel next to an edge still has its surface on the other side)
        inv = np.where(np.isfinite(depth_src), 1.0 / np.maximum(depth_src, 1e-6), 0.0)
        for axis in (0, 1):
            for shift in (-1, 1):
                toward = np.abs(np.roll(inv, shift, axis=axis) - inv)
                away = np.abs(inv - np.roll(inv, -shift, axis=axis))
                same = np.isfinite(depth_src) & (toward <= 2.0 * away + 0.01 * inv)
                border = [slice(None)] * 2
                border[axis] = 0 if shift == 1 else -1        # rolled in from the other side of the image
                same[tuple(border)] = False
                step = np.where(same[..., None], np.abs(np.roll(uv, shift, axis=axis) - uv), 1.0)
                extent = np.maximum(extent, np.nan_to_num(step, nan=1.0))
    size = np.clip(np.ceil(extent - 1e-6), 1, max_footprint).astype(np.int64)   # pixels across, per axis
    src_index = np.flatnonzero(ok)
    u, v, zz = uv[..., 0].ravel()[src_index], uv[..., 1].ravel()[src_index], z.ravel()[src_index]
    su, sv = size[..., 0].ravel()[src_index], size[..., 1].ravel()[src_index]
    u0 = np.rint(u) - (su - 1) // 2
    v0 = np.rint(v) - (sv - 1) // 2
    cand_pix, cand_src, cand_z = [], [], []
    for du in range(int(su.max(initial=1))):
        for dv in range(int(sv.max(initial=1))):
            take = (du < su) & (dv < sv)
            uu, vv = u0[take] + du, v0[take] + dv
            inside = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
            cand_pix.append((vv[inside] * w + uu[inside]).astype(np.int64))
            cand_src.append(src_index[take][inside])
            cand_z.append(zz[take][inside])
    pix, src, depth = np.concatenate(cand_pix), np.concatenate(cand_src), np.concatenate(cand_z)
    order = np.lexsort((depth, pix))          # by target pixel, nearest first
    first = np.ones(order.size, dtype=bool)
    first[1:] = pix[order[1:]] != pix[order[:-1]]
    winners = order[first]
    mapping = np.full(h * w, -1, dtype=np.int64)
    mapping[pix[winners]] = src[winners]
    return mapping.reshape(h, w)


def apply_warp_map(values: np.ndarray, mapping: np.ndarray, fill=0) -> tuple[np.ndarray, np.ndarray]:
    """Gather a supporter's image or class map (H, W[, C]) through a `forward_warp_map`:
    (warped (h, w[, C]) with `fill` where nothing landed, valid (h, w) bool)."""
    values = np.asarray(values)
    flat = values.reshape(values.shape[0] * values.shape[1], *values.shape[2:])
    valid = mapping >= 0
    out = np.empty(mapping.shape + values.shape[2:], dtype=values.dtype)
    out[...] = fill
    out[valid] = flat[mapping[valid]]
    return out, valid


def warp_to_target(values: np.ndarray, depth_src: np.ndarray, K_src: np.ndarray, T_src: np.ndarray,
                   K_tgt: np.ndarray, T_tgt: np.ndarray, target_size: Optional[tuple[int, int]] = None,
                   fill=0, max_footprint: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Forward-warp a supporter's image or class map (H, W[, C]) into the target view with the supporter's
    depth and the two poses (see `forward_warp_map`). Returns (warped with `fill` where nothing landed,
    valid (h, w) bool)."""
    mapping = forward_warp_map(depth_src, K_src, T_src, K_tgt, T_tgt, target_size, max_footprint)
    return apply_warp_map(values, mapping, fill)


def sample_cells(values: np.ndarray, correspondence: np.ndarray, cell_size: int, fill=0) -> np.ndarray:
    """Rebuild the target view from a supporter's map (H, W[, C]) cell by cell: target cell i gets the
    supporter's cell `correspondence[i]`, or `fill` for no-match. The ground-truth warping grid of MASH's
    WarpedOutputStack (§IV Baselines), at cell resolution."""
    values = np.asarray(values)
    H, W = values.shape[:2]
    Hc, Wc = cell_grid(H, W, cell_size)
    cells = values.reshape(Hc, cell_size, Wc, cell_size, *values.shape[2:]).swapaxes(1, 2)
    cells = cells.reshape(Hc * Wc, cell_size, cell_size, *values.shape[2:])
    padded = np.concatenate([cells, np.full((1,) + cells.shape[1:], fill, dtype=values.dtype)])
    picked = padded[np.asarray(correspondence, dtype=np.int64)]
    picked = picked.reshape(Hc, Wc, cell_size, cell_size, *values.shape[2:]).swapaxes(1, 2)
    return picked.reshape(values.shape)
