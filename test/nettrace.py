"""Watch every network send and connect of a process tree with strace.

strace sees the system calls themselves, so it also catches what an LD_PRELOAD shim misses: glibc's
resolver (getaddrinfo) calls connect/sendto inside libc, where no preloaded symbol can interpose. Each
traced call names its destination; a destination is a leak when it lies outside 127.0.0.0/8 and ::1, or
when it is a DNS server on any address (a loopback stub resolver forwards the lookup off the machine).
"""
from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

NET_CALLS = ('connect', 'sendto', 'sendmsg', 'sendmmsg')
DNS_PORT = 53

_LINE = re.compile(r'^(?P<pid>\d+)\s+(?:<\.\.\. (?P<resumed>\w+) resumed>|(?P<call>\w+)\()')
_INET = re.compile(r'sin_port=htons\((?P<port>\d+)\), sin_addr=inet_addr\("(?P<host>[^"]+)"\)')
_INET6 = re.compile(r'sin6_port=htons\((?P<port>\d+)\).*?inet_pton\(AF_INET6, "(?P<host>[^"]+)"')
_EXEC = re.compile(r'^(?P<pid>\d+)\s+execve\("(?P<path>[^"]+)", \[(?P<argv>.*?)\]')


@dataclass(frozen=True)
class Destination:
    pid: int
    call: str
    host: str
    port: int

    @property
    def leaves_machine(self) -> bool:
        address = ipaddress.ip_address(self.host)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if self.port == DNS_PORT:
            return True
        if address.is_loopback:
            return False
        # connect() to 0.0.0.0 reaches this host (Linux); it sends nothing anywhere else
        return not (address.is_unspecified and self.call == 'connect')

    def __str__(self) -> str:
        return f'pid {self.pid} {self.call} {self.host}:{self.port}'


def strace_command(log_path: str, argv: Sequence[str]) -> list[str]:
    """argv under strace: every child followed, the network calls and execve logged to log_path."""
    strace = shutil.which('strace')
    if strace is None:
        raise AssertionError('strace is needed to watch the network calls (apt-get install strace)')
    # -s 24: payloads stay short in the log (a DDS swarm makes ~10^5 sends); destinations print in full
    return [strace, '-f', '-qq', '--seccomp-bpf', '-s', '24', '-o', log_path,
            '-e', 'trace=' + ','.join(('execve',) + NET_CALLS), *argv]


def _line_destinations(line: str) -> Iterator[Destination]:
    head = _LINE.match(line)
    if not head:
        return
    call = head.group('call') or head.group('resumed')
    if call not in NET_CALLS:
        return
    for pattern in (_INET, _INET6):
        for m in pattern.finditer(line):
            yield Destination(int(head.group('pid')), call, m.group('host'), int(m.group('port')))


def destinations(trace: str) -> list[Destination]:
    """Every destination address of a traced network call (AF_UNIX and netlink are not network)."""
    return [d for line in trace.splitlines() for d in _line_destinations(line)]


def executed(trace: str) -> list[tuple[int, str, str]]:
    """(pid, program path, argv as strace printed it, strings cut at 24 characters) of every execve."""
    return [(int(m.group('pid')), m.group('path'), m.group('argv'))
            for m in map(_EXEC.match, trace.splitlines()) if m]


def leaks(trace: str) -> list[Destination]:
    return [d for d in destinations(trace) if d.leaves_machine]


@dataclass
class TraceScan:
    sends: int                  # traced calls with an internet destination
    leaks: list[Destination]
    exec_pids: set[int]         # processes that called execve under the trace


def scan_file(path: str) -> TraceScan:
    """destinations() / leaks() / executed() of a trace file in one streaming pass: a traced swarm logs
    about a million calls, too many to hold as one string."""
    scan = TraceScan(0, [], set())
    with open(path, errors='replace') as f:
        for line in f:
            if ' execve(' in line:
                m = _EXEC.match(line)
                if m:
                    scan.exec_pids.add(int(m.group('pid')))
                continue
            for d in _line_destinations(line):
                scan.sends += 1
                if d.leaves_machine:
                    scan.leaks.append(d)
    return scan


def in_empty_netns(argv: Sequence[str]) -> list[str]:
    """argv in a new network namespace with only a downed loopback: whatever it tries to send fails
    with ENETUNREACH and reaches nobody, yet strace still logs the attempt."""
    unshare = shutil.which('unshare')
    if unshare is None:
        raise AssertionError('unshare (util-linux) is needed to run a probe without network')
    return [unshare, '--net', *argv]


def netns_available() -> Optional[str]:
    """None when this process may create a network namespace, else why not."""
    try:
        subprocess.run(in_empty_netns(['true']), check=True, capture_output=True, timeout=10)
    except (subprocess.CalledProcessError, OSError, AssertionError) as e:
        return f'cannot create a network namespace here: {e}'
    return None
