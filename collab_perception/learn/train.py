"""Training of one method on one setting (handshake paper §III-C, §IV-B), resumable.

    collab-perception train --method who2com --setting hidden-target

Adam with a cosine learning-rate decay over a fixed number of iterations (so a run is reproducible from its
seed, whatever the machine's speed; `--max-minutes` only stops early), cross entropy on the target's labels
(plus the own head's), left-right flips of whole frames. Every `eval_every` iterations and at the end the
model is scored on (part of) the validation split; `last.pt` is written then and `best.pt` when the
validation accuracy improves. The effective configuration is saved next to the checkpoints (config.json),
the learning curve in history.json. A run directory: runs/train/<setting>/<method>/.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from ..runtime.metrics import ConfusionMatrix
from .data import HANDSHAKE_SETTINGS, FrameLoader
from .feature_cache import cached_loader
from .models import MODELS, CollabModel, ModelConfig, create_model


@dataclass
class TrainConfig:
    method: str
    setting: str
    data_dir: str = ''                  # default: datasets/<setting>
    out_dir: str = ''                   # default: runs/train/<setting>/<method>
    seed: int = 0
    iterations: int = 1000
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    eval_every: int = 250
    val_batches: int = 12               # validation batches per evaluation, the same ones every time
    max_minutes: float = 0.0            # 0: no limit; else stop early (the run is marked truncated)
    threads: int = 0                    # torch threads; 0: all cores
    init_from: str = ''                 # a checkpoint whose same-named, same-shaped weights start this run
    select_by: str = 'accuracy'         # the validation measure that picks best.pt (accuracy, miou, or one of
                                        # the model's validation_metrics)
    model: ModelConfig = field(default_factory=ModelConfig)

    def resolve(self) -> 'TrainConfig':
        out = dataclasses.replace(self)
        out.data_dir = self.data_dir or os.path.join('datasets', self.setting)
        out.out_dir = self.out_dir or os.path.join('runs', 'train', self.setting, self.method)
        return out


LOADERS: dict[str, type] = {s: FrameLoader for s in HANDSHAKE_SETTINGS}


def loader_for(setting: str) -> type:
    """The data loader class of a setting: (root, setting, split, batch_size, seed=, shuffle=, augment=,
    limit=) -> iterable of batch dicts with at least 'labels', plus `agents` and `num_classes`."""
    try:
        return LOADERS[setting]
    except KeyError:
        raise ValueError(f'unknown setting {setting!r}; valid: {", ".join(LOADERS)}') from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def forward(model: CollabModel, batch: dict, mode: str):
    return model.forward_batch(batch, mode)


@torch.no_grad()
def validate(model: CollabModel, loader: FrameLoader) -> dict:
    model.eval()
    cm = ConfusionMatrix(loader.num_classes)
    counts = {name: [0, 0] for name in model.validation_metrics}
    for batch in loader:
        out = forward(model, batch, 'eval')
        cm.update(out.logits.argmax(1).numpy(), batch['labels'].numpy())
        for name, (hits, total) in model.validation_counts(out, batch).items():
            counts[name][0] += hits
            counts[name][1] += total
    model.train()
    return {'accuracy': cm.accuracy(), 'miou': cm.miou(),
            **{name: hits / max(total, 1) for name, (hits, total) in counts.items()}}


def lr_at(cfg: TrainConfig, step: int) -> float:
    warmup = max(1, cfg.iterations // 50)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.iterations - warmup)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def select_by_problem(method: str, select_by: str) -> Optional[str]:
    """Why `select_by` cannot pick a `method` run's best.pt (it is validated on accuracy, mIoU and its model's
    own validation_metrics), or None."""
    selectable = ('accuracy', 'miou') + tuple(MODELS.get(method).validation_metrics)
    if select_by in selectable:
        return None
    return f'{select_by!r}: {method} is validated on {", ".join(selectable)}'


def build_model(cfg: TrainConfig, agents: int, num_classes: int) -> CollabModel:
    mcfg = dataclasses.replace(cfg.model, num_classes=num_classes, supporters=agents - 1)
    return create_model(cfg.method, mcfg).to(memory_format=torch.channels_last)


def save_checkpoint(path: str, model: CollabModel, optimizer, step: int, elapsed: float, cfg: TrainConfig,
                    val: Optional[dict]) -> None:
    tmp = path + '.tmp'
    torch.save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(), 'step': step, 'elapsed_s': elapsed,
                'config': config_dict(cfg), 'val': val, 'torch_rng': torch.get_rng_state()}, tmp)
    os.replace(tmp, path)


def config_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def load_model(checkpoint: str) -> tuple[CollabModel, dict]:
    """A trained model (eval mode) and its checkpoint dict."""
    ckpt = torch.load(checkpoint, map_location='cpu', weights_only=False)
    c = ckpt['config']
    model = create_model(c['method'], ModelConfig(**c['model']))
    model.load_state_dict(ckpt['model'], strict=True)
    model.eval()
    return model, ckpt


def init_from_checkpoint(model: CollabModel, checkpoint: str) -> list[str]:
    """Copy every weight of `checkpoint` whose name and shape match one of `model` (e.g. MASH's backbone from
    an Inpainting run: same encoder, same own head), and what the model's `warm_start` derives from it (the
    handshake's fused decoder from a backbone's own head). Returns the names copied; raises ValueError naming the
    checkpoint when nothing matches."""
    if not os.path.exists(checkpoint):
        raise ValueError(f'--init-from: {checkpoint} does not exist')
    source = torch.load(checkpoint, map_location='cpu', weights_only=False)['model']
    own = model.state_dict()
    copied = {k: v for k, v in source.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not copied:
        raise ValueError(f'--init-from: no weight of {checkpoint} has a name and shape of this {type(model).__name__}')
    model.load_state_dict({**own, **copied}, strict=True)
    warm = [] if any(k.startswith('decoder.') for k in copied) else model.warm_start(source)
    return sorted(copied) + warm


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    cfg = cfg.resolve()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    loader_cls = loader_for(cfg.setting)
    train_loader = loader_cls(cfg.data_dir, cfg.setting, 'train', cfg.batch_size, seed=cfg.seed, augment=True)
    val_loader = loader_cls(cfg.data_dir, cfg.setting, 'val', cfg.batch_size, shuffle=False, limit=cfg.val_batches)
    model = build_model(cfg, train_loader.agents, train_loader.num_classes)
    cfg.model = model.cfg
    problem = select_by_problem(cfg.method, cfg.select_by)
    if problem:
        raise ValueError(f'--select-by {problem}')
    if cfg.model.freeze_encoder and not (cfg.init_from or resume):
        raise ValueError('--freeze-encoder keeps the encoder as it starts: give --init-from a pretrained run '
                         '(e.g. runs/train/<setting>/backbone/best.pt)')
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    os.makedirs(cfg.out_dir, exist_ok=True)
    last_path = os.path.join(cfg.out_dir, 'last.pt')
    best_path = os.path.join(cfg.out_dir, 'best.pt')
    history_path = os.path.join(cfg.out_dir, 'history.json')
    step, elapsed, history, best = 0, 0.0, [], -1.0
    if resume and os.path.exists(last_path):
        ckpt = torch.load(last_path, map_location='cpu', weights_only=False)
        if ckpt['config']['method'] != cfg.method or ckpt['config']['setting'] != cfg.setting:
            raise ValueError(f'{last_path} is a {ckpt["config"]["method"]} / {ckpt["config"]["setting"]} run')
        model.load_state_dict(ckpt['model'], strict=True)
        optimizer.load_state_dict(ckpt['optimizer'])
        torch.set_rng_state(ckpt['torch_rng'])
        step, elapsed = ckpt['step'], ckpt['elapsed_s']
        if os.path.exists(history_path):
            history = json.load(open(history_path))['history']
            best = max((h.get('val_' + cfg.select_by, -1.0) for h in history), default=-1.0)
    elif cfg.init_from:
        copied = init_from_checkpoint(model, cfg.init_from)
        modules = sorted({name.split('.')[0] for name in copied})
        print(f'{cfg.method}/{cfg.setting}: {len(copied)} of {len(model.state_dict())} weights from '
              f'{cfg.init_from} ({", ".join(modules)})')
    if cfg.model.freeze_encoder:
        # every run started from the same backbone encodes the same frames: they are kept beside it
        store = os.path.join(os.path.dirname(os.path.abspath(cfg.init_from)), 'feature_cache') if cfg.init_from else None
        train_loader = cached_loader(train_loader, model, cfg.batch_size, seed=cfg.seed, progress=progress,
                                     store=store)
        print(f'{cfg.method}/{cfg.setting}: the frozen encoder\'s features of {len(train_loader)} batches cached '
              f'({train_loader.nbytes / 2 ** 20:.0f} MiB' + (f', kept in {store} for the other runs of this backbone)'
                                                              if store else ')'))
    if step:
        train_loader.set_epoch(step // max(1, len(train_loader)))   # resume the data order, epoch-wise
    with open(os.path.join(cfg.out_dir, 'config.json'), 'w') as f:
        json.dump(config_dict(cfg), f, indent=2)

    truncated = False
    bar = tqdm(total=cfg.iterations, initial=step, desc=f'{cfg.method}/{cfg.setting}', disable=not progress,
               dynamic_ncols=True)
    start = time.monotonic() - elapsed
    running = None
    model.train()
    while step < cfg.iterations and not truncated:
        for batch in train_loader:
            for group in optimizer.param_groups:
                group['lr'] = lr_at(cfg, step)
            out = forward(model, batch, 'train')
            loss = model.loss(out, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
            bar.update(1)
            bar.set_postfix(loss=f'{running:.3f}')
            done = step >= cfg.iterations
            if cfg.max_minutes and time.monotonic() - start > 60 * cfg.max_minutes and not done:
                truncated = True
            if step % cfg.eval_every == 0 or done or truncated:
                elapsed = time.monotonic() - start
                val = validate(model, val_loader)
                history.append({'step': step, 'loss': running, 'elapsed_s': round(elapsed, 1),
                                **{'val_' + name: value for name, value in val.items()}})
                extra = ''.join(f', {name} {val[name]:.4f}' for name in model.validation_metrics)
                bar.write(f'{cfg.method}/{cfg.setting} step {step}: loss {running:.3f}, val accuracy '
                          f'{val["accuracy"]:.4f}, mIoU {val["miou"]:.4f}{extra} ({elapsed / 60:.1f} min)')
                save_checkpoint(last_path, model, optimizer, step, elapsed, cfg, val)
                if val[cfg.select_by] > best:
                    best = val[cfg.select_by]
                    save_checkpoint(best_path, model, optimizer, step, elapsed, cfg, val)
                with open(history_path, 'w') as f:
                    json.dump({'history': history, 'truncated': truncated}, f, indent=2)
            if done or truncated:
                break
    bar.close()
    elapsed = time.monotonic() - start
    result = {'method': cfg.method, 'setting': cfg.setting, 'steps': step, 'elapsed_s': round(elapsed, 1),
              'truncated': truncated, 'select_by': cfg.select_by, 'best_val_' + cfg.select_by: best,
              'out_dir': cfg.out_dir}
    if cfg.select_by != 'accuracy':
        result['best_val_accuracy'] = max((h['val_accuracy'] for h in history), default=-1.0)
    with open(os.path.join(cfg.out_dir, 'train.json'), 'w') as f:
        json.dump(result, f, indent=2)
    return result


# MASH on the obstruction setting: its loader, and its models in the MODELS registry (learn/mash.py)
from . import mash  # noqa: E402,F401
from .mash_data import SETTING as _OBSTRUCTION, ObstructionLoader  # noqa: E402

LOADERS[_OBSTRUCTION] = ObstructionLoader
