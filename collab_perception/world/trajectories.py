"""Drone trajectories over a map, deterministic from a random generator.

Both kinds produce, per step, each drone's camera position (ENU metres), yaw (heading of the optical axis,
counter-clockwise from east) and pitch (elevation, negative looks down). Drones stay inside the map's
flight region (the tile minus a margin, so that views mostly see the detailed tile) and at
`altitude_m` above the ground under them.

- `FormationFlight` (handshake paper §IV-B "waypoint following"; MASH §IV "moved roughly together ... with
  different yaw rates"): the swarm's centre flies from road intersection to a neighbouring intersection;
  each drone holds a loose slot of a ring formation that wobbles slowly, and swings its yaw about the
  direction of travel with its own amplitude and rate, so its view sweeps past the others' and the views
  overlap partially and intermittently (constant yaw rates would spin the cameras all the way round, and
  the pairs would alternate between full and no overlap).
- `ExplorationFlight` (handshake paper §IV-B "random exploration: agents approach a target location,
  disperse, and wander"): a cycle of the three phases, each drone with its own speed and yaw wobble, so the
  overlap goes from large (approach) to little or none (disperse, wander).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import WorldConfig
from .landscape import Landscape

FLIGHT_MARGIN_FRACTION = 0.2   # of the tile size, on each side
POSITION_LAG_S = 2.0           # drones follow their targets through a first-order lag (smooth paths)


@dataclass
class DronePose:
    position: np.ndarray   # (3,) camera position, world ENU
    yaw: float             # radians
    pitch: float           # radians


def flight_bounds(landscape: Landscape) -> tuple[float, float, float, float]:
    m = landscape.half - FLIGHT_MARGIN_FRACTION * landscape.size_m
    return -m, m, -m, m


def _wrap(angle):
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _lag(dt: float, tau: float) -> float:
    return 1.0 - math.exp(-dt / tau)


class _Flight:
    def __init__(self, config: WorldConfig, landscape: Landscape, rng: np.random.Generator):
        self.config, self.landscape, self.rng = config, landscape, rng
        self.n = config.drones
        self.bounds = flight_bounds(landscape)
        self.t = 0.0
        # one altitude band per flight, drawn from altitude_m, with a per-drone spread: drones of one swarm
        # fly at similar heights (an 80 m view would otherwise contain a whole 20 m view, and not back)
        lo, hi = config.altitude_m
        self.swarm_altitude = rng.uniform(lo, hi)
        self.altitude = np.clip(self.swarm_altitude * rng.uniform(0.8, 1.2, self.n), lo, hi)
        self.altitude_wobble = rng.uniform(0.0, 0.08, self.n) * self.swarm_altitude
        self.altitude_phase = rng.uniform(0, 2 * np.pi, self.n)
        self.pitch = np.radians(config.pitch_deg + rng.uniform(-1, 1, self.n) * config.pitch_jitter_deg)
        self.pitch = np.clip(self.pitch, -np.pi / 2, 0.0)
        self.xy = np.zeros((self.n, 2))
        self.yaw = np.zeros(self.n)

    def _clamp(self, xy: np.ndarray) -> np.ndarray:
        x0, x1, y0, y1 = self.bounds
        return np.stack([np.clip(xy[..., 0], x0, x1), np.clip(xy[..., 1], y0, y1)], axis=-1)

    def poses(self) -> list[DronePose]:
        alt = self.altitude + self.altitude_wobble * np.sin(0.05 * self.t + self.altitude_phase)
        lo, hi = self.config.altitude_m
        z = self.landscape.ground_height(self.xy[:, 0], self.xy[:, 1]) + np.clip(alt, lo, hi)
        return [DronePose(np.array([self.xy[i, 0], self.xy[i, 1], z[i]]), float(_wrap(self.yaw[i])),
                          float(self.pitch[i])) for i in range(self.n)]


class FormationFlight(_Flight):
    """Loose ring formation following the road network, one yaw rate per drone."""

    def __init__(self, config: WorldConfig, landscape: Landscape, rng: np.random.Generator):
        super().__init__(config, landscape, rng)
        x0, x1, y0, y1 = self.bounds
        nodes = landscape.intersections(self.bounds)
        if len(nodes) < 2:  # no road network inside the region: random waypoints instead
            nodes = rng.uniform([x0, y0], [x1, y1], size=(8, 2))
        self.waypoints = nodes
        self.current = int(rng.integers(len(nodes)))
        self.previous = -1
        self.centre = nodes[self.current].astype(float).copy()
        self.target = self._next_waypoint()
        self.heading = math.atan2(*(self.waypoints[self.target] - self.centre)[::-1])
        # formation_spacing_m is at 50 m altitude; footprints grow with altitude, and so does the formation
        spacing = config.formation_spacing_m * self.swarm_altitude / 50.0
        angles = 2 * np.pi * np.arange(self.n) / self.n + rng.uniform(-0.3, 0.3, self.n)
        radius = spacing * rng.uniform(0.5, 1.0, self.n) * (self.n > 1)
        self.slots = np.stack([radius * np.cos(angles), radius * np.sin(angles)], -1)
        self.wobble_amp = rng.uniform(0.15, 0.35, (self.n, 2)) * spacing
        self.wobble_freq = rng.uniform(0.04, 0.12, (self.n, 2))
        self.wobble_phase = rng.uniform(0, 2 * np.pi, (self.n, 2))
        # yaw swings: amplitude and period per drone, peak rate spread over (0, max_yaw_rate]
        self.yaw_amp = np.radians(rng.uniform(15.0, 45.0, self.n))
        peak = np.radians(config.max_yaw_rate_deg_s) * rng.permutation(np.linspace(0.3, 1.0, self.n))
        self.yaw_freq = peak / self.yaw_amp
        self.yaw_phase = rng.uniform(0, 2 * np.pi, self.n)
        self.yaw_offset = rng.uniform(-0.35, 0.35, self.n)
        self.xy = self._clamp(self._slot_targets())
        self._update_yaw()

    def _next_waypoint(self) -> int:
        """A near intersection other than where we came from: the swarm travels along the road grid."""
        d = np.linalg.norm(self.waypoints - self.waypoints[self.current], axis=1)
        d[self.current] = np.inf
        if 0 <= self.previous < len(d) and np.isfinite(d).sum() > 1:
            d[self.previous] = np.inf
        candidates = np.argsort(d)[:3]
        candidates = candidates[np.isfinite(d[candidates])]
        return int(self.rng.choice(candidates))

    def _slot_targets(self) -> np.ndarray:
        c, s = math.cos(self.heading), math.sin(self.heading)
        R = np.array([[c, -s], [s, c]])
        wobble = self.wobble_amp * np.sin(self.wobble_freq * self.t + self.wobble_phase)
        return self.centre + (self.slots + wobble) @ R.T

    def _update_yaw(self):
        self.yaw = self.heading + self.yaw_offset + self.yaw_amp * np.sin(self.yaw_freq * self.t + self.yaw_phase)

    def step(self, dt: float) -> None:
        self.t += dt
        goal = self.waypoints[self.target]
        delta = goal - self.centre
        dist = float(np.linalg.norm(delta))
        move = self.config.speed_mps * dt
        if dist <= max(move, 3.0):
            self.previous, self.current = self.current, self.target
            self.target = self._next_waypoint()
        else:
            self.centre = self.centre + delta / dist * move
        desired = math.atan2(delta[1], delta[0]) if dist > 1e-6 else self.heading
        max_turn = math.radians(20.0) * dt   # the formation turns smoothly at corners
        self.heading += float(np.clip(_wrap(desired - self.heading), -max_turn, max_turn))
        self.xy = self._clamp(self.xy + (self._clamp(self._slot_targets()) - self.xy) * _lag(dt, POSITION_LAG_S))
        self._update_yaw()


class ExplorationFlight(_Flight):
    """Approach a common point, disperse, wander; repeat with a new point."""

    APPROACH_RADIUS_M = 12.0

    def __init__(self, config: WorldConfig, landscape: Landscape, rng: np.random.Generator):
        super().__init__(config, landscape, rng)
        x0, x1, y0, y1 = self.bounds
        self.xy = rng.uniform([x0, y0], [x1, y1], size=(self.n, 2))
        self.velocity = np.zeros((self.n, 2))
        self.speed = config.speed_mps * rng.uniform(0.7, 1.2, self.n)
        self.heading = rng.uniform(-np.pi, np.pi, self.n)
        self.yaw_amp = np.radians(rng.uniform(20, 70, self.n))
        self.yaw_freq = np.radians(config.max_yaw_rate_deg_s) / np.maximum(self.yaw_amp, 1e-6) * rng.uniform(0.5, 1.0, self.n)
        self.yaw_phase = rng.uniform(0, 2 * np.pi, self.n)
        self._start_approach()
        self._update_yaw()

    def _start_approach(self):
        self.phase, self.phase_t = 'approach', 0.0
        x0, x1, y0, y1 = self.bounds
        point = self.rng.uniform([x0, y0], [x1, y1])
        self.goals = self._clamp(point + self.rng.normal(0, 6.0, (self.n, 2)))

    def _start_disperse(self):
        self.phase, self.phase_t = 'disperse', 0.0
        angle = self.rng.uniform(-np.pi, np.pi, self.n)
        reach = self.rng.uniform(40, 100, self.n)
        self.goals = self._clamp(self.xy + reach[:, None] * np.stack([np.cos(angle), np.sin(angle)], -1))

    def _start_wander(self):
        self.phase, self.phase_t = 'wander', 0.0
        self.phase_length = self.rng.uniform(20, 40)
        self.goals = self._clamp(self.xy + self.rng.uniform(-50, 50, (self.n, 2)))

    def _update_yaw(self):
        self.yaw = self.heading + self.yaw_amp * np.sin(self.yaw_freq * self.t + self.yaw_phase)

    def step(self, dt: float) -> None:
        self.t += dt
        self.phase_t += dt
        delta = self.goals - self.xy
        dist = np.linalg.norm(delta, axis=1)
        arrived = dist < self.APPROACH_RADIUS_M
        if self.phase == 'approach' and (arrived.all() or self.phase_t > 45):
            self._start_disperse()
        elif self.phase == 'disperse' and (arrived.all() or self.phase_t > 25):
            self._start_wander()
        elif self.phase == 'wander':
            if self.phase_t > self.phase_length:
                self._start_approach()
            elif arrived.any():  # a drone that reached its wander goal picks another near it
                new = self._clamp(self.xy[arrived] + self.rng.uniform(-50, 50, (int(arrived.sum()), 2)))
                self.goals[arrived] = new
        delta = self.goals - self.xy
        dist = np.maximum(np.linalg.norm(delta, axis=1), 1e-9)
        # slow down when close: no overshoot, and drones hover near the approach point
        desired = delta / dist[:, None] * np.minimum(self.speed, dist / 2.0)[:, None]
        self.velocity += (desired - self.velocity) * _lag(dt, 1.5)
        self.xy = self._clamp(self.xy + self.velocity * dt)
        speed = np.linalg.norm(self.velocity, axis=1)
        moving = speed > 0.5
        target_heading = np.arctan2(self.velocity[:, 1], self.velocity[:, 0])
        turn = np.clip(_wrap(target_heading - self.heading), -math.radians(30) * dt, math.radians(30) * dt)
        self.heading = np.where(moving, self.heading + turn, self.heading)
        self._update_yaw()


def make_flight(config: WorldConfig, landscape: Landscape, rng: np.random.Generator) -> _Flight:
    return {'waypoint': FormationFlight, 'explore': ExplorationFlight}[config.trajectory](config, landscape, rng)
