"""The protocol strategies (runtime/protocols) driven without ROS: a few drones' perception, supporter and
requester roles wired together in one process, messages built from msg/ and filled and read by the roles as
the nodes do, but handed over by a test router instead of DDS. Each protocol runs its whole frame (request,
answers, connect, features or patches, the fused result), and each role's bad input is rejected by name."""
import array
import math

import numpy as np
import pytest

from collab_perception.msg import Connect, FeatureMap, PatchSegments, PerceptionOutput, Reply, Request
from collab_perception.runtime.codec import DEFAULT_LIMITS, CodecError, encode_tensor
from collab_perception.runtime.methods import PlaceholderMethod, create_method
from collab_perception.runtime.protocols import (FrameResult, Reject, RoleContext, Send, protocol_class,
                                                 protocol_names)
from collab_perception.world import geometry

MESSAGES = {'request': Request, 'reply': Reply, 'connect': Connect, 'feature': FeatureMap, 'patches': PatchSegments}
DTYPES = {'query_dtype': 'float32', 'score_dtype': 'float32', 'feature_dtype': 'float16', 'patch_dtype': 'uint8',
          'local_dtype': 'float32'}
MS = 1_000_000


class Swarm:
    """Every drone's three roles of one protocol; `frame` runs one camera frame through them."""

    def __init__(self, protocol: str, methods: dict, params: dict = None):
        self.protocol = protocol_class(protocol)
        ids = sorted(methods)
        names = [f'drone{i}' for i in ids]
        self.roles = {}
        for i in ids:
            ctx = RoleContext(i, ids, names, DTYPES, DEFAULT_LIMITS, dict(params or {}))
            m = methods[i]
            self.roles[i] = {'perception': self.protocol.perception(m, ctx), 'supporter': self.protocol.supporter(m, ctx),
                             'requester': self.protocol.requester(m, ctx)}
        self.sent: list[tuple[int, str, int]] = []      # (sender, kind, receiver)
        self.rejects: list[Reject] = []
        self.results: list[FrameResult] = []

    def deliver(self, sender: int, actions: list, now_ns: int) -> None:
        for action in actions:
            if isinstance(action, Reject):
                self.rejects.append(action)
                continue
            if isinstance(action, FrameResult):
                self.results.append(action)
                continue
            assert isinstance(action, Send)
            msg = MESSAGES[action.kind](sender=sender, receiver=action.receiver)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(action.stamp_ns, 1_000_000_000)
            action.fill(msg)
            self.sent.append((sender, action.kind, action.receiver))
            for role_name in ('supporter', 'requester'):
                role = self.roles[action.receiver][role_name]
                if action.kind in role.inbox:
                    payload = role.decode(action.kind, msg)
                    self.deliver(action.receiver, role.on_message(action.kind, msg, action.stamp_ns, payload, now_ns),
                                 now_ns)

    def frame(self, stamp_ns: int, inputs: dict, requester: int, now_ns: int = None) -> None:
        now_ns = stamp_ns + 10 * MS if now_ns is None else now_ns
        locals_ = {}
        for i, roles in self.roles.items():
            p = roles['perception']
            out = p.encode(inputs[i])
            requested = i == requester
            local = PerceptionOutput(drone=i, requested=requested)
            p.fill_local(out, requested, local)
            locals_[i] = local
            sup = roles['supporter']
            own = {k: inputs[i][k] for k in sup.inputs if k != 'perception'}
            if 'perception' in sup.inputs:
                own['perception'] = sup.decode_local(local)
            self.deliver(i, sup.on_own(stamp_ns, own, now_ns), now_ns)
        req = self.roles[requester]
        out = req['perception'].encode(inputs[requester])
        request = Request(sender=requester, receiver=255, deadline_ms=300)
        request.header.stamp.sec, request.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        req['perception'].fill_request(out, inputs[requester], request)
        own = req['requester'].decode_local(locals_[requester])
        self.deliver(requester, req['requester'].on_own(stamp_ns, own, True, now_ns), now_ns)
        for i, roles in self.roles.items():
            if i != requester:
                sup = roles['supporter']
                self.deliver(i, sup.on_message('request', request, stamp_ns, sup.decode('request', request), now_ns),
                             now_ns)


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_every_protocol_is_registered_with_its_roles():
    assert protocol_names() == ['handshake', 'memory', 'spatial']
    for name in protocol_names():
        p = protocol_class(name)
        assert p.registry_name == name and p.addressed
    with pytest.raises(ValueError, match='unknown protocol'):
        protocol_class('carrier-pigeon')


def test_handshake_frame_selects_the_best_scoring_supporter_and_fuses_its_features():
    methods = {i: PlaceholderMethod(num_classes=4) for i in (1, 2, 3)}
    swarm = Swarm('handshake', methods)
    views = images(3)
    views[2] = np.clip(views[0].astype(int) + 3, 0, 255).astype(np.uint8)   # drone3 sees nearly what drone1 sees
    swarm.frame(5_000 * MS, {i: {'image': views[i - 1]} for i in (1, 2, 3)}, requester=1)
    assert swarm.rejects == []
    assert sorted(swarm.sent) == [(1, 'connect', 3), (2, 'reply', 1), (3, 'feature', 1), (3, 'reply', 1)]
    (result,) = swarm.results
    o = result.outcome
    q = methods[1].encode(views[0]).query
    expected = {i: float(methods[1].match(q, methods[1].encode(views[i - 1]).key)[0]) for i in (2, 3)}
    assert o.scores == pytest.approx(expected) and o.selected == [3] and sorted(o.received) == [3]
    assert not o.fallback and o.deadline_met and result.summary == 'selected drone3'
    assert o.received[3].shape == (3, 8, 8)
    assert (result.classes == methods[1].encode(views[0]).own_classes).all()   # the placeholder fuses nothing
    assert swarm.roles[3]['supporter'].counters()['features_sent'] == 1


def test_handshake_supporter_rejects_bad_requests_and_unknown_connects():
    methods = {i: PlaceholderMethod() for i in (1, 2)}
    swarm = Swarm('handshake', methods)
    sup = swarm.roles[2]['supporter']
    request = Request(sender=1, receiver=255)
    encode_tensor(np.zeros(5, np.float32), 'float32', request.query)
    with pytest.raises(CodecError, match='request.query'):
        sup.decode('request', request)
    connect = Connect(sender=1, receiver=2)
    (reject,) = sup.on_message('connect', connect, 7 * MS, None, 8 * MS)
    assert reject.reason == 'no_features' and 'drone1' in reject.detail
    reply = Reply(sender=2, receiver=1)
    encode_tensor(np.zeros(0, np.float32), 'float32', reply.score)
    with pytest.raises(CodecError, match='empty score'):
        swarm.roles[1]['requester'].decode('reply', reply)


class WarpingPlaceholder(PlaceholderMethod):
    """The placeholder as a pose-warping model: its supporters warp their view into the requester's."""
    warp = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.loaded = []

    def load(self, roles):
        self.loaded.extend(roles)


def test_warping_supporter_encodes_its_view_warped_into_the_requesters():
    methods = {i: WarpingPlaceholder() for i in (1, 2)}
    swarm = Swarm('handshake', methods)
    sup = swarm.roles[2]['supporter']
    assert swarm.roles[1]['perception'].inputs == ('image', 'pose')
    assert sup.inputs == ('image', 'depth', 'pose') and sup.state_inputs == ('camera_info',)
    assert methods[2].loaded == ['encoder']
    K = geometry.intrinsics_from_fov(32, 32, 90.0)
    pose = [0.0, 0.0, 10.0, 0.0, 0.0, 0.0, 1.0]
    views = images(2, seed=1)
    inputs = {i: {'image': views[i - 1], 'depth': np.full((32, 32), 20.0, np.float32), 'pose': pose} for i in (1, 2)}
    swarm.frame(9_000 * MS, inputs, requester=1)
    (reject,) = swarm.rejects                  # no camera model yet: it cannot warp
    assert reject.reason == 'no_camera_info'
    sup.on_state('camera_info', K.ravel().tolist())
    swarm.rejects.clear()
    swarm.frame(9_200 * MS, inputs, requester=1)
    assert swarm.rejects == [] and swarm.results[-1].outcome.received
    # same pose, same camera: the warped view is the supporter's own view where the warp lands
    warped, valid = geometry.warp_to_target(views[1], inputs[2]['depth'], K, geometry.pose_matrix(pose[:3], pose[3:]),
                                            K, geometry.pose_matrix(pose[:3], pose[3:]))
    sent = swarm.results[-1].outcome.received[2]
    assert np.allclose(sent, methods[2].encode(warped).features, atol=1e-3)
    request = Request(sender=1, receiver=255, pose=[1.0, 2.0])
    encode_tensor(np.zeros(6, np.float32), 'float32', request.query)
    with pytest.raises(CodecError) as e:
        sup.decode('request', request)
    assert e.value.reason == 'bad_pose'


@pytest.fixture(scope='module')
def mash_dir(tmp_path_factory):
    from test_onnx_mash import export_small
    return export_small(tmp_path_factory, 'pixels')


def test_spatial_frame_sends_patches_only_and_fuses_them_by_supporter_slot(mash_dir):
    methods = {i: create_method('mash', model_dir=mash_dir) for i in (1, 2, 3)}
    swarm = Swarm('spatial', methods, {'patch_budget': 0.0})
    views = np.random.default_rng(3).integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)
    swarm.frame(3_000 * MS, {i: {'image': views[i - 1]} for i in (1, 2, 3)}, requester=1)
    assert swarm.rejects == [] and sorted(swarm.sent) == [(2, 'patches', 1), (3, 'patches', 1)]
    (result,) = swarm.results
    m = methods[1]
    own = m.encode(views[0])
    query = own.query.astype(np.float32)
    patches = {slot: m.patches(query, views[k]) for slot, k in ((0, 1), (1, 2))}
    assert {s: p.count for s, p in result.outcome.received.items()} == {2: patches[0].count, 3: patches[1].count}
    local = PerceptionOutput()
    swarm.roles[1]['perception'].fill_local(own, True, local)
    decoded = swarm.roles[1]['requester'].decode_local(local)
    assert (result.classes == m.fuse(decoded, patches)).all()
    assert result.summary == f'cells drone2:{patches[0].count},drone3:{patches[1].count}'
    # a frame the drone does not fuse keeps nothing but its own classes on the local topic
    local = PerceptionOutput()
    swarm.roles[2]['perception'].fill_local(own, False, local)
    assert list(local.features.shape) == [0] and list(local.own_classes.shape) == [128, 128]
    assert math.isclose(swarm.roles[2]['supporter'].counters()['replies'], 1)


def test_a_request_with_the_need_map_gets_only_the_cells_the_requester_would_take(tmp_path_factory):
    """A model exported with request_need: the Request carries the requester's scaled self-confidence as one
    byte per cell (its size as wire.request_size counts it), each supporter sends only the cells whose match
    beats it there, and a need map that does not fit the grid is rejected naming request.need."""
    from rclpy.serialization import serialize_message
    from test_onnx_mash import export_small
    from collab_perception.runtime import wire
    need_dir = export_small(tmp_path_factory, 'pixels', request_need=True)
    methods = {i: create_method('mash', model_dir=need_dir) for i in (1, 2, 3)}
    m = methods[1]
    assert m.request_need
    swarm = Swarm('spatial', methods, {'patch_budget': 0.0})
    views = np.random.default_rng(3).integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)
    own = m.encode(views[0])
    request = Request(sender=1, receiver=255)
    swarm.roles[1]['perception'].fill_request(own, {'image': views[0]}, request)
    assert len(request.need) == 256
    assert len(serialize_message(request)) == wire.request_size(m.query_shape(), DTYPES['query_dtype'], need_cells=256)
    decoded = swarm.roles[2]['supporter'].decode('request', request)
    need = decoded.need
    assert np.array_equal(need, np.floor(np.clip(own.self_confidence.reshape(-1) * m.self_confidence_scale, 0, 1)
                                         * 255).astype(np.uint8) / np.float32(255))
    swarm.frame(3_000 * MS, {i: {'image': views[i - 1]} for i in (1, 2, 3)}, requester=1)
    (result,) = swarm.results
    query = decoded.query
    for sender, k in ((2, 1), (3, 2)):
        everything = m.patches(query, views[k])
        wanted = m.patches(query, views[k], need=need)
        assert result.outcome.received[sender].count == wanted.count
        assert (wanted.confidence > need[wanted.cells]).all()
        assert set(wanted.cells) <= set(everything.cells)
    # with every matched cell eligible, the need map withholds some (the check above can hold vacuously)
    assert sum(m.patches(query, views[k], threshold=0.0).count -
               m.patches(query, views[k], threshold=0.0, need=need).count for k in (1, 2)) > 0
    request.need = array.array('B', bytes(255))
    with pytest.raises(CodecError) as e:
        swarm.roles[2]['supporter'].decode('request', request)
    assert e.value.field == 'request.need'


def test_spatial_requester_refuses_a_swarm_larger_than_the_model_fuses(mash_dir):
    m = create_method('mash', model_dir=mash_dir)
    ids = list(range(1, m.supporters + 3))
    ctx = RoleContext(1, ids, [f'd{i}' for i in ids], DTYPES, DEFAULT_LIMITS, {})
    with pytest.raises(ValueError, match=f'fuses at most {m.supporters} supporters'):
        protocol_class('spatial').requester(m, ctx)


def test_warping_supporter_can_defer_the_warp_to_the_connect():
    """warp_on: connect: a request is scored against the supporter's own key (no warp, no encoder pass);
    only the selected supporter warps and encodes, when the Connect comes."""
    methods = {i: WarpingPlaceholder() for i in (1, 2, 3)}
    swarm = Swarm('handshake', methods, {'warp_on': 'connect'})
    sup = swarm.roles[2]['supporter']
    assert sup.inputs == ('image', 'depth', 'pose', 'perception')
    K = geometry.intrinsics_from_fov(32, 32, 90.0)
    for i in (2, 3):
        swarm.roles[i]['supporter'].on_state('camera_info', K.ravel().tolist())
    calls = []
    encode = methods[2].encode
    methods[2].encode = lambda image: calls.append(image.shape) or encode(image)
    pose = [0.0, 0.0, 10.0, 0.0, 0.0, 0.0, 1.0]
    views = images(3, seed=2)
    views[1] = np.clip(views[0].astype(int) + 2, 0, 255).astype(np.uint8)   # drone2 is the best match
    inputs = {i: {'image': views[i - 1], 'depth': np.full((32, 32), 20.0, np.float32), 'pose': pose} for i in (1, 2, 3)}
    swarm.frame(4_000 * MS, inputs, requester=1)
    assert swarm.rejects == []
    (result,) = swarm.results
    q = methods[1].encode(views[0]).query
    assert result.outcome.scores[2] == pytest.approx(float(methods[1].match(q, methods[1].encode(views[1]).key)[0]))
    assert result.outcome.selected == [2]
    # drone2 encoded its own view once for its perception output and the warped one once, for the Connect only
    assert len(calls) == 2
    warped, _ = geometry.warp_to_target(views[1], inputs[2]['depth'], K, geometry.pose_matrix(pose[:3], pose[3:]),
                                        K, geometry.pose_matrix(pose[:3], pose[3:]))
    assert np.allclose(result.outcome.received[2], encode(warped).features, atol=1e-3)


def test_shipped_handshake_models_decode_whatever_the_selection_leaves():
    """A fusion node warms its decoder up at start-up and then decodes one, several or no supporters: the
    When2com model (its decoder blends by score) and Who2com's (nothing selected under select: threshold
    leaves the drone its own head) do all three."""
    for name, model_dir in (('when2com', 'models/when2com_hidden_target_mixed'),
                            ('who2com', 'models/who2com_hidden_target')):
        m = create_method(name, model_dir=model_dir)
        m.warmup()
        view, other = np.random.default_rng(5).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
        own = m.encode(view)
        theirs = m.encode(other).features
        classes = m.fuse(own, {2: theirs}, {2: 0.3})
        assert classes.shape == own.own_classes.shape and classes.dtype == np.uint8
        both = m.fuse(own, {2: theirs, 3: own.features}, {2: 0.3, 3: 1.5})
        assert both.shape == classes.shape
        alone = m.fuse(own, {}, {})
        if m.gate:    # When2com decodes its own features with its self-score
            assert (own.self_score is not None) and alone.shape == classes.shape
        else:
            assert np.array_equal(alone, own.own_classes)
