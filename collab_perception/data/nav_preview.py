"""A PNG of one navigation episode: its map and the images its agents see.

Left: the map's occupancy grid (north up, metres from the region's south-west corner), the free lattice
nodes and their edges, every agent's start (a coloured circle) and its shortest path to its goal, the goal
(a star, with an arrow in the direction of the goal view). Right: the goal image(s), enlarged, and each
agent's start panorama, four views in a row (E, N, W, S).
"""
from __future__ import annotations

import os
from typing import Union

import numpy as np

from ..world.nav import VIEW_YAWS_DEG
from .nav import NavDataset, shortest_path

VIEW_NAMES = ('E', 'N', 'W', 'S')
AGENT_COLOURS = ('#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#42d4f4')
FREE_COLOUR, OBSTACLE_COLOUR = '#f3efe6', '#5b5b5b'
COMMON_GOAL_COLOUR = '#daa520'
TILE_IN = 1.25          # inches of one panorama view in the figure


def _agent_colour(agent: int) -> str:
    return AGENT_COLOURS[agent % len(AGENT_COLOURS)]


def _draw_map(ax, nav_map, episode) -> None:
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap

    side = nav_map.occupancy.shape[0] * nav_map.occupancy_m
    # occupancy rows are y: origin='lower' puts row 0 at the bottom, north up
    ax.imshow(nav_map.occupancy, origin='lower', extent=(0, side, 0, side), interpolation='nearest',
              cmap=ListedColormap([FREE_COLOUR, OBSTACLE_COLOUR]), vmin=0, vmax=1)
    xy = (nav_map.cells + 0.5) * nav_map.lattice_m
    forward = nav_map.neighbours[:, :2]          # east and north: every edge once
    a, k = np.nonzero(forward >= 0)
    ax.add_collection(LineCollection(np.stack([xy[a], xy[forward[a, k]]], axis=1), colors='#b9b4a8',
                                     linewidths=0.6, zorder=1))
    ax.scatter(xy[:, 0], xy[:, 1], s=4, c='#8c8678', zorder=2, linewidths=0)
    # paths of agents sharing a goal overlap: shift each a little
    shift = (np.arange(episode.team) - (episode.team - 1) / 2) * 0.12 * nav_map.lattice_m
    for i, (start, goal) in enumerate(zip(episode.starts, episode.goals)):
        colour = _agent_colour(i)
        path = xy[shortest_path(nav_map, start, goal)] + shift[i]
        ax.plot(path[:, 0], path[:, 1], color=colour, linewidth=2.0, zorder=3, solid_capstyle='round')
        ax.scatter(*xy[start], s=70, c=colour, edgecolors='black', linewidths=0.8, zorder=5)
        ax.annotate(f'A{i + 1}', xy[start], xytext=(5, 4), textcoords='offset points', fontsize=8,
                    fontweight='bold', color=colour, zorder=6)
    for goal, view, colour in _goals(episode):
        yaw = np.radians(VIEW_YAWS_DEG[view])
        ax.annotate('', xy[goal] + 1.2 * nav_map.lattice_m * np.array([np.cos(yaw), np.sin(yaw)]), xy[goal],
                    arrowprops=dict(arrowstyle='->', color=colour, linewidth=1.6), zorder=6, annotation_clip=False)
        ax.scatter(*xy[goal], s=260, marker='*', c=colour, edgecolors='black', linewidths=0.8, zorder=7)
    ax.set_xlim(0, side)
    ax.set_ylim(0, side)
    ax.set_xlabel('east (m)', fontsize=8)
    ax.set_ylabel('north (m)', fontsize=8)
    ax.tick_params(labelsize=7)


def _goals(episode) -> list[tuple[int, int, str]]:
    """(goal node, goal view, colour) of each distinct goal: CommonGoal's one in gold, else the agent's."""
    if episode.task == 'common':
        return [(episode.goals[0], episode.goal_views[0], COMMON_GOAL_COLOUR)]
    return [(g, v, _agent_colour(i)) for i, (g, v) in enumerate(zip(episode.goals, episode.goal_views))]


def _show(ax, image, title: str, colour: str = 'black', fontsize: float = 7) -> None:
    ax.imshow(image, interpolation='nearest')
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=fontsize, pad=2, color=colour)
    for spine in ax.spines.values():
        spine.set_color(colour)
        spine.set_linewidth(1.5)


def preview_nav(dataset_or_path: Union[NavDataset, str], split: str, index: int, out_png: str) -> str:
    """Write the PNG of episode `index` of `split` to `out_png` and return its path."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    ds = dataset_or_path if isinstance(dataset_or_path, NavDataset) else NavDataset(dataset_or_path)
    episodes = ds.episodes(split)
    if not 0 <= index < len(episodes):
        raise ValueError(f'{ds.path}: split {split} has episodes 0..{len(episodes) - 1}, not {index}')
    episode = episodes[index]
    nav_map = ds.map(split, episode.map_id)
    goals = _goals(episode)

    goal_rows = min(2.0, len(VIEW_NAMES) / len(goals))      # goal images as large as the width allows
    right_h = (goal_rows + episode.team) * TILE_IN * 1.18
    height = max(right_h, 4.6) + 0.6
    fig = plt.figure(figsize=(height - 0.6 + len(VIEW_NAMES) * TILE_IN + 0.9, height))
    lo, hi = ds.config.band_m(episode.band)
    fig.suptitle(f'{split} · map {episode.map_id} · {episode.task} · team {episode.team} · {episode.band} '
                 f'({lo:g}-{hi:g} m) · shortest ' + ', '.join(f'{d:g}' for d in episode.shortest_m) + ' m',
                 fontsize=9.5, y=0.985)
    left, right = fig.subfigures(1, 2, width_ratios=[height - 0.6, len(VIEW_NAMES) * TILE_IN + 0.9])
    ax = left.add_axes((0.13, 0.09, 0.84, 0.82))
    _draw_map(ax, nav_map, episode)
    ax.set_title(f'map {episode.map_id}: {nav_map.nodes} nodes, {nav_map.lattice_m:g} m lattice; '
                 f'success within {ds.config.success_m:g} m', fontsize=8)

    grid = right.add_gridspec(2, 1, height_ratios=[goal_rows, episode.team], left=0.17, right=0.98,
                              top=0.92, bottom=0.03, hspace=0.18)
    goal_grid = grid[0].subgridspec(1, len(goals), wspace=0.08)
    for g, (goal, view, colour) in enumerate(goals):
        owner = 'goal' if episode.task == 'common' else f'A{g + 1} goal'
        _show(right.add_subplot(goal_grid[0, g]), nav_map.rgb[goal, view],
              f'{owner}\nnode {goal}, view {VIEW_NAMES[view]}', colour=colour, fontsize=7)
    view_grid = grid[1].subgridspec(episode.team, len(VIEW_NAMES), wspace=0.05, hspace=0.3)
    for i, start in enumerate(episode.starts):
        colour = _agent_colour(i)
        for v, name in enumerate(VIEW_NAMES):
            view_ax = right.add_subplot(view_grid[i, v])
            _show(view_ax, nav_map.rgb[start, v], name, colour=colour)
            if v == 0:
                view_ax.set_ylabel(f'A{i + 1} start\nnode {start}\n{episode.shortest_m[i]:g} m', fontsize=7,
                                   color=colour)
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
