"""Held-out experiments of an imported dataset (pipeline_lib.holdout): split, queries, scores."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline_lib.holdout import (HoldoutError, NodeRangeError, check_node_range, heldout_queries, score_heldout,
                                  select_holdout, seen_task)
from storage.importing import import_dataset
from tests.test_import import NAMES, edges_csv, frame_of, sampled_task, write


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("holdout")
    task = sampled_task()
    ds = import_dataset(write(frame_of(task), tmp / "t.csv"), tmp / "root", "t", regime_col="regime",
                        targets_col="targets", graph=edges_csv(task, tmp / "e.csv"))
    return task, ds


def test_split_and_queries(imported):
    task, ds = imported
    t = ds.task()
    assert select_holdout(t, ds.regime_labels, "all") == [0, 1]
    assert select_holdout(t, ds.regime_labels, ds.regime_labels[1]) == [1]
    seen = seen_task(t, [1])
    assert seen["x_int"].shape == (1, 100, 3) and seen["int_targets"].tolist() == [t["int_targets"][0].tolist()]
    np.testing.assert_array_equal(np.sort(seen["x_int"][0], 0), np.sort(t["x_int"][0, :100], 0))
    assert seen_task(t, [0, 1])["x_int"].shape[0] == 0
    q = heldout_queries(t, 1)
    j = int(np.flatnonzero(task["int_targets"][1])[0])
    assert set(q.j) == {j} and sorted(q.i) == [i for i in range(3) if i != j] and q.samples.shape == (2, 100)
    # a hard intervention: the regime's mean of X_j is the set value (standardised)
    np.testing.assert_allclose(q.a[0], ds.from_user(task["int_values"][1, j], j), atol=1e-5)
    with pytest.raises(HoldoutError, match="regime 'nope' does not exist"):
        select_holdout(t, ds.regime_labels, "nope")


def test_unknown_targets_cannot_be_held_out(tmp_path):
    task = sampled_task()
    ds = import_dataset(write(frame_of(task).drop(columns="targets"), tmp_path / "u.csv"), tmp_path / "r", "u",
                        regime_col="regime", observational="obs")
    with pytest.raises(HoldoutError, match="its targets are unknown"):
        select_holdout(ds.task(), ds.regime_labels, ds.regime_labels[0])
    with pytest.raises(HoldoutError, match="no regime has exactly one known target"):
        select_holdout(ds.task(), ds.regime_labels, "all")


def test_exact_posterior_beats_the_empty_graph_on_held_out_regimes(imported):
    """The BGe posterior fitted on the observational rows predicts the held-out experiments
    better than the observational marginal, on data with a known graph and strong effects."""
    from pipeline_lib.baselines.registry import fit_baseline

    _, ds = imported
    t = ds.task()
    held = select_holdout(t, ds.regime_labels, "all")
    seen = seen_task(t, held)
    scores = {m: score_heldout(fit_baseline(m, seen), t, held) for m in ("exact", "empty-graph")}
    exact, empty = (np.array([r["nlpid"] for r in scores[m]]) for m in ("exact", "empty-graph"))
    assert exact.mean() < empty.mean() - 20, (exact, empty)  # nats per regime, summed over 100 rows
    assert all(0 <= r["coverage_90"] <= 1 for r in scores["exact"])
    # user units: the same densities divided by obs_std, so the same gap
    gap_user = np.mean([e["nlpid_user"] - m["nlpid_user"] for e, m in zip(scores["exact"], scores["empty-graph"])])
    np.testing.assert_allclose(gap_user, exact.mean() - empty.mean(), rtol=1e-9)
    # graph metrics against the reference graph, once per fit
    assert "e_shd" in scores["exact"][0] and "e_shd" not in scores["exact"][1]
    assert scores["exact"][0]["e_shd"] < scores["empty-graph"][0]["e_shd"]


def test_node_range():
    check_node_range("mace-tnp v2", 5, 20, 11)
    with pytest.raises(NodeRangeError, match=r"mace-tnp v1 \(prior lin-3node\) supports d in \[3, 3\]; the data has 11"):
        check_node_range("mace-tnp v1 (prior lin-3node)", 3, 3, 11)


def test_cyclic_reference_graph_gets_shd_and_auroc_but_no_sid(imported):
    from pipeline_lib.baselines.registry import fit_baseline
    from pipeline_lib.holdout import score_reference_graph

    _, ds = imported
    answer = fit_baseline("exact", seen_task(ds.task(), [0, 1]))
    cyclic = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.uint8)
    out = score_reference_graph(answer, cyclic)
    assert set(out) == {"e_shd", "edge_auroc", "edge_auprc"} and out["e_shd"] > 0
    assert "e_sid" in score_reference_graph(answer, ds.task()["adjacency"])


def test_target_metrics_on_the_seen_regimes(imported, tmp_path):
    from pipeline_lib.holdout import score_seen_targets

    class Targets:
        def __init__(self, p):
            self.p = p

        def intervention_target_probs(self):
            return self.p

    _, ds = imported
    seen = seen_task(ds.task(), [])
    truth = seen["int_targets"].astype(float)
    assert score_seen_targets(Targets(0.1 + 0.8 * truth), seen) == {"intv_auroc": 1.0, "intv_auprc": 1.0}
    assert score_seen_targets(Targets(0.9 - 0.8 * truth), seen)["intv_auroc"] == 0.0
    task = sampled_task()
    unknown = import_dataset(write(frame_of(task).drop(columns="targets"), tmp_path / "u.csv"), tmp_path / "r", "u",
                             regime_col="regime", observational="obs")
    assert score_seen_targets(Targets(np.full((2, 3), 0.5)), seen_task(unknown.task(), [])) == {}
