"""Is the swarm ready for frame 1? Matched endpoints, as every node of the plan reports them.

A message published before its writer has matched a reader is lost to that reader, and under load two DDS
participants can take seconds to match even after both show up in a third one's graph. So readiness is not
read from the camera source's graph but from the endpoints themselves: every node of the plan publishes, in
its /diagnostics status, each topic it publishes or subscribes and how many peers that endpoint has matched
(a publisher's matched readers, a subscription's matched writers, as DDS counts them). Once every planned
node has reported, the reports together list every planned endpoint, and the swarm is ready when each
publisher has matched every planned subscription of its topic and each subscription every planned publisher.
Nodes outside the plan (rqt, `ros2 topic echo`) only add matches and never hold the swarm up.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping

NODE_KEY = 'node'                   # diagnostic value: the reporting node's fully qualified name
MATCHED_PREFIX = 'matched '         # diagnostic key 'matched pub /swarm/request' -> '5' ('5,5' for two endpoints)
KINDS = ('pub', 'sub')
# Every node has these (rosout, parameter events) or reports on them; external tools subscribe them too.
INFRASTRUCTURE_TOPICS = ('/rosout', '/parameter_events', '/diagnostics')

Endpoints = dict[tuple[str, str], list[int]]        # (kind, topic) -> matched count of each such endpoint


def group_endpoints(publishers: Iterable[tuple[str, int]], subscriptions: Iterable[tuple[str, int]]) -> Endpoints:
    """A node's endpoints from (topic, matched) pairs, infrastructure topics left out."""
    grouped: Endpoints = defaultdict(list)
    for kind, pairs in (('pub', publishers), ('sub', subscriptions)):
        for topic, matched in pairs:
            if topic not in INFRASTRUCTURE_TOPICS:
                grouped[(kind, topic)].append(int(matched))
    return dict(grouped)


def endpoint_values(publishers: Iterable[tuple[str, int]], subscriptions: Iterable[tuple[str, int]]) -> dict[str, str]:
    """Diagnostic key/values for a node's endpoints, from (topic, matched) pairs."""
    return {f'{MATCHED_PREFIX}{kind} {topic}': ','.join(map(str, counts))
            for (kind, topic), counts in sorted(group_endpoints(publishers, subscriptions).items())}


def parse_endpoint_values(values: Mapping[str, str]) -> Endpoints:
    """The inverse of endpoint_values; other keys are ignored. Raises ValueError on a malformed entry."""
    out: Endpoints = {}
    for key, value in values.items():
        if not key.startswith(MATCHED_PREFIX):
            continue
        kind, _, topic = key[len(MATCHED_PREFIX):].partition(' ')
        if kind not in KINDS or not topic.startswith('/'):
            raise ValueError(f'diagnostic key {key!r}: expected "{MATCHED_PREFIX}pub|sub /topic"')
        try:
            out[(kind, topic)] = [int(v) for v in value.split(',')]
        except ValueError:
            raise ValueError(f'diagnostic {key!r}: {value!r} is not a comma-separated list of counts') from None
    return out


def unmatched(reports: Mapping[str, Endpoints], expected_nodes: Iterable[str]) -> list[str]:
    """What keeps the swarm from frame 1: planned nodes that have not reported yet, then every endpoint that
    has matched fewer peers than the plan's nodes hold on its topic ('' list: ready)."""
    missing = [f'report of {n}' for n in sorted(set(expected_nodes) - set(reports))]
    if missing:
        return missing
    planned = {kind: defaultdict(int) for kind in KINDS}
    for endpoints in reports.values():
        for (kind, topic), counts in endpoints.items():
            planned[kind][topic] += len(counts)
    problems = []
    for node in sorted(reports):
        for (kind, topic), counts in sorted(reports[node].items()):
            need = planned['sub' if kind == 'pub' else 'pub'][topic]
            for matched in counts:
                if matched < need:
                    what = 'publisher' if kind == 'pub' else 'subscription'
                    problems.append(f'{node} {what} {topic} ({matched}/{need} matched)')
    return problems
