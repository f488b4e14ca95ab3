import pytest
import torch

from coarse2fine.config import UserError
from coarse2fine.tokenizer.clustering import CoarseMap, cluster_codebook


def _codebook(k=512, d=8):
    g = torch.Generator().manual_seed(0)
    return torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)


@pytest.mark.parametrize("method", ["kmeans", "random", "balanced"])
def test_every_code_in_exactly_one_cluster(method):
    cm = cluster_codebook(_codebook(), 16, method, seed=0, fingerprint="fp")
    members = cm.members[cm.members >= 0]
    assert torch.equal(torch.sort(members).values, torch.arange(512))  # each code exactly once
    for j in range(16):
        m = cm.members[j][cm.members[j] >= 0]
        assert torch.all(cm.phi[m] == j)
    assert int(cm.sizes.sum()) == 512 and int((cm.sizes == 0).sum()) == 0
    if method != "kmeans":
        assert set(cm.sizes.tolist()) == {32}  # equal sizes


@pytest.mark.parametrize("method", ["kmeans", "random", "balanced"])
def test_clustering_is_deterministic(method):
    a = cluster_codebook(_codebook(), 16, method, seed=3, fingerprint="fp")
    b = cluster_codebook(_codebook(), 16, method, seed=3, fingerprint="fp")
    assert torch.equal(a.phi, b.phi)


def test_kmeans_groups_nearby_codewords_better_than_random():
    x = _codebook()
    def spread(cm):
        return ((x - cm.centroids[cm.phi]) ** 2).sum(-1).mean()
    assert spread(cluster_codebook(x, 16, "kmeans")) < 0.7 * spread(cluster_codebook(x, 16, "random"))


def test_save_load_roundtrip_and_fingerprint_check(tmp_path):
    cm = cluster_codebook(_codebook(), 16, "kmeans", seed=0, fingerprint="abc")
    cm.save(tmp_path / "coarse_map.safetensors")
    back = CoarseMap.load(tmp_path)
    assert torch.equal(back.phi, cm.phi) and torch.equal(back.members, cm.members)
    assert back.fingerprint == "abc" and back.method == "kmeans"
    back.check_fingerprint("abc")
    with pytest.raises(UserError, match="re-run `coarse2fine cluster`"):
        back.check_fingerprint("other")


def test_bad_cluster_counts():
    with pytest.raises(UserError, match="between 1 and the codebook size"):
        cluster_codebook(_codebook(), 0)
    with pytest.raises(UserError, match="not found"):
        CoarseMap.load("/nonexistent/map.safetensors")
