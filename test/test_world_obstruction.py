"""MASH-style foreground obstructions: 3D objects in the scene, seen consistently by every view; labels and
depth keep the occluded surface; the coverage matches the configuration."""
import math

import numpy as np
import pytest

from collab_perception.world import World, WorldConfig
from collab_perception.world import geometry as G
from collab_perception.world.landscape import generate_landscape
from collab_perception.world.obstructions import place_obstruction
from collab_perception.world.render import Camera, Renderer

SMALL = dict(image_width=64, image_height=64, map_size_m=160.0, ground_texel_m=0.5, shadow_map_size=512)


def test_obstructions_change_only_the_rgb_under_their_mask():
    plain_cfg = WorldConfig(seed=6, drones=3, **SMALL)
    with World(plain_cfg) as plain, World(plain_cfg.replace(obstructions=True)) as obstructed:
        for _ in range(4):
            a, b = plain.step(), obstructed.step()
            assert len(b.obstructions) == 1
            anchor = b.obstructions[0].anchor
            assert b.views[anchor].obstruction_mask.any()
            for va, vb in zip(a.views, b.views):
                assert np.array_equal(va.labels, vb.labels)       # ground truth: the surface behind
                assert np.array_equal(va.depth, vb.depth)
                assert np.array_equal(va.rgb, vb.rgb_clean)
                assert np.array_equal(va.position, vb.position)
                m = vb.obstruction_mask
                assert np.array_equal(vb.rgb[~m], va.rgb[~m])
                assert np.all(vb.depth_obstructed[m] < vb.depth[m])
                assert np.array_equal(vb.depth_obstructed[~m], vb.depth[~m])


def test_coverage_matches_the_configured_range():
    cfg = WorldConfig(seed=21, drones=3, obstructions=True, obstruction_coverage=(0.05, 0.25), **SMALL)
    ratios, coverages = [], []
    with World(cfg) as world:
        for _ in range(40):
            snap = world.step()
            o = snap.obstructions[0]
            assert 0.05 <= o.target_coverage <= 0.25
            assert cfg.obstruction_distance_m[0] <= np.linalg.norm(o.position - snap.views[o.anchor].position)
            cov = snap.views[o.anchor].obstruction_mask.mean()
            ratios.append(cov / o.target_coverage)
            coverages.append(cov)
    assert 0.75 < np.mean(ratios) < 1.25, np.mean(ratios)
    assert 0.05 * 0.75 < np.mean(coverages) < 0.25
    assert 0.1 < np.mean(coverages) < 0.2     # the middle of the range on average


def test_obstruct_argument_chooses_the_anchors():
    with World(WorldConfig(seed=2, drones=4, obstructions=True, **SMALL)) as world:
        snap = world.step(obstruct=[1, 3])
    assert [o.anchor for o in snap.obstructions] == [1, 3]
    assert snap.views[1].obstruction_mask.any() and snap.views[3].obstruction_mask.any()
    with World(WorldConfig(seed=2, drones=2, **SMALL)) as world, pytest.raises(ValueError, match='obstructions=True'):
        world.step(obstruct=[0])


@pytest.mark.parametrize('shape', ['bird', 'branch', 'balloon', 'drone'])
def test_an_obstruction_is_the_same_3d_object_in_every_view_that_sees_it(shape):
    """One camera gets an obstruction 6 m ahead; a second camera looks at it from the side, a third looks
    away. The first two see it where it is in 3D (their mask pixels back-project onto the object), the
    third does not see it at all."""
    landscape = generate_landscape(3, 160.0, 0.5)
    K = G.intrinsics_from_fov(64, 64, 80.0)
    z = float(landscape.ground_height(0.0, 0.0)) + 40.0
    cam_a = Camera(np.array([0.0, 0.0, z]), G.camera_rotation(0.0, math.radians(-30)), K)
    obstruction = place_obstruction(np.random.default_rng(4), shape, 0, cam_a.position, cam_a.rotation, K, 64, 64,
                                    (6.0, 6.0), (0.1, 0.1))
    direction = np.array([0.3, 1.0, -0.3]) / np.linalg.norm([0.3, 1.0, -0.3])   # from the north-ish side
    cam_b = Camera(obstruction.position - 7.0 * direction,
                   G.camera_rotation(math.atan2(direction[1], direction[0]), math.asin(direction[2])), K)
    cam_c = Camera(cam_a.position + [0, 0, 1.0], G.camera_rotation(math.pi, math.radians(-30)), K)
    renderer = Renderer(64, 64, 3, obstructions=True, shadow_map_size=512)
    try:
        renderer.set_landscape(landscape)
        out = renderer.render([cam_a, cam_b, cam_c], 0.0, obstruction.vertices)
    finally:
        renderer.release()
    for i, cam in enumerate([cam_a, cam_b]):
        mask = out.obstruction_mask[i]
        assert mask.mean() > 0.01, f'view {i} does not see the {shape}'
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = cam.rotation, cam.position
        points = G.transform_points(T, G.backproject(out.depth_obstructed[i], K))[mask]
        assert np.all(np.linalg.norm(points - obstruction.position, axis=1) < obstruction.radius_m * 1.25)
        # the labels underneath are landscape classes: the obstruction is not in them
        assert out.labels[i][mask].max() < 8 and np.isfinite(out.depth[i][mask]).any()
    assert not out.obstruction_mask[2].any()
