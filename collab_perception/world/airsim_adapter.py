"""AirSim / Cosys-AirSim adapter: one synchronized snapshot of every configured vehicle (no ROS).

Each tick requests, per vehicle camera, Scene (RGB), DepthPlanar (metres, float) and Segmentation images
with `simGetImages`, and converts them into the project's conventions:

  world frame   AirSim: NED (x north, y east, z down)      ->  ENU (x east, y north, z up)
  camera frame  AirSim: body FRD (x forward, y right, z down) ->  optical (x right, y down, z forward)
  orientation   AirSim Quaternionr (w, x, y, z)            ->  (x, y, z, w), camera-to-world
  labels        AirSim segmentation colours                ->  project class ids (config table)

`conventions` below holds the pure conversions (they are what the tests check against the embedded
world); `AirSimSource` wraps the real client: `airsim` (Microsoft AirSim / Colosseum) or `cosysairsim`
(Cosys-AirSim), chosen in config. Both speak msgpack-rpc on port 41451.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import yaml

from ..config import ConfigError, Field, validate_section
from .geometry import intrinsics_from_fov, matrix_from_quaternion as quat_to_matrix, quaternion_from_matrix as matrix_to_quat

# Rotations between frames (columns: the new frame's axes in the old one's coordinates).
_NED_FROM_ENU = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]], dtype=np.float64)   # symmetric, its own inverse
# optical axes (x right, y down, z forward) expressed in body FRD axes (x forward, y right, z down)
_FRD_FROM_OPTICAL = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=np.float64)
# ROS body FLU (x forward, y left, z up) expressed in FRD
_FRD_FROM_FLU = np.diag([1.0, -1.0, -1.0])


class conventions:  # noqa: N801 - a namespace of pure functions
    """NED/FRD (AirSim) <-> ENU/optical (this project). Positions in metres."""

    @staticmethod
    def position_enu_from_ned(p_ned: Sequence[float]) -> np.ndarray:
        return _NED_FROM_ENU @ np.asarray(p_ned, dtype=np.float64)

    @staticmethod
    def position_ned_from_enu(p_enu: Sequence[float]) -> np.ndarray:
        return _NED_FROM_ENU @ np.asarray(p_enu, dtype=np.float64)

    @staticmethod
    def optical_in_enu_from_frd_in_ned(q_wxyz_ned: Sequence[float]) -> np.ndarray:
        """AirSim camera orientation (w, x, y, z; FRD body in NED) -> optical camera in ENU (x, y, z, w)."""
        w, x, y, z = q_wxyz_ned
        r_ned_frd = quat_to_matrix([x, y, z, w])
        return matrix_to_quat(_NED_FROM_ENU @ r_ned_frd @ _FRD_FROM_OPTICAL)

    @staticmethod
    def flu_in_enu_from_frd_in_ned(q_wxyz_ned: Sequence[float]) -> np.ndarray:
        """AirSim body orientation (w, x, y, z; FRD in NED) -> ROS body FLU in ENU (x, y, z, w)."""
        w, x, y, z = q_wxyz_ned
        return matrix_to_quat(_NED_FROM_ENU @ quat_to_matrix([x, y, z, w]) @ _FRD_FROM_FLU)

    @staticmethod
    def frd_in_ned_from_flu_in_enu(q_xyzw_enu: Sequence[float]) -> np.ndarray:
        x, y, z, w = matrix_to_quat(_NED_FROM_ENU @ quat_to_matrix(q_xyzw_enu) @ _FRD_FROM_FLU.T)
        return np.array([w, x, y, z])

    @staticmethod
    def frd_in_ned_from_optical_in_enu(q_xyzw_enu: Sequence[float]) -> np.ndarray:
        """Optical camera in ENU (x, y, z, w) -> AirSim camera orientation (w, x, y, z; FRD in NED)."""
        r_enu_opt = quat_to_matrix(q_xyzw_enu)
        x, y, z, w = matrix_to_quat(_NED_FROM_ENU @ r_enu_opt @ _FRD_FROM_OPTICAL.T)
        return np.array([w, x, y, z])


# ---------------------------------------------------------------------------------------------- config
@dataclass
class AirSimVehicle:
    name: str            # AirSim vehicle name (settings.json "Vehicles" key)
    camera: str          # AirSim camera name on that vehicle
    drone: str           # the swarm drone (ROS namespace) it feeds
    fov_deg: float = 90.0  # the camera's CaptureSettings FOV_Degrees in settings.json (AirSim's default: 90)


@dataclass
class AirSimConfig:
    client: str = 'airsim'                         # airsim | cosysairsim
    host: str = '127.0.0.1'
    port: int = 41451
    timeout_s: float = 10.0
    vehicles: list[AirSimVehicle] = field(default_factory=list)
    segmentation: dict[tuple[int, int, int], int] = field(default_factory=dict)   # colour -> class id
    unknown_class: int = 255                       # label for colours not in the table (ignored in metrics)


CLIENT_MODULES = {'airsim': 'airsim', 'cosysairsim': 'cosysairsim'}


def load_airsim_config(path: str, class_names: Sequence[str]) -> AirSimConfig:
    """Read and validate config/airsim.yaml; errors name the field."""
    try:
        with open(path, encoding='utf-8') as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError('<file>', f'cannot read: {e.strerror}', path) from None
    schema = {
        'client': Field(str, 'airsim', choices=tuple(CLIENT_MODULES)),
        'host': Field(str, '127.0.0.1'),
        'port': Field(int, 41451, minimum=1, maximum=65535),
        'timeout_s': Field(float, 10.0, minimum=0.1, maximum=3600.0),
        'vehicles': Field(list, None, items=dict),
        'segmentation': Field(list, None, items=dict),
        'unknown_class': Field(int, 255, minimum=0, maximum=255),
    }
    top = validate_section(schema, data, '', path)
    vehicles = []
    for i, raw in enumerate(top['vehicles']):
        v = validate_section({'name': Field(str, None), 'camera': Field(str, None), 'drone': Field(str, None),
                              'fov_deg': Field(float, 90.0, minimum=1.0, maximum=179.0)},
                             raw, f'vehicles[{i}]', path, require=('name', 'camera', 'drone'))
        vehicles.append(AirSimVehicle(**v))
    if not vehicles:
        raise ConfigError('vehicles', 'expected at least one vehicle', path)
    table = {}
    for i, raw in enumerate(top['segmentation']):
        entry = validate_section({'color': Field(list, None, items=int), 'class': Field(str, None)},
                                 raw, f'segmentation[{i}]', path, require=('color', 'class'))
        color = entry['color']
        if len(color) != 3 or not all(0 <= c <= 255 for c in color):
            raise ConfigError(f'segmentation[{i}].color', f'expected [r, g, b] in 0..255, got {color}', path)
        if entry['class'] not in class_names:
            raise ConfigError(f'segmentation[{i}].class', f'unknown class {entry["class"]!r}; classes: '
                              f'{", ".join(class_names)}', path)
        table[tuple(color)] = list(class_names).index(entry['class'])
    return AirSimConfig(client=top['client'], host=top['host'], port=top['port'], timeout_s=top['timeout_s'],
                        vehicles=vehicles, segmentation=table, unknown_class=top['unknown_class'])


def import_client(kind: str):
    """The AirSim client module; a clear error when it is not installed."""
    if kind not in CLIENT_MODULES:
        raise ConfigError('airsim.client', f'{kind!r} is not one of: {", ".join(CLIENT_MODULES)}')
    try:
        return importlib.import_module(CLIENT_MODULES[kind])
    except ImportError as e:
        hint = ('pip install rpc-msgpack && pip install --no-deps --no-build-isolation airsim==1.8.1'
                if kind == 'airsim' else 'pip install cosysairsim==3.5.0')
        raise ConfigError('airsim.client', f'the {kind!r} client is not installed ({e}); install it with: {hint}') from None


# ---------------------------------------------------------------------------------------------- decoding
@dataclass
class CameraFrame:
    """One vehicle camera at one tick, in the project's conventions (like a world View)."""

    drone: str
    rgb: np.ndarray              # H x W x 3 uint8
    depth: np.ndarray            # H x W float32, metres along the optical axis
    labels: np.ndarray           # H x W uint8 class ids
    position: np.ndarray         # camera position, ENU metres
    orientation_xyzw: np.ndarray  # optical camera -> world (ENU)
    K: np.ndarray                # 3 x 3 intrinsics
    time_ns: int = 0             # AirSim's time stamp of the scene image
    vehicle_position: Optional[np.ndarray] = None          # body, ENU
    vehicle_orientation_xyzw: Optional[np.ndarray] = None  # body FLU -> world ENU (REP-103)


def decode_scene(resp) -> np.ndarray:
    """Uncompressed Scene response (BGR, 3 channels) -> RGB. (np.frombuffer: airsim's
    string_to_uint8_array uses np.fromstring, which numpy 2 removed.)"""
    data = np.frombuffer(_as_bytes(resp.image_data_uint8), dtype=np.uint8)
    channels = data.size // max(resp.width * resp.height, 1)
    if channels not in (3, 4) or data.size != resp.width * resp.height * channels:
        raise ValueError(f'scene image: {data.size} bytes for {resp.width}x{resp.height}')
    return np.ascontiguousarray(data.reshape(resp.height, resp.width, channels)[:, :, 2::-1])


def decode_depth(resp) -> np.ndarray:
    data = np.asarray(resp.image_data_float, dtype=np.float32)
    if data.size != resp.width * resp.height:
        raise ValueError(f'depth image: {data.size} floats for {resp.width}x{resp.height}')
    return data.reshape(resp.height, resp.width)


def decode_segmentation(resp, table: dict[tuple[int, int, int], int], unknown: int = 255) -> np.ndarray:
    rgb = decode_scene(resp)
    labels = np.full(rgb.shape[:2], unknown, dtype=np.uint8)
    for color, class_id in table.items():
        labels[np.all(rgb == np.array(color, dtype=np.uint8), axis=2)] = class_id
    return labels


def _as_bytes(data) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return np.asarray(data, dtype=np.uint8).tobytes()


class AirSimSource:
    """Pulls synchronized frames of the configured vehicles from an AirSim server."""

    def __init__(self, cfg: AirSimConfig):
        self.cfg = cfg
        self.module = import_client(cfg.client)
        self.client = self.module.MultirotorClient(ip=cfg.host, port=cfg.port, timeout_value=cfg.timeout_s)
        if not self.client.ping():
            raise ConnectionError(f'AirSim at {cfg.host}:{cfg.port} did not answer ping')
        available = set(self.client.listVehicles())
        missing = [v.name for v in cfg.vehicles if v.name not in available]
        if missing:
            raise ConfigError('airsim.vehicles', f'not in the AirSim world: {", ".join(missing)} '
                              f'(it has: {", ".join(sorted(available)) or "none"})')
        self.server_version = self.client.getServerVersion()
        if self.client.getMinRequiredClientVersion() > self.client.getClientVersion():
            raise ConnectionError(f'AirSim server {self.server_version} needs a newer {cfg.client} client')

    def _requests(self, camera: str):
        ImageRequest, ImageType = self.module.ImageRequest, self.module.ImageType
        return [ImageRequest(camera, ImageType.Scene, False, False),
                ImageRequest(camera, ImageType.DepthPlanar, True, False),
                ImageRequest(camera, ImageType.Segmentation, False, False)]

    def snapshot(self) -> list[CameraFrame]:
        frames = []
        for v in self.cfg.vehicles:
            scene, depth, seg = self.client.simGetImages(self._requests(v.camera), vehicle_name=v.name)
            rgb = decode_scene(scene)
            p = scene.camera_position
            q = scene.camera_orientation
            body = self.client.simGetVehiclePose(vehicle_name=v.name)
            bp, bq = body.position, body.orientation
            frames.append(CameraFrame(
                drone=v.drone, rgb=rgb, depth=decode_depth(depth),
                labels=decode_segmentation(seg, self.cfg.segmentation, self.cfg.unknown_class),
                position=conventions.position_enu_from_ned([p.x_val, p.y_val, p.z_val]),
                orientation_xyzw=conventions.optical_in_enu_from_frd_in_ned([q.w_val, q.x_val, q.y_val, q.z_val]),
                K=intrinsics_from_fov(scene.width, scene.height, v.fov_deg),
                time_ns=int(scene.time_stamp),
                vehicle_position=conventions.position_enu_from_ned([bp.x_val, bp.y_val, bp.z_val]),
                vehicle_orientation_xyzw=conventions.flu_in_enu_from_frd_in_ned(
                    [bq.w_val, bq.x_val, bq.y_val, bq.z_val])))
        return frames
