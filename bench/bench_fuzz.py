"""Malformed and mutated comm messages published into a running swarm: no node dies, each is counted, and the
good frames around them come out as in a clean run of the same frames.

    python bench/bench_fuzz.py --per-type 10000                    # the demo swarm (3 drones), 4 comm types
    python bench/bench_fuzz.py --config config/swarm_mash.yaml --drones 3 --types request,patches
    python bench/bench_fuzz.py --per-type 200 --no-clean --json out.json
    python bench/bench_fuzz.py --config config/swarm_nav.yaml --types request,value   # CollaVN's memory protocol

Two runs of `collab-perception swarm` on the same frames (the config's drones, method and models): a clean one,
then one into which a fuzzer node publishes `--per-type` messages of each comm type at `--rate` messages per
second, starting once the requester has published three frames and every node that subscribes a fuzzed topic
reports (on /diagnostics) that it has matched the fuzzer. Every message is a valid one of the swarm (drone2 to
drone1, or drone1 to drone2 for Connect) mutated one way, chosen at random:
- made invalid field by field (sender not in the swarm, wrong receiver, unknown tensor dtype, data shorter or
  longer than its shape, a shape the receiver does not expect, a huge shape, NaN values), stamped with a
  current frame's time, so that a message that got through would corrupt a real frame;
- mutated byte by byte after the CDR encapsulation header (truncated, bits flipped, random bytes, nothing),
  stamped 30 s in the past, so that the rare mutant that still decodes to a valid message is one for a frame
  long over.
Results: per type, how many were sent and how the receiving nodes counted them (rejected by reason, or
valid but stale), whether every process lived, and the requester's frames (segmentations, fallbacks,
deadline misses, fused accuracy) against the clean run. A navigation swarm (swarm.source.type nav, the memory
protocol's Request and MemoryValue) flies enough episodes to outlast the fuzz, and its episodes are compared
with the clean run's step by step: the same paths, steps and outcomes. A Markdown table on stdout; --json writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

import numpy as np

from benchtools import emit_table

from collab_perception.runtime.topics import COMM_KINDS as TYPES, comm_topic


def valid_message(kind: str, stamp_ns: int, shapes: dict):
    """A well-formed message of this kind from drone2 to drone1 (Connect: drone1 to drone2). `shapes`: the
    method's query and feature shapes, MASH's cell grid and class count, CollaVN's value size."""
    from std_msgs.msg import Header
    from collab_perception.msg import Connect, FeatureMap, MemoryValue, PatchSegments, Reply, Request
    from collab_perception.runtime.codec import encode_tensor
    header = Header()
    header.stamp.sec, header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    rng = np.random.default_rng(stamp_ns % (1 << 32))
    if kind == 'request':
        msg = Request(header=header, sender=2, receiver=255, deadline_ms=300)
        encode_tensor(rng.random(shapes['query']).astype(np.float32), 'float32', msg.query, 'query')
    elif kind == 'reply':
        msg = Reply(header=header, sender=2, receiver=1)
        encode_tensor(np.array([0.5], np.float32), 'float32', msg.score, 'score')
    elif kind == 'connect':
        msg = Connect(header=header, sender=1, receiver=2)
    elif kind == 'value':
        msg = MemoryValue(header=header, sender=2, receiver=1, score=0.9)
        encode_tensor(rng.random(shapes['value']).astype(np.float32), 'float32', msg.value, 'value')
    elif kind == 'feature':
        msg = FeatureMap(header=header, sender=2, receiver=1)
        encode_tensor(rng.random(shapes['feature']).astype(np.float32), 'float16', msg.features, 'features')
    else:
        hc, wc = shapes['grid']
        msg = PatchSegments(header=header, sender=2, receiver=1, grid_height=hc, grid_width=wc)
        cells = np.sort(rng.choice(hc * wc, size=4, replace=False))
        msg.cells = [int(c) for c in cells]
        probs = rng.random((4, shapes['classes'])).astype(np.float32)
        encode_tensor(rng.random(4).astype(np.float32), 'uint8', msg.confidence, 'confidence')
        encode_tensor(probs / probs.sum(1, keepdims=True), 'uint8', msg.class_probs, 'class_probs')
    return msg


def tensor_of(msg):
    for name in ('query', 'score', 'features', 'context', 'class_probs', 'confidence', 'value'):
        if hasattr(msg, name) and hasattr(getattr(msg, name), 'shape'):
            return getattr(msg, name)
    return None


FIELD_MUTATIONS = ('unknown_sender', 'wrong_receiver', 'bad_dtype', 'short_data', 'long_data', 'bad_shape',
                   'huge_shape', 'nan')
BYTE_MUTATIONS = ('truncate', 'flip_bits', 'random_bytes', 'empty')


def mutant(kind: str, rng: np.random.Generator, now_ns: int, shapes: dict) -> tuple[str, bytes]:
    """(how it was mutated, the serialized message)."""
    from rclpy.serialization import serialize_message
    if rng.random() < 0.5:
        how = FIELD_MUTATIONS[rng.integers(len(FIELD_MUTATIONS))]
        msg = valid_message(kind, now_ns - int(rng.integers(0, 200_000_000)), shapes)
        tensor = tensor_of(msg)
        if how in ('bad_dtype', 'short_data', 'long_data', 'bad_shape', 'huge_shape', 'nan') and \
                (tensor is None or not len(tensor.data)):
            how = 'unknown_sender'
        if how == 'unknown_sender':
            msg.sender = int(rng.integers(100, 255))
        elif how == 'wrong_receiver':
            msg.receiver = 3 if msg.receiver != 3 else 1
            if kind == 'request':
                msg.receiver = 9
        elif how == 'bad_dtype':
            tensor.dtype = int(rng.integers(4, 256))
        elif how == 'short_data':
            tensor.data = bytes(tensor.data)[:max(0, len(tensor.data) - int(rng.integers(1, 8)))]
        elif how == 'long_data':
            tensor.data = bytes(tensor.data) + bytes(int(rng.integers(1, 64)))
        elif how == 'bad_shape':
            tensor.shape = list(tensor.shape) + [1] if rng.random() < 0.5 else [int(d) + 1 for d in tensor.shape]
        elif how == 'huge_shape':
            tensor.shape = [1 << 20, 1 << 20]
        elif how == 'nan':
            if kind == 'value' and rng.random() < 0.5:      # the score itself: NaN, or outside 0..1
                msg.score = float('nan') if rng.random() < 0.5 else float(rng.choice([-0.5, 1.5, np.inf]))
            elif tensor.dtype == 0:
                values = np.frombuffer(bytes(tensor.data), np.float32).copy()
                values[int(rng.integers(len(values)))] = np.nan
                tensor.data = values.tobytes()
            elif tensor.dtype == 1:
                values = np.frombuffer(bytes(tensor.data), np.float16).copy()
                values[int(rng.integers(len(values)))] = np.inf
                tensor.data = values.tobytes()
            else:
                msg.sender = int(rng.integers(100, 255))
        return how, serialize_message(msg)
    how = BYTE_MUTATIONS[rng.integers(len(BYTE_MUTATIONS))]
    data = bytearray(serialize_message(valid_message(kind, now_ns - 30_000_000_000, shapes)))
    # The 4-byte CDR encapsulation header stays: Fast DDS discards a sample without a valid one before any node
    # sees it, and on a reliable topic the reader then keeps waiting for that sample, so every later message
    # of the same writer would be held back too (the fuzzer would only fuzz the DDS layer, and only once).
    header, body = data[:4], data[4:]
    if how == 'truncate':
        body = body[:int(rng.integers(0, len(body)))]
    elif how == 'flip_bits':
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(len(body)))
            body[i] ^= 1 << int(rng.integers(8))
    elif how == 'random_bytes':
        body = bytearray(rng.integers(0, 256, int(rng.integers(1, 2 * len(body) + 2)), dtype=np.uint8).tobytes())
    else:
        body = bytearray()
    return how, bytes(header + body)


def topic_of(kind: str) -> str:
    return comm_topic(kind, 'drone2' if kind == 'connect' else 'drone1')


class Fuzzer:
    """An rclpy node in a thread: waits for the requester's frames, then publishes the mutants."""

    def __init__(self, kinds, per_type: int, rate: float, seed: int, shapes: dict):
        import rclpy
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from diagnostic_msgs.msg import DiagnosticArray
        from collab_perception.msg import Connect, FeatureMap, FusionInfo, MemoryValue, PatchSegments, Reply, Request
        rclpy.init()
        self.rclpy = rclpy
        self.node = rclpy.create_node('bench_fuzzer')
        types = {'request': Request, 'reply': Reply, 'connect': Connect, 'feature': FeatureMap,
                 'patches': PatchSegments, 'value': MemoryValue}
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.pubs = {k: self.node.create_publisher(types[k], topic_of(k), qos) for k in kinds}
        self.frames = []
        self.node.create_subscription(FusionInfo, '/drone1/fusion/info', self.frames.append, qos)
        self.reports: dict = {}        # status name -> its matched endpoints
        self.values: dict = {}         # status name -> its last key/values (a run without the evaluator)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self.on_diagnostics, 50)
        self.kinds, self.per_type, self.rate = list(kinds), per_type, rate
        self.rng = np.random.default_rng(seed)
        self.shapes = shapes
        self.sent: Counter = Counter()
        self.how: Counter = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def on_diagnostics(self, msg):
        from collab_perception.runtime.readiness import parse_endpoint_values
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            self.reports[status.name] = parse_endpoint_values(values)
            self.values[status.name] = values

    def readers_matched(self) -> bool:
        for topic in map(topic_of, self.kinds):
            writers = sum(len(e.get(('pub', topic), [])) for e in self.reports.values())
            readers = [n for e in self.reports.values() for n in e.get(('sub', topic), [])]
            if not readers or min(readers) < writers + 1:
                return False
        return True

    def run(self):
        # A sample published before the reader's side of the match completes is discarded by that reader, and
        # the publisher cannot see when it has: wait until every node subscribing a fuzzed topic reports on
        # /diagnostics one matched writer more than the swarm's own (runtime/readiness.py), the fuzzer's.
        give_up = time.monotonic() + 30.0
        while not self.stop.is_set() and not (len(self.frames) >= 3 and self.readers_matched()):
            if time.monotonic() > give_up:
                print('bench_fuzz: the nodes did not report matching the fuzzer in 30 s; fuzzing anyway',
                      file=sys.stderr)
                break
            self.rclpy.spin_once(self.node, timeout_sec=0.05)
        self.matched = {k: p.get_subscription_count() for k, p in self.pubs.items()}
        plan = [k for k in self.kinds for _ in range(self.per_type)]
        self.rng.shuffle(plan)
        t0 = time.monotonic()
        for i, kind in enumerate(plan):
            if self.stop.is_set():
                break
            how, data = mutant(kind, self.rng, self.node.get_clock().now().nanoseconds, self.shapes)
            self.pubs[kind].publish(data)
            self.sent[kind] += 1
            self.how[f'{kind}:{how}'] += 1
            wait = t0 + (i + 1) / self.rate - time.monotonic()
            self.rclpy.spin_once(self.node, timeout_sec=max(0.0, wait))
        while not self.stop.is_set():
            self.rclpy.spin_once(self.node, timeout_sec=0.05)
        self.node.destroy_node()
        self.rclpy.try_shutdown()


def run_swarm(args, length: list, run_dir: str, domain: int) -> tuple[int, str]:
    cmd = [sys.executable, '-m', 'collab_perception.cli', 'swarm', *length, '--quiet',
           '--domain-id', str(domain), '--run-dir', run_dir, '--drones', str(args.drones),
           *(['--config', args.config] if args.config else []), *[x for kv in args.set for x in ('--set', kv)]]
    out = subprocess.run(cmd, capture_output=True, text=True)
    return out.returncode, out.stdout + out.stderr


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--config', default=None, help='swarm config (default: config/swarm.yaml)')
    parser.add_argument('--drones', type=int, default=3, help='first N drones of the config (default 3)')
    parser.add_argument('--types', default='request,reply,connect,feature',
                        help=f'comm types to fuzz, comma-separated, of {",".join(TYPES)} (patches: a MASH swarm; '
                        'value: a navigation swarm, config/swarm_nav.yaml)')
    parser.add_argument('--per-type', type=int, default=10000, help='messages per type (default 10000)')
    parser.add_argument('--rate', type=float, default=400.0, help='messages per second, all types (default 400)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--no-clean', action='store_true', help='skip the clean run')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='config overrides')
    parser.add_argument('--json', default=None, help='write the numbers here')
    parser.add_argument('--run-dir', default=None, help="keep the runs' logs and summaries here (default: a "
                        'temporary folder, removed)')
    parser.add_argument('--out', default=None, help='also write the table to this file')
    args = parser.parse_args(argv)
    kinds = [k for k in args.types.split(',') if k]
    unknown = [k for k in kinds if k not in TYPES]
    if unknown:
        parser.error(f'unknown type {unknown[0]!r}; types: {", ".join(TYPES)}')

    from collab_perception.config import load_swarm_config
    from collab_perception.rosenv import apply_safe_ros_env, pick_domain_id
    from collab_perception.runtime.methods import create_method
    cfg = load_swarm_config(args.config, [])
    d1 = cfg.drones[0]
    method = create_method(d1.method, model_dir=d1.models.get('dir', ''), roles=())
    shapes = {'query': tuple(method.query_shape() or (6,)), 'feature': tuple(method.feature_shape() or (3, 8, 8)),
              'grid': tuple(getattr(method, 'grid', (16, 16))), 'classes': int(getattr(method, 'num_classes', 8)),
              'value': (int(getattr(method, 'value_dim', 8)),)}
    fuzz_s = len(kinds) * args.per_type / args.rate
    frames = int(math.ceil((fuzz_s + 6.0) * cfg.swarm['rate_hz']))
    navigation = cfg.swarm['source']['type'] == 'nav'
    if navigation:
        # the bridge ends the run after its episodes: enough of them (at 25 steps each, a short episode) to
        # outlast the fuzz; both runs fly the same ones
        episodes = max(3, int(math.ceil(frames / 25)))
        length = ['--set', f'swarm.source.nav.episodes={episodes}']
    else:
        length = ['--frames', str(frames)]
    domain = pick_domain_id()
    apply_safe_ros_env(domain_id=domain)
    result = {'per_type': args.per_type, 'rate': args.rate, 'frames': frames, 'types': kinds}
    if navigation:
        result['episodes'] = episodes
    with tempfile.TemporaryDirectory(prefix='bench-fuzz-') as work:
        summaries, node_values = {}, {}
        for name in (['clean'] if not args.no_clean else []) + ['fuzzed']:
            fuzzer = None
            if name == 'fuzzed':
                fuzzer = Fuzzer(kinds, args.per_type, args.rate, args.seed, shapes)
                fuzzer.thread.start()
            code, output = run_swarm(args, length, os.path.join(args.run_dir or work, name), domain)
            if fuzzer:
                fuzzer.stop.set()
                fuzzer.thread.join(timeout=30)
                result['sent'] = dict(fuzzer.sent)
                result['matched_subscribers'] = dict(getattr(fuzzer, 'matched', {}))
                result['mutations'] = dict(fuzzer.how)
                node_values = dict(fuzzer.values)
            with open(os.path.join(args.run_dir or work, name, 'summary.json')) as f:
                summaries[name] = json.load(f)
            summaries[name]['returncode'] = code
            if code != 0:
                print(f'{name} run exited {code}:\n{output[-3000:]}', file=sys.stderr)
    fz = summaries['fuzzed']
    # the evaluator's last diagnostics; a navigation run has no evaluator: the fuzzer's own, taken from
    # /diagnostics until the run ended
    diag = (fz.get('evaluator') or {}).get('diagnostics') or node_values
    reasons: Counter = Counter()
    for node, values in diag.items():
        for key, value in values.items():
            if key.startswith('rejected.'):
                reasons[f'{node} {key[len("rejected."):]}'] += int(value)
    counted = {f'{node} {key}': int(values[key]) for node, values in diag.items()
               for key in ('stale_stamp', 'future_stamp', 'orphans_dropped', 'late', 'unexpected', 'duplicate',
                           'stale_requests', 'expired_requests', 'pending_dropped') if int(values.get(key, 0) or 0)}
    exits = fz['process_exits']
    result.update(returncode=fz['returncode'], process_exits=exits, lost=fz['lost_processes'],
                  rejected=dict(reasons), rejected_total=sum(reasons.values()), other_counted=counted)
    title = (f'fuzz: {args.per_type} messages per type ({", ".join(kinds)}) at {args.rate:g}/s into '
             f'{len(fz["drones"])} drones, {", ".join(fz["methods"])}; '
             + (f'{episodes} episodes' if navigation else f'{frames} frames'))
    if navigation:
        result['runs'] = {k: {key: s['navigation'][key] for key in ('episodes', 'steps', 'success_rate', 'spl',
                                                                     'missing_commands', 'value_messages')}
                          for k, s in summaries.items()}
        if 'clean' in summaries:
            clean, fuzzed = (summaries[k]['navigation']['results'] for k in ('clean', 'fuzzed'))
            result['episodes_as_clean'] = sum(a['paths'] == b['paths'] and a['outcomes'] == b['outcomes']
                                              for a, b in zip(clean, fuzzed))
        rows = [title, '', '| run | episodes | steps | missing commands | MemoryValues the monitor counted | SR | SPL |',
                '|---|---|---|---|---|---|---|']
        for k, r in result['runs'].items():
            rows.append(f'| {k} | {r["episodes"]} | {r["steps"]} | {r["missing_commands"]} | {r["value_messages"]} | '
                        f'{r["success_rate"]:.3f} | {r["spl"]:.3f} |')
        if 'episodes_as_clean' in result:
            rows += ['', f'episodes flown exactly as in the clean run (paths, steps, outcomes): '
                         f'{result["episodes_as_clean"]} of {result["runs"]["fuzzed"]["episodes"]}']
    else:
        result['runs'] = {k: {'fused_accuracy': s['overall']['fused_accuracy'],
                              'own_accuracy': s['overall']['own_accuracy'],
                              'fallbacks': s['overall']['fallback_frames'],
                              'latency_ms_p95': s['overall']['latency_ms_p95'],
                              'segmentations': s['per_drone']['drone1']['segmentations'], 'frames': s['frames']}
                          for k, s in summaries.items()}
        rows = [title, '', '| run | frames | segmentations | fallbacks | latency p95 (ms) | fused accuracy | own accuracy |',
                '|---|---|---|---|---|---|---|']
        for k, r in result['runs'].items():
            rows.append(f'| {k} | {r["frames"]} | {r["segmentations"]} | {r["fallbacks"]} | '
                        f'{r["latency_ms_p95"]:.1f} | {100 * (r["fused_accuracy"] or 0):.2f}% | '
                        f'{100 * (r["own_accuracy"] or 0):.2f}% |')
    rows += ['', f'sent: {dict(result.get("sent", {}))} to {result.get("matched_subscribers")} subscribers; '
                 f'processes that died: '
                 f'{[k for k, v in exits.items() if v != 0] or "none"}', '',
             '| node and reason | messages |', '|---|---|']
    rows += [f'| {k} (rejected) | {v} |' for k, v in sorted(reasons.items())]
    rows += [f'| {k} (valid, counted) | {v} |' for k, v in sorted(counted.items())]
    emit_table('\n'.join(rows), args.out)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    return 0 if fz['returncode'] == 0 else 1


if __name__ == '__main__':
    raise SystemExit(main())
