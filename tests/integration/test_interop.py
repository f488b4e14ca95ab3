"""LlamaGen interoperability on LlamaGen-layout files with random weights: import, clustering,
ten-crop extraction, training on the sharded store, LlamaGen sampling semantics, FID sampling."""
import argparse
import hashlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from coarse2fine.cli import main
from coarse2fine.config import TrainConfig, gpt_config, vq_config
from coarse2fine.data.tencrop import ShardedCodeStore, extract_tencrop, image_variants, ten_crop
from coarse2fine.apps.llamagen import cfg_interval_from_llamagen
from coarse2fine.models import Transformer
from coarse2fine.stages import stage_config
from coarse2fine.pipeline import ARPipeline
from coarse2fine.sampling import StageSampling, filter_logits
from coarse2fine.tokenizer.vq import VQModel, codebook_fingerprint
from coarse2fine.checkpoint import load_vq
from coarse2fine.checkpoint import load_run
from coarse2fine.training.gpt import train

NCLS, SIZE = 5, 16  # VQ-tiny downsamples by 4: 16 px -> 4x4 codes


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


class NotAWeight:  # pickled into a file to check that weights_only refuses it
    pass


def llamagen_gpt_state(vocab=4096, seed=0):
    torch.manual_seed(seed)
    m = Transformer(gpt_config("GPT-tiny", vocab_size=vocab, num_classes=NCLS, grid=SIZE // 4))
    with torch.no_grad():  # random everywhere (LlamaGen zero-inits the head: greedy decoding would tie)
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m.state_dict()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamagen")
    torch.manual_seed(0)
    vq_sd = VQModel(vq_config("VQ-tiny")).state_dict()
    # a LlamaGen training checkpoint: weights under "model", plus optimizer state, steps and argparse args
    torch.save({"model": vq_sd, "optimizer": {"state": {}}, "steps": 100,
                "args": argparse.Namespace(vq_model="VQ-16", codebook_size=16384)}, root / "vq_ds16_c2i.pt")
    gpt_sd = llamagen_gpt_state()
    torch.save({"model": gpt_sd, "steps": 5, "args": argparse.Namespace(gpt_model="GPT-B")}, root / "c2i_B_256.pt")
    out = root / "imported"
    assert main(["import-llamagen", "--vq", str(root / "vq_ds16_c2i.pt"), "--vq-preset", "VQ-tiny",
                 "--gpt", str(root / "c2i_B_256.pt"), "--preset", "GPT-tiny", "--image-size", str(SIZE),
                 "--out", str(out)]) == 0
    return root, out, vq_sd, gpt_sd


def test_import_writes_strictly_loadable_run_dirs(files):
    root, out, vq_sd, gpt_sd = files
    vq = load_vq(out / "tokenizer")
    for k, v in vq_sd.items():
        assert torch.equal(vq.state_dict()[k], v), k
    model, meta = load_run(out / "baseline", "baseline")
    for k, v in gpt_sd.items():
        assert torch.equal(model.state_dict()[k], v), k
    g = meta["gpt"]
    # grid from --image-size and the tokenizer, classes and vocabulary from the tensors
    assert (g["grid"], g["num_classes"], g["vocab_size"], g["causal"]) == (SIZE // 4, NCLS, 4096, True)
    assert meta["codes"]["tokenizer_fingerprint"] == codebook_fingerprint(vq)
    # the release format, with the tokenizer found relative to the run (the import stays relocatable)
    assert (meta["format"], meta["format_version"], meta["kind"]) == ("coarse2fine", 1, "gpt")
    assert meta["tokenizer"] == {"fingerprint": codebook_fingerprint(vq), "path": "../tokenizer"}
    assert meta["source"]["sha256"] == hashlib.sha256((root / "c2i_B_256.pt").read_bytes()).hexdigest()


def _fails(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert "weights_only=False" not in err, err  # never point users at the unsafe option


def test_import_errors_name_the_problem(files, tmp_path, capsys):
    root, out, vq_sd, gpt_sd = files
    vq, gpt = str(root / "vq_ds16_c2i.pt"), str(root / "c2i_B_256.pt")
    base = ["import-llamagen", "--image-size", str(SIZE)]
    _fails(capsys, base + ["--tokenizer", str(out / "tokenizer"), "--gpt", gpt, "--preset", "GPT-small",
                           "--out", str(tmp_path / "a")], "(GPT-tiny), but --preset GPT-small")
    _fails(capsys, base + ["--vq", vq, "--vq-preset", "VQ-small", "--out", str(tmp_path / "b")],
           "is a VQ-tiny / VQ-64-f4 tokenizer, not VQ-small")  # the same weights fit both presets
    _fails(capsys, base + ["--vq", gpt, "--vq-preset", "VQ-tiny", "--out", str(tmp_path / "c")],
           "is a GPT checkpoint; pass it as --gpt")
    _fails(capsys, base + ["--vq", vq, "--vq-preset", "VQ-tiny", "--out", str(out)], "already exists")
    broken = dict(gpt_sd)
    broken.pop("norm.weight")
    broken["layers.0.attention.extra"] = torch.zeros(2)
    torch.save({"model": broken}, tmp_path / "broken.pt")
    _fails(capsys, base + ["--tokenizer", str(out / "tokenizer"), "--gpt", str(tmp_path / "broken.pt"),
                           "--preset", "GPT-tiny", "--out", str(tmp_path / "d")],
           "missing keys ['norm.weight']; unexpected keys ['layers.0.attention.extra']")
    torch.save({"model": llamagen_gpt_state(vocab=512)}, tmp_path / "v512.pt")
    _fails(capsys, base + ["--tokenizer", str(out / "tokenizer"), "--gpt", str(tmp_path / "v512.pt"),
                           "--preset", "GPT-tiny", "--out", str(tmp_path / "e")], "predicts 512 codes")
    torch.save({"model": gpt_sd, "extra": NotAWeight()}, tmp_path / "evil.pt")
    _fails(capsys, base + ["--tokenizer", str(out / "tokenizer"), "--gpt", str(tmp_path / "evil.pt"),
                           "--preset", "GPT-tiny", "--out", str(tmp_path / "f")], "refused for safety")
    # a failed --gpt import leaves no half-written tokenizer behind
    _fails(capsys, base + ["--vq", vq, "--vq-preset", "VQ-tiny", "--gpt", gpt, "--preset", "GPT-B",
                           "--out", str(tmp_path / "g")], "--preset GPT-B")
    assert not (tmp_path / "g" / "tokenizer").exists()


def test_ten_crop_positions_and_mirror():
    arr = np.arange(6 * 8 * 3, dtype=np.int64).reshape(6, 8, 3).astype(np.uint8)
    c = ten_crop(arr, 4)  # [10, 4, 4, 3]
    assert c.shape == (10, 4, 4, 3)
    assert np.array_equal(c[0], arr[:4, :4]) and np.array_equal(c[1], arr[:4, 4:])
    assert np.array_equal(c[2], arr[2:, :4]) and np.array_equal(c[3], arr[2:, 4:])
    assert np.array_equal(c[4], arr[1:5, 2:6])
    mirror = arr[:, ::-1]
    for k in range(5):
        assert np.array_equal(c[5 + k], ten_crop(mirror, 4)[k])


def _image_folder(root, counts):
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            h, w = rng.integers(18, 40, 2)
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_cluster_extract_and_train_on_imported_tokenizer(files, tmp_path, capsys):
    root, out, _, _ = files
    tok = out / "tokenizer"
    assert main(["cluster", "--tokenizer", str(tok), "--clusters", "16", "--out", str(tmp_path / "cmap")]) == 0
    from coarse2fine.tokenizer.clustering import CoarseMap

    cmap = CoarseMap.load(tmp_path / "cmap" / "coarse_map.safetensors")
    assert cmap.fingerprint == codebook_fingerprint(load_vq(tok)) and cmap.num_coarse == 16

    imgs = tmp_path / "imgs"
    _image_folder(imgs, {"zebra": 3, "ant": 2, "moose": 2})  # class ids follow sorted names
    codes = tmp_path / "codes"
    # a first call that stops after 4 images (as a kill would): shard 0 done, shard 1 partial
    r = extract_tencrop(tok, imgs, codes, shard_size=3, batch_size=2, num_workers=0, progress=False,
                        stop_after_images=4)
    assert not r["complete"] and (codes / "shards" / "00001.partial.npy").exists()
    assert main(["extract-codes-imagenet", "--tokenizer", str(tok), "--data-root", str(imgs), "--out", str(codes),
                 "--shard-size", "3", "--batch-size", "2", "--workers", "0", "--no-progress"]) == 0
    assert "complete" in capsys.readouterr().out
    store = ShardedCodeStore(codes)
    v = 20  # ten crops x crop ranges 1.1 and 1.05
    assert len(store) == 7 * v and store.meta["count"] == 7 * v and store.meta["classes"] == ["ant", "moose", "zebra"]
    files_json = json.loads((codes / "files.json").read_text())
    assert files_json["files"][0].startswith("ant/") and files_json["files"][-1].startswith("zebra/")
    assert list(store.labels[np.arange(0, 7 * v, v)]) == [0, 0, 1, 1, 2, 2, 2]
    vq = load_vq(tok)
    for i in (0, 4, 6):  # every shard, compared with encoding the crops directly
        crops = image_variants(imgs / files_json["files"][i], SIZE, (1.1, 1.05))
        direct = vq.encode(torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1).reshape(v, -1)
        assert np.array_equal(store.codes[np.arange(i * v, (i + 1) * v)], direct.numpy()), i
    # the stage trainer reads the sharded store directly
    mcfg = stage_config("GPT-tiny", "baseline", 4096, 0, 3, SIZE // 4)
    s = train("baseline", mcfg, TrainConfig(steps=2, batch_size=8, dtype="fp32"), codes, tmp_path / "run",
              progress=False)
    assert s["steps_this_run"] == 2 and math.isfinite(s["loss"])


# ---- LlamaGen sampling semantics ---------------------------------------------------------------

def hf_top_k_top_p(logits, top_k, top_p):
    """HF / LlamaGen filter: keep the top-k, then the smallest prefix of the sorted distribution whose
    mass reaches top_p (the token crossing the threshold is kept)."""
    logits = logits.clone()
    if top_k > 0:
        logits[logits < torch.topk(logits, top_k)[0][..., -1, None]] = -float("inf")
    if top_p < 1.0:
        srt, order = torch.sort(logits, descending=True)
        drop = torch.cumsum(F.softmax(srt, dim=-1), dim=-1) > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        logits[drop.scatter(1, order, drop)] = -float("inf")
    return logits


@torch.no_grad()
def llamagen_greedy(model, cond, n, cfg_scale, cfg_interval):
    """LlamaGen's generate() with argmax sampling, re-running the full prefix at every step.
    Guidance when cfg_scale > 1: [cond; null] batch; the first token always guided, decode step i
    (token i + 1) guided until i > cfg_interval (cfg_interval -1: always)."""
    use = cfg_scale > 1.0
    x_cond = torch.cat([cond, torch.full_like(cond, model.cfg.num_classes)]) if use else cond
    toks = torch.empty(len(x_cond), 0, dtype=torch.long)
    out, flag = [], True
    for t in range(n):
        logits = model(toks if t else None, x_cond)[:, -1].float()
        if use:
            if t >= 1 and cfg_interval > -1 and (t - 1) > cfg_interval:
                flag = False
            c, u = logits.chunk(2)
            logits = u + (c - u) * cfg_scale if flag else c
        nxt = logits.argmax(-1)
        out.append(nxt)
        toks = torch.cat([toks, (nxt.repeat(2) if use else nxt)[:, None]], 1)
    return torch.stack(out, 1)


def test_filters_match_llamagen():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 300, generator=g) * 3
    for k, p in [(0, 0.9), (0, 0.5), (20, 1.0), (20, 0.8), (1, 1.0), (0, 0.999)]:
        ours, ref = filter_logits(logits, k, p), hf_top_k_top_p(logits, k, p)
        assert torch.equal(torch.isinf(ours), torch.isinf(ref)), (k, p)


def test_baseline_sampler_follows_llamagen_generate(files):
    _, out, _, _ = files
    pipe = ARPipeline.from_runs(out / "baseline")
    cond = torch.tensor([0, 3, 4, 1])
    n = pipe.model.cfg.seq_len
    for scale, c in [(2.0, -1), (2.0, 0), (2.0, 5.5), (1.0, -1)]:
        opts = StageSampling(temperature=1.0, top_k=1, cfg_scale=scale, cfg_interval=cfg_interval_from_llamagen(c))
        ours = pipe(cond, opts, seed=0, decode_images=False).codes
        assert torch.equal(ours, llamagen_greedy(pipe.model, cond, n, scale, c)), (scale, c)


# ---- FID sampling at scale ---------------------------------------------------------------------

def _sample_fid_flags(out, baseline_dir, n=10):
    return ["sample-fid", "--baseline", str(baseline_dir), "--num-samples", str(n), "--batch-size", "4",
            "--seed", "7", "--device", "cpu", "--no-progress", "--out", str(out)]


def test_sample_fid_balanced_resumable_and_world_size_independent(files, tmp_path):
    _, out, _, _ = files
    one = tmp_path / "one"
    assert main(_sample_fid_flags(one, out / "baseline")) == 0
    pngs = sorted((one / "samples").glob("*.png"))
    labels = [int(p.stem.split("_c")[1]) for p in pngs]
    assert len(pngs) == 10 and np.bincount(labels).tolist() == [2] * NCLS  # exactly N / C per class
    npz = np.load(one / "samples.npz")
    assert npz["arr_0"].shape == (10, SIZE, SIZE, 3) and npz["arr_0"].dtype == np.uint8
    assert all(np.array_equal(npz["arr_0"][i], np.asarray(Image.open(p))) for i, p in enumerate(pngs))
    assert npz["labels"].tolist() == labels

    # two processes give the same images (chunks are seeded by index, not by rank)
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "coarse2fine.cli", *_sample_fid_flags(two, out / "baseline")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert np.array_equal(np.load(two / "samples.npz")["arr_0"], npz["arr_0"])
    assert json.loads((two / "fid_run.json").read_text())["summary"]["world_size"] == 2

    # a killed run: some PNGs and the npz missing -> only their chunks are sampled again, identically
    for p in (pngs[1], pngs[9]):
        p.unlink()
    (one / "samples.npz").unlink()
    assert main(_sample_fid_flags(one, out / "baseline")) == 0
    summary = json.loads((one / "fid_run.json").read_text())["summary"]
    assert summary["sampled_this_run"] == 4 + 2  # chunk 0 (4 images) and chunk 2 (2 images)
    assert np.array_equal(np.load(one / "samples.npz")["arr_0"], npz["arr_0"])
    # other settings in the same folder are refused instead of mixing two sample sets
    assert main(_sample_fid_flags(one, out / "baseline")[:-1] + [str(one), "--cfg", "3.0"]) == 2


@pytest.mark.slow  # one more torchrun launch
def test_tencrop_extraction_two_processes_equals_one(files, tmp_path):
    _, out, _, _ = files
    imgs = tmp_path / "imgs"
    _image_folder(imgs, {"b": 3, "a": 4})
    flags = ["--tokenizer", str(out / "tokenizer"), "--data-root", str(imgs), "--shard-size", "2", "--batch-size", "2",
             "--workers", "0", "--crop-ranges", "1.1", "--no-progress", "--device", "cpu"]
    assert main(["extract-codes-imagenet", *flags, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "coarse2fine.cli", "extract-codes-imagenet", *flags, "--out", str(tmp_path / "two")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    a, b = ShardedCodeStore(tmp_path / "one"), ShardedCodeStore(tmp_path / "two")
    assert len(a) == len(b) == 7 * 10 and a.meta["classes"] == ["a", "b"]
    assert np.array_equal(np.asarray(a.codes), np.asarray(b.codes))
    assert np.array_equal(np.asarray(a.labels), np.asarray(b.labels))
