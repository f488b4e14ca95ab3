"""save_pretrained / from_pretrained on both pipelines: symmetric (what is saved loads back to the same
samples, and a loaded folder saves again to the same folder), a Hugging Face repo id resolved through
huggingface_hub's cache with the network off, and push_to_hub handing a loadable folder to the hub API."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from coarse2fine.config import UserError
from coarse2fine.pipeline import ARPipeline, CTFPipeline
from coarse2fine.sampling import StageSampling

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = torch.tensor([0, 1, 2, 3])


def _same_folder(a, b):
    """Two release folders hold the same index, configs and tensors (the card may name another folder)."""
    assert json.loads((a / "model_index.json").read_text()) == json.loads((b / "model_index.json").read_text())
    subs = sorted(p.name for p in a.iterdir() if p.is_dir())
    assert subs == sorted(p.name for p in b.iterdir() if p.is_dir())
    for sub in subs:
        assert json.loads((a / sub / "config.json").read_text()) == json.loads((b / sub / "config.json").read_text())
        for f in sorted((a / sub).glob("*.safetensors")):
            x, y = load_file(f), load_file(b / sub / f.name)
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), f"{sub}/{f.name}"


@pytest.mark.parametrize("kind", ["ctf", "baseline"])
def test_save_then_load_gives_the_same_samples_and_saves_again_identically(tiny_runs, tmp_path, kind):
    import shutil

    first_run = shutil.copytree(tiny_runs["coarse" if kind == "ctf" else "baseline"], tmp_path / "run")
    (first_run / "eval_samples.json").write_text(json.dumps({"FD": 123.25, "note": "text is not a score"}))
    pipe = (CTFPipeline.from_runs(first_run, tiny_runs["fine"], tiny_runs["tok"]) if kind == "ctf"
            else ARPipeline.from_runs(first_run, tiny_runs["tok"]))
    cls = type(pipe)
    first = pipe.save_pretrained(tmp_path / "first")
    loaded = cls.from_pretrained(first)
    assert torch.equal(loaded(LABELS, seed=5).codes, pipe(LABELS, seed=5).codes)
    assert torch.equal(loaded(LABELS, seed=5).images, pipe(LABELS, seed=5).images)
    second = loaded.save_pretrained(tmp_path / "second")  # symmetric: a loaded folder saves to the same folder
    _same_folder(first, second)
    card = (second / "README.md").read_text()
    assert "(eval_samples.json): FD 123.2" in card  # the runs' scores travel with the folder, not the run dirs
    assert f"{cls.__name__}.from_pretrained" in card


def test_saved_sampling_defaults_are_the_pipelines_own(tiny_runs, tmp_path):
    pipe = CTFPipeline.from_runs(tiny_runs["coarse"], tiny_runs["fine"])
    pipe.coarse_default, pipe.fine_default = StageSampling(0.5, cfg_scale=1.0), StageSampling(0.7)
    back = CTFPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "p"))
    assert (back.coarse_default, back.fine_default) == (pipe.coarse_default, pipe.fine_default)
    assert torch.equal(back(LABELS, seed=1).codes, pipe(LABELS, seed=1).codes)


def test_save_a_pipeline_built_from_objects(tiny_runs, tmp_path):
    """save_pretrained needs no run directories (diffusers saves from the components): a pipeline built
    from a tokenizer, networks and a coarse map saves, loads back and samples the same."""
    from coarse2fine.checkpoint import load_run, load_vq
    from coarse2fine.tokenizer.clustering import CoarseMap

    vq = load_vq(tiny_runs["tok"])
    coarse, _ = load_run(tiny_runs["coarse"])
    fine, _ = load_run(tiny_runs["fine"])
    pipe = CTFPipeline(vq, coarse, fine, CoarseMap.load(tiny_runs["cmap"]), restricted=True)
    pipe.coarse_default = StageSampling(0.5, cfg_scale=3.0)
    back = CTFPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "ctf"))
    assert back.restricted and back.coarse_default == pipe.coarse_default
    assert torch.equal(back(LABELS, seed=1).codes, pipe(LABELS, seed=1).codes)
    assert "from run `objects`" in (tmp_path / "ctf" / "README.md").read_text()
    baseline, _ = load_run(tiny_runs["baseline"])
    base = ARPipeline(vq, baseline)
    back = ARPipeline.from_pretrained(base.save_pretrained(tmp_path / "base"))
    assert torch.equal(back(LABELS, seed=2).codes, base(LABELS, seed=2).codes)


def test_save_refusals(tiny_runs, tmp_path):
    pipe = ARPipeline.from_runs(tiny_runs["baseline"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(UserError, match="is not empty"):
        pipe.save_pretrained(tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    stage1_only = CTFPipeline.from_runs(tiny_runs["coarse"])
    with pytest.raises(UserError, match="no stage-2 model"):
        stage1_only.save_pretrained(tmp_path / "s1")
    assert not (tmp_path / "s1").exists()
    assert not list(tmp_path.glob(".*partial"))


def _hub_cache(cache, repo_id, folder, commit="0" * 40):
    """Lay `folder` out as huggingface_hub's cache holds a downloaded snapshot of `repo_id`."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    snap.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(folder, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap


def test_repo_id_loads_from_the_hub_cache_with_the_network_off(tiny_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = ARPipeline.from_runs(tiny_runs["baseline"])
    saved = pipe.save_pretrained(tmp_path / "release")
    _hub_cache(tmp_path / "cache", "someone/tiny-baseline", saved)
    got = ARPipeline.from_pretrained("someone/tiny-baseline", cache_dir=tmp_path / "cache", local_files_only=True)
    assert torch.equal(got(LABELS, seed=2).codes, pipe(LABELS, seed=2).codes)
    # not cached and no network: one line naming the repo and the way out
    with pytest.raises(UserError, match="someone/missing: no local folder of that name") as e:
        ARPipeline.from_pretrained("someone/missing", cache_dir=tmp_path / "cache")
    assert "\n" not in str(e.value)
    # a path-looking name that does not exist is never sent to the hub
    with pytest.raises(UserError, match="is not a folder"):
        ARPipeline.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(UserError, match="holds no model_index.json"):
        ARPipeline.from_pretrained(tiny_runs["baseline"])  # a run dir is not a release folder


def test_push_to_hub_uploads_a_folder_that_loads(tiny_runs, tmp_path, monkeypatch):
    import huggingface_hub

    seen = {}

    class FakeApi:  # records what would be sent; the network is never touched
        def __init__(self, token=None):
            seen["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            seen["repo"], seen["private"] = repo_id, private

        def upload_folder(self, repo_id, folder_path, commit_message):
            seen["loaded"] = CTFPipeline.from_pretrained(folder_path)(LABELS, seed=4).codes
            seen["files"] = sorted(os.listdir(folder_path))
            return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    pipe = CTFPipeline.from_runs(tiny_runs["coarse"], tiny_runs["fine"])
    url = pipe.push_to_hub("someone/tiny-ctf", token="t", private=True)
    assert url.endswith("/commit/abc") and seen["repo"] == "someone/tiny-ctf" and seen["private"] is True
    assert seen["files"] == ["README.md", "coarse_map", "model_index.json", "stage1", "stage2", "tokenizer"]
    assert torch.equal(seen["loaded"], pipe(LABELS, seed=4).codes)


def test_the_page_loads_a_release_folder_with_its_class_names(tiny_runs, tmp_path):
    from coarse2fine.apps.app import Explorer

    runs = Explorer.from_runs(tiny_runs["coarse"], tiny_runs["fine"])
    saved = runs.pipe.save_pretrained(tmp_path / "release")
    page = Explorer.from_pretrained(saved)
    assert page.class_names == runs.class_names and not page.class_names[0].startswith("class ")
    assert torch.equal(page.pipe(LABELS, seed=0).codes, runs.pipe(LABELS, seed=0).codes)
