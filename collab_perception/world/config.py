"""WorldConfig: every knob of the embedded multi-drone world, validated on construction.

A bad value fails at once with a `ConfigError` naming the field (`fov_deg: expected a number <= 150.0, got
170`), the same style as config/swarm.yaml (collab_perception/config.py). Ranges are `(low, high)` pairs.
`load_world_config()` reads the `world:` section of a YAML file (config/world.yaml), with unknown keys
rejected and the valid keys listed, so that a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import yaml

from ..config import ConfigError, resource_path

TRAJECTORIES = ('waypoint', 'explore')
OBSTRUCTION_SHAPES = ('bird', 'branch', 'balloon', 'drone')


@dataclass(frozen=True)
class WorldConfig:
    """The embedded world: one landscape tile ("map"), N drones flying over it, one pinhole camera each.

    Cameras (all drones share one model): `image_width` x `image_height` pixels, horizontal field of view
    `fov_deg`, square pixels, principal point at the image centre. `pitch_deg` is the camera's elevation
    angle (negative looks down, -90 is nadir), plus a fixed per-drone offset drawn in +-`pitch_jitter_deg`.

    Flight: `trajectory='waypoint'` flies a loose formation along the road network, each drone yawing at its
    own rate (handshake paper §IV-B "waypoint following"; MASH §IV "different yaw rates");
    `trajectory='explore'` repeats approach-a-point / disperse / wander (handshake paper §IV-B "random
    exploration"). Altitudes are above the ground under the drone.

    Obstructions (MASH §IV): `obstructions_per_snapshot` 3D objects (shapes from `obstruction_shapes`)
    placed `obstruction_distance_m` in front of randomly chosen cameras, sized to cover about
    `obstruction_coverage` of that camera's image. They are part of the 3D scene, so every view that sees
    one renders it; labels and depth stay those of the unobstructed surface.
    """

    seed: int = 0
    map_id: int = 0
    drones: int = 5
    image_width: int = 128
    image_height: int = 128
    fov_deg: float = 80.0
    pitch_deg: float = -50.0
    pitch_jitter_deg: float = 8.0
    altitude_m: tuple[float, float] = (20.0, 80.0)
    trajectory: str = 'waypoint'
    dt_s: float = 0.5
    speed_mps: float = 6.0
    formation_spacing_m: float = 45.0
    max_yaw_rate_deg_s: float = 18.0
    map_size_m: float = 400.0
    ground_texel_m: float = 0.25
    shadow_map_size: int = 2048
    obstructions: bool = False
    obstructions_per_snapshot: int = 1
    obstruction_distance_m: tuple[float, float] = (2.0, 8.0)
    obstruction_coverage: tuple[float, float] = (0.25, 0.60)   # calibrated: docs/DATASETS.md
    obstruction_shapes: tuple[str, ...] = field(default=OBSTRUCTION_SHAPES)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # YAML gives lists; keep the dataclass hashable and immutable
                object.__setattr__(self, f.name, tuple(value))
        _validate(self)

    @classmethod
    def from_mapping(cls, data: Optional[Mapping[str, Any]], source: str = '', path: str = '') -> 'WorldConfig':
        """Build from a mapping (a YAML section); unknown keys are errors naming the valid ones."""
        return dataclass_from_mapping(cls, data, source, path)

    def replace(self, **changes) -> 'WorldConfig':
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @property
    def vertical_fov_deg(self) -> float:
        half = math.atan(math.tan(math.radians(self.fov_deg) / 2) * self.image_height / self.image_width)
        return math.degrees(2 * half)


def dataclass_from_mapping(cls, data: Optional[Mapping[str, Any]], source: str = '', path: str = ''):
    """A validated config dataclass from a mapping (a YAML section): unknown keys and bad values fail with
    a ConfigError whose path starts with `path`."""
    data = dict(data or {})
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f'{path}.' if path else ''
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f'{prefix}{unknown[0]}', f'unknown key; valid keys: {", ".join(names)}', source)
    try:
        return cls(**data)
    except ConfigError as e:
        raise ConfigError(f'{prefix}{e.path}', str(e).split(': ', 1)[1], source) from None


def read_yaml_section(path: str, key: str) -> dict:
    """The `key:` section of a YAML file whose only top-level key it is (an empty mapping when absent)."""
    try:
        with open(path, encoding='utf-8') as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError('<file>', f'cannot read: {e.strerror}', path) from None
    except yaml.YAMLError as e:
        raise ConfigError('<file>', f'not valid YAML: {e}', path) from None
    if not isinstance(data, Mapping) or set(data) - {key}:
        raise ConfigError('<root>', f'expected a mapping with one key, {key}', path)
    section = data.get(key) or {}
    if not isinstance(section, Mapping):
        raise ConfigError(key, 'expected a mapping', path)
    return dict(section)


def _kind_name(kind) -> str:
    return {bool: 'a boolean', int: 'an integer', float: 'a number', str: 'a string'}[kind]


def _check_scalar(name: str, value: Any, kind: type, lo: Optional[float] = None, hi: Optional[float] = None):
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok or (kind is float and not math.isfinite(value)):
        raise ConfigError(name, f'expected {_kind_name(kind)}, got {value!r}')
    if lo is not None and value < lo:
        raise ConfigError(name, f'expected {_kind_name(kind)} >= {lo}, got {value!r}')
    if hi is not None and value > hi:
        raise ConfigError(name, f'expected {_kind_name(kind)} <= {hi}, got {value!r}')


def _check_range(name: str, value: Any, lo: float, hi: float):
    if (not isinstance(value, tuple) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise ConfigError(name, f'expected [low, high] (two numbers), got {value!r}')
    if not lo <= value[0] <= value[1] <= hi:
        raise ConfigError(name, f'expected {lo} <= low <= high <= {hi}, got {list(value)!r}')


def _validate(c: WorldConfig) -> None:
    _check_scalar('seed', c.seed, int, 0)
    _check_scalar('map_id', c.map_id, int, 0)
    _check_scalar('drones', c.drones, int, 1, 32)   # the atlas is drones x image_width wide
    _check_scalar('image_width', c.image_width, int, 16, 2048)
    _check_scalar('image_height', c.image_height, int, 16, 2048)
    _check_scalar('fov_deg', c.fov_deg, float, 20.0, 150.0)
    _check_scalar('pitch_deg', c.pitch_deg, float, -90.0, 0.0)
    _check_scalar('pitch_jitter_deg', c.pitch_jitter_deg, float, 0.0, 30.0)
    _check_range('altitude_m', c.altitude_m, 5.0, 500.0)
    if c.trajectory not in TRAJECTORIES:
        raise ConfigError('trajectory', f'{c.trajectory!r} is not one of: {", ".join(TRAJECTORIES)}')
    _check_scalar('dt_s', c.dt_s, float, 0.01, 10.0)
    _check_scalar('speed_mps', c.speed_mps, float, 0.0, 40.0)
    _check_scalar('formation_spacing_m', c.formation_spacing_m, float, 1.0, 200.0)
    _check_scalar('max_yaw_rate_deg_s', c.max_yaw_rate_deg_s, float, 0.0, 180.0)
    _check_scalar('map_size_m', c.map_size_m, float, 100.0, 2000.0)
    _check_scalar('ground_texel_m', c.ground_texel_m, float, 0.05, 2.0)
    if c.map_size_m / c.ground_texel_m > 8192:
        raise ConfigError('ground_texel_m', f'{c.ground_texel_m} gives a ground texture wider than 8192 texels '
                                            f'for map_size_m={c.map_size_m}')
    _check_scalar('shadow_map_size', c.shadow_map_size, int, 256, 8192)
    _check_scalar('obstructions', c.obstructions, bool)
    _check_scalar('obstructions_per_snapshot', c.obstructions_per_snapshot, int, 1, 16)
    _check_range('obstruction_distance_m', c.obstruction_distance_m, 0.5, 100.0)
    _check_range('obstruction_coverage', c.obstruction_coverage, 0.001, 0.9)
    shapes = c.obstruction_shapes
    if not isinstance(shapes, tuple) or not shapes:
        raise ConfigError('obstruction_shapes', f'expected a non-empty list of: {", ".join(OBSTRUCTION_SHAPES)}')
    for i, shape in enumerate(shapes):
        if shape not in OBSTRUCTION_SHAPES:
            raise ConfigError(f'obstruction_shapes[{i}]',
                              f'{shape!r} is not one of: {", ".join(OBSTRUCTION_SHAPES)}')


def world_config_path() -> str:
    return resource_path('config', 'world.yaml')


def load_world_config(path: Optional[str] = None, **overrides) -> WorldConfig:
    """The `world:` section of a YAML file (default config/world.yaml), then keyword overrides."""
    path = path or world_config_path()
    return WorldConfig.from_mapping({**read_yaml_section(path, 'world'), **overrides}, source=path, path='world')
