"""CollaVN on the ROS 2 swarm (config/swarm_nav.yaml): real rclpy and Fast DDS, models/collavn_nav on ONNX
Runtime, the navigation bridge stepping in lockstep with the drones' velocity commands.

- the swarm's episodes end exactly as the offline agent's (runtime/nav_agent.run_episode) on the same
  episodes: the same paths, steps and outcomes;
- malformed memory-protocol messages are rejected with a counted reason, and a supporter killed in the
  middle of an episode leaves the others acting on their own memories, every step commanded.
"""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.serialization import serialize_message
from std_msgs.msg import Header

from collab_perception.config import resource_path
from collab_perception.msg import MemoryValue, Request
from collab_perception.runtime.codec import encode_tensor

from rostools import spin_until, wait_until_readers_match
from test_swarm import Swarm

pytestmark = [pytest.mark.ros, pytest.mark.slow]

NAV_CONFIG = resource_path('config', 'swarm_nav.yaml')
MODEL = resource_path('models', 'collavn_nav')
# a loaded 2-core machine must not turn a step's wait into a different run: wide deadlines, 2 steps/s
STEADY = ('swarm.rate_hz=2', 'drone_defaults.deadline_ms=450', 'drone_defaults.reply_timeout_ms=350')


def nav_swarm(tmp_path, episodes, max_steps, *sets, quiet=True):
    return Swarm('--run-dir', str(tmp_path), *(['--quiet'] if quiet else []),
                 *[x for kv in (f'swarm.source.nav.episodes={episodes}', f'swarm.source.nav.max_steps={max_steps}',
                                *STEADY, *sets) for x in ('--set', kv)], config=NAV_CONFIG)


def summary_of(tmp_path):
    with open(tmp_path / 'summary.json') as f:
        return json.load(f)


def offline_results(results, max_steps):
    """The same episodes played by runtime/nav_agent.run_episode on the same (rebuilt) map."""
    from collab_perception.data.nav import Episode, load_nav_config
    from collab_perception.runtime.nav_agent import NavAgent, run_episode
    from collab_perception.world.nav import build_nav_map
    nav = load_nav_config()
    agents = [NavAgent(MODEL) for _ in range(3)]
    maps, out = {}, []
    for r in results:
        e = Episode.from_dict(r['episode'])
        if e.map_id not in maps:
            m = build_nav_map(nav, e.map_id)
            maps[e.map_id] = (m, np.stack([agents[0].encode(views) for views in m.rgb]))
        m, descriptors = maps[e.map_id]
        outcomes, sent = run_episode(agents, m, descriptors, e, max_steps, nav.success_m, nav.region_m)
        out.append((outcomes, sent))
    return out


def test_swarm_episodes_end_as_the_offline_agents_do(tmp_path):
    max_steps = 12
    swarm = nav_swarm(tmp_path, 2, max_steps)
    code = swarm.wait(240)
    assert code == 0, swarm.output[-4000:]
    summary = summary_of(tmp_path)
    nav = summary['navigation']
    assert nav['episodes'] == 2 and nav['missing_commands'] == 0, nav
    for key in ('success_rate', 'spl', 'ssr', 'dts', 'comm_bytes_per_step'):
        assert summary['overall'][key] is not None, key
    # every active drone asks on every step: one request per active drone-step, 174 B each on the wire
    active_steps = sum(o['steps'] for r in nav['results'] for o in r['outcomes'])
    assert nav['request_messages'] == active_steps
    for r, (outcomes, sent) in zip(nav['results'], offline_results(nav['results'], max_steps)):
        assert r['paths'] == sent['paths'], (r['episode'], r['paths'], sent['paths'])
        for got, want in zip(r['outcomes'], outcomes):
            assert (got['final_m'], got['steps'], got['path_m']) == (want.final_m, want.steps, want.path_m)
    assert 'Navigation (drone1, drone2, drone3)' in swarm.output and 'SR ' in swarm.output


def test_malformed_memory_messages_are_counted_and_a_killed_supporter_leaves_the_others_acting(tmp_path, ros):
    swarm = nav_swarm(tmp_path, 4, 20, 'swarm.on_node_exit=continue', quiet=False)
    swarm.wait_for(r'episode 0 \(common', timeout=120)
    node = ros.create_node('test_nav_injector')
    status = {}

    def on_status(msg):
        for s in msg.status:
            status[s.name] = {kv.key: kv.value for kv in s.values}
    node.create_subscription(DiagnosticArray, '/diagnostics', on_status, 50)
    value_pub = node.create_publisher(MemoryValue, '/drone1/comm/value', 10)
    request_pub = node.create_publisher(Request, '/swarm/request', 10)
    # readers: drone1's fusion and the monitor on the value topic; every drone's matcher and the monitor on requests
    assert spin_until(node, lambda: node.count_subscribers(value_pub.topic_name) >= 2 and
                      node.count_subscribers(request_pub.topic_name) >= 4, timeout=30)
    wait_until_readers_match(node, [value_pub, request_pub])
    stamp = node.get_clock().now().to_msg()

    def value(sender, score, size=64):
        msg = MemoryValue(header=Header(stamp=stamp), sender=sender, receiver=1, score=score)
        encode_tensor(np.ones(size, np.float32), 'float32', msg.value)
        return msg

    for msg in (value(2, float('nan')), value(3, 1.5), value(2, 0.9, size=7), value(77, 0.9)):
        value_pub.publish(serialize_message(msg))
    value_pub.publish(b'\x00\x01\x00\x00garbage')
    short_query = Request(header=Header(stamp=stamp), sender=1, receiver=255)
    encode_tensor(np.ones(5, np.float32), 'float32', short_query.query)     # the model's query has 32
    request_pub.publish(serialize_message(short_query))

    def counts():
        fusion = status.get('drone1/fusion', {})
        matcher = status.get('drone2/matcher', {})
        return (int(fusion.get('rejected.bad_score', 0)), int(fusion.get('rejected.bad_shape', 0)),
                int(fusion.get('rejected.unknown_sender', 0)), int(fusion.get('rejected.undecodable', 0)),
                int(matcher.get('rejected.bad_shape', 0)))
    assert spin_until(node, lambda: counts() == (2, 1, 1, 1, 1), timeout=20), (counts(), status.get('drone1/fusion'))

    os.kill(swarm.pids()['drone2/matcher'], signal.SIGKILL)
    spin_until(node, lambda: swarm.proc.poll() is not None, timeout=240)
    code = swarm.wait(30)
    node.destroy_node()
    summary = summary_of(tmp_path)
    assert code != 0 and 'drone2/matcher' in summary['lost_processes'], summary['end_reason']
    nav = summary['navigation']
    # both episodes were flown to their end and every active drone commanded every step
    assert nav['episodes'] == 4 and nav['missing_commands'] == 0, nav
    for r in nav['results']:
        assert [len(p) - 1 for p in r['paths']] == [o['steps'] for o in r['outcomes']], r
