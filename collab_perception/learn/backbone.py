"""A small SegNet-like encoder-decoder, written here (no torchvision for torch 2.13 on these machines).

Sized to train on 2 CPU cores in minutes at 128x128: the encoder maps an RGB image to a feature map at
1/4 resolution (`channels` x H/4 x W/4), the value a supporter sends in the handshake (Who2com Eq. 4,
f_i = E(x_i)); decoders upsample a feature stack back to per-pixel class logits. Convolutions are
3x3 + BatchNorm + ReLU; channels_last memory format helps on CPU.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# Input normalisation: images arrive as uint8 RGB; the models take float32 in [0, 1] and centre them here
# so that the exported encoder's input is simply image / 255.
_MEAN = (0.45, 0.45, 0.45)
_STD = (0.25, 0.25, 0.25)


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Encoder(nn.Module):
    """image [B, 3, H, W] in [0, 1] -> features [B, channels, H/4, W/4]."""

    def __init__(self, channels: int = 32, width: int = 16):
        super().__init__()
        self.channels = channels
        self.register_buffer('mean', torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.stages = nn.Sequential(
            conv_block(3, width), conv_block(width, width), nn.MaxPool2d(2),
            conv_block(width, 2 * width), nn.MaxPool2d(2),
            conv_block(2 * width, 3 * width), conv_block(3 * width, channels))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.stages((image - self.mean) / self.std)


class Decoder(nn.Module):
    """feature stack [B, in_channels, h, w] -> class logits [B, num_classes, 4h, 4w]."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16):
        super().__init__()
        self.head = nn.Sequential(conv_block(in_channels, 3 * width), conv_block(3 * width, 2 * width))
        self.up1 = conv_block(2 * width, width)
        self.up2 = conv_block(width, width)
        self.classify = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.head(features)
        x = self.up1(F.interpolate(x, scale_factor=2.0, mode='bilinear', align_corners=False))
        x = self.up2(F.interpolate(x, scale_factor=2.0, mode='bilinear', align_corners=False))
        return self.classify(x)
