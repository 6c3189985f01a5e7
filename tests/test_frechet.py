"""Fréchet distance: the closed form for Gaussians, scipy on random features, mergeable moments, the bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from avsync_ray.metrics.frechet import (
    FeatureMoments,
    bootstrap_frechet,
    frechet_distance,
    moments_distance,
    weighted_frechet_distance,
)


def test_closed_form_for_gaussians():
    # Diagonal covariances commute: d = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)).value == pytest.approx(expected, rel=1e-10)
    # Equal Gaussians are at distance 0, a pure shift at |shift|^2.
    sigma = np.cov(rng.normal(size=(50, 6)), rowvar=False)
    assert frechet_distance(mu1, sigma, mu1, sigma).value == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(mu1, sigma, mu1 + 2.0, sigma).value == pytest.approx(4.0 * 6, rel=1e-8)


def _scipy_reference(x: np.ndarray, y: np.ndarray) -> float:
    """The official dists.py formula written out: numpy.cov, scipy.linalg.sqrtm, real part."""
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    diff = x.mean(0) - y.mean(0)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n, d", [(200, 16), (30, 64)])  # more rows than dimensions, and fewer (singular covariances)
def test_equals_scipy_on_random_features_in_any_merge_order(n, d):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d)) * 1.5 + 0.3
    reference = _scipy_reference(x, y)
    whole = moments_distance(FeatureMoments.of(x), FeatureMoments.of(y)).value
    parts = [FeatureMoments.of(part) for part in np.array_split(x, 7)]
    merged = parts[3] + parts[0] + parts[6] + parts[1] + parts[5] + parts[2] + parts[4]
    assert merged.n == n and np.allclose(merged.cov, np.cov(x, rowvar=False))
    assert moments_distance(merged, FeatureMoments.of(y)).value == pytest.approx(whole, rel=1e-6)  # sqrtm of singular products: ~1e-9
    assert whole == pytest.approx(reference, rel=1e-7)
    assert weighted_frechet_distance(x, y, np.ones(n)) == pytest.approx(reference, rel=1e-6)


def test_weights_count_rows_that_many_times():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 8)), rng.normal(size=(40, 8)) + 1
    weights = rng.integers(0, 3, 40)
    repeated = _scipy_reference(np.repeat(x, weights, axis=0), np.repeat(y, weights, axis=0))
    assert weighted_frechet_distance(x, y, weights) == pytest.approx(repeated, rel=1e-7)


def test_a_non_finite_square_root_takes_the_official_retry(monkeypatch):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    calls = []
    real_sqrtm = scipy.linalg.sqrtm

    def flaky_sqrtm(matrix):  # the first call fails as sqrtm does on near-singular products (N close to d)
        calls.append(matrix)
        return np.full_like(matrix, np.nan) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(scipy.linalg, "sqrtm", flaky_sqrtm)
    result = frechet_distance(x.mean(0), s1, y.mean(0), s2)
    offset = np.eye(3) * 1e-6
    assert result.eps_retry and np.allclose(calls[1], (s1 + offset) @ (s2 + offset), rtol=0, atol=1e-15)
    assert result.value == pytest.approx(_scipy_reference(x, y), rel=1e-5)


def test_bootstrap_resamples_whole_videos_and_covers_the_estimate():
    rng = np.random.default_rng(4)
    videos = np.repeat(np.arange(30), 3)  # 3 clips per video
    x, y = rng.normal(size=(90, 4)), rng.normal(size=(90, 4)) + 0.5
    value = _scipy_reference(x, y)
    interval = bootstrap_frechet(x, y, videos, samples=200, seed=0)
    assert interval.low < value < interval.high and interval.std > 0
    assert bootstrap_frechet(x, y, videos, samples=200, seed=0) == interval  # seeded: repeatable
