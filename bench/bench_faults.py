"""A fault injected into a running swarm, and what the requester's frames did before, during and after it.

    python bench/bench_faults.py --fault pause --target drone2/matcher --at-frame 20 --duration 3
    python bench/bench_faults.py --fault kill --target drone3/matcher --frames 40
    python bench/bench_faults.py --config config/swarm_mash.yaml --fault pause --target drone2/matcher
    python bench/bench_faults.py --fault link --loss 0.3 --delay-ms 200 --duration 4

Runs `collab-perception swarm` (the config's drones, method and models; localhost DDS), listens to the
requester's fusion/info (one FusionInfo per camera frame), and at the requester's `--at-frame`-th frame
stops the target process: `pause` sends SIGSTOP and, `--duration` seconds later, SIGCONT; `kill` sends
SIGKILL (the swarm runs with on_node_exit: continue); `restart` kills it and lets the launcher start it
again (on_node_exit: respawn); `link` runs the swarm's comm through the link node (nodes/link_node.py) and
sets its loss and delay to `--loss` / `--delay-ms` for `--duration` seconds, then back to 0; `none` does
nothing (the clean run of the same frames, for the accuracy to compare with). Frames are grouped by their camera stamp into phases:
warm-up (the first 2 s), before, during the fault, the first second after it, and the rest. Per phase: frames,
mean replies of the expected, frames with every reply, fallbacks, deadline misses (latency above the
requester's deadline). Recovery: from the end of the fault to the first frame from which five frames in a
row had every reply (a killed supporter: every reply of the drones still alive). Results: a Markdown table
on stdout (and --out).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from benchtools import emit_table


@dataclass
class Frame:
    stamp_s: float
    answered: int
    asked: int
    fallback: bool
    latency_ms: float


def listen(topic: str, frames: list, stop: threading.Event):
    """A thread spinning an rclpy node that appends one Frame per FusionInfo on `topic`; returns (thread,
    set_link), where set_link(**values) sets the link node's parameters and waits for the answer."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from collab_perception.msg import FusionInfo

    rclpy.init()
    node = rclpy.create_node('bench_faults_listener')

    def on_info(msg):
        if msg.requested:
            frames.append(Frame(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9, len(msg.answered),
                                len(msg.asked), msg.fallback, msg.latency_ms))

    node.create_subscription(FusionInfo, topic, on_info, QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    executor = SingleThreadedExecutor()
    executor.add_node(node)

    def spin():
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
        node.destroy_node()
        rclpy.try_shutdown()

    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    client = node.create_client(SetParameters, '/swarm/link/set_parameters')

    def set_link(**values: float) -> None:
        request = SetParameters.Request(parameters=[
            Parameter(name=f'link.{k}', value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=float(v)))
            for k, v in values.items()])
        if not client.wait_for_service(timeout_sec=10):
            raise SystemExit('the link node does not answer /swarm/link/set_parameters')
        future = client.call_async(request)
        end = time.monotonic() + 10
        while not future.done() and time.monotonic() < end:
            time.sleep(0.01)
        results = future.result().results if future.done() else []
        if not results or not all(r.successful for r in results):
            raise SystemExit(f'the link refused {values}: {[r.reason for r in results]}')

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    return thread, set_link


def phase_rows(frames: list[Frame], fault_start: float, fault_end: float, deadline_ms: float,
               alive_after: int) -> tuple[list[str], float | None]:
    """Markdown rows per phase and the recovery time (s) after the fault ends (None: never recovered)."""
    first = frames[0].stamp_s
    phases = [('warm-up (first 2 s)', first, first + 2.0), ('before the fault', first + 2.0, fault_start),
              ('during the fault', fault_start, fault_end), ('first second after', fault_end, fault_end + 1.0),
              ('later', fault_end + 1.0, float('inf'))]
    rows = []
    for name, lo, hi in phases:
        group = [f for f in frames if lo <= f.stamp_s < hi]
        if not group:
            rows.append(f'| {name} | 0 | - | - | - | - |')
            continue
        expected = [f.asked if f.stamp_s < fault_start else (alive_after if f.stamp_s >= fault_end else f.asked)
                    for f in group]
        full = sum(f.answered >= e for f, e in zip(group, expected))
        rows.append(f'| {name} | {len(group)} | {sum(f.answered for f in group) / len(group):.2f} of '
                    f'{sum(expected) / len(group):.0f} | {full} | {sum(f.fallback for f in group)} | '
                    f'{sum(f.latency_ms > deadline_ms for f in group)} |')
    after = [f for f in frames if f.stamp_s >= fault_end]
    recovery = None
    for i in range(len(after) - 4):
        if all(f.answered >= alive_after and not f.fallback for f in after[i:i + 5]):
            recovery = max(0.0, after[i].stamp_s - fault_end)
            break
    return rows, recovery


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--config', default=None, help='swarm config (default: config/swarm.yaml)')
    parser.add_argument('--fault', choices=('pause', 'kill', 'restart', 'link', 'none'), default='pause',
                        help='what happens to the target (none: a clean run of the same frames, to compare)')
    parser.add_argument('--target', default='drone2/matcher', help='the process, as the launcher names it')
    parser.add_argument('--requester', default='drone1', help='the drone whose frames are measured')
    parser.add_argument('--frames', type=int, default=60, help='camera snapshots (default 60)')
    parser.add_argument('--rate', type=float, default=5.0, help='camera rate, Hz (default 5)')
    parser.add_argument('--at-frame', type=int, default=20, help="fault at the requester's N-th frame (default 20)")
    parser.add_argument('--duration', type=float, default=3.0, help='pause or lossy-link length, s (default 3)')
    parser.add_argument('--loss', type=float, default=0.3, help='--fault link: share of comm messages dropped')
    parser.add_argument('--delay-ms', type=float, default=200.0, help='--fault link: delay added to each message')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='config overrides')
    parser.add_argument('--out', default=None, help='also write the table to this file')
    parser.add_argument('--run-dir', default=None, help="keep the swarm's logs and summaries here (default: a "
                        'temporary folder, removed)')
    args = parser.parse_args(argv)

    from collab_perception.config import load_swarm_config
    from collab_perception.rosenv import apply_safe_ros_env, pick_domain_id
    cfg = load_swarm_config(args.config, [])
    requester = next(d for d in cfg.drones if d.name == args.requester)
    domain = pick_domain_id()
    apply_safe_ros_env(domain_id=domain)
    frames: list[Frame] = []
    stop = threading.Event()
    spinner, set_link = listen(f'/{args.requester}/fusion/info', frames, stop)
    fault_sets = {'link': ['--set', 'swarm.link.enabled=true'], 'restart': ['--set', 'swarm.on_node_exit=respawn']}
    with tempfile.TemporaryDirectory(prefix='bench-faults-') as work:
        run_dir = args.run_dir or os.path.join(work, 'run')
        cmd = [sys.executable, '-m', 'collab_perception.cli', 'swarm', '--frames', str(args.frames), '--quiet',
               '--domain-id', str(domain), '--run-dir', run_dir,
               '--set', f'swarm.rate_hz={args.rate}', '--set', 'swarm.on_node_exit=continue',
               *fault_sets.get(args.fault, []),
               *(['--config', args.config] if args.config else []),
               *[x for kv in args.set for x in ('--set', kv)]]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(line.rstrip('\n') for line in proc.stdout), daemon=True)
        reader.start()
        while len(frames) < args.at_frame and proc.poll() is None:
            time.sleep(0.02)
        pids = {m.group(1): int(m.group(2)) for m in
                (re.search(r'\[launch\] started (\S+) \(pid (\d+)\)', line) for line in list(lines)) if m}
        if args.fault != 'link' and args.target not in pids:
            proc.kill()
            raise SystemExit(f'no process {args.target!r} in the swarm (processes: {", ".join(sorted(pids))})\n'
                             + '\n'.join(lines[-30:]))
        fault_start = time.time()
        if args.fault == 'none':
            pass
        elif args.fault == 'pause':
            os.kill(pids[args.target], signal.SIGSTOP)
            time.sleep(args.duration)
            os.kill(pids[args.target], signal.SIGCONT)
        elif args.fault == 'link':
            set_link(loss=args.loss, delay_ms=args.delay_ms)
            time.sleep(args.duration)
            set_link(loss=0.0, delay_ms=0.0)
        elif args.fault == 'restart':
            os.kill(pids[args.target], signal.SIGKILL)
            pattern = re.compile(rf'\[launch\] respawned {re.escape(args.target)} \(pid (\d+)\)')
            end = time.monotonic() + 60
            while not any(pattern.search(line) for line in list(lines)) and time.monotonic() < end:
                time.sleep(0.02)
        else:
            os.kill(pids[args.target], signal.SIGKILL)
        fault_end = time.time()
        proc.wait()
        reader.join(timeout=5)
        time.sleep(0.5)
        stop.set()
        spinner.join(timeout=10)
        with open(os.path.join(run_dir, 'summary.json')) as f:
            summary = json.load(f)
    if not frames:
        raise SystemExit('no fusion/info of the requester was received\n' + '\n'.join(lines[-30:]))
    asked = max(f.asked for f in frames)
    alive_after = asked - (1 if args.fault == 'kill' and args.target.split('/')[0] != args.requester else 0)
    rows, recovery = phase_rows(frames, fault_start, fault_end, requester.deadline_ms, alive_after)
    d = summary['per_drone'][args.requester]
    stale = {k: v.get('stale_requests', '-') for k, v in summary['evaluator']['diagnostics'].items()
             if k.endswith('/matcher')}
    what = {'none': 'no fault', 'link': f'link loss {args.loss:g} and delay {args.delay_ms:g} ms at frame '
                                         f'{args.at_frame}'}.get(args.fault, f'{args.fault} {args.target} at frame {args.at_frame}')
    header = [what + f'{f" for {args.duration:g} s" if args.fault in ("pause", "link") else ""}; {args.frames} frames at '
              f'{args.rate:g} Hz, {", ".join(summary["methods"])}, {len(summary["drones"])} drones',
              '', '| phase | frames | replies (mean of expected) | every reply | fallbacks | deadline misses |',
              '|---|---|---|---|---|---|']
    footer = ['', f'segmentations {d["segmentations"]} of {summary["frames"]} frames, '
                  f'without {d["frames_without_segmentation"]}, several {d["frames_with_several_segmentations"]}; '
                  f'fused {100 * (summary["overall"]["fused_accuracy"] or 0):.2f}% vs own '
                  f'{100 * (summary["overall"]["own_accuracy"] or 0):.2f}%',
              f'recovery after the fault: {"never" if recovery is None else f"{recovery:.2f} s"}; '
              f'stale requests dropped: {stale}']
    table = '\n'.join(header + rows + footer)
    emit_table(table, args.out)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
