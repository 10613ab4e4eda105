"""The AirSim bridge against a local AirSim-protocol peer backed by the embedded world.

The real `airsim` client package talks msgpack-rpc over TCP (127.0.0.1) to world/airsim_peer.py; the
frames it gets back, converted by world/airsim_adapter.py, must equal the world's own (RGB, depth, labels,
camera pose) and the bridge node must publish them on the ROS topics with one stamp per snapshot.
"""
import subprocess

import numpy as np
import pytest
import yaml

from collab_perception.classes import load_classes
from collab_perception.world import World, WorldConfig
from collab_perception.world.airsim_adapter import (AirSimConfig, AirSimSource, AirSimVehicle, conventions,
                                                    load_airsim_config, quat_to_matrix)
from collab_perception.world.airsim_peer import AirSimPeer, EmbeddedAirSimScene
from collab_perception.config import ConfigError, resource_path

DRONES = ['drone1', 'drone2']
WORLD = dict(seed=3, drones=2, image_width=48, image_height=40, shadow_map_size=512)


def airsim_config(port=41451):
    table = load_airsim_config(resource_path('config', 'airsim.yaml'), load_classes().names).segmentation
    return AirSimConfig(client='airsim', port=port, timeout_s=5.0, segmentation=table,
                        vehicles=[AirSimVehicle(f'Drone{i + 1}', 'front_center', d, WorldConfig(**WORLD).fov_deg)
                                  for i, d in enumerate(DRONES)])


@pytest.fixture
def peer():
    world = World(WorldConfig(**WORLD))
    scene = EmbeddedAirSimScene(world, airsim_config(), DRONES)
    with AirSimPeer(scene) as p:
        yield p
    world.close()


def same_rotation(q1, q2):
    return np.allclose(quat_to_matrix(q1), quat_to_matrix(q2), atol=1e-6)


def test_frame_conventions_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        assert same_rotation(conventions.optical_in_enu_from_frd_in_ned(conventions.frd_in_ned_from_optical_in_enu(q)), q)
        assert same_rotation(conventions.flu_in_enu_from_frd_in_ned(conventions.frd_in_ned_from_flu_in_enu(q)), q)
        p = rng.normal(size=3)
        assert np.allclose(conventions.position_enu_from_ned(conventions.position_ned_from_enu(p)), p)
    # an AirSim camera with identity orientation looks north (ENU +y), right is east, down is down
    r = quat_to_matrix(conventions.optical_in_enu_from_frd_in_ned([1, 0, 0, 0]))
    assert np.allclose(r[:, 2], [0, 1, 0]) and np.allclose(r[:, 0], [1, 0, 0]) and np.allclose(r[:, 1], [0, 0, -1])
    assert np.allclose(conventions.position_enu_from_ned([10, 20, -30]), [20, 10, 30])


def test_real_client_gets_the_world_frames(peer):
    source = AirSimSource(airsim_config(peer.port))
    reference = World(WorldConfig(**WORLD))
    try:
        for _ in range(3):
            frames = source.snapshot()
            snap = reference.step()
            for frame, view in zip(frames, snap.views):
                assert np.array_equal(frame.rgb, view.rgb)
                assert np.array_equal(frame.labels, view.labels)
                assert np.allclose(frame.depth, view.depth, rtol=1e-6)
                assert np.allclose(frame.position, view.position, atol=1e-6)
                assert same_rotation(frame.orientation_xyzw, view.orientation_xyzw)
                assert np.allclose(frame.K[:2, :2], view.K[:2, :2], rtol=1e-9)
                # the body is level and heads where the camera looks
                body = quat_to_matrix(frame.vehicle_orientation_xyzw)
                assert abs(body[2, 2] - 1.0) < 1e-9 and np.allclose(frame.vehicle_position, view.position)
    finally:
        reference.close()
    assert peer.calls['simGetImages'] == 6 and peer.calls['simGetVehiclePose'] == 6
    assert peer.calls['ping'] == 1 and peer.calls['listVehicles'] == 1
    assert peer.scene.snapshots == 3   # one world step per bridge tick, shared by every vehicle


def test_unknown_vehicle_and_unsupported_calls_are_clear_errors(peer):
    import airsim
    client = airsim.MultirotorClient(port=peer.port, timeout_value=5)
    assert client.listVehicles() == ['Drone1', 'Drone2']
    with pytest.raises(Exception, match='unknown vehicle'):
        client.simGetVehiclePose(vehicle_name='Drone9')
    with pytest.raises(Exception, match='simGetCollisionInfo is not supported'):
        client.simGetCollisionInfo(vehicle_name='Drone1')
    cfg = airsim_config(peer.port)
    cfg.vehicles[1].name = 'Ghost'
    with pytest.raises(ConfigError, match='not in the AirSim world: Ghost'):
        AirSimSource(cfg)


def test_peer_binds_the_loopback_only():
    with pytest.raises(ValueError, match='loopback'):
        AirSimPeer(None, host='0.0.0.0')


def test_airsim_config_errors_name_the_field(tmp_path):
    bad = tmp_path / 'airsim.yaml'
    data = yaml.safe_load(open(resource_path('config', 'airsim.yaml')))
    data['segmentation'][0]['class'] = 'lava'
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r'segmentation\[0\]\.class: unknown class'):
        load_airsim_config(str(bad), load_classes().names)
    data = yaml.safe_load(open(resource_path('config', 'airsim.yaml')))
    data['client'] = 'unreal'
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match='client'):
        load_airsim_config(str(bad), load_classes().names)


def test_the_shipped_airsim_config_feeds_every_drone_of_the_shipped_swarm():
    """The README's AirSim step: config/swarm.yaml with swarm.source.type: airsim plans as shipped."""
    from collab_perception.config import load_swarm_config
    from collab_perception.launch.plan import build_node_plan
    cfg = load_swarm_config(overrides=[('swarm.source.type', 'airsim')])
    source = build_node_plan(cfg)[0]
    assert source.executable == 'airsim_bridge'
    vehicles = load_airsim_config(source.parameters['airsim_config'], load_classes().names).vehicles
    assert sorted(v.drone for v in vehicles) == sorted(cfg.names)
    with pytest.raises(ConfigError, match='no AirSim vehicle feeds drone'):
        build_node_plan(load_swarm_config(overrides=[('swarm.source.type', 'airsim'), (
            'drones', [{'name': f'drone{i}', 'id': i} for i in range(1, 7)])]))


@pytest.mark.ros
def test_bridge_node_publishes_every_camera_topic_with_one_stamp(peer, ros, tmp_path):
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CameraInfo, Image
    from collab_perception.launch.embedded import executable_command
    from collab_perception.launch.plan import ProcessSpec, NodeSpec, write_params_file
    from rostools import spin_until, stop_process

    cfg = airsim_config(peer.port)
    path = tmp_path / 'airsim.yaml'
    path.write_text(yaml.safe_dump({
        'client': 'airsim', 'port': peer.port, 'timeout_s': 5.0,
        'vehicles': [{'name': v.name, 'camera': v.camera, 'drone': v.drone, 'fov_deg': v.fov_deg} for v in cfg.vehicles],
        'segmentation': [{'color': list(c), 'class': load_classes().names[k]} for c, k in cfg.segmentation.items()]}))
    spec = NodeSpec('airsim_bridge', 'airsim_bridge', '/swarm', {
        'drone_names': DRONES, 'drone_ids': [1, 2], 'airsim_config': str(path), 'rate_hz': 5.0, 'frames': 3,
        'startup_timeout_s': 20.0, 'settle_s': 0.5, 'drain_s': 0.5, 'degraded_drones': ['drone2']})
    process = ProcessSpec('swarm/airsim_bridge', 'airsim_bridge', '/swarm', [spec], ends_swarm=True)
    node = ros.create_node('test_airsim_listener')
    got = {}

    def keep(drone, kind):
        return lambda m: got.setdefault((drone, kind), []).append(m)

    for d in DRONES:
        for kind, msg_type, topic in (('image', Image, 'camera/image_raw'), ('depth', Image, 'camera/depth'),
                                      ('labels', Image, 'camera/labels'), ('info', CameraInfo, 'camera/camera_info'),
                                      ('pose', PoseStamped, 'pose')):
            node.create_subscription(msg_type, f'/{d}/{topic}', keep(d, kind), 10)
    proc = subprocess.Popen(executable_command('airsim_bridge') + process.ros_args(write_params_file(process, str(tmp_path))),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert spin_until(node, lambda: proc.poll() is not None, timeout=60), 'bridge did not finish its 3 frames'
        spin_until(node, lambda: all(len(got.get((d, 'pose'), [])) == 3 for d in DRONES), timeout=5)
    finally:
        code, output = stop_process(proc)
    assert code == 0, output
    reference = World(WorldConfig(**WORLD))
    try:
        for k in range(3):
            snap = reference.step()
            stamps = set()
            for i, d in enumerate(DRONES):
                image, depth, labels = got[(d, 'image')][k], got[(d, 'depth')][k], got[(d, 'labels')][k]
                info, pose = got[(d, 'info')][k], got[(d, 'pose')][k]
                stamps |= {(m.header.stamp.sec, m.header.stamp.nanosec) for m in (image, depth, labels, info, pose)}
                assert (image.encoding, depth.encoding, labels.encoding) == ('rgb8', '32FC1', 'mono8')
                rgb = np.frombuffer(bytes(image.data), np.uint8).reshape(40, 48, 3)
                view = snap.views[i]
                if d == 'drone2':   # degraded: blurred and noisy, not the world's image
                    assert not np.array_equal(rgb, view.rgb)
                else:
                    assert np.array_equal(rgb, view.rgb)
                assert np.array_equal(np.frombuffer(bytes(labels.data), np.uint8).reshape(40, 48), view.labels)
                assert np.allclose(np.frombuffer(bytes(depth.data), np.float32).reshape(40, 48), view.depth)
                assert pose.header.frame_id == 'world' and image.header.frame_id == f'{d}/camera_optical_frame'
                p = pose.pose.position
                assert np.allclose([p.x, p.y, p.z], view.position, atol=1e-6)
                o = pose.pose.orientation
                assert same_rotation([o.x, o.y, o.z, o.w], view.orientation_xyzw)
                assert np.allclose(np.array(info.k).reshape(3, 3)[:2, :2], view.K[:2, :2])
            assert len(stamps) == 1, stamps   # every topic of every drone: the snapshot's one stamp
    finally:
        reference.close()


@pytest.mark.ros
@pytest.mark.slow
def test_the_readme_airsim_path_flies_the_shipped_swarm_against_the_peer(tmp_path):
    """The README's AirSim step as a user takes it: the shipped config/swarm.yaml with swarm.source.type:
    airsim and the shipped config/airsim.yaml (its vehicles, 127.0.0.1:41451), the real `airsim` client in
    the bridge, answered by the AirSim-protocol peer over the embedded world: every drone's segmentation
    comes out, and drone1 is helped on its frames."""
    import json
    from collab_perception.config import default_config_path, load_swarm_config
    from test_swarm import Swarm

    cfg = load_swarm_config(overrides=[('swarm.source.type', 'airsim')])
    shipped = load_airsim_config(resource_path(cfg.swarm['source']['airsim_config']), load_classes().names)
    world = World(WorldConfig.from_mapping({**cfg.swarm['source']['world'], 'drones': len(cfg.drones)}))
    try:
        with AirSimPeer(EmbeddedAirSimScene(world, shipped, cfg.names), port=shipped.port, host=shipped.host):
            swarm = Swarm('--run-dir', str(tmp_path / 'run'), '--frames', '4', '--quiet', '--timeout', '170',
                          '--set', 'swarm.source.type=airsim', '--set', 'swarm.rate_hz=1',
                          # the path is under test, not latency: a 2-core CI box answers the first frames
                          # after the shipped 120 ms reply timeout
                          '--set', 'drone_defaults.reply_timeout_ms=600', '--set', 'drone_defaults.deadline_ms=900',
                          config=default_config_path())
            code = swarm.wait(180)
    finally:
        world.close()
    assert code == 0, swarm.output[-3000:]
    with open(tmp_path / 'run' / 'summary.json') as f:
        summary = json.load(f)
    drones = summary['per_drone']
    assert sorted(drones) == sorted(cfg.names), drones
    assert all(d['segmentations'] == 4 for d in drones.values()), drones
    assert drones['drone1']['frames_with_help'] >= 3, drones['drone1']
