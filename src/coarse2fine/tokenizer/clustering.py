"""Codebook clustering: the CoarseMap phi (fine id -> coarse id) of the CTF paper.

k-means runs on the L2-normalised codewords (LlamaGen's lookup normalises them too, so that is the
geometry in which codes are "close"). Methods:
- "kmeans": scikit-learn KMeans (Lloyd), seeded, deterministic;
- "random": the paper's ablation, a seeded random partition into clusters of near-equal size;
- "balanced": equal cluster sizes (as IAR): k-means centroids, then a capacity-constrained greedy
  assignment by distance, refined for a few rounds;
- "agglomerative": bottom-up hierarchical clustering with average linkage on Euclidean distances of the
  normalised codewords, cut at C clusters (the grouping MASC, arXiv 2510.04220, prefers to k-means).
  It has no randomness: the seed is recorded but changes nothing.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from coarse2fine.config import UserError
from coarse2fine.fileio import atomic_save_safetensors, check_tensor_digest, tensor_digest, text_in_place_of

METHODS = ("kmeans", "random", "balanced", "agglomerative")
KMEANS_SEED_LIMIT = 2 ** 32  # scikit-learn's KMeans takes random_state seeds below it (the --seed of cluster, demo)


def member_table(phi: torch.Tensor, num_coarse: int) -> tuple[torch.Tensor, torch.Tensor]:
    """phi [K] (cluster of each code) -> (members [C, M]: each cluster's codes in ascending order, -1
    padded, M the largest cluster (at least 1); sizes [C]), on phi's device."""
    phi = phi.long()
    sizes = torch.bincount(phi, minlength=num_coarse)
    members = torch.full((num_coarse, max(1, int(sizes.max()))), -1, dtype=torch.long, device=phi.device)
    order = torch.argsort(phi, stable=True)  # codes grouped by cluster, ascending ids inside
    starts = torch.cumsum(sizes, 0) - sizes
    members[phi[order], torch.arange(len(order), device=phi.device) - starts[phi[order]]] = order
    return members, sizes


@dataclass
class CoarseMap:
    """phi [K] (coarse id of each fine code), members [C, M] (-1 padded), sizes [C],
    centroids [C, D] (mean normalised codeword of each cluster), the codebook fingerprint."""

    phi: torch.Tensor
    members: torch.Tensor
    sizes: torch.Tensor
    centroids: torch.Tensor
    fingerprint: str
    method: str
    seed: int
    source: Path | None = field(default=None, compare=False)  # the file it was loaded from (load), if any

    @property
    def num_codes(self) -> int:
        return int(self.phi.numel())

    @property
    def num_coarse(self) -> int:
        return int(self.sizes.numel())

    @classmethod
    def from_assignment(cls, phi: np.ndarray, codewords: np.ndarray, num_coarse: int, fingerprint: str,
                        method: str, seed: int) -> "CoarseMap":
        phi_t = torch.as_tensor(phi, dtype=torch.long)
        members, sizes = member_table(phi_t, num_coarse)
        cw = torch.as_tensor(codewords, dtype=torch.float32)
        cent = torch.zeros(num_coarse, cw.size(1)).index_add_(0, phi_t, cw)
        cent /= sizes.clamp(min=1).unsqueeze(1).float()
        return cls(phi_t, members, sizes, cent, fingerprint, method, seed)

    def coarse_of(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (any shape, fine ids; a tensor, array, list or int) -> coarse ids, same shape. Ids that are not
        codes of the map's codebook are refused (a negative one was read from the end: phi[-1], without a word)."""
        codes = torch.as_tensor(codes)
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise UserError(f"fine code ids must be integers, got {codes.dtype} values; pass the codes as integers")
        if codes.numel():
            lo, hi = torch.aminmax(codes)
            if int(lo) < 0 or int(hi) >= self.num_codes:
                bad = codes[(codes < 0) | (codes >= self.num_codes)].unique()[:4].tolist()
                raise UserError(f"fine code ids must be in 0..{self.num_codes - 1} (the codes of the map's codebook), "
                                f"got {bad}; pass codes of the tokenizer the map was made for")
        return self.phi.to(codes.device)[codes]

    def check_fingerprint(self, fingerprint: str, source: str = "tokenizer") -> None:
        if fingerprint != self.fingerprint:
            raise UserError(
                f"coarse map was built for codebook {self.fingerprint}, but the {source} has codebook "
                f"{fingerprint}; re-run `coarse2fine cluster` on this tokenizer")

    def stats(self) -> dict[str, float]:
        s = self.sizes.float()
        # one cluster has no spread (torch's sample std of one value is nan, with a warning)
        std = s.std().item() if self.num_coarse > 1 else 0.0
        return {"clusters": self.num_coarse, "codes": self.num_codes, "mean_size": s.mean().item(),
                "min_size": int(s.min()), "max_size": int(s.max()), "std_size": std,
                "empty": int((s == 0).sum())}

    @property
    def digest(self) -> str:
        """SHA-256 of the map's tensors: what its file's checksum holds, and what a run trained on the map
        records (config.json "coarse_map" "sha256"), so another map put in its place is recognised."""
        return tensor_digest(self._tensors())

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"phi": self.phi, "members": self.members, "sizes": self.sizes, "centroids": self.centroids}

    def record(self) -> dict:
        """What a run trained on this map records of it (config.json "coarse_map")."""
        return self.stats() | {"fingerprint": self.fingerprint, "method": self.method, "sha256": self.digest}

    def check_recorded(self, recorded: dict | None, path: str | Path, run: str | Path) -> None:
        """Refuse a map that is not the one `run` recorded (by checksum; runs older than the checksum by
        fingerprint, method and cluster sizes): a map swapped in beside a run would be sampled silently."""
        if not isinstance(recorded, dict):
            return
        if recorded.get("sha256"):
            same, what = recorded["sha256"] == self.digest, f"checksum {recorded['sha256'][:12]}"
        else:
            mine = self.record()
            keys = [k for k in ("fingerprint", "method", "clusters", "codes", "min_size", "max_size") if k in recorded]
            same = all(recorded[k] == mine[k] for k in keys) and (
                "std_size" not in recorded or abs(recorded["std_size"] - mine["std_size"]) < 1e-6)
            what = "fingerprint, method and cluster sizes"
        if not same:
            raise UserError(f"coarse map {path} is not the one {run} was trained with (its config.json records "
                            f"another map: {what}); put the run's own map back (the --coarse-map it was trained "
                            "with) or retrain the run on this map")

    def save(self, path: str | Path) -> None:
        meta = {"fingerprint": self.fingerprint, "method": self.method, "seed": str(self.seed),
                "format": "coarse2fine.CoarseMap/1"}
        atomic_save_safetensors(self._tensors(), path, metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "CoarseMap":
        """A map saved by `save`: its file, or a folder holding coarse_map.safetensors (the one place that
        resolves a coarse map's path). Checked: checksum, format; `source` records the file."""
        from safetensors import SafetensorError, safe_open

        p = Path(path)
        if (p / "model_index.json").is_file():  # an exported pipeline (release.py) holds its map as a component
            part = p / "coarse_map"
            raise UserError(f"{p} is an exported pipeline folder, not a coarse map; " + (
                f"pass its coarse map, {part}" if part.is_dir() else "it holds no coarse map (a baseline export)"))
        if p.is_dir():
            p = p / "coarse_map.safetensors"
        if not p.is_file():
            raise UserError(f"coarse map {p} not found; create it with `coarse2fine cluster`")
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
                t = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            why = text_in_place_of(p) or f"cannot read coarse map {p} ({e}); re-run `coarse2fine cluster`"
            raise UserError(why) from e
        try:
            check_tensor_digest(p, t, meta, "re-run `coarse2fine cluster` or copy it again")
        except ValueError as e:
            raise UserError(str(e)) from None
        if meta.get("format") != "coarse2fine.CoarseMap/1" or set(t) != {"phi", "members", "sizes", "centroids"}:
            raise UserError(f"{p} is not a coarse2fine coarse map; create one with `coarse2fine cluster`")
        return cls(t["phi"], t["members"], t["sizes"], t["centroids"], meta["fingerprint"], meta["method"],
                   int(meta["seed"]), p.resolve())


def _kmeans(x: np.ndarray, c: int, seed: int, n_init: int, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=c, n_init=n_init, max_iter=max_iter, random_state=seed, algorithm="lloyd")
    labels = km.fit_predict(x.astype(np.float64))
    return labels.astype(np.int64), km.cluster_centers_


def _balanced(x: np.ndarray, c: int, seed: int, n_init: int, max_iter: int, rounds: int = 5) -> np.ndarray:
    """Capacity-constrained assignment: every cluster gets floor(K/C) or ceil(K/C) codes."""
    k = len(x)
    _, cent = _kmeans(x, c, seed, n_init, max_iter)
    base, extra = divmod(k, c)
    cap = np.full(c, base, dtype=np.int64)
    cap[:extra] += 1
    labels = np.zeros(k, dtype=np.int64)
    for _ in range(rounds):
        d = ((x[:, None, :] - cent[None, :, :]) ** 2).sum(-1)  # [K, C]
        order = np.argsort(d, axis=None, kind="stable")
        labels.fill(-1)
        left = cap.copy()
        todo = k
        for flat in order:
            i, j = divmod(int(flat), c)
            if labels[i] < 0 and left[j] > 0:
                labels[i] = j
                left[j] -= 1
                todo -= 1
                if todo == 0:
                    break
        cent = np.stack([x[labels == j].mean(0) for j in range(c)])
    return labels


def _agglomerative(x: np.ndarray, c: int) -> np.ndarray:
    """Average-linkage tree cut at c clusters; labels renumbered by each cluster's smallest code, so the
    result depends on the codewords only (not on the library's internal label order)."""
    from sklearn.cluster import AgglomerativeClustering

    raw = AgglomerativeClustering(n_clusters=c, linkage="average", metric="euclidean").fit_predict(x)
    first = np.full(c, len(x), dtype=np.int64)
    np.minimum.at(first, raw, np.arange(len(x)))
    rank = np.empty(c, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(c)
    return rank[raw]


def cluster_codebook(codewords: torch.Tensor, num_coarse: int, method: str = "kmeans", seed: int = 0,
                     fingerprint: str = "", n_init: int = 1, max_iter: int = 300) -> CoarseMap:
    """codewords [K, D] (already L2-normalised; a tensor or a numpy array) -> CoarseMap with `num_coarse`
    clusters."""
    try:  # a codebook saved with np.save is as good as the tensor (it was "'int' object is not callable")
        codewords = torch.as_tensor(codewords)
    except (TypeError, ValueError, RuntimeError):
        codewords = None
    if codewords is None:
        got = "values that are not numbers"
    elif codewords.dim() != 2:
        got = f"shape {list(codewords.shape)}"
    elif codewords.dtype == torch.bool or codewords.is_complex():
        got = f"{codewords.dtype} values"
    else:
        got = None if bool(torch.isfinite(codewords).all()) else "nan or inf values"
    if got:
        raise UserError(f"codewords must be a [K, D] table of finite numbers, one row per code (e.g. "
                        f"vq.codebook_normalized()); got {got}")
    k = codewords.size(0)
    if method not in METHODS:
        raise UserError(f"unknown clustering method {method!r}; choose one of {METHODS}")
    if not 1 <= num_coarse <= k:
        raise UserError(f"--clusters must be between 1 and the codebook size {k}, got {num_coarse}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < KMEANS_SEED_LIMIT:
        raise UserError(f"seed must be an integer from 0 to {KMEANS_SEED_LIMIT - 1} (the seeds scikit-learn's k-means "
                        f"takes), got {seed!r}")
    x = codewords.detach().double().cpu().numpy()
    if method == "random":
        rng = np.random.default_rng(seed)
        labels = rng.permutation(np.arange(k) % num_coarse)
    elif method == "kmeans":
        labels, _ = _kmeans(x, num_coarse, seed, n_init, max_iter)
        # k-means may leave a cluster empty when codewords coincide; every coarse id must be usable
        empty = np.setdiff1d(np.arange(num_coarse), labels)
        if len(empty):
            raise UserError(f"k-means left {len(empty)} of {num_coarse} clusters empty (the codebook has "
                            "duplicate codewords); use fewer clusters or --method balanced")
    elif method == "agglomerative":
        if k > 32768:  # the pairwise distances are held in memory: 8 K^2 bytes
            raise UserError(f"agglomerative clustering of {k} codes needs {8 * k * k / 2**30:.0f} GB of distances; "
                            "use --method kmeans")
        labels = _agglomerative(x, num_coarse)
    else:
        if k * num_coarse > 64_000_000:
            raise UserError("balanced clustering of this size needs > 0.5 GB of distances; use --method kmeans")
        labels = _balanced(x, num_coarse, seed, n_init, max_iter)
    return CoarseMap.from_assignment(labels, x, num_coarse, fingerprint, method, seed)


def default_num_coarse(codebook_size: int) -> int:
    """The paper's ratio: 16384 codes -> 512 clusters, i.e. ~32 codes per cluster."""
    return max(1, codebook_size // 32)


def restrict_to_cluster(logits: torch.Tensor, coarse: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Keep, at each position, only the fine codes of that position's cluster.

    logits [B, N, K]; coarse [B, N]; members [C, M] (-1 padded) -> logits [B, N, M] over the
    cluster's members (padding at -inf). Index m of the result is fine code members[coarse, m].
    """
    idx = members.to(logits.device)[coarse]  # [B, N, M]
    out = logits.gather(-1, idx.clamp(min=0))
    return out.masked_fill(idx < 0, float("-inf"))
