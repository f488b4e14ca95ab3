"""The page's model side (apps.app.Explorer) without a browser, on a tiny untrained pipeline."""
import numpy as np
import pytest
import torch

from coarse2fine.apps.app import Explorer, Knobs
from coarse2fine.config import UserError, VQConfig
from coarse2fine.models import Transformer
from coarse2fine.stages import stage_config
from coarse2fine.pipeline import CTFPipeline
from coarse2fine.tokenizer.clustering import cluster_codebook
from coarse2fine.tokenizer.vq import VQModel, codebook_fingerprint

K, C, NCLS = 64, 8, 3


@pytest.fixture(scope="module")
def explorer():
    torch.manual_seed(0)
    vq = VQModel(VQConfig(codebook_size=K, codebook_embed_dim=4, ch=8, ch_mult=(1, 2), z_channels=8,
                          num_res_blocks=1, image_size=8, use_attn=False)).eval()
    grid = vq.cfg.grid
    cmap = cluster_codebook(vq.codebook_normalized(), C, "kmeans", 0, codebook_fingerprint(vq))
    coarse = Transformer(stage_config("GPT-tiny", "coarse", K, C, NCLS, grid)).eval()
    fine = Transformer(stage_config("GPT-tiny", "fine", K, C, NCLS, grid)).eval()
    pipe = CTFPipeline(vq, coarse, fine, cmap, restricted=True)
    return Explorer(pipe, None, ["cat", "dog", "owl"])


def test_generate_then_redraw_keeps_the_coarse_map_and_changes_the_codes(explorer):
    res = explorer.generate(Knobs(class_name="owl", n=3, seed=5))
    assert res.labels.tolist() == [2, 2, 2] and res.coarse.shape == res.codes.shape == (3, 16)
    assert res.images.shape == res.coarse_images.shape == (3, 8, 8, 3) and res.images.dtype == np.uint8
    assert res.baseline is None and {"stage1_s", "stage2_s", "decode_s"} <= set(res.timings)
    # the restricted head keeps every code inside its coarse cluster
    assert torch.equal(explorer.pipe.cmap.coarse_of(res.codes), res.coarse)
    again = explorer.redraw(res)
    assert torch.equal(again.coarse, res.coarse) and np.array_equal(again.coarse_images, res.coarse_images)
    assert not torch.equal(again.codes, res.codes) and again.redraws == 1
    assert torch.equal(explorer.pipe.cmap.coarse_of(again.codes), res.coarse)
    assert set(again.timings) == {"stage2_s", "decode_s"}  # stage 1 did not run
    # each redraw draws a new stage-2 stream; the same redraw number reproduces
    third = explorer.redraw(again)
    assert third.redraws == 2 and not torch.equal(third.codes, again.codes)
    assert torch.equal(explorer.redraw(res).codes, again.codes)
    # same knobs, same seed -> same coarse maps (what the page's baseline comparison relies on)
    assert torch.equal(explorer.generate(Knobs(class_name="owl", n=3, seed=5)).coarse, res.coarse)


def test_coarse_map_colours_are_the_cluster_mean_of_decoded_codes(explorer):
    colors = explorer.cluster_colors()
    assert colors.shape == (C, 3) and colors.dtype == torch.uint8 and explorer.cluster_colors() is colors
    members = explorer.pipe.cmap.members[1]
    members = members[members >= 0]
    rgb = explorer.pipe.vq.decode_codes(members.view(-1, 1, 1)).mean((0, 2, 3))  # [3] in ~[-1, 1]
    assert torch.allclose(colors[1].float(), ((rgb.clamp(-1, 1) + 1) * 127.5).round(), atol=1)
    coarse = torch.arange(16).remainder(C).view(1, 16)
    img = explorer.coarse_images(coarse, 8)  # 4x4 grid -> 8x8 image, 2x2 pixels per cell
    assert img.shape == (1, 8, 8, 3) and np.array_equal(img[0, 2:4, 0:2], np.broadcast_to(colors[4].numpy(), (2, 2, 3)))


@pytest.mark.parametrize("bad, message", [
    (dict(temperature1=0), "stage-1 temperature must be > 0"),
    (dict(top_p1=2), "stage-1 top-p must be in (0, 1]"),
    (dict(temperature2=-1), "stage-2 temperature must be > 0"),
    (dict(top_k2=K + 1), "stage-2 top-k must be in 0..64"),
    (dict(top_k1=1.5), "stage-1 top-k must be a whole number"),
    (dict(n=0), "number of images must be in 1..32"),
    (dict(seed=None), "seed must be a whole number"),
    (dict(cfg=None), "cfg scale is empty; enter a number"),
    (dict(cfg=-1), "stage-1 cfg scale must be >= 0"),
    (dict(class_name="fox"), "unknown class 'fox'; pick one of cat, dog, owl"),
    (dict(decoding="oracle"), "stage-2 decoding must be one of"),
])
def test_bad_values_raise_one_line_user_errors(explorer, bad, message):
    with pytest.raises(UserError) as e:
        explorer.generate(Knobs(**{"class_name": "cat", **bad}))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_loading_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match=r"no trained runs in .*; run `make demo` first, or pass --coarse/--fine"):
        Explorer.from_demo(tmp_path)


def test_app_command_errors_are_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    from coarse2fine.cli import main

    def err(args):
        assert main(["app", *args]) == 2
        text = capsys.readouterr().err
        assert text.count("\n") == 1, text
        return text

    if importlib.util.find_spec("gradio") is not None:
        assert f"no trained runs in {tmp_path}; run `make demo` first" in err(["--demo", str(tmp_path)])
        assert "pass both --coarse and --fine" in err(["--coarse", str(tmp_path)])
        assert "either --pipeline or --coarse/--fine" in err(["--pipeline", str(tmp_path), "--fine", "x"])
        assert "is not a folder" in err(["--pipeline", str(tmp_path / "none")])
        assert "holds no model_index.json" in err(["--pipeline", str(tmp_path)])  # a folder, but no release
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert "pip install -e '.[app]'" in err(["--demo", str(tmp_path)])


@pytest.mark.parametrize("decoding", ["random-member", "centroid-member"])
def test_redraw_with_the_decodings_without_a_stage2_network(explorer, decoding):
    """The page offers every decoding of the library; redraw keeps the coarse maps for each of them."""
    from coarse2fine.sampling import FINE_DECODINGS

    assert decoding in FINE_DECODINGS
    res = explorer.generate(Knobs(class_name="cat", n=2, seed=3, decoding=decoding))
    assert torch.equal(explorer.pipe.cmap.coarse_of(res.codes), res.coarse)
    again = explorer.redraw(res)
    assert torch.equal(again.coarse, res.coarse) and torch.equal(explorer.pipe.cmap.coarse_of(again.codes), res.coarse)
    if decoding == "centroid-member":  # deterministic: the same details every time
        assert torch.equal(again.codes, res.codes)


def test_the_page_samples_the_baseline_with_the_library_defaults(explorer):
    """One set of defaults: the page's knobs start at sampling.py's, and the baseline is drawn at
    LlamaGen's temperature (1.0), not stage 1's 1.1, exactly as ARPipeline with BASELINE_DEFAULT."""
    from coarse2fine.pipeline import ARPipeline
    from coarse2fine.sampling import BASELINE_DEFAULT, CTF_COARSE_DEFAULT, CTF_FINE_DEFAULT

    k = Knobs(class_name="dog", n=2, seed=3)
    assert k.stage1() == CTF_COARSE_DEFAULT and k.stage2() == CTF_FINE_DEFAULT and k.baseline() == BASELINE_DEFAULT
    torch.manual_seed(1)
    base = ARPipeline(explorer.pipe.vq, Transformer(stage_config("GPT-tiny", "baseline", K, C, NCLS,
                                                                 explorer.pipe.vq.cfg.grid)).eval())
    page = Explorer(explorer.pipe, base, ["cat", "dog", "owl"]).generate(k)
    direct = base(torch.tensor([1, 1]), BASELINE_DEFAULT, seed=3)
    assert np.array_equal(page.baseline, direct.images.numpy())
