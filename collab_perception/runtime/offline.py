"""The handshakes over dataset frames without ROS: the same methods, the same wire dtypes, in one process.

Used to check the swarm against an offline run of the very same models on the very same frames (the
replay bridge publishes a dataset split; this replays it in-process): per frame, the target encodes its
view, every supporter encodes its own and answers the query with a score, the target connects to the
argmax (or, with the When2com gate, to the supporters that pass the threshold, possibly none), and the
selected features cross the swarm codec's round trip before fusion.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Iterable

import numpy as np

from .codec import DEFAULT_LIMITS, decode_tensor, encode_tensor, tensor_fields
from .handshake import get_selector
from .metrics import SegmentationScore
from .methods import Method


def slot_order(target: int, agents: int) -> list[int]:
    """Dataset slots in drone order: the target first, then the others in slot order."""
    return [target] + [i for i in range(agents) if i != target]


def handshake_offline(method: Method, snapshots: Iterable[dict], feature_dtype: str = 'float16',
                      select: str = 'argmax', threshold: float = 0.0, top_n: int = 1) -> dict:
    """Who2com / When2com over `snapshots`; `select`, `threshold` and `top_n` as the requester's fusion node
    takes them (config: select, score_threshold, top_n). Also counts the feature maps received and the frames
    with none."""
    fused = SegmentationScore(method.num_classes)
    own = SegmentationScore(method.num_classes)
    selector = get_selector(select)
    feature_maps = alone = 0
    for snap in snapshots:
        order = slot_order(int(snap['target_index']), snap['rgb'].shape[0])
        mine = method.encode(snap['rgb'][order[0]])
        scores, features = {}, {}
        for slot in order[1:]:
            theirs = method.encode(snap['rgb'][slot])
            scores[slot] = float(method.match(mine.query, theirs.key)[0])
            features[slot] = theirs.features
        selected = selector(scores, mine.self_score, top_n, threshold)
        received = {s: decode_tensor(encode_tensor(features[s], feature_dtype)) for s in selected}
        feature_maps += len(received)
        alone += not received
        labels = snap['labels'][order[0]]
        fused.add(method.fuse(mine, received, {s: scores[s] for s in selected}), labels)
        own.add(mine.own_classes, labels)
    return {'frames': fused.frames, 'fused_accuracy': fused.full.accuracy(), 'own_accuracy': own.full.accuracy(),
            'fused_miou': fused.full.miou(), 'own_miou': own.full.miou(), 'feature_maps': feature_maps,
            'frames_without_features': alone}


def mash_offline(method: Method, snapshots: Iterable[dict], query_dtype: str = 'uint8',
                 patch_dtype: str = 'uint8', patch_budget: float = 0.05) -> dict:
    """MASH's spatial handshake over dataset frames in one process, as the swarm runs it (MASH §III): the
    target's query map and every supporter's patches cross the codec; supporter slots in drone order.
    Also scores the obstructed region (the cells the target cannot see, MASH Table I)."""
    fused, own = SegmentationScore(method.num_classes), SegmentationScore(method.num_classes)
    cells_sent = []
    max_cells = method.max_cells(patch_budget, patch_dtype)
    for snap in snapshots:
        order = slot_order(int(snap['target_index']), snap['rgb'].shape[0])
        mine = method.encode(snap['rgb'][order[0]])
        # what fusion receives from perception on the drone's local topic
        mine.features = decode_tensor(encode_tensor(mine.features, method.local_feature_dtype or 'float32'))
        query = decode_tensor(encode_tensor(mine.query, query_dtype))
        need = method.decode_need(method.need_map(mine.self_confidence).tobytes())   # Request.need, if any
        received = {}
        for slot, agent in enumerate(order[1:]):
            p = method.patches(query, snap['rgb'][agent], max_cells=max_cells, need=need)
            msg = SimpleNamespace(confidence=tensor_fields(), class_probs=tensor_fields(), labels=tensor_fields())
            method.encode_reply(p, patch_dtype, msg)
            received[slot] = method.decode_reply(msg, DEFAULT_LIMITS)
            cells_sent.append(p.count)
        labels = snap['labels'][order[0]]
        mask = snap['obstruction_mask'][order[0]] if 'obstruction_mask' in snap else None
        fused.add(method.fuse(mine, received), labels, region=mask)
        own.add(mine.own_classes, labels, region=mask)
    return {'frames': fused.frames, 'fused_accuracy': fused.full.accuracy(), 'own_accuracy': own.full.accuracy(),
            'fused_miou': fused.full.miou(), 'own_miou': own.full.miou(),
            'fused_obstructed_accuracy': fused.region.accuracy() if fused.region.pixels else None,
            'own_obstructed_accuracy': own.region.accuracy() if own.region.pixels else None,
            'mean_cells_per_supporter': float(np.mean(cells_sent)) if cells_sent else 0.0}
