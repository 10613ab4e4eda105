"""Camera geometry and learning ground truth, checked on real renderings of the embedded world."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collab_perception.world import World, WorldConfig
from collab_perception.world import geometry as G
from collab_perception.world.landscape import SKY, WATER

SMALL = dict(image_width=64, image_height=64, map_size_m=160.0, ground_texel_m=0.5, shadow_map_size=512)


@pytest.fixture(scope='module')
def flight():
    """Waypoint-formation snapshots with 3 drones (views overlap partially), and the map they fly over."""
    with World(WorldConfig(seed=11, drones=3, **SMALL)) as world:
        return [world.step() for _ in range(6)], world.landscape


@pytest.fixture(scope='module')
def snapshots(flight):
    return flight[0]


def _best_pair(snap):
    gt = G.swarm_ground_truth([v.depth for v in snap.views], [v.K for v in snap.views],
                              [v.T_world_cam for v in snap.views])
    ov = np.where(np.eye(len(snap.views), dtype=bool), -1, gt['overlap'])
    t, s = np.unravel_index(np.argmax(ov), ov.shape)
    return snap.views[t], snap.views[s], gt


# ------------------------------------------------------------------------------------------ rotations

@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(lambda q: np.linalg.norm(q) > 0.1))
def test_quaternion_round_trip(q):
    q = np.array(q) / np.linalg.norm(q)
    R = G.matrix_from_quaternion(q)
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-9) and np.isclose(np.linalg.det(R), 1.0)
    q2 = G.quaternion_from_matrix(R)
    assert q2[3] >= 0 and (np.allclose(q2, q, atol=1e-9) or np.allclose(q2, -q, atol=1e-9))


def test_camera_rotation_axes_follow_enu_and_optical_conventions():
    # yaw 0, pitch 0: looking east, right is south, down is -z
    R = G.camera_rotation(0.0, 0.0)
    assert np.allclose(R[:, 2], [1, 0, 0]) and np.allclose(R[:, 0], [0, -1, 0]) and np.allclose(R[:, 1], [0, 0, -1])
    # yaw 90 deg looks north; pitch -90 deg looks straight down with image "up" (-y) pointing north
    assert np.allclose(G.camera_rotation(math.pi / 2, 0.0)[:, 2], [0, 1, 0], atol=1e-12)
    nadir = G.camera_rotation(math.pi / 2, -math.pi / 2)
    assert np.allclose(nadir[:, 2], [0, 0, -1], atol=1e-12) and np.allclose(-nadir[:, 1], [0, 1, 0], atol=1e-12)
    assert np.isclose(np.linalg.det(nadir), 1.0)


def test_intrinsics_pixel_centre_convention():
    K = G.intrinsics_from_fov(64, 48, 90.0)
    assert np.isclose(K[0, 0], 32.0) and np.isclose(K[1, 1], 32.0)
    assert (K[0, 2], K[1, 2]) == (31.5, 23.5)
    # the left edge of pixel 0 (u = -0.5) is at half the field of view
    assert np.isclose(math.degrees(math.atan((-0.5 - K[0, 2]) / K[0, 0])), -45.0)


def test_reprojection_of_an_analytic_plane_is_exact():
    """Two cameras over the plane z=0: the depth of each pixel is known in closed form."""
    K = G.intrinsics_from_fov(64, 64, 70.0)
    T_a = G.pose_matrix([0, 0, 30], G.quaternion_from_matrix(G.camera_rotation(0.3, -1.0)))
    T_b = G.pose_matrix([8, -5, 35], G.quaternion_from_matrix(G.camera_rotation(0.6, -1.2)))

    def plane_depth(T):
        rays = G.backproject(np.ones((64, 64)), K) @ T[:3, :3].T
        return (-T[2, 3] / rays[..., 2]).astype(np.float64)   # planar depth: rays have Z = 1

    d_a, d_b = plane_depth(T_a), plane_depth(T_b)
    uv, valid = G.pixel_correspondences(d_a, K, T_a, d_b, K, T_b)
    assert valid.mean() > 0.3
    back, _ = G.reproject_pixels(uv[valid], d_b[np.clip(np.rint(uv[valid][:, 1]).astype(int), 0, 63),
                                               np.clip(np.rint(uv[valid][:, 0]).astype(int), 0, 63)],
                                 K, T_b, K, T_a)
    # nearest-pixel depth on a slanted plane moves the point by < 0.5 px in b, so < ~1 px back in a
    err = np.linalg.norm(back - G.pixel_grid(64, 64)[valid], axis=1)
    assert np.percentile(err, 99) < 1.0


# ------------------------------------------------------------------------------- on rendered views

def test_rendered_depth_and_pose_put_ground_pixels_on_the_terrain(flight):
    """The world frame, the optical frame, K and planar depth agree with the landscape's own height field."""
    snapshots, world_map = flight
    for v in snapshots[0].views:
        ground = (v.labels <= 2) | (v.labels == WATER)   # bare ground, grass, road, water: the terrain mesh
        pts = G.transform_points(v.T_world_cam, G.backproject(v.depth, v.K))[ground]
        err = np.abs(pts[:, 2] - world_map.ground_height(pts[:, 0], pts[:, 1]))
        assert ground.mean() > 0.2
        assert np.percentile(err, 99) < 0.3, np.percentile(err, [50, 99, 100])


def test_sky_has_infinite_depth_and_nothing_else_does():
    with World(WorldConfig(seed=3, drones=2, pitch_deg=-5.0, pitch_jitter_deg=0.0, **SMALL)) as world:
        snap = world.step()
    for v in snap.views:
        assert (v.labels == SKY).any()
        assert np.array_equal(np.isinf(v.depth), v.labels == SKY)
        assert np.all(v.depth[v.labels != SKY] > 0)


def _bilinear_depth(depth, uv):
    """Planar depth at sub-pixel positions by bilinear interpolation of inverse depth (exact on planes),
    and whether the 2x2 neighbourhood is smooth (no depth edge)."""
    H, W = depth.shape
    u0 = np.clip(np.floor(uv[:, 0]).astype(int), 0, W - 2)
    v0 = np.clip(np.floor(uv[:, 1]).astype(int), 0, H - 2)
    fu, fv = uv[:, 0] - u0, uv[:, 1] - v0
    d = np.stack([depth[v0, u0], depth[v0, u0 + 1], depth[v0 + 1, u0], depth[v0 + 1, u0 + 1]], -1).astype(float)
    inv = 1.0 / d
    w = np.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv], -1)
    smooth = np.isfinite(d).all(axis=1) & (d.max(axis=1) / d.min(axis=1) < 1.03)
    return 1.0 / np.sum(w * inv, axis=1), smooth


def test_a_reprojected_pixel_lands_within_one_pixel_of_the_same_surface_point(snapshots):
    """A pixel of view a goes through its rendered depth and both poses to a sub-pixel position in view b.
    b's own rendered depth there gives b's 3D point; projected back into a, it is within one pixel of the
    pixel we started from: both views agree on where the surface is."""
    checked = 0
    for snap in snapshots:
        a, b, _ = _best_pair(snap)
        uv, valid = G.pixel_correspondences(a.depth, a.K, a.T_world_cam, b.depth, b.K, b.T_world_cam)
        inside = valid & (uv[..., 0] >= 0) & (uv[..., 0] <= b.depth.shape[1] - 1) & \
            (uv[..., 1] >= 0) & (uv[..., 1] <= b.depth.shape[0] - 1)
        depth_b, smooth = _bilinear_depth(b.depth, uv[inside])
        if smooth.sum() < 200:
            continue
        back, _ = G.reproject_pixels(uv[inside][smooth], depth_b[smooth], b.K, b.T_world_cam, a.K, a.T_world_cam)
        err = np.linalg.norm(back - G.pixel_grid(*a.depth.shape)[inside][smooth], axis=1)
        # smooth neighbourhoods can still straddle a small step (a car on the road) within the 3% test
        assert np.mean(err < 1.0) > 0.995 and np.median(err) < 0.01, np.percentile(err, [50, 90, 99, 100])
        checked += 1
    assert checked >= 3


def test_cell_correspondences_agree_with_the_forward_warp(snapshots):
    """Warp the supporter's cell-index image into the target with the supporter's depth (forward warp, the
    other direction from the correspondences, which use the target's depth). Per target cell, the majority
    of the warped supporter cells is the ground-truth correspondence, or a neighbour of it (a target cell
    seen at another scale and angle straddles several supporter cells)."""
    cell = 8
    exact, near, total = 0, 0, 0
    for snap in snapshots:
        t, s, gt = _best_pair(snap)
        corr = gt['correspondence'][t.agent, s.agent]
        H, W = t.depth.shape
        Hc, Wc = G.cell_grid(H, W, cell)
        rows, cols = np.mgrid[0:H, 0:W]
        sup_cells = ((rows // cell) * Wc + cols // cell).astype(np.int32)
        warped, valid = G.warp_to_target(sup_cells, s.depth, s.K, s.T_world_cam, t.K, t.T_world_cam,
                                         max_footprint=1, fill=-1)
        target_cell = (rows // cell) * Wc + cols // cell
        for c in np.flatnonzero(corr != Hc * Wc):
            got = warped[(target_cell == c) & valid]
            if got.size < cell * cell // 2:
                continue
            mode = np.bincount(got).argmax()
            dr, dc = abs(mode // Wc - corr[c] // Wc), abs(mode % Wc - corr[c] % Wc)
            exact += int(mode == corr[c])
            near += int(max(dr, dc) <= 1)
            total += 1
        # cells without a match receive (almost) nothing from the supporter
        unmatched = np.isin(target_cell, np.flatnonzero(corr == Hc * Wc))
        if unmatched.any():
            assert valid[unmatched].mean() < 0.35
    assert total > 40
    assert exact / total > 0.85 and near / total > 0.98, (exact / total, near / total)


def test_warp_with_accurate_pose_reproduces_the_target_labels(snapshots):
    """Warped class maps match the target's labels away from class borders (at 64 px, over forest, most
    pixels are within one pixel of a border, where a one-pixel shift changes the class)."""
    import cv2
    for snap in snapshots:
        t, s, _ = _best_pair(snap)
        warped, valid = G.warp_to_target(s.labels, s.depth, s.K, s.T_world_cam, t.K, t.T_world_cam)
        border = cv2.dilate((cv2.Laplacian(t.labels.astype(np.float32), cv2.CV_32F) != 0).astype(np.uint8),
                            np.ones((3, 3), np.uint8)).astype(bool)
        inner = valid & ~border
        assert inner.sum() > 50
        assert np.mean(warped[inner] == t.labels[inner]) > 0.95
        assert np.mean(warped[valid] == t.labels[valid]) > 0.7


def test_pose_noise_misaligns_the_warp(snapshots):
    t, s, _ = _best_pair(snapshots[0])
    rng = np.random.default_rng(0)
    noisy = G.perturb_pose(s.T_world_cam, rng, position_std_m=4.0, rotation_std_deg=2.0)
    clean, v_clean = G.warp_to_target(s.rgb, s.depth, s.K, s.T_world_cam, t.K, t.T_world_cam)
    shifted, v_noisy = G.warp_to_target(s.rgb, s.depth, s.K, noisy, t.K, t.T_world_cam)
    both = v_clean & v_noisy
    assert both.sum() > 100
    err_clean = np.abs(clean[both].astype(int) - t.rgb[both].astype(int)).mean()
    err_noisy = np.abs(shifted[both].astype(int) - t.rgb[both].astype(int)).mean()
    assert err_noisy > err_clean * 1.2
    assert np.array_equal(G.perturb_pose(s.T_world_cam, rng), s.T_world_cam)


def test_sample_cells_identity_and_no_match():
    img = np.arange(16 * 16).reshape(16, 16).astype(np.int32)
    ident = np.arange(4)
    assert np.array_equal(G.sample_cells(img, ident, 8), img)
    out = G.sample_cells(img, np.array([3, 4, 4, 0]), 8, fill=-7)   # 4 = no-match for a 2x2 grid
    assert np.array_equal(out[:8, :8], img[8:, 8:]) and np.all(out[:8, 8:] == -7) and np.array_equal(out[8:, 8:], img[:8, :8])


def test_swarm_ground_truth_shapes_and_best_supporter(snapshots):
    snap = snapshots[0]
    gt = G.swarm_ground_truth([v.depth for v in snap.views], [v.K for v in snap.views],
                              [v.T_world_cam for v in snap.views], cell_size=8)
    n = len(snap.views)
    assert gt['overlap'].shape == (n, n) and np.allclose(np.diag(gt['overlap']), 1.0)
    assert gt['correspondence'].shape == (n, n, 64) and gt['correspondence'].dtype == np.int16
    assert np.all((gt['correspondence'] >= 0) & (gt['correspondence'] <= 64))
    a, b = snap.views[0], snap.views[1]
    assert np.isclose(G.overlap_fraction(a.depth, a.K, a.T_world_cam, b.depth, b.K, b.T_world_cam), gt['overlap'][0, 1])
    for t in range(n):
        others = [s for s in range(n) if s != t]
        best = others[int(np.argmax(gt['overlap'][t, others]))]
        assert gt['best_supporter'][t] == (best if gt['overlap'][t, best] > 0 else -1)


def test_sub_cell_positions_refine_the_cell_correspondences(snapshots):
    """correspondence_uv: NaN exactly where a cell has no match, the cell centres on the diagonal, and
    elsewhere a point inside (or at the border of) the matched supporter cell: the vote picks the cell most
    pixels land in, the mean lands near it."""
    cell = 8
    snap = snapshots[0]
    gt = G.swarm_ground_truth([v.depth for v in snap.views], [v.K for v in snap.views],
                              [v.T_world_cam for v in snap.views], cell_size=cell)
    uv, corr = gt['correspondence_uv'], gt['correspondence']
    n, _, cells = corr.shape
    H, W = snap.views[0].depth.shape
    Hc, Wc = G.cell_grid(H, W, cell)
    assert uv.shape == (n, n, cells, 2) and uv.dtype == np.float32
    assert np.array_equal(np.isnan(uv).any(-1), corr == cells)
    assert np.allclose(uv[0, 0], G.cell_centres(H, W, cell))
    matched = corr != cells
    assert matched.sum() > n * cells // 4
    cu, cv = np.floor((uv[..., 0] + 0.5) / cell), np.floor((uv[..., 1] + 0.5) / cell)
    du, dv = np.abs(cu - corr % Wc)[matched], np.abs(cv - corr // Wc)[matched]
    assert np.mean((du == 0) & (dv == 0)) > 0.8 and np.all((du <= 1) & (dv <= 1))
