import pytest
import torch

from coarse2fine.config import UserError, gpt_config
from coarse2fine.stages import fine_ce
from coarse2fine.tokenizer.clustering import restrict_to_cluster
from coarse2fine.models import Transformer
from coarse2fine.sampling import (StageSampling, cfg_combine, filter_logits, generate_ar, generate_fine,
                                  generate_naive, sample_logits)


def _model(causal=True, vocab=40, **kw):
    torch.manual_seed(0)
    m = Transformer(gpt_config("GPT-tiny", vocab_size=vocab, causal=causal, grid=4, **kw)).eval()
    with torch.no_grad():
        m.output.weight.normal_(std=0.5)
    return m


def test_top_k_keeps_exactly_k():
    logits = torch.randn(4, 100)
    out = filter_logits(logits, top_k=7)
    assert (out > float("-inf")).sum(-1).tolist() == [7] * 4
    kept = out > float("-inf")
    assert torch.equal(kept, logits >= torch.topk(logits, 7).values[:, -1:])


def test_top_p_keeps_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert (filter_logits(logits, top_p=0.7) > float("-inf")).tolist() == [[True, True, False, False]]
    assert (filter_logits(logits, top_p=0.85) > float("-inf")).tolist() == [[True, True, True, False]]
    assert (filter_logits(logits, top_p=0.01) > float("-inf")).sum() == 1  # never empty


def test_cfg_arithmetic():
    cond, uncond = torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, 2.0]])
    out = cfg_combine(torch.cat([cond, uncond]), 2.0)
    assert torch.equal(out, uncond + 2.0 * (cond - uncond))  # [[0, 4]]
    assert torch.equal(cfg_combine(torch.cat([cond, uncond]), 1.0), cond)


def test_sampling_frequencies_follow_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([0.1, 0.2, 0.7])).expand(20000, 3)
    ids = sample_logits(logits, 1.0, 0, 1.0, g)
    freq = torch.bincount(ids, minlength=3).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.7]), atol=0.015)


def test_guidance_before_the_head_equals_guided_logits():
    """Transformer.forward(guidance=s) guides the normed hidden states and runs the head on the B guided
    rows; the logits equal CFG applied to the 2B rows' logits up to float rounding, and 1.0 gives the
    cond rows' logits exactly."""
    m = _model()
    cond = torch.tensor([0, 3, 7, 10, 10, 10])  # 3 images: [cond; null]
    toks = torch.randint(0, 40, (6, 5))
    with torch.no_grad():
        both = m(toks, cond)  # [6, 6, V]
        guided = m(toks, cond, guidance=3.0)
        plain = m(toks, cond, guidance=1.0)
    assert guided.shape == (3, 6, 40)
    torch.testing.assert_close(guided, cfg_combine(both, 3.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain, both[:3], rtol=0, atol=1e-6)


def test_ar_loop_head_rows_by_guidance_order():
    """By default every step's head product has 2B rows under CFG (LlamaGen's order: guide the logits);
    with cfg_before_head it has B rows (half the head's FLOPs at K = 16384), also after the CFG interval;
    without CFG it has B rows either way."""
    m = _model()
    seen = []
    hook = m.output.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    try:
        cond = torch.tensor([1, 2, 5])
        g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        generate_ar(m, cond, StageSampling(cfg_scale=4.0, cfg_interval=6), g())
        default, seen[:] = list(seen), []
        generate_ar(m, cond, StageSampling(cfg_scale=4.0, cfg_interval=6), g(), cfg_before_head=True)
        generate_ar(m, cond, StageSampling(cfg_scale=1.0), g(), cfg_before_head=True)
    finally:
        hook.remove()
    assert default == [6] * 16
    assert seen == [3] * (2 * 16)


def test_default_guidance_is_llamagens_order_bit_for_bit():
    """The default sampler guides the 2B rows' logits exactly as LlamaGen does (uncond + (cond - uncond) *
    scale on the head's output), so greedy samples reproduce LlamaGen's bit for bit; guiding the hidden
    states gives the same logits only up to rounding, which flipped 0.15% of greedy tokens of a random
    K = 16384 GPT-small (benchmarks/speed/llamagen_side_by_side.py)."""
    import coarse2fine.sampling as sampling

    m = _model(vocab=4096)
    cond = torch.tensor([0, 3, 7, 9])
    seen = []
    real = sampling.sample_logits
    try:
        sampling.sample_logits = lambda logits, *a, **k: seen.append(logits.clone()) or real(logits, *a, **k)
        generate_ar(m, cond, StageSampling(top_k=1, cfg_scale=3.0), num_tokens=1)
        generate_ar(m, cond, StageSampling(top_k=1, cfg_scale=3.0), num_tokens=1, cfg_before_head=True)
    finally:
        sampling.sample_logits = real
    with torch.no_grad():
        both = m(None, torch.cat([cond, torch.full_like(cond, m.cfg.num_classes)]))[:, -1]  # [2B, V]
    c, u = both.chunk(2)
    assert torch.equal(seen[0], u + (c - u) * 3.0)
    assert not torch.equal(seen[1], seen[0])  # the other order rounds differently
    torch.testing.assert_close(seen[1], seen[0], rtol=1e-4, atol=1e-4)


def test_seed_reproduces_and_cache_matches_naive():
    m = _model()
    cond = torch.tensor([0, 3, 7])
    opts = StageSampling(temperature=1.1, top_k=20, top_p=0.95, cfg_scale=2.0)
    a = generate_ar(m, cond, opts, torch.Generator().manual_seed(5))
    b = generate_ar(m, cond, opts, torch.Generator().manual_seed(5))
    c = generate_ar(m, cond, opts, torch.Generator().manual_seed(6))
    naive = generate_naive(m, cond, opts, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, naive)
    assert a.shape == (3, 16)


def test_cfg_interval_stops_guidance():
    """Guidance on the first n tokens only: the first n tokens are the fully guided ones, the rest are not
    (an ignored interval fails the second assert), and n = 0 is no guidance at all."""
    m = _model()
    cond = torch.tensor([1, 2])
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    full = generate_ar(m, cond, StageSampling(cfg_scale=8.0), g())
    first4 = generate_ar(m, cond, StageSampling(cfg_scale=8.0, cfg_interval=4), g())
    none = generate_ar(m, cond, StageSampling(cfg_scale=1.0), g())
    assert torch.equal(full[:, :4], first4[:, :4])
    assert not torch.equal(full, first4), "the interval changed nothing: guidance ran past token 4"
    assert torch.equal(generate_ar(m, cond, StageSampling(cfg_scale=8.0, cfg_interval=0), g()), none)
    assert not torch.equal(full, none)


def test_restricted_fine_only_picks_cluster_members():
    vocab, c = 40, 8
    m = _model(causal=False, vocab=vocab, input_vocab_size=c)
    phi = torch.arange(vocab) % c
    members = torch.stack([torch.nonzero(phi == j).squeeze(1) for j in range(c)])  # [C, 5]
    coarse = torch.randint(0, c, (3, 16))
    codes = generate_fine(m, coarse, torch.tensor([0, 1, 2]), StageSampling(temperature=1.5),
                          torch.Generator().manual_seed(0), members=members)
    assert torch.equal(phi[codes], coarse)
    # restricted loss: target's rank inside its cluster; logits favouring the target give low loss
    logits = torch.full((3, 16, vocab), -10.0).scatter(-1, codes.unsqueeze(-1), 10.0)
    loss, acc = fine_ce(logits, codes, coarse, members)
    assert loss < 1e-3 and acc == 1.0
    sub = restrict_to_cluster(logits, coarse, members)
    assert sub.shape == (3, 16, 5)


def _full_logits_fine(m, coarse, cond, opts, generator, members=None):
    """Stage 2 as it was sampled before the restricted head: the whole [B, N, K] logits, guidance,
    then (restricted) a gather of each position's cluster members; the reference for the seed tests."""
    use_cfg = opts.use_cfg
    x_cond = torch.cat([cond, torch.full_like(cond, m.cfg.num_classes)]) if use_cfg else cond
    logits = m(coarse.repeat(2, 1) if use_cfg else coarse, x_cond)[:, 1:].float()  # [B', N, K]
    if use_cfg:
        logits = cfg_combine(logits, opts.cfg_scale)
    if members is None:
        return sample_logits(logits, opts.temperature, opts.top_k, opts.top_p, generator)
    sub = restrict_to_cluster(logits, coarse, members)  # [B, N, M]
    pick = sample_logits(sub, opts.temperature, min(opts.top_k, sub.size(-1)), opts.top_p, generator)
    return members[coarse].gather(-1, pick.unsqueeze(-1)).squeeze(-1)


def _uneven_members(vocab, c, seed=0):
    from coarse2fine.tokenizer.clustering import member_table

    g = torch.Generator().manual_seed(seed)
    phi = torch.randint(0, c, (vocab,), generator=g)
    phi[:c] = torch.arange(c)  # every cluster has a member; sizes differ (padding in the table)
    return phi, member_table(phi, c)[0]


@pytest.mark.parametrize("opts", [StageSampling(temperature=1.1),
                                  StageSampling(temperature=0.9, top_k=3, top_p=0.9),
                                  StageSampling(temperature=1.1, cfg_scale=2.0),
                                  StageSampling(temperature=1.0, top_p=0.8, cfg_scale=1.5)],
                         ids=["plain", "topk-topp", "cfg", "cfg-topp"])
def test_restricted_stage2_draws_what_the_full_logits_drew(opts):
    """Same seed, same codes (fp32): the restricted head, chunked or not, against sampling the gathered
    full logits; the full head, chunked, against the whole [B, N, K] logits."""
    vocab, c = 64, 8
    m = _model(causal=False, vocab=vocab, input_vocab_size=c)
    phi, members = _uneven_members(vocab, c)
    coarse = torch.randint(0, c, (5, 16), generator=torch.Generator().manual_seed(1))
    cond = torch.tensor([0, 1, 2, 3, 9])
    ref = _full_logits_fine(m, coarse, cond, opts, torch.Generator().manual_seed(7), members)
    for rows in (17, 40, 4096):  # one image per chunk, two, the whole batch
        got = generate_fine(m, coarse, cond, opts, torch.Generator().manual_seed(7), members, chunk_rows=rows)
        assert torch.equal(got, ref), rows
    assert torch.equal(phi[ref], coarse)
    low = generate_fine(m, coarse, cond, opts, torch.Generator().manual_seed(7), members, torch.bfloat16, 40)
    assert torch.equal(phi[low], coarse)  # bf16 rounds the logits differently; the clusters hold
    full_ref = _full_logits_fine(m, coarse, cond, opts, torch.Generator().manual_seed(7))
    for rows in (17, 4096):
        assert torch.equal(generate_fine(m, coarse, cond, opts, torch.Generator().manual_seed(7), chunk_rows=rows),
                           full_ref)


def test_restricted_stage2_never_forms_the_full_logits():
    """The restricted head multiplies each position by its cluster's rows only: the K-way output layer
    is never called, and the head's matmuls add up to P * M_c rows, not P * K."""
    from torch.utils.flop_counter import FlopCounterMode

    vocab, c = 64, 8
    m = _model(causal=False, vocab=vocab, input_vocab_size=c)
    phi, members = _uneven_members(vocab, c)
    coarse = torch.randint(0, c, (3, 16), generator=torch.Generator().manual_seed(2))
    cond = torch.tensor([0, 1, 2])

    def refuse(*_):
        raise AssertionError("stage 2 formed the full K-way logits")

    hook = m.output.register_forward_pre_hook(refuse)
    try:
        with FlopCounterMode(display=False) as fc:
            generate_fine(m, coarse, cond, StageSampling(), torch.Generator().manual_seed(0), members)
    finally:
        hook.remove()
    sizes = torch.bincount(phi, minlength=c)
    head = 2 * m.cfg.dim * int(sizes[coarse].sum())  # each position times its cluster's member rows
    body = sum(v for k, v in fc.get_flop_counts()["Global"].items()) - head
    with FlopCounterMode(display=False) as fc_full:
        m(coarse, cond)
    full_head = 2 * m.cfg.dim * vocab * (16 + 1) * 3
    assert body == fc_full.get_total_flops() - full_head


def test_stage2_bad_chunk_is_clear():
    m = _model(causal=False, vocab=40, input_vocab_size=8)
    with pytest.raises(UserError, match="chunk rows must be >= 1"):
        generate_fine(m, torch.zeros(1, 16, dtype=torch.long), torch.tensor([0]), StageSampling(), chunk_rows=0)


def test_bad_sampling_inputs_are_clear():
    m = _model()
    with pytest.raises(UserError, match="class labels must be in 0..9"):
        generate_ar(m, torch.tensor([10]), StageSampling())
    with pytest.raises(UserError, match="temperature must be > 0"):
        generate_ar(m, torch.tensor([1]), StageSampling(temperature=0))
    with pytest.raises(UserError, match="top-k must be in 0..40"):
        generate_ar(m, torch.tensor([1]), StageSampling(top_k=41))
    with pytest.raises(UserError, match="cfg scale must be >= 0"):
        generate_ar(m, torch.tensor([1]), StageSampling(cfg_scale=-1))


# ---- stage-2 decodings without a network (MASC's random member, the centroid member) ------------------

def _toy_map(k=60, c=7, d=4, seed=0):
    from coarse2fine.tokenizer.clustering import CoarseMap

    g = torch.Generator().manual_seed(seed)
    codewords = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=-1)
    phi = torch.randint(0, c, (k,), generator=g)
    phi[:c] = torch.arange(c)  # no empty cluster
    return CoarseMap.from_assignment(phi.numpy(), codewords.numpy(), c, "fp", "kmeans", 0), codewords


def test_random_member_draws_members_of_the_cluster_uniformly():
    from coarse2fine.sampling import random_member

    cmap, _ = _toy_map()
    coarse = torch.randint(0, cmap.num_coarse, (64, 16), generator=torch.Generator().manual_seed(1))
    codes = random_member(coarse, cmap.members, cmap.sizes, torch.Generator().manual_seed(2))
    assert torch.equal(cmap.phi[codes], coarse)  # every code is a member of its position's cluster
    again = random_member(coarse, cmap.members, cmap.sizes, torch.Generator().manual_seed(2))
    assert torch.equal(codes, again)
    # uniform over the members of one cluster: every member drawn, frequencies near 1/size
    big = int(cmap.sizes.argmax())
    many = random_member(torch.full((200, 100), big), cmap.members, cmap.sizes, torch.Generator().manual_seed(3))
    counts = torch.bincount(many.flatten(), minlength=cmap.num_codes)[cmap.members[big, :cmap.sizes[big]]]
    expect = many.numel() / int(cmap.sizes[big])
    assert (counts > 0).all() and ((counts - expect).abs() < 0.15 * expect).all()


def test_centroid_member_is_the_nearest_member():
    from coarse2fine.sampling import centroid_members

    cmap, codewords = _toy_map()
    best = centroid_members(cmap.members, cmap.centroids, codewords)
    assert torch.equal(cmap.phi[best], torch.arange(cmap.num_coarse))
    for c in range(cmap.num_coarse):
        mem = cmap.members[c, :cmap.sizes[c]]
        dist = (codewords[mem] - cmap.centroids[c]).norm(dim=-1)
        assert int(best[c]) == int(mem[dist.argmin()])


def test_unknown_decoding_is_a_one_line_error():
    from coarse2fine.sampling import check_fine_decoding

    with pytest.raises(UserError, match="random-member"):
        check_fine_decoding("nearest")


def test_compiled_cpu_loop_reads_the_growing_prefix_and_draws_the_eager_codes():
    """torch.compile on a CPU reads the filled prefix of the cache (a symbolic length), not the whole cache
    under a mask: at 16x16 codes the masked read made the compiled loop 1.64x slower than eager. The codes
    for a seed are the eager ones."""
    m = _model()
    cond = torch.tensor([0, 3, 7])
    opts = StageSampling(temperature=1.1, top_k=20, cfg_scale=2.0)
    eager = generate_ar(m, cond, opts, torch.Generator().manual_seed(5))
    compiled = generate_ar(m, cond, opts, torch.Generator().manual_seed(5), compile_mode="default")
    assert not m.masked_cache
    assert torch.equal(eager, compiled)


def test_compiling_on_a_cpu_without_a_cpp_compiler_is_one_line(monkeypatch):
    """Inductor builds C++ kernels on a CPU; without g++ it failed with a long traceback after tracing."""
    import torch._inductor.cpp_builder as cpp_builder

    def no_compiler():
        raise RuntimeError("Failed to find a working C++ compiler. Tried: g++")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.raises(UserError, match="needs a C\\+\\+ compiler .* sample without --compile"):
        generate_ar(_model(), torch.tensor([0]), StageSampling(), compile_mode="default")
