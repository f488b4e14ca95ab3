import pytest
import torch

from coarse2fine.checkpoint import load_strict, unwrap_state_dict
from coarse2fine.config import UserError, gpt_config
from coarse2fine.models import Transformer, count_params
from coarse2fine.stages import stage_config

# LlamaGen's published table (llamagen-compat.md): params at vocab 16384 and at vocab 512 (CTF stage 1)
TABLE = {"GPT-B": (110.9, 86.5), "GPT-L": (342.9, 310.4), "GPT-XL": (774.7, 734.1)}


@pytest.mark.parametrize("preset", sorted(TABLE))
def test_param_counts_match_llamagen(preset):
    for vocab, expected in zip((16384, 512), TABLE[preset]):
        with torch.device("meta"):
            n = count_params(Transformer(gpt_config(preset, vocab_size=vocab)))
        assert round(n / 1e6, 1) == expected


def test_llamagen_key_names():
    with torch.device("meta"):
        sd = Transformer(gpt_config("GPT-B")).state_dict()
    assert sd["cls_embedding.embedding_table.weight"].shape == (1001, 768)
    assert sd["layers.0.attention.wqkv.weight"].shape == (3 * 768, 768)
    assert sd["layers.11.feed_forward.w1.weight"].shape == (2048, 768)
    assert sd["output.weight"].shape == (16384, 768)
    assert {k.split(".")[0] for k in sd} == {"cls_embedding", "tok_embeddings", "layers", "norm", "output"}


def _random_model(causal=True, vocab=50, **kw):
    torch.manual_seed(0)
    m = Transformer(gpt_config("GPT-tiny", vocab_size=vocab, causal=causal, **kw)).eval()
    with torch.no_grad():
        m.output.weight.normal_(std=0.1)  # the zero-initialised head would make logits trivially equal
    return m


@pytest.mark.parametrize("masked", [False, True])
def test_cached_decode_equals_full_forward(masked):
    m = _random_model()
    B, N = 3, m.cfg.seq_len
    toks = torch.randint(0, 50, (B, N))
    cond = torch.tensor([0, 4, 9])
    with torch.no_grad():
        full = m(toks[:, :-1], cond)  # [B, N, V]
        m.setup_cache(B, masked=masked)
        steps = [m(None, cond, torch.tensor([0]))]
        for i in range(N - 1):
            steps.append(m(toks[:, i:i + 1], None, torch.tensor([i + 1])))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_cache_keeps_bf16_keys_transposed_with_the_same_logits(dtype):
    """On CPU a bf16 key cache is [B, H, hd, L] (a bf16 matmul copied the transposed [B, H, L, hd] prefix
    at every step), an fp32 one [B, H, L, hd] (faster there); prefix decode, chunked prefill and the
    masked cache give the same logits in either layout."""
    from coarse2fine.layers import KVCache

    m = _random_model()
    toks = torch.randint(0, 50, (2, 12))
    cond = torch.tensor([1, 2])

    def run(transposed, masked):
        m.max_batch = -1  # a fresh cache
        m.setup_cache(2, dtype=dtype, masked=masked)
        bf16 = dtype == torch.bfloat16
        for layer in m.layers:
            c = layer.attention.kv_cache
            assert c.keys_transposed == bf16
            assert c.k_cache.shape[2:] == ((m.cfg.head_dim, m.max_positions) if bf16 else (m.max_positions, m.cfg.head_dim))
            layer.attention.kv_cache = KVCache(2, m.cfg.n_head, m.max_positions, m.cfg.head_dim, dtype=dtype,
                                               keys_transposed=transposed)
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            out = [m(None, cond, torch.tensor([0])), m(toks[:, :4], None, torch.arange(1, 5))]
            out += [m(toks[:, i:i + 1], None, torch.tensor([i + 1])) for i in range(4, 12)]
        return torch.cat(out, 1)

    tol = 2e-5 if dtype == torch.float32 else 2e-2  # the two layouts reach different kernels: rounding only
    for masked in (False, True):
        torch.testing.assert_close(run(True, masked), run(False, masked), atol=tol, rtol=tol)


def test_chunked_prefill_equals_full_forward():
    m = _random_model()
    toks = torch.randint(0, 50, (2, 20))
    cond = torch.tensor([1, 2])
    with torch.no_grad():
        full = m(toks, cond)
        m.setup_cache(2)
        a = m(None, cond, torch.tensor([0]))
        b = m(toks[:, :10], None, torch.arange(1, 11))
        c = m(toks[:, 10:], None, torch.arange(11, 21))
    torch.testing.assert_close(torch.cat([a, b, c], 1), full, atol=2e-5, rtol=1e-5)


def test_class_token_rope_quirk_zero_rotation():
    # LlamaGen gives the class position cos = sin = 0: its rotated q and k vanish
    m = _random_model()
    assert torch.count_nonzero(m.rope[0]) == 0 and torch.count_nonzero(m.rope[1:, :, 0]) > 0


def test_bidirectional_sees_future():
    m = _random_model(causal=False)
    x = torch.randint(0, 50, (1, 64))
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % 50
    with torch.no_grad():
        assert not torch.allclose(m(x, torch.tensor([0]))[:, 1], m(y, torch.tensor([0]))[:, 1])
    with pytest.raises(RuntimeError):
        m.setup_cache(1)


def test_stage_configs():
    c = stage_config("GPT-small", "coarse", 4096, 128, 10, 8)
    f = stage_config("GPT-small", "fine", 4096, 128, 10, 8)
    b = stage_config("GPT-small", "baseline", 4096, 128, 10, 8)
    assert (c.vocab_size, c.causal) == (128, True)
    assert (f.vocab_size, f.input_vocab_size, f.causal) == (4096, 128, False)
    assert (b.vocab_size, b.causal) == (4096, True)


def test_llamagen_gpt_b_checkpoint_loads_strictly(tmp_path):
    torch.manual_seed(0)
    src = Transformer(gpt_config("GPT-B"))
    path = tmp_path / "c2i_B_256.pt"
    torch.save({"model": src.state_dict(), "optimizer": None, "steps": 10}, path)
    dst = Transformer(gpt_config("GPT-B"))
    obj = torch.load(path, weights_only=True)
    load_strict(dst, unwrap_state_dict(obj), str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    # a missing and an unexpected key are both named
    sd = dict(src.state_dict())
    sd.pop("norm.weight")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match=r"missing keys \['norm.weight'\].*unexpected keys \['extra.weight'\]"):
        load_strict(dst, sd, "bad.pt")
    del src, dst


def test_wrong_preset_names_shape_mismatch():
    small = Transformer(gpt_config("GPT-tiny", vocab_size=50))
    other = Transformer(gpt_config("GPT-small", vocab_size=50))
    with pytest.raises(UserError, match="shape mismatches"):
        load_strict(other, small.state_dict(), "tiny.pt")


def test_rope_complex_form_equals_the_real_form_values_and_gradients():
    """apply_rope's eager complex product == the real pairwise form kept for torch.compile."""
    from coarse2fine.layers.rope import apply_rope, rope_2d, rope_real

    table = rope_2d(4, 16)  # [17, 8, 2]
    for dtype in (torch.float32, torch.bfloat16):
        base = torch.randn(3, 17, 2, 48)[..., :16].to(dtype)  # a strided view, as a q/k split of wqkv
        x1, x2 = (base.clone().requires_grad_() for _ in range(2))
        out1, out2 = apply_rope(x1, table), rope_real(x2, table)
        assert out1.dtype == dtype and torch.allclose(out1.float(), out2.float(), atol=1e-6)
        g = torch.randn_like(out1)
        out1.backward(g)
        out2.backward(g)
        assert torch.allclose(x1.grad.float(), x2.grad.float(), atol=1e-6)
    idx = torch.tensor([5, 9])  # cached decoding indexes the table
    x = torch.randn(2, 2, 2, 16)
    assert torch.allclose(apply_rope(x, table[idx]), rope_real(x, table[idx]), atol=1e-6)
