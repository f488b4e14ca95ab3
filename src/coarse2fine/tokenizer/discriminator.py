"""PatchGAN discriminator of LlamaGen's tokenizer training (the taming-transformers N-layer design):
a stack of 4x4 convolutions, stride 2 for the first `n_layers`, then stride 1, BatchNorm and
LeakyReLU(0.2), ending in one logit per overlapping patch. And the GAN losses LlamaGen offers."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from coarse2fine.config import DISC_LOSSES, GEN_LOSSES


class PatchDiscriminator(nn.Module):
    """[B, 3, H, W] in [-1, 1] -> patch logits [B, 1, h, w] (h = H / 2**n_layers - 2)."""

    def __init__(self, channels: int = 64, n_layers: int = 3, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(channels * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():  # DCGAN initialisation, as taming and LlamaGen
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)

    @staticmethod
    def patch_grid(image_size: int, n_layers: int) -> int:
        """Side of the patch-logit grid for square images of `image_size` px (0: the stack runs out of
        pixels, a 4x4 kernel would not fit): stride-2 convolutions halve, the stride-1 ones take 1 px."""
        side = image_size
        # the first conv (stride 2), n_layers more (stride 2 but the last), the output conv (stride 1)
        for stride in [2] + [2] * (n_layers - 1) + [1] * min(n_layers, 1) + [1]:
            if side + 2 < 4:
                return 0
            side = (side + 2 - 4) // stride + 1
        return max(side, 0)

    @staticmethod
    def max_layers(image_size: int) -> int:
        n = 0
        while PatchDiscriminator.patch_grid(image_size, n + 1) > 0:
            n += 1
        return n


def disc_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss on real and fake logits (any shape): hinge, or the logistic loss, which
    LlamaGen calls "vanilla" (softplus form) and "non-saturating" (binary cross-entropy form)."""
    real, fake = real.float(), fake.float()
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
    if kind == "vanilla":
        return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
    if kind == "non-saturating":
        return 0.5 * (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                      + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    raise ValueError(f"unknown discriminator loss {kind!r}; choose one of {DISC_LOSSES}")


def gen_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """The generator's adversarial loss on the discriminator's logits for its reconstructions."""
    fake = fake.float()
    if kind == "hinge":
        return -fake.mean()
    if kind == "non-saturating":
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    raise ValueError(f"unknown generator adversarial loss {kind!r}; choose one of {GEN_LOSSES}")


def adaptive_weight(rec_loss: torch.Tensor, adv_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """VQGAN's balance: |grad of the reconstruction loss| / |grad of the adversarial loss| at the
    decoder's last layer, clamped to [0, 1e4] and detached."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()
