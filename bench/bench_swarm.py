"""Latency of the swarm against the single-agent pipeline, as a ratio measured in one run.

    python bench/bench_swarm.py --drones 3 5 --frames 40
    python bench/bench_swarm.py --drones 10 --requesters drone1,drone2,drone3     # several requesters at once

For each swarm size, two runs back to back through ROS 2 (`collab-perception swarm`, the config's method
and models, localhost DDS): every drone alone (no requester: camera -> perception -> fusion -> its own
segmentation) and the handshake (drone1 asks every frame: request, replies, connect, features, decode).
Latency is camera stamp (taken when the images exist) -> segmentation published, from fusion/info, over
every frame of the run. The ratios (handshake requester / single agent, p50 and p95) are what to compare across machines;
the milliseconds depend on the machine and its load. With several requesters the latencies are the first
one's, the fallbacks and bytes everyone's. CPU per drone is the share of one core its processes used during
the flight (the run summary's `cpu`, sampled from /proc by the launcher): the mean over drones when alone, the
requesters' mean and the supporters' mean in the handshake run. Results: a Markdown table on stdout (and --out).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from benchtools import drone_list, emit_table


def run_swarm(drones: int, frames: int, requesters: str, extra: list[str], workdir: str) -> dict:
    summary = os.path.join(workdir, f'swarm-{drones}-{requesters}.json')
    cmd = [sys.executable, '-m', 'collab_perception.cli', 'swarm', '--set', drone_list(drones), '--frames', str(frames),
           '--requesters', requesters, '--run-dir', os.path.join(workdir, f'run-{drones}-{requesters}'),
           '--summary', summary, '--quiet', *extra]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f'swarm run failed ({" ".join(cmd)}):\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}')
    with open(summary) as f:
        return json.load(f)


def mean_of(values: list) -> str:
    known = [v for v in values if v is not None]
    return f'{sum(known) / len(known):.0f}' if known else '-'


def latencies(summary: dict, drone: str) -> tuple[float, float]:
    d = summary['per_drone'][drone]
    return d['latency_ms_p50'], d['latency_ms_p95']


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--drones', type=int, nargs='+', default=[3, 5], help='swarm sizes (default 3 5)')
    parser.add_argument('--frames', type=int, default=40, help='frames per run (default 40)')
    parser.add_argument('--requesters', default='drone1', help='drones that ask every frame in the handshake '
                        'run, comma-separated (default drone1)')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='config overrides')
    parser.add_argument('--out', default=None, help='also write the table to this file')
    parser.add_argument('--plot', default=None, metavar='PNG', help='also plot bytes and latency against the swarm '
                        'size (the handshake and CatAll, from these runs)')
    args = parser.parse_args(argv)
    extra = [x for kv in args.set for x in ('--set', kv)]
    rows = ['| drones | method | single agent p50 / p95 (ms) | handshake requester p50 / p95 (ms) | ratio p50 | '
            'ratio p95 | fused vs own accuracy | fallbacks | comm B/frame | CPU per drone, % of a core: alone / '
            'requesters / supporters |', '|---|---|---|---|---|---|---|---|---|---|']
    requesters = [r for r in args.requesters.split(',') if r]
    measured = []
    with tempfile.TemporaryDirectory(prefix='bench-swarm-') as work:
        for n in args.drones:
            alone = run_swarm(n, args.frames, 'none', extra, work)
            shake = run_swarm(n, args.frames, ','.join(requesters), extra, work)
            measured.append((n, alone, shake))
            a50, a95 = latencies(alone, 'drone1')
            h50, h95 = latencies(shake, requesters[0])
            cpu_alone, cpu_shake = (s.get('cpu', {}).get('per_drone_percent', {}) for s in (alone, shake))
            cpu = ' / '.join(mean_of([c.get(d) for d in names]) for c, names in (
                (cpu_alone, list(cpu_alone)), (cpu_shake, requesters),
                (cpu_shake, [d for d in cpu_shake if d not in requesters])))
            o = shake['overall']
            acc = (f'{100 * o["fused_accuracy"]:.1f}% vs {100 * o["own_accuracy"]:.1f}%'
                   if o['fused_accuracy'] is not None else '-')
            rows.append(f'| {n} | {", ".join(shake["methods"])} | {a50:.1f} / {a95:.1f} | {h50:.1f} / {h95:.1f} | '
                        f'{h50 / a50:.2f} | {h95 / a95:.2f} | {acc} | {o["fallback_frames"]} of '
                        f'{o["requested_frames"]} | '
                        f'{o["comm_bytes_per_frame"]:.0f} | {cpu} |')
            print(rows[-1], flush=True)
    table = '\n'.join(rows)
    emit_table(table, args.out)
    if args.plot:
        plot(measured, args.plot, ' '.join(args.set))
    return 0


def plot(measured: list, path: str, settings: str) -> None:
    """Bytes per requester frame (the handshake as measured, CatAll as the same codec would send it) and the
    requester's latency against the single agent's, against the swarm size."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    sizes = [n for n, _, _ in measured]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(sizes, [s['overall']['comm_bytes_per_frame'] / 1e3 for _, _, s in measured], 'o-', label='handshake')
    left.plot(sizes, [s['overall']['catall_bytes_per_frame'] / 1e3 for _, _, s in measured], 's--', label='CatAll')
    left.set(xlabel='drones', ylabel='kB per requester frame', title='bytes on the wire')
    left.legend()
    for key, style, name in (('latency_ms_p50', 'o-', 'p50'), ('latency_ms_p95', 'o:', 'p95')):
        right.plot(sizes, [s['per_drone']['drone1'][key] for _, _, s in measured], style, label=f'handshake {name}')
        right.plot(sizes, [a['per_drone']['drone1'][key] for _, a, _ in measured], style.replace('o', 's'),
                   label=f'single agent {name}')
    right.set(xlabel='drones', ylabel='ms, camera stamp -> segmentation', title="drone1's latency")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.set_xticks(sizes)
    import textwrap
    fig.suptitle('\n'.join(textwrap.wrap(settings or 'config/swarm.yaml as shipped', 110)), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f'plot: {path}')


if __name__ == '__main__':
    raise SystemExit(main())
