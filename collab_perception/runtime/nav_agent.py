"""A CollaVN agent on ONNX Runtime (no torch): its three roles and its private memory, one step at a time.

    agent = NavAgent('models/collavn_nav')             # roles.json + encode / observe / act .onnx
    agent.reset(goal_descriptors)                      # the goal node's panorama, (4, F)
    query = agent.request(view_descriptors, cell)      # broadcast (None: the agent has stopped)
    answer = agent.answer(query_of_another)            # (score, value) when the score passes, else None
    action = agent.act(answers_received)               # fuse, read own memory, GRU, greedy move; store

This is what a drone's nodes run, and what `run_episodes` runs offline on a navigation dataset's episodes;
learn/collavn.py trains the same arithmetic batched (test/test_collavn.py checks the two agree).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from ..world.nav import ACTIONS, STOP
from .memory import EpisodeMemory, fuse, match, read
from .onnx_method import onnx_session, read_roles_json, resolve_model_dir

NUM_ACTIONS = len(ACTIONS)


class NavAgent:
    """One agent: the ONNX roles of a `collab-perception nav export` directory and its episode state."""

    def __init__(self, model_dir: str, providers: Sequence[str] = ('CPUExecutionProvider',), threads: int = 1):
        self.info = read_roles_json(model_dir)
        path = resolve_model_dir(model_dir)
        self.sessions = {r: onnx_session(os.path.join(path, f'{r}.onnx'), providers, threads) for r in self.info['roles']}
        self.threshold = float(self.info['threshold'])
        self.memory = EpisodeMemory(self.info['key_dim'], self.info['value_dim'], self.info['max_steps'] + 1)
        self.reset(np.zeros((4, self.info['feature_dim']), np.float32))

    def encode(self, views: np.ndarray) -> np.ndarray:
        """A panorama's four (S, S, 3) uint8 views -> (4, F) descriptors."""
        x = views.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        return self.sessions['encode'].run(None, {'views': x})[0]

    def reset(self, goal: np.ndarray) -> None:
        """A new episode: the goal panorama's descriptors (4, F), an empty memory, a zero state."""
        self.goal = np.asarray(goal, np.float32).reshape(1, 4, -1)
        self.hidden = np.zeros((1, self.info['hidden']), np.float32)
        self.prev_action = STOP
        self.memory.clear()
        self.active = True
        self._step = None

    def observe(self, views: np.ndarray, cell: Sequence[float]) -> None:
        """This step's panorama descriptors (4, F) and normalized GPS cell: key, value and query."""
        out = self.sessions['observe'].run(None, {'views': np.asarray(views, np.float32)[None], 'goal': self.goal,
                                                  'cells': np.asarray(cell, np.float32).reshape(1, 2),
                                                  'hidden': self.hidden})
        self._step = dict(zip(('context', 'query', 'key', 'value', 'read_query'), out))

    def request(self) -> Optional[np.ndarray]:
        """The query to broadcast this step, or None once the agent has stopped (it only answers then)."""
        return self._step['query'][0] if self.active and self.info['communicates'] else None

    def answer(self, query: np.ndarray) -> Optional[tuple[float, np.ndarray]]:
        """(score, value) for another agent's query when the score reaches the threshold, else None."""
        score, value = match(query, self._step['key'][0], self._step['value'][0],
                             self.memory if self.info['memory'] else None)
        return (score, value) if score >= self.threshold else None

    def act(self, received: Sequence[tuple[float, np.ndarray]]) -> int:
        """Fuse what arrived, read the own memory, step the policy (greedy); store the step's key and value."""
        s = self._step
        value_dim = self.info['value_dim']
        fused, got = fuse(list(received), value_dim)
        own = read(s['read_query'][0], self.memory) if self.info['memory'] else np.zeros(value_dim, np.float32)
        action = STOP
        if self.active:
            prev = np.zeros((1, NUM_ACTIONS), np.float32)
            prev[0, self.prev_action] = 1.0
            hidden, logits = self.sessions['act'].run(None, {
                'context': s['context'], 'prev_action': prev, 'received': fused[None],
                'got': np.array([[float(got)]], np.float32), 'own_read': own[None], 'hidden': self.hidden})
            self.hidden = hidden
            action = int(np.argmax(logits[0]))
            self.prev_action = action
            self.active = action != STOP
        self.memory.store(s['key'][0], s['value'][0])
        return action


def run_episode(agents: Sequence[NavAgent], nav_map, descriptors: np.ndarray, episode, max_steps: int,
                success_m: float, region_m: float) -> tuple[list, dict]:
    """One episode of a team on a nav map, every agent deciding for itself from what arrives; `descriptors`
    (nodes, 4, F): the map's panorama descriptors (NavAgent.encode of nav_map.rgb). Returns the agents'
    runtime.metrics.NavOutcome and the messages sent: {'queries', 'values', 'steps', 'silent_steps',
    'paths': nodes visited per agent}."""
    from .metrics import NavOutcome

    team = episode.team
    if len(agents) < team:
        raise ValueError(f'episode of a team of {team}: only {len(agents)} agents')
    agents = list(agents)[:team]
    for agent, g in zip(agents, episode.goals):
        agent.reset(descriptors[g])
    nodes = list(episode.starts)
    paths = [[n] for n in nodes]
    steps = [0] * team
    side = region_m / nav_map.lattice_m
    sent = {'queries': 0, 'values': 0, 'steps': 0, 'silent_steps': 0}
    for _ in range(max_steps):
        if not any(a.active for a in agents):
            break
        for agent, n in zip(agents, nodes):
            agent.observe(descriptors[n], (nav_map.cells[n] + 0.5) / side)
        received: list[list] = [[] for _ in agents]
        values = 0
        for i, agent in enumerate(agents):
            query = agent.request()
            if query is None:
                continue
            sent['queries'] += 1
            for j, other in enumerate(agents):
                if j != i:
                    answer = other.answer(query)
                    if answer is not None:
                        received[i].append(answer)
                        values += 1
        sent['values'] += values
        sent['steps'] += 1
        sent['silent_steps'] += values == 0
        for i, agent in enumerate(agents):
            was_active = agent.active
            action = agent.act(received[i])
            if was_active:
                steps[i] += 1
                if action != STOP:
                    nodes[i], _ = nav_map.step(nodes[i], action)
                paths[i].append(nodes[i])
    outcomes = []
    for i in range(team):
        final = nav_map.distances_from(episode.goals[i])[nodes[i]]
        moved = sum(a != b for a, b in zip(paths[i][:-1], paths[i][1:]))
        outcomes.append(NavOutcome(final_m=float(final), shortest_m=float(episode.shortest_m[i]),
                                   path_m=moved * nav_map.lattice_m, steps=steps[i], max_steps=max_steps,
                                   success_m=success_m))
    sent['paths'] = paths
    return outcomes, sent
