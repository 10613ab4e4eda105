"""Link: a fault-injecting radio between the drones, in the spirit of netem but on the DDS topics.

With `swarm.link.enabled`, every comm message a drone sends goes to /radio/<topic> (the node plan remaps the
senders' publishers there) and this node forwards it to <topic> for the receivers: it drops each message with
probability `link.loss`, and delays the others by `link.delay_ms` plus a uniform `link.jitter_ms`. The three
can be changed on the running node (`ros2 param set /swarm/link link.loss 0.3`), which is how
bench/bench_faults.py starts and ends a lossy or slow spell in the middle of a flight. Forwarded and dropped
messages are counted per comm kind on /diagnostics. The monitor measures what is delivered.
"""
from __future__ import annotations

import heapq
import itertools
from collections import Counter

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node

from ..runtime import topics
from .common import COMM_TYPES, StatusPublisher, accept_run_time_parameters, declare, declare_qos, spin_nodes


class LinkNode(Node):
    def __init__(self):
        super().__init__('link')
        self.loss = declare(self, 'link.loss')
        self.delay_ms = declare(self, 'link.delay_ms')
        self.jitter_ms = declare(self, 'link.jitter_ms')
        self.rng = np.random.default_rng(declare(self, 'link.seed'))
        relayed = [t for t in declare(self, 'link_topics') if t]
        qos = declare_qos(self, 'comm')
        self.forwarded: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self._queue: list = []                # (due_ns, sequence, publisher, payload, kind)
        self._sequence = itertools.count()
        for topic in relayed:
            kind = topics.topic_kind(topic)
            pub = self.create_publisher(COMM_TYPES[kind], topic, qos)
            self.create_subscription(COMM_TYPES[kind], topics.RADIO_PREFIX + topic,
                                     lambda data, p=pub, k=kind: self.on_message(p, k, data), qos, raw=True)
        self.timer = self.create_timer(1.0, self.release, autostart=False)   # armed for the next due message
        accept_run_time_parameters(self, lambda name, value: setattr(self, name.split('.', 1)[1], value))
        self.status = StatusPublisher(self, 'swarm/link', 'swarm', self.status_values)
        self.get_logger().info(f'relaying {len(relayed)} comm topics: loss {self.loss:g}, delay {self.delay_ms:g} '
                               f'ms, jitter {self.jitter_ms:g} ms')

    def status_values(self):
        values = {**{f'forwarded.{k}': v for k, v in sorted(self.forwarded.items())},
                  **{f'dropped.{k}': v for k, v in sorted(self.dropped.items())},
                  'loss': self.loss, 'delay_ms': self.delay_ms, 'jitter_ms': self.jitter_ms}
        return DiagnosticStatus.OK, 'ok', values

    def on_message(self, pub, kind: str, data: bytes) -> None:
        if self.loss > 0 and self.rng.random() < self.loss:
            self.dropped[kind] += 1
            return
        delay_ms = self.delay_ms + (self.rng.uniform(0, self.jitter_ms) if self.jitter_ms > 0 else 0.0)
        if delay_ms <= 0:
            pub.publish(data)
            self.forwarded[kind] += 1
            return
        due = self.get_clock().now().nanoseconds + int(delay_ms * 1e6)
        heapq.heappush(self._queue, (due, next(self._sequence), pub, data, kind))
        self._rearm()

    def _rearm(self) -> None:
        if not self._queue:
            self.timer.cancel()
            return
        self.timer.timer_period_ns = max(self._queue[0][0] - self.get_clock().now().nanoseconds, 100_000)
        self.timer.reset()

    def release(self) -> None:
        now = self.get_clock().now().nanoseconds
        while self._queue and self._queue[0][0] <= now:
            _, _, pub, data, kind = heapq.heappop(self._queue)
            pub.publish(data)
            self.forwarded[kind] += 1
        self._rearm()


def main(args=None) -> int:
    return spin_nodes([LinkNode], args)


if __name__ == '__main__':
    raise SystemExit(main())
