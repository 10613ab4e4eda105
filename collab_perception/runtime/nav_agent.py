"""A CollaVN agent on ONNX Runtime (no torch): its roles and its private memory, one step at a time.

    agent = NavAgent('models/collavn_nav')             # roles.json + encode / observe / act .onnx
    agent.reset(goal_descriptors)                      # the goal node's panorama, (4, F)
    agent.observe(view_descriptors, cell)              # query, key, value; own read of the memory
    query = agent.request()                            # broadcast (None: the agent has stopped)
    answer = agent.answer(query_of_another)            # (score, value) when the score passes, else None
    action = agent.act(answers_received)               # fuse, GRU, greedy move; store the key and value

A drone's nodes run the same pieces apart: perception a `NavObserver` (encode, observe, own read, its
memory), the matcher an `EpisodeMemory` of the same keys and values and `match`, fusion `fuse`, the policy
node a `NavPolicy` (the recurrent state). `run_episode` runs a team offline on a navigation dataset's
episodes; learn/collavn.py trains the same arithmetic batched (test/test_collavn.py checks the two agree).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..world.nav import ACTIONS, STOP
from .memory import EpisodeMemory, fuse, match, memory_mean
from .onnx_method import onnx_session, read_roles_json, resolve_model_dir

NUM_ACTIONS = len(ACTIONS)


def load_nav_sessions(model_dir: str, roles: Sequence[str], providers: Sequence[str] = ('CPUExecutionProvider',),
                      threads: int = 1) -> tuple[dict, dict]:
    """(roles.json, {role: ONNX Runtime session}) of a `collab-perception nav export` directory."""
    info = read_roles_json(model_dir)
    path = resolve_model_dir(model_dir)
    return info, {r: onnx_session(os.path.join(path, f'{r}.onnx'), providers, threads) for r in roles}


def new_memory(info: dict) -> EpisodeMemory:
    """An agent's private memory as the model was trained: every step of an episode (plus the first)."""
    return EpisodeMemory(info['key_dim'], info['value_dim'], info['max_steps'] + 1)


@dataclass
class StepView:
    """What an agent's observation gives at one step: the policy's context and own read, and its query, key
    and value."""
    context: np.ndarray              # [C]
    query: np.ndarray                # [dq]
    key: np.ndarray                  # [dk]
    value: np.ndarray                # [dv]
    own_read: np.ndarray             # [dv]


class NavObserver:
    """The request side (`encode`, `observe`, Eq. 5 and 8-9) with the agent's private memory."""

    def __init__(self, info: dict, sessions: dict):
        self.info, self.sessions = info, sessions
        self.memory = new_memory(info)
        # a move spans one lattice step; a cell that moved by less than half of one has not moved
        self._stay = 0.5 * float(info['lattice_m']) / float(info['region_m'])
        # exports older than the bump input take the four others only
        self._bump_input = 'bumped' in {i.name for i in sessions['observe'].get_inputs()}
        self.reset(np.zeros((4, info['feature_dim']), np.float32))

    def encode(self, views: np.ndarray) -> np.ndarray:
        """A panorama's four (S, S, 3) uint8 views -> (4, F) descriptors."""
        x = np.ascontiguousarray(np.asarray(views).astype(np.float32).transpose(0, 3, 1, 2) / 255.0)
        return self.sessions['encode'].run(None, {'views': x})[0]

    def reset(self, goal: np.ndarray) -> None:
        """A new episode: the goal panorama's descriptors (4, F) and an empty memory."""
        self.goal = np.asarray(goal, np.float32).reshape(1, 4, -1)
        self.memory.clear()
        self.last_cell: Optional[np.ndarray] = None

    def observe(self, views: np.ndarray, cell: Sequence[float]) -> StepView:
        """This step's panorama descriptors (4, F) and normalized GPS cell -> the step's StepView (`store`
        it once the step is over). An agent navigating always moves, so a cell that stayed where the last
        step's was means an obstacle blocked the move (the model's `bumped` input)."""
        memory = self.memory if self.info['memory'] else None
        mean = memory_mean(memory, self.info['value_dim'])
        cell = np.asarray(cell, np.float32).reshape(1, 2)
        bumped = self.last_cell is not None and float(np.abs(cell - self.last_cell).max()) < self._stay
        self.last_cell = cell
        inputs = {'views': np.asarray(views, np.float32)[None], 'goal': self.goal, 'cells': cell,
                  'memory_mean': mean[None]}
        if self._bump_input:
            inputs['bumped'] = np.array([[float(bumped)]], np.float32)
        context, query, key, value = self.sessions['observe'].run(None, inputs)
        _, own_read = match(query[0], key[0], value[0], memory)
        return StepView(context[0], query[0], key[0], value[0], own_read)

    def store(self, step: StepView) -> None:
        """The step's key and value into the private memory (Eq. 11's store)."""
        self.memory.store(step.key, step.value)


class NavPolicy:
    """The `act` role with the agent's recurrent state and previous move."""

    def __init__(self, info: dict, sessions: dict):
        self.info, self.sessions = info, sessions
        self.reset()

    def reset(self) -> None:
        self.hidden = np.zeros((1, self.info['hidden']), np.float32)
        self.prev_action = STOP
        self.active = True

    def act(self, context: np.ndarray, own_read: np.ndarray, received: np.ndarray, got: bool) -> int:
        """One greedy move from the step's context, own read and what arrived (fused value, whether any);
        STOP ends the agent's episode (it acts no more)."""
        if not self.active:
            return STOP
        prev = np.zeros((1, NUM_ACTIONS), np.float32)
        prev[0, self.prev_action] = 1.0
        self.hidden, logits = self.sessions['act'].run(None, {
            'context': np.asarray(context, np.float32)[None], 'prev_action': prev,
            'received': np.asarray(received, np.float32)[None], 'got': np.array([[float(got)]], np.float32),
            'own_read': np.asarray(own_read, np.float32)[None], 'hidden': self.hidden})
        action = int(np.argmax(logits[0]))
        self.prev_action = action
        self.active = action != STOP
        return action


class NavAgent:
    """One agent: the ONNX roles of a `collab-perception nav export` directory and its episode state."""

    def __init__(self, model_dir: str, providers: Sequence[str] = ('CPUExecutionProvider',), threads: int = 1):
        self.info, sessions = load_nav_sessions(model_dir, read_roles_json(model_dir)['roles'], providers, threads)
        self.threshold = float(self.info['threshold'])
        self.observer = NavObserver(self.info, sessions)
        self.policy = NavPolicy(self.info, sessions)
        self._step: Optional[StepView] = None

    @property
    def active(self) -> bool:
        return self.policy.active

    def encode(self, views: np.ndarray) -> np.ndarray:
        return self.observer.encode(views)

    def reset(self, goal: np.ndarray) -> None:
        self.observer.reset(goal)
        self.policy.reset()
        self._step = None

    def observe(self, views: np.ndarray, cell: Sequence[float]) -> None:
        self._step = self.observer.observe(views, cell)

    def request(self) -> Optional[np.ndarray]:
        """The query to broadcast this step, or None once the agent has stopped (it only answers then)."""
        return self._step.query if self.active and self.info['communicates'] else None

    def answer(self, query: np.ndarray) -> Optional[tuple[float, np.ndarray]]:
        """(score, value) for another agent's query when the score reaches the threshold, else None."""
        s = self._step
        score, value = match(query, s.key, s.value, self.observer.memory if self.info['memory'] else None)
        return (score, value) if score >= self.threshold else None

    def act(self, received: Sequence[tuple[float, np.ndarray]]) -> int:
        """Fuse what arrived and step the policy (greedy); store the step's key and value."""
        fused, got = fuse(list(received), self.info['value_dim'])
        action = self.policy.act(self._step.context, self._step.own_read, fused, got)
        self.observer.store(self._step)
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
