"""Flights as rosbag2 bags (runtime/bag.py, the recorder and bag_bridge nodes): messages written with the
package's types read back with the rosbags library, the monitor's numbers recomputed from a bag, and a
recorded swarm flight replayed through the nodes to the same fused outputs, frame by frame."""
import json

import numpy as np
import pytest
from rclpy.serialization import serialize_message

from collab_perception.config import default_config_path
from collab_perception.msg import Reply, Request
from collab_perception.runtime.bag import BagError, BagWriter, bag_topics, bandwidth_from_bag, read_bag, typestore
from collab_perception.runtime.codec import encode_tensor


def comm(msg, sec, sender, receiver):
    msg.header.stamp.sec, msg.sender, msg.receiver = sec, sender, receiver
    return serialize_message(msg)


def test_a_bag_holds_the_package_messages_and_gives_the_monitors_bytes(tmp_path):
    path = str(tmp_path / 'bag')
    bag = BagWriter(path)
    bag.add('/swarm/request', 'collab_perception/msg/Request')
    bag.add('/drone1/comm/reply', 'collab_perception/msg/Reply')
    request = Request(deadline_ms=300)
    encode_tensor(np.arange(8, dtype=np.float32), 'float32', request.query)
    sent = []
    for sec in (1, 2):
        data = comm(request, sec, 1, 255)
        bag.write('/swarm/request', sec * 10**9, data)
        sent.append(len(data))
        for sender in (2, 3):
            reply = Reply()
            encode_tensor(np.array([0.5], np.float32), 'float32', reply.score)
            data = comm(reply, sec, sender, 1)
            bag.write('/drone1/comm/reply', sec * 10**9 + sender, data)
            sent.append(len(data))
    bag.close()
    assert bag_topics(path) == {'/swarm/request': ('collab_perception/msg/Request', 2),
                                '/drone1/comm/reply': ('collab_perception/msg/Reply', 4)}
    store = typestore()
    first = next(read_bag(path, ['/swarm/request']))
    decoded = store.deserialize_cdr(first.data, first.msgtype)
    assert decoded.deadline_ms == 300 and decoded.sender == 1 and list(decoded.query.shape) == [8]
    summary = bandwidth_from_bag(path, ['drone1', 'drone2', 'drone3'], [1, 2, 3])
    assert (summary['total']['messages'], summary['total']['bytes']) == (6, sum(sent))
    assert summary['frames'] == 2 and summary['per_kind']['reply']['messages'] == 4
    with pytest.raises(BagError, match='exists already'):
        BagWriter(path)
    with pytest.raises(BagError, match='no such bag'):
        list(read_bag(str(tmp_path / 'missing')))


def segmentations(bag, drone):
    return [m.data for m in read_bag(bag, [f'/{drone}/segmentation'])]


@pytest.mark.ros
@pytest.mark.slow
def test_a_recorded_flight_replays_to_the_same_fused_outputs(tmp_path):
    """`swarm --record` on the shipped demo config (3 drones), then `replay` of its bag: the same cameras give
    the same segmentation on every drone, frame by frame, and the bag's comm messages give the monitor's bytes."""
    from test_swarm import Swarm
    generous = ['--drones', '3', '--quiet', '--set', 'drone_defaults.deadline_ms=2000',
                '--set', 'drone_defaults.reply_timeout_ms=1500', '--set', 'swarm.rate_hz=2', '--record']
    flight = Swarm('--run-dir', str(tmp_path / 'flight'), '--frames', '4', *generous, config=default_config_path())
    assert flight.wait(150) == 0, flight.output[-3000:]
    bag = str(tmp_path / 'flight' / 'bag')
    with open(tmp_path / 'flight' / 'summary.json') as f:
        summary = json.load(f)
    recorded = bag_topics(bag)
    for d in ('drone1', 'drone2', 'drone3'):
        assert recorded[f'/{d}/camera/image_raw'][1] == 4 and recorded[f'/{d}/segmentation'][1] == 4, recorded
    assert recorded['/swarm/frame'][1] == 4
    from_bag = bandwidth_from_bag(bag, ['drone1', 'drone2', 'drone3'], [1, 2, 3])
    assert from_bag['total'] == summary['monitor']['total'], (from_bag['total'], summary['monitor']['total'])
    assert from_bag['frames'] == summary['monitor']['frames'] == 4

    import subprocess
    import sys
    replay = subprocess.run([sys.executable, '-m', 'collab_perception.cli', 'replay', bag, '--run-dir',
                             str(tmp_path / 'replay'), *generous], capture_output=True, text=True, timeout=150)
    assert replay.returncode == 0, replay.stdout[-3000:] + replay.stderr[-2000:]
    with open(tmp_path / 'replay' / 'summary.json') as f:
        again = json.load(f)
    assert again['frames'] == 4 and again['per_drone']['drone1']['frames_with_help'] >= 2, again['per_drone']
    store = typestore()
    compared = {}
    for d in ('drone1', 'drone2', 'drone3'):
        first, second = segmentations(bag, d), segmentations(str(tmp_path / 'replay' / 'bag'), d)
        assert len(first) == len(second) == 4
        # Which replies and features made it in time is the one thing a loaded machine may change between the
        # two flights; a frame that fused the same drones' answers must give the same pixels, and the same
        # drones' scores for the same views must be equal.
        decisions = [[fusion_decision(store, m) for m in read_bag(b, [f'/{d}/fusion/info'])]
                     for b in (bag, str(tmp_path / 'replay' / 'bag'))]
        compared[d] = 0
        for i, (a, b) in enumerate(zip(first, second)):    # stamps differ (a new flight), pixels do not
            was, now = decisions[0][i], decisions[1][i]
            common = set(was['scores']) & set(now['scores'])
            assert all(abs(was['scores'][k] - now['scores'][k]) < 1e-5 for k in common), (d, i, was, now)
            if {k: v for k, v in was.items() if k != 'scores'} != {k: v for k, v in now.items() if k != 'scores'}:
                continue
            assert (store.deserialize_cdr(a, 'sensor_msgs/msg/Image').data ==
                    store.deserialize_cdr(b, 'sensor_msgs/msg/Image').data).all(), (d, i, was)
            compared[d] += bool(was['received']) if d == 'drone1' else 1
    # the supporters fuse nothing, so all their frames compare; the requester's fused frames do unless the
    # machine stalled one of the two flights
    assert compared['drone2'] == compared['drone3'] == 4 and compared['drone1'] >= 2, compared
    if compared['drone1'] == 4:
        assert again['overall']['fused_accuracy'] == summary['overall']['fused_accuracy']


def fusion_decision(store, message) -> dict:
    info = store.deserialize_cdr(message.data, message.msgtype)
    return {'answered': list(info.answered), 'selected': list(info.selected), 'received': list(info.received),
            'fallback': bool(info.fallback), 'scores': dict(zip(info.answered.tolist(), info.scores.tolist()))}
