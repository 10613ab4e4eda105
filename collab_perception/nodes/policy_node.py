"""Policy, on every drone of a navigation swarm: the step fusion hands on (nav/step) -> a velocity command.

It runs the method's recurrent policy (CollaVN Eq. 12: the `act` role) on the step's context, the drone's
read of its own memory and the values that arrived, and publishes geometry_msgs/Twist on `cmd_vel`: linear
x (east) or y (north) of one lattice move per step, all zero for STOP, after which the drone acts no more
in that episode. A new episode (the step's episode id changes) resets its recurrent state.
"""
from __future__ import annotations

from geometry_msgs.msg import Twist

from collab_perception.msg import NavStep

from ..runtime import topics
from ..runtime.codec import CodecError, decode_tensor
from ..world.nav import ACTIONS, STOP, action_velocity
from .common import DroneNode, declare_qos, stamp_label, stamp_to_ns


class PolicyNode(DroneNode):
    def __init__(self):
        super().__init__('policy', roles=('policy',))
        qos = {name: declare_qos(self, name) for name in ('local', 'sensor')}
        self.policy = self.method.policy()
        self.lattice_m = float(self.method.info['lattice_m'])
        self.episode = None
        self.cmd_pub = self.create_publisher(Twist, topics.CMD_VEL, qos['sensor'])
        self.create_subscription(NavStep, topics.NAV_STEP, self.on_step, qos['local'])
        self.steps = 0
        self.commands = 0
        self.get_logger().info(f'{self.log_prefix}policy ready: method {self.method.describe()}')

    def counters(self) -> dict[str, int]:
        return {'steps': self.steps, 'commands': self.commands}

    def on_step(self, msg: NavStep) -> None:
        stamp_ns = stamp_to_ns(msg.header.stamp)
        v = self.method.value_dim
        try:
            context = decode_tensor(msg.context, self.limits, 'step.context', expect_shape=(self.method.context_dim,))
            own_read = decode_tensor(msg.own_read, self.limits, 'step.own_read', expect_shape=(v,))
            received = decode_tensor(msg.received, self.limits, 'step.received', expect_shape=(v,))
        except CodecError as e:
            self.reject(e.reason, f'step of frame {stamp_label(stamp_ns)}: {e}')
            return
        if msg.episode != self.episode:
            self.policy.reset()
            self.episode = msg.episode
        self.steps += 1
        if not msg.active or not self.policy.active:
            return
        action = self.policy.act(context, own_read, received, msg.received_any)
        twist = Twist()
        twist.linear.x, twist.linear.y = (c * self.lattice_m for c in action_velocity(action))
        self.cmd_pub.publish(twist)
        self.commands += 1
        log = self.get_logger().info if action == STOP else self.get_logger().debug
        log(f'{self.log_prefix}episode {msg.episode} frame {stamp_label(stamp_ns)}: {ACTIONS[action]}'
            f'{" (values received)" if msg.received_any else ""}{" - stopped" if action == STOP else ""}')


def main(args=None) -> int:
    from .common import spin_nodes
    return spin_nodes([PolicyNode], args)


if __name__ == '__main__':
    raise SystemExit(main())
