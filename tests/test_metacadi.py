"""MetaCaDI: closed-form adaptation, target recovery, invariances, and that targets stay unknown."""
import numpy as np
import pytest
import torch

from pipeline_lib import metrics as M
from pipeline_lib.models.metacadi import MetaCaDIConfig, MetaCaDIInputError, MetaCaDIModel, fit_metacadi
from pipeline_lib.models.metacadi.likelihood import gradient_adapt, ridge_objective, ridge_solve
from pipeline_lib.priors.config import PriorConfig
from pipeline_lib.priors.sampler import sample_split_range
from pipeline_lib.taskdata import restrict, task_slice

# a small meta-learning protocol: 8 meta-training + 8 meta-test experiments
SMALL = dict(n_train_tasks=8, n_test_tasks=8, n_support=10, n_query=30, n_test_rows=10, hidden=16,
             feat_dim=6, predictor="per_node", embed_dim=16, predictor_hidden=32, n_eval_graphs=8,
             n_edge_mc=200, query_batch=16, n_hsic=16, n_graph_mc=1,  # 1 DAG sample per step: fast tests
             # the planted systems' 3-4 sd shifts: at the default lambda_I 0.3 the per-task last layer
             # also claims non-targets, at lambda_G 0.1 the graph stays near the prior (README)
             lambda_I=1.0, lambda_G=0.01)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted_system(d: int = 4, seed: int = 0, n_regimes: int = 16) -> dict:
    """One linear-Gaussian system whose soft interventions shift their single target by 3-4 sd."""
    cfg = PriorConfig.from_dict({
        "name": "planted", "seed": seed,
        "graph": {"kind": "erdos_renyi", "n_nodes": d, "expected_parents": 1.0},
        "mechanism": {"kind": "linear", "w_min": 0.5, "w_max": 1.5},
        "noise": {"kind": "gaussian", "scale_min": 0.3, "scale_max": 0.5},
        "interventions": {"n_regimes": n_regimes, "kind": "soft", "max_targets": 1, "targets_known": False,
                          "value_dist": "uniform_sign", "value_low": 3.0, "value_high": 4.0},
        "n_obs": 40, "n_int": 40, "splits": {"train": 0, "val": 0, "test": 1},
    })
    return restrict(task_slice(sample_split_range(cfg, "test", 0, 1), 0))


@pytest.fixture(scope="module")
def planted():
    data = planted_system()
    post = fit_metacadi(data, MetaCaDIConfig(steps=300, **SMALL))
    return data, post


# ----------------------------------------------------------------------------- closed form


def test_ridge_closed_form_equals_gradient_descent_run_to_convergence():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(3, 4, 10, 6, generator=gen, dtype=torch.float64)  # (T, d, n_s, F)
    y = torch.randn(3, 4, 10, generator=gen, dtype=torch.float64)
    lam = 0.7
    w_closed = ridge_solve(h, y, lam)
    # step size 1 / L for the L-smooth objective, L = 2 (lambda_max(H^T H) + lambda)
    lip = 2 * (torch.linalg.eigvalsh(h.transpose(-1, -2) @ h).max() + lam)
    w0 = [torch.zeros(3, 4, 6, dtype=torch.float64, requires_grad=True)]
    (w_gd,) = gradient_adapt(lambda p: ridge_objective(h, y, p[0], lam), w0, 3000, float(1 / lip), False)
    np.testing.assert_allclose(w_closed.numpy(), w_gd.detach().numpy(), rtol=1e-7, atol=1e-9)
    # and it is the stationary point of eq. 5 (gradient zero), not just any fixed point
    w = w_closed.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ridge_objective(h, y, w, lam), w)
    assert float(g.abs().max()) < 1e-9


def test_ridge_is_differentiable_for_the_outer_loop():
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(2, 3, 8, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, 8, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda hh: ridge_solve(hh, y, 0.5), (h,))


@pytest.mark.parametrize("inner", ["intv_maml", "full_maml"])
def test_maml_variants_share_the_code_path_and_fit_the_support(inner):
    cfg = MetaCaDIConfig(inner=inner, inner_steps=20, inner_lr=0.05, **SMALL)
    model = MetaCaDIModel(4, cfg)
    gen = torch.Generator().manual_seed(0)
    x_s = torch.randn(5, 10, 4, generator=gen)
    adj = model.dag.sample(1, gen)[0]
    ad = model.adapt(x_s, adj, create_graph=True)
    assert ad.w.shape == (5, 4, cfg.feat_dim + 1) and (ad.obs is not None) == (inner == "full_maml")
    base = model.predict(x_s, adj, type(ad)(w=model.w0.expand(5, 4, -1)))[1]
    after = model.predict(x_s, adj, ad)[1]
    assert ((after - x_s) ** 2).mean() < ((base - x_s) ** 2).mean()
    loss, _ = model.loss(x_s, x_s + 0.1, gen)
    loss.backward()  # second-order gradients reach the shared initialisation
    assert model.w0.grad is not None and model.w0.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- fitted system


def test_planted_targets_are_recovered_fast(planted):
    data, post = planted
    probs = post.intervention_target_probs()
    assert probs.shape == data["int_targets"].shape
    test = slice(8, 16)  # meta-test experiments: 10 rows each, adapted one at a time
    assert M.intervention_auroc(data["int_targets"][test], probs[test]) >= 0.9
    assert M.intervention_auroc(data["int_targets"], probs) >= 0.9


@pytest.mark.slow
def test_planted_targets_are_recovered_at_the_paper_protocol():
    data = planted_system(d=5, seed=0, n_regimes=40)
    cfg = MetaCaDIConfig(steps=300, **{**SMALL, "n_train_tasks": 20, "n_test_tasks": 20})
    probs = fit_metacadi(data, cfg).intervention_target_probs()
    assert M.intervention_auroc(data["int_targets"][20:], probs[20:]) >= 0.9


@pytest.mark.slow
def test_planted_graph_posterior_recovers_most_edges():
    """Strong soft shifts (3-4 sd), the paper's protocol sizes on 5 nodes: the edge posterior
    ranks the true edges first and its samples beat the empty graph's SHD (= #edges)."""
    data = planted_system(d=5, seed=0, n_regimes=40)
    cfg = MetaCaDIConfig(steps=300, **{**SMALL, "n_train_tasks": 20, "n_test_tasks": 20, "n_graph_mc": 4})
    post = fit_metacadi(data, cfg)
    g = data["adjacency"]
    assert M.edge_auroc(g, post.edge_probs()) >= 0.8
    assert M.expected_shd(g, post.sample_graphs(100, np.random.default_rng(0))) < 0.75 * g.sum()


def test_metacadi_presets_validate():
    from flows.spec import load_preset

    for name in ("metacadi-synthetic", "metacadi-sergio"):
        spec = load_preset(name)
        names = [b.name for b in spec.baselines]
        assert {"metacadi", "bacadi", "dcdi-unknown", "empty-graph", "oracle"} <= set(names)
        cfg = spec.baselines[names.index("metacadi")].typed_config
        prior = spec.prior_configs()[0]
        # one system = one task: the prior's regimes and rows fit the meta-learning split
        assert prior.interventions.n_regimes >= cfg.n_train_tasks + cfg.n_test_tasks
        assert prior.n_int >= cfg.n_support + cfg.n_query and prior.graph.n_nodes == 10


def test_graph_posterior_contract(planted):
    data, post = planted
    d = data["x_obs"].shape[1]
    probs = post.edge_probs()
    assert probs.shape == (d, d) and np.all(np.diag(probs) == 0) and np.all((probs >= 0) & (probs <= 1))
    graphs = post.sample_graphs(20, np.random.default_rng(0))
    assert graphs.shape == (20, d, d) and graphs.dtype == np.uint8 and all(M.is_dag(g) for g in graphs)


def test_adapt_is_closed_form_and_reproduces_the_meta_test_answer(planted):
    data, post = planted
    k = 11  # a meta-test regime: adapted from its first n_test_rows rows
    np.testing.assert_allclose(post.adapt(data["x_int"][k, :10]), post.intervention_target_probs()[k],
                               rtol=1e-5, atol=1e-6)


def test_adapt_is_invariant_to_the_order_of_support_rows(planted):
    data, post = planted
    x = data["x_int"][12, :10]
    perm = np.random.default_rng(0).permutation(10)
    a, b = post.adapt(x), post.adapt(x[perm])
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # ... but it does look at the rows: another experiment gets another answer
    assert np.abs(post.adapt(data["x_int"][13, :10]) - a).max() > 1e-3


def test_adapt_rejects_bad_rows(planted):
    _, post = planted
    with pytest.raises(MetaCaDIInputError, match="x_new"):
        post.adapt(np.zeros((10, 3)))
    with pytest.raises(MetaCaDIInputError, match="NaN"):
        post.adapt(np.full((10, 4), np.nan))


# ----------------------------------------------------------------------------- targets stay unknown


def test_the_method_never_reads_targets_or_graph():
    data = planted_system(d=3, seed=2)
    cfg = MetaCaDIConfig(steps=20, **SMALL)
    a = fit_metacadi(data, cfg)
    garbage = dict(data)
    garbage["int_targets"] = np.full(data["int_targets"].shape, np.nan)
    garbage["int_values"] = np.full(data["int_values"].shape, 1e9)
    garbage["adjacency"] = 1 - data["adjacency"]
    b = fit_metacadi(garbage, cfg)
    c = fit_metacadi({"x_obs": data["x_obs"], "x_int": data["x_int"]}, cfg)
    for other in (b, c):
        np.testing.assert_array_equal(a.intervention_target_probs(), other.intervention_target_probs())
        np.testing.assert_array_equal(a.edge_probs(), other.edge_probs())


def test_input_errors_name_the_field():
    data = planted_system(d=3, seed=2)
    with pytest.raises(MetaCaDIInputError, match="n_train_tasks"):
        fit_metacadi(data, MetaCaDIConfig(steps=1, **{**SMALL, "n_train_tasks": 12}))
    with pytest.raises(MetaCaDIInputError, match="n_support"):
        fit_metacadi(data, MetaCaDIConfig(steps=1, **{**SMALL, "n_query": 35}))
    with pytest.raises(MetaCaDIInputError, match="x_obs"):
        fit_metacadi({"x_int": data["x_int"]}, MetaCaDIConfig(steps=1, **SMALL))
    with pytest.raises(ValueError, match="inner"):
        MetaCaDIConfig(inner="sgd")
    with pytest.raises(ValueError, match="not_a_field"):
        MetaCaDIConfig(not_a_field=1)


# ----------------------------------------------------------------------------- UT-IGSP baseline


def test_ut_igsp_without_its_package_names_the_install_line(monkeypatch):
    import sys

    from pipeline_lib.baselines.ut_igsp import UTIGSPUnavailable, fit_ut_igsp

    monkeypatch.setitem(sys.modules, "graphical_model_learning", None)  # import fails as if not installed
    data = planted_system(d=3, seed=2)
    with pytest.raises(UTIGSPUnavailable, match="pip install --pre graphical-model-learning"):
        fit_ut_igsp(data["x_obs"], data["x_int"])


def test_ut_igsp_registry_entry_and_input_errors():
    from pipeline_lib.baselines.registry import BaselineConfigError, check_config, get_baseline
    from pipeline_lib.baselines.ut_igsp import UTIGSPInputError, fit_ut_igsp

    spec = get_baseline("ut-igsp")
    assert spec.sees == ("x_obs", "x_int")  # targets stay unknown
    assert check_config("ut-igsp", {"alpha_ci": 0.01}).alpha_ci == 0.01
    with pytest.raises((BaselineConfigError, ValueError), match="alpha_inv"):
        check_config("ut-igsp", {"alpha_inv": 2.0})
    with pytest.raises(UTIGSPInputError, match="x_int"):
        fit_ut_igsp(np.zeros((10, 3)), np.zeros((2, 10, 4)))


def test_ut_igsp_recovers_a_planted_linear_system():
    pytest.importorskip("graphical_model_learning")
    from pipeline_lib.baselines.ut_igsp import fit_ut_igsp

    rng = np.random.default_rng(0)
    d, n = 5, 400
    w = {(0, 1): 1.2, (1, 2): -1.0, (2, 3): 0.9, (0, 4): 1.1}

    def draw(target=None):
        x, e = np.zeros((n, d)), rng.normal(size=(n, d))
        if target is not None:
            e[:, target] += 3.0  # soft shift of the target's noise
        for j in range(d):
            x[:, j] = e[:, j] + sum(c * x[:, i] for (i, k), c in w.items() if k == j)
        return x

    targets = [1, 2, 3, 4]
    post = fit_ut_igsp(draw(), np.stack([draw(t) for t in targets]))
    truth = np.zeros((d, d), dtype=np.uint8)
    for i, j in w:
        truth[i, j] = 1
    assert M.shd(truth, post.adjacency) == 0
    np.testing.assert_array_equal(post.intervention_target_probs(), np.eye(d)[targets])


def test_ordering_starts_from_the_experiments_mean_shifts(monkeypatch):
    """order_init='shift_count' (the default): the DP-DAG's ordering scores start from how many
    experiments shift each node's mean against x_obs (a shift reaches the target's
    descendants, so deeper nodes start later); 'uniform' starts them all at 0."""
    import pipeline_lib.models.metacadi.fit as fit_mod
    from pipeline_lib.models.dpdag import shift_count_scores

    seen = []
    original = fit_mod.train_model

    def spy(support, query, cfg, order_scores=None):
        model, history, seconds = original(support, query, cfg, order_scores)
        seen.append((support, query, order_scores))
        return model, history, seconds

    monkeypatch.setattr(fit_mod, "train_model", spy)
    data = planted_system(d=4, seed=0, n_regimes=16)
    cfg = MetaCaDIConfig(steps=1, **SMALL)
    assert cfg.order_init == "shift_count"
    fit_metacadi(data, cfg)
    support, query, scores = seen[-1]
    rows = np.concatenate([support, query], axis=1)  # standardized; the obs experiment last
    np.testing.assert_allclose(scores, shift_count_scores(rows[-1], rows[:-1], 3.0, 2.0))
    depth = np.linalg.matrix_power(data["adjacency"].astype(int) + np.eye(4, dtype=int), 4) > 0
    assert np.corrcoef(scores, depth.sum(0))[0, 1] < -0.5  # more ancestors: a lower (later) start
    fit_metacadi(data, MetaCaDIConfig(steps=1, order_init="uniform", **SMALL))
    assert seen[-1][2] is None


# ----------------------------------------------------------------------------- graph sparsity


def test_graph_weights_are_the_elbo_scale_and_the_bic_occam_factor():
    n_rows = (8 + 1) * 30  # SMALL: 8 meta-training experiments + x_obs, 30 query rows each
    cfg = MetaCaDIConfig(**SMALL)
    assert (cfg.graph_objective, cfg.edge_occam) == ("weighted", "bic")  # the defaults
    w_kl, w_occam = MetaCaDIModel(4, cfg).graph_weights()
    assert w_kl == pytest.approx(0.01 / 12)  # lambda_G x the mean over the d (d - 1) edge logits
    assert w_occam == pytest.approx(w_kl * np.log(n_rows) / 2)  # in the KL's units: prior log odds - log(N) / 2
    assert MetaCaDIModel(4, MetaCaDIConfig(**{**SMALL, "edge_occam": "none"})).graph_weights()[1] == 0.0
    w_kl, w_occam = MetaCaDIModel(4, MetaCaDIConfig(**{**SMALL, "graph_objective": "elbo"})).graph_weights()
    assert w_kl == pytest.approx(2 / (n_rows * 4))  # unit noise: the MSE is twice the NLL per term
    assert w_occam == pytest.approx(w_kl * np.log(n_rows) / 2)
    learned = MetaCaDIModel(4, MetaCaDIConfig(**{**SMALL, "graph_objective": "elbo", "noise": "learned",
                                                 "edge_occam": "none"}))
    assert learned.graph_weights() == pytest.approx((1 / (n_rows * 4), 0.0))


def test_benchmark_empty_graph_row_and_reused_baselines(tmp_path, monkeypatch):
    """The benchmark's empty-graph reference (E-SHD = #true edges, E-SID of the empty DAG) and
    --reuse-baselines: the stored baseline rows come back for the same systems, nothing refitted."""
    import benchmarks.metacadi as bench

    calls = []

    def fake_metacadi(data, cfg):
        post = type("P", (), {"intervention_target_probs": lambda self: np.zeros(data["int_targets"].shape)})()
        row = {"seconds": 0.0, "e_shd": 1.0, "e_sid": 2.0, "intv_auroc": 0.5, "intv_auprc": 0.1, "edge_auroc": 0.5}
        return row, post

    def fake_baseline(name, data, budget):
        calls.append(name)
        return {"seconds": 0.0, "e_shd": float(len(calls)), "e_sid": 3.0}, None

    monkeypatch.setattr(bench, "run_metacadi", fake_metacadi)
    monkeypatch.setattr(bench, "run_baseline", fake_baseline)
    common = ["--priors", "metacadi-gp", "--n-systems", "2", "--n-nodes", "4", "--maml-systems", "0",
              "--imbalance-systems", "0", "--baselines", "dcdi-unknown", "--no-mlflow"]
    first = bench.main([*common, "--out", str(tmp_path / "a.json")])
    rows = first["priors"]["metacadi-gp"]["rows"]
    batch = sample_split_range(bench.system_config("metacadi-gp", 4), "test", 0, 2)
    for i, row in enumerate(rows["empty-graph"]):
        adj = restrict(task_slice(batch, i))["adjacency"]
        assert row["e_shd"] == adj.sum() == M.shd(adj, np.zeros_like(adj))
        assert row["e_sid"] == M.sid(adj, np.zeros_like(adj))
    assert "welch_p_vs_metacadi" in first["priors"]["metacadi-gp"]["summary"]["empty-graph"]["e_shd"]
    assert calls == ["dcdi-unknown"] * 2
    second = bench.main([*common, "--out", str(tmp_path / "b.json"), "--reuse-baselines", str(tmp_path / "a.json")])
    assert calls == ["dcdi-unknown"] * 2  # nothing refitted
    assert second["priors"]["metacadi-gp"]["rows"]["dcdi-unknown"] == rows["dcdi-unknown"]
    with pytest.raises(SystemExit, match="n_nodes"):
        bench.main([*common[:5], "5", *common[6:], "--out", str(tmp_path / "c.json"),
                    "--reuse-baselines", str(tmp_path / "a.json")])


def test_planted_graph_samples_are_about_as_dense_as_the_truth(planted):
    """With the Occam factor (edge_occam="bic", the default) an edge the likelihood does not need
    is not kept at the prior: the samples' expected edge count stays within a factor 2.5 of the
    true count (measured: 3.7 for 5 true edges, 4.2 without the Occam term; 2.2 with
    graph_objective="elbo"), the true edges carry most of the probability and E-SHD beats the
    empty graph's (= #edges)."""
    data, post = planted
    g = data["adjacency"].astype(bool)
    probs = post.edge_probs()
    graphs = post.sample_graphs(200, np.random.default_rng(0))
    sampled = graphs.sum((1, 2)).mean()
    assert g.sum() / 2.5 <= sampled <= 2.5 * g.sum()
    assert abs(sampled - probs.sum()) < 0.5  # samples follow the marginals (no straight-through bias)
    assert probs[g].sum() > 2 * probs[~g].sum()
    assert M.expected_shd(data["adjacency"], graphs) < g.sum()
