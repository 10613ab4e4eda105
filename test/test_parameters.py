"""Node parameters as `ros2 param describe` / `ros2 param set` see them, on a running node: each has its help
text, its range or choices and the read_only flag (every parameter is read at start-up), and a change at run
time is refused with a reason instead of being accepted and silently ignored."""
import pytest
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import DescribeParameters, GetParameters, SetParameters

from collab_perception.config import resource_path
from collab_perception.nodes.common import ParameterError, check_parameter, parameter_descriptor

from rostools import stop_process
from test_monitor import start_monitor


def test_descriptor_carries_range_choices_and_read_only():
    d = parameter_descriptor('depth', 10, minimum=1, maximum=1000)
    assert d.read_only and d.description == 'depth'
    assert (d.integer_range[0].from_value, d.integer_range[0].to_value) == (1, 1000) and not d.floating_point_range
    d = parameter_descriptor('period', 1.0, minimum=0.05)
    assert d.floating_point_range[0].from_value == 0.05 and d.floating_point_range[0].to_value > 1e300
    d = parameter_descriptor('reliability', 'reliable', choices=('reliable', 'best_effort'))
    assert d.additional_constraints == 'one of: reliable, best_effort' and not d.integer_range


def _call(node, client, request, spin_until):
    assert client.wait_for_service(timeout_sec=20), client.srv_name
    future = client.call_async(request)
    assert spin_until(node, future.done, timeout=20)
    return future.result()


@pytest.mark.ros
def test_a_running_node_describes_its_parameters_and_refuses_a_change(ros, tmp_path):
    from rostools import spin_until
    proc, _ = start_monitor(tmp_path)
    node = ros.create_node('test_parameter_client')
    try:
        describe = node.create_client(DescribeParameters, '/swarm/monitor/describe_parameters')
        got = _call(node, describe, DescribeParameters.Request(names=['period_s', 'qos.comm.reliability']), spin_until)
        period, reliability = got.descriptors
        assert period.read_only and period.description == 'BandwidthStats publishing period'
        assert period.floating_point_range[0].from_value == pytest.approx(0.05)
        assert reliability.additional_constraints == 'one of: reliable, best_effort'

        setter = node.create_client(SetParameters, '/swarm/monitor/set_parameters')
        change = Parameter(name='period_s', value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=9.0))
        result, = _call(node, setter, SetParameters.Request(parameters=[change]), spin_until).results
        assert not result.successful and 'read-only' in result.reason, result.reason

        getter = node.create_client(GetParameters, '/swarm/monitor/get_parameters')
        value, = _call(node, getter, GetParameters.Request(names=['period_s']), spin_until).values
        assert value.double_value == pytest.approx(0.2)      # what the params file set, unchanged
    finally:
        node.destroy_node()
        stop_process(proc)


def test_parameter_docs_are_generated_from_the_schema_and_current():
    from collab_perception.config import load_swarm_config
    from collab_perception.launch.plan import parameters_markdown
    from collab_perception.config import parameter_field
    from collab_perception.launch.plan import DATACLASS_PREFIXES, build_node_plan
    for n in build_node_plan(load_swarm_config(resource_path('config', 'swarm_mash.yaml'))):
        for name in n.parameters:            # every planned parameter has a schema field
            assert name.startswith(tuple(DATACLASS_PREFIXES)) or parameter_field(name).help, name
    text = parameters_markdown(load_swarm_config())
    with open(resource_path('docs', 'PARAMETERS.md'), encoding='utf-8') as f:
        assert f.read() == parameters_markdown(load_swarm_config()), \
            'docs/PARAMETERS.md is stale: collab-perception params --markdown > docs/PARAMETERS.md'
    assert '| `score_threshold` | fusion | `0.0` |  | yes |' in text


def test_node_parameters_check_values_against_the_schema():
    assert check_parameter('deadline_ms', 250) == 250
    with pytest.raises(ParameterError, match=r"parameter 'deadline_ms'.*<= 60000"):
        check_parameter('deadline_ms', 65535)
    with pytest.raises(ParameterError, match=r"parameter 'codec.local_dtype'.*one of: float32, float16"):
        check_parameter('codec.local_dtype', 'int8')
    with pytest.raises(ParameterError, match=r"parameter 'method'.*one of: a, b"):
        check_parameter('method', '', choices=('a', 'b'))
    with pytest.raises(ParameterError, match='not finite'):
        check_parameter('score_threshold', float('nan'))


def start_fusion(tmp_path):
    """drone1's fusion node of a placeholder swarm, started as the node plan starts it."""
    import subprocess
    from collab_perception.config import build_config
    from collab_perception.launch.embedded import executable_command
    from collab_perception.launch.plan import ProcessSpec, build_node_plan, write_params_file
    cfg = build_config({'drone_defaults': {'method': 'placeholder', 'role': 'requester'},
                        'drones': [{'name': 'drone1', 'id': 1}, {'name': 'drone2', 'id': 2}]})
    spec = next(n for n in build_node_plan(cfg, str(tmp_path)) if n.executable == 'fusion' and n.drone == 'drone1')
    process = ProcessSpec('drone1/fusion', 'fusion', spec.namespace, [spec])
    argv = executable_command('fusion') + process.ros_args(write_params_file(process, str(tmp_path)))
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.ros
def test_a_run_time_parameter_is_applied_on_a_running_node_and_the_others_are_refused(ros, tmp_path):
    from rostools import spin_until
    proc = start_fusion(tmp_path)
    node = ros.create_node('test_fusion_parameter_client')
    prefix = '/drone1/fusion'
    try:
        describe = node.create_client(DescribeParameters, f'{prefix}/describe_parameters')
        threshold, deadline = _call(node, describe, DescribeParameters.Request(
            names=['score_threshold', 'deadline_ms']), spin_until).descriptors
        assert not threshold.read_only and 'When2com' in threshold.description
        assert deadline.read_only and deadline.integer_range[0].to_value == 60000
        setter = node.create_client(SetParameters, f'{prefix}/set_parameters')

        def set_one(name, value):
            (result,) = _call(node, setter, SetParameters.Request(parameters=[Parameter(name=name, value=value)]),
                              spin_until).results
            return result

        ok = set_one('score_threshold', ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=0.4))
        assert ok.successful, ok.reason
        nan = set_one('score_threshold', ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=float('nan')))
        assert not nan.successful and 'not finite' in nan.reason, nan.reason
        refused = set_one('deadline_ms', ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=200))
        assert not refused.successful and 'read-only' in refused.reason, refused.reason
        getter = node.create_client(GetParameters, f'{prefix}/get_parameters')
        got = _call(node, getter, GetParameters.Request(names=['score_threshold', 'deadline_ms']), spin_until).values
        assert got[0].double_value == pytest.approx(0.4) and got[1].integer_value == 300
    finally:
        node.destroy_node()
        _, out = stop_process(proc)
    assert 'score_threshold set to 0.4' in out, out
