"""BaCaDI: joint inference of graph, mechanisms and unknown intervention targets."""
import numpy as np
import pytest
import torch

from pipeline_lib.baselines.bacadi import BaCaDIConfig, BaCaDIPosterior, _BaCaDIModel, fit_bacadi, run_bacadi
from pipeline_lib.baselines.dibs import DiBSError
from pipeline_lib.metrics.stats import auroc


def chain_data(d, n_obs, n_int, seed, value=3.0):
    """Linear chain 0 -> 1 -> ... with single-node hard interventions on node k in regime k."""
    rng = np.random.default_rng(seed)
    W = np.zeros((d, d))
    for j in range(1, d):
        W[j - 1, j] = rng.choice([-1, 1]) * rng.uniform(0.8, 1.5)

    def sample(n, target=None):
        x = np.zeros((n, d))
        for j in range(d):
            x[:, j] = x @ W[:, j] + 0.3 * rng.normal(size=n)
            if target == j:
                x[:, j] = value + 0.1 * rng.normal(size=n)
        return x

    targets = np.eye(d, dtype=bool)
    return sample(n_obs), np.stack([sample(n_int, k) for k in range(d)]), targets, (W != 0).astype(np.uint8)


def test_log_joint_hard_targets_by_hand():
    """With hard targets, regime k's intervened node contributes its own Gaussian and the
    mu prior, the rest the edge mechanisms; checked against a direct sum."""
    cfg = BaCaDIConfig(hidden=(3,))
    m = _BaCaDIModel(2, 1, cfg)
    gen = torch.Generator().manual_seed(0)
    theta = m.mech.init_params(1, gen, dtype=torch.float64)
    mu = torch.tensor([[[0.5, -1.0]]], dtype=torch.float64)
    xo = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    xi = torch.randn(1, 3, 2, generator=gen, dtype=torch.float64)
    g = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]], dtype=torch.float64)
    tg = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    got = m.log_joint(theta, mu, xo, xi, g, tg)
    lo = m.mech.log_lik_terms(theta, xo, g).sum()
    li = m.mech.log_lik_terms(theta, xi[0], g)[0]  # (3, 2)
    own = -0.5 * (xi[0, :, 1] - mu[0, 0, 1]) ** 2 / cfg.interv_noise_var - 0.5 * np.log(2 * np.pi * cfg.interv_noise_var)
    mu_prior = -0.5 * mu[0, 0, 1] ** 2 / 100.0 - 0.5 * np.log(2 * np.pi * 100.0)
    want = lo + li[:, 0].sum() + own.sum() + mu_prior + m.mech.log_prior(theta, g)
    assert torch.allclose(got, want)


def test_bacadi_smoke_shapes_and_reproducibility():
    x_obs, x_int, _, _ = chain_data(3, 20, 10, seed=0)
    cfg = BaCaDIConfig(n_particles=4, steps=20, n_grad_mc=4, n_acyc_mc=4, seed=2, beta_linear=100.0, step_size=0.05, n_mc_density=16)
    a, _, _ = run_bacadi(x_obs, x_int, cfg)
    b, _, _ = run_bacadi(x_obs, x_int, cfg)
    assert a.gamma.tobytes() == b.gamma.tobytes() and a.z.tobytes() == b.z.tobytes()
    assert a.gamma.shape == (4, 3, 3) and a.mu.shape == (4, 3, 3)
    post = fit_bacadi(x_obs, x_int, cfg)
    assert isinstance(post, BaCaDIPosterior)
    tp = post.intervention_target_probs()
    assert tp.shape == (3, 3) and ((tp >= 0) & (tp <= 1)).all()
    # the target probabilities are the weighted particle average at the final alpha_T
    parts = post.particles
    assert parts.alpha_final == pytest.approx(0.01 * 20)
    ok = parts.acyclic
    sig = 1.0 / (1.0 + np.exp(-parts.alpha_final / 2 * parts.gamma[ok].astype(np.float64)))
    assert np.allclose(tp, np.einsum("p,pkj->kj", post.weights, sig))
    assert np.isfinite(post.interventional_log_density(0, 1.0, 1, np.zeros(3)).log_density).all()


def test_bacadi_bad_input():
    x_obs, x_int, _, _ = chain_data(3, 10, 5, seed=0)
    with pytest.raises(DiBSError, match="x_int"):
        fit_bacadi(x_obs, x_int[0], BaCaDIConfig(steps=1))
    with pytest.raises(DiBSError, match="x_int"):
        fit_bacadi(x_obs, x_int[:, :, :2], BaCaDIConfig(steps=1))


@pytest.mark.slow
def test_bacadi_recovers_unknown_targets_5_nodes():
    # measured: Intv-AUROC 0.91 at seed 0 (0.91-1.00 over seeds 0-3; alpha_linear 0.05 instead
    # of the default 0.01 gave 0.80 with the earlier beta_linear 1.0)
    x_obs, x_int, targets, _ = chain_data(5, 200, 100, seed=0)
    post = fit_bacadi(x_obs, x_int, BaCaDIConfig(steps=600, n_grad_mc=8, seed=0))
    tp = post.intervention_target_probs()
    assert auroc(targets.ravel().astype(int), tp.ravel()) >= 0.9
