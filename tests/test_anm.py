"""ANM baselines (linear / MLP regression per node on the true graph) recover a planted SCM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline_lib.baselines.anm import ANMConfig, fit_anm, topological_order
from pipeline_lib.posterior import capabilities
from pipeline_lib.priors import PriorConfig
from pipeline_lib.priors.sampler import sample_batch, split_seed
from pipeline_lib.taskdata import restrict, task_slice


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted(kind: str = "linear", n_obs: int = 400, seed: int = 0):
    """One standardised 6-node task with counterfactuals (``restrict``-ed) and its SCM parameters."""
    prior = PriorConfig(name="anm-test", graph={"n_nodes": 6, "expected_parents": 1.5}, n_obs=n_obs,
                        mechanism={"kind": kind, "w_min": 0.5, "w_max": 2.0, "lengthscale_min": 1.0},
                        interventions={"n_regimes": 3}, counterfactuals=True)
    tasks, extra = sample_batch(prior, [split_seed(prior, "test", seed)], return_params=True)
    return restrict(task_slice(tasks, 0)), {k: v[0] for k, v in extra.items()}


def rmse(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)))


def counterfactual_rmse(gen, data):
    errs = []
    for k in range(data["int_targets"].shape[0]):
        j = int(np.flatnonzero(data["int_targets"][k])[0])
        errs.append(rmse(gen.counterfactual(data["x_obs"], {j: data["int_values"][k, j]}), data["x_cf"][k]))
    return float(np.mean(errs))


def test_linear_anm_recovers_a_planted_linear_scm():
    data, extra = planted()
    gen = fit_anm(data, ANMConfig(kind="linear"))
    assert {"generator", "interventional"} <= capabilities(gen)
    assert rmse(gen.predict_noise(data["x_obs"]), data["noise_obs"]) < 0.1
    assert rmse(gen.sample_observational(len(data["x_obs"]), noise=data["noise_obs"]), data["x_obs"]) < 0.1
    assert counterfactual_rmse(gen, data) < 0.1
    # the true graph is used: an empty graph cannot explain the children
    empty = fit_anm({**data, "adjacency": np.zeros_like(data["adjacency"])})
    assert rmse(empty.predict_noise(data["x_obs"]), data["noise_obs"]) > 2 * rmse(
        gen.predict_noise(data["x_obs"]), data["noise_obs"])


def test_mlp_anm_recovers_linear_and_beats_linear_on_a_nonlinear_scm():
    data, _ = planted()
    mlp = fit_anm(data, ANMConfig(kind="mlp", steps=300))
    assert rmse(mlp.predict_noise(data["x_obs"]), data["noise_obs"]) < 0.15
    assert counterfactual_rmse(mlp, data) < 0.15
    gp, _ = planted("gp", seed=1)
    lin_err = rmse(fit_anm(gp).predict_noise(gp["x_obs"]), gp["noise_obs"])
    mlp_err = rmse(fit_anm(gp, ANMConfig(kind="mlp", steps=300)).predict_noise(gp["x_obs"]), gp["noise_obs"])
    assert mlp_err < lin_err


def test_gp_anm_is_the_right_model_class_on_rff_and_keeps_linear_fits():
    """On an RFF (GP-draw) SCM the GP regression beats the MLP, which beats the linear fit; on
    a linear SCM the kernel's linear part recovers it; node-by-node mechanisms (ancestral
    sampling) equal the all-nodes mechanism, and a root's mechanism is its mean."""
    gp, _ = planted("gp", seed=1)
    errs = {kind: rmse(fit_anm(gp, ANMConfig(kind=kind, steps=300)).predict_noise(gp["x_obs"]), gp["noise_obs"])
            for kind in ("linear", "mlp", "gp")}
    assert errs["gp"] < 0.8 * errs["mlp"] and errs["mlp"] < errs["linear"], errs
    gen = fit_anm(gp, ANMConfig(kind="gp"))
    assert gen.kind == "gp" and {"generator", "interventional"} <= capabilities(gen)
    x = gp["x_obs"][:25]
    for v in range(6):
        np.testing.assert_allclose(gen.mech_node(x, v), gen.mech(x)[:, v], rtol=1e-9, atol=1e-12)
    root = int(np.flatnonzero(gp["adjacency"].sum(0) == 0)[0])
    np.testing.assert_allclose(gen.mech(x)[:, root], gp["x_obs"][:, root].mean(), rtol=1e-12)
    lin, _ = planted()
    lin_gen = fit_anm(lin, ANMConfig(kind="gp"))
    assert rmse(lin_gen.predict_noise(lin["x_obs"]), lin["noise_obs"]) < 0.1
    assert counterfactual_rmse(lin_gen, lin) < 0.1


def test_generation_is_ancestral_and_interventions_hold():
    data, _ = planted()
    gen = fit_anm(data)
    order = topological_order(data["adjacency"])
    pos = np.argsort(order)
    rows, cols = np.nonzero(data["adjacency"])
    assert np.all(pos[rows] < pos[cols])
    rng = np.random.default_rng(0)
    x = gen.sample_do({2: 1.5}, 50, rng)
    assert x.shape == (50, 6) and np.all(x[:, 2] == 1.5)
    est = gen.interventional_log_density(2, 1.5, 3, np.linspace(-2, 2, 5))
    assert np.isfinite(est.log_density).all()


def test_bad_inputs_name_the_field():
    data, _ = planted()
    with pytest.raises(ValueError, match="adjacency"):
        fit_anm({**data, "adjacency": data["adjacency"][:3, :3]})
    with pytest.raises(ValueError, match="DAG"):
        fit_anm({**data, "adjacency": np.triu(np.ones((6, 6))) + np.tril(np.ones((6, 6)), -1)})
    with pytest.raises(ValueError, match="x_obs"):
        fit_anm({**data, "x_obs": np.full_like(data["x_obs"], np.nan)})
    with pytest.raises(ValueError, match="noise"):
        fit_anm(data).sample_observational(4, noise=np.zeros((4, 2)))
