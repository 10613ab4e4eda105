"""The World's snapshots: contents, determinism, several worlds per process, fork, trajectories."""
import hashlib
import os
import select
import signal

import numpy as np
import pytest

from collab_perception.classes import load_classes
from collab_perception.world import World, WorldConfig

SMALL = dict(image_width=64, image_height=64, map_size_m=160.0, ground_texel_m=0.5, shadow_map_size=512)


def _digest(snap) -> str:
    h = hashlib.sha256()
    for v in snap.views:
        for a in (v.rgb, v.depth, v.labels, v.position, v.orientation_xyzw, v.K, v.obstruction_mask):
            h.update(np.ascontiguousarray(a).tobytes())
    h.update(repr((snap.index, snap.time_s, snap.map_id)).encode())
    return h.hexdigest()


def _run(config: WorldConfig, steps: int) -> list[str]:
    with World(config) as world:
        return [_digest(world.step()) for _ in range(steps)]


def test_snapshot_contents_and_types():
    cfg = WorldConfig(seed=2, drones=4, **SMALL)
    with World(cfg) as world:
        snaps = [world.step() for _ in range(3)]
    assert [s.index for s in snaps] == [0, 1, 2]
    assert [s.time_s for s in snaps] == [0.0, cfg.dt_s, 2 * cfg.dt_s]
    for v in snaps[-1].views:
        assert v.rgb.shape == (64, 64, 3) and v.rgb.dtype == np.uint8
        assert v.depth.shape == (64, 64) and v.depth.dtype == np.float32
        assert v.labels.shape == (64, 64) and v.labels.dtype == np.uint8
        assert v.obstruction_mask.shape == (64, 64) and v.obstruction_mask.dtype == bool and not v.obstruction_mask.any()
        assert v.position.shape == (3,) and v.orientation_xyzw.shape == (4,)
        assert np.isclose(np.linalg.norm(v.orientation_xyzw), 1.0)
        assert np.array_equal(v.K, world.K)
        assert v.labels.max() < len(load_classes())
        assert v.rgb.std() > 10            # textured, not flat
        # the camera looks down (pitch -50 +- 8 deg) from 20-80 m over the ground
        forward = v.T_world_cam[:3, 2]
        assert -np.sin(np.radians(60)) <= forward[2] <= -np.sin(np.radians(40))
    # drones move, and differently
    p0 = np.array([v.position for v in snaps[0].views])
    p2 = np.array([v.position for v in snaps[2].views])
    assert np.all(np.linalg.norm(p2 - p0, axis=1) > 0.1)


def test_every_ground_class_appears_with_varied_appearance():
    """Over a few maps every class but sky shows up, and no class is a single colour."""
    classes = load_classes()
    pixels = {c: [] for c in range(len(classes))}
    for map_id in range(3):
        with World(WorldConfig(seed=4, map_id=map_id, drones=3, map_size_m=240.0, image_width=96,
                               image_height=96, ground_texel_m=0.5, shadow_map_size=512)) as world:
            for _ in range(4):
                for v in world.step().views:
                    for c in np.unique(v.labels):
                        pixels[int(c)].append(v.rgb[v.labels == c])
    for name in ('bare_ground', 'grass', 'road', 'building', 'tree', 'car'):
        c = classes.index(name)
        assert pixels[c], f'{name} never seen'
        rgb = np.concatenate(pixels[c]).astype(float)
        assert rgb.std(axis=0).mean() > 6, f'{name} looks flat'


def test_same_seed_gives_bitwise_identical_snapshots_and_other_seeds_differ():
    a = _run(WorldConfig(seed=7, drones=3, **SMALL), 3)
    b = _run(WorldConfig(seed=7, drones=3, **SMALL), 3)
    c = _run(WorldConfig(seed=8, drones=3, **SMALL), 3)
    d = _run(WorldConfig(seed=7, map_id=1, drones=3, **SMALL), 3)
    assert a == b
    assert not set(a) & set(c) and not set(a) & set(d)


def test_several_worlds_in_one_process_do_not_interfere():
    cfg_a = WorldConfig(seed=1, drones=2, **SMALL)
    cfg_b = WorldConfig(seed=2, drones=3, trajectory='explore', **SMALL)
    alone_a, alone_b = _run(cfg_a, 3), _run(cfg_b, 3)
    with World(cfg_a) as wa, World(cfg_b) as wb:
        mixed_a, mixed_b = [], []
        for _ in range(3):
            mixed_b.append(_digest(wb.step()))
            mixed_a.append(_digest(wa.step()))
    assert mixed_a == alone_a and mixed_b == alone_b


def test_reset_switches_maps_and_restarts_the_flight():
    cfg = WorldConfig(seed=5, drones=2, **SMALL)
    with World(cfg) as world:
        first = _digest(world.step())
        world.reset(map_id=3)
        other = world.step()
        assert other.map_id == 3 and other.index == 0 and _digest(other) != first
        world.reset(map_id=0)
        assert _digest(world.step()) == first
        world.step()
        world.reset()                      # same map: the flight restarts, the map is kept
        assert _digest(world.step()) == first


def test_world_works_in_a_forked_child():
    """A World made before fork() keeps working in the child (a new GL context there), and the child can
    make new Worlds: the ROS sim bridge runs its World in its own process."""
    cfg = WorldConfig(seed=1, drones=2, **SMALL)
    world = World(cfg)
    world.step()                       # the parent's GL context exists before the fork
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:                       # child: never return into pytest
        try:
            os.close(read_fd)
            inherited = _digest(world.step())
            fresh = _run(WorldConfig(seed=2, drones=2, **SMALL), 1)[0]
            os.write(write_fd, f'{inherited} {fresh}'.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], 120)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            pytest.fail('the forked child did not finish rendering within 120 s')
        reply = os.read(read_fd, 1000).decode().split()
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    assert reply == [_digest(world.step()), _run(WorldConfig(seed=2, drones=2, **SMALL), 1)[0]]
    world.close()


@pytest.mark.parametrize('trajectory', ['waypoint', 'explore'])
def test_trajectories_stay_in_the_flight_region_at_altitude(trajectory):
    from collab_perception.world.trajectories import flight_bounds
    cfg = WorldConfig(seed=9, drones=5, trajectory=trajectory, **SMALL)
    with World(cfg) as world:
        x0, x1, y0, y1 = flight_bounds(world.landscape)
        yaws = []
        for _ in range(120):
            poses = world.flight.poses()
            for p in poses:
                assert x0 - 1e-6 <= p.position[0] <= x1 + 1e-6 and y0 - 1e-6 <= p.position[1] <= y1 + 1e-6
                above = p.position[2] - world.landscape.ground_height(p.position[0], p.position[1])
                assert cfg.altitude_m[0] - 1e-6 <= above <= cfg.altitude_m[1] + 1e-6
            yaws.append([p.yaw for p in poses])
            world.flight.step(cfg.dt_s)
    rates = np.abs(np.diff(np.unwrap(np.array(yaws), axis=0), axis=0)) / cfg.dt_s
    assert np.degrees(rates.max()) < 60.0           # smooth
    mean_rate = np.sort(rates.mean(axis=0))
    assert np.all(np.diff(mean_rate) > 1e-6)        # each drone yaws at its own rate
