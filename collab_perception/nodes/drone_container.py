"""All of one drone's nodes in one process and one executor, like a ROS 2 component container.

    drone_container --nodes perception,matcher,fusion --ros-args -r __ns:=/drone1 --params-file F

Each node keeps its own name and parameters (the params file is keyed by fully qualified node name) and
spins in its own thread (nodes/common.py spin_nodes), so perception's inference runs in parallel with the
matcher's and fusion's message handling. Chosen with `swarm.process_layout: per_drone`.
"""
from __future__ import annotations

import argparse
import sys

from rclpy.utilities import remove_ros_args

from .common import spin_nodes
from .fusion_node import FusionNode
from .matcher_node import MatcherNode
from .perception_node import PerceptionNode

NODES = {'perception': PerceptionNode, 'matcher': MatcherNode, 'fusion': FusionNode}


def main(args=None) -> int:
    argv = list(sys.argv if args is None else args)
    parser = argparse.ArgumentParser(prog='drone_container', description=__doc__.split('\n\n')[0])
    parser.add_argument('--nodes', default=','.join(NODES),
                        help=f'comma-separated nodes to run (default: all of {", ".join(NODES)})')
    opts = parser.parse_args(remove_ros_args(argv)[1:])
    names = [n.strip() for n in opts.nodes.split(',') if n.strip()]
    unknown = [n for n in names if n not in NODES]
    if unknown or not names:
        parser.error(f'unknown node(s) {", ".join(unknown) or "(none given)"}; valid: {", ".join(NODES)}')
    return spin_nodes([NODES[n] for n in names], argv)


if __name__ == '__main__':
    raise SystemExit(main())
