"""Fréchet distances (FID, FVD) from mergeable float64 moments, and their bootstrap over test videos (pure numpy).

:class:`FeatureMoments` keeps ``n``, ``Σx`` and ``Σxxᵀ`` in float64 (as torchmetrics' FID states do), so batches
and actors can be added in any order and the distance is computed once, on the driver. The covariance is the
unbiased one (``numpy.cov``), and :func:`frechet_distance` follows the official ``avgen/evaluations/dists.py``:
``scipy.linalg.sqrtm(Σ1 Σ2)``, retried with 1e-6·I added to both covariances when the result is not finite, an
error when the imaginary part of its diagonal is not negligible, else its real part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

SQRTM_EPS = 1e-6  # the official retry offset


@dataclass
class FeatureMoments:
    """Running float64 sums of feature vectors: merge with ``+``, in any order."""

    n: int
    total: np.ndarray  # Σx (d,)
    outer: np.ndarray  # Σxxᵀ (d, d)

    @classmethod
    def empty(cls, dim: int) -> "FeatureMoments":
        return cls(0, np.zeros(dim), np.zeros((dim, dim)))

    @classmethod
    def of(cls, features: np.ndarray, weights: np.ndarray | None = None) -> "FeatureMoments":
        """Moments of the rows of ``features`` (n, d); ``weights`` counts each row that many times (bootstrap)."""
        x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
        if weights is None:
            return cls(len(x), x.sum(axis=0), x.T @ x)
        w = np.asarray(weights, dtype=np.float64)
        return cls(int(round(w.sum())), w @ x, (x * w[:, None]).T @ x)

    def __add__(self, other: "FeatureMoments") -> "FeatureMoments":
        return FeatureMoments(self.n + other.n, self.total + other.total, self.outer + other.outer)

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.n

    @property
    def cov(self) -> np.ndarray:
        """The unbiased covariance (``numpy.cov(x, rowvar=False)``)."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        return (self.outer - self.n * np.outer(self.mean, self.mean)) / (self.n - 1)


@dataclass(frozen=True)
class FrechetResult:
    value: float
    eps_retry: bool  # the official 1e-6·I retry was needed (near-singular covariances, e.g. N ≈ d)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> FrechetResult:
    """‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr √(Σ1 Σ2), exactly as the official ``frechet_distance``."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    retry = not np.isfinite(covmean).all()
    if retry:
        offset = np.eye(len(sigma1)) * SQRTM_EPS
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: imaginary component {np.max(np.abs(covmean.imag)):.3g} in sqrtm(Σ1 Σ2)")
        covmean = covmean.real
    diff = mu1 - mu2
    return FrechetResult(float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)), retry)


def moments_distance(real: FeatureMoments, generated: FeatureMoments) -> FrechetResult:
    return frechet_distance(real.mean, real.cov, generated.mean, generated.cov)


def _weighted_centered(features: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean, A, c) with Σ = AᵀA / c the unbiased covariance of ``features`` counted ``weights`` times each."""
    keep = weights > 0
    x, w = np.asarray(features, dtype=np.float64)[keep], np.asarray(weights, dtype=np.float64)[keep]
    mean = w @ x / w.sum()
    return mean, np.sqrt(w)[:, None] * (x - mean), w.sum() - 1


def weighted_frechet_distance(real: np.ndarray, generated: np.ndarray, weights: np.ndarray) -> float:
    """The Fréchet distance between the rows of ``real`` and ``generated`` (n, d), each counted ``weights`` times,
    without ``sqrtm``: tr √(Σ1 Σ2) is the nuclear norm of A1 A2ᵀ / √(c1 c2) (an n x n problem) when there are
    fewer rows than dimensions, else Σ √λ(√Σ1 Σ2 √Σ1) (symmetric d x d eigenproblems). Equal to
    :func:`frechet_distance` up to round-off and far faster: what the bootstrap replicates use."""
    mu1, a1, c1 = _weighted_centered(real, weights)
    mu2, a2, c2 = _weighted_centered(generated, weights)
    if max(len(a1), len(a2)) < a1.shape[1]:
        trace_sqrt = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum() / np.sqrt(c1 * c2)
    else:
        values, vectors = np.linalg.eigh(a1.T @ a1 / c1)
        root = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
        trace_sqrt = np.sqrt(np.linalg.eigvalsh(root @ (a2.T @ a2 / c2) @ root).clip(min=0)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (a1**2).sum() / c1 + (a2**2).sum() / c2 - 2 * trace_sqrt)


@dataclass(frozen=True)
class BootstrapInterval:
    low: float
    high: float
    std: float
    samples: int
    confidence: float


def bootstrap_frechet(
    real: np.ndarray,
    generated: np.ndarray,
    groups: np.ndarray,
    samples: int,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapInterval:
    """Percentile interval of the Fréchet distance when the test videos are resampled with replacement.

    ``real`` and ``generated`` are paired feature rows (n, d) (a frame or a clip each); ``groups`` (n,) names the
    test video of each row, so a resampled video brings all of its clips (and frames) on both sides."""
    names, group_index = np.unique(np.asarray(groups), return_inverse=True)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        counts = np.bincount(rng.integers(0, len(names), len(names)), minlength=len(names))
        values.append(weighted_frechet_distance(real, generated, counts[group_index]))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return BootstrapInterval(float(low), float(high), float(np.std(values, ddof=1)) if samples > 1 else 0.0, samples, confidence)
