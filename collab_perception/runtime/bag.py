"""Flights as rosbag2 bags in MCAP, through the `rosbags` library: no ROS install is needed to read them.

A bag holds each message as its serialized CDR bytes (exactly what `serialize_message` gives, without the
transport's alignment padding), stamped with the time the recorder received it. Our own messages (msg/) are
registered with their definitions, so `ros2 bag info`, Foxglove and the rosbags reader can decode them.

    write:  BagWriter(path).add(topic, 'sensor_msgs/msg/Image'); .write(topic, t_ns, data); .close()
    read:   for m in read_bag(path, topics): m.topic, m.msgtype, m.time_ns, m.data
    bytes:  bandwidth_from_bag(path, drones): the monitor's summary recomputed from the comm messages
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

from ..config import resource_path
from .bandwidth import BandwidthLedger
from .cdr import CdrError, read_comm_prefix, read_header
from .topics import FRAME, comm_topics

PACKAGE = 'collab_perception'


class BagError(ValueError):
    """A bag that cannot be written or read as asked; the message names the path and what is wrong."""


def typestore():
    """rosbags' ROS 2 Kilted types plus this package's messages (msg/*.msg)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    store = get_typestore(Stores.ROS2_KILTED)
    folder = resource_path('msg')
    types = {}
    for file in sorted(os.listdir(folder)):
        if file.endswith('.msg'):
            with open(os.path.join(folder, file), encoding='utf-8') as f:
                types.update(get_types_from_msg(f.read(), f'{PACKAGE}/msg/{file[:-4]}'))
    store.register(types)
    return store


class BagWriter:
    """A new MCAP bag at `path` (a directory that must not exist yet)."""

    def __init__(self, path: str):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.rosbag2.errors import WriterError
        self.store = typestore()
        try:
            self._writer = Writer(path, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP)
            self._writer.open()
        except WriterError as e:
            raise BagError(f'{path}: {e}') from None
        self.path = path
        self._connections = {}
        self.counts: dict[str, int] = {}

    def add(self, topic: str, msgtype: str) -> None:
        if msgtype not in self.store.fielddefs:
            raise BagError(f'{self.path}: {topic}: unknown message type {msgtype!r}')
        self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=self.store)
        self.counts[topic] = 0

    def write(self, topic: str, time_ns: int, data: bytes) -> None:
        self._writer.write(self._connections[topic], int(time_ns), data)
        self.counts[topic] += 1

    def close(self) -> None:
        self._writer.close()


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    time_ns: int
    data: bytes


def read_bag(path: str, topics: Optional[Iterable[str]] = None) -> Iterator[BagMessage]:
    """The messages of a bag in time order (only `topics`, if given)."""
    from rosbags.rosbag2 import Reader
    from rosbags.rosbag2.errors import ReaderError
    if not os.path.isdir(path):
        raise BagError(f'{path}: no such bag (a rosbag2 directory with metadata.yaml)')
    try:
        with Reader(path) as reader:
            wanted = set(topics) if topics is not None else None
            connections = [c for c in reader.connections if wanted is None or c.topic in wanted]
            for connection, time_ns, data in reader.messages(connections=connections):
                yield BagMessage(connection.topic, connection.msgtype, time_ns, bytes(data))
    except ReaderError as e:
        raise BagError(f'{path}: {e}') from None


def bag_topics(path: str) -> dict[str, tuple[str, int]]:
    """topic -> (message type, message count) of a bag."""
    from rosbags.rosbag2 import Reader
    from rosbags.rosbag2.errors import ReaderError
    if not os.path.isdir(path):
        raise BagError(f'{path}: no such bag (a rosbag2 directory with metadata.yaml)')
    try:
        with Reader(path) as reader:
            return {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}
    except ReaderError as e:
        raise BagError(f'{path}: {e}') from None


def bandwidth_from_bag(path: str, drones: list[str], ids: Optional[list[int]] = None) -> dict:
    """The monitor's summary (runtime/bandwidth.py) recomputed from a bag: every comm message of these
    drones by its frame stamp and sender, every /swarm/frame marker a frame."""
    name_of = dict(zip(ids or [], drones))
    comm = comm_topics(drones)
    ledger = BandwidthLedger(horizon_ns=1 << 62, window_ns=1 << 62)
    for m in read_bag(path, [*comm, FRAME]):
        try:
            if m.topic == FRAME:
                ledger.add_frame(read_header(m.data).stamp_ns, m.time_ns)
                continue
            prefix = read_comm_prefix(m.data)
        except CdrError as e:
            ledger.reject(m.topic, str(e))
            continue
        ledger.record(m.topic, name_of.get(prefix.sender, f'id{prefix.sender}'), prefix.stamp_ns, len(m.data),
                      m.time_ns)
    ledger.fold(None)
    return ledger.summary()
