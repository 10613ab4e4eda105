"""The shipped learned models through the ROS 2 swarm: the same accuracy as offline on the same frames.

A small split of the hidden-target setting is generated here (fresh maps, test/replaytools.py), replayed
through the swarm (replay bridge -> perception/matcher/fusion running the exported ONNX roles -> evaluator) and run offline
through the same ONNX models in one process (runtime/offline.py); the fused accuracies must agree within
one point. The When2com model runs with its gate (select: threshold) on a mixed split, where the gate has a
real decision to make."""
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
GATE_MODEL = 'models/when2com_hidden_target_mixed'   # When2com, run with its gate
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


@pytest.fixture(scope='module')
def mixed_split(tmp_path_factory):
    return generate_split(tmp_path_factory, 'hidden-target', FRAMES, seed=1235, degraded_share=0.5)


def test_the_when2com_gate_on_the_swarm_equals_offline(mixed_split, tmp_path):
    """The shipped When2com (mixed variant: half the targets see clearly) with its validation-chosen gate
    (select: threshold): the swarm connects on the frames offline connects on, and fuses as offline does."""
    assert os.path.exists(resource_path(GATE_MODEL, 'roles.json')), f'{GATE_MODEL} is not shipped'
    with open(resource_path(GATE_MODEL, 'roles.json')) as f:
        threshold = json.load(f)['gate_threshold']
    frames = replay_frames(mixed_split)
    swarm = Swarm('--run-dir', str(tmp_path), *replay_args(mixed_split), '--requesters', 'drone1',
                  '--set', 'drone_defaults.method=when2com',
                  '--set', f'drone_defaults.models={{dir: {GATE_MODEL}}}',
                  '--set', 'drone_defaults.select=threshold', '--set', f'drone_defaults.score_threshold={threshold}',
                  '--set', 'swarm.rate_hz=2', '--quiet', config=FIVE_DRONES)
    code = swarm.wait(180)
    assert code == 0, swarm.output[-3000:]
    with open(tmp_path / 'summary.json') as f:
        online = json.load(f)
    dtype = load_swarm_config(FIVE_DRONES).swarm['codec']['feature_dtype']
    offline = handshake_offline(create_method('when2com', model_dir=GATE_MODEL), iter_snapshots(mixed_split, SPLIT),
                                feature_dtype=dtype, select='threshold', threshold=threshold)
    o = online['overall']
    assert online['frames'] == frames == offline['frames'] and o['fallback_frames'] == 0
    assert 0 < offline['frames_without_features'] < frames, offline      # the gate decides both ways here
    helped = online['per_drone']['drone1']['frames_with_help']
    assert helped == frames - offline['frames_without_features'], (helped, offline)
    assert abs(o['fused_accuracy'] - offline['fused_accuracy']) <= 0.01, (o, offline)
