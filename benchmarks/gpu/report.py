"""results.json -> results.md for the GPU run (standard library only; run.py calls it after every item).

Every table reads what is there: an item that failed or has not run yet shows its status and error."""
from __future__ import annotations

# The speed target printed beside the figures (not asserted): GPT-B baseline, batch 64, 256 tokens,
# bf16 on an H100/H200. The paper's A100 figure for the same setting is 13.75 images/s.
TARGET_BASELINE_IPS = 300.0
PAPER_A100_BASELINE_IPS = 13.75


def _f(x, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt)


def _items(results: dict, phase: str) -> dict:
    return results.get("phases", {}).get(phase, {}).get("items", {})


def _header(results: dict) -> list[str]:
    env = _items(results, "env").get("probe", {}).get("result", {})
    d = env.get("device", {})
    smi = d.get("nvidia_smi") or {}
    dev = d.get("gpu") or d.get("cpu") or "?"
    lines = [f"# GPU run ({results.get('size')} size): {dev}", "",
             f"Command: `{results.get('command')}`", "",
             f"Start {results.get('start')}, end {results.get('end', '(running or cut off)')}, "
             f"wall {_f(results.get('wall_s'), '.0f')} s of a {_f(results.get('budget_s'), '.0f')} s budget.", "",
             f"Machine: {dev}; driver {d.get('driver') or smi.get('driver_version') or '-'}; "
             f"torch {d.get('torch', '-')}, CUDA runtime {d.get('cuda_runtime') or '-'}, cuDNN {d.get('cudnn') or '-'}, "
             f"NCCL {d.get('nccl') or '-'}; compute capability {d.get('capability') or '-'}, "
             f"{_f(d.get('gpu_memory_gib'))} GiB, {d.get('multiprocessors') or '-'} SMs; "
             f"{d.get('cpu_count', '-')} CPUs ({d.get('cpu', '-')}).", ""]
    if env:
        lines += [f"Measured in this run: device copy {env['copy_bytes_per_s'] / 1e9:.0f} GB/s (read + write, "
                  f"{env['copy_mib']} MiB tensor), {env['dtype']} matmul {env['matmul_flop_per_s'] / 1e12:.1f} "
                  f"TFLOP/s ({env['matmul_size']}^3). These two are the machine model of every bound below.", ""]
    return lines


def _phases(results: dict) -> list[str]:
    rows = ["## Phases", "", "| phase | item | status | wall s | cap s | error |", "|---|---|---|---|---|---|"]
    for phase, ph in results.get("phases", {}).items():
        for item, r in ph["items"].items():
            rows.append(f"| {phase} | {item} | {r['status']} | {_f(r.get('wall_s'), '.1f')} | "
                        f"{_f(r.get('cap_s'), '.0f')} | {(r.get('error') or '').replace('|', '/')} |")
        rows.append(f"| {phase} | **total** | | **{_f(ph.get('wall_s'), '.1f')}** | | |")
    return rows + [""]


def _tests(results: dict) -> list[str]:
    r = _items(results, "tests").get("gpu_marked", {}).get("result")
    if not r:
        return []
    c = r["counts"]
    rows = ["## GPU-marked tests (tests/gpu)", "",
            f"{c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped "
            f"(pytest exit {r['returncode']}, {r['wall_s']:.0f} s).", "",
            "| test | outcome | s | message |", "|---|---|---|---|"]
    for t in r["tests"]:
        msg = t["message"].splitlines()[0][:160].replace("|", "/") if t["message"] else ""
        rows.append(f"| {t['name']} | {t['outcome']} | {t['time_s']:.1f} | {msg} |")
    return rows + [""]


def _sampling(results: dict) -> list[str]:
    items = _items(results, "sample")
    recs = [r["result"]["summary"] for r in items.values() if r.get("result")]
    if not recs:
        return []
    s0 = recs[0]
    rows = ["## Sampling: CTF against the baseline", "",
            f"Batch {s0['batch']}, {s0['tokens']} tokens, CFG {s0['cfg_scale']} in both AR loops (2 x batch rows), "
            f"{s0['dtype']} weights and KV cache, random weights; stage 2 = {s0['fine_preset']}; seconds are medians "
            "per batch. Fraction of bound = the roofline time (bench bound, with this run's copy bandwidth and "
            "matmul rate) / the measured time: 1.0 would be the card's limit.", "",
            "| backbone | mode | stage 1 s | stage 2 s | VQ decode s | baseline AR s | CTF img/s | baseline img/s "
            "| **CTF / baseline** | w/o decode | fraction of bound: baseline loop, stage 1 loop, stage 2, decode "
            "| CTF, baseline pipeline | bound img/s CTF, baseline | MB per decode step (baseline) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in recs:
        sec, ips, fr, pf, b = (s["seconds"], s["images_per_s"], s["fraction_of_bound"],
                               s["pipeline_fraction_of_bound"], s["bound_images_per_s"])
        rows.append(f"| {s['preset']} | {s['mode']} | {sec['stage1']:.4f} | {sec['stage2']:.4f} | "
                    f"{_f(sec.get('decode'), '.4f')} | {sec['baseline']:.4f} | {ips['ctf']:.1f} | {ips['baseline']:.1f} "
                    f"| **{s['ratio_ctf_over_baseline']:.2f}** | {s['ratio_no_decode']:.2f} "
                    f"| {fr['baseline']:.2f}, {fr['stage1']:.2f}, {fr['stage2']:.2f}, {_f(fr.get('decode'), '.2f')} "
                    f"| {pf['ctf']:.2f}, {pf['baseline']:.2f} | {b['ctf']:.0f}, {b['baseline']:.0f} "
                    f"| {s['bytes_per_decode_step']['baseline'] / 1e6:.3g} |")
    rows.append("")
    gptb = [s for s in recs if s["preset"] == "GPT-B"]
    if gptb:
        best = max(gptb, key=lambda s: s["images_per_s"]["baseline"])
        rows += [f"Target (not asserted): GPT-B baseline at batch 64, 256 tokens, bf16 >= {TARGET_BASELINE_IPS:.0f} "
                 f"images/s on an H100/H200 (the paper's A100: {PAPER_A100_BASELINE_IPS}). Measured: "
                 f"**{best['images_per_s']['baseline']:.1f} images/s** ({best['mode']}, VQ decode included; "
                 f"{best['images_per_s']['baseline_no_decode']:.1f} without it).", ""]
    comp = [f"{s['preset']}: {s['compile'].get('unique_graphs')} graphs, {s['compile'].get('graph_breaks')} graph "
            f"breaks, {s['compile'].get('cudagraph_skips')} CUDA-graph skips" for s in recs if s.get("compile")]
    if comp:
        rows += ["Compiled runs (dynamo counters; a CUDA-graph skip means that step ran compiled but without "
                 "graphs, see run.log): " + "; ".join(comp) + ".", ""]
    ratios = {}
    for s in recs:
        ratios.setdefault(s["preset"], []).append(f"{s['ratio_ctf_over_baseline']:.2f} ({s['mode']})")
    rows += ["CTF / baseline images/s: " + "; ".join(f"{p}: {', '.join(v)}" for p, v in ratios.items()) + ".", ""]
    return rows


def _training(results: dict) -> list[str]:
    items = _items(results, "train")
    rows = []
    cli = (items.get("cli") or {}).get("result")
    if cli:
        rows += ["## Training: `coarse2fine train` under torchrun --nproc_per_node 1", "",
                 f"{cli['preset']}, {cli['dtype']}, random codes. tokens/s = batch x grid^2 codes / median step "
                 "(optimizer-step clock, first steps left out); trainer tokens/s also counts start-up and the final "
                 "checkpoint. At world size 1 the trainer leaves the model unwrapped, with or without --fsdp "
                 "(coarse2fine.parallel.wrap_model); the engines table below runs the wrappers.", "",
                 "| stage | flag | steps | step s | tokens/s | trainer tokens/s | peak MiB | final loss | error |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for r in cli["stages"]:
            rows.append(f"| {r['stage']} | {r['flag']} | {r['steps']} | {_f(r.get('step_s'), '.4f')} "
                        f"| {_f(r.get('tokens_per_s'), '.0f')} | {_f(r.get('trainer_tokens_per_s'), '.0f')} "
                        f"| {_f(r.get('peak_mib'), '.0f')} | {_f(r.get('final_loss'), '.3f')} "
                        f"| {(r.get('error') or '').splitlines()[0][:120] if r.get('error') else ''} |")
        rows.append("")
    eng = (items.get("engines") or {}).get("result")
    if eng:
        rows += ["## Training engines on one process group of size 1", "",
                 "One step (forward, backward, clip, AdamW) per engine, alternating rounds, median.", "",
                 "| stage | engine | step s | tokens/s | peak MiB |", "|---|---|---|---|---|"]
        for r in eng["stages"]:
            if "error" in r:
                rows.append(f"| {r['stage']} | error | {r['error'].splitlines()[0][:120]} | | |")
                continue
            for e in r["engines"]:
                rows.append(f"| {e['stage']} | {e['engine']} | {e['step_s']:.4f} | {e['tokens_per_s']:.0f} "
                            f"| {_f(e.get('peak_mib'), '.0f')} |")
        rows.append("")
    return rows


def render(results: dict) -> str:
    return "\n".join(_header(results) + _phases(results) + _tests(results) + _sampling(results)
                     + _training(results)) + "\n"
