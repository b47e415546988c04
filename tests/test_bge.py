"""BGe score: hand-checkable identities, score equivalence, and the parameter sampler."""
import numpy as np
import pytest

from pipeline_lib.baselines.bge import BGe, BGeError, sample_bge_parameters, student_t_logpdf
from pipeline_lib.baselines.enumeration import enumerate_dags, markov_equivalent


def adj_from(d, edges):
    a = np.zeros((d, d), np.uint8)
    for u, v in edges:
        a[u, v] = 1
    return a


def linear_data(n, W, c, s, rng):
    d = len(c)
    x = np.zeros((n, d))
    for v in range(d):  # nodes are topologically ordered in these tests
        x[:, v] = c[v] + x @ W[:, v] + s[v] * rng.standard_normal(n)
    return x


@pytest.fixture(scope="module")
def chain3():
    rng = np.random.default_rng(3)
    W = np.zeros((3, 3))
    W[0, 1], W[1, 2] = 1.2, -0.8
    return linear_data(50, W, np.array([0.5, -0.2, 1.0]), np.ones(3), rng)


def test_score_equivalence_and_v_structure(chain3):
    bge = BGe()
    chain = adj_from(3, [(0, 1), (1, 2)])
    rev = adj_from(3, [(2, 1), (1, 0)])
    fork = adj_from(3, [(1, 0), (1, 2)])
    collider = adj_from(3, [(0, 1), (2, 1)])
    s = bge.log_marginal(chain3, np.stack([chain, rev, fork, collider]))
    np.testing.assert_allclose(s[1:3], s[0], rtol=0, atol=1e-8)
    assert abs(s[3] - s[0]) > 1.0  # the data come from the chain, so the collider scores worse
    assert s[3] < s[0]


def test_score_equivalence_over_all_dags_d4():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 4)) @ rng.standard_normal((4, 4))
    dags = enumerate_dags(4)
    s = BGe().log_marginal(x, dags)
    # complete DAGs (24 of them) are all equivalent
    complete = dags.reshape(len(dags), -1).sum(1) == 6
    assert complete.sum() == 24
    np.testing.assert_allclose(s[complete], s[complete][0], atol=1e-8)
    for ref in dags[rng.choice(len(dags), 15, replace=False)]:
        same = markov_equivalent(dags, ref)
        np.testing.assert_allclose(s[same], s[same][0], atol=1e-8)


def test_local_score_is_the_chain_rule_of_student_t_predictives(chain3):
    """log p(x_v | x_P) = sum_n log p(x_nv | x_nP, rows < n): links the score to the
    conjugate posterior predictive used for interventional densities."""
    bge = BGe()
    x = chain3[:12]
    for v, parents in [(0, ()), (2, (1,)), (1, (0, 2))]:
        mask = sum(1 << u for u in parents)
        total = 0.0
        for n in range(len(x)):
            post = BGe().scorer(x[:n], None).family_posterior(v, mask)  # posterior after n rows
            dz = x[n] - post.nu
            scale2 = post.b_n / post.a_n * (1 + 1 / post.alpha_mu_post + dz @ post.prec_inv @ dz)
            total += student_t_logpdf(x[n, v], 2 * post.a_n, post.nu[v] + post.beta @ dz, scale2)
        np.testing.assert_allclose(bge.local_score(x, v, parents), total, rtol=0, atol=1e-9)


def test_one_variable_marginal_by_hand():
    # d = 1, alpha_mu = 1, alpha_w = 3: t = 1 * (3 - 2) / 2 = 0.5; one point x = 2:
    # R = 0.5 + 0 + (1/2) * 4 = 2.5, log p = -1/2 log pi + 1/2 log(1/2) + lgG(2) - lgG(3/2)
    #         + (3/2) log 0.5 - 2 log 2.5
    from scipy.special import gammaln

    expected = (-0.5 * np.log(np.pi) + 0.5 * np.log(0.5) + gammaln(2.0) - gammaln(1.5)
                + 1.5 * np.log(0.5) - 2 * np.log(2.5))
    got = BGe().log_marginal(np.array([[2.0]]), np.zeros((1, 1, 1)))[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_batched_log_marginal_equals_local_scores_and_cache(chain3):
    bge = BGe(alpha_mu=2.0, alpha_w=7.0, mean_prior=0.3)
    dags = enumerate_dags(3)
    s = bge.log_marginal(chain3, dags)
    for k in [0, 5, 17, 24]:
        ref = sum(bge.local_score(chain3, v, tuple(np.flatnonzero(dags[k][:, v]))) for v in range(3))
        np.testing.assert_allclose(s[k], ref, atol=1e-10)
    assert bge.scorer(chain3) is bge.scorer(chain3.copy())  # same data -> cached scorer


def test_interventional_rows_are_dropped_from_the_intervened_node(chain3):
    mask = np.zeros(chain3.shape, bool)
    mask[:20, 1] = True  # node 1 intervened in the first 20 rows
    bge = BGe()
    with_mask = bge.local_score(chain3, 1, (0,), interv_mask=mask)
    np.testing.assert_allclose(with_mask, BGe().local_score(chain3[20:], 1, (0,)), atol=1e-10)
    # node 2 is not intervened: all rows count
    np.testing.assert_allclose(bge.local_score(chain3, 2, (1,), interv_mask=mask),
                               BGe().local_score(chain3, 2, (1,)), atol=1e-10)


def test_bad_inputs_are_named():
    x = np.zeros((5, 3))
    with pytest.raises(BGeError, match="alpha_w"):
        BGe(alpha_w=4.0).log_marginal(x, np.zeros((1, 3, 3)))
    with pytest.raises(BGeError, match="adj"):
        BGe().log_marginal(x, np.zeros((1, 2, 2)))
    with pytest.raises(BGeError, match="interv_mask"):
        BGe().log_marginal(x, np.zeros((1, 3, 3)), interv_mask=np.zeros((4, 3), bool))
    with pytest.raises(BGeError, match="parents"):
        BGe().local_score(x, 0, (0,))


def test_sampler_shapes_support_and_reproducibility():
    adj = np.stack([adj_from(4, [(0, 1), (0, 2), (1, 2), (2, 3)]), adj_from(4, [])])
    w1, c1, s1 = sample_bge_parameters(adj, np.random.default_rng(7))
    w2, c2, s2 = sample_bge_parameters(adj, np.random.default_rng(7))
    assert w1.shape == (2, 4, 4) and c1.shape == (2, 4) and s1.shape == (2, 4)
    assert w1.tobytes() == w2.tobytes() and c1.tobytes() == c2.tobytes() and s1.tobytes() == s2.tobytes()
    assert np.all((w1 != 0) == (adj != 0))
    assert np.all(s1 > 0)


def test_sampler_prior_moments():
    # d = 2, alpha_w = 6, t = 1 * 3 / 2 = 1.5. Node v with p parents: sigma^2 = 1 / W_vv with
    # W_vv ~ chi2(alpha_w - d + p + 1) / t, i.e. InvGamma((alpha_w - d + p + 1)/2, t/2):
    # root E[sigma^2] = 0.75 / 1.5 = 0.5, child (p = 1) E[sigma^2] = 0.75 / 2 = 0.375.
    # b | sigma^2 ~ N(0, sigma^2 / t) -> E[b^2] = 0.375 / 1.5 = 0.25;
    # c | sigma^2 ~ N(0, sigma^2 / alpha_mu) -> E[c_root^2] = 0.5.
    adj = np.repeat(adj_from(2, [(0, 1)])[None], 200_000, axis=0)
    w, c, s = sample_bge_parameters(adj, np.random.default_rng(0), alpha_w=6.0)
    assert abs((s[:, 0] ** 2).mean() - 0.5) < 0.02
    assert abs((s[:, 1] ** 2).mean() - 0.375) < 0.015
    assert abs((w[:, 0, 1] ** 2).mean() - 0.25) < 0.01
    assert abs((c[:, 0] ** 2).mean() - 0.5) < 0.02


def _mc_log_marginal(x, adj, n_draws, seed):
    W, c, s = sample_bge_parameters(np.repeat(adj[None], n_draws, axis=0), np.random.default_rng(seed))
    mean = c[:, None, :] + np.einsum("nu,muv->mnv", x, W)
    ll = (-0.5 * ((x[None] - mean) / s[:, None, :]) ** 2 - np.log(s[:, None, :]) - 0.5 * np.log(2 * np.pi)).sum((1, 2))
    top = ll.max()
    lik = np.exp(ll - top)
    return np.log(lik.mean()) + top, lik.std() / (np.sqrt(n_draws) * lik.mean())


@pytest.mark.parametrize("edges", [[(0, 1)], [(1, 0)], []])
def test_sampler_and_score_are_the_same_model(edges):
    """p(D | G) from BGe equals E_theta~prior[p(D | theta, G)] (Monte Carlo, tiny N)."""
    x = np.array([[0.3, -1.1], [1.4, 0.2], [-0.6, 0.9]])
    adj = adj_from(2, edges)
    exact = BGe().log_marginal(x, adj)[0]
    est, se = _mc_log_marginal(x, adj, 200_000, seed=11)
    assert se < 0.02
    assert abs(est - exact) < 4 * se + 1e-3


@pytest.mark.slow
def test_sampler_and_score_are_the_same_model_d3():
    x = np.array([[0.3, -1.1, 0.5], [1.4, 0.2, -0.3], [-0.6, 0.9, 1.2], [0.1, 0.4, -0.9]])
    for edges in ([(0, 1), (1, 2)], [(0, 2), (1, 2)], [(0, 1), (0, 2), (1, 2)]):
        adj = adj_from(3, edges)
        exact = BGe().log_marginal(x, adj)[0]
        est, se = _mc_log_marginal(x, adj, 1_000_000, seed=5)
        assert abs(est - exact) < 4 * se + 1e-3
