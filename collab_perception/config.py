"""config/swarm.yaml: the one list of drones and settings that the launch file, the embedded launcher,
the benchmarks and the tests all read.

Loading validates every field against the schema below and fails at start-up with the YAML path of
the first bad field (`drones[1].deadline_ms: expected an integer >= 1, got -5`). Unknown keys are errors
too, with the valid keys listed, so that a typo never silently falls back to a default (navigation2 warns
about the same class of mistake in its parameter files). No ROS imports: this module sits under the
runtime and launch layers.
"""
from __future__ import annotations

import copy
import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import yaml

# The source checkout (realpath: under `colcon build --symlink-install` this file is a symlink into it).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
BROADCAST_ID = 255  # msg/Request.msg BROADCAST


class ConfigError(ValueError):
    """A configuration value that cannot be used. `path` is the YAML path, e.g. 'drones[1].role'."""

    def __init__(self, path: str, message: str, source: str = ''):
        where = f'{source}: ' if source else ''
        super().__init__(f'{where}{path}: {message}')
        self.path = path
        self.source = source


@dataclass(frozen=True)
class Field:
    kind: type | tuple            # bool, int, float, str, list, dict
    default: Any = None
    choices: Optional[Sequence[Any]] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    items: Optional[type] = None  # element type for lists
    check: Optional[Callable[[Any], Optional[str]]] = None  # returns an error message or None
    help: str = ''
    runtime: bool = False         # as a ROS parameter: `ros2 param set` applies it to the running node


_NAME_RE = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')


# drones[].precision -> the suffix of the model's role files (`collab-perception export --fp16` writes the fp16 ones)
PRECISION_SUFFIXES = {'fp32': '.onnx', 'fp16': '.fp16.onnx'}


# Every execution provider ONNX Runtime 1.31 knows (onnxruntime.get_all_providers(); test_config checks the
# installed wheel still agrees). A name outside it is a typo, not a provider this machine happens to lack.
KNOWN_PROVIDERS = (
    'NvTensorRTRTXExecutionProvider', 'TensorrtExecutionProvider', 'CUDAExecutionProvider',
    'MIGraphXExecutionProvider', 'OpenVINOExecutionProvider', 'DnnlExecutionProvider', 'VitisAIExecutionProvider',
    'QNNExecutionProvider', 'NnapiExecutionProvider', 'VSINPUExecutionProvider', 'JsExecutionProvider',
    'CoreMLExecutionProvider', 'ACLExecutionProvider', 'DmlExecutionProvider', 'RknpuExecutionProvider',
    'WebNNExecutionProvider', 'WebGpuExecutionProvider', 'XnnpackExecutionProvider', 'CANNExecutionProvider',
    'AzureExecutionProvider', 'CPUExecutionProvider')


def _check_providers(names: list) -> Optional[str]:
    if not names:
        return 'must name at least one provider'
    for name in names:
        if name not in KNOWN_PROVIDERS:
            close = difflib.get_close_matches(name, KNOWN_PROVIDERS, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ''
            return f"{name!r} is not an ONNX Runtime execution provider; {hint}known: {', '.join(KNOWN_PROVIDERS)}"
    if len(set(names)) != len(names):
        return f'lists a provider twice: {names}'
    return None


# Options of the GPU execution providers (ONNX Runtime 1.31's names; TensorRT: its engine cache makes a
# restart cheap, fp16 halves the work on Jetson). A name outside these is a typo, caught at start-up.
PROVIDER_OPTIONS = {
    'TensorrtExecutionProvider': {
        'device_id': int, 'trt_fp16_enable': bool, 'trt_int8_enable': bool, 'trt_engine_cache_enable': bool,
        'trt_engine_cache_path': str, 'trt_timing_cache_enable': bool, 'trt_timing_cache_path': str,
        'trt_max_workspace_size': int, 'trt_builder_optimization_level': int, 'trt_dla_enable': bool,
        'trt_dla_core': int},
    'CUDAExecutionProvider': {
        'device_id': int, 'gpu_mem_limit': int, 'arena_extend_strategy': str, 'cudnn_conv_algo_search': str,
        'do_copy_in_default_stream': bool, 'use_tf32': bool},
}


def check_provider_options(options: dict) -> Optional[str]:
    for provider, values in options.items():
        known = PROVIDER_OPTIONS.get(provider)
        if known is None:
            return (f'names {provider!r}; options can be given for: {", ".join(PROVIDER_OPTIONS)} '
                    f'(and the provider must be in providers)')
        if not isinstance(values, Mapping):
            return f'{provider}: expected a mapping of option: value'
        for key, value in values.items():
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
                hint = f"did you mean '{close[0]}'? " if close else ''
                return f'{provider}.{key} is not an option of {provider}; {hint}known: {", ".join(known)}'
            kind = known[key]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                return f'{provider}.{key}: expected {kind.__name__}, got {value!r}'
    return None


def _ros_name(value: str) -> Optional[str]:
    if not _NAME_RE.match(value):
        return 'must be a valid ROS name (a letter, then letters, digits or _)'
    return None


def private_subnet_problem(value: str) -> Optional[str]:
    """A private IPv4 network (RFC 1918) with room for a swarm: swarm.network.subnet."""
    import ipaddress
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as e:
        return f'not an IPv4 network ({e})'
    if not net.is_private or net.is_loopback or net.is_link_local or net.is_multicast:
        return f'{value} is not a private network (use one inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16)'
    if net.prefixlen > 28:
        return f'{value} is too small (the prefix must be /28 or shorter)'
    return None


def _topic_name(value: str) -> Optional[str]:
    if not re.match(r'^/?[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*$', value):
        return 'must be a valid ROS topic name'
    return None


QOS_SCHEMA = {
    'reliability': Field(str, 'reliable', choices=('reliable', 'best_effort'),
                         help='reliable (comm messages are few and each one matters) or best_effort'),
    'depth': Field(int, 10, minimum=1, maximum=1000, help='keep-last history depth'),
    'durability': Field(str, 'volatile', choices=('volatile', 'transient_local'),
                        help='volatile, or transient_local (late joiners get the last messages)'),
}

SOURCE_SCHEMA = {
    'type': Field(str, 'world', choices=('world', 'airsim', 'replay', 'bag', 'nav'),
                  help='camera source: the embedded world (sim_bridge), AirSim / Cosys-AirSim (airsim_bridge), '
                       'a generated dataset split replayed (replay_bridge), the cameras of a recorded flight '
                       "(bag_bridge; collab-perception replay), or the world's navigation mode stepped by the "
                       "drones' velocity commands (nav_bridge; CollaVN, config/swarm_nav.yaml)"),
    'world': Field(dict, {}, help='embedded world settings over the WorldConfig defaults (config/world.yaml '
                                  'keys; drones comes from the drone list)'),
    'airsim_config': Field(str, 'config/airsim.yaml', help='AirSim vehicles, cameras and segmentation colours '
                                                           '(relative paths: to the package)'),
    'replay': {
        'dataset': Field(str, 'datasets/hidden-target', help='a dataset made with `collab-perception dataset generate`'),
        'split': Field(str, 'test', choices=('train', 'val', 'test'), help='the dataset split replayed'),
        'target_drone': Field(str, '', help="the drone that gets each snapshot's target view (default: the first)"),
    },
    'bag': {
        'path': Field(str, '', help='a bag recorded with `collab-perception swarm --record` (its directory)'),
    },
    'nav': {
        'dataset': Field(str, '', help="a navigation dataset (collab-perception nav generate) whose maps and episodes "
                                       "are flown; '' builds the maps of map_ids and samples episodes on them"),
        'split': Field(str, 'test', choices=('train', 'val', 'test', 'unseen'), help='the split flown'),
        'map_ids': Field(list, [19], items=int, check=lambda v: None if v else 'must name at least one map',
                         help='maps built when no dataset is given (config/nav.yaml seed; the default dataset '
                              '(16 / 3 / 4 maps) has its test maps at ids 19-22)'),
        'task': Field(str, 'common', choices=('common', 'specific'), help='CommonGoal or SpecificGoal episodes'),
        'episodes': Field(int, 3, minimum=1, maximum=100000, help='episodes flown; then the run ends'),
        'seed': Field(int, 0, minimum=0, help='seed of the episodes sampled when no dataset is given'),
        'max_steps': Field(int, 0, minimum=0, maximum=10000, help="steps an episode allows (0: config/nav.yaml's T_max)"),
        'step_timeout_s': Field(float, 3.0, minimum=0.01, maximum=600.0,
                                help="how long a step waits for every active drone's velocity command; a drone "
                                     'without one stays where it is that step (counted)'),
        'config': Field(dict, {}, help='overrides of config/nav.yaml (NavConfig keys) for the maps built here'),
    },
    'degrade': Field(dict, {}, help='sensor degradation of drones with degraded: true (DegradeConfig keys)'),
    'degrade_seed': Field(int, 0, minimum=0, help='seed of the sensor degradation draws'),
}

CODEC_SCHEMA = {
    'query_dtype': Field(str, 'float32', choices=('float32', 'float16', 'int8', 'uint8'),
                         help='wire dtype of the Request query (MASH models name theirs in roles.json)'),
    'score_dtype': Field(str, 'float32', choices=('float32', 'float16', 'int8', 'uint8'),
                         help='wire dtype of the Reply score'),
    'feature_dtype': Field(str, 'float16', choices=('float32', 'float16', 'int8', 'uint8'),
                           help='wire dtype of the FeatureMap features (int8: half the bytes of float16)'),
    'patch_dtype': Field(str, 'uint8', choices=('float32', 'float16', 'int8', 'uint8'),
                         help="wire dtype of MASH's patch confidences and class distributions (PatchSegments)"),
    'value_dtype': Field(str, 'float32', choices=('float32', 'float16', 'int8', 'uint8'),
                         help="wire dtype of CollaVN's MemoryValue values (float32: what the model was trained on)"),
    'local_dtype': Field(str, 'float32', choices=('float32', 'float16'),
                         help='dtype of the perception -> matcher/fusion topic inside one drone'),
    'max_elements': Field(int, 1 << 20, minimum=1, maximum=1 << 28,
                          help='largest received tensor accepted (elements); larger ones are rejected'),
    'max_rank': Field(int, 4, minimum=1, maximum=8, help='largest rank of a received tensor'),
    'max_dim': Field(int, 4096, minimum=1, maximum=1 << 20, help='largest dimension of a received tensor'),
}

MONITOR_SCHEMA = {
    'enabled': Field(bool, True),
    'period_s': Field(float, 1.0, minimum=0.05, maximum=3600.0, help='BandwidthStats publishing period'),
    'window_s': Field(float, 5.0, minimum=0.1, maximum=3600.0, help='window of the published rates'),
    'frame_horizon_s': Field(float, 5.0, minimum=0.5, maximum=3600.0,
                             help='frames older than this (receive time) are folded into the totals'),
    'extra_topics': Field(list, [], items=dict,
                          help='more topics to measure: [{topic: /drone1/camera/image_raw, type: '
                               'sensor_msgs/msg/Image}]'),
}

SWARM_SCHEMA = {
    'process_layout': Field(str, 'per_node', choices=('per_node', 'per_drone'),
                            help='one process per node, or one process per drone running its nodes in '
                                 'one executor (like a component container)'),
    'rate_hz': Field(float, 5.0, minimum=0.1, maximum=200.0, help='camera snapshots per second'),
    'frames': Field(int, 0, minimum=0, help='0: run until stopped; N: the source stops after N snapshots'),
    'startup_timeout_s': Field(float, 30.0, minimum=0.0, maximum=600.0,
                               help='the source waits at most this long for every drone to subscribe'),
    'settle_s': Field(float, 1.0, minimum=0.0, maximum=60.0,
                      help='once every planned endpoint has matched its peers, wait this long before frame 1'),
    'drain_s': Field(float, 1.5, minimum=0.0, maximum=120.0,
                     help='after the last snapshot, time for the last frames to finish before exit'),
    'source': SOURCE_SCHEMA,
    'codec': CODEC_SCHEMA,
    'qos': {
        'comm': QOS_SCHEMA,
        'sensor': QOS_SCHEMA,
        'local': QOS_SCHEMA,
    },
    'monitor': MONITOR_SCHEMA,
    'evaluator': {'enabled': Field(bool, True, help='score segmentations against camera/labels where the source '
                                                    'publishes them')},
    'link': {
        'enabled': Field(bool, False, help='send every comm message through the link node, a fault-injecting '
                                           'radio (loss, delay, jitter; nodes/link_node.py)'),
        'loss': Field(float, 0.0, minimum=0.0, maximum=1.0, runtime=True,
                      help='probability that the link drops a comm message; can be set on the running link node'),
        'delay_ms': Field(float, 0.0, minimum=0.0, maximum=10000.0, runtime=True,
                          help='added delay of every comm message (ms); can be set on the running link node'),
        'jitter_ms': Field(float, 0.0, minimum=0.0, maximum=10000.0, runtime=True,
                           help='a uniform 0..jitter_ms more per message (ms); can be set on the running link node'),
        'seed': Field(int, 0, minimum=0, help="seed of the link's loss and jitter draws"),
    },
    'network': {
        'mode': Field(str, 'loopback', choices=('loopback', 'namespaces'),
                      help='loopback: every process on this host, DDS on shared memory and 127.0.0.1; namespaces: '
                           'each drone (and the ground station) in a network namespace of its own on a private '
                           'bridge, DDS over UDP with unicast discovery, as on separate hosts (needs root; '
                           'launch/netns.py)'),
        'subnet': Field(str, '10.77.0.0/24', check=private_subnet_problem,
                        help='the emulated hosts\' private IPv4 subnet (namespaces mode; it exists only inside '
                             'the namespaces): the ground station gets the first address, the drones the next'),
    },
    'record': Field(bool, False, help="record the flight into <run dir>/bag (rosbag2, MCAP): every drone's "
                                      'cameras, segmentation and fusion/info, the comm topics, the frames and '
                                      'the bandwidth stats (collab-perception swarm --record)'),
    'on_node_exit': Field(str, 'shutdown', choices=('shutdown', 'continue', 'respawn'),
                          help='a node that exits unexpectedly stops the swarm (shutdown), is reported while the '
                               'others go on (continue: fault-injection runs), or is started again (respawn, as '
                               "launch_ros's respawn)"),
}

DRONE_SCHEMA = {
    'name': Field(str, None, check=_ros_name, help='namespace of the drone, e.g. drone1'),
    'id': Field(int, None, minimum=0, maximum=BROADCAST_ID - 1, help='agent id on the wire (uint8)'),
    'role': Field(str, 'supporter', choices=('requester', 'supporter', 'auto'),
                  help='requester: asks for help every frame; supporter: only answers; auto: a learned '
                       'gate decides per frame (When2com)'),
    'method': Field(str, None, help='a name from the method registry (runtime/methods.py), in drone_defaults '
                                    'or per drone; never implied'),
    'deadline_ms': Field(int, 300, minimum=1, maximum=60000,
                         help='camera stamp -> the requester publishes, with or without help'),
    'reply_timeout_ms': Field(int, 120, minimum=1, maximum=60000,
                              help='camera stamp -> stop waiting for replies and select (spatial protocols: fuse the patches that came)'),
    'select': Field(str, 'argmax', choices=('argmax', 'top_n', 'threshold'),
                    help='how the requester picks partners from the scores (Who2com Eq. 6, top-n, '
                         'When2com threshold)'),
    'top_n': Field(int, 1, minimum=1, maximum=16, help='how many partners select: top_n (and the gate) connect to'),
    'score_threshold': Field(float, 0.0, runtime=True,
                             help='used by select: threshold (the When2com gate); can be set on a running fusion node'),
    'cache_frames': Field(int, 16, minimum=1, maximum=1000, help='per-stamp ring buffer length'),
    'warp_on': Field(str, 'request', choices=('request', 'connect'),
                     help="pose-warping supporters (Who2com §IV-B): warp and encode their view for every request, "
                          "so that the score compares the warped view (request, the paper's), or only when "
                          'selected, scoring their own view (connect: a request costs a match only)'),
    'degraded': Field(bool, False, help="the drone's camera is degraded (blur + noise, handshake paper §IV-B)"),
    'patch_budget': Field(float, 0.1, minimum=0.0, maximum=1.0, runtime=True,
                          help='MASH supporters: the most bytes of one patches reply, as a fraction of the label '
                               'image (the least confident matched cells are dropped); 0: no cap; can be set on a '
                               'running matcher'),
    'obstructed': Field(bool, False, help='a 3D obstruction in front of this drone\'s camera every frame (MASH §IV; '
                                          'embedded world only)'),
    'models': Field(dict, {}, help="{dir: models/<name>}: the exported model's directory (collab-perception export)",
                    check=lambda v: None if set(v) <= {'dir'} and all(isinstance(x, str) for x in v.values())
                    else "must be {dir: <path>}"),
    'onnx_threads': Field(int, 1, minimum=1, maximum=64, help='ONNX Runtime threads per session'),
    'precision': Field(str, 'fp32', choices=tuple(PRECISION_SUFFIXES),
                       help='which export of the model the drone runs: fp32 (<role>.onnx) or fp16 (<role>.fp16.onnx, '
                            'from collab-perception export --fp16: half the weights, for the fp16 units of a GPU or '
                            'Jetson; on a CPU it is slower, not faster)'),
    'providers': Field(list, ['CPUExecutionProvider'], items=str, check=_check_providers,
                       help='ONNX Runtime execution providers in order of preference; those this machine '
                            'lacks are skipped (the node logs what each session got). On a GPU: '
                            '[TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider]'),
    'provider_options': Field(dict, {}, check=check_provider_options,
                              help='per GPU provider, its ONNX Runtime options, e.g. {TensorrtExecutionProvider: '
                                   '{trt_fp16_enable: true, trt_engine_cache_enable: true, trt_engine_cache_path: '
                                   '/var/cache/collab_perception/trt, device_id: 0}, CUDAExecutionProvider: '
                                   '{device_id: 0}} (docs/DEPLOY.md)'),
}

# ROS parameters that the node plan (launch/plan.py) derives from the config rather than copying one key.
# Lists default to [''] because a ROS parameter file cannot hold an empty list.
PLAN_PARAMETERS = {
    'drone_names': Field(list, ['drone1'], items=str, help='namespaces of every drone of the swarm (drones[].name)'),
    'drone_ids': Field(list, [1], items=int, help='wire id of each drone, same order (drones[].id)'),
    'drone_name': Field(str, 'drone1', check=_ros_name, help='this drone (its namespace)'),
    'drone_id': Field(int, 1, minimum=0, maximum=BROADCAST_ID - 1, help='this drone on the wire'),
    'model.dir': Field(str, '', help='exported model directory (drones[].models.dir; collab-perception export)'),
    'requesters': Field(list, [''], items=str, help='drones that may ask for help (role requester or auto)'),
    'output_dir': Field(str, '', help='where the node writes its summary (the run directory)'),
    'frame_topic': Field(str, '/swarm/frame', check=_topic_name, help='std_msgs/Header per camera snapshot'),
    'extra_topics': Field(str, '', help="swarm.monitor.extra_topics as 'topic:package/msg/Type,...'"),
    'expected_nodes': Field(list, [''], items=str, help='fully qualified names of every node of the swarm; frame 1 '
                                                        'waits until all are in the graph'),
    'expected_endpoints': Field(list, [''], items=str, help="'topic:publishers:subscribers' of the comm graph; frame "
                                                            '1 waits until all are matched'),
    'degraded_drones': Field(list, [''], items=str, help='drones whose camera is degraded (drones[].degraded)'),
    'obstructed_drones': Field(list, [''], items=str, help='drones with an obstruction in front of the camera '
                                                           '(drones[].obstructed)'),
    'provider_options_json': Field(str, '{}', help='drones[].provider_options as JSON (a ROS parameter cannot '
                                                   'hold a mapping)'),
    'link_topics': Field(list, [''], items=str, help='comm topics the link relays (from /radio/<topic>)'),
    'record_topics': Field(list, [''], items=str, help="'topic:package/msg/Type:qos' of every recorded topic "
                                                       '(swarm.record)'),
}


def precision_problem(precision: str, model_dir: str) -> Optional[str]:
    """Why a drone cannot run `precision` with the model in `model_dir` (a half-precision run needs the
    .fp16.onnx files of `collab-perception export --fp16`), or None."""
    if precision != 'fp16' or not model_dir:
        return None
    path = model_dir if os.path.isabs(model_dir) else resource_path(model_dir)
    if os.path.isdir(path) and not any(f.endswith(PRECISION_SUFFIXES['fp16']) for f in os.listdir(path)):
        return (f'{model_dir} has no fp16 export (<role>.fp16.onnx); write one with collab-perception export '
                f'--run <its run> --out {model_dir} --fp16, or use precision fp32')
    return None


def parameter_field(name: str) -> Field:
    """The schema Field behind a node's ROS parameter: default, range or choices, help, whether it can change
    at run time. Node parameters are config keys by name (`deadline_ms` is drones[].deadline_ms,
    `codec.feature_dtype` swarm.codec.feature_dtype, `qos.comm.depth` swarm.qos.comm.depth, `replay.split`
    swarm.source.replay.split) or the plan's own (PLAN_PARAMETERS)."""
    parts = name.split('.')
    if name in PLAN_PARAMETERS:
        return PLAN_PARAMETERS[name]
    if parts[0] == 'codec' and len(parts) == 2 and parts[1] in CODEC_SCHEMA:
        return CODEC_SCHEMA[parts[1]]
    if parts[0] == 'qos' and len(parts) == 3 and parts[1] in SWARM_SCHEMA['qos'] and parts[2] in QOS_SCHEMA:
        return QOS_SCHEMA[parts[2]]
    if len(parts) == 2 and isinstance(SOURCE_SCHEMA.get(parts[0]), Mapping) and parts[1] in SOURCE_SCHEMA[parts[0]]:
        return SOURCE_SCHEMA[parts[0]][parts[1]]      # replay.*, bag.*
    if parts[0] == 'link' and len(parts) == 2 and parts[1] in SWARM_SCHEMA['link']:
        return SWARM_SCHEMA['link'][parts[1]]
    if len(parts) == 1:
        for schema in (DRONE_SCHEMA, SWARM_SCHEMA, MONITOR_SCHEMA, SOURCE_SCHEMA):
            spec = schema.get(name)
            if isinstance(spec, Field):
                return spec
    raise KeyError(f'{name!r} is no node parameter of the config schema')


def reply_timeout_problem(reply_timeout_ms: int, deadline_ms: int) -> Optional[str]:
    """Why these two cannot run together (the requester selects after the replies, before the deadline)."""
    if reply_timeout_ms >= deadline_ms:
        return f'reply_timeout_ms ({reply_timeout_ms}) must be below deadline_ms ({deadline_ms})'
    return None


CONFIG_SCHEMA = {
    'swarm': SWARM_SCHEMA,
    # method may be left to each drone here; a drone without one in either place is a config error
    'drone_defaults': {k: (Field(str, '', help=v.help) if k == 'method' else v)
                       for k, v in DRONE_SCHEMA.items() if k not in ('name', 'id')},
    'drones': Field(list, None, items=dict, help='the drones of the swarm'),
}


def _type_name(kind) -> str:
    names = {bool: 'a boolean', int: 'an integer', float: 'a number', str: 'a string', list: 'a list',
             dict: 'a mapping'}
    return names.get(kind, str(kind))


def check_value(spec: Field, value: Any, path: str, source: str = '') -> Any:
    """`value` checked against `spec` (type, choices, range, items, check); ConfigError names `path`."""
    kind = spec.kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(path, f'expected {_type_name(kind)}, got {value!r}', source)
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(path, f'{value!r} is not one of: {", ".join(map(str, spec.choices))}', source)
    if spec.minimum is not None and value < spec.minimum:
        raise ConfigError(path, f'expected {_type_name(kind)} >= {spec.minimum}, got {value!r}', source)
    if spec.maximum is not None and value > spec.maximum:
        raise ConfigError(path, f'expected {_type_name(kind)} <= {spec.maximum}, got {value!r}', source)
    if kind is list and spec.items is not None:
        for i, item in enumerate(value):
            if not isinstance(item, spec.items):
                raise ConfigError(f'{path}[{i}]', f'expected {_type_name(spec.items)}, got {item!r}', source)
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            raise ConfigError(path, f'{value!r} {problem}', source)
    return copy.deepcopy(value)


def validate_section(schema: Mapping[str, Any], data: Any, path: str, source: str = '',
                     require: Sequence[str] = ()) -> dict:
    """Fill defaults and check `data` against `schema` (a dict of Field or nested dicts)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(path or '<root>', f'expected a mapping, got {data!r}', source)
    unknown = sorted(set(data) - set(schema))
    if unknown:
        prefix = f'{path}.' if path else ''
        raise ConfigError(f'{prefix}{unknown[0]}', f'unknown key; valid keys: {", ".join(schema)}', source)
    out = {}
    for key, spec in schema.items():
        sub = f'{path}.{key}' if path else key
        if isinstance(spec, Mapping):
            out[key] = validate_section(spec, data.get(key), sub, source)
            continue
        if key not in data or data[key] is None:
            if key in require or spec.default is None:
                raise ConfigError(sub, f'is required ({spec.help})' if spec.help else 'is required', source)
            out[key] = copy.deepcopy(spec.default)
            continue
        out[key] = check_value(spec, data[key], sub, source)
    return out


@dataclass
class DroneConfig:
    name: str
    id: int
    role: str
    method: str
    deadline_ms: int
    reply_timeout_ms: int
    select: str
    top_n: int
    score_threshold: float
    cache_frames: int
    warp_on: str
    models: dict
    onnx_threads: int
    providers: list
    provider_options: dict
    precision: str
    degraded: bool
    obstructed: bool
    patch_budget: float

    @property
    def namespace(self) -> str:
        return '/' + self.name


@dataclass
class SwarmConfig:
    swarm: dict
    drones: list[DroneConfig]
    source: str = ''
    raw: dict = field(default_factory=dict)

    def drone(self, name: str) -> DroneConfig:
        for d in self.drones:
            if d.name == name:
                return d
        raise KeyError(f'no drone named {name!r}; drones: {", ".join(d.name for d in self.drones)}')

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.drones]

    @property
    def ids(self) -> list[int]:
        return [d.id for d in self.drones]


def resource_path(*parts: str) -> str:
    """A data file of the package (config/, models/, launch/): from the source checkout, or from the
    installed share directory (a plain `colcon build` copies them to share/collab_perception/)."""
    candidate = os.path.join(PACKAGE_ROOT, *parts)
    if os.path.exists(candidate):
        return candidate
    try:
        from ament_index_python.packages import get_package_share_directory
        shared = os.path.join(get_package_share_directory('collab_perception'), *parts)
        if os.path.exists(shared):
            return shared
    except Exception:  # noqa: BLE001 - no ament index: report the source-tree path
        pass
    return candidate


def default_config_path() -> str:
    return resource_path('config', 'swarm.yaml')


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split('.')
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(dotted, 'cannot override inside a non-mapping value')
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'swarm.frames=20' -> ('swarm.frames', 20) (the value is parsed as YAML)."""
    if '=' not in text:
        raise ConfigError(text, 'an override must look like section.key=value')
    key, value = text.split('=', 1)
    return key.strip(), yaml.safe_load(value)


def build_config(data: Mapping[str, Any], source: str = '<dict>',
                 overrides: Sequence[tuple[str, Any]] = ()) -> SwarmConfig:
    data = copy.deepcopy(dict(data or {}))
    for dotted, value in overrides:
        _set_dotted(data, dotted, value)
    top = validate_section({k: v for k, v in CONFIG_SCHEMA.items() if k != 'drones'},
                           {k: v for k, v in data.items() if k != 'drones'}, '', source)
    unknown = sorted(set(data) - set(CONFIG_SCHEMA))
    if unknown:
        raise ConfigError(unknown[0], f'unknown key; valid keys: {", ".join(CONFIG_SCHEMA)}', source)
    drones_raw = data.get('drones')
    if not isinstance(drones_raw, list) or not drones_raw:
        raise ConfigError('drones', 'expected a non-empty list of drones', source)
    drones = []
    for i, raw in enumerate(drones_raw):
        if not isinstance(raw, Mapping):
            raise ConfigError(f'drones[{i}]', f'expected a mapping, got {raw!r}', source)
        merged = {**{k: v for k, v in top['drone_defaults'].items() if not (k == 'method' and v == '')}, **raw}
        values = validate_section(DRONE_SCHEMA, merged, f'drones[{i}]', source, require=('name', 'id'))
        drones.append(DroneConfig(**values))
    seen_names, seen_ids = {}, {}
    for i, d in enumerate(drones):
        if d.name in seen_names:
            raise ConfigError(f'drones[{i}].name', f'{d.name!r} is also drones[{seen_names[d.name]}]', source)
        if d.id in seen_ids:
            raise ConfigError(f'drones[{i}].id', f'{d.id} is also drones[{seen_ids[d.id]}].id', source)
        if d.name == 'swarm':
            raise ConfigError(f'drones[{i}].name', "'swarm' is reserved for swarm-wide topics", source)
        extra = sorted(set(d.provider_options) - set(d.providers))
        if extra:
            raise ConfigError(f'drones[{i}].provider_options', f'{", ".join(extra)} not in providers {d.providers}',
                              source)
        problem = reply_timeout_problem(d.reply_timeout_ms, d.deadline_ms)
        if problem:
            raise ConfigError(f'drones[{i}].reply_timeout_ms', problem, source)
        problem = precision_problem(d.precision, d.models.get('dir', ''))
        if problem:
            raise ConfigError(f'drones[{i}].precision', problem, source)
        seen_names[d.name] = i
        seen_ids[d.id] = i
    for i, extra in enumerate(top['swarm']['monitor']['extra_topics']):
        path = f'swarm.monitor.extra_topics[{i}]'
        validate_section({'topic': Field(str, None, check=_topic_name), 'type': Field(str, None)},
                         extra, path, source, require=('topic', 'type'))
    return SwarmConfig(swarm=top['swarm'], drones=drones, source=source, raw=data)


def overlay(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict:
    """`over` on top of `base`: mappings merge key by key, anything else (a list such as drones, a scalar)
    replaces what the base has."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = overlay(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_file(path: str, _seen: tuple = ()) -> dict:
    """A swarm config file as one mapping; `extends: <file>` (relative to this file) makes it an overlay of
    another config, so that a variant states only what differs (config/swarm_mash.yaml over swarm.yaml)."""
    try:
        with open(path, encoding='utf-8') as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError('<file>', f'cannot read: {e.strerror}', path) from None
    except yaml.YAMLError as e:
        raise ConfigError('<file>', f'not valid YAML: {e}', path) from None
    if not isinstance(data, Mapping) or 'extends' not in data:
        return data
    data = dict(data)
    base = data.pop('extends')
    if not isinstance(base, str) or not base:
        raise ConfigError('extends', f'expected the path of the config this one overlays, got {base!r}', path)
    base_path = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), base))
    if base_path in _seen + (os.path.abspath(path),):
        chain = ' -> '.join(_seen + (os.path.abspath(path), base_path))
        raise ConfigError('extends', f'a cycle of overlays: {chain}', path)
    return overlay(read_config_file(base_path, _seen + (os.path.abspath(path),)), data)


def load_swarm_config(path: Optional[str] = None, overrides: Sequence[tuple[str, Any]] = ()) -> SwarmConfig:
    path = path or default_config_path()
    return build_config(read_config_file(path), source=path, overrides=overrides)
