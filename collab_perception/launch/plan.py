"""The node plan: config/swarm.yaml -> the nodes and processes of a swarm.

This is the single source of truth for what runs. launch/swarm.launch.py turns it into launch_ros
actions (one namespaced group per drone); the embedded launcher (`collab-perception swarm`) turns the
very same plan into child processes on machines without launch_ros. A test checks that both give the
same node set. No rclpy and no launch imports here.

Process layouts (config `swarm.process_layout`):
  per_node   one process per node (the usual ros2 launch layout)
  per_drone  one process per drone running its perception, matcher and fusion nodes in one executor
             (the `drone_container` executable, like a ROS 2 component container)
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from ..classes import load_classes
from ..config import ConfigError, SwarmConfig, resource_path
from ..world.airsim_adapter import load_airsim_config
from ..world.config import WorldConfig
from ..world.degrade import DegradeConfig
from ..runtime.methods import method_names, protocol_of
from ..runtime.protocols import protocol_class
from ..runtime import topics

PACKAGE = 'collab_perception'

# executable -> module with main(); CMakeLists.txt installs one wrapper per entry (a test checks it).
NODE_EXECUTABLES = {
    'sim_bridge': 'collab_perception.nodes.sim_bridge_node',
    'airsim_bridge': 'collab_perception.nodes.airsim_bridge_node',
    'replay_bridge': 'collab_perception.nodes.replay_bridge_node',
    'bag_bridge': 'collab_perception.nodes.bag_bridge_node',
    'nav_bridge': 'collab_perception.nodes.nav_bridge_node',
    'recorder': 'collab_perception.nodes.recorder_node',
    'link': 'collab_perception.nodes.link_node',
    'perception': 'collab_perception.nodes.perception_node',
    'matcher': 'collab_perception.nodes.matcher_node',
    'fusion': 'collab_perception.nodes.fusion_node',
    'policy': 'collab_perception.nodes.policy_node',
    'monitor': 'collab_perception.nodes.monitor_node',
    'evaluator': 'collab_perception.nodes.evaluator_node',
    'drone_container': 'collab_perception.nodes.drone_container',
}
SWARM_NAMESPACE = '/swarm'


@dataclass
class NodeSpec:
    executable: str
    name: str
    namespace: str
    parameters: dict[str, Any]
    remappings: list[tuple[str, str]] = field(default_factory=list)
    drone: str = ''                     # '' for swarm-wide nodes
    package: str = PACKAGE

    @property
    def fqn(self) -> str:
        return f'{self.namespace.rstrip("/")}/{self.name}'

    @property
    def module(self) -> str:
        return NODE_EXECUTABLES[self.executable]


@dataclass
class ProcessSpec:
    """One OS process: a single node, or a drone's nodes in a drone_container."""

    label: str                          # '[label]' prefixes its output, e.g. 'drone1/perception'
    executable: str
    namespace: str
    nodes: list[NodeSpec]
    ends_swarm: bool = False            # its normal exit (code 0) ends the run (a source with frames > 0)

    @property
    def host(self) -> str:
        """The host it runs on when drones are separate hosts (swarm.network.mode namespaces): its drone, or
        the ground station, 'swarm', for the swarm-wide nodes."""
        return self.label.split('/', 1)[0]

    @property
    def node_name(self) -> Optional[str]:
        """The node name to remap (__node:=) for single-node processes; containers keep their names."""
        return self.nodes[0].name if self.executable != 'drone_container' else None

    def arguments(self) -> list[str]:
        """Arguments before --ros-args."""
        if self.executable == 'drone_container':
            return ['--nodes', ','.join(n.executable for n in self.nodes)]
        return []

    def params_document(self) -> dict:
        """The ROS parameter file content: one entry per fully qualified node name."""
        return {n.fqn: {'ros__parameters': n.parameters} for n in self.nodes}

    def remappings(self) -> list[tuple[str, str]]:
        """A container's remappings are prefixed with their node's name (rcl's `node:from:=to`), so that one
        node's remapped publisher does not take a sibling's subscription of the same topic along."""
        out: list[tuple[str, str]] = []
        for n in self.nodes:
            prefix = f'{n.name}:' if self.executable == 'drone_container' else ''
            out.extend((prefix + src, dst) for src, dst in n.remappings)
        return out

    def ros_args(self, params_file: str) -> list[str]:
        args = ['--ros-args', '-r', f'__ns:={self.namespace}']
        if self.node_name:
            args += ['-r', f'__node:={self.node_name}']
        args += ['--params-file', params_file]
        for src, dst in self.remappings():
            args += ['-r', f'{src}:={dst}']
        return args


def _qos_params(cfg: SwarmConfig, *names: str) -> dict[str, Any]:
    out = {}
    for name in names:
        for key, value in cfg.swarm['qos'][name].items():
            out[f'qos.{name}.{key}'] = value
    return out


def _swarm_params(cfg: SwarmConfig) -> dict[str, Any]:
    return {'drone_names': cfg.names, 'drone_ids': cfg.ids}


def _codec_params(cfg: SwarmConfig) -> dict[str, Any]:
    return {f'codec.{k}': v for k, v in cfg.swarm['codec'].items()}


def _ros_values(values: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def nav_source_params(cfg: SwarmConfig) -> dict[str, Any]:
    """The navigation bridge's parameters (swarm.source.nav), its NavConfig validated here so that a bad key
    fails at start-up naming it."""
    from ..data.nav import load_nav_config
    nav = cfg.swarm['source']['nav']
    try:
        world = load_nav_config(**nav['config'])
    except ConfigError as e:
        raise ConfigError(f'swarm.source.nav.config.{e.path}', str(e).split(': ', 1)[-1], cfg.source) from None
    except TypeError as e:
        raise ConfigError('swarm.source.nav.config', str(e), cfg.source) from None
    values = world.to_dict()
    return {**{f'nav.{k}': v for k, v in nav.items() if k != 'config'},
            **{f'nav_world.{k}': v for k, v in _ros_values(values).items()}}


def source_node(cfg: SwarmConfig, run_dir: Optional[str] = None) -> NodeSpec:
    """The camera bridge of `swarm.source`, its settings validated here so a bad one fails at start-up."""
    sw, src = cfg.swarm, cfg.swarm['source']
    try:
        degrade = DegradeConfig(**src['degrade'])
    except TypeError as e:
        raise ConfigError('swarm.source.degrade', f'{e}; valid keys: {", ".join(DegradeConfig.__dataclass_fields__)}',
                          cfg.source) from None
    except ConfigError as e:
        raise ConfigError(f'swarm.source.degrade.{e.path}', str(e).split(': ', 1)[-1], cfg.source) from None
    params = {
        **_swarm_params(cfg),
        'rate_hz': sw['rate_hz'],
        'frames': sw['frames'],
        'startup_timeout_s': sw['startup_timeout_s'],
        'settle_s': sw['settle_s'],
        'drain_s': sw['drain_s'],
        'degraded_drones': [d.name for d in cfg.drones if d.degraded] or [''],
        'obstructed_drones': [d.name for d in cfg.drones if d.obstructed] or [''],
        'degrade_seed': src['degrade_seed'],
        **{f'degrade.{k}': v for k, v in _ros_values(dataclasses.asdict(degrade)).items()},
        **_qos_params(cfg, 'sensor'),
    }
    if src['type'] == 'world':
        world = WorldConfig.from_mapping({**src['world'], 'drones': len(cfg.drones)}, cfg.source, 'swarm.source.world')
        params.update({f'world.{k}': v for k, v in _ros_values(dataclasses.asdict(world)).items()})
        return NodeSpec('sim_bridge', 'sim_bridge', SWARM_NAMESPACE, params)
    if src['type'] == 'nav':
        if any(d.degraded or d.obstructed for d in cfg.drones):
            i = next(i for i, d in enumerate(cfg.drones) if d.degraded or d.obstructed)
            raise ConfigError(f'drones[{i}]', 'the navigation bridge renders no degradation or obstruction',
                              cfg.source)
        params.update(nav_source_params(cfg))
        params['output_dir'] = os.path.join(run_dir, 'nav') if run_dir else ''
        return NodeSpec('nav_bridge', 'nav_bridge', SWARM_NAMESPACE, params)
    if src['type'] == 'replay':
        rep = src['replay']
        target = rep['target_drone'] or cfg.names[0]
        if target not in cfg.names:
            raise ConfigError('swarm.source.replay.target_drone', f'{target!r} is not a drone ({", ".join(cfg.names)})',
                              cfg.source)
        # replayed images already carry the dataset's degradation: never degrade them twice
        params.update({'replay.dataset': rep['dataset'], 'replay.split': rep['split'], 'replay.target_drone': target,
                       'degraded_drones': [''], 'obstructed_drones': ['']})
        return NodeSpec('replay_bridge', 'replay_bridge', SWARM_NAMESPACE, params)
    if src['type'] == 'bag':
        path = src['bag']['path']
        if not os.path.isfile(os.path.join(path, 'metadata.yaml')):
            raise ConfigError('swarm.source.bag.path', f'{path!r} is not a recorded bag (a directory with '
                              'metadata.yaml: collab-perception swarm --record)', cfg.source)
        # the recorded images carry their degradation already: never degrade them twice
        params.update({'bag.path': os.path.abspath(path), 'degraded_drones': [''], 'obstructed_drones': ['']})
        return NodeSpec('bag_bridge', 'bag_bridge', SWARM_NAMESPACE, params)
    if any(d.obstructed for d in cfg.drones):
        i = next(i for i, d in enumerate(cfg.drones) if d.obstructed)
        raise ConfigError(f'drones[{i}].obstructed', 'obstructions are rendered by the embedded world only '
                          '(swarm.source.type: world); in AirSim, place them in the scene', cfg.source)
    path = src['airsim_config']
    path = path if os.path.isabs(path) else resource_path(path)
    airsim = load_airsim_config(path, load_classes().names)
    unknown = sorted({v.drone for v in airsim.vehicles} - set(cfg.names))
    if unknown:
        raise ConfigError('vehicles', f'drone(s) {", ".join(unknown)} are not in the swarm ({", ".join(cfg.names)})', path)
    missing = sorted(set(cfg.names) - {v.drone for v in airsim.vehicles})
    if missing:
        raise ConfigError('vehicles', f'no AirSim vehicle feeds drone(s) {", ".join(missing)}', path)
    params['airsim_config'] = path
    return NodeSpec('airsim_bridge', 'airsim_bridge', SWARM_NAMESPACE, params)


def build_node_plan(cfg: SwarmConfig, run_dir: Optional[str] = None) -> list[NodeSpec]:
    """Every node of the swarm with its namespace and parameters, swarm-wide nodes first."""
    sw = cfg.swarm
    for i, d in enumerate(cfg.drones):
        if d.method not in method_names():
            raise ConfigError(f'drones[{i}].method', f'unknown method {d.method!r}; valid: {", ".join(method_names())}',
                              cfg.source)
    protocol = protocol_class(swarm_protocol(cfg))
    nodes: list[NodeSpec] = []
    nodes.append(source_node(cfg, run_dir))
    mon = sw['monitor']
    if mon['enabled']:
        out_dir = os.path.join(run_dir, 'monitor') if run_dir else ''
        nodes.append(NodeSpec(
            executable='monitor', name='monitor', namespace=SWARM_NAMESPACE,
            parameters={
                **_swarm_params(cfg),
                'period_s': mon['period_s'],
                'window_s': mon['window_s'],
                'frame_horizon_s': mon['frame_horizon_s'],
                'frame_topic': topics.FRAME,
                # one string (ROS parameter files cannot hold empty lists): 'topic:type,topic:type'
                'extra_topics': ','.join(f"{e['topic']}:{e['type']}" for e in mon['extra_topics']),
                'output_dir': out_dir,
                **_qos_params(cfg, 'comm'),
            }))
    if sw['evaluator']['enabled']:
        nodes.append(NodeSpec(
            executable='evaluator', name='evaluator', namespace=SWARM_NAMESPACE,
            parameters={
                **_swarm_params(cfg),
                'requesters': [d.name for d in cfg.drones if d.role != 'supporter'] or [''],
                'output_dir': os.path.join(run_dir, 'evaluator') if run_dir else '',
                **_qos_params(cfg, 'sensor', 'local'),
            }))
    if sw['record']:
        if not run_dir:
            raise ConfigError('swarm.record', 'recording needs a run directory (collab-perception swarm --record)',
                              cfg.source)
        nodes.append(NodeSpec('recorder', 'recorder', SWARM_NAMESPACE, {
            'output_dir': os.path.join(run_dir, 'bag'), 'record_topics': record_topics(cfg, protocol),
            **_qos_params(cfg, 'sensor', 'comm', 'local')}))
    for d in cfg.drones:
        common = {
            **_swarm_params(cfg),
            'drone_name': d.name,
            'drone_id': d.id,
            'method': d.method,
            **{f'model.{role}': path for role, path in sorted(d.models.items())},
            'providers': d.providers,
            'provider_options_json': json.dumps(d.provider_options, sort_keys=True),
            'onnx_threads': d.onnx_threads,
            'precision': d.precision,
        }
        nodes.append(NodeSpec('perception', 'perception', d.namespace, {
            **common, 'role': d.role, 'deadline_ms': d.deadline_ms,
            **_codec_params(cfg), **_qos_params(cfg, 'sensor', 'comm', 'local')}, drone=d.name))
        nodes.append(NodeSpec('matcher', 'matcher', d.namespace, {
            **common, 'cache_frames': d.cache_frames, 'deadline_ms': d.deadline_ms, 'patch_budget': d.patch_budget,
            'warp_on': d.warp_on,
            **_codec_params(cfg), **_qos_params(cfg, 'sensor', 'comm', 'local')}, drone=d.name))
        nodes.append(NodeSpec('fusion', 'fusion', d.namespace, {
            **common, 'deadline_ms': d.deadline_ms, 'reply_timeout_ms': d.reply_timeout_ms,
            'select': d.select, 'top_n': d.top_n, 'score_threshold': d.score_threshold,
            'cache_frames': d.cache_frames,
            **_codec_params(cfg), **_qos_params(cfg, 'comm', 'local')}, drone=d.name))
        if protocol.policy:
            nodes.append(NodeSpec('policy', 'policy', d.namespace, {
                **common, **_codec_params(cfg), **_qos_params(cfg, 'sensor', 'local')}, drone=d.name))
    graph = protocol.topology(cfg.names, mon['enabled'])
    if sw['link']['enabled']:
        graph = link_through_radio(cfg, nodes, graph)
    source = nodes[0]
    source.parameters['expected_nodes'] = [n.fqn for n in nodes if n is not source]
    source.parameters['expected_endpoints'] = [f'{topic}:{pubs}:{subs}' for topic, (pubs, subs) in graph.items()]
    return nodes


def link_through_radio(cfg: SwarmConfig, nodes: list[NodeSpec], graph: dict) -> dict:
    """Put the link node between every comm sender and its receivers: each drone node's publishers of comm
    topics (perception: the request; matcher and fusion: the other drones' addressed topics) are remapped to
    /radio/<topic>, where the link subscribes, and the link publishes <topic>. Returns the comm graph the
    camera source then waits for."""
    link = cfg.swarm['link']
    for n in nodes:
        if not n.drone:
            continue
        if n.executable == 'perception':
            sent = [topics.REQUEST]
        else:
            sent = [t for t in graph if t != topics.REQUEST and topics.topic_owner(t) != n.drone]
        n.remappings.extend((t, topics.RADIO_PREFIX + t) for t in sent)
    nodes.append(NodeSpec('link', 'link', SWARM_NAMESPACE, {
        'link.loss': link['loss'], 'link.delay_ms': link['delay_ms'], 'link.jitter_ms': link['jitter_ms'],
        'link.seed': link['seed'], 'link_topics': sorted(graph), **_qos_params(cfg, 'comm')}))
    out = {}
    for topic, (pubs, subs) in graph.items():
        out[topics.RADIO_PREFIX + topic] = (pubs, 1)
        out[topic] = (1, subs)
    return out


def record_topics(cfg: SwarmConfig, protocol) -> list[str]:
    """'topic:type:qos' of what a recorded flight holds: every drone's cameras (what a replay needs), its
    segmentation and fusion/info, the protocol's comm topics, the frame markers and the bandwidth stats."""
    per_drone = [(topics.IMAGE, 'sensor_msgs/msg/Image', 'sensor'), (topics.DEPTH, 'sensor_msgs/msg/Image', 'sensor'),
                 (topics.CAMERA_INFO, 'sensor_msgs/msg/CameraInfo', 'sensor'),
                 (topics.LABELS, 'sensor_msgs/msg/Image', 'sensor'), (topics.POSE, 'geometry_msgs/msg/PoseStamped', 'sensor'),
                 (topics.SEGMENTATION, 'sensor_msgs/msg/Image', 'local'),
                 (topics.FUSION_INFO, f'{PACKAGE}/msg/FusionInfo', 'local')]
    out = [f'/{d}/{t}:{msg}:{qos}' for d in cfg.names for t, msg, qos in per_drone]
    out += [f'{t}:{topics.COMM_MSG_TYPES[topics.topic_kind(t)]}:comm' for t in protocol.topology(cfg.names, False)]
    return out + [f'{topics.FRAME}:std_msgs/msg/Header:sensor', f'{topics.BANDWIDTH}:{PACKAGE}/msg/BandwidthStats:comm']


def swarm_protocol(cfg: SwarmConfig) -> str:
    """The protocol the swarm speaks (runtime/protocols). Every matcher answers every request with its own
    method, so one swarm speaks one protocol: methods of different protocols in one swarm are a config error."""
    kinds = [protocol_of(d.method) for d in cfg.drones]
    for i, kind in enumerate(kinds):
        if kind != kinds[0]:
            raise ConfigError(f'drones[{i}].method', f'{cfg.drones[i].method!r} speaks the {kind} protocol and '
                              f'{cfg.drones[0].method!r} (drones[0]) the {kinds[0]} one; a swarm uses one', cfg.source)
    return kinds[0]


def build_process_plan(cfg: SwarmConfig, run_dir: Optional[str] = None) -> list[ProcessSpec]:
    """Group the node plan into processes according to swarm.process_layout."""
    nodes = build_node_plan(cfg, run_dir)
    # the source's normal exit ends the run: after `frames`, or at the end of a replayed split or bag
    ends = cfg.swarm['frames'] > 0 or cfg.swarm['source']['type'] in ('replay', 'bag', 'nav')
    processes: list[ProcessSpec] = []
    for n in nodes:
        if n.drone:
            continue
        processes.append(ProcessSpec(f'swarm/{n.name}', n.executable, n.namespace, [n],
                                     ends_swarm=ends and n is nodes[0]))
    for d in cfg.drones:
        mine = [n for n in nodes if n.drone == d.name]
        if cfg.swarm['process_layout'] == 'per_drone':
            processes.append(ProcessSpec(f'{d.name}/container', 'drone_container', d.namespace, mine))
        else:
            processes.extend(ProcessSpec(f'{d.name}/{n.name}', n.executable, n.namespace, [n]) for n in mine)
    return processes


class _NoAliasDumper(yaml.SafeDumper):
    """rcl's parameter-file parser rejects YAML anchors/aliases, which PyYAML emits for shared lists."""

    def ignore_aliases(self, data):
        return True


def write_params_file(process: ProcessSpec, directory: str) -> str:
    """Write the process's ROS parameter file and return its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, process.label.replace('/', '__') + '.params.yaml')
    with open(path, 'w', encoding='utf-8') as f:
        yaml.dump(process.params_document(), f, Dumper=_NoAliasDumper, sort_keys=True)
    return path


# ---------------------------------------------------------------------------------------------- parameter docs
# Parameters declared from a config dataclass field by field (nodes/common.declare_dataclass); their defaults,
# ranges and help are the dataclass's (world/config.py, world/degrade.py, config/world.yaml).
DATACLASS_PREFIXES = {'world.': 'WorldConfig (config/world.yaml)', 'degrade.': 'DegradeConfig (world/degrade.py)',
                      'nav_world.': 'NavConfig (config/nav.yaml)'}


def parameter_rows(cfg: SwarmConfig) -> list[dict]:
    """One row per ROS parameter the node plan of `cfg` sets: the nodes that take it and its schema Field
    (config.parameter_field). A planned parameter without a field raises KeyError."""
    from ..config import parameter_field
    where: dict[str, set[str]] = {}
    for source in ('world', 'replay', 'airsim'):     # each camera source's node takes its own parameters
        variant = dataclasses.replace(
            cfg, swarm={**cfg.swarm, 'record': True, 'link': {**cfg.swarm['link'], 'enabled': True},
                        'source': {**cfg.swarm['source'], 'type': source}},
            drones=[d if source == 'world' else dataclasses.replace(d, obstructed=False) for d in cfg.drones])
        for n in build_node_plan(variant, run_dir='run'):
            for name in n.parameters:
                where.setdefault(name, set()).add(n.executable)
    # the bag bridge (a recorded bag as the source) takes the replay bridge's source parameters and its path
    for name, nodes in where.items():
        if 'replay_bridge' in nodes and not name.startswith('replay.'):
            nodes.add('bag_bridge')
    where['bag.path'] = {'bag_bridge'}
    rows = []
    for name in sorted(where):
        prefix = next((p for p in DATACLASS_PREFIXES if name.startswith(p)), None)
        if prefix:
            continue
        rows.append({'name': name, 'nodes': sorted(where[name]), 'field': parameter_field(name)})
    return rows


def parameters_markdown(cfg: SwarmConfig) -> str:
    """docs/PARAMETERS.md: every node parameter with its default, range or choices, whether `ros2 param set`
    applies it to a running node, and its help text, all from the config schema."""
    def number(x) -> str:
        return '' if x is None else str(int(x)) if float(x).is_integer() else f'{x:g}'

    def limits(f) -> str:
        if f.choices:
            return ', '.join(map(str, f.choices))
        lo, hi = number(f.minimum), number(f.maximum)
        return f'{lo} .. {hi}' if lo or hi else ''

    lines = ['# Node parameters', '',
             'Generated from the config schema (`collab_perception/config.py`) by `collab-perception params',
             '--markdown`; `test/test_parameters.py` checks that it is current. Each parameter is a config key',
             '(the node plan copies `drones[]`, `swarm.*`, `swarm.codec`, `swarm.qos`, `swarm.source` and',
             '`swarm.monitor` values by name into the nodes\' parameter files) or derived by the plan from the',
             'drone list. `ros2 param describe` shows the same help, range and choices. Parameters marked *run',
             'time* can be changed on a running node with `ros2 param set`; the others are read-only, and rclpy',
             'refuses a change with a reason.',
             '', '| parameter | nodes | default | range / choices | run time | help |', '|---|---|---|---|---|---|']
    for row in parameter_rows(cfg):
        f = row['field']
        default = '(required)' if f.default is None else f'`{f.default!r}`'
        text = f.help.replace('|', '\\|')
        lines.append(f"| `{row['name']}` | {', '.join(row['nodes'])} | {default} | {limits(f)} | "
                     f"{'yes' if f.runtime else ''} | {text} |")
    lines += ['', 'Also declared, field by field, from config dataclasses (their defaults and checks are the '
              "dataclass's):", '']
    lines += [f'- `{prefix}*`: {what}' for prefix, what in DATACLASS_PREFIXES.items()]
    return '\n'.join(lines) + '\n'
