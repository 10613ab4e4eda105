"""Bandwidth accounting: serialized bytes per frame stamp, sender and topic (ROS-free).

The monitor node feeds every raw message it receives into a BandwidthLedger with two sizes:
  bytes       the serialized CDR message, exactly what `rclpy.serialization.serialize_message` returns; the
              number every report of this project uses (the monitor, fusion/info, the offline accounting)
  wire bytes  the DDS payload as delivered between processes, which Fast DDS pads to a multiple of 4
              (at most 3 bytes more; what `ros2 topic bw` would count). RTPS/UDP headers are in neither.

Memory stays bounded on long flights: per-frame detail is kept only for frames seen within
`horizon_ns` (receive time); older frames are folded into the running totals and handed to the caller
(who writes them as CSV rows). Rates for rqt_plot come from a sliding window (a deque, not list.pop(0):
ros2cli's `bw` verb was slow for exactly that reason).
"""
from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from typing import Iterable, Optional

from .topics import COMM_KINDS, topic_kind

CSV_FIELDS = ('stamp_ns', 'sender', 'topic', 'kind', 'messages', 'bytes')


@dataclass
class FrameRow:
    stamp_ns: int
    sender: str
    topic: str
    kind: str
    messages: int
    bytes: int

    def as_list(self) -> list:
        return [self.stamp_ns, self.sender, self.topic, self.kind, self.messages, self.bytes]


class _Tally:
    __slots__ = ('messages', 'bytes')

    def __init__(self):
        self.messages = 0
        self.bytes = 0

    def add(self, messages: int, nbytes: int) -> None:
        self.messages += messages
        self.bytes += nbytes


class BandwidthLedger:
    def __init__(self, horizon_ns: int = 5_000_000_000, window_ns: int = 5_000_000_000):
        self.horizon_ns = horizon_ns
        self.window_ns = window_ns
        # stamp -> (first receive time, {(sender, topic): tally})
        self._open: dict[int, tuple[int, dict[tuple[str, str], _Tally]]] = {}
        self._window: deque = deque()        # (recv_ns, stamp_ns, sender, topic, kind, nbytes)
        self._frames_seen: set[int] = set()  # every stamp ever seen (8 bytes each: fine for hours)
        self._frame_markers: set[int] = set()
        self._frame_window: deque = deque()  # (recv_ns, stamp_ns) of frame markers
        self.per_topic: dict[str, _Tally] = defaultdict(_Tally)
        self.per_sender: dict[str, _Tally] = defaultdict(_Tally)
        self.per_kind: dict[str, _Tally] = defaultdict(_Tally)
        self.per_pair: dict[tuple[str, str], _Tally] = defaultdict(_Tally)
        self.total = _Tally()
        self.wire_per_topic: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.first_recv_ns: Optional[int] = None
        self.last_recv_ns: Optional[int] = None

    # ------------------------------------------------------------------ input
    def _touch(self, recv_ns: int) -> None:
        if self.first_recv_ns is None:
            self.first_recv_ns = recv_ns
        self.last_recv_ns = recv_ns

    def record(self, topic: str, sender: str, stamp_ns: int, nbytes: int, recv_ns: int,
               wire_nbytes: Optional[int] = None) -> None:
        """One message of `nbytes` serialized bytes (`wire_nbytes` as delivered), for frame `stamp_ns`,
        sent by `sender`."""
        self._touch(recv_ns)
        self.wire_per_topic[topic] += nbytes if wire_nbytes is None else wire_nbytes
        kind = topic_kind(topic)
        entry = self._open.get(stamp_ns)
        if entry is None:
            entry = (recv_ns, {})
            self._open[stamp_ns] = entry
        entry[1].setdefault((sender, topic), _Tally()).add(1, nbytes)
        self._frames_seen.add(stamp_ns)
        self.total.add(1, nbytes)
        self.per_topic[topic].add(1, nbytes)
        self.per_sender[sender].add(1, nbytes)
        self.per_kind[kind].add(1, nbytes)
        self.per_pair[(sender, topic)].add(1, nbytes)
        self._window.append((recv_ns, stamp_ns, sender, topic, kind, nbytes))

    def add_frame(self, stamp_ns: int, recv_ns: int) -> None:
        """A camera snapshot happened (counts as a frame even if no comm message carries its stamp)."""
        self._touch(recv_ns)
        self._frames_seen.add(stamp_ns)
        self._frame_markers.add(stamp_ns)
        self._frame_window.append((recv_ns, stamp_ns))

    def reject(self, topic: str, reason: str) -> None:
        self.rejected[f'{topic}: {reason}'] += 1

    # ------------------------------------------------------------------ output
    @property
    def frames(self) -> int:
        """Camera frames: the stamps of the frame markers when a source publishes them (messages with other
        stamps, e.g. injected or malformed ones, still count as bytes but are not frames); otherwise every
        stamp seen on the measured topics."""
        return len(self._frame_markers) if self._frame_markers else len(self._frames_seen)

    def fold(self, now_ns: Optional[int] = None) -> list[FrameRow]:
        """Close the frames first seen more than `horizon_ns` before `now_ns` (all if None) and return
        their rows, ordered by stamp."""
        rows: list[FrameRow] = []
        for stamp in sorted(self._open):
            first, tallies = self._open[stamp]
            if now_ns is not None and now_ns - first < self.horizon_ns:
                continue
            for (sender, topic), tally in sorted(tallies.items()):
                rows.append(FrameRow(stamp, sender, topic, topic_kind(topic), tally.messages, tally.bytes))
            del self._open[stamp]
        return rows

    def window_stats(self, now_ns: int) -> dict:
        """Rates over the last `window_ns`: the plain numbers of a BandwidthStats message."""
        cutoff = now_ns - self.window_ns
        while self._window and self._window[0][0] < cutoff:
            self._window.popleft()
        while self._frame_window and self._frame_window[0][0] < cutoff:
            self._frame_window.popleft()
        stamps = {e[1] for e in self._window} | {s for _, s in self._frame_window}
        frames = len(stamps)
        total = sum(e[5] for e in self._window)
        per_kind: Counter[str] = Counter()
        per_sender: Counter[str] = Counter()
        per_topic: Counter[str] = Counter()
        for _, _, sender, topic, kind, nbytes in self._window:
            per_kind[kind] += nbytes
            per_sender[sender] += nbytes
            per_topic[topic] += nbytes

        def per_frame(x: float) -> float:
            return float(x) / frames if frames else 0.0

        window_s = self.window_ns / 1e9
        senders = sorted(per_sender)
        topics = sorted(per_topic)
        stats = {
            'window_s': window_s,
            'frames': frames,
            'messages': len(self._window),
            'bytes_per_frame': per_frame(total),
            'bytes_per_second': total / window_s,
            'total_bytes': self.total.bytes,
            'total_messages': self.total.messages,
            'rejected_messages': sum(self.rejected.values()),
            'senders': senders,
            'sender_bytes_per_frame': [per_frame(per_sender[s]) for s in senders],
            'topics': topics,
            'topic_bytes_per_frame': [per_frame(per_topic[t]) for t in topics],
        }
        for kind in COMM_KINDS:
            stats[f'{kind}_bytes_per_frame'] = per_frame(per_kind[kind])
        return stats

    def summary(self) -> dict:
        """Totals since start; bytes_per_frame divides by every frame seen (frames without comm count)."""
        frames = self.frames

        def block(tally: _Tally) -> dict:
            return {'messages': tally.messages, 'bytes': tally.bytes,
                    'bytes_per_frame': tally.bytes / frames if frames else 0.0}

        duration = ((self.last_recv_ns - self.first_recv_ns) / 1e9
                    if self.first_recv_ns is not None and self.last_recv_ns is not None else 0.0)
        return {
            'frames': frames,
            'duration_s': duration,
            'total': block(self.total),
            'bytes_per_frame': self.total.bytes / frames if frames else 0.0,
            'per_kind': {k: block(v) for k, v in sorted(self.per_kind.items())},
            'per_topic': {k: block(v) for k, v in sorted(self.per_topic.items())},
            'per_sender': {k: block(v) for k, v in sorted(self.per_sender.items())},
            'wire_payload_bytes': sum(self.wire_per_topic.values()),
            'wire_payload_bytes_per_topic': dict(sorted(self.wire_per_topic.items())),
            'per_sender_topic': [{'sender': s, 'topic': t, **block(v)}
                                 for (s, t), v in sorted(self.per_pair.items())],
            'rejected': dict(self.rejected),
        }


class CsvFrameWriter:
    """Appends FrameRows to a CSV file (header written once)."""

    def __init__(self, path: str):
        self.path = path
        self._file = open(path, 'w', newline='', encoding='utf-8')
        self._writer = csv.writer(self._file)
        self._writer.writerow(CSV_FIELDS)
        self.rows = 0

    def write(self, rows: Iterable[FrameRow]) -> None:
        for row in rows:
            self._writer.writerow(row.as_list())
            self.rows += 1
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def write_json(path: str, data: dict) -> None:
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write('\n')
