"""What every node of the package shares: parameters with validation, named QoS profiles, image and
stamp conversions, rejected-message accounting, and the main() wrapper of ros2/demos.

Only this layer (and launch) imports rclpy.
"""
from __future__ import annotations

import array
import dataclasses
import faulthandler
import importlib
import json
import math
import signal
import sys
import threading
from collections import Counter
from typing import Any, Callable, Optional, Sequence

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from rclpy.signals import SignalHandlerOptions
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import CameraInfo, Image

from collab_perception.msg import NavTask, PerceptionOutput

from ..config import ConfigError, Field, check_provider_options, check_value, parameter_field
from ..runtime import topics
from ..runtime.codec import CodecError, TensorLimits, decode_tensor
from ..runtime.handshake import AddressError, check_addressing
from ..runtime.lifecycle import TEARDOWN_SIGNAL, TEARDOWN_TIMEOUT_S
from ..runtime.methods import create_method, method_names
from ..runtime.protocols import Reject, RoleContext, Send, protocol_class, stamp_label
from ..runtime.sync import StampJoiner
from ..runtime.readiness import INFRASTRUCTURE_TOPICS, NODE_KEY, endpoint_values


class ParameterError(ValueError):
    """A parameter value the node cannot start with; the message names the parameter."""


_INT64 = (-(1 << 63), (1 << 63) - 1)


def parameter_descriptor(description: str, default: Any, choices: Optional[Sequence] = None,
                         minimum: Optional[float] = None, maximum: Optional[float] = None,
                         read_only: bool = True) -> ParameterDescriptor:
    """What `ros2 param describe` shows: the help text, the range or the choices, and read_only: a parameter
    read only when the node starts would not be applied if changed at run time, so rclpy refuses the change
    with a reason instead of accepting it silently."""
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    if choices is not None:
        descriptor.additional_constraints = 'one of: ' + ', '.join(map(str, choices))
    if (minimum is not None or maximum is not None) and not isinstance(default, bool):
        if isinstance(default, int):
            lo = int(minimum) if minimum is not None else _INT64[0]
            hi = int(maximum) if maximum is not None else _INT64[1]
            descriptor.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=0)]
        elif isinstance(default, float):
            lo = float(minimum) if minimum is not None else -sys.float_info.max
            hi = float(maximum) if maximum is not None else sys.float_info.max
            descriptor.floating_point_range = [FloatingPointRange(from_value=lo, to_value=hi, step=0.0)]
    return descriptor


def _field(name: str, choices: Optional[Sequence] = None) -> Field:
    spec = parameter_field(name)
    return dataclasses.replace(spec, choices=tuple(choices)) if choices is not None else spec


def check_parameter(name: str, value: Any, choices: Optional[Sequence] = None) -> Any:
    """`value` checked against the parameter's schema Field; ParameterError names the parameter."""
    spec = _field(name, choices)
    if isinstance(value, float) and not math.isfinite(value):
        raise ParameterError(f'parameter {name!r}: {value!r} is not finite')
    try:
        return check_value(spec, list(value) if isinstance(value, (list, tuple, array.array)) else value,
                           f'parameter {name!r}')
    except ConfigError as e:
        raise ParameterError(str(e)) from None


def declare(node: Node, name: str, choices: Optional[Sequence] = None) -> Any:
    """Declare a parameter from its schema Field (config.parameter_field: default, range or choices, help;
    read-only unless the field can change at run time) and return its validated value; a bad value is a
    ParameterError naming the parameter. `choices`: a registry's names, where the schema leaves them open."""
    spec = _field(name, choices)
    default = spec.default if spec.default is not None else ''
    descriptor = parameter_descriptor(spec.help, default, spec.choices, spec.minimum, spec.maximum,
                                      read_only=not spec.runtime)
    try:
        value = node.declare_parameter(name, default, descriptor).value
    except (InvalidParameterValueException, InvalidParameterTypeException) as e:
        raise ParameterError(f'parameter {name!r}: {e}') from None
    return check_parameter(name, value, choices)


def declare_dataclass(node: Node, prefix: str, defaults: Any, description: str) -> dict[str, Any]:
    """Declare `<prefix>.<field>` for every field of a config dataclass instance, defaulting to its values
    (tuples become ROS arrays), and return the values set. The dataclass validates them afterwards."""
    values = {}
    for f in dataclasses.fields(defaults):
        default = getattr(defaults, f.name)
        if isinstance(default, tuple):
            default = list(default)
        value = node.declare_parameter(f'{prefix}.{f.name}', default,
                                       ParameterDescriptor(description=f'{description}: {f.name}',
                                                           read_only=True)).value
        values[f.name] = list(value) if isinstance(value, (list, tuple)) else value
    return values


def provider_options_parameter(text: str) -> dict:
    """The `provider_options_json` parameter as a mapping, checked as drones[].provider_options is."""
    try:
        options = json.loads(text or '{}')
    except json.JSONDecodeError as e:
        raise ParameterError(f"parameter 'provider_options_json': not JSON: {e}") from None
    problem = None if isinstance(options, dict) else 'must be a JSON object'
    problem = problem or check_provider_options(options)
    if problem:
        raise ParameterError(f"parameter 'provider_options_json': {problem}")
    return options


def declare_swarm(node: Node) -> tuple[list[str], list[int]]:
    """The drone list every node of a swarm gets from the plan: names and their wire ids."""
    names = list(declare(node, 'drone_names'))
    ids = [int(i) for i in declare(node, 'drone_ids')]
    if len(names) != len(ids) or not names:
        raise ParameterError(f"parameters 'drone_names' and 'drone_ids' must be non-empty and of equal "
                             f'length (got {len(names)} and {len(ids)})')
    if len(set(ids)) != len(ids) or any(not 0 <= i < 255 for i in ids):
        raise ParameterError(f"parameter 'drone_ids': ids must be distinct and in 0..254, got {ids}")
    return names, ids


def declare_qos(node: Node, name: str) -> QoSProfile:
    """A named QoS profile (`qos.<name>.*`, swarm.qos.<name> in the config)."""
    rel, dep, dur = (declare(node, f'qos.{name}.{key}') for key in ('reliability', 'depth', 'durability'))
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=dep,
        reliability=ReliabilityPolicy.RELIABLE if rel == 'reliable' else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE if dur == 'volatile' else DurabilityPolicy.TRANSIENT_LOCAL)


def declare_codec(node: Node) -> tuple[dict[str, str], TensorLimits]:
    """The wire dtypes and the tensor limits (swarm.codec in the config)."""
    dtypes = {key: declare(node, f'codec.{key}')
              for key in ('query_dtype', 'score_dtype', 'feature_dtype', 'patch_dtype', 'value_dtype', 'local_dtype')}
    limits = TensorLimits(**{key: declare(node, f'codec.{key}') for key in ('max_elements', 'max_rank', 'max_dim')})
    return dtypes, limits


# ---------------------------------------------------------------------------------------------- stamps
def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int, stamp) -> Any:
    stamp.sec, stamp.nanosec = divmod(int(ns), 1_000_000_000)
    return stamp


# ---------------------------------------------------------------------------------------------- images
_CHANNELS = {'rgb8': (3, np.uint8), 'bgr8': (3, np.uint8), 'mono8': (1, np.uint8), '32FC1': (1, np.float32)}


def image_to_array(msg: Image, expect: Sequence[str] = ('rgb8',)) -> np.ndarray:
    """sensor_msgs/Image -> numpy (H, W, C) or (H, W), validated; raises ValueError naming the field."""
    if msg.encoding not in expect or msg.encoding not in _CHANNELS:
        raise ValueError(f'image.encoding: {msg.encoding!r}, expected one of {", ".join(expect)}')
    channels, dtype = _CHANNELS[msg.encoding]
    row = msg.width * channels * np.dtype(dtype).itemsize
    if msg.height == 0 or msg.width == 0:
        raise ValueError(f'image: empty {msg.width}x{msg.height}')
    if msg.step < row:
        raise ValueError(f'image.step: {msg.step} < {row} bytes per row')
    if len(msg.data) != msg.step * msg.height:
        raise ValueError(f'image.data: {len(msg.data)} bytes, expected step*height = {msg.step * msg.height}')
    if msg.is_bigendian and np.dtype(dtype).itemsize > 1:
        raise ValueError('image.is_bigendian: big-endian images are not supported')
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)[:, :row]
    arr = np.ascontiguousarray(rows).view(dtype).reshape(msg.height, msg.width, channels)
    if msg.encoding == 'bgr8':
        arr = arr[:, :, ::-1]
    return arr[:, :, 0] if channels == 1 else arr


def array_to_image(arr: np.ndarray, encoding: str, header=None) -> Image:
    channels, dtype = _CHANNELS[encoding]
    arr = np.ascontiguousarray(arr, dtype=dtype)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * channels * np.dtype(dtype).itemsize
    msg.data = array.array('B', arr.tobytes())  # array.array: a memcpy (bytes would be checked per element)
    return msg


# ---------------------------------------------------------------------------------------------- inputs
def resolve_type(name: str):
    """'sensor_msgs/msg/Image' (or 'sensor_msgs/Image') -> the message class."""
    parts = name.split('/')
    if len(parts) == 2:
        parts = [parts[0], 'msg', parts[1]]
    if len(parts) != 3 or not all(parts):
        raise ValueError(f'message type {name!r}: expected package/msg/Type')
    try:
        return getattr(importlib.import_module(f'{parts[0]}.{parts[1]}'), parts[2])
    except (ImportError, AttributeError):
        raise ValueError(f'message type {name!r} cannot be imported') from None


# The ROS message of each comm kind (runtime/topics.COMM_MSG_TYPES).
COMM_TYPES = {kind: resolve_type(name) for kind, name in topics.COMM_MSG_TYPES.items()}


def pose_values(msg: PoseStamped) -> list[float]:
    """A camera pose as the protocols take it: position x, y, z, then orientation x, y, z, w."""
    p, o = msg.pose.position, msg.pose.orientation
    return [p.x, p.y, p.z, o.x, o.y, o.z, o.w]


def nav_task_values(msg: NavTask) -> dict:
    """A navigation step's task as the memory protocol takes it; CodecError for a bad goal tensor."""
    goal = decode_tensor(msg.goal, TensorLimits(), 'task.goal', expect_shape=(4, None, None, 3), out_dtype=np.uint8)
    return {'episode': int(msg.episode), 'step': int(msg.step), 'active': bool(msg.active), 'goal': goal}


# stamped input -> (message type, topic, QoS name, conversion that raises ValueError for a bad message)
INPUTS = {
    'image': (Image, topics.IMAGE, 'sensor', lambda m: image_to_array(m, expect=('rgb8', 'bgr8'))),
    'depth': (Image, topics.DEPTH, 'sensor', lambda m: image_to_array(m, expect=('32FC1',))),
    'pose': (PoseStamped, topics.POSE, 'sensor', pose_values),
    'perception': (PerceptionOutput, topics.PERCEPTION, 'local', None),   # decoded by the protocol role
    'camera_info': (CameraInfo, topics.CAMERA_INFO, 'sensor', lambda m: list(m.k)),
    'task': (NavTask, topics.NAV_TASK, 'sensor', lambda m: nav_task_values(m)),
}


def serialized_size(data: bytes, msg_type) -> int:
    """A raw payload's serialized size without the transport's alignment padding: between processes Fast
    DDS pads every payload to a multiple of 4 bytes, so one whose length is a multiple of 4 is serialized
    again to find its size (an undecodable one raises)."""
    if len(data) % 4:
        return len(data)
    return len(serialize_message(deserialize_message(data, msg_type)))


# ---------------------------------------------------------------------------------------------- rejects
class RejectCounter:
    """Counts rejected input by reason and logs the first few of each (then every 100th)."""

    def __init__(self, logger, prefix: str):
        self.logger = logger
        self.prefix = prefix
        self.counts: Counter[str] = Counter()

    def __call__(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        n = self.counts[reason]
        if n <= 3 or n % 100 == 0:
            self.logger.warning(f'{self.prefix}rejected ({reason}, #{n}): {detail}')

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# ---------------------------------------------------------------------------------------------- status
def endpoint_pairs(node: Node) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(topic, matched peers) of each of the node's publishers and of each of its subscriptions."""
    return ([(p.topic_name, p.get_subscription_count()) for p in node.publishers],
            [(s.topic_name, s.get_publisher_count()) for s in node.subscriptions])


def endpoint_diagnostics(node: Node) -> dict[str, str]:
    """The node's name and, per topic it publishes or subscribes, how many peers each endpoint has matched
    (runtime/readiness.py: the camera source starts frame 1 when every planned endpoint is matched)."""
    return {NODE_KEY: node.get_fully_qualified_name(), **endpoint_values(*endpoint_pairs(node))}


class StatusPublisher:
    """A diagnostic_msgs status on /diagnostics every `period_s` (rqt_robot_monitor shows it): what
    `values()` returns as (level, message, key/values), plus the node's matched endpoints.

    It also watches the node's subscriptions: one that for `rematch_after` reports in a row has matched
    fewer publishers than the node's own graph shows on its topic is destroyed and created again, once per
    topic, with a warning: under load Fast DDS can leave a reader unmatched to a writer that matched it
    (docs/RELIABILITY.md, "Fast DDS under load"), and a new reader is discovered afresh. A publisher the
    subscription can never match (another type, incompatible QoS) costs one re-creation and the warning that
    names it."""

    def __init__(self, node: Node, name: str, hardware_id: str,
                 values: Callable[[], tuple[int, str, dict]] = lambda: (DiagnosticStatus.OK, 'ok', {}),
                 period_s: float = 1.0, rematch_after: int = 3):
        self.node, self.name, self.hardware_id, self.values = node, name, hardware_id, values
        self.period_s, self.rematch_after = period_s, rematch_after
        self.short: Counter[str] = Counter()       # topic -> reports in a row short of the graph's publishers
        self.recreated: set[str] = set()
        self.pub = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        node.create_timer(period_s, self.publish)

    def publish(self) -> None:
        self.rematch()
        level, message, values = self.values()
        values = {**{k: str(v) for k, v in values.items()}, **endpoint_diagnostics(self.node)}
        status = DiagnosticStatus(level=level, name=self.name, hardware_id=self.hardware_id, message=message,
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.pub.publish(msg)

    def rematch(self) -> None:
        for sub in list(self.node.subscriptions):
            topic = sub.topic_name
            if topic in INFRASTRUCTURE_TOPICS or topic in self.recreated:
                continue
            graph, matched = self.node.count_publishers(topic), sub.get_publisher_count()
            if matched >= graph:
                self.short.pop(topic, None)
                continue
            self.short[topic] += 1
            if self.short[topic] < self.rematch_after:
                continue
            self.recreated.add(topic)
            self.node.get_logger().warning(
                f'subscription {topic} matched {matched} of the {graph} publishers in the graph for '
                f'{self.short[topic] * self.period_s:g} s: creating it again')
            self.node.destroy_subscription(sub)
            self.node.create_subscription(sub.msg_type, topic, sub.callback, sub.qos_profile,
                                          callback_group=sub.callback_group, raw=sub.raw)


# ---------------------------------------------------------------------------------------------- drone nodes
def accept_run_time_parameters(node: Node, apply: Callable[[str, Any], None], log_prefix: str = '') -> None:
    """Let `ros2 param set` change a node's run-time parameters (schema fields with runtime=True; the others
    are read-only and refused by rclpy): a value is checked against its field, then handed to
    `apply(name, value)`; a bad one is refused with the reason."""
    def on_set(parameters) -> SetParametersResult:
        for p in parameters:
            try:
                spec = parameter_field(p.name)
            except KeyError:
                continue
            if not spec.runtime:
                continue
            try:
                value = check_parameter(p.name, p.value)
            except ParameterError as e:
                return SetParametersResult(successful=False, reason=str(e))
            apply(p.name, value)
            node.get_logger().info(f'{log_prefix}{p.name} set to {value!r}')
        return SetParametersResult(successful=True)
    node.add_on_set_parameters_callback(on_set)


class DroneNode(Node):
    """Base of the per-drone nodes (perception, matcher, fusion): the swarm's drone list, this drone's
    name and wire id, its method from the registry (only the `roles` of the network this node runs), counted
    rejection of bad input, and a diagnostic_msgs status every second on /diagnostics (rqt_robot_monitor) with
    its counters and its matched endpoints."""

    def __init__(self, node_name: str, roles: Sequence[str] = ()):
        super().__init__(node_name)
        self.names, self.ids = declare_swarm(self)
        self.drone = declare(self, 'drone_name')
        self.drone_id = declare(self, 'drone_id')
        if self.drone_id not in self.ids:
            raise ParameterError(f"parameter 'drone_id': {self.drone_id} is not in 'drone_ids' {self.ids}")
        self.method_name = declare(self, 'method', choices=method_names())
        model_dir = declare(self, 'model.dir')
        providers = list(declare(self, 'providers'))
        provider_options = provider_options_parameter(declare(self, 'provider_options_json'))
        threads = declare(self, 'onnx_threads')
        self.method = create_method(self.method_name, model_dir=model_dir, roles=roles, providers=providers,
                                    provider_options=provider_options, threads=threads,
                                    precision=declare(self, 'precision'))
        self.method.warmup()
        self.protocol = protocol_class(self.method.protocol)
        self.dtypes, self.limits = declare_codec(self)
        self.name_of = dict(zip(self.ids, self.names))
        self.log_prefix = f'[{self.drone}] '
        self.reject = RejectCounter(self.get_logger(), self.log_prefix)
        self.status = StatusPublisher(self, f'{self.drone}/{self.get_name()}', self.drone, self.status_values)

    def counters(self) -> dict[str, int]:
        """What this node did so far (subclasses add theirs); published on /diagnostics."""
        return {}

    def apply_at_run_time(self, apply: Callable[[str, Any], None]) -> None:
        """Let `ros2 param set` change this node's run-time parameters (accept_run_time_parameters), applied
        by `apply(name, value)` (the protocol role's `update`)."""
        accept_run_time_parameters(self, apply, self.log_prefix)

    def role_context(self, **params: Any) -> RoleContext:
        """What this node's protocol role gets: the drone, the swarm, the codec and the node's parameters."""
        return RoleContext(self.drone_id, list(self.ids), list(self.names), dict(self.dtypes), self.limits, params)

    # -- the protocol role's inputs and messages
    def subscribe_inputs(self, stamped: Sequence[str], state: Sequence[str], on_frame: Callable[[int, dict], None],
                         qos: dict, decode_local: Optional[Callable[[Any], Any]] = None,
                         on_state: Optional[Callable[[str, Any], None]] = None) -> None:
        """Subscribe to the inputs a protocol role asks for (INPUTS): `on_frame(stamp_ns, {kind: value})` once
        every stamped input of a stamp has arrived (joined by stamp), `on_state(kind, value)` for the latest
        value of a state input. A message that cannot be converted is rejected as `bad_<kind>` (or with the
        codec's reason, for the local perception output that `decode_local` decodes)."""
        joiner = StampJoiner(tuple(stamped), capacity=8) if len(stamped) > 1 else None

        def receive(kind: str, msg) -> None:
            stamp_ns = stamp_to_ns(msg.header.stamp)
            convert = INPUTS[kind][3] or decode_local
            try:
                value = convert(msg)
            except CodecError as e:
                self.reject(e.reason, f'own {kind} of frame {stamp_label(stamp_ns)}: {e}')
                return
            except ValueError as e:
                self.reject(f'bad_{kind}', f'frame {stamp_label(stamp_ns)}: {e}')
                return
            if joiner is None:
                on_frame(stamp_ns, {kind: value})
                return
            joined = joiner.add(kind, stamp_ns, value)
            if joined:
                on_frame(stamp_ns, joined)

        def receive_state(kind: str, msg) -> None:
            on_state(kind, INPUTS[kind][3](msg))

        for kind in stamped:
            msg_type, topic, qos_name, _ = INPUTS[kind]
            self.create_subscription(msg_type, topic, lambda m, k=kind: receive(k, m), qos[qos_name])
        for kind in state:
            msg_type, topic, qos_name, _ = INPUTS[kind]
            self.create_subscription(msg_type, topic, lambda m, k=kind: receive_state(k, m), qos[qos_name])

    def comm_publishers(self, kinds: Sequence[str], qos: QoSProfile) -> dict[tuple[str, int], Any]:
        """(kind, receiver) -> publisher for the comm kinds this node sends, to every other drone."""
        return {(kind, i): self.create_publisher(COMM_TYPES[kind], topics.comm_topic(kind, n), qos)
                for kind in kinds for i, n in zip(self.ids, self.names) if i != self.drone_id}

    def subscribe_comm(self, kinds: Sequence[str], role, on_message: Callable[[str, Any, int, Any, int], None],
                       qos: QoSProfile) -> None:
        """Subscribe raw to the comm kinds a role receives (the request on /swarm/request, the others on this
        drone's own topics): each payload is deserialized, its addressing checked and decoded by
        `role.decode(kind, msg)` here, so that a malformed one is rejected and counted instead of raising
        inside the executor; then `on_message(kind, msg, stamp_ns, decoded, size)`."""
        for kind in kinds:
            def callback(data: bytes, kind: str = kind) -> None:
                got = self.receive(data, COMM_TYPES[kind], kind, decode=lambda m: role.decode(kind, m),
                                   allow_broadcast=kind == 'request')
                if got is not None:
                    on_message(kind, got[0], got[1], got[2], len(data))
            self.create_subscription(COMM_TYPES[kind], topics.comm_topic(kind, self.drone), callback, qos, raw=True)

    def carry_out(self, actions: list, publishers: dict, sent: Optional[Callable[[Send, int], None]] = None) -> list:
        """Publish the role's Send actions and count its Rejects; returns the other actions (results)."""
        rest = []
        for action in actions:
            if isinstance(action, Send):
                msg = COMM_TYPES[action.kind](sender=self.drone_id, receiver=action.receiver)
                ns_to_stamp(action.stamp_ns, msg.header.stamp)
                action.fill(msg)
                payload = serialize_message(msg)
                publishers[(action.kind, action.receiver)].publish(payload)
                if sent is not None:
                    sent(action, len(payload))
                self.get_logger().debug(f'{self.log_prefix}frame {stamp_label(action.stamp_ns)}: {action.kind} '
                                        f'{action.note} -> {self.name_of.get(action.receiver, action.receiver)}')
            elif isinstance(action, Reject):
                self.reject(action.reason, action.detail)
            else:
                rest.append(action)
        return rest

    def status_values(self) -> tuple[int, str, dict]:
        values = {**self.counters(), **{f'rejected.{k}': v for k, v in sorted(self.reject.counts.items())},
                  'rejected': self.reject.total}
        if self.reject.total:
            return DiagnosticStatus.WARN, f'{self.reject.total} rejected', values
        return DiagnosticStatus.OK, 'ok', values

    def receive(self, data: bytes, msg_type, what: str, decode: Callable[[Any], Any],
                allow_broadcast: bool = False) -> Optional[tuple[Any, int, Any]]:
        """Deserialize a raw comm payload, check its addressing and decode it with `decode(msg)`.

        Returns (msg, stamp_ns, decoded), or None after counting and logging why the message was rejected.
        Our own broadcasts coming back to us are dropped silently.
        """
        try:
            msg = deserialize_message(data, msg_type)
        except Exception as e:  # noqa: BLE001 - any undecodable payload is a rejected message
            self.reject('undecodable', f'{what}: {len(data)} bytes do not decode as {msg_type.__name__}: {e}')
            return None
        if allow_broadcast and msg.sender == self.drone_id:
            return None
        stamp_ns = stamp_to_ns(msg.header.stamp)
        try:
            check_addressing(msg.sender, msg.receiver, self.drone_id, self.ids, allow_broadcast=allow_broadcast)
            return msg, stamp_ns, decode(msg)
        except (AddressError, CodecError) as e:
            sender = self.name_of.get(msg.sender, f'id {msg.sender}')
            self.reject(e.reason, f'{what} from {sender} for frame {stamp_label(stamp_ns)}: {e}')
            return None


# ---------------------------------------------------------------------------------------------- main
def spin_nodes(factories: Sequence[Callable[[], Node]], args: Optional[list[str]] = None) -> int:
    """Create the nodes, spin them until shutdown, clean up. Returns the process exit code.

    Each node gets its own single-threaded executor; one node spins in the main thread, several (a drone
    container) each in their own thread, so perception's inference never holds up the matcher and fusion. (rclpy's
    MultiThreadedExecutor.shutdown destroys its guard condition before its worker threads finish, which
    makes in-flight callbacks fail at every shutdown; one thread per node avoids that and keeps each node's
    callbacks mutually exclusive.)

    A node that cannot start (bad parameter, missing model, unreachable server) logs why and the process
    exits with 2, so the launcher reports it by name. SIGINT / SIGTERM end the spin; the nodes' `close()`
    then runs while the context is still valid (the monitor writes its summary and can still log), and only
    then are the DDS entities destroyed and rclpy shut down, under a watchdog that ends the process with
    TEARDOWN_SIGNAL if Fast DDS deadlocks there (runtime/lifecycle.py). A node whose `finished` attribute
    becomes True (the camera source after its last frame) ends the spin with exit code 0. An exception
    escaping a callback is a bug: the process exits non-zero with its traceback, and the launcher reports it.
    """
    rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    failure: list[BaseException] = []
    signalled: list[int] = []

    def on_signal(signum, _frame):
        # a handler runs in the main thread between bytecodes, possibly inside stop.wait() holding the lock
        # that stop.set() takes: it only records the signal, and stopping() sets the event outside it
        signalled.append(signum)

    def stopping() -> bool:
        if signalled and not stop.is_set():
            stop.set()
        return stop.is_set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    # SIGUSR1 prints every thread's Python stack to stderr, even while blocked in C: the launcher sends it
    # to a process that ignored SIGINT and SIGTERM before it kills it, so the log says where it hung.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    nodes: list[Node] = []
    executors: list[SingleThreadedExecutor] = []

    def spin(executor: SingleThreadedExecutor) -> None:
        try:
            while not stop.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=0.1)
        except ExternalShutdownException:
            pass
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            failure.append(e)
        finally:
            stop.set()

    try:
        try:
            for factory in factories:
                nodes.append(factory())
        except (ParameterError, ValueError, OSError, ImportError) as e:
            rclpy.logging.get_logger('collab_perception').fatal(f'cannot start: {e}')
            return 2
        for n in nodes:
            executor = SingleThreadedExecutor()
            executor.add_node(n)
            executors.append(executor)
        if len(nodes) == 1:
            # One node spins in the main thread: clients that bind an event loop to the thread that made
            # them (the AirSim msgpack-rpc client) keep working, and signals are handled between spins.
            while not stopping() and rclpy.ok() and not getattr(nodes[0], 'finished', False):
                try:
                    executors[0].spin_once(timeout_sec=0.1)
                except ExternalShutdownException:
                    break
        else:
            threads = [threading.Thread(target=spin, args=(e,), name=f'spin-{n.get_name()}', daemon=True)
                       for n, e in zip(nodes, executors)]
            for t in threads:
                t.start()
            while not stopping():
                if any(getattr(n, 'finished', False) for n in nodes):
                    stop.set()
                stop.wait(0.05)
            for t in threads:
                t.join()
        for executor in executors:
            executor.shutdown(timeout_sec=1.0)
        if failure:
            raise failure[0]
        return 0
    finally:
        for n in reversed(nodes):
            close = getattr(n, 'close', None)
            if close is not None:
                try:
                    close()
                except Exception as e:  # noqa: BLE001 - report, keep shutting down the others
                    n.get_logger().error(f'error while closing: {e}')
        # The DDS teardown runs under a kernel-level watchdog: it can deadlock inside Fast DDS, holding the
        # GIL (runtime/lifecycle.py), so only a signal with its default action can end the process then.
        faulthandler.dump_traceback_later(max(TEARDOWN_TIMEOUT_S - 1, 1), exit=False)
        signal.signal(TEARDOWN_SIGNAL, signal.SIG_DFL)
        signal.alarm(TEARDOWN_TIMEOUT_S)
        for n in reversed(nodes):
            n.destroy_node()
        rclpy.try_shutdown()
        signal.alarm(0)
        faulthandler.cancel_dump_traceback_later()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
