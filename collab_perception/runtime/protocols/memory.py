"""The memory-augmented handshake (CollaVN §4): every drone asks and answers at every navigation step.

    perception  the step's panorama, pose and task (episode, goal) -> context, query, key and value, and the
                own read of its private memory (Eq. 5, 8-9); an active drone of a communicating model
                broadcasts its query (role `auto`: the model decides); the step's key and value are stored
    supporter   scores each query against its current key and every key it stored this episode (Eq. 6-7)
                and sends a MemoryValue (score, attention-weighted value) only when the score passes the
                model's threshold (Eq. 10): when nothing matches, nobody sends
    requester   collects the values until every other drone answered or the deadline (a silent supporter
                is the rule here, not a fault, so it is always waited for), fuses them weighted by score
                (Eq. 11) and hands the step to the policy node (NavStep on nav/step)

Memories are per episode: a drone's perception and its matcher each keep the same keys and values (the
matcher's from the local perception output) and clear them when the task's episode changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from ..codec import CodecError, decode_tensor, encode_tensor
from ..memory import EpisodeMemory, fuse, match
from ..topics import NAV_STEP
from . import CachingSupporter, PerceptionRole, Protocol, Send, TrackedRequester, register_protocol

_NO_CLASSES = np.zeros((0, 0), np.uint8)


@dataclass
class NavStepOutput:
    """Perception's result for one step (what fill_request / fill_local send)."""
    episode: int
    active: bool
    context: np.ndarray
    query: np.ndarray
    key: np.ndarray
    value: np.ndarray
    own_read: np.ndarray
    needs_help: bool               # role auto: an active drone of a communicating model asks every step
    self_score: Optional[float] = None


@dataclass
class NavLocal:
    """A drone's own perception output as its matcher and fusion decode it."""
    episode: int
    active: bool
    key: np.ndarray
    value: np.ndarray
    context: np.ndarray
    own_read: np.ndarray
    self_score: Optional[float] = None


def panorama_views(image: np.ndarray, size: int) -> np.ndarray:
    """A (S, 4S, 3) panorama (views E, N, W, S side by side) -> (4, S, S, 3); ValueError if it is not one."""
    if image.ndim != 3 or image.shape[0] != size or image.shape[1] != 4 * size or image.shape[2] != 3:
        raise ValueError(f'panorama: expected {size}x{4 * size} rgb (four {size}-pixel views side by side), '
                         f'got shape {list(image.shape)}')
    return np.ascontiguousarray(image.reshape(size, 4, size, 3).transpose(1, 0, 2, 3))


class MemoryPerception(PerceptionRole):
    inputs = ('image', 'pose', 'task')

    def __init__(self, method, ctx):
        super().__init__(method, ctx)
        self.observer = method.observer()
        self.episode: Optional[int] = None
        self.region_m = float(method.info['region_m'])

    def encode(self, inputs: Mapping[str, Any]) -> NavStepOutput:
        task = inputs['task']
        size = self.method.image_size
        if task['episode'] != self.episode:
            goal = task['goal']
            if goal.shape != (4, size, size, 3):
                raise ValueError(f'task.goal: expected [4, {size}, {size}, 3], got {list(goal.shape)}')
            self.observer.reset(self.observer.encode(goal))
            self.episode = task['episode']
        views = panorama_views(inputs['image'], size)
        x, y = inputs['pose'][:2]
        step = self.observer.observe(self.observer.encode(views), (x / self.region_m, y / self.region_m))
        self.observer.store(step)
        active = bool(task['active'])
        return NavStepOutput(self.episode, active, step.context, step.query, step.key, step.value, step.own_read,
                             needs_help=active and self.method.communicates)

    def fill_request(self, out: NavStepOutput, inputs: Mapping[str, Any], msg: Any) -> None:
        encode_tensor(out.query, self.ctx.dtypes['query_dtype'], msg.query, 'request.query')
        msg.pose = []

    def fill_local(self, out: NavStepOutput, requested: bool, msg: Any) -> None:
        # float32 inside the drone: the policy and the matcher see exactly what the offline agent does
        msg.episode, msg.active = out.episode, out.active
        encode_tensor(out.key, 'float32', msg.key, 'key')
        encode_tensor(out.value, 'float32', msg.features, 'features')
        encode_tensor(out.context, 'float32', msg.context, 'context')
        encode_tensor(out.own_read, 'float32', msg.own_read, 'own_read')
        encode_tensor(_NO_CLASSES, 'uint8', msg.own_classes, 'own_classes')


def decode_local(method, ctx, msg: Any) -> NavLocal:
    lim, v = ctx.limits, method.value_dim
    return NavLocal(episode=int(msg.episode), active=bool(msg.active),
                    key=decode_tensor(msg.key, lim, 'perception.key', expect_shape=(method.query_dim,)),
                    value=decode_tensor(msg.features, lim, 'perception.features', expect_shape=(v,)),
                    context=decode_tensor(msg.context, lim, 'perception.context', expect_shape=(method.context_dim,)),
                    own_read=decode_tensor(msg.own_read, lim, 'perception.own_read', expect_shape=(v,)))


class MemorySupporter(CachingSupporter):
    """Answers queries from this drone's keys and values of the current episode."""

    inputs = ('perception',)
    inbox = ('request',)
    outbox = ('value',)

    def __init__(self, method, ctx):
        super().__init__(method, ctx)
        self.episode: Optional[int] = None
        self.history: list[tuple[int, np.ndarray, np.ndarray]] = []    # (stamp, key, value) of the episode
        self.capacity = method.memory().capacity
        self.silent = 0

    def decode_local(self, msg: Any) -> NavLocal:
        return decode_local(self.method, self.ctx, msg)

    def decode(self, kind: str, msg: Any) -> Any:
        return decode_tensor(msg.query, self.ctx.limits, 'request.query', expect_shape=self.method.query_shape())

    def on_own(self, stamp_ns: int, inputs: Mapping[str, Any], now_ns: int) -> list:
        own: NavLocal = inputs['perception']
        if own.episode != self.episode:
            self.episode, self.history = own.episode, []
        self.history.append((stamp_ns, own.key, own.value))
        del self.history[:-self.capacity]
        return super().on_own(stamp_ns, inputs, now_ns)

    def on_message(self, kind: str, msg: Any, stamp_ns: int, payload: Any, now_ns: int) -> list:
        return self.request(msg, stamp_ns, payload, now_ns)

    def memory_before(self, stamp_ns: int, episode: int) -> Optional[EpisodeMemory]:
        """The keys and values this drone stored in `episode` before `stamp_ns` (None: the model has none)."""
        if not self.method.uses_memory:
            return None
        memory = self.method.memory()
        if episode == self.episode:
            for stamp, key, value in self.history:
                if stamp < stamp_ns:
                    memory.store(key, value)
        return memory

    def answer(self, stamp_ns: int, requester: int, query: np.ndarray, own: NavLocal) -> list:
        score, value = match(query, own.key, own.value, self.memory_before(stamp_ns, own.episode))
        if score < self.method.threshold:
            self.silent += 1
            return []
        self.replies += 1

        def fill(m: Any) -> None:
            m.score = float(score)
            encode_tensor(value, self.ctx.dtypes['value_dtype'], m.value, 'value')
        return [Send('value', requester, stamp_ns, fill, f'score {score:.2f}')]

    def counters(self) -> dict[str, int]:
        return {**super().counters(), 'silent': self.silent}


class MemoryRequester(TrackedRequester):
    inbox = ('value',)
    spatial = True          # the replies carry the values; no connect stage

    def __init__(self, method, ctx):
        super().__init__(method, ctx)
        # silence means "nothing matched", not a lost drone: always waited for, never a fallback
        self.tracker.silent_after = 1 << 30
        self.tracker.silence_expected = True

    def decode_local(self, msg: Any) -> NavLocal:
        return decode_local(self.method, self.ctx, msg)

    def decode(self, kind: str, msg: Any) -> tuple[float, np.ndarray]:
        score = float(msg.score)
        if not np.isfinite(score) or not 0.0 <= score <= 1.0:
            raise CodecError('value.score', 'bad_score', f'{score!r} is not a score in 0..1')
        return score, decode_tensor(msg.value, self.ctx.limits, 'value.value', expect_shape=(self.method.value_dim,))

    def on_message(self, kind: str, msg: Any, stamp_ns: int, payload: Any, now_ns: int) -> list:
        return self.actions(self.tracker.on_reply(stamp_ns, msg.sender, payload[0], now_ns, payload=payload))

    def fuse(self, outcome) -> None:
        return None            # no class map: the step goes to the policy (output)

    def output(self, outcome):
        own: NavLocal = outcome.own
        received, got = fuse([outcome.received[s] for s in sorted(outcome.received)], self.method.value_dim)

        def fill(m: Any) -> None:
            m.drone, m.episode, m.active, m.received_any = self.ctx.drone_id, own.episode, own.active, got
            encode_tensor(own.context, 'float32', m.context, 'context')
            encode_tensor(own.own_read, 'float32', m.own_read, 'own_read')
            encode_tensor(received, 'float32', m.received, 'received')
        return fill

    def summary(self, outcome) -> str:
        values = ','.join(f'{self.ctx.name_of(i)}:{v[0]:.2f}' for i, v in sorted(outcome.received.items()))
        return f'values {values or "none"}'


@register_protocol('memory')
class Memory(Protocol):
    perception_role = MemoryPerception
    supporter_role = MemorySupporter
    requester_role = MemoryRequester
    addressed = ('value',)
    # fusion publishes each step here for the policy node (nodes/policy_node.py), which acts on it
    output = (NAV_STEP, 'collab_perception/msg/NavStep')
    policy = True
