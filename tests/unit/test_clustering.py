import pytest
import torch

from coarse2fine.config import UserError
from coarse2fine.tokenizer.clustering import CoarseMap, cluster_codebook


def _codebook(k=512, d=8):
    g = torch.Generator().manual_seed(0)
    return torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)


@pytest.mark.parametrize("method", ["kmeans", "random", "balanced", "agglomerative"])
def test_every_code_in_exactly_one_cluster(method):
    cm = cluster_codebook(_codebook(), 16, method, seed=0, fingerprint="fp")
    members = cm.members[cm.members >= 0]
    assert torch.equal(torch.sort(members).values, torch.arange(512))  # each code exactly once
    for j in range(16):
        m = cm.members[j][cm.members[j] >= 0]
        assert torch.all(cm.phi[m] == j)
    assert int(cm.sizes.sum()) == 512 and int((cm.sizes == 0).sum()) == 0
    if method in ("random", "balanced"):
        assert set(cm.sizes.tolist()) == {32}  # equal sizes


@pytest.mark.parametrize("method", ["kmeans", "random", "balanced", "agglomerative"])
def test_clustering_is_deterministic(method):
    a = cluster_codebook(_codebook(), 16, method, seed=3, fingerprint="fp")
    b = cluster_codebook(_codebook(), 16, method, seed=3, fingerprint="fp")
    assert torch.equal(a.phi, b.phi)


def test_kmeans_groups_nearby_codewords_better_than_random():
    x = _codebook()
    def spread(cm):
        return ((x - cm.centroids[cm.phi]) ** 2).sum(-1).mean()
    assert spread(cluster_codebook(x, 16, "kmeans")) < 0.7 * spread(cluster_codebook(x, 16, "random"))


def test_agglomerative_recovers_separated_groups_and_ignores_code_order():
    # 8 tight, far-apart groups of 20 codewords: average linkage must return exactly those groups
    g = torch.Generator().manual_seed(1)
    centres = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1) * 10
    x = (centres.repeat_interleave(20, 0) + 0.01 * torch.randn(160, 16, generator=g)).double()
    cm = cluster_codebook(x, 8, "agglomerative")
    truth = torch.arange(160) // 20
    for j in range(8):
        assert len(set(truth[cm.phi == j].tolist())) == 1 and int((cm.phi == j).sum()) == 20
    # labels are numbered by each cluster's smallest code: the first code is in cluster 0
    assert int(cm.phi[0]) == 0
    perm = torch.randperm(160, generator=g)
    cp = cluster_codebook(x[perm], 8, "agglomerative")
    same = cp.phi[torch.argsort(perm)]  # back to the original code order
    assert all(len(set(same[cm.phi == j].tolist())) == 1 for j in range(8))  # the same partition


def test_cli_cluster_accepts_agglomerative():
    from coarse2fine.cli import build_parser

    args = build_parser().parse_args(["cluster", "--tokenizer", "t", "--out", "o", "--method", "agglomerative"])
    assert args.method == "agglomerative"


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
