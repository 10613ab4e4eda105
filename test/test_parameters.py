"""Node parameters as `ros2 param describe` / `ros2 param set` see them, on a running node: each has its help
text, its range or choices and the read_only flag (every parameter is read at start-up), and a change at run
time is refused with a reason instead of being accepted and silently ignored."""
import pytest
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import DescribeParameters, GetParameters, SetParameters

from collab_perception.nodes.common import parameter_descriptor

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
        assert period.read_only and period.description == 'BandwidthStats period'
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
