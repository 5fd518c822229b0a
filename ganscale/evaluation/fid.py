"""Distances between two sets of feature vectors: FID, KID and precision/recall.

All three take ``[N, D]`` arrays (numpy or torch) and return plain floats, so they work the
same in the classifier's feature space and in Inception's.

- FID (Heusel et al. 2017): ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2)``. The trace of the
  matrix square root is computed as the sum of square roots of the eigenvalues of the
  symmetric PSD matrix ``S1^1/2 S2 S1^1/2`` (same eigenvalues as ``S1 S2``), in float64:
  no scipy needed, and no complex parts to discard as with ``scipy.linalg.sqrtm``.
- KID (Binkowski et al. 2018): the unbiased MMD^2 estimate with the cubic polynomial kernel
  ``k(x, y) = (x.y / D + 1)^3``, averaged over random subsets (as in the reference code).
- Precision/recall (Kynkaanniemi et al. 2019): a feature vector counts as covered if it lies
  inside the k-NN ball (k = 3) of some vector of the other set.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PR_K = 3


def _f64(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {x.shape}")
    return x


def feature_stats(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (float64) of ``features`` [N, D]."""
    x = _f64(features)
    if len(x) < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(x)}")
    return x.mean(0), np.cov(x, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    root1 = _sqrt_psd(sigma1)
    eig = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)
    return max(value, 0.0)  # rounding can leave -1e-12 for identical sets


def fid(features_a: Any, features_b: Any) -> float:
    """FID between two feature sets [N, D] and [M, D]."""
    return frechet_distance(*feature_stats(features_a), *feature_stats(features_b))


def kid(
    features_a: Any,
    features_b: Any,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """Unbiased KID (mean, std over subsets) between two feature sets.

    Each subset draws ``m = min(subset_size, N, M)`` vectors without replacement from each
    set; MMD^2 is estimated without the diagonal terms of the within-set kernels, so its
    expectation is 0 when both sets come from one distribution (it can be negative).
    """
    x, y = _f64(features_a), _f64(features_b)
    d = x.shape[1]
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"KID needs at least 2 feature vectors in each set, got {len(x)} and {len(y)}")
    if m == len(x) == len(y):
        subsets = 1  # every subset would be the whole of both sets
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        kxx = (a @ a.T / d + 1) ** 3
        kyy = (b @ b.T / d + 1) ** 3
        kxy = (a @ b.T / d + 1) ** 3
        values[i] = (
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean()
        )
    return float(values.mean()), float(values.std())


def _pairwise(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    return torch.cat([torch.cdist(a[i : i + chunk], b) for i in range(0, len(a), chunk)])


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    # the k-th nearest neighbour other than the point itself (column 0 of the sort is 0)
    return torch.cat(
        [torch.cdist(x[i : i + 2048], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), 2048)]
    )


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Fraction of ``points`` inside at least one ball (centres, radii)."""
    inside = (_pairwise(points, centres) <= radii[None, :]).any(dim=1)
    return float(inside.float().mean())


def precision_recall(real: Any, fake: Any, k: int = PR_K) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN radii.

    precision: fraction of generated images' features inside the real manifold (quality);
    recall: fraction of real images' features inside the generated manifold (coverage/diversity).
    """
    r = torch.as_tensor(_f64(real))
    f = torch.as_tensor(_f64(fake))
    if min(len(r), len(f)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} feature vectors per set")
    precision = _coverage(f, r, _knn_radii(r, k))
    recall = _coverage(r, f, _knn_radii(f, k))
    return precision, recall


def feature_metrics(
    real: Any, fake: Any, prefix: str, kid_subset_size: int = KID_SUBSET_SIZE, seed: int = 0
) -> dict[str, float]:
    """``{fid_<prefix>, kid_<prefix>, kid_<prefix>_std, precision_<prefix>, recall_<prefix>}``."""
    kid_mean, kid_std = kid(real, fake, subset_size=kid_subset_size, seed=seed)
    precision, recall = precision_recall(real, fake)
    return {
        f"fid_{prefix}": fid(real, fake),
        f"kid_{prefix}": kid_mean,
        f"kid_{prefix}_std": kid_std,
        f"precision_{prefix}": precision,
        f"recall_{prefix}": recall,
    }
