"""runtime/readiness.py: when the camera source may publish frame 1, from the nodes' matched endpoints."""
import pytest

from collab_perception.runtime.readiness import NODE_KEY, endpoint_values, parse_endpoint_values, unmatched


def report(pubs=(), subs=()):
    return parse_endpoint_values({NODE_KEY: '/x', **endpoint_values(pubs, subs)})


def test_endpoint_values_round_trip_and_skip_infrastructure():
    values = endpoint_values([('/swarm/request', 3), ('/rosout', 0), ('/diagnostics', 1), ('/a', 1), ('/a', 2)],
                             [('/parameter_events', 0), ('/drone1/camera/image_raw', 1)])
    assert values == {'matched pub /a': '1,2', 'matched pub /swarm/request': '3',
                      'matched sub /drone1/camera/image_raw': '1'}
    assert parse_endpoint_values({**values, 'rejected': '0', NODE_KEY: '/drone1/matcher'}) == {
        ('pub', '/a'): [1, 2], ('pub', '/swarm/request'): [3], ('sub', '/drone1/camera/image_raw'): [1]}


@pytest.mark.parametrize('key,value,match', [
    ('matched put /a', '1', 'pub|sub'),
    ('matched pub a', '1', 'pub|sub'),
    ('matched pub /a', 'one', 'comma-separated'),
    ('matched sub /a', '1,', 'comma-separated'),
])
def test_a_malformed_entry_is_named(key, value, match):
    with pytest.raises(ValueError, match=match) as e:
        parse_endpoint_values({key: value})
    assert key in str(e.value)


def test_ready_only_when_every_planned_endpoint_matched_every_planned_peer():
    # two requesters' perception nodes publish the request, two matchers and a monitor subscribe it
    reports = {
        '/d1/perception': report(pubs=[('/swarm/request', 3), ('/d1/perception/output', 1)]),
        '/d2/perception': report(pubs=[('/swarm/request', 3)]),
        '/d1/matcher': report(subs=[('/swarm/request', 2), ('/d1/perception/output', 1)]),
        '/d2/matcher': report(subs=[('/swarm/request', 2)]),
        '/swarm/monitor': report(subs=[('/swarm/request', 2)]),
    }
    nodes = list(reports)
    assert unmatched(reports, nodes) == []
    # extra peers outside the plan (a `ros2 topic echo`) never hold the swarm up
    reports['/d1/perception'] = report(pubs=[('/swarm/request', 4), ('/d1/perception/output', 1)])
    assert unmatched(reports, nodes) == []
    # one writer that has not matched the monitor yet: named with its counts, on the writer side
    reports['/d2/perception'] = report(pubs=[('/swarm/request', 2)])
    assert unmatched(reports, nodes) == ['/d2/perception publisher /swarm/request (2/3 matched)']
    # and the reader side: a matcher that has matched only one of the two requesters
    reports['/d2/perception'] = report(pubs=[('/swarm/request', 3)])
    reports['/d2/matcher'] = report(subs=[('/swarm/request', 1)])
    assert unmatched(reports, nodes) == ['/d2/matcher subscription /swarm/request (1/2 matched)']


def test_nodes_that_have_not_reported_come_first():
    reports = {'/d1/perception': report(pubs=[('/swarm/request', 0)])}
    assert unmatched(reports, ['/d1/perception', '/d1/matcher', '/swarm/monitor']) == [
        'report of /d1/matcher', 'report of /swarm/monitor']
    # without the matcher's report its subscription is not planned yet: it is the missing report that waits
    assert unmatched(reports, ['/d1/perception']) == []


def test_status_reports_matches_and_recreates_a_subscription_left_unmatched(ros):
    """nodes/common.StatusPublisher on real rclpy: its status lists the node's endpoints with their matches,
    and a subscription that stays short of the publishers in the graph (here one it can never match: a
    best-effort writer for a reliable reader) is created again once, and still receives afterwards."""
    import time

    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    from collab_perception.nodes.common import StatusPublisher

    listener, talker = ros.create_node('listener', namespace='/readiness'), ros.create_node('talker')
    received, statuses = [], []
    listener.create_subscription(String, '/readiness/chatter', lambda m: received.append(m.data), 10)
    status = StatusPublisher(listener, 'readiness/listener', 'test', period_s=0.2, rematch_after=3)
    talker.create_subscription(DiagnosticArray, '/diagnostics', statuses.append, 10)
    best_effort = talker.create_publisher(String, '/readiness/chatter',
                                          QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
    executor = SingleThreadedExecutor()
    executor.add_node(listener)
    executor.add_node(talker)

    def spin_until(done, timeout=10.0):
        end = time.monotonic() + timeout
        while not done() and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        return done()

    assert spin_until(lambda: status.recreated)
    assert status.recreated == {'/readiness/chatter'}
    chatter = [s for s in listener.subscriptions if s.topic_name == '/readiness/chatter']
    assert len(chatter) == 1
    talker.destroy_publisher(best_effort)
    reliable = talker.create_publisher(String, '/readiness/chatter', 10)
    assert spin_until(lambda: chatter[0].get_publisher_count() == 1)
    reliable.publish(String(data='after'))
    assert spin_until(lambda: received == ['after'])

    def listener_values():
        for msg in statuses:
            for s in msg.status:
                if s.name == 'readiness/listener':
                    yield {kv.key: kv.value for kv in s.values}
    assert spin_until(lambda: any(v.get('matched sub /readiness/chatter') == '1' for v in listener_values()))
    latest = list(listener_values())[-1]
    assert latest[NODE_KEY] == '/readiness/listener'
    assert 'matched pub /diagnostics' not in latest                 # infrastructure topics are left out
    executor.shutdown()
    listener.destroy_node()
    talker.destroy_node()
