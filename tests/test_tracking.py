"""MLflow tracking: run contents, model registry round trip, prior-hash lookup."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline_lib.models.mace_tnp import MaceTNP, MaceTNPConfig
from storage.tracking import Tracker, flatten, tracking_uri


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One backend for the module: creating the sqlite schema costs seconds."""
    base = tmp_path_factory.mktemp("tracking")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(base)  # anything MLflow wrote to the cwd would show up here
        yield base / "cm"


def test_tracking_uri_default_and_override(root, monkeypatch):
    assert tracking_uri(root) == f"sqlite:///{root.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(root) == "http://127.0.0.1:5000"


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": [1, 2]}) == {"a.b": 1, "a.c.d": 2, "e": [1, 2]}


def test_run_model_registry_round_trip(root, tmp_path):
    cwd = root.parent
    torch.manual_seed(0)
    model = MaceTNP(MaceTNPConfig(d_model=16, n_heads=2, n_layers=1, n_components=2))
    history = [{"step": s, "loss": 2.0 / s} for s in range(1, 6)] + [{"step": 6, "loss": 0.3, "val_loss": 0.4}]
    ckpt = tmp_path / "last.pt"
    torch.save({"step": 6}, ckpt)

    tracker = Tracker(root, "meta-train")
    with tracker.start_run(run_name="mace-tnp-lin", tags={"method": "mace-tnp"}):
        tracker.log_params({"model": model.config.model_dump(), "prior_hash": "abc123"})
        for h in history:
            tracker.log_metrics({"loss": h["loss"]}, step=h["step"])
        tracker.log_dict({"model": model.config.model_dump()}, "config.json")
        tracker.log_loss_curve_png(history)
        tracker.log_artifact(ckpt)
        version = tracker.log_and_register_model(model, "mace-tnp", "abc123", "lin-2node")
        run_id = tracker.run_id
    assert version == 1
    assert not (cwd / "mlruns").exists()  # artifacts went under the root, not the cwd
    assert (root / "mlflow.db").is_file() and (root / "mlartifacts" / "meta-train").is_dir()

    run = tracker.client.get_run(run_id)
    assert run.data.params["model.d_model"] == "16"
    assert run.data.params["prior_hash"] == "abc123"
    assert run.data.metrics["loss"] == pytest.approx(0.3)
    assert [m.value for m in tracker.client.get_metric_history(run_id, "loss")][:2] == pytest.approx([2.0, 1.0])
    names = {a.path for a in tracker.client.list_artifacts(run_id)}
    assert {"config.json", "loss_curve.png", "last.pt"} <= names
    assert json.loads(tracker.download_artifact_text(run_id, "config.json"))["model"]["d_model"] == 16

    mv = tracker.client.get_model_version("causalmeta-mace-tnp", "1")
    assert mv.tags["prior_hash"] == "abc123" and mv.tags["prior_name"] == "lin-2node"

    loaded = Tracker(root).load_registered_model("mace-tnp", "latest")
    x = torch.randn(2, 30, 2)
    p1 = model.predict(x, None, torch.tensor([0, 1]), torch.tensor([0.5, -1.0]), torch.tensor([1, 0]))
    p2 = loaded.predict(x, None, torch.tensor([0, 1]), torch.tensor([0.5, -1.0]), torch.tensor([1, 0]))
    y = torch.randn(2, 5)
    assert torch.equal(p1.log_prob(y), p2.log_prob(y))

    assert tracker.registered_model_for_prior("mace-tnp", "abc123") == 1
    assert tracker.registered_model_for_prior("mace-tnp", "other-hash") is None
    assert tracker.registered_model_for_prior("gim", "abc123") is None
    listed = tracker.list_registered_models()
    assert [(m["name"], m["version"], m["prior_hash"]) for m in listed] == [("causalmeta-mace-tnp", 1, "abc123")]

    # a training recipe (model config, training config, data source) must match when asked for:
    # the untagged version 1 serves no recipe, version 2 only its own
    assert tracker.registered_model_for_prior("mace-tnp", "abc123", recipe="r-small") is None
    with tracker.start_run(run_name="mace-tnp-lin-2"):
        v2 = tracker.log_and_register_model(model, "mace-tnp", "abc123", "lin-2node", recipe="r-small")
    assert v2 == 2
    assert tracker.registered_model_for_prior("mace-tnp", "abc123", recipe="r-small") == 2
    assert tracker.registered_model_for_prior("mace-tnp", "abc123", recipe="r-large") is None
    assert tracker.registered_model_for_prior("mace-tnp", "abc123") == 2

    bench_id = tracker.log_benchmark("mace_tnp_smoke", {"nlpid": 1.5, "nested": {"kl": 0.1}, "bad": float("nan")},
                                     artifacts=[ckpt])
    bench = tracker.client.get_run(bench_id)
    assert bench.data.metrics == {"nlpid": 1.5, "nested.kl": 0.1}
    assert tracker.client.get_experiment(bench.info.experiment_id).name == "benchmarks"


def test_failed_body_marks_run_failed(root):
    tracker = Tracker(root, "x")
    with pytest.raises(RuntimeError):
        with tracker.start_run(run_name="boom"):
            rid = tracker.run_id
            raise RuntimeError("boom")
    assert tracker.client.get_run(rid).info.status == "FAILED"
    with pytest.raises(ValueError, match="no active run"):
        tracker.log_metrics({"a": 1.0})


def test_trackers_of_two_roots_do_not_leak_through_the_environment(tmp_path):
    import os

    from storage.tracking import Tracker, tracking_uri

    before = os.environ.get("MLFLOW_TRACKING_URI")
    a = Tracker(tmp_path / "a", "exp")
    with a.start_run(run_name="r"):
        a.log_metrics({"m": 1.0})
    assert os.environ.get("MLFLOW_TRACKING_URI") == before
    # nor through mlflow's process-wide URIs: a plain client afterwards means what it meant before
    import mlflow

    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    plain = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    with a.start_run(run_name="r2"):
        assert mlflow.get_registry_uri() == a.uri
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == plain != (a.uri, a.uri)
    assert tracking_uri(tmp_path / "b").endswith(str((tmp_path / "b").resolve() / "mlflow.db"))
