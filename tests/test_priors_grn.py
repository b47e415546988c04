"""GRN (SERGIO-style) prior: steady state, knockouts, technical noise, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline_lib.priors import PriorConfig, PriorConfigError, sample_split_range
from pipeline_lib.priors import grn


def make(grn_cfg: dict | None = None, **kw) -> PriorConfig:
    cfg = {
        "name": "grn",
        "graph": {"kind": "erdos_renyi", "n_nodes": 5, "expected_parents": 1.0},
        "mechanism": {"kind": "grn", "grn": grn_cfg or {}},
        "interventions": {"n_regimes": 2, "max_targets": 1},
        "n_obs": 60,
        "n_int": 30,
        "standardize": False,
        "splits": {"train": 20, "val": 2, "test": 2},
    }
    cfg.update(kw)
    return PriorConfig.from_dict(cfg)


def test_steady_state_is_a_fixed_point_of_the_dynamics():
    """With q = 0 the Euler steps started at the layer-wise steady state must not move:
    P_j(xbar_c) = lambda * xbar_cj for every gene and cell type."""
    c = make({"noise_q": 0.0, "technical_noise": False, "n_cell_types": 2})
    rng = np.random.default_rng(0)
    adj = np.zeros((4, 4), dtype=np.uint8)
    adj[0, 1] = adj[0, 2] = adj[1, 2] = adj[2, 3] = 1
    params = grn.draw_params(c.mechanism.grn, adj, 4, 12, rng)
    batch = {k: v[None] for k, v in params.items()}
    xbar, h = grn.steady_state_means(c.mechanism.grn, batch)
    assert (xbar > 0).all()
    np.testing.assert_allclose(h[0], xbar[0].mean(axis=0))
    x = grn.simulate(c.mechanism.grn, batch, np.ones((1, 12, 4)), [np.random.default_rng(1)])
    np.testing.assert_allclose(x[0], xbar[0][params["cell_type"]], rtol=1e-9)
    # the master regulator sits at basal / decay
    np.testing.assert_allclose(xbar[0, :, 0], params["basal"][:, 0] / c.mechanism.grn.decay)


def test_knockout_zeroes_the_target_and_silences_an_activated_child():
    c = make({"technical_noise": False, "p_activation": 1.0},
             graph={"kind": "fully_connected", "n_nodes": 2}, n_obs=300, n_int=300,
             interventions={"n_regimes": 2, "max_targets": 1})
    out = sample_split_range(c, "train", 0, 6)
    for t in range(6):
        parent, child = np.argwhere(out["adjacency"][t])[0]
        for k in range(2):
            j = int(np.flatnonzero(out["int_targets"][t, k])[0])
            assert out["int_values"][t, k, j] == 0.0
            assert (out["x_int"][t, k, :, j] == 0).all()
            if j == parent:  # the only regulator is gone: the child decays to ~0
                assert out["x_int"][t, k, :, child].mean() < 0.1 * out["x_obs"][t, :, child].mean()
    assert np.isnan(out["noise_obs"]).all()


def test_counts_are_nonnegative_integers_with_dropout():
    out = sample_split_range(make(), "train", 0, 5)
    x = out["x_obs"]
    assert (x >= 0).all() and (x == np.round(x)).all()
    assert 0.1 < (x == 0).mean() < 0.9  # dropout + Poisson zeros, but not everything
    clean = sample_split_range(make({"technical_noise": False}), "train", 0, 5)["x_obs"]
    assert (clean == 0).mean() < (x == 0).mean()


def test_grn_chunking_is_byte_identical_and_padding_is_zero():
    c = make(graph={"kind": "erdos_renyi", "n_nodes_min": 3, "n_nodes_max": 6, "expected_parents": 1.0},
             standardize=True)
    whole = sample_split_range(c, "train", 0, 6)
    parts = [sample_split_range(c, "train", a, b) for a, b in ((0, 2), (2, 6))]
    for key in whole:
        assert whole[key].tobytes() == np.concatenate([p[key] for p in parts]).tobytes(), key
    pad = ~whole["node_mask"]
    assert (whole["x_obs"][np.broadcast_to(pad[:, None, :], whole["x_obs"].shape)] == 0).all()


def test_grn_config_errors():
    with pytest.raises(PriorConfigError, match="counterfactuals"):
        make(counterfactuals=True)
    with pytest.raises(PriorConfigError, match="mechanism.grn.dt"):
        make({"dt": 2.0})
    with pytest.raises(PriorConfigError, match="mechanism.grn.dropout_percentile"):
        make({"dropout_percentile": 140.0})
