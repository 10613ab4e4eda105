"""One node plan: launch/swarm.launch.py and the embedded launcher start the same nodes.

launch_ros cannot be installed on these machines, so this test gives the launch file minimal stand-ins for
the `launch` / `launch_ros` classes it uses; they only record their arguments. The launch file's own code
(reading the config, building the plan, writing params files, grouping per drone) runs for real.
"""
import importlib.util
import os
import re
import sys
import types

import pytest
import yaml

from collab_perception.config import PACKAGE_ROOT, load_swarm_config
from collab_perception.launch.embedded import EmbeddedLauncher
from collab_perception.launch.plan import NODE_EXECUTABLES, build_node_plan, build_process_plan

LAUNCH_FILE = os.path.join(PACKAGE_ROOT, 'launch', 'swarm.launch.py')


class Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration(Recorded):
    def perform(self, context):
        return context[self.args[0]]


def stub_launch_modules(monkeypatch):
    mods = {name: types.ModuleType(name) for name in (
        'launch', 'launch.actions', 'launch.event_handlers', 'launch.events', 'launch.substitutions',
        'launch_ros', 'launch_ros.actions')}
    for name in ('DeclareLaunchArgument', 'EmitEvent', 'GroupAction', 'OpaqueFunction', 'RegisterEventHandler'):
        setattr(mods['launch.actions'], name, type(name, (Recorded,), {}))
    mods['launch'].LaunchDescription = type('LaunchDescription', (Recorded,), {})
    mods['launch.event_handlers'].OnProcessExit = type('OnProcessExit', (Recorded,), {})
    mods['launch.events'].Shutdown = type('Shutdown', (Recorded,), {})
    mods['launch.substitutions'].LaunchConfiguration = LaunchConfiguration
    mods['launch_ros.actions'].Node = type('Node', (Recorded,), {})
    mods['launch_ros.actions'].PushRosNamespace = type('PushRosNamespace', (Recorded,), {})
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return mods


def nodes_from_launch_file(monkeypatch, context):
    mods = stub_launch_modules(monkeypatch)
    spec = importlib.util.spec_from_file_location('swarm_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    entities = description.args[0]
    declared = {e.args[0]: e.kwargs['default_value'] for e in entities
                if type(e).__name__ == 'DeclareLaunchArgument'}
    opaque = [e for e in entities if type(e).__name__ == 'OpaqueFunction'][0]
    actions = opaque.kwargs['function']({**declared, **context})
    nodes, handlers = {}, 0
    for group in actions:
        assert type(group).__name__ == 'GroupAction'
        members = group.args[0]
        namespace = members[0].args[0]
        assert type(members[0]).__name__ == 'PushRosNamespace'
        for action in members[1:]:
            if isinstance(action, mods['launch_ros.actions'].Node):
                kw = action.kwargs
                with open(kw['parameters'][0]) as f:
                    params = yaml.safe_load(f)
                for fqn, body in params.items():
                    assert fqn.startswith(namespace + '/')
                    if kw['name']:
                        assert fqn == f'{namespace}/{kw["name"]}'
                    nodes[fqn] = (kw['executable'], body['ros__parameters'], tuple(kw['arguments']))
            else:
                handlers += 1
    return nodes, handlers


def nodes_from_embedded(cfg, run_dir):
    launcher = EmbeddedLauncher(build_process_plan(cfg, run_dir), run_dir, env={})
    nodes = {}
    for process, argv in launcher.commands():
        ros = argv[argv.index('--ros-args'):]
        namespace = ros[ros.index('-r') + 1].split(':=')[1]
        with open(ros[ros.index('--params-file') + 1]) as f:
            params = yaml.safe_load(f)
        names = [a.split(':=')[1] for a in ros if a.startswith('__node:=')]
        executable = os.path.basename(argv[0]) if argv[1:2] != ['-m'] else argv[2].rsplit('.', 1)[1]
        for fqn, body in params.items():
            assert fqn.startswith(namespace + '/')
            if names:
                assert fqn == f'{namespace}/{names[0]}'
            arguments = tuple(argv[1:argv.index('--ros-args')]) if argv[1:2] != ['-m'] else tuple(
                argv[3:argv.index('--ros-args')])
            nodes[fqn] = (process.executable, body['ros__parameters'], arguments)
            assert executable in (process.executable, NODE_EXECUTABLES[process.executable].rsplit('.', 1)[1])
    return nodes


@pytest.mark.parametrize('layout', ['per_node', 'per_drone'])
def test_launch_file_and_embedded_launcher_start_the_same_nodes(monkeypatch, tmp_path, layout):
    config = os.path.join(PACKAGE_ROOT, 'config', 'swarm.yaml')
    run_dir = str(tmp_path)
    launched, handlers = nodes_from_launch_file(
        monkeypatch, {'config': config, 'frames': '12', 'layout': layout, 'run_dir': run_dir})
    cfg = load_swarm_config(config, [('swarm.frames', 12), ('swarm.process_layout', layout)])
    embedded = nodes_from_embedded(cfg, run_dir)
    assert launched == embedded
    plan = build_node_plan(cfg, run_dir)
    assert set(launched) == {n.fqn for n in plan}
    assert handlers == len(build_process_plan(cfg, run_dir))   # every process ends the launch on exit
    assert len(plan) == 3 + 3 * len(cfg.drones)   # source, monitor, evaluator + 3 per drone


def test_plan_gives_each_drone_its_namespace_and_the_swarm_its_drone_list():
    cfg = load_swarm_config()
    plan = build_node_plan(cfg)
    for node in plan:
        assert node.parameters['drone_names'] == cfg.names
        if node.drone:
            assert node.namespace == f'/{node.drone}' and node.parameters['drone_name'] == node.drone
            assert node.parameters['drone_id'] == cfg.drone(node.drone).id
    processes = build_process_plan(cfg)
    assert [p.ends_swarm for p in processes].count(True) == (1 if cfg.swarm['frames'] else 0)


def test_cmake_installs_a_wrapper_for_every_planned_executable():
    cmake = open(os.path.join(PACKAGE_ROOT, 'CMakeLists.txt')).read()
    listed = dict(re.findall(r'"(\w+):(\w+)"', cmake))
    assert listed == {exe: module.rsplit('.', 1)[1] for exe, module in NODE_EXECUTABLES.items()}


def test_installed_wrappers_run_the_package_code():
    from ament_index_python.packages import get_package_prefix
    lib = os.path.join(get_package_prefix('collab_perception'), 'lib', 'collab_perception')
    for exe, module in NODE_EXECUTABLES.items():
        path = os.path.join(lib, exe)
        assert os.access(path, os.X_OK), path
        text = open(path).read()
        assert text.startswith('#!/') and f'from {module} import main' in text


STUCK_CHILD = '''
import faulthandler, signal, sys, time
faulthandler.register(signal.SIGUSR1, all_threads=True)
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
def hung_in_shutdown():
    print('ready', flush=True)
    while True:
        time.sleep(0.05)
hung_in_shutdown()
'''


def test_a_child_that_will_not_stop_is_killed_with_its_stack_in_the_output(tmp_path):
    import io
    from rostools import script_launcher, wait_until_children_print
    out = io.StringIO()
    launcher = script_launcher({'drone9/perception': STUCK_CHILD}, tmp_path, out=out, grace_s=0.3,
                               term_grace_s=0.3, line_filter=lambda label, line: False)  # as --quiet
    launcher.start()
    wait_until_children_print(launcher, 'ready', timeout=20)
    launcher.stop()
    text = out.getvalue()
    assert 'sending SIGTERM: drone9/perception' in text and 'killing: drone9/perception' in text
    # the filter hides the child's ordinary output but not the stack dump that says where it hung
    assert '[drone9/perception] ready' not in text
    assert 'in hung_in_shutdown' in text, text
    assert launcher.children[0].returncode == -9
