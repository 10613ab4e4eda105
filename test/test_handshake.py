"""The requester and supporter state machines of runtime/handshake.py, every path, no ROS."""
import math

import pytest

from collab_perception.runtime.handshake import (AddressError, Connect, FrameOutcome, RequesterTracker,
                                                 StampRing, SupporterCache, check_addressing, select_threshold)

MS = 1_000_000
S0 = 1_000 * MS   # a frame stamp


def tracker(**kw):
    args = dict(my_id=1, peers=[1, 2, 3, 4], deadline_ns=300 * MS, reply_timeout_ns=100 * MS)
    args.update(kw)
    return RequesterTracker(**args)


def only(actions, kind):
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, actions
    return found[0]


def test_full_handshake_selects_argmax_and_completes_when_features_arrive():
    t = tracker()
    assert t.on_own(S0, 'own', requested=True, now_ns=S0 + 5 * MS) == []
    assert t.on_reply(S0, 2, 0.1, S0 + 10 * MS) == []
    assert t.on_reply(S0, 3, 0.9, S0 + 11 * MS) == []
    connect = only(t.on_reply(S0, 4, 0.5, S0 + 12 * MS), Connect)   # all three in: select at once
    assert connect.receivers == [3]
    out = only(t.on_features(S0, 3, 'f3', S0 + 20 * MS), FrameOutcome)
    assert out.selected == [3] and out.received == {3: 'f3'} and out.own == 'own'
    assert not out.fallback and out.deadline_met and out.scores == {2: 0.1, 3: 0.9, 4: 0.5}
    assert out.asked == [2, 3, 4]
    assert t.next_wakeup() is None


def test_no_replies_before_reply_timeout_falls_back():
    t = tracker()
    t.on_own(S0, 'own', True, now_ns=S0)
    assert t.next_wakeup() == S0 + 100 * MS
    assert t.on_time(S0 + 99 * MS) == []
    out = only(t.on_time(S0 + 100 * MS), FrameOutcome)
    assert out.fallback and not out.deadline_met and out.selected == [] and out.reason == 'no replies in time'
    assert t.counters['fallback'] == 1


def test_partial_replies_select_among_those_in_time_and_late_reply_is_counted():
    t = tracker()
    t.on_own(S0, 'own', True, now_ns=S0)
    t.on_reply(S0, 2, 0.3, S0 + 5 * MS)
    connect = only(t.on_time(S0 + 100 * MS), Connect)
    assert connect.receivers == [2]
    assert t.on_reply(S0, 3, 9.0, S0 + 101 * MS) == []
    assert t.counters['late'] == 1


def test_features_missing_at_deadline_fall_back():
    t = tracker()
    t.on_own(S0, 'own', True, now_ns=S0)
    for peer, score in ((2, 0.2), (3, 0.1), (4, 0.0)):
        t.on_reply(S0, peer, score, S0 + MS)
    assert t.next_wakeup() == S0 + 300 * MS
    out = only(t.on_time(S0 + 300 * MS), FrameOutcome)
    assert out.fallback and not out.deadline_met and out.selected == [2] and out.received == {}
    assert t.on_features(S0, 2, 'late', S0 + 301 * MS) == []
    assert t.counters['late'] == 1


def test_replies_may_overtake_the_own_output():
    t = tracker()
    for peer in (2, 3, 4):
        assert t.on_reply(S0, peer, float(peer), S0 + MS) == []
    connect = only(t.on_own(S0, 'own', True, now_ns=S0 + 2 * MS), Connect)
    assert connect.receivers == [4]


def test_frame_without_own_output_is_dropped_as_lost_at_the_deadline():
    t = tracker()
    t.on_reply(S0, 2, 1.0, S0 + MS)
    assert t.on_time(S0 + 300 * MS) == []
    assert t.counters['lost_own'] == 1 and t.open_frames() == []


def test_unrequested_frame_is_published_at_once():
    t = tracker()
    out = only(t.on_own(S0, 'own', requested=False, now_ns=S0), FrameOutcome)
    assert not out.requested and not out.fallback and out.asked == []


def test_unknown_sender_duplicates_and_nonfinite_scores_are_counted():
    t = tracker()
    t.on_own(S0, 'own', True, now_ns=S0)
    assert t.on_reply(S0, 9, 1.0, S0) == [] and t.counters['unknown_sender'] == 1
    assert t.on_reply(S0, 1, 1.0, S0) == [] and t.counters['unknown_sender'] == 2   # ourselves
    assert t.on_reply(S0, 2, math.nan, S0) == [] and t.counters['bad_score'] == 1
    t.on_reply(S0, 2, 1.0, S0)
    assert t.on_reply(S0, 2, 2.0, S0) == [] and t.counters['duplicate'] == 1
    assert t.on_features(S0 + 1, 2, 'x', S0) == [] and t.counters['unexpected'] == 1


def test_features_from_an_unselected_drone_are_rejected():
    t = tracker()
    t.on_own(S0, 'own', True, now_ns=S0)
    for peer, score in ((2, 0.9), (3, 0.1), (4, 0.0)):
        t.on_reply(S0, peer, score, S0)
    assert t.on_features(S0, 3, 'f', S0) == [] and t.counters['unexpected'] == 1
    assert only(t.on_features(S0, 2, 'f', S0), FrameOutcome).received == {2: 'f'}


def test_top_n_waits_for_all_selected_and_publishes_partial_at_deadline():
    t = tracker(select='top_n', top_n=2)
    t.on_own(S0, 'own', True, now_ns=S0)
    for peer, score in ((2, 0.9), (3, 0.5), (4, 0.7)):
        actions = t.on_reply(S0, peer, score, S0)
    assert only(actions, Connect).receivers == [2, 4]
    assert t.on_features(S0, 4, 'f4', S0 + MS) == []
    out = only(t.on_time(S0 + 300 * MS), FrameOutcome)
    assert out.received == {4: 'f4'} and not out.fallback and not out.deadline_met
    assert out.reason == 'deadline: partial features'


def test_threshold_gate_can_choose_no_partner():
    assert select_threshold({2: 0.0, 3: 0.0}, self_score=5.0, top_n=4, threshold=0.2) == []
    assert select_threshold({2: 3.0, 3: 0.0}, self_score=0.0, top_n=4, threshold=0.2) == [2]
    t = tracker(select='threshold', threshold=0.5)
    t.on_own(S0, 'own', True, self_score=10.0, now_ns=S0)
    for peer in (2, 3, 4):
        actions = t.on_reply(S0, peer, 0.0, S0)
    out = only(actions, FrameOutcome)
    assert out.selected == [] and not out.fallback and out.deadline_met and out.reason == 'gate chose no partner'


def test_silent_peer_is_no_longer_waited_for():
    t = tracker(silent_after=2)
    for k in range(3):
        stamp = S0 + k * 1000 * MS
        t.on_own(stamp, 'own', True, now_ns=stamp)
        t.on_reply(stamp, 2, 0.5, stamp)
        actions = t.on_reply(stamp, 3, 0.1, stamp)
        if k < 2:   # peer 4 never answers: wait for the reply timeout
            assert actions == []
            actions = t.on_time(stamp + 100 * MS)
        assert only(actions, Connect).receivers == [2]
        t.on_features(stamp, 2, 'f', stamp + MS)
    assert t.expected_repliers() == [2, 3]


def _frame_fused_by_2_and_3(t, stamp, reply_of_4_at=None):
    """One frame on which peers 2 and 3 answer at once; peer 4 answers at `reply_of_4_at` (or not)."""
    t.on_own(stamp, 'own', True, now_ns=stamp)
    t.on_reply(stamp, 2, 0.5, stamp)
    t.on_reply(stamp, 3, 0.1, stamp)
    t.on_time(stamp + 100 * MS)
    t.on_features(stamp, 2, 'f', stamp + 101 * MS)
    if reply_of_4_at is not None:
        t.on_reply(stamp, 4, 0.9, reply_of_4_at)


def test_silent_peer_that_answers_in_time_again_is_waited_for_again():
    t = tracker(silent_after=2)
    for k in range(2):     # peer 4 is stalled: two frames without its reply
        _frame_fused_by_2_and_3(t, S0 + k * 1000 * MS)
    assert t.expected_repliers() == [2, 3]
    stamp = S0 + 2000 * MS  # it is back: its reply comes within the reply timeout, after 2 and 3 completed the frame
    t.on_own(stamp, 'own', True, now_ns=stamp)
    t.on_reply(stamp, 2, 0.5, stamp + 5 * MS)
    assert only(t.on_reply(stamp, 3, 0.1, stamp + 6 * MS), Connect).receivers == [2]
    assert t.on_reply(stamp, 4, 0.9, stamp + 30 * MS) == [] and t.counters['late'] == 1
    assert t.expected_repliers() == [2, 3, 4]
    t.on_features(stamp, 2, 'f', stamp + 40 * MS)
    # a reply after the reply timeout (even of a finished frame) is no sign of life
    for k in range(2):
        stamp = S0 + (3000 + k * 1000) * MS
        _frame_fused_by_2_and_3(t, stamp, reply_of_4_at=stamp + 150 * MS)
    assert t.expected_repliers() == [2, 3]


def test_replies_with_made_up_stamps_cannot_evict_real_frames():
    t = tracker()
    now = S0 + 10_000 * MS
    t.on_own(now, 'own', True, now_ns=now)                      # a real frame, waiting for its replies
    assert t.on_reply(now - 5000 * MS, 2, 0.5, now) == []       # long over
    assert t.on_reply(now + 5000 * MS, 2, 0.5, now) == []       # from the future
    assert t.counters['stale_stamp'] == 1 and t.counters['future_stamp'] == 1
    for k in range(20):                                         # plausible stamps, no own output: a few only
        t.on_reply(now + (k + 1) * MS, 2, 0.5, now)
    assert t.counters['orphans_dropped'] == 20 - t.max_orphans
    assert t.counters['evicted_frames'] == 0 and now in t.open_frames()
    t.on_reply(now, 2, 0.5, now + MS)
    t.on_reply(now, 3, 0.1, now + MS)
    assert only(t.on_reply(now, 4, 0.2, now + 2 * MS), Connect).receivers == [2]


def test_bounded_memory_counts_evicted_frames():
    t = tracker(capacity=4)
    for k in range(10):
        t.on_own(S0 + k, 'own', True, now_ns=S0)
    assert len(t.open_frames()) == 4 and t.counters['evicted_frames'] == 6
    for k in range(10):      # replies ahead of their own outputs may not evict the frames waiting for replies
        t.on_reply(S0 + 100 + k, 2, 1.0, S0)
    assert t.counters['evicted_frames'] == 6 and t.counters['orphans_dropped'] == 10


def test_rejects_bad_timeouts_and_unknown_selection():
    with pytest.raises(ValueError):
        tracker(reply_timeout_ns=300 * MS)
    with pytest.raises(ValueError, match='argmax'):
        tracker(select='best')


def test_supporter_cache_answers_parked_requests_when_own_output_arrives():
    cache = SupporterCache(capacity=2)
    assert cache.request(S0, 1, 'q', expires_ns=S0 + 300 * MS) is False
    ready = cache.add_own(S0, 'own')
    assert [(p.sender, p.query) for p in ready] == [(1, 'q')]
    assert cache.request(S0, 2, 'q2', expires_ns=S0 + 300 * MS) is True
    cache.request(S0 + 5, 1, 'q', expires_ns=S0 + 10)
    assert cache.expire(S0 + 20) == 1 and cache.counters['expired_requests'] == 1
    cache.add_own(S0 + 1, 'a')
    cache.add_own(S0 + 2, 'b')
    assert cache.own(S0) is None and cache.own(S0 + 2) == 'b'


def test_supporter_cache_drops_requests_whose_deadline_passed():
    cache = SupporterCache(capacity=4)
    cache.add_own(S0, 'own')
    # a supporter resumed after a stall: the request of S0 (deadline S0 + 300 ms) is handled 3 s late
    assert cache.request(S0, 1, 'q', expires_ns=S0 + 300 * MS, now_ns=S0 + 3000 * MS) is False
    assert cache.counters['stale_requests'] == 1 and cache.pending == []
    assert cache.request(S0, 1, 'q', expires_ns=S0 + 300 * MS, now_ns=S0 + 299 * MS) is True
    # parked before its own output came, which then arrives after the deadline: not answered
    assert cache.request(S0 + 1, 2, 'q2', expires_ns=S0 + 300 * MS, now_ns=S0 + 10 * MS) is False
    assert cache.add_own(S0 + 1, 'late', now_ns=S0 + 400 * MS) == []
    assert cache.counters['stale_requests'] == 2 and cache.pending == []
    assert cache.request(S0 + 2, 3, 'q3', expires_ns=S0 + 300 * MS, now_ns=S0 + 10 * MS) is False
    assert [p.sender for p in cache.add_own(S0 + 2, 'own2', now_ns=S0 + 200 * MS)] == [3]


def test_stamp_ring_evicts_oldest():
    ring = StampRing(2)
    for k in range(3):
        ring.put(k, k)
    assert 0 not in ring and ring.get(2) == 2 and ring.evicted == 1


def test_addressing():
    check_addressing(2, 255, 1, [1, 2, 3], allow_broadcast=True)
    check_addressing(2, 1, 1, [1, 2, 3], allow_broadcast=False)
    for args, reason in (((7, 1), 'unknown_sender'), ((1, 1), 'own_message'), ((2, 3), 'not_for_me'),
                         ((2, 255), 'not_for_me')):
        with pytest.raises(AddressError) as info:
            check_addressing(*args, 1, [1, 2, 3], allow_broadcast=False)
        assert info.value.reason == reason


def test_spatial_frame_fuses_the_patches_that_arrived_by_the_reply_timeout():
    t = tracker(spatial=True)
    t.on_own(S0, 'own', True, now_ns=S0)
    assert t.on_reply(S0, 2, 0.4, S0 + MS, payload='patches2') == []
    # spatial: no connect stage; the frame is fused at the reply timeout, so that fusing ends by the deadline
    assert t.next_wakeup() == S0 + 100 * MS
    assert t.on_reply(S0, 3, 0.9, S0 + 2 * MS, payload='patches3') == []
    assert t.on_time(S0 + 100 * MS - 1) == []
    out = only(t.on_time(S0 + 100 * MS), FrameOutcome)
    assert out.received == {2: 'patches2', 3: 'patches3'} and out.selected == [2, 3]
    assert not out.fallback and not out.deadline_met and out.reason == 'deadline: partial patches'
    t.on_own(S0 + 1, 'own', True, now_ns=S0)
    for peer in (2, 3, 4):
        actions = t.on_reply(S0 + 1, peer, 0.1, S0, payload=f'p{peer}')
    out = only(actions, FrameOutcome)
    assert out.deadline_met and out.reason == 'complete' and len(out.received) == 3
