"""Per-drone camera topics with one shared stamp, for the embedded-world and AirSim bridges.

For each drone: camera/image_raw (rgb8), camera/depth (32FC1, metres, +inf where nothing is hit, REP 118),
camera/camera_info, camera/labels (mono8 class ids, where the source knows them) and pose
(geometry_msgs/PoseStamped: the camera's optical frame in the world frame, ENU, camera-to-world). Plus
/swarm/frame, one std_msgs/Header per snapshot, so the monitor counts frames without comm traffic.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from ..runtime import topics
from .common import array_to_image

WORLD_FRAME = 'world'


def camera_frame_id(drone: str) -> str:
    return f'{drone}/camera_optical_frame'


def camera_info(header: Header, K: np.ndarray, width: int, height: int) -> CameraInfo:
    info = CameraInfo(header=header, width=int(width), height=int(height), distortion_model='plumb_bob')
    info.d = [0.0] * 5
    info.k = [float(v) for v in np.asarray(K, dtype=np.float64).ravel()]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    p = np.zeros((3, 4))
    p[:, :3] = K
    info.p = [float(v) for v in p.ravel()]
    return info


class CameraPublishers:
    def __init__(self, node: Node, drones: list[str], qos: QoSProfile):
        self.drones = drones
        self.pubs = []
        for d in drones:
            self.pubs.append({
                'image': node.create_publisher(Image, f'/{d}/{topics.IMAGE}', qos),
                'depth': node.create_publisher(Image, f'/{d}/{topics.DEPTH}', qos),
                'info': node.create_publisher(CameraInfo, f'/{d}/{topics.CAMERA_INFO}', qos),
                'labels': node.create_publisher(Image, f'/{d}/{topics.LABELS}', qos),
                'pose': node.create_publisher(PoseStamped, f'/{d}/{topics.POSE}', qos),
            })
        self.frame_pub = node.create_publisher(Header, topics.FRAME, 10)

    def image_subscribers_missing(self) -> list[str]:
        return [d for d, p in zip(self.drones, self.pubs) if p['image'].get_subscription_count() == 0]

    def publish(self, stamp, index: int, rgb: np.ndarray, depth: Optional[np.ndarray], labels: Optional[np.ndarray],
                K: np.ndarray, position: np.ndarray, orientation_xyzw: np.ndarray) -> None:
        """One drone's camera at one snapshot; every message gets `stamp`."""
        drone, pubs = self.drones[index], self.pubs[index]
        header = Header(stamp=stamp, frame_id=camera_frame_id(drone))
        pubs['image'].publish(array_to_image(rgb, 'rgb8', header))
        if depth is not None:
            pubs['depth'].publish(array_to_image(depth.astype(np.float32, copy=False), '32FC1', header))
        if labels is not None:
            pubs['labels'].publish(array_to_image(labels, 'mono8', header))
        pubs['info'].publish(camera_info(header, K, rgb.shape[1], rgb.shape[0]))
        pose = PoseStamped(header=Header(stamp=stamp, frame_id=WORLD_FRAME))
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in position)
        o = pose.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in orientation_xyzw)
        pubs['pose'].publish(pose)

    def publish_frame(self, stamp) -> None:
        self.frame_pub.publish(Header(stamp=stamp))
