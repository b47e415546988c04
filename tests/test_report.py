"""What a person reads: the 80-column benchmark summary, the stage clock's estimate, artifact
keys and the prior summary. Pure functions on small inputs (no flow run, no service)."""
from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from flows.present import benchmark_summary, format_cell, format_duration, summary_table
from pipeline_lib.metrics import comparison_table


def _records(n_methods: int = 5, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    arrays = {
        "mace-tnp v12": {"nlpid": rng.normal(120, 5, 10), "runtime_s": rng.uniform(0.01, 0.02, 10)},
        "exact": {"nlpid": rng.normal(118, 5, 10), "e_shd": rng.uniform(0, 2, 10),
                  "runtime_s": rng.uniform(0.1, 0.2, 10)},
        "dibs": {"nlpid": rng.normal(150, 5, 10), "e_shd": rng.uniform(1, 3, 10),
                 "intv_auroc": rng.uniform(0.5, 1, 10), "runtime_s": rng.uniform(10, 20, 10)},
        "cond-fip v2": {"sample_rmse": rng.uniform(0.1, 0.3, 10), "runtime_s": rng.uniform(0.01, 0.02, 10)},
        "empty-graph": {"nlpid": rng.normal(210, 5, 10), "runtime_s": rng.uniform(0.001, 0.002, 10)},
    }
    return comparison_table(dict(list(arrays.items())[:n_methods])).to_records()


def _render(renderable, width: int = 80) -> str:
    con = Console(width=width, record=True)
    con.print(renderable)
    return con.export_text()


def test_format_cell_digits_and_markers():
    base = {"mean": 123.456, "se": 1.2345, "best": False, "p_vs_best": 0.003}
    assert format_cell(base) == ("123±1.2**", False)
    assert format_cell({**base, "p_vs_best": 0.03})[0] == "123±1.2* "
    assert format_cell({**base, "p_vs_best": 0.2})[0] == "123±1.2  "
    assert format_cell({**base, "best": True, "p_vs_best": float("nan")}) == ("123±1.2  ", True)
    assert format_cell({**base, "se": float("nan"), "mean": 0.0012345})[0].strip() == "0.00123**"  # one task
    assert format_cell(None) == ("-", False)


def test_summary_fits_80_columns_and_drops_columns_it_names():
    text = _render(summary_table(_records(), title="prior p"))
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 80, text
    header = next(ln for ln in lines if ln.startswith("method"))
    assert header.split()[:2] == ["method", "NLPID"]
    for m in ("mace-tnp v12", "exact", "dibs", "cond-fip v2", "empty-graph"):  # full names, one row each
        assert sum(ln.startswith(m + " ") for ln in lines) == 1, text
    # five headline columns do not fit next to each other: the last ones go, and are named
    assert "not shown (too wide): s/task" in text and "s/task" not in header
    dibs = next(ln for ln in lines if ln.startswith("dibs "))
    assert dibs.split()[1].endswith("**")  # NLPID 150 vs 118 over 10 tasks: p < 0.01
    mace = next(ln for ln in lines if ln.startswith("mace-tnp "))
    assert mace.split()[3] == "-"  # no graph answered: "-", never 0
    wide = _render(summary_table(_records(), wide=True, width=None), width=300)
    assert "runtime_s" in wide and "sample_rmse" in wide and "not shown" not in wide


def test_summary_with_few_methods_keeps_runtime():
    text = _render(summary_table(_records(n_methods=2)))
    assert "s/task" in text and "not shown" not in text and "E-SHD" in text and "RMSE" not in text


def test_benchmark_summary_lines_fit_with_legend_and_pointers():
    summary = {"records": {"lin-3node-strong-1a2b3c4d": _records()}, "html": "/r/report.html",
               "run_id": "abc123", "tracking_uri": "sqlite:////r/mlflow.db", "seconds": 200.4}
    con = Console(width=80, record=True)
    for part in benchmark_summary(summary):
        con.print(part)
    text = con.export_text()
    assert max(len(ln) for ln in text.splitlines()) <= 80
    assert "** p<0.01" in text and "report: /r/report.html" in text and "abc123" in text
    assert "total: 3m20s" in text and "(10 test tasks)" in text


def test_format_duration():
    assert [format_duration(s) for s in (4.4, 59.6, 200, 3725)] == ["4s", "1m00s", "3m20s", "1h02m"]


def test_artifact_keys_are_what_prefect_accepts():
    from tasks.artifacts import artifact_key

    assert artifact_key("train", "mace-tnp", "Lin_3node.v2") == "train-mace-tnp-lin-3node-v2"
    assert artifact_key("benchmark", "paper 3node", "table") == "benchmark-paper-3node-table"
    with pytest.raises(ValueError):
        artifact_key("__")


def test_stage_clock_scales_the_estimate_by_observed_speed(monkeypatch):
    import flows.benchmark as fb

    now = [100.0]
    monkeypatch.setattr(fb.time, "perf_counter", lambda: now[0])
    clock = fb.StageClock([("a", 10.0), ("b", 10.0), ("c", 20.0)], "k")
    assert clock.left() == 40.0  # nothing observed yet: the a-priori cost
    now[0] += 30.0  # stage a took 3x its expected time (a loaded machine)
    msg = clock.finish()
    assert clock.left() == pytest.approx(90.0) and "about 1m30s left" in msg and "stage 1/3 a" in msg
    now[0] += 0.1
    clock.finish(reused=True)  # a reused model says nothing about speed
    assert clock.left() == pytest.approx(60.0)
    now[0] += 20.0
    assert "left" not in clock.finish() and clock.done == 3


def test_prior_summary_markdown_says_when_the_signal_is_unknown():
    from storage.report import prior_summary_markdown

    base = {"name": "grn-10", "hash": "ab" * 32, "path": "/x/grn-10-abab.zarr", "bytes": 3 * 1024 ** 2,
            "tasks": {"train": 100, "val": 10, "test": 10}, "generator_version": "3"}
    md = prior_summary_markdown({**base, "signal": {"unavailable": "no single-target hard regime"}})
    assert "100 / 10 / 10" in md and "3.0 MiB" in md and "not measurable: no single-target" in md
    md = prior_summary_markdown({**base, "signal": {"signal_nats": 0.51, "low_signal": False, "shift_sd_mean": 1.2,
                                                    "shift_sd_median": 0.8, "n_queries": 30, "n_tasks": 10}})
    assert "0.510 nats/sample" in md and "LOW" not in md


def test_headline_markdown_bolds_the_best_and_keeps_dashes():
    from storage.report import headline_markdown

    md = headline_markdown(_records(n_methods=3))
    head, rule, *rows = md.strip().splitlines()
    assert head.startswith("| method | NLPID ↓ | E-SHD ↓ | Intv-AUROC ↑ | s/task ↓")
    exact = next(r for r in rows if r.startswith("| exact |"))
    assert "**" in exact.split("|")[2]  # exact has the best NLPID
    mace = next(r for r in rows if r.startswith("| mace-tnp v12 |"))
    assert mace.split("|")[3].strip() == "-"


def test_benchmark_and_demo_offer_wide():
    from typer.testing import CliRunner

    from flows.cli import app

    for cmd in ("benchmark", "demo"):
        r = CliRunner().invoke(app, [cmd, "--help"])
        assert r.exit_code == 0 and "--wide" in r.output


def _nlpid_records(values: list[float]) -> list[dict]:
    return [{"task": t, "status": "ok", "metrics": {"nlpid": v, "runtime_s": 0.01}} for t, v in enumerate(values)]


def test_captured_column_by_hand_in_table_html_terminal_and_mlflow_arrays(tmp_path):
    """empty 250/260/240 (mean 250), oracle 150 x 3, MACE 200/190/210 (mean 200), exact 220/230/210:
    captured = (250 - 200) / 100 = 0.5 and 0.3; paired delta s.e.: psi = ((e - m) - f (e - o)) / 100
    = 0, .15, -.15 (MACE) and 0, -.03, .03 (exact), s.e. = sd / sqrt 3 = 0.0866 and 0.01732."""
    from storage.report import write_report

    recs = {"mace-tnp v1": _nlpid_records([200, 190, 210]), "exact": _nlpid_records([220, 230, 210]),
            "empty-graph": _nlpid_records([250, 260, 240]), "oracle": _nlpid_records([150, 150, 150])}
    rep = write_report(tmp_path, {"p": recs}, "t")
    cells = {r["method"]: r for r in rep["tables"]["p"].to_records() if r["metric"] == "captured_fraction"}
    assert cells["mace-tnp v1"]["mean"] == pytest.approx(0.5) and cells["exact"]["mean"] == pytest.approx(0.3)
    assert cells["mace-tnp v1"]["se"] == pytest.approx(0.15 / np.sqrt(3))
    assert cells["exact"]["se"] == pytest.approx(0.03 / np.sqrt(3))
    assert cells["empty-graph"]["mean"] == 0 and cells["oracle"]["mean"] == 1 and cells["oracle"]["se"] == 0
    assert cells["mace-tnp v1"]["best"] and not cells["oracle"]["best"] and not cells["exact"]["lower_is_better"]
    # MLflow: the evaluate task logs the mean of every array as <prior>.<method>.<metric>
    assert rep["arrays"]["p"]["exact"]["captured_fraction"].tolist() == pytest.approx([0.3])
    page = (tmp_path / "report.html").read_text()
    assert "captured_fraction (↑)" in page and "0.5 ± 0.0866" in page
    assert "captured_fraction" in (tmp_path / "p-table.md").read_text()
    text = _render(summary_table(rep["tables"]["p"].to_records(), title="p"))
    header = next(ln for ln in text.splitlines() if ln.startswith("method"))
    assert header.split()[:4] == ["method", "NLPID", "↓", "captured"]
    mace = next(ln for ln in text.splitlines() if ln.startswith("mace-tnp"))
    assert mace.split()[3] == "0.500±0.087"
    # one reference missing: no column, no array
    rep = write_report(tmp_path / "no-oracle", {"p": {m: r for m, r in recs.items() if m != "oracle"}}, "t")
    assert "captured_fraction" not in rep["tables"]["p"].metrics
    assert "captured_fraction" not in rep["arrays"]["p"]["exact"]
    # the page says which interventional rows NLPID scored when they were held out of the fits
    assert "interventional rows" not in page
    write_report(tmp_path / "held", {"p": recs}, "t", meta={"int_holdout": 0.5})
    assert "NLPID scores the last 50% of each regime's interventional rows" in (tmp_path / "held" / "report.html").read_text()
    write_report(tmp_path / "all", {"p": recs}, "t", meta={"int_holdout": 0.0})
    assert "NLPID scores every interventional row" in (tmp_path / "all" / "report.html").read_text()


def test_captured_se_needs_shared_tasks_and_a_gap():
    from pipeline_lib.metrics import captured_se

    assert np.isnan(captured_se({0: 1.0}, {0: 2.0}, {0: 0.0}))  # one shared task: no s.e.
    assert np.isnan(captured_se({0: 1.0, 1: 1.0}, {0: 2.0, 1: 2.0}, {0: 2.0, 1: 2.0}))  # no gap
    # only the shared tasks count (task 2 of the method is dropped): E 255, M 195, O 150, f = 60 / 105;
    # psi = (50 - 100 f) / 105 = -0.0680 and (70 - 110 f) / 105 = +0.0680: s.e. = 0.0680
    f = 60 / 105
    psi = [(50 - 100 * f) / 105, (70 - 110 * f) / 105]
    se = captured_se({0: 200.0, 1: 190.0, 2: 0.0}, {0: 250.0, 1: 260.0}, {0: 150.0, 1: 150.0})
    assert se == pytest.approx(np.std(psi, ddof=1) / np.sqrt(2)) and se == pytest.approx(0.06803, abs=1e-4)
