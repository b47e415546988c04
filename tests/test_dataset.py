"""Methods on imported data: the evaluate-dataset flow, the CLI, convergence reporting, node ranges."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from storage.importing import import_dataset
from tests.test_import import NAMES, edges_csv, frame_of, sampled_task, write

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dataset")
    task = sampled_task()
    src = write(frame_of(task), tmp / "cyto.csv")
    ds = import_dataset(src, tmp / "root", "cyto", regime_col="regime", targets_col="targets",
                        graph=edges_csv(task, tmp / "edges.csv"))
    return task, ds, tmp


def tiny_prior(root: Path, name: str, d_min: int, d_max: int):
    from pipeline_lib.priors import PriorConfig, sample_split_range
    from storage.prior_store import PriorStore

    graph = {"n_nodes": d_min} if d_min == d_max else {"n_nodes_min": d_min, "n_nodes_max": d_max}
    config = PriorConfig.model_validate(
        {"name": name, "seed": 5, "graph": {**graph, "expected_parents": 0.5}, "interventions": {"n_regimes": 2},
         "n_obs": 30, "n_int": 10, "splits": {"train": 2, "val": 2, "test": 2}, "chunk_tasks": 2})
    store = PriorStore.create_or_open(root, config)
    for split, c, start, stop in store.pending_chunks():
        store.write_chunk(split, c, sample_split_range(config, split, start, stop))
    store.finalize()
    return store


def register_untrained(root: Path, store) -> int:
    """A MACE-TNP registered for ``store``'s prior without training (the node range is what matters)."""
    from pipeline_lib.models.registry import get_method
    from storage.tracking import Tracker

    spec = get_method("mace-tnp")
    net = spec.build(spec.config("cpu-small", d_model=16, n_heads=2, n_components=2))
    tracker = Tracker(root, "models")
    with tracker.start_run(run_name=f"untrained-{store.config.name}"):
        return tracker.log_and_register_model(net, "mace-tnp", store.hash, store.config.name)


def test_dcdi_convergence_verdict():
    from pipeline_lib.baselines.dcdi import convergence_verdict

    # the failure: a long schedule cut short, two-cycles, threshold_to_dag keeps one edge
    probs = np.full((4, 4), 0.9) * (1 - np.eye(4))
    one_edge = np.zeros((4, 4), np.uint8)
    one_edge[0, 1] = 1
    ok, why = convergence_verdict(probs, one_edge, 8.8e-4, False, 30000)
    assert not ok
    assert "stopped at max_iter=30000" in why and "12 edges (6 two-cycles)" in why and "is cyclic" in why
    assert "threshold_to_dag kept 1" in why
    dag = np.triu(probs > 0.5, 1).astype(np.uint8)
    ok, why = convergence_verdict(np.triu(probs, 1), dag, 0.0, True, 30000)
    assert ok and "6 edges acyclic" in why
    ok, _ = convergence_verdict(np.triu(probs, 1), dag, 0.0, False, 30000)  # acyclic but cut short
    assert not ok


def test_short_dcdi_schedule_is_reported_not_converged(data):
    from pipeline_lib.baselines.dcdi import DCDIConfig
    from pipeline_lib.baselines.registry import convergence_of, fit_baseline
    from pipeline_lib.holdout import seen_task
    from pipeline_lib.taskdata import restrict

    _, ds, _ = data
    seen = restrict(seen_task(ds.task(), []))
    ans = fit_baseline("dcdi", seen, DCDIConfig(max_iter=150))
    ok, why = convergence_of("dcdi", ans)
    assert ok is False and ans.converged is False and "max_iter=150" in why
    assert convergence_of("exact", fit_baseline("exact", seen)) == (True, "closed form (no iterative fit)")
    assert convergence_of("anm-linear", None)[0] is None


def test_report_marks_non_converged_fits(tmp_path):
    from storage.report import write_report

    def rec(t, nl, conv):
        return {"task": t, "status": "ok", "metrics": {"nlpid": nl}, "converged": conv, "convergence": "cut"}

    rep = write_report(tmp_path, {"d": {"dcdi": [rec(0, 5.0, False), rec(1, 6.0, True)],
                                        "exact": [rec(0, 4.0, True), rec(1, 4.5, True)]}}, "t")
    methods = {r["method"] for r in rep["tables"]["d"].to_records()}
    assert methods == {"dcdi (not converged 1/2)", "exact"}
    assert set(rep["arrays"]["d"]) == {"dcdi", "exact"}  # callers' labels unchanged
    assert "dcdi</b>: cut" in (tmp_path / "report.html").read_text()


@pytest.mark.usefixtures("prefect_harness")
def test_evaluate_dataset_flow(data):
    """Baselines and a registered amortized model (node range covering d = 3, no retraining) on
    the held-out regimes; a model trained on 2-node data is refused before any fit."""
    import mlflow

    from flows.dataset import evaluate_dataset
    from flows.spec import BaselineRun
    from pipeline_lib.holdout import NodeRangeError
    from storage.tracking import tracking_uri

    task, ds, tmp = data
    root = tmp / "root"
    v_wide = register_untrained(root, tiny_prior(root, "tiny-3to5", 3, 5))
    v_two = register_untrained(root, tiny_prior(root, "tiny-2node", 2, 2))
    summary = evaluate_dataset(store=ds.path, baselines=[BaselineRun(name="exact"), BaselineRun(name="empty-graph"),
                                                         BaselineRun(name="dcdi", config={"max_iter": 150})],
                               methods=[f"mace-tnp:{v_wide}"], root=str(root))
    recs = {r["method"]: r for r in summary["records"][ds.label] if r["metric"] == "nlpid"}
    assert set(recs) == {"exact", "empty-graph", "dcdi (not converged 2/2)", f"mace-tnp v{v_wide}"}
    assert recs["exact"]["mean"] < recs["empty-graph"]["mean"] - 20 and recs["exact"]["n"] == 2
    assert np.isfinite(recs[f"mace-tnp v{v_wide}"]["mean"])
    assert "max_iter=150" in summary["convergence"]["dcdi"] and not summary["failed"]
    html = Path(summary["html"]).read_text()
    assert "Edge probabilities" in html and "not converged" in html and "Dataset cyto-" in html
    out = Path(summary["html"]).parent
    assert (out / "edges-exact.png").is_file() and (out / "edges-exact.html").is_file()
    assert "raf" in (out / "edges-exact.html").read_text()
    records = json.loads((out / "records.json").read_text())["records"]
    assert [r["regime"] for r in records["exact"]] == ds.regime_labels
    # a client, not mlflow.set_tracking_uri: that writes MLFLOW_TRACKING_URI into os.environ, and
    # every later test's subprocesses (the served stack) would log into this test's database
    run = mlflow.tracking.MlflowClient(tracking_uri(str(root))).get_run(summary["run_id"])
    assert run.data.metrics["exact.nlpid"] == pytest.approx(recs["exact"]["mean"])
    with pytest.raises(NodeRangeError, match=rf"mace-tnp v{v_two} \(trained on prior tiny-2node\) supports d in "
                                             r"\[2, 2\]; the data has 3 variables"):
        evaluate_dataset(store=ds.path, baselines=[BaselineRun(name="empty-graph")], methods=[f"mace-tnp:{v_two}"],
                         root=str(root))
    with pytest.raises(ValueError, match=r"no registered model causalmeta-mace-tnp version 99 .*\(registered: \[1, 2\]\)"):
        evaluate_dataset(store=ds.path, baselines=[BaselineRun(name="empty-graph")], methods=["mace-tnp:99"],
                         root=str(root))


def test_cli_import_predict_and_errors(data, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    task, ds, tmp = data
    runner = CliRunner()
    root = tmp_path / "root"
    bad = frame_of(task)
    bad.loc[3, "erk"] = np.nan
    res = runner.invoke(app, ["import", str(write(bad, tmp_path / "bad.csv")), "--name", "bad", "--regime-col",
                              "regime", "--targets-col", "targets", "--root", str(root)])
    assert res.exit_code == 2 and "'erk': 1 (row 4)" in res.output and not (root / "data").exists()
    res = runner.invoke(app, ["import", str(write(frame_of(task), tmp_path / "ok.parquet")), "--name", "ok",
                              "--regime-col", "regime", "--targets-col", "targets", "--root", str(root),
                              "--method", "exact"])
    assert res.exit_code == 0, res.output
    path = res.output.strip().splitlines()[-1]
    assert Path(path).parent == root / "data" and "do-raf" in res.output
    res = runner.invoke(app, ["predict", "exact", "--data", path, "--do", "raf=3", "--outcome", "erk",
                              "--root", str(root), "--out", str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    assert "raf -> erk" in res.output and "erk | do(raf=3): median" in res.output
    assert (tmp_path / "pred" / "do-raf-erk.png").is_file() and (tmp_path / "pred" / "edges.html").is_file()
    # the median under do(raf=3) follows the planted mechanism, in the data's units
    median = float(res.output.split("median ")[1].split(",")[0])
    obs_mean = float(res.output.split("observational mean ")[1].split(",")[0])
    assert (median - obs_mean) * np.sign(3 - task["x_obs"][:, 0].mean()) * np.sign(
        np.corrcoef(task["x_obs"][:, 0], task["x_obs"][:, 2])[0, 1]) > 0
    res = runner.invoke(app, ["predict", "exact", "--data", path, "--do", "jnk=1", "--outcome", "erk",
                              "--root", str(root)])
    assert res.exit_code == 2 and "'jnk' is not in the data (raf, mek, erk)" in res.output
    assert NAMES == ["raf", "mek", "erk"]
