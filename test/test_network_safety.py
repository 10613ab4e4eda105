"""Nothing the project starts sends a packet to, or looks up, anything off this machine.

Processes run under strace (test/nettrace.py), which logs the destination of every connect / sendto /
sendmsg / sendmmsg system call of the whole process tree, glibc's DNS resolver included. A destination
outside 127.0.0.0/8 and ::1, or any DNS server, fails the test. Probes that must try to reach the
outside run in an empty network namespace, where the attempt is logged but reaches nobody.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

import collab_perception
from collab_perception.config import resource_path
from collab_perception.rosenv import fastdds_profile_path, safe_ros_env
from nettrace import (Destination, destinations, executed, in_empty_netns, leaks, netns_available, scan_file,
                      strace_command)

MODEL = resource_path('models', 'who2com_hidden_target', 'matcher.onnx')
# What a drone's process has when started without env.sh or rosenv (ros2 run, ros2 launch, a user's script):
# this shell's paths, locale and ROS settings, nothing else. ONNX Runtime switches its telemetry off by
# itself where it sees a CI service's variables (CI=true among them), so a CI run keeping those would not
# see what a drone does.
DRONE_ENV_PREFIXES = ('PATH', 'HOME', 'USER', 'LANG', 'LC_', 'TMPDIR', 'TERM', 'PYTHON', 'VIRTUAL_ENV',
                      'LD_LIBRARY_PATH', 'AMENT_', 'COLCON_', 'CMAKE_PREFIX_PATH', 'ROS_', 'RMW_', 'FASTDDS_',
                      'SSL_CERT_')
BARE_ENV = {k: v for k, v in os.environ.items()
            if k.startswith(DRONE_ENV_PREFIXES) and k not in collab_perception.OFFLINE_ENV}

TALKER = r'''
import sys, time, rclpy
from std_msgs.msg import String
rclpy.init()
node = rclpy.create_node(sys.argv[1])
pub = node.create_publisher(String, '/safety/chatter', 10)
got = []
node.create_subscription(String, '/safety/chatter', lambda m: got.append(m.data), 10)
end = time.time() + 4.0
while time.time() < end:
    pub.publish(String(data=sys.argv[1]))
    rclpy.spin_once(node, timeout_sec=0.1)
print('heard', sorted(set(got)))
rclpy.shutdown()
'''


def test_safe_env_forces_localhost_discovery_and_the_profile():
    env = safe_ros_env({'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET', 'ROS_STATIC_PEERS': '10.0.0.7',
                        'PATH': '/usr/bin'}, domain_id=42)
    assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    assert 'ROS_STATIC_PEERS' not in env
    assert env['ROS_DOMAIN_ID'] == '42' and env['RMW_IMPLEMENTATION'] == 'rmw_fastrtps_cpp'
    assert env['FASTDDS_DEFAULT_PROFILES_FILE'] == fastdds_profile_path()
    assert env['ROS_HOME'].startswith('/tmp/') and env['ROS_LOG_DIR'].startswith(env['ROS_HOME'])


def test_safe_env_and_the_package_switch_onnx_runtime_telemetry_off():
    env = safe_ros_env({'ORT_DISABLE_TELEMETRY': '0', 'PATH': '/usr/bin'}, domain_id=7)
    assert env['ORT_DISABLE_TELEMETRY'] == '1'
    assert os.environ['ORT_DISABLE_TELEMETRY'] == '1'      # importing collab_perception set it
    # a node started directly gets it from its first import, before any module can load onnxruntime
    out = subprocess.run([sys.executable, '-c', 'import collab_perception.nodes.matcher_node, os; '
                          'print(os.environ.get("ORT_DISABLE_TELEMETRY"))'],
                         env=BARE_ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '1'


def test_trace_parser_reads_every_call_and_family():
    trace = '\n'.join([
        '11  connect(7, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16) = 0',
        '12  sendmsg(5, {msg_name={sa_family=AF_INET, sin_port=htons(7412), sin_addr=inet_addr("127.0.0.1")}, '
        'msg_namelen=16, msg_iov=[{iov_base="RTPS", iov_len=4}], msg_iovlen=1}, 0) = 4',
        '13  sendto(9, "x", 1, 0, {sa_family=AF_INET6, sin6_port=htons(9), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "2001:db8::1", &sin6_addr), sin6_scope_id=0}, 28) = 1',
        '14  connect(3, {sa_family=AF_UNIX, sun_path="/tmp/x"}, 110 <unfinished ...>',
        '15  sendto(4, "y", 1, 0, {sa_family=AF_INET6, sin6_port=htons(7400), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 1',
        '16  connect(3, {sa_family=AF_INET, sin_port=htons(7410), sin_addr=inet_addr("0.0.0.0")}, 16) = 0',
        '17  connect(3, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("127.0.0.53")}, 16) = 0',
        '18  execve("/usr/bin/true", ["true"], 0x7ffd /* 3 vars */) = 0',
    ])
    assert [str(d) for d in destinations(trace)] == [
        'pid 11 connect 10.255.255.53:53', 'pid 12 sendmsg 127.0.0.1:7412', 'pid 13 sendto 2001:db8::1:9',
        'pid 15 sendto ::1:7400', 'pid 16 connect 0.0.0.0:7410', 'pid 17 connect 127.0.0.53:53']
    assert [(d.pid, d.host) for d in leaks(trace)] == [(11, '10.255.255.53'), (13, '2001:db8::1'),
                                                       (17, '127.0.0.53')]   # DNS even via a loopback stub
    assert Destination(1, 'sendto', '::ffff:127.0.0.1', 9).leaves_machine is False
    assert executed(trace) == [(18, '/usr/bin/true', '"true"')]


def test_fastdds_profile_allows_only_shared_memory_and_loopback_udp():
    ns = {'d': 'http://www.eprosima.com'}
    root = ET.parse(fastdds_profile_path()).getroot()
    transports = root.findall('.//d:transport_descriptor', ns)
    kinds = {t.find('d:transport_id', ns).text: t.find('d:type', ns).text for t in transports}
    assert sorted(kinds.values()) == ['SHM', 'UDPv4']
    udp = [t for t in transports if t.find('d:type', ns).text == 'UDPv4'][0]
    assert [a.text for a in udp.findall('.//d:interfaceWhiteList/d:address', ns)] == ['127.0.0.1']
    participant = root.find('.//d:participant', ns)
    assert participant.get('is_default_profile') == 'true'
    assert participant.find('.//d:useBuiltinTransports', ns).text == 'false'
    used = [e.text for e in participant.findall('.//d:userTransports/d:transport_id', ns)]
    assert sorted(used) == sorted(kinds)



def _traced(tmp_path, name, argv, env):
    """argv under strace in its own session (so that killpg ends strace and the tracee together)."""
    log = tmp_path / f'{name}.strace'
    proc = subprocess.Popen(strace_command(str(log), argv), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return proc, log


def _read(log):
    return log.read_text() if log.exists() else ''


@pytest.mark.ros
def test_dds_traffic_stays_on_the_loopback(tmp_path):
    env = safe_ros_env(domain_id=int(os.environ['ROS_DOMAIN_ID']))
    runs = [_traced(tmp_path, name, [sys.executable, '-c', TALKER, name], env) for name in ('alpha', 'bravo')]
    outputs = [p.communicate(timeout=60)[0] for p, _ in runs]
    assert all(p.returncode == 0 for p, _ in runs), outputs
    assert all("heard ['alpha', 'bravo']" in out for out in outputs), outputs   # traffic really crossed
    for _, log in runs:
        trace = _read(log)
        assert len(destinations(trace)) > 20, trace[-2000:]
        assert leaks(trace) == [], f'DDS sent off the loopback: {sorted(map(str, set(leaks(trace))))[:10]}'


PROBE_SEND = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b'probe', ('192.0.2.1', 9))   # TEST-NET-1; unreachable in the empty namespace
except OSError as e:
    print('send failed as it should:', e)
try:
    socket.getaddrinfo('collab-perception-probe.invalid', 80)
except OSError as e:
    print('lookup failed as it should:', e)
"""

PROBE_ORT = r"""
import sys, time
if sys.argv[1] == 'package':
    import collab_perception.runtime.onnx_method   # what every drone node imports before onnxruntime
import onnxruntime as ort
ort.InferenceSession(sys.argv[2], providers=['CPUExecutionProvider'])
print('session open', flush=True)
time.sleep(120)
"""


def test_the_watcher_sees_a_send_and_a_lookup_off_the_machine(tmp_path):
    why = netns_available()
    assert why is None, why
    proc, log = _traced(tmp_path, 'probe', in_empty_netns([sys.executable, '-c', PROBE_SEND]), dict(os.environ))
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    found = {(d.host, d.port) for d in leaks(_read(log))}
    assert ('192.0.2.1', 9) in found, (out, found)
    assert any(port == 53 for _, port in found), (out, found)     # the resolver's query, from inside libc


@pytest.mark.slow
def test_onnx_runtime_looks_nothing_up_once_the_package_is_imported(tmp_path):
    """The shipped ONNX Runtime wheel resolves a Microsoft telemetry host some seconds after a session opens
    unless ORT_DISABLE_TELEMETRY=1 was set before it loaded; importing collab_perception sets it. Both
    probes run side by side without the variable in their environment, in empty network namespaces."""
    why = netns_available()
    assert why is None, why
    probes = {mode: _traced(tmp_path, mode, in_empty_netns([sys.executable, '-c', PROBE_ORT, mode, MODEL]), BARE_ENV)
              for mode in ('bare', 'package')}
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and not leaks(_read(probes['bare'][1])):
            assert all(p.poll() is None for p, _ in probes.values()), [p.stdout.read() for p, _ in probes.values()]
            time.sleep(0.5)
        time.sleep(3.0)
    finally:
        for p, _ in probes.values():
            os.killpg(p.pid, signal.SIGKILL)      # strace and the probe it traces
            p.communicate(timeout=30)
    bare_leaks = leaks(_read(probes['bare'][1]))
    assert bare_leaks, ('ONNX Runtime without ORT_DISABLE_TELEMETRY looked nothing up within 60 s: this wheel no '
                        'longer phones home, and this control no longer shows that the variable is what stops it')
    assert all(d.port == 53 for d in bare_leaks), bare_leaks
    package_trace = _read(probes['package'][1])
    assert 'execve' in package_trace and leaks(package_trace) == [], leaks(package_trace)


@pytest.mark.ros
@pytest.mark.slow
def test_a_whole_demo_swarm_run_sends_nothing_off_the_machine(tmp_path):
    """`make demo`'s swarm (5 drones, the learned handshake on ONNX Runtime) for 30 frames at 1 Hz, every
    child traced: sim bridge, monitor, evaluator, and each drone's perception, matcher and fusion."""
    t0 = time.monotonic()
    proc, log = _traced(tmp_path, 'swarm', [sys.executable, '-m', 'collab_perception.cli', 'swarm', '--frames', '30',
                                            '--set', 'swarm.rate_hz=1', '--quiet', '--timeout', '240',
                                            # strace slows every child, DDS discovery most: time to come up
                                            # before frame 1, and for the last frame to be counted
                                            '--set', 'swarm.startup_timeout_s=150', '--set', 'swarm.drain_s=4',
                                            '--run-dir', str(tmp_path / 'run')], BARE_ENV)
    out = proc.communicate(timeout=270)[0]
    watched_s = time.monotonic() - t0
    assert proc.returncode == 0, out[-4000:]
    with open(tmp_path / 'run' / 'summary.json') as f:
        summary = json.load(f)
    assert summary['frames'] == 30 and len(summary['drones']) == 5, summary['frames']
    assert watched_s >= 30.0, watched_s
    launched = {m.group(1): int(m.group(2)) for m in re.finditer(r'\[launch\] started (\S+) \(pid (\d+)\)', out)}
    assert set(launched) == set(summary['process_exits']), (sorted(launched), sorted(summary['process_exits']))
    assert {'swarm/sim_bridge', 'swarm/monitor', 'swarm/evaluator', 'drone5/matcher'} <= set(launched), launched
    scan = scan_file(str(log))
    assert set(launched.values()) <= scan.exec_pids, f'children not traced: {set(launched.values()) - scan.exec_pids}'
    assert scan.sends > 1000, 'the swarm made almost no traffic: is the trace following children?'
    assert scan.leaks == [], f'the swarm sent off the machine: {sorted(map(str, set(scan.leaks)))[:10]}'
    log.unlink()     # a few hundred MB of DDS sends on the loopback
