"""The oracle (the true SCM of a stored task): exact noise abduction and counterfactuals,
the linear-Gaussian interventional density in closed form, and the NLPID floor."""
import numpy as np
import pytest
from scipy import stats

from flows.spec import load_prior
from pipeline_lib.baselines.registry import fit_baseline
from pipeline_lib.evaluation import evaluate_answer, make_queries
from pipeline_lib.priors import sample_batch, sample_split_range
from pipeline_lib.priors.oracle import OracleError, TrueSCM
from pipeline_lib.priors.sampler import split_seed
from pipeline_lib.taskdata import restrict, task_slice


def _task(prior, index, **over):
    cfg = load_prior(prior, over)
    return cfg, task_slice(sample_split_range(cfg, "test", index, index + 1), 0)


@pytest.mark.parametrize("prior", ["lin-3node-strong", "nn-3node", "gp-3node"])
def test_noise_abduction_and_counterfactuals_are_exact(prior):
    cfg, task = _task(prior, 2, counterfactuals=True)
    data = restrict(task)
    scm = TrueSCM(cfg, "test", 2, check_x_obs=data["x_obs"])
    np.testing.assert_allclose(scm.predict_noise(data["x_obs"]), data["noise_obs"], atol=1e-4)
    np.testing.assert_allclose(scm.sample_observational(len(data["x_obs"]), noise=data["noise_obs"]),
                               data["x_obs"], atol=1e-4)
    k = 0
    j = int(np.flatnonzero(data["int_targets"][k])[0])
    cf = scm.counterfactual(data["x_obs"], {j: float(data["int_values"][k, j])})
    np.testing.assert_allclose(cf, data["x_cf"][k], atol=1e-4)
    np.testing.assert_array_equal(scm.edge_probs(), data["adjacency"])


def test_linear_gaussian_density_matches_the_closed_form():
    """do(X_j = a) in a linear-Gaussian SCM: X_i is Gaussian with the mean and variance of
    the truncated system; the oracle's Monte Carlo estimate agrees within its error."""
    cfg, task = _task("lin-3node-strong", 0)
    _, par = sample_batch(cfg, [split_seed(cfg, "test", 0)], return_params=True)
    stored = sample_batch(cfg, [split_seed(cfg, "test", 0)])
    W, b, s = par["weights"][0], par["intercepts"][0], par["noise_scale"][0]
    m, sd = stored["obs_mean"][0].astype(float), stored["obs_std"][0].astype(float)
    scm = TrueSCM(cfg, "test", 0, n_mc=20000, closed_form=False)
    exact = TrueSCM(cfg, "test", 0)
    assert exact.closed_form and not scm.closed_form
    d = 3
    for j in range(d):
        for i in range(d):
            if i == j:
                continue
            a_std = 1.5
            # raw do: x_j = m_j + sd_j a; closed form by solving x = W^T x + b + eps with row j cut
            Wc = W.copy()
            Wc[:, j] = 0.0
            A = np.linalg.inv(np.eye(d) - Wc.T)  # x = A (b' + eps'), b'_j = a_raw, eps'_j = 0
            bb = b.copy()
            bb[j] = m[j] + sd[j] * a_std
            ss = s.copy()
            ss[j] = 0.0
            mean_raw = (A @ bb)[i]
            var_raw = (A[i] ** 2 * ss**2).sum()
            pts = np.array([-2.0, 0.0, 1.0, 2.5])
            ref = stats.norm.logpdf(m[i] + sd[i] * pts, mean_raw, np.sqrt(var_raw)) + np.log(sd[i])
            est = scm.interventional_log_density(j, a_std, i, pts)  # Monte Carlo, unbiased in density
            assert np.all(np.abs(est.log_density - ref) < 4 * est.mc_stderr + 1e-6), (j, i, est, ref)
            cf = exact.interventional_log_density(j, a_std, i, pts)  # the oracle's closed form
            np.testing.assert_allclose(cf.log_density, ref, atol=1e-5)
            assert not cf.mc_stderr.any()


def test_batched_monte_carlo_shares_draws_per_intervention_and_equals_the_direct_formula():
    """log_density_batch answers exactly as query by query; the outcomes of one intervention
    see the same parent draws; the column-chunked estimate equals the whole (S, m) formula."""
    from scipy.special import logsumexp

    from pipeline_lib.priors import mechanisms
    from pipeline_lib.priors.oracle import noise_log_density

    cfg, task = _task("mace-nn-3node", 1)
    q = make_queries(task)
    scm = TrueSCM(cfg, "test", 1, n_mc=3000)  # 3000 draws: several column chunks of 174
    batch = scm.log_density_batch(q.j, q.a, q.i, q.samples)
    for k in range(len(q)):
        one = scm.interventional_log_density(int(q.j[k]), float(q.a[k]), int(q.i[k]), q.samples[k])
        np.testing.assert_array_equal(one.log_density, batch.log_density[k])
        np.testing.assert_array_equal(one.mc_stderr, batch.mc_stderr[k])
    j, a, i, x = int(q.j[0]), float(q.a[0]), int(q.i[0]), q.samples[0]
    xs = scm._do_parents(j, a)
    np.testing.assert_array_equal(xs, scm._do_parents(j, a))
    ci = int(scm._canon[i])
    f = mechanisms.evaluate(cfg.mechanism, scm._params, scm._adj_c, xs[None], ci)[0]
    sigma = scm._sigma_c[ci]
    terms = noise_log_density(cfg.noise.kind, (scm._mean[i] + scm._std[i] * x[None] - f[:, None]) / sigma)
    direct = logsumexp(terms - np.log(sigma) + np.log(scm._std[i]), axis=0) - np.log(3000)
    np.testing.assert_allclose(batch.log_density[0], direct, rtol=0, atol=1e-10)
    assert batch.mc_stderr[0].max() > 0


def test_oracle_is_the_nlpid_floor_and_needs_its_prior():
    """On a strong-effect prior the oracle beats the exact posterior, which beats the empty graph."""
    cfg, _ = _task("lin-3node-strong", 0)
    nl = {"oracle": [], "exact": [], "empty-graph": []}
    for t in range(6):
        task = task_slice(sample_split_range(cfg, "test", t, t + 1), 0)
        task["scm"] = {"config": cfg.to_json(), "split": "test", "index": t}
        for name in nl:
            nl[name].append(evaluate_answer(fit_baseline(name, restrict(task)), task)["nlpid"])
    m = {k: np.mean(v) for k, v in nl.items()}
    assert m["oracle"] < m["exact"] < m["empty-graph"], m
    task = task_slice(sample_split_range(cfg, "test", 0, 1), 0)
    with pytest.raises(OracleError, match="no reference to a generating prior"):
        fit_baseline("oracle", restrict(task))
    task["scm"] = {"config": cfg.to_json(), "split": "test", "index": 1}  # the wrong task
    with pytest.raises(OracleError, match="differs from what its config samples"):
        fit_baseline("oracle", restrict(task))
    q = make_queries(task)
    assert len(q) == 6


def test_signal_figure_separates_strong_from_flat_priors():
    """lin-3node-strong carries ~1 nat per sample of causal signal; the bounded-mechanism GP
    prior almost none (the reason its NLPID tables could not rank methods)."""
    from typer.testing import CliRunner

    from flows.cli import app
    from pipeline_lib.signal import prior_signal

    strong = prior_signal(load_prior("lin-3node-strong"), 8)
    flat = prior_signal(load_prior("gp-3node"), 8)
    assert strong["signal_nats"] > 0.5 and not strong["low_signal"]
    assert flat["signal_nats"] < 0.1 and flat["signal_nats"] < strong["signal_nats"] / 5
    assert 0 <= flat["share_above_0.1"] < strong["share_above_0.1"] <= 1
    r = CliRunner().invoke(app, ["inspect", "no-such-prior"])
    assert r.exit_code == 2 and "no-such-prior" in r.output
