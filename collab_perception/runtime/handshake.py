"""The per-frame handshake state machines, without ROS (Who2com §III-B: request, match, connect).

RequesterTracker runs on the drone that asks for help (its fusion node); SupporterCache runs on every
drone's matcher. Both are driven by plain method calls with nanosecond times taken from the frame stamps
and the node clock, and they return the actions the node must carry out (publish a Connect, publish a
result). Nodes stay thin, and the tests drive every path, timeouts included, without DDS.

A frame on the requester:

    own output (perception) ---+
    replies (matchers)  -------+--> all expected replies in, or reply deadline --> select --> Connect
    features (selected) -------------> all selected features in, or frame deadline --> fuse / fall back

Late messages for a finished frame are counted and dropped; messages for frames that were never opened
here are counted as unexpected. Memory is bounded by ring buffers keyed by stamp.
"""
from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Optional, TypeVar

import numpy as np

from ..config import reply_timeout_problem
from ..registry import Registry

T = TypeVar('T')


class StampRing(Generic[T]):
    """A bounded map stamp -> value; inserting beyond `capacity` evicts the oldest insertion."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f'capacity must be >= 1, got {capacity}')
        self.capacity = capacity
        self._items: OrderedDict[int, T] = OrderedDict()
        self.evicted = 0

    def put(self, stamp_ns: int, value: T) -> None:
        if stamp_ns in self._items:
            self._items.move_to_end(stamp_ns)
        self._items[stamp_ns] = value
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
            self.evicted += 1

    def get(self, stamp_ns: int, default: Optional[T] = None) -> Optional[T]:
        return self._items.get(stamp_ns, default)

    def pop(self, stamp_ns: int, default: Optional[T] = None) -> Optional[T]:
        return self._items.pop(stamp_ns, default)

    def __contains__(self, stamp_ns: int) -> bool:
        return stamp_ns in self._items

    def __len__(self) -> int:
        return len(self._items)

    def items(self):
        return list(self._items.items())


# ---------------------------------------------------------------------------------------------- selection
def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def select_argmax(scores: dict[int, float], self_score: Optional[float], top_n: int, threshold: float) -> list[int]:
    """Who2com Eq. 6: connect to the single best-scoring supporter."""
    if not scores:
        return []
    return [max(sorted(scores), key=lambda i: scores[i])]


def select_top_n(scores: dict[int, float], self_score: Optional[float], top_n: int, threshold: float) -> list[int]:
    """Who2com footnote 1: the n best supporters, best first."""
    return sorted(sorted(scores), key=lambda i: -scores[i])[:top_n]


def select_threshold(scores: dict[int, float], self_score: Optional[float], top_n: int,
                     threshold: float) -> list[int]:
    """When2com-style gate: softmax over [self; supporters]; connect to supporters whose normalized score
    passes the threshold (at most top_n, best first). With a self-score the requester may connect to no
    one, which saves all value bytes for the frame."""
    if not scores:
        return []
    ids = sorted(scores)
    raw = np.array(([self_score] if self_score is not None else []) + [scores[i] for i in ids], dtype=np.float64)
    probs = _softmax(raw)
    supporter_probs = probs[1:] if self_score is not None else probs
    chosen = [i for i, p in zip(ids, supporter_probs) if p >= threshold]
    return sorted(chosen, key=lambda i: -scores[i])[:top_n]


SELECTORS: Registry[list[int]] = Registry('selection')
SELECTORS.register('argmax')(select_argmax)
SELECTORS.register('top_n')(select_top_n)
SELECTORS.register('threshold')(select_threshold)


def get_selector(name: str) -> Callable[..., list[int]]:
    return SELECTORS.get(name)


# ---------------------------------------------------------------------------------------------- requester
@dataclass
class FrameOutcome:
    """What the requester publishes for one frame."""

    stamp_ns: int
    own: Any                              # the perception output of this drone for the frame
    requested: bool
    asked: list[int]
    scores: dict[int, float]              # replies that arrived in time
    selected: list[int]
    received: dict[int, Any]              # sender -> decoded features that arrived in time
    fallback: bool                        # wanted help, got none usable: own prediction only
    deadline_met: bool                    # everything expected arrived before the deadline
    reason: str = ''                      # why it ended this way (for logs)


@dataclass
class _RequesterFrame:
    stamp_ns: int
    own: Any = None
    have_own: bool = False
    requested: bool = False
    self_score: Optional[float] = None
    asked: list[int] = field(default_factory=list)
    scores: dict[int, float] = field(default_factory=dict)
    selected: list[int] = field(default_factory=list)
    received: dict[int, Any] = field(default_factory=dict)
    phase: str = 'collecting'             # collecting -> connecting -> done


@dataclass
class Connect:
    stamp_ns: int
    receivers: list[int]


class RequesterTracker:
    """Handshake state for the frames of one requesting drone.

    Call `on_own` when the drone's own perception output arrives, `on_reply` / `on_features` for
    validated comm messages, and `on_time(now_ns)` at (or after) the times `next_wakeup()` gives.
    Each returns a list of actions: `Connect` (send a Connect to these drones) and `FrameOutcome`
    (publish this frame). Exactly one FrameOutcome is produced per frame whose own output arrived.
    """

    def __init__(self, my_id: int, peers: Iterable[int], deadline_ns: int, reply_timeout_ns: int,
                 select: str = 'argmax', top_n: int = 1, threshold: float = 0.0, capacity: int = 16,
                 silent_after: int = 3, spatial: bool = False, max_skew_ns: int = 1_000_000_000):
        self.my_id = my_id
        # spatial (MASH §III): replies carry the payload (warped patches) and there is no connect stage;
        # the frame is fused when every expected supporter answered, or at the reply timeout.
        self.spatial = spatial
        # a protocol in which supporters send only when they match (CollaVN's select): no reply is an
        # answer, so the frame is neither a fallback nor late for it
        self.silence_expected = False
        self.peers = sorted(set(peers) - {my_id})
        problem = reply_timeout_problem(reply_timeout_ns // 1_000_000, deadline_ns // 1_000_000)
        if problem:
            raise ValueError(problem)
        self.deadline_ns = deadline_ns
        self.reply_timeout_ns = reply_timeout_ns
        self.selector = get_selector(select)
        self.top_n = top_n
        self.threshold = threshold
        self.silent_after = silent_after
        # A reply may open a frame before the drone's own output for it (replies can overtake it), but only
        # for a stamp that can still be open (within the deadline, at most max_skew_ns ahead of this clock)
        # and for a few frames at a time: replies with made-up stamps must not evict the real frames.
        self.max_skew_ns = max_skew_ns
        self.max_orphans = max(4, capacity // 4)
        self._frames: StampRing[_RequesterFrame] = StampRing(capacity)
        self._done: StampRing[bool] = StampRing(max(64, 4 * capacity))
        self._missed: Counter[int] = Counter()   # consecutive frames without a reply, per peer
        self.counters: Counter[str] = Counter()

    # -- helpers
    @property
    def _reply_window_ns(self) -> int:
        # spatial frames too stop waiting at the reply timeout: what is left of the deadline is for fusing
        # (a frame fused only at the deadline is published after it, every time a supporter is missing)
        return self.reply_timeout_ns

    def expected_repliers(self) -> list[int]:
        """Peers we wait for; a peer silent for `silent_after` frames is not waited for (still asked)."""
        return [p for p in self.peers if self._missed[p] < self.silent_after]

    def _frame(self, stamp_ns: int, orphan: bool = False) -> Optional[_RequesterFrame]:
        """The frame of this stamp, opened if new; `orphan`: opened by a reply, before the own output."""
        frame = self._frames.get(stamp_ns)
        if frame is None:
            if stamp_ns in self._done:
                self.counters['late'] += 1
                return None
            if orphan:
                frames = list(self._frames.items())
                if len(frames) >= self._frames.capacity or sum(not f.have_own for _, f in frames) >= self.max_orphans:
                    self.counters['orphans_dropped'] += 1      # it would evict a frame, or too many wait
                    return None
            before = self._frames.evicted
            frame = _RequesterFrame(stamp_ns)
            self._frames.put(stamp_ns, frame)
            if self._frames.evicted > before:
                self.counters['evicted_frames'] += 1
        return frame

    def open_frames(self) -> list[int]:
        return [s for s, f in self._frames.items() if f.phase != 'done']

    def next_wakeup(self) -> Optional[int]:
        times = []
        for stamp, frame in self._frames.items():
            if frame.phase == 'collecting':
                times.append(stamp + self._reply_window_ns)
            elif frame.phase == 'connecting':
                times.append(stamp + self.deadline_ns)
        return min(times) if times else None

    # -- events
    def on_own(self, stamp_ns: int, own: Any, requested: bool, self_score: Optional[float] = None,
               now_ns: Optional[int] = None) -> list:
        frame = self._frame(stamp_ns)
        if frame is None:
            return []
        if frame.have_own:
            self.counters['duplicate_own'] += 1
            return []
        frame.own, frame.have_own, frame.requested, frame.self_score = own, True, requested, self_score
        if not requested:
            if frame.scores:
                self.counters['unexpected'] += len(frame.scores)
            return [self._finish(frame, fallback=False, deadline_met=True, reason='no request')]
        frame.asked = list(self.peers)
        return self._advance(frame, now_ns)

    def on_reply(self, stamp_ns: int, sender: int, score: float, now_ns: Optional[int] = None,
                 payload: Any = None) -> list:
        if sender not in self.peers:
            self.counters['unknown_sender'] += 1
            return []
        if not math.isfinite(score):
            self.counters['bad_score'] += 1
            return []
        known = self._frames.get(stamp_ns)
        if known is None and now_ns is not None and stamp_ns not in self._done:
            if stamp_ns + self.deadline_ns <= now_ns:
                self.counters['stale_stamp'] += 1          # its frame is over (or never was)
                return []
            if stamp_ns > now_ns + self.max_skew_ns:
                self.counters['future_stamp'] += 1
                return []
        if (known is None and stamp_ns in self._done) or (known is not None and known.phase != 'collecting'):
            self.counters['late'] += 1
            if now_ns is not None and now_ns < stamp_ns + self._reply_window_ns:
                # in time, only no longer waited for (the frame completed without a silent peer): it is
                # back. Without this a peer that once missed `silent_after` frames would stay silent for
                # good, its replies always overtaken by the others', and the frame fused on fewer views.
                self._missed[sender] = 0
            return []
        frame = self._frame(stamp_ns, orphan=True)
        if frame is None:
            return []
        if sender in frame.scores:
            self.counters['duplicate'] += 1
            return []
        frame.scores[sender] = float(score)
        if self.spatial:
            frame.received[sender] = payload
        return self._advance(frame, now_ns)

    def on_features(self, stamp_ns: int, sender: int, features: Any, now_ns: Optional[int] = None) -> list:
        frame = self._frames.get(stamp_ns)
        if frame is None:
            self.counters['late' if stamp_ns in self._done else 'unexpected'] += 1
            return []
        if frame.phase != 'connecting' or sender not in frame.selected:
            self.counters['late' if frame.phase == 'done' else 'unexpected'] += 1
            return []
        if sender in frame.received:
            self.counters['duplicate'] += 1
            return []
        frame.received[sender] = features
        return self._advance(frame, now_ns)

    def on_time(self, now_ns: int) -> list:
        actions = []
        for stamp, frame in self._frames.items():
            if frame.phase == 'done':
                continue
            actions.extend(self._advance(frame, now_ns))
        return actions

    # -- transitions
    def _advance(self, frame: _RequesterFrame, now_ns: Optional[int]) -> list:
        actions: list = []
        if not frame.have_own:
            # Replies may overtake the drone's own perception output; without it nothing can be fused
            # or even published, so the frame waits (and is reported lost if it never comes).
            if now_ns is not None and now_ns >= frame.stamp_ns + self.deadline_ns:
                self.counters['lost_own'] += 1
                frame.phase = 'done'
                self._done.put(frame.stamp_ns, True)
                self._frames.pop(frame.stamp_ns)
            return actions
        if frame.phase == 'collecting':
            expected = set(self.expected_repliers())
            all_in = expected.issubset(frame.scores) and (expected or frame.scores or not self.peers)
            timed_out = now_ns is not None and now_ns >= frame.stamp_ns + self._reply_window_ns
            if not (all_in or timed_out):
                return actions
            for peer in self.peers:
                self._missed[peer] = 0 if peer in frame.scores else self._missed[peer] + 1
            if self.spatial:
                frame.selected = sorted(frame.received)
                reason = 'complete' if all_in else ('deadline: partial patches' if frame.received else 'no replies in time')
                if self.silence_expected and not frame.received:
                    reason = 'nobody sent'
                actions.append(self._finish(frame, fallback=not frame.received and not self.silence_expected,
                                            deadline_met=bool(all_in) or self.silence_expected, reason=reason))
                return actions
            frame.selected = self.selector(frame.scores, frame.self_score, self.top_n, self.threshold)
            if not frame.selected:
                reason = 'no replies in time' if not frame.scores else 'gate chose no partner'
                actions.append(self._finish(frame, fallback=not frame.scores, deadline_met=bool(frame.scores),
                                            reason=reason))
                return actions
            frame.phase = 'connecting'
            actions.append(Connect(frame.stamp_ns, list(frame.selected)))
        if frame.phase == 'connecting':
            complete = set(frame.selected).issubset(frame.received)
            late = now_ns is not None and now_ns >= frame.stamp_ns + self.deadline_ns
            if complete:
                actions.append(self._finish(frame, fallback=False, deadline_met=True, reason='complete'))
            elif late:
                got = bool(frame.received)
                actions.append(self._finish(frame, fallback=not got, deadline_met=False,
                                            reason='deadline: partial features' if got else 'deadline: no features'))
        return actions

    def _finish(self, frame: _RequesterFrame, fallback: bool, deadline_met: bool, reason: str) -> FrameOutcome:
        frame.phase = 'done'
        self._frames.pop(frame.stamp_ns)
        self._done.put(frame.stamp_ns, True)
        self.counters['frames'] += 1
        if fallback:
            self.counters['fallback'] += 1
        return FrameOutcome(frame.stamp_ns, frame.own, frame.requested, list(frame.asked), dict(frame.scores),
                            list(frame.selected), dict(frame.received), fallback, deadline_met, reason)


# ---------------------------------------------------------------------------------------------- supporter
@dataclass
class PendingRequest:
    stamp_ns: int
    sender: int
    query: Any
    expires_ns: int


class SupporterCache:
    """A matcher's memory: its own outputs per stamp, and requests that arrived before its own output.

    `add_own` returns the pending requests for that stamp that can now be answered; `request` returns
    True when the request can be answered at once (own output cached), else parks it until
    `expires_ns` (the requester's deadline); `expire(now_ns)` drops parked requests that are too old.
    Given `now_ns`, `request` and `add_own` also drop requests whose deadline has passed (counted as
    `stale_requests`): an answer to them is discarded by the requester, and a supporter that was stalled
    (paused, overloaded) would otherwise spend its next seconds on a backlog of them while the frames
    that can still be helped wait.
    """

    def __init__(self, capacity: int = 16, max_pending: int = 64):
        self._own: StampRing[Any] = StampRing(capacity)
        self._pending: list[PendingRequest] = []
        self.max_pending = max_pending
        self.counters: Counter[str] = Counter()

    def add_own(self, stamp_ns: int, own: Any, now_ns: Optional[int] = None) -> list[PendingRequest]:
        self._own.put(stamp_ns, own)
        ready = [p for p in self._pending if p.stamp_ns == stamp_ns]
        self._pending = [p for p in self._pending if p.stamp_ns != stamp_ns]
        if now_ns is not None:
            live = [p for p in ready if p.expires_ns > now_ns]
            self.counters['stale_requests'] += len(ready) - len(live)
            ready = live
        return ready

    def own(self, stamp_ns: int) -> Any:
        return self._own.get(stamp_ns)

    def request(self, stamp_ns: int, sender: int, query: Any, expires_ns: int, now_ns: Optional[int] = None) -> bool:
        if now_ns is not None and now_ns >= expires_ns:
            self.counters['stale_requests'] += 1
            return False
        if stamp_ns in self._own:
            return True
        if len(self._pending) >= self.max_pending:
            self._pending.pop(0)
            self.counters['pending_dropped'] += 1
        self._pending.append(PendingRequest(stamp_ns, sender, query, expires_ns))
        return False

    def expire(self, now_ns: int) -> int:
        before = len(self._pending)
        self._pending = [p for p in self._pending if p.expires_ns > now_ns]
        dropped = before - len(self._pending)
        self.counters['expired_requests'] += dropped
        return dropped

    @property
    def pending(self) -> list[PendingRequest]:
        return list(self._pending)


# ---------------------------------------------------------------------------------------------- addressing
class AddressError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def check_addressing(sender: int, receiver: int, my_id: int, known_ids: Iterable[int],
                     allow_broadcast: bool, broadcast_id: int = 255) -> None:
    """Raise AddressError unless a comm message comes from another known drone and is meant for us."""
    known = set(known_ids)
    if sender not in known:
        raise AddressError('unknown_sender', f'sender {sender} is not a drone of this swarm ({sorted(known)})')
    if sender == my_id:
        raise AddressError('own_message', f'sender {sender} is this drone')
    if receiver == my_id or (allow_broadcast and receiver == broadcast_id):
        return
    raise AddressError('not_for_me', f'receiver {receiver} is not this drone ({my_id})')
