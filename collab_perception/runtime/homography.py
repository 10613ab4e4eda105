"""A plane between two views: homographies fitted robustly to cell matches (plain numpy).

MASH's supporters match the requester's cells one by one (shared/papers/mash-spatial-handshake.txt, §III), and
the cells they need most are the ones they match worst: where the requester is obstructed, its features
describe the obstruction, not the ground behind it. Our drones look down at nearly planar ground from 20-80 m,
so one homography maps most of a target view into a supporter's (fitted to the ground-truth correspondences of
the obstruction dataset: 0.7 px median error, 95 % of the cells within 4 px, obstructed cells alike). Fitted to
the confident matches of the clear cells, it carries the match into the obstructed ones: the geometric prior
over confident matches of the MASH issue.

    H, inliers = ransac_homography(src, dst, threshold_px=6.0)
    mapped = project(H, points)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

MIN_POINTS = 4          # a homography's degrees of freedom / 2
MIN_INLIERS = 8         # any four points fit some homography exactly: a plane needs more to agree
GEOMETRIES = ('none', 'homography')   # a MASH supporter's matches as the matcher gives them, or through the plane
RANSAC_BATCH = 50       # hypotheses scored at once
RANSAC_CONFIDENCE = 0.999   # stop once an all-inlier sample was this likely among those tried


def _normalizer(points: np.ndarray) -> np.ndarray:
    """[..., n, 2] -> [..., 3, 3]: centre the points and scale their mean distance to sqrt(2) (Hartley's
    normalization, which keeps the DLT well conditioned with pixel coordinates)."""
    centre = points.mean(-2)
    spread = np.linalg.norm(points - centre[..., None, :], axis=-1).mean(-1)
    scale = np.sqrt(2.0) / np.maximum(spread, 1e-9)
    t = np.zeros(points.shape[:-2] + (3, 3))
    t[..., 0, 0] = t[..., 1, 1] = scale
    t[..., 0, 2] = -scale * centre[..., 0]
    t[..., 1, 2] = -scale * centre[..., 1]
    t[..., 2, 2] = 1.0
    return t


def fit_homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares homography (normalized DLT) mapping src to dst; batched: [..., n, 2] each (n >= 4)
    -> [..., 3, 3] with H[2, 2] = 1 where it can be (a degenerate fit gives NaN, never an exception)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.shape[-1] != 2 or src.shape[-2] < MIN_POINTS:
        raise ValueError(f'fit_homography needs two [..., n >= {MIN_POINTS}, 2] point sets of one shape, got '
                         f'{src.shape} and {dst.shape}')
    ts, td = _normalizer(src), _normalizer(dst)
    ones = np.ones(src.shape[:-1] + (1,))
    x = np.einsum('...ij,...nj->...ni', ts, np.concatenate([src, ones], -1))
    y = np.einsum('...ij,...nj->...ni', td, np.concatenate([dst, ones], -1))
    zero = np.zeros_like(x)
    rows_u = np.concatenate([x, zero, -y[..., 0:1] * x], -1)
    rows_v = np.concatenate([zero, x, -y[..., 1:2] * x], -1)
    a = np.concatenate([rows_u, rows_v], -2)
    with np.errstate(all='ignore'):
        try:
            _, _, vt = np.linalg.svd(a)
        except np.linalg.LinAlgError:
            return np.full(src.shape[:-2] + (3, 3), np.nan)
        h = vt[..., -1, :].reshape(src.shape[:-2] + (3, 3))
        h = np.linalg.inv(td) @ h @ ts
        return h / h[..., 2:3, 2:3]


def project(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points [n, 2] through homographies [..., 3, 3] -> [..., n, 2]; NaN where a point maps to infinity."""
    points = np.asarray(points, dtype=np.float64)
    q = np.einsum('...ij,nj->...ni', h, np.concatenate([points, np.ones((len(points), 1))], -1))
    with np.errstate(all='ignore'):
        w = np.where(np.abs(q[..., 2:3]) < 1e-12, np.nan, q[..., 2:3])
        return q[..., :2] / w


def ransac_homography(src: np.ndarray, dst: np.ndarray, threshold_px: float = 6.0, iterations: int = 300,
                      rng: Optional[np.random.Generator] = None, refinements: int = 2,
                      min_inliers: int = MIN_INLIERS) -> tuple[Optional[np.ndarray], np.ndarray]:
    """The homography most matches [n, 2] -> [n, 2] agree with (within `threshold_px`), RANSAC over minimal
    four-point samples (in batches, at most `iterations`, stopping once the best inlier share found makes an
    all-inlier sample RANSAC_CONFIDENCE likely among those tried), refitted on its inliers `refinements`
    times. -> (H [3, 3], inliers [n] bool), or
    (None, all False) when no hypothesis has `min_inliers` matches agreeing (a minimal sample always fits its
    own four points). Deterministic for a given `rng` (default: seed 0), so a supporter answers the same
    request the same way."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n = len(src)
    none = np.zeros(n, dtype=bool)
    needed = max(MIN_POINTS, min_inliers)
    if n < needed:
        return None, none
    rng = np.random.default_rng(0) if rng is None else rng
    h, inliers, tried = None, none, 0
    while tried < iterations:
        batch = min(RANSAC_BATCH, iterations - tried)
        samples = np.argsort(rng.random((batch, n)), axis=1)[:, :MIN_POINTS]
        hypotheses = fit_homography(src[samples], dst[samples])
        with np.errstate(invalid='ignore'):
            errors = np.linalg.norm(project(hypotheses, src) - dst[None], axis=-1)     # [batch, n]
            votes = np.nan_to_num(errors, nan=np.inf) < threshold_px
        best = int(votes.sum(1).argmax())
        if h is None or votes[best].sum() > inliers.sum():
            h, inliers = hypotheses[best], votes[best]
        tried += batch
        # enough samples that one of them was all inliers, at the best inlier share found so far
        share = inliers.sum() / n
        if share >= 1.0 or tried * -np.log1p(-share ** MIN_POINTS) >= -np.log(1.0 - RANSAC_CONFIDENCE):
            break
    for _ in range(refinements):
        if inliers.sum() < needed:
            break
        refit = fit_homography(src[inliers], dst[inliers])
        if not np.isfinite(refit).all():
            break
        with np.errstate(invalid='ignore'):
            agree = np.nan_to_num(np.linalg.norm(project(refit, src) - dst, axis=-1), nan=np.inf) < threshold_px
        if agree.sum() < inliers.sum():
            break
        h, inliers = refit, agree
    if inliers.sum() < needed or not np.isfinite(h).all():
        return None, none
    return h, inliers


@dataclass
class Plane:
    """The ground plane one supporter's matches agree on, per requester cell: where the plane puts it (uv
    [C, 2] pixels, NaN where it maps to infinity), whether that is inside the supporter's view, the
    supporter's cell under it (`landing`), whether the matcher's own match agrees with it (`agrees`), how far
    the cell is from the nearest voter that agreed (`distance`, in cells) and the share of the C cells that
    agreed (`support`)."""
    uv: np.ndarray
    inside: np.ndarray
    landing: np.ndarray
    agrees: np.ndarray
    distance: np.ndarray
    support: float


PLANE_FEATURES = ('landing log-odds', 'agrees', 'agrees x match log-odds', 'distance / 8 (at most 1)',
                  'support', 'bias')


def fit_plane(centres: np.ndarray, confidence: np.ndarray, match: np.ndarray, positions: np.ndarray,
              no_match: int, image_size: tuple[int, int], cell_size: int, min_confidence: float,
              threshold_px: float, min_support: float) -> Optional[Plane]:
    """The plane a supporter's matches agree on (plane_matches' arguments), or None when no plane has
    `min_support` of the cells agreeing."""
    cells = len(centres)
    voters = (match != no_match) & (confidence >= min_confidence) & np.isfinite(positions).all(-1)
    plane, inliers = ransac_homography(centres[voters], positions[voters], threshold_px,
                                       min_inliers=max(MIN_INLIERS, int(np.ceil(min_support * cells))))
    if plane is None:
        return None
    h, w = image_size
    uv = project(plane, centres)
    with np.errstate(invalid='ignore'):
        inside = np.isfinite(uv).all(-1) & (uv[:, 0] >= -0.5) & (uv[:, 0] <= w - 0.5) & \
            (uv[:, 1] >= -0.5) & (uv[:, 1] <= h - 0.5)
        agrees = (match != no_match) & (np.linalg.norm(positions - uv, axis=-1) < threshold_px)
    grid_w, grid_h = w // cell_size, h // cell_size
    col = np.clip(np.floor((np.nan_to_num(uv[:, 0]) + 0.5) / cell_size), 0, grid_w - 1)
    row = np.clip(np.floor((np.nan_to_num(uv[:, 1]) + 0.5) / cell_size), 0, grid_h - 1)
    agreed = centres[voters][inliers]
    distance = np.sqrt(((centres[:, None] - agreed[None]) ** 2).sum(-1)).min(1) / cell_size
    return Plane(uv, inside, (row * grid_w + col).astype(np.int64), agrees, distance, inliers.sum() / cells)


def _log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def plane_cell_features(plane: Plane, confidence: np.ndarray, landing_confidence: np.ndarray) -> np.ndarray:
    """What a plane cell's expected accuracy is estimated from, [C, len(PLANE_FEATURES)]: the supporter's own
    expected accuracy where the cell lands, whether (and how surely) the matcher's own match agrees, how far
    the nearest agreeing voter is and the plane's support."""
    agrees = plane.agrees.astype(np.float64)
    return np.stack([_log_odds(np.asarray(landing_confidence)[plane.landing]), agrees,
                     agrees * _log_odds(confidence), np.minimum(plane.distance, 8.0) / 8.0,
                     np.full(len(agrees), plane.support), np.ones(len(agrees))], 1)


def plane_matches(centres: np.ndarray, confidence: np.ndarray, match: np.ndarray, positions: np.ndarray,
                  no_match: int, image_size: tuple[int, int], cell_size: int, min_confidence: float,
                  threshold_px: float, min_support: float, landing_confidence: Optional[np.ndarray] = None,
                  weight: Optional[float] = None, coefficients: Optional[Sequence[float]] = None
                  ) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One supporter's cell matches through the ground plane they agree on (MASH with a planar prior).

    centres [C, 2] (the requester's cell centres, pixels), confidence [C], match [C] (source cell, `no_match`
    for none) and positions [C, 2] (where each cell lands in the supporter, NaN for none), as the matcher gives
    them. The matches from `min_confidence` on vote (RANSAC within `threshold_px`); a plane that at least
    `min_support` of the C cells agree with gives every cell its position, the unmatched ones included, and a
    cell the plane maps outside the supporter's view has no match. The confidence of the others: without a
    `weight`, the plane's support (the share of cells that agree); with one (accuracy_confidence models, whose
    `landing_confidence` is the supporter's own expected accuracy per cell of its grid, [C_supporter]),
    `weight` times an expected accuracy of the plane's patch there: with `coefficients` a logistic model of plane_cell_features (fitted on training frames,
    learn/mash_eval.fit_plane_confidence), else the supporter's own expected accuracy where the cell lands (a
    patch is right where the plane is right and the supporter's segmentation is); the matcher's own confidence
    where its match agrees with the plane and is surer. -> (confidence, match, positions) like the inputs,
    or None when no plane has that support (keep the matcher's own)."""
    plane = fit_plane(centres, confidence, match, positions, no_match, image_size, cell_size, min_confidence,
                      threshold_px, min_support)
    if plane is None:
        return None
    if weight is None:
        plane_confidence = np.full(len(centres), plane.support)
    else:
        if landing_confidence is None:
            raise ValueError('plane_matches with a weight needs the supporter\'s landing_confidence')
        if coefficients is None:
            expected = np.asarray(landing_confidence, dtype=np.float64)[plane.landing]
        else:
            expected = 1 / (1 + np.exp(-plane_cell_features(plane, confidence, landing_confidence)
                                       @ np.asarray(coefficients, dtype=np.float64)))
        plane_confidence = np.minimum(weight * expected, 1.0)
        plane_confidence = np.where(plane.agrees, np.maximum(plane_confidence, confidence), plane_confidence)
    inside = plane.inside
    return (np.where(inside, plane_confidence, 0.0), np.where(inside, plane.landing, no_match).astype(np.int64),
            np.where(inside[:, None], plane.uv, np.nan))
