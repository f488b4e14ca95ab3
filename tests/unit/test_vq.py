"""VQ tokenizer: LlamaGen architecture (names, sizes), quantizer behaviour, LlamaGen file loading."""
from __future__ import annotations

import pytest
import torch

from coarse2fine.config import UserError, VQConfig, vq_config
from coarse2fine.checkpoint import load_llamagen_vq
from coarse2fine.tokenizer.vq import VectorQuantizer, VQModel, codebook_fingerprint, count_parameters


def expected_params(ch: int, ch_mult: tuple[int, ...], nrb: int, z: int, k: int, d: int) -> int:
    """Parameter count from the architecture facts (llamagen-compat.md), independent of the modules."""
    conv = lambda i, o, s: i * o * s * s + o  # noqa: E731  (weight + bias)
    gn = lambda c: 2 * c  # noqa: E731
    res = lambda i, o: gn(i) + conv(i, o, 3) + gn(o) + conv(o, o, 3) + (conv(i, o, 1) if i != o else 0)  # noqa: E731
    attn = lambda c: gn(c) + 4 * conv(c, c, 1)  # noqa: E731
    outs = [ch * m for m in ch_mult]
    top = outs[-1]
    mid = 2 * res(top, top) + attn(top)
    enc, c = conv(3, ch, 3), ch
    for i, o in enumerate(outs):
        for _ in range(nrb):
            enc, c = enc + res(c, o), o
        enc += nrb * attn(o) if i == len(outs) - 1 else conv(o, o, 3)  # attn on last level, else downsample
    enc += mid + gn(top) + conv(top, z, 3)
    dec, c = conv(z, top, 3) + mid, top
    for i, o in enumerate(reversed(outs)):
        for _ in range(nrb + 1):
            dec, c = dec + res(c, o), o
        dec += (nrb + 1) * attn(o) if i == 0 else 0
        dec += conv(o, o, 3) if i != len(outs) - 1 else 0  # upsample conv
    dec += gn(ch) + conv(ch, 3, 3)
    return enc + dec + k * d + conv(z, d, 1) + conv(d, z, 1)


def meta_model(preset: str, **kw) -> VQModel:
    with torch.device("meta"):  # shapes only: no 72M-parameter init on the CPU
        return VQModel(vq_config(preset, **kw))


def test_vq16_and_vq8_sizes_match_llamagen():
    vq16, vq8 = meta_model("VQ-16"), meta_model("VQ-8")
    # LlamaGen reports 71.88M (VQ-16, ch_mult 1,1,2,2,4) and 70.1M (VQ-8, ch_mult 1,2,2,4)
    assert count_parameters(vq16) == expected_params(128, (1, 1, 2, 2, 4), 2, 256, 16384, 8) == 71_883_403
    assert count_parameters(vq8) == expected_params(128, (1, 2, 2, 4), 2, 256, 16384, 8) == 70_109_835
    assert round(count_parameters(vq16) / 1e6, 2) == 71.88 and round(count_parameters(vq8) / 1e6, 1) == 70.1
    sd = vq16.state_dict()
    assert len(sd) == 344
    shapes = {
        "encoder.conv_in.weight": (128, 3, 3, 3), "encoder.conv_blocks.2.res.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.conv_out.weight": (256, 512, 3, 3), "decoder.conv_in.weight": (512, 256, 3, 3),
        "decoder.conv_out.weight": (3, 128, 3, 3), "quant_conv.weight": (8, 256, 1, 1),
        "post_quant_conv.weight": (256, 8, 1, 1), "quantize.embedding.weight": (16384, 8),
        "quantize.codebook_used": (65536,), "encoder.conv_blocks.4.attn.1.proj_out.weight": (512, 512, 1, 1),
        "decoder.conv_blocks.0.attn.2.q.bias": (512,), "encoder.conv_blocks.3.downsample.conv.weight": (256, 256, 3, 3),
        "decoder.conv_blocks.3.upsample.conv.weight": (128, 128, 3, 3), "encoder.mid.1.k.weight": (512, 512, 1, 1),
        "decoder.conv_blocks.4.res.2.norm2.weight": (128,),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith("encoder.conv_blocks.4.downsample") or k.startswith("decoder.conv_blocks.4.upsample")
                   for k in sd)


def test_small_presets_follow_the_same_formula():
    for name in ("VQ-tiny", "VQ-small"):
        cfg = vq_config(name)
        assert cfg.grid == 8 and cfg.codebook_size == 4096
        if cfg.use_attn:
            assert count_parameters(meta_model(name)) == expected_params(
                cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.z_channels, cfg.codebook_size, cfg.codebook_embed_dim)


def test_use_attn_flag_removes_attention_and_keeps_mid_indices():
    on, off = meta_model("VQ-16"), meta_model("VQ-16", use_attn=False)
    keys_off = set(off.state_dict())
    assert not any(".attn." in k or k.startswith(("encoder.mid.1.", "decoder.mid.1.")) for k in keys_off)
    assert "encoder.mid.2.conv1.weight" in keys_off
    assert count_parameters(on) - count_parameters(off) == 2 * 2 * (2 * 512 + 4 * (512 * 512 + 512)) + \
        3 * (2 * 512 + 4 * (512 * 512 + 512))  # encoder: 2 level + 1 mid, decoder: 3 level + 1 mid


def small_cfg(**kw) -> VQConfig:
    base = dict(codebook_size=64, codebook_embed_dim=4, ch=16, ch_mult=(1, 2), z_channels=16,
                num_res_blocks=1, image_size=16)
    return VQConfig(**{**base, **kw})


def test_straight_through_gradient_reaches_encoder():
    torch.manual_seed(0)
    vq = VQModel(small_cfg()).train()
    recon, aux = vq(torch.rand(2, 3, 16, 16) * 2 - 1)
    recon.pow(2).mean().backward()  # reconstruction loss only: no VQ loss term touches the encoder
    assert vq.encoder.conv_in.weight.grad.abs().sum() > 0
    assert vq.quant_conv.weight.grad.abs().sum() > 0
    # without normalisation the estimator is the identity: dL/dz == dL/dz_q
    q = VectorQuantizer(16, 4, l2_norm=False).train()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    g = torch.randn(2, 4, 3, 3)
    z_q, _, _ = q(z)
    (z_q * g).sum().backward()
    torch.testing.assert_close(z.grad, g)


def test_lookup_uses_normalised_vectors():
    q = VectorQuantizer(2, 2, l2_norm=True)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[10.0, 0.0], [0.1, 0.1]]))  # stored rows need not be unit norm
    z = torch.tensor([[5.0, 0.5]])
    # raw squared L2 would pick row 1 (24.2 < 25.25); after normalisation row 0 is nearest
    assert q.lookup(z).item() == 0
    q_raw = VectorQuantizer(2, 2, l2_norm=False)
    q_raw.embedding.weight.data.copy_(q.embedding.weight.data)
    assert q_raw.lookup(z).item() == 1
    # on random data: nearest normalised codeword == largest cosine similarity
    torch.manual_seed(1)
    q = VectorQuantizer(256, 8)
    q.embedding.weight.data.mul_(torch.rand(256, 1) * 5 + 0.1)
    z = torch.randn(500, 8)
    cos = torch.nn.functional.normalize(z, dim=-1) @ torch.nn.functional.normalize(q.embedding.weight, dim=-1).t()
    assert torch.equal(q.lookup(z), cos.argmax(1))
    z_q, aux, codes = q.eval()(z.t().reshape(1, 8, 20, 25))
    assert torch.equal(codes.flatten(), cos.argmax(1))


def test_vq_and_commit_losses():
    torch.manual_seed(0)
    q = VectorQuantizer(32, 4, beta=0.25).train()
    z = torch.randn(2, 4, 5, 5)
    _, aux, codes = q(z)
    zn = torch.nn.functional.normalize(z.permute(0, 2, 3, 1).reshape(-1, 4), dim=-1)
    e = q.codebook()[codes.flatten()]
    mse = (e - zn).pow(2).mean()
    torch.testing.assert_close(aux["vq_loss"], mse)
    torch.testing.assert_close(aux["commit_loss"], 0.25 * mse)
    assert "entropy_loss" not in aux  # ratio 0 (LlamaGen default) skips the term
    q2 = VectorQuantizer(32, 4, entropy_ratio=0.1).train()
    assert torch.isfinite(q2(z)[1]["entropy_loss"])


def test_dead_code_reseed_revives_codes_deterministically():
    def run():
        torch.manual_seed(0)
        q = VectorQuantizer(128, 4).train()
        # latents concentrated in a small cap of the sphere: only a few random codewords are ever picked
        z = (torch.tensor([3.0, 1.0, 0.0, 0.0])[:, None, None] + 0.3 * torch.randn(8, 4, 8, 8))
        q(z)
        before = len(torch.unique(q(z)[2]))
        dead = q.dead_codes().numel()
        moved = q.reseed_dead_codes(torch.Generator().manual_seed(5))
        q.codebook_used.fill_(-1)
        after = len(torch.unique(q(z)[2]))
        return q, before, dead, moved, after

    q, before, dead, moved, after = run()
    assert moved == dead == 128 - before > 0
    assert after > 3 * before
    assert q.window_usage() == after / 128
    assert torch.equal(q.embedding.weight, run()[0].embedding.weight)  # same generator seed, same codebook


def test_decode_codes_inverts_encode_path_and_accepts_flat_codes():
    torch.manual_seed(0)
    vq = VQModel(small_cfg()).eval()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    codes = vq.encode(x)
    assert codes.shape == (3, 8, 8) and codes.dtype == torch.long
    recon, aux = vq(x)
    assert torch.equal(aux["codes"], codes)
    torch.testing.assert_close(vq.decode_codes(codes), recon, atol=1e-5, rtol=1e-5)
    assert torch.equal(vq.decode_codes(codes.reshape(3, 64)), vq.decode_codes(codes))
    with pytest.raises(ValueError):
        vq.decode_codes(codes.reshape(3, 64)[:, :60])


def test_fingerprint_depends_on_normalised_codebook_only():
    torch.manual_seed(0)
    vq = VQModel(small_cfg())
    fp = codebook_fingerprint(vq)
    assert len(fp) == 16 and int(fp, 16) >= 0
    # same directions (x2 is exact in floating point): same lookups, same fingerprint
    vq.quantize.embedding.weight.data.mul_(2.0)
    assert codebook_fingerprint(vq) == fp
    vq.quantize.embedding.weight.data[0] = -vq.quantize.embedding.weight.data[0]
    assert codebook_fingerprint(vq) != fp
    torch.testing.assert_close(vq.codebook_normalized().norm(dim=1), torch.ones(64))


def test_load_llamagen_vq16_file_reproduces_encode_and_decode(tmp_path):
    torch.manual_seed(0)
    src = VQModel(vq_config("VQ-16")).eval()
    # LlamaGen training-checkpoint layout: weights under "model" beside optimizer/steps/args
    torch.save({"model": src.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "steps": 3,
                "args": {"vq_model": "VQ-16"}}, tmp_path / "vq_ds16_c2i.pt")
    vq = load_llamagen_vq(tmp_path / "vq_ds16_c2i.pt", "VQ-16")
    x = torch.rand(1, 3, 32, 32) * 2 - 1  # small input keeps the 72M-parameter network cheap
    codes = src.encode(x)
    assert codes.shape == (1, 2, 2)
    assert torch.equal(vq.encode(x), codes)
    assert torch.equal(vq.decode_codes(codes), src.decode_codes(codes))


def test_load_llamagen_vq_names_missing_and_unexpected_keys(tmp_path):
    cfg = small_cfg()
    sd = VQModel(cfg).state_dict()
    sd.pop("decoder.conv_out.bias")
    sd["discriminator.head.weight"] = torch.zeros(1)
    torch.save({"ema": sd}, tmp_path / "bad.pt")
    with pytest.raises(UserError) as e:
        load_llamagen_vq(tmp_path / "bad.pt", cfg)
    assert "decoder.conv_out.bias" in str(e.value) and "discriminator.head.weight" in str(e.value)
    good = VQModel(cfg).state_dict()
    good.pop("quantize.codebook_used")  # a statistic, not a weight: files without it still load
    torch.save({"state_dict": good}, tmp_path / "no_usage.pt")
    vq = load_llamagen_vq(tmp_path / "no_usage.pt", cfg)
    assert torch.equal(vq.quantize.embedding.weight, good["quantize.embedding.weight"])
    with pytest.raises(UserError, match="not found"):
        load_llamagen_vq(tmp_path / "missing.pt", cfg)


def test_lookup_in_blocks_equals_one_distance_matrix():
    """lookup's blocks of LOOKUP_ROWS latents give exactly the ids of the [N, K] distances at once."""
    from coarse2fine.tokenizer import vq as vq_mod

    torch.manual_seed(2)
    q = VectorQuantizer(1024, 8, l2_norm=False)
    z = torch.randn(3 * vq_mod.LOOKUP_ROWS + 17, 8)
    e = q.codebook()
    d = z.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1)[None, :] - 2.0 * z @ e.t()
    assert torch.equal(q.lookup(z), d.argmin(dim=1))
    assert q.lookup(z[:0]).shape == (0,)


def test_vq_config_checks_its_codebook_size():
    """The range lives in the config, so a Python caller is checked as the CLI is (it names its flag)."""
    from coarse2fine.config import ConfigError, VQConfig, vq_config

    for k in (1, 16385):
        with pytest.raises(ConfigError, match=f"codebook size {k}: choose 2 to 16384"):
            VQConfig(codebook_size=k)
    with pytest.raises(ConfigError, match="codebook size 20000"):
        vq_config("VQ-tiny", codebook_size=20000)
    assert VQConfig(codebook_size=2).codebook_size == 2 and vq_config("VQ-16").codebook_size == 16384
