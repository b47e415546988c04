"""The shared posterior machinery: graph mixtures and Rao-Blackwellised densities."""
import numpy as np
import pytest
from scipy import stats

from pipeline_lib.baselines.base import GraphMixturePosterior
from tests.linear_scm import LinearMixture


class GraphsOnly(GraphMixturePosterior):
    def interventional_log_density(self, j, a, i, x):
        raise NotImplementedError

    def sample_interventional(self, j, a, n, rng):
        raise NotImplementedError


def chain_w():
    # 0 -> 1 -> 2 with weights 2 and -1
    W = np.zeros((1, 3, 3))
    W[0, 0, 1], W[0, 1, 2] = 2.0, -1.0
    return W


def test_edge_probs_and_sampling_follow_weights():
    g = np.zeros((2, 2, 2), np.uint8)
    g[0, 0, 1] = 1
    g[1, 1, 0] = 1
    post = GraphsOnly(g, np.log([0.75, 0.25]))
    np.testing.assert_allclose(post.edge_probs(), [[0, 0.75], [0.25, 0]])
    s = post.sample_graphs(4000, np.random.default_rng(0))
    assert abs(s[:, 0, 1].mean() - 0.75) < 0.03


def test_mixture_rejects_bad_shapes():
    with pytest.raises(ValueError, match="log_weights"):
        GraphsOnly(np.zeros((2, 3, 3)), np.zeros(3))


def test_rao_blackwell_child_of_intervened_node_is_exact():
    # do(X0 = 1): X1 ~ N(2, 1) exactly, no Monte Carlo in the last step
    post = LinearMixture(chain_w(), np.ones((1, 3)), np.zeros(1), n_mc=64)
    x = np.linspace(-2, 6, 9)
    est = post.interventional_log_density(0, 1.0, 1, x)
    np.testing.assert_allclose(est.log_density, stats.norm(2, 1).logpdf(x), atol=1e-10)
    np.testing.assert_allclose(est.mc_stderr, 0, atol=1e-10)


def test_rao_blackwell_grandchild_matches_gaussian():
    # do(X0 = 1): X2 = -X1 + e2, X1 ~ N(2, 1) -> X2 ~ N(-2, 2)
    post = LinearMixture(chain_w(), np.ones((1, 3)), np.zeros(1), n_mc=4000)
    x = np.array([-4.0, -2.0, 0.0])
    est = post.interventional_log_density(0, 1.0, 2, x)
    truth = stats.norm(-2, np.sqrt(2)).logpdf(x)
    assert np.all(np.abs(est.log_density - truth) < 4 * est.mc_stderr + 1e-3)
    assert np.all(est.mc_stderr > 0)


def test_sampling_and_mixture_of_two_components():
    W = np.concatenate([chain_w(), np.zeros((1, 3, 3))])
    post = LinearMixture(W, np.ones((2, 3)), np.log([0.5, 0.5]), n_mc=2000)
    xs = post.sample_interventional(0, 1.0, 6000, np.random.default_rng(1))
    assert xs.shape == (6000, 3) and np.all(xs[:, 0] == 1.0)
    # X1 is a 50/50 mixture of N(2,1) and N(0,1)
    assert abs(xs[:, 1].mean() - 1.0) < 0.06
    est = post.interventional_log_density(0, 1.0, 1, np.array([1.0]))
    truth = np.log(0.5 * stats.norm(2, 1).pdf(1.0) + 0.5 * stats.norm(0, 1).pdf(1.0))
    np.testing.assert_allclose(est.log_density, truth, atol=1e-10)


def test_query_validation():
    post = LinearMixture(chain_w(), np.ones((1, 3)), np.zeros(1))
    with pytest.raises(ValueError, match="outcome node"):
        post.interventional_log_density(0, 1.0, 0, np.zeros(2))
    with pytest.raises(ValueError, match="out of range"):
        post.interventional_log_density(5, 1.0, 1, np.zeros(2))


def test_empty_graph_reference_is_the_observational_marginal():
    from pipeline_lib.baselines.registry import UnknownMethodError, fit_baseline

    rng = np.random.default_rng(3)
    x0 = rng.normal(size=5000)
    x = np.stack([x0, 2.0 * x0 + 0.5 * rng.normal(size=5000) + 1.0, rng.normal(size=5000)], axis=1)
    post = fit_baseline("empty-graph", {"x_obs": x})
    assert np.all(post.edge_probs() == 0)
    assert not post.sample_graphs(4, rng).any()
    pts = np.array([-2.0, 1.0, 3.0])
    dens = post.interventional_log_density(0, 2.5, 1, pts)
    # the intervention on the true parent X_0 is ignored: the density is X_1's marginal
    np.testing.assert_allclose(dens.log_density, post.interventional_log_density(2, -1.0, 1, pts).log_density)
    np.testing.assert_allclose(dens.mc_stderr, 0.0)
    ref = stats.norm.logpdf(pts, x[:, 1].mean(), x[:, 1].std())
    np.testing.assert_allclose(dens.log_density, ref, atol=0.02)
    with pytest.raises(UnknownMethodError, match="empty-graph"):
        fit_baseline("empty", {"x_obs": x})
