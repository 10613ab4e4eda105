"""The handshake (Who2com / When2com) and the baselines of the handshake paper, registered by name.

Every model takes one batch of a collaborative frame, the degraded target's image and its S supporters'
images, and returns the target's class logits (plus what the method decided). Names follow the paper's
Table I (§IV-C):

    single_normal     upper bound: the un-degraded target image alone
    single_degraded   lower bound: the degraded target image alone
    catall            centralized: decode the concatenation of every agent's features
    attention         centralized: attention-weighted sum of every supporter's features
    compression       centralized: every supporter's features compressed to 25% by two extra convs, concatenated
    random            distributed: the features of one supporter picked at random
    who2com           ours w/ msg: request (query, Eq. 1), match (Eq. 2-3), connect (argmax, Eq. 6), decode (Eq. 4)
    who2com_nomsg     ours w/o msg: the query is a constant vector of ones
    when2com          ours with a "when to communicate" gate: a self-score joins the softmax, and at inference
                      the target connects only to supporters whose normalized score passes a threshold

    backbone          not a row of Table I: the shared pretrained encoder + head the others start from

Training follows §III-C: the handshake models are trained end to end with cross entropy on the target's labels
only, decoding the softmax-weighted sum of all supporters' features (Eq. 5, `selection='soft'`) or, with
`selection='hard'`, exactly the supporter(s) inference connects to, the softmax's gradient passed straight
through; at inference they connect to the argmax (or the gated set). Every model also has an own head (the
target's prediction from its own features) trained alongside: it is what a drone publishes without help
(fallback, own accuracy).

`WireSpec` says what the method puts on the radio per frame, so evaluation counts bytes with
runtime/wire.py exactly as the swarm would send them.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

from ..registry import Registry
from .backbone import Decoder, Encoder, conv_block


@dataclass
class ModelConfig:
    num_classes: int = 8
    channels: int = 32          # feature map channels (the value sent to a requester)
    width: int = 16             # backbone width
    query_size: int = 8         # m: the broadcast message (Who2com Fig. 5: small)
    key_size: int = 256         # k: kept locally, so it can be large (asymmetric sizes, §V)
    attention: str = 'general'  # general | additive | scaled_dot (Eq. 3 and its alternatives)
    own_loss_weight: float = 0.5
    gate_threshold: float = 0.5  # when2com: normalized supporter weight needed to connect
    compression_ratio: float = 0.25
    supporters: int = 4         # S: the centralized baselines' decoders take a fixed number of agents
    selection: str = 'soft'     # handshake training: 'soft' (Eq. 5) or 'hard' (straight-through, see SELECTIONS)
    freeze_encoder: bool = False  # keep a pretrained encoder fixed (its features can then be cached)
    patch_sampling: str = 'cells'  # MASH: what a supporter sends per matched cell (see PATCH_SAMPLINGS)
    # MASH: channels of a matching stem on the raw image beside the backbone's features (0: none). The
    # backbone is trained for segmentation, which keeps what a class looks like and drops what tells two
    # patches of one class apart: the texture a correspondence needs.
    match_stem: int = 0
    # MASH: the matches refined as a flow field over the target's cell grid after the paper's smoothing (see
    # learn/mash.py FlowRefiner); False: the smoothed volume's own sub-cell matches
    refine_flow: bool = False
    # MASH with refine_flow: both confidences HardSelection compares estimate accuracy, trained as such (the
    # share of a cell's labelled pixels the target's own prediction, or the supporter's patch, gets right):
    # the target keeps its cell unless a patch is expected to be more right, and a supporter's threshold is
    # an expected accuracy. False: the paper's match confidence and a self-confidence learned by the fusion.
    accuracy_confidence: bool = False
    # pose settings: a supporter's features where its warped view has no pixels are replaced by a learned
    # "nothing seen here" vector, weighted by each cell's covered share, so the model is told the holes
    valid_mask: bool = False


# How the handshake models combine the supporters while training. 'soft' is the paper's Eq. 5: the decoder
# sees a softmax blend of every supporter, which it never sees at inference (one argmax supporter, or the
# gated set). 'hard' decodes exactly what inference decodes and passes the softmax's gradient to the scores
# (straight-through: weights = hard + soft - soft.detach()).
SELECTIONS = ('soft', 'hard')

# What a MASH supporter samples for a matched target cell. 'cells': its class distribution averaged over the
# matched cell (one per cell; round 1). 'pixels': its segmentation at label resolution through a sub-cell
# warping grid (MASH Eq. 3: H x W x C x r), one class per pixel.
PATCH_SAMPLINGS = ('cells', 'pixels')


@dataclass
class WireSpec:
    """Per-frame transmission of a method, for one requester with S supporters."""

    handshake: bool                 # a Request goes out and S Replies come back
    query_shape: tuple = ()         # () with handshake: a request carrying no query (ours w/o msg)
    score_shape: tuple = (1,)
    feature_shape: tuple = ()       # one supporter's value
    features_sent: str = 'selected'  # 'selected' | 'all' | 'none'


@dataclass
class Output:
    logits: torch.Tensor                       # [B, K, H, W]
    own_logits: Optional[torch.Tensor] = None  # [B, K, H, W]
    scores: Optional[torch.Tensor] = None      # [B, S] matching scores
    weights: Optional[torch.Tensor] = None     # [B, S] attention / selection weights used
    selected: Optional[torch.Tensor] = None    # [B, S] bool: whose features were used at inference
    extra: dict = field(default_factory=dict)


class Attention(nn.Module):
    """Matching function Phi(mu, kappa) (Who2com Eq. 3): general mu^T W kappa (default), additive
    w^T tanh(W_k kappa + W_m mu), or scaled dot-product mu^T kappa / sqrt(d) (needs m == k)."""

    def __init__(self, kind: str, query_size: int, key_size: int, hidden: int = 64):
        super().__init__()
        self.kind = kind
        if kind == 'general':
            self.W = nn.Parameter(torch.randn(query_size, key_size) / math.sqrt(query_size * key_size))
        elif kind == 'additive':
            self.Wk = nn.Linear(key_size, hidden, bias=False)
            self.Wm = nn.Linear(query_size, hidden)
            self.w = nn.Linear(hidden, 1, bias=False)
        elif kind == 'scaled_dot':
            if query_size != key_size:
                raise ValueError(f'scaled_dot attention needs query_size == key_size ({query_size} != {key_size})')
        else:
            raise ValueError(f'unknown attention {kind!r}; valid: general, additive, scaled_dot')

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """query [B, m], keys [B, S, k] -> scores [B, S]."""
        if self.kind == 'general':
            return torch.einsum('bm,mk,bsk->bs', query, self.W, keys)
        if self.kind == 'additive':
            return self.w(torch.tanh(self.Wk(keys) + self.Wm(query).unsqueeze(1))).squeeze(-1)
        return torch.einsum('bm,bsm->bs', query, keys) / math.sqrt(query.shape[-1])


class VectorHead(nn.Module):
    """features [B, C, h, w] -> a vector [B, size]: a conv, a 4x4 spatial pooling (keeps the coarse layout
    that tells views apart), a linear layer. The message generator G_m and key generator G_k (Eq. 1-2)."""

    def __init__(self, channels: int, size: int, grid: int = 4):
        super().__init__()
        self.conv = conv_block(channels, channels)
        self.grid = grid
        self.fc = nn.Linear(channels * grid * grid, size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.conv(features), self.grid)
        return self.fc(x.flatten(1))


class CollabModel(nn.Module):
    """Shared parts: one encoder for every agent (same weights on every drone), the own head.

    A batch whose 'encoded' flag is set holds the encoder's features instead of images (learn/feature_cache.py,
    for a frozen encoder): `encode` then passes them through."""

    needs_supporters = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.selection not in SELECTIONS:
            raise ValueError(f'unknown selection {cfg.selection!r}; valid: {", ".join(SELECTIONS)}')
        self.cfg = cfg
        self.encoder = Encoder(cfg.channels, cfg.width)
        self.own_head = Decoder(cfg.channels, cfg.num_classes, cfg.width)
        self._inputs_encoded = False
        # evaluation: what a received feature map goes through on the wire ([N, C, h, w] -> the same), e.g. the
        # real codec's float16 or int8 round trip (learn/evaluate.py); None in training
        self.received_on_wire: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        if cfg.freeze_encoder:
            self.encoder.requires_grad_(False)
        self._valid: Optional[torch.Tensor] = None
        if cfg.valid_mask:
            self.unseen = nn.Parameter(torch.zeros(cfg.channels))

    def train(self, mode: bool = True) -> 'CollabModel':
        super().train(mode)
        if self.cfg.freeze_encoder:
            self.encoder.eval()        # a frozen encoder keeps its BatchNorm statistics too
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images if self._inputs_encoded else self.encoder(images)

    def received(self, features: torch.Tensor) -> torch.Tensor:
        """Features [N, C, h, w] as the requester receives them (see `received_on_wire`)."""
        return features if self.received_on_wire is None else self.received_on_wire(features)

    # validation measures beyond accuracy and mIoU (train --select-by), counted per batch by validation_counts
    validation_metrics: tuple[str, ...] = ()

    def validation_counts(self, out: 'Output', batch: dict) -> dict[str, tuple[int, int]]:
        """{metric: (hits, total)} of one validation batch, for each name in `validation_metrics`."""
        return {}

    def warm_start(self, source: dict) -> list[str]:
        """Weights that a pretrained run (`train --init-from`) gives beyond same-named ones: none here."""
        return []

    def encode_all(self, target: torch.Tensor, supporters: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """target [B, 3, H, W], supporters [B, S, 3, H, W] -> f_t [B, C, h, w], f_s [B, S, C, h, w]."""
        b, s = supporters.shape[:2]
        feats = self.encode(torch.cat([target, supporters.flatten(0, 1)], 0))
        f_t, f_s = feats[:b], feats[b:].view(b, s, *feats.shape[1:])
        if self.cfg.valid_mask and self._valid is not None:
            f_s = self.mark_unseen(f_s, self._valid)
        return f_t, f_s

    def mark_unseen(self, f_s: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """f_s [B, S, C, h, w] with each cell blended towards `unseen` by the share of it the supporter's
        warped view does not cover; valid [B, S, 1, H, W] (pixels) or [B, S, 1, h, w] (cells), in 0..1."""
        valid = cell_coverage(valid, f_s.shape[-2:]).to(f_s.dtype)
        return f_s * valid + (1 - valid) * self.unseen.view(1, 1, -1, 1, 1)

    def wire(self) -> WireSpec:
        raise NotImplementedError

    def forward_batch(self, batch: dict, mode: str) -> Output:
        """One batch of the data loader of the model's settings (learn/data.py) -> Output. Models of other
        settings (MASH on the obstruction setting) override this and `loss` with their own batch keys."""
        with self.inputs_of(batch):
            return self(batch['target'], batch['supporters'], clean_target=batch['clean'], mode=mode)

    @contextlib.contextmanager
    def inputs_of(self, batch: dict):
        """While a batch is forwarded: whether it holds cached features (see the class docstring)."""
        self._inputs_encoded = bool(batch.get('encoded', False))
        self._valid = batch.get('valid')
        try:
            yield
        finally:
            self._inputs_encoded = False
            self._valid = None

    def loss(self, out: Output, batch: dict, ignore_index: int = 255) -> torch.Tensor:
        labels = batch['labels']
        loss = F.cross_entropy(out.logits, labels, ignore_index=ignore_index)
        if out.own_logits is not None and self.cfg.own_loss_weight > 0:
            loss = loss + self.cfg.own_loss_weight * F.cross_entropy(out.own_logits, labels, ignore_index=ignore_index)
        return loss


def cell_coverage(valid: torch.Tensor, cells: tuple) -> torch.Tensor:
    """Pixel validity [B, S, 1, H, W] -> the covered share of each feature cell [B, S, 1, h, w] (as is when it
    already has the cells' size)."""
    if tuple(valid.shape[-2:]) == tuple(cells):
        return valid
    b, s = valid.shape[:2]
    return F.adaptive_avg_pool2d(valid.flatten(0, 1), cells).view(b, s, 1, *cells)


MODELS: Registry[CollabModel] = Registry('method')
register = MODELS.register


def create_model(name: str, cfg: Optional[ModelConfig] = None) -> CollabModel:
    model = MODELS.create(name, cfg or ModelConfig())
    model.method_name = name
    return model


# ---------------------------------------------------------------------------------------------- bounds
class _Single(CollabModel):
    needs_supporters = False
    use_clean = False

    def forward(self, target, supporters=None, clean_target=None, mode='train') -> Output:
        image = clean_target if self.use_clean else target
        if image is None:
            raise ValueError('single_normal needs the clean target image')
        logits = self.own_head(self.encode(image))
        return Output(logits=logits)

    def wire(self) -> WireSpec:
        return WireSpec(handshake=False, features_sent='none')


@register('single_normal')
class SingleNormal(_Single):
    use_clean = True


@register('single_degraded')
class SingleDegraded(_Single):
    pass


@register('backbone')
class Backbone(_Single):
    """The shared pretrained backbone (our stand-in for the paper's ImageNet-pretrained ResNet18): one encoder
    and head trained on the target's clean and degraded views together, once per setting; the collaborative
    models start from it (`train --init-from`, with `--freeze-encoder` their training caches its features).
    Scored, like Single degraded, on the degraded view."""

    def forward_batch(self, batch: dict, mode: str) -> Output:
        if mode != 'train':
            return super().forward_batch(batch, mode)
        with self.inputs_of(batch):
            return Output(logits=self.own_head(self.encode(torch.cat([batch['target'], batch['clean']], 0))))

    def loss(self, out: Output, batch: dict, ignore_index: int = 255) -> torch.Tensor:
        labels = batch['labels']
        if out.logits.shape[0] == 2 * labels.shape[0]:
            labels = torch.cat([labels, labels], 0)
        return F.cross_entropy(out.logits, labels, ignore_index=ignore_index)


# ---------------------------------------------------------------------------------------------- centralized
@register('catall')
class CatAll(CollabModel):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.supporters = cfg.supporters
        self.decoder = Decoder(cfg.channels * (cfg.supporters + 1), cfg.num_classes, cfg.width)

    def forward(self, target, supporters, clean_target=None, mode='train') -> Output:
        f_t, f_s = self.encode_all(target, supporters)
        if f_s.shape[1] != self.supporters:
            raise ValueError(f'catall was built for {self.supporters} supporters, got {f_s.shape[1]}')
        f_s = self.received(f_s.flatten(0, 1)).view(f_s.shape)
        logits = self.decoder(torch.cat([f_t, f_s.flatten(1, 2)], 1))
        return Output(logits=logits, own_logits=self.own_head(f_t))

    def wire(self) -> WireSpec:
        return WireSpec(handshake=False, feature_shape=(self.cfg.channels,), features_sent='all')


def decoder_from_own_head(model: CollabModel, source: dict) -> list[str]:
    """Start the fused decoder D(f_t, f_received) (Eq. 4) as the pretrained own head reading the received
    features: the same weights, the first convolution's f_t half zero. With the right supporter selected it
    starts where the backbone is on a clean view, instead of from random weights."""
    prefix = 'own_head.'
    head = {k[len(prefix):]: v for k, v in source.items() if k.startswith(prefix)}
    target = model.decoder.state_dict()
    first = 'head.0.0.weight'
    c = model.cfg.channels
    if first not in head or tuple(target[first].shape[1:]) != (2 * c,) + tuple(head[first].shape[2:]):
        return []
    loaded = {}
    for name, value in head.items():
        if name == first:
            value = torch.cat([torch.zeros_like(value), value], 1)
        if name in target and target[name].shape == value.shape:
            loaded[name] = value
    model.decoder.load_state_dict({**target, **loaded}, strict=True)
    return ['decoder.' + k for k in sorted(loaded)]


class _Handshake(CollabModel):
    """Query from the target, keys from the supporters, matching scores (Eq. 1-3)."""

    use_message = True

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.message = VectorHead(cfg.channels, cfg.query_size)
        self.key = VectorHead(cfg.channels, cfg.key_size)
        self.match = Attention(cfg.attention, cfg.query_size, cfg.key_size)
        self.decoder = Decoder(2 * cfg.channels, cfg.num_classes, cfg.width)

    def query(self, f_t: torch.Tensor) -> torch.Tensor:
        if self.use_message:
            return self.message(f_t)
        return torch.ones(f_t.shape[0], self.cfg.query_size, device=f_t.device, dtype=f_t.dtype)

    def scores(self, f_t: torch.Tensor, f_s: torch.Tensor) -> torch.Tensor:
        b, s = f_s.shape[:2]
        keys = self.key(f_s.flatten(0, 1)).view(b, s, -1)
        return self.match(self.query(f_t), keys)

    def wire(self) -> WireSpec:
        return WireSpec(handshake=True, query_shape=(self.cfg.query_size,) if self.use_message else (),
                        feature_shape=(self.cfg.channels,), features_sent='selected')

    def warm_start(self, source: dict) -> list[str]:
        return decoder_from_own_head(self, source)


@register('attention')
class AttentionBaseline(_Handshake):
    """Centralized: the target holds every supporter's features and sums them with attention weights,
    at training and at inference alike (no selection, so no bandwidth saving)."""

    def forward(self, target, supporters, clean_target=None, mode='train') -> Output:
        f_t, f_s = self.encode_all(target, supporters)
        scores = self.scores(f_t, f_s)
        weights = scores.softmax(-1)
        f_sum = torch.einsum('bs,bschw->bchw', weights, f_s)
        return Output(logits=self.decoder(torch.cat([f_t, f_sum], 1)), own_logits=self.own_head(f_t),
                      scores=scores, weights=weights)

    def wire(self) -> WireSpec:
        return WireSpec(handshake=False, feature_shape=(self.cfg.channels,), features_sent='all')


@register('compression')
class Compression(CollabModel):
    """Centralized with uniform compression: each supporter's features pass a 1x1 conv to
    `compression_ratio` of the channels before sending, and a 1x1 conv back on the target; all are
    concatenated (handshake paper §IV-C: two extra convolutional layers, rate 25%)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.supporters = cfg.supporters
        self.sent_channels = max(1, int(round(cfg.channels * cfg.compression_ratio)))
        self.compress = nn.Sequential(nn.Conv2d(cfg.channels, self.sent_channels, 1), nn.BatchNorm2d(self.sent_channels))
        self.expand = conv_block(self.sent_channels, cfg.channels)
        self.decoder = Decoder(cfg.channels * (cfg.supporters + 1), cfg.num_classes, cfg.width)

    def forward(self, target, supporters, clean_target=None, mode='train') -> Output:
        f_t, f_s = self.encode_all(target, supporters)
        b, s = f_s.shape[:2]
        if s != self.supporters:
            raise ValueError(f'compression was built for {self.supporters} supporters, got {s}')
        sent = self.compress(f_s.flatten(0, 1))
        received = self.expand(sent).view(b, s, *f_t.shape[1:])
        logits = self.decoder(torch.cat([f_t, received.flatten(1, 2)], 1))
        return Output(logits=logits, own_logits=self.own_head(f_t), extra={'sent': sent})

    def wire(self) -> WireSpec:
        return WireSpec(handshake=False, feature_shape=(self.sent_channels,), features_sent='all')


# ---------------------------------------------------------------------------------------------- distributed
@register('random')
class RandomSelection(CollabModel):
    """One supporter's features, chosen uniformly at random (training and inference)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.decoder = Decoder(2 * cfg.channels, cfg.num_classes, cfg.width)

    def forward(self, target, supporters, clean_target=None, mode='train', generator=None) -> Output:
        f_t, f_s = self.encode_all(target, supporters)
        b, s = f_s.shape[:2]
        pick = torch.randint(0, s, (b,), generator=generator, device=f_s.device)
        selected = F.one_hot(pick, s).bool()
        f_sel = self.received(f_s[torch.arange(b), pick])
        return Output(logits=self.decoder(torch.cat([f_t, f_sel], 1)), own_logits=self.own_head(f_t),
                      selected=selected, weights=selected.float())

    def wire(self) -> WireSpec:
        # no matching: the target asks one supporter directly (a Connect) and receives its features
        return WireSpec(handshake=False, feature_shape=(self.cfg.channels,), features_sent='selected')

    def warm_start(self, source: dict) -> list[str]:
        return decoder_from_own_head(self, source)


@register('who2com')
class Who2com(_Handshake):
    """Ours w/ msg: softmax-weighted sum of all supporters in training (Eq. 5), argmax at inference (Eq. 6)."""

    def forward(self, target, supporters, clean_target=None, mode='train') -> Output:
        f_t, f_s = self.encode_all(target, supporters)
        scores = self.scores(f_t, f_s)
        b, s = scores.shape
        soft = scores.softmax(-1)
        if mode == 'train' and self.cfg.selection == 'soft':
            weights = soft
            selected = None
        else:
            pick = scores.argmax(-1)
            selected = F.one_hot(pick, s).bool()
            weights = selected.to(f_s.dtype)
            if mode == 'train':
                weights = weights + soft - soft.detach()
                selected = None
        f_sum = torch.einsum('bs,bschw->bchw', weights, f_s)
        if selected is not None:       # inference: exactly the connected supporter's map, as it was received
            f_sum = self.received(f_sum)
        return Output(logits=self.decoder(torch.cat([f_t, f_sum], 1)), own_logits=self.own_head(f_t),
                      scores=scores, weights=weights, selected=selected)


@register('who2com_nomsg')
class Who2comNoMessage(Who2com):
    use_message = False


@register('when2com')
class When2com(_Handshake):
    """Ours with a "when" gate (When2com): the target's own key joins the match, so the softmax runs over
    [self; supporters]. Training decodes the weighted sum including the target's own features; at
    inference the target connects to the supporters whose normalized weight is at least `gate_threshold`
    (possibly none: then it decodes from its own features alone and sends nothing but the request)."""

    def forward(self, target, supporters, clean_target=None, mode='train') -> Output:
        f_t, f_s = self.encode_all(target, supporters)
        all_scores = self.gate_scores(f_t, f_s)
        probs = all_scores.softmax(-1)
        stacked = torch.cat([f_t.unsqueeze(1), f_s], 1)
        if mode == 'train' and self.cfg.selection == 'soft':
            weights = probs
            selected = None
        else:
            selected = probs[:, 1:] >= self.cfg.gate_threshold
            weights = self.gate_weights(probs, selected)
            if mode == 'train':
                weights = weights.detach() + probs - probs.detach()
                selected = None
            else:                      # inference: the supporters' maps as they were received
                stacked = torch.cat([f_t.unsqueeze(1), self.received(f_s.flatten(0, 1)).view(f_s.shape)], 1)
        logits = self.decode_weighted(f_t, stacked, weights)
        return Output(logits=logits, own_logits=self.own_head(f_t),
                      scores=all_scores[:, 1:], weights=weights[:, 1:], selected=selected,
                      extra={'self_score': all_scores[:, 0]})

    def gate_scores(self, f_t: torch.Tensor, f_s: torch.Tensor) -> torch.Tensor:
        """Match scores [B, 1 + S] of the target's query against its own key and the supporters' keys."""
        b, s = f_s.shape[:2]
        keys = self.key(torch.cat([f_t.unsqueeze(1), f_s], 1).flatten(0, 1)).view(b, s + 1, -1)
        return self.match(self.query(f_t), keys)

    @staticmethod
    def gate_weights(probs: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """The softmax over [self; supporters] restricted to self and the connected supporters, renormalized."""
        gated = torch.cat([probs[:, :1], probs[:, 1:] * selected], 1)
        return gated / gated.sum(-1, keepdim=True)

    def decode_weighted(self, f_t: torch.Tensor, stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Class logits from the target's features and the weighted sum of `stacked` [B, 1 + S, C, h, w]."""
        f_sum = torch.einsum('bs,bschw->bchw', weights, stacked)
        return self.decoder(torch.cat([f_t, f_sum], 1))
