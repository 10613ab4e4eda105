"""The class list and colours of config/classes.yaml (no ROS, no torch)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import yaml

from .config import ConfigError, resource_path


@dataclass(frozen=True)
class ClassTable:
    names: tuple[str, ...]
    colors: np.ndarray  # [K, 3] uint8

    def __len__(self) -> int:
        return len(self.names)

    def colorize(self, class_map: np.ndarray) -> np.ndarray:
        """[H, W] class ids -> [H, W, 3] uint8 RGB; ids outside the table are drawn black."""
        palette = np.zeros((256, 3), dtype=np.uint8)
        palette[:len(self.names)] = self.colors
        return palette[class_map.astype(np.uint8)]

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f'unknown class {name!r}; classes: {", ".join(self.names)}') from None


def classes_path() -> str:
    return resource_path('config', 'classes.yaml')


@functools.lru_cache(maxsize=8)
def load_classes(path: str | None = None) -> ClassTable:
    path = path or classes_path()
    with open(path, encoding='utf-8') as f:
        data = yaml.safe_load(f)
    entries = (data or {}).get('classes')
    if not isinstance(entries, list) or not entries:
        raise ConfigError('classes', 'expected a non-empty list', path)
    names, colors = [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {'name', 'color'}:
            raise ConfigError(f'classes[{i}]', 'expected {name: ..., color: [r, g, b]}', path)
        color = entry['color']
        if (not isinstance(color, list) or len(color) != 3
                or not all(isinstance(c, int) and 0 <= c <= 255 for c in color)):
            raise ConfigError(f'classes[{i}].color', f'expected three integers in 0..255, got {color!r}', path)
        if entry['name'] in names:
            raise ConfigError(f'classes[{i}].name', f'{entry["name"]!r} is listed twice', path)
        names.append(str(entry['name']))
        colors.append(color)
    return ClassTable(tuple(names), np.array(colors, dtype=np.uint8))
