"""The generated messages: every comm message starts with the prefix the monitor reads, and messages
cross a real Fast DDS participant."""
import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from std_msgs.msg import Header

from collab_perception.msg import (BandwidthStats, Connect, FeatureMap, FusionInfo, PatchSegments,
                                   PerceptionOutput, Reply, Request, Tensor)
from collab_perception.runtime.cdr import CdrError, read_comm_prefix, read_header
from collab_perception.runtime.codec import decode_tensor, encode_tensor

from rostools import spin_until, wait_for_subscribers

COMM = (Request, Reply, Connect, FeatureMap, PatchSegments)


def test_tensor_constants_match_the_codec():
    from collab_perception.runtime import codec
    assert (Tensor.FLOAT32, Tensor.FLOAT16, Tensor.INT8, Tensor.UINT8) == (
        codec.FLOAT32, codec.FLOAT16, codec.INT8, codec.UINT8)
    assert Request.BROADCAST == 255


@pytest.mark.parametrize('msg_type', COMM)
@pytest.mark.parametrize('frame_id', ['', 'd', 'drone1/camera', 'x' * 13])
def test_comm_prefix_is_read_without_deserializing(msg_type, frame_id):
    msg = msg_type(sender=7, receiver=255 if msg_type is Request else 3)
    msg.header = Header(frame_id=frame_id)
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_795_000_123, 456_789_012
    data = serialize_message(msg)
    prefix = read_comm_prefix(data)
    assert prefix.stamp_ns == 1_795_000_123 * 10**9 + 456_789_012
    assert prefix.frame_id == frame_id and prefix.sender == 7 and prefix.receiver == msg.receiver
    # encapsulation, stamp, frame_id (length, text, NUL), sender, receiver: one byte short of the receiver
    prefix_end = 4 + 8 + 4 + len(frame_id) + 1 + 2
    for cut in (prefix_end - 1, len(frame_id) // 2 + 14, 10):
        with pytest.raises(CdrError):
            read_comm_prefix(data[:cut])


@pytest.mark.parametrize('msg_type', COMM + (FusionInfo, BandwidthStats, PerceptionOutput))
def test_every_message_starts_with_a_header(msg_type):
    assert list(msg_type.get_fields_and_field_types().items())[0] == ('header', 'std_msgs/Header')


def test_prefix_rejects_garbage():
    for junk in (b'', b'\x00\x01\x00\x00', b'\x00\x09\x00\x00' + bytes(20), b'\x00\x01\x00\x00' + bytes(8) + b'\xff' * 8):
        with pytest.raises(CdrError):
            read_comm_prefix(junk)


def test_tensor_survives_serialization():
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    msg = FeatureMap(sender=1, receiver=2)
    encode_tensor(x, 'float16', msg.features)
    back = deserialize_message(serialize_message(msg), FeatureMap)
    np.testing.assert_allclose(decode_tensor(back.features), x, atol=1e-2)
    assert read_header(serialize_message(back)).stamp_ns == 0


@pytest.mark.ros
def test_request_crosses_dds(ros):
    node = ros.create_node('test_request_crosses_dds')
    got = []
    node.create_subscription(Request, '/swarm/request', got.append, 10)
    pub = node.create_publisher(Request, '/swarm/request', 10)
    wait_for_subscribers(node, [pub])
    msg = Request(sender=3, receiver=Request.BROADCAST, deadline_ms=250)
    encode_tensor(np.arange(8, dtype=np.float32), 'float32', msg.query)
    pub.publish(msg)
    assert spin_until(node, lambda: got, timeout=5.0)
    np.testing.assert_array_equal(decode_tensor(got[0].query), np.arange(8))
    assert got[0].sender == 3 and got[0].deadline_ms == 250
    node.destroy_node()
