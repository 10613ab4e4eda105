"""CollaVN's memory-augmented communication (§4), per agent, in numpy: what the swarm's nodes and the offline
evaluator run (learn/collavn.py trains the same arithmetic in torch; test/test_collavn.py checks they agree).

Every agent is requester and supporter at every step:
- request: the agent broadcasts its query q (built by its model from its observation, its goal and the
  average of its stored values, `memory_mean`);
- match: each supporter scores q against its current key and every key in its private memory,
      logits_m = q . k_m / sqrt(dk),  a = softmax(logits),  value = sum_m a_m v_m,  score = sigmoid(max_m logits_m)
  (`match`); with memory off, only the current key and value take part;
- select: a supporter sends (score, value) only when score >= threshold; when no score passes, nobody
  sends at all (When2com's "when to communicate", `select`);
- fuse: the requester mixes what it received weighted by score (`fuse`), and knows whether anyone answered;
  it also matches its own query against its own current key and memory (Eq. 8-9: `match` on itself);
- store: the step's key and value are appended to the agent's own memory (`EpisodeMemory.store`), which
  holds at most `capacity` entries per episode (the oldest go first) and is cleared when an episode starts.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np


class EpisodeMemory:
    """An agent's private memory of (key, value) pairs within one episode, at most `capacity` of them."""

    def __init__(self, key_dim: int, value_dim: int, capacity: int):
        if capacity < 1:
            raise ValueError(f'memory capacity must be >= 1, got {capacity}')
        self.key_dim, self.value_dim, self.capacity = key_dim, value_dim, capacity
        self.keys = np.zeros((0, key_dim), np.float32)
        self.values = np.zeros((0, value_dim), np.float32)

    def __len__(self) -> int:
        return len(self.keys)

    def clear(self) -> None:
        self.keys = self.keys[:0]
        self.values = self.values[:0]

    def store(self, key: np.ndarray, value: np.ndarray) -> None:
        key = np.asarray(key, np.float32).reshape(-1)
        value = np.asarray(value, np.float32).reshape(-1)
        if key.shape != (self.key_dim,) or value.shape != (self.value_dim,):
            raise ValueError(f'memory entry: expected key [{self.key_dim}] and value [{self.value_dim}], got '
                             f'{list(key.shape)} and {list(value.shape)}')
        self.keys = np.concatenate([self.keys, key[None]])[-self.capacity:]
        self.values = np.concatenate([self.values, value[None]])[-self.capacity:]


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def match(query: np.ndarray, key: np.ndarray, value: np.ndarray,
          memory: Optional[EpisodeMemory] = None) -> tuple[float, np.ndarray]:
    """(score, attention-weighted value) of a supporter for one query: over its current (key, value) and,
    when `memory` is given, every stored pair."""
    keys, values = np.asarray(key, np.float32)[None], np.asarray(value, np.float32)[None]
    if memory is not None and len(memory):
        keys = np.concatenate([keys, memory.keys])
        values = np.concatenate([values, memory.values])
    logits = keys @ np.asarray(query, np.float32) / math.sqrt(keys.shape[1])
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    return float(sigmoid(logits.max())), (weights @ values).astype(np.float32)


def select(scores: Mapping[int, float], threshold: float) -> list[int]:
    """The supporters whose score reaches the threshold (none: nobody sends this step)."""
    return sorted(j for j, s in scores.items() if s >= threshold)


def fuse(received: Sequence[tuple[float, np.ndarray]], value_dim: int) -> tuple[np.ndarray, bool]:
    """(score-weighted mean of the received values, whether anything arrived); zeros when nothing did."""
    if not received:
        return np.zeros(value_dim, np.float32), False
    scores = np.array([s for s, _ in received], np.float32)
    values = np.stack([np.asarray(v, np.float32) for _, v in received])
    return (scores @ values / (float(scores.sum()) + 1e-6)).astype(np.float32), True


def memory_mean(memory: Optional[EpisodeMemory], value_dim: int) -> np.ndarray:
    """The average of the stored values (zeros while the memory is empty or off): what the query is built from
    besides the observation (Eq. 5's pooled memory)."""
    if memory is None or not len(memory):
        return np.zeros(value_dim, np.float32)
    return memory.values.mean(0).astype(np.float32)
