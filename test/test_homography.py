"""runtime/homography: the DLT recovers a known plane-to-plane map, RANSAC finds it among outliers and says so
when it cannot, plane cells take the supporter's expected accuracy where they land, and bad input is refused
by name."""
import numpy as np
import pytest

from collab_perception.runtime.homography import (PLANE_FEATURES, fit_homography, fit_plane, plane_cell_features,
                                                  plane_matches, project, ransac_homography)

TRUE = np.array([[0.9, -0.25, 14.0], [0.2, 1.1, -6.0], [4e-4, -2e-4, 1.0]])


def grid_points(n=8, size=128):
    xs = (np.arange(n) + 0.5) * size / n
    return np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)


def test_the_dlt_recovers_a_known_homography_and_batches():
    src = grid_points()
    dst = project(TRUE, src)
    assert np.allclose(fit_homography(src, dst), TRUE, atol=1e-8)
    batch = fit_homography(np.stack([src, src]), np.stack([dst, src]))
    assert batch.shape == (2, 3, 3)
    assert np.allclose(batch[0], TRUE, atol=1e-8) and np.allclose(batch[1], np.eye(3), atol=1e-8)


def test_ransac_finds_the_plane_among_outliers_and_flags_them():
    rng = np.random.default_rng(1)
    src = grid_points(10)
    dst = project(TRUE, src) + rng.normal(0, 0.5, (len(src), 2))
    wrong = rng.random(len(src)) < 0.6                              # 60 % of the matches are anywhere
    dst[wrong] = rng.uniform(0, 128, (int(wrong.sum()), 2))
    h, inliers = ransac_homography(src, dst, threshold_px=3.0, iterations=400)
    assert h is not None
    assert np.abs(project(h, src) - project(TRUE, src)).max() < 1.5
    assert inliers[~wrong].mean() > 0.95 and inliers[wrong].mean() < 0.05
    again, _ = ransac_homography(src, dst, threshold_px=3.0, iterations=400)
    assert np.array_equal(h, again)                                  # same request, same answer


def test_ransac_gives_up_without_a_consistent_plane():
    rng = np.random.default_rng(2)
    h, inliers = ransac_homography(grid_points(2)[:3], grid_points(2)[:3])
    assert h is None and not inliers.any()                           # three points fix no homography
    src = rng.uniform(0, 128, (30, 2))
    h, inliers = ransac_homography(src, rng.uniform(0, 128, (30, 2)), threshold_px=0.01, iterations=50)
    assert h is None and not inliers.any()
    line = np.stack([np.arange(10.0), np.arange(10.0)], -1)          # collinear: degenerate, no exception
    h, _ = ransac_homography(line, line * 2, iterations=20)
    assert h is None or np.isfinite(h).all()


def test_bad_point_sets_are_refused_by_name():
    with pytest.raises(ValueError, match='fit_homography needs'):
        fit_homography(np.zeros((5, 2)), np.zeros((6, 2)))
    with pytest.raises(ValueError, match='n >= 4'):
        fit_homography(np.zeros((3, 2)), np.zeros((3, 2)))


def test_plane_cells_take_the_supporters_expected_accuracy_where_they_land():
    """With the supporter's own expected accuracy per cell of its grid, a plane cell's confidence is `weight`
    times its value under the cell's new position; a matched cell that agrees with the plane keeps its own
    confidence where that is higher; a cell the plane sends out of view has no match."""
    centres = grid_points(16).astype(np.float64)                     # a 16 x 16 grid of 8-px cells
    cells = len(centres)
    shift = np.array([[1.0, 0.0, 12.0], [0.0, 1.0, -5.0], [0.0, 0.0, 1.0]])
    truth = project(shift, centres)
    rng = np.random.default_rng(4)
    matched = rng.random(cells) < 0.5                                # the rest, e.g. obstructed: no match
    positions = np.where(matched[:, None], truth, np.nan)
    confidence = np.where(matched, np.where(np.arange(cells) % 2 == 0, 0.95, 0.55), 0.9)
    match = np.where(matched, np.arange(cells), cells)
    landing = rng.uniform(0.2, 1.0, cells)                           # per cell of the supporter's grid
    conf, idx, pos = plane_matches(centres, confidence, match, positions, cells, (128, 128), 8, min_confidence=0.5,
                                   threshold_px=6.0, min_support=24 / cells, landing_confidence=landing, weight=0.8)
    inside = (truth >= -0.5).all(-1) & (truth <= 127.5).all(-1)
    assert np.allclose(pos[inside], truth[inside], atol=1e-6) and np.isnan(pos[~inside]).all()
    under = (np.floor((truth[:, 1] + 0.5) / 8) * 16 + np.floor((truth[:, 0] + 0.5) / 8)).astype(int)
    assert np.array_equal(idx[inside], under[inside]) and (idx[~inside] == cells).all() and (conf[~inside] == 0).all()
    expected = np.where(matched, np.maximum(confidence, 0.8 * landing[np.clip(under, 0, cells - 1)]),
                        0.8 * landing[np.clip(under, 0, cells - 1)])
    assert np.allclose(conf[inside], expected[inside])
    # too few voters for the support asked: no plane, the caller keeps the matcher's own matches
    assert plane_matches(centres, confidence, match, positions, cells, (128, 128), 8, min_confidence=0.99,
                         threshold_px=6.0, min_support=24 / cells, landing_confidence=landing) is None


def test_a_fitted_plane_confidence_is_a_logistic_model_of_the_plane_cell_features():
    """With `coefficients`, a plane cell's confidence is weight x sigmoid(features . coefficients), capped at 1;
    the features say where the cell lands, whether the matcher agrees, how far the nearest agreeing voter is
    and how many agreed."""
    centres = grid_points(16).astype(np.float64)
    cells = len(centres)
    truth = project(np.array([[1.0, 0.0, 6.0], [0.0, 1.0, 3.0], [0.0, 0.0, 1.0]]), centres)
    matched = np.arange(cells) < 128                                 # the top half of the view matched
    positions = np.where(matched[:, None], truth, np.nan)
    confidence = np.where(matched, 0.7, 0.9)
    match = np.where(matched, np.arange(cells), cells)
    landing = np.full(cells, 0.8)
    args = (centres, confidence, match, positions, cells, (128, 128), 8)
    settings = dict(min_confidence=0.5, threshold_px=6.0, min_support=24 / cells)
    plane = fit_plane(*args, **settings)
    assert plane.support == 0.5 and plane.agrees[matched].all() and not plane.agrees[~matched].any()
    assert (plane.distance[matched] == 0).all() and plane.distance[-1] == 8.0    # bottom row: 8 rows from a voter
    features = plane_cell_features(plane, confidence, landing)
    assert features.shape == (cells, len(PLANE_FEATURES))
    assert np.allclose(features[:, 0], np.log(0.8 / 0.2)) and np.allclose(features[:, -1], 1.0)
    coefficients = [0.5, 0.1, 0.3, -1.5, 0.5, -0.4]
    conf, _, _ = plane_matches(*args, **settings, landing_confidence=landing, weight=1.2, coefficients=coefficients)
    expected = np.minimum(1.2 / (1 + np.exp(-features @ np.array(coefficients))), 1.0)
    expected = np.where(plane.agrees, np.maximum(expected, confidence), expected)
    assert np.allclose(conf[plane.inside], expected[plane.inside])
    assert conf[~matched & plane.inside].max() < conf[matched & plane.inside].min()   # far from the voters: lower
