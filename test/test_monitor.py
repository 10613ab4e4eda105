"""The monitor node in its own process counts exactly what serialize_message says each message is."""
import json
import os
import subprocess

import numpy as np
import pytest
from rclpy.serialization import serialize_message
from std_msgs.msg import Header

from collab_perception.config import build_config
from collab_perception.launch.embedded import executable_command
from collab_perception.launch.plan import ProcessSpec, build_node_plan, write_params_file
from collab_perception.msg import BandwidthStats, Connect, FeatureMap, PatchSegments, Reply, Request
from collab_perception.runtime.codec import encode_tensor

from rostools import spin_until, stop_process, wait_for_subscribers

pytestmark = pytest.mark.ros
DRONES = {'alpha': 1, 'bravo': 2, 'charlie': 3}


def start_monitor(tmp_path, extra_topics=()):
    cfg = build_config({'drone_defaults': {'method': 'placeholder'},
                        'drones': [{'name': n, 'id': i} for n, i in DRONES.items()],
                        'swarm': {'monitor': {'period_s': 0.2, 'extra_topics': list(extra_topics)}}})
    spec = next(n for n in build_node_plan(cfg, str(tmp_path)) if n.executable == 'monitor')
    process = ProcessSpec('swarm/monitor', 'monitor', spec.namespace, [spec])
    argv = executable_command('monitor') + process.ros_args(write_params_file(process, str(tmp_path)))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, os.path.join(str(tmp_path), 'monitor')


def stamped(msg, sec, sender, receiver):
    msg.header = Header()
    msg.header.stamp.sec = sec
    msg.sender, msg.receiver = sender, receiver
    return msg


def test_monitor_counts_equal_serialize_message_lengths(ros, tmp_path):
    proc, out_dir = start_monitor(tmp_path)
    node = ros.create_node('test_monitor_publisher')
    stats = []
    node.create_subscription(BandwidthStats, '/swarm/bandwidth', stats.append, 10)
    pubs = {
        '/swarm/request': node.create_publisher(Request, '/swarm/request', 100),
        '/alpha/comm/reply': node.create_publisher(Reply, '/alpha/comm/reply', 100),
        '/bravo/comm/connect': node.create_publisher(Connect, '/bravo/comm/connect', 10),
        '/alpha/comm/feature': node.create_publisher(FeatureMap, '/alpha/comm/feature', 10),
        '/alpha/comm/patches': node.create_publisher(PatchSegments, '/alpha/comm/patches', 10),
    }
    frames = node.create_publisher(Header, '/swarm/frame', 10)
    try:
        wait_for_subscribers(node, list(pubs.values()) + [frames])
        rng = np.random.default_rng(0)
        expected = {t: [0, 0] for t in pubs}          # topic -> [messages, bytes]
        per_sender = {}
        for frame in range(6):
            sec = 1000 + frame
            frames.publish(Header(stamp=stamped(Request(), sec, 0, 0).header.stamp))
            msgs = []
            req = stamped(Request(deadline_ms=300), sec, 1, 255)
            encode_tensor(rng.normal(size=5 + frame).astype(np.float32), 'float32', req.query)  # odd sizes: padding
            msgs.append(('/swarm/request', req, 'alpha'))
            for sender in (2, 3):
                rep = stamped(Reply(), sec, sender, 1)
                encode_tensor(rng.normal(size=1).astype(np.float32), 'float16', rep.score)
                msgs.append(('/alpha/comm/reply', rep, 'bravo' if sender == 2 else 'charlie'))
            msgs.append(('/bravo/comm/connect', stamped(Connect(), sec, 1, 2), 'alpha'))
            feat = stamped(FeatureMap(), sec, 2, 1)
            encode_tensor(rng.normal(size=(3, 7, 5 + frame)).astype(np.float32), 'int8', feat.features)
            msgs.append(('/alpha/comm/feature', feat, 'bravo'))
            patch = stamped(PatchSegments(grid_height=8, grid_width=8, cells=list(range(frame + 1))), sec, 3, 1)
            encode_tensor(rng.uniform(size=frame + 1).astype(np.float32), 'uint8', patch.confidence)
            encode_tensor(rng.uniform(size=(frame + 1, 8)).astype(np.float32), 'uint8', patch.class_probs)
            msgs.append(('/alpha/comm/patches', patch, 'charlie'))
            for i, (topic, msg, sender) in enumerate(msgs):
                size = len(serialize_message(msg))
                pubs[topic].publish(serialize_message(msg) if i % 2 else msg)   # typed and raw publishing
                expected[topic][0] += 1
                expected[topic][1] += size
                per_sender[sender] = per_sender.get(sender, 0) + size
        pubs['/swarm/request'].publish(b'\x00\x01\x00\x00\x01\x02')   # too short to hold a header
        assert spin_until(node, lambda: any(s.total_messages >= 36 for s in stats), timeout=10.0), \
            f'monitor did not report all messages: {[s.total_messages for s in stats]}'
    finally:
        code, output = stop_process(proc)
        node.destroy_node()
    assert code == 0, output
    with open(os.path.join(out_dir, 'summary.json')) as f:
        summary = json.load(f)
    for topic, (count, nbytes) in expected.items():
        assert summary['per_topic'][topic]['messages'] == count, topic
        assert summary['per_topic'][topic]['bytes'] == nbytes, topic
    assert {k: v['bytes'] for k, v in summary['per_sender'].items()} == per_sender
    assert summary['frames'] == 6
    assert summary['total']['bytes'] == sum(b for _, b in expected.values())
    assert sum(summary['rejected'].values()) == 1
    # Between processes Fast DDS pads payloads to a multiple of 4: the delivered size is at most 3 more.
    assert 0 <= summary['wire_payload_bytes'] - summary['total']['bytes'] <= 3 * 36
    last = max(stats, key=lambda s: s.total_messages)
    assert last.total_bytes == summary['total']['bytes'] and last.rejected_messages == 1
    with open(summary['csv']) as f:
        rows = f.read().strip().splitlines()
    assert len(rows) == 1 + 6 * 6   # header + (frame, sender, topic) groups: 6 per frame


def test_monitor_rejects_extra_topic_without_header(ros, tmp_path):
    proc, _ = start_monitor(tmp_path, [{'topic': '/alpha/chatter', 'type': 'std_msgs/msg/String'}])
    try:
        code, output = proc.wait(timeout=20), proc.stdout.read()
    finally:
        if proc.poll() is None:
            stop_process(proc)
    assert code == 2 and 'has no std_msgs/Header first' in output and '/alpha/chatter' in output
