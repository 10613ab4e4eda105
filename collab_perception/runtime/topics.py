"""Topic names of the swarm, in one place (DESIGN.md, "Topics").

Broadcast traffic goes on /swarm/...; addressed traffic on the receiver's own namespace, so that on a
radio link a drone only pays for what is meant for it. Per-drone sensor and output topics are relative
and resolved under the drone's namespace.
"""
from __future__ import annotations

REQUEST = '/swarm/request'
FRAME = '/swarm/frame'              # one std_msgs/Header per snapshot from the camera source
BANDWIDTH = '/swarm/bandwidth'      # BandwidthStats from the monitor

# relative, under each drone's namespace
IMAGE = 'camera/image_raw'
DEPTH = 'camera/depth'
CAMERA_INFO = 'camera/camera_info'
LABELS = 'camera/labels'
POSE = 'pose'
PERCEPTION = 'perception/output'    # local: perception -> matcher, fusion (not on the radio)
SEGMENTATION = 'segmentation'
SEGMENTATION_COLOR = 'segmentation/color'
FUSION_INFO = 'fusion/info'
NAV_TASK = 'nav/task'                # local: the navigation bridge -> the drone (episode, step, goal)
NAV_STEP = 'nav/step'                # local: fusion -> policy (CollaVN: state, own read, what arrived)
CMD_VEL = 'cmd_vel'                  # geometry_msgs/Twist: the policy -> the navigation bridge

# Message kinds on the radio (msg/): the request is broadcast, every other kind is addressed to one drone.
COMM_KINDS = ('request', 'reply', 'connect', 'feature', 'patches', 'value')
ADDRESSED_KINDS = COMM_KINDS[1:]     # every kind but the request goes to one drone's own topic
# the message type of each kind (msg/)
COMM_MSG_TYPES = {'request': 'collab_perception/msg/Request', 'reply': 'collab_perception/msg/Reply',
                  'connect': 'collab_perception/msg/Connect', 'feature': 'collab_perception/msg/FeatureMap',
                  'patches': 'collab_perception/msg/PatchSegments', 'value': 'collab_perception/msg/MemoryValue'}
RADIO_PREFIX = '/radio'     # nodes/link_node.py: senders publish here, the link forwards to the real topic


def comm_topic(kind: str, drone: str) -> str:
    """The topic on which `drone` receives comm messages of `kind` (the request: the swarm-wide one)."""
    if kind == 'request':
        return REQUEST
    if kind not in ADDRESSED_KINDS:
        raise ValueError(f'unknown comm kind {kind!r}; kinds: {", ".join(COMM_KINDS)}')
    return f'/{drone}/comm/{kind}'


def comm_topics(drones: list[str]) -> dict[str, str]:
    """topic -> kind for every comm topic of these drones (what the monitor measures)."""
    return {REQUEST: 'request', **{comm_topic(k, d): k for d in drones for k in ADDRESSED_KINDS}}


def topic_kind(topic: str) -> str:
    if topic == REQUEST:
        return 'request'
    for kind in ADDRESSED_KINDS:
        if topic.endswith(f'/comm/{kind}'):
            return kind
    return 'other'


def topic_owner(topic: str) -> str:
    """The drone namespace a topic lives under ('' for swarm-wide topics)."""
    parts = topic.strip('/').split('/')
    return '' if not parts or parts[0] == 'swarm' else parts[0]
