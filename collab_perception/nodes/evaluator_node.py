"""Evaluator: scores every drone's published segmentation, and its own-only prediction, on the same frames.

Where the camera source publishes ground truth (`camera/labels`), it joins per drone and stamp the labels,
the published `segmentation` and the drone's own prediction (`perception/output`: what it would publish
without any communication), and accumulates accuracy and mIoU of both (handshake paper §IV-D). From
`fusion/info` it takes latency (camera stamp -> segmentation published), fallbacks and whether help was
asked; from /swarm/frame the frames that happened, to check that every drone published exactly one
segmentation per camera frame; from /diagnostics every node's rejected-input counters. On exit it writes
`summary.json` to `output_dir`.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from collab_perception.msg import FusionInfo, PerceptionOutput

from ..classes import load_classes
from ..runtime import topics
from ..runtime.codec import CodecError, decode_tensor
from ..runtime.metrics import SegmentationScore
from ..runtime.readiness import MATCHED_PREFIX, NODE_KEY
from ..runtime.sync import StampJoiner
from .common import StatusPublisher, declare, declare_qos, declare_swarm, image_to_array, spin_nodes, stamp_to_ns


def percentile(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float('nan')


class DroneScore:
    def __init__(self, num_classes: int):
        self.fused = SegmentationScore(num_classes)
        self.own = SegmentationScore(num_classes)
        self.latency_ms: list[float] = []
        self.segmentations: dict[int, int] = {}   # stamp -> segmentations published for it
        self.infos = 0
        self.requested = 0
        self.fallback = 0
        self.received = 0

    def summary(self) -> dict:
        fused, own = self.fused.summary(), self.own.summary()
        return {
            'frames_scored': fused['frames'],
            'fused_accuracy': fused['overall_accuracy'] if fused['frames'] else None,
            'fused_miou': fused['miou'] if fused['frames'] else None,
            'own_accuracy': own['overall_accuracy'] if own['frames'] else None,
            'own_miou': own['miou'] if own['frames'] else None,
            'segmentations': sum(self.segmentations.values()),
            'requested_frames': self.requested,
            'frames_with_help': self.received,
            'fallback_frames': self.fallback,
            'latency_ms_p50': percentile(self.latency_ms, 50),
            'latency_ms_p95': percentile(self.latency_ms, 95),
        }


class EvaluatorNode(Node):
    def __init__(self):
        super().__init__('evaluator')
        self.drones, _ = declare_swarm(self)
        self.requesters = set(filter(None, declare(self, 'requesters')))
        self.output_dir = declare(self, 'output_dir')
        sensor_qos = declare_qos(self, 'sensor')
        local_qos = declare_qos(self, 'local')
        self.num_classes = len(load_classes())
        self.scores = {d: DroneScore(self.num_classes) for d in self.drones}
        self.joiners = {d: StampJoiner(('labels', 'fused', 'own'), capacity=64) for d in self.drones}
        self.frames: set[int] = set()
        self.diagnostics: dict[str, dict[str, str]] = {}
        for d in self.drones:
            self.create_subscription(Image, f'/{d}/{topics.LABELS}', self._on(d, 'labels'), sensor_qos)
            self.create_subscription(Image, f'/{d}/{topics.SEGMENTATION}', self._on(d, 'fused'), local_qos)
            self.create_subscription(PerceptionOutput, f'/{d}/{topics.PERCEPTION}', self._on(d, 'own'), local_qos)
            self.create_subscription(FusionInfo, f'/{d}/{topics.FUSION_INFO}', self._on_info(d), local_qos)
        self.create_subscription(Header, topics.FRAME, lambda m: self.frames.add(stamp_to_ns(m.stamp)), 10)
        self.create_subscription(DiagnosticArray, '/diagnostics', self.on_diagnostics, 50)
        self.status = StatusPublisher(self, 'swarm/evaluator', 'swarm')
        self.get_logger().info(f'scoring {", ".join(self.drones)}')

    def _on(self, drone: str, kind: str):
        def callback(msg):
            stamp = stamp_to_ns(msg.header.stamp)
            try:
                if kind == 'own':
                    value = decode_tensor(msg.own_classes, field='perception.own_classes', out_dtype=np.uint8)
                else:
                    value = image_to_array(msg, expect=('mono8',))
            except (ValueError, CodecError) as e:
                self.get_logger().warning(f'[{drone}] {kind} of frame {stamp}: {e}')
                return
            if kind == 'fused':
                seg = self.scores[drone].segmentations
                seg[stamp] = seg.get(stamp, 0) + 1
            joined = self.joiners[drone].add(kind, stamp, value)
            if joined:
                labels = joined['labels']
                score = self.scores[drone]
                if joined['fused'].shape == labels.shape and joined['own'].shape == labels.shape:
                    score.fused.add(joined['fused'], labels)
                    score.own.add(joined['own'], labels)
        return callback

    def _on_info(self, drone: str):
        def callback(msg: FusionInfo):
            s = self.scores[drone]
            s.infos += 1
            s.latency_ms.append(float(msg.latency_ms))
            s.requested += int(msg.requested)
            s.fallback += int(msg.fallback)
            s.received += int(len(msg.received) > 0)
        return callback

    def on_diagnostics(self, msg: DiagnosticArray):
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values
                      if kv.key != NODE_KEY and not kv.key.startswith(MATCHED_PREFIX)}
            if values:                          # nodes' counters (a status of matched endpoints only is not kept)
                self.diagnostics[status.name] = values

    def summary(self) -> dict:
        per_drone = {d: s.summary() for d, s in self.scores.items()}
        for d, s in self.scores.items():
            per_drone[d]['frames_without_segmentation'] = len(self.frames - set(s.segmentations))
            per_drone[d]['frames_with_several_segmentations'] = sum(1 for n in s.segmentations.values() if n > 1)
        requesters = [d for d in self.drones if d in self.requesters] or list(self.drones)
        fused, own = SegmentationScore(self.num_classes), SegmentationScore(self.num_classes)
        latency = []
        for d in requesters:
            fused.full.merge(self.scores[d].fused.full)
            own.full.merge(self.scores[d].own.full)
            latency += self.scores[d].latency_ms
        rejected = {name: int(values.get('rejected', 0)) for name, values in sorted(self.diagnostics.items())}
        return {
            'frames': len(self.frames),
            'requesters': requesters,
            'overall': {
                'fused_accuracy': fused.full.accuracy() if fused.full.pixels else None,
                'own_accuracy': own.full.accuracy() if own.full.pixels else None,
                'fused_miou': fused.full.miou() if fused.full.pixels else None,
                'own_miou': own.full.miou() if own.full.pixels else None,
                'fallback_frames': sum(self.scores[d].fallback for d in requesters),
                'latency_ms_p50': percentile(latency, 50),
                'latency_ms_p95': percentile(latency, 95),
            },
            'per_drone': per_drone,
            'rejected_by_node': rejected,
            'diagnostics': self.diagnostics,
        }

    def close(self):
        out = self.output_dir or os.path.join(os.environ.get('ROS_HOME', '.'), 'collab_perception',
                                              time.strftime('evaluator-%Y%m%d-%H%M%S'))
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, 'summary.json')
        summary = self.summary()
        with open(path, 'w') as f:
            json.dump(summary, f, indent=2)
        o = summary['overall']
        if o['fused_accuracy'] is not None:
            self.get_logger().info(f'{summary["frames"]} frames: fused accuracy {o["fused_accuracy"]:.4f}, own '
                                   f'{o["own_accuracy"]:.4f}; summary written to {path}')


def main(args=None) -> int:
    return spin_nodes([EvaluatorNode], args)


if __name__ == '__main__':
    raise SystemExit(main())
