"""The short version of bench/bench_soak.py: the demo's swarm (learned handshake) at 3 drones for 40 s while the
resident memory of every process is sampled. Every camera frame yields exactly one segmentation on every
drone, no process is lost, bytes per frame are the same in both halves, and no process grows by more than a
gross leak would (the 5% target is for the 5-minute bench, docs/RELIABILITY.md)."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]
BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench', 'bench_soak.py')
sys.path.insert(0, os.path.dirname(BENCH))
import bench_soak  # noqa: E402


def test_memory_growth_and_bytes_by_half(tmp_path):
    samples = [(t, 100_000 + (5_000 if t >= 50 else 0)) for t in range(0, 100, 2)]
    start, end, growth = bench_soak.memory_growth(samples, warmup_s=10)
    assert start == pytest.approx(100_000 / 1024) and end == pytest.approx(105_000 / 1024)
    assert growth == pytest.approx(5.0)
    assert bench_soak.memory_growth(samples[:3], warmup_s=0) is None        # too few samples to say
    frames = tmp_path / 'frames.csv'
    frames.write_text('stamp_ns,sender,topic,kind,messages,bytes\n'
                      '1,drone1,/swarm/request,request,1,100\n1,drone2,/drone1/comm/reply,reply,1,40\n'
                      '2,drone1,/swarm/request,request,1,100\n3,drone1,/swarm/request,request,1,100\n'
                      '4,drone1,/swarm/request,request,1,300\n')
    assert bench_soak.bytes_by_half(str(frames)) == (120.0, 200.0)


def test_a_short_soak_accounts_for_every_frame(tmp_path):
    out = tmp_path / 'soak.json'
    run = subprocess.run([sys.executable, BENCH, '--drones', '3', '--rate', '2', '--minutes', '0.67',
                          '--warmup-s', '20', '--sample-s', '1', '--json', str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r['frames'] == r['frames_planned'] == 80 and not r['lost_processes'], r
    assert set(r['segmentations'].values()) == {80}, r['segmentations']
    assert not any(r['frames_without_segmentation'].values()) and not any(r['frames_with_several_segmentations'].values())
    first, second = r['bytes_per_frame_halves']
    assert second == pytest.approx(first, rel=0.15), r['bytes_per_frame_halves']   # a fallback frame sends no features
    measured = {k: v for k, v in r['memory'].items() if v is not None}
    assert len(measured) >= 3 * 3 and r['largest_growth_percent'] < 20, r['memory']
