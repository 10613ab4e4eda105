"""ros2 launch collab_perception swarm.launch.py [config:=PATH] [frames:=N] [layout:=per_node|per_drone]
                                               [run_dir:=DIR]

Starts every node of config/swarm.yaml: the swarm-wide camera source and monitor under /swarm, and one
namespaced group per drone (perception, matcher, fusion, or one drone_container). The node plan comes
from collab_perception.launch.plan, the same function the embedded launcher (`collab-perception swarm`,
`make demo`) uses, so the two cannot drift apart (test/test_launch_plan.py checks it).

Like the embedded launcher: when the camera source finishes its `frames` the whole launch shuts down, and
any other node that exits shuts the launch down too (a swarm with a dead drone node is not left running),
unless `swarm.on_node_exit: continue` (fault-injection runs).

Network: this file uses the shell's ROS environment as it is (on real drones that is your DDS setup).
For a single machine, source scripts/env.sh first: localhost-only discovery and the Fast DDS profile of
config/fastdds_localhost.xml.
"""
import os
import time

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, GroupAction, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node, PushRosNamespace

from collab_perception.config import default_config_path, load_swarm_config
from collab_perception.launch.plan import PACKAGE, build_process_plan, write_params_file


def _default_run_dir() -> str:
    base = os.environ.get('ROS_HOME') or os.path.expanduser('~/.ros')
    return os.path.join(base, 'collab_perception', time.strftime('launch-%Y%m%d-%H%M%S'))


def launch_setup(context, *args, **kwargs):
    config_path = LaunchConfiguration('config').perform(context)
    overrides = []
    frames = LaunchConfiguration('frames').perform(context)
    if frames != '':
        overrides.append(('swarm.frames', int(frames)))
    layout = LaunchConfiguration('layout').perform(context)
    if layout != '':
        overrides.append(('swarm.process_layout', layout))
    run_dir = LaunchConfiguration('run_dir').perform(context) or _default_run_dir()

    cfg = load_swarm_config(config_path, overrides)
    if cfg.swarm['network']['mode'] != 'loopback':
        raise RuntimeError('swarm.network.mode namespaces emulates separate hosts on one machine and is run by the '
                           'embedded launcher (collab-perception swarm --set swarm.network.mode=namespaces); '
                           'with ros2 launch, each real host brings its own network (docs/DEPLOY.md, '
                           '"Several hosts")')
    params_dir = os.path.join(run_dir, 'params')
    swarm_actions, drone_groups = [], {}
    for process in build_process_plan(cfg, run_dir):
        node = Node(
            package=PACKAGE,
            executable=process.executable,
            name=process.node_name,
            parameters=[write_params_file(process, params_dir)],
            remappings=process.remappings(),
            arguments=process.arguments(),
            output='screen',
            emulate_tty=True,
            respawn=cfg.swarm['on_node_exit'] == 'respawn' and not process.ends_swarm,
        )
        actions = [node]
        if process.ends_swarm or cfg.swarm['on_node_exit'] == 'shutdown':
            reason = (f'{process.label} finished' if process.ends_swarm
                      else f'{process.label} exited; stopping the swarm')
            actions.append(RegisterEventHandler(OnProcessExit(target_action=node,
                                                              on_exit=[EmitEvent(event=Shutdown(reason=reason))])))
        drone = process.nodes[0].drone
        if drone:
            drone_groups.setdefault(process.namespace, []).extend(actions)
        else:
            swarm_actions.append(GroupAction([PushRosNamespace(process.namespace), *actions]))
    groups = [GroupAction([PushRosNamespace(ns), *actions]) for ns, actions in drone_groups.items()]
    return swarm_actions + groups


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('config', default_value=default_config_path(),
                              description='swarm configuration (drones, roles, methods, models, QoS)'),
        DeclareLaunchArgument('frames', default_value='',
                              description='stop after N snapshots (default: the config\'s swarm.frames)'),
        DeclareLaunchArgument('layout', default_value='',
                              description='per_node or per_drone (default: the config\'s swarm.process_layout)'),
        DeclareLaunchArgument('run_dir', default_value='',
                              description='params files and the monitor summary (default: $ROS_HOME/collab_perception/launch-<time>)'),
        OpaqueFunction(function=launch_setup),
    ])
