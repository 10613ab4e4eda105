"""Segmentation and bandwidth metrics (numpy; used offline by learn/ and online by the evaluator node).

- overall accuracy and mean IoU from a confusion matrix (handshake paper §IV-D; MASH Table I), with an
  optional mask (MASH's obstructed region) and an ignore label (255: pixels without ground truth);
- BIS, the Bandwidth-Improvement Score (handshake paper Eq. 7):
      BIS = (delta - delta_low) / ((delta_high - delta_low) * omega)
  delta: the method's overall accuracy, delta_low / delta_high: Single degraded / Single normal, omega: the
  method's bandwidth in megabytes per frame. The paper's MB is 1024 of its kB (its Table I: CatAll's
  4096 kbpf gives omega = 4 and BIS 0.049; ours 1028.03 kbpf gives 0.812), so 1 MB = 2^20 bytes here.
- the ROC AUC of a score against binary labels (the probes of a match or of a descriptor).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

IGNORE = 255
MEGABYTE = 1 << 20   # bytes; BIS's unit (see the module docstring)


class ConfusionMatrix:
    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)   # rows: truth, columns: prediction

    def update(self, prediction: np.ndarray, truth: np.ndarray, mask: Optional[np.ndarray] = None) -> None:
        keep = truth != IGNORE
        if mask is not None:
            keep &= mask.astype(bool)
        t = truth[keep].astype(np.int64)
        p = prediction[keep].astype(np.int64)
        valid = (t < self.num_classes) & (p >= 0) & (p < self.num_classes)
        if not valid.all():
            bad = int((~valid).sum())
            raise ValueError(f'{bad} pixels have class ids outside 0..{self.num_classes - 1}')
        self.matrix += np.bincount(t * self.num_classes + p, minlength=self.num_classes ** 2).reshape(
            self.num_classes, self.num_classes)

    def merge(self, other: 'ConfusionMatrix') -> None:
        self.matrix += other.matrix

    @property
    def pixels(self) -> int:
        return int(self.matrix.sum())

    def accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float('nan')

    def mean_class_accuracy(self) -> float:
        """Per-class recall averaged over the classes present in the truth (MASH Table I's "mean accuracy")."""
        support = self.matrix.sum(1)
        present = support > 0
        if not present.any():
            return float('nan')
        return float(np.mean(np.diag(self.matrix)[present] / support[present]))

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for classes absent from both truth and prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid='ignore', divide='ignore'):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self) -> float:
        """Mean over the classes present in the truth or the prediction."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float('nan')


def bis(accuracy: float, lower: float, upper: float, bytes_per_frame: float) -> float:
    """Handshake paper Eq. 7 with omega in MB per frame. NaN when it is undefined (no bandwidth, or the
    bounds coincide)."""
    omega = bytes_per_frame / MEGABYTE
    if omega <= 0 or upper == lower:
        return float('nan')
    return (accuracy - lower) / ((upper - lower) * omega)


def gap_recovered(accuracy: float, lower: float, upper: float) -> float:
    """Fraction of the degraded -> normal accuracy gap a method recovers (the paper's 81.5% for ours)."""
    return (accuracy - lower) / (upper - lower) if upper != lower else float('nan')


@dataclass
class SegmentationScore:
    """Accumulates a method's results over frames."""

    num_classes: int
    full: ConfusionMatrix = field(init=False)
    region: ConfusionMatrix = field(init=False)
    frames: int = 0
    bytes: float = 0.0
    selections: int = 0
    correct_selections: int = 0

    def __post_init__(self):
        self.full = ConfusionMatrix(self.num_classes)
        self.region = ConfusionMatrix(self.num_classes)

    def add(self, prediction: np.ndarray, truth: np.ndarray, frame_bytes: float = 0.0,
            region: Optional[np.ndarray] = None, selected_correctly: Optional[bool] = None) -> None:
        self.full.update(prediction, truth)
        if region is not None:
            self.region.update(prediction, truth, region)
        self.frames += 1
        self.bytes += frame_bytes
        if selected_correctly is not None:
            self.selections += 1
            self.correct_selections += int(selected_correctly)

    def summary(self) -> dict:
        out = {'frames': self.frames, 'overall_accuracy': self.full.accuracy(), 'miou': self.full.miou(),
               'mean_class_accuracy': self.full.mean_class_accuracy(),
               'bytes_per_frame': self.bytes / self.frames if self.frames else 0.0}
        if self.region.pixels:
            out['region_accuracy'] = self.region.accuracy()
            out['region_miou'] = self.region.miou()
            out['region_mean_class_accuracy'] = self.region.mean_class_accuracy()
        if self.selections:
            out['selection_accuracy'] = self.correct_selections / self.selections
        return out


# ------------------------------------------------------------------------------------------ navigation
@dataclass
class NavOutcome:
    """One agent's episode (CollaVN §3.3): its final geodesic distance to its goal, the shortest start-goal
    distance, the length of the path it took, the steps it used and the episode's allowed maximum."""

    final_m: float
    shortest_m: float
    path_m: float
    steps: int
    max_steps: int
    success_m: float

    @property
    def success(self) -> bool:
        return self.final_m <= self.success_m


def nav_metrics(outcomes: list[NavOutcome]) -> dict[str, float]:
    """SR, DTS, SPL and SSR over agents and episodes (means over every agent of every episode):
        SR  = mean S                                   S: 1 when the final distance <= the success radius d_s
        DTS = mean max(d_final - d_s, 0)               distance to success, metres
        SPL = mean S * l / max(p, l)                   l: shortest start-goal length, p: the path taken
        SSR = mean S * T_max / max(T, 1)               T: steps used (to the stop action or T_max)
    SSR follows the paper's "success weighted by step ratio" (its CommonGoal N=2 SSR of 1.34 at SR 21.52%
    says it is not bounded by 1: faster successes count more)."""
    if not outcomes:
        return {'episodes': 0, 'success_rate': 0.0, 'dts': 0.0, 'spl': 0.0, 'ssr': 0.0}
    s = np.array([o.success for o in outcomes], np.float64)
    final = np.array([o.final_m for o in outcomes])
    short = np.array([o.shortest_m for o in outcomes])
    path = np.array([o.path_m for o in outcomes])
    steps = np.array([max(o.steps, 1) for o in outcomes], np.float64)
    tmax = np.array([o.max_steps for o in outcomes], np.float64)
    d_s = np.array([o.success_m for o in outcomes])
    return {'episodes': len(outcomes), 'success_rate': float(s.mean()),
            'dts': float(np.maximum(final - d_s, 0.0).mean()),
            'spl': float((s * short / np.maximum(np.maximum(path, short), 1e-9)).mean()),
            'ssr': float((s * tmax / steps).mean())}


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic; NaN when one class is absent)."""
    pos = int(labels.sum())
    neg = len(labels) - pos
    if not pos or not neg:
        return float('nan')
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind='stable')] = np.arange(len(scores))
    return float((ranks[labels].sum() - pos * (pos - 1) / 2) / (pos * neg))
