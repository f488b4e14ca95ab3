import json

import time

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from coarse2fine.bench import speed as bench
from coarse2fine.bench.runs import SampleBench, TrainBench, build_models, run_sample_bench, run_train_bench
from coarse2fine.cli import main
from coarse2fine.config import gpt_config
from coarse2fine.models import Transformer
from coarse2fine.sampling import filter_logits, sample_logits


def _tiny(vocab=50, causal=True):
    torch.manual_seed(0)
    return Transformer(gpt_config("GPT-tiny", vocab_size=vocab, grid=4, causal=causal)).eval()


def test_decode_flop_count_matches_torch_flop_counter():
    m = _tiny()
    x, c = torch.randint(0, 50, (3, 16)), torch.tensor([0, 1, 2])
    m.setup_cache(3)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(None, c, torch.tensor([0]), last_only=True)
        for i in range(1, 16):
            m(x[:, i - 1:i], None, torch.tensor([i]), last_only=True)
    assert fc.get_total_flops() == bench.decode_flops(m.cfg, rows=3, num_tokens=16)


def test_decode_flop_count_of_the_cfg_sampler_matches_torch_flop_counter():
    """The sampler under CFG: the body runs 2B rows, the head 2B rows by default and the B guided rows
    with cfg_before_head (head_rows)."""
    from coarse2fine.sampling import StageSampling, generate_ar
    m = _tiny()
    with FlopCounterMode(display=False) as fc:
        generate_ar(m, torch.tensor([0, 1, 2]), StageSampling(cfg_scale=2.0), torch.Generator().manual_seed(0))
    assert fc.get_total_flops() == bench.decode_flops(m.cfg, rows=6, num_tokens=16)
    with FlopCounterMode(display=False) as fc:
        generate_ar(m, torch.tensor([0, 1, 2]), StageSampling(cfg_scale=2.0), torch.Generator().manual_seed(0),
                    cfg_before_head=True)
    assert fc.get_total_flops() == bench.decode_flops(m.cfg, rows=6, num_tokens=16, head_rows=3)
    assert bench.decode_flops(m.cfg, rows=6, num_tokens=16, head_rows=6) == bench.decode_flops(m.cfg, 6, 16)


@pytest.mark.parametrize("causal", [True, False])
def test_full_forward_flop_count_matches_torch_flop_counter(causal):
    m = _tiny(causal=causal)
    x, c = torch.randint(0, 50, (2, 16)), torch.tensor([0, 1])
    # the math backend decomposes attention into counted matmuls (full square, as we count it)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        m(x, c)
    assert fc.get_total_flops() == bench.full_forward_flops(m.cfg, rows=2, length=17)
    assert bench.train_flops(m.cfg, 2, 17) == 3 * fc.get_total_flops()


def test_restricted_head_training_flops_count_only_member_logits():
    """Stage 2's restricted head multiplies each image position by its cluster's member rows only: the
    analytic count (head at the N image positions, mean member count wide) equals torch's FLOP counter."""
    from coarse2fine.stages import restricted_head_ce

    torch.manual_seed(0)
    K, C, N = 60, 6, 16
    m = Transformer(gpt_config("GPT-tiny", vocab_size=K, input_vocab_size=C, grid=4, causal=False))
    phi = torch.randint(0, C, (K,))  # an uneven clustering: sizes differ
    phi[:C] = torch.arange(C)  # every cluster non-empty
    sizes = torch.bincount(phi, minlength=C)
    members = torch.full((C, int(sizes.max())), -1)
    for c in range(C):
        members[c, :sizes[c]] = (phi == c).nonzero().flatten()
    codes = torch.randint(0, K, (2, N))
    coarse = phi[codes]
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        loss, _ = m(coarse, torch.tensor([0, 1]), head=restricted_head_ce(coarse, codes, members))
        loss.backward()
    width = sizes[coarse].float().mean().item()  # members per image position, over this batch
    assert fc.get_total_flops() == bench.train_flops(m.cfg, 2, N + 1, head_positions=N, head_width=width)
    assert fc.get_total_flops() < bench.train_flops(m.cfg, 2, N + 1)  # the full K-way head costs more


def test_naive_costs_more_than_cache_and_bytes_count_weights():
    m = _tiny()
    assert bench.naive_flops(m.cfg, 4, 16) > 5 * bench.decode_flops(m.cfg, 4, 16)
    n_emb = m.tok_embeddings.weight.numel() + m.cls_embedding.embedding_table.weight.numel()
    n_params = sum(p.numel() for p in m.parameters())
    assert bench.weight_bytes(m) == 4 * (n_params - n_emb)
    assert bench.weight_bytes(m, torch.bfloat16) == 2 * (n_params - n_emb)
    kv_one_step = 2 * m.cfg.n_layer * m.cfg.dim * 4 * 4  # K and V, fp32, 4 rows, one position
    assert bench.decode_bytes(m.cfg, m, 4, 1, torch.float32) == bench.weight_bytes(m) + 2 * kv_one_step


class FakeClock:
    """time.perf_counter / process_time stand-in that only moves when a timed function moves it."""

    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t

    def spend(self, s):
        self.t += s


def test_alternate_interleaves_and_times_every_round(monkeypatch):
    clock, calls = FakeClock(), []
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    monkeypatch.setattr(bench.time, "process_time", clock)
    fns = {"a": lambda: (calls.append("a"), clock.spend(0.25)), "b": lambda: (calls.append("b"), clock.spend(1.5))}
    t = bench.alternate(fns, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    # each round's wall and CPU time is exactly the interval its function spent; warm-up rounds are not kept
    assert t.wall == {"a": [0.25] * 3, "b": [1.5] * 3} and t.cpu == t.wall


def test_matmul_rate_is_the_flops_of_one_matmul_over_its_best_time(monkeypatch):
    times = iter([9.0] + [0.5, 0.25, 0.4])  # the warm-up call, then three timed ones
    seen = []

    def fake_timed(fn, device):
        seen.append(tuple(fn().shape))
        return next(times), None

    monkeypatch.setattr(bench, "timed", fake_timed)
    rate = bench.matmul_flops_per_s(torch.float32, size=64, seconds=1.0)
    assert seen == [(64, 64)] * 4 and rate == 2 * 64 ** 3 / 0.25  # 2 n^3 multiply-adds, the fastest repeat


def _touch_64_mib():
    """64 MiB of pages that were not resident before, touched and held 50 ms so a 1 ms sampler cannot miss
    them. An anonymous mmap, not a tensor: CI once failed three probe tests because torch.ones(64 MiB) got
    memory the allocator had kept resident from earlier tests (the resident set rose by 4 KiB), and a
    probe of the resident set rightly sees no rise for reused pages."""
    import mmap

    m = mmap.mmap(-1, 64 * 2 ** 20)
    for offset in range(0, len(m), mmap.PAGESIZE):
        m[offset] = 1
    time.sleep(0.05)
    m.close()


def test_memory_probe_sees_a_touched_allocation_on_this_kernel():
    """Whatever this kernel allows (a resettable high-water mark or not), a 64 MiB allocation shows."""
    with bench.peak_memory("cpu") as pm:
        _touch_64_mib()
    assert pm.kind in ("peak RSS", "lifetime peak RSS", "sampled peak RSS")
    assert pm.rise_mib > 50


@pytest.mark.parametrize("kernel", ["refuses the reset", "accepts the reset and keeps the old mark"])
def test_memory_probe_without_a_reset_is_not_fooled_by_an_earlier_peak(monkeypatch, kernel):
    """CI's kernel accepted the write to clear_refs and kept a 1.2 GB mark from earlier tests: the probe
    reported a rise of 0 for a 64 MiB allocation. Without a working reset, an earlier, higher peak must
    not hide the region's: the probe falls back to sampling the resident set."""
    import pathlib

    real_write = pathlib.Path.write_text
    if kernel == "refuses the reset":
        def write_text(self, *a, **k):
            if str(self) == "/proc/self/clear_refs":
                raise PermissionError("clear_refs refused")
            return real_write(self, *a, **k)
    else:
        def write_text(self, *a, **k):
            if str(self) == "/proc/self/clear_refs":
                return 1  # accepted, and nothing happens
            return real_write(self, *a, **k)
    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    monkeypatch.setattr(bench, "_rss_hwm_bytes", lambda: 64 * 2 ** 30)  # a lifetime peak of 64 GiB
    with bench.peak_memory("cpu") as pm:
        _touch_64_mib()
    assert pm.kind == "sampled peak RSS"
    assert pm.rise_mib > 50 and pm.peak_mib < 64 * 2 ** 10


def test_memory_probe_uses_a_new_lifetime_record_exactly(monkeypatch):
    """Without a reset, a region that sets a new high-water mark is measured by the mark itself."""
    import pathlib

    real_write = pathlib.Path.write_text

    def write_text(self, *a, **k):
        if str(self) == "/proc/self/clear_refs":
            raise PermissionError("clear_refs refused")
        return real_write(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    marks = iter([1 * 2 ** 30, 3 * 2 ** 30])  # before the region, after it
    monkeypatch.setattr(bench, "_rss_hwm_bytes", lambda: next(marks))
    monkeypatch.setattr(bench, "_rss_bytes", lambda: 2 ** 30)
    with bench.peak_memory("cpu") as pm:
        pass
    assert pm.kind == "lifetime peak RSS" and pm.peak_bytes == 3 * 2 ** 30 and pm.rise_bytes == 2 * 2 ** 30


def test_two_level_sampler_follows_softmax_and_respects_filters():
    g = torch.Generator().manual_seed(0)
    V, n = 512, 40_000
    logits = torch.randn(V) * 2
    p = torch.softmax(logits, -1)
    freq = torch.bincount(sample_logits(logits.expand(n, V), 1.0, 0, 1.0, g), minlength=V).float() / n
    assert (freq - p).abs().max() < 5 * (p.max() / n) ** 0.5  # within ~5 sigma of the largest cell
    ids = sample_logits(logits.expand(5000, V), 1.3, 40, 0.8, g)
    kept = filter_logits(logits[None] / 1.3, 40, 0.8)[0] > float("-inf")
    assert kept[ids].all()
    one_hot = torch.full((6, V), -1e9)
    one_hot[:, V - 1] = 0.0  # all mass on the last entry of the last block
    assert sample_logits(one_hot, 1.0, 0, 1.0, g).tolist() == [V - 1] * 6


def test_tiny_sample_bench_end_to_end(tmp_path):
    torch.set_num_threads(1)
    sb = SampleBench(preset="GPT-tiny", grid=4, batch=2, repeats=1, warmup=0, naive_repeats=1)
    r = run_sample_bench(sb)
    w = r["wall"]
    assert r["tokens"] == 16 and r["rows_ar"] == 4
    # stage 2 samples through the restricted head of a random coarse map: its counted head FLOPs are
    # each position's cluster size, not K
    K, width = r["vocab"]["K"], r["head_members_per_position"]
    assert r["fine_head"] == "restricted" and 1 <= width < K / 4
    fine_cfg = build_models(sb)["fine"].cfg
    assert r["flops"]["stage2"] == bench.full_forward_flops(fine_cfg, 2, 17, head_positions=16, head_width=width)
    assert set(w["median_s"]) >= {"stage1", "stage2", "decode", "baseline", "ctf_total", "baseline_total"}
    assert w["ratio_ctf_over_baseline"] == pytest.approx(w["images_per_s"]["ctf"] / w["images_per_s"]["baseline"])
    # the fraction of the matmul peak is the loop's counted FLOPs over its median time over the measured peak
    # (its size depends on the machine; its arithmetic does not)
    cpu, loop = r["cpu"], r["cpu"]["loops"]["baseline"]
    assert loop["flop_per_s"] == pytest.approx(r["flops"]["baseline"] / cpu["median_s"]["baseline"])
    assert loop["frac_of_matmul_peak"] == pytest.approx(loop["flop_per_s"] / cpu["matmul_peak_flop_per_s"])
    assert cpu["matmul_peak_flop_per_s"] == pytest.approx(bench.median(cpu["matmul_peaks"]))
    assert r["naive"]["wall"]["time_s"] > 0
    out = tmp_path / "s.json"
    rc = main(["bench", "sample", "--preset", "GPT-tiny", "--grid", "4", "--batch-size", "2", "--repeats", "1",
               "--untimed-rounds", "0", "--naive-repeats", "0", "--dtype", "fp32", "--quiet", "--json", str(out),
               "--md", str(tmp_path / "s.md")])
    assert rc == 0 and json.loads(out.read_text())[0]["bench"]["preset"] == "GPT-tiny"
    assert "CTF / baseline" in (tmp_path / "s.md").read_text()


def test_tiny_train_bench_reports_tokens_per_second():
    recs = run_train_bench(TrainBench(preset="GPT-tiny", grid=4, batch=2, repeats=1, warmup=0,
                                      parts=("coarse", "fine", "iar"), dtypes=("fp32",)))
    assert [r["part"] for r in recs] == ["coarse", "fine", "iar"]
    assert all(r["tokens_per_s"] > 0 and r["tokens_per_step"] == 2 * 16 for r in recs)


def test_train_bench_times_the_training_loops_step(monkeypatch):
    """Every timed step is one `train_step` of the loop, at consecutive steps, on the task training builds."""
    from coarse2fine.training import loop

    seen, real = [], loop.train_step
    monkeypatch.setattr(loop, "train_step", lambda task, step, info, *a: seen.append((task.name, step)) or
                        real(task, step, info, *a))
    run_train_bench(TrainBench(preset="GPT-tiny", grid=4, batch=2, repeats=2, warmup=0, parts=("coarse", "fine"),
                               dtypes=("fp32",)))
    # one untimed step (the memory probe), then the two timed rounds
    assert seen == [("train coarse", 0), ("train coarse", 1), ("train coarse", 2),
                    ("train fine", 0), ("train fine", 1), ("train fine", 2)]


def test_train_bench_tokenizer_step_has_the_recipes_perceptual_term(monkeypatch):
    """VQ-64-f8's recipe has a perceptual loss: the timed step must pay for it (a hand-written L2 + VQ step
    would not call it)."""
    from coarse2fine.tokenizer.perceptual import PerceptualLoss

    calls, real = [], PerceptualLoss.forward
    monkeypatch.setattr(PerceptualLoss, "forward", lambda self, x, y: calls.append(x.shape) or real(self, x, y))
    recs = run_train_bench(TrainBench(vq_preset="VQ-64-f8", batch=2, repeats=1, warmup=0, parts=("tokenizer",),
                                      dtypes=("fp32",)))
    assert len(calls) == 2 and calls[0] == (2, 3, 64, 64)
    assert recs[0]["part"] == "tokenizer" and recs[0]["tokens_per_step"] == 2 * 64


def test_bench_rejects_bad_flags(capsys):
    assert main(["bench", "sample", "--preset", "GPT-nope", "--quiet"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_bound_is_a_per_step_roofline():
    from coarse2fine.bench.runs import bound_record

    cfg = gpt_config("GPT-tiny", vocab_size=4096)
    fast_mem = bound_record("GPT-tiny", "", 2, peak=1e12, bw=0.0, vq_preset="VQ-tiny", dtype="fp32")
    assert fast_mem["bound_s"]["baseline"] == pytest.approx(bench.decode_flops(cfg, 4, 64) / 1e12)
    slow_mem = bound_record("GPT-tiny", "", 2, peak=1e30, bw=1e6, vq_preset="VQ-tiny", dtype="fp32")
    with torch.device("meta"):
        m = Transformer(cfg)
    assert slow_mem["bound_s"]["baseline"] == pytest.approx(bench.decode_bytes(cfg, m, 4, 64, torch.float32) / 1e6)
    assert fast_mem["bound_s"]["decode"] > 0 and fast_mem["ratio_ctf_over_baseline"] > 0
    # stage 2's restricted head: K / C member logits per image position instead of K
    full = bound_record("GPT-tiny", "", 2, peak=1e12, bw=0.0, vq_preset="VQ-tiny", dtype="fp32", fine_head="full")
    fine = gpt_config("GPT-tiny", vocab_size=4096, causal=False, input_vocab_size=128)
    head_saved = 2 * 64 * 2 * fine.dim * (4096 - 4096 / 128)
    assert (full["bound_s"]["stage2"] - fast_mem["bound_s"]["stage2"]) * 1e12 == pytest.approx(head_saved)


def test_presets_list_the_64px_tokenizers_and_time_a_step_with_their_recipe(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "VQ-64-f8" in out and "64px -> 8x8" in out and "VQ-64-f4" in out and "64px -> 16x16" in out
    assert "CPU-s/step" not in out  # timing is a developer tool: `bench tokenizer-steps`
    t = bench.tokenizer_step_seconds("VQ-64-f8", repeats=1)
    assert (t["batch_size"], t["terms"], t["precision"]) == (16, "L2+perceptual", "fp32") and t["cpu_s"] > 0


def test_bench_tokenizer_steps_times_the_cpu_presets_only(capsys, monkeypatch):
    """`presets --time` moved here, beside the other developer tools; the GPU presets are skipped."""
    seen = []
    monkeypatch.setattr(bench, "tokenizer_step_seconds", lambda name, repeats: seen.append((name, repeats)) or
                        {"cpu_s": 0.5, "batch_size": 16, "terms": "L2"})
    assert main(["bench", "tokenizer-steps", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert [n for n, _ in seen] == ["VQ-tiny", "VQ-small", "VQ-64-f8", "VQ-64-f4"] and {r for _, r in seen} == {2}
    assert "VQ-64-f8     0.50 CPU-s/step (batch 16, L2, fp32, 1 thread)" in out and "VQ-16" not in out


def test_cpuinfo_parser_reads_the_first_cpus_name_and_flags_and_says_none_for_what_is_absent():
    from coarse2fine.precision import parse_cpuinfo

    text = ("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
            "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    assert parse_cpuinfo(text) == ("AMD EPYC 9R14", frozenset({"fpu", "avx2", "avx512f", "avx512_bf16"}))
    # an ARM kernel writes neither field: the callers then say "unknown" rather than guess
    assert parse_cpuinfo("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\n") == (None, None)
    # the results header states the flags that decide fp32 and bf16 speed, from the same reader
    info = bench.machine_info()
    if info.get("cpu_flags") is not None:
        from coarse2fine.precision import cpu_info
        assert set(info["cpu_flags"]) <= set(cpu_info()[1])
