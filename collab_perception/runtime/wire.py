"""Serialized sizes of the comm messages, computed without ROS.

Offline evaluation (learn/) must count the same bytes the swarm really sends (handshake paper §IV-D,
"bytes per frame"; MASH Eq. 3): the CDR-serialized Request, Reply, Connect, FeatureMap and PatchSegments
messages of msg/, with the codec's dtypes. This module walks the XCDR1 layout of those messages (the
encoding Fast DDS uses for ROS 2) and returns exactly what `rclpy.serialization.serialize_message` would;
test/test_wire.py checks it against rclpy for random shapes.

CDR rules used: a 4-byte encapsulation header, then each primitive aligned to its own size relative to
the end of that header; a sequence or string is a uint32 count (aligned to 4) followed by its elements;
strings include their NUL.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

from .codec import UINT4_MAX, encoded_size

ENCAPSULATION = 4


class _Sizer:
    def __init__(self):
        self.offset = 0

    def _align(self, n: int) -> None:
        self.offset += (-self.offset) % n

    def prim(self, n: int) -> '_Sizer':
        self._align(n)
        self.offset += n
        return self

    def seq(self, count: int, item: int) -> '_Sizer':
        self.prim(4)
        if count:
            self._align(item)
            self.offset += count * item
        return self

    def string(self, text: str) -> '_Sizer':
        return self.seq(len(text.encode('utf-8')) + 1, 1)

    def header(self, frame_id: str = '') -> '_Sizer':
        return self.prim(4).prim(4).string(frame_id)

    def addressing(self, frame_id: str = '') -> '_Sizer':
        """std_msgs/Header header, uint8 sender, uint8 receiver: the start of every comm message."""
        return self.header(frame_id).prim(1).prim(1)

    def tensor(self, shape: Optional[Sequence[int]], dtype) -> '_Sizer':
        """msg/Tensor.msg: uint32[] shape, uint8 dtype, int16 zero_point, float32 scale, uint8[] data.
        shape None: an absent tensor (no shape, no data), e.g. a Connect without context."""
        self.seq(len(shape or ()), 4).prim(1).prim(2).prim(4)
        return self.seq(0 if shape is None else encoded_size(shape, dtype), 1)  # shape [] is a scalar

    @property
    def total(self) -> int:
        return ENCAPSULATION + self.offset


def request_size(query_shape: Sequence[int], dtype, frame_id: str = '', pose: bool = False,
                 need_cells: int = 0) -> int:
    """`pose`: the request carries the requester's 7-float pose (pose-warped settings); `need_cells`: MASH's
    need map, one byte per cell of the requester's grid."""
    s = _Sizer().addressing(frame_id).tensor(query_shape, dtype).seq(7 if pose else 0, 4).seq(need_cells, 1)
    return s.prim(2).total


def reply_size(score_shape: Sequence[int], dtype, frame_id: str = '') -> int:
    return _Sizer().addressing(frame_id).tensor(score_shape, dtype).total


def connect_size(context_shape: Optional[Sequence[int]] = None, dtype='float32', frame_id: str = '') -> int:
    return _Sizer().addressing(frame_id).tensor(context_shape, dtype).total


def feature_size(feature_shape: Sequence[int], dtype, frame_id: str = '') -> int:
    return _Sizer().addressing(frame_id).tensor(feature_shape, dtype).total


def pixel_labels_dtype(num_classes: int) -> str:
    """How 'pixels' patches carry their class ids: two to a byte (uint4) where up to 15 classes leave a code
    for "not seen", else one byte each (onnx_mash.encode_patches)."""
    return 'uint4' if num_classes <= UINT4_MAX else 'uint8'


def patches_size(cells: int, num_classes: int, confidence_dtype, probs_dtype, frame_id: str = '',
                 cell_size: Optional[int] = None) -> int:
    """A PatchSegments reply with `cells` cells: one class distribution per cell (`probs_dtype`), or with
    `cell_size` ('pixels' patches) one class id per pixel of each cell (pixel_labels_dtype)."""
    s = _Sizer().addressing(frame_id).prim(2).prim(2).seq(cells, 2)
    s.tensor((cells,), confidence_dtype)
    if cell_size:
        s.tensor(None, probs_dtype).tensor((cells, cell_size, cell_size), pixel_labels_dtype(num_classes))
    else:
        s.tensor((cells, num_classes), probs_dtype).tensor(None, 'uint8')
    return s.total


def memory_value_size(value_shape: Sequence[int], dtype, frame_id: str = '') -> int:
    """msg/MemoryValue.msg: a CollaVN supporter's score (float32) and attention-weighted value."""
    return _Sizer().addressing(frame_id).prim(4).tensor(value_shape, dtype).total


def handshake_frame_bytes(query_shape: Sequence[int], query_dtype, supporters: int,
                          score_shape: Sequence[int], score_dtype, feature_shape: Sequence[int], feature_dtype,
                          selected: int, request: bool = True, pose: bool = False,
                          context_shape: Optional[Sequence[int]] = None) -> dict:
    """Bytes of one frame of the three-stage handshake for one requester, by message kind.

    `supporters` drones reply; `selected` of them are connected and send features. A centralized
    baseline (CatAll, Attention) is `request=False, supporters=0, selected=N-1`: no handshake, every
    feature map sent.
    """
    out = {
        'request': request_size(query_shape, query_dtype, pose=pose) if request else 0,
        'reply': supporters * reply_size(score_shape, score_dtype) if request else 0,
        'connect': selected * connect_size(context_shape) if request else 0,
        'feature': selected * feature_size(feature_shape, feature_dtype),
    }
    out['total'] = sum(out.values())
    return out


def total(sizes: Iterable[int]) -> int:
    return int(sum(sizes))
