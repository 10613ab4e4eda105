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
