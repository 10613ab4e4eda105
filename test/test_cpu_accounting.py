"""CPU per process and per drone in the swarm summary (`cpu`): the launcher samples /proc about once a second,
and the summary takes each process's share of one core over the flight (start-up left out)."""
from types import SimpleNamespace

from rostools import script_launcher

from collab_perception.cli import cpu_summary
from collab_perception.launch.embedded import cpu_seconds

SWARM = SimpleNamespace(names=['drone1', 'drone2'])


def test_shares_come_from_the_flight_window_and_skip_a_respawned_process():
    samples = [(0.0, {}),
               (1.0, {'drone1/perception': 2.0, 'drone1/matcher': 1.0, 'drone2/matcher': 1.5, 'swarm/sim': 0.5}),
               (3.0, {'drone1/perception': 3.0, 'drone1/matcher': 1.5, 'drone2/matcher': 0.2, 'swarm/sim': 1.5}),
               (5.0, {'drone1/perception': 4.0, 'drone1/matcher': 2.0, 'drone2/matcher': 0.9})]
    cpu = cpu_summary(SWARM, samples, flight_s=4.0)
    assert cpu['window_s'] == [1.0, 5.0]
    p = cpu['per_process']
    assert p['drone1/perception'] == {'seconds': 4.0, 'percent': 50.0}
    assert p['drone1/matcher']['percent'] == 25.0
    assert p['drone2/matcher'] == {'seconds': 0.9, 'percent': None}       # respawned: its count started again
    assert p['swarm/sim']['percent'] == 50.0                               # ended at 3 s: counted to its last sample
    assert cpu['per_drone_percent'] == {'drone1': 75.0, 'drone2': None}
    assert cpu_summary(SWARM, samples, flight_s=1.0) == {}                 # too short a flight to say
    assert cpu_summary(SWARM, samples[:2], flight_s=4.0) == {}


def test_a_busy_child_shows_about_a_core_and_an_idle_one_nearly_none(tmp_path):
    assert cpu_seconds(1 << 30) is None
    launcher = script_launcher({'drone1/perception': 'while True: pass\n',
                                'drone2/matcher': 'import time\nwhile True: time.sleep(0.1)\n'}, tmp_path)
    result = launcher.run(timeout_s=5.0)
    assert result.returncode == 1 and 'timed out' in result.reason
    assert len(result.cpu_samples) >= 5 and result.cpu_samples[0][0] < 0.5
    cpu = cpu_summary(SWARM, result.cpu_samples, flight_s=3.0)
    busy, idle = cpu['per_drone_percent']['drone1'], cpu['per_drone_percent']['drone2']
    assert busy > 30 and idle < 10 and busy > 5 * idle, cpu
