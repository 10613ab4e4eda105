"""A drone runs only what it needs: its perception, matcher and fusion processes start and work with the
renderer (moderngl), OpenCV, PyTorch and tqdm not importable (test/data/import_guard/sitecustomize.py),
and the CLI's help needs none of them either."""
import json
import os
import subprocess
import sys

import pytest

from collab_perception.config import default_config_path

from test_swarm import Swarm

GUARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'import_guard')
BLOCKED = ('moderngl', 'cv2', 'torch', 'tqdm')


def _guarded_env(guard_dir):
    env = dict(os.environ)
    env['PYTHONPATH'] = GUARD + os.pathsep + env.get('PYTHONPATH', '')
    env['COLLAB_IMPORT_GUARD_DIR'] = str(guard_dir)
    return env


@pytest.mark.ros
@pytest.mark.slow
def test_drone_processes_run_without_renderer_opencv_torch_or_tqdm(tmp_path, monkeypatch):
    guard_dir = tmp_path / 'guard'
    guard_dir.mkdir()
    for key, value in _guarded_env(guard_dir).items():
        monkeypatch.setenv(key, value)
    swarm = Swarm('--run-dir', str(tmp_path / 'run'), '--frames', '6', '--drones', '3', '--quiet',
                  config=default_config_path())          # the demo's learned handshake with pose warping
    code = swarm.wait(120)
    assert code == 0, swarm.output[-3000:]
    with open(tmp_path / 'run' / 'summary.json') as f:
        summary = json.load(f)
    d1 = summary['per_drone']['drone1']
    assert d1['segmentations'] == 6 and d1['frames_with_help'] >= 5, d1
    records = [json.loads(p.read_text()) for p in guard_dir.glob('*.json')]
    guarded = sorted(f'{r["namespace"][1:]}/{os.path.basename(r["argv"][0])}' for r in records)
    assert guarded == sorted(f'drone{i}/{n}' for i in (1, 2, 3) for n in ('fusion', 'matcher', 'perception')), guarded
    attempts = {f'{r["namespace"]} {os.path.basename(r["argv"][0])}': r['attempts'] for r in records if r['attempts']}
    assert attempts == {}, json.dumps(attempts, indent=1)[:3000]


def test_cli_help_needs_no_renderer_opencv_torch_or_tqdm(tmp_path):
    env = _guarded_env(tmp_path)
    blocker = tmp_path / 'blocked'
    blocker.mkdir()
    for name in BLOCKED:   # outside a drone process the guard is off: block these by shadowing them
        (blocker / f'{name}.py').write_text(f'raise ImportError("{name} is not importable here")\n')
    env['PYTHONPATH'] = str(blocker) + os.pathsep + env['PYTHONPATH']
    for command in ([], ['swarm'], ['dataset', 'generate'], ['train'], ['export'], ['evaluate'], ['monitor'],
                    ['nav', 'generate'], ['nav', 'train'], ['nav', 'evaluate']):
        out = subprocess.run([sys.executable, '-m', 'collab_perception.cli', *command, '--help'], env=env,
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert out.returncode == 0, (command, out.stderr[-2000:])
        assert 'usage: collab-perception' in out.stdout, (command, out.stdout[:500])


def test_node_processes_run_numpy_on_one_blas_thread_unless_told_otherwise():
    """Importing the nodes package pins numpy's OpenBLAS to one thread before numpy loads (many node
    processes share one computer); a user's own OPENBLAS_NUM_THREADS is kept."""
    probe = ('import sys, os, collab_perception.nodes; assert "numpy" not in sys.modules; '
             'print(os.environ["OPENBLAS_NUM_THREADS"])')
    env = {k: v for k, v in os.environ.items() if k != 'OPENBLAS_NUM_THREADS'}
    out = subprocess.run([sys.executable, '-c', probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '1'
    out = subprocess.run([sys.executable, '-c', probe], env={**env, 'OPENBLAS_NUM_THREADS': '3'},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '3'
