"""Task sampler: contract shapes, determinism, padding, SCM maths, interventions."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import stats

from pipeline_lib.priors import (
    PriorConfig,
    PriorConfigError,
    sample_batch,
    sample_split_range,
    sample_tasks,
    split_seed,
)
from pipeline_lib.priors import mechanisms


def make(**kw) -> PriorConfig:
    cfg = {
        "name": "s",
        "seed": 3,
        "graph": {"kind": "erdos_renyi", "n_nodes": 4, "expected_parents": 1.0},
        "mechanism": {"kind": "linear"},
        "interventions": {"n_regimes": 3, "max_targets": 2, "distinct_targets": False},
        "n_obs": 64,
        "n_int": 16,
        "splits": {"train": 40, "val": 5, "test": 5},
    }
    cfg.update(kw)
    return PriorConfig.from_dict(cfg)


def descendants(adj: np.ndarray) -> np.ndarray:
    """``R[i, j]`` True iff j is a (strict) descendant of i."""
    d = adj.shape[0]
    reach = adj.astype(bool)
    for _ in range(d):
        reach = reach | ((reach.astype(int) @ adj) > 0)
    return reach


# ------------------------------------------------------------------------------ contract
@pytest.mark.parametrize("mech", ["linear", "nn", "gp"])
def test_contract_shapes_and_dtypes(mech):
    c = make(mechanism={"kind": mech}, interventions={"n_regimes": 3, "max_targets": 2, "perturbation_dim": 5})
    out = sample_split_range(c, "train", 0, 6)
    expected = {
        "adjacency": ((6, 4, 4), np.uint8),
        "node_mask": ((6, 4), np.bool_),
        "x_obs": ((6, 64, 4), np.float32),
        "noise_obs": ((6, 64, 4), np.float32),
        "int_targets": ((6, 3, 4), np.bool_),
        "int_values": ((6, 3, 4), np.float32),
        "x_int": ((6, 3, 16, 4), np.float32),
        "perturbation": ((6, 3, 5), np.float32),
        "obs_mean": ((6, 4), np.float32),
        "obs_std": ((6, 4), np.float32),
    }
    assert set(out) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert out[key].shape == shape and out[key].dtype == dtype, key
        if out[key].dtype == np.float32 and key != "int_values":
            assert np.isfinite(out[key]).all(), key
    # standardized: per-node mean 0, std 1 over x_obs
    np.testing.assert_allclose(out["x_obs"].mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out["x_obs"].std(axis=1), 1.0, atol=1e-4)
    # 1..2 targets per regime, values exactly where targets are (hard)
    assert set(out["int_targets"].sum(axis=2).ravel()) <= {1, 2}
    assert (np.isfinite(out["int_values"]) == out["int_targets"]).all()


def test_no_regimes_and_no_perturbation():
    out = sample_split_range(make(interventions={"n_regimes": 0}), "val", 0, 2)
    assert out["int_targets"].shape == (2, 0, 4) and out["x_int"].shape == (2, 0, 16, 4)
    assert "perturbation" not in out


# ------------------------------------------------------------------------------ determinism
def test_chunking_does_not_change_bytes():
    c = make(mechanism={"kind": "nn"}, interventions={"n_regimes": 2, "perturbation_dim": 3})
    whole = sample_split_range(c, "train", 0, 10)
    parts = [sample_split_range(c, "train", a, b) for a, b in ((0, 4), (4, 10))]
    singles = [sample_split_range(c, "train", i, i + 1) for i in range(10)]
    for key in whole:
        assert whole[key].tobytes() == np.concatenate([p[key] for p in parts]).tobytes(), key
        assert whole[key].tobytes() == np.concatenate([p[key] for p in singles]).tobytes(), key


def test_same_seed_same_bytes_other_seed_or_split_differs():
    c = make()
    a, b = sample_split_range(c, "train", 0, 5), sample_split_range(c, "train", 0, 5)
    for key in a:
        assert a[key].tobytes() == b[key].tobytes()
    other = sample_split_range(make(seed=4), "train", 0, 5)
    assert not np.array_equal(a["x_obs"], other["x_obs"])
    val = sample_split_range(c, "val", 0, 5)
    assert not np.array_equal(a["x_obs"], val["x_obs"])
    # the chunk size is storage layout only
    assert sample_split_range(make(chunk_tasks=3), "train", 0, 5)["x_obs"].tobytes() == a["x_obs"].tobytes()


def test_mechanism_change_keeps_graphs():
    lin = sample_split_range(make(), "train", 0, 8)
    gp = sample_split_range(make(mechanism={"kind": "gp"}), "train", 0, 8)
    assert np.array_equal(lin["adjacency"], gp["adjacency"])
    assert np.array_equal(lin["int_targets"], gp["int_targets"])


def test_golden_bytes():
    """Pins the generator: if this fails, the sampled bytes changed -> bump GENERATOR_VERSION
    (stored datasets are named by it) and update the digest."""
    c = make(interventions={"n_regimes": 2, "max_targets": 1})
    out = sample_split_range(c, "test", 0, 3)
    digest = hashlib.sha256(b"".join(out[k].tobytes() for k in sorted(out))).hexdigest()
    assert digest == GOLDEN, digest


GOLDEN = "d70a4790f7e26a655c3ccde4fbbf0d3d57d193256d6561b3e3f009dc8498d8af"


def test_sample_tasks_streaming():
    c = make()
    a = sample_tasks(c, 4, 11)
    b = sample_tasks(c, 4, np.random.default_rng(11))
    assert a["x_obs"].tobytes() == b["x_obs"].tobytes()
    gen = np.random.default_rng(11)
    first, second = sample_tasks(c, 4, gen), sample_tasks(c, 4, gen)
    assert not np.array_equal(first["x_obs"], second["x_obs"])
    with pytest.raises(PriorConfigError, match="n_tasks"):
        sample_tasks(c, 0, 1)


def test_range_errors_name_the_arguments():
    c = make()
    with pytest.raises(PriorConfigError, match="start/stop"):
        sample_split_range(c, "train", 3, 50)
    with pytest.raises(PriorConfigError, match="start/stop"):
        sample_split_range(c, "train", 4, 4)
    with pytest.raises(PriorConfigError, match="split"):
        sample_split_range(c, "holdout", 0, 1)


# ------------------------------------------------------------------------------ padding
def test_node_range_pads_with_zeros_and_no_edges():
    c = make(
        graph={"kind": "erdos_renyi", "n_nodes_min": 2, "n_nodes_max": 6, "expected_parents": 0.5},
        mechanism={"kind": "nn"},
        interventions={"n_regimes": 3, "max_targets": 2},
    )
    out = sample_split_range(c, "train", 0, 40)
    mask = out["node_mask"]
    n = mask.sum(axis=1)
    assert n.min() >= 2 and n.max() <= 6 and len(set(n)) >= 4
    assert (mask == (np.arange(6)[None, :] < n[:, None])).all()  # padding is the last columns
    pad = ~mask
    assert (out["adjacency"][pad[:, :, None].repeat(6, 2)] == 0).all()
    assert (out["adjacency"][pad[:, None, :].repeat(6, 1)] == 0).all()
    for key in ("x_obs", "noise_obs"):
        assert (out[key][np.broadcast_to(pad[:, None, :], out[key].shape)] == 0).all()
    assert (out["x_int"][np.broadcast_to(pad[:, None, None, :], out["x_int"].shape)] == 0).all()
    assert not out["int_targets"][np.broadcast_to(pad[:, None, :], out["int_targets"].shape)].any()
    assert (out["obs_std"][pad] == 1).all() and (out["obs_mean"][pad] == 0).all()
    # real columns are not degenerate
    assert (out["x_obs"].std(axis=1)[mask] > 0.5).all()


# ------------------------------------------------------------------------------ SCM maths
def test_linear_gaussian_covariance_matches_theory():
    c = make(
        graph={"kind": "fully_connected", "n_nodes": 4},
        n_obs=40000,
        standardize=False,
        interventions={"n_regimes": 0},
    )
    out, params = sample_batch(c, [split_seed(c, "train", i) for i in range(3)], return_params=True)
    for t in range(3):
        w, s = params["weights"][t], params["noise_scale"][t]
        assert np.array_equal(w != 0, out["adjacency"][t] == 1)
        inv = np.linalg.inv(np.eye(4) - w)
        theory = inv.T @ np.diag(s**2) @ inv  # (I - W)^-T diag(s^2) (I - W)^-1
        emp = np.cov(out["x_obs"][t].astype(np.float64), rowvar=False)
        scale = np.sqrt(np.outer(np.diag(theory), np.diag(theory)))
        np.testing.assert_allclose(emp / scale, theory / scale, atol=0.04)
        # and the wrong orientation W^T would not fit
        wrong = np.linalg.inv(np.eye(4) - w.T)
        assert np.abs(emp - wrong.T @ np.diag(s**2) @ wrong).max() / scale.max() > 0.1


@pytest.mark.parametrize("standardize", [False, True])
def test_noise_obs_is_the_exogenous_noise(standardize):
    c = make(standardize=standardize, n_obs=200)
    out, params = sample_batch(c, [split_seed(c, "train", i) for i in range(5)], return_params=True)
    x = out["x_obs"].astype(np.float64)
    mean, std = out["obs_mean"].astype(np.float64), out["obs_std"].astype(np.float64)
    raw = x * std[:, None, :] + mean[:, None, :]
    eps = raw - np.einsum("tni,tij->tnj", raw, params["weights"])  # x - W^T x (roots: x = eps)
    np.testing.assert_allclose(eps, out["noise_obs"] * std[:, None, :], atol=2e-4)
    # the noise has the sampled per-node std
    np.testing.assert_allclose(eps.std(axis=1) / params["noise_scale"], 1.0, atol=0.25)


@pytest.mark.parametrize("kind", ["laplace", "uniform"])
def test_noise_kinds_have_unit_variance_shape(kind):
    c = make(noise={"kind": kind, "scale_min": 1.0, "scale_max": 1.0}, n_obs=4000, standardize=False,
             graph={"kind": "erdos_renyi", "n_nodes": 2, "expected_parents": 0.0})
    eps = sample_split_range(c, "train", 0, 4)["noise_obs"].astype(np.float64).reshape(-1)
    assert abs(eps.var() - 1.0) < 0.05
    kurt = stats.kurtosis(eps)  # excess kurtosis: laplace 3, uniform -1.2
    assert abs(kurt - (3.0 if kind == "laplace" else -1.2)) < 0.4
    if kind == "uniform":
        assert np.abs(eps).max() <= np.sqrt(3.0) + 1e-6


def test_gp_random_features_reproduce_the_rbf_kernel():
    """Over mechanism draws, Cov[f(x), f(x')] = amp^2 exp(-(x - x')^2 / (2 l^2)) exactly in
    expectation (any number of features); checked on a 2-node graph 0 -> 1."""
    c = make(mechanism={"kind": "gp", "n_features": 16, "lengthscale_min": 0.7, "lengthscale_max": 0.7,
                        "gp_amplitude": 1.5})
    rng = np.random.default_rng(0)
    adj = np.zeros((2, 2), dtype=np.uint8)
    adj[0, 1] = 1
    draws = [mechanisms.draw_params(c.mechanism, adj, 2, rng) for _ in range(6000)]
    params = {k: np.stack([p[k] for p in draws]) for k in draws[0]}
    pts = np.array([0.0, 0.35, 0.7, 1.4, 3.0])
    x = np.zeros((6000, 5, 2))
    x[:, :, 0] = pts
    f = mechanisms.evaluate(c.mechanism, params, np.broadcast_to(adj, (6000, 2, 2)), x, 1)  # (T, 5)
    emp = f.T @ f / f.shape[0]
    theory = 1.5**2 * np.exp(-((pts[:, None] - pts[None, :]) ** 2) / (2 * 0.7**2))
    np.testing.assert_allclose(emp, theory, atol=0.12)
    # roots get f = 0
    assert (mechanisms.evaluate(c.mechanism, params, np.broadcast_to(adj, (6000, 2, 2)), x, 0) == 0).all()


def test_gp_amplitude_range_is_drawn_per_node():
    """amp ~ U[1, 2] per node: the prior kernel's scale is E[amp^2] = (2^3 - 1) / 3 = 7/3; an
    empty range reproduces the fixed amplitude's bytes (amp is drawn after the other parameters)."""
    c = make(mechanism={"kind": "gp", "n_features": 16, "lengthscale_min": 0.7, "lengthscale_max": 0.7,
                        "gp_amplitude": 1.0, "gp_amplitude_max": 2.0})
    rng = np.random.default_rng(1)
    adj = np.zeros((2, 2), dtype=np.uint8)
    adj[0, 1] = 1
    draws = [mechanisms.draw_params(c.mechanism, adj, 2, rng) for _ in range(6000)]
    params = {k: np.stack([p[k] for p in draws]) for k in draws[0]}
    assert 1.0 <= params["amp"].min() and params["amp"].max() <= 2.0
    x = np.zeros((6000, 2, 2))
    x[:, :, 0] = [0.0, 0.7]
    f = mechanisms.evaluate(c.mechanism, params, np.broadcast_to(adj, (6000, 2, 2)), x, 1)
    emp = f.T @ f / f.shape[0]
    np.testing.assert_allclose(emp, 7 / 3 * np.exp(-np.array([[0, 0.5], [0.5, 0]])), atol=0.15)
    fixed = make(mechanism={"kind": "gp", "gp_amplitude": 1.5})
    empty = make(mechanism={"kind": "gp", "gp_amplitude": 1.5, "gp_amplitude_max": 1.5})
    assert fixed.content_hash() != empty.content_hash()
    a, b = (sample_split_range(cfg, "train", 0, 3)["x_obs"] for cfg in (fixed, empty))
    assert a.tobytes() == b.tobytes()
    with pytest.raises(PriorConfigError, match="gp_amplitude_max"):
        make(mechanism={"kind": "gp", "gp_amplitude": 2.0, "gp_amplitude_max": 1.0})


@pytest.mark.parametrize(("kind", "activation", "lo", "hi"), [
    ("nn", "tanh", 0.05, 1.0), ("nn", "relu", 0.05, 1.0), ("gp", "relu", 0.05, 1.0), ("linear", "relu", 0.0, 1e-20),
])
def test_mechanism_nonlinearity(kind, activation, lo, hi):
    """Share of the variance of f(x) on x in [-2, 2] that a straight line cannot explain,
    median over 200 mechanism draws: 0 for linear, clearly positive for nn and gp."""
    c = make(mechanism={"kind": kind, "activation": activation})
    rng = np.random.default_rng(0)
    adj = np.zeros((2, 2), dtype=np.uint8)
    adj[0, 1] = 1
    draws = [mechanisms.draw_params(c.mechanism, adj, 2, rng) for _ in range(200)]
    params = {k: np.stack([p[k] for p in draws]) for k in draws[0]}
    grid = np.linspace(-2.0, 2.0, 101)
    x = np.zeros((200, 101, 2))
    x[:, :, 0] = grid
    f = mechanisms.evaluate(c.mechanism, params, np.broadcast_to(adj, (200, 2, 2)), x, 1)  # (200, 101)
    design = np.stack([grid, np.ones_like(grid)], axis=1)
    resid = f - (design @ np.linalg.lstsq(design, f.T, rcond=None)[0]).T
    share = np.median(resid.var(axis=1) / f.var(axis=1))
    assert lo <= share <= hi, share


# ------------------------------------------------------------------------------ interventions
def test_hard_interventions_values_descendants_and_non_descendants():
    c = make(
        graph={"kind": "erdos_renyi", "n_nodes": 5, "expected_parents": 1.0},
        interventions={"n_regimes": 5, "max_targets": 1, "value_dist": "uniform_sign",
                       "value_low": 2.0, "value_high": 3.0},
        n_obs=2000, n_int=2000, standardize=True,
    )
    out, params = sample_batch(c, [split_seed(c, "train", i) for i in range(6)], return_params=True)
    checked_nd = checked_de = 0
    for t in range(6):
        reach = descendants(out["adjacency"][t])
        # total causal effect of j on i (raw units): [(I - W)^-1]_{ji}; in obs-std units below
        total = np.linalg.inv(np.eye(5) - params["weights"][t])
        std = out["obs_std"][t]
        # distinct single targets: every node intervened once
        assert (out["int_targets"][t].sum(axis=0) == 1).all()
        for k in range(5):
            j = int(np.flatnonzero(out["int_targets"][t, k])[0])
            value = out["int_values"][t, k, j]
            assert (out["x_int"][t, k, :, j] == value).all()
            assert 2.0 <= abs(value) <= 3.0 + 1e-5  # standardized: value = +-U[2, 3]
            for i in range(5):
                if i == j:
                    continue
                p = stats.ks_2samp(out["x_obs"][t, :, i], out["x_int"][t, k, :, i]).pvalue
                if not reach[j, i]:
                    assert abs(total[j, i]) < 1e-12
                    assert p > 1e-4, (t, k, i)
                    checked_nd += 1
                elif abs(total[j, i]) * std[j] / std[i] > 0.2:
                    # the mean of X_i moves by total * (a - mean_j) >= 0.2 * 2 obs std
                    assert p < 1e-6, (t, k, i)
                    checked_de += 1
    assert checked_nd > 20 and checked_de > 10


def test_soft_interventions_change_the_target_but_not_to_a_constant():
    c = make(interventions={"n_regimes": 4, "kind": "soft", "max_targets": 1, "value_dist": "uniform_sign",
                            "value_low": 2.0, "value_high": 3.0}, n_obs=1000, n_int=1000)
    out = sample_split_range(c, "train", 0, 4)
    assert np.isnan(out["int_values"]).all()
    for t in range(4):
        for k in range(4):
            j = int(np.flatnonzero(out["int_targets"][t, k])[0])
            col = out["x_int"][t, k, :, j]
            assert col.std() > 0.1
            # shifted by 2..3 obs std
            assert 1.5 < abs(col.mean() - out["x_obs"][t, :, j].mean()) < 3.5


def test_perturbation_features_are_a_map_of_the_targets():
    c = make(graph={"kind": "erdos_renyi", "n_nodes": 3, "expected_parents": 0.5},
             interventions={"n_regimes": 6, "max_targets": 1, "perturbation_dim": 4, "perturbation_noise": 0.0})
    out = sample_split_range(c, "train", 0, 5)
    for t in range(5):
        tg, phi = out["int_targets"][t], out["perturbation"][t]
        assert (tg.sum(axis=0) == 2).all()  # 6 regimes cycle twice through the 3 nodes
        for j in range(3):
            same = np.flatnonzero(tg[:, j])
            np.testing.assert_array_equal(phi[same[0]], phi[same[1]])
    noisy = sample_split_range(make(interventions={"n_regimes": 2, "perturbation_dim": 4, "perturbation_noise": 0.1}), "train", 0, 2)
    assert np.isfinite(noisy["perturbation"]).all()


def test_thousand_small_tasks_are_fast():
    import time

    c = PriorConfig.from_dict({"name": "speed", "graph": {"n_nodes": 3, "expected_parents": 0.5},
                               "interventions": {"n_regimes": 3}, "n_obs": 200, "n_int": 100})
    start = time.perf_counter()
    out = sample_tasks(c, 1000, 0)
    assert out["x_int"].shape == (1000, 3, 100, 3)
    assert time.perf_counter() - start < 10.0  # ~1 s on 2 idle cores


def test_counterfactuals_share_the_observational_noise():
    """Linear SCM, single hard target j: x_cf_i - x_obs_i = [(I - W)^-1]_{ji} (a - x_obs_j)."""
    c = make(graph={"kind": "erdos_renyi", "n_nodes": 5, "expected_parents": 1.5},
             interventions={"n_regimes": 5, "max_targets": 1}, standardize=False, counterfactuals=True)
    out, params = sample_batch(c, [split_seed(c, "train", i) for i in range(8)], return_params=True)
    assert out["x_cf"].shape == (8, 5, 64, 5)
    x, cf = out["x_obs"].astype(np.float64), out["x_cf"].astype(np.float64)
    for t in range(8):
        total = np.linalg.inv(np.eye(5) - params["weights"][t])
        for k in range(5):
            j = int(np.flatnonzero(out["int_targets"][t, k])[0])
            a = float(out["int_values"][t, k, j])
            expected = x[t] + np.outer(a - x[t, :, j], total[j])
            np.testing.assert_allclose(cf[t, k], expected, atol=1e-4 * (1 + np.abs(expected).max()))
    # off by default
    assert "x_cf" not in sample_split_range(make(), "train", 0, 1)


def test_bge_mechanism_is_linear_gaussian_with_its_parameters():
    c = make(mechanism={"kind": "bge"}, graph={"kind": "fully_connected", "n_nodes": 3},
             standardize=False, n_obs=40000, interventions={"n_regimes": 0})
    out, params = sample_batch(c, [split_seed(c, "train", i) for i in range(3)], return_params=True)
    for t in range(3):
        w, s, mu = params["weights"][t], params["noise_scale"][t], params["intercepts"][t]
        inv = np.linalg.inv(np.eye(3) - w)
        theory_cov = inv.T @ np.diag(s**2) @ inv
        emp = np.cov(out["x_obs"][t].astype(np.float64), rowvar=False)
        scale = np.sqrt(np.outer(np.diag(theory_cov), np.diag(theory_cov)))
        np.testing.assert_allclose(emp / scale, theory_cov / scale, atol=0.04)
        # mean of x = (I - W^T)^-1 mu
        np.testing.assert_allclose(out["x_obs"][t].mean(axis=0), inv.T @ mu, atol=0.05 * np.sqrt(np.diag(theory_cov)).max())


def test_hard_interventional_distribution_is_the_mutilated_scm():
    """do(X_j = a) in a linear-Gaussian SCM: drop column j of W, set eps_j = a (variance 0):
    mean = (I - W~)^-T a e_j, Cov = (I - W~)^-T diag(s~^2) (I - W~)^-1."""
    c = make(graph={"kind": "fully_connected", "n_nodes": 4}, standardize=False, n_obs=16, n_int=40000,
             interventions={"n_regimes": 4, "max_targets": 1, "value_dist": "uniform_sign"})
    out, params = sample_batch(c, [split_seed(c, "train", i) for i in range(2)], return_params=True)
    for t in range(2):
        for k in range(4):
            j = int(np.flatnonzero(out["int_targets"][t, k])[0])
            a = float(out["int_values"][t, k, j])
            w = params["weights"][t].copy()
            w[:, j] = 0.0
            s2 = params["noise_scale"][t] ** 2
            s2[j] = 0.0
            inv = np.linalg.inv(np.eye(4) - w)
            e = np.zeros(4)
            e[j] = a
            mean, cov = inv.T @ e, inv.T @ np.diag(s2) @ inv
            xs = out["x_int"][t, k].astype(np.float64)
            sd = np.sqrt(np.diag(cov)).max()
            np.testing.assert_allclose(xs.mean(axis=0), mean, atol=0.03 * sd)
            np.testing.assert_allclose(np.cov(xs, rowvar=False), cov, atol=0.04 * sd**2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lin-2node", "lin-3node", "lin-3node-strong", "nn-3node", "gp-3node", "bge-2node", "bge-3node",
                                  "er-20node", "grn-10node"])
def test_shipped_configs_sample_a_full_chunk(name):
    from pathlib import Path

    c = PriorConfig.from_yaml(Path(__file__).parents[1] / "configs" / "priors" / f"{name}.yaml")
    n = min(c.chunk_tasks, c.splits.test)
    out = sample_split_range(c, "test", 0, n)
    assert out["x_obs"].shape == (n, c.n_obs, c.d_max)
    for key in ("x_obs", "x_int", "obs_mean", "obs_std"):
        assert np.isfinite(out[key]).all(), key
    assert (out["int_targets"].sum(axis=2) >= 1).all()
    assert (out["int_targets"].sum(axis=2) <= c.interventions.max_targets).all()
    hard = out["int_targets"] if c.interventions.kind == "hard" else np.zeros_like(out["int_targets"])
    assert (np.isfinite(out["int_values"]) == hard).all()
