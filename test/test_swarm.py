"""The embedded launcher runs real swarms: node processes, Fast DDS on localhost, the monitor's counts;
Ctrl-C leaves no child behind; a crashing child stops the swarm with a non-zero exit naming it."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from rostools import STARTED, descendants, pid_alive

pytestmark = [pytest.mark.ros, pytest.mark.slow]
TEST_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'swarm_test.yaml')


class Swarm:
    """`collab-perception swarm ...` as a child process whose output is collected line by line."""

    def __init__(self, *args, config=TEST_CONFIG):
        self.proc = subprocess.Popen([sys.executable, '-m', 'collab_perception.cli', 'swarm', '--config', config, *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        STARTED.append(self.proc)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip('\n'))

    @property
    def output(self):
        return '\n'.join(self.lines)

    def wait_for(self, pattern, count=1, timeout=60.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if len([l for l in self.lines if re.search(pattern, l)]) >= count:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f'{pattern!r} x{count} not seen:\n{self.output[-4000:]}')

    def pids(self):
        return {m.group(1): int(m.group(2)) for m in
                (re.search(r'\[launch\] started (\S+) \(pid (\d+)\)', l) for l in self.lines) if m}

    def wait(self, timeout=60.0):
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f'swarm did not exit within {timeout} s:\n{self.output[-4000:]}')
        self.reader.join(timeout=5)
        return code


def run_swarm(tmp_path, *args, timeout=120.0):
    swarm = Swarm('--run-dir', str(tmp_path), '--timeout', str(timeout - 10), *args)
    code = swarm.wait(timeout)
    with open(tmp_path / 'summary.json') as f:
        return code, json.load(f), swarm.output


def check_handshake_counts(summary, frames, drones):
    monitor = summary['monitor']
    assert summary['frames'] == frames, summary['frames']
    counts = {k: v['messages'] for k, v in monitor['per_kind'].items()}
    # one requester (drone1): one request, one reply per other drone, one connect, one feature map per frame
    assert counts == {'request': frames, 'reply': frames * (drones - 1), 'connect': frames, 'feature': frames}, counts
    assert summary['overall']['comm_bytes_per_frame'] == pytest.approx(monitor['total']['bytes'] / frames)
    assert monitor['rejected'] == {}


def test_three_drone_swarm_per_node(tmp_path):
    code, summary, output = run_swarm(tmp_path, '--frames', '6')
    assert code == 0, output[-4000:]
    check_handshake_counts(summary, 6, 3)
    assert summary['drones'] == ['drone1', 'drone2', 'drone3'] and summary['process_layout'] == 'per_node'
    # replies come back addressed to the requester, from each other drone
    senders = {(r['sender'], r['topic']) for r in summary['monitor']['per_sender_topic']}
    assert {('drone2', '/drone1/comm/reply'), ('drone3', '/drone1/comm/reply'),
            ('drone1', '/swarm/request')} <= senders
    assert re.search(r'\[drone1/fusion\] .*\[drone1\] frame \d+\.\d+: 2/2 replies, selected drone\d', output)
    assert 'Bytes per frame on the wire (6 frames' in output
    assert all(code == 0 for code in summary['process_exits'].values()), summary['process_exits']
    # the source saw the protocol's whole comm graph (Protocol.topology) and every planned endpoint matched
    # (runtime/readiness.py) before frame 1, not a timeout
    source_log = (tmp_path / 'logs' / 'swarm__sim_bridge.log').read_text()
    assert 'swarm up and matched after' in source_log and 'starting after' not in source_log


def test_three_drone_swarm_per_drone_containers(tmp_path):
    code, summary, output = run_swarm(tmp_path, '--frames', '5', '--layout', 'per_drone', '--quiet')
    assert code == 0, output[-4000:]
    check_handshake_counts(summary, 5, 3)
    assert set(summary['process_exits']) == {'swarm/sim_bridge', 'swarm/monitor', 'swarm/evaluator',
                                             'drone1/container', 'drone2/container', 'drone3/container'}


def test_sigint_stops_every_child(tmp_path):
    swarm = Swarm('--run-dir', str(tmp_path), '--frames', '0')
    swarm.wait_for(r'\[drone\d/fusion\] .*fusion ready', count=3)
    swarm.wait_for(r'\[drone1/fusion\] .*replies, selected', count=1)
    pids = swarm.pids()
    assert len(pids) == 12   # source, monitor, evaluator + 3 nodes x 3 drones
    family = descendants(swarm.proc.pid)
    # SIGUSR1 (what the launcher sends a stuck child before SIGKILL) dumps the stacks and harms nothing
    os.kill(pids['drone2/perception'], signal.SIGUSR1)
    log = tmp_path / 'logs' / 'drone2__perception.log'
    # faulthandler writes the dump frame by frame: wait for the frame asserted on, not just the header
    spin_frame = re.compile(r'common\.py", line \d+ in spin_nodes')
    deadline = time.monotonic() + 10
    while not spin_frame.search(log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    dump = log.read_text()
    assert 'most recent call first' in dump and spin_frame.search(dump), dump[-2000:]
    swarm.proc.send_signal(signal.SIGINT)
    code = swarm.wait(60)
    assert code == 0, swarm.output[-3000:]
    assert 'received SIGINT: stopping 12 processes' in swarm.output
    leftovers = [label for label, pid in pids.items() if pid_alive(pid)] + [p for p in family if pid_alive(p)]
    assert leftovers == [], leftovers
    assert os.path.exists(tmp_path / 'monitor' / 'summary.json')


def test_crashing_child_stops_the_swarm_and_is_named(tmp_path):
    swarm = Swarm('--run-dir', str(tmp_path), '--frames', '0', '--layout', 'per_node')
    # every node up first: the crash under test is the matcher's, not one during another node's start-up
    for node in ('perception', 'matcher', 'fusion'):
        swarm.wait_for(rf'\[drone\d/{node}\] .*{node} ready', count=3)
    pids = swarm.pids()
    os.kill(pids['drone2/matcher'], signal.SIGKILL)
    code = swarm.wait(60)
    assert code != 0
    assert re.search(r'ERROR: process drone2/matcher \(pid \d+\) exited unexpectedly with signal SIGKILL',
                     swarm.output), swarm.output[-3000:]
    assert [label for label, pid in pids.items() if pid_alive(pid)] == []


def test_bad_config_fails_at_start_naming_the_field(tmp_path):
    result = subprocess.run([sys.executable, '-m', 'collab_perception.cli', 'swarm', '--config', TEST_CONFIG,
                             '--run-dir', str(tmp_path), '--set', 'swarm.rate_hz=-2'],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and 'swarm.rate_hz' in result.stderr and '>= 0.1' in result.stderr
    result = subprocess.run([sys.executable, '-m', 'collab_perception.cli', 'swarm', '--config', TEST_CONFIG,
                             '--run-dir', str(tmp_path), '--set', 'drone_defaults.method=magic'],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "drones[0].method: unknown method 'magic'" in result.stderr
