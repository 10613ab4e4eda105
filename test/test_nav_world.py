"""The world's navigation mode (world/nav.py): config validation, occupancy, the free lattice graph, geodesic
distances, stepping and determinism, on small maps rendered for real."""
import numpy as np
import pytest

from collab_perception.config import ConfigError
from collab_perception.world.landscape import BUILDING, generate_landscape
from collab_perception.world.meshes import Material
from collab_perception.world.nav import MOVES, STOP, NavConfig, build_nav_map, free_lattice, obstacle_grid

SMALL = NavConfig(region_m=24.0, image_size=16)


@pytest.fixture(scope='module')
def nav_map():
    return build_nav_map(SMALL, 0)


def _node_xy(cells, lattice_m):
    return (cells + 0.5) * lattice_m


def _distance_to_cells(points, occupied_rc, cell_m):
    """Distance of each point (P, 2) to the nearest occupied cell square (rows = y, columns = x)."""
    lo = occupied_rc[:, ::-1] * cell_m                      # (x, y) of each cell's south-west corner
    gap = np.maximum(np.maximum(lo[None] - points[:, None], points[:, None] - (lo[None] + cell_m)), 0.0)
    return np.sqrt((gap ** 2).sum(-1)).min(axis=1)


def test_config_rejects_a_bad_field_naming_it():
    with pytest.raises(ConfigError, match='lattice_m'):
        NavConfig(lattice_m=0.1)
    with pytest.raises(ConfigError, match='obstacle_band_m'):
        NavConfig(obstacle_band_m=(3.0, 1.0))
    with pytest.raises(ConfigError, match='nav.regon_m: unknown key; valid keys: seed, region_m'):
        NavConfig.from_mapping({'regon_m': 30})


def test_nodes_keep_their_clearance_from_an_obstacle_cell():
    cell_m, lattice_m, clearance_m = 0.5, 2.0, 0.6
    occupancy = np.zeros((48, 48), np.uint8)
    occupancy[10, 11] = 1            # x in [5.5, 6], y in [5, 5.5] m: 0.5 m east of the node at (5, 5) m
    cells, neighbours = free_lattice(occupancy, cell_m, lattice_m, clearance_m)
    xy = _node_xy(cells, lattice_m)
    assert len(cells) == 12 * 12 - 1 and not np.any(np.all(xy == (5.0, 5.0), axis=1))
    assert _distance_to_cells(xy, np.argwhere(occupancy), cell_m).min() >= clearance_m


def test_rendered_map_nodes_keep_their_clearance(nav_map):
    occupied = np.argwhere(nav_map.occupancy)
    assert len(occupied), 'the test map should hold obstacles'
    xy = _node_xy(nav_map.cells, nav_map.lattice_m)
    assert _distance_to_cells(xy, occupied, nav_map.occupancy_m).min() >= SMALL.clearance_m


def test_neighbours_are_symmetric_adjacent_lattice_cells(nav_map):
    nb = nav_map.neighbours
    assert nb.shape == (nav_map.nodes, 4) and (nb >= 0).any()
    for move in range(4):
        a = np.flatnonzero(nb[:, move] >= 0)
        b = nb[a, move]
        assert np.array_equal(nb[b, (move + 2) % 4], a)             # E<->W, N<->S
        assert np.array_equal(nav_map.cells[b] - nav_map.cells[a], np.broadcast_to(MOVES[move], (len(a), 2)))


def test_distances_are_geodesic_over_one_component(nav_map):
    source = nav_map.nodes // 2
    d = nav_map.distances_from(source)
    assert d[source] == 0.0
    assert d.max() <= nav_map.lattice_m * (nav_map.nodes - 1)      # every node reached
    a, move = np.nonzero(nav_map.neighbours >= 0)
    # a lattice graph is bipartite: neighbours are exactly one move nearer or farther
    assert np.allclose(np.abs(d[a] - d[nav_map.neighbours[a, move]]), nav_map.lattice_m)


def test_step_moves_collides_stops_and_rejects_bad_actions(nav_map):
    node, move = np.argwhere(nav_map.neighbours < 0)[0]
    assert nav_map.step(int(node), int(move)) == (node, True)
    node, move = np.argwhere(nav_map.neighbours >= 0)[0]
    assert nav_map.step(int(node), int(move)) == (nav_map.neighbours[node, move], False)
    assert nav_map.step(int(node), STOP) == (node, False)
    with pytest.raises(ValueError, match='action 5'):
        nav_map.step(int(node), 5)


def test_build_is_deterministic(nav_map):
    again = build_nav_map(SMALL, 0).arrays()
    for key, value in nav_map.arrays().items():
        assert np.array_equal(value, again[key]), key


def test_building_footprints_are_occupied_inside():
    """The roofs' ground projection is the footprint: walls alone draw only the outline, and the roofs lie
    above the obstacle band, so the inside is occupied only if the footprint is filled."""
    import cv2

    landscape = generate_landscape(7, 400.0, 0.25)
    v, tri = landscape.vertices, landscape.indices.reshape(-1, 3)
    roof = (v['attr'][tri[:, 0], 0] == BUILDING) & np.isin(v['attr'][tri[:, 0], 1],
                                                          (Material.ROOF_FLAT, Material.ROOF_TILED))
    roofs_xy = v['position'][tri[roof]][:, :, :2].astype(np.float64)
    region_m, cell_m = 40.0, 0.5
    origin = roofs_xy[0].mean(axis=0) - region_m / 2          # a region around the first building
    occupancy = obstacle_grid(landscape, origin, region_m, cell_m, SMALL.obstacle_band_m)
    footprint = np.zeros_like(occupancy)
    for t in roofs_xy:
        cv2.fillConvexPoly(footprint, np.round((t - origin) / cell_m * 16).astype(np.int32), 1, cv2.LINE_8, 4)
    inside = cv2.erode(footprint, np.ones((3, 3), np.uint8)).astype(bool)   # off the rasterized edge
    assert inside.sum() > 200                                  # at least one whole building (>= 8 m x 8 m)
    assert occupancy[inside].all()
