"""The embedded launcher: runs a process plan as child processes where launch_ros is not available.

It does what `ros2 launch` does for this package and no more:
  - each child gets `--ros-args` from the plan (namespace, node name, a params file, remappings);
  - its stdout and stderr are forwarded line by line with a `[drone/node]` prefix;
  - Ctrl-C / SIGTERM stop every child (SIGINT, then SIGTERM, then SIGKILL after grace periods) and wait;
  - a child that exits on its own is reported loudly and stops the swarm with a non-zero exit code,
    unless it is the plan's end-of-run process (the camera source after its last frame) exiting with 0;
  - children die with the launcher even if it is killed (PR_SET_PDEATHSIG), and run in their own process
    groups so that a terminal's Ctrl-C reaches only the launcher, which then shuts them down in order.
Every child runs under rosenv.safe_ros_env(): DDS stays on the loopback, or, with drones as separate hosts
(swarm.network.mode namespaces, launch/netns.py), on a private bridge between network namespaces.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, TextIO

from ..runtime.lifecycle import TEARDOWN_ISSUE, TEARDOWN_SIGNAL, TEARDOWN_TIMEOUT_S
from .plan import PACKAGE, NODE_EXECUTABLES, ProcessSpec, write_params_file

if TYPE_CHECKING:
    from .netns import NamespaceNetwork

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def executable_command(executable: str) -> list[str]:
    """The installed node wrapper (lib/collab_perception/<exe>, what ros2 run would start), or
    `python -m <module>` when the package is not colcon-installed."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
        try:
            path = os.path.join(get_package_prefix(PACKAGE), 'lib', PACKAGE, executable)
            if os.access(path, os.X_OK):
                return [path]
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    return [sys.executable, '-m', NODE_EXECUTABLES[executable]]


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f'signal {signal.Signals(-code).name}'
        except ValueError:
            return f'signal {-code}'
    return f'code {code}'


@dataclass
class Child:
    spec: ProcessSpec
    argv: list[str]
    popen: subprocess.Popen
    reader: Optional[threading.Thread]
    log_path: Optional[str]     # its output, line by line (None: log_to_files off)
    returncode: Optional[int] = None
    stopping: bool = False
    dumping: bool = False       # asked for its stacks (SIGUSR1): every line it prints now is forwarded


@dataclass
class LaunchResult:
    returncode: int
    reason: str
    exits: dict[str, int] = field(default_factory=dict)   # label -> exit code
    duration_s: float = 0.0
    lost: dict[str, int] = field(default_factory=dict)    # processes that died while the swarm went on
    teardown_timeouts: list[str] = field(default_factory=list)   # ended by their teardown watchdog
    respawned: dict[str, int] = field(default_factory=dict)       # label -> times started again (respawn)
    # (seconds since start, {label: CPU seconds the process has used}) about once a second while it ran
    cpu_samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)


_CLOCK_TICKS = os.sysconf('SC_CLK_TCK')


def cpu_seconds(pid: int) -> Optional[float]:
    """User plus system CPU time a process has used, all threads (/proc/PID/stat); None once it is gone."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as f:
            fields = f.read().rsplit(b')', 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS     # utime, stime (fields 14, 15 of stat)


class EmbeddedLauncher:
    def __init__(self, processes: list[ProcessSpec], run_dir: str, env: dict[str, str],
                 out: TextIO = sys.stdout, grace_s: float = 10.0, log_to_files: bool = True,
                 line_filter: Optional[Callable[[str, str], bool]] = None, on_node_exit: str = 'shutdown',
                 term_grace_s: float = 5.0, network: Optional['NamespaceNetwork'] = None,
                 host_envs: Optional[dict[str, dict[str, str]]] = None):
        self.processes = processes
        self.run_dir = run_dir
        self.env = env
        self.out = out
        self.grace_s = grace_s              # SIGINT -> SIGTERM
        self.term_grace_s = term_grace_s    # SIGTERM -> stack dump and SIGKILL
        self.log_to_files = log_to_files
        self.line_filter = line_filter
        if on_node_exit not in ('shutdown', 'continue', 'respawn'):
            raise ValueError(f'on_node_exit must be shutdown, continue or respawn, got {on_node_exit!r}')
        self.on_node_exit = on_node_exit
        # swarm.network.mode namespaces: each process starts inside its host's namespace, with its host's env
        self.network = network
        self.host_envs = host_envs or {}
        self.lost: dict[str, int] = {}      # label -> exit code of children that died while the swarm went on
        self.respawned: dict[str, int] = {}
        self.children: list[Child] = []
        self.cpu_samples: list[tuple[float, dict[str, float]]] = []
        self._lock = threading.Lock()
        self._stop_requested: Optional[str] = None

    # ------------------------------------------------------------------ output
    def say(self, text: str) -> None:
        with self._lock:
            self.out.write(text + '\n')
            self.out.flush()

    def log_path(self, label: str) -> str:
        """Where a child's output goes: <run_dir>/logs/<drone>__<node>.log."""
        return os.path.join(self.run_dir, 'logs', label.replace('/', '__') + '.log')

    def _forward(self, child: Child, stream) -> None:
        label = child.spec.label
        # a respawned child appends to its log
        log = open(child.log_path, 'a' if child.spec.label in self.respawned else 'w', encoding='utf-8') \
            if child.log_path else None
        try:
            for raw in iter(stream.readline, b''):
                line = raw.decode('utf-8', errors='replace').rstrip('\n')
                if log:
                    log.write(line + '\n')
                    log.flush()
                # A stuck child's stack dump always reaches the output (CI keeps no run directories).
                if child.dumping or self.line_filter is None or self.line_filter(label, line):
                    self.say(f'[{label}] {line}')
        finally:
            stream.close()
            if log:
                log.close()

    # ------------------------------------------------------------------ lifecycle
    def commands(self) -> list[tuple[ProcessSpec, list[str]]]:
        """The exact command line of every child (writes the params files)."""
        params_dir = os.path.join(self.run_dir, 'params')
        return [(p, executable_command(p.executable) + p.arguments() + p.ros_args(write_params_file(p, params_dir)))
                for p in self.processes]

    def _spawn(self, spec: ProcessSpec, argv: list[str]) -> Child:
        preexec = self.network.preexec(spec.host, first=die_with_parent) if self.network else die_with_parent
        popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=self.host_envs.get(spec.host, self.env), start_new_session=True,
                                 preexec_fn=preexec)
        child = Child(spec, argv, popen, None, self.log_path(spec.label) if self.log_to_files else None)
        child.reader = threading.Thread(target=self._forward, args=(child, popen.stdout), daemon=True)
        child.reader.start()
        return child

    def start(self) -> None:
        os.makedirs(os.path.join(self.run_dir, 'logs'), exist_ok=True)
        for spec, argv in self.commands():
            child = self._spawn(spec, argv)
            self.children.append(child)
            self.say(f'[launch] started {spec.label} (pid {child.popen.pid})')

    def respawn(self, child: Child) -> None:
        """Start an exited child again with the same command line (launch_ros's respawn)."""
        child.reader.join(timeout=5.0)
        self.respawned[child.spec.label] = self.respawned.get(child.spec.label, 0) + 1
        again = self._spawn(child.spec, child.argv)
        self.children[self.children.index(child)] = again
        self.say(f'[launch] respawned {child.spec.label} (pid {again.popen.pid})')

    def sample_cpu(self, t: float) -> None:
        """Record every running child's CPU seconds (a respawned child counts from its new start)."""
        sample = {}
        for child in self.children:
            used = cpu_seconds(child.popen.pid) if child.popen.poll() is None else None
            if used is not None:
                sample[child.spec.label] = used
        self.cpu_samples.append((round(t, 3), sample))

    def request_stop(self, why: str) -> None:
        if self._stop_requested is None:
            self._stop_requested = why

    def _signal_all(self, sig: int) -> None:
        for child in self.children:
            if child.popen.poll() is None:
                child.stopping = True
                try:
                    child.popen.send_signal(sig)
                except ProcessLookupError:
                    pass

    def _wait_all(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        for child in self.children:
            remaining = end - time.monotonic()
            try:
                child.popen.wait(timeout=max(remaining, 0.0))
            except subprocess.TimeoutExpired:
                return False
        return True

    def stop(self) -> None:
        """SIGINT everyone, then SIGTERM, then SIGKILL; returns when every child has exited."""
        self._signal_all(signal.SIGINT)
        if not self._wait_all(self.grace_s):
            stuck = [c.spec.label for c in self.children if c.popen.poll() is None]
            self.say(f'[launch] still running after {self.grace_s:g} s, sending SIGTERM: {", ".join(stuck)}')
            self._signal_all(signal.SIGTERM)
            if not self._wait_all(self.term_grace_s):
                stuck = [c.spec.label for c in self.children if c.popen.poll() is None]
                self.say(f'[launch] killing: {", ".join(stuck)} (their Python stacks follow)')
                for child in self.children:
                    child.dumping = child.popen.poll() is None
                self._signal_all(signal.SIGUSR1)        # nodes/common.spin_nodes: faulthandler dumps stacks
                time.sleep(1.0)
                self._signal_all(signal.SIGKILL)
                self._wait_all(5.0)
        for child in self.children:
            child.returncode = child.popen.wait()
            child.reader.join(timeout=5.0)

    def run(self, timeout_s: Optional[float] = None) -> LaunchResult:
        """Start everything and supervise until the run ends. Installs SIGINT/SIGTERM handlers while
        running (main thread only)."""
        t0 = time.monotonic()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda s, f: self.request_stop(f'received {signal.Signals(s).name}'))
        returncode, reason = 0, ''
        next_sample = 0.0
        try:
            self.start()
            while True:
                if time.monotonic() - t0 >= next_sample:
                    self.sample_cpu(time.monotonic() - t0)
                    next_sample += 1.0
                if self._stop_requested:
                    reason = self._stop_requested
                    self.say(f'[launch] {reason}: stopping {len(self.children)} processes')
                    break
                if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                    returncode, reason = 1, f'timed out after {timeout_s:g} s'
                    self.say(f'[launch] ERROR: {reason}; stopping the swarm')
                    break
                exited = [c for c in self.children if c.popen.poll() is not None and c.spec.label not in self.lost]
                if exited:
                    child = exited[0]
                    code = child.popen.returncode
                    if child.spec.ends_swarm and code == 0:
                        reason = f'{child.spec.label} finished'
                        self.say(f'[launch] {reason}; stopping the other processes')
                        break
                    if self.on_node_exit == 'respawn' and not child.spec.ends_swarm:
                        self.say(f'[launch] WARNING: process {child.spec.label} (pid {child.popen.pid}) exited '
                                 f'unexpectedly with {describe_exit(code)}; starting it again (on_node_exit: respawn)')
                        self.respawn(child)
                        continue
                    returncode = 1
                    reason = f'{child.spec.label} exited unexpectedly with {describe_exit(code)}'
                    if self.on_node_exit == 'continue' and not child.spec.ends_swarm:
                        self.lost[child.spec.label] = code
                        self.say(f'[launch] ERROR: process {child.spec.label} (pid {child.popen.pid}) exited '
                                 f'unexpectedly with {describe_exit(code)}; the others go on (on_node_exit: continue)')
                        continue
                    self.say(f'[launch] ERROR: process {child.spec.label} (pid {child.popen.pid}) exited '
                             f'unexpectedly with {describe_exit(code)}; stopping the swarm')
                    break
                time.sleep(0.05)
        finally:
            self.sample_cpu(time.monotonic() - t0)      # before the children are stopped: their work, not teardown
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        exits = {c.spec.label: c.returncode for c in self.children}
        # A node whose DDS teardown deadlocked inside Fast DDS had finished its work; its watchdog ended it
        # (runtime/lifecycle.py). Said loudly, not a failure of the run.
        stuck_teardown = [c for c in self.children if c.returncode == -TEARDOWN_SIGNAL and c.stopping]
        for child in stuck_teardown:
            self.say(f'[launch] WARNING: {child.spec.label}: its DDS teardown blocked for {TEARDOWN_TIMEOUT_S} s '
                     f'(the Fast DDS deadlock {TEARDOWN_ISSUE}); its watchdog ended it after its work was done '
                     f'(stacks in {child.log_path or "its output above"})')
        # A child that fails while being stopped (other than by our signals) makes the run fail too.
        clean = {0, -signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, -TEARDOWN_SIGNAL}
        failed = [label for label, code in exits.items() if code not in clean]
        failed = [label for label in failed if label not in self.lost]
        if failed and returncode == 0:
            returncode = 1
            reason = f'{", ".join(failed)} failed while stopping'
            self.say(f'[launch] ERROR: {reason}: ' + ', '.join(f'{l}: {describe_exit(exits[l])}' for l in failed))
        if self.lost:
            reason = 'lost during the run: ' + ', '.join(f'{l} ({describe_exit(c)})' for l, c in self.lost.items())
        return LaunchResult(returncode, reason, exits, time.monotonic() - t0, dict(self.lost),
                            [c.spec.label for c in stuck_teardown], dict(self.respawned), list(self.cpu_samples))
