"""A split's frames through a frozen encoder, once: training batches of features instead of images.

With `freeze_encoder` (a pretrained backbone kept fixed, `train --freeze-encoder`) the encoder's output for a
view never changes during training, so encoding every view at every step, five or six encoder passes per frame
and most of a step's time, is work thrown away. EncodedFrames encodes each frame's views once, both left-right
flips of each (so the flip augmentation stays exact), keeps them in memory as float16 and yields batches shaped
like FrameLoader's, with 'encoded' set: CollabModel.encode then passes them through. EncodedObstructionFrames
does the same for MASH's obstruction frames (every agent's view; a frozen backbone leaves the matcher, the
fusion and the own head to train).

Every row of a setting's table starts from the same backbone, so every row would encode the same frames with
the same weights: cached_loader with a `store` folder keeps the encoded frames on disk under a key of the
weights and the split, and later runs (and a second worker at the same time) map that file instead of encoding.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import statistics
import time
from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .data import FrameLoader
from .models import ModelConfig, cell_coverage, create_model


class _FrameStore:
    """Per-key tensors [capacity, ...] filled batch by batch: the cache is allocated once at its final size
    instead of gathered in lists and concatenated (which held it twice and left the allocator's heap at about
    2.5x the cache's size)."""

    def __init__(self, capacity: int):
        self.capacity, self.filled, self.tensors = capacity, 0, {}

    def add(self, values: dict[str, torch.Tensor]) -> None:
        n = len(next(iter(values.values())))
        if self.filled + n > self.capacity:
            raise ValueError(f'more frames than the {self.capacity} the split announced')
        for key, value in values.items():
            if key not in self.tensors:
                self.tensors[key] = value.new_empty((self.capacity, *value.shape[1:]))
            self.tensors[key][self.filled:self.filled + n] = value
        self.filled += n

    def frames(self, where: str) -> dict[str, torch.Tensor]:
        if not self.filled:
            raise ValueError(f'{where} holds no frame to encode')
        return {k: v[:self.filled] for k, v in self.tensors.items()}


def _capacity(loader) -> int:
    """At most how many frames a pass over `loader` (a ShardFrameLoader, maybe limited) yields."""
    return min(loader.loader.snapshots, len(loader) * loader.loader.batch_size)


class CachedFrames:
    """Frames held in memory as tensors [N, 2 flips, ...] (`frames`); batches of `batch_size` frames in an
    order drawn from (seed, epoch), each frame flipped or not at random (`batch` builds one)."""

    frames: dict[str, torch.Tensor]
    batch_size: int
    seed: int
    epoch: int

    def __len__(self) -> int:
        """The number of batches (`frames` holds the frames)."""
        n = len(self.frames['labels'])
        return (n + self.batch_size - 1) // self.batch_size

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.frames.values())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @classmethod
    def restored(cls, frames: dict[str, torch.Tensor], agents: int, num_classes: int, batch_size: int,
                 seed: int = 0) -> 'CachedFrames':
        """The same frames, encoded earlier (cached_loader's store), without encoding them again."""
        cached = cls.__new__(cls)
        cached.frames, cached.agents, cached.num_classes = frames, agents, num_classes
        cached.batch_size, cached.seed, cached.epoch = batch_size, seed, 0
        return cached

    def batch(self, index: torch.Tensor, flip: torch.Tensor) -> dict:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        n = len(self.frames['labels'])
        order = rng.permutation(n)
        flips = rng.random(n) < 0.5
        for start in range(0, n, self.batch_size):
            index = torch.from_numpy(order[start:start + self.batch_size])
            yield self.batch(index, torch.from_numpy(flips[order[start:start + self.batch_size]].astype(np.int64)))


class EncodedFrames(CachedFrames):
    """Every frame of `loader` (read in order, unflipped) encoded by `encoder`, both flips."""

    def __init__(self, loader: FrameLoader, encoder: nn.Module, batch_size: int, seed: int = 0,
                 progress: bool = True):
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.agents, self.num_classes = loader.agents, loader.num_classes
        store = _FrameStore(_capacity(loader))
        encoder.eval()
        augment, loader.augment = loader.augment, False     # both flips of every frame are kept instead
        with torch.no_grad():
            for batch in tqdm(loader, desc='encoding the training frames once', disable=not progress,
                              dynamic_ncols=True, leave=False):
                b, s = batch['supporters'].shape[:2]
                images = torch.cat([batch['target'], batch['clean'], batch['supporters'].flatten(0, 1)], 0)
                both = [encoder(images.contiguous(memory_format=torch.channels_last)),
                        encoder(images.flip(-1).contiguous(memory_format=torch.channels_last))]
                feats = torch.stack([f.contiguous().half() for f in both], 1)     # [2B + BS, 2, C, h, w]
                labels = batch['labels'].to(torch.uint8)
                valid = cell_coverage(batch['valid'], tuple(feats.shape[-2:]))
                store.add({'target': feats[:b], 'clean': feats[b:2 * b],
                           'supporters': feats[2 * b:].view(b, s, 2, *feats.shape[2:]).transpose(1, 2),
                           'labels': torch.stack([labels, labels.flip(-1)], 1), 'best': batch['best'],
                           'valid': torch.stack([valid, valid.flip(-1)], 1).half()})
        loader.augment = augment
        self.frames = store.frames(f'{loader.loader.root}: the {loader.loader.split!r} split')

    def batch(self, idx: torch.Tensor, flip: torch.Tensor) -> dict:
        f = self.frames
        return {'target': f['target'][idx, flip].float(), 'clean': f['clean'][idx, flip].float(),
                'supporters': f['supporters'][idx, flip].float(), 'labels': f['labels'][idx, flip].long(),
                'best': f['best'][idx], 'valid': f['valid'][idx, flip].float(), 'encoded': True}


class EncodedObstructionFrames(CachedFrames):
    """Every frame of an ObstructionLoader (mash_data) with every agent's view encoded once by `encoder`,
    both left-right flips (labels, obstruction masks and correspondences mirrored with them), float16 features
    in memory; with `head` (a frozen own head) also every view's class distribution ('own_probs', stored in
    uint8 steps of 1/255); with `keep_images` the views themselves too ('images' [B, A, 3, H, W], uint8 as
    the dataset stores them), for a MASH matching stem; batches shaped like the loader's with 'encoded' set."""

    def __init__(self, loader, encoder: nn.Module, batch_size: int, seed: int = 0, progress: bool = True,
                 head: Optional[nn.Module] = None, keep_images: bool = False):
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.agents, self.num_classes = loader.agents, loader.num_classes
        store = _FrameStore(_capacity(loader))
        encoder.eval()
        if head is not None:
            head.eval()
        with torch.no_grad():
            for i, raw in enumerate(tqdm(loader.loader, desc='encoding every view of the training frames once',
                                         total=len(loader), disable=not progress, dynamic_ncols=True, leave=False)):
                if loader.limit is not None and i >= loader.limit:
                    break
                n = len(raw['labels'])
                both = [loader.tensors(raw, None), loader.tensors(raw, np.ones(n, dtype=bool))]
                for flip, batch in enumerate(both):
                    images = torch.cat([batch['target'][:, None], batch['supporters']], 1)      # [B, A, 3, H, W]
                    feats = encoder(images.flatten(0, 1).contiguous(memory_format=torch.channels_last))
                    batch['features'] = feats.contiguous().half().view(n, images.shape[1], *feats.shape[1:])
                    if keep_images:      # the loader's [0, 1] floats are the dataset's bytes / 255
                        batch['images'] = images.mul(255).round_().to(torch.uint8)
                    if head is not None:
                        probs = head(feats).softmax(1).mul_(255).round_().to(torch.uint8)
                        batch['own_probs'] = probs.contiguous().view(n, images.shape[1], *probs.shape[1:])
                kept = {}
                for key in both[0]:
                    if key in ('target', 'supporters'):
                        continue
                    value = torch.stack([both[0][key], both[1][key]], 1)                        # [B, 2, ...]
                    kept[key] = value.to(torch.uint8) if key in ('labels', 'supporter_labels') else value
                store.add(kept)
        self.frames = store.frames(f'{loader.loader.root}: the {loader.loader.split!r} split')

    def batch(self, idx: torch.Tensor, flip: torch.Tensor) -> dict:
        picked = {k: v[idx, flip] for k, v in self.frames.items()}
        features = picked.pop('features').float()
        batch = {'target': features[:, 0], 'supporters': features[:, 1:], 'encoded': True}
        if 'own_probs' in picked:
            batch['own_probs'] = picked.pop('own_probs').float().div_(255.0)
        if 'images' in picked:
            batch['images'] = picked.pop('images').float().div_(255.0)
        for key, value in picked.items():
            batch[key] = value.long() if key in ('labels', 'supporter_labels') else value
        return batch


def cached_loader(loader, model: nn.Module, batch_size: int, seed: int = 0, progress: bool = True,
                  store: Optional[str] = None):
    """A training loader's frames through a model's frozen encoder, once: EncodedFrames, or for MASH's
    obstruction frames EncodedObstructionFrames (its own head frozen too, so its outputs are cached).
    `store`: a folder where the encoded frames are kept on disk, keyed by the frozen weights and the split;
    a run that finds its key there maps the file (shared with the other runs reading it) instead of encoding."""
    obstruction = getattr(loader, 'setting', None) == 'obstruction'
    kind = EncodedObstructionFrames if obstruction else EncodedFrames
    keep_images = getattr(model, 'match_stem', None) is not None     # a MASH matching stem reads the views

    def encode() -> CachedFrames:
        if obstruction:
            return EncodedObstructionFrames(loader, model.encoder, batch_size, seed=seed, progress=progress,
                                            head=model.own_head, keep_images=keep_images)
        return EncodedFrames(loader, model.encoder, batch_size, seed=seed, progress=progress)

    if store is None:
        return encode()
    frozen = [model.encoder] + ([model.own_head] if obstruction else [])
    layout = kind.__name__ + ('+images' if keep_images else '')
    path = os.path.join(store, f'{loader.loader.split}-{_cache_key(loader, frozen, layout)}.pt')
    os.makedirs(store, exist_ok=True)
    with open(path + '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)       # a second worker waits for the first one's file
        if not os.path.exists(path):
            cached = encode()
            torch.save({'frames': cached.frames, 'agents': cached.agents, 'num_classes': cached.num_classes},
                       path + '.tmp')
            os.replace(path + '.tmp', path)
            return cached
    saved = torch.load(path, mmap=True, weights_only=True)
    if progress:
        print(f'the encoded training frames read from {path}')
    return kind.restored(saved['frames'], saved['agents'], saved['num_classes'], batch_size, seed)


def _cache_key(loader, frozen: list[nn.Module], kind: str) -> str:
    """What the encoded frames depend on: the frozen weights, the dataset (its manifest), the split, which of
    its frames a pass reads in which order (the loader's shuffle, seed and epoch), and the cache's layout."""
    digest = hashlib.sha256()
    for module in frozen:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    with open(os.path.join(loader.loader.root, 'manifest.json'), 'rb') as f:
        digest.update(f.read())
    source = loader.loader
    digest.update(json.dumps([os.path.abspath(source.root), source.split, _capacity(loader), source.shuffle,
                              source.seed, source.epoch, source.buffer_size, kind]).encode())
    return digest.hexdigest()[:16]


def training_step_times(data_dir: str, steps: int, batch_size: int = 16, threads: int = 0) -> dict:
    """Median seconds of one Who2com training step, three ways, timed in interleaved rounds on the same frames
    (bench/bench_train_step.py): 'end to end' (encoder trained, images in, soft selection), 'frozen encoder'
    (images still encoded every step) and 'cached' (EncodedFrames, what --freeze-encoder does); plus
    'cache_s', the one-off cost of encoding every training frame, and 'cached_frames'."""
    if threads:
        torch.set_num_threads(threads)
    loader = FrameLoader(data_dir, 'hidden-target', 'train', batch_size, shuffle=False)
    images = next(iter(loader))
    cfg = dict(num_classes=loader.num_classes, supporters=loader.agents - 1)
    steps_by_way, cache_s, cache = {}, 0.0, None
    for name, frozen in (('end to end', False), ('frozen encoder', True), ('cached', True)):
        torch.manual_seed(0)
        model = create_model('who2com', ModelConfig(**cfg, selection='hard' if frozen else 'soft',
                                                    freeze_encoder=frozen)).to(memory_format=torch.channels_last)
        model.train()
        optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)
        batch = images
        if name == 'cached':
            started = time.perf_counter()
            cache = EncodedFrames(loader, model.encoder, batch_size, progress=False)
            cache_s = time.perf_counter() - started
            batch = next(iter(cache))
        steps_by_way[name] = _step(model, optimizer, batch)
    return {**_interleaved_medians(steps_by_way, steps), 'cache_s': cache_s,
            'cached_frames': len(cache.frames['labels'])}


def mash_training_step_times(data_dir: str, steps: int, batch_size: int = 8, threads: int = 0,
                             frames: int = 32) -> dict:
    """Median seconds of one MASH training step ('pixels' patches, the obstruction setting's main row), two
    ways in interleaved rounds on the same `frames` training frames (bench/bench_train_step.py --setting
    obstruction): 'end to end' (backbone trained, images in) and 'cached' (the backbone frozen, every view's
    features and own class distributions cached: --freeze-encoder); plus 'cache_s' for those frames."""
    from .mash import Mash
    from .mash_data import ObstructionLoader
    if threads:
        torch.set_num_threads(threads)
    loader = ObstructionLoader(data_dir, 'obstruction', 'train', batch_size, shuffle=False,
                               limit=max(1, frames // batch_size))
    images = next(iter(loader))
    cfg = ModelConfig(num_classes=loader.num_classes, supporters=loader.agents - 1, query_size=16, key_size=32,
                      patch_sampling='pixels')
    steps_by_way, cache_s = {}, 0.0
    for name in ('end to end', 'cached'):
        torch.manual_seed(0)
        model = Mash(ModelConfig(**{**cfg.__dict__, 'freeze_encoder': name == 'cached'}), loader.image_size)
        model = model.to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)
        batch = images
        if name == 'cached':
            started = time.perf_counter()
            cache = EncodedObstructionFrames(loader, model.encoder, batch_size, progress=False, head=model.own_head)
            cache_s = time.perf_counter() - started
            model.train()
            batch = next(iter(cache))
        steps_by_way[name] = _step(model, optimizer, batch)
    return {**_interleaved_medians(steps_by_way, steps), 'cache_s': cache_s,
            'cached_frames': len(cache.frames['labels'])}


def _interleaved_medians(steps_by_way: dict, steps: int) -> dict[str, float]:
    """Median seconds of each way's step, timed in interleaved rounds (a busy machine slows all alike)."""
    for step in steps_by_way.values():      # warm-up
        step()
    times = {name: [] for name in steps_by_way}
    for _ in range(steps):
        for name, step in steps_by_way.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def _step(model, optimizer, batch):
    def step():
        loss = model.loss(model.forward_batch(batch, 'train'), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step
