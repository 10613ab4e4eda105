"""The shipped learned model through the ROS 2 swarm: the same accuracy as offline on the same frames.

A small split of the hidden-target setting is generated here (fresh maps, test/replaytools.py), replayed
through the swarm (replay bridge -> perception/matcher/fusion running the exported ONNX roles -> evaluator) and run offline
through the same ONNX models in one process (runtime/offline.py); the fused accuracies must agree within
one point."""
import json
import os

import pytest

from collab_perception.config import load_swarm_config, resource_path
from collab_perception.data import iter_snapshots
from collab_perception.runtime.methods import create_method
from collab_perception.runtime.offline import handshake_offline

from replaytools import SPLIT, generate_split, replay_args, replay_frames
from test_swarm import Swarm

pytestmark = [pytest.mark.ros, pytest.mark.slow]
MODEL = 'models/who2com_hidden_target'
FIVE_DRONES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'swarm_five.yaml')
FRAMES = 20


@pytest.fixture(scope='module')
def replay_split(tmp_path_factory):
    return generate_split(tmp_path_factory, 'hidden-target', FRAMES, seed=1234)


def test_swarm_accuracy_equals_offline_on_the_same_frames(replay_split, tmp_path):
    assert os.path.exists(resource_path(MODEL, 'roles.json')), f'{MODEL} is not shipped'
    frames = replay_frames(replay_split)
    swarm = Swarm('--run-dir', str(tmp_path), *replay_args(replay_split), '--requesters', 'drone1',
                  '--set', 'drone_defaults.method=who2com',
                  '--set', f'drone_defaults.models={{dir: {MODEL}}}',
                  '--set', 'swarm.rate_hz=2', '--quiet', config=FIVE_DRONES)
    code = swarm.wait(180)
    assert code == 0, swarm.output[-3000:]
    with open(tmp_path / 'summary.json') as f:
        online = json.load(f)
    dtype = load_swarm_config(FIVE_DRONES).swarm['codec']['feature_dtype']     # the swarm's wire dtype
    offline = handshake_offline(create_method('who2com', model_dir=MODEL), iter_snapshots(replay_split, SPLIT),
                                feature_dtype=dtype)
    o = online['overall']
    assert online['frames'] == frames == offline['frames']
    assert o['fallback_frames'] == 0 and online['per_drone']['drone1']['segmentations'] == frames
    assert abs(o['fused_accuracy'] - offline['fused_accuracy']) <= 0.01, (o, offline)
    assert abs(o['own_accuracy'] - offline['own_accuracy']) <= 0.01, (o, offline)
