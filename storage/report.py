"""The benchmark report: comparison tables, plots and one self-contained HTML page.

Inputs are the per-task records of ``storage.results`` grouped by method label; every number
shown comes from ``pipeline_lib.metrics`` (the table from ``comparison_table``). Plots:
NLPID bars with standard-error bars, E-SHD / E-SID bars, calibration (empirical coverage of
the central 50% / 90% intervals vs nominal), and runtime vs NLPID.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline_lib.metrics import captured_fraction, captured_se, comparison_table, mean_se  # noqa: E402
from pipeline_lib.metrics.stats import ComparisonCell  # noqa: E402

REPORT_METRICS = ("nlpid", "nlpid_per_sample", "calibration_error", "coverage_50", "coverage_90", "e_shd", "e_sid", "edge_auroc",
                  "edge_auprc", "intv_auroc", "intv_auprc", "sample_rmse", "int_rmse", "cf_rmse", "noise_rmse",
                  "mmd_obs", "runtime_s")


def metric_arrays(records_by_method: dict[str, list[dict]]) -> dict[str, dict[str, np.ndarray]]:
    """{method: {metric: per-task values}} from ok records (failed ones are counted elsewhere)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for method, recs in records_by_method.items():
        ok = [r["metrics"] for r in recs if r.get("status") == "ok"]
        names = [m for m in REPORT_METRICS if any(m in r for r in ok)]
        out[method] = {m: np.array([r[m] for r in ok if m in r], dtype=float) for m in names}
    return out


NOT_CONVERGED = "not converged"


def mark_not_converged(records_by_method: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Records re-keyed so that a method with any fit whose record says ``converged: False``
    reads ``"<method> (not converged k/n)"`` in every table: never silently shown as a result."""
    out = {}
    for method, recs in records_by_method.items():
        bad = sum(r.get("converged") is False for r in recs if r.get("status") == "ok")
        out[f"{method} ({NOT_CONVERGED} {bad}/{len(recs)})" if bad else method] = recs
    return out


def convergence_notes(records_by_method: dict[str, list[dict]]) -> dict[str, str]:
    """{method label: the first non-converged fit's note} for the methods with one."""
    out = {}
    for method, recs in records_by_method.items():
        bad = [r for r in recs if r.get("converged") is False and r.get("status") == "ok"]
        if bad:
            out[method] = str(bad[0].get("convergence", ""))
    return out


def edge_heatmap(probs: np.ndarray, names: list[str], out_dir: str | Path, stem: str, title: str,
                 note: str | None = None) -> dict[str, Path]:
    """Edge probabilities ``P(i -> j)`` (row = parent) as a PNG heat map and an HTML page
    (the PNG plus a table of every cell), with node names; ``note`` (e.g. "not converged")
    is printed above both."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    probs = np.asarray(probs, dtype=float)
    d = len(names)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + 0.45 * d), max(4.0, 1.2 + 0.45 * d)))
    im = ax.imshow(probs, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(d), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(d), names, fontsize=8)
    ax.set_xlabel("child"), ax.set_ylabel("parent")
    if d <= 12:
        for i in range(d):
            for j in range(d):
                if i != j:
                    ax.text(j, i, f"{probs[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if probs[i, j] < 0.5 else "black")
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=9, color="firebrick" if note else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="P(parent -> child | D)")
    png = out / f"{stem}.png"
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = "".join(
        f"<tr><th>{html.escape(names[i])}</th>" + "".join(
            "<td>-</td>" if i == j else
            f"<td style='background:rgba(68,1,84,{probs[i, j]:.2f});color:{'white' if probs[i, j] > 0.5 else 'black'}'>"
            f"{probs[i, j]:.3f}</td>" for j in range(d)) + "</tr>" for i in range(d))
    b64 = base64.b64encode(png.read_bytes()).decode()
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}.warn{color:firebrick}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>"
            + (f"<p class='warn'>{html.escape(note)}</p>" if note else "")
            + "<p>P(row -> column | D): row = parent, column = child.</p>"
            f"<table><tr><th>parent \\ child</th>{head}</tr>{rows}</table>"
            f'<img alt="{html.escape(stem)}" src="data:image/png;base64,{b64}"/></body></html>')
    page_path = out / f"{stem}.html"
    page_path.write_text(page)
    return {"png": png, "html": page_path}


def interventional_plot(grid: np.ndarray, density: np.ndarray, observed: np.ndarray, path: str | Path, *,
                        do_label: str, outcome: str, method: str, experiment: np.ndarray | None = None,
                        experiment_label: str | None = None) -> Path:
    """The predicted density of the outcome under the intervention (``density`` on ``grid``, the
    user's units) against a histogram of the observational rows (the observational marginal)
    and, where the data has one, of the rows of an experiment on the same variable."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    bins = np.histogram_bin_edges(np.concatenate([observed] + ([experiment] if experiment is not None else [])), 30)
    ax.hist(observed, bins=bins, density=True, alpha=0.35, color="tab:gray", label=f"observational {outcome}")
    if experiment is not None and len(experiment):
        ax.hist(experiment, bins=bins, density=True, alpha=0.35, color="tab:orange",
                label=experiment_label or "measured under the experiment")
    ax.plot(grid, density, color="tab:blue", lw=2, label=f"{method}: q({outcome} | {do_label}, D)")
    ax.set_xlabel(f"{outcome} (data units)"), ax.set_ylabel("density")
    ax.set_title(f"{outcome} under {do_label}"), ax.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def failures(records_by_method: dict[str, list[dict]]) -> list[dict[str, Any]]:
    return [{"method": m, "task": r["task"], "error": r.get("error")}
            for m, recs in records_by_method.items() for r in recs if r.get("status") != "ok"]


def _mean_se(v: np.ndarray) -> tuple[float, float]:
    """The library's mean +- s.e. (s.e. nan for one task: no error bar), nan for no task."""
    return mean_se(v) if np.isfinite(v).any() else (np.nan, np.nan)


def _bars(ax, arrays, metric, title):
    methods = [m for m in arrays if metric in arrays[m] and len(arrays[m][metric])]
    stats = [_mean_se(arrays[m][metric]) for m in methods]
    ax.bar(range(len(methods)), [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=4, color="tab:blue")
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set_title(title)


def make_plots(arrays: dict[str, dict[str, np.ndarray]], out_dir: Path, prefix: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(fig, name):
        p = out_dir / f"{prefix}{name}.png"
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

    if any("nlpid" in a for a in arrays.values()):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        _bars(ax, arrays, "nlpid", "NLPID per task (lower is better)\nmean ± s.e. over tasks")
        save(fig, "nlpid")
    if any("e_shd" in a for a in arrays.values()):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        _bars(axes[0], arrays, "e_shd", "E-SHD (lower is better)")
        _bars(axes[1], arrays, "e_sid", "E-SID (lower is better)")
        save(fig, "graph")
    if any("coverage_50" in a for a in arrays.values()):
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
        for m, a in arrays.items():
            if "coverage_50" in a:
                ax.plot([0.5, 0.9], [_mean_se(a["coverage_50"])[0], _mean_se(a["coverage_90"])[0]], "o-", label=m)
        ax.set_xlabel("nominal coverage"), ax.set_ylabel("empirical coverage"), ax.legend(fontsize=8)
        ax.set_title("Calibration of interventional predictions")
        save(fig, "calibration")
    if any("runtime_s" in a and "nlpid" in a for a in arrays.values()):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for m, a in arrays.items():
            if "runtime_s" in a and "nlpid" in a:
                ax.scatter(_mean_se(a["runtime_s"])[0], _mean_se(a["nlpid"])[0], label=m)
        ax.set_xscale("log"), ax.set_xlabel("seconds per task (fit or inference)"), ax.set_ylabel("NLPID")
        ax.legend(fontsize=8), ax.set_title("Runtime vs quality")
        save(fig, "runtime_quality")
    return paths


def is_reference(label: str) -> bool:
    """Rows of the non-causal and true-SCM references (shown, never ranked best)."""
    from pipeline_lib.baselines.registry import baseline_names, get_baseline

    name = label.split(" v")[0]
    name = name if name in baseline_names() else name.rsplit("-", 1)[0]
    return name in baseline_names() and get_baseline(name).reference


CAPTURED = "captured_fraction"


def _task_nlpid(recs: list[dict]) -> dict:
    """{task: NLPID} of a method's ok records with a finite NLPID."""
    return {r["task"]: float(r["metrics"]["nlpid"]) for r in recs
            if r.get("status") == "ok" and "task" in r and np.isfinite(r.get("metrics", {}).get("nlpid", np.nan))}


def add_captured_column(table, records_by_label: dict[str, list[dict]]) -> dict[str, float]:
    """Add the column ``captured_fraction`` (higher is better) to a comparison table that has
    both references (the empty graph and the oracle) on NLPID: per row (references included:
    0 and 1) the captured fraction of the table's mean NLPIDs, its paired delta-method s.e.
    (:func:`captured_se`), best = the best non-reference method, no p-value. ``records_by_label``:
    the per-task records under the table's row labels. Returns {label: fraction}; nothing is
    added (and {} returned) without both references."""
    frac = {r["method"]: r["mean"] for r in table.to_records() if r["metric"] == "nlpid"}
    empty = next((m for m in frac if m.startswith("empty-graph")), None)
    oracle = next((m for m in frac if m.startswith("oracle")), None)
    if empty is None or oracle is None:
        return {}
    out = {m: captured_fraction(v, frac[empty], frac[oracle]) for m, v in frac.items()}
    per_task = {m: _task_nlpid(records_by_label.get(m, [])) for m in out}
    ranked = [m for m in out if not is_reference(m) and np.isfinite(out[m])]
    best = max(ranked, key=lambda m: out[m], default=None)
    if CAPTURED not in table.metrics:
        table.metrics.append(CAPTURED)
    table.lower_is_better[CAPTURED] = False
    for m, v in out.items():
        n = table.cells[(m, "nlpid")].n
        table.cells[(m, CAPTURED)] = ComparisonCell(float(v), captured_se(per_task[m], per_task[empty], per_task[oracle]),
                                                    n, m == best, float("nan"))
    return out


def write_report(out_dir: str | Path, sections: dict[str, dict[str, list[dict]]], title: str,
                 meta: dict[str, Any] | None = None, *, section: str = "Prior",
                 unit: str = "test tasks") -> dict[str, Any]:
    """Write tables (markdown, JSON), plots and ``report.html`` for each prior section.

    ``sections``: {prior label: {method label: per-task records}}. Returns the paths, the
    comparison tables and the per-task metric arrays (by prior label, keyed as given; where the
    table has the empty-graph and oracle rows, each method also gets ``captured_fraction`` as a
    one-element array: a table-level number, logged to MLflow like the means). A
    method with an ok record saying ``converged: False`` reads "<method> (not converged k/n)"
    in the tables and plots, and its note is listed above the table. ``section`` / ``unit``
    name the sections and what a record is (imported data: "Dataset", "held-out regimes").
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables, plots, body, per_prior = {}, [], [], {}
    for prior, recs in sections.items():
        per_prior[prior] = metric_arrays(recs)  # keyed as given (callers look records up by these labels)
        arrays = metric_arrays(mark_not_converged(recs))  # what tables and plots show
        # raw coverage has no "better" direction: it is plotted; the table ranks calibration_error
        # 3 significant digits: with 4 a cell ("141.7 ± 43.11 (p=0.188)") wraps inside the page
        table = comparison_table({m: {k: v for k, v in a.items() if not k.startswith("coverage")}
                                  for m, a in arrays.items() if a}, digits=3,
                                 references=[m for m in arrays if is_reference(m)])
        shown = dict(zip(mark_not_converged(recs), recs))  # table label -> label as given
        captured = add_captured_column(table, {label: recs[given] for label, given in shown.items()})
        for label, v in captured.items():  # one table-level number, logged by the evaluate task like a mean
            per_prior[prior][shown[label]][CAPTURED] = np.array([v])
        tables[prior] = table
        (out / f"{prior}-table.md").write_text(table.to_markdown())
        (out / f"{prior}-table.json").write_text(json.dumps(table.to_records(), indent=1, default=float))
        pngs = make_plots(arrays, out, f"{prior}-")
        plots += pngs
        fails = failures(recs)
        body.append(f"<h2>{html.escape(section)} {html.escape(prior)}</h2>")
        notes = convergence_notes(recs)
        if notes:
            items = "".join(f"<li><b>{html.escape(m)}</b>: {html.escape(n)}</li>" for m, n in notes.items())
            body.append(f"<p class='warn'>{NOT_CONVERGED}: fits that did not converge; their graphs are forced "
                        f"cuts, not estimates</p><ul>{items}</ul>")
        n = max((len(next(iter(a.values()))) for a in arrays.values() if a), default=0)
        body.append(table.to_html())
        holdout = float((meta or {}).get("int_holdout") or 0)
        if "int_holdout" in (meta or {}) and any("nlpid" in a for a in arrays.values()):
            body.append(f"<p>NLPID scores the last {holdout:.0%} of each regime's interventional rows; every "
                        "method was fitted on (or answered from) the rest (<code>int_holdout</code>), so no method "
                        "is scored on rows it saw.</p>" if holdout else
                        "<p class='warn'>NLPID scores every interventional row (<code>int_holdout</code> 0): a "
                        "method fitted on interventional data was scored on rows it saw.</p>")
        if captured:
            body.append("<p>captured_fraction = (empty-graph - method) / (empty-graph - oracle) of mean NLPID: "
                        "1 = the true SCM, 0 = no better than ignoring causality; ± its paired delta-method s.e.</p>")
        body.append(f"<p class='legend'>mean ± s.e. over {n} {html.escape(unit)}; <b>bold</b>: best mean; "
                    "p: Welch's t-test against the best method; -: not answered by the method; "
                    "↓ lower is better, ↑ higher is better.</p>")
        if fails:
            rows = "".join(f"<tr><td>{html.escape(f['method'])}</td><td>{f['task']}</td>"
                           f"<td><code>{html.escape(str(f['error']))}</code></td></tr>" for f in fails)
            body.append(f"<h3>Failed fits ({len(fails)})</h3><table><tr><th>method</th><th>task</th>"
                        f"<th>error</th></tr>{rows}</table>")
        for p in pngs:
            b64 = base64.b64encode(p.read_bytes()).decode()
            body.append(f'<img alt="{p.stem}" src="data:image/png;base64,{b64}"/>')
    meta_html = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in (meta or {}).items())
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;white-space:nowrap}td small{display:block;color:#555}"
            ".legend{color:#555;font-size:90%}.warn{color:firebrick}img{max-width:100%;margin:6px;vertical-align:top}"
            "</style></head>"
            f"<body><h1>{html.escape(title)}</h1><ul>{meta_html}</ul>{''.join(body)}</body></html>")
    (out / "report.html").write_text(page)
    return {"html": out / "report.html", "plots": plots, "tables": tables, "arrays": per_prior, "dir": out}


# --- a stored prior, summarised (the generate flow's Prefect artifact) -----------------------
def _size_on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def prior_summary(store, signal_tasks: int = 10) -> dict[str, Any]:
    """Name, hash, tasks per split, size on disk and, where it can be measured, the causal signal.

    The signal (``pipeline_lib.signal.prior_signal``: oracle vs observational-marginal NLPID gap
    per sample, interventional shift in observational s.d.) needs single-target hard regimes;
    on other priors it is reported as not measurable rather than guessed.
    """
    out: dict[str, Any] = {"name": store.config.name, "hash": store.hash, "path": str(store.path),
                           "tasks": {s: store.n_tasks(s) for s in ("train", "val", "test")},
                           "bytes": _size_on_disk(store.path), "complete": store.is_complete,
                           "generator_version": store.attrs.get("generator_version")}
    try:
        from pipeline_lib.signal import prior_signal
    except ImportError:  # older library without the signal module: the rest of the summary stands
        out["signal"] = None
        return out
    try:
        out["signal"] = prior_signal(store.config, signal_tasks)
    except (ValueError, NotImplementedError) as exc:  # no single-target hard regime, or no oracle for it
        out["signal"] = {"unavailable": str(exc)}
    return out


def prior_summary_markdown(summary: dict[str, Any]) -> str:
    """:func:`prior_summary` as the markdown of a Prefect artifact."""
    t = summary["tasks"]
    lines = [f"### Prior `{summary['name']}`", "",
             "| | |", "|---|---|",
             f"| content hash | `{summary['hash'][:12]}` (the full hash is in the store's attributes) |",
             f"| tasks train / val / test | {t['train']} / {t['val']} / {t['test']} |",
             f"| size on disk | {_human_bytes(summary['bytes'])} |",
             f"| store | `{summary['path']}` |",
             f"| generator | {summary.get('generator_version')} |"]
    sig = summary.get("signal")
    if sig and "signal_nats" in sig:
        lines += [f"| causal signal | {sig['signal_nats']:.3f} nats/sample (oracle vs observational marginal"
                  f"{', LOW' if sig.get('low_signal') else ''}) |",
                  f"| interventional shift | {sig['shift_sd_mean']:.2f} obs. s.d. (mean), "
                  f"{sig['shift_sd_median']:.2f} (median), over {sig['n_queries']} queries of "
                  f"{sig['n_tasks']} test tasks |"]
    elif sig:
        lines.append(f"| causal signal | not measurable: {sig['unavailable']} |")
    return "\n".join(lines) + "\n"


# --- headline cells: the terminal summary, the Prefect table and the MLflow run description ----
# (column label, metrics in order of preference: the first one the prior's methods answer)
HEADLINE = (("NLPID", ("nlpid",)), ("captured", (CAPTURED,)), ("E-SHD", ("e_shd",)), ("Intv-AUROC", ("intv_auroc",)),
            ("RMSE", ("sample_rmse", "int_rmse", "noise_rmse", "cf_rmse")), ("s/task", ("runtime_s",)))


def _sig(x: float, digits: int) -> str:
    """``digits`` significant digits, trailing zeros kept (0.0100, not 0.01), no bare trailing point."""
    if x != x:
        return "nan"
    return f"{x:#.{digits}g}".replace(".e", "e").rstrip(".")


def format_cell(rec: dict | None) -> tuple[str, bool]:
    """``("1.23±0.045**", is_best)`` for one (method, metric) record of ComparisonTable.to_records.

    3 significant digits for the mean, 2 for the s.e. (none for one task); the marker is
    padded to 2 characters so numbers stay aligned in a right-justified column.
    """
    if rec is None:
        return "-", False
    txt = _sig(rec["mean"], 3) + (f"±{_sig(rec['se'], 2)}" if rec["se"] == rec["se"] else "")
    p = rec.get("p_vs_best", float("nan"))
    mark = "" if rec["best"] or p != p else "**" if p < 0.01 else "*" if p < 0.05 else ""
    return f"{txt}{mark:<2}", bool(rec["best"])


def headline_columns(records: list[dict], wide: bool) -> list[tuple[str, str]]:
    """(header, metric) of the columns to show: the headline set, or every metric with ``wide``."""
    have = list(dict.fromkeys(r["metric"] for r in records))
    if wide:
        return [(m, m) for m in have]
    out = []
    for label, names in HEADLINE:
        hit = next((m for m in names if m in have), None)
        if hit is not None:
            out.append((label if hit == names[0] else hit, hit))
    return out


def headline_markdown(records: list[dict]) -> str:
    """One prior's records as a markdown table of the headline columns (bold: best)."""
    cols = headline_columns(records, wide=False)
    methods = list(dict.fromkeys(r["method"] for r in records))
    by = {(r["method"], r["metric"]): r for r in records}
    arrow = {r["metric"]: "↓" if r["lower_is_better"] else "↑" for r in records}
    lines = ["| method | " + " | ".join(f"{h} {arrow[k]}" for h, k in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for m in methods:
        cells = []
        for _, k in cols:
            txt, best = format_cell(by.get((m, k)))
            cells.append(f"**{txt.strip()}**" if best else txt.strip())
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
