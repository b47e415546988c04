"""Exact BGe posterior by enumeration: counts, concentration, densities, two-node closed form."""
import numpy as np
import pytest
from scipy import stats

from pipeline_lib.baselines.bge import BGe
from pipeline_lib.baselines.enumeration import (
    EnumerationError,
    enumerate_dags,
    markov_equivalent,
    parent_bitmasks,
)
from pipeline_lib.baselines.exact import BGeMixturePosterior, ExactPosterior
from pipeline_lib.metrics import is_dag as is_acyclic
from pipeline_lib.baselines.two_node import TwoNodePosterior


def simulate(n, W, c, s, rng, do=None):
    """Linear-Gaussian SCM with topologically ordered nodes; do = (j, a) clamps X_j."""
    d = len(c)
    x = np.zeros((n, d))
    for v in range(d):
        x[:, v] = c[v] + x @ W[:, v] + s[v] * rng.standard_normal(n)
        if do is not None and v == do[0]:
            x[:, v] = do[1]
    return x


def chain(d=3):
    W = np.zeros((d, d))
    for v in range(1, d):
        W[v - 1, v] = 1.5
    return W, 0.3 * np.arange(d), 0.7 * np.ones(d)


def collider_plus_child():
    """0 -> 2 <- 1, 2 -> 3: a singleton Markov equivalence class."""
    W = np.zeros((4, 4))
    W[0, 2], W[1, 2], W[2, 3] = 1.0, -1.5, 0.8
    return W, np.array([0.5, -0.5, 0.2, 1.0]), np.array([1.0, 0.8, 0.6, 0.5])


def moments_on_grid(post, j, a, i, grid):
    est = post.interventional_log_density(j, a, i, grid)
    p = np.exp(est.log_density)
    mass = np.trapezoid(p, grid)
    mean = np.trapezoid(p * grid, grid)
    var = np.trapezoid(p * (grid - mean) ** 2, grid)
    return mass, mean, var, est


@pytest.mark.parametrize("d,count", [(0, 1), (1, 1), (2, 3), (3, 25), (4, 543), (5, 29281)])
def test_enumeration_counts_acyclic_unique(d, count):
    dags = enumerate_dags(d)
    assert dags.shape == (count, d, d) and dags.dtype == np.uint8
    if d:
        assert is_acyclic(dags).all()
        assert np.all(np.diagonal(dags, axis1=1, axis2=2) == 0)
    assert len(np.unique(dags.reshape(count, -1), axis=0)) == count


def test_enumeration_limits_and_bitmasks():
    with pytest.raises(EnumerationError, match="at most 5"):
        enumerate_dags(6)
    a = np.zeros((1, 3, 3), np.uint8)
    a[0, 0, 2] = a[0, 1, 2] = a[0, 0, 1] = 1
    np.testing.assert_array_equal(parent_bitmasks(a), [[0, 1, 3]])
    cyc = np.zeros((1, 3, 3), np.uint8)
    cyc[0, 0, 1] = cyc[0, 1, 2] = cyc[0, 2, 0] = 1
    assert not is_acyclic(cyc)[0]


def test_markov_equivalence_of_three_node_graphs():
    dags = enumerate_dags(3)
    ch = np.zeros((3, 3), np.uint8)
    ch[0, 1] = ch[1, 2] = 1
    assert markov_equivalent(dags, ch).sum() == 3  # chain, reversed chain, fork
    col = np.zeros((3, 3), np.uint8)
    col[0, 1] = col[2, 1] = 1
    assert markov_equivalent(dags, col).sum() == 1


def test_posterior_concentrates_on_true_mec():
    W, c, s = chain(3)
    rng = np.random.default_rng(0)
    truth = (W != 0).astype(np.uint8)
    small = ExactPosterior.fit(simulate(20, W, c, s, rng)).mec_probability(truth)
    large_post = ExactPosterior.fit(simulate(1000, W, c, s, rng))
    large = large_post.mec_probability(truth)
    assert large > 0.9 and large > small
    assert markov_equivalent(large_post.map_graph()[None], truth)[0]
    np.testing.assert_allclose(large_post.weights.sum(), 1.0)


def test_edge_probs_match_weights_and_samples():
    W, c, s = chain(4)
    post = ExactPosterior.fit(simulate(40, W, c, s, np.random.default_rng(1)))
    ep = post.edge_probs()
    assert np.all(ep + ep.T <= 1 + 1e-12)
    np.testing.assert_allclose(np.diagonal(ep), 0)
    manual = np.array([[post.weights[post.graphs[:, u, v] == 1].sum() for v in range(4)] for u in range(4)])
    np.testing.assert_allclose(ep, manual, atol=1e-12)
    freq = post.sample_graphs(20000, np.random.default_rng(2)).mean(axis=0)
    assert np.abs(freq - ep).max() < 0.02


def test_log_marginal_likelihood_and_edge_penalty():
    W, c, s = chain(3)
    x = simulate(30, W, c, s, np.random.default_rng(4))
    post = ExactPosterior.fit(x)
    bge = BGe()
    direct = np.logaddexp.reduce(bge.log_marginal(x, enumerate_dags(3)) - np.log(25))
    np.testing.assert_allclose(post.log_marginal_likelihood, direct, atol=1e-10)
    sparse = ExactPosterior.fit(x, edge_penalty=3.0)
    n_edges = lambda p: np.einsum("p,pij->", p.weights, p.graphs.astype(float))  # noqa: E731
    assert n_edges(sparse) < n_edges(post)


def test_two_node_closed_form_equals_enumeration():
    rng = np.random.default_rng(5)
    x = np.column_stack([rng.normal(1, 1, 25), np.zeros(25)])
    x[:, 1] = 0.8 * x[:, 0] + rng.normal(0, 0.5, 25)
    ex, tn = ExactPosterior.fit(x), TwoNodePosterior.fit(x)
    # enumeration order is by packed key: empty, 0 -> 1, 1 -> 0 — same as TWO_NODE_GRAPHS
    np.testing.assert_array_equal(ex.graphs, tn.graphs)
    np.testing.assert_allclose(ex.log_weights, tn.log_weights, atol=1e-8)
    grid = np.linspace(-6, 6, 101)
    for j, i, a in [(0, 1, 2.0), (1, 0, -1.0), (0, 1, -3.0)]:
        e1 = ex.interventional_log_density(j, a, i, grid)
        e2 = tn.interventional_log_density(j, a, i, grid)
        np.testing.assert_allclose(e1.log_density, e2.log_density, rtol=0, atol=1e-8)
        np.testing.assert_allclose(e1.mc_stderr, 0)
    xs = tn.sample_interventional(0, 2.0, 40000, np.random.default_rng(0))
    _, mean, var, _ = moments_on_grid(tn, 0, 2.0, 1, np.linspace(-30, 30, 6001))
    assert abs(xs[:, 1].mean() - mean) < 0.03 and abs(xs[:, 1].var() / var - 1) < 0.05
    kl, se = tn.kl_to(lambda z: tn.interventional_log_density(0, 2.0, 1, z).log_density, 0, 2.0, 1, 500,
                      np.random.default_rng(1))
    assert abs(kl) < 1e-12


def test_densities_integrate_to_one_closed_form_and_monte_carlo():
    W, c, s = chain(3)
    post = ExactPosterior.fit(simulate(15, W, c, s, np.random.default_rng(6)), n_mc=64)
    grid = np.linspace(-40, 40, 8001)
    two = ExactPosterior.fit(simulate(15, W[:2, :2], c[:2], s[:2], np.random.default_rng(6)))
    mass_cf, *_, est_cf = moments_on_grid(two, 1, 0.5, 0, grid)
    np.testing.assert_array_equal(est_cf.mc_stderr, 0)  # d = 2: Student-t mixture, no Monte Carlo
    mass_mc, *_, est_mc = moments_on_grid(post, 0, 1.0, 2, grid)
    assert est_mc.mc_stderr.max() > 0  # the chain 0 -> 1 -> 2 needs Monte Carlo
    assert abs(mass_cf - 1) < 1e-3 and abs(mass_mc - 1) < 1e-3
    # fixed draws: the same query gives the same numbers
    again = post.interventional_log_density(0, 1.0, 2, grid[::100]).log_density
    np.testing.assert_array_equal(again, est_mc.log_density[::100])


def test_large_n_matches_true_interventional_distribution():
    """Given the true graph, the BGe parameter posterior at N = 5000 reproduces the true
    interventional laws (closed-form and Monte Carlo queries, densities and samples)."""
    W, c, s = collider_plus_child()
    rng = np.random.default_rng(7)
    x = simulate(5000, W, c, s, rng)
    truth = (W != 0).astype(np.uint8)
    post = BGeMixturePosterior(x, truth[None], np.zeros(1), n_mc=512)
    grid = np.linspace(-15, 15, 3001)
    for j, a, i in [(0, 2.0, 2), (0, 2.0, 3), (2, -1.0, 1), (2, -1.0, 3)]:
        true = simulate(200_000, W, c, s, rng, do=(j, a))[:, i]
        mass, mean, var, _ = moments_on_grid(post, j, a, i, grid)
        assert abs(mass - 1) < 1e-3
        assert abs(mean - true.mean()) < 0.04, (j, i)
        assert abs(var / true.var() - 1) < 0.04, (j, i)
        xs = post.sample_interventional(j, a, 20000, rng)
        assert np.all(xs[:, j] == a)
        assert stats.ks_2samp(xs[:, i], true[:20000]).pvalue > 1e-3


def test_large_n_exact_posterior_is_close_to_truth():
    """Model averaging at N = 5000: the MAP is the true (singleton-MEC) graph. BGe's Occam
    penalty grows only like log N / 2 per edge (~2-5 nats here), so denser I-maps keep a
    few per cent of mass; some of them (edge 0 - 1 present, 2 -> 0) leave X_2 untouched by
    do(X_0), which pulls the averaged mean of X_2 below the truth (2.95) by < 0.15."""
    W, c, s = collider_plus_child()
    rng = np.random.default_rng(7)
    post = ExactPosterior.fit(simulate(5000, W, c, s, rng), n_mc=256)
    np.testing.assert_array_equal(post.map_graph(), (W != 0).astype(np.uint8))
    mass, mean, var, _ = moments_on_grid(post, 0, 2.0, 2, np.linspace(-15, 15, 3001))
    assert abs(mass - 1) < 1e-3
    assert abs(mean - 2.95) < 0.15


def test_mc_standard_error_is_honest():
    W, c, s = collider_plus_child()
    x = simulate(40, W, c, s, np.random.default_rng(8))
    pts = np.array([-1.0, 0.5, 1.5, 3.0])
    rough = ExactPosterior.fit(x, n_mc=64).interventional_log_density(0, 2.0, 3, pts)
    fine = ExactPosterior.fit(x, n_mc=8192, seed=1).interventional_log_density(0, 2.0, 3, pts)
    assert np.all(rough.mc_stderr > 0) and np.all(fine.mc_stderr < rough.mc_stderr)
    assert np.all(np.abs(rough.log_density - fine.log_density) < 5 * rough.mc_stderr + 5 * fine.mc_stderr)


def test_nlpid_beats_plug_in_on_the_wrong_graph():
    W, c, s = collider_plus_child()
    rng = np.random.default_rng(9)
    x = simulate(200, W, c, s, rng)
    post = ExactPosterior.fit(x)
    true = simulate(500, W, c, s, rng, do=(0, 2.0))[:, 2]
    nlpid = -post.interventional_log_density(0, 2.0, 2, true).log_density.sum()
    # plug-in Gaussian of X_2 on the wrong graph 2 -> 0: the intervention changes nothing
    wrong = -stats.norm(x[:, 2].mean(), x[:, 2].std()).logpdf(true).sum()
    assert nlpid < wrong - 50


def test_known_interventions_orient_the_edge():
    rng = np.random.default_rng(10)
    W = np.array([[0.0, 1.0], [0.0, 0.0]])
    c, s = np.zeros(2), np.ones(2)
    x_obs = simulate(200, W, c, s, rng)
    x_int = np.stack([simulate(100, W, c, s, rng, do=(0, a)) for a in (-2.0, 2.0)])
    targets = np.array([[True, False], [True, False]])
    obs_only = ExactPosterior.fit(x_obs)
    np.testing.assert_allclose(obs_only.edge_probs()[0, 1], obs_only.edge_probs()[1, 0], atol=1e-10)
    both = ExactPosterior.fit(x_obs, x_int=x_int, int_targets=targets)
    assert both.edge_probs()[0, 1] > 0.99
    _, mean, _, _ = moments_on_grid(both, 0, 1.0, 1, np.linspace(-15, 15, 3001))
    assert abs(mean - 1.0) < 0.2


def test_node_mask_pads_cleanly_and_errors_are_named():
    W, c, s = chain(3)
    x = simulate(30, W, c, s, np.random.default_rng(11))
    padded = np.column_stack([x[:, :1], np.zeros(30), x[:, 1:]])
    mask = np.array([True, False, True, True])
    p4 = ExactPosterior.fit(padded, node_mask=mask)
    p3 = ExactPosterior.fit(x)
    np.testing.assert_allclose(p4.edge_probs()[np.ix_(mask, mask)], p3.edge_probs(), atol=1e-12)
    assert p4.edge_probs()[1].sum() == 0 and p4.edge_probs()[:, 1].sum() == 0
    np.testing.assert_allclose(p4.interventional_log_density(0, 1.0, 2, np.zeros(3)).log_density,
                               p3.interventional_log_density(0, 1.0, 1, np.zeros(3)).log_density, atol=1e-12)
    with pytest.raises(ValueError, match="padded"):
        p4.interventional_log_density(1, 1.0, 2, np.zeros(3))
    assert np.all(p4.sample_interventional(0, 1.0, 5, np.random.default_rng(0))[:, 1] == 0)
    with pytest.raises(EnumerationError, match="at most 5"):
        ExactPosterior.fit(np.zeros((10, 6)))
    with pytest.raises(ValueError, match="int_targets"):
        ExactPosterior.fit(x, x_int=np.zeros((1, 5, 3)))


def test_mixture_over_arbitrary_particles():
    """DiBS-marginal use: a few particle graphs with arbitrary weights, d = 8."""
    rng = np.random.default_rng(12)
    d = 8
    W = np.triu(rng.normal(0, 1, (d, d)) * (rng.random((d, d)) < 0.3), k=1)
    x = simulate(100, W, np.zeros(d), np.ones(d), rng)
    graphs = np.stack([(W != 0), np.zeros((d, d), bool), (W != 0).T]).astype(np.uint8)
    post = BGeMixturePosterior(x, graphs, np.log([0.6, 0.1, 0.3]), n_mc=128)
    np.testing.assert_allclose(post.edge_probs(), 0.6 * graphs[0] + 0.3 * graphs[2], atol=1e-12)
    grid = np.linspace(-30, 30, 3001)
    mass, *_ = moments_on_grid(post, 0, 1.0, d - 1, grid)
    assert abs(mass - 1) < 1e-3
    with pytest.raises(ValueError, match="acyclic"):
        BGeMixturePosterior(x[:, :2], np.array([[[0, 1], [1, 0]]]), np.zeros(1))


def test_random_order_er_graph_prior_matches_the_sampler_law():
    from pipeline_lib.baselines.enumeration import enumerate_dags
    from pipeline_lib.baselines.exact import linear_extensions

    dags = enumerate_dags(3)
    L = linear_extensions(dags)
    assert L.sum() == 6 * 2**3  # each of the 6 orders admits every subset of its 3 forward pairs
    n_edges = dags.reshape(len(dags), -1).sum(1)
    # hand counts: empty graph 6 orders, one edge 3, chain 1, fork/collider 2, complete 1
    assert set(L[n_edges == 0]) == {6} and set(L[n_edges == 1]) == {3} and set(L[n_edges == 3]) == {1}
    assert sorted(set(L[n_edges == 2])) == [1, 2]
    x = np.random.default_rng(0).standard_normal((50, 3))
    post = ExactPosterior.fit(x, graph_prior="random_order_er", edge_prob=0.3)
    prior = np.exp(post.log_prior)
    # under a random order each ordered pair is an edge with probability p / 2
    p_edge = np.einsum("g,gij->ij", prior, dags.astype(float))
    np.testing.assert_allclose(p_edge[~np.eye(3, dtype=bool)], 0.15, atol=1e-12)
    with pytest.raises(ValueError, match="graph_prior"):
        ExactPosterior.fit(x, graph_prior="nope")
