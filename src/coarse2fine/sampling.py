"""Sampling policy: temperature / top-k / top-p filters, CFG, the KV-cache decode loop, stage 2.

Models return logits; everything that decides which token comes next lives here.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch

from coarse2fine.config import COMPILE_MODES, UserError
from coarse2fine.models.transformer import guide_hidden
from coarse2fine.precision import resolve_dtype


@dataclass
class StageSampling:
    """Per-stage knobs. top_k 0 and top_p 1.0 disable the filters; cfg_scale 1.0 disables CFG.
    cfg_interval -1: CFG at every step; n >= 0: CFG only for token positions < n."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cfg_scale: float = 1.0
    cfg_interval: int = -1

    def validate(self, vocab: int, name: str) -> None:
        for knob, label, whole in (("temperature", "temperature", False), ("top_k", "top-k", True),
                                   ("top_p", "top-p", False), ("cfg_scale", "cfg scale", False),
                                   ("cfg_interval", "cfg interval", True)):
            v = getattr(self, knob)
            try:  # numpy's numbers and 0-d tensors are numbers too; a string, None, a bool or 2.5 tokens are not
                operator.index(v) if whole else float(v)
                ok = not isinstance(v, (bool, str, bytes))
            except (TypeError, ValueError, RuntimeError):
                ok = False
            if not ok:
                raise UserError(f"{name} {label} must be {'an integer' if whole else 'a number'}, got {v!r}; "
                                f"e.g. StageSampling({knob}={getattr(StageSampling, knob)!r})")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UserError(f"{name} temperature must be > 0 and finite (got {self.temperature}); use e.g. 1.0")
        if self.top_k < 0 or self.top_k > vocab:
            raise UserError(f"{name} top-k must be in 0..{vocab} (vocabulary size; 0 = all), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"{name} top-p must be in (0, 1], got {self.top_p}")
        if not (math.isfinite(self.cfg_scale) and self.cfg_scale >= 0):
            raise UserError(f"{name} cfg scale must be >= 0 and finite (1.0 = no guidance), got {self.cfg_scale}")
        if self.cfg_interval < -1:
            raise UserError(f"{name} cfg interval must be -1 (every token) or >= 0, got {self.cfg_interval}")

    @property
    def use_cfg(self) -> bool:
        return self.cfg_scale != 1.0


# The one definition of the sampling defaults (the CLI, the page, the FID sampler and the benchmarks
# import these). The paper's (Sec. 5.1): CFG 2.0 in stage 1, temperature 1.1 in both CTF stages, no
# top-k / top-p, no CFG in stage 2. LlamaGen's for the AR baseline: temperature 1.0, CFG 2.0.
CTF_COARSE_DEFAULT = StageSampling(temperature=1.1, cfg_scale=2.0)
CTF_FINE_DEFAULT = StageSampling(temperature=1.1)
BASELINE_DEFAULT = StageSampling(temperature=1.0, cfg_scale=2.0)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """logits [..., V] -> logits with filtered entries at -inf.

    top-k uses topk (no full sort). With top-k set, top-p works on the k sorted survivors that
    topk already returned; only top-p alone sorts the whole vocabulary (64x4096: 23 ms vs 1.8 ms)."""
    V = logits.size(-1)
    k = top_k if top_k and top_k < V else 0
    if top_p >= 1.0:
        if k:
            kth = torch.topk(logits, k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return logits
    if k:
        vals = torch.topk(logits, k, dim=-1).values  # [..., k], descending
    else:
        vals = torch.sort(logits, dim=-1, descending=True).values  # [..., V]
    p = vals.softmax(-1)
    # keep a token while the mass of the tokens strictly above it is < top_p (the top token always)
    keep = (p.cumsum(-1) - p) < top_p
    thresh = vals.masked_fill(~keep, float("inf")).amin(-1, keepdim=True)  # smallest kept logit
    return logits.masked_fill(logits < thresh, float("-inf"))


def _icdf_pick(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Inverse CDF: w [R, n] float64 weights >= 0, x [R, 1] in [0, sum w) -> first index i with
    cumsum(w)[i] > x, [R, 1]. x is held below the total so a rounding overshoot cannot land on a
    zero-weight (filtered) entry past the last positive one."""
    cdf = w.cumsum(-1)
    x = torch.minimum(x, torch.nextafter(cdf[:, -1:], torch.zeros_like(x)))
    return torch.searchsorted(cdf, x, right=True)


def sample_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                  generator: torch.Generator | None = None, block: int = 64,
                  u: torch.Tensor | None = None) -> torch.Tensor:
    """logits [..., V] -> sampled ids [...].

    Inverse-CDF sampling with one uniform number per row, so no host sync and B numbers drawn
    instead of B*V (B*V exponentials were a third of the CPU decode step). Two levels when V is a
    multiple of `block`: pick a block of `block` entries by the cumulative block masses, then an
    entry inside it; a float64 cumsum over all V entries cost as much as the output head on CPU.
    u: the rows' uniform numbers (float64, one per row in row-major order) when the caller drew them
    (stage 2 draws all of them first and samples chunk by chunk); None draws them from `generator`."""
    logits = filter_logits(logits / max(temperature, 1e-5), top_k, top_p)
    probs = torch.softmax(logits.float(), dim=-1)
    V = probs.size(-1)
    flat = probs.reshape(-1, V)  # [R, V]
    R = flat.size(0)
    if u is None:
        u = torch.rand(R, 1, generator=generator, dtype=torch.float64, device=flat.device)
    else:
        u = u.reshape(R, 1).to(torch.float64)
    if V % block or V <= 4 * block:
        w = flat.double()
        return _icdf_pick(w, u * w.sum(-1, keepdim=True)).reshape(probs.shape[:-1])
    blocks = flat.view(R, V // block, block)  # [R, G, block]
    # block masses summed in float32, then widened: summing with dtype=float64 first casts all R x V
    # probabilities to float64, a copy that took 10% of a K = 16384 decode step on CPU
    mass = blocks.sum(-1).double()  # [R, G]
    x = u * mass.sum(-1, keepdim=True)
    g = _icdf_pick(mass, x)  # [R, 1] chosen block
    before = (mass.cumsum(-1) - mass).gather(-1, g)  # mass of the blocks before it
    inner = blocks.gather(1, g.unsqueeze(-1).expand(R, 1, block)).squeeze(1).double()  # [R, block]
    j = _icdf_pick(inner, (x - before).clamp_min_(0.0))
    return (g * block + j).reshape(probs.shape[:-1])


def cfg_combine(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """logits [2B, ...] as [cond; uncond] -> uncond + (cond - uncond) * scale, [B, ...]."""
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + (cond - uncond) * scale


def _guidance(opts: StageSampling, i: int) -> float | None:
    """The guidance for token i of an AR loop: None without CFG, the scale while the interval lasts,
    1.0 (the cond rows alone) after it."""
    if not opts.use_cfg:
        return None
    return opts.cfg_scale if opts.cfg_interval < 0 or i < opts.cfg_interval else 1.0


def _cfg_cond(cond: torch.Tensor, num_classes: int, use_cfg: bool) -> torch.Tensor:
    if not use_cfg:
        return cond
    return torch.cat([cond, torch.full_like(cond, num_classes)])


def check_labels(cond: torch.Tensor, num_classes: int) -> None:
    if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= num_classes):
        raise UserError(f"class labels must be in 0..{num_classes - 1}, got {cond.tolist()[:16]}")


def check_call(model, cond, opts, dtype, who: str, stage: str) -> torch.dtype:
    """What generate_ar / generate_fine take, checked once before any step (called directly from Python a list of
    labels was an AttributeError, float or [B, 1] labels an embedding or unpacking error deep in the model, labels
    on another device than the model a device mismatch, a dict of knobs an AttributeError, dtype "bf16" a TypeError
    from the cache allocation) -> the autocast dtype (strings as the pipelines take them: precision.resolve_dtype)."""
    if not isinstance(cond, torch.Tensor) or cond.dim() != 1 or cond.is_floating_point() or cond.is_complex() \
            or cond.dtype == torch.bool:
        got = (f"{cond.dtype} of shape {list(cond.shape)}" if isinstance(cond, torch.Tensor)
               else type(cond).__name__)
        raise UserError(f"{who} labels must be a 1-D integer tensor of class ids [B], got {got}; e.g. "
                        "torch.tensor([0, 1, 2]) (the pipelines take lists: pipe([0, 1, 2]))")
    device = next(model.parameters()).device
    if cond.device != device:
        raise UserError(f"{who} labels are on {cond.device} but the model is on {device}; move them with "
                        f"labels.to('{device}')")
    check_labels(cond, model.cfg.num_classes)
    if not isinstance(opts, StageSampling):
        raise UserError(f"{who} opts must be a coarse2fine.sampling.StageSampling, got {type(opts).__name__}; e.g. "
                        "StageSampling(temperature=1.0)")
    opts.validate(model.cfg.vocab_size, stage)
    return resolve_dtype(dtype, device)


def check_coarse(coarse, cond: torch.Tensor, seq_len: int, num_coarse: int) -> None:
    """Stage 2's coarse maps: cluster ids [B, seq_len], one row per label, on the labels' device (from Python a map
    of another grid was sampled without a word into codes no tokenizer decodes at that size; a float map, ids
    outside the map or rows of another count ended in torch's embedding or concatenation errors)."""
    if not isinstance(coarse, torch.Tensor) or coarse.is_floating_point() or coarse.is_complex() \
            or coarse.dtype == torch.bool:
        got = coarse.dtype if isinstance(coarse, torch.Tensor) else type(coarse).__name__
        raise UserError(f"coarse maps must be an integer tensor of cluster ids, got {got}; pass a stage-1 "
                        "output (e.g. a pipeline call's out.coarse)")
    if coarse.dim() != 2 or coarse.size(1) != seq_len or coarse.size(0) != cond.size(0):
        raise UserError(f"coarse maps must be [B, {seq_len}] (the model's tokens per image), one row per label; got "
                        f"shape {list(coarse.shape)} for {cond.size(0)} labels")
    if coarse.device != cond.device:
        raise UserError(f"coarse maps are on {coarse.device} but the labels and model on {cond.device}; move them "
                        f"with coarse.to('{cond.device}')")
    lo, hi = (int(v) for v in torch.aminmax(coarse)) if coarse.numel() else (0, 0)  # one pass, one read
    if lo < 0 or hi >= num_coarse:
        raise UserError(f"coarse maps must hold cluster ids in 0..{num_coarse - 1} (the model's coarse vocabulary), "
                        f"got ids from {lo} to {hi}; pass maps of the coarse map the model was trained on")


def check_cpu_compiler() -> None:
    """torch.compile on a CPU builds C++ kernels: without a compiler it fails deep inside Inductor after
    tracing the model. One line instead, before anything is traced."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # another torch layout: let torch.compile speak for itself
        return
    try:
        get_cpp_compiler()
    except Exception as e:  # torch raises its own error types here, which differ between versions
        raise UserError(f"--compile on a CPU needs a C++ compiler (g++ or clang++, or CXX naming one) and none was "
                        f"found ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); install one or "
                        "sample without --compile") from None


def check_compile_mode(compile_mode) -> None:
    """None, "" or False (eager) or one of COMPILE_MODES: `pipe.compile_mode = True` or a mistyped mode was
    torch.compile's RuntimeError after the prefill, from inside sampling."""
    if compile_mode is None or compile_mode is False or compile_mode == "":
        return
    if not isinstance(compile_mode, str) or compile_mode not in COMPILE_MODES:
        raise UserError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, or None for eager decoding; got "
                        f"{compile_mode!r}")


def _decode_step(model, compile_mode: str | None, static: bool):
    """The callable for decode steps: the model itself, or a torch.compile of it kept on the model
    (compiled once, reused by later calls). static: every step has the same shapes (the masked cache;
    mode "reduce-overhead" captures CUDA graphs on GPU); otherwise the step reads the growing prefix of
    the cache and the prefix length becomes a symbolic size after the first recompile (two compiles)."""
    if not compile_mode:
        return model
    if model.output.weight.device.type == "cpu":
        check_cpu_compiler()
    compiled = model.__dict__.get("_c2f_decode_compiled")
    if compiled is None:
        # object.__setattr__: an nn.Module attribute would register the compiled wrappers as
        # submodules and change the state dict
        compiled = {}
        object.__setattr__(model, "_c2f_decode_compiled", compiled)
    key = (compile_mode, static)
    if key not in compiled:
        compiled[key] = torch.compile(model, mode=compile_mode, dynamic=False if static else None, fullgraph=True)
    return compiled[key]


@torch.no_grad()
def generate_ar(model, cond: torch.Tensor, opts: StageSampling, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float32, num_tokens: int | None = None,
                masked_cache: bool | None = None, compile_mode: str | None = None,
                cfg_before_head: bool = False) -> torch.Tensor:
    """Autoregressive sampling with a static KV cache. cond [B] -> tokens [B, N].

    CFG doubles the batch ([cond; null]) so both halves run in one forward pass; the head is
    evaluated for the last position only. By default guidance combines the 2B rows' logits, in
    LlamaGen's order, so its greedy samples are reproduced bit for bit. cfg_before_head: guide the
    normed hidden states and run the head on the B guided rows (Transformer.forward's guidance): the
    same logits up to float rounding, 0.84x the CPU time of a K = 16384 GPT-small loop on CPU
    (docs/speed.md), but a near-tie can then break the other way than in LlamaGen. The cache is allocated
    once per (batch, dtype) and reused by later calls. The loop never reads a device value on the host (no
    per-step sync).
    compile_mode (e.g. "default", "reduce-overhead" = CUDA graphs, "max-autotune"): torch.compile the
    decode step. masked_cache: every step reads the whole cache under a mask, so its shapes never change.
    None (the default) = masked when compiling on a GPU (CUDA graphs need static shapes); eager steps and
    compiled CPU steps read only the filled prefix (at 16x16 codes the masked cache made the compiled CPU
    loop 1.28-1.64x slower than eager, the prefix 0.93x: it reads all 257 positions at every step; docs/speed.md).
    """
    cfg = model.cfg
    if not cfg.causal:
        raise UserError("generate_ar decodes a causal (stage-1 or baseline) model token by token; this is a stage-2 "
                        "model, which predicts all tokens in one pass: use generate_fine")
    dtype = check_call(model, cond, opts, dtype, "generate_ar", "stage")
    check_compile_mode(compile_mode)
    if num_tokens is not None and (isinstance(num_tokens, bool) or not isinstance(num_tokens, int)
                                   or not 1 <= num_tokens <= cfg.seq_len):
        raise UserError(f"num_tokens must be an integer from 1 to {cfg.seq_len} (the model's tokens per image), or "
                        f"None for all of them; got {num_tokens!r}")
    n = num_tokens or cfg.seq_len
    B = cond.size(0)
    x_cond = _cfg_cond(cond, cfg.num_classes, opts.use_cfg)
    device = cond.device
    if masked_cache is None:
        masked_cache = bool(compile_mode) and device.type != "cpu"
    model.setup_cache(x_cond.size(0), dtype=dtype, masked=masked_cache)
    step = _decode_step(model, compile_mode, static=masked_cache)
    positions = torch.arange(n, device=device)
    out = torch.empty(B, n, dtype=torch.long, device=device)
    tok = None
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        for i in range(n):
            pos = positions[i:i + 1]
            g = _guidance(opts, i)
            hg = g if cfg_before_head else None  # guided inside the model, before the head
            if i == 0:
                logits = model(None, x_cond, pos, last_only=True, prefix_len=1, guidance=hg)[:, -1]  # [B', V]
            else:
                x = tok.repeat(2, 1) if opts.use_cfg else tok  # [B', 1]
                logits = (step(x, None, pos, last_only=True, guidance=hg) if masked_cache
                          else step(x, None, pos, last_only=True, prefix_len=i + 1, guidance=hg))[:, -1]
            if g is not None and not cfg_before_head:  # the [2B, V] float32 logits, in LlamaGen's order
                logits = guide_hidden(logits, g)
            nxt = sample_logits(logits.float(), opts.temperature, opts.top_k, opts.top_p, generator)
            out[:, i] = nxt
            tok = nxt.unsqueeze(1)  # [B, 1]
    return out


# Stage 2 works through the batch in chunks of about this many transformer rows (class token and CFG
# rows counted): the activations stay flat with the batch, and the output head sees a few thousand
# positions at a time, enough for full-speed matrix multiplies.
FINE_CHUNK_ROWS = 4096
# The full (unrestricted) head's logits are formed for at most this many values at a time.
FULL_HEAD_CHUNK_VALUES = 1 << 22


@torch.no_grad()
def generate_fine(model, coarse: torch.Tensor, cond: torch.Tensor, opts: StageSampling,
                  generator: torch.Generator | None = None, members: torch.Tensor | None = None,
                  dtype: torch.dtype = torch.float32, chunk_rows: int = FINE_CHUNK_ROWS) -> torch.Tensor:
    """Stage 2 in one forward pass: coarse [B, N] (+ cond [B]) -> fine codes [B, N].

    members [C, M] (-1 padded): the restricted head. Each position scores only its cluster's rows
    of the output weight: positions are grouped by cluster and each group meets its cluster's rows
    in one [n_c, D] @ [D, M_c] product, about K / C logits per position instead of K (at K = 16384,
    C = 512: 32 instead of 16384). Without members every position scores all K codes.

    The batch runs in chunks of whole images (about `chunk_rows` transformer rows each), so memory
    does not grow with B beyond the codes themselves. The random numbers are drawn up front, one per
    position in row-major order, exactly as sampling the whole [B, N, K] (or [B, N, M]) logits at
    once would draw them, so a seed gives the same codes whatever the chunking."""
    cfg = model.cfg
    if cfg.causal:
        raise UserError("generate_fine runs a stage-2 model (all tokens in one pass); this is a causal model "
                        "(stage 1 or the baseline): use generate_ar")
    dtype = check_call(model, cond, opts, dtype, "generate_fine", "stage-2")
    check_coarse(coarse, cond, cfg.seq_len, cfg.input_vocab_size or cfg.vocab_size)
    if chunk_rows < 1:
        raise UserError(f"stage-2 chunk rows must be >= 1, got {chunk_rows}")
    B, N = coarse.shape
    u = torch.rand(B * N, 1, generator=generator, dtype=torch.float64, device=coarse.device).view(B, N)
    groups = 2 if opts.use_cfg else 1  # CFG rows: [cond; null] inside every chunk
    per_chunk = max(1, chunk_rows // (groups * (N + 1)))  # images
    out = torch.empty(B, N, dtype=torch.long, device=coarse.device)
    if members is not None:
        members = members.to(coarse.device)
    rows: list[torch.Tensor] = []  # the output weight as the head uses it, formed at the first chunk
    with torch.autocast(coarse.device.type, dtype=dtype, enabled=dtype != torch.float32):
        for s in range(0, B, per_chunk):
            c, y = coarse[s:s + per_chunk], cond[s:s + per_chunk]
            b = c.size(0)
            x_tok = c.repeat(groups, 1)  # [G b, N]
            x_cond = _cfg_cond(y, cfg.num_classes, opts.use_cfg)  # [G b]

            def head(h: torch.Tensor, weight: torch.Tensor, s=s, b=b, c=c) -> torch.Tensor:
                h = h[:, 1:]  # [G b, N, D]; position 0 is the class token
                if opts.use_cfg:  # guided before the head (see Transformer.forward): half the products
                    h = guide_hidden(h, opts.cfg_scale)
                h = h.to(dtype).reshape(b * N, -1)  # [P, D]
                if not rows:  # cast once, not in every product below (as autocast would)
                    rows.extend([weight.to(dtype)] if members is None else _member_rows(weight.to(dtype), members))
                if members is None:
                    return _sample_full_head(h, rows[0], opts, u[s:s + b].reshape(-1))
                return _sample_restricted_head(h, rows, c.reshape(-1), members, opts, u[s:s + b].reshape(-1))

            out[s:s + b] = model(x_tok, x_cond, head=head).view(b, N)
    return out


def _sample_full_head(h: torch.Tensor, weight: torch.Tensor, opts: StageSampling, u: torch.Tensor) -> torch.Tensor:
    """h [P, D] normed (and guided) hidden states, weight [K, D], u [P] -> codes [P], all K codes
    scored, a slice of positions at a time."""
    P, K = h.size(0), weight.size(0)
    step = max(1, FULL_HEAD_CHUNK_VALUES // K)
    out = torch.empty(P, dtype=torch.long, device=h.device)
    for s in range(0, P, step):
        logits = (h[s:s + step] @ weight.t()).float()  # [p, K]
        out[s:s + step] = sample_logits(logits, opts.temperature, opts.top_k, opts.top_p, u=u[s:s + step])
    return out


def _member_rows(weight: torch.Tensor, members: torch.Tensor) -> list[torch.Tensor]:
    """weight [K, D], members [C, M] (-1 padded) -> C x [M_c, D]: each cluster's rows, in member order."""
    valid = members >= 0
    return list(weight[members[valid]].split(valid.sum(1).tolist()))


def _sample_restricted_head(h: torch.Tensor, rows: list[torch.Tensor], coarse: torch.Tensor, members: torch.Tensor,
                            opts: StageSampling, u: torch.Tensor) -> torch.Tensor:
    """h [P, D] normed (and guided) hidden states, rows C x [M_c, D] (`_member_rows`), coarse [P], members [C, M]
    (-1 padded), u [P] -> codes [P], each a member of its position's cluster.

    The logits land in a [P, M] table in member order, -inf where a cluster has fewer than M members:
    the table that gathering the full logits at `members[coarse]` gives, sampled the same way."""
    C, M = members.shape
    order = torch.argsort(coarse, stable=True)  # positions grouped by cluster
    counts = torch.bincount(coarse, minlength=C).tolist()  # [C]
    hs = h[order].split(counts)  # C x [n_c, D]
    table = torch.full((len(order), M), float("-inf"), device=h.device)  # [P, M], grouped order
    start = 0
    for n, x, w in zip(counts, hs, rows):
        if n:
            table[start:start + n, :w.size(0)] = x @ w.t()  # [n_c, M_c], one 2-D product
            start += n
    rank = sample_logits(table, opts.temperature, min(opts.top_k, M), opts.top_p, u=u[order])  # [P]
    codes = torch.empty_like(coarse)
    codes[order] = members[coarse[order], rank]
    return codes


# Stage-2 decodings. "network": the stage-2 transformer (the paper). The two others need no stage-2
# network and show what it is worth: "random-member" draws a uniformly random member of each predicted
# cluster (the decoding of MASC, arXiv 2510.04220); "centroid-member" takes the member whose codeword is
# nearest the cluster centroid (deterministic).
FINE_DECODINGS = ("network", "random-member", "centroid-member")


def check_fine_decoding(name: str) -> None:
    if name not in FINE_DECODINGS:
        raise UserError(f"unknown stage-2 decoding {name!r}; choose one of {', '.join(FINE_DECODINGS)}")


@torch.no_grad()
def random_member(coarse: torch.Tensor, members: torch.Tensor, sizes: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """coarse [B, N] -> fine codes [B, N], each a uniformly random member of its cluster.

    members [C, M] (-1 padded, real members first), sizes [C]. Empty clusters cannot be drawn by a
    trained stage 1 (their label never occurs in the data); they map to code 0 rather than to -1."""
    size = sizes.to(coarse.device)[coarse]  # [B, N]
    u = torch.rand(coarse.shape, generator=generator, device=coarse.device)
    rank = (u * size).long().clamp(max=members.size(1) - 1)  # [B, N], < size where size > 0
    codes = members.to(coarse.device)[coarse].gather(-1, rank.unsqueeze(-1)).squeeze(-1)
    return codes.clamp(min=0)


def centroid_members(members: torch.Tensor, centroids: torch.Tensor, codewords: torch.Tensor) -> torch.Tensor:
    """The member of each cluster whose codeword is nearest its centroid.

    members [C, M] (-1 padded), centroids [C, D], codewords [K, D] as clustered (VQ lookup geometry:
    `vq.quantize.codebook()`) -> codes [C] (0 for empty clusters)."""
    vec = codewords.float()[members.clamp(min=0)]  # [C, M, D]
    dist = (vec - centroids.float().unsqueeze(1)).square().sum(-1)  # [C, M]
    dist = dist.masked_fill(members < 0, float("inf"))
    best = members.gather(1, dist.argmin(1, keepdim=True)).squeeze(1)  # [C]
    return best.clamp(min=0)


@torch.no_grad()
def generate_naive(model, cond: torch.Tensor, opts: StageSampling, generator: torch.Generator | None = None,
                   num_tokens: int | None = None) -> torch.Tensor:
    """No-cache reference sampler: re-runs the full prefix at every step (the speed floor)."""
    cfg = model.cfg
    n = num_tokens or cfg.seq_len
    x_cond = _cfg_cond(cond, cfg.num_classes, opts.use_cfg)
    toks = torch.empty(x_cond.size(0), 0, dtype=torch.long, device=cond.device)
    out = []
    for i in range(n):
        logits = model(toks if i else None, x_cond)[:, -1]
        if opts.use_cfg:
            logits = guide_hidden(logits, _guidance(opts, i))
        nxt = sample_logits(logits, opts.temperature, opts.top_k, opts.top_p, generator)
        out.append(nxt)
        step = nxt.repeat(2) if opts.use_cfg else nxt
        toks = torch.cat([toks, step.unsqueeze(1)], dim=1)
    return torch.stack(out, dim=1)
