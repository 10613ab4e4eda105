"""runtime/wire.py computes exactly the serialized sizes rclpy produces, for every comm message."""
import array

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from rclpy.serialization import serialize_message
from std_msgs.msg import Header

from collab_perception.msg import Connect, FeatureMap, MemoryValue, PatchSegments, Reply, Request
from collab_perception.runtime import wire
from collab_perception.runtime.codec import encode_tensor
from collab_perception.runtime.onnx_mash import NO_LABEL, PatchReply, encode_patches

shapes = st.lists(st.integers(0, 7), min_size=0, max_size=4)
dtypes = st.sampled_from(['float32', 'float16', 'int8', 'uint8'])
frame_ids = st.sampled_from(['', 'a', 'drone1', 'drone1/camera'])


def filled(shape, dtype):
    return np.random.default_rng(len(shape)).normal(size=shape).astype(np.float32)


@settings(max_examples=150, deadline=None)
@given(shapes, dtypes, frame_ids)
def test_tensor_messages(shape, dtype, frame_id):
    x = filled(shape, dtype)
    req = Request(header=Header(frame_id=frame_id), sender=1, receiver=255, deadline_ms=7)
    encode_tensor(x, dtype, req.query)
    assert wire.request_size(shape, dtype, frame_id) == len(serialize_message(req))
    req.pose = [1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0]
    assert wire.request_size(shape, dtype, frame_id, pose=True) == len(serialize_message(req))
    req.pose = []
    req.need = array.array('B', bytes(range(len(frame_id) + 3)))           # MASH's need map, a byte per cell
    assert wire.request_size(shape, dtype, frame_id, need_cells=len(frame_id) + 3) == len(serialize_message(req))
    rep = Reply(header=Header(frame_id=frame_id), sender=2, receiver=1)
    encode_tensor(x, dtype, rep.score)
    assert wire.reply_size(shape, dtype, frame_id) == len(serialize_message(rep))
    feat = FeatureMap(header=Header(frame_id=frame_id), sender=2, receiver=1)
    encode_tensor(x, dtype, feat.features)
    assert wire.feature_size(shape, dtype, frame_id) == len(serialize_message(feat))
    con = Connect(header=Header(frame_id=frame_id), sender=1, receiver=2)
    encode_tensor(x, dtype, con.context)
    assert wire.connect_size(shape, dtype, frame_id) == len(serialize_message(con))
    value = MemoryValue(header=Header(frame_id=frame_id), sender=2, receiver=1, score=0.75)
    encode_tensor(x, dtype, value.value)
    assert wire.memory_value_size(shape, dtype, frame_id) == len(serialize_message(value))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.integers(1, 9), dtypes, dtypes)
def test_patch_segments(cells, classes, conf_dtype, probs_dtype):
    msg = PatchSegments(sender=3, receiver=1, grid_height=16, grid_width=16, cells=list(range(cells)))
    encode_tensor(np.random.default_rng(0).uniform(size=cells).astype(np.float32), conf_dtype, msg.confidence)
    encode_tensor(np.random.default_rng(1).uniform(size=(cells, classes)).astype(np.float32), probs_dtype,
                  msg.class_probs)
    assert wire.patches_size(cells, classes, conf_dtype, probs_dtype) == len(serialize_message(msg))


def test_empty_connect_and_frame_totals():
    assert wire.connect_size() == len(serialize_message(Connect(sender=1, receiver=2)))
    frame = wire.handshake_frame_bytes((8,), 'float32', 4, (1,), 'float32', (32, 16, 16), 'float16', 1)
    assert frame['total'] == frame['request'] + frame['reply'] + frame['connect'] + frame['feature']
    assert frame['feature'] == wire.feature_size((32, 16, 16), 'float16')
    assert frame['reply'] == 4 * wire.reply_size((1,), 'float32')
    catall = wire.handshake_frame_bytes((8,), 'float32', 0, (1,), 'float32', (32, 16, 16), 'float16', 4, request=False)
    assert catall['total'] == 4 * frame['feature'] and catall['request'] == 0


def test_placeholder_swarm_sizes_match_the_monitor_readme():
    # the placeholder swarm's messages: request 74 (4 of them the empty need map), reply 44, connect 36, feature 432 bytes
    assert (wire.request_size((6,), 'float32'), wire.reply_size((1,), 'float32'), wire.connect_size(),
            wire.feature_size((3, 8, 8), "float16")) == (74, 44, 36, 432)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 40), st.sampled_from([4, 8]), dtypes)
def test_pixel_patch_segments(cells, cell_size, conf_dtype):
    msg = PatchSegments(sender=3, receiver=1, grid_height=16, grid_width=16, cells=list(range(cells)))
    encode_tensor(np.random.default_rng(0).uniform(size=cells).astype(np.float32), conf_dtype, msg.confidence)
    labels = np.random.default_rng(1).integers(0, 9, (cells, cell_size, cell_size)).astype(np.uint8)
    labels[labels == 8] = NO_LABEL
    encode_patches(PatchReply(np.arange(cells), np.random.default_rng(0).uniform(size=cells).astype(np.float32),
                              labels=labels), (16, 16), conf_dtype, msg, 8)
    assert msg.labels.dtype == 4                                  # 8 classes: two class ids a byte
    assert wire.patches_size(cells, 8, conf_dtype, 'uint8', cell_size=cell_size) == len(serialize_message(msg))
    # more classes than a nibble can name with "not seen": one byte each
    wide = np.random.default_rng(1).integers(0, 20, (cells, cell_size, cell_size)).astype(np.uint8)
    encode_tensor(wide, 'uint8', msg.labels)
    assert wire.patches_size(cells, 20, conf_dtype, 'uint8', cell_size=cell_size) == len(serialize_message(msg))
