"""Sample-quality metrics on feature vectors and class probabilities (numpy/torch only, no scipy).

- `frechet_distance`: ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), float64, matrix square root by
  symmetric eigen-decomposition (Tr sqrt(S1 S2) = Tr sqrt(S1^(1/2) S2 S1^(1/2)), whose argument is PSD).
- `kernel_distance` (KID): unbiased MMD^2 with the cubic polynomial kernel (x.y/d + 1)^3, averaged over
  random subsets (Binkowski et al. 2018; the torchmetrics / clean-fid defaults).
- `precision_recall`: k-NN manifolds with k = 3 (Kynkaenniemi et al. 2019, as in the ADM evaluator).
- `inception_score`: exp(E_x KL(p(y|x) || p(y))) over 10 splits (ADM), with any classifier's probabilities.
- `class_accuracy`: how often the classifier's top-1 equals the class that was asked for.
All functions take float arrays [N, D] (features) or [N, C] (probabilities) and return Python floats.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch


def _t64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def _finite(f: torch.Tensor, what: str) -> torch.Tensor:
    """f itself; nan or inf (features of a model or extractor that diverged) is one line, not a
    LinAlgError from the eigen-solve or a silent nan / 0 score."""
    rows = f.reshape(f.shape[0] if f.dim() else 1, -1)
    bad = int((~torch.isfinite(rows)).any(1).sum())
    if bad:
        raise ValueError(f"{what} hold nan or inf values ({bad} of {len(rows)} rows): the model or extractor that "
                         "made them diverged; score finite values")
    return f


def _count(value, name: str, least: int = 1) -> int:
    """A count argument as an int (numpy's integers taken); anything else is one line."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


def _pair(feats1, feats2, dtype: torch.dtype, names=("real features", "fake features")):
    """Two finite feature tables [N, D] of one width D, as tensors of `dtype`."""
    f1, f2 = (torch.as_tensor(np.asarray(f), dtype=dtype) for f in (feats1, feats2))
    if f1.dim() != 2 or f2.dim() != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"need two feature tables [N, D] of one width D (one row per image, both from one "
                         f"extractor), got shapes {tuple(f1.shape)} and {tuple(f2.shape)}")
    return _finite(f1, names[0]), _finite(f2, names[1])


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64) of features [N, D]; N >= 2."""
    f = _finite(_t64(features), "features")
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, D], got shape {tuple(f.shape)}")
    mu = f.mean(0)
    centered = f - mu
    sigma = centered.T @ centered / (f.shape[0] - 1)
    return mu.numpy(), sigma.numpy()


def _sqrtm_psd(sigma: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric PSD matrix; tiny negative eigenvalues (round-off) are clipped."""
    w, v = torch.linalg.eigh((sigma + sigma.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2); mu [D], sigma [D, D]. Squared units
    of the features. Exact 0 for identical statistics up to float64 round-off (clipped at 0)."""
    mu1, mu2, s1, s2 = _t64(mu1), _t64(mu2), _t64(sigma1), _t64(sigma2)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"shape mismatch: mu {tuple(mu1.shape)}/{tuple(mu2.shape)}, "
                         f"sigma {tuple(s1.shape)}/{tuple(s2.shape)}")
    r1 = _sqrtm_psd(s1)
    m = r1 @ s2 @ r1  # D, D; symmetric PSD, same non-zero spectrum as s1 @ s2
    tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    d = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr_covmean
    return max(float(d), 0.0)


def frechet_distance_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to features [N1, D] and [N2, D].

    With both N <= D the covariances have low rank: writing S_i = A_i^T A_i (A_i the centred features
    over sqrt(N_i - 1)), S1 S2 has the same non-zero eigenvalues as C C^T with C = A1 A2^T [N1, N2], so
    Tr sqrt(S1 S2) is the sum of C's singular values -- exact, and far cheaper than D x D eigen-solves.
    """
    f1, f2 = _pair(feats1, feats2, torch.float64, ("features", "features"))
    n1, n2, d = f1.shape[0], f2.shape[0], f1.shape[1]
    if max(n1, n2) > d or min(n1, n2) < 2:
        return frechet_distance(*feature_stats(f1), *feature_stats(f2))  # the tables already made and checked
    mu1, mu2 = f1.mean(0), f2.mean(0)
    a1 = (f1 - mu1) / (n1 - 1) ** 0.5  # N1, D
    a2 = (f2 - mu2) / (n2 - 1) ** 0.5  # N2, D
    tr_covmean = torch.linalg.svdvals(a1 @ a2.T).sum()
    dist = (mu1 - mu2).square().sum() + a1.square().sum() + a2.square().sum() - 2 * tr_covmean
    return max(float(dist), 0.0)


def _poly_kernel(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    # float32 matmul (fast), float64 power and sums (the cube amplifies round-off)
    return ((a @ b.T).double() / dim + 1.0) ** 3


def kernel_distance(feats_real: np.ndarray, feats_fake: np.ndarray, subsets: int = 100,
                    subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: mean and std over `subsets` of the unbiased MMD^2 (cubic polynomial kernel).

    Each subset draws min(subset_size, N_real, N_fake) rows without replacement from each set.
    Unbiased, so it can be slightly negative for two samples of the same distribution.
    """
    real, fake = _pair(feats_real, feats_fake, torch.float32)
    subsets, subset_size = _count(subsets, "subsets"), _count(subset_size, "subset_size", 2)
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    dim = real.shape[1]
    if m == len(real) == len(fake):
        subsets = 1  # every subset would be the whole of both sets: one computation, std 0
    gen = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=gen)[:m]]
        y = fake[torch.randperm(len(fake), generator=gen)[:m]]
        kxx, kyy, kxy = _poly_kernel(x, x, dim), _poly_kernel(y, y, dim), _poly_kernel(x, y, dim)
        off = m * (m - 1)
        mmd = ((kxx.sum() - kxx.diagonal().sum()) / off + (kyy.sum() - kyy.diagonal().sum()) / off
               - 2 * kxy.mean())
        scores.append(float(mmd))
    s = np.asarray(scores)
    return float(s.mean()), float(s.std())


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [len(a), len(b)], clipped at 0."""
    d = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None] - 2 * (a @ b.T)
    return d.clamp_(min=0)


def knn_radii(feats: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """Squared distance [N] from each row to its k-th nearest other row (the row itself excluded)."""
    if len(feats) <= k:
        raise ValueError(f"k-NN manifold with k={k} needs more than {k} samples, got {len(feats)}")
    out = []
    for start in range(0, len(feats), chunk):
        d = _sq_dists(feats[start:start + chunk], feats)
        # position k+1 in sorted order: the row itself (distance ~0) comes first
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def manifold_coverage(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor,
                      chunk: int = 1024) -> float:
    """Fraction of query rows inside at least one ball (manifold[i], radius radii[i])."""
    inside = []
    for start in range(0, len(queries), chunk):
        d = _sq_dists(queries[start:start + chunk], manifold)
        inside.append((d <= radii[None]).any(dim=1))
    return float(torch.cat(inside).float().mean())


def precision_recall(feats_real: np.ndarray, feats_fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision (fake inside the real manifold) and recall (real inside the fake manifold)."""
    real, fake = _pair(feats_real, feats_fake, torch.float32)
    k = _count(k, "k")
    precision = manifold_coverage(real, knn_radii(real, k), fake)
    recall = manifold_coverage(fake, knn_radii(fake, k), real)
    return precision, recall


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split of consecutive rows; mean and std over splits.

    probs: [N, C] rows summing to 1. A perfectly confident classifier spread evenly over C classes
    scores C; a constant prediction scores 1.
    """
    p, splits = _t64(probs), _count(splits, "splits")
    if p.dim() != 2 or len(p) < splits:
        raise ValueError(f"need probabilities [N >= splits={splits}, C], got shape {tuple(p.shape)}")
    sums = p.sum(1)
    if not (p >= 0).all() or not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
        raise ValueError(f"probs must be probabilities, rows of values >= 0 summing to 1; got values from "
                         f"{float(p.min()):.3g} to {float(p.max()):.3g}, rows summing to {float(sums.min()):.3g}.."
                         f"{float(sums.max()):.3g}: apply softmax to logits first (logits.softmax(-1))")
    scores = []
    for part in torch.tensor_split(p, splits):
        py = part.mean(0, keepdim=True)  # marginal p(y) of this split
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, py)).sum(1)
        scores.append(float(kl.mean().exp()))
    s = np.asarray(scores)
    return float(s.mean()), float(s.std())


def class_accuracy(probs_or_pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict:
    """Top-1 agreement between the classifier and the requested class.

    probs_or_pred: [N, C] probabilities/logits or [N] predicted ids; target: [N] int.
    Returns {"accuracy": overall, "balanced": mean of per-class, "per_class": {c: acc}, "counts": {c: n}}.
    """
    pred = np.asarray(probs_or_pred)
    if pred.ndim == 2:
        pred = pred.argmax(1)
    target = np.asarray(target).astype(np.int64)
    if pred.shape != target.shape:
        raise ValueError(f"predictions {pred.shape} and targets {target.shape} differ")
    if len(target) and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{target.min()}, {target.max()}]")
    hit = pred == target
    per_class, counts = {}, {}
    for c in range(num_classes):
        sel = target == c
        if sel.any():
            per_class[c] = float(hit[sel].mean())
            counts[c] = int(sel.sum())
    return {"accuracy": float(hit.mean()) if len(hit) else float("nan"),
            "balanced": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
            "per_class": per_class, "counts": counts}


def srgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], channels last [..., 3] -> CIE L*a*b* (D65 white), channels last."""
    rgb = rgb.double()
    lin = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                      [0.2126729, 0.7151522, 0.0721750],
                      [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
    xyz = lin @ m.T / torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
    eps = (6 / 29) ** 3
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def colour_error(originals, recons, grid: int = 8) -> dict[str, float]:
    """Colour error a feature metric cannot hide: both uint8 [N, H, W, 3] image sets average-pooled to
    grid x grid cells, then the mean CIE76 colour difference (delta E in Lab; about 2.3 is a just
    noticeable difference) and the mean absolute RGB difference (0-255 units) over cells."""
    def pooled(a) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(a))
        if t.dtype != torch.uint8 or t.dim() != 4 or t.shape[-1] != 3:
            raise ValueError(f"colour_error takes uint8 [N, H, W, 3] images, got {t.dtype} {tuple(t.shape)}; bring "
                             "the library's [-1, 1] images [N, 3, H, W] to it with "
                             "coarse2fine.data.preprocess.to_uint8(x).permute(0, 2, 3, 1)")
        t = t.permute(0, 3, 1, 2).double() / 255.0
        return torch.nn.functional.adaptive_avg_pool2d(t, grid).permute(0, 2, 3, 1)  # [N, g, g, 3]

    grid = _count(grid, "grid")
    o, r = pooled(originals), pooled(recons)
    if len(o) != len(r):
        raise ValueError(f"colour_error pairs each original with its reconstruction, got {len(o)} originals and "
                         f"{len(r)} reconstructions")
    delta_e = (srgb_to_lab(o) - srgb_to_lab(r)).pow(2).sum(-1).sqrt().mean().item()
    return {"delta_e": delta_e, "rgb_abs": (o - r).abs().mean().item() * 255.0}
