"""The contract between a node process and its launcher about how it ends (no ROS here).

A node process tears its DDS entities down under a kernel-level watchdog (nodes/common.spin_nodes): Fast DDS
3.2 can deadlock inside that teardown when peers leave at the same moment. Its event thread waits for the PDP
mutex in a timer callback while a receive thread holds that mutex and waits for the event thread to unregister
a timer (eProsima/Fast-DDS#6502; our native stacks showed exactly this in rmw_destroy_publisher). The call never
returns and holds the GIL, so no Python code can run again in that process. An alarm signal with its default
action then ends the process, after faulthandler has written every thread's stack to the node's log. The
launcher knows that signal: the node had already finished its work and written its results (its `close()`
runs before the teardown), so the run is reported with a warning, not as failed.
"""
from __future__ import annotations

import signal

TEARDOWN_TIMEOUT_S = 5                  # a healthy teardown takes well under a second
TEARDOWN_SIGNAL = signal.SIGALRM        # what ends a process whose teardown is stuck (exit status -14)
TEARDOWN_ISSUE = 'eProsima/Fast-DDS#6502'
