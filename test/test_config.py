"""config/swarm.yaml validation: defaults, and a start-up error naming the bad field."""
import pytest

from collab_perception.classes import load_classes
from collab_perception.config import ConfigError, build_config, load_swarm_config, parse_override, resource_path


def minimal(**extra):
    data = {'drone_defaults': {'method': 'placeholder'},
            'drones': [{'name': 'a', 'id': 1, 'role': 'requester'}, {'name': 'b', 'id': 2}]}
    data.update(extra)
    return data


def test_shipped_config_loads():
    cfg = load_swarm_config()
    assert len(cfg.drones) >= 3 and any(d.role == 'requester' for d in cfg.drones)
    assert cfg.swarm['process_layout'] in ('per_node', 'per_drone')


def test_defaults_fill_in():
    cfg = build_config(minimal())
    assert cfg.drone('b').role == 'supporter' and cfg.drone('b').deadline_ms == 300
    assert cfg.swarm['qos']['comm']['reliability'] == 'reliable'
    assert cfg.names == ['a', 'b'] and cfg.ids == [1, 2]


def test_overrides_apply_before_validation():
    cfg = build_config(minimal(), overrides=[parse_override('swarm.frames=7'),
                                            parse_override('drone_defaults.deadline_ms=500')])
    assert cfg.swarm['frames'] == 7 and cfg.drone('a').deadline_ms == 500


@pytest.mark.parametrize('data,path,words', [
    (minimal(swarm={'frams': 3}), 'swarm.frams', 'unknown key'),
    (minimal(swarm={'frames': -1}), 'swarm.frames', '>= 0'),
    (minimal(swarm={'rate_hz': 'fast'}), 'swarm.rate_hz', 'expected a number'),
    (minimal(swarm={'process_layout': 'one'}), 'swarm.process_layout', 'per_node'),
    (minimal(swarm={'qos': {'comm': {'reliability': 'maybe'}}}), 'swarm.qos.comm.reliability', 'best_effort'),
    (minimal(swarm={'codec': {'feature_dtype': 'bf16'}}), 'swarm.codec.feature_dtype', 'float16'),
    ({'drones': [{'name': 'a', 'id': 1}, {'name': 'b', 'id': 1}]}, 'drones[1].id', 'also drones[0]'),
    ({'drones': [{'name': 'a', 'id': 1}, {'name': 'a', 'id': 2}]}, 'drones[1].name', 'also drones[0]'),
    ({'drones': [{'name': '1a', 'id': 1}]}, 'drones[0].name', 'ROS name'),
    ({'drones': [{'name': 'a', 'id': 255}]}, 'drones[0].id', '<= 254'),
    ({'drones': [{'name': 'a'}]}, 'drones[0].id', 'required'),
    ({'drones': [{'name': 'a', 'id': 1, 'role': 'boss'}]}, 'drones[0].role', 'requester'),
    ({'drones': [{'name': 'a', 'id': 1, 'deadline_ms': 100, 'reply_timeout_ms': 100}]},
     'drones[0].reply_timeout_ms', 'below deadline_ms'),
    ({'drones': [{'name': 'a', 'id': 1, 'providers': []}]}, 'drones[0].providers', 'at least one'),
    ({'drones': [{'name': 'a', 'id': 1, 'providers': ['CUDAExecutionprovider', 'CPUExecutionProvider']}]},
     'drones[0].providers', "did you mean 'CUDAExecutionProvider'?"),
    (minimal(drone_defaults={'method': 'who2com', 'providers': ['TensorRT']}), 'drone_defaults.providers',
     'not an ONNX Runtime execution provider'),
    ({'drones': [{'name': 'a', 'id': 1, 'precision': 'int4'}]}, 'drones[0].precision', 'fp16'),
    ({'drones': [{'name': 'a', 'id': 1, 'precision': 'fp16', 'models': {'dir': 'models/who2com_hidden_target'}}]},
     'drones[0].precision', 'export --run <its run> --out models/who2com_hidden_target --fp16'),
    ({'drones': []}, 'drones', 'non-empty'),
    ({'drones': [{'name': 'a', 'id': 1}], 'extra': 1}, 'extra', 'unknown key'),
    (minimal(swarm={'monitor': {'extra_topics': [{'topic': 'bad topic!', 'type': 'x/msg/Y'}]}}),
     'swarm.monitor.extra_topics[0].topic', 'topic name'),
])
def test_errors_name_the_field(data, path, words):
    data = {**data, 'drone_defaults': {'method': 'placeholder', **data.get('drone_defaults', {})}}
    with pytest.raises(ConfigError) as info:
        build_config(data, source='test.yaml')
    assert info.value.path == path
    assert words in str(info.value) and str(info.value).startswith('test.yaml: ' + path)


def test_a_missing_method_is_an_error_not_a_stand_in():
    drones = [{'name': 'a', 'id': 1, 'role': 'requester'}, {'name': 'b', 'id': 2}]
    with pytest.raises(ConfigError) as info:
        build_config({'drones': drones}, source='test.yaml')
    assert info.value.path == 'drones[0].method' and 'method registry' in str(info.value)
    with pytest.raises(ConfigError) as info:   # set for one drone only
        build_config({'drones': [{**drones[0], 'method': 'who2com'}, drones[1]]}, source='test.yaml')
    assert info.value.path == 'drones[1].method'
    cfg = build_config({'drones': [{**d, 'method': 'placeholder'} for d in drones]})
    assert [d.method for d in cfg.drones] == ['placeholder', 'placeholder']


def test_known_providers_are_onnx_runtimes():
    import onnxruntime
    from collab_perception.config import KNOWN_PROVIDERS
    assert sorted(KNOWN_PROVIDERS) == sorted(onnxruntime.get_all_providers())


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match='cannot read'):
        load_swarm_config(str(tmp_path / 'missing.yaml'))
    bad = tmp_path / 'bad.yaml'
    bad.write_text('drones: [\n')
    with pytest.raises(ConfigError, match='not valid YAML'):
        load_swarm_config(str(bad))


def test_class_table():
    classes = load_classes()
    assert len(classes) >= 7 and classes.names[classes.index('road')] == 'road'
    import numpy as np
    rgb = classes.colorize(np.array([[0, 1], [2, 250]], np.uint8))
    assert rgb.shape == (2, 2, 3) and (rgb[0, 1] == classes.colors[1]).all() and (rgb[1, 1] == 0).all()


def test_the_gate_demo_runs_its_model_at_the_threshold_chosen_on_validation():
    """config/swarm_gate.yaml (make demo-gate) and the model's roles.json must not drift apart: the gate
    threshold is a property of the exported model, chosen on its validation split."""
    import json
    from collab_perception.config import load_swarm_config
    gate = load_swarm_config(resource_path('config', 'swarm_gate.yaml'))
    requester = gate.drones[0]
    assert requester.role == 'requester' and requester.method == 'when2com' and requester.select == 'threshold'
    with open(resource_path(requester.models['dir'], 'roles.json')) as f:
        roles = json.load(f)
    assert roles['method'] == 'when2com' and roles['gate'] is True
    assert requester.score_threshold == pytest.approx(roles['gate_threshold'])
    assert gate.swarm['source']['type'] == 'replay'


def test_a_config_can_overlay_another(tmp_path):
    from collab_perception.config import load_swarm_config, overlay
    assert overlay({'a': {'x': 1, 'y': [1, 2]}, 'b': 1}, {'a': {'y': [3]}, 'c': 2}) == \
        {'a': {'x': 1, 'y': [3]}, 'b': 1, 'c': 2}
    mash = load_swarm_config(resource_path('config', 'swarm_mash.yaml'))
    base = load_swarm_config(resource_path('config', 'swarm.yaml'))
    assert mash.names == [f'drone{i}' for i in range(1, 7)] and mash.drones[0].obstructed and not mash.drones[0].degraded
    assert mash.drones[1].method == 'mash' and mash.drones[1].deadline_ms == 400
    assert mash.swarm['codec']['query_dtype'] == 'uint8'
    assert mash.swarm['qos'] == base.swarm['qos']
    # mappings merge key by key: the overlay's query dtype, the base's other codec settings and world
    assert mash.swarm['codec'] == {**base.swarm['codec'], 'query_dtype': 'uint8', 'patch_dtype': 'uint8'}
    assert mash.swarm['source']['world'] == base.swarm['source']['world']
    assert mash.drones[1].patch_budget == 0.05 and base.drones[1].patch_budget != 0.05
    # a variant of a variant, paths relative to the file; a cycle or a bad value names `extends`
    (tmp_path / 'slow.yaml').write_text(f'extends: {resource_path("config", "swarm_mash.yaml")}\n'
                                        'swarm: {rate_hz: 1.0}\n')
    slow = load_swarm_config(str(tmp_path / 'slow.yaml'))
    assert slow.swarm['rate_hz'] == 1.0 and slow.names == mash.names
    (tmp_path / 'a.yaml').write_text('extends: b.yaml\n')
    (tmp_path / 'b.yaml').write_text('extends: a.yaml\n')
    with pytest.raises(ConfigError, match='extends: a cycle of overlays: .*a.yaml -> .*b.yaml -> .*a.yaml'):
        load_swarm_config(str(tmp_path / 'a.yaml'))
    (tmp_path / 'c.yaml').write_text('extends: [swarm.yaml]\n')
    with pytest.raises(ConfigError, match='extends: expected the path'):
        load_swarm_config(str(tmp_path / 'c.yaml'))
    (tmp_path / 'd.yaml').write_text('extends: missing.yaml\n')
    with pytest.raises(ConfigError, match='missing.yaml: <file>: cannot read'):
        load_swarm_config(str(tmp_path / 'd.yaml'))


def test_provider_options_are_checked_and_reach_the_node_as_json():
    import json
    from collab_perception.launch.plan import build_node_plan
    from collab_perception.nodes.common import ParameterError, provider_options_parameter
    base = {'drone_defaults': {'method': 'placeholder',
                               'providers': ['TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider']},
            'drones': [{'name': 'drone1', 'id': 1}, {'name': 'drone2', 'id': 2}]}
    trt = {'TensorrtExecutionProvider': {'trt_fp16_enable': True, 'trt_engine_cache_enable': True,
                                         'trt_engine_cache_path': '/tmp/trt', 'device_id': 0},
           'CUDAExecutionProvider': {'device_id': 0}}
    cfg = build_config({**base, 'drone_defaults': {**base['drone_defaults'], 'provider_options': trt}})
    perception = next(n for n in build_node_plan(cfg) if n.executable == 'perception')
    assert provider_options_parameter(perception.parameters['provider_options_json']) == trt
    cases = {
        "did you mean 'trt_fp16_enable'": {'TensorrtExecutionProvider': {'trt_fp16_enabled': True}},
        'expected bool': {'TensorrtExecutionProvider': {'trt_fp16_enable': 'yes'}},
        "options can be given for": {'CPUExecutionProvider': {'threads': 2}},
    }
    for words, options in cases.items():
        with pytest.raises(ConfigError, match=r'drone_defaults\.provider_options') as e:
            build_config({**base, 'drone_defaults': {**base['drone_defaults'], 'provider_options': options}})
        assert words in str(e.value), str(e.value)
    with pytest.raises(ConfigError, match=r'drones\[0\]\.provider_options.*not in providers'):
        build_config({**base, 'drones': [{'name': 'drone1', 'id': 1, 'providers': ['CPUExecutionProvider'],
                                          'provider_options': {'CUDAExecutionProvider': {'device_id': 1}}}]})
    with pytest.raises(ParameterError, match='not JSON'):
        provider_options_parameter('{device_id: 0')
    assert json.loads(perception.parameters['provider_options_json'])['CUDAExecutionProvider'] == {'device_id': 0}


def test_gpu_provider_options_never_reach_a_cpu_only_runtime(tmp_path):
    """The shipped model with TensorRT, CUDA, CPU and their options: on a machine with the CPU wheel the GPU
    providers (and their options) are skipped and every session runs on the CPU."""
    from collab_perception.runtime.methods import create_method
    m = create_method('who2com', model_dir='models/who2com_hidden_target', roles=('encoder',),
                      providers=['TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider'],
                      provider_options={'TensorrtExecutionProvider': {'trt_fp16_enable': True},
                                        'CUDAExecutionProvider': {'device_id': 0}})
    assert m.providers_used == {'encoder': ['CPUExecutionProvider']}
