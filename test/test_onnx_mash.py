"""MASH's runtime (runtime/onnx_mash.py) without ROS: the roles a node loads give what the exported pipeline
gives, patches survive the wire exactly as sized, malformed patches are rejected with the field named, and a
swarm config speaks one protocol."""
import json
import re
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from collab_perception.config import ConfigError, build_config, load_swarm_config
from collab_perception.launch.plan import build_node_plan
from collab_perception.learn.mash import Mash
from collab_perception.learn.mash_export import export_roles, run_swarm_onnx
from collab_perception.learn.models import ModelConfig
from collab_perception.runtime import topics, wire
from collab_perception.runtime.codec import DEFAULT_LIMITS, UINT4, CodecError, decode_tensor, encode_tensor
from collab_perception.runtime.methods import create_method, protocol_of
from collab_perception.runtime.offline import mash_offline
from collab_perception.runtime.onnx_mash import PatchReply, decode_patches, encode_patches

SMALL = ModelConfig(channels=8, width=8, query_size=4, key_size=8, supporters=5)


def export_small(tmp_path_factory, patch_sampling: str, request_need: bool = False) -> str:
    torch.manual_seed(0)
    model = Mash(replace(SMALL, patch_sampling=patch_sampling)).eval()
    model.method_name = 'mash'
    model.request_need = request_need
    with torch.no_grad():   # decisive outputs (an untrained net is full of near-ties)
        model.own_head.classify.weight.mul_(50)
        model.smoothing.out.weight.normal_(0, 0.5)
    out = tmp_path_factory.mktemp(f'mash_{patch_sampling}{"_need" if request_need else ""}')
    export_roles(model, str(out))
    return str(out)


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    return export_small(tmp_path_factory, 'cells')


@pytest.fixture(scope='module')
def images():
    return np.random.default_rng(3).integers(0, 256, (6, 128, 128, 3), dtype=np.uint8)


def patches_msg():
    from collab_perception.msg import PatchSegments
    return PatchSegments()


def test_roles_give_what_the_exported_pipeline_gives(model_dir, images):
    method = create_method('mash', model_dir=model_dir)
    assert method.protocol == protocol_of('mash') == 'spatial' and protocol_of('who2com') == 'handshake'
    assert method.query_shape() == (16, 16, 4) and method.supporters == 5
    own = method.encode(images[0])
    assert own.features.shape == (8, 128, 128) and own.self_confidence.shape == (16, 16) and own.own_classes.dtype == np.uint8
    query = decode_tensor(encode_tensor(own.query, 'uint8'))
    # a threshold that keeps about half of one supporter's matched cells (an untrained net is unsure)
    t = float(np.median(method.patches(query, images[1], threshold=0.0).confidence))
    received = {}
    for slot in range(5):
        reply = method.patches(query, images[slot + 1], threshold=t)
        msg = encode_patches(reply, method.grid, 'uint8', patches_msg(), method.num_classes)
        received[slot] = decode_patches(msg, method.grid, method.num_classes, DEFAULT_LIMITS)
        assert received[slot].count == reply.count and (reply.confidence >= t).all()
    sent = sum(r.count for r in received.values())
    assert 0 < sent < 5 * 256, 'the threshold should keep some cells and drop others'
    classes = method.fuse(own, received)
    sessions = {r: ort.InferenceSession(f'{model_dir}/{r}.onnx', providers=['CPUExecutionProvider'])
                for r in ('requester', 'supporter', 'fusion')}
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    reference, _ = run_swarm_onnx(sessions, x[:1], x[1:], t, 'uint8', 'uint8')
    assert np.array_equal(classes, reference)
    # nothing received: the fusion still decodes (own distribution, self-confidence)
    alone = method.fuse(own, {})
    assert alone.shape == (128, 128)


def test_patch_message_size_is_what_wire_predicts(model_dir, images):
    from rclpy.serialization import serialize_message
    method = create_method('mash', model_dir=model_dir, roles=('matcher',))
    reply = method.patches(np.zeros(method.query_shape(), np.float32), images[1], threshold=0.0)
    for n in (0, 1, 37):
        part = PatchReply(reply.cells[:n], reply.confidence[:n], reply.class_probs[:n])
        msg = encode_patches(part, method.grid, 'uint8', patches_msg(), method.num_classes)
        assert len(serialize_message(msg)) == wire.patches_size(n, method.num_classes, 'uint8', 'uint8')


def test_a_byte_budget_caps_a_reply_to_its_most_confident_cells(model_dir, images):
    method = create_method('mash', model_dir=model_dir, roles=('matcher',))
    n = method.max_cells(0.1)
    assert wire.patches_size(n, 8, 'uint8', 'uint8') <= 0.1 * 128 * 128 < wire.patches_size(n + 1, 8, 'uint8', 'uint8')
    assert method.max_cells(0.0) is None
    query = np.zeros(method.query_shape(), np.float32)
    everything = method.patches(query, images[1], threshold=0.0)
    capped = method.patches(query, images[1], threshold=0.0, max_cells=10)
    assert everything.count > 10 and capped.count == 10 and (np.diff(capped.cells) > 0).all()
    assert capped.confidence.min() >= np.sort(everything.confidence)[-10]


def test_malformed_patches_are_rejected_with_the_field_named(model_dir):
    method = create_method('mash', model_dir=model_dir, roles=('decoder',))
    cells = np.array([3, 10, 200])
    good = PatchReply(cells, np.array([0.9, 0.5, 0.7], np.float32), np.full((3, 8), 0.125, np.float32))

    def msg(**changes):
        m = encode_patches(good, method.grid, 'uint8', patches_msg(), method.num_classes)
        for k, v in changes.items():
            setattr(m, k, v)
        return m

    assert decode_patches(msg(), method.grid, 8, DEFAULT_LIMITS).count == 3
    bad_probs = encode_tensor(np.full((3, 5), 0.2, np.float32), 'uint8')
    truncated = msg()
    truncated.class_probs.data = truncated.class_probs.data[:-1]
    cases = {
        'patches.grid': msg(grid_height=8),
        'patches.cells': msg(cells=[3, 300, 400]),
        'patches.cells ': msg(cells=[10, 3, 200]),
        'patches.confidence.shape': msg(cells=[3, 10]),
        'patches.class_probs.shape': msg(class_probs=patches_msg().class_probs.__class__(
            shape=bad_probs.shape, dtype=bad_probs.dtype, scale=bad_probs.scale, zero_point=bad_probs.zero_point,
            data=bad_probs.data)),
        'patches.class_probs.data': truncated,
        'patches.confidence': msg(confidence=patches_msg().confidence.__class__(
            shape=[3], dtype=0, data=np.array([0.5, 3.0, 0.2], np.float32).tobytes())),
    }
    for field, m in cases.items():
        with pytest.raises(CodecError) as e:
            decode_patches(m, method.grid, 8, DEFAULT_LIMITS)
        assert e.value.field.startswith(field.strip()), (field, e.value.field, str(e.value))


def test_offline_spatial_handshake_scores_frames(model_dir, images):
    method = create_method('mash', model_dir=model_dir)
    labels = np.random.default_rng(0).integers(0, 8, (6, 128, 128), dtype=np.uint8)
    mask = np.zeros((6, 128, 128), bool)
    mask[0, 40:80, 40:80] = True
    snaps = [{'rgb': images, 'labels': labels, 'target_index': np.int64(0), 'obstruction_mask': mask}] * 2
    out = mash_offline(method, snaps)
    assert out['frames'] == 2 and 0 <= out['fused_accuracy'] <= 1 and out['fused_obstructed_accuracy'] is not None
    query = decode_tensor(encode_tensor(method.encode(images[0]).query, 'uint8'))
    expected = np.mean([method.patches(query, images[k]).count for k in range(1, 6)])
    assert out['mean_cells_per_supporter'] == pytest.approx(expected)
    assert out['own_obstructed_accuracy'] == pytest.approx(
        float((method.encode(images[0]).own_classes == labels[0])[mask[0]].mean()))


def test_a_swarm_speaks_one_protocol(model_dir):
    base = load_swarm_config().raw
    data = json.loads(json.dumps(base))
    data['drone_defaults']['method'] = 'mash'
    data['drone_defaults']['models'] = {'dir': model_dir}
    cfg = build_config(data)
    plan = build_node_plan(cfg)
    expected = plan[0].parameters['expected_endpoints']
    assert f'{topics.comm_topic("patches", "drone1")}:{len(cfg.drones) - 1}:2' in expected
    assert not any('/comm/reply' in e or '/comm/connect' in e for e in expected)
    data['drones'][2]['method'] = 'who2com'
    with pytest.raises(ConfigError, match=r'drones\[2\]\.method'):
        build_node_plan(build_config(data))
    data = json.loads(json.dumps(base))
    data['drones'][0]['obstructed'] = True
    data['swarm']['source']['type'] = 'airsim'
    with pytest.raises(ConfigError, match=r'drones\[0\]\.obstructed'):
        build_node_plan(build_config(data))
    data['drones'][0]['obstructed'] = 'yes'
    with pytest.raises(ConfigError, match=r'drones\[0\]\.obstructed'):
        build_config(data)


@pytest.fixture(scope='module')
def pixel_model_dir(tmp_path_factory):
    return export_small(tmp_path_factory, 'pixels')


def test_pixel_patches_cross_the_wire_as_the_exported_pipeline_sends_them(pixel_model_dir, images):
    """'pixels' patch sampling (MASH Eq. 3): a supporter sends one class id per pixel of each matched cell;
    the roles a node loads, the message and its size, and the fusion agree with the exported pipeline."""
    from rclpy.serialization import serialize_message
    method = create_method('mash', model_dir=pixel_model_dir)
    assert method.patch_sampling == 'pixels' and method.pixel_cell == 8
    own = method.encode(images[0])
    query = decode_tensor(encode_tensor(own.query, 'uint8'))
    t = float(np.median(method.patches(query, images[1], threshold=0.0).confidence))
    received = {}
    for slot in range(5):
        reply = method.patches(query, images[slot + 1], threshold=t)
        assert reply.class_probs is None and reply.labels.shape == (reply.count, 8, 8)
        assert np.isin(reply.labels, [*range(8), 255]).all()
        msg = method.encode_reply(reply, 'uint8', patches_msg())
        assert len(serialize_message(msg)) == wire.patches_size(reply.count, 8, 'uint8', 'uint8', cell_size=8)
        received[slot] = method.decode_reply(msg, DEFAULT_LIMITS)
        assert np.array_equal(received[slot].labels, reply.labels)
    assert 0 < sum(r.count for r in received.values()) < 5 * 256
    sessions = {r: ort.InferenceSession(f'{pixel_model_dir}/{r}.onnx', providers=['CPUExecutionProvider'])
                for r in ('requester', 'supporter', 'fusion')}
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    reference, _ = run_swarm_onnx(sessions, x[:1], x[1:], t, 'uint8', 'uint8')
    assert np.array_equal(method.fuse(own, received), reference)
    assert method.static_feature_shape(pixel_model_dir) == (256, 8, 8)
    n = method.max_cells(0.05)
    assert wire.patches_size(n, 8, 'uint8', 'uint8', cell_size=8) <= 0.05 * 128 * 128 \
        < wire.patches_size(n + 1, 8, 'uint8', 'uint8', cell_size=8)


def test_malformed_pixel_patches_are_rejected_with_the_field_named(pixel_model_dir, model_dir):
    method = create_method('mash', model_dir=pixel_model_dir, roles=('decoder',))
    cells_model = create_method('mash', model_dir=model_dir, roles=('decoder',))
    labels = np.random.default_rng(0).integers(0, 8, (3, 8, 8)).astype(np.uint8)
    labels[0, 0, 0] = 255
    good = PatchReply(np.array([3, 10, 200]), np.array([0.9, 0.5, 0.7], np.float32), labels=labels)

    def msg(labels=None, probs=None):
        m = method.encode_reply(good if labels is None else PatchReply(good.cells, good.confidence, labels=labels),
                                'uint8', patches_msg())
        if probs is not None:
            encode_tensor(probs, 'uint8', m.class_probs)
        return m

    assert np.array_equal(method.decode_reply(msg(), DEFAULT_LIMITS).labels, labels)
    assert msg().labels.dtype == UINT4 and len(msg().labels.data) == 3 * 8 * 8 // 2     # two class ids a byte
    one_a_byte = msg()
    encode_tensor(labels, 'uint8', one_a_byte.labels)                 # also accepted: a byte each, 255 unseen
    assert np.array_equal(method.decode_reply(one_a_byte, DEFAULT_LIMITS).labels, labels)
    bad_class = labels.copy()
    bad_class[1, 2, 3] = 9
    float_labels = msg()
    encode_tensor(labels.astype(np.float32), 'float16', float_labels.labels)
    cases = {'patches.labels.shape': msg(labels[:, :4]), 'patches.labels': msg(bad_class),
             'patches.class_probs': msg(probs=np.full((3, 8), 0.1, np.float32)),
             'patches.labels ': float_labels}
    for field, m in cases.items():
        with pytest.raises(CodecError) as e:
            method.decode_reply(m, DEFAULT_LIMITS)
        assert e.value.field.startswith(field.strip()), (field, e.value.field, str(e.value))
    # a drone with a 'cells' model rejects 'pixels' patches (and the other way round), naming the field
    with pytest.raises(CodecError, match='patches.labels'):
        cells_model.decode_reply(msg(), DEFAULT_LIMITS)


@pytest.mark.parametrize('info,field', [
    ({'geometry': 'sphere'}, "geometry 'sphere'"),
    ({'geometry': 'homography'}, 'needs a `plane` mapping'),
    ({'geometry': 'homography', 'plane': {'min_confidence': 0.5, 'threshold_px': 6.0}}, 'plane.min_support'),
    ({'geometry': 'homography', 'plane': {'min_confidence': 0.5, 'threshold_px': 'six', 'min_support': 0.1}},
     'plane.threshold_px'),
    ({'geometry': 'homography', 'plane': {'min_confidence': 0.5, 'threshold_px': 6.0, 'min_support': 0.1,
                                          'weight': float('nan')}}, 'plane.weight'),
    ({'geometry': 'homography', 'plane': {'min_confidence': 0.5, 'threshold_px': 6.0, 'min_support': 0.1,
                                          'tilt': 1}}, 'unknown plane setting'),
    ({'geometry': 'homography', 'plane': {'min_confidence': 0.5, 'threshold_px': 6.0, 'min_support': 0.1,
                                          'coefficients': [1.0, 2.0]}}, 'plane.coefficients'),
])
def test_a_bad_ground_plane_in_roles_json_fails_at_start_up_naming_the_field(info, field):
    from collab_perception.runtime.onnx_mash import plane_settings
    with pytest.raises(ValueError, match=re.escape(field)):
        plane_settings(info, 'models/x')


def test_the_shipped_model_s_ground_plane_settings_load():
    from collab_perception.runtime.onnx_mash import plane_settings
    from collab_perception.runtime.onnx_method import read_roles_json
    info = read_roles_json('models/mash_obstruction')
    assert plane_settings({'geometry': 'none'}) is None and plane_settings({}) is None
    assert info['geometry'] == 'homography'                  # models/README.md: the shipped MASH uses it
    assert set(plane_settings(info)) == {'min_confidence', 'threshold_px', 'min_support', 'weight', 'coefficients'}
