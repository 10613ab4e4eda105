"""DDS never sends a packet to an address other than the loopback.

Two real ROS processes exchange messages under the project's environment (rosenv.safe_ros_env), with an
LD_PRELOAD shim (test/data/netlog_shim.c, compiled here) logging the destination of every sendto /
sendmsg / sendmmsg / connect they make. Every logged destination must be 127.0.0.0/8 (or ::1), and the
run must have produced real traffic.
"""
import ipaddress
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from collab_perception.rosenv import fastdds_profile_path, safe_ros_env

HERE = os.path.dirname(os.path.abspath(__file__))

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


@pytest.mark.ros
def test_dds_traffic_stays_on_the_loopback(tmp_path):
    compiler = shutil.which('cc') or shutil.which('gcc')
    assert compiler, 'a C compiler is needed to build the network-logging shim'
    shim = tmp_path / 'netlog_shim.so'
    subprocess.run([compiler, '-shared', '-fPIC', '-O1', '-o', str(shim), os.path.join(HERE, 'data', 'netlog_shim.c'),
                    '-ldl'], check=True)
    log = tmp_path / 'net.log'
    env = safe_ros_env(domain_id=int(os.environ['ROS_DOMAIN_ID']))
    env.update(LD_PRELOAD=str(shim), COLLAB_NETLOG=str(log))
    procs = [subprocess.Popen([sys.executable, '-c', TALKER, name], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for name in ('alpha', 'bravo')]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert all("heard ['alpha', 'bravo']" in out for out in outputs), outputs   # traffic really crossed
    lines = log.read_text().splitlines()
    assert len(lines) > 20, lines
    bad = []
    for line in lines:
        call, family, host, port = line.split()
        address = ipaddress.ip_address(host)
        if not (address.is_loopback or (address.is_unspecified and call == 'connect')):
            bad.append(line)
    assert bad == [], f'DDS sent to non-loopback addresses: {sorted(set(bad))[:10]}'
