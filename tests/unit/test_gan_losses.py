"""GAN losses, the adaptive weight and the PatchGAN's shape (tokenizer/discriminator.py)."""
import pytest
import torch

from coarse2fine.tokenizer.discriminator import PatchDiscriminator, adaptive_weight, disc_loss, gen_loss


def test_hinge_is_zero_beyond_the_margins_and_one_at_zero():
    assert disc_loss("hinge", torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0.0
    assert disc_loss("hinge", torch.zeros(4), torch.zeros(4)).item() == 1.0
    assert gen_loss("hinge", torch.tensor([1.0, 3.0])).item() == -2.0


def test_vanilla_and_non_saturating_are_the_logistic_loss():
    real, fake = torch.randn(8), torch.randn(8)
    v, ns = disc_loss("vanilla", real, fake), disc_loss("non-saturating", real, fake)
    assert torch.allclose(v, ns, atol=1e-6)
    assert disc_loss("vanilla", torch.zeros(1), torch.zeros(1)).item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert gen_loss("non-saturating", torch.zeros(3)).item() == pytest.approx(0.6931, abs=1e-4)


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="hinge"):
        disc_loss("wasserstein", torch.zeros(1), torch.zeros(1))


def test_adaptive_weight_is_the_gradient_norm_ratio():
    w = torch.randn(5, requires_grad=True)
    a = torch.randn(5)
    rec, adv = (w * a).sum(), (4 * w * a).sum()
    assert adaptive_weight(rec, adv, w).item() == pytest.approx(a.norm().item() / (4 * a.norm().item() + 1e-4), rel=1e-5)


def test_patch_discriminator_gives_a_logit_per_patch():
    d = PatchDiscriminator(channels=8, n_layers=3)
    assert d(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules()) == 3
