"""Read the first fields of a serialized ROS 2 message without deserializing it.

The monitor subscribes with `raw=True` (as `ros2 topic bw` does) and must group bytes by frame stamp and
sender. Deserializing a 40 kB feature map just to read 14 bytes would cost the monitor more than the
measurement is worth, so this module reads the CDR prefix directly:

    [0:2] encapsulation id   (0x0000 CDR big endian, 0x0001 CDR little endian; XCDR2 0x0006/0x0007)
    [2:4] options
    std_msgs/Header:  int32 stamp.sec, uint32 stamp.nanosec, string frame_id (uint32 length incl. NUL, bytes)
    then, for our comm messages: uint8 sender, uint8 receiver

Every comm message in msg/ starts with exactly these fields (a test checks this against
`rclpy.serialization`). Alignment is relative to the end of the 4-byte encapsulation header.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

_LE_IDS = {0x0001, 0x0007, 0x000b}
_BE_IDS = {0x0000, 0x0006, 0x000a}


class CdrError(ValueError):
    """The bytes are not a CDR message with a std_msgs/Header first (too short, bad encapsulation)."""


class CommPrefix(NamedTuple):
    stamp_ns: int
    frame_id: str
    sender: int
    receiver: int


class HeaderPrefix(NamedTuple):
    stamp_ns: int
    frame_id: str
    end: int  # offset just after frame_id, relative to the start of the buffer


def read_header(buf: bytes | memoryview) -> HeaderPrefix:
    """Stamp and frame_id of a serialized message whose first field is a std_msgs/Header."""
    if len(buf) < 4 + 12:
        raise CdrError(f'{len(buf)} bytes: too short for a std_msgs/Header')
    encapsulation = (buf[0] << 8) | buf[1]
    if encapsulation in _LE_IDS:
        order = '<'
    elif encapsulation in _BE_IDS:
        order = '>'
    else:
        raise CdrError(f'unknown CDR encapsulation 0x{encapsulation:04x}')
    sec, nanosec, length = struct.unpack_from(order + 'iII', buf, 4)
    if nanosec >= 1_000_000_000:
        raise CdrError(f'stamp.nanosec {nanosec} out of range')
    end = 16 + length
    if length == 0 or end > len(buf):
        raise CdrError(f'frame_id length {length} does not fit in {len(buf)} bytes')
    frame_id = bytes(buf[16:end - 1]).decode('utf-8', errors='replace')
    return HeaderPrefix(sec * 1_000_000_000 + nanosec, frame_id, end)


def read_comm_prefix(buf: bytes | memoryview) -> CommPrefix:
    """Stamp, frame_id, sender and receiver of a serialized comm message (Request, Reply, ...)."""
    header = read_header(buf)
    if header.end + 2 > len(buf):
        raise CdrError(f'{len(buf)} bytes: too short for sender and receiver')
    return CommPrefix(header.stamp_ns, header.frame_id, buf[header.end], buf[header.end + 1])
