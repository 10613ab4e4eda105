"""Helpers for the tests that run real rclpy / Fast DDS participants and node processes."""
import os
import signal
import subprocess
import sys
import time

import rclpy


def spin_until(node, predicate, timeout=10.0, executor=None):
    """Spin `node` until predicate() is true; returns the predicate's last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if executor is not None:
            executor.spin_once(timeout_sec=0.05)
        else:
            rclpy.spin_once(node, timeout_sec=0.05)
    return predicate()


def wait_for_subscribers(node, publishers, count=1, timeout=15.0):
    ok = spin_until(node, lambda: all(p.get_subscription_count() >= count for p in publishers), timeout)
    assert ok, 'no subscriber matched: ' + ', '.join(p.topic_name for p in publishers
                                                      if p.get_subscription_count() < count)


def wait_until_readers_match(node, publishers, timeout=30.0):
    """Wait until our publishers have matched every reader the graph shows on their topics, and every such
    reader reports on /diagnostics that it has matched every publisher the graph shows there, ours included.
    A writer can match a reader before the reader has matched the writer (docs/RELIABILITY.md, "Fast DDS
    under load"), and a volatile reader drops what arrives before; so an injected message counts only once
    the readers' side of the match is done."""
    from diagnostic_msgs.msg import DiagnosticArray

    from collab_perception.runtime.readiness import NODE_KEY, parse_endpoint_values

    reports = {}

    def on_diagnostics(msg):
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if NODE_KEY in values:
                reports[values[NODE_KEY]] = parse_endpoint_values(values)

    sub = node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 50)

    def short():
        out = []
        for pub in publishers:
            topic, graph = pub.topic_name, node.count_publishers(pub.topic_name)
            done = sum(1 for endpoints in reports.values() for count in endpoints.get(('sub', topic), [])
                       if count >= graph)
            matched, readers = pub.get_subscription_count(), node.count_subscribers(topic)
            if matched < readers:
                # our writer has not matched every reader the graph shows: what it sends now may miss one
                out.append(f'{topic} (our writer matched {matched} of {readers} readers)')
            elif done < matched:
                out.append(f'{topic} ({done}/{matched} readers matched all {graph} writers)')
        return out

    try:
        assert spin_until(node, lambda: reports and not short(), timeout), \
            'readers still unmatched: ' + ', '.join(short())
    finally:
        node.destroy_subscription(sub)


# swarms the tests start: a test that fails while its swarm flies must not leave it flying into the next test
# (every test of a session shares one ROS_DOMAIN_ID)
STARTED = []


def stop_leftovers():
    """Ctrl-C every process in STARTED that is still running (SIGKILL if it ignores it)."""
    left = [p for p in STARTED if p.poll() is None]
    for proc in left:
        proc.send_signal(signal.SIGINT)
    for proc in left:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    STARTED.clear()


def stop_process(proc, sig=signal.SIGINT, timeout=15.0):
    """Signal a child and wait for it; returns (returncode, output)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f'process {proc.args[0]} ignored {sig!r} for {timeout} s:\n{out}')
    return proc.returncode, out


def pid_alive(pid):
    """True if a process with this pid exists and is not a zombie."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().split(') ')[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


def descendants(pid):
    """All processes whose parent chain reaches pid (from /proc)."""
    parents = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    parents[int(entry)] = int(f.read().split(') ')[1].split()[1])
            except (FileNotFoundError, IndexError, ValueError):
                pass
    out, frontier = set(), {pid}
    while frontier:
        children = {p for p, pp in parents.items() if pp in frontier} - out
        out |= children
        frontier = children
    return out


def script_launcher(scripts, run_dir, **kwargs):
    """An EmbeddedLauncher whose children run small Python scripts instead of nodes: {label: source}."""
    from collab_perception.launch.embedded import EmbeddedLauncher
    from collab_perception.launch.plan import ProcessSpec

    class ScriptLauncher(EmbeddedLauncher):
        def commands(self):
            return [(p, [sys.executable, '-c', scripts[p.label]]) for p in self.processes]

    specs = [ProcessSpec(label, 'perception_node', '/' + label.split('/')[0], []) for label in scripts]
    return ScriptLauncher(specs, str(run_dir), env=dict(os.environ), **kwargs)


def wait_until_children_print(launcher, text, timeout=30.0):
    """Wait until every child of a started launcher has written `text` to its log."""
    logs = [launcher.log_path(p.label) for p in launcher.processes]
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(log) and text in open(log).read() for log in logs):
        assert time.monotonic() < deadline, f'the children did not print {text!r} within {timeout:g} s'
        time.sleep(0.05)
