"""An AirSim-protocol server backed by the embedded world: lets the real `airsim` / `cosysairsim` client
(and so the AirSim bridge node) run without Unreal.

It speaks msgpack-rpc over TCP as AirSim's rpclib server does ([0, id, method, params] -> [1, id, error,
result], MessagePack with bin types) and answers the calls the bridge makes: ping, getServerVersion,
getMinRequiredClientVersion, listVehicles, simGetVehiclePose and simGetImages (Scene, DepthPlanar,
Segmentation, uncompressed). Frames come from the embedded World converted to AirSim's conventions (NED,
FRD camera, BGR scene, segmentation colours from the config table). Any other call is answered with an
error naming it.

The world advances one snapshot when a vehicle whose images were already served is asked again, so all
vehicles of one bridge tick see the same snapshot. It binds 127.0.0.1 only.
"""
from __future__ import annotations

import socket
import socketserver
import threading
from typing import Callable, Optional

import msgpack
import numpy as np

from .airsim_adapter import AirSimConfig, conventions, quat_to_matrix

SERVER_VERSION = 4          # what AirSim 1.8 reports
MIN_CLIENT_VERSION = 1
SCENE, DEPTH_PLANAR, SEGMENTATION = 0, 1, 5


class EmbeddedAirSimScene:
    """Serves the world's snapshots per AirSim vehicle, in AirSim's conventions."""

    def __init__(self, world, cfg: AirSimConfig, drone_names: list[str]):
        self.world = world
        self.cfg = cfg
        self.view_index = {v.name: drone_names.index(v.drone) for v in cfg.vehicles}
        self.colors = {class_id: color for color, class_id in cfg.segmentation.items()}
        self._lock = threading.Lock()
        self._snapshot = None
        self._served: set[str] = set()
        self.snapshots = 0

    def _view(self, vehicle: str, advance: bool):
        if vehicle not in self.view_index:
            raise KeyError(f'unknown vehicle {vehicle!r}; vehicles: {", ".join(self.view_index)}')
        with self._lock:
            if self._snapshot is None or (advance and vehicle in self._served):
                self._snapshot = self.world.step()
                self._served = set()
                self.snapshots += 1
            if advance:
                self._served.add(vehicle)
            return self._snapshot.views[self.view_index[vehicle]], self._snapshot

    def vehicle_pose(self, vehicle: str) -> dict:
        view, _ = self._view(vehicle, advance=False)
        # The embedded drones carry a pitched camera on a level body with the camera's heading.
        r = quat_to_matrix(view.orientation_xyzw)
        forward = r[:, 2].copy()
        forward[2] = 0.0
        yaw = np.arctan2(forward[1], forward[0])
        q_flu = np.array([0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)])
        return _pose(view.position, conventions.frd_in_ned_from_flu_in_enu(q_flu))

    def images(self, requests: list, vehicle: str) -> list[dict]:
        view, snapshot = self._view(vehicle, advance=True)
        camera_pose = _pose(view.position, conventions.frd_in_ned_from_optical_in_enu(view.orientation_xyzw))
        h, w = view.labels.shape
        out = []
        for req in requests:
            kind = int(req.get('image_type', SCENE))
            as_float = bool(req.get('pixels_as_float', False))
            response = {'image_data_uint8': b'', 'image_data_float': [], 'camera_position': camera_pose['position'],
                        'camera_orientation': camera_pose['orientation'], 'time_stamp': int(snapshot.time_s * 1e9),
                        'message': '', 'pixels_as_float': as_float, 'compress': False, 'width': w, 'height': h,
                        'image_type': kind, 'camera_name': str(req.get('camera_name', ''))}
            if kind == SCENE and not as_float:
                response['image_data_uint8'] = np.ascontiguousarray(view.rgb[:, :, ::-1]).tobytes()
            elif kind == DEPTH_PLANAR and as_float:
                response['image_data_float'] = view.depth.astype(np.float32).ravel().tolist()
            elif kind == SEGMENTATION and not as_float:
                palette = np.zeros((256, 3), np.uint8)
                for class_id, color in self.colors.items():
                    palette[class_id] = color
                response['image_data_uint8'] = np.ascontiguousarray(palette[view.labels][:, :, ::-1]).tobytes()
            else:
                response['message'] = f'image type {kind} (pixels_as_float={as_float}) is not served by the embedded peer'
                response['width'] = response['height'] = 0
            out.append(response)
        return out


def _pose(position_enu, q_wxyz_ned) -> dict:
    p = conventions.position_ned_from_enu(position_enu)
    w, x, y, z = (float(v) for v in q_wxyz_ned)
    return {'position': {'x_val': float(p[0]), 'y_val': float(p[1]), 'z_val': float(p[2])},
            'orientation': {'w_val': w, 'x_val': x, 'y_val': y, 'z_val': z}}


class _Handler(socketserver.BaseRequestHandler):
    def handle(self):
        unpacker = msgpack.Unpacker(raw=False)
        sock: socket.socket = self.request
        while True:
            try:
                data = sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            unpacker.feed(data)
            for message in unpacker:
                reply = self.server.peer.dispatch(message)
                if reply is not None:
                    sock.sendall(msgpack.packb(reply, use_bin_type=True))


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class AirSimPeer:
    """`with AirSimPeer(scene) as peer:` serves on 127.0.0.1:`peer.port` in a background thread."""

    def __init__(self, scene: EmbeddedAirSimScene, port: int = 0, host: str = '127.0.0.1'):
        if host not in ('127.0.0.1', 'localhost'):
            raise ValueError('the embedded AirSim peer binds the loopback only')
        self.scene = scene
        self.server = _Server((host, port), _Handler)
        self.server.peer = self
        self.port = self.server.server_address[1]
        self.calls: dict[str, int] = {}
        self._thread: Optional[threading.Thread] = None
        self.methods: dict[str, Callable] = {
            'ping': lambda: True,
            'getServerVersion': lambda: SERVER_VERSION,
            'getMinRequiredClientVersion': lambda: MIN_CLIENT_VERSION,
            'listVehicles': lambda: list(scene.view_index),
            'simGetVehiclePose': lambda vehicle_name='': scene.vehicle_pose(vehicle_name),
            'simGetImages': lambda requests, vehicle_name='', external=False: scene.images(requests, vehicle_name),
        }

    def dispatch(self, message):
        if not isinstance(message, (list, tuple)) or not message:
            return None
        if message[0] == 2:     # notification: no reply
            return None
        if message[0] != 0 or len(message) != 4:
            return None
        _, msgid, method, params = message
        self.calls[method] = self.calls.get(method, 0) + 1
        handler = self.methods.get(method)
        if handler is None:
            return [1, msgid, f'{method} is not supported by the embedded AirSim peer', None]
        try:
            return [1, msgid, None, handler(*params)]
        except Exception as e:  # noqa: BLE001 - errors go back to the client, as rpclib does
            return [1, msgid, f'{method}: {e}', None]

    def start(self) -> 'AirSimPeer':
        self._thread = threading.Thread(target=self.server.serve_forever, name='airsim-peer', daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
