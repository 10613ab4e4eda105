"""The embedded-world bridge node: every camera topic of every drone, one stamp per snapshot, the world's
content; and its settings validated at start-up through the swarm config."""
import subprocess

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from collab_perception.config import ConfigError, build_config
from collab_perception.launch.embedded import executable_command
from collab_perception.launch.plan import ProcessSpec, build_node_plan, write_params_file
from collab_perception.world import World, WorldConfig

from rostools import spin_until, stop_process

WORLD = {'seed': 5, 'image_width': 40, 'image_height': 32, 'shadow_map_size': 512}


def swarm_config(**source):
    return build_config({'swarm': {'frames': 2, 'settle_s': 0.2, 'drain_s': 0.3, 'source': {'world': WORLD, **source}},
                         'drone_defaults': {'method': 'placeholder'},
                         'drones': [{'name': 'a', 'id': 1, 'role': 'requester'}, {'name': 'b', 'id': 2}]})


@pytest.mark.ros
def test_sim_bridge_publishes_the_world(ros, tmp_path):
    spec = build_node_plan(swarm_config())[0]
    assert spec.executable == 'sim_bridge'
    spec.parameters['expected_nodes'] = ['']   # only this test's listener: do not wait for a swarm
    process = ProcessSpec('swarm/sim_bridge', 'sim_bridge', spec.namespace, [spec], ends_swarm=True)
    node = ros.create_node('test_sim_bridge_listener')
    got = {}
    for d in ('a', 'b'):
        for kind, msg_type, topic in (('image', Image, 'camera/image_raw'), ('depth', Image, 'camera/depth'),
                                      ('labels', Image, 'camera/labels'), ('info', CameraInfo, 'camera/camera_info'),
                                      ('pose', PoseStamped, 'pose')):
            node.create_subscription(msg_type, f'/{d}/{topic}', lambda m, k=(d, kind): got.setdefault(k, []).append(m), 10)
    frames = []
    node.create_subscription(Header, '/swarm/frame', frames.append, 10)
    proc = subprocess.Popen(executable_command('sim_bridge') + process.ros_args(write_params_file(process, str(tmp_path))),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert spin_until(node, lambda: proc.poll() is not None, timeout=60)
        spin_until(node, lambda: len(frames) == 2, timeout=5)
    finally:
        code, output = stop_process(proc)
    assert code == 0, output
    assert len(frames) == 2
    with World(WorldConfig(**WORLD, drones=2)) as reference:
        for k in range(2):
            snap = reference.step()
            for i, d in enumerate(('a', 'b')):
                msgs = [got[(d, kind)][k] for kind in ('image', 'depth', 'labels', 'info', 'pose')]
                assert {(m.header.stamp.sec, m.header.stamp.nanosec) for m in msgs} == {
                    (frames[k].stamp.sec, frames[k].stamp.nanosec)}
                labels = np.frombuffer(bytes(msgs[2].data), np.uint8).reshape(32, 40)
                assert np.array_equal(labels, snap.views[i].labels)
                rgb = np.frombuffer(bytes(msgs[0].data), np.uint8).reshape(32, 40, 3)
                # drone a is not degraded in this config: its image is the world's
                assert np.array_equal(rgb, snap.views[i].rgb)
                p = msgs[4].pose.position
                assert np.allclose([p.x, p.y, p.z], snap.views[i].position)


@pytest.mark.parametrize('source,path', [
    ({'world': {**WORLD, 'fov_deg': 500.0}}, 'swarm.source.world.fov_deg'),
    ({'world': {'colour': 'red'}}, 'swarm.source.world.colour'),
    ({'degrade': {'kernel_max': 0}}, 'swarm.source.degrade.kernel_max'),
    ({'type': 'airsim', 'airsim_config': '/nonexistent/airsim.yaml'}, '<file>'),
])
def test_bad_source_settings_fail_at_start_naming_the_field(source, path):
    with pytest.raises(ConfigError) as info:
        build_node_plan(swarm_config(**source))
    assert info.value.path == path, str(info.value)


def test_degraded_drones_reach_the_bridge():
    cfg = build_config({'drone_defaults': {'method': 'placeholder'},
                        'drones': [{'name': 'a', 'id': 1, 'degraded': True}, {'name': 'b', 'id': 2}]})
    assert build_node_plan(cfg)[0].parameters['degraded_drones'] == ['a']
