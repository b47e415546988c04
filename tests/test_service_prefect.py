"""The served deployments against a real Prefect server, driven the way the UI drives them.

A module fixture starts ``python -m deploy.serve`` (the single-machine stack's serve
process) against the session's ``prefect server start``, with a temporary CAUSALMETA_ROOT,
a 1 s runner poll and 2 training steps for triggered runs. Then:

1. a ``benchmark`` run created through the REST API exactly as the UI does
   (``GET /api/deployments/name/benchmark/benchmark`` -> id,
   ``POST /api/deployments/{id}/create_flow_run``) completes and leaves its MLflow run with
   the metrics in the sqlite store under the root; a baseline config that the fit rejects is
   recorded as failed tasks while the run still completes;
2. the ``causalmeta.prior.updated`` events, the one the benchmark's generation emitted and
   one emitted here with ``prefect.events.emit_event``, each create a ``meta-train`` run of
   ``retrain-on-prior-change`` whose ``prior`` parameter is the store path taken from the
   event resource by the Jinja template of the trigger, and the serve process picks it up.

Plus the consistency of deploy/prefect.yaml with the table in deploy/serve.py (no server).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.service

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

TINY_SPEC = {
    "name": "svc-tiny",
    "priors": ["lin-2node"],
    "prior_overrides": {"n_obs": 40, "n_int": 20, "splits": {"train": 4, "val": 2, "test": 2}, "chunk_tasks": 2},
    "methods": [],
    # the second "exact" carries a value the fit rejects (past the up-front key check):
    # recorded failures, not a crash
    "baselines": [{"name": "exact"}, {"name": "exact", "config": {"graph_prior": "no_such_prior"}}],
    "n_test_tasks": 2,
    "n_workers": 1,
    "seed": 0,
}


# ---------------------------------------------------------------------------- no server
def test_prefect_yaml_is_the_rendered_table():
    from deploy.serve import render_prefect_yaml

    committed = (REPO / "deploy" / "prefect.yaml").read_text()
    assert committed == render_prefect_yaml(), "regenerate: python -m deploy.serve --render-prefect-yaml > deploy/prefect.yaml"


def test_prefect_yaml_validates_with_prefects_own_models():
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.events import DeploymentEventTrigger

    from deploy.serve import PRIOR_PATH_TEMPLATE, deployment_table

    doc = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    model = PrefectYamlModel.model_validate(doc)
    by_name = {d.name: d for d in model.deployments}
    table = {s.name: s for s in deployment_table("ROOT")}
    assert set(by_name) == set(table) == {
        "nightly-benchmark", "benchmark", "generate-prior", "meta-train", "retrain-on-prior-change",
        "evaluate-dataset", "train-mace-5-20",
    }
    assert by_name["nightly-benchmark"].schedules[0].cron == "0 2 * * *"
    assert by_name["nightly-benchmark"].parameters["preset"] == "quick"
    assert {n: d.work_pool.name for n, d in by_name.items()} == {
        "nightly-benchmark": "causalmeta-cpu", "benchmark": "causalmeta-cpu", "generate-prior": "causalmeta-cpu",
        "meta-train": "causalmeta-gpu", "retrain-on-prior-change": "causalmeta-gpu",
        "evaluate-dataset": "causalmeta-cpu", "train-mace-5-20": "causalmeta-gpu",
    }
    (trigger,) = by_name["retrain-on-prior-change"].triggers
    parsed = DeploymentEventTrigger.model_validate(trigger)
    assert parsed.expect == {"causalmeta.prior.updated"}
    assert parsed.match.root == {"prefect.resource.id": "causalmeta.prior.*",
                                 "causalmeta.prior.training": "!*,mace-tnp,*"}
    assert parsed.parameters == {"prior": PRIOR_PATH_TEMPLATE, "method": "mace-tnp"}
    for name, spec in table.items():
        assert by_name[name].entrypoint == spec.entrypoint
        assert set(by_name[name].parameters) == set(spec.parameters)


def test_train_mace_5_20_deployment_matches_its_benchmark_preset():
    from deploy.serve import MACE_5_20_TRAINING
    from flows.spec import load_preset

    (m,) = load_preset("mace-5-20").methods
    assert MACE_5_20_TRAINING == {"method": m.name, "prior": "mace-5-20", "preset": m.preset, "steps": m.steps,
                                  "batch_size": m.batch_size, "lr": m.lr}


def test_table_matches_the_flows():
    """Entry points import, flow names agree, the event name is the one generate_prior emits."""
    from deploy.serve import PRIOR_UPDATED_EVENT, deployment_table, load_flow
    from flows.generate import PRIOR_UPDATED_EVENT as emitted

    assert PRIOR_UPDATED_EVENT == emitted
    for spec in deployment_table("ROOT", train_steps=3):
        flow = load_flow(spec)
        params = set(flow.parameters.properties)
        assert set(spec.parameters) <= params, (spec.name, params)
        if spec.trigger:
            assert set(spec.trigger.parameters) <= params
            assert spec.trigger.parameters["steps"] == 3
    with pytest.raises(ValueError, match="train_steps"):
        deployment_table("ROOT", train_steps=0)


def test_settings_defaults_overrides_and_errors(tmp_path):
    from storage.settings import SettingsError, load_settings

    s = load_settings({})
    assert s.root == ".causalmeta" and s.dask_scheduler_address is None and s.prefect_api_url is None
    # a relative root gives an absolute sqlite path: runs in other cwds must hit the same file
    assert s.mlflow_tracking_uri == f"sqlite:///{(Path.cwd() / '.causalmeta' / 'mlflow.db')}"
    env = {
        "CAUSALMETA_ROOT": str(tmp_path),
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "DASK_SCHEDULER_ADDRESS": "tcp://10.0.0.5:8786",
        "PREFECT_API_URL": "http://prefect:4200/api",
    }
    s = load_settings(env)
    assert (s.root, s.mlflow_tracking_uri, s.dask_scheduler_address, s.prefect_api_url) == tuple(env.values())
    # empty means unset (compose files write FOO= for "no value")
    assert load_settings({"DASK_SCHEDULER_ADDRESS": " ", "CAUSALMETA_ROOT": ""}).root == ".causalmeta"
    with pytest.raises(SettingsError, match="DASK_SCHEDULER_ADDRESS='10.0.0.5:8786'"):
        load_settings({"DASK_SCHEDULER_ADDRESS": "10.0.0.5:8786"})
    with pytest.raises(SettingsError, match="PREFECT_API_URL"):
        load_settings({"PREFECT_API_URL": "prefect:4200"})
    with pytest.raises(SettingsError, match="MLFLOW_TRACKING_URI: unset"):
        load_settings({"CAUSALMETA_ROOT": "s3://bucket/cm"})


# ---------------------------------------------------------------------------- served
@dataclass
class Served:
    root: Path
    api: str
    service: object

    def get(self, path: str) -> dict:
        import httpx

        r = httpx.get(f"{self.api}{path}", timeout=10)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: dict) -> dict | list:
        import httpx

        # A busy server (SQLite under load) may answer 503 for a moment; a client retries,
        # and so does this one, a bounded number of times.
        for attempt in range(6):
            r = httpx.post(f"{self.api}{path}", json=body, timeout=30)
            if r.status_code < 500:
                break
            time.sleep(1.0 + attempt)
        assert r.status_code in (200, 201), r.text
        return r.json()

    def wait_state(self, flow_run_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.get(f"/flow_runs/{flow_run_id}")
            if run["state_type"] in TERMINAL:
                return run
            assert self.service.alive(), f"serve process died:\n{self.service.log_tail()}"
            time.sleep(0.5)
        raise TimeoutError(f"flow run {flow_run_id} not finished after {timeout}s:\n{self.service.log_tail()}")

    def logs_of(self, flow_run_ids: list[str], until=None, timeout: float = 30.0) -> list[dict]:
        """All logs of the runs, oldest first, read in pages. A run's state turns terminal before
        its last log lines arrive (the serve process ships logs in batches every few seconds), so
        this polls until ``until(logs)`` holds or ``timeout`` passes, then answers what it has."""
        deadline = time.monotonic() + timeout
        while True:
            logs: list[dict] = []
            while True:
                page = self.post("/logs/filter", {"logs": {"flow_run_id": {"any_": list(flow_run_ids)}},
                                                  "sort": "TIMESTAMP_ASC", "limit": 200, "offset": len(logs)})
                logs += page
                if len(page) < 200:
                    break
            if until is None or until(logs) or time.monotonic() > deadline:
                return logs
            time.sleep(1.0)

    def runs_of(self, deployment_id: str) -> list[dict]:
        body = {"deployments": {"id": {"any_": [deployment_id]}}, "sort": "EXPECTED_START_TIME_ASC"}
        return self.post("/flow_runs/filter", body)


@pytest.fixture(scope="module")
def served(services, prefect_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("served-root")
    env = {
        **prefect_server.env,
        "CAUSALMETA_ROOT": str(root),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PYTHONUNBUFFERED": "1",
    }
    service = services.start("serve", [sys.executable, "-m", "deploy.serve", "--train-steps", "2"], env=env)
    s = Served(root=root, api=prefect_server.api_url, service=service)
    services.wait_log(service, "deployments are being served", timeout=180)
    yield s
    # triggered training runs may still be going: no need to let them finish
    service.stop(timeout=3)


def test_benchmark_run_from_the_rest_api_completes_and_logs_mlflow(served):
    import mlflow

    from storage.tracking import tracking_uri

    dep = served.get("/deployments/name/benchmark/benchmark")
    assert dep["parameters"] == {"preset": "quick", "root": str(served.root)}
    # The UI form: the parameter schema carries the pydantic BenchmarkSpec.
    schema = dep["parameter_openapi_schema"]
    assert "BenchmarkSpec" in json.dumps(schema["definitions"])
    nightly = served.get("/deployments/name/benchmark/nightly-benchmark")
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]

    run = served.post(f"/deployments/{dep['id']}/create_flow_run", {"parameters": {"spec": TINY_SPEC, "preset": None}})
    assert run["parameters"]["spec"]["name"] == "svc-tiny"
    final = served.wait_state(run["id"], timeout=240)
    assert final["state_type"] == "COMPLETED", f"{final['state']}\n{served.service.log_tail()}"

    client = mlflow.tracking.MlflowClient(tracking_uri(str(served.root)))
    assert (served.root / "mlflow.db").is_file()
    exp = client.get_experiment_by_name("benchmark-svc-tiny")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    (mlrun,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # the parent; children per method
    assert len(runs) > 1
    metrics = mlrun.data.metrics
    # keys are <prior label>.<method key>.<metric>, the method key of a baseline "exact-<config hash8>"
    nlpid = [v for k, v in metrics.items() if ".exact-" in k and k.endswith(".nlpid")]
    assert nlpid and all(math.isfinite(v) for v in nlpid), metrics
    # both test tasks failed under the rejected config, recorded rather than raised
    assert sorted(v for k, v in metrics.items() if k.endswith(".n_failed")) == [0.0, 2.0], metrics


def _emit_prior_updated(served: Served, resource: dict) -> None:
    """`prefect.events.emit_event` in a fresh process pointed at the server (no in-process
    events worker left over from an earlier test's API)."""
    code = (
        "import json, sys\n"
        "from prefect.events import emit_event\n"
        "from prefect.events.worker import EventsWorker\n"
        "ev = emit_event(event='causalmeta.prior.updated', resource=json.loads(sys.argv[1]))\n"
        "assert ev is not None, 'event not emitted'\n"
        "EventsWorker.drain_all()\n"
    )
    env = {"PREFECT_API_URL": served.api, "PREFECT_HOME": str(served.root / "emit-home")}
    import os

    subprocess.run([sys.executable, "-c", code, json.dumps(resource)], env={**os.environ, **env}, check=True,
                   timeout=120)


def _write_tiny_store(root: Path, name: str = "svc-event", seed: int = 11):
    from pipeline_lib.priors import PriorConfig, sample_split_range
    from storage.prior_store import PriorStore

    config = PriorConfig.model_validate(
        {"name": name, "seed": seed, "graph": {"n_nodes": 2, "expected_parents": 0.25},
         "interventions": {"n_regimes": 2}, "n_obs": 40, "n_int": 20,
         "splits": {"train": 4, "val": 2, "test": 2}, "chunk_tasks": 2}
    )
    store = PriorStore.create_or_open(root, config)
    for split, c, start, stop in store.pending_chunks():
        store.write_chunk(split, c, sample_split_range(config, split, start, stop))
    store.finalize()
    return store


def test_prior_updated_event_triggers_meta_train(served):
    from flows.generate import prior_resource

    dep = served.get("/deployments/name/meta-train/retrain-on-prior-change")
    # a prior whose generating flow trains mace-tnp itself (a benchmark) triggers nothing:
    # emitted first, so by the time the second event's run exists the first one was evaluated
    skipped = _write_tiny_store(served.root, name="svc-benchmark-trains", seed=12)
    _emit_prior_updated(served, prior_resource(skipped, training=["cond-fip", "mace-tnp"]))
    store = _write_tiny_store(served.root)
    t0 = time.monotonic()
    _emit_prior_updated(served, prior_resource(store, training=["mace-tnp-large"]))  # another method

    deadline, mine = time.monotonic() + 60, []
    while not mine and time.monotonic() < deadline:
        mine = [r for r in served.runs_of(dep["id"]) if r["parameters"].get("prior") == str(store.path)]
        time.sleep(0.5)
    assert mine, f"no meta-train run for {store.path} within 60 s:\n{served.service.log_tail()}"
    print(f"triggered run created {time.monotonic() - t0:.1f}s after emit_event")
    (run,) = mine
    assert run["parameters"]["steps"] == 2 and run["parameters"]["root"] == str(served.root)
    time.sleep(2)
    assert not [r for r in served.runs_of(dep["id"]) if r["parameters"].get("prior") == str(skipped.path)]

    # The benchmark of the previous test generated a prior: its event triggered a run too. The
    # event leaves with the flow-run process's event client, which may still be flushing when the
    # run is reported COMPLETED (a clean-clone CI run saw it arrive after this line): poll for it.
    benchmark_priors = {p.name for p in (served.root / "priors").glob("lin-2node-*.zarr")}
    assert benchmark_priors
    deadline, triggered = time.monotonic() + 45, set()
    while not benchmark_priors <= triggered and time.monotonic() < deadline:
        triggered = {Path(r["parameters"]["prior"]).name for r in served.runs_of(dep["id"])}
        time.sleep(0.5)
    assert benchmark_priors <= triggered, (benchmark_priors, triggered, served.service.log_tail())

    # The serve process picks the run up (it leaves SCHEDULED). Its completion is not awaited:
    # meta-training is covered by the flow tests, and the module's time budget is small.
    deadline = time.monotonic() + 60
    while served.get(f"/flow_runs/{run['id']}")["state_type"] == "SCHEDULED":
        assert time.monotonic() < deadline, f"triggered run never picked up:\n{served.service.log_tail()}"
        time.sleep(0.5)


def test_two_concurrent_meta_train_requests_train_once(served):
    """Issue 19: two `meta-train` runs for one prior, created together through the REST API,
    produce one training and one registered model version; the second waits for the training
    lock (flows/concurrency.py) and reuses the first one's model."""
    import mlflow

    from storage.settings import default_tracking_uri

    store = _write_tiny_store(served.root, name="svc-lock", seed=23)
    prior_hash = store.config.content_hash()
    dep = served.get("/deployments/name/meta-train/meta-train")
    params = {"prior": str(store.path), "steps": 40, "batch_size": 2}  # long enough to overlap
    runs = [served.post(f"/deployments/{dep['id']}/create_flow_run", {"parameters": params}) for _ in range(2)]
    finals = [served.wait_state(r["id"], timeout=300) for r in runs]
    assert [f["state_type"] for f in finals] == ["COMPLETED"] * 2, f"{finals}\n{served.service.log_tail()}"

    # the database the served runs write (the serve process was started without
    # MLFLOW_TRACKING_URI), whatever this test process's environment says
    # registry_uri too: without it the client takes mlflow's process-wide registry URI, which an
    # earlier test's Tracker set (mlflow.set_registry_uri) to its own database
    uri = default_tracking_uri(str(served.root))
    client = mlflow.tracking.MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = [v for v in client.search_model_versions("name='causalmeta-mace-tnp'")
                if v.tags.get("prior_hash") == prior_hash]
    assert len(versions) == 1, [(v.version, v.run_id) for v in versions]
    exp = client.get_experiment_by_name("meta-train")
    trained = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("prior_hash") == prior_hash]
    assert len(trained) == 1, [r.info.run_id for r in trained]
    # exactly one of the two runs says it reused the other's model: after waiting for the
    # training lock when both were in flight together, or (a run started late by a busy serve
    # process) on its first registry check
    def _reused(logs):
        return {e["flow_run_id"] for e in logs if "reused" in e["message"]}

    logs = served.logs_of([r["id"] for r in runs], until=lambda logs: len(_reused(logs)) >= 1)
    reused = _reused(logs)
    assert len(reused) == 1, [e["message"] for e in logs][-20:]
    lock = f"causalmeta-train-mace-tnp-{prior_hash[:16]}"
    import re

    waited = [float(m.group(1)) for e in logs if (m := re.search(r"training lock \((\d+) s waited\)", e["message"]))]
    if waited and waited[0] >= 2:  # it waited long enough to say so (after 1 s)
        # the owner tagged its run with the lock's name while it held it (how the waiting run
        # names whom it waits for), and removed the tag with the lock. The report is best effort:
        # on a loaded machine its look-up can finish after the lock was released and then says
        # nothing (seen once in a full-suite run), so only what it says is checked
        waiting = [e["message"] for e in logs if "waiting for " + lock in e["message"]]
        assert len(waiting) <= 1 and all("held by train-mace-tnp-svc-lock" in w for w in waiting), waiting
    assert not any(lock in served.get(f"/flow_runs/{r['id']}")["tags"] for r in runs)


def test_served_runs_refuse_a_root_outside_the_served_one_and_unknown_presets(served, tmp_path):
    """The `root` of a form is not a free path (CAUSALMETA_ALLOWED_ROOTS, set by deploy.serve),
    and `preset` is a dropdown of the shipped presets that the API validates."""
    dep = served.get("/deployments/name/benchmark/benchmark")
    schema = dep["parameter_openapi_schema"]
    text = json.dumps(schema)
    from flows.spec import shipped_presets

    assert all(f'"{p}"' in text for p in shipped_presets()) and '"enum"' in text, schema["properties"]["preset"]
    import httpx

    bad = httpx.post(f"{served.api}/deployments/{dep['id']}/create_flow_run",
                     json={"parameters": {"preset": "no-such-preset"}}, timeout=30)
    assert bad.status_code in (409, 422), bad.text
    assert "no-such-preset" in bad.text or "preset" in bad.text

    run = served.post(f"/deployments/{dep['id']}/create_flow_run",
                      {"parameters": {"spec": TINY_SPEC, "preset": None, "root": str(tmp_path / "elsewhere")}})
    final = served.wait_state(run["id"], timeout=180)
    assert final["state_type"] == "FAILED", final
    assert "outside the data roots" in (final["state"]["message"] or ""), final["state"]
    assert not (tmp_path / "elsewhere").exists()
