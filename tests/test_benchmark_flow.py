"""The end-to-end benchmark flow in Prefect's ephemeral mode, on a tiny spec.

Checks the chain generate -> meta-train -> baselines -> evaluate -> report, that a failing
baseline fit is recorded (status + error) without aborting the rest, that everything lands in
one MLflow run, and that a second run reuses the store, the registered model and the results.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from flows.spec import BaselineRun, BenchmarkSpec, MethodRun, SpecError, load_preset


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
    from flows.spec import shipped_presets

    assert {"quick", "cpu-3node", "paper-3node", "mace-fc-quick"} <= set(shipped_presets())
    for preset in shipped_presets():  # every shipped preset validates, its priors and baseline configs too
        spec = load_preset(preset)
        assert spec.baselines and spec.prior_configs()

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
    # n_workers 2 on the local (threaded) cluster: each fit ran in a fit process (tasks/fitprocs.py)
    assert all(r["fit_pid"] != os.getpid() for r in good), [r.get("fit_pid") for r in good]
    # every method, amortized or not, was fitted on half of each regime's interventional rows and
    # scored on the other half (the spec's default int_holdout)
    assert failed and all(r["int_holdout"] == 0.5 for r in failed)
    assert any(r["method_key"].endswith("-h0.5") for r in failed)

    client = mlflow.tracking.MlflowClient(tracking_uri(str(root)))
    run = client.get_run(summary["run_id"])
    keys = set(run.data.metrics)
    assert any(".exact" in k and k.endswith(".nlpid") and math.isfinite(run.data.metrics[k]) for k in keys)
    assert any(".n_failed" in k and run.data.metrics[k] == 2.0 for k in keys)
    arts = {a.path for a in client.list_artifacts(summary["run_id"])}
    assert "report.html" in arts and "records.json" in arts
    _check_lineage(client, summary, root)
    _check_prefect_artifacts(summary)
    _check_terminal_summary(summary)

    # second run: same store, same registered model, results reused
    mtimes = {p: p.stat().st_mtime_ns for p in results.rglob("*.json") if '"ok"' in p.read_text()}
    again = benchmark(spec=tiny_spec(), root=str(root))
    (m,) = again["models"][prior_label]
    assert m["reused"] is True
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())

    # another training recipe on the same prior (one more step) trains anew instead of reusing
    from flows.train import meta_train

    run = tiny_spec().methods[0]
    (store_path,) = (root / "priors").glob("*.zarr")
    other = meta_train(method=run.name, prior=str(store_path), root=str(root), steps=run.steps + 1,
                       batch_size=run.batch_size, lr=run.lr, preset=run.preset, model=run.model)
    assert other["reused"] is False and other["version"] != m["version"]


def _check_lineage(client, summary, root):
    """MLflow: the parent run has one child per method with the same metric names in each; the
    parent, the children and the training run log the store as input datasets (digest = the
    store's content hash, context = the split read); the model version is described."""
    from storage.prior_store import PriorStore
    from flows.baselines import baseline_key

    (store_path,) = (root / "priors").glob("*.zarr")
    store = PriorStore.open(store_path)
    parent = client.get_run(summary["run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    names = sorted(c.info.run_name for c in children)
    # the two "exact" configs are told apart by their config keys; the failing one has a run too
    good, bad = (baseline_key(b, tiny_spec().int_holdout) for b in tiny_spec().baselines)
    assert names == sorted(["mace-tnp", good, bad])
    assert summary["child_runs"] == {c.info.run_name: c.info.run_id for c in children}
    metrics = {c.info.run_name: c.data.metrics for c in children}
    for name in ("mace-tnp", good):  # the same names in every child (one prior: no prefix)
        assert math.isfinite(metrics[name]["nlpid"]) and metrics[name]["n_tasks"] == 2.0
    assert metrics[bad]["n_failed"] == 2.0 and "nlpid" not in metrics[bad]
    (mace,) = [c for c in children if c.info.run_name == "mace-tnp"]
    (model,) = summary["models"][next(iter(summary["models"]))]
    assert mace.data.tags["model_versions"] == model["version"] and mace.data.tags["model_runs"] == model["run_id"]

    def inputs(run):
        return {(d.dataset.digest, next(t.value for t in d.tags if t.key == "mlflow.data.context"),
                 json.loads(d.dataset.source)["uri"]) for d in run.inputs.dataset_inputs}

    uri = store_path.resolve().as_uri()
    for run in (parent, *children):
        assert inputs(run) == {(store.hash[:12], "test", uri)}
    train = client.get_run(model["run_id"])
    assert inputs(train) == {(store.hash[:12], "train", uri), (store.hash[:12], "val", uri)}
    assert train.inputs.dataset_inputs[0].dataset.name.startswith(f"lin-2node-{store.hash[:12]}/")
    version = client.get_model_version("causalmeta-mace-tnp", model["version"])
    assert "lin-2node" in version.description and "4 steps" in version.description
    dest = root / "downloaded"
    dest.mkdir()
    example = json.loads(Path(client.download_artifacts(model["run_id"], "model/input_example.json",
                                                        str(dest))).read_text())
    assert example["signature"]["inputs"]["x_obs"]["shape"] == ["n_obs", "d"]
    assert len(example["input_example"]["x_obs"]) == 5


def _check_prefect_artifacts(summary):
    """Prefect: the benchmark run is named after its spec and carries its table, links and
    progress artifacts; the subflows publish the prior summary, chunk, fit and step progress."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterName

    from flows.benchmark import spec_hash

    async def read():
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=[f"benchmark-tiny-{spec_hash(tiny_spec())}"])))
            arts = await client.read_artifacts(flow_run_filter=FlowRunFilter(id={"any_": [r.id for r in runs]}))
            latest = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[
                "prior-lin-2node", "prior-lin-2node-chunks", "train-mace-tnp-lin-2node-steps",
                "train-mace-tnp-lin-2node"])))
            train_runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=["train-mace-tnp-lin-2node"])))
            stage_runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=["generate-lin-2node", "baselines-lin-2node", "evaluate-lin-2node"])))
            return runs, arts, latest, train_runs, {r.name for r in stage_runs}

    runs, arts, latest, train_runs, stage_names = asyncio.run(read())
    assert runs and train_runs  # flow-run names say what runs
    assert stage_names == {"generate-lin-2node", "baselines-lin-2node", "evaluate-lin-2node"}
    by_key = {a.key: a for a in arts}
    table = by_key["benchmark-tiny-table"]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {r["method"] for r in rows} == {r["method"] for r in summary["records"][next(iter(summary["records"]))]}
    assert any(r["nlpid"].endswith("(best)") for r in rows)
    links = by_key["benchmark-tiny"].data
    assert summary["run_id"] in links and Path(summary["html"]).as_uri() in links and "mlflow server" in links
    stages = by_key["benchmark-tiny-stages"]
    assert stages.type == "progress" and float(stages.data) == 100.0
    keys = {a.key: a for a in latest}
    assert "content hash" in keys["prior-lin-2node"].data and "tasks train / val / test | 8 / 4 / 3" in \
        keys["prior-lin-2node"].data
    assert float(keys["prior-lin-2node-chunks"].data) == 100.0
    assert float(keys["train-mace-tnp-lin-2node-steps"].data) == 100.0
    assert "version **" in keys["train-mace-tnp-lin-2node"].data


def _check_terminal_summary(summary):
    """The terminal summary fits 80 columns: one row per method, "-" where a method does not answer."""
    from rich.console import Console

    from flows.cli import _print_summary

    con = Console(width=80, record=True)
    _print_summary({**summary, "tracking_uri": "sqlite:///x"}, console=con)
    text = con.export_text()
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 80, text
    header = next(ln for ln in lines if ln.startswith("method"))
    assert "NLPID" in header and "E-SHD" in header and "s/task" in header, text
    rows = {m: [ln for ln in lines if ln.startswith(m + " ")]
            for recs in summary["records"].values() for m in {r["method"] for r in recs}}
    assert all(len(r) == 1 for r in rows.values()), text
    mace = next(r[0] for m, r in rows.items() if m.startswith("mace-tnp"))
    assert mace.split()[3] == "-"  # "mace-tnp", "vN", NLPID, E-SHD: mace-tnp answers no graph
    assert "report:" in text and summary["run_id"] in text and "p<0.05" in text


def test_cond_fip_with_the_kernel_head_scores_through_the_flow(tmp_path):
    """Cond-FiP ``cpu-small`` (closed-form kernel head, decoder abduction) at a tiny width runs
    generate -> train -> score -> report; every test task is scored ok with finite generator
    metrics (session 12: the head's dual solve failed only inside the flow's scoring)."""
    from flows.benchmark import benchmark

    spec = BenchmarkSpec(
        name="tiny-cond-fip", priors=["lin-2node"],
        prior_overrides={"n_obs": 60, "n_int": 40, "splits": {"train": 8, "val": 4, "test": 3}, "chunk_tasks": 4},
        methods=[MethodRun(name="cond-fip", preset="cpu-small", steps=4, batch_size=4, lr=1e-3,
                           model={"d_model": 16, "n_heads": 2, "head_hidden": 16, "n_embed": 24, "n_embed_min": 12,
                                  "n_target": 24})],
        baselines=[BaselineRun(name="empty-graph")], n_test_tasks=2, n_workers=1)
    root = tmp_path / "root"
    summary = benchmark(spec=spec, root=str(root))
    recs = [json.loads(p.read_text()) for p in (root / "results").rglob("task_test_*.json")]
    ours = [r for r in recs if r["method"].startswith("cond-fip")]
    assert len(ours) == 2 and all(r["status"] == "ok" for r in ours), [r.get("error") for r in ours]
    for r in ours:
        assert all(math.isfinite(r["metrics"][k]) for k in ("sample_rmse", "nlpid")), sorted(r["metrics"])
    assert summary["run_id"]
