"""`collab-perception`: one command line for the project.

    collab-perception swarm     run the swarm of config/swarm.yaml through ROS 2 (embedded launcher)
    collab-perception monitor   measure the bytes on the swarm's comm topics of a running swarm
    collab-perception dataset   generate and preview the papers' datasets from the embedded world
    collab-perception train     train a method of the handshake paper on a setting
    collab-perception evaluate  score the trained runs, write docs/RESULTS.md (Table I on our data)
    collab-perception export    ONNX by role (encoder, matcher, decoder) for the swarm

Each subcommand has its own --help.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional, Sequence

from .config import ConfigError, load_swarm_config, parse_override


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument('--config', metavar='PATH', default=None,
                   help='swarm configuration (default: config/swarm.yaml of the package)')
    p.add_argument('--set', metavar='KEY=VALUE', action='append', default=[], dest='overrides',
                   help='override a config value, e.g. --set swarm.rate_hz=10 --set drone_defaults.deadline_ms=200 '
                        '(repeatable; VALUE is parsed as YAML)')


def _load_config(args):
    overrides = [parse_override(o) for o in args.overrides]
    if getattr(args, 'frames', None) is not None:
        overrides.append(('swarm.frames', args.frames))
    if getattr(args, 'layout', None):
        overrides.append(('swarm.process_layout', args.layout))
    if getattr(args, 'record', False):
        overrides.append(('swarm.record', True))
    if getattr(args, 'bag', None):
        overrides += [('swarm.source.type', 'bag'), ('swarm.source.bag.path', os.path.abspath(args.bag))]
    cfg = load_swarm_config(args.config, overrides)
    drones = getattr(args, 'drones', None)
    if drones is not None:
        if not 1 <= drones <= len(cfg.drones):
            raise ConfigError('--drones', f'{drones} is not in 1..{len(cfg.drones)} (drones in {cfg.source})')
        cfg.drones = cfg.drones[:drones]
    requesters = getattr(args, 'requesters', None)
    if requesters is not None:
        names = [] if requesters == 'none' else [n.strip() for n in requesters.split(',') if n.strip()]
        unknown = sorted(set(names) - set(cfg.names))
        if unknown:
            raise ConfigError('--requesters', f'{", ".join(unknown)} not among the drones ({", ".join(cfg.names)})')
        for d in cfg.drones:
            d.role = 'requester' if d.name in names else 'supporter'
    return cfg


# ---------------------------------------------------------------------------------------------- swarm
def format_monitor_table(monitor: dict) -> str:
    frames = monitor.get('frames', 0)
    lines = [f'Bytes per frame on the wire ({frames} frames; serialized CDR as measured by the monitor):',
             f'  {"sender":<10} {"topic":<24} {"messages":>8} {"bytes/frame":>12}']
    for row in monitor.get('per_sender_topic', []):
        lines.append(f'  {row["sender"]:<10} {row["topic"]:<24} {row["messages"]:>8} {row["bytes_per_frame"]:>12.1f}')
    lines.append(f'  {"all":<10} {"all measured topics":<24} {monitor["total"]["messages"]:>8} '
                 f'{monitor.get("bytes_per_frame", 0.0):>12.1f}')
    kinds = ', '.join(f'{k} {v["bytes_per_frame"]:.1f}' for k, v in monitor.get('per_kind', {}).items())
    if kinds:
        lines.append(f'  per kind (bytes/frame): {kinds}')
    senders = ', '.join(f'{k} {v["bytes_per_frame"]:.1f}' for k, v in monitor.get('per_sender', {}).items())
    if senders:
        lines.append(f'  per sender (bytes/frame): {senders}')
    if monitor.get('rejected'):
        lines.append(f'  unparseable messages: {sum(monitor["rejected"].values())}')
    return '\n'.join(lines)


def feature_bytes(cfg, drone) -> int:
    """Serialized bytes of what one supporter would send to a requester if it sent everything, with the
    swarm's codec: its FeatureMap (CatAll), or for a spatial method every cell's patch (MASH without the
    confidence threshold)."""
    from .runtime import wire
    from .runtime.methods import feature_shape_of, protocol_of
    shape = feature_shape_of(drone.method, drone.models.get('dir', ''))
    if protocol_of(drone.method) == 'spatial':
        dtype = cfg.swarm['codec']['patch_dtype']
        if len(shape) == 3:             # 'pixels' patches [cells, cell, cell]: class ids
            from .runtime.onnx_method import read_roles_json
            classes = int(read_roles_json(drone.models.get('dir', ''))['num_classes'])
            return wire.patches_size(shape[0], classes, dtype, dtype, cell_size=shape[1])
        return wire.patches_size(shape[0], shape[1], dtype, dtype)
    return wire.feature_size(shape, cfg.swarm['codec']['feature_dtype'])


def spatial_summary(cfg, monitor: dict) -> Optional[dict]:
    """MASH's bytes as its Table I reports them (§IV): the requester's query per request as a fraction x of
    its raw image (H x W x 3 bytes) and each supporter's patches per frame as a fraction y of its label
    image (H x W bytes), from the monitor's measurement."""
    from .runtime.methods import protocol_of
    from .runtime.onnx_method import read_roles_json
    if not cfg.drones or protocol_of(cfg.drones[0].method) != 'spatial':
        return None
    h, w = read_roles_json(cfg.drones[0].models.get('dir', ''))['image_size']
    rows = monitor.get('per_sender_topic', [])
    requests = [r for r in rows if r['topic'] == '/swarm/request']
    messages = sum(r['messages'] for r in requests)
    query = sum(r['bytes'] for r in requests) / messages if messages else None
    patches = {r['sender']: r['bytes_per_frame'] for r in rows if r['topic'].endswith('/comm/patches')}
    fractions = {k: v / (h * w) for k, v in patches.items()}
    return {
        'image_bytes': h * w * 3, 'label_bytes': h * w,
        'query_bytes_per_request': query,
        'query_fraction_of_image': query / (h * w * 3) if query else None,
        'patch_bytes_per_frame': patches,
        'patch_fraction_of_labels': fractions,
        'max_patch_fraction_of_labels': max(fractions.values()) if fractions else None,
    }


def navigation_summary(cfg, monitor: dict, nav: dict) -> dict:
    """A navigation run's numbers (CollaVN §3.3) from the bridge's episodes and the monitor's bytes."""
    m, steps = nav.get('metrics', {}), nav.get('steps', 0)
    total = monitor.get('total', {}).get('bytes', 0)
    kinds = monitor.get('per_kind', {})
    per_step = total / steps if steps else None
    return {
        'episodes': nav.get('episodes', 0), 'steps': steps, 'drone_steps': nav.get('drone_steps', 0),
        'success_rate': m.get('success_rate'), 'spl': m.get('spl'), 'ssr': m.get('ssr'), 'dts': m.get('dts'),
        'comm_bytes_per_step': per_step,
        'comm_bytes_per_agent_step': per_step / len(cfg.drones) if per_step is not None else None,
        'request_messages': kinds.get('request', {}).get('messages', 0),
        'value_messages': kinds.get('value', {}).get('messages', 0),
        'missing_commands': nav.get('missing_commands', 0),
        'results': nav.get('results', []),
    }


def cpu_summary(cfg, samples: list, flight_s: float) -> dict:
    """CPU per process and per drone from the launcher's samples: seconds used in the whole run (start-up
    included), and the share of one core during the flight: the last `flight_s` seconds before the run
    was stopped (the monitor's first to last comm message), start-up, imports and session loading left out."""
    if len(samples) < 3 or flight_s < 2.0:
        return {}
    t_end = samples[-1][0]
    t_mid, mid = min(samples[:-1], key=lambda s: abs(s[0] - (t_end - flight_s)))
    per_process = {}
    labels = dict.fromkeys(label for _, sample in samples for label in sample)
    for label in labels:
        # a process that ended before the run was stopped (the source that finished it) counts to its last sample
        t_last, used = next((t, sample[label]) for t, sample in reversed(samples) if label in sample)
        before = mid.get(label)
        # a process respawned in the window started its count again: no share for it
        share = (100 * (used - before) / (t_last - t_mid)) if before is not None and used >= before \
            and t_last - t_mid >= 1.0 else None
        per_process[label] = {'seconds': round(used, 2), 'percent': None if share is None else round(share, 1)}
    per_drone = {}
    for d in cfg.names:
        shares = [v['percent'] for k, v in per_process.items() if k.split('/')[0] == d and v['percent'] is not None]
        per_drone[d] = round(sum(shares), 1) if shares else None
    return {'window_s': [t_mid, t_end], 'per_process': per_process, 'per_drone_percent': per_drone}


def build_swarm_summary(cfg, monitor: Optional[dict], evaluator: Optional[dict], result,
                        nav: Optional[dict] = None) -> dict:
    """The run's JSON summary: frames, drones, `overall` and `per_drone` (issue: handshake on the swarm); a
    navigation run adds `navigation` and CollaVN's numbers in `overall` (success_rate, spl, ssr, dts,
    comm_bytes_per_step)."""
    monitor, evaluator = monitor or {}, evaluator or {}
    frames = evaluator.get('frames') or monitor.get('frames') or 0
    ev_overall = evaluator.get('overall', {})
    ev_drones = evaluator.get('per_drone', {})
    senders = monitor.get('per_sender', {})
    # CatAll on the same frames: every supporter sends its features to every frame's requester
    requested = sum(ev_drones.get(d.name, {}).get('requested_frames', 0) for d in cfg.drones)
    catall = 0 if nav is not None else sum(
        ev_drones.get(d.name, {}).get('requested_frames', 0) * (len(cfg.drones) - 1) * feature_bytes(cfg, d)
        for d in cfg.drones)
    overall = {
        'fused_accuracy': ev_overall.get('fused_accuracy'),
        'own_accuracy': ev_overall.get('own_accuracy'),
        'fused_miou': ev_overall.get('fused_miou'),
        'own_miou': ev_overall.get('own_miou'),
        'comm_bytes_per_frame': monitor.get('bytes_per_frame'),
        'catall_bytes_per_frame': catall / frames if frames else None,
        'fallback_frames': ev_overall.get('fallback_frames'),
        'requested_frames': requested,
        'latency_ms_p50': ev_overall.get('latency_ms_p50'),
        'latency_ms_p95': ev_overall.get('latency_ms_p95'),
        'comm_messages': monitor.get('total', {}).get('messages'),
        'rejected_messages': sum(evaluator.get('rejected_by_node', {}).values()),
    }
    navigation = navigation_summary(cfg, monitor, nav) if nav is not None else None
    if navigation:
        overall.update({k: navigation[k] for k in ('success_rate', 'spl', 'ssr', 'dts', 'comm_bytes_per_step',
                                                   'comm_bytes_per_agent_step')})
        overall['rejected_messages'] = sum(monitor.get('rejected', {}).values())
    per_drone = {}
    for d in cfg.drones:
        e = ev_drones.get(d.name, {})
        per_drone[d.name] = {
            'role': d.role,
            **{k: e.get(k) for k in ('fused_accuracy', 'own_accuracy', 'fused_miou', 'own_miou', 'fallback_frames',
                                     'latency_ms_p50', 'latency_ms_p95', 'segmentations', 'requested_frames',
                                     'frames_with_help', 'frames_without_segmentation',
                                     'frames_with_several_segmentations')},
            'comm_bytes_sent_per_frame': senders.get(d.name, {}).get('bytes_per_frame', 0.0),
            'rejected': {k: v for k, v in evaluator.get('rejected_by_node', {}).items() if k.startswith(d.name + '/')},
        }
    return {
        'frames': frames,
        'drones': cfg.names,
        'requesters': [d.name for d in cfg.drones if d.role != 'supporter'],
        'methods': sorted({d.method for d in cfg.drones}),
        'process_layout': cfg.swarm['process_layout'],
        'duration_s': round(result.duration_s, 3),
        'returncode': result.returncode,
        'end_reason': result.reason,
        'lost_processes': result.lost,
        'teardown_timeouts': result.teardown_timeouts,
        'respawned_processes': result.respawned,
        'cpu': cpu_summary(cfg, getattr(result, 'cpu_samples', []), monitor.get('duration_s', 0.0)),
        'overall': overall,
        'per_drone': per_drone,
        'spatial': spatial_summary(cfg, monitor),
        'navigation': navigation,
        'per_kind_bytes_per_frame': {k: v['bytes_per_frame'] for k, v in monitor.get('per_kind', {}).items()},
        'per_topic_bytes_per_frame': {k: v['bytes_per_frame'] for k, v in monitor.get('per_topic', {}).items()},
        'process_exits': result.exits,
        'monitor': monitor,
        'evaluator': evaluator,
    }


def format_overall(summary: dict) -> str:
    o = summary['overall']

    def pct(x):
        return '-' if x is None else f'{100 * x:.2f}%'

    def num(x, unit=''):
        return '-' if x is None or x != x else f'{x:,.1f}{unit}'

    nav = summary.get('navigation')
    if nav:
        ssr = '-' if o['ssr'] is None else f'{o["ssr"]:.2f}'
        spl = '-' if o['spl'] is None else f'{o["spl"]:.3f}'
        return '\n'.join([
            f'Navigation ({", ".join(summary["drones"])}), method {", ".join(summary["methods"])}: {nav["episodes"]} '
            f'episodes, {nav["steps"]} steps',
            f'  SR {pct(o["success_rate"])}   SPL {spl}   SSR {ssr}   DTS {num(o["dts"], " m")}',
            f'  bytes      {num(o["comm_bytes_per_step"])} B per step on the wire '
            f'({num(o["comm_bytes_per_agent_step"])} B per drone per step); {nav["request_messages"]} queries, '
            f'{nav["value_messages"]} values sent',
            f'  commands   {nav["missing_commands"]} missing; rejected messages {o["rejected_messages"]}'])
    lines = [f'Requesters ({", ".join(summary["requesters"]) or "none"}), method {", ".join(summary["methods"])}:',
             f'  accuracy   fused {pct(o["fused_accuracy"])}  vs own only {pct(o["own_accuracy"])}   '
             f'(mIoU {pct(o["fused_miou"])} vs {pct(o["own_miou"])})',
             f'  bytes      {num(o["comm_bytes_per_frame"])} B/frame on the wire  vs '
             f'{"every cell of every supporter" if summary.get("spatial") else "CatAll"} '
             f'{num(o["catall_bytes_per_frame"])} B/frame'
             + (f'  ({o["comm_bytes_per_frame"] / o["catall_bytes_per_frame"]:.3f} of it)'
                if o['comm_bytes_per_frame'] and o['catall_bytes_per_frame'] else ''),
             f'  latency    p50 {num(o["latency_ms_p50"], " ms")}, p95 {num(o["latency_ms_p95"], " ms")} '
             f'(camera stamp -> segmentation)',
             f'  fallbacks  {o["fallback_frames"]} of {o["requested_frames"]} requested frames; rejected messages '
             f'{o["rejected_messages"]}']
    helped = [d.get('frames_with_help') for n, d in summary.get('per_drone', {}).items()
              if n in summary['requesters'] and d.get('frames_with_help') is not None]
    if helped and o['requested_frames']:
        # a gate (When2com, select: threshold) or a quiet swarm leaves frames decoded from the drone's own view
        lines.append(f'  helped     {sum(helped)} of {o["requested_frames"]} requested frames received what they '
                     f'asked for; the others used the drone\'s own view')
    sp = summary.get('spatial')
    if sp and sp['query_fraction_of_image'] is not None:
        worst = sp['max_patch_fraction_of_labels']
        lines.append(f'  MASH       query {num(sp["query_bytes_per_request"], " B")} = '
                     f'{sp["query_fraction_of_image"]:.3f} of the raw image; patches per supporter '
                     + ', '.join(f'{k} {v:.3f}' for k, v in sp['patch_fraction_of_labels'].items())
                     + (f' of the label image (max {worst:.3f})' if worst is not None else ''))
    cpu = (summary.get('cpu') or {}).get('per_drone_percent') or {}
    if any(v is not None for v in cpu.values()):
        lines.append('  cpu        ' + ', '.join(f'{d} {v:.0f}%' for d, v in cpu.items() if v is not None)
                     + ' of one core during the flight')
    if summary.get('lost_processes'):
        lines.append(f'  LOST       {", ".join(summary["lost_processes"])}')
    if summary.get('respawned_processes'):
        lines.append('  respawned  ' + ', '.join(f'{k} x{v}' for k, v in summary['respawned_processes'].items()))
    if summary.get('teardown_timeouts'):
        lines.append(f'  teardown   stuck in Fast DDS, ended by their watchdog after their work: '
                     f'{", ".join(summary["teardown_timeouts"])}')
    return '\n'.join(lines)


def cmd_swarm(args) -> int:
    from .launch.embedded import EmbeddedLauncher
    from .launch.plan import build_process_plan
    from .rosenv import safe_ros_env

    cfg = _load_config(args)
    run_dir = os.path.abspath(args.run_dir or os.path.join('runs', time.strftime('swarm-%Y%m%d-%H%M%S')))
    os.makedirs(run_dir, exist_ok=True)
    processes = build_process_plan(cfg, run_dir)
    env = safe_ros_env(domain_id=args.domain_id, ros_home=os.path.join(run_dir, 'ros_home'))
    env.setdefault('PYTHONFAULTHANDLER', '1')   # a crashing node prints its Python stack (logs/<process>.log)
    network, host_envs, where = None, None, 'on localhost'
    if cfg.swarm['network']['mode'] == 'namespaces':
        network, host_envs = _namespace_hosts(cfg, processes, env, run_dir)
        if network is None:
            return 2
        where = (f'each host in its own network namespace on {cfg.swarm["network"]["subnet"]} ('
                 + ', '.join(f'{h} {network.address(h)}' for h in network.names) + ')')
    print(f'[launch] {len(cfg.drones)} drones ({", ".join(cfg.names)}), {len(processes)} processes, layout '
          f'{cfg.swarm["process_layout"]}, ROS_DOMAIN_ID {env["ROS_DOMAIN_ID"]} {where}; run dir {run_dir}',
          flush=True)
    quiet = args.quiet

    def keep(label: str, line: str) -> bool:
        return not quiet or any(w in line for w in ('WARN', 'ERROR', 'FATAL', 'Traceback', 'Error'))

    launcher = EmbeddedLauncher(processes, run_dir, env, line_filter=keep, on_node_exit=cfg.swarm['on_node_exit'],
                                network=network, host_envs=host_envs)
    try:
        result = launcher.run(timeout_s=args.timeout)
        network_summary = {'mode': cfg.swarm['network']['mode']}
        if network is not None:
            network_summary.update(subnet=cfg.swarm['network']['subnet'], hosts=network.counters())
    finally:
        if network is not None:
            network.close()

    def read(name):
        path = os.path.join(run_dir, name, 'summary.json')
        if os.path.exists(path):
            with open(path, encoding='utf-8') as f:
                return json.load(f)
        return None

    monitor = read('monitor')
    nav = None
    if cfg.swarm['source']['type'] == 'nav':
        path = os.path.join(run_dir, 'nav', 'nav_episodes.json')
        if os.path.exists(path):
            with open(path, encoding='utf-8') as f:
                nav = json.load(f)
        else:
            nav = {}
    summary = build_swarm_summary(cfg, monitor, read('evaluator'), result, nav)
    summary['network'] = network_summary
    summary_path = args.summary or os.path.join(run_dir, 'summary.json')
    with open(summary_path, 'w', encoding='utf-8') as f:
        json.dump(summary, f, indent=2)
        f.write('\n')
    print()
    print(f'Swarm run: {len(cfg.drones)} drones, {summary["frames"]} frames, {result.duration_s:.1f} s, '
          f'{"OK" if result.returncode == 0 else "FAILED: " + result.reason}')
    print(format_overall(summary))
    if network_summary.get('hosts'):
        print('  network    ' + '; '.join(f'{h} {c["address"]} sent {c.get("tx_bytes", 0) / 1e6:.2f} MB, received '
                                          f'{c.get("rx_bytes", 0) / 1e6:.2f} MB'
                                          for h, c in network_summary['hosts'].items()))
    if monitor:
        print(format_monitor_table(monitor))
    else:
        print('No monitor summary was written (monitor disabled or it did not stop cleanly).')
    if cfg.swarm['record']:
        print(f'Bag: {os.path.join(run_dir, "bag")} (collab-perception replay {os.path.join(run_dir, "bag")})')
    print(f'Summary: {summary_path}')
    return result.returncode


def _namespace_hosts(cfg, processes, env, run_dir):
    """swarm.network.mode namespaces: the hosts' namespaces started, a Fast DDS profile and an environment per
    host; (None, None) after saying why where namespaces cannot be made here."""
    from collections import Counter

    from .launch.netns import NamespaceNetwork, NetworkError, available, host_ros_env

    why = available()
    if why:
        print(f'[launch] ERROR: swarm.network.mode is namespaces, but {why}. Run as root (or in a container '
              f'with CAP_SYS_ADMIN and CAP_NET_ADMIN), or set swarm.network.mode=loopback.', file=sys.stderr)
        return None, None
    hosts = list(dict.fromkeys(p.host for p in processes))      # the ground station first: swarm/* lead the plan
    try:
        network = NamespaceNetwork(hosts, cfg.swarm['network']['subnet']).start()
    except NetworkError as e:
        print(f'[launch] ERROR: setting up the network namespaces: {e}', file=sys.stderr)
        return None, None
    profiles = network.write_profiles(os.path.join(run_dir, 'dds'), Counter(p.host for p in processes))
    return network, {h: host_ros_env(env, profiles[h]) for h in hosts}


# ---------------------------------------------------------------------------------------------- record
def cmd_record(args) -> int:
    from .launch.plan import build_node_plan
    from .nodes.recorder_node import RecorderNode

    cfg = _load_config(args)
    cfg.swarm['record'] = True
    out = os.path.abspath(args.out or os.path.join('runs', time.strftime('bag-%Y%m%d-%H%M%S')))
    work = out + '.params'
    spec = next(n for n in build_node_plan(cfg, work) if n.executable == 'recorder')
    spec.parameters['output_dir'] = out
    code = _spin_alone(RecorderNode, spec, work, args)
    print(f'Bag: {out}')
    return code


def _spin_alone(node_class, spec, params_dir: str, args) -> int:
    """Run one swarm-wide node of the plan in this process (the monitor, the recorder), with the safe ROS
    environment unless --inherit-ros-env, until Ctrl-C or --duration seconds."""
    from .launch.plan import ProcessSpec, write_params_file
    from .nodes.common import spin_nodes
    from .rosenv import apply_safe_ros_env
    if not args.inherit_ros_env:
        apply_safe_ros_env(domain_id=args.domain_id)
    params = write_params_file(ProcessSpec(f'swarm/{spec.name}', spec.executable, spec.namespace, [spec]), params_dir)

    def make():
        node = node_class()
        if args.duration:
            def done():
                node.finished = True
            node.create_timer(args.duration, done)
        return node

    return spin_nodes([make], [f'collab-perception-{spec.name}', '--ros-args', '-r', f'__ns:={spec.namespace}',
                               '--params-file', params])


# ---------------------------------------------------------------------------------------------- monitor
def cmd_monitor(args) -> int:
    from .launch.plan import build_node_plan
    from .nodes.monitor_node import MonitorNode

    cfg = _load_config(args)
    for extra in args.extra_topic:
        topic, _, type_name = extra.partition(':')
        cfg.swarm['monitor']['extra_topics'].append({'topic': topic, 'type': type_name})
    out_dir = os.path.abspath(args.out or os.path.join('runs', time.strftime('monitor-%Y%m%d-%H%M%S')))
    spec = next(n for n in build_node_plan(cfg, out_dir) if n.executable == 'monitor')
    spec.parameters['output_dir'] = out_dir
    spec.parameters['extra_topics'] = ','.join(f"{e['topic']}:{e['type']}" for e in cfg.swarm['monitor']['extra_topics'])
    code = _spin_alone(MonitorNode, spec, out_dir, args)
    summary_path = os.path.join(out_dir, 'summary.json')
    if os.path.exists(summary_path):
        with open(summary_path, encoding='utf-8') as f:
            print(format_monitor_table(json.load(f)))
        print(f'Summary: {summary_path}  CSV: {os.path.join(out_dir, "frames.csv")}')
    return code


# ---------------------------------------------------------------------------------------------- params
def cmd_dds_profile(args) -> int:
    from .launch.netns import MIN_PEERS_RANGE, dds_profile
    peers = list(dict.fromkeys([*args.peers, args.address]))
    if args.processes < 1:
        print(f'--processes: must be at least 1, got {args.processes}', file=sys.stderr)
        return 2
    try:
        xml = dds_profile(args.address, peers, max(MIN_PEERS_RANGE, args.processes + 2))
    except ValueError as e:
        print(f'dds-profile: {e}', file=sys.stderr)
        return 2
    if args.out == '-':
        sys.stdout.write(xml)
    else:
        with open(args.out, 'w', encoding='utf-8') as f:
            f.write(xml)
        print(f'wrote {args.out}: {args.address}, peers {", ".join(peers)}')
    return 0


def cmd_params(args) -> int:
    from .launch.plan import parameter_rows, parameters_markdown
    cfg = _load_config(args)
    if args.markdown:
        print(parameters_markdown(cfg), end='')
        return 0
    rows = parameter_rows(cfg)
    width = max(len(r['name']) for r in rows)
    for r in rows:
        f = r['field']
        flag = ' [run time]' if f.runtime else ''
        print(f"{r['name']:<{width}}  {','.join(r['nodes'])}: default {f.default!r}{flag}\n{'':<{width}}  {f.help}")
    return 0


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='collab-perception',
        description='Bandwidth-limited collaborative perception for drone swarms (ROS 2). '
                    'Every ROS process it starts keeps DDS on this machine (localhost discovery, a Fast DDS '
                    'profile with shared memory and 127.0.0.1 only).',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)

    p = sub.add_parser('swarm', help='run the swarm of a config through ROS 2, without launch_ros',
                       description='Start every node of config/swarm.yaml as child processes (the same node plan '
                                   'as launch/swarm.launch.py), forward their output with [drone/node] prefixes, '
                                   'and print the bytes per frame that the monitor measured. Ctrl-C stops all '
                                   'children; a child that dies stops the swarm with a non-zero exit code.')
    _add_config_args(p)
    p.add_argument('--frames', type=int, default=None, help='stop after N camera snapshots (default: the config\'s '
                   'swarm.frames; 0 runs until Ctrl-C)')
    p.add_argument('--drones', type=int, default=None, help='use only the first N drones of the config')
    p.add_argument('--requesters', default=None, metavar='NAMES',
                   help='comma-separated drones that ask for help every frame, the others only answer ("none": '
                        'every drone alone, the single-agent pipeline); default: the roles of the config')
    p.add_argument('--layout', choices=('per_node', 'per_drone'), default=None,
                   help='one process per node, or one per drone (default: the config\'s)')
    p.add_argument('--run-dir', default=None, help='where params files, logs, the monitor output and the summary '
                   'go (default: runs/swarm-<time>)')
    p.add_argument('--summary', metavar='PATH', default=None, help='write the JSON summary here too '
                   '(default: <run-dir>/summary.json)')
    p.add_argument('--timeout', type=float, default=None, help='fail if the run takes longer than this (s)')
    p.add_argument('--domain-id', type=int, default=None, help='ROS_DOMAIN_ID (default: a random one in 1..100)')
    p.add_argument('--quiet', action='store_true', help='forward only warnings and errors of the nodes')
    p.add_argument('--record', action='store_true', help='record the flight into <run-dir>/bag (rosbag2, MCAP: '
                   'cameras, segmentation, fusion/info, comm, frames, bandwidth; replay it with `replay`)')
    p.set_defaults(func=cmd_swarm, bag=None)

    p = sub.add_parser('replay', help='fly a recorded bag\'s cameras through the swarm\'s nodes again',
                       description='Run the swarm of a config (the one the bag was recorded with) with the cameras '
                                   'of a bag recorded by `swarm --record` as its source (the bag_bridge node): '
                                   'the same pixels, poses and camera models, snapshot by snapshot, so the fused '
                                   'outputs can be compared with the recorded ones. Takes the options of `swarm`.')
    p.add_argument('bag', help='the bag directory (<run-dir>/bag of a recorded run)')
    _add_config_args(p)
    p.add_argument('--drones', type=int, default=None, help='use only the first N drones of the config')
    p.add_argument('--layout', choices=('per_node', 'per_drone'), default=None, help='process layout')
    p.add_argument('--run-dir', default=None, help='run directory (default: runs/swarm-<time>)')
    p.add_argument('--summary', metavar='PATH', default=None, help='write the JSON summary here too')
    p.add_argument('--timeout', type=float, default=None, help='fail if the run takes longer than this (s)')
    p.add_argument('--domain-id', type=int, default=None, help='ROS_DOMAIN_ID (default: a random one in 1..100)')
    p.add_argument('--quiet', action='store_true', help='forward only warnings and errors of the nodes')
    p.add_argument('--record', action='store_true', help='record the replayed flight too (<run-dir>/bag)')
    p.set_defaults(func=cmd_swarm)

    p = sub.add_parser('record', help='record a running swarm\'s topics into a bag (rosbag2, MCAP)',
                       description='Run the recorder node alone, as `ros2 bag record` would: raw subscriptions to '
                                   'every drone\'s cameras, segmentation and fusion/info, the comm topics of the '
                                   'config\'s protocol, /swarm/frame and /swarm/bandwidth, written with the '
                                   'rosbags library (no ROS install needed to read the bag). Ctrl-C or --duration '
                                   'ends it.')
    _add_config_args(p)
    p.add_argument('--out', default=None, help='the bag directory to create (default: runs/bag-<time>)')
    p.add_argument('--duration', type=float, default=None, help='stop after this many seconds (default: Ctrl-C)')
    p.add_argument('--domain-id', type=int, default=None, help='ROS_DOMAIN_ID (default: the environment\'s)')
    p.add_argument('--inherit-ros-env', action='store_true',
                   help='use the shell\'s ROS environment as it is (to record real drones on a network)')
    p.set_defaults(func=cmd_record)

    p = sub.add_parser('monitor', help='measure the comm bytes of a running swarm',
                       description='Run the monitor node alone: raw subscriptions to every comm topic of the '
                                   'config\'s drones (and --extra-topic ones), bytes grouped by frame stamp, '
                                   'sender and topic; BandwidthStats on /swarm/bandwidth for rqt_plot; '
                                   'summary.json and frames.csv on exit (Ctrl-C or --duration).')
    _add_config_args(p)
    p.add_argument('--duration', type=float, default=None, help='stop after this many seconds (default: Ctrl-C)')
    p.add_argument('--out', default=None, help='output directory (default: runs/monitor-<time>)')
    p.add_argument('--extra-topic', action='append', default=[], metavar='TOPIC:TYPE',
                   help='also measure this topic, e.g. /drone1/camera/image_raw:sensor_msgs/msg/Image')
    p.add_argument('--domain-id', type=int, default=None, help='ROS_DOMAIN_ID (default: the environment\'s)')
    p.add_argument('--inherit-ros-env', action='store_true',
                   help='use the shell\'s ROS environment as it is (to watch real drones on a network) instead '
                        'of forcing localhost-only DDS')
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser('params', help='list every node parameter: default, range, help, run-time changeable',
                       description='Every ROS parameter the node plan of a config sets, per node, from the config '
                                   'schema: its default, range or choices, whether `ros2 param set` applies it to a '
                                   'running node, and its help text. --markdown writes docs/PARAMETERS.md.')
    _add_config_args(p)
    p.add_argument('--markdown', action='store_true', help='print the table of docs/PARAMETERS.md')
    p.set_defaults(func=cmd_params)

    p = sub.add_parser('dds-profile', help='write the Fast DDS profile of one host of a multi-host swarm',
                       description='A Fast DDS profile for a drone (or ground station) on a real network: UDPv4 '
                                   'only, discovery by unicast to every host of the swarm, no multicast, no shared '
                                   'memory between hosts. Point FASTDDS_DEFAULT_PROFILES_FILE at it on that host '
                                   'and set ROS_AUTOMATIC_DISCOVERY_RANGE=SYSTEM_DEFAULT (docs/DEPLOY.md, '
                                   '"Several hosts"). The same profile is what `swarm.network.mode: namespaces` '
                                   'gives each emulated host.')
    p.add_argument('--address', required=True, help="this host's IPv4 address on the swarm's network")
    p.add_argument('--peers', nargs='+', required=True, metavar='ADDRESS',
                   help="every host's address (this one may be included; it is added if not)")
    p.add_argument('--processes', type=int, default=3,
                   help='ROS processes on the busiest host (participants probed per peer: this + 2; default 3)')
    p.add_argument('--out', default='-', help='file to write (default: standard output)')
    p.set_defaults(func=cmd_dds_profile)

    from .data.cli import add_dataset_parser
    add_dataset_parser(sub)
    from .learn.cli import add_learn_parsers   # torch is imported only when a learn command runs
    add_learn_parsers(sub)
    nav = sub.add_parser('nav', help='collaborative visual navigation (CollaVN): datasets, training, evaluation',
                         description='CollaVN (memory-augmented communication, ../shared/papers) on the embedded '
                                     'world\'s navigation mode: `nav generate` builds maps and episodes, `nav '
                                     'preview` draws one, `nav train` trains a variant, `nav evaluate` writes the '
                                     'tables. Details: docs/DATASETS.md, "Navigation (CollaVN)".')
    nav_sub = nav.add_subparsers(dest='nav_command', metavar='SUBCOMMAND', required=True)
    from .data.nav_cli import add_nav_data_commands
    add_nav_data_commands(nav_sub)
    from .learn.nav_cli import add_nav_learn_commands   # torch only once train / evaluate runs
    add_nav_learn_commands(nav_sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f'collab-perception {args.command}: configuration error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    raise SystemExit(main())
