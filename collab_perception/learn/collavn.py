"""CollaVN (memory-augmented communication for collaborative visual navigation, §4) on the world's navigation
mode: the view encoder, the agent, imitation of a shortest-path expert with DAgger corrections, and the
evaluation of the paper's rows (ours, w/o memory, w/o communication, imitation only, random walk).

Pipeline (`collab-perception nav train | evaluate`):
1. The observation encoder is the project's own (learn/backbone.Encoder), pretrained here on the training
   maps' panorama views to segment them (the world renders labels); frozen afterwards. A view's descriptor is
   its feature map pooled to 2x2 cells (4 x channels numbers). Every node's four views are encoded once per
   map and cached, so an episode step is a lookup (the paper: ResNet18, 1024-d).
2. The agent (`CollaVNAgent`): view and goal embeddings (the goal is the panorama taken at the goal node,
   four views like the agent's own), each view's similarity to the goal's view of the same direction, its GPS cell,
   the previous action; a query from what it sees, its goal and the average of its stored values (Eq. 5), a
   key from what it sees, a value from what it sees and where; its own read: the query against its own
   current and stored keys (Eq. 8-9); the memory-augmented exchange of runtime/memory.py (the same
   arithmetic, batched and differentiable); a GRU and a policy over the five moves. Stopped agents keep answering from memory.
3. Training: rollouts of the team (policy actions mixed with the expert's with probability beta, halved every
   DAgger round), every visited state labelled with the expert's move; the team is then re-run along the
   recorded paths and the policy fitted to the labels (cross-entropy) plus a small price on the scores
   (fewer sends). The expert knows no more than the variant could: it explores (keeps its heading, turns
   at obstacles) until the goal has been within `sight_m` of the agent, or, for the communicating
   variants, of any teammate so far, and then takes the shortest path (`run_team`). A shortest-path expert
   that always knows the goal cannot be imitated by an agent that does not, and would teach it nothing
   about asking the team. The selection is hard in the forward pass with the score's gradient (straight-through),
   so training sees what inference sends.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..runtime import wire
from ..runtime.metrics import NavOutcome, nav_metrics
from ..world.nav import ACTIONS, STOP, UNREACHABLE_STEPS, NavConfig, NavMap, bfs_steps
from .backbone import Decoder, Encoder

VARIANTS = ('collavn', 'no_memory', 'no_comm')      # trained models; 'imitation' is collavn without DAgger
POOL = 2                                            # a view's descriptor: its feature map pooled to POOL x POOL
NUM_ACTIONS = len(ACTIONS)
STOP_WITHIN_MOVES = 1       # the expert stops this many moves from its goal or closer
STOP_WEIGHT = 4.0           # the stop label's weight in the imitation loss: one per agent and episode, it is rare
MATCH_SCALE_INIT = 8.0      # a match logit starts as 8 (cos - 0.8): a clear yes or no from the first step
MATCH_COSINE_INIT = 0.8
SIGHTING_POS_WEIGHT = 4.0   # a memory entry near the requester's goal is rare (a few % of them): weighed up
GOAL_OFFSET_SCALE = 8.0     # a goal offset of one eighth of the region (8 m of 64) enters as 1
CONTEXT_EXTRA = 4 + 32 + 1  # the context beside the two panorama embeddings: view similarities, position, bumped


# ------------------------------------------------------------------------------------------- encoder
class ViewSegmenter(nn.Module):
    """The pretraining model: backbone.Encoder and a Decoder segmenting one panorama view."""

    def __init__(self, num_classes: int = 8, channels: int = 32):
        super().__init__()
        self.encoder = Encoder(channels=channels)
        self.decoder = Decoder(channels, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(image))


def pretrain_encoder(maps: Sequence[NavMap], steps: int, batch: int = 32, lr: float = 2e-3, seed: int = 0,
                     progress=None) -> tuple[Encoder, float]:
    """Fit the encoder (with a throw-away decoder) to segment the maps' panorama views; returns it frozen,
    with the last 50 steps' mean pixel accuracy."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rgb = np.concatenate([m.rgb.reshape(-1, *m.rgb.shape[2:]) for m in maps])
    labels = np.concatenate([m.labels.reshape(-1, *m.labels.shape[2:]) for m in maps])
    model = ViewSegmenter().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    accuracy = []
    for step in range(steps):
        idx = rng.integers(0, len(rgb), batch)
        x = torch.from_numpy(rgb[idx]).permute(0, 3, 1, 2).float().div(255).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(labels[idx]).long()
        flip = rng.random() < 0.5            # a mirrored view is another valid view
        if flip:
            x, y = x.flip(-1), y.flip(-1)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        accuracy.append(float((logits.argmax(1) == y).float().mean()))
        if progress is not None:
            progress(step, float(loss.detach()))
    encoder = model.encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder, float(np.mean(accuracy[-50:]))


@torch.no_grad()
def view_feature_maps(encoder: Encoder, rgb: np.ndarray, batch: int = 256) -> torch.Tensor:
    """(..., S, S, 3) uint8 views -> (views, channels, h, w): the encoder's feature maps, in batches."""
    flat = rgb.reshape(-1, *rgb.shape[-3:])
    return torch.cat([encoder(torch.from_numpy(flat[start:start + batch]).permute(0, 3, 1, 2).float().div(255))
                      for start in range(0, len(flat), batch)])


def encode_views(encoder: Encoder, rgb: np.ndarray, batch: int = 256) -> np.ndarray:
    """(..., S, S, 3) uint8 views -> (..., POOL * POOL * channels) float32 descriptors."""
    pooled = F.adaptive_avg_pool2d(view_feature_maps(encoder, rgb, batch), POOL).flatten(1).numpy()
    return pooled.reshape(*rgb.shape[:-3], -1).astype(np.float32)


# --------------------------------------------------------------------------------------------- agent
@dataclass(frozen=True)
class AgentConfig:
    variant: str = 'collavn'
    feature_dim: int = 128           # a view's descriptor (POOL * POOL * encoder channels)
    embed: int = 128
    hidden: int = 128
    query_dim: int = 32              # q: broadcast every step
    key_dim: int = 32                # k: never leaves the agent
    value_dim: int = 64              # v: sent by a supporter whose score passes the threshold
    threshold: float = 0.5           # select: send when score >= threshold
    # the policy also reads where its goal lies from its cell, decoded (`goal_cell`) from what arrived and
    # from its own read: walking to a goal it has been told of is then a function of two inputs
    goal_offsets: bool = False

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f'variant {self.variant!r} is not one of: {", ".join(VARIANTS)}')

    @property
    def communicates(self) -> bool:
        return self.variant != 'no_comm'

    @property
    def context_dim(self) -> int:
        """Width of the context `observe` hands to `act` (the raw cell rides at its end with goal_offsets)."""
        return 2 * self.embed + CONTEXT_EXTRA + 2 * self.goal_offsets

    @property
    def memory(self) -> bool:
        return self.variant != 'no_memory'


class CollaVNAgent(nn.Module):
    """One agent's networks (shared by the team: decentralized execution, each agent its own state)."""

    def __init__(self, cfg: AgentConfig):
        super().__init__()
        self.cfg = cfg
        E, H = cfg.embed, cfg.hidden
        self.view = nn.Sequential(nn.Linear(cfg.feature_dim, E), nn.ReLU(), nn.Linear(E, E))
        self.panorama = nn.Sequential(nn.Linear(4 * E, E), nn.ReLU())
        self.position = nn.Sequential(nn.Linear(2, 32), nn.ReLU())
        # q and k are unit directions in one learned space plus a constant last component, so that q . k is
        # a scaled cosine plus a learned bias: the goal's direction comes through the key's own projection
        # (a panorama like the goal matches from the first step), the rest of Eq. 5's query is learned on top
        self.key = nn.Linear(E, cfg.key_dim - 1)
        self.query = nn.Linear(E + E + cfg.value_dim, cfg.query_dim - 1)
        nn.init.zeros_(self.query.weight)
        nn.init.zeros_(self.query.bias)
        self.match_scale = nn.Parameter(torch.tensor(math.log(MATCH_SCALE_INIT * math.sqrt(cfg.key_dim))))
        self.match_bias = nn.Parameter(torch.tensor(-MATCH_COSINE_INIT * MATCH_SCALE_INIT * math.sqrt(cfg.key_dim)))
        self.value = nn.Sequential(nn.Linear(E + 32, cfg.value_dim), nn.Tanh())
        inputs = cfg.context_dim + NUM_ACTIONS + cfg.value_dim + 1 + cfg.value_dim + 4 * cfg.goal_offsets
        self.gru = nn.GRUCell(inputs, H)
        self.policy = nn.Sequential(nn.Linear(H, H), nn.ReLU(), nn.Linear(H, NUM_ACTIONS))
        # training only (no role exports it): where a matched value says the requester's goal is
        self.goal_cell = nn.Linear(cfg.value_dim, 2)
        # training only: what the recurrent state believes of its own goal (whether the expert would know
        # where it is, and its offset from the agent's cell); the policy then acts on a state that keeps it
        self.goal_belief = nn.Linear(H, 3)
        if cfg.communicates and cfg.query_dim != cfg.key_dim:
            raise ValueError(f'query_dim ({cfg.query_dim}) must equal key_dim ({cfg.key_dim}): scores are q . k')

    def observe(self, views: torch.Tensor, goal: torch.Tensor, cells: torch.Tensor, memory_mean: torch.Tensor,
                bumped: torch.Tensor):
        """An agent's request side (the `observe` role, Eq. 5): panorama descriptors (..., 4, F), the goal's
        panorama (..., 4, F), GPS cell (..., 2), the average of the values in its own memory (..., dv;
        zeros while it is empty: the paper's pooled memory) and whether the agent's last move left it where it
        was (..., 1; an obstacle stopped it: what a drone's odometry tells) -> (context for `act`, query, key,
        value). Both
        panoramas are in world directions (compass), so view k of one is compared with view k of the other.
        Nothing here depends on the policy's recurrent state, so a drone's perception computes the query
        before its policy has acted on the previous step's answers."""
        view_emb, goal_views = self.view(views), self.view(goal)
        similarity = (F.normalize(view_emb, dim=-1) * F.normalize(goal_views, dim=-1)).sum(-1)
        obs, goal_emb = self.panorama(view_emb.flatten(-2)), self.panorama(goal_views.flatten(-2))
        pos = self.position(cells)
        root = self.match_scale.exp().sqrt()
        q = F.normalize(self.key(goal_emb) + self.query(torch.cat([obs, goal_emb, memory_mean], -1)), dim=-1)
        k = F.normalize(self.key(obs), dim=-1)
        query = torch.cat([q * root, self.match_bias.expand(*q.shape[:-1], 1)], -1)
        key = torch.cat([k * root, torch.ones_like(k[..., :1])], -1)
        context = torch.cat([obs, goal_emb, similarity, pos, bumped] + [cells] * self.cfg.goal_offsets, -1)
        return context, query, key, self.value(torch.cat([obs, pos], -1))

    def act(self, context: torch.Tensor, prev_action: torch.Tensor, received: torch.Tensor, got: torch.Tensor,
            own_read: torch.Tensor, hidden: torch.Tensor):
        """The `act` role: the step's context, the previous action (one-hot), what arrived (fused value and
        whether anything did), the own-memory read and the state -> (new state, action logits)."""
        parts = [context, prev_action, received, got, own_read]
        if self.cfg.goal_offsets:
            cells = context[..., -2:]
            told = (self.goal_cell(received) - cells) * got * GOAL_OFFSET_SCALE
            own = (self.goal_cell(own_read) - cells) * GOAL_OFFSET_SCALE
            parts += [told, own]
        x = torch.cat(parts, -1)
        new = self.gru(x.reshape(-1, x.shape[-1]), hidden.reshape(-1, hidden.shape[-1])).view(hidden.shape)
        return new, self.policy(new)


@dataclass
class TeamState:
    """The team's recurrent state and private memories during a batch of episodes."""
    hidden: torch.Tensor             # (B, N, H)
    prev_action: torch.Tensor        # (B, N) long
    keys: Optional[torch.Tensor] = None      # (B, N, T, dk): every past step's key, oldest first
    values: Optional[torch.Tensor] = None    # (B, N, T, dv)

    def store(self, key: torch.Tensor, value: torch.Tensor) -> None:
        key, value = key[:, :, None], value[:, :, None]
        self.keys = key if self.keys is None else torch.cat([self.keys, key], 2)
        self.values = value if self.values is None else torch.cat([self.values, value], 2)


@dataclass
class StepOutput:
    logits: torch.Tensor             # (B, N, 5)
    sent: torch.Tensor               # (B, Ni, Nj) bool: supporter j sent to requester i
    requested: torch.Tensor          # (B, N) bool: agent i broadcast a query
    scores: torch.Tensor             # (B, Ni, Nj), zero where j could not send to i
    mixed: Optional[torch.Tensor] = None     # (B, Ni, Nj, dv): what j would send to i (its attention read)
    entry_logits: Optional[torch.Tensor] = None  # (B, Ni, Nj, M): i's query against j's entries: current, then stored
    hidden: Optional[torch.Tensor] = None    # (B, N, H): the recurrent state the step's logits come from
    own_read: Optional[torch.Tensor] = None  # (B, N, dv): the agent's read of its own entries


def attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor):
    """runtime.memory.match, batched: query (..., dk), keys (..., M, dk), values (..., M, dv), valid (..., M)
    -> score (...), value (...)."""
    logits = torch.einsum('...d,...md->...m', query, keys) / math.sqrt(keys.shape[-1])
    logits = logits.masked_fill(~valid, float('-inf'))
    weights = torch.softmax(logits, dim=-1)
    weights = torch.nan_to_num(weights, nan=0.0)            # rows without any valid entry
    best = logits.max(dim=-1).values
    score = torch.where(torch.isfinite(best), torch.sigmoid(best), torch.zeros_like(best))
    return score, torch.einsum('...m,...mv->...v', weights, values)


def team_step(model: CollaVNAgent, state: TeamState, views: torch.Tensor, goal: torch.Tensor, cells: torch.Tensor,
              bumped: torch.Tensor, active: torch.Tensor, present: torch.Tensor,
              reach: Optional[torch.Tensor] = None) -> StepOutput:
    """One step of every agent. views (B, N, 4, F): the current panoramas; goal (B, N, 4, F); cells (B, N, 2)
    normalized GPS; bumped (B, N): the agent's last move was blocked; active (B, N): agents
    still navigating (they request); present (B, N): agents in the
    team (stopped ones included: they still answer); reach (B, Ni, Nj): whether j's radio reaches i this
    step (None: everyone reaches everyone, the paper's setting)."""
    cfg = model.cfg
    B, N = active.shape
    has_memory = cfg.memory and state.keys is not None
    memory_mean = state.values.mean(2) if has_memory else views.new_zeros(B, N, cfg.value_dim)
    context, query, key, value = model.observe(views, goal, cells, memory_mean, bumped.float()[..., None])

    # own read (Eq. 8-9): the query against the agent's current key and every key it stored
    own_k, own_v = key[:, :, None], value[:, :, None]                     # (B, N, 1, d)
    if has_memory:
        own_k, own_v = torch.cat([own_k, state.keys], 2), torch.cat([own_v, state.values], 2)
    _, own_read = attend(query, own_k, own_v, own_k.new_ones(own_k.shape[:3], dtype=torch.bool))

    zeros_v = value.new_zeros(B, N, cfg.value_dim)
    sent = torch.zeros(B, N, N, dtype=torch.bool, device=views.device)
    scores = torch.zeros(B, N, N, device=views.device)
    received, got, mixed, pair_logits = zeros_v, value.new_zeros(B, N, 1), None, None
    if cfg.communicates:
        # supporter j's entries are its own: current (key, value) and, with memory, every stored pair
        pair_logits = torch.einsum('bid,bjmd->bijm', query, own_k) / math.sqrt(cfg.key_dim)
        score = torch.sigmoid(pair_logits.max(-1).values)                 # (B, Ni, Nj)
        mixed = torch.einsum('bijm,bjmv->bijv', torch.softmax(pair_logits, -1), own_v)
        eye = torch.eye(N, dtype=torch.bool, device=views.device)[None]
        eligible = active[:, :, None] & present[:, None, :] & ~eye
        if reach is not None:
            eligible = eligible & reach
        hard = (score >= cfg.threshold) & eligible
        # Straight-through selection: the forward pass fuses only the values that pass the threshold, as
        # inference does; the backward pass sees every eligible supporter's score-weighted value, so a score
        # below the threshold still learns whether its value would have helped (otherwise a gate that starts
        # closed never opens). The normalizer is the soft one, which is never near zero.
        gate = hard.float() + score - score.detach()
        soft = score * eligible.float()
        norm_hard = (soft * hard.float()).sum(-1, keepdim=True)
        norm = torch.where(norm_hard > 0, norm_hard, soft.sum(-1, keepdim=True)).detach() + 1e-6
        received = torch.einsum('bij,bijv->biv', gate * soft, mixed) / norm
        best = (score * eligible.float()).max(-1, keepdim=True).values
        any_hard = hard.any(-1, keepdim=True).float()
        got = any_hard + best - best.detach()
        sent, scores = hard, torch.where(eligible, score, torch.zeros_like(score))

    prev = F.one_hot(state.prev_action, NUM_ACTIONS).float()
    hidden, logits = model.act(context, prev, received, got, own_read, state.hidden)
    state.hidden = torch.where(active[..., None], hidden, state.hidden)  # a stopped agent's state stays
    state.store(key, value)
    return StepOutput(logits, sent, active.clone(), scores, mixed, pair_logits, hidden, own_read)


# ------------------------------------------------------------------------------------------ episodes
class EpisodeBatch:
    """A batch of episodes of one team size on cached maps: starts, goals, expert distance fields."""

    def __init__(self, episodes: list, maps: dict, features: dict, config: NavConfig):
        self.episodes, self.config = episodes, config
        N = episodes[0].team
        if any(e.team != N for e in episodes):
            raise ValueError('an EpisodeBatch holds episodes of one team size')
        self.team = N
        self.maps = [maps[(e.map_split, e.map_id)] for e in episodes]
        self._patrols: dict = {}
        self.features = [features[(e.map_split, e.map_id)] for e in episodes]
        cache: dict = {}
        self.distance = []                                  # per episode, per agent: moves to its goal, per node
        for e, m in zip(episodes, self.maps):
            per_agent = []
            for g in e.goals:
                k = (e.map_split, e.map_id, g)
                if k not in cache:
                    cache[k] = bfs_steps(m.neighbours, g)
                per_agent.append(cache[k])
            self.distance.append(per_agent)

    def __len__(self) -> int:
        return len(self.episodes)

    def near_goals(self, nodes: np.ndarray, sight_m: float) -> np.ndarray:
        """(B, Nj, Ni): whether agent j stands within `sight_m` (geodesic) of agent i's goal at `nodes`."""
        steps = sight_m / self.config.lattice_m
        out = np.zeros((len(self.maps), self.team, self.team), bool)
        for b in range(len(self.maps)):
            for i in range(self.team):
                out[b, :, i] = self.distance[b][i][nodes[b]] <= steps
        return out

    def reach(self, nodes: np.ndarray, range_m: float) -> np.ndarray:
        """(B, Ni, Nj): whether agents i and j are within `range_m` of each other (straight line; 0: no
        limit), i.e. whether their messages get through."""
        if not range_m:
            return np.ones((len(self.maps), self.team, self.team), bool)
        xy = np.stack([m.cells[nodes[b]] for b, m in enumerate(self.maps)]).astype(np.float64) * self.config.lattice_m
        return np.linalg.norm(xy[:, :, None] - xy[:, None, :], axis=-1) <= range_m

    def expert_actions(self, nodes: np.ndarray, prev: Optional[np.ndarray] = None,
                       known: Optional[np.ndarray] = None) -> np.ndarray:
        """(B, N) nodes -> the expert's moves. Where the goal is `known` (default: everywhere): the shortest
        path (STOP one move from the goal or on it, well inside the success radius; ties: the first move). Elsewhere it explores: it keeps its previous move while
        that is open and otherwise turns counter-clockwise to the first open one (the first move of an
        episode: agent i starts towards direction i mod 4, so a team fans out)."""
        out = np.full(nodes.shape, STOP, np.int64)
        for b, m in enumerate(self.maps):
            for i in range(self.team):
                n = nodes[b, i]
                nb = m.neighbours[n]
                if known is not None and not known[b, i]:
                    heading = i % 4 if prev is None or prev[b, i] == STOP else int(prev[b, i])
                    for turn in range(4):
                        if nb[(heading + turn) % 4] >= 0:
                            out[b, i] = (heading + turn) % 4
                            break
                    continue
                d = self.distance[b][i]
                if d[n] <= STOP_WITHIN_MOVES:
                    continue
                cand = np.where(nb >= 0, d[np.maximum(nb, 0)], UNREACHABLE_STEPS)
                out[b, i] = int(np.argmin(cand))
        return out

    def observe(self, nodes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(views (B, N, 4, F), cells (B, N, 2) in 0..1) of the agents at `nodes`."""
        views = np.stack([f['views'][nodes[b]] for b, f in enumerate(self.features)])
        return torch.from_numpy(views), self.cells(nodes)

    def cells(self, nodes: np.ndarray) -> torch.Tensor:
        """(B, ...) lattice nodes -> (B, ..., 2) cells normalized to 0..1 (the GPS input)."""
        side = self.config.region_m / self.config.lattice_m
        cells = np.stack([(m.cells[nodes[b]] + 0.5) / side for b, m in enumerate(self.maps)])
        return torch.from_numpy(cells.astype(np.float32))

    def goals(self) -> torch.Tensor:
        """(B, N, 4, F): each agent's goal, the panorama taken at its goal node."""
        return torch.from_numpy(np.stack([np.stack([f['views'][g] for g in e.goals])
                                          for e, f in zip(self.episodes, self.features)]))

    def move(self, nodes: np.ndarray, actions: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(next nodes, collided) for the active agents' actions."""
        nxt, hit = nodes.copy(), np.zeros(nodes.shape, bool)
        for b, m in enumerate(self.maps):
            for i in range(self.team):
                if active[b, i] and actions[b, i] != STOP:
                    nxt[b, i], hit[b, i] = m.step(int(nodes[b, i]), int(actions[b, i]))
        return nxt, hit

    def starts(self) -> np.ndarray:
        return np.array([e.starts for e in self.episodes], np.int64)

    def patrol(self, steps: int) -> np.ndarray:
        """(B, N, steps + 1): the nodes of a patrol of `steps` moves from the starts before any goal is given,
        by the expert's exploration rule (deterministic, so a replay walks it again)."""
        if steps not in self._patrols:
            nodes, prev, path = self.starts(), None, []
            unknown = np.zeros(nodes.shape, bool)
            path.append(nodes)
            for _ in range(steps):
                prev = self.expert_actions(nodes, prev, unknown)
                nodes, _ = self.move(nodes, prev, np.ones(nodes.shape, bool))
                path.append(nodes)
            self._patrols[steps] = np.stack(path, -1)
        return self._patrols[steps]


@dataclass
class Rollout:
    """A recorded batch: nodes visited (B, N, T+1), who was active at each step (B, N, T), the expert's
    labels (B, N, T) and the actions taken (B, N, T)."""
    nodes: np.ndarray
    active: np.ndarray
    expert: np.ndarray
    actions: np.ndarray
    sent: np.ndarray                 # (B, T, Ni, Nj) bool
    requested: np.ndarray            # (B, T, N) bool
    collisions: np.ndarray           # (B, N)
    comm_range_m: float = 0.0        # the radio range it was recorded with (0: unlimited); a replay keeps it
    patrol_steps: int = 0            # moves patrolled before the goals were given (nodes start after them)


def run_team(model: Optional[CollaVNAgent], batch: EpisodeBatch, beta: float = 0.0, rng=None,
             policy: str = 'greedy', teacher: Optional[Rollout] = None, sight_m: Optional[float] = None,
             team_sight: bool = True, comm_range_m: float = 0.0, sight_memory: bool = True, patrol_steps: int = 0):
    """Roll a team out for T_max steps. `beta`: probability of executing the expert's move instead of the
    policy's (DAgger); policy 'greedy' (argmax), 'sample', 'random' (random walk, no model) or 'expert'.
    With `teacher` (a Rollout), the team follows its recorded nodes instead and the step logits are returned
    for training.

    The expert knows an agent's goal once it has been within `sight_m` of the agent (team_sight=False: what
    the agent could know alone) or of any agent of the team so far (team_sight=True: what the team's
    memories could tell it); before, it explores (EpisodeBatch.expert_actions). `sight_m` None: it always
    knows (the shortest-path expert).

    `comm_range_m` (0: unlimited, the paper's setting): messages only get through between agents within that
    distance of each other. A team-sight expert then learns a teammate's sighting only while that teammate is
    in reach: any sighting it made so far (`sight_memory`, what a supporter with memory can tell) or only one
    it is making now (what a supporter without memory can tell). Without a range limit the two coincide.

    `patrol_steps`: before the goals are given, the team patrols that many moves (EpisodeBatch.patrol; no
    request, no policy, nobody sends) and each agent stores its patrol's keys and values in its memory; then
    the episode's T_max steps start from where the patrol ended. An expert with `sight_memory` knows the goals
    its own patrol or (team sight) a teammate's in reach passed within `sight_m`; without, only what is in
    sight at the reveal and after."""
    T, B, N = batch.config.max_steps, len(batch), batch.team
    rng = rng or np.random.default_rng(0)
    if teacher is not None:
        comm_range_m, patrol_steps = teacher.comm_range_m, teacher.patrol_steps
    patrolled = batch.patrol(patrol_steps) if patrol_steps else None
    if teacher is not None:
        nodes = teacher.nodes[:, :, 0].copy()
    else:
        nodes = batch.starts() if patrolled is None else patrolled[:, :, -1].copy()
    active = np.ones((B, N), bool)
    present = torch.ones(B, N, dtype=torch.bool)
    rec_nodes, rec_active, rec_expert, rec_actions = [nodes.copy()], [], [], []
    rec_sent, rec_req = [], []
    collisions = np.zeros((B, N), np.int64)
    bumped = np.zeros((B, N), bool)                 # the last move was blocked (an episode starts unbumped)
    prev = np.full((B, N), STOP, np.int64)

    def told(seen: np.ndarray) -> np.ndarray:
        """(B, Ni): the goals an expert learns at `nodes` from the sightings `seen` (B, Nj, Ni): its own, or
        (team sight) those of any teammate in reach."""
        if not team_sight:
            return seen.diagonal(axis1=1, axis2=2).copy()
        return (batch.reach(nodes, comm_range_m) & seen.transpose(0, 2, 1)).any(-1)

    seen = known = None
    if sight_m is not None:
        seen = batch.near_goals(nodes, sight_m)
        if patrolled is not None and sight_memory:
            for t in range(patrol_steps):
                seen |= batch.near_goals(patrolled[:, :, t], sight_m)
        known = told(seen)
    state = None
    goal = batch.goals() if model is not None else None
    if model is not None and patrolled is not None:
        state = TeamState(torch.zeros(B, N, model.cfg.hidden), torch.full((B, N), STOP, dtype=torch.long))
        if model.cfg.memory:        # the patrol's entries; no goal yet, so no query is made of them
            for t in range(patrol_steps):
                views, cells = batch.observe(patrolled[:, :, t])
                _, _, key, value = model.observe(views, torch.zeros_like(goal), cells,
                                                 views.new_zeros(B, N, model.cfg.value_dim), views.new_zeros(B, N, 1))
                state.store(key, value)
    logits_seq, scores_seq, mixed_seq, entry_seq, hidden_seq, read_seq = [], [], [], [], [], []
    for t in range(T if teacher is None else teacher.active.shape[2]):
        if teacher is not None:
            active = teacher.active[:, :, t]
        if not active.any():
            break
        expert = batch.expert_actions(nodes, prev, known) if teacher is None else None
        if model is not None:
            if state is None:
                state = TeamState(torch.zeros(B, N, model.cfg.hidden), torch.full((B, N), STOP, dtype=torch.long))
            views, cells = batch.observe(nodes)
            reach = torch.from_numpy(batch.reach(nodes, comm_range_m)) if comm_range_m else None
            if teacher is not None and t:
                bumped = (teacher.nodes[:, :, t] == teacher.nodes[:, :, t - 1]) & active
            out = team_step(model, state, views, goal, cells, torch.from_numpy(bumped), torch.from_numpy(active),
                            present, reach)
            logits_seq.append(out.logits)
            scores_seq.append(out.scores)
            mixed_seq.append(out.mixed)
            entry_seq.append(out.entry_logits)
            hidden_seq.append(out.hidden)
            read_seq.append(out.own_read)
            rec_sent.append(out.sent.detach().numpy())
            rec_req.append(out.requested.numpy())
            if teacher is None:
                if policy == 'sample':
                    probs = torch.softmax(out.logits.detach(), -1).reshape(-1, NUM_ACTIONS).numpy()
                    own = np.array([rng.choice(NUM_ACTIONS, p=p / p.sum()) for p in probs]).reshape(B, N)
                else:
                    own = out.logits.detach().argmax(-1).numpy()
        else:
            own = expert if policy == 'expert' else rng.integers(0, NUM_ACTIONS, (B, N))
            rec_sent.append(np.zeros((B, N, N), bool))
            rec_req.append(np.zeros((B, N), bool))
        if teacher is not None:
            actions = teacher.actions[:, :, t]
            if state is not None:
                state.prev_action = torch.from_numpy(np.where(active, actions, state.prev_action.numpy()))
            nodes = teacher.nodes[:, :, t + 1].copy()
            rec_expert.append(teacher.expert[:, :, t])
            rec_active.append(active.copy())
            continue
        use_expert = rng.random((B, N)) < beta
        actions = np.where(use_expert, expert, own)
        actions = np.where(active, actions, STOP)
        nodes, hit = batch.move(nodes, actions, active)
        collisions += hit
        bumped = hit
        prev = np.where(active, actions, prev)
        if seen is not None:
            near = batch.near_goals(nodes, sight_m)
            seen = seen | near if sight_memory else near
            known |= told(seen)
        if state is not None:
            state.prev_action = torch.from_numpy(np.where(active, actions, state.prev_action.numpy()))
        rec_active.append(active.copy())
        rec_expert.append(expert)
        rec_actions.append(actions)
        rec_nodes.append(nodes.copy())
        active = active & (actions != STOP)
    if teacher is not None:
        return (logits_seq, scores_seq, mixed_seq, entry_seq, np.stack(rec_expert, -1), np.stack(rec_active, -1),
                hidden_seq, read_seq)
    steps = len(rec_active)
    return Rollout(nodes=np.stack(rec_nodes, -1), active=np.stack(rec_active, -1), expert=np.stack(rec_expert, -1),
                   actions=np.stack(rec_actions, -1), sent=np.stack(rec_sent, 1)[:, :steps],
                   requested=np.stack(rec_req, 1)[:, :steps], collisions=collisions, comm_range_m=comm_range_m,
                   patrol_steps=patrol_steps)


def sighting_labels(batch: EpisodeBatch, rollout: Rollout, sight_m: float, memory: bool,
                    with_patrol: bool = False) -> np.ndarray:
    """(B, T, Ni, Nj) bool: supporter j can tell requester i where its goal is at step t, i.e. j stands within
    `sight_m` of i's goal at t or (with memory) did at some earlier step, its patrol's included: exactly what
    the team-sight expert learns through j. `with_patrol`: (B, W + T, Ni, Nj), the patrol's W steps first."""
    steps = sight_m / batch.config.lattice_m
    W, T = rollout.patrol_steps, rollout.active.shape[2]
    nodes = rollout.nodes[:, :, :T]
    if W:
        nodes = np.concatenate([batch.patrol(W)[:, :, :W], nodes], 2)
    out = np.zeros((len(batch), W + T, batch.team, batch.team), bool)
    for b in range(len(batch)):
        for i in range(batch.team):
            near = batch.distance[b][i][nodes[b]] <= steps                 # (Nj, W + T)
            if memory:
                near = np.logical_or.accumulate(near, axis=1)
            out[b, :, i, :] = near.T
    return out if with_patrol else out[:, W:]


def goal_known_labels(batch: EpisodeBatch, rollout: Rollout, sight_m: float, team_sight: bool,
                      sight_memory: bool) -> np.ndarray:
    """(B, T, N) bool: whether the expert of `run_team` knows agent i's goal at step t (its own sighting or,
    with `team_sight`, any teammate's; `sight_memory`: the patrol's sightings count too), the radio range
    left out (everyone in reach)."""
    near = sighting_labels(batch, rollout, sight_m, memory=False, with_patrol=True)    # (B, W + T, Ni, Nj)
    if not team_sight:
        near = near & np.eye(batch.team, dtype=bool)
    W = rollout.patrol_steps
    if not sight_memory:
        near = near[:, W:]
    return np.logical_or.accumulate(near.any(-1), axis=1)[:, -rollout.active.shape[2]:]


def goal_cells(batch: EpisodeBatch) -> torch.Tensor:
    """(B, N, 2): each agent's goal cell, normalized like the GPS input (EpisodeBatch.cells)."""
    return batch.cells(np.array([e.goals for e in batch.episodes], np.int64))


def imitation_loss(model: CollaVNAgent, batch: EpisodeBatch, rollout: Rollout, score_price: float = 0.01,
                   sighting_weight: float = 0.0, sight_m: float = 8.0, read_weight: float = 0.0,
                   belief_weight: float = 0.0):
    """(loss, cross-entropy, label accuracy) of the policy against the expert's labels along a recorded rollout.
    For the communicating variants the loss adds `score_price` times the mean score of the pairs that could
    send and, with `sighting_weight`, two auxiliary terms that teach the exchange what the team-sight expert
    knows: every entry a supporter matches (its current key and each stored one) against whether the
    supporter stood within `sight_m` of the requester's goal at that entry's step (binary cross-entropy on
    the match logits; a pair's score is the largest of them, so it says whether the supporter has seen the
    goal), and the goal's cell decoded from what a supporter that has seen it would send (mean squared
    error). With `read_weight`, a third term concentrates the supporter's attention read on the entries near
    the requester's goal (minus the log of the softmax mass on them, for pairs with at least one): the value a
    supporter sends is the attention mix of Eq. 7, and a mix that puts a third of its mass on entries far from
    the goal no longer says where the goal is.

    With goal offsets (AgentConfig.goal_offsets) and `sighting_weight`, the agent's own memory read is fitted
    to its goal's cell wherever it has stood within `sight_m` of that goal (now or, with memory, earlier), as
    a supporter's answer is: the policy reads the decoded cell.

    With `belief_weight` (every variant), the recurrent state is taught what the expert it imitates knows:
    whether the expert knows the agent's goal at that step (binary cross-entropy) and, where it does, the
    goal's offset from the agent's cell (mean squared error). The expert acts on that knowledge from the step
    it gets it to the episode's end; a state that is not asked to keep it forgets it."""
    logits_seq, scores_seq, mixed_seq, entry_seq, expert, active, hidden_seq, read_seq = run_team(
        model, batch, teacher=rollout)
    logits = torch.stack(logits_seq, 2)                                  # (B, N, T, 5)
    mask = torch.from_numpy(active)
    labels = torch.from_numpy(expert)
    weight = torch.ones(NUM_ACTIONS)
    weight[STOP] = STOP_WEIGHT
    ce = F.cross_entropy(logits[mask], labels[mask], weight=weight)
    accuracy = float((logits[mask].argmax(-1) == labels[mask]).float().mean())
    loss = ce
    # (B, T, Ni, Nj): who could tell whom where its goal is; the supporters' answers and, with goal offsets,
    # the agent's own read (the diagonal) are fitted to the goal's cell there
    seen = (sighting_labels(batch, rollout, sight_m, model.cfg.memory)
            if sighting_weight and (model.cfg.communicates or model.cfg.goal_offsets) else None)
    if model.cfg.communicates:
        scores = torch.stack(scores_seq, 1)                              # (B, T, Ni, Nj)
        eligible = scores > 0                                            # zero: j could not send to i
        if score_price:     # a price per value sent
            loss = loss + score_price * scores.sum() / max(int(eligible.sum()), 1)
        if sighting_weight and eligible.any():
            # (B, W + T, Ni, Nj): entry 0 is step t (W + t with a patrol), stored entry m is step m
            near = torch.from_numpy(sighting_labels(batch, rollout, sight_m, memory=False, with_patrol=True))
            W = rollout.patrol_steps
            entry_loss, entries = scores.new_zeros(()), 0
            read_loss, reads = scores.new_zeros(()), 0
            for t, logits_t in enumerate(entry_seq):
                ok = eligible[:, t]
                if not ok.any():
                    continue
                steps = [W + t] + list(range(logits_t.shape[-1] - 1))     # entry m >= 1: step m - 1
                labels_t = near[:, steps].permute(0, 2, 3, 1)          # (B, Ni, Nj, M)
                entry_loss = entry_loss + F.binary_cross_entropy_with_logits(
                    logits_t[ok], labels_t[ok].float(), pos_weight=torch.tensor(SIGHTING_POS_WEIGHT), reduction='sum')
                entries += int(labels_t[ok].numel())
                if read_weight:
                    pair_logits, pair_near = logits_t[ok], labels_t[ok]
                    has_near = pair_near.any(-1)
                    if has_near.any():
                        on_near = pair_logits[has_near].masked_fill(~pair_near[has_near], float('-inf'))
                        mass = torch.logsumexp(on_near, -1) - torch.logsumexp(pair_logits[has_near], -1)
                        read_loss = read_loss - mass.sum()
                        reads += int(has_near.sum())
            loss = loss + sighting_weight * entry_loss / max(entries, 1) + read_weight * read_loss / max(reads, 1)
            told = eligible & torch.from_numpy(seen)
            if told.any():
                mixed = torch.stack(mixed_seq, 1)                        # (B, T, Ni, Nj, dv)
                target = goal_cells(batch)[:, None, :, None].expand(*scores.shape, 2)
                loss = loss + sighting_weight * F.mse_loss(model.goal_cell(mixed[told]), target[told]) * 10
    if model.cfg.goal_offsets and sighting_weight:
        # the own read decodes to the goal's cell once the agent has seen its goal, as a supporter's answer does
        own_seen = np.diagonal(seen, axis1=2, axis2=3)
        T = len(read_seq)
        where = mask[:, :, :T] & torch.from_numpy(np.ascontiguousarray(own_seen)).transpose(1, 2)[:, :, :T]
        if where.any():
            reads = torch.stack(read_seq, 2)                                   # (B, N, T, dv)
            target = goal_cells(batch)[:, :, None].expand(*reads.shape[:3], 2)
            loss = loss + sighting_weight * F.mse_loss(model.goal_cell(reads[where]), target[where]) * 10
    if belief_weight:
        belief = model.goal_belief(torch.stack(hidden_seq, 2))                   # (B, N, T, 3)
        T = belief.shape[2]
        known = torch.from_numpy(goal_known_labels(batch, rollout, sight_m, model.cfg.communicates,
                                                   model.cfg.memory)).transpose(1, 2)[:, :, :T]   # (B, N, T)
        loss = loss + belief_weight * F.binary_cross_entropy_with_logits(belief[..., 0][mask], known[mask].float())
        where = mask & known
        if where.any():
            offset = goal_cells(batch)[:, :, None] - batch.cells(rollout.nodes[:, :, :T])
            loss = loss + belief_weight * F.mse_loss(belief[..., 1:][where], offset[where]) * 10
    return loss, float(ce.detach()), accuracy


# ---------------------------------------------------------------------------------------- evaluation
def episode_outcomes(batch: EpisodeBatch, rollout: Rollout) -> list[NavOutcome]:
    cfg = batch.config
    out = []
    for b, e in enumerate(batch.episodes):
        for i in range(batch.team):
            path = rollout.nodes[b, i]
            # after a patrol the episode starts where it ended: l is measured from there
            shortest = batch.distance[b][i][path[0]] * cfg.lattice_m if rollout.patrol_steps else e.shortest_m[i]
            moved = int((path[1:] != path[:-1]).sum())
            steps = int(rollout.active[b, i].sum())
            final = batch.distance[b][i][path[-1]] * cfg.lattice_m
            out.append(NavOutcome(final_m=float(final), shortest_m=float(shortest), path_m=moved * cfg.lattice_m,
                                  steps=steps, max_steps=cfg.max_steps, success_m=cfg.success_m))
    return out


def comm_bytes(rollout: Rollout, agent: Optional[AgentConfig]) -> dict:
    """Bytes on the wire as the swarm serializes them: every active agent's query (a Request with a
    [query_dim] float32 tensor) and every sent (score, value) (a MemoryValue with a [value_dim] float32)."""
    if agent is None or not agent.communicates:
        return {'bytes_per_agent_step': 0.0, 'silent_step_share': 1.0, 'values_per_step': 0.0}
    q = wire.request_size([agent.query_dim], 'float32')
    v = wire.memory_value_size([agent.value_dim], 'float32')
    agent_steps = rollout.requested.sum()
    total = rollout.requested.sum() * q + rollout.sent.sum() * v
    team_steps = rollout.requested.any(-1)                               # (B, T): steps someone navigated
    silent = (~rollout.sent.any((-1, -2))) & team_steps
    return {'bytes_per_agent_step': float(total / max(agent_steps, 1)),
            'silent_step_share': float(silent.sum() / max(team_steps.sum(), 1)),
            'values_per_step': float(rollout.sent.sum() / max(team_steps.sum(), 1))}


@torch.no_grad()
def evaluate_batches(model: Optional[CollaVNAgent], batches: list[EpisodeBatch], seed: int = 0,
                     threshold: Optional[float] = None, policy: str = 'greedy', sight_m: Optional[float] = None,
                     team_sight: bool = True, comm_range_m: float = 0.0, sight_memory: bool = True,
                     patrol_steps: int = 0) -> dict:
    """SR, DTS, SPL, SSR and bytes of a model's greedy actions over episode batches; without a model a
    random walk, or with policy 'expert' the expert of `run_team` (sight_m, team_sight, sight_memory), with
    messages limited to `comm_range_m` (0: unlimited), after a patrol of `patrol_steps` moves."""
    trained_cfg = model.cfg if model is not None else None
    if model is not None:
        model.eval()
        if threshold is not None:       # this evaluation only
            model.cfg = dataclasses.replace(model.cfg, threshold=threshold)
    rng = np.random.default_rng(seed)
    outcomes, byte_rows = [], []
    try:
        for batch in batches:
            r = run_team(model, batch, rng=rng, sight_m=sight_m, team_sight=team_sight, comm_range_m=comm_range_m,
                         sight_memory=sight_memory, patrol_steps=patrol_steps,
                         policy=policy if model is not None or policy == 'expert' else 'random')
            outcomes += episode_outcomes(batch, r)
            byte_rows.append((comm_bytes(r, model.cfg if model is not None else None), int(r.requested.sum())))
    finally:
        if model is not None:
            model.cfg = trained_cfg
    metrics = nav_metrics(outcomes)
    weight = sum(n for _, n in byte_rows) or 1
    for key in ('bytes_per_agent_step', 'silent_step_share', 'values_per_step'):
        metrics[key] = float(sum(b[key] * n for b, n in byte_rows) / weight)
    return metrics


# ------------------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class NavTrainConfig:
    """One training run (`collab-perception nav train`); every field lands in train.json."""
    variant: str = 'collavn'
    dagger: bool = True               # False: behaviour cloning of the expert only (the imitation row)
    rounds: int = 12                  # DAgger rounds; beta = 0.5 ** round (round 0: the expert alone)
    rollouts_per_round: int = 12      # batches of episodes recorded per round
    steps_per_round: int = 150        # gradient steps per round, on the whole buffer
    batch_size: int = 24
    teams: tuple[int, ...] = (2, 3, 4)
    tasks: tuple[str, ...] = ('common', 'specific')
    lr: float = 1e-3
    score_price: float = 0.002       # per unit of mean score of the pairs that could send: fewer sends
    sighting_weight: float = 0.5     # auxiliary: scores and values taught who has seen whose goal (imitation_loss)
    read_weight: float = 0.0          # auxiliary: a supporter's attention read concentrated on its sightings
    belief_weight: float = 0.0        # auxiliary: the recurrent state keeps whether and where the expert knows the goal
    sight_m: float = 8.0              # the expert knows a goal once it (or, with communication, a teammate) came this close
    comm_range_m: float = 0.0         # messages only between agents this close (0: unlimited, the paper's setting)
    patrol_steps: int = 0             # moves the team patrols, storing memories, before the goals are given
    goal_offsets: bool = AgentConfig.goal_offsets   # the agent reads decoded goal offsets (AgentConfig)
    seed: int = 0
    encoder_steps: int = 1500
    threads: int = 0
    val_episodes: int = 96

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f'variant {self.variant!r} is not one of: {", ".join(VARIANTS)}')
        if self.rounds < 1 or self.rollouts_per_round < 1 or self.steps_per_round < 1 or self.batch_size < 1:
            raise ValueError('rounds, rollouts_per_round, steps_per_round and batch_size must be >= 1')
        if any(not 2 <= t <= 8 for t in self.teams):
            raise ValueError(f'teams: each team size must be in 2..8, got {list(self.teams)}')
        check_task_options(self.comm_range_m, self.patrol_steps)


def check_task_options(comm_range_m: float, patrol_steps: int) -> None:
    """The radio range and the patrol of a run or an evaluation; ValueError names the one out of range."""
    if not 0 <= comm_range_m < 1e4:
        raise ValueError(f'comm_range_m: must be >= 0 (0: unlimited), got {comm_range_m}')
    if not 0 <= patrol_steps <= 1000:
        raise ValueError(f'patrol_steps: must be in 0..1000, got {patrol_steps}')


def encoder_path(dataset_dir: str) -> str:
    """Where a dataset's pretrained view encoder lives (shared by every variant trained on it)."""
    return os.path.join(dataset_dir, 'encoder.pt')


def load_or_pretrain_encoder(dataset, steps: int, seed: int = 0, log=print) -> Encoder:
    """The dataset's encoder: loaded from encoder.pt, or pretrained on its train maps' views and saved."""
    path = encoder_path(dataset.path)
    encoder = Encoder(channels=32)
    if os.path.exists(path):
        encoder.load_state_dict(torch.load(path, weights_only=True)['encoder'])
    else:
        from tqdm import tqdm
        maps = [dataset.map('train', i) for i in dataset.manifest['splits']['train']['map_ids']]
        bar = tqdm(total=steps, desc='encoder', unit='step', dynamic_ncols=True)

        def progress(step, loss):
            bar.update(1)
            bar.set_postfix(loss=f'{loss:.3f}')
        encoder, accuracy = pretrain_encoder(maps, steps, seed=seed, progress=progress)
        bar.close()
        partial = f'{path}.{os.getpid()}.tmp'
        torch.save({'encoder': encoder.state_dict(), 'steps': steps, 'train_pixel_accuracy': accuracy}, partial)
        os.replace(partial, path)
        log(f'encoder: {steps} steps, train pixel accuracy {accuracy:.3f} -> {path}')
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder.eval()


def map_features(dataset, encoder: Encoder, split: str) -> tuple[dict, dict]:
    """({(split, id): NavMap without its images}, {(split, id): {'views': (N, 4, F)}}) of a split, the
    descriptors cached next to the encoder (features-<split>.npz)."""
    ids = dataset.manifest['splits'][split]['map_ids']
    cache = os.path.join(dataset.path, f'features-{split}.npz')
    stored = dict(np.load(cache)) if os.path.exists(cache) else {}
    maps, feats, changed = {}, {}, False
    for i in ids:
        m = dataset.map(split, i)
        name = f'map{i}'
        if name not in stored:
            stored[name] = encode_views(encoder, m.rgb).astype(np.float16)
            changed = True
        maps[(split, i)] = dataclasses.replace(m, rgb=m.rgb[:0])      # labels stay: goal views avoid the sky
        feats[(split, i)] = {'views': stored[name].astype(np.float32)}
    if changed:     # written whole, then renamed: runs started together never read half a file
        partial = f'{cache}.{os.getpid()}.tmp.npz'
        np.savez(partial, **stored)
        os.replace(partial, cache)
    return maps, feats


def batches_of(episodes: list, maps: dict, features: dict, config: NavConfig, size: int) -> list[EpisodeBatch]:
    """Episodes grouped by team size into batches of at most `size` (in their order)."""
    out = []
    for team in sorted({e.team for e in episodes}):
        same = [e for e in episodes if e.team == team]
        out += [EpisodeBatch(same[i:i + size], maps, features, config) for i in range(0, len(same), size)]
    return out


def train_agent(dataset_dir: str, out_dir: str, cfg: NavTrainConfig, log=print) -> dict:
    """Train one variant (see the module docstring); writes model.pt (the best by validation SR),
    train.json (config, history, timing) and returns the summary."""
    from tqdm import tqdm

    from ..data.nav import BANDS, NavDataset, sample_episodes

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dataset = NavDataset(dataset_dir)
    nav = dataset.config
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    encoder = load_or_pretrain_encoder(dataset, cfg.encoder_steps, cfg.seed, log)
    maps, feats = map_features(dataset, encoder, 'train')
    vmaps, vfeats = map_features(dataset, encoder, 'val')
    maps.update(vmaps)
    feats.update(vfeats)
    val = [e for e in dataset.episodes('val') if e.team in cfg.teams][:cfg.val_episodes]
    val_batches = batches_of(val, maps, feats, nav, 32)
    train_keys = [k for k in maps if k[0] == 'train']

    agent_cfg = AgentConfig(variant=cfg.variant, goal_offsets=cfg.goal_offsets,
                            feature_dim=next(iter(feats.values()))['views'].shape[-1])
    model = CollaVNAgent(agent_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    total_steps = cfg.rounds * cfg.steps_per_round
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.05)
    buffer: list[tuple[EpisodeBatch, Rollout]] = []
    history, best = [], (-1.0, None)
    bar = tqdm(total=total_steps, desc=f'nav {cfg.variant}', unit='step', dynamic_ncols=True)

    def fresh_batch() -> EpisodeBatch:
        team = int(rng.choice(cfg.teams))
        episodes = []
        for _ in range(cfg.batch_size):
            key = train_keys[int(rng.integers(len(train_keys)))]
            task = cfg.tasks[int(rng.integers(len(cfg.tasks)))]
            band = BANDS[int(rng.integers(len(BANDS)))]
            episodes += sample_episodes(maps[key], nav, rng, 1, task, team, band, map_split='train')
        return EpisodeBatch(episodes, maps, feats, nav)

    for rnd in range(cfg.rounds):
        beta = 0.5 ** rnd if cfg.dagger else 1.0
        model.eval()
        with torch.no_grad():
            for _ in range(cfg.rollouts_per_round):
                batch = fresh_batch()
                buffer.append((batch, run_team(model, batch, beta=beta, rng=rng, policy='sample', sight_m=cfg.sight_m,
                                               team_sight=agent_cfg.communicates, comm_range_m=cfg.comm_range_m,
                                               sight_memory=agent_cfg.memory, patrol_steps=cfg.patrol_steps)))
        model.train()
        losses, accs = [], []
        for _ in range(cfg.steps_per_round):
            batch, rollout = buffer[int(rng.integers(len(buffer)))]
            loss, ce, acc = imitation_loss(model, batch, rollout, cfg.score_price, cfg.sighting_weight, cfg.sight_m,
                                           cfg.read_weight, cfg.belief_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            losses.append(ce)
            accs.append(acc)
            bar.update(1)
            bar.set_postfix(round=rnd, loss=f'{np.mean(losses[-20:]):.3f}', acc=f'{np.mean(accs[-20:]):.2f}')
        metrics = evaluate_batches(model, val_batches, seed=cfg.seed, comm_range_m=cfg.comm_range_m,
                                   patrol_steps=cfg.patrol_steps)
        history.append({'round': rnd, 'beta': beta, 'loss': float(np.mean(losses)), 'label_accuracy': float(np.mean(accs)),
                        'buffer': len(buffer), 'val_success_rate': metrics['success_rate'], 'val_spl': metrics['spl'],
                        'val_bytes_per_agent_step': metrics['bytes_per_agent_step'],
                        'minutes': (time.time() - t0) / 60})
        log(f'round {rnd}: beta {beta:.3f} loss {np.mean(losses):.3f} label acc {np.mean(accs):.3f} '
            f'val SR {metrics["success_rate"]:.3f} SPL {metrics["spl"]:.3f} '
            f'{metrics["bytes_per_agent_step"]:.0f} B/agent/step, silent steps {metrics["silent_step_share"]:.2f}')
        if metrics['success_rate'] > best[0]:
            best = (metrics['success_rate'], {k: v.clone() for k, v in model.state_dict().items()})
            torch.save({'agent': dataclasses.asdict(agent_cfg), 'state_dict': best[1], 'round': rnd,
                        'train': _json_ready(dataclasses.asdict(cfg))}, os.path.join(out_dir, 'model.pt'))
    bar.close()
    summary = {'config': _json_ready(dataclasses.asdict(cfg)), 'agent': dataclasses.asdict(agent_cfg),
               'dataset': dataset_dir, 'history': history, 'best_val_success_rate': best[0],
               'minutes': (time.time() - t0) / 60}
    with open(os.path.join(out_dir, 'train.json'), 'w', encoding='utf-8') as f:
        json.dump(summary, f, indent=1)
    return summary


def _json_ready(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def load_agent(path: str) -> CollaVNAgent:
    """A trained agent from its model.pt."""
    return agent_from_checkpoint(torch.load(path, weights_only=True))


def agent_from_checkpoint(ckpt: dict) -> CollaVNAgent:
    """A trained agent from a loaded model.pt (its 'agent' config and weights)."""
    model = CollaVNAgent(AgentConfig(**ckpt['agent']))
    model.load_state_dict(ckpt['state_dict'])
    return model.eval()


# ------------------------------------------------------------------------------------------ the tables
EVAL_SPLITS = ('test', 'unseen')
TASK_NAMES = {'common': 'CommonGoal', 'specific': 'SpecificGoal'}


def evaluate_table(dataset_dir: str, runs_dir: str, rows: dict, adhoc: dict,
                   thresholds: Sequence[float] = (0.5,), references: Optional[dict] = None,
                   comm_range_m: Optional[float] = None, patrol_steps: Optional[int] = None, log=print) -> dict:
    """Every row (name -> (run directory or None for the random walk, label)) on every task and team size
    of the test split and the unseen world; Ad-hoCoop (name -> (run, team tested)); ours' threshold sweep;
    `references` (name -> (label, team_sight, sight_memory)): the experts the variants imitate, at the
    sight_m ours was trained with. Messages are limited to `comm_range_m` (None: the range ours was trained
    with; 0: unlimited) for every row, and every episode starts after a patrol of `patrol_steps` moves (None:
    as ours was trained)."""
    from ..data.nav import NavDataset, TASKS

    trained = os.path.join(runs_dir, rows['collavn'][0], 'train.json')
    defaults = NavTrainConfig()
    sight_m, trained_range, trained_patrol = defaults.sight_m, defaults.comm_range_m, defaults.patrol_steps
    if os.path.exists(trained):
        with open(trained, encoding='utf-8') as f:
            ours_cfg = json.load(f)['config']
        sight_m = float(ours_cfg.get('sight_m', sight_m))
        trained_range = float(ours_cfg.get('comm_range_m', trained_range))
        trained_patrol = int(ours_cfg.get('patrol_steps', trained_patrol))
    range_m = trained_range if comm_range_m is None else float(comm_range_m)
    patrol = trained_patrol if patrol_steps is None else int(patrol_steps)
    check_task_options(range_m, patrol)

    dataset = NavDataset(dataset_dir)
    nav = dataset.config
    if not os.path.exists(encoder_path(dataset_dir)):
        raise FileNotFoundError(f'{encoder_path(dataset_dir)}: no encoder; train a variant first (`nav train`)')
    encoder = load_or_pretrain_encoder(dataset, 0, log=log)
    maps, feats = {}, {}
    for split in EVAL_SPLITS:
        if split in dataset.splits:
            m, f = map_features(dataset, encoder, split)
            maps.update(m)
            feats.update(f)
    splits = [s for s in EVAL_SPLITS if s in dataset.splits]

    def models(run):
        path = os.path.join(runs_dir, run, 'model.pt') if run else None
        return None if path is None or not os.path.exists(path) else load_agent(path)

    batches: dict = {}          # (split, task, team) -> its EpisodeBatches (their BFS fields), built once

    def score(model, split, task, team, random_walk=False, threshold=None, **expert):
        key = (split, task, team)
        if key not in batches:
            batches[key] = batches_of(dataset.episodes(split, task=task, team=team), maps, feats, nav, 32)
        if not batches[key] or (model is None and not random_walk and not expert):
            return None
        return evaluate_batches(model, batches[key], threshold=threshold, comm_range_m=range_m, patrol_steps=patrol,
                                **expert)

    out = {'config': nav.to_dict(), 'splits': splits, 'rows': {}, 'adhoc': {}, 'sweep': [], 'comm_range_m': range_m,
           'patrol_steps': patrol}
    teams = sorted({e.team for e in dataset.episodes('test')})
    for name, (run, label) in rows.items():
        model = models(run)
        entry = {'label': label, 'trained': run is None or model is not None, 'results': {}}
        for split in splits:
            for task in TASKS:
                for team in teams:
                    r = score(model, split, task, team, random_walk=run is None)
                    if r is not None:
                        entry['results'][f'{split}/{task}/{team}'] = r
        out['rows'][name] = entry
        log(f'{label}: ' + ('evaluated' if entry['results'] else 'not trained'))
    for name, (label, team_sight, sight_memory) in (references or {}).items():
        if not sight_memory and not range_m and not patrol:
            continue            # with every message getting through, the same expert as the one with memory
        entry = {'label': label, 'trained': True, 'reference': True, 'results': {}}
        for split in splits:
            for task in TASKS:
                for team in teams:
                    entry['results'][f'{split}/{task}/{team}'] = score(
                        None, split, task, team, policy='expert', sight_m=sight_m, team_sight=team_sight,
                        sight_memory=sight_memory)
        out['rows'][name] = entry
    out['sight_m'] = sight_m
    for name, (run, team) in adhoc.items():
        model = models(run)
        out['adhoc'][name] = {'run': run, 'team': team, 'trained': model is not None,
                              'results': {f'{s}/common/{team}': score(model, s, 'common', team) for s in splits}
                              if model is not None else {}}
    ours = models(rows['collavn'][0])
    if ours is not None:
        for th in thresholds:
            per_team = [score(ours, 'test', 'common', team, threshold=th) for team in teams]
            per_team = [r for r in per_team if r is not None]
            n = sum(r['episodes'] for r in per_team) or 1
            out['sweep'].append({'threshold': th, **{k: sum(r[k] * r['episodes'] for r in per_team) / n
                                                     for k in ('success_rate', 'spl', 'ssr', 'dts',
                                                               'bytes_per_agent_step', 'silent_step_share')}})
    return out


def _cell(r: Optional[dict], key: str, fmt: str) -> str:
    return '—' if r is None else format(r[key] * (100 if key == 'success_rate' else 1), fmt)


def write_results_section(path: str, table: dict, plot_path: str, begin: str, end: str, command: str) -> None:
    """Replace the text between `begin` and `end` in `path` (appended when absent) with the CollaVN tables,
    and draw success rate against bytes per agent per step into `plot_path`."""
    lines = [begin, '## CollaVN: collaborative visual navigation', '',
             f'Written by `{command}` (every number below; episodes of the dataset\'s test maps and of the unseen '
             'world seed, greedy actions). SR and SPL in %, DTS in metres, SSR = mean S·T_max/T (not bounded '
             'by 1), bytes: what an agent puts on the wire per step (its Request with the query, and the '
             'MemoryValue answers it sends), serialized as on the swarm (runtime/wire.py).', '']
    c = table['config']
    lines.append(f'Maps: {c["region_m"]:g} m regions, lattice {c["lattice_m"]:g} m, success within '
                 f'{c["band_scale"] * 1.0:g} m, T_max {c["max_steps"]} steps; bands: the paper\'s times '
                 f'{c["band_scale"]:g}. Rows in italics are the experts the variants imitate (not learned; '
                 f'they know a goal once it came within {table.get("sight_m", 0):g} m of the agent, or of any '
                 f'teammate so far).')
    if table.get('comm_range_m'):
        lines.append(f'Radio range {table["comm_range_m"]:g} m: every row\'s messages only get through between '
                     'agents within that distance of each other, and a team-sight expert learns a teammate\'s '
                     'sighting only while the teammate is in reach.')
    if table.get('patrol_steps'):
        lines.append(f'Patrol: before the goals are given the team patrols {table["patrol_steps"]} moves (the '
                     'experts\' exploration rule; no requests, nothing sent) and stores what it sees in its '
                     'memories; the episode\'s T_max steps, its shortest path length and SPL start where the '
                     'patrol ended. The experts with memory know the goals a patrol passed.')
    lines.append('')
    for task, task_name in TASK_NAMES.items():
        lines += [f'### {task_name}', '',
                  '| method | N | SR | DTS | SPL | SSR | bytes/agent/step | unseen SR | unseen SPL |',
                  '|---|---|---|---|---|---|---|---|---|']
        for name, row in table['rows'].items():
            if not row['trained']:
                lines.append(f'| {row["label"]} | — | not trained | | | | | | |')
                continue
            for key in sorted({k.split('/')[2] for k in row['results'] if k.split('/')[1] == task}, key=int):
                r = row['results'].get(f'test/{task}/{key}')
                u = row['results'].get(f'unseen/{task}/{key}')
                label = f'*{row["label"]}*' if row.get('reference') else row['label']
                sent = '—' if row.get('reference') else _cell(r, 'bytes_per_agent_step', '.0f')
                lines.append(f'| {label} | {key} | {_cell(r, "success_rate", ".2f")} | {_cell(r, "dts", ".2f")} | '
                             f'{_cell(r, "spl", ".3f")} | {_cell(r, "ssr", ".2f")} | {sent} | '
                             f'{_cell(u, "success_rate", ".2f")} | {_cell(u, "spl", ".3f")} |')
        lines.append('')
    lines += ['### Ad-hoCoop (CommonGoal, trained with one team size, tested with another)', '',
              '| trained → tested | SR | SPL | SSR | unseen SR | ours trained on 2-4, same team |', '|---|---|---|---|---|---|']
    for name, a in table['adhoc'].items():
        if not a['trained']:
            lines.append(f'| {name} | not trained | | | | |')
            continue
        r, u = a['results'].get(f'test/common/{a["team"]}'), a['results'].get(f'unseen/common/{a["team"]}')
        ref = table['rows'].get('collavn', {}).get('results', {}).get(f'test/common/{a["team"]}')
        lines.append(f'| {name} | {_cell(r, "success_rate", ".2f")} | {_cell(r, "spl", ".3f")} | '
                     f'{_cell(r, "ssr", ".2f")} | {_cell(u, "success_rate", ".2f")} | {_cell(ref, "success_rate", ".2f")} |')
    lines.append('')
    if table['sweep']:
        lines += ['### The select threshold (ours, CommonGoal, test, every team size)', '',
                  '| threshold | SR | SPL | bytes/agent/step | steps in which nobody sends |', '|---|---|---|---|---|']
        for s in table['sweep']:
            lines.append(f'| {s["threshold"]:g} | {100 * s["success_rate"]:.2f} | {s["spl"]:.3f} | '
                         f'{s["bytes_per_agent_step"]:.0f} | {100 * s["silent_step_share"]:.1f}% |')
        lines.append('')
    lines += [f'![success rate against bytes]({os.path.relpath(plot_path, os.path.dirname(path) or ".")})', '', end]
    section = '\n'.join(lines)
    text = open(path, encoding='utf-8').read() if os.path.exists(path) else ''
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip('\n') + '\n\n' + section + '\n'
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text)
    _plot_sr_bytes(table, plot_path)


def _plot_sr_bytes(table: dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for name, row in table['rows'].items():
        rs = [r for k, r in row['results'].items() if k.startswith('test/common/') and r is not None]
        if not rs or row.get('reference'):
            continue
        n = sum(r['episodes'] for r in rs)
        sr = 100 * sum(r['success_rate'] * r['episodes'] for r in rs) / n
        b = sum(r['bytes_per_agent_step'] * r['episodes'] for r in rs) / n
        ax.scatter([max(b, 1.0)], [sr], s=40, label=row['label'])
    if table['sweep']:
        xs = [max(s['bytes_per_agent_step'], 1.0) for s in table['sweep']]
        ax.plot(xs, [100 * s['success_rate'] for s in table['sweep']], '--', color='gray', lw=1,
                label='ours, select threshold swept')
        labels: dict = {}      # thresholds that give the same point share one label
        for s, x in zip(table['sweep'], xs):
            labels.setdefault((round(x, 1), round(s['success_rate'], 6)), []).append(f'{s["threshold"]:g}')
        for (x, sr), names in labels.items():
            ax.annotate(', '.join(names), (x, 100 * sr), fontsize=7, xytext=(3, 3),
                        textcoords='offset points')
    ax.set_xscale('log')
    ax.set_xlabel('bytes per agent per step (serialized; 1 = nothing sent)')
    ax.set_ylabel('success rate, % (CommonGoal, test)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- export
NAV_ROLES = ('encode', 'observe', 'act')


class EncodeRole(nn.Module):
    """views [V, 3, S, S] in 0..1 -> descriptors [V, F] (the frozen encoder, pooled as in training)."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, views: torch.Tensor):
        return F.adaptive_avg_pool2d(self.encoder(views), POOL).flatten(1)


class ObserveRole(nn.Module):
    def __init__(self, model: CollaVNAgent):
        super().__init__()
        self.model = model

    def forward(self, views, goal, cells, memory_mean, bumped):
        return self.model.observe(views, goal, cells, memory_mean, bumped)


class ActRole(nn.Module):
    def __init__(self, model: CollaVNAgent):
        super().__init__()
        self.model = model

    def forward(self, context, prev_action, received, got, own_read, hidden):
        return self.model.act(context, prev_action, received, got, own_read, hidden)


def export_agent(model: CollaVNAgent, encoder: Encoder, out_dir: str, image_size: int, nav: NavConfig,
                 source: str = '') -> dict:
    """The agent as three ONNX roles (encode, observe, act) plus roles.json: what runtime/nav_agent.py
    loads. Shapes are for one agent (batch 1; encode takes the four views at once)."""
    from .export import export_onnx
    os.makedirs(out_dir, exist_ok=True)
    cfg = model.cfg
    model, encoder = model.eval(), encoder.eval()
    F_ = cfg.feature_dim
    context_dim = cfg.context_dim
    export_onnx(EncodeRole(encoder), (torch.rand(4, 3, image_size, image_size),), os.path.join(out_dir, 'encode.onnx'),
                ['views'], ['descriptors'])
    export_onnx(ObserveRole(model), (torch.randn(1, 4, F_), torch.randn(1, 4, F_), torch.rand(1, 2),
                                     torch.zeros(1, cfg.value_dim), torch.zeros(1, 1)),
                os.path.join(out_dir, 'observe.onnx'), ['views', 'goal', 'cells', 'memory_mean', 'bumped'],
                ['context', 'query', 'key', 'value'])
    export_onnx(ActRole(model), (torch.randn(1, context_dim), torch.zeros(1, NUM_ACTIONS), torch.zeros(1, cfg.value_dim),
                                 torch.zeros(1, 1), torch.zeros(1, cfg.value_dim), torch.zeros(1, cfg.hidden)),
                os.path.join(out_dir, 'act.onnx'), ['context', 'prev_action', 'received', 'got', 'own_read', 'hidden'],
                ['new_hidden', 'logits'])
    info = {'method': 'collavn', 'variant': cfg.variant, 'roles': list(NAV_ROLES), 'image_size': image_size,
            'feature_dim': F_, 'hidden': cfg.hidden, 'query_dim': cfg.query_dim, 'key_dim': cfg.key_dim,
            'value_dim': cfg.value_dim, 'context_dim': context_dim, 'threshold': cfg.threshold, 'communicates': cfg.communicates,
            'memory': cfg.memory, 'actions': list(ACTIONS),
            'max_steps': nav.max_steps, 'lattice_m': nav.lattice_m, 'region_m': nav.region_m, 'source': source}
    with open(os.path.join(out_dir, 'roles.json'), 'w', encoding='utf-8') as f:
        json.dump(info, f, indent=1)
    return info


def export_run(run_dir: str, dataset_dir: str, out_dir: str, check: int = 32) -> dict:
    """Export a run's model.pt with its dataset's encoder (export_agent), then play `check` test episodes
    through ONNX Runtime (runtime/nav_agent.py) and through torch: how many end with equal outcomes."""
    from ..data.nav import NavDataset
    from ..runtime.nav_agent import NavAgent, run_episode

    ckpt = torch.load(os.path.join(run_dir, 'model.pt'), weights_only=True)
    trained = ckpt.get('train', {})
    offline_only = {k: trained[k] for k in ('comm_range_m', 'patrol_steps') if trained.get(k)}
    if offline_only:
        raise ValueError(f'{run_dir}: trained with {offline_only}, which the swarm does not run (offline only); '
                         'export a run of the paper\'s task')
    dataset = NavDataset(dataset_dir)
    nav = dataset.config
    model = agent_from_checkpoint(ckpt)
    encoder = load_or_pretrain_encoder(dataset, 0)
    export_agent(model, encoder, out_dir, nav.image_size, nav, source=os.path.join(run_dir, 'model.pt'))
    report = {'roles': ', '.join(NAV_ROLES)}
    if not check:
        return report
    episodes = dataset.episodes('test')[:check]
    maps, feats = map_features(dataset, encoder, 'test')
    agents = [NavAgent(out_dir) for _ in range(max(e.team for e in episodes))]
    same = 0
    for e in episodes:
        batch = EpisodeBatch([e], maps, feats, nav)
        with torch.no_grad():
            want = episode_outcomes(batch, run_team(model, batch, policy='greedy'))
        got, _ = run_episode(agents, maps[(e.map_split, e.map_id)], feats[(e.map_split, e.map_id)]['views'], e,
                             nav.max_steps, nav.success_m, nav.region_m)
        same += all((a.final_m, a.steps, a.path_m) == (b.final_m, b.steps, b.path_m) for a, b in zip(want, got))
    report.update({'episodes_checked': len(episodes), 'equal_outcomes': same, 'agree': same == len(episodes)})
    return report


def train_command(run_dir: str, dataset_dir: str, cfg: dict) -> str:
    """The `nav train` command line that reproduces a run from its train.json config."""
    default = _json_ready(dataclasses.asdict(NavTrainConfig()))
    flags = {'rounds': 'rounds', 'rollouts_per_round': 'rollouts-per-round', 'steps_per_round': 'steps-per-round',
             'batch_size': 'batch-size', 'lr': 'lr', 'sight_m': 'sight-m', 'sighting_weight': 'sighting-weight',
             'read_weight': 'read-weight', 'belief_weight': 'belief-weight', 'comm_range_m': 'comm-range-m',
             'patrol_steps': 'patrol-steps',
             'encoder_steps': 'encoder-steps', 'seed': 'seed', 'threads': 'threads'}
    parts = ['collab-perception nav train', f'--data {dataset_dir}', f'--variant {cfg["variant"]}', f'--out {run_dir}']
    if not cfg.get('dagger', True):
        parts.append('--no-dagger')
    if cfg.get('goal_offsets'):
        parts.append('--goal-offsets')
    if list(cfg.get('teams', default['teams'])) != default['teams']:
        parts.append('--teams ' + ' '.join(str(t) for t in cfg['teams']))
    parts += [f'--{flag} {cfg[key]}' for key, flag in flags.items() if key in cfg and cfg[key] != default[key]]
    return ' '.join(parts)


def write_model_card(run_dir: str, dataset_dir: str, out_dir: str, report: dict, episodes: int = 0) -> dict:
    """model_card.yaml next to an exported agent: how it was trained (the command, rounds, minutes, best
    validation SR), the dataset, SR / SPL / SSR / DTS and bytes per agent per step over the test split and
    the unseen world (every task and team size; `episodes` > 0: only the first that many of each), and the
    ONNX check of `export_run`."""
    import yaml

    from ..data.nav import NavDataset

    dataset = NavDataset(dataset_dir)
    nav = dataset.config
    with open(os.path.join(run_dir, 'train.json'), encoding='utf-8') as f:
        trained = json.load(f)
    ckpt = torch.load(os.path.join(run_dir, 'model.pt'), weights_only=True)
    model = load_agent(os.path.join(run_dir, 'model.pt'))
    encoder = load_or_pretrain_encoder(dataset, 0)
    metrics = {}
    for split in EVAL_SPLITS:
        if split not in dataset.splits:
            continue
        maps, feats = map_features(dataset, encoder, split)
        chosen = dataset.episodes(split)
        chosen = chosen[:episodes] if episodes else chosen
        m = evaluate_batches(model, batches_of(chosen, maps, feats, nav, 32))
        m = {'episodes': len(chosen), 'agent_episodes': m.pop('episodes'), **m}     # nav_metrics counts agents
        metrics[split] = {k: round(float(v), 4) if isinstance(v, float) else v for k, v in m.items()}
    card = {'name': os.path.basename(os.path.normpath(out_dir)), 'method': 'collavn',
            'variant': trained['config']['variant'], 'seed': trained['config']['seed'],
            'trained_with': train_command(run_dir, dataset_dir, trained['config']),
            'exported_with': f'collab-perception nav export {run_dir} --data {dataset_dir} --out {out_dir}',
            'training': {'rounds': len(trained['history']), 'best_round': int(ckpt['round']),
                         'best_val_success_rate': round(float(trained['best_val_success_rate']), 4),
                         'minutes': round(float(trained['minutes']), 1), 'config': trained['config'],
                         'agent': trained['agent']},
            'dataset': {'path': dataset_dir,
                        'maps': {k: {'world_seed': v['world_seed'], 'map_ids': list(v['map_ids'])}
                                 for k, v in dataset.manifest['splits'].items()},
                        'region_m': nav.region_m, 'lattice_m': nav.lattice_m, 'success_m': nav.success_m,
                        'max_steps': nav.max_steps},
            'metrics': metrics, 'onnx_check': report}
    with open(os.path.join(out_dir, 'model_card.yaml'), 'w', encoding='utf-8') as f:
        yaml.safe_dump(card, f, sort_keys=False)
    return card
