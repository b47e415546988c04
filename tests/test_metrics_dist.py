"""Distribution metrics: NLPID, MMD, energy distance, RMSE, interval coverage."""

import math

import numpy as np
import pytest
import scipy.stats as sps
import torch

from pipeline_lib.metrics import (
    NLPIDResult,
    aggregate_nlpid,
    coverage_table,
    energy_distance,
    interval_coverage,
    median_heuristic_bandwidth,
    mmd_rbf,
    nlpid,
    rmse,
)

# --------------------------------------------------------------------------- NLPID


def test_nlpid_sum_and_mean_from_array_and_callable():
    lp = np.array([-1.0, -2.0, -3.0, -0.5])
    r = nlpid(lp)
    assert r == NLPIDResult(sum=6.5, mean=6.5 / 4, n=4)
    x = np.array([0.0, 1.0, -1.0])
    r2 = nlpid(lambda s: sps.norm.logpdf(s), x)
    expected = -sps.norm.logpdf(x).sum()
    assert r2.sum == pytest.approx(expected) and r2.n == 3
    assert r2.mean == pytest.approx(expected / 3)
    assert nlpid(torch.tensor(lp)).sum == pytest.approx(6.5)


def test_nlpid_true_density_beats_misspecified():
    x = np.random.default_rng(0).normal(size=5000)
    good = nlpid(sps.norm(0, 1).logpdf, x)
    bad = nlpid(sps.norm(1, 2).logpdf, x)
    assert good.sum < bad.sum
    # E[-log N(x; 0, 1)] = (log(2 pi) + 1) / 2 = 1.4189...
    assert good.mean == pytest.approx(0.5 * (math.log(2 * math.pi) + 1), abs=0.03)


def test_nlpid_validation():
    with pytest.raises(ValueError, match="samples is required"):
        nlpid(sps.norm.logpdf)
    with pytest.raises(ValueError, match="samples must be None"):
        nlpid(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="nan"):
        nlpid(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        nlpid(lambda s: np.zeros(2), np.zeros(3))
    assert nlpid(np.array([0.0, -np.inf])).sum == np.inf


def test_aggregate_nlpid_standard_error_by_hand():
    mean, se = aggregate_nlpid([1.0, 2.0, 3.0, 4.0])
    # std(ddof=1) = sqrt(5/3); se = sqrt(5/3) / 2
    assert mean == 2.5 and se == pytest.approx(math.sqrt(5 / 3) / 2)
    results = [nlpid(np.array([-1.0, -1.0])), nlpid(np.array([-3.0, -1.0]))]
    assert aggregate_nlpid(results) == pytest.approx((3.0, 1.0))  # sums 2 and 4
    assert aggregate_nlpid(results, field="mean") == pytest.approx((1.5, 0.5))
    m1, se1 = aggregate_nlpid([7.0])
    assert m1 == 7.0 and math.isnan(se1)
    assert aggregate_nlpid([1.0, np.inf])[0] == np.inf  # infinite tasks are not dropped
    with pytest.raises(ValueError, match="field"):
        aggregate_nlpid(results, field="median")


# --------------------------------------------------------------------------- MMD / energy


def test_mmd_hand_computed_small_case():
    x, y = np.array([0.0, 1.0]), np.array([2.0, 3.0])
    k = lambda d: math.exp(-(d**2) / 2)  # noqa: E731  (sigma = 1)
    expected = k(1) + k(1) - 2 * (k(2) + k(3) + k(1) + k(2)) / 4
    assert mmd_rbf(x, y, bandwidth=1.0) == pytest.approx(expected)
    # median heuristic on pooled {0,1,2,3}: distances 1,2,3,1,2,1 -> median 1.5
    assert median_heuristic_bandwidth(x, y) == pytest.approx(1.5)
    k15 = lambda d: math.exp(-(d**2) / (2 * 1.5**2))  # noqa: E731
    expected15 = 2 * k15(1) - 2 * (2 * k15(2) + k15(3) + k15(1)) / 4
    assert mmd_rbf(x, y) == pytest.approx(expected15)


def test_mmd_same_vs_shifted_and_sign():
    rng = np.random.default_rng(0)
    same = [mmd_rbf(rng.normal(size=300), rng.normal(size=300)) for _ in range(3)]
    shifted = mmd_rbf(rng.normal(size=300), rng.normal(size=300) + 1.0)
    assert max(abs(v) for v in same) < 0.01
    assert shifted > 0.1
    # the unbiased estimator is not clipped: equal distributions give negative values
    rng = np.random.default_rng(1)
    vals = [mmd_rbf(rng.normal(size=(20, 2)), rng.normal(size=(20, 2))) for _ in range(20)]
    assert any(v < 0 for v in vals) and any(v > 0 for v in vals)


def test_mmd_is_symmetric_and_validates():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(50, 3)), rng.normal(size=(40, 3))
    assert mmd_rbf(x, y) == pytest.approx(mmd_rbf(y, x))
    with pytest.raises(ValueError, match="dimension"):
        mmd_rbf(x, y[:, :2])
    with pytest.raises(ValueError, match="y needs at least 2"):
        mmd_rbf(x, y[:1])


def test_energy_distance_matches_scipy_and_separates():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=200), rng.normal(0.5, 1.5, size=150)
    v = energy_distance(x, y, unbiased=False)
    assert v == pytest.approx(sps.energy_distance(x, y) ** 2)
    # U-statistic differs from V-statistic by the within-sample diagonal correction
    n, m = x.size, y.size
    exx = np.abs(x[:, None] - x[None]).sum()
    eyy = np.abs(y[:, None] - y[None]).sum()
    u = energy_distance(x, y)
    assert u == pytest.approx(v + exx / n**2 - exx / (n * (n - 1)) + eyy / m**2 - eyy / (m * (m - 1)))
    same = energy_distance(rng.normal(size=300), rng.normal(size=300))
    shifted = energy_distance(rng.normal(size=300), rng.normal(size=300) + 1.0)
    assert abs(same) < 0.02 and shifted > 0.3


# --------------------------------------------------------------------------- RMSE


def test_rmse_hand_cases():
    pred = np.array([[1.0, 2.0], [3.0, 4.0]])
    true = np.zeros((2, 2))
    assert rmse(pred, true) == pytest.approx(math.sqrt(30 / 4))
    assert rmse(pred, true, node_mask=np.array([1, 0])) == pytest.approx(math.sqrt(5))
    np.testing.assert_allclose(rmse(pred, true, axis=0), [math.sqrt(5), math.sqrt(10)])
    np.testing.assert_allclose(rmse(pred, true, axis=0, scale=np.array([1.0, 2.0])), [math.sqrt(5), math.sqrt(10) / 2])
    # padded node with garbage (nan) is ignored under the mask
    pad = pred.copy()
    pad[:, 1] = np.nan
    assert rmse(pad, true, node_mask=[True, False]) == pytest.approx(math.sqrt(5))
    # a padded node with zero scale is fine when masked, an error when kept
    zero_scale = np.array([1.0, 0.0])
    assert rmse(pred, true, node_mask=[1, 0], scale=zero_scale) == pytest.approx(math.sqrt(5))
    with pytest.raises(ValueError, match="scale must be positive"):
        rmse(pred, true, scale=zero_scale)
    with pytest.raises(ValueError, match="pred has shape"):
        rmse(pred, np.zeros(2))


# --------------------------------------------------------------------------- coverage


def test_interval_coverage_hand_case():
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(interval_coverage([1.0, 0.0], [3.0, 0.5], x), [0.6, 0.2])
    assert interval_coverage(-1.0, 10.0, x) == 1.0
    with pytest.raises(ValueError, match="lower exceeds upper"):
        interval_coverage(2.0, 1.0, x)


def test_true_quantiles_give_nominal_coverage():
    rng = np.random.default_rng(4)
    m = 20000
    x = rng.normal(size=m)
    levels = (0.5, 0.9)
    for pred in (sps.norm.ppf, rng.normal(size=50000)):
        table = coverage_table(pred, x, levels)
        for a in levels:
            assert abs(table[a] - a) < 3 * math.sqrt(a * (1 - a) / m)
    # a too narrow predictive under-covers
    narrow = coverage_table(sps.norm(0, 0.5).ppf, x, levels)
    assert narrow[0.9] < 0.7
