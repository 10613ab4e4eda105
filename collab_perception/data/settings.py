"""The papers' experimental settings as dataset recipes.

Handshake paper (Who2com), §IV-B "Proposed Experimental Settings": five drones, one degraded target agent
(Gaussian blur of random size + Gaussian noise), the others "normal":
  hidden-target        (1) waypoint following; one normal agent is replaced by the un-degraded target view;
                       no 3D warping ("a sanity check on communication").
  accurate-pose        (2) waypoint following; the target's view partially overlaps some normals; normals'
                       views are warped to the target with their depth and the accurate relative pose.
  noisy-pose           (3) as (2) with noise in the agents' positions, so warped views are misaligned.
  random-exploration   (4) accurate pose; agents approach a point, disperse and wander.
MASH, §IV "Dataset": six drones, a 3D obstruction in front of the target camera, labels of the
unobstructed surface, dense ground-truth correspondences for training; no pose or depth at inference:
  obstruction
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Setting:
    name: str
    paper: str                   # where the setting comes from
    summary: str
    trajectory: str              # WorldConfig.trajectory
    drones: int
    degrade_target: bool         # blur + noise on the target's RGB
    hidden_target: bool          # one normal slot carries the clean target view
    warp: Optional[str]          # None, 'accurate' or 'noisy': normals warped into the target view
    obstructions: bool


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting('hidden-target', 'Who2com §IV-B (1), Table I "Hidden Target View"',
            'waypoint formation; degraded target; one normal agent replaced by the clean target view; no warping',
            'waypoint', 5, True, True, None, False),
    Setting('accurate-pose', 'Who2com §IV-B (2), Table I "Accurate Pose"',
            'waypoint formation; degraded target; normals warped to the target with depth + accurate pose',
            'waypoint', 5, True, False, 'accurate', False),
    Setting('noisy-pose', 'Who2com §IV-B (3), Table I "Inaccurate Pose"',
            'waypoint formation; degraded target; normals warped with noisy positions (misaligned)',
            'waypoint', 5, True, False, 'noisy', False),
    Setting('random-exploration', 'Who2com §IV-B (4), Table I "Random Exploration"',
            'approach / disperse / wander; degraded target; normals warped with accurate pose',
            'explore', 5, True, False, 'accurate', False),
    Setting('obstruction', 'MASH §IV "Dataset", Table I',
            '6 drones in loose formation; a 3D obstruction in front of the target; no pose/depth needed at '
            'inference (correspondences for training)',
            'waypoint', 6, False, False, None, True),
)}
