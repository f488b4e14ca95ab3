import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors on a shared 2-core box: extra intra-op threads only add contention (10x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """Tokenizer, code store, CoarseMap and coarse/fine/baseline runs made through the CLI itself, as
    small as they go (20 images, 2-3 steps each, ~10 s): for tests of what the commands do with runs,
    not of what the models learn; plus an exported release folder of each kind. Returns a dict of paths."""
    from coarse2fine.cli import main

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny_runs")
    p = {k: root / k for k in ("tok", "codes", "cmap", "coarse", "fine", "baseline")}
    quiet = ["--device", "cpu", "--no-progress"]
    data = ["--data", "default", "--limit-per-class", "2"]
    steps = [
        ["train-tokenizer", *data, "--vq-preset", "VQ-tiny", "--steps", "2", "--batch-size", "4", "--ema-decay", "0",
         "--dtype", "fp32", "--out", str(p["tok"]), *quiet],
        ["extract-codes", "--tokenizer", str(p["tok"]), *data, "--no-flip", "--out", str(p["codes"]), *quiet],
        ["cluster", "--tokenizer", str(p["tok"]), "--clusters", "8", "--out", str(p["cmap"])],
    ]
    for stage in ("coarse", "fine", "baseline"):
        cm = ["--coarse-map", str(p["cmap"] / "coarse_map.safetensors")] if stage != "baseline" else []
        steps.append(["train", "--stage", stage, "--codes", str(p["codes"]), *cm, "--preset", "GPT-tiny", "--steps",
                      "3", "--batch-size", "4", "--lr", "0.1", "--dtype", "fp32", "--out", str(p[stage]), *quiet])
    p["release"], p["release_baseline"] = root / "release", root / "release_baseline"  # `export` of each kind
    steps += [["export", "--coarse", str(p["coarse"]), "--fine", str(p["fine"]), "--out", str(p["release"])],
              ["export", "--baseline", str(p["baseline"]), "--out", str(p["release_baseline"])]]
    for argv in steps:
        assert main(argv) == 0, argv
    torch.set_num_threads(n)
    return p
