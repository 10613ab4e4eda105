"""The tensor codec: round trips in every dtype and a named rejection for every malformed field."""
import array
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from collab_perception.runtime.codec import (FLOAT16, FLOAT32, INT8, UINT4, UINT8, CodecError, TensorLimits,
                                             decode_tensor, dtype_code, encode_tensor, encoded_size,
                                             tensor_fields)


def roundtrip(x, dtype, **kw):
    return decode_tensor(encode_tensor(x, dtype), **kw)


def test_float32_roundtrip_is_exact():
    x = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    msg = encode_tensor(x, 'float32')
    assert list(msg.shape) == [3, 4, 5] and msg.dtype == FLOAT32
    assert len(msg.data) == x.size * 4 == encoded_size(x.shape, 'float32')
    np.testing.assert_array_equal(decode_tensor(msg), x)


def test_float16_roundtrip_within_half_precision():
    x = np.random.default_rng(1).normal(size=(64,)).astype(np.float32)
    msg = encode_tensor(x, 'fp16')
    assert msg.dtype == FLOAT16 and len(msg.data) == 128
    np.testing.assert_allclose(decode_tensor(msg), x, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize('dtype,code', [('int8', INT8), ('uint8', UINT8)])
def test_quantized_roundtrip_error_is_at_most_half_a_step(dtype, code):
    x = np.random.default_rng(2).uniform(-3, 5, size=(8, 8)).astype(np.float32)
    msg = encode_tensor(x, dtype)
    assert msg.dtype == code and len(msg.data) == 64
    err = np.abs(decode_tensor(msg) - x).max()
    assert err <= msg.scale / 2 + 1e-6
    assert msg.scale == pytest.approx((x.max() - x.min()) / 255, rel=1e-5)


def test_quantization_keeps_zero_exact():
    x = np.array([0.0, 0.5, 1.0, 2.0], np.float32)
    for dtype in ('int8', 'uint8'):
        assert decode_tensor(encode_tensor(x, dtype))[0] == 0.0


def test_integer_class_maps_travel_unchanged():
    labels = np.random.default_rng(3).integers(0, 8, size=(16, 16)).astype(np.uint8)
    msg = encode_tensor(labels, 'uint8')
    assert msg.scale == 1.0 and msg.zero_point == 0
    np.testing.assert_array_equal(decode_tensor(msg, out_dtype=np.uint8), labels)


def test_constant_and_empty_tensors():
    np.testing.assert_array_equal(roundtrip(np.zeros((2, 2), np.float32), 'int8'), np.zeros((2, 2)))
    empty = roundtrip(np.zeros((0, 3), np.float32), 'float16')
    assert empty.shape == (0, 3)


def test_encode_fills_a_message_object_in_place():
    class Holder:
        shape = dtype = scale = zero_point = data = None
    h = Holder()
    out = encode_tensor(np.ones(3, np.float32), 'float32', out=h)
    assert out is h and isinstance(h.data, array.array) and h.data.typecode == 'B'


# ------------------------------------------------------------------ rejections, each naming its field
def good(shape=(2, 3), dtype='float32'):
    return encode_tensor(np.ones(shape, np.float32), dtype)


def expect_error(msg, field, reason, **kw):
    with pytest.raises(CodecError) as info:
        decode_tensor(msg, field='reply.score', **kw)
    assert info.value.field == f'reply.score.{field}', str(info.value)
    assert info.value.reason == reason
    assert f'reply.score.{field}' in str(info.value)
    return info.value


@pytest.mark.parametrize('shape', [(3, 8, 8), (5,), (1, 3, 3), (0, 8, 8)])
def test_uint4_packs_two_class_ids_a_byte(shape):
    x = np.random.default_rng(0).integers(0, 16, shape).astype(np.uint8)
    msg = encode_tensor(x, 'uint4')
    assert msg.dtype == UINT4 and len(msg.data) == encoded_size(shape, 'uint4') == (x.size + 1) // 2
    if x.size >= 2:
        assert msg.data[0] == x.flat[0] | (x.flat[1] << 4)          # the first element in the low nibble
    back = decode_tensor(msg, out_dtype=np.uint8)
    assert back.shape == shape and np.array_equal(back, x)


def test_uint4_rejects_what_it_cannot_carry():
    with pytest.raises(CodecError, match='0..15') as e:
        encode_tensor(np.array([3, 16]), 'uint4', field='patches.labels')
    assert e.value.field == 'patches.labels.data'
    with pytest.raises(CodecError, match='integers'):
        encode_tensor(np.array([0.5]), 'uint4')
    odd = encode_tensor(np.array([1, 2, 3], np.uint8), 'uint4')
    odd.data = array.array('B', [odd.data[0], odd.data[1] | 0xF0])    # the unused nibble of an odd count set
    expect_error(odd, 'data', 'bad_padding')
    short = encode_tensor(np.array([1, 2, 3], np.uint8), 'uint4')
    short.data = array.array('B', short.data[:1])
    expect_error(short, 'data', 'bad_size')


def test_rejects_unknown_dtype():
    msg = good()
    msg.dtype = 9
    err = expect_error(msg, 'dtype', 'unknown_dtype')
    assert 'float32' in str(err)


@pytest.mark.parametrize('delta', [-1, 1, -24])
def test_rejects_wrong_byte_count(delta):
    msg = good()
    msg.data = array.array('B', bytes(len(msg.data) + delta))
    expect_error(msg, 'data', 'bad_size')


def test_rejects_truncated_quantized_data():
    msg = good((4, 4), 'int8')
    msg.data = msg.data[:-3]
    expect_error(msg, 'data', 'bad_size')


def test_rejects_negative_shape():
    msg = tensor_fields()
    msg.shape, msg.dtype, msg.data = [2, -3], FLOAT32, array.array('B')
    expect_error(msg, 'shape', 'bad_shape')


def test_rejects_oversized_shapes():
    limits = TensorLimits(max_elements=100, max_rank=3, max_dim=50)
    big = tensor_fields()
    big.shape, big.dtype, big.data = [11, 10], FLOAT32, array.array('B')
    expect_error(big, 'shape', 'too_large', limits=limits)
    wide = tensor_fields()
    wide.shape, wide.dtype, wide.data = [1, 51], FLOAT32, array.array('B')
    expect_error(wide, 'shape', 'bad_shape', limits=limits)
    deep = tensor_fields()
    deep.shape, deep.dtype, deep.data = [1, 1, 1, 1], FLOAT32, array.array('B', bytes(4))
    expect_error(deep, 'shape', 'bad_shape', limits=limits)


def test_rejects_huge_declared_shape_without_allocating():
    msg = tensor_fields()
    msg.shape, msg.dtype, msg.data = [4096, 4096, 4096], FLOAT32, array.array('B', bytes(16))
    expect_error(msg, 'shape', 'too_large', limits=TensorLimits(max_dim=1 << 20))


def test_rejects_unexpected_shape():
    expect_error(good((2, 3)), 'shape', 'bad_shape', expect_shape=(3, None))
    assert decode_tensor(good((2, 3)), expect_shape=(2, None)).shape == (2, 3)


@pytest.mark.parametrize('bad', [math.nan, math.inf, -math.inf])
def test_rejects_nonfinite_data(bad):
    msg = encode_tensor(np.array([1.0, 2.0], np.float32), 'float32')
    x = np.frombuffer(msg.data, np.float32).copy()
    x[1] = bad
    msg.data = array.array('B', x.tobytes())
    expect_error(msg, 'data', 'nonfinite')


def test_rejects_nonfinite_float16_data():
    msg = encode_tensor(np.array([1.0, 2.0], np.float32), 'float16')
    x = np.frombuffer(msg.data, np.float16).copy()
    x[0] = np.inf
    msg.data = array.array('B', x.tobytes())
    expect_error(msg, 'data', 'nonfinite')


@pytest.mark.parametrize('scale', [0.0, -1.0, math.nan, math.inf])
def test_rejects_bad_quantization_scale(scale):
    msg = good((2,), 'int8')
    msg.scale = scale
    expect_error(msg, 'scale', 'bad_scale')


def test_rejects_zero_point_outside_dtype_range():
    msg = good((2,), 'int8')
    msg.zero_point = 200
    expect_error(msg, 'zero_point', 'bad_zero_point')


def test_encode_rejects_nan_input_and_unknown_dtype():
    with pytest.raises(CodecError) as info:
        encode_tensor(np.array([np.nan], np.float32), 'float32', field='request.query')
    assert info.value.field == 'request.query.data'
    with pytest.raises(CodecError) as info:
        encode_tensor(np.ones(2), 'bfloat16', field='request.query')
    assert info.value.field == 'request.query.dtype' and 'float16' in str(info.value)
    assert dtype_code('fp16') == FLOAT16 and dtype_code(2) == INT8


def test_decoded_array_never_aliases_the_message_buffer():
    msg = encode_tensor(np.arange(4, dtype=np.float32), 'float32')
    out = decode_tensor(msg)
    msg.data[0] = 0xFF
    assert out[0] == 0.0


# ------------------------------------------------------------------ properties
finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6), elements=finite))
def test_property_float32_exact(x):
    np.testing.assert_array_equal(roundtrip(x, 'float32'), x)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6), elements=finite),
       st.sampled_from(['int8', 'uint8']))
def test_property_quantized_error_bound(x, dtype):
    msg = encode_tensor(x, dtype)
    assert np.abs(decode_tensor(msg) - x).max(initial=0.0) <= msg.scale / 2 * (1 + 1e-4) + 1e-6


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=0, max_size=4), st.sampled_from([0, 1, 2, 3, 4]),
       st.binary(max_size=64))
def test_property_decode_never_crashes_on_arbitrary_fields(shape, dtype, data):
    msg = tensor_fields()
    msg.shape, msg.dtype, msg.data, msg.scale, msg.zero_point = shape, dtype, array.array('B', data), 0.5, 0
    try:
        out = decode_tensor(msg)
    except CodecError as e:
        assert e.field.startswith('tensor.')
    else:
        assert list(out.shape) == shape and np.isfinite(out).all()
