"""WorldConfig and DegradeConfig validation: a bad value fails with the field named."""
import pytest

from collab_perception.config import ConfigError
from collab_perception.world import WorldConfig, load_world_config
from collab_perception.world.degrade import DegradeConfig


@pytest.mark.parametrize('field, value, message', [
    ('drones', 0, 'drones: expected an integer >= 1'),
    ('drones', 2.5, 'drones: expected an integer'),
    ('image_width', 8, 'image_width: expected an integer >= 16'),
    ('fov_deg', 170.0, 'fov_deg: expected a number <= 150.0'),
    ('fov_deg', float('nan'), 'fov_deg: expected a number'),
    ('pitch_deg', 10.0, 'pitch_deg: expected a number <= 0.0'),
    ('altitude_m', (80.0, 20.0), 'altitude_m: expected 5.0 <= low <= high'),
    ('altitude_m', (20.0,), 'altitude_m: expected [low, high]'),
    ('trajectory', 'spiral', "trajectory: 'spiral' is not one of: waypoint, explore"),
    ('obstructions', 'yes', 'obstructions: expected a boolean'),
    ('obstruction_coverage', (0.5, 0.95), 'obstruction_coverage: expected 0.001 <= low'),
    ('obstruction_shapes', ('bird', 'ufo'), "obstruction_shapes[1]: 'ufo' is not one of"),
    ('seed', -1, 'seed: expected an integer >= 0'),
])
def test_bad_world_values_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message.replace('[', r'\[').replace(']', r'\]').replace('(', r'\(')):
        WorldConfig(**{field: value})


def test_texture_size_limit_names_the_field():
    with pytest.raises(ConfigError, match='ground_texel_m'):
        WorldConfig(map_size_m=2000.0, ground_texel_m=0.1)


def test_yaml_section_with_path_and_unknown_keys(tmp_path):
    good = tmp_path / 'world.yaml'
    good.write_text('world:\n  drones: 6\n  altitude_m: [30, 60]\n  trajectory: explore\n')
    cfg = load_world_config(str(good), seed=4)
    assert (cfg.drones, cfg.altitude_m, cfg.trajectory, cfg.seed) == (6, (30.0, 60.0), 'explore', 4)
    bad = tmp_path / 'bad.yaml'
    bad.write_text('world:\n  fov_deg: 10\n')
    with pytest.raises(ConfigError, match=r'bad.yaml: world.fov_deg: expected a number >= 20.0'):
        load_world_config(str(bad))
    typo = tmp_path / 'typo.yaml'
    typo.write_text('world:\n  drone: 6\n')
    with pytest.raises(ConfigError, match=r'world.drone: unknown key; valid keys: seed, map_id, drones'):
        load_world_config(str(typo))


def test_default_world_yaml_loads():
    assert load_world_config() == WorldConfig()


@pytest.mark.parametrize('kwargs, field', [
    ({'kernel_min': 0}, 'kernel_min'),
    ({'kernel_min': 9, 'kernel_max': 3}, 'kernel_max'),
    ({'noise_std_max': 300.0}, 'noise_std_max'),
    ({'noise_std_min': 10.0, 'noise_std_max': 5.0}, 'noise_std_max'),
])
def test_bad_degradation_values_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f'^{field}: '):
        DegradeConfig(**kwargs)
