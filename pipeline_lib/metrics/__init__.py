"""Metrics of the field, one definition each (see DESIGN.md "Metrics").

Adjacency convention: ``A[i, j] = 1`` means ``i -> j``. Plain functions on numpy arrays
(torch tensors are converted).

* :mod:`.graph`: SHD, SID, CPDAG, SHD between CPDAGs, E-SHD / E-SID, edge AUROC / AUPRC.
* :mod:`.interventions`: Intv-AUROC / Intv-AUPRC over (regime, node) entries.
* :mod:`.distributions`: NLPID, MMD (RBF), energy distance, RMSE, interval coverage.
* :mod:`.stats`: ranking scores, mean +- s.e., Welch's t-test, the comparison table.
"""

from pipeline_lib.metrics.distributions import (
    NLPIDResult,
    aggregate_nlpid,
    coverage_table,
    energy_distance,
    interval_coverage,
    median_heuristic_bandwidth,
    mmd_rbf,
    nlpid,
    rmse,
)
from pipeline_lib.metrics.graph import (
    GraphInputError,
    cpdag,
    edge_auprc,
    edge_auroc,
    expected_shd,
    expected_sid,
    is_dag,
    shd,
    shd_cpdag,
    sid,
    transitive_closure,
)
from pipeline_lib.metrics.interventions import intervention_auprc, intervention_auroc
from pipeline_lib.metrics.stats import (
    ComparisonCell,
    ComparisonTable,
    MetricUndefinedWarning,
    auroc,
    average_precision,
    captured_fraction,
    captured_se,
    comparison_table,
    mean_se,
    metric_direction,
    welch_test,
)

__all__ = [
    "GraphInputError",
    "shd",
    "sid",
    "cpdag",
    "shd_cpdag",
    "expected_shd",
    "expected_sid",
    "edge_auroc",
    "edge_auprc",
    "is_dag",
    "transitive_closure",
    "intervention_auroc",
    "intervention_auprc",
    "NLPIDResult",
    "nlpid",
    "aggregate_nlpid",
    "mmd_rbf",
    "median_heuristic_bandwidth",
    "energy_distance",
    "rmse",
    "interval_coverage",
    "coverage_table",
    "MetricUndefinedWarning",
    "auroc",
    "average_precision",
    "mean_se",
    "welch_test",
    "metric_direction",
    "ComparisonCell",
    "ComparisonTable",
    "comparison_table",
    "captured_fraction",
    "captured_se",
]
