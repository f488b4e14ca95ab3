"""What the GPU run does, at the two sizes: the work items in order, their time caps, and every size
knob. Standard library only: run.py reads it without importing torch.

Caps (seconds) are ceilings on an H100/H200 for a cold machine (no compile cache); the estimates
behind them are in README.md ("Time budget"). The global budget (run.py --budget-s) cuts an item
short when less time is left than its cap.
"""
from __future__ import annotations

SIZES = {
    "full": {
        "device": "cuda", "dtype": "bf16",
        # copy: 2 GiB source + 2 GiB destination, far past the 50-60 MB L2, so the copy runs at HBM speed
        "copy_mib": 2048, "matmul_size": 8192, "probe_s": 1.0,
        # sampling: the paper's setting (Sec. 5.1): 256 tokens, batch 64, CFG 2.0, stage 2 = GPT-L
        "sample_presets": ["GPT-B", "GPT-L"], "fine_preset": "GPT-L", "vq_preset": "VQ-16",
        "batch": 64, "grid": 16, "K": 16384, "C": 512, "num_classes": 1000,
        "compile_mode": "reduce-overhead", "repeats": 3, "warmup": 1,
        # training: GPT-B, every stage, batch 64 x 256 tokens, random codes
        "train_preset": "GPT-B", "train_batch": 64, "train_steps": 200, "store_rows": 4096,
        "fsdp_cli_steps": 50, "engine_repeats": 10,
    },
    "toy": {
        "device": "cpu", "dtype": "auto",  # bf16 where the CPU has native bf16, else fp32
        "copy_mib": 32, "matmul_size": 256, "probe_s": 0.1,
        "sample_presets": ["GPT-tiny"], "fine_preset": "GPT-tiny", "vq_preset": "VQ-tiny",
        "batch": 4, "grid": 4, "K": 256, "C": 16, "num_classes": 10,
        # a cold CPU inductor compile takes ~1 min on a shared 2-core box: off unless --toy-compile
        "compile_mode": "", "repeats": 2, "warmup": 1,
        "train_preset": "GPT-tiny", "train_batch": 8, "train_steps": 8, "store_rows": 64,
        "fsdp_cli_steps": 4, "engine_repeats": 2,
    },
}

# (phase, item, cap seconds on the full size). Order = priority: what proves the paths first, then
# the headline sampling numbers (one item per preset and mode, SAMPLE_CAPS), then training. The toy
# run uses TOY_CAP for every item.
ITEMS = [("env", "probe", 60), ("tests", "gpu_marked", 150), ("sample", "*", 0), ("train", "cli", 120),
         ("train", "engines", 80)]
SAMPLE_CAPS = {"GPT-B:eager": 60, "GPT-B:compiled": 120, "GPT-L:eager": 70, "GPT-L:compiled": 150}
TOY_CAP = 120
DEFAULT_BUDGET_S = 570  # 10 minutes minus time to write the results and for the caller's own timeout


def items_for(size: str, presets: list[str], compile_mode: str) -> list[tuple[str, str, int]]:
    """The items of a run, in order; the sample items follow the presets, compiled ones need a mode."""
    out = []
    for phase, item, cap in ITEMS:
        if phase != "sample":
            out.append((phase, item, cap if size == "full" else TOY_CAP))
            continue
        for p in presets:
            for kind in ("eager", "compiled") if compile_mode else ("eager",):
                name = f"{p}:{kind}"
                out.append(("sample", name, SAMPLE_CAPS.get(name, 150) if size == "full" else TOY_CAP))
    return out
