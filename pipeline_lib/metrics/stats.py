"""Statistics shared by the metrics: ranking scores, mean +- s.e., Welch tests, and the
method-comparison table reported by the benchmark.

* ``auroc(labels, scores)``: the Mann-Whitney form of the area under the ROC curve,

      AUROC = (1 / (n_+ n_-)) sum_{a in pos} sum_{b in neg} (1[s_a > s_b] + 1/2 1[s_a = s_b]),

  computed from mid-ranks: ``(R_+ - n_+(n_+ + 1)/2) / (n_+ n_-)`` with ``R_+`` the sum of
  the (tie-averaged) ranks of the positives.
* ``average_precision(labels, scores)``: ``AP = sum_k (R_k - R_{k-1}) P_k`` over the
  *distinct* score thresholds ``t_1 > t_2 > ...``, where ``P_k`` and ``R_k`` are precision
  and recall of the rule ``score >= t_k``. Equal scores form one threshold, so the order
  of tied items never matters (same as scikit-learn's ``average_precision_score``).
* Both return ``nan`` and emit :class:`MetricUndefinedWarning` when only one class is
  present (the score is undefined there; ``nan`` keeps per-task aggregation going, and
  ``mean_se`` drops ``nan`` values).
* ``mean_se``: ``mean`` and standard error ``std(ddof=1) / sqrt(n)`` over finite values.
* ``welch_test``: Welch's unequal-variance t-test (``scipy.stats.ttest_ind``,
  ``equal_var=False``), two-sided.
"""

from __future__ import annotations

import html
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
from scipy import stats as _sps

__all__ = [
    "MetricUndefinedWarning",
    "auroc",
    "average_precision",
    "mean_se",
    "welch_test",
    "metric_direction",
    "ComparisonCell",
    "ComparisonTable",
    "comparison_table",
]


class MetricUndefinedWarning(UserWarning):
    """A score is undefined for this input (e.g. AUROC with one class) and is nan."""


def _as_array(x: Any, dtype=np.float64) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _binary_inputs(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _as_array(labels, dtype=np.float64).reshape(-1)
    s = _as_array(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in size: {y.size} vs {s.size}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be boolean / 0-1")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return y.astype(bool), s


def _one_class(y: np.ndarray, name: str) -> bool:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        warnings.warn(
            f"{name} is undefined with only one class present "
            f"({n_pos} positives of {y.size}); returning nan",
            MetricUndefinedWarning,
            stacklevel=3,
        )
        return True
    return False


def auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve, ties counted 1/2 (Mann-Whitney U / (n_+ n_-))."""
    y, s = _binary_inputs(labels, scores)
    if _one_class(y, "AUROC"):
        return float("nan")
    ranks = _sps.rankdata(s)  # mid-ranks for ties
    n_pos = y.sum()
    n_neg = y.size - n_pos
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision(labels: Any, scores: Any) -> float:
    """Average precision ``sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds."""
    y, s = _binary_inputs(labels, scores)
    if _one_class(y, "average precision"):
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # last index of each block of equal scores: the threshold "score >= t_k"
    last = np.r_[np.flatnonzero(np.diff(s_sorted) != 0), s.size - 1]
    tp = np.cumsum(y_sorted)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    d_recall = np.diff(np.r_[0.0, recall])
    return float(np.sum(d_recall * precision))


def mean_se(values: Any) -> tuple[float, float]:
    """``(mean, std(ddof=1) / sqrt(n))`` over the finite entries of ``values``.

    Non-finite values (nan from undefined per-task scores) are dropped; ``se`` is nan
    for ``n = 1``; ``n = 0`` raises ``ValueError``.
    """
    v = _as_array(values).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("values has no finite entries")
    if v.size == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))


def captured_fraction(method: float, empty: float, oracle: float) -> float:
    """``(empty - method) / (empty - oracle)`` of mean NLPIDs: the share of the gap between the
    non-causal empty-graph reference and the oracle floor that a method closes (1: as good as
    the true SCM, 0: no better than ignoring causality, < 0: worse). nan when the gap is not
    positive (a prior without causal signal: nothing to capture)."""
    gap = float(empty) - float(oracle)
    if not (math.isfinite(gap) and gap > 0 and math.isfinite(float(method))):
        return float("nan")
    return (float(empty) - float(method)) / gap


def captured_se(method: dict, empty: dict, oracle: dict) -> float:
    """Delta-method s.e. of the captured fraction f = (E - M) / (E - O) of mean NLPID, over the
    tasks the three share (paired: every task scores all three). Per task the influence is
    psi_t = ((e_t - m_t) - f (e_t - o_t)) / (E - O); s.e. = sd(psi) / sqrt(n). nan below 2 shared
    tasks or without a gap; 0 for the references themselves (f is 0 or 1 by definition).
    ``method``, ``empty``, ``oracle``: {task: NLPID}."""
    tasks = sorted(set(method) & set(empty) & set(oracle))
    if len(tasks) < 2:
        return float("nan")
    m, e, o = (np.array([d[t] for t in tasks]) for d in (method, empty, oracle))
    gap = e.mean() - o.mean()
    if not gap > 0:
        return float("nan")
    f = (e.mean() - m.mean()) / gap
    psi = ((e - m) - f * (e - o)) / gap
    return float(psi.std(ddof=1) / np.sqrt(len(tasks)))


def welch_test(a: Any, b: Any) -> tuple[float, float]:
    """Welch's two-sided t-test of equal means, ``(t, p)``; nan entries are dropped.

    ``t = (mean_a - mean_b) / sqrt(s_a^2 / n_a + s_b^2 / n_b)`` with Welch-Satterthwaite
    degrees of freedom. Needs at least 2 finite values per sample (``ValueError``
    naming the argument otherwise). Two constant, equal samples give ``(nan, nan)``.
    """
    xs = []
    for name, x in (("a", a), ("b", b)):
        v = _as_array(x).reshape(-1)
        v = v[np.isfinite(v)]
        if v.size < 2:
            raise ValueError(f"welch_test: {name} needs at least 2 finite values, got {v.size}")
        xs.append(v)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance -> nan, documented
        res = _sps.ttest_ind(xs[0], xs[1], equal_var=False)
    return float(res.statistic), float(res.pvalue)


# --------------------------------------------------------------------------- comparison table

_LOWER_KEYWORDS = (
    "nlpid", "nll", "shd", "sid", "rmse", "mse", "mae", "mmd", "energy", "runtime", "time",
    "seconds", "loss", "error", "err", "dist",
)
_HIGHER_KEYWORDS = ("auroc", "auprc", "auc", "ap", "accuracy", "acc", "f1", "precision", "recall")


def metric_direction(metric: str) -> bool:
    """Default direction by name: ``True`` if lower is better.

    Lower: names containing nlpid, nll, shd, sid (also e-shd, e-sid), rmse, mse, mae,
    mmd, energy, runtime/time/seconds, loss, error/err, dist. Higher: auroc, auprc, auc,
    ap, accuracy, f1, precision, recall. Anything else (e.g. raw "coverage", where
    closeness to the nominal level matters) raises ``ValueError``: pass the direction.
    """
    tokens = metric.lower().replace("-", "_").replace(" ", "_").split("_")
    name = metric.lower()
    for kw in _LOWER_KEYWORDS:
        if kw in tokens or (len(kw) > 3 and kw in name):
            return True
    for kw in _HIGHER_KEYWORDS:
        if kw in tokens or (len(kw) > 3 and kw in name):
            return False
    raise ValueError(
        f"cannot infer whether lower or higher is better for metric {metric!r}; "
        "pass lower_is_better={metric: bool}"
    )


@dataclass(frozen=True)
class ComparisonCell:
    """One (method, metric) entry: mean +- s.e. over ``n`` tasks, whether it is the best
    mean for the metric, and Welch's p-value against the best method (nan for the best
    itself or when either side has < 2 values)."""

    mean: float
    se: float
    n: int
    is_best: bool
    p_vs_best: float


@dataclass
class ComparisonTable:
    """Mean +- s.e. per (method, metric), best marked, Welch p-value vs the best."""

    methods: list[str]
    metrics: list[str]
    lower_is_better: dict[str, bool]
    cells: dict[tuple[str, str], ComparisonCell] = field(default_factory=dict)
    digits: int = 4

    def best(self, metric: str) -> str | None:
        """The method with the best mean on ``metric`` (None if nobody reports it)."""
        for m in self.methods:
            c = self.cells.get((m, metric))
            if c is not None and c.is_best:
                return m
        return None

    def _fmt(self, x: float) -> str:
        return "nan" if not math.isfinite(x) else f"{x:.{self.digits}g}"

    def _cell_text(self, method: str, metric: str) -> tuple[str, str, bool]:
        c = self.cells.get((method, metric))
        if c is None:
            return "-", "", False
        main = f"{self._fmt(c.mean)} ± {self._fmt(c.se)}"
        extra = "" if c.is_best or not math.isfinite(c.p_vs_best) else f"p={c.p_vs_best:.3g}"
        return main, extra, c.is_best

    def _header(self) -> list[str]:
        return ["method"] + [
            f"{m} ({'↓' if self.lower_is_better[m] else '↑'})" for m in self.metrics
        ]

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per (method, metric): method, metric, mean, se, n, best, p_vs_best,
        lower_is_better."""
        out = []
        for m in self.methods:
            for k in self.metrics:
                c = self.cells.get((m, k))
                if c is None:
                    continue
                out.append(
                    {
                        "method": m,
                        "metric": k,
                        "mean": c.mean,
                        "se": c.se,
                        "n": c.n,
                        "best": c.is_best,
                        "p_vs_best": c.p_vs_best,
                        "lower_is_better": self.lower_is_better[k],
                    }
                )
        return out

    def to_markdown(self) -> str:
        """GitHub markdown: ``mean ± se``, best in bold, ``(p=...)`` vs the best."""
        head = self._header()
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        for m in self.methods:
            row = [m]
            for k in self.metrics:
                main, extra, best = self._cell_text(m, k)
                txt = f"**{main}**" if best else main
                row.append(f"{txt} ({extra})" if extra else txt)
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """A standalone ``<table>``; best cells in ``<b>``, p-values in ``<small>``."""
        esc = html.escape
        parts = ["<table>", "<thead><tr>"]
        parts += [f"<th>{esc(h)}</th>" for h in self._header()]
        parts.append("</tr></thead><tbody>")
        for m in self.methods:
            parts.append(f"<tr><td>{esc(m)}</td>")
            for k in self.metrics:
                main, extra, best = self._cell_text(m, k)
                txt = f"<b>{esc(main)}</b>" if best else esc(main)
                if extra:
                    txt += f" <small>({esc(extra)})</small>"
                parts.append(f"<td>{txt}</td>")
            parts.append("</tr>")
        parts.append("</tbody></table>")
        return "".join(parts)

    def to_rich(self, title: str | None = None):
        """A ``rich.table.Table`` for terminal printing (best cells bold green)."""
        from rich.table import Table  # optional presentation dependency, imported lazily

        table = Table(title=title)
        for h in self._header():
            table.add_column(h, justify="left" if h == "method" else "right")
        for m in self.methods:
            row = [m]
            for k in self.metrics:
                main, extra, best = self._cell_text(m, k)
                txt = f"{main} ({extra})" if extra else main
                row.append(f"[bold green]{txt}[/]" if best else txt)
            table.add_row(*row)
        return table


def comparison_table(
    results: Mapping[str, Mapping[str, Any]],
    lower_is_better: Mapping[str, bool] | None = None,
    digits: int = 4,
    references: Iterable[str] = (),
) -> ComparisonTable:
    """Build a :class:`ComparisonTable` from ``{method: {metric: per-task values}}``.

    Per (method, metric): ``mean_se`` of the finite per-task values. Per metric: the best
    method has the lowest (or highest) mean, ties going to the first method listed; every
    other method gets Welch's p-value against the best (nan if either side has < 2 finite
    values). Directions come from ``lower_is_better`` and otherwise from
    :func:`metric_direction` on the metric name. Methods and metrics keep their first-seen
    order; a method may lack a metric (its cell is left empty). ``references`` (e.g. the
    oracle, the empty graph) are shown but never "best": the best and the p-values are among
    the methods, so a reference floor does not mark every method as significantly worse; a
    reference gets no p-value itself.
    """
    if not results:
        raise ValueError("results is empty")
    methods = list(results)
    metrics: list[str] = []
    for m in methods:
        for k in results[m]:
            if k not in metrics:
                metrics.append(k)
    refs = set(references)
    given = dict(lower_is_better or {})
    directions = {k: given[k] if k in given else metric_direction(k) for k in metrics}
    table = ComparisonTable(methods, metrics, directions, digits=digits)
    for k in metrics:
        clean: dict[str, np.ndarray] = {}
        for m in methods:
            if k in results[m]:
                v = _as_array(results[m][k]).reshape(-1)
                v = v[np.isfinite(v)]
                if v.size:
                    clean[m] = v
        if not clean:
            continue
        means = {m: float(v.mean()) for m, v in clean.items()}
        sign = 1.0 if directions[k] else -1.0
        candidates = [m for m in clean if m not in refs] or list(clean)
        best = min(candidates, key=lambda m: sign * means[m])  # min keeps the first on ties
        for m, v in clean.items():
            _, se = mean_se(v)
            if m == best or m in refs or v.size < 2 or clean[best].size < 2:
                p = float("nan")
            else:
                p = welch_test(v, clean[best])[1]
            table.cells[(m, k)] = ComparisonCell(means[m], se, int(v.size), m == best, p)
    return table

