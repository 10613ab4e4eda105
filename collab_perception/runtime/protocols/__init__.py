"""Communication protocols as strategies: what a drone does with each input in each of its three roles.

A method (runtime/methods.py) says which protocol it speaks (`Method.protocol`); the perception, matcher
and fusion nodes create that protocol's role objects and only route messages to and from them:

    perception  PerceptionRole   sensor inputs of one stamp -> own output (local topic) and, when the drone
                                 asks for help, a Request
    matcher     SupporterRole    own inputs per stamp + comm messages addressed to this drone -> Send actions
    fusion      RequesterRole    own output + comm messages -> Send actions and one FrameResult per frame

Roles take and return plain values and message-shaped objects (the nodes build the ROS messages and hand
them over to be filled or read), so tests drive every protocol without ROS. Adding a protocol is a module
with a `Protocol` subclass registered here by name (docs/ARCHITECTURE.md, "Adding a protocol").
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from ...registry import Registry
from ..codec import TensorLimits
from ..topics import REQUEST, comm_topic

# Inputs a role can ask its node for: the drone's camera streams (joined by stamp), the camera model (latest
# value, no stamp) and the drone's own perception output (the local topic).
STAMPED_INPUTS = ('image', 'depth', 'pose', 'perception')
STATE_INPUTS = ('camera_info',)


def stamp_label(ns: int) -> str:
    """A short frame name for logs: seconds.milliseconds of the stamp."""
    return f'{ns // 1_000_000_000}.{(ns // 1_000_000) % 1000:03d}'


@dataclass
class Send:
    """Publish one comm message: the node builds a message of `kind`, sets its stamp, sender and receiver,
    lets `fill` set the payload fields, and publishes it on the receiver's topic."""

    kind: str
    receiver: int
    stamp_ns: int
    fill: Callable[[Any], None]
    note: str = ''                  # for the node's debug log


@dataclass
class Reject:
    """An input the role cannot use; the node counts it by `reason` and logs `detail`."""

    reason: str
    detail: str


@dataclass
class FrameResult:
    """The requester's output for one frame: its class map and what happened (FusionInfo's fields)."""

    outcome: Any                    # runtime.handshake.FrameOutcome
    classes: Any                    # [H, W] uint8; None for a protocol whose result is not a class map
    summary: str = ''               # who helped, for the log line (e.g. 'selected drone2', 'cells drone2:14')
    output: Optional[Callable[[Any], None]] = None   # fills the protocol's `output` message (None: none)


@dataclass
class RoleContext:
    """What every role gets from its node: who it is, the swarm, the wire settings and its parameters."""

    drone_id: int
    ids: Sequence[int]
    names: Sequence[str]
    dtypes: Mapping[str, str]
    limits: TensorLimits
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def peers(self) -> list[int]:
        return sorted(set(self.ids) - {self.drone_id})

    def param(self, name: str):
        """The node's value of a drone parameter, or the config schema's default (config.DRONE_SCHEMA) where
        the node gave none."""
        if name in self.params:
            return self.params[name]
        from ...config import DRONE_SCHEMA
        return DRONE_SCHEMA[name].default

    def name_of(self, drone_id: int) -> str:
        return dict(zip(self.ids, self.names)).get(drone_id, f'id {drone_id}')


class PerceptionRole:
    """Perception's part of a protocol. `inputs`: the stamped inputs it needs (joined by stamp)."""

    inputs: tuple[str, ...] = ('image',)

    def __init__(self, method, ctx: RoleContext):
        self.method, self.ctx = method, ctx

    def warnings(self) -> list[str]:
        """Settings that disagree with the model (logged at start-up)."""
        return []

    def encode(self, inputs: Mapping[str, Any]):
        """The method's encoder output for one stamp; ValueError for an input it cannot use."""
        return self.method.encode(inputs['image'])

    def fill_request(self, out, inputs: Mapping[str, Any], msg: Any) -> None:
        """The Request's payload (query, pose) for a frame this drone asks about; CodecError if it cannot."""
        raise NotImplementedError

    def fill_local(self, out, requested: bool, msg: Any) -> None:
        """PerceptionOutput's tensors (features, key, own_classes) for this drone's matcher and fusion."""
        raise NotImplementedError


class CommRole:
    """What the supporter and requester roles share: the comm kinds they receive (`inbox`) and send
    (`outbox`), decoding, the node's time tick, run-time parameters and counters."""

    inbox: tuple[str, ...] = ()
    outbox: tuple[str, ...] = ()

    def __init__(self, method, ctx: RoleContext):
        self.method, self.ctx = method, ctx

    def decode_local(self, msg: Any) -> Any:
        """This drone's PerceptionOutput as the role needs it; CodecError if it is bad."""
        raise NotImplementedError

    def decode(self, kind: str, msg: Any) -> Any:
        """A received comm message's payload, validated; CodecError naming the field if it is bad."""
        raise NotImplementedError

    def on_message(self, kind: str, msg: Any, stamp_ns: int, payload: Any, now_ns: int) -> list:
        raise NotImplementedError

    def on_time(self, now_ns: int) -> list:
        return []

    def update(self, name: str, value: Any) -> None:
        """A run-time parameter changed (config schema fields with runtime=True); roles that use it apply it."""

    def counters(self) -> dict[str, int]:
        return {}


class SupporterRole(CommRole):
    """The matcher's part: answers other drones' messages (`inbox`) with `Send` actions (`outbox`), from
    this drone's own `inputs` of each stamp (and its `state_inputs`)."""

    inputs: tuple[str, ...] = ('perception',)
    state_inputs: tuple[str, ...] = ()

    def on_state(self, kind: str, value: Any) -> None:
        """The latest value of a state input (camera_info)."""

    def on_own(self, stamp_ns: int, inputs: Mapping[str, Any], now_ns: int) -> list:
        """This drone's inputs of one stamp are complete; returns actions (answers to waiting requests)."""
        raise NotImplementedError


class RequesterRole(CommRole):
    """The fusion node's part: collects what the supporters send for the frames this drone asked about and
    returns one FrameResult per frame."""

    def on_own(self, stamp_ns: int, own: Any, requested: bool, now_ns: int) -> list:
        raise NotImplementedError

    def next_wakeup(self) -> Optional[int]:
        """When `on_time` must next be called (ns), None if no frame is open."""
        return None


class Protocol:
    """A protocol: its role classes and the comm topics a whole swarm of it has."""

    registry_name = 'base'
    perception_role: type = PerceptionRole
    supporter_role: type = SupporterRole
    requester_role: type = RequesterRole
    # the addressed comm kinds (each drone receives them on /<drone>/comm/<kind>); the request is broadcast
    addressed: tuple[str, ...] = ()
    # (local topic, message type) fusion publishes each FrameResult's `output` on; None: segmentation only
    output: Optional[tuple[str, str]] = None
    # a policy node per drone acts on `output` (nodes/policy_node.py: velocity commands)
    policy = False

    @classmethod
    def perception(cls, method, ctx: RoleContext) -> PerceptionRole:
        return cls.perception_role(method, ctx)

    @classmethod
    def supporter(cls, method, ctx: RoleContext) -> SupporterRole:
        return cls.supporter_role(method, ctx)

    @classmethod
    def requester(cls, method, ctx: RoleContext) -> RequesterRole:
        return cls.requester_role(method, ctx)

    @classmethod
    def topology(cls, drones: Sequence[str], monitor: bool) -> dict[str, tuple[int, int]]:
        """topic -> (publishers, subscribers) of the comm topics when the whole swarm is up: every perception
        node can request and every matcher listens; each addressed kind has the other drones as publishers
        and the receiver (plus the monitor) as subscriber. The camera source waits for this graph before
        frame 1 (a message published before its subscribers match is lost)."""
        n, m = len(drones), int(monitor)
        graph = {REQUEST: (n, n + m)}
        for kind in cls.addressed:
            for d in drones:
                graph[comm_topic(kind, d)] = (n - 1, 1 + m)
        return graph


PROTOCOLS: Registry[Protocol] = Registry('protocol')
register_protocol = PROTOCOLS.register

# Protocol modules register themselves when imported; a drone imports only the one its method speaks.
LAZY_PROTOCOLS = {'handshake': 'who2com', 'spatial': 'mash', 'memory': 'memory'}


def protocol_class(name: str) -> type:
    if name not in PROTOCOLS and name in LAZY_PROTOCOLS:
        importlib.import_module(f'.{LAZY_PROTOCOLS[name]}', __package__)
    return PROTOCOLS.get(name)


def protocol_names() -> list[str]:
    return sorted(set(PROTOCOLS.names()) | set(LAZY_PROTOCOLS))


# ---------------------------------------------------------------------------------------------- shared parts
class CachingSupporter(SupporterRole):
    """A supporter that answers a request from its own output of the request's stamp: a request that
    overtakes that output waits for it until the requester's deadline (runtime.handshake.SupporterCache)
    and one whose deadline has passed is dropped. Subclasses say what an answer is (`answer`)."""

    def __init__(self, method, ctx: RoleContext):
        super().__init__(method, ctx)
        from ..handshake import SupporterCache
        self.cache = SupporterCache(int(ctx.param('cache_frames')))
        self.default_deadline_ns = int(ctx.param('deadline_ms')) * 1_000_000
        self.replies = 0

    def own_value(self, inputs: Mapping[str, Any]) -> Any:
        """What the role keeps per stamp from the joined inputs."""
        return inputs[self.inputs[0]]

    def on_own(self, stamp_ns: int, inputs: Mapping[str, Any], now_ns: int) -> list:
        own = self.own_value(inputs)
        actions = []
        for pending in self.cache.add_own(stamp_ns, own, now_ns):
            actions.extend(self.answer(pending.stamp_ns, pending.sender, pending.query, own))
        return actions

    def request(self, msg: Any, stamp_ns: int, payload: Any, now_ns: int) -> list:
        deadline_ns = (int(msg.deadline_ms) * 1_000_000) or self.default_deadline_ns
        if self.cache.request(stamp_ns, msg.sender, payload, stamp_ns + deadline_ns, now_ns):
            return self.answer(stamp_ns, msg.sender, payload, self.cache.own(stamp_ns))
        return []

    def answer(self, stamp_ns: int, requester: int, request: Any, own: Any) -> list:
        raise NotImplementedError

    def on_time(self, now_ns: int) -> list:
        self.cache.expire(now_ns)
        return []

    def counters(self) -> dict[str, int]:
        return {'replies': self.replies, 'expired_requests': self.cache.counters['expired_requests'],
                'stale_requests': self.cache.counters['stale_requests']}


class TrackedRequester(RequesterRole):
    """A requester whose frames run through runtime.handshake.RequesterTracker (collect replies until all
    expected ones are in or the reply timeout, select, connect, collect, fuse or fall back). Subclasses
    decode their messages, feed the tracker and say how a finished frame is fused (`fuse`, `summary`)."""

    spatial = False      # the tracker's mode: replies carry the payload, no connect stage

    def __init__(self, method, ctx: RoleContext):
        super().__init__(method, ctx)
        from ..handshake import RequesterTracker
        p = ctx.param
        self.tracker = RequesterTracker(
            ctx.drone_id, ctx.ids, int(p('deadline_ms')) * 1_000_000, int(p('reply_timeout_ms')) * 1_000_000,
            select=p('select'), top_n=int(p('top_n')), threshold=float(p('score_threshold')),
            capacity=int(p('cache_frames')), spatial=self.spatial)

    def actions(self, tracker_actions: list) -> list:
        """The tracker's Connect and FrameOutcome as Send and FrameResult actions."""
        from ..handshake import Connect, FrameOutcome
        out: list = []
        for action in tracker_actions:
            if isinstance(action, Connect):
                out.extend(Send('connect', r, action.stamp_ns, _no_payload) for r in action.receivers)
            elif isinstance(action, FrameOutcome):
                out.append(FrameResult(action, self.fuse(action), self.summary(action), self.output(action)))
        return out

    def fuse(self, outcome) -> Any:
        raise NotImplementedError

    def summary(self, outcome) -> str:
        return ''

    def output(self, outcome) -> Optional[Callable[[Any], None]]:
        """What fills the protocol's output message for this frame (None: the protocol has none)."""
        return None

    def on_own(self, stamp_ns: int, own: Any, requested: bool, now_ns: int) -> list:
        return self.actions(self.tracker.on_own(stamp_ns, own, requested, own.self_score, now_ns))

    def on_time(self, now_ns: int) -> list:
        return self.actions(self.tracker.on_time(now_ns))

    def next_wakeup(self) -> Optional[int]:
        return self.tracker.next_wakeup()

    def update(self, name: str, value: Any) -> None:
        if name == 'score_threshold':
            self.tracker.threshold = float(value)     # the next frame's selection uses it

    def counters(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.tracker.counters.items()}


def _no_payload(msg: Any) -> None:
    """A message whose header and addressing say everything (Connect)."""
