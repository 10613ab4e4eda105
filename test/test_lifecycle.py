"""How a node process ends when its DDS teardown never returns (runtime/lifecycle.py).

Fast DDS 3.2 can deadlock inside rmw_destroy_publisher when peers leave at the same moment
(eProsima/Fast-DDS#6502); the call holds the GIL, so nothing in Python runs again. Here a real rclpy node
process blocks in `destroy_node` (a C-level sleep that holds the GIL, as the deadlock does): spin_nodes'
kernel-level watchdog must end it with TEARDOWN_SIGNAL, its stacks in its output, and the launcher must
report that as a warning, not as a failed run."""
import io
import os
import signal
import subprocess
import sys
import time

import pytest
from rostools import script_launcher, wait_until_children_print

from collab_perception.runtime.lifecycle import TEARDOWN_SIGNAL, TEARDOWN_TIMEOUT_S

pytestmark = [pytest.mark.ros, pytest.mark.slow]

# A node that finishes at once and whose teardown blocks in C with the GIL held, like the Fast DDS deadlock.
NODE_STUCK_IN_TEARDOWN = '''
import ctypes
from rclpy.node import Node
from collab_perception.nodes.common import spin_nodes

class StuckInTeardown(Node):
    finished = True
    def __init__(self):
        super().__init__('stuck_in_teardown')
    def close(self):
        print('close ran: results written', flush=True)
    def destroy_node(self):
        ctypes.PyDLL(None).sleep(120)      # PyDLL keeps the GIL, as rclpy's C++ destroy does
        super().destroy_node()

raise SystemExit(spin_nodes([StuckInTeardown], []))
'''


def test_a_node_stuck_in_its_dds_teardown_is_ended_by_its_watchdog():
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, '-c', NODE_STUCK_IN_TEARDOWN], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode == -TEARDOWN_SIGNAL, proc.stdout
    assert 'close ran: results written' in proc.stdout
    # faulthandler wrote where it hung before the alarm ended it
    assert 'Timeout' in proc.stdout and 'in destroy_node' in proc.stdout, proc.stdout
    assert elapsed < TEARDOWN_TIMEOUT_S + 20, elapsed


def run_until_ready_then_stop(launcher):
    """Run the launcher in a thread; once every child printed 'ready', ask it to stop; its LaunchResult."""
    import threading
    results = []
    runner = threading.Thread(target=lambda: results.append(launcher.run(timeout_s=60)))
    runner.start()
    wait_until_children_print(launcher, 'ready')
    launcher.request_stop('test over')
    runner.join(60)
    return results[0]


def test_the_launcher_reports_a_teardown_watchdog_as_a_warning_and_a_crash_as_a_failure(tmp_path):
    ends_by_watchdog = ('import signal, time\nsignal.signal(signal.SIGINT, lambda *a: (signal.alarm(1)))\n'
                        'print("ready", flush=True)\nwhile True: time.sleep(0.05)\n')
    scripts = {'drone1/fusion': ends_by_watchdog,
               'drone2/matcher': 'import time\nprint("ready", flush=True)\nwhile True: time.sleep(0.05)\n'}
    out = io.StringIO()
    result = run_until_ready_then_stop(script_launcher(scripts, tmp_path / 'a', out=out, grace_s=8.0))
    text = out.getvalue()
    assert result.returncode == 0, text
    assert result.teardown_timeouts == ['drone1/fusion'] and result.exits['drone1/fusion'] == -signal.SIGALRM
    assert 'WARNING: drone1/fusion: its DDS teardown blocked' in text and 'Fast-DDS#6502' in text
    assert 'drone1__fusion.log' in text

    # any other death while stopping is still a failure
    scripts['drone1/fusion'] = ('import os, signal, time\nsignal.signal(signal.SIGINT, lambda *a: os.abort())\n'
                                'print("ready", flush=True)\nwhile True: time.sleep(0.05)\n')
    out = io.StringIO()
    result = run_until_ready_then_stop(script_launcher(scripts, tmp_path / 'b', out=out, grace_s=8.0))
    assert result.returncode == 1 and 'drone1/fusion failed while stopping' in result.reason, out.getvalue()
    assert result.teardown_timeouts == []
