"""The end-to-end benchmark flow in Prefect's ephemeral mode, on a tiny spec.

Checks the chain generate -> meta-train -> baselines -> evaluate -> report, that a failing
baseline fit is recorded (status + error) without aborting the rest, that everything lands in
one MLflow run, and that a second run reuses the store, the registered model and the results.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from flows.spec import BaselineRun, BenchmarkSpec, MethodRun, SpecError, load_preset


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def tiny_spec() -> BenchmarkSpec:
    return BenchmarkSpec(
        name="tiny",
        priors=["lin-2node"],
        prior_overrides={"n_obs": 60, "n_int": 40, "splits": {"train": 8, "val": 4, "test": 3}, "chunk_tasks": 4},
        methods=[MethodRun(name="mace-tnp", preset="cpu-small", steps=4, batch_size=4,
                           model={"d_model": 16, "n_heads": 2, "n_components": 3, "n_obs_min": 10,
                                  "n_obs_max": 50})],
        # the second "exact" gets a config that passes the up-front key check but that the fit
        # rejects (an unknown graph prior): a recorded failure, not a crash
        baselines=[BaselineRun(name="exact"), BaselineRun(name="exact", config={"graph_prior": "no_such_prior"})],
        n_test_tasks=2,
        n_workers=2,
    )


def test_spec_validation_and_presets():
    assert load_preset("quick").n_test_tasks >= 1
    assert load_preset("paper-3node").priors
    with pytest.raises(SpecError, match="preset 'nope'"):
        load_preset("nope")
    with pytest.raises(ValueError, match="baseline 'dibbs' is unknown"):
        BaselineRun(name="dibbs")
    with pytest.raises(SpecError, match="priors: 'no-such-prior'"):
        BenchmarkSpec(priors=["no-such-prior"]).prior_configs()



def test_baseline_config_overrides_are_checked_before_any_fit(tmp_path):
    """A malformed baseline config fails at submission, naming the field; the CLI exits 2."""
    from typer.testing import CliRunner

    from flows.cli import app
    from pipeline_lib.baselines.registry import BaselineConfigError, check_config

    typed = check_config("bacadi", {"steps": 30, "n_grad_mc": 4})
    assert (typed.steps, typed.n_grad_mc, type(typed).__name__) == (30, 4, "BaCaDIConfig")
    assert check_config("exact", {"graph_prior": "random_order_er", "edge_prob": 0.5})
    with pytest.raises(BaselineConfigError, match="'dibs': field 'stepz'"):
        check_config("dibs", {"stepz": 3})
    with pytest.raises(BaselineConfigError, match="field 'steps'.*greater than or equal to 0"):
        check_config("dibs-joint", {"steps": -1})
    with pytest.raises(BaselineConfigError, match="unknown_targets"):
        check_config("dcdi", {"unknown_targets": True})
    with pytest.raises(BaselineConfigError, match="'exact': field 'n_mcc'"):
        check_config("exact", {"n_mcc": 3})
    with pytest.raises(ValueError, match="field 'n_particles'"):
        BaselineRun(name="bacadi", config={"n_particles": 0})
    for preset in ("quick", "cpu-3node", "paper-3node"):  # the shipped presets validate
        assert load_preset(preset).baselines

    runner = CliRunner()
    missing = str(tmp_path / "absent.zarr")
    r = runner.invoke(app, ["baseline", "dibs", "--prior", missing, "--set", "stepz=3"])
    assert r.exit_code == 2 and "field 'stepz'" in r.output
    r = runner.invoke(app, ["baseline", "dibs", "--prior", missing, "--set", "steps"])
    assert r.exit_code == 2 and "KEY=VALUE" in r.output
    r = runner.invoke(app, ["baseline", "dibs", "--prior", missing, "--set", "steps=3"])
    assert r.exit_code == 2 and "no Zarr prior store" in r.output


@pytest.mark.usefixtures("prefect_harness")
def test_benchmark_flow_end_to_end(tmp_path):
    import mlflow

    from flows.benchmark import benchmark
    from storage.tracking import tracking_uri

    root = tmp_path / "root"
    summary = benchmark(spec=tiny_spec(), root=str(root))
    html = Path(summary["html"])
    assert html.is_file() and "nlpid" in html.read_text() and "<img" in html.read_text()
    (prior_label, records), = summary["records"].items()
    methods = {r["method"] for r in records}
    assert any(m.startswith("mace-tnp v") for m in methods) and any(m.startswith("exact") for m in methods)

    # the failing baseline is recorded with its error, the good one is not affected
    results = root / "results"
    failed = [json.loads(p.read_text()) for p in results.rglob("task_test_*.json")]
    bad = [r for r in failed if r["status"] == "failed"]
    good = [r for r in failed if r["status"] == "ok" and r["method"] == "exact"]
    assert len(bad) == 2 and all("no_such_prior" in r["error"] for r in bad)
    assert len(good) == 2 and all(math.isfinite(r["metrics"]["nlpid"]) for r in good)

    client = mlflow.tracking.MlflowClient(tracking_uri(str(root)))
    run = client.get_run(summary["run_id"])
    keys = set(run.data.metrics)
    assert any(".exact" in k and k.endswith(".nlpid") and math.isfinite(run.data.metrics[k]) for k in keys)
    assert any(".n_failed" in k and run.data.metrics[k] == 2.0 for k in keys)
    arts = {a.path for a in client.list_artifacts(summary["run_id"])}
    assert "report.html" in arts and "records.json" in arts

    # second run: same store, same registered model, results reused
    mtimes = {p: p.stat().st_mtime_ns for p in results.rglob("*.json") if '"ok"' in p.read_text()}
    again = benchmark(spec=tiny_spec(), root=str(root))
    (m,) = again["models"][prior_label]
    assert m["reused"] is True
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
