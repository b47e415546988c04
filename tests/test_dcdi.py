"""DCDI-G: batched mechanisms, augmented Lagrangian fitting, graph and target recovery."""
import numpy as np
import pytest
import torch

from pipeline_lib.baselines.dcdi import (
    BatchedNodeMLP,
    DCDIConfig,
    DCDIInputError,
    DCDIPosterior,
    dag_constraint,
    fit_dcdi,
    gumbel_sigmoid,
    masked_inputs,
    threshold_to_dag,
)
from pipeline_lib.metrics import intervention_auroc, is_dag, shd

is_acyclic = is_dag


# ---------------------------------------------------------------------------------------
# planted nonlinear SCMs


def planted_scm(adj, n_obs, n_int, seed, targets=None):
    """x_j = sum_i A_ij w_ij tanh(b_ij x_i) + s_j eps_j; do(X_v) ~ N(2, 0.5^2) (perfect).

    Returns x_obs (n_obs, d), x_int (K, n_int, d), targets (K, d) (default: one regime per
    node, single-node interventions).
    """
    rng = np.random.default_rng(seed)
    adj = np.asarray(adj)
    d = len(adj)
    w = rng.uniform(1.0, 2.0, (d, d)) * rng.choice([-1.0, 1.0], (d, d)) * adj
    b = rng.uniform(0.5, 1.5, (d, d))
    s = rng.uniform(0.4, 0.7, d)
    order = np.argsort(np.linalg.matrix_power(adj + np.eye(d), d).astype(bool).sum(axis=0))
    targets = np.eye(d, dtype=bool) if targets is None else np.asarray(targets, bool)

    def draw(n, tgt):
        x = np.zeros((n, d))
        for j in order:  # topological: ancestors counted first
            if tgt[j]:
                x[:, j] = rng.normal(2.0, 0.5, n)
            else:
                x[:, j] = (w[:, j] * np.tanh(b[:, j] * x)).sum(axis=1) + s[j] * rng.standard_normal(n)
        return x

    x_obs = draw(n_obs, np.zeros(d, bool))
    x_int = np.stack([draw(n_int, t) for t in targets])
    return x_obs, x_int, targets


CHAIN3 = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]])
FIVE = np.array(
    [
        [0, 1, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 1, 1],
        [0, 0, 0, 0, 1],
        [0, 0, 0, 0, 0],
    ]
)


# ---------------------------------------------------------------------------------------
# building blocks


def test_batched_mlp_equals_per_node_loop_and_ignores_non_parents():
    d, hidden, layers, B = 4, 16, 2, 7
    mlp = BatchedNodeMLP(d, hidden, layers, 2, torch.Generator().manual_seed(3)).double()
    with torch.no_grad():
        for c in mlp.biases:
            c.normal_()
    x = torch.randn(B, d, dtype=torch.float64)
    mask = torch.tensor(FIVE[:4, :4], dtype=torch.float64)
    out = mlp(masked_inputs(x, mask))  # (B, d, 2)

    for j in range(d):
        h = x * mask[:, j]
        for l, (w, c) in enumerate(zip(mlp.weights, mlp.biases)):
            h = h @ w[j] + c[j]
            if l < layers:
                h = torch.nn.functional.leaky_relu(h)
        torch.testing.assert_close(out[:, j], h, atol=1e-6, rtol=0)

    # node 3 has parents {1, 2}: changing x_0 (not a parent) leaves its output unchanged,
    # changing x_1 changes it
    x2 = x.clone()
    x2[:, 0] += 5.0
    out2 = mlp(masked_inputs(x2, mask))
    torch.testing.assert_close(out2[:, 3], out[:, 3], atol=0, rtol=0)
    assert not torch.allclose(out2[:, 1], out[:, 1])  # 0 -> 1 is an edge
    x3 = x.clone()
    x3[:, 1] += 5.0
    assert not torch.allclose(mlp(masked_inputs(x3, mask))[:, 3], out[:, 3])


def test_per_example_masks_match_shared_mask():
    x = torch.randn(5, 3)
    m = torch.tensor(CHAIN3, dtype=torch.float32)
    torch.testing.assert_close(masked_inputs(x, m), masked_inputs(x, m.expand(5, 3, 3)))
    # out[b, j, i] = m[i, j] x[b, i]
    assert torch.equal(masked_inputs(x, m)[:, 2], torch.stack([0 * x[:, 0], x[:, 1], 0 * x[:, 2]], 1))


def test_gumbel_sigmoid_is_hard_with_relaxed_gradient():
    logits = torch.tensor([[-1.0, 0.0], [2.0, 4.0]], requires_grad=True)
    g = torch.Generator().manual_seed(0)
    s = gumbel_sigmoid(logits, (20000,), 1.0, g)
    assert set(torch.unique(s.detach()).tolist()) <= {0.0, 1.0}
    # P(hard sample = 1) = sigma(logit) for tau = 1
    np.testing.assert_allclose(s.detach().mean(0).numpy(), torch.sigmoid(logits).detach().numpy(), atol=0.015)
    s.sum().backward()
    assert torch.all(logits.grad > 0)


def test_dag_constraint_values_and_gradient():
    d = 3
    assert abs(dag_constraint(torch.zeros(d, d)).item()) < 1e-6
    # a 2-cycle with weights 1: tr exp = d - 2 + 2 cosh(1)
    w = torch.zeros(d, d)
    w[0, 1] = w[1, 0] = 1.0
    np.testing.assert_allclose(dag_constraint(w).item(), 2 * np.cosh(1.0) - 2, rtol=1e-6)
    w = torch.rand(4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dag_constraint, (w,))


def test_threshold_to_dag_breaks_cycles_at_the_weakest_edge():
    p = np.array([[0, 0.9, 0], [0, 0, 0.8], [0.6, 0, 0]])
    assert not is_acyclic(p > 0.5)
    np.testing.assert_array_equal(threshold_to_dag(p), [[0, 1, 0], [0, 0, 1], [0, 0, 0]])
    assert is_acyclic(CHAIN3) and not is_acyclic(CHAIN3 + CHAIN3.T)


# ---------------------------------------------------------------------------------------
# input validation


@pytest.fixture(scope="module")
def small_data():
    return planted_scm(CHAIN3, 60, 20, seed=1)


def test_bad_inputs_name_the_argument(small_data):
    x_obs, x_int, tg = small_data
    cfg = DCDIConfig(max_iter=2)
    bad = x_obs.copy()
    bad[3, 1] = np.nan
    with pytest.raises(DCDIInputError, match="x_obs"):
        fit_dcdi(bad, x_int, tg, cfg)
    bad_int = x_int.copy()
    bad_int[0, 0, 0] = np.inf
    with pytest.raises(DCDIInputError, match="x_int"):
        fit_dcdi(x_obs, bad_int, tg, cfg)
    with pytest.raises(DCDIInputError, match="x_int"):
        fit_dcdi(x_obs, x_int[..., :2], tg, cfg)
    with pytest.raises(DCDIInputError, match="int_targets"):
        fit_dcdi(x_obs, x_int, tg[:, :2], cfg)
    with pytest.raises(DCDIInputError, match="int_targets"):
        fit_dcdi(x_obs, x_int, None, cfg)
    with pytest.raises(DCDIInputError, match="x_obs"):
        fit_dcdi(x_obs[:, 0], x_int, tg, cfg)
    with pytest.raises(ValueError, match="hidden"):
        DCDIConfig(hidden=0)


# ---------------------------------------------------------------------------------------
# fitting


# a reduced budget for the default suite (a few CPU seconds per fit); the slow tests use
# the defaults
FAST = dict(max_iter=800, patience_every=100, patience=2, patience_post=2, lr=3e-3)
SHORT = dict(FAST, max_iter=2000)


def test_seed_reproduces_bytes_and_history_shows_h_falling(small_data):
    x_obs, x_int, tg = small_data
    cfg = DCDIConfig(seed=5, **FAST)
    a = fit_dcdi(x_obs, x_int, tg, cfg)
    b = fit_dcdi(x_obs, x_int, tg, cfg)
    assert a.edge_probs().tobytes() == b.edge_probs().tobytes()
    assert a.history["loss"].tobytes() == b.history["loss"].tobytes()
    c = fit_dcdi(x_obs, x_int, tg, DCDIConfig(seed=6, **FAST))
    assert c.edge_probs().tobytes() != a.edge_probs().tobytes()

    h = a.history["h"]
    assert len(h) == len(a.history["loss"]) <= FAST["max_iter"]
    # Lambda starts at 5 (near-complete graph, normalised h ~ 1); the augmented Lagrangian
    # pushes h down while gamma and mu only ever grow
    assert h[:50].mean() > 0.5 and h[-50:].mean() < h[:50].mean() - 0.02
    assert np.all(np.diff(a.history["gamma"]) >= 0) and np.all(np.diff(a.history["mu"]) >= 0)
    assert is_dag(a.dag) and a.dag.dtype == np.uint8
    probs = a.edge_probs()
    assert probs.shape == (3, 3) and np.all(np.diag(probs) == 0) and np.all((probs >= 0) & (probs <= 1))
    g = a.sample_graphs(4, np.random.default_rng(0))
    assert g.shape == (4, 3, 3) and np.all(g == a.dag)
    assert a.intervention_target_probs() is None


def test_known_interventions_recover_three_node_chain():
    x_obs, x_int, tg = planted_scm(CHAIN3, 600, 200, seed=2)
    post = fit_dcdi(x_obs, x_int, tg, DCDIConfig(seed=0, **SHORT))
    assert shd(CHAIN3, post.dag) == 0, post.edge_probs()
    assert isinstance(post, DCDIPosterior)


def test_interventional_density_and_samples_follow_the_fitted_mechanism():
    """On a planted 2-node graph x0 -> x1 the refit mechanism predicts do(X0 = a)."""
    rng = np.random.default_rng(0)
    n = 800
    x0 = rng.normal(0, 1, n)
    x1 = 1.5 * np.tanh(x0) + 0.3 * rng.standard_normal(n)
    xi0 = np.stack([rng.normal(2, 0.5, 300), 1.5 * np.tanh(rng.normal(2, 0.5, 300)) + 0.3 * rng.standard_normal(300)], 1)
    xi1 = np.stack([rng.normal(0, 1, 300), rng.normal(2, 0.5, 300)], 1)
    post = fit_dcdi(np.stack([x0, x1], 1), np.stack([xi0, xi1]), np.eye(2, dtype=bool), DCDIConfig(seed=0, **SHORT))
    np.testing.assert_array_equal(post.dag, [[0, 1], [0, 0]])
    a = 1.0
    xs = post.sample_interventional(0, a, 2000, np.random.default_rng(1))
    assert np.all(xs[:, 0] == a)
    assert abs(xs[:, 1].mean() - 1.5 * np.tanh(a)) < 0.15
    assert abs(xs[:, 1].std() - 0.3) < 0.1
    grid = np.array([1.5 * np.tanh(a)])
    est = post.interventional_log_density(0, a, 1, grid)
    # the true density at the mode: log N(0; 0, 0.3^2)
    assert abs(est.log_density[0] - (-np.log(0.3) - 0.5 * np.log(2 * np.pi))) < 0.4
    np.testing.assert_allclose(est.mc_stderr, 0, atol=1e-12)  # parent intervened: closed form


def test_heteroscedastic_density_integrates_to_one():
    x_obs, x_int, tg = planted_scm(CHAIN3, 200, 50, seed=3)
    post = fit_dcdi(x_obs, x_int, tg, DCDIConfig(heteroscedastic=True, **FAST))
    post.n_mc = 64
    i, j = (2, 0) if post.dag[0, 1] or post.dag[1, 2] else (1, 0)
    grid = np.linspace(-15, 15, 3001)
    dens = np.exp(post.interventional_log_density(j, 0.5, i, grid).log_density)
    np.testing.assert_allclose(np.trapezoid(dens, grid), 1.0, atol=1e-3)
    xs = post.sample_interventional(j, 0.5, 500, np.random.default_rng(0))
    assert xs.shape == (500, 3) and np.all(xs[:, j] == 0.5) and np.isfinite(xs).all()


@pytest.mark.slow
def test_known_interventions_recover_planted_five_node_graph():
    x_obs, x_int, tg = planted_scm(FIVE, 1000, 200, seed=4)
    post = fit_dcdi(x_obs, x_int, tg, DCDIConfig(seed=0))
    e_shd = np.mean([shd(FIVE, g) for g in post.sample_graphs(8, np.random.default_rng(0))])
    assert e_shd <= 1.5, (post.edge_probs(), post.dag)


@pytest.mark.slow
def test_unknown_targets_are_recovered_on_five_nodes():
    x_obs, x_int, tg = planted_scm(FIVE, 1000, 200, seed=4)
    post = fit_dcdi(x_obs, x_int, None, DCDIConfig(seed=0, unknown_targets=True))
    probs = post.intervention_target_probs()
    assert probs.shape == (5, 5)
    assert intervention_auroc(tg, probs) >= 0.8, probs
    # the acceptance criterion is Intv-AUROC; the graph must still beat the empty one (SHD 6);
    # measured SHD 4 with these defaults (one reversal, two extra edges, one missing)
    assert shd(FIVE, post.dag) < FIVE.sum()
