"""The ROS 2 environment every process of this project runs under (no rclpy import here).

Network safety is not optional (README, "Safety"): DDS discovery stays on this machine
(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST), Fast DDS gets a profile with only shared memory and UDP on
127.0.0.1 (config/fastdds_localhost.xml), logs go to a temporary ROS_HOME, and every run gets its own
ROS_DOMAIN_ID so that concurrent runs on one host do not see each other. Libraries that would phone home
(ONNX Runtime's telemetry) are switched off (collab_perception.OFFLINE_ENV). scripts/env.sh sets the same
values for shells; this module applies them to the processes the Python code starts.
"""
from __future__ import annotations

import os
import random
import tempfile
from typing import Mapping, MutableMapping, Optional

from . import OFFLINE_ENV
from .config import resource_path

FASTDDS_PROFILE_NAME = 'fastdds_localhost.xml'
# Domain ids 1..100 stay clear of the port ranges of ids above 101 on Linux and of the default 0.
DOMAIN_ID_RANGE = (1, 100)


def fastdds_profile_path() -> str:
    path = resource_path('config', FASTDDS_PROFILE_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f'the Fast DDS profile {FASTDDS_PROFILE_NAME} is missing (looked for {path})')
    return path


def pick_domain_id(rng: Optional[random.Random] = None) -> int:
    rng = rng or random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), 'little'))
    return rng.randint(*DOMAIN_ID_RANGE)


def safe_ros_env(base: Optional[Mapping[str, str]] = None, domain_id: Optional[int] = None,
                 ros_home: Optional[str] = None) -> dict[str, str]:
    """A copy of `base` (default: os.environ) with the project's safe ROS settings applied.

    The discovery range, the Fast DDS profile and OFFLINE_ENV (telemetry off) are always forced;
    ROS_DOMAIN_ID and ROS_HOME are kept from `base` unless given (a fresh ROS_HOME under /tmp is made when
    `base` has none).
    """
    env = dict(os.environ if base is None else base)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env.pop('ROS_STATIC_PEERS', None)
    env['FASTDDS_DEFAULT_PROFILES_FILE'] = fastdds_profile_path()
    env['RMW_IMPLEMENTATION'] = 'rmw_fastrtps_cpp'
    env.update(OFFLINE_ENV)
    if domain_id is not None:
        env['ROS_DOMAIN_ID'] = str(domain_id)
    elif not env.get('ROS_DOMAIN_ID'):
        env['ROS_DOMAIN_ID'] = str(pick_domain_id())
    if ros_home is not None:
        env['ROS_HOME'] = ros_home
    elif not env.get('ROS_HOME'):
        env['ROS_HOME'] = tempfile.mkdtemp(prefix='collab-ros-home-')
    env['ROS_LOG_DIR'] = os.path.join(env['ROS_HOME'], 'log')
    return env


def apply_safe_ros_env(environ: MutableMapping[str, str] = os.environ, domain_id: Optional[int] = None,
                       ros_home: Optional[str] = None) -> dict[str, str]:
    """Apply safe_ros_env() to this process, before rclpy.init() (the RMW reads it at init)."""
    env = safe_ros_env(environ, domain_id=domain_id, ros_home=ros_home)
    for key in ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'FASTDDS_DEFAULT_PROFILES_FILE', 'RMW_IMPLEMENTATION',
                'ROS_DOMAIN_ID', 'ROS_HOME', 'ROS_LOG_DIR', *OFFLINE_ENV):
        environ[key] = env[key]
    environ.pop('ROS_STATIC_PEERS', None)
    return env
