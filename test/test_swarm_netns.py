"""Drones as separate hosts (swarm.network.mode namespaces, launch/netns.py): each drone and the ground station
in a network namespace of its own, veths on a bridge in a private namespace, Fast DDS over UDP with unicast
discovery. The same flight as on one host gives the same segmentation on every drone, frame by frame, and the
same bytes on the wire; the comm messages really crossed the veths; no namespace has a route out of the subnet.
"""
import json
import xml.etree.ElementTree as ET

import pytest

from collab_perception.config import ConfigError, default_config_path, load_swarm_config
from collab_perception.launch import netns
from collab_perception.runtime.bag import typestore

from test_bag import segmentations
from test_swarm import Swarm

NO_NAMESPACES = netns.available()
needs_namespaces = pytest.mark.skipif(NO_NAMESPACES is not None, reason=str(NO_NAMESPACES))
DRONES = ('drone1', 'drone2', 'drone3')


def test_dds_profile_is_unicast_udp_with_every_peer():
    xml = netns.dds_profile('10.77.0.3', ['10.77.0.1', '10.77.0.2', '10.77.0.3'], peers_range=6)
    root = ET.fromstring(xml)
    ns = {'d': 'http://www.eprosima.com'}
    assert [t.text for t in root.iterfind('.//d:transport_descriptor/d:type', ns)] == ['UDPv4']
    assert root.find('.//d:useBuiltinTransports', ns).text == 'false'       # no shared memory
    peers = [a.text for a in root.iterfind('.//d:initialPeersList//d:address', ns)]
    assert peers == ['10.77.0.1', '10.77.0.2', '10.77.0.3']
    assert [a.text for a in root.iterfind('.//d:metatrafficUnicastLocatorList//d:address', ns)] == ['10.77.0.3']
    assert root.find('.//d:maxInitialPeersRange', ns).text == '6'
    with pytest.raises(ValueError, match='not-an-address'):
        netns.dds_profile('not-an-address', ['10.77.0.1'])


@pytest.mark.parametrize('subnet, problem', [('8.8.8.0/24', 'not a private network'),
                                             ('10.77.0.0/30', 'too small'),
                                             ('10.77.0.1/24', 'not an IPv4 network')])
def test_a_bad_subnet_fails_at_start_up_naming_the_field(subnet, problem):
    with pytest.raises(ConfigError, match=rf'swarm\.network\.subnet.*{problem}'):
        load_swarm_config(default_config_path(), [('swarm.network.subnet', subnet)])


@needs_namespaces
def test_namespaces_have_one_interface_and_no_route_out():
    with netns.NamespaceNetwork(['swarm', 'drone1', 'drone2'], '10.77.9.0/28') as network:
        assert network.addresses() == ['10.77.9.1', '10.77.9.2', '10.77.9.3']
        for host in network.names:
            assert network.routes(host) == ['10.77.9.0/28 eth0'], network.routes(host)
        holders = [h.holder for h in network.hosts.values()]
        before = network.counters()
    assert all(p.poll() is not None for p in holders)      # closing ends every namespace
    assert set(before) == {'swarm', 'drone1', 'drone2'} and all('tx_bytes' in c for c in before.values())
    with pytest.raises(ValueError, match='has 14 host addresses, the swarm needs 15'):
        netns.NamespaceNetwork([f'd{i}' for i in range(15)], '10.77.9.0/28')


def fly(tmp_path, name, *sets):
    """The demo config (learned handshake), 3 drones, 4 frames at 2 Hz with deadlines wide enough that every
    frame is helped on a loaded machine, recorded."""
    args = ['--run-dir', str(tmp_path / name), '--frames', '4', '--drones', '3', '--quiet', '--record',
            '--set', 'drone_defaults.deadline_ms=2000', '--set', 'drone_defaults.reply_timeout_ms=1500',
            '--set', 'swarm.rate_hz=2', '--set', 'swarm.startup_timeout_s=90']
    for s in sets:
        args += ['--set', s]
    swarm = Swarm(*args, config=default_config_path())
    assert swarm.wait(240) == 0, swarm.output[-4000:]
    with open(tmp_path / name / 'summary.json') as f:
        return json.load(f), swarm.output


@pytest.mark.ros
@pytest.mark.slow
@needs_namespaces
def test_a_flight_across_namespaces_equals_the_same_flight_on_one_host(tmp_path):
    local, _ = fly(tmp_path, 'loopback')
    hosts, output = fly(tmp_path, 'namespaces', 'swarm.network.mode=namespaces')
    assert 'each host in its own network namespace on 10.77.0.0/24 (swarm 10.77.0.1, drone1 10.77.0.2' in output

    for summary in (local, hosts):
        assert summary['frames'] == 4 and summary['per_drone']['drone1']['frames_with_help'] == 4, summary['per_drone']
    store = typestore()
    for d in DRONES:
        first = segmentations(str(tmp_path / 'loopback' / 'bag'), d)
        second = segmentations(str(tmp_path / 'namespaces' / 'bag'), d)
        assert len(first) == len(second) == 4, d
        for a, b in zip(first, second):
            assert (store.deserialize_cdr(a, 'sensor_msgs/msg/Image').data ==
                    store.deserialize_cdr(b, 'sensor_msgs/msg/Image').data).all(), d
    assert hosts['overall']['fused_accuracy'] == local['overall']['fused_accuracy']
    assert hosts['monitor']['total'] == local['monitor']['total']
    assert hosts['monitor']['rejected'] == {}

    network = hosts['network']
    assert network['mode'] == 'namespaces' and list(network['hosts']) == ['swarm', *DRONES]
    assert local['network'] == {'mode': 'loopback'}
    for d in DRONES:
        # what a drone sent to the others left through its veth: its comm bytes (to the requester and to the
        # monitor on the ground station) are a floor of what its eth0 sent
        sent = hosts['monitor']['per_sender'][d]['bytes']
        assert network['hosts'][d]['tx_bytes'] > sent > 0, (d, network['hosts'][d], sent)
    # the feature maps (32 kB each) went from the selected supporter to drone1 through the bridge
    assert network['hosts']['drone1']['rx_bytes'] > hosts['monitor']['per_kind']['feature']['bytes']
