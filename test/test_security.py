"""Who may speak: comm messages from ids outside the swarm's drone list are dropped and counted
(test_swarm_faults.py injects them into a running swarm); here, the probe of DDS Security that
docs/RELIABILITY.md ("Who may speak") reports: the Fast DDS of the PyPI wheels has no security plugins, so
authentication and encryption with per-drone certificates (SROS2) need a ROS 2 install whose Fast DDS was
built with -DSECURITY=ON. If a later wheel has them, this test fails: then build the secure swarm config."""
import os
import subprocess
import sys

import pytest

from collab_perception.runtime.handshake import AddressError, check_addressing

PROBE = r"""
import rclpy
rclpy.init(args=['--ros-args', '--enclave', '/probe'])
try:
    rclpy.create_node('security_probe')
    print('SECURE NODE CREATED')
except Exception as e:
    print('ERROR', e)
"""


def test_only_the_swarms_drones_may_speak():
    check_addressing(sender=2, receiver=1, my_id=1, known_ids=[1, 2, 3], allow_broadcast=False)
    for sender, reason in ((77, 'unknown_sender'), (1, 'own_message')):
        with pytest.raises(AddressError) as info:
            check_addressing(sender=sender, receiver=1, my_id=1, known_ids=[1, 2, 3], allow_broadcast=False)
        assert info.value.reason == reason


@pytest.mark.ros
def test_fastdds_of_the_wheels_has_no_dds_security(tmp_path):
    enclave = tmp_path / 'keystore' / 'enclaves' / 'probe'
    enclave.mkdir(parents=True)
    # the files rcl looks for in an enclave; their content is never read when the plugins are missing
    for name in ('identity_ca.cert.pem', 'cert.pem', 'key.pem', 'permissions_ca.cert.pem', 'governance.p7s',
                 'permissions.p7s'):
        (enclave / name).write_text('placeholder\n')
    env = dict(os.environ, ROS_SECURITY_KEYSTORE=str(tmp_path / 'keystore'), ROS_SECURITY_ENABLE='true',
               ROS_SECURITY_STRATEGY='Enforce')
    out = subprocess.run([sys.executable, '-c', PROBE], env=env, capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    assert 'Found security directory' in text, text       # rcl did take the security path
    assert "doesn't have the security libraries" in text and 'SECURE NODE CREATED' not in text, text
