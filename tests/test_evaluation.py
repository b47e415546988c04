"""Scoring methods on tasks: queries, NLPID, calibration and graph metrics on known models."""
import numpy as np
import pytest

from pipeline_lib.evaluation import make_queries, restrict, score_graph, score_interventional
from tests.linear_scm import LinearMixture, chain_task


def test_queries_cover_every_single_target_regime_and_outcome():
    task, _ = chain_task()
    q = make_queries(task)
    assert len(q) == 6  # 3 regimes x 2 outcomes
    assert set(zip(q.j.tolist(), q.i.tolist())) == {(j, i) for j in range(3) for i in range(3) if i != j}
    k = np.flatnonzero((q.j == 0) & (q.i == 2))[0]
    np.testing.assert_array_equal(q.samples[k], task["x_int"][0, :, 2])
    assert q.a[k] == pytest.approx(1.5)
    assert len(make_queries(task, max_queries=4)) == 4


def test_queries_skip_multi_target_regimes_and_padding():
    task, _ = chain_task()
    task["int_targets"][1, 2] = True  # regime 1 now has two targets
    pad = {k: v for k, v in task.items()}
    pad["node_mask"] = np.array([True, True, True, False])
    pad["int_targets"] = np.concatenate([task["int_targets"], np.zeros((3, 1), bool)], 1)
    pad["int_values"] = np.concatenate([task["int_values"], np.full((3, 1), np.nan, np.float32)], 1)
    pad["x_int"] = np.concatenate([task["x_int"], np.zeros((3, 400, 1), np.float32)], 2)
    q = make_queries(pad)
    assert len(q) == 4 and 1 not in q.j.tolist() and 3 not in q.i.tolist()
    task["int_targets"][:] = True
    with pytest.raises(ValueError, match="int_targets"):
        make_queries(task)


def test_true_model_beats_misspecified_and_is_calibrated():
    task, W = chain_task()
    q = make_queries(task)
    truth = LinearMixture(W[None], np.ones((1, 3)), np.zeros(1), n_mc=600)
    wrong = LinearMixture((W * 0.5)[None], np.ones((1, 3)), np.zeros(1), n_mc=600)
    s_true = score_interventional(truth, q)
    s_wrong = score_interventional(wrong, q)
    assert s_true["nlpid"] < s_wrong["nlpid"]
    assert s_true["nlpid_per_sample"] == pytest.approx(s_true["nlpid"] / 400)
    # 6 queries x 400 samples: coverage within a few s.e. of nominal
    assert abs(s_true["coverage_50"] - 0.5) < 0.05 and abs(s_true["coverage_90"] - 0.9) < 0.03
    assert s_true["calibration_error"] < s_wrong["calibration_error"]


def test_graph_scores_of_point_masses():
    task, W = chain_task()
    data = restrict(task)
    truth = LinearMixture(W[None], np.ones((1, 3)), np.zeros(1))
    s = score_graph(truth, data["adjacency"])
    assert s["e_shd"] == 0 and s["e_sid"] == 0 and s["edge_auroc"] == 1.0
    rev = LinearMixture(W.T[None], np.ones((1, 3)), np.zeros(1))
    s = score_graph(rev, data["adjacency"])
    assert s["e_shd"] == 2  # two reversed edges, one each
    assert s["e_sid"] > 0


@pytest.mark.parametrize("prior, separates", [("lin-3node", False), ("lin-3node-strong", True)])
def test_nlpid_separates_causal_from_non_causal_only_on_the_strong_prior(prior, separates):
    """The exact posterior vs the empty-graph reference on 10 test tasks (measured: lin-3node
    138.3 vs 150.6, +9%; lin-3node-strong about 165 vs 365). The demo prior must separate them."""
    from flows.spec import load_prior
    from pipeline_lib.evaluation import evaluate_baseline, task_slice
    from pipeline_lib.priors import sample_split_range

    cfg = load_prior(prior, {"splits": {"train": 10, "val": 10, "test": 10}})
    batch = sample_split_range(cfg, "test", 0, 10)
    nl = {name: np.mean([evaluate_baseline(name, None, task_slice(batch, t))[0]["nlpid"] for t in range(10)])
          for name in ("exact", "empty-graph")}
    assert nl["exact"] < nl["empty-graph"]  # modelling the causal effects pays on both priors
    assert (nl["empty-graph"] / nl["exact"] > 1.5) == separates


def test_evaluate_baseline_reports_convergence_and_a_short_dcdi_run_is_not_converged():
    """Issue 17: every fit says whether it converged; a DCDI stopped after 50 steps has not
    (its schedule did not finish), and the benchmark's records carry that flag."""
    from pipeline_lib.baselines.registry import check_config
    from pipeline_lib.evaluation import evaluate_baseline

    task, _ = chain_task()
    info = {}
    evaluate_baseline("exact", check_config("exact", {}), task, max_queries=2, info=info)
    assert info["converged"] is True and "closed form" in info["convergence"]
    info = {}
    evaluate_baseline("dcdi", check_config("dcdi", {"max_iter": 50}), task, max_queries=2, info=info)
    assert info["converged"] is False and "not converged" in info["convergence"], info
