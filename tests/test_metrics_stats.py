"""Statistics (ranking scores, mean +- s.e., Welch, comparison table) and
intervention-target metrics."""

import math
import warnings

import numpy as np
import pytest
import scipy.stats as sps

from pipeline_lib.metrics import (
    MetricUndefinedWarning,
    auroc,
    average_precision,
    comparison_table,
    intervention_auprc,
    intervention_auroc,
    mean_se,
    metric_direction,
    welch_test,
)

# --------------------------------------------------------------------------- ranking scores


def test_auroc_average_precision_hand_values_with_ties():
    labels = [1, 0, 1, 0]
    scores = [0.9, 0.9, 0.5, 0.1]
    # pairs (pos, neg): (.9,.9)=1/2, (.9,.1)=1, (.5,.9)=0, (.5,.1)=1
    assert auroc(labels, scores) == pytest.approx(2.5 / 4)
    # thresholds .9: P=1/2 R=1/2; .5: P=2/3 R=1; .1: R unchanged
    assert average_precision(labels, scores) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    # order of tied items does not matter
    assert average_precision([0, 1, 1, 0], [0.9, 0.9, 0.5, 0.1]) == pytest.approx(0.25 + 1 / 3)


def test_auroc_matches_mann_whitney_on_random_data():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = np.round(rng.normal(size=200) + y, 1)  # rounding creates ties
    u = sps.mannwhitneyu(s[y], s[~y]).statistic
    assert auroc(y, s) == pytest.approx(u / (y.sum() * (~y).sum()))


def test_ranking_extremes_and_one_class():
    y = np.array([1, 1, 0, 0, 0])
    assert auroc(y, [5, 4, 3, 2, 1]) == 1.0 and average_precision(y, [5, 4, 3, 2, 1]) == 1.0
    assert auroc(y, [1, 2, 3, 4, 5]) == 0.0
    # all-tied scores: AUROC 1/2, AP = prevalence
    assert auroc(y, np.zeros(5)) == 0.5
    assert average_precision(y, np.zeros(5)) == pytest.approx(0.4)
    with pytest.warns(MetricUndefinedWarning, match="one class"):
        assert math.isnan(auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="labels must be boolean"):
        auroc([0, 2], [0.1, 0.2])


# --------------------------------------------------------------------------- intervention targets


def test_intervention_scores_with_node_mask():
    true = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=bool)
    probs = np.array([[0.8, 0.3, 0.1, 0.95], [0.2, 0.7, 0.3, 0.99]])
    # node 3 is padding (scored high); without the mask it spoils the ranking
    mask = np.array([1, 1, 1, 0], dtype=bool)
    assert intervention_auroc(true, probs, node_mask=mask) == 1.0
    assert intervention_auprc(true, probs, node_mask=mask) == 1.0
    # unmasked: positives .8, .7 vs negatives .3,.1,.95,.2,.3,.99 -> each beats 4 of 6
    assert intervention_auroc(true, probs) == pytest.approx(8 / 12)
    # ranking .99 .95 .8 .7 ...: P at .8 = 1/3 (R=1/2), at .7 = 2/4 (R=1)
    assert intervention_auprc(true, probs) == pytest.approx(0.5 / 3 + 0.5 * 0.5)
    # per-regime masks and batched tasks (T, K, d)
    assert intervention_auroc(true, probs, node_mask=np.tile(mask, (2, 1))) == 1.0
    assert intervention_auroc(np.stack([true, true]), np.stack([probs, probs]), node_mask=mask) == 1.0
    with pytest.raises(ValueError, match="target_probs must have shape"):
        intervention_auroc(true, probs[:, :3])
    with pytest.raises(ValueError, match="node_mask"):
        intervention_auroc(true, probs, node_mask=np.ones(3, dtype=bool))


# --------------------------------------------------------------------------- mean_se / Welch


def test_mean_se_and_welch_match_scipy():
    a = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    mean, se = mean_se(a)
    assert mean == 2.5 and se == pytest.approx(math.sqrt(5 / 3) / 2)
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 1, 30), rng.normal(0.7, 2, 20)
    ref = sps.ttest_ind(x, y, equal_var=False)
    t, p = welch_test(x, y)
    assert t == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    t2, p2 = welch_test(np.r_[x, np.nan], y)
    assert (t2, p2) == pytest.approx((t, p))
    with pytest.raises(ValueError, match="b needs at least 2"):
        welch_test(x, [1.0, np.nan])
    with pytest.raises(ValueError, match="no finite"):
        mean_se([np.nan])


def test_metric_direction_keywords():
    assert metric_direction("nlpid") and metric_direction("E-SID") and metric_direction("e_shd")
    assert metric_direction("runtime_s") and metric_direction("mmd") and metric_direction("rmse")
    assert not metric_direction("edge_auroc") and not metric_direction("intv_auprc")
    with pytest.raises(ValueError, match="coverage"):
        metric_direction("coverage")


def test_comparison_table_marks_best_and_reports_welch():
    rng = np.random.default_rng(2)
    good_shd, bad_shd = rng.normal(2, 1, 20), rng.normal(5, 1, 20)
    results = {
        "mace": {"e_shd": bad_shd, "auroc": [0.9, 0.8, 0.85], "coverage": [0.88, 0.9]},
        "dibs": {"e_shd": good_shd, "auroc": [0.6, 0.7, 0.65], "coverage": [0.7, 0.6]},
    }
    with pytest.raises(ValueError, match="coverage"):
        comparison_table(results)
    table = comparison_table(results, lower_is_better={"coverage": False})
    assert table.best("e_shd") == "dibs" and table.best("auroc") == "mace"
    cell = table.cells[("mace", "e_shd")]
    assert cell.p_vs_best == pytest.approx(welch_test(bad_shd, good_shd)[1])
    assert cell.mean == pytest.approx(bad_shd.mean()) and not cell.is_best
    assert math.isnan(table.cells[("dibs", "e_shd")].p_vs_best)
    md = table.to_markdown()
    assert f"**{good_shd.mean():.4g} ± " in md
    assert f"{bad_shd.mean():.4g} ± {bad_shd.std(ddof=1) / math.sqrt(20):.4g}" in md
    assert "e_shd (↓)" in md and "auroc (↑)" in md
    assert md.count("\n") == 4  # header, rule, two methods
    html = table.to_html()
    assert "<b>0.85 ± 0.02887</b>" in html
    records = table.to_records()
    assert len(records) == 6
    best = [r for r in records if r["best"]]
    assert {(r["method"], r["metric"]) for r in best} == {("dibs", "e_shd"), ("mace", "auroc"), ("mace", "coverage")}
    rich_table = table.to_rich(title="demo")
    assert rich_table.row_count == 2 and len(rich_table.columns) == 4


def test_comparison_table_missing_metrics_and_single_values():
    results = {"a": {"sid": [3.0]}, "b": {"sid": [1.0, 2.0], "runtime": [10.0, 12.0]}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = comparison_table(results)
    assert table.best("sid") == "b"
    assert math.isnan(table.cells[("a", "sid")].p_vs_best)  # n = 1: no test
    assert ("a", "runtime") not in table.cells
    assert "| a | 3 ± nan | - |" in table.to_markdown()


def test_captured_fraction_by_hand():
    from pipeline_lib.metrics import captured_fraction

    assert captured_fraction(175.4, 260.7, 149.4) == pytest.approx((260.7 - 175.4) / (260.7 - 149.4))
    assert captured_fraction(149.4, 260.7, 149.4) == 1.0 and captured_fraction(260.7, 260.7, 149.4) == 0.0
    assert captured_fraction(300.0, 260.7, 149.4) < 0
    assert math.isnan(captured_fraction(100.0, 150.0, 150.0))  # no gap: nothing to capture


def test_references_are_shown_but_never_best():
    from pipeline_lib.metrics import comparison_table

    res = {"a": {"nlpid": [10.0, 11.0, 12.0]}, "b": {"nlpid": [20.0, 21.0, 19.0]},
           "oracle": {"nlpid": [1.0, 1.1, 0.9]}}
    t = comparison_table(res, references=["oracle"])
    assert t.best("nlpid") == "a" and not t.cells[("oracle", "nlpid")].is_best
    assert t.cells[("b", "nlpid")].p_vs_best < 0.01  # b is compared with a, not with the oracle
    assert math.isnan(t.cells[("oracle", "nlpid")].p_vs_best)
    assert comparison_table(res).best("nlpid") == "oracle"
