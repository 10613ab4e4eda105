"""Numpy arrays <-> the fields of collab_perception/msg/Tensor, with validation.

ROS-free: `encode_tensor` fills any object that has the Tensor fields (`shape`, `dtype`, `scale`,
`zero_point`, `data`), a generated message included, and `decode_tensor` reads one. Every decode checks
the dtype code, the shape (rank, non-negative sizes, configured maxima), the exact byte count and
finiteness, and raises `CodecError` naming the field that is wrong: a malformed message must be rejected
and counted by the node, never crash it (DESIGN.md, "Messages").

Quantization (int8/uint8) is per tensor and affine: q = round(x / scale) + zero_point, x = (q - zp) * scale,
as in ONNX's QuantizeLinear, so a quantized tensor costs one byte per element plus 6 bytes of parameters.
UINT4 packs small integers (0..15, e.g. class ids) two to a byte, the first element in the low nibble: it
takes integers only, never quantizes, and an odd count leaves the last high nibble 0.
"""
from __future__ import annotations

from dataclasses import dataclass
import array
from typing import Any, Iterable, Optional

import numpy as np

# Codes of msg/Tensor.msg. Kept here too so the runtime needs no generated message module.
FLOAT32 = 0
FLOAT16 = 1
INT8 = 2
UINT8 = 3
UINT4 = 4
UINT4_MAX = 15

_DTYPES = {
    FLOAT32: np.dtype('<f4'),
    FLOAT16: np.dtype('<f2'),
    INT8: np.dtype('i1'),
    UINT8: np.dtype('u1'),
}
DTYPE_NAMES = {FLOAT32: 'float32', FLOAT16: 'float16', INT8: 'int8', UINT8: 'uint8', UINT4: 'uint4'}
DTYPE_CODES = {name: code for code, name in DTYPE_NAMES.items()}
_QUANT_RANGE = {INT8: (-128, 127), UINT8: (0, 255)}


class CodecError(ValueError):
    """A tensor that cannot be encoded or decoded. `field` names the offending field, e.g.
    'reply.score.data'; `reason` is a short machine-friendly tag for counters."""

    def __init__(self, field: str, reason: str, detail: str):
        super().__init__(f'{field}: {detail}')
        self.field = field
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TensorLimits:
    """What a decoder accepts. `max_elements` bounds memory per tensor; `max_rank` bounds the shape;
    `max_dim` bounds any single dimension. Nodes take these from config/swarm.yaml (codec)."""

    max_elements: int = 1 << 22
    max_rank: int = 4
    max_dim: int = 1 << 16
    allow_nonfinite: bool = False


DEFAULT_LIMITS = TensorLimits()


class _Fields:
    """A plain holder with the Tensor fields, for use without ROS."""

    __slots__ = ('shape', 'dtype', 'scale', 'zero_point', 'data')

    def __init__(self):
        self.shape = []
        self.dtype = FLOAT32
        self.scale = 0.0
        self.zero_point = 0
        self.data = array.array('B')

    def __repr__(self):
        return (f'TensorFields(shape={list(self.shape)}, dtype={DTYPE_NAMES.get(self.dtype, self.dtype)}, '
                f'scale={self.scale}, zero_point={self.zero_point}, nbytes={len(self.data)})')


def tensor_fields() -> _Fields:
    return _Fields()


def dtype_code(name_or_code: Any, field: str = 'dtype') -> int:
    """'float16' / 'fp16' / 1 -> 1. Raises CodecError listing the valid names."""
    if isinstance(name_or_code, (int, np.integer)) and int(name_or_code) in DTYPE_NAMES:
        return int(name_or_code)
    aliases = {'fp32': 'float32', 'fp16': 'float16', 'f32': 'float32', 'f16': 'float16'}
    if isinstance(name_or_code, str):
        name = aliases.get(name_or_code.lower(), name_or_code.lower())
        if name in DTYPE_CODES:
            return DTYPE_CODES[name]
    raise CodecError(field, 'unknown_dtype',
                     f'unknown dtype {name_or_code!r}; valid: {", ".join(DTYPE_CODES)}')


def quantization_params(array: np.ndarray, code: int) -> tuple[float, int]:
    """Per-tensor affine parameters covering [min(x, 0), max(x, 0)] (zero stays exact)."""
    lo, hi = _QUANT_RANGE[code]
    xmin = min(float(array.min(initial=0.0)), 0.0)
    xmax = max(float(array.max(initial=0.0)), 0.0)
    if xmax - xmin <= 0.0:
        return 1.0, 0
    scale = (xmax - xmin) / (hi - lo)
    zero_point = int(np.clip(round(lo - xmin / scale), lo, hi))
    return scale, zero_point


def encode_tensor(values: Any, dtype: Any = FLOAT32, out: Optional[Any] = None,
                  field: str = 'tensor') -> Any:
    """Fill `out` (a Tensor message or `tensor_fields()`) from `values` and return it.

    Raises CodecError for NaN/Inf input (they would poison the receiver) and unknown dtypes.
    """
    code = dtype_code(dtype, f'{field}.dtype')
    x = np.asarray(values)
    if x.dtype.kind not in 'fiub':
        raise CodecError(f'{field}.data', 'bad_input', f'cannot encode an array of dtype {x.dtype}')
    if x.dtype.kind == 'f' and not np.isfinite(x).all():
        raise CodecError(f'{field}.data', 'nonfinite', 'array holds NaN or Inf')
    target = out if out is not None else _Fields()
    target.shape = [int(d) for d in x.shape]
    target.dtype = code
    if code == UINT4:
        if x.dtype.kind not in 'iub' or (x.size and (x.min() < 0 or x.max() > UINT4_MAX)):
            raise CodecError(f'{field}.data', 'bad_input', f'uint4 packs integers 0..{UINT4_MAX}, got '
                             + (f'{x.dtype}' if x.dtype.kind not in 'iub' else f'{x.min()}..{x.max()}'))
        target.scale = 1.0
        target.zero_point = 0
        target.data = array.array('B', pack_uint4(x).tobytes())
    elif code in _QUANT_RANGE and x.dtype == _DTYPES[code]:
        # Already integers of the wire type (class ids, indices): sent as they are, scale 1, zero point 0.
        target.scale = 1.0
        target.zero_point = 0
        target.data = array.array('B', np.ascontiguousarray(x).tobytes())
    elif code in _QUANT_RANGE:
        lo, hi = _QUANT_RANGE[code]
        xf = x.astype(np.float32, copy=False)
        scale, zero_point = quantization_params(xf, code)
        q = np.clip(np.rint(xf / scale) + zero_point, lo, hi).astype(_DTYPES[code])
        target.scale = float(scale)
        target.zero_point = int(zero_point)
        target.data = array.array('B', q.tobytes())
    else:
        target.scale = 0.0
        target.zero_point = 0
        target.data = array.array('B', np.ascontiguousarray(x, dtype=_DTYPES[code]).tobytes())
    return target


def encoded_size(shape: Iterable[int], dtype: Any) -> int:
    """Bytes of `data` for a tensor of this shape and dtype (what the wire pays for the payload)."""
    count = int(np.prod(list(shape), dtype=np.int64))
    code = dtype_code(dtype)
    return (count + 1) // 2 if code == UINT4 else count * _DTYPES[code].itemsize


def pack_uint4(values: np.ndarray) -> np.ndarray:
    """Integers 0..15, any shape -> uint8 [ceil(n / 2)]: element 2i in the low nibble of byte i."""
    flat = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return flat[0::2] | (flat[1::2] << 4)


def unpack_uint4(data: np.ndarray, count: int) -> np.ndarray:
    """pack_uint4's bytes -> uint8 [count]."""
    out = np.empty(2 * data.size, np.uint8)
    out[0::2] = data & 0x0F
    out[1::2] = data >> 4
    return out[:count]


def _as_bytes(data: Any) -> bytes | memoryview:
    # Generated messages hold uint8[] as array.array('B') (assigning one is a memcpy; assigning bytes would
    # make the generated setter check every element in Python). Raw holders may use bytes or lists.
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    try:
        return memoryview(data).cast('B')
    except TypeError:
        return bytes(data)


def decode_tensor(msg: Any, limits: TensorLimits = DEFAULT_LIMITS, field: str = 'tensor',
                  expect_shape: Optional[Iterable[Optional[int]]] = None,
                  out_dtype: Any = np.float32) -> np.ndarray:
    """Validate a Tensor message and return its values as a new array of `out_dtype`.

    `expect_shape` (optional) pins the shape; None entries accept any size in that axis.
    """
    code = msg.dtype
    if not isinstance(code, (int, np.integer)) or int(code) not in DTYPE_NAMES:
        raise CodecError(f'{field}.dtype', 'unknown_dtype',
                         f'unknown dtype code {code!r}; valid: '
                         + ', '.join(f'{c}={n}' for c, n in DTYPE_NAMES.items()))
    code = int(code)
    shape = [int(d) for d in msg.shape]
    if len(shape) > limits.max_rank:
        raise CodecError(f'{field}.shape', 'bad_shape', f'rank {len(shape)} exceeds the maximum {limits.max_rank}')
    for axis, d in enumerate(shape):
        if d < 0:
            raise CodecError(f'{field}.shape', 'bad_shape', f'negative size {d} in axis {axis}')
        if d > limits.max_dim:
            raise CodecError(f'{field}.shape', 'bad_shape',
                             f'size {d} in axis {axis} exceeds the maximum {limits.max_dim}')
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count > limits.max_elements:
        raise CodecError(f'{field}.shape', 'too_large',
                         f'{count} elements exceed the maximum {limits.max_elements}')
    if expect_shape is not None:
        expect = list(expect_shape)
        if len(expect) != len(shape) or any(e is not None and e != d for e, d in zip(expect, shape)):
            want = 'x'.join('*' if e is None else str(e) for e in expect) or 'scalar'
            raise CodecError(f'{field}.shape', 'bad_shape', f'shape {shape} does not match the expected {want}')
    raw = _as_bytes(msg.data)
    nbytes = len(raw) if not isinstance(raw, memoryview) else raw.nbytes
    if code == UINT4:
        if nbytes != (count + 1) // 2:
            raise CodecError(f'{field}.data', 'bad_size',
                             f'{nbytes} bytes for shape {shape} of uint4 (expected {(count + 1) // 2})')
        packed = np.frombuffer(raw, dtype=np.uint8)
        if count % 2 and packed.size and packed[-1] >> 4:
            raise CodecError(f'{field}.data', 'bad_padding', 'the unused high nibble of the last byte is not 0')
        return unpack_uint4(packed, count).reshape(shape).astype(out_dtype)
    np_dtype = _DTYPES[code]
    if nbytes != count * np_dtype.itemsize:
        raise CodecError(f'{field}.data', 'bad_size',
                         f'{nbytes} bytes for shape {shape} of {DTYPE_NAMES[code]} '
                         f'(expected {count * np_dtype.itemsize})')
    values = np.frombuffer(raw, dtype=np_dtype).reshape(shape)
    if code in _QUANT_RANGE:
        scale = float(msg.scale)
        zero_point = int(msg.zero_point)
        lo, hi = _QUANT_RANGE[code]
        if not np.isfinite(scale) or scale <= 0.0:
            raise CodecError(f'{field}.scale', 'bad_scale', f'scale {scale} must be finite and positive')
        if not lo <= zero_point <= hi:
            raise CodecError(f'{field}.zero_point', 'bad_zero_point',
                             f'zero point {zero_point} outside [{lo}, {hi}] for {DTYPE_NAMES[code]}')
        return ((values.astype(np.float32) - zero_point) * scale).astype(out_dtype, copy=False)
    result = values.astype(out_dtype)  # a copy: never alias the message buffer
    if not limits.allow_nonfinite and values.dtype.kind == 'f' and not np.isfinite(values).all():
        raise CodecError(f'{field}.data', 'nonfinite', 'tensor holds NaN or Inf')
    return result
