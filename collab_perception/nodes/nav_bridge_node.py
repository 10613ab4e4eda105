"""Navigation bridge: the embedded world's navigation mode (world/nav.py), stepped by the drones' velocity
commands, episode after episode (CollaVN §3).

Every step, per drone and with one stamp: camera/image_raw (rgb8, the four panorama views E, N, W, S side by
side), pose (PoseStamped: the node's position in the region's frame, x east and y north from its south-west
corner) and nav/task (episode, step, whether the drone is still navigating, the goal panorama); and
/swarm/frame once. Then it waits for each navigating drone's geometry_msgs/Twist on cmd_vel (the dominant
axis of linear x / y is the move, zero is STOP) and applies them together on the lattice: a lockstep, so
that a run does not depend on how fast each drone's processes are. A drone whose command does not come
within `nav.step_timeout_s` stays where it is that step (counted). An episode ends when every drone has
stopped or after T_max steps; the outcomes (CollaVN's SR, DTS, SPL, SSR per drone) are logged and, with an
output directory, written to nav_episodes.json. After `nav.episodes` episodes the node exits 0, which ends
the run.

The maps are a navigation dataset's (`nav.dataset`, its `nav.split`) or built here from config/nav.yaml for
`nav.map_ids` (the dataset's own test maps are ids 19-22 of seed 0), with episodes sampled from `nav.seed`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Optional

import numpy as np
from geometry_msgs.msg import PoseStamped, Twist
from std_msgs.msg import Header

from collab_perception.msg import NavTask

from ..runtime import topics
from ..runtime.codec import encode_tensor
from ..runtime.metrics import NavOutcome, nav_metrics
from ..world.nav import STOP, NavConfig, velocity_action
from .camera_publishers import WORLD_FRAME
from .common import array_to_image, declare, declare_dataclass, spin_nodes
from .swarm_source import SwarmSource


def flown_episodes(nav: NavConfig, team: int, dataset: str, split: str, map_ids: list[int], task: str,
                   count: int, seed: int, log=print) -> tuple[dict, list]:
    """(maps by (split, id), the first `count` episodes of a team of `team` drones): a dataset's, or sampled
    on maps built here (bands round-robin, seeded)."""
    from ..data.nav import BANDS, NavDataset, sample_episodes
    if dataset:
        data = NavDataset(dataset)
        episodes = data.episodes(split, task=task, team=team)[:count]
        if not episodes:
            raise ValueError(f"parameter 'nav.dataset': {dataset} has no {task} episodes of a team of {team} in "
                             f'split {split}')
        maps = {(e.map_split, e.map_id): data.map(e.map_split, e.map_id) for e in episodes}
        return maps, episodes
    from ..world.nav import build_nav_map
    maps = {}
    for map_id in map_ids:
        t0 = time.monotonic()
        maps[(split, map_id)] = build_nav_map(nav, map_id)
        log(f'nav map {map_id} (seed {nav.seed}): {maps[(split, map_id)].nodes} nodes, built in '
            f'{time.monotonic() - t0:.1f} s')
    rng = np.random.default_rng(seed)
    episodes = []
    for k in range(count):
        key = list(maps)[k % len(maps)]
        episodes += sample_episodes(maps[key], nav, rng, 1, task, team, BANDS[k % len(BANDS)], map_split=split)
    return maps, episodes


class NavBridgeNode(SwarmSource):
    def __init__(self):
        super().__init__('nav_bridge')
        values = declare_dataclass(self, 'nav_world', NavConfig(), 'navigation mode (config/nav.yaml)')
        nav = NavConfig.from_mapping(values, path='nav_world')
        p = {k: declare(self, f'nav.{k}') for k in ('dataset', 'split', 'map_ids', 'task', 'episodes', 'seed',
                                                      'max_steps', 'step_timeout_s')}
        self.output_dir = declare(self, 'output_dir')
        self.maps, self.episodes = flown_episodes(
            nav, len(self.drones), p['dataset'], p['split'], [int(i) for i in p['map_ids']], p['task'],
            p['episodes'], p['seed'], log=self.get_logger().info)
        self.nav = nav
        self.max_steps = p['max_steps'] or nav.max_steps
        self.step_timeout_ns = int(p['step_timeout_s'] * 1e9)
        qos = self.sensor_qos
        self.task_pubs = [self.create_publisher(NavTask, f'/{d}/{topics.NAV_TASK}', qos) for d in self.drones]
        for i, d in enumerate(self.drones):
            self.create_subscription(Twist, f'/{d}/{topics.CMD_VEL}', lambda m, i=i: self.on_command(i, m), qos)
        self.results: list[dict] = []
        self.counters = {'missing_commands': 0, 'unexpected_commands': 0}
        self.episode_index = -1
        self.waiting_since: Optional[int] = None
        self._created = time.monotonic()        # the start-up wait counts from here, not from the map build
        self.timer = self.create_timer(1.0 / self.rate_hz, self.tick)
        self.get_logger().info(
            f'navigation ({p["task"]}, {len(self.episodes)} episodes on {len(self.maps)} {p["split"]} map(s), '
            f'T_max {self.max_steps}) for {", ".join(self.drones)} at up to {self.rate_hz:g} steps/s')

    # ------------------------------------------------------------------ episodes
    def start_episode(self) -> bool:
        self.episode_index += 1
        if self.episode_index >= len(self.episodes):
            return False
        e = self.episodes[self.episode_index]
        self.map = self.maps[(e.map_split, e.map_id)]
        self.nodes = list(e.starts)
        self.paths = [[n] for n in self.nodes]
        self.steps = [0] * e.team
        self.active = [True] * e.team
        self.collisions = [0] * e.team
        self.t = 0
        side = self.map.rgb.shape[2]
        self.goal_tensors = []
        for g in e.goals:
            msg = NavTask().goal
            encode_tensor(self.map.rgb[g], 'uint8', msg, 'goal')
            self.goal_tensors.append(msg)
        self.get_logger().info(f'episode {self.episode_index} ({e.task}, {e.band}, {e.map_split} map {e.map_id}): '
                               f'starts {e.starts}, goals {e.goals}, shortest {[round(d) for d in e.shortest_m]} m '
                               f'({side}-pixel views)')
        return True

    def publish_step(self) -> None:
        stamp = self.get_clock().now().to_msg()
        for i, d in enumerate(self.drones):
            n = self.nodes[i]
            header = Header(stamp=stamp, frame_id=f'{d}/camera')
            panorama = np.concatenate(list(self.map.rgb[n]), axis=1)          # (S, 4S, 3)
            self.cameras.pubs[i]['image'].publish(array_to_image(panorama, 'rgb8', header))
            pose = PoseStamped(header=Header(stamp=stamp, frame_id=WORLD_FRAME))
            x, y = (self.map.cells[n] + 0.5) * self.map.lattice_m
            pose.pose.position.x, pose.pose.position.y = float(x), float(y)
            pose.pose.position.z = float(self.map.positions[n, 2])
            pose.pose.orientation.w = 1.0
            self.cameras.pubs[i]['pose'].publish(pose)
            task = NavTask(header=Header(stamp=stamp, frame_id=d), episode=self.episode_index, step=self.t,
                           active=self.active[i], goal=self.goal_tensors[i])
            self.task_pubs[i].publish(task)
        self.cameras.publish_frame(stamp)
        self.index += 1
        self.commands: dict[int, int] = {}
        self.waiting_since = self.get_clock().now().nanoseconds

    def on_command(self, i: int, msg: Twist) -> None:
        if self.waiting_since is None or not self.active[i] or i in self.commands:
            self.counters['unexpected_commands'] += 1
            return
        self.commands[i] = velocity_action(msg.linear.x, msg.linear.y)

    def apply_commands(self) -> None:
        for i in range(len(self.drones)):
            if not self.active[i]:
                continue
            self.steps[i] += 1
            action = self.commands.get(i)
            if action is None:
                self.counters['missing_commands'] += 1
                self.get_logger().warning(f'[{self.drones[i]}] episode {self.episode_index} step {self.t}: no '
                                          f'velocity command within the step timeout; it stays')
            elif action == STOP:
                self.active[i] = False
            else:
                self.nodes[i], hit = self.map.step(self.nodes[i], action)
                self.collisions[i] += hit
            self.paths[i].append(self.nodes[i])
        self.t += 1
        self.waiting_since = None

    def finish_episode(self) -> None:
        e = self.episodes[self.episode_index]
        outcomes = []
        for i in range(e.team):
            moved = sum(a != b for a, b in zip(self.paths[i][:-1], self.paths[i][1:]))
            final = float(self.map.distances_from(e.goals[i])[self.nodes[i]])
            outcomes.append(NavOutcome(final_m=final, shortest_m=float(e.shortest_m[i]), path_m=moved * self.map.lattice_m,
                                       steps=self.steps[i], max_steps=self.max_steps, success_m=self.nav.success_m))
        self.results.append({'episode': e.to_dict(), 'outcomes': [dataclasses.asdict(o) for o in outcomes],
                             'success': [o.success for o in outcomes], 'paths': self.paths,
                             'collisions': self.collisions, 'steps': self.t})
        line = ', '.join(f'{d} {"reached" if o.success else "missed"} ({o.final_m:.0f} m left, {o.steps} steps)'
                         for d, o in zip(self.drones, outcomes))
        so_far = nav_metrics([NavOutcome(**o) for r in self.results for o in r['outcomes']])
        self.get_logger().info(f'episode {self.episode_index} done after {self.t} steps: {line}; SR so far '
                               f'{100 * so_far["success_rate"]:.1f}% over {so_far["episodes"]} drone-episodes')

    # ------------------------------------------------------------------ the loop
    def tick(self):
        if self._drain_until is not None:
            if time.monotonic() >= self._drain_until:
                self.write_summary()
                self.get_logger().info(f'{len(self.results)} episodes, {self.index} steps; done')
                self.finished = True
            return
        if not self._graph_ready():
            return
        if self.episode_index < 0:
            if not self.start_episode():
                self._drain_until = time.monotonic() + self.drain_s
                return
            self.publish_step()
            return
        if self.waiting_since is None:
            return
        expected = {i for i, a in enumerate(self.active) if a}
        late = self.get_clock().now().nanoseconds - self.waiting_since >= self.step_timeout_ns
        if not (expected <= set(self.commands) or late):
            return
        self.apply_commands()
        if not any(self.active) or self.t >= self.max_steps:
            self.finish_episode()
            if not self.start_episode():
                self._drain_until = time.monotonic() + self.drain_s
                return
        self.publish_step()

    def summary(self) -> dict:
        outcomes = [NavOutcome(**o) for r in self.results for o in r['outcomes']]
        return {'episodes': len(self.results), 'steps': sum(r['steps'] for r in self.results),
                'drone_steps': sum(o.steps for o in outcomes), 'max_steps': self.max_steps,
                'metrics': nav_metrics(outcomes), **self.counters, 'results': self.results}

    def write_summary(self) -> None:
        if not self.output_dir:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, 'nav_episodes.json'), 'w', encoding='utf-8') as f:
            json.dump(self.summary(), f, indent=1)

    def capture(self):
        raise NotImplementedError('the navigation bridge steps in lockstep with the commands (tick)')


def main(args=None) -> int:
    return spin_nodes([NavBridgeNode], args)


if __name__ == '__main__':
    raise SystemExit(main())
