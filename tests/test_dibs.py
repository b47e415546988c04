"""DiBS (marginal and joint), its SVGD machinery and the batched MLP mechanisms."""
import numpy as np
import pytest
import torch

from pipeline_lib.baselines.dibs import (
    DiBSConfig,
    DiBSError,
    DiBSJointPosterior,
    LatentGraphModel,
    _check_data,
    acyclicity,
    fit_dibs_joint,
    fit_dibs_marginal,
    run_dibs_joint,
    run_dibs_marginal,
)
from pipeline_lib.baselines.exact import BGeMixturePosterior, ExactPosterior
from pipeline_lib.baselines.mlp_gaussian import MLPGaussian
from pipeline_lib.metrics import is_dag as is_acyclic
from pipeline_lib.baselines.svgd import RMSprop, mc_chunk_size, self_normalised_grad, svgd_direction
from pipeline_lib.metrics.graph import expected_shd, shd_cpdag


def linear_data(W, n, rng, noise=0.6):
    """Linear-Gaussian SCM; W upper triangular so 0..d-1 is a topological order."""
    d = W.shape[0]
    x = np.zeros((n, d))
    for j in range(d):
        x[:, j] = x @ W[:, j] + noise * rng.normal(size=n)
    return x


def chain3(n=200, seed=0):
    rng = np.random.default_rng(seed)
    W = np.zeros((3, 3))
    W[0, 1], W[1, 2] = 0.8, -0.7
    return linear_data(W, n, rng)


def nn_data(adj, n, rng, noise_var=0.1, hidden=5):
    """MLP-Gaussian SCM (relu, N(0, 1) weights) as in the DiBS paper; adj upper triangular."""
    d = adj.shape[0]
    x = np.zeros((n, d))
    for j in range(d):
        pa = np.flatnonzero(adj[:, j])
        eps = np.sqrt(noise_var) * rng.normal(size=n)
        if len(pa) == 0:
            x[:, j] = eps
            continue
        W1, b1, W2 = rng.normal(size=(len(pa), hidden)), rng.normal(size=hidden), rng.normal(size=hidden)
        x[:, j] = np.maximum(x[:, pa] @ W1 + b1, 0) @ W2 + eps
    return x


# ------------------------------------------------------------------ SVGD and mechanisms


def test_svgd_direction_matches_autograd_reference():
    torch.manual_seed(0)
    X, Y = torch.randn(5, 3, 2, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    gX, gY = torch.randn_like(X), torch.randn_like(Y)
    hX, hY = 2.0, 7.0
    phi = svgd_direction([X, Y], [gX, gY], [hX, hY])
    for m in range(5):
        Xr, Yr = X.clone().requires_grad_(), Y.clone().requires_grad_()
        k = torch.exp(-((Xr - X[m]) ** 2).sum((-1, -2)) / hX) + torch.exp(-((Yr - Y[m]) ** 2).sum(-1) / hY)
        rX, rY = torch.autograd.grad(k.sum(), (Xr, Yr))
        kd = k.detach()
        assert torch.allclose(phi[0][m], ((kd[:, None, None] * gX).sum(0) + rX.sum(0)) / 5)
        assert torch.allclose(phi[1][m], ((kd[:, None] * gY).sum(0) + rY.sum(0)) / 5)


def test_svgd_single_particle_is_plain_gradient_and_rmsprop_step():
    x = torch.tensor([[1.0, -2.0]])
    g = torch.tensor([[0.5, -4.0]])
    (phi,) = svgd_direction([x], [g], [5.0])
    assert torch.allclose(phi, g)  # k(x, x) = 1, self-repulsion is zero
    opt = RMSprop([x], step_size=0.1)
    opt.ascend([x], [phi])
    # first step: v = 0.1 g^2, x += 0.1 g / sqrt(0.1 g^2) = 0.1 sign(g) / sqrt(0.1)
    assert torch.allclose(x, torch.tensor([[1.0, -2.0]]) + 0.1 * torch.sign(g) / np.sqrt(0.1), atol=1e-5)


def test_self_normalised_grad_streams_chunks_exactly():
    """Chunked = one-shot sum_m softmax(l)_m grad l_m, per particle, for any chunk size."""
    gen = torch.Generator().manual_seed(3)
    P, M, D = 3, 7, 4
    a = torch.randn(P, D, dtype=torch.float64, generator=gen)
    feats = torch.randn(P, M, D, dtype=torch.float64, generator=gen) * 3.0

    def log_weight(lo, hi, v):
        return -((feats[:, lo:hi] - v[:, None]) ** 2).sum(-1) + (v[:, None] * feats[:, lo:hi]).sum(-1) ** 2 / 10

    v = a.clone().requires_grad_(True)
    lw = log_weight(0, M, v)
    (ref,) = torch.autograd.grad((torch.softmax(lw.detach(), 1) * lw).sum(), v)
    # the same quantity as the gradient of log mean_m exp(l_m)
    v2 = a.clone().requires_grad_(True)
    (ref2,) = torch.autograd.grad(torch.logsumexp(log_weight(0, M, v2), 1).sum(), v2)
    assert torch.allclose(ref, ref2, atol=1e-10)
    for chunk in (1, 2, 3, M, 100):
        v = a.clone().requires_grad_(True)
        (got,) = self_normalised_grad(lambda lo, hi: log_weight(lo, hi, v), (v,), M, chunk)
        assert torch.allclose(got, ref, atol=1e-10), chunk
    assert mc_chunk_size(128, 250_000, None) == 8 and mc_chunk_size(128, 10, None) == 128
    assert mc_chunk_size(128, 10**9, None) == 1 and mc_chunk_size(128, 250_000, None, "cuda") == 128
    with pytest.raises(ValueError, match="chunk"):
        self_normalised_grad(lambda lo, hi: log_weight(lo, hi, v), (v,), M, 0)


def test_joint_and_bacadi_chunking_does_not_change_the_run():
    """MC-sample chunking (memory) leaves the SVGD trajectory unchanged up to float rounding."""
    from pipeline_lib.baselines.bacadi import BaCaDIConfig, run_bacadi

    rng = np.random.default_rng(1)
    adj = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]], np.uint8)
    x = nn_data(adj, 40, rng)
    cfg = DiBSConfig(n_particles=3, steps=10, n_grad_mc=6, n_acyc_mc=4, seed=2, dtype="float64")
    one, _, _ = run_dibs_joint(x, cfg)
    for theta_grad in ("soft", "hard"):
        one, _, _ = run_dibs_joint(x, cfg.model_copy(update={"theta_grad": theta_grad}))
        many, _, _ = run_dibs_joint(x, cfg.model_copy(update={"theta_grad": theta_grad, "mc_chunk_elements": 1}))
        assert np.allclose(one.z, many.z, atol=1e-9) and np.allclose(one.theta, many.theta, atol=1e-9)
    x_int = x[None, :10].repeat(2, 0) + rng.normal(size=(2, 10, 3))
    bcfg = BaCaDIConfig(n_particles=3, steps=8, n_grad_mc=5, n_acyc_mc=4, seed=2, dtype="float64")
    one, _, _ = run_bacadi(x, x_int, bcfg)
    many, _, _ = run_bacadi(x, x_int, bcfg.model_copy(update={"mc_chunk_elements": 2000}))
    for f in ("z", "theta", "mu", "gamma"):
        assert np.allclose(getattr(one, f), getattr(many, f), atol=1e-9), f


def test_beta_default_scales_with_rows_for_joint_variants_only():
    from pipeline_lib.baselines.bacadi import BaCaDIConfig

    cfg = DiBSConfig()
    assert LatentGraphModel(5, cfg, "marginal", 1000).beta(3) == 3.0  # the reference's 1.0
    assert LatentGraphModel(5, cfg, "joint", 1000).beta(3) == 30.0  # 1000 rows / 100
    assert LatentGraphModel(5, cfg, "joint", 40).beta(3) == 3.0  # never below 1
    assert LatentGraphModel(5, BaCaDIConfig(), "joint", 700).beta(2) == 14.0
    assert LatentGraphModel(5, DiBSConfig(beta_linear=2.5), "joint", 1000).beta(2) == 5.0
    assert LatentGraphModel(5, DiBSConfig(beta_linear=0.0), "joint", 1000).beta(2) == 0.0


def test_mlp_means_match_per_node_loop_and_mask_non_parents():
    m = MLPGaussian(3, hidden=(4, 2), activation="tanh")
    gen = torch.Generator().manual_seed(0)
    theta = m.init_params(2, gen, dtype=torch.float64)
    x = torch.randn(6, 3, dtype=torch.float64, generator=gen)
    G = (torch.rand(2, 4, 3, 3, generator=gen) < 0.5).double()
    out = m.means(theta, x, G)
    assert out.shape == (2, 4, 6, 3)
    W0, b0, W1, b1, W2, b2 = m.unflatten(theta)
    p, s, j = 1, 3, 2
    h = torch.tanh((x * G[p, s, :, j]) @ W0[p, j] + b0[p, j])
    h = torch.tanh(h @ W1[p, j] + b1[p, j])
    assert torch.allclose(out[p, s, :, j], (h @ W2[p, j] + b2[p, j])[:, 0])
    # x given per (particle, graph) batch element: the same network on every row
    xb = torch.randn(2, 4, 6, 3, dtype=torch.float64, generator=gen)
    outb = m.means(theta, xb, G)
    h = torch.tanh((xb[p, s] * G[p, s, :, j]) @ W0[p, j] + b0[p, j])
    h = torch.tanh(h @ W1[p, j] + b1[p, j])
    assert torch.allclose(outb[p, s, :, j], (h @ W2[p, j] + b2[p, j])[:, 0])
    # a node without parents has a constant mean
    G0 = torch.zeros(2, 3, 3, dtype=torch.float64)
    const = m.means(theta, x, G0)
    assert torch.allclose(const, const[:, :1].expand_as(const))
    # the prior drops exactly the masked first-layer weights
    lp_full = m.log_prior(theta, torch.ones(2, 3, 3, dtype=torch.float64))
    lp_none = m.log_prior(theta, G0)
    w0_lp = (-0.5 * W0**2 - 0.5 * np.log(2 * np.pi)).sum((1, 2, 3))
    assert torch.allclose(lp_full - lp_none, w0_lp)


@pytest.mark.parametrize("activation, hidden", [("leaky_relu", (5,)), ("sigmoid", (4, 3)), ("relu", (3,))])
def test_mlp_gradients_match_a_per_node_loop(activation, hidden):
    """The batched, feature-major, in-place forward gives the gradients (theta and soft graph)
    of a plain per-(particle, graph, node) loop."""
    act = {"relu": torch.relu, "sigmoid": torch.sigmoid, "leaky_relu": torch.nn.functional.leaky_relu}[activation]
    m = MLPGaussian(3, hidden=hidden, activation=activation)
    gen = torch.Generator().manual_seed(4)
    theta0 = m.init_params(2, gen, dtype=torch.float64)
    G0 = torch.rand(2, 3, 3, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64, generator=gen)

    def loop(theta, G):
        layers = m.unflatten(theta)
        total = 0.0
        for p in range(2):
            for s in range(3):
                for j in range(3):
                    h = (x * G[p, s, :, j]) @ layers[0][p, j] + layers[1][p, j]
                    for k in range(2, len(layers), 2):
                        h = act(h) @ layers[k][p, j] + layers[k + 1][p, j]
                    total = total + (-0.5 * (x[:, j] - h[:, 0]) ** 2 / m.obs_noise_var).sum()
        return total

    grads = []
    for f in (loop, lambda th, g: m.log_lik_terms(th, x, g).sum()):
        th, g = theta0.clone().requires_grad_(True), G0.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(f(th, g), (th, g)))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-9)


def test_acyclicity_function_and_dag_check():
    dag = torch.tensor([[0, 1, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.float64)
    cyc = torch.tensor([[0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=torch.float64)
    for kind in ("poly", "expm"):
        assert acyclicity(dag, kind).item() == pytest.approx(0.0, abs=1e-12)
        assert acyclicity(cyc, kind).item() > 0.1
    # (I + C/3)^3 = I + C + C^2/3 + C^3/27 and C^3 = I for the 3-cycle: h = 3/27
    assert acyclicity(cyc, "poly").item() == pytest.approx(1 / 9, rel=1e-9)
    assert is_acyclic(np.stack([dag.numpy(), cyc.numpy()])).tolist() == [True, False]


# ------------------------------------------------------------------ DiBS marginal


def test_marginal_reproducible_and_seed_sensitive():
    x = chain3(100)
    cfg = DiBSConfig(n_particles=5, steps=15, n_grad_mc=16, n_acyc_mc=4, seed=3)
    a, _ = run_dibs_marginal(x, cfg)
    b, _ = run_dibs_marginal(x, cfg)
    c, _ = run_dibs_marginal(x, cfg.model_copy(update={"seed": 4}))
    assert a.z.tobytes() == b.z.tobytes()
    assert not np.array_equal(a.z, c.z)
    assert a.z.shape == (5, 3, 3, 2)


def test_marginal_edge_marginals_close_to_exact_posterior_fast():
    x = chain3(200)
    exact = ExactPosterior.fit(x).edge_probs()
    post = fit_dibs_marginal(x, DiBSConfig(steps=100, n_grad_mc=64, seed=0))
    assert isinstance(post, BGeMixturePosterior)
    assert np.isclose(post.weights.sum(), 1.0)
    assert is_acyclic(post.graphs).all()
    assert len(np.unique(post.graphs, axis=0)) == len(post.graphs)  # unique graphs
    assert np.abs(post.edge_probs() - exact).max() < 0.1


@pytest.mark.slow
def test_marginal_edge_marginals_close_to_exact_posterior_1000_steps():
    x = chain3(200)
    exact = ExactPosterior.fit(x).edge_probs()
    post = fit_dibs_marginal(x, DiBSConfig(steps=1000, seed=0))
    assert np.abs(post.edge_probs() - exact).max() < 0.1


def planted_5_node_linear(n=1000):
    rng = np.random.default_rng(7)
    W = np.zeros((5, 5))
    W[0, 1], W[0, 2], W[1, 3], W[2, 3], W[3, 4] = 1.0, -1.2, 0.9, 1.1, -1.0
    return (W != 0).astype(int), linear_data(W, n, rng)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_marginal_recovers_planted_5_node_graph_up_to_mec(seed):
    """With 1000 rows the BGe posterior is sharp (exact: P(true MEC) ~ 0.95) and has a strong
    local optimum, a 6-edge I-map 3.6 nats below the truth (shd_cpdag 4). Measured over seeds
    0-5: the reference defaults (20 particles, alpha_linear 1) reach the true MEC with the
    top-weighted particle at 2 of 6 seeds; 50 particles with the slower annealing
    alpha_linear = 0.1 at 6 of 6. The test runs that configuration (about 10 s a seed)."""
    true, x = planted_5_node_linear()
    post = fit_dibs_marginal(x, DiBSConfig(n_particles=50, alpha_linear=0.1, steps=1000, seed=seed))
    best = post.graphs[np.argmax(post.weights)]
    assert shd_cpdag(true, best) <= 1
    # most of the mixture mass is on the true equivalence class (measured 0.83-0.85 at seeds 1-2;
    # the exact posterior, which holds all three DAGs of the class, gives 0.95)
    in_mec = np.array([shd_cpdag(true, g) == 0 for g in post.graphs])
    assert post.weights[in_mec].sum() > 0.75


def test_marginal_empirical_weights_and_bad_input():
    x = chain3(100)
    post = fit_dibs_marginal(x, DiBSConfig(n_particles=6, steps=40, n_grad_mc=32, weights="empirical", seed=1))
    # weights are particle counts / (number of acyclic particles <= 6)
    assert any(np.allclose(post.weights * n, np.round(post.weights * n)) for n in range(1, 7))
    with pytest.raises(DiBSError, match="x_obs"):
        fit_dibs_marginal(np.zeros((1, 3)), DiBSConfig(steps=1))
    with pytest.raises(DiBSError, match="int_targets"):
        fit_dibs_marginal(x, DiBSConfig(steps=1), x_int=np.zeros((2, 5, 3)))
    with pytest.raises(ValueError):
        DiBSConfig(n_particles=0)


def test_final_particles_travel_with_the_posterior_and_the_all_cyclic_error():
    x = np.random.default_rng(0).normal(size=(30, 3))
    # steps=0 keeps the prior draws: seed 9 gives two acyclic particles, seed 0 two cyclic ones
    post = fit_dibs_marginal(x, DiBSConfig(n_particles=2, steps=0, seed=9))
    assert post.particles.graphs.shape == (2, 3, 3) and post.particles.acyclic.all()
    assert post.particles.alpha_final == 0.0
    for fit in (fit_dibs_marginal, fit_dibs_joint):
        with pytest.raises(DiBSError, match="cyclic") as err:
            fit(x, DiBSConfig(n_particles=2, steps=0, seed=0))
        parts = err.value.particles
        assert parts.graphs.shape == (2, 3, 3) and not parts.acyclic.any()
        assert not is_acyclic(parts.graphs).any()


# ------------------------------------------------------------------ DiBS joint


def test_joint_smoke_reproducible_and_densities():
    rng = np.random.default_rng(0)
    adj = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]], np.uint8)
    x = nn_data(adj, 60, rng)
    cfg = DiBSConfig(n_particles=4, steps=25, n_grad_mc=4, n_acyc_mc=4, seed=5, beta_linear=5.0, n_mc_density=32)
    a, _, _ = run_dibs_joint(x, cfg)
    b, _, _ = run_dibs_joint(x, cfg)
    assert a.z.tobytes() == b.z.tobytes() and a.theta.tobytes() == b.theta.tobytes()
    # a progress bar changes nothing but stderr
    c, _, _ = run_dibs_joint(x, cfg, progress=True)
    assert c.z.tobytes() == a.z.tobytes() and c.theta.tobytes() == a.theta.tobytes()
    # the reference's hard-sample theta gradient is a different estimator: same seed, other theta
    h, _, _ = run_dibs_joint(x, cfg.model_copy(update={"theta_grad": "hard"}))
    assert np.isfinite(h.theta).all() and not np.array_equal(h.theta, a.theta)
    post = fit_dibs_joint(x, cfg)
    assert isinstance(post, DiBSJointPosterior)
    assert is_acyclic(post.graphs).all() and np.isclose(post.weights.sum(), 1.0)
    dens = post.interventional_log_density(0, 1.0, 2, np.linspace(-2, 2, 5))
    assert dens.log_density.shape == (5,) and np.isfinite(dens.log_density).all()
    s = post.sample_interventional(0, 1.0, 7, np.random.default_rng(0))
    assert s.shape == (7, 3) and np.allclose(s[:, 0], 1.0)


def test_known_target_mask_marks_intervened_rows():
    x = chain3(40)
    x_int = np.random.default_rng(1).normal(size=(2, 10, 3))
    targets = np.array([[False, True, False], [True, False, True]])
    xs, mask = _check_data(x, x_int, targets)
    assert xs.shape == (60, 3) and mask.shape == (60, 3)
    assert not mask[:40].any()
    assert (mask[40:50] == targets[0]).all() and (mask[50:] == targets[1]).all()
    np.testing.assert_array_equal(xs[50:], x_int[1])


@pytest.mark.slow
def test_joint_recovers_planted_5_node_nn_graph():
    rng = np.random.default_rng(1)
    adj = np.zeros((5, 5), np.uint8)
    adj[0, 1] = adj[1, 2] = adj[0, 3] = adj[2, 4] = adj[3, 4] = 1
    x = nn_data(adj, 200, rng)
    # 3000 steps (the upper default): at 1500 the true-graph particle exists but its
    # theta is still far from its MAP fit, so the mixture weights favour a wrong graph (E-SHD 3)
    post = fit_dibs_joint(x, DiBSConfig(steps=3000, n_grad_mc=32, seed=0))
    assert expected_shd(adj, post.graphs, post.weights) <= 1.5
