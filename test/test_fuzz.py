"""The short version of bench/bench_fuzz.py: 100 malformed or mutated messages of each comm type published into
a running swarm (the demo's learned handshake, 3 drones). No node dies; every message is counted by the node
it reached, rejected with a reason or, for the rare mutant that is still valid, as one for a frame that is
over; every camera frame still yields one segmentation."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]
BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench', 'bench_fuzz.py')
VALID_BUT_COUNTED = ('stale_stamp', 'future_stamp', 'orphans_dropped', 'late', 'unexpected', 'duplicate',
                     'stale_requests', 'expired_requests')


def test_fuzzed_messages_are_all_counted_and_no_node_dies(tmp_path):
    out = tmp_path / 'fuzz.json'
    run = subprocess.run([sys.executable, BENCH, '--per-type', '100', '--rate', '200', '--no-clean',
                          '--json', str(out), '--run-dir', str(tmp_path / 'runs')],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result['sent'] == {'request': 100, 'reply': 100, 'connect': 100, 'feature': 100}, result['sent']
    assert all(code == 0 for code in result['process_exits'].values()) and not result['lost'], result['process_exits']
    fuzzed = result['runs']['fuzzed']
    assert fuzzed['segmentations'] == fuzzed['frames'], fuzzed
    assert fuzzed['fused_accuracy'] >= fuzzed['own_accuracy'], fuzzed
    with open(tmp_path / 'runs' / 'fuzzed' / 'summary.json') as f:
        diag = json.load(f)['evaluator']['diagnostics']

    def counted(node):
        values = diag[node]
        return int(values.get('rejected', 0)) + sum(int(values.get(k, 0)) for k in VALID_BUT_COUNTED)

    # who receives what: drone2 sends the Requests (its own matcher drops its own broadcasts), Replies and
    # FeatureMaps to drone1; drone1 sends the Connects to drone2
    expected = {'drone1/fusion': 200, 'drone2/matcher': 100, 'drone1/matcher': 100, 'drone3/matcher': 100}
    for node, n in expected.items():
        assert counted(node) >= 0.95 * n, (node, n, diag[node])
    reasons = {k.split()[1] for k in result['rejected']}
    assert {'undecodable', 'unknown_sender', 'bad_size', 'bad_shape', 'unknown_dtype', 'nonfinite'} <= reasons, reasons
