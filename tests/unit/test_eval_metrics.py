"""Image-quality evaluation: metrics behave as a user relies on, the extractor is offline, the
classifier trains and reports held-out accuracy, and `coarse2fine eval` writes its table and JSON."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from coarse2fine.config import UserError
from coarse2fine.eval import metrics as M
from coarse2fine.eval.features import EffNetLite0Features, extract_features


def shapes(n: int, seed: int, res: int = 32) -> np.ndarray:
    """Synthetic 'data set': a coloured rectangle and disc on a flat background, uint8 [n, res, res, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:res, :res]
    out = np.empty((n, res, res, 3), np.uint8)
    for i in range(n):
        img = np.empty((res, res, 3)); img[:] = rng.uniform(150, 255, 3)
        x0, y0 = rng.integers(0, res // 2, 2); w, h = rng.integers(res // 4, res // 2, 2)
        img[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 120, 3)
        cx, cy, r = rng.uniform(res * 0.3, res * 0.7, 2).tolist() + [rng.uniform(res / 8, res / 4)]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        out[i] = img
    return out


def blur(images: np.ndarray, radius: int) -> np.ndarray:
    """Box blur of width 2*radius+1 (edge-padded), uint8 in and out."""
    if radius == 0:
        return images
    k = 2 * radius + 1
    x = np.pad(images.astype(np.float64), ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    c = np.cumsum(np.cumsum(x, 1), 2)
    c = np.pad(c, ((0, 0), (1, 0), (1, 0), (0, 0)))
    s = c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]
    return np.clip(np.round(s / (k * k)), 0, 255).astype(np.uint8)


def noisy(images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(images + rng.normal(0, sigma, images.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On a shared 2-core box, 2 intra-op threads spin against other processes (measured 8 vs 107 img/s).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def extractor():
    return EffNetLite0Features(64)


@pytest.fixture(scope="module")
def feats(extractor):
    """Features of 100 real test images, 100 real train images (another draw of the same distribution)
    and 100 uniform-noise images; all 32 px from the embedded Fashion-MNIST subset."""
    from coarse2fine.data import build_dataset
    from coarse2fine.eval.classifier import dataset_arrays

    a, _ = dataset_arrays(build_dataset("default", 32, split="test", limit_per_class=10))
    b, _ = dataset_arrays(build_dataset("default", 32, split="train", limit_per_class=10))
    noise = np.random.default_rng(3).integers(0, 256, a.shape, dtype=np.uint8)
    return {"a_img": a, "b_img": b, "a": extract_features(extractor, a), "b": extract_features(extractor, b),
            "noise": extract_features(extractor, noise)}


def test_extractor_is_offline_1280d_and_input_format_agnostic(extractor):
    imgs = shapes(4, seed=0)
    f_u8 = extractor(imgs)
    f_float = extractor(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert f_u8.shape == (4, 1280) and extractor.name == "EffNetLite0@64"
    torch.testing.assert_close(f_u8, f_float, atol=1e-3, rtol=1e-3)


def test_set_against_itself_gives_zero_fd_and_kid(feats):
    a = feats["a"]
    assert M.frechet_distance_from_features(a, a) < 1e-6
    kid_noise, _ = M.kernel_distance(a, feats["noise"], subsets=20, subset_size=64)
    # Unbiased MMD^2 is ~0 for two draws of one distribution. For the very same rows it is slightly
    # negative, about -(2/m)(E k(x,x) - E k(x,x')), since the cross term includes every k(x,x).
    kid_self, _ = M.kernel_distance(a, a, subsets=20, subset_size=64)
    kid_same, _ = M.kernel_distance(a, feats["b"], subsets=20, subset_size=64)
    assert kid_noise > 1.0
    assert abs(kid_same) < 0.05 * kid_noise and abs(kid_self) < 0.15 * kid_noise, (kid_self, kid_same, kid_noise)
    # two draws of one distribution are closer than data vs noise (at N=100 in 1280-d most of the
    # former is small-sample bias, hence the loose factor)
    assert M.frechet_distance_from_features(a, feats["b"]) < 0.5 * M.frechet_distance_from_features(a, feats["noise"])


def test_fd_grows_monotonically_with_corruption(extractor, feats):
    def fd(images):
        return M.frechet_distance_from_features(feats["a"], extract_features(extractor, images))

    b = feats["b_img"]
    fd_noise = [fd(noisy(b, s)) for s in (0, 25, 100)]
    fd_blur = [fd(blur(b, r)) for r in (0, 1, 3)]
    assert all(x < y for x, y in zip(fd_noise, fd_noise[1:])), fd_noise
    assert all(x < y for x, y in zip(fd_blur, fd_blur[1:])), fd_blur


def test_fd_matches_torchmetrics_with_the_extractor_offline(extractor, feats):
    """torchmetrics accepts the extractor as `feature=` and runs offline; both agree. (The first 128
    features only: torchmetrics' general eigen-solve on 1280 x 1280 takes seconds.)"""
    from torchmetrics.image.fid import FrechetInceptionDistance

    class First128(torch.nn.Module):
        num_features = 128

        def __init__(self):
            super().__init__()
            self.inner = extractor

        def forward(self, x):
            return self.inner(x)[:, :128]

    fake = blur(feats["b_img"], 2)
    tm = FrechetInceptionDistance(feature=First128(), normalize=False)
    tm.update(torch.from_numpy(feats["a_img"]), real=True)
    tm.update(torch.from_numpy(fake), real=False)
    ours = M.frechet_distance_from_features(feats["a"][:, :128], extract_features(extractor, fake)[:, :128])
    assert float(tm.compute()) == pytest.approx(ours, rel=1e-3)


def test_fd_low_rank_route_equals_eigen_route(feats):
    a, b = feats["a"][:, :256], feats["b"][:40, :256]  # N < D: the singular-value route is taken
    eig = M.frechet_distance(*M.feature_stats(a), *M.feature_stats(b))
    assert M.frechet_distance_from_features(a, b) == pytest.approx(eig, rel=1e-5)


def test_kid_matches_torchmetrics_formula():
    from torchmetrics.image.kid import poly_mmd

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 16)).astype(np.float32), (rng.normal(size=(50, 16)) + 0.5).astype(np.float32)
    ours, _ = M.kernel_distance(x, y, subsets=1, subset_size=50)
    assert ours == pytest.approx(float(poly_mmd(torch.from_numpy(x).double(), torch.from_numpy(y).double())),
                                 rel=1e-4)


def test_precision_recall_self_one_disjoint_zero(feats):
    assert M.precision_recall(feats["a"], feats["a"]) == (1.0, 1.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    assert M.precision_recall(x, x + 100.0) == (0.0, 0.0)  # disjoint supports
    # a mode-dropping generator (one of two far-apart clusters) keeps precision but loses recall
    x[:150, 0] += 30
    p, r = M.precision_recall(x, x[:150].copy())
    assert p == 1.0 and r == pytest.approx(0.5, abs=0.05)
    # real features: another draw of the data is recalled, noise images recall nothing. (Precision of
    # noise is not ~0 with these features: noise maps to a low-norm blob inside the wide k-NN balls of
    # the data, 0.19 even at N=1000 -- recall is the score that exposes it.)
    assert M.precision_recall(feats["a"], feats["b"])[1] > 0.5
    assert M.precision_recall(feats["a"], feats["noise"])[1] < 0.05


def test_inception_score_extremes():
    c = 10
    onehot = np.eye(c)[np.arange(200) % c]  # confident, every split covers all classes evenly
    assert M.inception_score(onehot, splits=10)[0] == pytest.approx(c)
    assert M.inception_score(np.tile(np.eye(c)[3], (200, 1)))[0] == pytest.approx(1.0)
    assert M.inception_score(np.full((200, c), 1 / c))[0] == pytest.approx(1.0)


def test_class_accuracy_per_class():
    res = M.class_accuracy(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), num_classes=4)
    assert res["accuracy"] == 0.75 and res["per_class"] == {0: 1.0, 1: 1.0, 2: 0.5} and 3 not in res["counts"]
    with pytest.raises(ValueError):
        M.class_accuracy(np.array([0]), np.array([7]), num_classes=4)


def test_load_samples_png_names_and_npz(tmp_path):
    from coarse2fine.data.sample_folder import read_samples

    imgs = shapes(3, seed=0, res=16)
    d = tmp_path / "png"
    d.mkdir()
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(d / f"{i:06d}_c{i + 4}.png")
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(d / "grid.png")  # as the samplers write it
    x, y, note = read_samples(d)
    assert np.array_equal(x, imgs) and y.tolist() == [4, 5, 6] and "names" in note and "grid.png" in note
    (d / "000003.png").write_bytes((d / "000000_c4.png").read_bytes())  # one unlabelled file
    assert read_samples(d)[1] is None
    np.savez(tmp_path / "s.npz", arr_0=imgs, labels=np.array([1, 2, 3]))
    assert read_samples(tmp_path / "s.npz")[1].tolist() == [1, 2, 3]
    np.savez(tmp_path / "u.npz", arr_0=imgs)
    assert read_samples(tmp_path / "u.npz")[1] is None
    np.savez(tmp_path / "bad.npz", arr_0=imgs.astype(np.float32))
    with pytest.raises(UserError):
        read_samples(tmp_path / "bad.npz")


def test_train_classifier_then_eval_cli(tmp_path, capsys, monkeypatch):
    """Tiny end-to-end: train-classifier reports held-out accuracy; eval prints every score with N, writes
    JSON, caches the reference and reuses it."""
    from coarse2fine.cli import main
    from coarse2fine.data import build_dataset
    from coarse2fine.eval.classifier import dataset_arrays

    monkeypatch.setenv("COARSE2FINE_CACHE", str(tmp_path / "cache"))
    clf = tmp_path / "clf"
    assert main(["train-classifier", "--data", "default", "--image-size", "16", "--out", str(clf),
                 "--epochs", "1", "--limit-per-class", "20", "--width", "8", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    cfg = json.loads((clf / "config.json").read_text())
    assert "held-out accuracy" in out and 0.0 <= cfg["test"]["accuracy"] <= 1.0
    assert cfg["test"]["count"] == 1000 and (clf / "model.safetensors").is_file()

    test = build_dataset("default", 16, split="test", limit_per_class=4)
    images, labels = dataset_arrays(test)
    np.savez(tmp_path / "samples.npz", arr_0=images, labels=labels)
    args = ["eval", "--samples", str(tmp_path / "samples.npz"), "--data", "default", "--classifier", str(clf),
            "--ref-count", "100", "--kid-subsets", "5", "--json", str(tmp_path / "r.json"), "--threads", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "r.json").read_text())
    names = [r["metric"] for r in res["rows"]]
    assert names == ["FD-EffNetLite0@64", "KID-EffNetLite0@64", "Precision-EffNetLite0@64",
                     "Recall-EffNetLite0@64", "IS-clf", "ClassAcc-clf"]
    assert all(r["n"] == 40 for r in res["rows"]) and res["reference"]["count"] == 100
    assert "FID" not in " ".join(names) and "true FID/IS skipped" in out
    assert len(list((tmp_path / "cache").glob("ref_default_test_16px_EffNetLite0@64_n100.npz"))) == 1
    assert main(args) == 0
    assert "cached" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["rows"][0]["value"] == pytest.approx(res["rows"][0]["value"])


def test_true_fid_needs_both_files_and_rejects_wrong_weights(tmp_path):
    from coarse2fine.eval.inception import check_weights_file
    from coarse2fine.eval.samples import evaluate_images

    torch.save({"conv.weight": torch.zeros(2, 2)}, tmp_path / "not_inception.pth")
    with pytest.raises(UserError, match="not torch-fidelity's FID Inception-v3"):
        check_weights_file(tmp_path / "not_inception.pth")
    with pytest.raises(UserError, match="needs both"):
        evaluate_images(shapes(12, seed=0), None, "default", inception_weights=tmp_path / "x.pth",
                        ref_count=20, use_cache=False, kid_subsets=2, log=lambda s: None)


@pytest.mark.slow  # Inception-v3 at 299 px: ~6 GFLOPs per image on CPU
@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is None,
                    reason="torch-fidelity not installed (pip install --no-deps torch-fidelity==0.4.0)")
def test_true_fid_path_runs_with_a_user_weights_file(tmp_path):
    """The Inception path end to end with a randomly initialised weights file in torch-fidelity's format
    (the real file is never downloaded): the reference batch against itself gives FID ~0."""
    from coarse2fine.eval import inception
    from coarse2fine.eval.samples import evaluate_images

    cls = inception._import_fidelity_inception()
    with pytest.MonkeyPatch.context() as mp:  # build the module without its weights to get a state dict of the format
        mp.setattr(cls, "load_state_dict", lambda self, sd, strict=True: None)
        mp.setattr(torch, "load", lambda *a, **k: {})
        net = cls("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused")
    torch.save(net.state_dict(), tmp_path / "inception.pth")
    imgs = shapes(10, seed=0)
    np.savez(tmp_path / "ref.npz", arr_0=imgs)
    res = evaluate_images(imgs, None, "default", inception_weights=tmp_path / "inception.pth",
                          ref_batch=tmp_path / "ref.npz", ref_count=20, cache_dir=tmp_path, kid_subsets=2,
                          is_splits=2, log=lambda s: None)
    rows = {r["metric"]: r for r in res["rows"]}
    assert rows["FID (Inception-v3)"]["value"] < 1e-3 and rows["FID (Inception-v3)"]["m"] == 10
    assert rows["IS (Inception-v3)"]["value"] >= 1.0


def test_few_samples_are_scored_without_an_inception_score(tmp_path):
    """Without a classifier or Inception weights no IS is computed, so its 10 splits do not set the
    minimum sample count: 4 samples (the ImageNet rehearsal's ADM npz) were refused with 'need at least
    10'. The floor is now precision/recall's k + 1, for the samples and the references alike."""
    from coarse2fine.eval.samples import evaluate_images

    quiet = dict(use_cache=False, kid_subsets=2, log=lambda s: None)
    res = evaluate_images(shapes(4, seed=0), None, "default", ref_count=20, **quiet)
    assert res["rows"][0]["metric"].startswith("FD-") and res["rows"][0]["n"] == 4
    with pytest.raises(UserError, match="need at least 4 samples, got 3"):
        evaluate_images(shapes(3, seed=0), None, "default", ref_count=20, **quiet)
    with pytest.raises(UserError, match="need at least 4 reference images, got 3"):
        evaluate_images(shapes(4, seed=0), None, "default", ref_count=3, **quiet)


def test_colour_error_sees_a_hue_shift_that_keeps_brightness():
    from coarse2fine.eval.metrics import colour_error, srgb_to_lab

    white_red = srgb_to_lab(torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(white_red[0], torch.tensor([100.0, 0.0, 0.0], dtype=torch.float64), atol=1e-3)
    assert torch.allclose(white_red[1], torch.tensor([53.24, 80.09, 67.20], dtype=torch.float64), atol=0.05)
    rng = np.random.default_rng(0)
    green = np.zeros((4, 64, 64, 3), np.uint8)
    green[..., 1] = 160
    brown = green.copy()
    brown[..., 0], brown[..., 1] = 110, 90  # a green turned brown-grey
    noise = np.clip(green.astype(int) + rng.integers(-40, 41, green.shape), 0, 255).astype(np.uint8)
    assert colour_error(green, green) == {"delta_e": 0.0, "rgb_abs": 0.0}
    # pixel noise averages out on the 8x8 grid; a colour drift does not
    assert colour_error(green, brown)["delta_e"] > 10 * colour_error(green, noise)["delta_e"]
