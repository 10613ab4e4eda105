"""Bandwidth accounting by frame stamp, sender and topic (runtime/bandwidth.py)."""
import csv

import pytest

from collab_perception.runtime.bandwidth import BandwidthLedger, CsvFrameWriter
from collab_perception.runtime.protocols import protocol_class
from collab_perception.runtime.topics import comm_topics, topic_kind, topic_owner

S = 1_000_000_000


def ledger_with_two_frames():
    ledger = BandwidthLedger(horizon_ns=5 * S, window_ns=10 * S)
    for stamp in (100 * S, 101 * S):
        ledger.add_frame(stamp, stamp)
        ledger.record('/swarm/request', 'drone1', stamp, 66, stamp + 1, wire_nbytes=68)
        ledger.record('/drone1/comm/reply', 'drone2', stamp, 44, stamp + 2)
        ledger.record('/drone1/comm/reply', 'drone3', stamp, 44, stamp + 3)
        ledger.record('/drone3/comm/connect', 'drone1', stamp, 36, stamp + 4)
        ledger.record('/drone1/comm/feature', 'drone3', stamp, 432, stamp + 5)
    ledger.add_frame(102 * S, 102 * S)   # a frame without any comm traffic
    return ledger


def test_summary_divides_by_every_frame_seen():
    s = ledger_with_two_frames().summary()
    assert s['frames'] == 3
    assert s['total']['bytes'] == 2 * (66 + 44 + 44 + 36 + 432)
    assert s['bytes_per_frame'] == pytest.approx(s['total']['bytes'] / 3)
    assert s['per_kind']['reply'] == {'messages': 4, 'bytes': 176, 'bytes_per_frame': pytest.approx(176 / 3)}
    assert s['per_sender']['drone3']['bytes'] == 2 * (44 + 432)
    assert s['wire_payload_bytes'] == s['total']['bytes'] + 2 * 2
    pairs = {(r['sender'], r['topic']): r['messages'] for r in s['per_sender_topic']}
    assert pairs[('drone2', '/drone1/comm/reply')] == 2


def test_fold_closes_only_old_frames_and_rows_are_per_stamp_sender_topic():
    ledger = ledger_with_two_frames()
    assert ledger.fold(100 * S + 4 * S) == []
    rows = ledger.fold(100 * S + 5 * S + 10)
    assert {r.stamp_ns for r in rows} == {100 * S}
    assert {(r.sender, r.kind, r.bytes) for r in rows} == {
        ('drone1', 'request', 66), ('drone2', 'reply', 44), ('drone3', 'reply', 44),
        ('drone1', 'connect', 36), ('drone3', 'feature', 432)}
    assert {r.stamp_ns for r in ledger.fold(None)} == {101 * S}


def test_window_stats_are_per_frame_rates_of_the_window():
    ledger = ledger_with_two_frames()
    stats = ledger.window_stats(102 * S)
    assert stats['frames'] == 3 and stats['messages'] == 10
    assert stats['request_bytes_per_frame'] == pytest.approx(2 * 66 / 3)
    assert stats['feature_bytes_per_frame'] == pytest.approx(2 * 432 / 3)
    assert stats['senders'] == ['drone1', 'drone2', 'drone3']
    assert stats['sender_bytes_per_frame'][1] == pytest.approx(88 / 3)
    late = ledger.window_stats(113 * S)   # everything left the 10 s window
    assert late['frames'] == 0 and late['bytes_per_frame'] == 0.0 and late['total_bytes'] > 0


def test_csv_writer(tmp_path):
    ledger = ledger_with_two_frames()
    writer = CsvFrameWriter(str(tmp_path / 'frames.csv'))
    writer.write(ledger.fold(None))
    writer.close()
    rows = list(csv.DictReader(open(tmp_path / 'frames.csv')))
    assert len(rows) == 10 and writer.rows == 10
    assert sum(int(r['bytes']) for r in rows) == ledger.summary()['total']['bytes']


def test_topic_helpers():
    topics = comm_topics(['drone1', 'drone2'])
    assert topics['/swarm/request'] == 'request' and topics['/drone2/comm/patches'] == 'patches'
    assert topics['/drone1/comm/value'] == 'value'
    assert sorted(set(topics.values())) == ['connect', 'feature', 'patches', 'reply', 'request', 'value']
    assert len(topics) == 1 + 2 * 5
    assert topic_kind('/drone1/camera/image_raw') == 'other'
    assert topic_owner('/drone1/camera/image_raw') == 'drone1' and topic_owner('/swarm/request') == ''


def test_frames_are_the_markers_when_the_source_publishes_them():
    ledger = ledger_with_two_frames()
    ledger.record('/drone1/comm/reply', 'id77', 999 * S, 40, 999 * S)   # injected, with a stamp of no frame
    s = ledger.summary()
    assert s['frames'] == 3 and s['total']['bytes'] == 2 * (66 + 44 + 44 + 36 + 432) + 40
    bare = BandwidthLedger()
    bare.record('/swarm/request', 'drone1', 5 * S, 66, 5 * S)
    bare.record('/swarm/request', 'drone1', 6 * S, 66, 6 * S)
    assert bare.frames == 2      # no frame markers: every stamp is a frame


def test_comm_topology_of_each_protocol():
    handshake, spatial = protocol_class('handshake'), protocol_class('spatial')
    t = handshake.topology(['a', 'b', 'c'], monitor=True)
    assert t['/swarm/request'] == (3, 4) and t['/a/comm/reply'] == (2, 2) and t['/c/comm/feature'] == (2, 2)
    assert handshake.topology(['a', 'b'], monitor=False)['/b/comm/connect'] == (1, 1)
    t = spatial.topology(['a', 'b', 'c'], monitor=False)
    assert sorted(t) == ['/a/comm/patches', '/b/comm/patches', '/c/comm/patches', '/swarm/request']
    assert t['/swarm/request'] == (3, 3) and t['/b/comm/patches'] == (2, 1)
