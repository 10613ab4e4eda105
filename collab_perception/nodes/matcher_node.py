"""Matcher, on every drone: the supporter's side of the protocol (Who2com §III-B match and connect; MASH §III-A).

It feeds the protocol's supporter role (runtime/protocols) with what the role asks for, joined by stamp (this
drone's perception output; or its camera image, depth and pose with the camera model, for a supporter that
warps its view into the requester's; or its camera image, for MASH), and with the comm messages addressed to
this drone: requests on /swarm/request, and whatever else the protocol receives on /<drone>/comm/<kind>.
What the role answers (a Reply, a FeatureMap, PatchSegments) goes to the requester alone, on the requester's
own topic. A request that overtakes this drone's own inputs of its stamp waits for them until the
requester's deadline; one whose deadline has passed is dropped.

Comm topics are subscribed raw and deserialized here, so that a malformed payload is rejected and counted
instead of raising inside the executor.
"""
from __future__ import annotations

from .common import DroneNode, declare, declare_qos


class MatcherNode(DroneNode):
    def __init__(self):
        super().__init__('matcher', roles=('matcher',))
        # deadline_ms: for requests that give none
        params = {name: declare(self, name) for name in ('cache_frames', 'deadline_ms', 'patch_budget', 'warp_on')}
        qos = {name: declare_qos(self, name) for name in ('sensor', 'comm', 'local')}
        self.supporter = self.protocol.supporter(self.method, self.role_context(**params))
        self.apply_at_run_time(self.supporter.update)
        self.publishers_by_kind = self.comm_publishers(self.supporter.outbox, qos['comm'])
        self.subscribe_inputs(self.supporter.inputs, self.supporter.state_inputs, self.on_own, qos,
                              decode_local=self.supporter.decode_local, on_state=self.supporter.on_state)
        self.subscribe_comm(self.supporter.inbox, self.supporter, self.on_message, qos['comm'])
        self.create_timer(0.1, self.on_time)
        self.get_logger().info(f'{self.log_prefix}matcher ready: method {self.method.describe()}')

    def counters(self) -> dict[str, int]:
        return self.supporter.counters()

    def now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def on_own(self, stamp_ns: int, inputs: dict) -> None:
        self.carry_out(self.supporter.on_own(stamp_ns, inputs, self.now_ns()), self.publishers_by_kind)

    def on_message(self, kind: str, msg, stamp_ns: int, payload, size: int) -> None:
        self.carry_out(self.supporter.on_message(kind, msg, stamp_ns, payload, self.now_ns()), self.publishers_by_kind)

    def on_time(self) -> None:
        self.carry_out(self.supporter.on_time(self.now_ns()), self.publishers_by_kind)


def main(args=None) -> int:
    from .common import spin_nodes
    return spin_nodes([MatcherNode], args)


if __name__ == '__main__':
    raise SystemExit(main())
