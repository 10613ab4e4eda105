"""MASH, the Multi-Agent Spatial Handshaking network (shared/papers/mash-spatial-handshake.txt, §III), and the
baselines of its Table I (§IV "Baselines"), on the `obstruction` setting, registered by name:

    mash                MASH, HardSelection fusion at inference (the paper's highlighted variant, Table I);
                        `fusion_kind = 'soft'` runs the same weights with SoftSelection (see "Training"),
                        `'bayes'` with BayesFusion (see (6))
    mash_stacked        MASH with StackedFusion: the warped distributions go through a small conv net
    inpainting          the target image alone, trained to predict its unobstructed labels ("hallucinate")
    inpainting_all      the same network trained on every agent's view ("Trained on All Views")
    inputstack          the unwarped RGB of all agents concatenated into one backbone
    outputstack         a shared backbone per agent, the output distributions concatenated and fused by convs
    warped_outputstack  outputstack with the supporters' distributions warped into the target by the
                        ground-truth warping grid at label resolution (the upper bound: needs ground truth at
                        inference); warped_outputstack_cells moves whole cells instead

Every model takes one batch of mash_data.ObstructionLoader (the target's obstructed image and its S = N - 1
supporters' images) and returns the target's class scores over the unobstructed labels.

MASH (§III, Fig. 2), per agent and for one target T and one supporter S:
  (1) backbone: the SegNet-like encoder-decoder of backbone.py. Its 1/4-resolution feature map is pooled 2x2
      to the cell grid (8-px cells, the dataset's 16 x 16 correspondence grid at 128 px) and passed through two
      3x3 conv blocks (context: our backbone's features see about 25 px, SegNet's intermediate layers far
      more; an 8-px cell of grass is only told apart from another by its surroundings): f, Hs x Ws x F.
      Its output class distribution (softmax of the logits, "pre-ArgMax") is what a supporter samples: averaged
      per cell ('cells' patch sampling, one distribution per cell) or per pixel ('pixels', see (5)).
  (2) data compression: query and key encoders, 1x1 convolutions, f -> q (Q channels, sent by T, quantized
      uint8 as the codec sends it) and f -> k (K channels, kept by S); asymmetric, Q <= K.
  (3) data correspondence: the query-key transform (1x1 conv Q -> K) gives p_T; the dense distance volume
      D_TS[x, y, x', y'] = -||p_T[x, y] - k_S[x', y']|| (Eq. 1) reshaped to Ht x Wt x (Hs Ws), plus the
      no-match score -||p_T[x, y] - 0|| (Eq. 2): Ht x Wt x (Hs Ws + 1); all times a learned positive scale
      (an inverse temperature, so the softmax can sharpen without rescaling every feature).
  (4) correspondence smoothing and infilling: a convolutional autoencoder over that volume (same size in and
      out), then a softmax over the Hs Ws + 1 bins; channel-wise argmax -> warping grid, max -> confidence.
  (5) sampling: each supporter samples its class distribution with the grid (no match -> the target's own
      cell is used, i.e. the supporter contributes nothing there). 'cells': the matched cell's mean
      distribution. 'pixels' (Eq. 3's H x W x C x r): a sub-cell position per cell (a soft-argmax over the
      3 x 3 cells around the argmax, trained on bilinear targets from the dataset's `correspondence_uv`) and a
      piecewise-affine grid through those positions (label_resolution_grid) sample its per-pixel distribution,
      sent as one class id per pixel; the window's mass is the match's confidence.
  (6) fusion: HardSelection (per pixel, the agent with the strongest confidence, the target included),
      SoftSelection (confidence-weighted sum) or StackedFusion (concatenation + small conv net). Ours beside
      them, BayesFusion, for models whose confidences estimate accuracy (`accuracy_confidence`): each received
      class id is a noisy label that is right with its confidence a and otherwise any of the K - 1 other
      classes alike, the target's own distribution is the prior, and the fused distribution is the posterior
      (own(c) * prod_j [a_j if c = l_j else (1 - a_j) / (K - 1)], normalized). Two supporters that agree
      outweigh one confident target; one that is barely more confident than the target moves it only where
      the target itself is unsure.

Distributed inference as the swarm runs it (and as evaluation scores it): the requester broadcasts q; each
supporter replies with only the cells whose argmax is a real match and whose confidence reaches a threshold
(bandwidth, Eq. 3's selection factor r); the requester fuses what it received. The target's own candidate
in the fusion is scored by a self-confidence computed from its own features (the role the no-match bin plays
per supporter, "a self-attention mechanism for evaluating the descriptiveness of its own features", §III
after Eq. 2): a supporter's cell replaces the target's own cell only when its confidence is higher. This is
how "the target itself included" is decided without the supporters' no-match scores, which are never sent.

Training (§III "Training"): cross entropy on the fused segmentation (the target's unobstructed labels), on
every agent's own backbone output (per-agent segmentation masks) and on the correspondence volume against the
world's ground-truth cell correspondences, no-match bin included. Argmax sampling is not differentiable, so
`mash` is trained on the fusion's soft counterpart: per target cell, a mixture of the target's own
distribution (weight: its self-confidence) and every supporter cell j (weight: its matching probability),
i.e. softmax-weighted sampling. HardSelection at inference is the mixture's largest component and
SoftSelection its confidence-weighted mean over the argmax matches, so both come from the same weights (as
Who2com trains on the softmax-weighted sum and selects the argmax). StackedFusion trains its conv net on the
softmax-weighted samples of the cells the supporter would send (and the target's self-confidence map).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from ..runtime.homography import GEOMETRIES, plane_matches
from ..runtime.onnx_mash import NO_LABEL
from ..world.geometry import cell_centres
from .backbone import Encoder, conv_block
from .models import PATCH_SAMPLINGS, CollabModel, ModelConfig, Output, register

SUBCELL_KEY = 'correspondence_uv'    # the dataset key (and batch key) of the sub-cell positions
CELL_SIZE = 8                        # px per cell: the encoder's 1/4 map pooled 2x2; = the dataset's cell_size
IMAGE_SIZE = (128, 128)              # (H, W) of the datasets (docs/DATASETS.md): a 16 x 16 cell grid
CORRESPONDENCE_LOSS_WEIGHT = 1.0     # correspondence cross entropy, summed with the segmentation ones
CONFIDENCE_THRESHOLD = 0.5           # a supporter sends a matched cell only from this confidence on
FUSIONS = ('hard', 'soft', 'bayes')  # the requester's fusion at inference (module docstring, (6))
BAYES_MIN_CONFIDENCE = 1e-3          # BayesFusion: no value and no prior is taken as certain (log 0)
QUERY_DTYPE = 'uint8'                # the query map on the wire (msg/Request.msg, codec quantization)
PATCH_DTYPE = 'uint8'                # confidences and class distributions on the wire (msg/PatchSegments.msg)
DISTANCE_EPS = 1e-6                  # keeps sqrt differentiable at distance 0
DISTANCE_SCALE = 4.0                 # initial inverse temperature of the distances (learned)
PLANE_MIN_CONFIDENCE = 0.1           # matches that vote for the plane: from this confidence on
PLANE_THRESHOLD_PX = 6.0             # a match agrees with a plane within this many pixels (3/4 of a cell)
PLANE_MIN_SUPPORT = 0.15             # a plane needs this share of the target's cells to agree (chance agreement
                                     # of random matches with a RANSAC hypothesis stays far below it)
# accuracy_confidence models: a confidence is an expected accuracy, so the voters are the matches expected to be
# right more often than not (87 % of them land within one cell), and 24 of 256 cells agreeing make a plane
PLANE_MIN_CONFIDENCE_ACCURACY = 0.5
PLANE_MIN_SUPPORT_ACCURACY = 24 / 256
PLANE_WEIGHT = 0.8                   # the plane's cells: this times the supporter's expected accuracy there
                                     # (calibrated per run, mash_eval.calibrate_mash_run)
_QUANT_RANGE = {'uint8': (0, 255), 'int8': (-128, 127)}
FLOW_INPUTS = 7                      # FlowRefiner: position u, v, window mass, no-match, peak bin, target cell y, x
FLOW_LOSS_WEIGHT = 1.0               # refine_flow: its position (smooth L1, cells) and match (BCE) losses


# ---------------------------------------------------------------------------------------------- wire helpers
def quantize_dequantize(x: torch.Tensor, dims: tuple[int, ...], dtype: str,
                        mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """What the codec's per-tensor affine quantization (runtime/codec.py, `encode_tensor` then
    `decode_tensor`) does to `x`, one tensor per index of the axes not in `dims`; `mask` (broadcastable to x)
    marks the elements the tensor holds (e.g. the sent cells), the others pass unchanged. float32 passes
    unchanged, float16 is rounded to half precision."""
    if dtype == 'float32':
        return x
    if dtype == 'float16':
        return x.half().to(x.dtype)
    lo, hi = _QUANT_RANGE[dtype]
    inside = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.expand_as(x)
    xmin = torch.where(inside, x, torch.full_like(x, float('inf'))).amin(dims, keepdim=True).clamp(max=0.0)
    xmax = torch.where(inside, x, torch.full_like(x, float('-inf'))).amax(dims, keepdim=True).clamp(min=0.0)
    span = xmax - xmin
    scale = torch.where(span > 0, span / (hi - lo), torch.ones_like(span))
    zero_point = torch.clamp(torch.round(lo - xmin / scale), lo, hi)
    q = torch.clamp(torch.round(x / scale) + zero_point, lo, hi)
    return torch.where(inside, (q - zero_point) * scale, x)


def straight_through(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Forward: the quantized value; backward: the identity (training sees the wire's rounding)."""
    return x + (quantized - x).detach()


def upsample_cells(x: torch.Tensor, cell_size: int) -> torch.Tensor:
    """[B, C, Hc, Wc] -> [B, C, Hc * cell, Wc * cell]: each cell's value over its pixels."""
    return F.interpolate(x, scale_factor=float(cell_size), mode='nearest')


def sample_cells(values: torch.Tensor, index: torch.Tensor, cell_size: int) -> torch.Tensor:
    """Torch version of world.geometry.sample_cells, batched: values [B, C, H, W], index [B, Hc*Wc] long (a
    source cell per target cell, row-major; Hc*Wc = no match) -> [B, C, H, W], target cell i holding source
    cell index[i] (cell_size x cell_size pixels each), zeros where there is no match."""
    b, c, h, w = values.shape
    hc, wc = h // cell_size, w // cell_size
    cells = values.view(b, c, hc, cell_size, wc, cell_size).permute(0, 2, 4, 1, 3, 5).reshape(b, hc * wc, -1)
    cells = torch.cat([cells, cells.new_zeros(b, 1, cells.shape[-1])], 1)
    picked = cells.gather(1, index[:, :, None].expand(-1, -1, cells.shape[-1]))
    return picked.view(b, hc, wc, c, cell_size, cell_size).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


JACOBIAN_LIMIT = 3.0                 # |d source px / d target px| of the local warp; larger is a depth edge


def _shift(x: torch.Tensor, step: int, dim: int) -> torch.Tensor:
    """x shifted by `step` along `dim` (x[i] <- x[i + step]), zero-filled at the border."""
    out = torch.zeros_like(x)
    n = x.shape[dim]
    if step > 0:
        out.narrow(dim, 0, n - step).copy_(x.narrow(dim, step, n - step))
    else:
        out.narrow(dim, -step, n + step).copy_(x.narrow(dim, 0, n + step))
    return out


def label_resolution_grid(positions: torch.Tensor, grid: tuple[int, int], cell_size: int,
                          source_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The warping grid at label resolution (MASH Eq. 3: a supporter sends its H x W segmentation for the
    matched fraction r of the image) from where each target cell's centre lands in the supporter.

    positions [N, Hc*Wc, 2] (source pixels (u, v), row-major cells; NaN where a cell has no match) -> grid
    [N, H, W, 2] for F.grid_sample(align_corners=True) and valid [N, 1, H, W] bool. Inside a cell, a pixel
    at offset d from the centre samples positions + J d, J the local Jacobian of the cell-to-source map from
    the neighbouring matched cells (central differences, one-sided at borders and next to unmatched cells,
    the identity where a cell has no matched neighbour along an axis; clamped to +-JACOBIAN_LIMIT): a
    piecewise-affine warp, so a rotated or rescaled view lines up with the target's pixels instead of
    arriving as whole blocks offset by up to half a cell."""
    n = positions.shape[0]
    hc, wc = grid
    sh, sw = source_size
    p = positions.view(n, hc, wc, 2).permute(0, 3, 1, 2)                      # [N, 2, Hc, Wc]
    ok = torch.isfinite(p).all(1, keepdim=True)                               # [N, 1, Hc, Wc]
    p = torch.nan_to_num(p)
    okf = ok.to(p.dtype)
    jacobians = []
    for dim, unit in ((3, (1.0, 0.0)), (2, (0.0, 1.0))):                      # d/dx (columns), d/dy (rows)
        fwd, fwd_ok = _shift(p, 1, dim), _shift(okf, 1, dim)
        bwd, bwd_ok = _shift(p, -1, dim), _shift(okf, -1, dim)
        central = (fwd - bwd) / (2 * cell_size)
        forward = (fwd - p) / cell_size
        backward = (p - bwd) / cell_size
        identity = p.new_tensor(unit).view(1, 2, 1, 1).expand_as(p)
        j = torch.where((fwd_ok * bwd_ok) > 0, central,
                        torch.where(fwd_ok > 0, forward, torch.where(bwd_ok > 0, backward, identity)))
        jacobians.append(j.clamp(-JACOBIAN_LIMIT, JACOBIAN_LIMIT))
    half = (cell_size - 1) / 2
    offset = torch.arange(cell_size, dtype=p.dtype, device=p.device) - half
    dx = offset.repeat(wc).view(1, 1, 1, -1)                                  # each pixel's offset in its cell
    dy = offset.repeat(hc).view(1, 1, -1, 1)
    source = (upsample_cells(p, cell_size) + upsample_cells(jacobians[0], cell_size) * dx
              + upsample_cells(jacobians[1], cell_size) * dy)                # [N, 2, H, W] pixels
    u, v = source[:, 0], source[:, 1]
    inside = (u >= -0.5) & (u <= sw - 0.5) & (v >= -0.5) & (v <= sh - 0.5)
    valid = upsample_cells(okf, cell_size)[:, 0] > 0.5
    norm = torch.stack([2 * u / max(sw - 1, 1) - 1, 2 * v / max(sh - 1, 1) - 1], -1)
    return norm, (valid & inside)[:, None]


def sample_label_resolution(values: torch.Tensor, positions: torch.Tensor, cell_size: int,
                            mode: str = 'bilinear') -> tuple[torch.Tensor, torch.Tensor]:
    """A supporter's per-pixel map values [N, C, H, W] sampled into the target through the label-resolution
    grid of `positions` [N, Hc*Wc, 2] -> [N, C, H, W] (zeros where invalid) and valid [N, 1, H, W]."""
    h, w = values.shape[-2:]
    grid, valid = label_resolution_grid(positions, (h // cell_size, w // cell_size), cell_size, (h, w))
    sampled = F.grid_sample(values, grid, mode=mode, padding_mode='border', align_corners=True)
    return sampled * valid.to(values.dtype), valid


def to_cell_blocks(x: torch.Tensor) -> torch.Tensor:
    """[N, K, H, W] -> [N, Hc*Wc, K, cell, cell]: each cell's pixels (row-major cells)."""
    n, k, h, w = x.shape
    c = CELL_SIZE
    return x.view(n, k, h // c, c, w // c, c).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // c) * (w // c), k, c, c)


def patch_labels(blocks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """'pixels' patches as sent: blocks [..., K, cell, cell] and valid [..., cell, cell] -> one class id per
    pixel [..., cell, cell] int64 (the distribution's argmax; NO_LABEL where the pixel is not seen)."""
    return torch.where(valid, blocks.max(-3).indices, NO_LABEL)


def labels_to_blocks(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Received 'pixels' patches, class ids [..., cell, cell] (NO_LABEL: none) -> one-hot blocks
    [..., K, cell, cell] float (all zero where a pixel carries nothing), what `Mash.fuse` takes."""
    onehot = F.one_hot(labels.clamp(0, num_classes), num_classes + 1)[..., :num_classes]
    return onehot.movedim(-1, -3).float()


def from_cell_blocks(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """to_cell_blocks' inverse: [N, Hc*Wc, K, cell, cell] -> [N, K, H, W]."""
    n, _, k, c, _ = x.shape
    hc, wc = grid
    return x.view(n, hc, wc, k, c, c).permute(0, 3, 1, 4, 2, 5).reshape(n, k, hc * c, wc * c)


def bilinear_cell_targets(positions: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Sub-cell correspondence targets: positions [N, C, 2] (pixels (u, v) in the supporter; NaN: no match)
    -> [N, C + 1, C] probabilities over the source cells + no-match (dim 1) per target cell (dim 2). A matched
    cell's mass is split bilinearly between the (up to) four source cells whose centres surround its position,
    so the volume's local soft-argmax (Mash.subcell_matches) can learn the position below the cell grid."""
    n, c, _ = positions.shape
    hc, wc = grid
    half = (CELL_SIZE - 1) / 2
    matched = torch.isfinite(positions).all(-1)                                   # [N, C]
    xy = torch.nan_to_num((positions - half) / CELL_SIZE)
    x = xy[..., 0].clamp(0, wc - 1)
    y = xy[..., 1].clamp(0, hc - 1)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=wc - 1), (y0 + 1).clamp(max=hc - 1)
    out = positions.new_zeros(n, c + 1, c)
    for xi, yi, weight in ((x0, y0, (1 - fx) * (1 - fy)), (x1, y0, fx * (1 - fy)),
                           (x0, y1, (1 - fx) * fy), (x1, y1, fx * fy)):
        out.scatter_add_(1, (yi * wc + xi)[:, None], (weight * matched)[:, None])
    out[:, c] = (~matched).to(out.dtype)
    return out


def within_one_cell(match: torch.Tensor, truth: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Matches in the 3x3 cell neighbourhood of a real ground-truth match (never true for no-match truth)."""
    hc, wc = grid
    rows = (torch.div(match, wc, rounding_mode='floor') - torch.div(truth, wc, rounding_mode='floor')).abs()
    cols = (match % wc - truth % wc).abs()
    return (rows <= 1) & (cols <= 1) & (truth != hc * wc) & (match != hc * wc)


# ---------------------------------------------------------------------------------------------- MASH parts
def distance_volume(p: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The dense distance volume with its no-match bin (§III "Data Correspondence", Eq. 1-2).

    p [N, K, Ht, Wt] (the target's transformed query), k [N, K, Hs, Ws] (the supporter's key) ->
    [N, Hs*Ws + 1, Ht, Wt]: channel j < Hs*Ws (row-major source cell) holds -||p_T[x, y] - k_S[j]||, the last
    channel -||p_T[x, y] - 0||. Channels are the flattened source grid so that the smoothing network can
    convolve over the target grid."""
    n, kd, ht, wt = p.shape
    pt = p.flatten(2)                                            # [N, K, Ct]
    ks = k.flatten(2)                                            # [N, K, Cs]
    p2 = (pt * pt).sum(1)                                        # [N, Ct]
    k2 = (ks * ks).sum(1)                                        # [N, Cs]
    cross = torch.bmm(ks.transpose(1, 2), pt)                    # [N, Cs, Ct]
    squared = k2[:, :, None] + p2[:, None, :] - 2.0 * cross
    matches = -torch.sqrt(squared.clamp_min(DISTANCE_EPS))
    no_match = -torch.sqrt(p2.clamp_min(DISTANCE_EPS))[:, None, :]
    return torch.cat([matches, no_match], 1).view(n, -1, ht, wt)


def _strided_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def grid_coords(n: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """Where each cell of an h x w grid is, (y, x) in [-1, 1]: [n, 2, h, w] in `like`'s dtype and device."""
    ys = torch.linspace(-1.0, 1.0, h, dtype=like.dtype, device=like.device)
    xs = torch.linspace(-1.0, 1.0, w, dtype=like.dtype, device=like.device)
    return torch.stack([ys[:, None].expand(h, w), xs[None, :].expand(h, w)])[None].expand(n, 2, h, w)


class GridEncoderDecoder(nn.Module):
    """A small convolutional encoder-decoder over the target's cell grid (two stride-2 stages, skip
    connections): [N, cin, Hc, Wc] -> [N, cout, Hc, Wc], its last layer initialized to zero so that a
    residual built on it starts as the identity."""

    def __init__(self, cin: int, cout: int, width: int):
        super().__init__()
        self.enc0 = conv_block(cin, width)
        self.enc1 = _strided_block(width, 2 * width)
        self.enc2 = _strided_block(2 * width, 2 * width)
        self.dec1 = conv_block(4 * width, width)
        self.dec0 = conv_block(2 * width, width)
        self.out = nn.Conv2d(width, cout, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(x)
        e1 = self.enc1(e0)
        e2 = self.enc2(e1)
        d1 = self.dec1(torch.cat([F.interpolate(e2, size=e1.shape[-2:], mode='nearest'), e1], 1))
        d0 = self.dec0(torch.cat([F.interpolate(d1, size=e0.shape[-2:], mode='nearest'), e0], 1))
        return self.out(d0)


class CorrespondenceAutoencoder(GridEncoderDecoder):
    """Smoothing and infilling of the correspondence volume (§III "Correspondence Smoothing and Infilling"):
    [N, Hs*Ws + 1, Ht, Wt] -> the same size, a convolutional encoder-decoder over the target grid whose
    channels are the matching distribution of each target cell.

    Choices the paper leaves open: the volume enters as per-cell log-probabilities (independent of the feature
    norms that set the raw distances' offset); two coordinate channels tell the network where a target cell
    is (the "dataset priors", e.g. gravity-aligned views); the output is a residual on the input, zero at the
    start, so training starts from the raw matching and the correspondence loss reaches the query and key
    encoders from the first step."""

    def __init__(self, bins: int, width: int):
        super().__init__(bins + 2, bins, width)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        n, _, h, w = volume.shape
        log_probs = volume.log_softmax(1)
        return log_probs + super().forward(torch.cat([log_probs, grid_coords(n, h, w, volume)], 1))


class FlowRefiner(GridEncoderDecoder):
    """The supporter's matches refined as a flow field over the target's cell grid (`refine_flow`).

    The paper's smoothing works on the volume, whose channels are the flattened source grid: moving a match by
    one source cell, what an obstructed cell needs to follow its neighbours, is a different channel mapping at
    every source cell, so infilling copies a neighbour's match instead of continuing the field. Here each target
    cell is summarized by its sub-cell match (position, window mass, no-match mass, peak) and the
    encoder-decoder corrects the position and rescores the match; a smooth field (the ground is nearly planar)
    is what such a net interpolates well. [N, FLOW_INPUTS, Hc, Wc] -> [N, 3, Hc, Wc]: the position's correction
    (cells, u and v) and the match logit's correction; zero at the start, so training begins from the volume's
    own matches."""

    def __init__(self, width: int):
        super().__init__(FLOW_INPUTS, 3, width)


def _pointwise_encoder(cin: int, cout: int) -> nn.Sequential:
    """A sequence of 1x1 convolutions (§III "Data Compression")."""
    return nn.Sequential(nn.Conv2d(cin, cin, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                         nn.Conv2d(cin, cout, 1))


class StackFusion(nn.Module):
    """A small conv net from stacked per-agent maps [B, C, H, W] to class logits [B, K, H, W]: OutputStack's
    learned fusion (§IV Baselines) and MASH's StackedFusion (§III)."""

    def __init__(self, in_channels: int, num_classes: int, width: int):
        super().__init__()
        self.net = nn.Sequential(conv_block(in_channels, width), nn.Conv2d(width, num_classes, 1))

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        return self.net(stack)


# ---------------------------------------------------------------------------------------------- base
class ObstructionModel(CollabModel):
    """Shared by MASH and its baselines: batches of the obstruction setting (mash_data.ObstructionLoader), one
    backbone for every agent (encoder + own_head, same weights on every drone), and the loss: cross entropy of
    the fused prediction on the target's unobstructed labels plus `own_loss_weight` x that of every agent's own
    backbone output on its labels (MASH §III "Training": per-agent segmentation masks)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.agents = cfg.supporters + 1
        if cfg.freeze_encoder:          # MASH's pretrained part is the whole backbone: encoder and own head
            self.own_head.requires_grad_(False)

    def train(self, mode: bool = True) -> 'ObstructionModel':
        super().train(mode)
        if self.cfg.freeze_encoder:
            self.own_head.eval()
        return self

    def forward_batch(self, batch: dict, mode: str) -> Output:
        with self.inputs_of(batch):
            return self(batch, mode)

    def backbone(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, A, 3, H, W] -> features [B, A, F, H/4, W/4], own logits [B, A, K, H, W]. (In a batch of
        cached features, feature_cache.EncodedObstructionFrames, `images` are already the features.)"""
        b, a = images.shape[:2]
        features = self.encode(images.flatten(0, 1).contiguous(memory_format=torch.channels_last))
        logits = self.own_head(features)
        return features.view(b, a, *features.shape[1:]), logits.view(b, a, *logits.shape[1:])

    def agent_outputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Every agent's backbone features and own logits for a batch (`backbone`); a batch of cached
        features (feature_cache.EncodedObstructionFrames) brings the frozen own head's class distributions
        along, so the head is not run again."""
        images = self.all_images(batch)
        if self._inputs_encoded and 'own_probs' in batch:
            return images, batch['own_probs'].clamp_min(1e-4).log()
        return self.backbone(images)

    @staticmethod
    def all_images(batch: dict) -> torch.Tensor:
        return torch.cat([batch['target'].unsqueeze(1), batch['supporters']], 1)

    def loss(self, out: Output, batch: dict, ignore_index: int = 255) -> torch.Tensor:
        loss = F.cross_entropy(out.logits, batch['labels'], ignore_index=ignore_index)
        if out.own_logits is not None and self.cfg.own_loss_weight > 0 and not self.cfg.freeze_encoder:
            own = out.own_logits                                              # [B, A, K, H, W]
            labels = torch.cat([batch['labels'].unsqueeze(1), batch['supporter_labels']], 1)
            loss = loss + self.cfg.own_loss_weight * F.cross_entropy(own.flatten(0, 1), labels.flatten(0, 1),
                                                                     ignore_index=ignore_index)
        return loss


# ---------------------------------------------------------------------------------------------- baselines
@register('inpainting')
class Inpainting(ObstructionModel):
    """SegNet on the (obstructed) target image alone, trained on its unobstructed labels (§IV Baselines,
    "Inpainting (Trained on Target View)")."""

    needs_supporters = False

    def forward(self, batch: dict, mode: str = 'train') -> Output:
        return Output(logits=self.own_head(self.encode(batch['target'])))


@register('inpainting_all')
class InpaintingAllViews(Inpainting):
    """Inpainting trained on every agent's view (§IV Baselines, "Inpainting (Trained on All Views)"): each
    training frame gives its S + 1 images, obstructed or not, with their unobstructed labels; at inference it
    segments the target image alone, as Inpainting does."""

    def forward(self, batch: dict, mode: str = 'train') -> Output:
        if mode != 'train':
            return super().forward(batch, mode)
        images = self.all_images(batch).flatten(0, 1).contiguous(memory_format=torch.channels_last)
        return Output(logits=self.own_head(self.encode(images)))

    def loss(self, out: Output, batch: dict, ignore_index: int = 255) -> torch.Tensor:
        if out.logits.shape[0] == batch['labels'].shape[0]:          # an inference output: the target only
            return super().loss(out, batch, ignore_index)
        labels = torch.cat([batch['labels'].unsqueeze(1), batch['supporter_labels']], 1).flatten(0, 1)
        return F.cross_entropy(out.logits, labels, ignore_index=ignore_index)


class StackedImageEncoder(Encoder):
    """The backbone encoder over `images` RGB images concatenated along the channels (InputStack)."""

    def __init__(self, images: int, channels: int, width: int):
        super().__init__(channels, width)
        self.stages[0] = conv_block(3 * images, width)
        self.mean = self.mean.repeat(1, images, 1, 1)
        self.std = self.std.repeat(1, images, 1, 1)


@register('inputstack')
class InputStack(ObstructionModel):
    """The unwarped RGB images of all agents concatenated and segmented by one SegNet (§IV Baselines)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.encoder = StackedImageEncoder(self.agents, cfg.channels, cfg.width)

    def forward(self, batch: dict, mode: str = 'train') -> Output:
        stack = self.all_images(batch).flatten(1, 2).contiguous(memory_format=torch.channels_last)
        return Output(logits=self.own_head(self.encoder(stack)))


@register('outputstack')
class OutputStack(ObstructionModel):
    """A shared SegNet per agent; the output distributions, unwarped, concatenated (target first) and fused
    by a learned conv net (§IV Baselines)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.stack_fusion = StackFusion(self.agents * cfg.num_classes, cfg.num_classes, cfg.width)

    def supporter_distributions(self, probs: torch.Tensor, batch: dict) -> torch.Tensor:
        """probs [B, A, K, H, W] -> the supporters' maps that are stacked with the target's."""
        return probs[:, 1:]

    def forward(self, batch: dict, mode: str = 'train') -> Output:
        _, own_logits = self.agent_outputs(batch)
        probs = own_logits.softmax(2)
        stack = torch.cat([probs[:, :1], self.supporter_distributions(probs, batch)], 1).flatten(1, 2)
        return Output(logits=self.stack_fusion(stack), own_logits=own_logits)


@register('warped_outputstack')
class WarpedOutputStack(OutputStack):
    """OutputStack with each supporter's distribution warped into the target by the ground-truth warping grid
    at label resolution (at inference too): the upper bound (§IV Baselines), sampled as MASH's patches are
    (label_resolution_grid, from the dataset's sub-cell positions `correspondence_uv`). Where a target pixel
    has no match in a supporter, the target's own distribution is used, as MASH does (§III "Output Sampling
    and Fusion")."""

    def supporter_distributions(self, probs: torch.Tensor, batch: dict) -> torch.Tensor:
        if SUBCELL_KEY not in batch:
            raise ValueError(f'{self.method_name or "warped_outputstack"} needs the sub-cell positions '
                             f'`{SUBCELL_KEY}`, which this dataset lacks: generate it again, or use '
                             'warped_outputstack_cells (whole cells)')
        b, a, k, h, w = probs.shape
        s = a - 1
        own = probs[:, :1].expand(b, s, k, h, w).flatten(0, 1)
        warped, valid = sample_label_resolution(probs[:, 1:].flatten(0, 1), batch[SUBCELL_KEY].flatten(0, 1),
                                                CELL_SIZE)
        return torch.where(valid, warped, own).view(b, s, k, h, w)


@register('warped_outputstack_cells')
class WarpedOutputStackCells(OutputStack):
    """WarpedOutputStack with the ground-truth grid at cell resolution: each target cell receives the whole
    matched supporter cell (`correspondence`), as round 1 measured it; block-moved labels agree with the
    target's several points less often than label-resolution ones (docs/DATASETS.md)."""

    def supporter_distributions(self, probs: torch.Tensor, batch: dict) -> torch.Tensor:
        b, a, k, h, w = probs.shape
        s = a - 1
        own = probs[:, :1].expand(b, s, k, h, w).flatten(0, 1)
        index = batch['correspondence'].flatten(0, 1)                         # [B*S, C]
        warped = sample_cells(probs[:, 1:].flatten(0, 1), index, CELL_SIZE)   # [B*S, K, H, W]
        no_match = (index == (h // CELL_SIZE) * (w // CELL_SIZE)).float().view(b * s, 1, h // CELL_SIZE, -1)
        warped = torch.where(upsample_cells(no_match, CELL_SIZE) > 0.5, own, warped)
        return warped.view(b, s, k, h, w)


# ---------------------------------------------------------------------------------------------- MASH
@register('mash')
class Mash(ObstructionModel):
    """MASH (§III) with HardSelection (default), SoftSelection or BayesFusion; see the module docstring.

    `fusion_kind` (one of FUSIONS), `confidence_threshold` (a supporter sends a matched cell from this
    confidence on), `query_dtype` and `patch_dtype` (the wire) are inference settings, not weights: evaluation
    and export may change them on a trained model. `image_size` fixes the cell grid, hence the number of
    channels of the smoothing network (the flattened source grid + 1); ModelConfig has no image size, so it
    defaults to the datasets' 128 x 128 and a checkpoint's grid is restored from its weights."""

    def __init__(self, cfg: ModelConfig, image_size: tuple[int, int] = IMAGE_SIZE):
        super().__init__(cfg)
        if cfg.query_size > cfg.key_size:
            raise ValueError(f'MASH needs query_size <= key_size (asymmetric encoders, §III), got '
                             f'{cfg.query_size} > {cfg.key_size}')
        if cfg.patch_sampling not in PATCH_SAMPLINGS:
            raise ValueError(f'unknown patch_sampling {cfg.patch_sampling!r}; valid: {", ".join(PATCH_SAMPLINGS)}')
        f, q, k = cfg.channels, cfg.query_size, cfg.key_size
        self.query_encoder = _pointwise_encoder(f, q)
        self.key_encoder = _pointwise_encoder(f, k)
        stem = cfg.match_stem
        if stem < 0:
            raise ValueError(f'match_stem is a number of channels, 0 for none; got {stem}')
        # three stride-2 stages: the raw image at the cell grid (CELL_SIZE = 8)
        self.match_stem = (nn.Sequential(_strided_block(3, 16), _strided_block(16, 32), _strided_block(32, stem),
                                         conv_block(stem, stem)) if stem else None)
        self.context = nn.Sequential(conv_block(f + stem, f), conv_block(f, f))
        self.transform = nn.Conv2d(q, k, 1)                  # "K learned convolutional kernels of size 1x1xQ"
        self.log_distance_scale = nn.Parameter(torch.tensor(math.log(DISTANCE_SCALE)))
        self.self_confidence_head = nn.Sequential(conv_block(f, f), nn.AvgPool2d(2), nn.Conv2d(f, 1, 1))
        self.smoothing_width = 2 * f
        if cfg.refine_flow and cfg.patch_sampling != 'pixels':
            raise ValueError("refine_flow refines sub-cell positions: it needs patch_sampling 'pixels'")
        self.flow = FlowRefiner(f) if cfg.refine_flow else None
        if cfg.accuracy_confidence and not cfg.refine_flow:
            raise ValueError('accuracy_confidence trains the FlowRefiner\'s match logit: it needs refine_flow')
        self.set_image_size(image_size)
        self.fusion_kind = 'hard'
        self.confidence_threshold = CONFIDENCE_THRESHOLD
        # inference: the requester's self-confidence times this before it competes with the supporters' match
        # confidences. Training weighs its own cell against the sum over every supporter (the soft fusion),
        # HardSelection against the best one, so the scale is calibrated on the validation split
        # (mash_eval.calibrate_mash_run) and baked into the exported fusion role.
        self.self_confidence_scale = 1.0
        self.query_dtype = QUERY_DTYPE
        self.patch_dtype = PATCH_DTYPE
        self.geometry = 'none'
        self.plane_weight = PLANE_WEIGHT
        self.plane_coefficients = None       # the plane cells' fitted confidence (mash_eval.fit_plane_confidence)
        # inference: the request carries the requester's need map (need_map), so supporters send only the
        # cells in which they beat its own confidence
        self.request_need = False

    def set_image_size(self, image_size: tuple[int, int]) -> None:
        """(Re)build the smoothing autoencoder for images of `image_size` (H, W): new, untrained weights."""
        h, w = image_size
        if h % CELL_SIZE or w % CELL_SIZE:
            raise ValueError(f'MASH needs images divisible by its {CELL_SIZE}-px cells, got {w}x{h}')
        self.image_size = (h, w)
        self.grid = (h // CELL_SIZE, w // CELL_SIZE)
        self.smoothing = CorrespondenceAutoencoder(self.grid[0] * self.grid[1] + 1, self.smoothing_width)
        centres = torch.from_numpy(cell_centres(h, w, CELL_SIZE))
        self.register_buffer('cell_centre_uv', centres.T.reshape(2, 1, *self.grid), persistent=False)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        bins = state_dict.get('smoothing.out.bias')
        if bins is not None and bins.numel() != self.grid[0] * self.grid[1] + 1:
            side = int(round((bins.numel() - 1) ** 0.5))
            if side * side != bins.numel() - 1:
                raise ValueError(f'checkpoint of a non-square cell grid ({bins.numel() - 1} cells): call '
                                 'set_image_size((H, W)) before loading it')
            self.set_image_size((side * CELL_SIZE, side * CELL_SIZE))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # -- the per-agent steps (also the ONNX roles, mash_export.py)
    def cell_features(self, features: torch.Tensor, images: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Backbone features [N, F, H/4, W/4] -> f on the cell grid [N, F, H/8, W/8] (§III backbone (A)),
        with context: two 3x3 conv blocks at the cell resolution widen the receptive field of our small
        backbone's features (about 25 px) towards that of SegNet's intermediate layers. With a matching stem
        (cfg.match_stem), its channels from the raw images [N, 3, H, W] join the features first."""
        cells = F.avg_pool2d(features, 2)
        if self.match_stem is not None:
            if images is None:
                raise ValueError('this MASH model matches on the raw images too (match_stem): pass them')
            cells = torch.cat([cells, self.match_stem(images)], 1)
        return self.context(cells)

    @staticmethod
    def cell_distributions(own_logits: torch.Tensor) -> torch.Tensor:
        """Own logits [N, K, H, W] -> the pre-argmax class distribution per cell [N, Hc*Wc, K] (§III (B))."""
        probs = F.avg_pool2d(own_logits.softmax(1), CELL_SIZE)
        return probs.flatten(2).transpose(1, 2)

    def query_map(self, features: torch.Tensor, images: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Target: features (and images, see cell_features) -> q [N, Q, Hc, Wc], rounded as the wire's dtype
        rounds it (straight-through)."""
        q = self.query_encoder(self.cell_features(features, images))
        return straight_through(q, quantize_dequantize(q, (1, 2, 3), self.query_dtype))

    def self_confidence(self, features: torch.Tensor) -> torch.Tensor:
        """Target: features -> the weight of its own cells in the fusion [N, Hc, Wc], positive (with
        `accuracy_confidence` the expected share of each cell's pixels its own prediction gets right)."""
        head = self.self_confidence_head(features)[:, 0]
        return torch.sigmoid(head) if self.cfg.accuracy_confidence else F.softplus(head)

    def match_volume(self, query: torch.Tensor, features: torch.Tensor,
                     images: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Supporter: the target's q [N, Q, Hc, Wc] and its own features (and images, see cell_features) -> the
        smoothed correspondence logits [N, Hc*Wc + 1, Hc, Wc] (§III (2b)-(3)); a softmax over dim 1 gives the
        matching distribution."""
        p = self.transform(query)
        k = self.key_encoder(self.cell_features(features, images))
        return self.smoothing(self.log_distance_scale.exp() * distance_volume(p, k))

    @staticmethod
    def hard_matches(volume: torch.Tensor, cell_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Supporter: channel-wise max and argmax of the matching distribution (§III (4)) and the sampling (5):
        volume [N, C + 1, Hc, Wc], cell_probs [N, C, K] -> confidence [N, C] float, match [N, C] long (C = no
        match), class_probs [N, C, K] (the supporter's distribution at the match; zeros where there is none)."""
        confidence, match = volume.softmax(1).flatten(2).max(1)
        padded = torch.cat([cell_probs, cell_probs.new_zeros(cell_probs.shape[0], 1, cell_probs.shape[2])], 1)
        class_probs = padded.gather(1, match[:, :, None].expand(-1, -1, cell_probs.shape[2]))
        return confidence, match, class_probs

    def subcell_matches(self, volume: torch.Tensor, flow: Optional[tuple[torch.Tensor, torch.Tensor]] = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Supporter, 'pixels' sampling: per target cell the match (the most probable source cell, unless the
        no-match bin outweighs its window), where the cell lands in its view below the cell grid, and how sure
        it is of that.

        The position is the matching distribution's mean source-cell centre over the 3 x 3 source cells around
        the argmax (a local soft-argmax; the bilinear correspondence targets of `loss` teach the volume to split
        a cell's mass between the cells its true position lies between), and the confidence is the probability
        mass in that window: the counterpart of the paper's channel-wise max (§III (4)) once a match is spread
        over neighbouring cells on purpose. volume [N, C + 1, Hc, Wc] logits -> confidence [N, C], match [N, C]
        (C = no match), positions [N, C, 2] pixels (u, v), NaN for no match; differentiable in the volume.
        With `refine_flow` the positions and confidences are the FlowRefiner's (refined_matches), from `flow`
        (flow_matches of this volume) where the caller has it already."""
        if self.flow is not None:
            return self.refined_matches(*(flow if flow is not None else self.flow_matches(volume)))
        best, mass, positions, no_match, _ = self.window_matches(volume)
        # a match is spread over up to four cells on purpose, so it is weighed as the window's mass against the
        # no-match bin (a plain argmax over all bins would call a cell unmatched whenever p(no match) exceeds
        # the largest single source cell)
        none = mass <= no_match
        match = torch.where(none, torch.full_like(best, self.grid[0] * self.grid[1]), best)
        positions = torch.where(none[..., None], torch.full_like(positions, float('nan')), positions)
        confidence = torch.where(none, no_match, mass)
        return confidence, match, positions

    def window_matches(self, volume: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The volume's local soft-argmax (subcell_matches) before any decision: volume [N, C + 1, Hc, Wc]
        logits -> the most probable source cell [N, C] long, the 3 x 3 window's mass [N, C], its mean position
        [N, C, 2] pixels, the no-match probability [N, C] and the largest single source cell's [N, C]."""
        hc, wc = self.grid
        cells = hc * wc
        probs = volume.softmax(1).flatten(2)                                                   # [N, C + 1, Ct]
        source = probs[:, :cells]
        best = source.argmax(1)                                                                # [N, Ct]
        centres = self.cell_centre_uv.to(probs.dtype).reshape(2, cells)                       # [2, Cs]
        row, col = torch.div(best, wc, rounding_mode='floor'), best % wc
        mass = u = v = 0.0
        for dy in (-1, 0, 1):          # the 3 x 3 source cells around the argmax (a window past the border
            for dx in (-1, 0, 1):      # holds nothing there)
                r, c = row + dy, col + dx
                inside = ((r >= 0) & (r < hc) & (c >= 0) & (c < wc)).to(probs.dtype)
                index = r.clamp(0, hc - 1) * wc + c.clamp(0, wc - 1)
                p = source.gather(1, index[:, None])[:, 0] * inside
                mass = mass + p
                u = u + p * centres[0][index]
                v = v + p * centres[1][index]
        positions = torch.stack([u, v], -1) / mass.clamp_min(1e-12)[..., None]
        return best, mass, positions, probs[:, cells], source.max(1).values

    def best_real_cells(self, volume: torch.Tensor) -> torch.Tensor:
        """What the matcher takes for each target cell's source cell, whether or not it would call it a match:
        volume [B, S, C + 1, Hc, Wc] -> [B, S, C] long, the most probable real bin, or with `refine_flow` the
        cell under the refined position (clamped to the view). The measure of the matcher alone."""
        b, s = volume.shape[:2]
        if self.flow is None:
            return volume.flatten(3)[:, :, :-1].argmax(2)
        return self.cell_under(self.flow_matches(volume.flatten(0, 1))[0]).view(b, s, -1)

    def cell_under(self, positions: torch.Tensor) -> torch.Tensor:
        """Positions [..., 2] (pixels u, v) -> the index of the cell under each, clamped to the grid."""
        hc, wc = self.grid
        col = torch.floor((positions[..., 0] + 0.5) / CELL_SIZE).clamp(0, wc - 1).long()
        row = torch.floor((positions[..., 1] + 0.5) / CELL_SIZE).clamp(0, hc - 1).long()
        return row * wc + col

    def flow_matches(self, volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`refine_flow`: the FlowRefiner's positions [N, C, 2] (pixels, before any decision) and match logits
        [N, C] (> 0: a match). It starts from the window's position and from log(window mass / no-match mass),
        the decision subcell_matches makes without it."""
        hc, wc = self.grid
        h, w = self.image_size
        _, mass, positions, no_match, peak = self.window_matches(volume)
        n = positions.shape[0]
        scale = positions.new_tensor([w, h])
        on_grid = (positions / scale * 2.0 - 1.0).transpose(1, 2).reshape(n, 2, hc, wc)
        stats = torch.stack([mass, no_match, peak], 1).view(n, 3, hc, wc)
        correction = self.flow(torch.cat([on_grid, stats, grid_coords(n, hc, wc, positions)], 1))
        refined = positions + CELL_SIZE * correction[:, :2].flatten(2).transpose(1, 2)
        logit = mass.clamp_min(1e-6).log() - no_match.clamp_min(1e-6).log() + correction[:, 2].flatten(1)
        return refined, logit

    def refined_matches(self, refined: torch.Tensor, logit: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """subcell_matches with `refine_flow`, from flow_matches' positions and logits: a match where the logit
        is positive and the position inside the supporter's view; its source cell is the one under the position
        and its confidence sigmoid(logit) (for no match 1 - that, how sure it is there is none)."""
        hc, wc = self.grid
        h, w = self.image_size
        u, v = refined[..., 0], refined[..., 1]
        inside = (u >= -0.5) & (u <= w - 0.5) & (v >= -0.5) & (v <= h - 0.5)
        none = (logit <= 0) | ~inside
        match = torch.where(none, torch.full_like(u, hc * wc, dtype=torch.long), self.cell_under(refined))
        positions = torch.where(none[..., None], torch.full_like(refined, float('nan')), refined)
        confidence = torch.sigmoid(torch.where(none, -logit, logit))
        return confidence, match, positions

    def plane_settings(self) -> dict:
        """runtime/homography.plane_matches' settings for this model (also roles.json's `plane`): with
        accuracy confidences the voters are the matches expected to be right and a plane cell's confidence is
        `plane_weight` times its expected accuracy (`plane_coefficients`, fitted; without them the supporter's
        own expected accuracy where it lands); otherwise the plane's support."""
        if self.cfg.accuracy_confidence:
            fitted = ({'coefficients': [float(c) for c in self.plane_coefficients]}
                      if self.plane_coefficients is not None else {})
            return {'min_confidence': PLANE_MIN_CONFIDENCE_ACCURACY, 'threshold_px': PLANE_THRESHOLD_PX,
                    'min_support': PLANE_MIN_SUPPORT_ACCURACY, 'weight': float(self.plane_weight), **fitted}
        return {'min_confidence': PLANE_MIN_CONFIDENCE, 'threshold_px': PLANE_THRESHOLD_PX,
                'min_support': PLANE_MIN_SUPPORT}

    def planar_matches(self, confidence: torch.Tensor, match: torch.Tensor, positions: torch.Tensor,
                       landing_confidence: Optional[torch.Tensor] = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Supporter, `geometry = 'homography'`: the ground plane its confident sub-cell matches agree on
        (RANSAC, runtime/homography.plane_matches) gives every target cell a position, the obstructed cells
        included, whose own matches are the weakest; a cell whose plane position falls outside the view has no
        match. A plane cell's confidence: see plane_settings (`landing_confidence` [N, C]: each supporter's own
        expected accuracy per cell of its grid, needed for accuracy_confidence models). Where no plane has the
        support the matcher's own matches stay. Same shapes as subcell_matches' outputs, which it takes; not
        differentiable (inference only)."""
        cells = self.grid[0] * self.grid[1]
        centres = self.cell_centre_uv.reshape(2, cells).T.double().numpy()
        settings = self.plane_settings()
        if 'weight' in settings and landing_confidence is None:
            raise ValueError('planar_matches of an accuracy_confidence model needs the supporters\' own '
                             'confidences (landing_confidence)')
        conf, idx, pos = confidence.clone(), match.clone(), positions.clone()
        for n in range(len(match)):
            landing = None if landing_confidence is None else landing_confidence[n].double().numpy()
            planar = plane_matches(centres, confidence[n].double().numpy(), match[n].numpy(),
                                   positions[n].double().numpy(), cells, self.image_size, CELL_SIZE,
                                   landing_confidence=landing, **settings)
            if planar is not None:
                conf[n], idx[n], pos[n] = (torch.from_numpy(x).to(t.dtype) for x, t in zip(planar, (conf, idx, pos)))
        return conf, idx, pos

    def pixel_patches(self, own_probs: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Supporter, 'pixels' sampling (MASH Eq. 3): its per-pixel class distribution [N, K, H, W] sampled
        into the target at label resolution through the sub-cell positions [N, C, 2] -> per target cell the
        block [N, C, K, cell, cell] and which of its pixels landed in the view [N, C, cell, cell] bool."""
        sampled, valid = sample_label_resolution(own_probs, positions, CELL_SIZE)
        return to_cell_blocks(sampled), to_cell_blocks(valid)[:, :, 0]

    def sendable(self, confidence: torch.Tensor, match: torch.Tensor, threshold: Optional[float] = None,
                 need: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Supporter: which cells [N, C] go into PatchSegments: a real match at or above the threshold and, when
        the request carries the requester's need (`need` [N, C], need_map), more confident than the requester
        is itself there: the only cells HardSelection can take (BayesFusion could use weaker evidence too; the
        need map withholds it to save bytes, and calibration decides whether that pays)."""
        threshold = self.confidence_threshold if threshold is None else threshold
        sent = (match != confidence.shape[1]) & (confidence >= threshold)
        return sent if need is None else sent & (confidence > need)

    @staticmethod
    def need_map(self_confidence: torch.Tensor) -> torch.Tensor:
        """Requester: its self-confidence [B, Hc, Wc] as the request carries it, [B, Hc * Wc] in [0, 1], rounded
        down to uint8 steps (so a supporter never withholds a cell the requester would take; a self-confidence
        of 1 or more asks for nothing there, no match confidence exceeds it)."""
        return torch.floor(self_confidence.flatten(1).clamp(0, 1) * 255) / 255

    def select_patches(self, confidence: torch.Tensor, match: torch.Tensor, class_probs: torch.Tensor,
                       threshold: Optional[float] = None, need: Optional[torch.Tensor] = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Supporter: the cells that go into PatchSegments (`sendable`), rounded as the wire rounds them.
        confidence, match [N, C], class_probs [N, C, K] -> sent [N, C] bool, confidence [N, C] and class_probs
        [N, C, K] as the requester decodes them (zeros for the cells not sent)."""
        sent = self.sendable(confidence, match, threshold, need)
        conf = quantize_dequantize(confidence, (1,), self.patch_dtype, sent) * sent
        probs = quantize_dequantize(class_probs, (1, 2), self.patch_dtype, sent[:, :, None]) * sent[:, :, None]
        return sent, conf, probs

    def select_pixel_patches(self, confidence: torch.Tensor, match: torch.Tensor, labels: torch.Tensor,
                             num_classes: int, threshold: Optional[float] = None,
                             need: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Supporter, 'pixels' sampling: the cells that go into PatchSegments with one class id per pixel (its
        sampled distribution's argmax; a pixel outside its view carries none). confidence, match [N, C], labels
        [N, C, cell, cell] (NO_LABEL: outside the view) -> sent [N, C], confidence [N, C] as the wire rounds it
        and the received blocks [N, C, K, cell, cell]: one-hot where a class arrived, zeros elsewhere."""
        sent = self.sendable(confidence, match, threshold, need)
        conf = quantize_dequantize(confidence, (1,), self.patch_dtype, sent) * sent
        received = torch.where(sent[:, :, None, None], labels, NO_LABEL)
        return sent, conf, labels_to_blocks(received, num_classes).to(confidence.dtype)

    def fuse(self, own_probs: torch.Tensor, self_confidence: torch.Tensor, patch_probs: torch.Tensor,
             patch_confidence: torch.Tensor) -> torch.Tensor:
        """Requester (§III (6)): own_probs [B, K, H, W], self_confidence [B, Hc, Wc], the received cells'
        patch_confidence [B, S, C] (0 where nothing was received) and values: patch_probs [B, S, C, K] (one
        distribution per cell, 'cells' sampling) or [B, S, C, K, cell, cell] (per pixel, 'pixels'; all-zero
        where a pixel carries nothing) -> class scores [B, K, H, W] (here probabilities). HardSelection: per
        pixel the most confident candidate that has a value there, the target's own (weight: its
        self-confidence) included; SoftSelection: the confidence-weighted mean of all; BayesFusion: the
        posterior of the own distribution (the prior) given every received value, each a label that is right
        with its confidence (module docstring, (6))."""
        b, k, h, w = own_probs.shape
        s = patch_probs.shape[1]
        grid = self_confidence.shape[-2:]
        if patch_probs.dim() == 4:
            values = upsample_cells(patch_probs.transpose(2, 3).reshape(b * s, k, *grid), CELL_SIZE)
        else:
            values = from_cell_blocks(patch_probs.flatten(0, 1), grid)
        values = values.view(b, s, k, h, w)
        has_value = values.sum(2) > 0                                               # [B, S, H, W]
        conf = upsample_cells(patch_confidence.view(b, s, *grid), CELL_SIZE) * has_value
        own_w = upsample_cells(self_confidence[:, None], CELL_SIZE)                 # [B, 1, H, W]
        if self.fusion_kind == 'hard':
            best_conf, best = conf.max(1)                                           # [B, H, W]
            chosen = values.gather(1, best[:, None, None].expand(b, 1, k, h, w))[:, 0]
            return torch.where((best_conf > own_w[:, 0])[:, None], chosen, own_probs)
        if self.fusion_kind == 'soft':
            weighted = (conf[:, :, None] * values).sum(1)
            return (own_w * own_probs + weighted) / (own_w + conf.sum(1, keepdim=True))
        if self.fusion_kind == 'bayes':
            right = conf.clamp(BAYES_MIN_CONFIDENCE, 1 - BAYES_MIN_CONFIDENCE)[:, :, None]     # [B, S, 1, H, W]
            likelihood = right * values + (1 - right) * (1 - values) / (k - 1)
            evidence = (likelihood.log() * has_value[:, :, None]).sum(1)       # a pixel without a value: none
            return (own_probs.clamp_min(BAYES_MIN_CONFIDENCE).log() + evidence).softmax(1)
        raise ValueError(f'unknown fusion {self.fusion_kind!r} for {type(self).__name__}; valid: {", ".join(FUSIONS)}')

    def scores_to_logits(self, scores: torch.Tensor) -> torch.Tensor:
        """`fuse`'s output -> log-probabilities (cross entropy and argmax take them as logits)."""
        return scores.clamp_min(1e-8).log()

    # -- the whole swarm, for a batch
    def handshake(self, batch: dict) -> dict:
        """Everything before the supporters' cell selection, for every agent of the batch: own logits
        [B, A, K, H, W], per-cell distributions [B, A, C, K], the target's self-confidence [B, Hc, Wc] and every
        supporter's smoothed correspondence logits [B, S, C + 1, Hc, Wc]."""
        b, a = batch['supporters'].shape[0], batch['supporters'].shape[1] + 1
        # cached features (feature_cache) are at 1/4 resolution; their frames' labels are not
        size = tuple((batch['labels'] if self._inputs_encoded else batch['target']).shape[-2:])
        if size != self.image_size:
            raise ValueError(f'this MASH model was built for {self.image_size[1]}x{self.image_size[0]} images '
                             f'(its cell grid sets the smoothing network\'s channels), got '
                             f'{size[1]}x{size[0]}: construct it with image_size=(H, W)')
        features, own_logits = self.agent_outputs(batch)
        target_images = supporter_images = None
        if self.match_stem is not None:
            # cached frames (feature_cache) keep the raw images beside the features for the stem
            images = batch['images'] if self._inputs_encoded else self.all_images(batch)
            target_images, supporter_images = images[:, 0], images[:, 1:].flatten(0, 1)
        query = self.query_map(features[:, 0], target_images)
        s = a - 1
        volume = self.match_volume(query[:, None].expand(b, s, *query.shape[1:]).flatten(0, 1),
                                   features[:, 1:].flatten(0, 1), supporter_images)
        cell_probs = self.cell_distributions(own_logits.flatten(0, 1))
        state = {'own_logits': own_logits, 'cell_probs': cell_probs.view(b, a, *cell_probs.shape[1:]),
                 'self_confidence': self.self_confidence(features[:, 0]),
                 'volume': volume.view(b, s, *volume.shape[1:])}
        if not self.training and self.cfg.patch_sampling == 'pixels':
            # each supporter's expected accuracy of its own cells: the confidence of the plane's cells (geometry)
            state['supporter_confidence'] = self.self_confidence(features[:, 1:].flatten(0, 1)).view(b, s, -1)
        return state

    def supporter_answers(self, state: dict) -> dict:
        """Every supporter's side of distributed inference from a handshake state, before any threshold: its
        matches (confidence, match [B*S, C]) and what it would send for each cell: 'pixels', the class ids
        `labels` [B*S, C, cell, cell] (NO_LABEL outside its view); 'cells', `class_probs` [B*S, C, K]. Shared
        by every threshold, need and fusion `infer` scores."""
        volume = state['volume'].flatten(0, 1)
        if self.cfg.patch_sampling == 'pixels':
            confidence, match, positions = self.subcell_matches(volume)
            if self.geometry == 'homography':
                landing = state.get('supporter_confidence')
                confidence, match, positions = self.planar_matches(
                    confidence, match, positions, None if landing is None else landing.flatten(0, 1))
            elif self.geometry != 'none':
                raise ValueError(f'unknown geometry {self.geometry!r}; valid: {", ".join(GEOMETRIES)}')
            blocks, valid = self.pixel_patches(state['own_logits'][:, 1:].flatten(0, 1).softmax(1), positions)
            return {'confidence': confidence, 'match': match, 'labels': patch_labels(blocks, valid)}
        confidence, match, class_probs = self.hard_matches(volume, state['cell_probs'][:, 1:].flatten(0, 1))
        return {'confidence': confidence, 'match': match, 'class_probs': class_probs}

    def infer(self, state: dict, threshold: Optional[float] = None, need: Optional[bool] = None,
              answers: Optional[dict] = None) -> dict:
        """Distributed inference from a handshake state, as the swarm runs it: each supporter's argmax matches,
        the cells it sends (threshold; with `need`, only where it is more confident than the requester, whose
        request then carries its need_map; wire rounding), the requester's fusion. `answers`: this state's
        supporter_answers, where the caller scores several settings. -> scores [B, K, H, W] (argmax: the
        prediction), sent, match (C = no match), confidence: [B, S, C]."""
        b, s = state['volume'].shape[:2]
        answers = self.supporter_answers(state) if answers is None else answers
        confidence, match = answers['confidence'], answers['match']
        own_confidence = state['self_confidence'] * self.self_confidence_scale
        floor = None
        if self.request_need if need is None else need:
            floor = self.need_map(own_confidence)[:, None].expand(b, s, -1).flatten(0, 1)
        if self.cfg.patch_sampling == 'pixels':
            sent, conf, probs = self.select_pixel_patches(confidence, match, answers['labels'],
                                                          self.cfg.num_classes, threshold, floor)
        else:
            sent, conf, probs = self.select_patches(confidence, match, answers['class_probs'], threshold, floor)
        scores = self.fuse(state['own_logits'][:, 0].softmax(1), own_confidence,
                           probs.view(b, s, *probs.shape[1:]), conf.view(b, s, -1))
        return {'scores': scores, 'sent': sent.view(b, s, -1), 'match': match.view(b, s, -1),
                'confidence': confidence.view(b, s, -1)}

    def train_scores(self, state: dict, flow: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """Training's soft fusion (module docstring): per target cell a mixture of the target's own distribution,
        weighted by its self-confidence, and of every supporter cell j, weighted by its matching probability (a
        supporter's no-match mass drops out: it leaves the cell to the target) -> probabilities [B, K, H, W].
        `flow`: flow_matches of the state's volume (refine_flow), computed once per step by forward."""
        if self.cfg.patch_sampling == 'pixels':
            return self.train_scores_pixels(state, flow)
        volume = state['volume']
        b, s, _, hc, wc = volume.shape
        matching = volume.softmax(2).flatten(3)                                # [B, S, C + 1, C]
        sampled = torch.einsum('bsjc,bsjk->bkc', matching[:, :, :-1], state['cell_probs'][:, 1:])
        matched_mass = (1.0 - matching[:, :, -1]).sum(1).view(b, 1, hc, wc)
        own_w = state['self_confidence'][:, None]
        own_probs = state['own_logits'][:, 0].softmax(1)
        sampled = upsample_cells(sampled.reshape(b, -1, hc, wc), CELL_SIZE)
        total = upsample_cells(own_w + matched_mass, CELL_SIZE)
        return (upsample_cells(own_w, CELL_SIZE) * own_probs + sampled) / total

    def train_scores_pixels(self, state: dict, flow: Optional[tuple[torch.Tensor, torch.Tensor]] = None
                            ) -> torch.Tensor:
        """train_scores for 'pixels' sampling: every supporter's per-pixel distribution sampled at its sub-cell
        positions (the argmax's 3 x 3 window, differentiable), weighted per cell by its confidence there (the
        window's mass, what HardSelection compares at inference; 0 for no match), mixed with the target's own
        (weight: its self-confidence)."""
        volume = state['volume']
        b, s, _, hc, wc = volume.shape
        flat = volume.flatten(0, 1)
        confidence, match, positions = self.subcell_matches(flat, flow)
        sampled, valid = sample_label_resolution(state['own_logits'][:, 1:].flatten(0, 1).softmax(1), positions,
                                                 CELL_SIZE)
        confidence = torch.where(match == hc * wc, torch.zeros_like(confidence), confidence)
        own_confidence = state['self_confidence']
        if self.cfg.accuracy_confidence:       # estimates, trained by their own loss: the fusion moves positions
            confidence, own_confidence = confidence.detach(), own_confidence.detach()
        mass = upsample_cells(confidence.view(-1, 1, hc, wc), CELL_SIZE) * valid.to(flat.dtype)   # [B*S, 1, H, W]
        h, w = sampled.shape[-2:]
        weighted = (mass * sampled).view(b, s, -1, h, w).sum(1)
        own_w = upsample_cells(own_confidence[:, None], CELL_SIZE)
        own_probs = state['own_logits'][:, 0].softmax(1)
        return (own_w * own_probs + weighted) / (own_w + mass.view(b, s, 1, h, w).sum(1)).clamp_min(1e-6)

    def forward(self, batch: dict, mode: str = 'train') -> Output:
        state = self.handshake(batch)
        extra = {'volume': state['volume'], 'self_confidence': state['self_confidence']}
        if mode == 'train':
            if self.flow is not None:      # the soft fusion and the flow loss read the same refined matches
                extra['flow'] = self.flow_matches(state['volume'].flatten(0, 1))
            scores = self.train_scores(state, extra.get('flow'))
        else:
            result = self.infer(state)
            scores = result.pop('scores')
            extra.update(result)
        return Output(logits=self.scores_to_logits(scores), own_logits=state['own_logits'], extra=extra)

    validation_metrics = ('match_within_one_cell',)

    def validation_counts(self, out: Output, batch: dict) -> dict[str, tuple[int, int]]:
        """Training's validation of the matcher itself (`train --select-by match_within_one_cell`): target cells
        with a ground-truth match whose most probable source cell is within one cell of it, of all such cells.
        The fused accuracy hardly sees the matcher: the target's own cells dominate it."""
        best = self.best_real_cells(out.extra['volume'])
        truth = batch['correspondence']
        real = truth != self.grid[0] * self.grid[1]
        return {'match_within_one_cell': (int(within_one_cell(best, truth, self.grid).sum()), int(real.sum()))}

    def loss(self, out: Output, batch: dict, ignore_index: int = 255) -> torch.Tensor:
        """The segmentation cross entropies (fused, every agent's own) + the correspondence cross entropy of
        every target cell's matching distribution against its ground-truth source cell or no-match (§III)."""
        volume = out.extra['volume']                                           # [B, S, C + 1, Hc, Wc]
        if self.cfg.patch_sampling == 'pixels':
            if SUBCELL_KEY not in batch:
                raise ValueError(f"patch_sampling 'pixels' trains on the sub-cell positions `{SUBCELL_KEY}`, which "
                                 'this dataset lacks: generate it again')
            truth = bilinear_cell_targets(batch[SUBCELL_KEY].flatten(0, 1), self.grid)
            truth = truth.view(-1, volume.shape[2], *volume.shape[-2:])            # [B*S, C + 1, Hc, Wc]
        else:
            truth = batch['correspondence'].view(volume.shape[0], volume.shape[1], *volume.shape[-2:]).flatten(0, 1)
        correspondence = F.cross_entropy(volume.flatten(0, 1), truth)
        loss = super().loss(out, batch, ignore_index) + CORRESPONDENCE_LOSS_WEIGHT * correspondence
        if self.flow is not None:
            flow = out.extra.get('flow')
            refined, logit = flow if flow is not None else self.flow_matches(volume.flatten(0, 1))
            positions = batch[SUBCELL_KEY].flatten(0, 1)                            # [B*S, C, 2], NaN: none
            matched = torch.isfinite(positions).all(-1)
            if self.cfg.accuracy_confidence:
                flow = self.accuracy_confidence_loss(out, batch, refined, logit, matched, ignore_index)
            else:
                flow = F.binary_cross_entropy_with_logits(logit, matched.to(logit.dtype))
            if matched.any():
                flow = flow + F.smooth_l1_loss(refined[matched] / CELL_SIZE, positions[matched] / CELL_SIZE)
            loss = loss + FLOW_LOSS_WEIGHT * flow
        return loss

    def accuracy_confidence_loss(self, out: Output, batch: dict, refined: torch.Tensor, logit: torch.Tensor,
                                 matched: torch.Tensor, ignore_index: int) -> torch.Tensor:
        """`accuracy_confidence`: binary cross entropy of the target's self-confidence against the share of each
        cell's labelled pixels its own prediction gets right, and of every supporter's match confidence against
        the share its patch there (its segmentation sampled at the refined positions, as sent) gets right, 0
        where the cell has no true match (whatever lands there is a guess). Cells without labels drop out."""
        hc, wc = self.grid
        b, s = out.extra['volume'].shape[:2]
        labels = batch['labels']                                                       # [B, H, W]
        own = out.own_logits                                                           # [B, A, K, H, W]
        own_acc, labelled = cell_accuracy(own[:, 0].argmax(1), labels, ignore_index)
        self_conf = out.extra['self_confidence'].flatten(1).clamp(1e-6, 1 - 1e-6)
        loss = F.binary_cross_entropy(self_conf[labelled], own_acc[labelled]) if labelled.any() else 0.0
        with torch.no_grad():
            patch_acc, _ = patch_cell_accuracy(own[:, 1:].flatten(0, 1).softmax(1), refined.detach(),
                                               labels[:, None].expand(b, s, *labels.shape[1:]).flatten(0, 1),
                                               ignore_index)
            patch_acc = patch_acc * matched.to(patch_acc.dtype)
        cells = labelled[:, None].expand(b, s, hc * wc).flatten(0, 1)
        if cells.any():
            loss = loss + F.binary_cross_entropy_with_logits(logit[cells], patch_acc[cells])
        return loss


def patch_cell_accuracy(probs: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor, ignore_index: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Supporters' class distributions [N, K, H, W] sampled at the sub-cell positions [N, C, 2] as sent (class
    ids; a pixel outside the view counts as wrong) against the target's labels [N, H, W] -> cell_accuracy."""
    sampled, valid = sample_label_resolution(probs, positions, CELL_SIZE)
    return cell_accuracy(patch_labels(sampled, valid[:, 0]), labels, ignore_index)


def cell_accuracy(prediction: torch.Tensor, labels: torch.Tensor, ignore_index: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Class ids [N, H, W] against labels [N, H, W] -> per cell [N, Hc*Wc] the share of its labelled pixels
    predicted right (a prediction of ignore_index is wrong) and whether it has any labelled pixel."""
    labelled = labels != ignore_index
    right = ((prediction == labels) & labelled).to(torch.float32)
    count = F.avg_pool2d(labelled.to(torch.float32)[:, None], CELL_SIZE).flatten(1)
    acc = F.avg_pool2d(right[:, None], CELL_SIZE).flatten(1) / count.clamp_min(1e-6)
    return acc, count > 0


@register('mash_stacked')
class MashStacked(Mash):
    """MASH with StackedFusion (§III): the target's own distribution and self-confidence and, per supporter
    slot, its sampled distribution (the target's own where the supporter sent nothing) and its confidence,
    concatenated and fused by a small conv net. Training samples softmax-weighted over the real matches of the
    cells the supporter would send (the same cells as at inference; gradients flow through the matching
    probabilities)."""

    def __init__(self, cfg: ModelConfig, image_size: tuple[int, int] = IMAGE_SIZE):
        if cfg.patch_sampling != 'cells':
            raise ValueError("mash_stacked fuses one distribution per cell: patch_sampling must be 'cells'")
        super().__init__(cfg, image_size)
        self.fusion_kind = 'stacked'
        self.stack_fusion = StackFusion((cfg.supporters + 1) * (cfg.num_classes + 1), cfg.num_classes,
                                        cfg.width)

    def fuse(self, own_probs, self_confidence, patch_probs, patch_confidence) -> torch.Tensor:
        """As Mash.fuse, with StackedFusion: -> class logits [B, K, H, W]."""
        b, k, h, w = own_probs.shape
        s = patch_probs.shape[1]
        hc, wc = h // CELL_SIZE, w // CELL_SIZE
        if s != self.cfg.supporters:
            raise ValueError(f'mash_stacked was built for {self.cfg.supporters} supporters, got {s}')
        received = (patch_confidence > 0).to(own_probs.dtype).view(b * s, 1, hc, wc)
        cells = patch_probs.transpose(2, 3).reshape(b * s, k, hc, wc)
        own = own_probs[:, None].expand(b, s, k, h, w).flatten(0, 1)
        sampled = torch.where(upsample_cells(received, CELL_SIZE) > 0.5, upsample_cells(cells, CELL_SIZE), own)
        conf = upsample_cells(patch_confidence.reshape(b * s, 1, hc, wc), CELL_SIZE)
        stack = torch.cat([sampled, conf], 1).view(b, s * (k + 1), h, w)
        own_conf = upsample_cells(self_confidence[:, None], CELL_SIZE)
        return self.stack_fusion(torch.cat([own_probs, own_conf, stack], 1))

    def scores_to_logits(self, scores: torch.Tensor) -> torch.Tensor:
        return scores

    def train_scores(self, state: dict, flow: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        b, s = state['volume'].shape[:2]
        volume = state['volume'].flatten(0, 1)
        cell_probs = state['cell_probs'][:, 1:].flatten(0, 1)                  # [N, C, K]
        matching = volume.softmax(1).flatten(2)                                # [N, C + 1, C]
        confidence, match = matching.max(1)
        sent = (match != confidence.shape[1]) & (confidence >= self.confidence_threshold)
        real = matching[:, :-1]
        sampled = torch.einsum('njc,njk->nck', real, cell_probs) / real.sum(1).clamp_min(1e-8)[:, :, None]
        patch_probs = (sampled * sent[:, :, None]).view(b, s, *sampled.shape[1:])
        return self.fuse(state['own_logits'][:, 0].softmax(1), state['self_confidence'], patch_probs,
                         (confidence * sent).view(b, s, -1))


# ---------------------------------------------------------------------------------------------- per-drone roles
# The network split as the drones run it (MASH §III, Fig. 2): what mash_export writes as one ONNX file per role
# and what the compute benchmark of mash_eval times.
class RequesterRole(nn.Module):
    def __init__(self, model: Mash):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        m = self.model
        features = m.encoder(image)
        own_logits = m.own_head(features)
        query = m.query_encoder(m.cell_features(features, image))
        return (query.permute(0, 2, 3, 1), own_logits.softmax(1), m.self_confidence(features),
                own_logits.max(1).indices)     # = argmax(1); torch's CPU argmax over channels is 6x slower


class SupporterRole(nn.Module):
    def __init__(self, model: Mash):
        super().__init__()
        self.model = model

    def forward(self, query: torch.Tensor, image: torch.Tensor):
        m = self.model
        features = m.encoder(image)
        own_logits = m.own_head(features)
        volume = m.match_volume(query.permute(0, 3, 1, 2), features, image)
        if m.cfg.patch_sampling == 'pixels':
            confidence, match, positions = m.subcell_matches(volume)
            own_probs = own_logits.softmax(1)
            blocks, valid = m.pixel_patches(own_probs, positions)
            if m.geometry == 'homography':
                # the runtime fits the plane to these matches (runtime/homography.py) and samples own_probs at
                # the plane's positions with the sampler role
                return (confidence, match, patch_labels(blocks, valid), positions,
                        m.self_confidence(features).flatten(1), own_probs)
            return confidence, match, patch_labels(blocks, valid)
        return m.hard_matches(volume, m.cell_distributions(own_logits))


class SamplerRole(nn.Module):
    """Supporter, geometry 'homography': its own class distribution sampled at the plane's positions."""

    def __init__(self, model: Mash):
        super().__init__()
        self.model = model

    def forward(self, own_probs: torch.Tensor, positions: torch.Tensor):
        return patch_labels(*self.model.pixel_patches(own_probs, positions))


class FusionRole(nn.Module):
    def __init__(self, model: Mash):
        super().__init__()
        self.model = model

    def forward(self, own_probs, self_confidence, patch_values, patch_confidence):
        m = self.model
        if m.cfg.patch_sampling == 'pixels':      # class ids per pixel [1, S, C, cell, cell]
            patch_values = labels_to_blocks(patch_values, m.cfg.num_classes)
        own_confidence = self_confidence * m.self_confidence_scale
        return m.fuse(own_probs, own_confidence, patch_values, patch_confidence).max(1).indices


def role_names(model: Mash) -> tuple[str, ...]:
    """The roles a model exports: a supporter that fits the ground plane also samples at its positions."""
    planar = model.geometry == 'homography' and model.cfg.patch_sampling == 'pixels'
    return ('requester', 'supporter', 'fusion') + (('sampler',) if planar else ())


def role_modules(model: Mash) -> dict[str, nn.Module]:
    modules = {'requester': RequesterRole, 'supporter': SupporterRole, 'fusion': FusionRole, 'sampler': SamplerRole}
    return {role: modules[role](model).eval() for role in role_names(model)}
