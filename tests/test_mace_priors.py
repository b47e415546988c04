"""The PriorConfig fields of the MACE-TNP paper priors (issue 13) and the shipped mace-* configs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from pipeline_lib.priors import PriorConfig, sample_split_range
from pipeline_lib.priors import mechanisms
from pipeline_lib.priors.config import PriorConfigError
from pipeline_lib.priors.oracle import TrueSCM
from pipeline_lib.taskdata import restrict, task_slice

REPO = Path(__file__).resolve().parents[1]

#: content hash (16 hex) and sha256 (16 hex) of test tasks 0-1 of every earlier prior, computed
#: with the code before the new fields existed: the fields must change neither
BEFORE = {
    "bge-2node.yaml": ("ae45d38e22d6207a", "40b100f250c59572"),
    "bge-3node.yaml": ("e385e44e8d0053da", "87a00685969679c5"),
    "condfip-lin-10.yaml": ("41bb9169cebe99da", "73a6eccb436f58c3"),
    "condfip-rff-20.yaml": ("77720d10f822bd76", "99d9c3730d2ecd2c"),
    "er-20node.yaml": ("b3872651e205c3bb", "0e07555ca6156a78"),
    "gp-3node.yaml": ("d6acbfcdf3b7e65d", "ddeac28295233f85"),
    "grn-10node.yaml": ("06e901d85fc57e61", None),
    "lin-3node-strong.yaml": ("b644746d6020d2e9", "81a90664a6dc5807"),
    "metacadi-gp.yaml": ("6c09682edf1cbc2c", "633f87d39f0c0da9"),
    "nn-3node.yaml": ("dbd7176e723daa78", "d131c62690e72b3a"),
}


def _digest(batch: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(batch):
        h.update(key.encode())
        h.update(np.ascontiguousarray(batch[key]).tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_existing_priors_keep_hash_and_bytes(name):
    cfg = PriorConfig.from_yaml(REPO / "configs/priors" / name)
    want_hash, want_bytes = BEFORE[name]
    assert cfg.content_hash()[:16] == want_hash
    if want_bytes is not None:
        assert _digest(sample_split_range(cfg, "test", 0, 2)) == want_bytes


def _cfg(**mech) -> dict:
    return {"name": "t", "graph": {"kind": "erdos_renyi", "n_nodes": 3, "expected_parents": 1.0},
            "mechanism": {"kind": "nn", **mech}, "noise": {"scale_min": 0.2, "scale_max": 0.4},
            "interventions": {"n_regimes": 3}, "n_obs": 300, "n_int": 400,
            "splits": {"train": 1, "val": 1, "test": 4}}


def test_new_fields_hash_only_when_set():
    plain = PriorConfig.from_dict(_cfg())
    explicit = PriorConfig.from_dict(_cfg(nn_layers=1, nn_input_scale=None, nn_bias_scale=1.0, gp_linear_scale=0.0,
                                          node_standardize=False))
    assert explicit.content_hash() == plain.content_hash() and explicit.to_json() == plain.to_json()
    hashes = {plain.content_hash()}
    for field, value in [("nn_layers", 2), ("nn_input_scale", 1.0), ("nn_bias_scale", 0.5),
                         ("gp_linear_scale", 1.0), ("node_standardize", True)]:
        cfg = PriorConfig.from_dict(_cfg(**{field: value}))
        assert f'"{field}"' in cfg.to_json()
        hashes.add(cfg.content_hash())
    assert len(hashes) == 6


@pytest.mark.parametrize("field,value,message", [
    ("nn_layers", 0, "mechanism.nn_layers=0"), ("nn_input_scale", -1.0, "mechanism.nn_input_scale"),
    ("gp_linear_scale", -0.5, "mechanism.gp_linear_scale"),
])
def test_bad_values_name_the_field(field, value, message):
    with pytest.raises(PriorConfigError, match=message):
        PriorConfig.from_dict(_cfg(**{field: value}))
    with pytest.raises(PriorConfigError, match="node_standardize"):
        PriorConfig.from_dict({**_cfg(), "mechanism": {"kind": "grn", "node_standardize": True}})


def test_deeper_nets_keep_the_first_layer_draws():
    adj = np.triu(np.ones((3, 3)), 1)
    one = mechanisms.draw_params(PriorConfig.from_dict(_cfg()).mechanism, adj, 3, np.random.default_rng(1))
    two = mechanisms.draw_params(PriorConfig.from_dict(_cfg(nn_layers=3)).mechanism, adj, 3, np.random.default_rng(1))
    for key in ("u", "c", "v"):
        np.testing.assert_array_equal(one[key], two[key])
    assert two["w_deep"].shape == (3, 2, 16, 16) and two["c_deep"].shape == (3, 2, 16)


def test_gp_linear_kernel_is_unbounded():
    """With the RBF part off, f_j is exactly linear in the parents: f(2x) = 2 f(x)."""
    cfg = PriorConfig.from_dict({**_cfg(), "mechanism": {"kind": "gp", "gp_amplitude": 0.0, "gp_linear_scale": 2.0}})
    adj = np.zeros((3, 3))
    adj[0, 2] = adj[1, 2] = 1
    p = {k: v[None] for k, v in mechanisms.draw_params(cfg.mechanism, adj, 3, np.random.default_rng(0)).items()}
    x = np.random.default_rng(1).normal(size=(1, 50, 3)) * 100
    f1 = mechanisms.evaluate(cfg.mechanism, p, adj[None], x, 2)
    np.testing.assert_allclose(mechanisms.evaluate(cfg.mechanism, p, adj[None], 2 * x, 2), 2 * f1, rtol=1e-12)
    np.testing.assert_allclose(f1[0], x[0, :, :2] @ p["lin"][0, :2, 2], rtol=1e-12)


@pytest.mark.parametrize("kind", ["nn", "linear", "gp"])
def test_node_standardize_standardises_inside_the_scm_and_the_oracle_follows(kind):
    mech = {"kind": kind, "node_standardize": True, **({"nn_layers": 2, "nn_input_scale": 1.0} if kind == "nn" else {})}
    cfg = PriorConfig.from_dict({**_cfg(), "mechanism": mech, "standardize": False})
    batch = sample_split_range(cfg, "test", 0, 4)
    x = batch["x_obs"].astype(np.float64)  # raw = the SCM's own units: already standardised
    np.testing.assert_allclose(x.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=1), 1.0, atol=1e-5)
    # the oracle redraws the same SCM: its x_obs check passes and its interventional law is the
    # stored one (mean of every outcome within 4 standard errors of the 400 stored samples)
    for t in range(2):
        task = task_slice(batch, t)
        scm = TrueSCM(cfg, "test", t, n_mc=2000, check_x_obs=restrict(task)["x_obs"])
        for k in range(3):
            j = int(np.flatnonzero(task["int_targets"][k])[0])
            a = float(task["int_values"][k, j])
            draws = scm.sample_interventional(j, a, 20000, np.random.default_rng(k))
            stored = task["x_int"][k].astype(np.float64)
            se = stored.std(axis=0) / np.sqrt(len(stored)) + 1e-9
            assert np.all(np.abs(draws.mean(axis=0) - stored.mean(axis=0)) < 4 * se + 1e-6)


def test_beyond_range_values_lie_outside_the_observed_range():
    cfg = PriorConfig.from_dict({**_cfg(), "interventions": {"n_regimes": 3, "value_dist": "beyond_range",
                                                              "value_low": 0.0, "value_high": 1.0}})
    batch = sample_split_range(cfg, "test", 0, 4)
    lo, hi = batch["x_obs"].min(axis=1), batch["x_obs"].max(axis=1)  # (T, d)
    for t in range(4):
        for k in range(3):
            j = int(np.flatnonzero(batch["int_targets"][t, k])[0])
            a = batch["int_values"][t, k, j]
            assert a > hi[t, j] - 1e-5 or a < lo[t, j] + 1e-5


@pytest.mark.parametrize("name", ["mace-nn-3node", "mace-gp-3node", "mace-20node", "mace-5-20"])
def test_shipped_mace_priors_load_and_sample(name):
    cfg = PriorConfig.from_yaml(REPO / "configs/priors" / f"{name}.yaml")
    assert cfg.mechanism.node_standardize and cfg.description
    small = PriorConfig.from_dict({**cfg.model_dump(mode="json"), "splits": {"train": 1, "val": 1, "test": 2}})
    batch = sample_split_range(small, "test", 0, 2)
    assert np.isfinite(batch["x_int"]).all() and np.isfinite(batch["x_obs"]).all()


def test_presets_on_the_paper_priors_validate():
    from flows.spec import load_preset
    from pipeline_lib.models.mace_tnp import preset

    for name in ("quick", "mace-paper-3node-cpu", "mace-paper-nn-cpu", "mace-5-20"):
        spec = load_preset(name)
        assert {"empty-graph", "oracle"} <= {b.name for b in spec.baselines}
        assert all(p.startswith("mace-") for p in spec.priors)
    assert preset("paper-5-20").d_model == 256
