"""Soak: a long swarm run under load, every frame accounted for and every process's memory flat.

    python bench/bench_soak.py --drones 10 --rate 10 --minutes 5
    python bench/bench_soak.py --drones 10 --rate 2 --minutes 5 --set swarm.process_layout=per_drone

One `collab-perception swarm` run (the config's method and models, localhost DDS; drone1 the degraded
requester, the others supporters) of --minutes at --rate camera snapshots per second. While it flies, the
resident memory (VmRSS) of every process the launcher starts is sampled from /proc every --sample-s
seconds. Afterwards, from the run's summary and the monitor's frames.csv:

- frames: snapshots published, segmentations of each drone (exactly one per snapshot is the target),
  frames without or with several segmentations, fallbacks of the requester (no help in time);
- memory: per process, the resident size at the end of the warm-up (--warmup-s) against the median of the
  last 10% of the samples; the growth in % (target < 5%);
- bytes per frame on the wire in the first and the second half of the run (stable: their ratio near 1).

Prints Markdown tables (and writes them to --out); --plot writes resident memory against time per process.
A rate the machine cannot keep up with shows as fallbacks and late frames, not as a crash: find the highest
rate with no fallback by running it at several rates.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict

from benchtools import drone_list, emit_table

STARTED = re.compile(r'\[launch\] started (\S+) \(pid (\d+)\)')


def _num(x, fmt: str) -> str:
    return '-' if x is None else format(x, fmt)


def rss_kib(pid: int) -> int | None:
    """Resident set size of a process in KiB, or None once it is gone."""
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


class MemorySampler:
    """Reads the launcher's output for the processes it starts and samples their resident memory."""

    def __init__(self, proc: subprocess.Popen, period_s: float):
        self.proc, self.period_s = proc, period_s
        self.pids: dict[str, int] = {}
        self.samples: dict[str, list[tuple[float, int]]] = defaultdict(list)
        self.output: list[str] = []
        self.t0 = time.monotonic()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._read, daemon=True), threading.Thread(target=self._sample, daemon=True)]
        for t in self.threads:
            t.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            m = STARTED.search(line)
            if m:
                with self.lock:
                    self.pids[m.group(1)] = int(m.group(2))      # a respawned process replaces its pid

    def _sample(self) -> None:
        while self.proc.poll() is None:
            now = time.monotonic() - self.t0
            with self.lock:
                pids = dict(self.pids)
            for label, pid in pids.items():
                kib = rss_kib(pid)
                if kib is not None:
                    self.samples[label].append((now, kib))
            time.sleep(self.period_s)

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=5)


def memory_growth(samples: list[tuple[float, int]], warmup_s: float) -> tuple[float, float, float] | None:
    """(MiB at the end of the warm-up, MiB at the end: median of the last 10% of samples, growth in %)."""
    after = [kib for t, kib in samples if t >= warmup_s]
    if len(after) < 4:
        return None
    start = after[0]
    tail = after[-max(2, len(after) // 10):]
    end = statistics.median(tail)
    return start / 1024, end / 1024, 100.0 * (end - start) / start


def bytes_by_half(frames_csv: str) -> tuple[float, float]:
    """Comm bytes per frame in the first and the second half of the run's frames (monitor's frames.csv)."""
    per_frame: dict[int, int] = defaultdict(int)
    with open(frames_csv) as f:
        for row in csv.DictReader(f):
            per_frame[int(row['stamp_ns'])] += int(row['bytes'])
    stamps = sorted(per_frame)
    if len(stamps) < 2:
        return float('nan'), float('nan')
    half = len(stamps) // 2
    first, second = stamps[:half], stamps[half:]
    return (sum(per_frame[s] for s in first) / len(first), sum(per_frame[s] for s in second) / len(second))


def plot_memory(samples: dict, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, rows in sorted(samples.items()):
        if rows:
            ax.plot([t for t, _ in rows], [kib / 1024 for _, kib in rows], lw=1, label=label)
    ax.set_xlabel('seconds since launch')
    ax.set_ylabel('resident memory (MiB)')
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if len(samples) <= 16:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--drones', type=int, default=10, help='swarm size (default 10)')
    parser.add_argument('--rate', type=float, default=10.0, help='camera snapshots per second (default 10)')
    parser.add_argument('--minutes', type=float, default=5.0, help='length of the run (default 5)')
    parser.add_argument('--warmup-s', type=float, default=30.0,
                        help='memory growth is measured from this many seconds after launch (default 30)')
    parser.add_argument('--sample-s', type=float, default=2.0, help='memory sampling period (default 2 s)')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='config overrides')
    parser.add_argument('--out', default=None, help='also write the tables to this file')
    parser.add_argument('--plot', default=None, metavar='PNG', help='resident memory of every process against time')
    parser.add_argument('--json', default=None, metavar='PATH', help='also write the figures as JSON')
    parser.add_argument('--keep', action='store_true', help='keep the run directory (printed)')
    args = parser.parse_args(argv)
    if args.drones < 2 or args.rate <= 0 or args.minutes <= 0:
        parser.error('--drones must be >= 2, --rate and --minutes > 0')

    frames = max(1, round(args.rate * args.minutes * 60))
    work = tempfile.mkdtemp(prefix='bench_soak-')
    run_dir, summary_path = os.path.join(work, 'run'), os.path.join(work, 'summary.json')
    cmd = [sys.executable, '-m', 'collab_perception.cli', 'swarm', '--set', drone_list(args.drones),
           '--set', f'swarm.rate_hz={args.rate}', '--frames', str(frames), '--run-dir', run_dir,
           '--summary', summary_path, '--quiet', *[x for kv in args.set for x in ('--set', kv)]]
    print(f'bench_soak: {args.drones} drones, {frames} frames at {args.rate:g} Hz ({args.minutes:g} min); run dir {run_dir}',
          file=sys.stderr)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    sampler = MemorySampler(proc, args.sample_s)
    rc = proc.wait()
    sampler.join()
    if rc != 0 or not os.path.exists(summary_path):
        sys.stderr.write(''.join(sampler.output[-60:]))
        raise SystemExit(f'bench_soak: the swarm run failed (exit {rc}): {" ".join(cmd)}')
    with open(summary_path) as f:
        summary = json.load(f)

    req = summary['per_drone']['drone1']
    drones = summary['per_drone']
    segs = [d.get('segmentations') or 0 for d in drones.values()]
    lines = [f'Soak: {args.drones} drones, {summary["frames"]} of {frames} frames at {args.rate:g} Hz in '
             f'{summary["duration_s"]:.0f} s; {summary["end_reason"]}; lost processes: '
             f'{", ".join(summary["lost_processes"]) or "none"}', '',
             '| frames | segmentations per drone (min / max) | without a segmentation | with several | '
             'requester fallbacks | requester latency p50 / p95 (ms) | fused vs own accuracy |',
             '|---|---|---|---|---|---|---|',
             f'| {summary["frames"]} | {min(segs)} / {max(segs)} | '
             f'{sum(d.get("frames_without_segmentation") or 0 for d in drones.values())} | '
             f'{sum(d.get("frames_with_several_segmentations") or 0 for d in drones.values())} | '
             f'{req.get("fallback_frames")} of {req.get("requested_frames")} | '
             f'{_num(req.get("latency_ms_p50"), ".1f")} / {_num(req.get("latency_ms_p95"), ".1f")} | '
             f'{_num(req.get("fused_accuracy"), ".2%")} vs {_num(req.get("own_accuracy"), ".2%")} |', '']
    first, second = bytes_by_half(os.path.join(run_dir, 'monitor', 'frames.csv'))
    lines += ['| comm bytes per frame, first half | second half | ratio |', '|---|---|---|',
              f'| {first:,.1f} | {second:,.1f} | {second / first:.3f} |', '']
    lines += [f'| process | resident MiB at {args.warmup_s:g} s | at the end | growth |', '|---|---|---|---|']
    worst, growth = None, {}
    for label in sorted(sampler.samples):
        g = memory_growth(sampler.samples[label], args.warmup_s)
        growth[label] = None if g is None else {'start_mib': g[0], 'end_mib': g[1], 'growth_percent': g[2]}
        if g is None:
            lines.append(f'| {label} | - | - | too few samples |')
            continue
        lines.append(f'| {label} | {g[0]:.1f} | {g[1]:.1f} | {g[2]:+.2f}% |')
        worst = g[2] if worst is None else max(worst, g[2])
    lines += ['', f'largest growth after warm-up: {worst:+.2f}% (target < 5%)' if worst is not None
              else 'no process lived past the warm-up']
    emit_table('\n'.join(lines), args.out)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'frames_planned': frames, 'frames': summary['frames'], 'end_reason': summary['end_reason'],
                       'lost_processes': summary['lost_processes'], 'process_exits': summary['process_exits'],
                       'segmentations': {name: d.get('segmentations') for name, d in drones.items()},
                       'frames_without_segmentation': {n: d.get('frames_without_segmentation') for n, d in drones.items()},
                       'frames_with_several_segmentations': {n: d.get('frames_with_several_segmentations')
                                                             for n, d in drones.items()},
                       'requester': {k: req.get(k) for k in ('fallback_frames', 'requested_frames', 'latency_ms_p50',
                                                            'latency_ms_p95', 'fused_accuracy', 'own_accuracy')},
                       'bytes_per_frame_halves': [first, second], 'memory': growth,
                       'largest_growth_percent': worst}, f, indent=1)
    if args.plot:
        plot_memory(sampler.samples, args.plot, f'{args.drones} drones at {args.rate:g} Hz for {args.minutes:g} min')
        print(f'bench_soak: {args.plot}', file=sys.stderr)
    if not args.keep:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
