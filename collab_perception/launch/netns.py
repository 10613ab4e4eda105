"""Drones on separate hosts, emulated on one machine: one Linux network namespace per host.

`swarm.network.mode: namespaces` runs each drone's processes in a network namespace of its own and the
swarm-wide nodes (source, monitor, evaluator, link, recorder) in another one, the ground station's. Each
namespace has a loopback and one veth interface, `eth0`, with an address of `swarm.network.subnet`; the
other ends of the veths hang on a bridge that lives in a further namespace of its own. Nothing else is
connected: there is no route out of the subnet, so these addresses exist only inside the namespaces and no
packet can reach another machine.

DDS then works as between real hosts: Fast DDS uses UDPv4 only (no shared memory, so that nothing
crosses between hosts except through the veths) and finds the other participants by unicast through an
initial peers list of every host's address, not by multicast (`dds_profile`; the same profile, with real
addresses, is what a drone of a real multi-host swarm needs: `collab-perception dds-profile`).

Creating namespaces needs CAP_SYS_ADMIN and CAP_NET_ADMIN (root, or a container that grants them) and
the `unshare` and `ip` commands; `available()` says why not where it cannot. No rclpy here.
"""
from __future__ import annotations

import ctypes
import ipaddress
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence
from xml.sax.saxutils import escape

from ..config import private_subnet_problem
from .embedded import die_with_parent

CLONE_NEWNET = 0x40000000
INTERFACE = 'eth0'
BRIDGE = 'br0'
# participants probed per peer address: Fast DDS gives each participant of a host the next free port pair
# (participant id 0, 1, ...), and an initial peer is tried on the ports of ids 0 .. range - 1
MIN_PEERS_RANGE = 4
_libc = ctypes.CDLL('libc.so.6', use_errno=True)


class NetworkError(RuntimeError):
    """The namespaces could not be set up (named step, the command's own error)."""


def dds_profile(address: str, peers: Sequence[str], peers_range: int = MIN_PEERS_RANGE) -> str:
    """A Fast DDS profile for a participant on one host of a multi-host swarm: UDPv4 only, metatraffic on
    this host's `address`, discovery by unicast to `peers` (every host's address, this one included, so
    that the participants of one host also find each other), no multicast."""
    for a in (address, *peers):
        ipaddress.IPv4Address(a)            # raises ValueError naming a bad address
    peer_xml = ''.join(f'\n            <locator><udpv4><address>{escape(p)}</address></udpv4></locator>'
                       for p in peers)
    return f"""<?xml version="1.0" encoding="UTF-8" ?>
<!-- Written by collab_perception (launch/netns.dds_profile) for the host at {escape(address)}:
     UDPv4 only; discovery by unicast to the initial peers below (no multicast: a unicast metatraffic
     locator is given); shared memory off, so that hosts talk only through the network. -->
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>collab_udp_host</transport_id>
        <type>UDPv4</type>
        <maxInitialPeersRange>{int(peers_range)}</maxInitialPeersRange>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="collab_perception_host" is_default_profile="true">
      <rtps>
        <useBuiltinTransports>false</useBuiltinTransports>
        <userTransports>
          <transport_id>collab_udp_host</transport_id>
        </userTransports>
        <builtin>
          <initialPeersList>{peer_xml}
          </initialPeersList>
          <metatrafficUnicastLocatorList>
            <locator><udpv4><address>{escape(address)}</address></udpv4></locator>
          </metatrafficUnicastLocatorList>
        </builtin>
      </rtps>
    </participant>
  </profiles>
</dds>
"""


def host_ros_env(env: dict[str, str], profile_path: str) -> dict[str, str]:
    """A process's ROS environment on one emulated host: the safe environment (rosenv.safe_ros_env) with the
    host's Fast DDS profile. The discovery range is left to that profile (SYSTEM_DEFAULT): LOCALHOST would
    confine discovery to each namespace's own loopback, and the subnet itself exists only inside the
    namespaces, so nothing can leave the machine."""
    out = dict(env)
    out['FASTDDS_DEFAULT_PROFILES_FILE'] = profile_path
    out['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'SYSTEM_DEFAULT'
    out.pop('ROS_STATIC_PEERS', None)
    return out


def available() -> Optional[str]:
    """None when this process can build the namespaces, else why not (a sentence)."""
    for tool in ('unshare', 'ip'):
        if shutil.which(tool) is None:
            return f'the {tool!r} command is not installed (util-linux / iproute2)'
    try:
        subprocess.run(['unshare', '--net', 'ip', 'link', 'add', 'probe0', 'type', 'veth', 'peer', 'name',
                        'probe1'], check=True, capture_output=True, timeout=10)
    except subprocess.CalledProcessError as e:
        return f'cannot create a network namespace with a veth pair here: {e.stderr.decode(errors="replace").strip()}'
    except (OSError, subprocess.TimeoutExpired) as e:
        return f'cannot create a network namespace here: {e}'
    return None


def enter_namespace(pid: int) -> None:
    """Move the calling thread into the network namespace of process `pid` (setns(2))."""
    fd = os.open(f'/proc/{pid}/ns/net', os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f'setns into the network namespace of pid {pid}: {os.strerror(err)}')
    finally:
        os.close(fd)


@dataclass
class Host:
    name: str
    address: str
    holder: subprocess.Popen           # `sleep` in the namespace: the namespace lives as long as it does

    @property
    def pid(self) -> int:
        return self.holder.pid


class NamespaceNetwork:
    """The hosts' namespaces, their veths and the bridge; `close()` (or the launcher's exit) removes them all:
    a namespace ends with its last process, its veth with it."""

    def __init__(self, hosts: Sequence[str], subnet: str):
        problem = private_subnet_problem(subnet)
        if problem:
            raise ValueError(f'swarm.network.subnet: {problem}')
        self.subnet = ipaddress.IPv4Network(subnet)
        addresses = list(self.subnet.hosts())
        if len(hosts) > len(addresses):
            raise ValueError(f'swarm.network.subnet: {subnet} has {len(addresses)} host addresses, the swarm '
                             f'needs {len(hosts)}')
        if len(set(hosts)) != len(hosts):
            raise ValueError(f'host names must be unique: {list(hosts)}')
        self.names = list(hosts)
        self._addresses = {h: str(a) for h, a in zip(hosts, addresses)}
        self.hosts: dict[str, Host] = {}
        self.bridge: Optional[subprocess.Popen] = None

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def _holder() -> subprocess.Popen:
        sleep = shutil.which('sleep') or '/bin/sleep'
        proc = subprocess.Popen(['unshare', '--net', '--', sleep, 'infinity'], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent)
        mine = os.readlink('/proc/self/ns/net')
        end = time.monotonic() + 10.0
        while time.monotonic() < end:       # unshare execs sleep once the namespace exists
            if proc.poll() is not None:
                raise NetworkError(f'unshare --net failed: {proc.stderr.read().decode(errors="replace").strip()}')
            try:
                if os.readlink(f'/proc/{proc.pid}/ns/net') != mine:
                    return proc
            except OSError:
                pass
            time.sleep(0.01)
        proc.kill()
        raise NetworkError('unshare --net did not create a namespace within 10 s')

    @staticmethod
    def _run(pid: int, *argv: str) -> None:
        done = subprocess.run(list(argv), capture_output=True, timeout=20, preexec_fn=lambda: enter_namespace(pid))
        if done.returncode != 0:
            raise NetworkError(f'{" ".join(argv)} (in the namespace of pid {pid}) failed: '
                               f'{done.stderr.decode(errors="replace").strip()}')

    def start(self) -> 'NamespaceNetwork':
        try:
            self.bridge = self._holder()
            b = self.bridge.pid
            self._run(b, 'ip', 'link', 'add', BRIDGE, 'type', 'bridge')
            self._run(b, 'ip', 'link', 'set', BRIDGE, 'up')
            for i, name in enumerate(self.names):
                host = Host(name, self._addresses[name], self._holder())
                self.hosts[name] = host
                port, end = f'port{i}', f'host{i}'
                self._run(b, 'ip', 'link', 'add', port, 'type', 'veth', 'peer', 'name', end)
                self._run(b, 'ip', 'link', 'set', port, 'master', BRIDGE)
                self._run(b, 'ip', 'link', 'set', port, 'up')
                self._run(b, 'ip', 'link', 'set', end, 'netns', str(host.pid))
                self._run(host.pid, 'ip', 'link', 'set', end, 'name', INTERFACE)
                # IPv4 only: no IPv6 link-local chatter (router solicitations, MLD) on the emulated radio
                try:
                    self._run(host.pid, 'sysctl', '-q', '-w', f'net.ipv6.conf.{INTERFACE}.disable_ipv6=1')
                except NetworkError:
                    pass                    # a kernel without IPv6: nothing to switch off
                self._run(host.pid, 'ip', 'addr', 'add', f'{host.address}/{self.subnet.prefixlen}', 'dev', INTERFACE)
                self._run(host.pid, 'ip', 'link', 'set', INTERFACE, 'up')
                self._run(host.pid, 'ip', 'link', 'set', 'lo', 'up')
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for proc in [*(h.holder for h in self.hosts.values()), *([self.bridge] if self.bridge else [])]:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.hosts.clear()
        self.bridge = None

    def __enter__(self) -> 'NamespaceNetwork':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ use
    def address(self, host: str) -> str:
        return self._addresses[host]

    def addresses(self) -> list[str]:
        return [self._addresses[h] for h in self.names]

    def preexec(self, host: str, first: Optional[Callable[[], None]] = None) -> Callable[[], None]:
        """A subprocess preexec_fn that puts the child into `host`'s namespace (after `first`)."""
        pid = self.hosts[host].pid

        def enter() -> None:
            if first is not None:
                first()
            enter_namespace(pid)
        return enter

    def write_profiles(self, directory: str, processes_per_host: dict[str, int]) -> dict[str, str]:
        """One Fast DDS profile per host under `directory`; returns host -> path."""
        os.makedirs(directory, exist_ok=True)
        peers_range = max([MIN_PEERS_RANGE, *(n + 2 for n in processes_per_host.values())])
        paths = {}
        for host in self.names:
            path = os.path.join(directory, f'{host}.xml')
            with open(path, 'w', encoding='utf-8') as f:
                f.write(dds_profile(self.address(host), self.addresses(), peers_range))
            paths[host] = path
        return paths

    def counters(self) -> dict[str, dict]:
        """Per host: its address and the bytes and packets its eth0 sent and received so far."""
        out = {}
        for name, host in self.hosts.items():
            row = {'address': host.address}
            try:
                with open(f'/proc/{host.pid}/net/dev', encoding='utf-8') as f:
                    for line in f:
                        iface, _, rest = line.partition(':')
                        if iface.strip() == INTERFACE:
                            v = [int(x) for x in rest.split()]
                            row.update(rx_bytes=v[0], rx_packets=v[1], tx_bytes=v[8], tx_packets=v[9])
            except OSError:
                pass
            out[name] = row
        return out

    def routes(self, host: str) -> list[str]:
        """The IPv4 routes of a host's namespace as 'destination/prefix dev' strings (/proc/<pid>/net/route)."""
        rows = []
        with open(f'/proc/{self.hosts[host].pid}/net/route', encoding='utf-8') as f:
            next(f)
            for line in f:
                iface, dest, _gw, _flags, _r, _u, _m, mask = line.split()[:8]
                d = ipaddress.IPv4Address(int(dest, 16).to_bytes(4, 'little'))
                m = bin(int(mask, 16)).count('1')
                rows.append(f'{d}/{m} {iface}')
        return rows
