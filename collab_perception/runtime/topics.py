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

COMM_KINDS = ('request', 'reply', 'connect', 'feature', 'patches')


def reply_topic(drone: str) -> str:
    return f'/{drone}/comm/reply'


def connect_topic(drone: str) -> str:
    return f'/{drone}/comm/connect'


def feature_topic(drone: str) -> str:
    return f'/{drone}/comm/feature'


def patches_topic(drone: str) -> str:
    return f'/{drone}/comm/patches'


def comm_topics(drones: list[str]) -> dict[str, str]:
    """topic -> kind for every comm topic of these drones (what the monitor measures)."""
    topics = {REQUEST: 'request'}
    for d in drones:
        topics[reply_topic(d)] = 'reply'
        topics[connect_topic(d)] = 'connect'
        topics[feature_topic(d)] = 'feature'
        topics[patches_topic(d)] = 'patches'
    return topics


def topic_kind(topic: str) -> str:
    if topic == REQUEST:
        return 'request'
    for kind in ('reply', 'connect', 'feature', 'patches'):
        if topic.endswith(f'/comm/{kind}'):
            return kind
    return 'other'


def topic_owner(topic: str) -> str:
    """The drone namespace a topic lives under ('' for swarm-wide topics)."""
    parts = topic.strip('/').split('/')
    return '' if not parts or parts[0] == 'swarm' else parts[0]


def comm_topology(drones: list[str], monitor: bool, spatial: bool = False) -> dict[str, tuple[int, int]]:
    """topic -> (publishers, subscribers) of the handshake's comm topics when the whole swarm is up: every
    perception node can request and every matcher answers; every fusion node connects to the others; the
    monitor subscribes to everything. In the spatial protocol (MASH) matchers answer with patches and there
    is no connect stage. The camera source waits for this graph before frame 1 (a message published before
    its subscribers are matched is lost), and a test checks it against a live swarm."""
    n, m = len(drones), int(monitor)
    topology = {REQUEST: (n, n + m)}
    if spatial:
        return {**topology, **{patches_topic(d): (n - 1, 1 + m) for d in drones}}
    for d in drones:
        topology[reply_topic(d)] = (n - 1, 1 + m)
        topology[connect_topic(d)] = (n - 1, 1 + m)
        topology[feature_topic(d)] = (n - 1, 1 + m)
    return topology
