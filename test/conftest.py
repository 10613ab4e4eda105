"""Test-session setup: every ROS participant the tests create stays on this machine.

The session gets its own ROS_DOMAIN_ID (random in 1..100), ROS_HOME in a temporary folder, localhost
discovery and the project's Fast DDS profile (collab_perception.rosenv), applied to os.environ before
any test initializes rclpy, and inherited by every process a test starts.
"""
import os
import sys
import tempfile

import pytest

from collab_perception.rosenv import apply_safe_ros_env, pick_domain_id

_ROS_HOME = tempfile.mkdtemp(prefix='collab-test-ros-home-')
_DOMAIN_ID = int(os.environ.get('COLLAB_TEST_DOMAIN_ID') or pick_domain_id())
SESSION_ENV = apply_safe_ros_env(os.environ, domain_id=_DOMAIN_ID, ros_home=_ROS_HOME)


@pytest.fixture
def ros():
    """rclpy initialized (default context) for this test, shut down after it."""
    import rclpy
    rclpy.init()
    yield rclpy
    rclpy.try_shutdown()


@pytest.fixture(autouse=True)
def no_swarm_outlives_its_test():
    """A swarm a test started and left running (the test failed midway) is stopped before the next test."""
    yield
    rostools = sys.modules.get('rostools')
    if rostools is not None:
        rostools.stop_leftovers()
