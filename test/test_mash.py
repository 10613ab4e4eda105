"""MASH and its baselines on the obstruction setting (MASH §III-IV): shapes of every model, the cost volume's
no-match bin, warping with the ground-truth grid against world.geometry.sample_cells, the fusions, the wire's
rounding and bytes against the codec and the serialized messages, the loader's mirroring, ONNX Runtime against
torch for every role, and a tiny end-to-end training."""
import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from collab_perception.data import generate
from collab_perception.learn.mash import (CELL_SIZE, Mash, MashStacked, distance_volume, quantize_dequantize,
                                          sample_cells)
from collab_perception.learn.mash_data import ObstructionLoader, mirror_correspondence
from collab_perception.learn.models import ModelConfig, create_model
from collab_perception.world.geometry import cell_centres, sample_cells as sample_cells_np

@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the machine's cores are shared with training runs (two threads oversubscribe them)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


SMALL = ModelConfig(channels=8, width=8, query_size=4, key_size=8, supporters=5)
METHODS = ('inpainting', 'inpainting_all', 'inputstack', 'outputstack', 'warped_outputstack', 'warped_outputstack_cells', 'mash',
           'mash_pixels', 'mash_stem', 'mash_flow', 'mash_accuracy', 'mash_stacked')


def make(name, size=32, cfg=SMALL):
    if name == 'mash_pixels':
        model = Mash(replace(cfg, patch_sampling='pixels'), image_size=(size, size))
    elif name == 'mash_stem':
        model = Mash(replace(cfg, patch_sampling='pixels', match_stem=4), image_size=(size, size))
    elif name == 'mash_flow':
        model = Mash(replace(cfg, patch_sampling='pixels', refine_flow=True), image_size=(size, size))
    elif name == 'mash_accuracy':
        model = Mash(replace(cfg, patch_sampling='pixels', refine_flow=True, accuracy_confidence=True),
                     image_size=(size, size))
    elif name == 'mash':
        model = Mash(cfg, image_size=(size, size))
    elif name == 'mash_stacked':
        model = MashStacked(cfg, image_size=(size, size))
    else:
        model = create_model(name, cfg)
    model.method_name = name
    return model


def synthetic_batch(b=2, s=5, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    cells = (size // CELL_SIZE) ** 2
    correspondence = torch.randint(0, cells + 1, (b, s, cells), generator=g)
    centres = torch.from_numpy(cell_centres(size, size, CELL_SIZE))
    positions = torch.cat([centres, torch.full((1, 2), float('nan'))])[correspondence]
    return {'target': torch.rand(b, 3, size, size, generator=g),
            'supporters': torch.rand(b, s, 3, size, size, generator=g),
            'labels': torch.randint(0, 8, (b, size, size), generator=g),
            'supporter_labels': torch.randint(0, 8, (b, s, size, size), generator=g),
            'obstruction_mask': torch.rand(b, size, size, generator=g) > 0.7,
            'correspondence': correspondence, 'correspondence_uv': positions}


@pytest.mark.parametrize('name', METHODS)
def test_every_model_gives_per_pixel_scores_in_train_and_eval(name):
    model = make(name)
    batch = synthetic_batch()
    for mode in ('train', 'eval'):
        model.train(mode == 'train')
        out = model.forward_batch(batch, mode)
        frames = 12 if name == 'inpainting_all' and mode == 'train' else 2    # trained on all six views
        assert out.logits.shape == (frames, 8, 32, 32) and torch.isfinite(out.logits).all()
        loss = model.loss(out, batch)
        assert torch.isfinite(loss)
        if name.startswith('mash'):
            assert out.extra['volume'].shape == (2, 5, 17, 4, 4)        # 4 x 4 cells + no-match
            assert out.own_logits.shape == (2, 6, 8, 32, 32)
            if mode == 'eval':
                assert out.extra['sent'].shape == out.extra['match'].shape == (2, 5, 16)
    model.train()
    model.loss(model.forward_batch(batch, 'train'), batch).backward()
    assert all(p.grad is not None for p in model.parameters())       # every part is trained


def test_query_key_sizes_are_asymmetric():
    with pytest.raises(ValueError, match='query_size <= key_size'):
        Mash(ModelConfig(channels=8, width=8, query_size=16, key_size=8), image_size=(32, 32))


def test_distance_volume_and_its_no_match_bin():
    g = torch.Generator().manual_seed(1)
    p, k = torch.randn(3, 6, 2, 4, generator=g), torch.randn(3, 6, 2, 4, generator=g)
    p[0, :, 1, 2] = 0.0                                  # a target cell whose transformed query is the zero vector
    volume = distance_volume(p, k)
    assert volume.shape == (3, 9, 2, 4)
    expected = -torch.cdist(k.flatten(2).transpose(1, 2), p.flatten(2).transpose(1, 2))   # [N, source, target]
    assert torch.allclose(volume[:, :8].flatten(2), expected, atol=1e-4)
    assert torch.allclose(volume[:, 8].flatten(1), -p.flatten(2).norm(dim=1), atol=2e-3)   # sqrt(eps) at 0
    assert volume[0, :, 1, 2].argmax() == 8            # nearest to 0: the no-match bin wins
    k[1, :, 0, 3] = p[1, :, 1, 1]                       # a source cell identical to target cell (1, 1)
    assert distance_volume(p, k)[1, :, 1, 1].argmax() == 3


def test_warping_with_the_ground_truth_grid_reproduces_sample_cells():
    rng = np.random.default_rng(2)
    size, hc = 32, 4
    values = rng.random((2, 8, size, size)).astype(np.float32)
    corr = rng.integers(0, hc * hc + 1, (2, hc * hc))
    corr[:, :3] = hc * hc                                # no-match cells
    got = sample_cells(torch.from_numpy(values), torch.from_numpy(corr), CELL_SIZE).numpy()
    for i in range(2):
        want = sample_cells_np(values[i].transpose(1, 2, 0), corr[i], CELL_SIZE).transpose(2, 0, 1)
        assert np.array_equal(got[i], want)
    # MASH's own sampling: a volume peaked on the ground truth samples the supporter's per-cell distribution
    # exactly as sample_cells does on the cell grid (cell size 1), zeros for no match
    cell_probs = torch.from_numpy(rng.random((2, hc * hc, 8)).astype(np.float32))
    volume = 20.0 * torch.nn.functional.one_hot(torch.from_numpy(corr), hc * hc + 1).float()   # [N, C, C + 1]
    volume = volume.transpose(1, 2).reshape(2, hc * hc + 1, hc, hc)
    confidence, match, class_probs = Mash.hard_matches(volume, cell_probs)
    assert torch.equal(match, torch.from_numpy(corr)) and (confidence > 0.99).all()
    for i in range(2):
        grid_map = cell_probs[i].numpy().reshape(hc, hc, 8)
        want = sample_cells_np(grid_map, corr[i], 1).reshape(hc * hc, 8)
        assert np.array_equal(class_probs[i].numpy(), want)


@pytest.mark.parametrize('name', ['warped_outputstack', 'warped_outputstack_cells'])
def test_warped_outputstack_falls_back_to_the_target_where_nothing_matches(name):
    model = make(name).eval()
    batch = synthetic_batch(b=1)
    batch['correspondence'][:] = 16                      # no supporter cell matches
    batch['correspondence_uv'][:] = float('nan')
    probs = torch.rand(1, 6, 8, 32, 32).softmax(2)
    warped = model.supporter_distributions(probs, batch)
    assert torch.equal(warped, probs[:, :1].expand(1, 5, 8, 32, 32))


def test_warped_outputstack_at_label_resolution_names_the_missing_key():
    batch = synthetic_batch(b=1)
    del batch['correspondence_uv']
    with pytest.raises(ValueError, match='correspondence_uv.*warped_outputstack_cells'):
        make('warped_outputstack').supporter_distributions(torch.rand(1, 6, 8, 32, 32), batch)


def test_hard_and_soft_selection():
    model = make('mash').eval()
    own = torch.rand(1, 8, 32, 32).softmax(1)
    self_conf = torch.full((1, 4, 4), 0.6)
    patch_probs = torch.zeros(1, 5, 16, 8)
    patch_conf = torch.zeros(1, 5, 16)
    patch_probs[0, 2, 5, 3] = 1.0                        # cell 5 (row 1, col 1): supporter 2 is sure, class 3
    patch_conf[0, 2, 5] = 0.9
    patch_probs[0, 4, 5, 6] = 1.0                        # a less confident supporter for the same cell
    patch_conf[0, 4, 5] = 0.7
    patch_probs[0, 1, 9, 1] = 1.0                        # cell 9: less confident than the target itself
    patch_conf[0, 1, 9] = 0.5
    fused = model.fuse(own, self_conf, patch_probs, patch_conf)
    cell5 = (slice(None), slice(8, 16), slice(8, 16))
    assert (fused[0][cell5].argmax(0) == 3).all() and torch.allclose(fused[0][cell5][3], torch.ones(8, 8))
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[8:16, 8:16] = False
    assert torch.equal(fused[0][:, mask], own[0][:, mask])
    model.fusion_kind = 'soft'
    fused = model.fuse(own, self_conf, patch_probs, patch_conf)
    sup2, sup4 = patch_probs[0, 2, 5][:, None, None], patch_probs[0, 4, 5][:, None, None]
    want = (0.6 * own[0][cell5] + 0.9 * sup2 + 0.7 * sup4) / 2.2
    assert torch.allclose(fused[0][cell5], want, atol=1e-6)
    assert torch.allclose(fused.sum(1), torch.ones(1, 32, 32), atol=1e-5)


def test_bayes_fusion_is_the_posterior_of_labels_right_with_their_confidence():
    model = make('mash').eval()
    model.fusion_kind = 'bayes'
    k = 8
    own = torch.full((1, k, 32, 32), 0.3 / (k - 1))
    own[:, 0] = 0.7                                      # the target: class 0, 70 % sure everywhere
    self_conf = torch.full((1, 4, 4), 0.7)
    patch_probs = torch.zeros(1, 5, 16, k)
    patch_conf = torch.zeros(1, 5, 16)
    patch_probs[0, 1, 5, 3] = 1.0                        # cell 5: one supporter says class 3 at 0.6
    patch_conf[0, 1, 5] = 0.6
    for j in (2, 3):                                     # cell 6: two agree on class 4 at 0.6
        patch_probs[0, j, 6, 4] = 1.0
        patch_conf[0, j, 6] = 0.6
    fused = model.fuse(own, self_conf, patch_probs, patch_conf)
    assert torch.allclose(fused.sum(1), torch.ones(1, 32, 32), atol=1e-5)
    cell = lambda i: (0, slice(None), slice(8 * (i // 4), 8 * (i // 4) + 8), slice(8 * (i % 4), 8 * (i % 4) + 8))
    # the posterior by hand: prior times 0.6 for the class received and 0.4 / 7 for every other one
    post5 = own[0, :, 0, 0] * torch.where(torch.arange(k) == 3, 0.6, 0.4 / (k - 1))
    assert torch.allclose(fused[cell(5)], (post5 / post5.sum())[:, None, None].expand(k, 8, 8), atol=1e-5)
    assert (fused[cell(5)].argmax(0) == 0).all()         # one supporter at 0.6 does not outvote a 0.7 target
    assert (fused[cell(6)].argmax(0) == 4).all()         # two that agree do
    untouched = torch.ones(32, 32, dtype=torch.bool)
    untouched[8:16, 8:24] = False
    assert torch.allclose(fused[0][:, untouched], own[0][:, untouched], atol=1e-6)
    # a pixel a patch does not cover (all-zero value, 'pixels' sampling outside the supporter's view) is no evidence
    pixels = torch.zeros(1, 5, 16, k, 8, 8)
    pixels[0, 1, 5, 3, :4] = 1.0                         # the top half of cell 5 only
    fused = model.fuse(own, self_conf, pixels, patch_conf)
    assert torch.allclose(fused[0, :, 12:16, 8:16], own[0, :, 12:16, 8:16], atol=1e-6)
    assert not torch.allclose(fused[0, :, 8:12, 8:16], own[0, :, 8:12, 8:16])
    model.fusion_kind = 'median'
    with pytest.raises(ValueError, match='hard, soft, bayes'):
        model.fuse(own, self_conf, patch_probs, patch_conf)


def test_the_cli_s_fusions_are_the_model_s():
    from collab_perception.learn import cli, mash
    assert cli.FUSIONS == mash.FUSIONS


def test_training_fusion_is_a_mixture_whose_mode_is_hard_selection():
    """With peaked matches the soft training fusion and HardSelection agree wherever one candidate dominates."""
    torch.manual_seed(0)
    model = make('mash').eval()
    batch = synthetic_batch(b=1)
    with torch.no_grad():
        state = model.handshake(batch)
        state['volume'] = 30.0 * torch.nn.functional.one_hot(batch['correspondence'], 17).float() \
            .transpose(2, 3).reshape(1, 5, 17, 4, 4)
        state['self_confidence'] = torch.full((1, 4, 4), 1e-4)
        soft = model.train_scores(state)
        hard = model.infer(state, threshold=0.0)['scores']
    assert torch.allclose(soft.sum(1), torch.ones(1, 32, 32), atol=1e-4)
    # cells matched by exactly one supporter: the mixture is that supporter's cell distribution
    single = (batch['correspondence'][0] != 16).sum(0) == 1
    for cell in torch.nonzero(single).flatten().tolist():
        r, c = divmod(cell, 4)
        block = (slice(None), slice(8 * r, 8 * r + 8), slice(8 * c, 8 * c + 8))
        assert torch.allclose(soft[0][block], hard[0][block], atol=1e-2)


def test_wire_rounding_is_the_codec_s():
    from collab_perception.runtime.codec import decode_tensor, encode_tensor
    g = torch.Generator().manual_seed(3)
    for dtype in ('uint8', 'int8', 'float16'):
        x = torch.randn(2, 6, 4, 4, generator=g) * 3
        got = quantize_dequantize(x, (1, 2, 3), dtype)
        for i in range(2):
            want = decode_tensor(encode_tensor(x[i].permute(1, 2, 0).numpy(), dtype))
            assert np.abs(got[i].permute(1, 2, 0).numpy() - want).max() <= 1e-6
    probs = torch.rand(3, 16, 8, generator=g)
    sent = torch.rand(3, 16, generator=g) > 0.5
    got = quantize_dequantize(probs, (1, 2), 'uint8', sent[:, :, None])
    for i in range(3):
        want = decode_tensor(encode_tensor(probs[i][sent[i]].numpy(), 'uint8'))
        assert np.abs(got[i][sent[i]].numpy() - want).max() <= 1e-6
        assert torch.equal(got[i][~sent[i]], probs[i][~sent[i]])


def test_bytes_equal_the_serialized_messages():
    from rclpy.serialization import serialize_message
    from collab_perception.learn.mash_eval import baseline_supporter_bytes, patches_bytes, query_bytes
    from collab_perception.msg import FeatureMap, PatchSegments, Request
    from collab_perception.runtime.codec import encode_tensor
    req = Request(sender=1, receiver=255, deadline_ms=300)
    encode_tensor(np.random.default_rng(0).normal(size=(16, 16, 8)).astype(np.float32), 'uint8', req.query)
    assert query_bytes((16, 16), 8, 'uint8') == len(serialize_message(req))
    for cells in (0, 1, 37, 256):
        msg = PatchSegments(sender=2, receiver=1, grid_height=16, grid_width=16, cells=list(range(cells)))
        encode_tensor(np.random.default_rng(cells).random(cells).astype(np.float32), 'uint8', msg.confidence)
        encode_tensor(np.random.default_rng(cells).random((cells, 8)).astype(np.float32), 'uint8', msg.class_probs)
        assert patches_bytes(cells, 8, 'uint8') == len(serialize_message(msg))
    feat = FeatureMap(sender=2, receiver=1)
    encode_tensor(np.zeros((128, 128, 3), np.uint8), 'uint8', feat.features)
    assert baseline_supporter_bytes('inputstack', (128, 128), 8) == len(serialize_message(feat))
    assert baseline_supporter_bytes('inpainting', (128, 128), 8) is None


def test_mirrored_correspondences_warp_the_mirrored_views():
    rng = np.random.default_rng(4)
    supporter = rng.random((32, 32, 3))
    corr = rng.integers(0, 17, 16)
    warped = sample_cells_np(supporter, corr, 8)
    mirrored = sample_cells_np(supporter[:, ::-1], mirror_correspondence(corr, (4, 4)), 8)
    assert np.array_equal(mirrored, warped[:, ::-1])
    assert np.array_equal(mirror_correspondence(mirror_correspondence(corr, (4, 4)), (4, 4)), corr)


@pytest.fixture(scope='module')
def tiny_dataset(tmp_path_factory):
    """12 snapshots at 128 px (MASH's default 16 x 16 cell grid), 4 maps."""
    root = str(tmp_path_factory.mktemp('data') / 'obstruction')
    generate('obstruction', 12, root, seed=1, size=128, shard_size=8, progress=False, snapshots_per_map=3,
             world={'shadow_map_size': 256, 'map_size_m': 200.0})
    return root


def test_loader_gives_the_target_its_supporters_and_ground_truth(tiny_dataset):
    from collab_perception.data import iter_snapshots
    from collab_perception.learn.train import loader_for
    assert loader_for('obstruction') is ObstructionLoader
    loader = ObstructionLoader(tiny_dataset, 'obstruction', 'train', 2, shuffle=False)
    batch = next(iter(loader))
    snap = next(iter_snapshots(tiny_dataset, 'train'))
    t = int(snap['target_index'])
    others = [i for i in range(6) if i != t]
    assert batch['target'].shape == (2, 3, 128, 128) and batch['supporters'].shape == (2, 5, 3, 128, 128)
    assert np.array_equal(batch['labels'][0].numpy(), snap['labels'][t])
    assert np.array_equal(batch['correspondence'][0].numpy(), snap['correspondence'][t, others])
    assert np.array_equal(batch['obstruction_mask'][0].numpy(), snap['obstruction_mask'][t])
    assert np.allclose(batch['supporters'][0, 0].permute(1, 2, 0).numpy() * 255, snap['rgb'][others[0]], atol=1e-3)
    # mirrored frames stay consistent: the supporter's labels warped by the mirrored correspondences are the
    # mirror of the originally warped ones
    flipped = ObstructionLoader(tiny_dataset, 'obstruction', 'train', 2, shuffle=False, augment=True)
    flipped.rng = np.random.default_rng(0)
    fb = next(iter(flipped))
    for i in range(2):
        same = torch.equal(fb['labels'][i], batch['labels'][i])
        assert same or torch.equal(fb['labels'][i], batch['labels'][i].flip(-1))
        for s in range(5):
            warped = sample_cells_np(batch['supporter_labels'][i, s].numpy(), batch['correspondence'][i, s].numpy(),
                                     8, fill=255)
            fwarped = sample_cells_np(fb['supporter_labels'][i, s].numpy(), fb['correspondence'][i, s].numpy(),
                                      8, fill=255)
            assert np.array_equal(fwarped, warped if same else warped[:, ::-1])


@pytest.mark.parametrize('sampling,stem,flow,accuracy,fusion', [
    ('cells', 0, False, False, 'hard'), ('pixels', 0, False, False, 'hard'), ('pixels', 4, True, False, 'hard'),
    ('pixels', 0, True, True, 'bayes')])
def test_onnx_roles_agree_with_torch(tiny_dataset, tmp_path, sampling, stem, flow, accuracy, fusion):
    from collab_perception.learn.mash_export import check_onnx, export_roles
    torch.manual_seed(0)
    model = Mash(replace(SMALL, patch_sampling=sampling, match_stem=stem, refine_flow=flow,
                         accuracy_confidence=accuracy)).eval()
    model.method_name = 'mash'
    model.fusion_kind = fusion
    with torch.no_grad():   # decisive outputs: an untrained net is full of near-ties that flip argmax
        model.own_head.classify.weight.mul_(50)
        model.smoothing.out.weight.normal_(0, 0.5)
        if flow:
            model.flow.out.weight.normal_(0, 0.1)
    paths = export_roles(model, str(tmp_path))
    roles = json.load(open(tmp_path / 'roles.json'))
    assert roles['grid'] == [16, 16] and roles['no_match'] == 256 and roles['patch_sampling'] == sampling
    values = roles['roles']['supporter']['outputs']
    assert (values['labels']['shape'] == [1, 256, 8, 8] if sampling == 'pixels'
            else values['class_probs']['shape'] == [1, 256, 8])
    loader = ObstructionLoader(tiny_dataset, 'obstruction', 'test', 2, shuffle=False)
    model.confidence_threshold = 0.0                     # send every matched cell: the fusion sees patches
    check = check_onnx(model, paths, loader, frames=2)
    assert check['requester_max_abs_diff'] < 1e-4 and check['supporter_max_abs_diff'] < 1e-4, check
    assert check['requester_own_classes_agreement'] > 0.999 and check['supporter_match_agreement'] > 0.99, check
    assert check['fusion_classes_agreement'] > 0.999, check
    assert check['swarm_pipeline_vs_offline_agreement'] > 0.99, check
    if sampling == 'pixels':
        assert check['supporter_label_agreement'] > 0.99, check


def test_a_ground_plane_supporter_runs_on_onnx_as_in_torch(tiny_dataset, tmp_path):
    """geometry 'homography' exported: supporter.onnx also gives positions, its own expected accuracy and its
    class distribution, sampler.onnx samples it where the plane puts each cell, roles.json carries the plane's
    settings and MashOnnx loads the sampler with the matcher; the runtime's plane path (supporter_matches)
    equals Mash.planar_matches plus the torch sampler on matches that agree on a plane."""
    from collab_perception.learn.mash import SamplerRole
    from collab_perception.learn.mash_export import check_onnx, export_roles
    from collab_perception.runtime.homography import project
    from collab_perception.runtime.onnx_mash import MashOnnx, supporter_matches
    from collab_perception.runtime.onnx_method import onnx_session
    torch.manual_seed(0)
    model = Mash(replace(SMALL, patch_sampling='pixels', refine_flow=True, accuracy_confidence=True)).eval()
    model.method_name, model.fusion_kind, model.geometry, model.plane_weight = 'mash', 'bayes', 'homography', 0.7
    with torch.no_grad():
        model.own_head.classify.weight.mul_(50)
        model.smoothing.out.weight.normal_(0, 0.5)
        model.flow.out.weight.normal_(0, 0.1)
    paths = export_roles(model, str(tmp_path))
    assert set(paths) == {'requester', 'supporter', 'fusion', 'sampler'}
    roles = json.load(open(tmp_path / 'roles.json'))
    assert roles['geometry'] == 'homography' and roles['plane'] == model.plane_settings()
    assert roles['plane']['weight'] == 0.7
    assert list(roles['roles']['supporter']['outputs'])[3:] == ['positions', 'supporter_confidence', 'own_probs']
    loader = ObstructionLoader(tiny_dataset, 'obstruction', 'test', 2, shuffle=False)
    model.confidence_threshold = 0.0
    check = check_onnx(model, paths, loader, frames=2)
    assert check['supporter_max_abs_diff'] < 1e-4 and check['supporter_label_agreement'] > 0.99, check
    assert check['swarm_pipeline_vs_offline_agreement'] > 0.99, check

    # an untrained matcher agrees on no plane: plant matches that do (a shift of 10 px right, 6 down)
    centres = cell_centres(128, 128, CELL_SIZE).astype(np.float64)
    planted = project(np.array([[1.0, 0.0, 10.0], [0.0, 1.0, 6.0], [0.0, 0.0, 1.0]]), centres).astype(np.float32)
    matched = np.arange(256) % 3 != 0                                 # a third of the cells unmatched

    class PlantedMatcher:
        def __init__(self, session):
            self.session = session

        def run(self, names, feeds):
            out = list(self.session.run(names, feeds))
            out[0] = np.where(matched, 0.8, 0.9).astype(np.float32)[None]
            out[1] = np.where(matched, np.arange(256), 256)[None]
            out[3] = np.where(matched[:, None], planted, np.nan).astype(np.float32)[None]
            return out

    sessions = {r: onnx_session(p, ['CPUExecutionProvider']) for r, p in paths.items()}
    batch = next(iter(loader))
    query = np.random.default_rng(0).normal(size=(1, 16, 16, 4)).astype(np.float32)
    image = batch['supporters'][0, :1].numpy()
    conf, match, labels = supporter_matches(PlantedMatcher(sessions['supporter']), sessions['sampler'], query, image,
                                            roles['plane'], centres, (128, 128), CELL_SIZE, 256)
    raw = PlantedMatcher(sessions['supporter']).run(None, {'query': query, 'image': image})
    want = model.planar_matches(torch.from_numpy(raw[0]), torch.from_numpy(raw[1]), torch.from_numpy(raw[3]),
                                torch.from_numpy(raw[4]))
    with torch.no_grad():
        want_labels = SamplerRole(model)(torch.from_numpy(raw[5]), want[2]).numpy()
    inside = (planted[:, 0] <= 127.5) & (planted[:, 1] <= 127.5)
    assert (match[0][inside] != 256).all() and (match[0][~inside] == 256).all()      # the unmatched cells too
    assert np.allclose(conf, want[0].numpy(), atol=1e-6) and np.array_equal(match, want[1].numpy())
    assert (labels == want_labels).mean() > 0.99
    method = MashOnnx(str(tmp_path), roles=('matcher',))
    assert set(method.sessions) == {'matcher', 'sampler'} and method.plane == roles['plane']
    reply = method.patches(query[0], (batch['supporters'][0, 0].permute(1, 2, 0).numpy() * 255).astype(np.uint8),
                           threshold=0.0)
    assert reply.labels.shape[1:] == (CELL_SIZE, CELL_SIZE)
    model.cfg.accuracy_confidence, model.geometry = True, 'homography'
    with pytest.raises(ValueError, match='landing_confidence'):
        model.planar_matches(torch.from_numpy(raw[0]), torch.from_numpy(raw[1]), torch.from_numpy(raw[3]))


@pytest.mark.parametrize('sampling', ['cells', 'pixels'])
def test_tiny_training_lowers_the_loss(tiny_dataset, tmp_path, sampling):
    from collab_perception.learn.mash_eval import evaluate_mash_run, matcher_ceiling
    from collab_perception.learn.train import TrainConfig, build_model, load_model, seed_everything, train
    cfg = TrainConfig(method='mash', setting='obstruction', data_dir=tiny_dataset, out_dir=str(tmp_path / 'run'),
                      iterations=12, batch_size=2, lr=5e-3, eval_every=12, val_batches=1, threads=1,
                      model=replace(SMALL, patch_sampling=sampling))
    loader = ObstructionLoader(tiny_dataset, 'obstruction', 'train', 4, shuffle=False)
    frames = next(iter(loader))
    seed_everything(cfg.seed)
    initial = build_model(cfg, loader.agents, loader.num_classes).train()
    result = train(cfg, progress=False)
    trained, _ = load_model(str(tmp_path / 'run' / 'last.pt'))
    trained.train()
    with torch.no_grad():
        before = initial.loss(initial.forward_batch(frames, 'train'), frames).item()
        after = trained.loss(trained.forward_batch(frames, 'train'), frames).item()
    assert result['steps'] == 12 and after < 0.9 * before, (before, after)
    evaluation = evaluate_mash_run(str(tmp_path / 'run'), tiny_dataset, 'test', batch_size=4, progress=False)
    hard = evaluation['variants']['hard@0.5']
    assert 0 <= hard['miou'] <= 1 and hard['target_x'] > 0 and 0 <= evaluation['match_accuracy'] <= 1
    need = evaluation['variants']['hard+need@0.5']
    assert need['target_bytes'] > hard['target_bytes'] and need['sent_fraction'] <= hard['sent_fraction']
    assert os.path.exists(tmp_path / 'run' / 'eval_mash_test.json')
    # the matcher replaced by the ground truth, through the run's own sampling and fusion
    planes = sampling == 'pixels'
    ceiling = matcher_ceiling(str(tmp_path / 'run'), tiny_dataset, 'test', threshold=0.5, progress=False,
                              planes=planes)
    assert set(ceiling) == {'the run', 'ground-truth matching'} | (
        {'its matches through their plane', 'the ground-truth plane'} if planes else set())
    assert ceiling['the run']['miou'] == pytest.approx(100 * hard['miou'], abs=1e-6)
    assert all(0 <= r[k] <= 100 for r in ceiling.values() for k in r)
    if not planes:
        with pytest.raises(ValueError, match="'pixels' run"):
            matcher_ceiling(str(tmp_path / 'run'), tiny_dataset, 'test', progress=False, planes=True)


def test_a_frozen_backbone_caches_every_view_and_trains_the_matcher_alone(tiny_dataset, tmp_path):
    """`train --freeze-encoder` on MASH: each view's features and own class distributions cached once (both
    flips, correspondences mirrored), the same handshake as from the images, and only the matcher and the
    fusion's weights move; best.pt chosen by the matcher's own validation measure."""
    from collab_perception.learn.feature_cache import EncodedObstructionFrames
    from collab_perception.learn.train import TrainConfig, load_model, train
    common = dict(setting='obstruction', data_dir=tiny_dataset, batch_size=2, val_batches=1, threads=1)
    cfg = replace(SMALL, patch_sampling='pixels')
    train(TrainConfig(method='mash', out_dir=str(tmp_path / 'e2e'), iterations=2, eval_every=2, model=cfg,
                      **common), progress=False)
    pretrained, _ = load_model(str(tmp_path / 'e2e' / 'last.pt'))
    frozen = Mash(replace(cfg, freeze_encoder=True))
    frozen.load_state_dict(pretrained.state_dict())
    frozen.method_name = 'mash'
    frozen.eval()
    loader = ObstructionLoader(tiny_dataset, 'obstruction', 'train', 4, shuffle=False)
    cache = EncodedObstructionFrames(loader, frozen.encoder, 4, head=frozen.own_head, progress=False)
    raw = next(iter(loader.loader))
    n = len(raw['labels'])
    for flip in (0, 1):
        images = loader.tensors(raw, np.full(n, bool(flip)))
        encoded = {k: v[:n, flip] for k, v in cache.frames.items()}
        features = encoded.pop('features').float()
        encoded.update(target=features[:, 0], supporters=features[:, 1:], encoded=True,
                       own_probs=encoded.pop('own_probs').float() / 255, labels=encoded['labels'].long(),
                       supporter_labels=encoded['supporter_labels'].long())
        assert torch.equal(encoded['correspondence'], images['correspondence'])
        assert torch.equal(encoded['labels'], images['labels'])
        with torch.no_grad():
            from_images = frozen.forward_batch(images, 'eval')
            from_cache = frozen.forward_batch(encoded, 'eval')
        assert torch.allclose(from_cache.extra['volume'], from_images.extra['volume'], atol=5e-2)
        own = from_images.own_logits.softmax(2)
        assert (from_cache.own_logits.exp() - own).abs().max() < 3e-3          # the uint8 steps of 1/255
    batches = list(cache)
    assert sum(len(b['labels']) for b in batches) == len(cache.frames['labels'])
    assert all(b['encoded'] and b['own_probs'].shape[1:] == (6, 8, 128, 128) for b in batches)

    with pytest.raises(ValueError, match='--select-by .*match_within_one_cell'):
        train(TrainConfig(method='mash', out_dir=str(tmp_path / 'bad'), iterations=2, eval_every=2, model=cfg,
                          select_by='recall', **common), progress=False)
    result = train(TrainConfig(method='mash', out_dir=str(tmp_path / 'matcher'), iterations=4, eval_every=2,
                               lr=5e-3, init_from=str(tmp_path / 'e2e' / 'last.pt'), select_by='match_within_one_cell',
                               model=replace(cfg, freeze_encoder=True), **common), progress=False)
    history = json.load(open(tmp_path / 'matcher' / 'history.json'))['history']
    assert [h['step'] for h in history] == [2, 4]
    from collab_perception.learn.mash_eval import train_command
    command = train_command(json.load(open(tmp_path / 'matcher' / 'config.json')))
    assert '--freeze-encoder --select-by match_within_one_cell' in command
    assert all(0 <= h['val_match_within_one_cell'] <= 1 for h in history)
    assert result['best_val_match_within_one_cell'] == max(h['val_match_within_one_cell'] for h in history)
    trained, _ = load_model(str(tmp_path / 'matcher' / 'last.pt'))
    before, after = pretrained.state_dict(), trained.state_dict()
    for name in after:
        moved = not torch.equal(after[name], before[name])
        if name.startswith(('encoder.', 'own_head.')):
            assert not moved, name
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith('smoothing.'))


def test_a_matching_stem_reads_the_views_cached_beside_the_features(tiny_dataset, tmp_path):
    """--match-stem with --freeze-encoder: the cache keeps every view as the dataset's bytes, so the stem sees
    the same images from the cache as from the loader, and the stem trains while the backbone stays."""
    from collab_perception.learn.feature_cache import EncodedObstructionFrames
    from collab_perception.learn.train import TrainConfig, load_model, train
    cfg = replace(SMALL, patch_sampling='pixels', match_stem=4, freeze_encoder=True)
    model = Mash(cfg).eval()
    model.method_name = 'mash'
    loader = ObstructionLoader(tiny_dataset, 'obstruction', 'train', 4, shuffle=False)
    cache = EncodedObstructionFrames(loader, model.encoder, 4, head=model.own_head, progress=False,
                                     keep_images=True)
    raw = next(iter(loader.loader))
    n = len(raw['labels'])
    images = loader.tensors(raw, np.ones(n, dtype=bool))
    cached = cache.batch(torch.arange(n), torch.ones(n, dtype=torch.long))
    assert torch.equal(cached['images'], torch.cat([images['target'][:, None], images['supporters']], 1))
    with torch.no_grad():
        from_images = model.forward_batch(images, 'eval').extra['volume']
        from_cache = model.forward_batch(cached, 'eval').extra['volume']
    assert torch.allclose(from_cache, from_images, atol=5e-2)
    no_images = {k: v for k, v in cached.items() if k != 'images'}
    with pytest.raises(KeyError):
        model.forward_batch(no_images, 'eval')
    # the workflow of docs/RESULTS.md: the backbone of an Inpainting run, the matcher and its stem trained on it
    common = dict(setting='obstruction', data_dir=tiny_dataset, batch_size=2, val_batches=1, threads=1)
    train(TrainConfig(method='inpainting', out_dir=str(tmp_path / 'inpainting'), iterations=2, eval_every=2,
                      model=replace(SMALL), **common), progress=False)
    train(TrainConfig(method='mash', out_dir=str(tmp_path / 'stem'), iterations=2, eval_every=2, lr=5e-3,
                      init_from=str(tmp_path / 'inpainting' / 'last.pt'), model=cfg, **common), progress=False)
    trained, _ = load_model(str(tmp_path / 'stem' / 'last.pt'))
    assert trained.cfg.match_stem == 4
    before, _ = load_model(str(tmp_path / 'inpainting' / 'last.pt'))
    before = before.state_dict()
    moved = {k for k, v in trained.state_dict().items() if k not in before or not torch.equal(v, before[k])}
    assert any(k.startswith('match_stem.') for k in moved), moved
    assert not any(k.startswith(('encoder.', 'own_head.')) for k in moved), moved


def test_init_from_copies_the_backbone_of_another_run(tiny_dataset, tmp_path):
    from collab_perception.learn.mash_eval import train_command
    from collab_perception.learn.train import TrainConfig, init_from_checkpoint, load_model, train
    common = dict(setting='obstruction', data_dir=tiny_dataset, iterations=2, batch_size=2, eval_every=2,
                  val_batches=1, threads=1, model=SMALL)
    train(TrainConfig(method='inpainting', out_dir=str(tmp_path / 'inpainting'), **common), progress=False)
    source, _ = load_model(str(tmp_path / 'inpainting' / 'best.pt'))
    mash = make('mash', size=128)
    copied = init_from_checkpoint(mash, str(tmp_path / 'inpainting' / 'best.pt'))
    assert copied and {name.split('.')[0] for name in copied} == {'encoder', 'own_head'}
    for name in copied:
        assert torch.equal(mash.state_dict()[name], source.state_dict()[name]), name
    # the new heads keep their own initialization; a checkpoint with nothing in common is refused by name
    with pytest.raises(ValueError, match='no weight of'):
        init_from_checkpoint(make('outputstack', size=128).stack_fusion, str(tmp_path / 'inpainting' / 'best.pt'))
    with pytest.raises(ValueError, match='does not exist'):
        init_from_checkpoint(mash, str(tmp_path / 'missing.pt'))
    # a run started this way says so in its config and in the command the results table prints
    train(TrainConfig(method='mash', out_dir=str(tmp_path / 'mash'), lr=0.0, weight_decay=0.0,
                      init_from=str(tmp_path / 'inpainting' / 'best.pt'), **common), progress=False)
    config = json.load(open(tmp_path / 'mash' / 'config.json'))
    assert f'--init-from {tmp_path}/inpainting/best.pt' in train_command(config)


def test_label_resolution_grid_is_the_identity_and_a_sub_pixel_shift():
    from collab_perception.learn.mash import sample_label_resolution
    from collab_perception.world.geometry import cell_centres
    g = torch.Generator().manual_seed(3)
    values = torch.rand(2, 3, 32, 32, generator=g)
    centres = torch.from_numpy(cell_centres(32, 32, CELL_SIZE))[None].expand(2, -1, -1).clone()
    same, valid = sample_label_resolution(values, centres, CELL_SIZE)
    assert valid.all() and torch.allclose(same, values, atol=1e-5)
    shifted, valid = sample_label_resolution(values, centres + torch.tensor([2.5, -1.0]), CELL_SIZE)
    # target pixel (u, v) samples (u + 2.5, v - 1): rows 1.. of the target read rows 0.. of the source
    assert torch.allclose(shifted[..., 1:, :29], 0.5 * (values[..., :-1, 2:31] + values[..., :-1, 3:32]), atol=1e-5)
    assert not valid[..., 0, :].any() and not valid[..., :, 30:].any() and valid[..., 1:, :29].all()
    # a cell without a match samples nothing, and its neighbours fall back to one-sided differences
    holes = centres.clone()
    holes[:, 5] = float('nan')
    out, valid = sample_label_resolution(values, holes, CELL_SIZE)
    assert not valid[:, :, 8:16, 8:16].any() and valid.sum() == 2 * (32 * 32 - 64)
    assert torch.allclose(out[:, :, :8], values[:, :, :8], atol=1e-5)


def test_label_resolution_warps_the_ground_truth_labels_better_than_whole_cells(tiny_dataset):
    """The supporters' true labels sampled into the target: at label resolution they agree with the target's
    labels far more often than moved as whole cells (the upper bound this sets for WarpedOutputStack and
    MASH's patches; the measured numbers are in docs/DATASETS.md). Mirrored frames stay consistent."""
    from collab_perception.learn.mash import sample_label_resolution
    loader = ObstructionLoader(tiny_dataset, 'obstruction', 'train', 4, shuffle=False)
    agree = {'cells': 0, 'pixels': 0}
    total = 0
    for batch in loader:
        assert 'correspondence_uv' in batch
        b, s = batch['correspondence'].shape[:2]
        labels = batch['supporter_labels'].flatten(0, 1)
        onehot = torch.nn.functional.one_hot(labels.clamp(max=7), 8).permute(0, 3, 1, 2).float()
        warped, valid = sample_label_resolution(onehot, batch['correspondence_uv'].flatten(0, 1), CELL_SIZE,
                                                mode='nearest')
        fine = warped.argmax(1)
        coarse = sample_cells(labels[:, None].float(), batch['correspondence'].flatten(0, 1), CELL_SIZE)[:, 0]
        block_valid = upsample_cells_mask(batch['correspondence'].flatten(0, 1))
        both = valid[:, 0] & block_valid
        truth = batch['labels'][:, None].expand(b, s, 128, 128).flatten(0, 1)
        agree['pixels'] += int(((fine == truth) & both).sum())
        agree['cells'] += int(((coarse.long() == truth) & both).sum())
        total += int(both.sum())
    assert total > 10000
    assert agree['pixels'] / total > agree['cells'] / total + 0.04, (agree, total)
    flipped = ObstructionLoader(tiny_dataset, 'obstruction', 'train', 4, shuffle=False, augment=True)
    flipped.rng = np.random.default_rng(0)
    plain = next(iter(loader))
    fb = next(iter(flipped))
    for i in range(4):
        same = torch.equal(fb['labels'][i], plain['labels'][i])
        args = lambda bt: (bt['supporter_labels'][i][:, None].float(), bt['correspondence_uv'][i])  # noqa: E731
        a, _ = sample_label_resolution(*args(plain), CELL_SIZE, mode='nearest')
        f, _ = sample_label_resolution(*args(fb), CELL_SIZE, mode='nearest')
        # nearest sampling may round a tie (a source coordinate at .5) the other way once mirrored
        assert (f == (a if same else a.flip(-1))).float().mean() > 0.995


def upsample_cells_mask(correspondence):
    """[N, C] cell correspondences -> [N, H, W] bool: the pixels of matched cells (16 x 16 grid)."""
    matched = (correspondence != 256).float().view(-1, 1, 16, 16)
    return torch.nn.functional.interpolate(matched, scale_factor=8.0)[:, 0] > 0.5


def test_the_flow_refiner_starts_from_the_volume_s_matches_and_learns_the_positions():
    """refine_flow: untrained, it decides match or none as the volume does and keeps the window's positions;
    a few steps on the flow loss alone move the positions towards the ground truth."""
    torch.manual_seed(0)
    cfg = replace(SMALL, patch_sampling='pixels')
    plain, refined = Mash(cfg, image_size=(32, 32)), Mash(replace(cfg, refine_flow=True), image_size=(32, 32))
    volume = torch.randn(6, 17, 4, 4) * 3
    conf0, match0, pos0 = plain.subcell_matches(volume)
    conf1, match1, pos1 = refined.subcell_matches(volume)
    assert torch.equal(torch.isnan(pos0), torch.isnan(pos1))
    assert torch.allclose(pos0.nan_to_num(), pos1.nan_to_num())
    real = match0 != 16
    assert torch.all(match1[real] != 16) and torch.all(match1[~real] == 16)
    batch = synthetic_batch(b=1, s=6)
    truth = batch['correspondence_uv'][0]                                  # [6, 16, 2]
    matched = torch.isfinite(truth).all(-1)

    def error():
        positions, _ = refined.flow_matches(volume)
        return (positions[matched] - truth[matched]).abs().mean().item()

    before = error()
    optimizer = torch.optim.Adam(refined.flow.parameters(), lr=1e-2)
    for _ in range(30):
        positions, logit = refined.flow_matches(volume)
        loss = F.smooth_l1_loss(positions[matched] / CELL_SIZE, truth[matched] / CELL_SIZE) + \
            F.binary_cross_entropy_with_logits(logit, matched.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert error() < 0.5 * before


def test_accuracy_confidences_learn_how_right_own_cells_and_patches_are():
    """accuracy_confidence: the targets are the share of each cell's labelled pixels predicted right, by the
    target itself and by each supporter's patch at its refined position (0 where the cell has no true match);
    the self-confidence lies in (0, 1), and training on a frame pulls both confidences towards those shares."""
    from collab_perception.learn.mash import cell_accuracy
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, :8, 8:] = 255                                            # a cell with no labelled pixel
    prediction = torch.zeros(1, 16, 16, dtype=torch.long)
    prediction[0, 8:, :8] = 1                                          # a cell all wrong
    prediction[0, 8:12, 8:] = 1                                        # a cell half wrong
    acc, labelled = cell_accuracy(prediction, labels, 255)
    assert torch.allclose(acc, torch.tensor([[1.0, 0.0, 0.0, 0.5]])) and labelled.tolist() == [[True, False, True, True]]

    torch.manual_seed(0)
    model = make('mash_accuracy')
    batch = synthetic_batch(b=1, s=2)
    # every supporter sees what the target sees, and its own head says it exactly: a patch at the true
    # position is all right, and the target's own head is right on half its cells only
    batch['supporters'] = batch['target'][:, None].expand(1, 2, 3, 32, 32).clone()
    model.train()
    with torch.no_grad():
        model.flow.out.weight.zero_()
        model.flow.out.bias.zero_()
    out = model.forward_batch(batch, 'train')
    assert ((out.extra['self_confidence'] > 0) & (out.extra['self_confidence'] < 1)).all()
    own_acc, _ = cell_accuracy(out.own_logits[0, :1].argmax(1), batch['labels'], 255)
    params = [p for n, p in model.named_parameters() if n.startswith(('flow.', 'self_confidence_head.'))]
    optimizer = torch.optim.Adam(params, lr=2e-2)

    def errors():
        out = model.forward_batch(batch, 'train')
        own = (out.extra['self_confidence'].flatten(1) - own_acc).abs().mean().item()
        refined, logit = out.extra['flow']
        return own, out, refined, logit

    own_before = errors()[0]
    for _ in range(60):
        own, out, refined, logit = errors()
        loss = model.accuracy_confidence_loss(out, batch, refined, logit,
                                              torch.isfinite(batch['correspondence_uv'].flatten(0, 1)).all(-1), 255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    own_after, out, refined, logit = errors()
    assert own_after < 0.5 * own_before
    unmatched = ~torch.isfinite(batch['correspondence_uv'].flatten(0, 1)).all(-1)
    assert torch.sigmoid(logit[unmatched]).max() < 0.3                  # no true match: nothing to trust


def test_sub_cell_positions_read_back_the_bilinear_targets():
    """A volume that puts the bilinear targets' mass on the source cells gives back, through the local
    soft-argmax, the positions the targets were made from; no-match cells stay NaN."""
    from collab_perception.learn.mash import bilinear_cell_targets
    model = make('mash_pixels')
    g = torch.Generator().manual_seed(5)
    positions = torch.rand(3, 16, 2, generator=g) * 24 + 3.5          # inside the 4 x 4 grid's centres
    positions[0, 7] = float('nan')
    targets = bilinear_cell_targets(positions, (4, 4))                # [N, C + 1, C]
    assert torch.allclose(targets.sum(1), torch.ones(3, 16)) and targets[0, 16, 7] == 1
    volume = targets.clamp_min(1e-9).log().view(3, 17, 4, 4)
    confidence, match, got = model.subcell_matches(volume)
    assert torch.isnan(got[0, 7]).all() and (match[0, 7] == 16)
    keep = torch.isfinite(positions).all(-1)
    assert torch.allclose(got[keep], positions[keep], atol=1e-3)
    assert torch.allclose(confidence, torch.ones_like(confidence), atol=1e-4)   # all the mass: in the window


def test_the_ground_plane_carries_confident_matches_into_the_unmatched_cells():
    """geometry 'homography': where the confident matches agree on one plane, every cell gets its position
    through it, the unmatched and the wrong ones included, with the plane's support as confidence; a cell the
    plane maps outside the view has none, and a pair with no plane keeps the matcher's own matches."""
    from collab_perception.runtime.homography import project
    model = make('mash_pixels', size=128)                              # a 16 x 16 cell grid
    cells = 256
    centres = cell_centres(128, 128, CELL_SIZE).astype(np.float64)
    plane = np.array([[0.8, 0.3, 4.0], [-0.3, 0.8, 28.0], [0.0, 0.0, 1.0]])
    truth = project(plane, centres)
    g = np.random.default_rng(3)
    found = truth + g.normal(0, 0.3, truth.shape)
    wrong = g.random(cells) < 0.25
    found[wrong] = g.uniform(0, 127, (int(wrong.sum()), 2))
    unmatched = g.random(cells) < 0.3                                   # e.g. obstructed cells: no match
    positions = torch.from_numpy(np.where(unmatched[:, None], np.nan, found)).float()
    match = torch.where(torch.from_numpy(unmatched), torch.tensor(cells), torch.arange(cells))
    confidence = torch.where(torch.from_numpy(unmatched), torch.tensor(0.9), torch.tensor(0.6))
    noise = torch.rand(1, cells, 2, generator=torch.Generator().manual_seed(0)) * 127    # a pair with no plane
    conf, idx, pos = model.planar_matches(torch.stack([confidence, confidence]), torch.stack([match, match]),
                                          torch.cat([positions[None], noise]))
    inside = (truth >= -0.5).all(-1) & (truth <= 127.5).all(-1)
    assert np.abs(pos[0].numpy()[inside] - truth[inside]).max() < 0.5
    assert torch.isnan(pos[0][torch.from_numpy(~inside)]).all() and (idx[0][torch.from_numpy(~inside)] == cells).all()
    support = conf[0][torch.from_numpy(inside)]
    assert torch.allclose(support, support[0].expand_as(support)) and 0.3 < float(support[0]) < 0.75
    assert torch.equal(pos[1], noise[0]) and torch.equal(idx[1], match) and torch.equal(conf[1], confidence)
    model.geometry = 'sphere'
    state = model.handshake(synthetic_batch(b=1, size=128))
    with pytest.raises(ValueError, match="unknown geometry 'sphere'"):
        model.infer(state)


def test_pixel_patches_carry_the_supporters_labels_at_label_resolution():
    """With ground-truth volumes (the supporters' correspondences, sharpened), MASH 'pixels' sampling sends
    the supporters' own classes per pixel, and HardSelection puts them where the target cannot see: the
    supporter's segmentation arrives pixel-aligned, not one averaged distribution per cell."""
    from collab_perception.learn.mash import bilinear_cell_targets
    model = make('mash_pixels').eval()
    batch = synthetic_batch(b=1)
    centres = torch.from_numpy(cell_centres(32, 32, CELL_SIZE))
    batch['correspondence'][:] = torch.arange(16)                      # every supporter sees the same view
    batch['correspondence_uv'] = centres.expand(1, 5, 16, 2).clone()
    with torch.no_grad():
        state = model.handshake(batch)
        state['volume'] = 40 * bilinear_cell_targets(batch['correspondence_uv'][0], (4, 4)).view(1, 5, 17, 4, 4)
        labels = torch.randint(0, 8, (1, 6, 32, 32), generator=torch.Generator().manual_seed(1))
        state['own_logits'] = 30 * torch.nn.functional.one_hot(labels, 8).permute(0, 1, 4, 2, 3).float()
        state['self_confidence'] = torch.zeros(1, 4, 4)                  # the target trusts anyone
        out = model.infer(state, threshold=0.5)
    assert out['sent'].all()
    pred = out['scores'].argmax(1)
    assert torch.equal(pred, labels[:, 1])                             # the most confident: the first supporter
    # the bytes: one class per pixel of every sent cell
    assert torch.allclose(out['scores'].sum(1), torch.ones(1, 32, 32))


@pytest.mark.parametrize('name', ['mash', 'mash_pixels'])
def test_asking_only_where_needed_sends_fewer_cells_for_the_same_hard_fusion(name):
    """With the requester's need map in the request, a supporter withholds the cells in which the requester is
    at least as confident as its match: HardSelection could never take them, so the prediction stays the same
    (up to the wire's rounding of a confidence) and fewer cells are sent."""
    model = make(name).eval()
    batch = synthetic_batch(b=2)
    with torch.no_grad():
        state = model.handshake(batch)
        state['volume'] = 3 * torch.randn(state['volume'].shape, generator=torch.Generator().manual_seed(2))
        state['self_confidence'] = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(3))
        everything = model.infer(state, threshold=0.0)
        needed = model.infer(state, threshold=0.0, need=True)
    assert (needed['sent'] <= everything['sent']).all() and needed['sent'].sum() < everything['sent'].sum()
    same = (needed['scores'].argmax(1) == everything['scores'].argmax(1)).float().mean()
    assert same > 0.99, same
    assert torch.equal(Mash.need_map(torch.tensor([[[0.5, 2.0]]])), torch.tensor([[127 / 255, 1.0]]))


def test_warping_ceiling_orders_the_three_warpings(tiny_dataset):
    """scripts/probe_mash_ceiling.py's numbers: per-pixel reprojection bounds the label-resolution grid,
    which beats moving whole cells."""
    from collab_perception.learn.mash_eval import WARPINGS, warping_ceiling
    out = warping_ceiling(tiny_dataset, 'train', progress=False)
    assert out['frames'] > 0 and 0.2 < out['covered'] < 1
    cells, fine, pixel = (out['agreement'][w]['all'] for w in WARPINGS)
    assert cells + 4 < fine <= pixel + 1, out['agreement']


def test_export_writes_roles_and_a_card_with_the_unseen_worlds(tiny_dataset, tmp_path):
    """`collab-perception export` of a 'pixels' MASH run: the three roles, roles.json with the patch sampling,
    and a model card with the training command, the ONNX check and the test-split and unseen-worlds metrics
    (the unseen set: <the run's dataset>-unseen)."""
    import yaml
    from collab_perception.learn.mash_export import export_mash_run
    from collab_perception.learn.train import TrainConfig, train
    data = str(tmp_path / 'obstruction')
    os.symlink(tiny_dataset, data)
    os.symlink(tiny_dataset, data + '-unseen')
    run = str(tmp_path / 'run')
    train(TrainConfig(method='mash', setting='obstruction', data_dir=data, out_dir=run, iterations=2, batch_size=2,
                      eval_every=2, val_batches=1, threads=1, model=replace(SMALL, patch_sampling='pixels')),
          progress=False)
    out = tmp_path / 'model'
    card = export_mash_run(run, str(out), threshold=0.3, check_frames=2, fp16=True)
    assert sorted(os.listdir(out)) == ['fusion.fp16.onnx', 'fusion.onnx', 'model_card.yaml', 'requester.fp16.onnx',
                                       'requester.onnx', 'roles.json', 'supporter.fp16.onnx', 'supporter.onnx']
    roles = json.load(open(out / 'roles.json'))
    assert roles['patch_sampling'] == 'pixels' and roles['precisions'] == ['fp32', 'fp16']
    # the half-precision swarm pipeline against the fp32 one on the same frames
    fp16 = card['onnx_fp16_check']
    assert fp16['frames'] == 2 and fp16['fused_classes_equal_share'] > 0.95, fp16
    assert abs(fp16['fused_accuracy_fp16'] - fp16['fused_accuracy_fp32']) < 0.05
    assert card['exported_with'].endswith('--fp16') and card['files_fp16']['supporter'] == 'supporter.fp16.onnx'
    saved = yaml.safe_load(open(out / 'model_card.yaml'))
    assert saved['trained_with'] == card['trained_with'] and '--patch-sampling pixels' in card['trained_with']
    assert f'--data {data}' in card['trained_with']
    assert saved['metrics_unseen_worlds']['dataset'] == data + '-unseen'
    assert saved['metrics_unseen_worlds']['miou'] == saved['metrics_test_split']['miou']   # the same frames here
    assert card['onnx_check']['swarm_pipeline_vs_offline_agreement'] > 0.99


def test_calibration_chooses_the_fusion_on_the_validation_split_and_load_run_applies_it(tiny_dataset, tmp_path):
    from collab_perception.learn.mash_eval import CALIBRATED_FUSIONS, calibrate_mash_run, load_run
    from collab_perception.learn.train import TrainConfig, train
    run = str(tmp_path / 'run')
    train(TrainConfig(method='mash', setting='obstruction', data_dir=tiny_dataset, out_dir=run, iterations=2,
                      batch_size=2, eval_every=2, val_batches=1, threads=1,
                      model=replace(SMALL, patch_sampling='pixels', refine_flow=True, accuracy_confidence=True)),
          progress=False)
    result = calibrate_mash_run(run, tiny_dataset, scales=(1.0, 1.5), thresholds=(0.1, 0.5), progress=False)
    sweep = result['sweep']
    assert len(sweep) == len(CALIBRATED_FUSIONS) * 2 * 2 * 2
    assert {r['fusion'] for r in sweep} == set(CALIBRATED_FUSIONS) == {'hard', 'bayes'}
    chosen = result['chosen']
    # the second stage: the ground plane at the first stage's fusion, threshold and need map
    from collab_perception.learn.mash_eval import PLANE_SCALES, PLANE_WEIGHTS
    planes = result['plane_sweep']
    assert len(planes) == len(PLANE_WEIGHTS) * len(PLANE_SCALES)
    assert {r['geometry'] for r in planes} == {'homography'} and {r['plane_weight'] for r in planes} == set(PLANE_WEIGHTS)
    fitted = json.load(open(os.path.join(run, 'plane_confidence_train.json')))   # on the training split
    assert all(r['plane_coefficients'] == fitted['coefficients'] for r in planes)
    assert fitted['coefficients'] is None or len(fitted['coefficients']) == len(fitted['features'])
    sweep = sweep + planes
    within = [r for r in sweep if r['supporter_y'] <= result['budget_y']] or sweep
    near_best = [r for r in within if r['miou'] >= max(r['miou'] for r in within) - result['tolerance_miou']]
    assert chosen['supporter_y'] == min(r['supporter_y'] for r in near_best)
    model, _ = load_run(run)
    assert (model.fusion_kind, model.self_confidence_scale, model.confidence_threshold, model.request_need) == \
        (chosen['fusion'], chosen['self_confidence_scale'], chosen['threshold'], chosen['need'])
    assert model.geometry == chosen['geometry'] in ('none', 'homography')
    assert load_run(run, calibrated=False)[0].fusion_kind == 'hard'
    # confidences that do not estimate accuracy: BayesFusion's premise does not hold, HardSelection alone
    plain = str(tmp_path / 'plain')
    train(TrainConfig(method='mash', setting='obstruction', data_dir=tiny_dataset, out_dir=plain, iterations=2,
                      batch_size=2, eval_every=2, val_batches=1, threads=1, model=replace(SMALL, patch_sampling='pixels')),
          progress=False)
    result = calibrate_mash_run(plain, tiny_dataset, scales=(1.0,), thresholds=(0.5,), progress=False)
    assert {r['fusion'] for r in result['sweep']} == {'hard'} and len(result['sweep']) == 2
    assert result['plane_sweep'] == [] and load_run(plain)[0].geometry == 'none'


def test_calibration_takes_the_fewest_bytes_among_settings_of_equal_miou_within_the_budget():
    from collab_perception.learn.mash_eval import choose_calibration
    def row(fusion, scale, miou, y):
        return {'fusion': fusion, 'self_confidence_scale': scale, 'threshold': 0.1, 'need': True, 'miou': miou,
                'region_miou': 0.2, 'supporter_y': y, 'target_x': 0.09, 'sent_fraction': y}
    sweep = [row('hard', 0.5, 0.400, 0.144),        # the best mIoU, over the budget
             row('bayes', 1.0, 0.3963, 0.049), row('bayes', 1.25, 0.3960, 0.026), row('hard', 1.25, 0.3941, 0.026),
             row('bayes', 2.0, 0.3840, 0.006)]
    assert choose_calibration(sweep, 0.05, 0.001)['self_confidence_scale'] == 1.25      # 0.03 points: equal
    assert choose_calibration(sweep, 0.05, 0.001)['fusion'] == 'bayes'
    assert choose_calibration(sweep, 0.05, 0.0)['self_confidence_scale'] == 1.0         # no tolerance: the best
    assert choose_calibration(sweep, 0.001, 0.001)['self_confidence_scale'] == 0.5      # nothing fits: the best
