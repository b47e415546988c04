"""Issue 12: hardening. One test (or a few) per item; each failed on the code before the fix.

- 1  services bind loopback; a network bind is refused without TLS (the bind checks with
     real services are in tests/test_service_bind.py);
- 2  a prior's name is a slug (it becomes a folder name under the root);
- 3  stored models and checkpoints are state dicts + typed configs, loaded with
     ``weights_only=True``: a pickle that runs code is refused;
- 8  NaN / inf are refused in every config model, with the field named;
- 9  the CLI answers a broken YAML file with one line naming the file and line, exit 2;
- 11 one seed -> the same trained bytes, across processes;
- 12 a resumed training continues the killed MLflow run; a signalled CLI stops Prefect's
     temporary server.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import REPO
from pipeline_lib.priors import PriorConfig, PriorConfigError

TINY = {"name": "t", "graph": {"kind": "erdos_renyi", "n_nodes": 3, "expected_parents": 0.5},
        "n_obs": 8, "n_int": 4, "splits": {"train": 2, "val": 1, "test": 1}}


def _with(dotted: str, value) -> dict:
    import copy

    cfg = copy.deepcopy(TINY)
    node = cfg
    *path, leaf = dotted.split(".")
    for key in path:
        node = node.setdefault(key, {})
    node[leaf] = value
    return cfg


# ------------------------------------------------------------------- 2: names are slugs
@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "a..b", "a b", "x\\y", "", "é", "a" * 129])
def test_prior_name_must_be_a_slug(name):
    with pytest.raises(PriorConfigError, match=r"^name"):
        PriorConfig.from_dict(_with("name", name))


@pytest.mark.parametrize("name", ["lin-3node", "er_20node", "v1.2", "A", "0-x"])
def test_slug_names_pass(name):
    assert PriorConfig.from_dict(_with("name", name)).name == name


def test_every_shipped_prior_name_is_still_valid():
    for path in sorted((REPO / "configs" / "priors").glob("*.yaml")):
        assert PriorConfig.from_yaml(path).name == path.stem


# ------------------------------------------------------------------- 8: finite numbers only
@pytest.mark.parametrize("field", ["interventions.value_scale", "mechanism.w_min", "mechanism.w_max",
                                   "graph.expected_parents", "noise.scale_max", "mechanism.grn.hill",
                                   "mechanism.alpha_w", "interventions.perturbation_noise"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_prior_config_refuses_non_finite_numbers(field, value):
    import re

    with pytest.raises(PriorConfigError, match="^" + re.escape(field) + "="):
        PriorConfig.from_dict(_with(field, value))


def test_train_config_refuses_non_finite_numbers():
    from pydantic import ValidationError

    from pipeline_lib.training.loop import TrainConfig

    for field, value in [("lr", math.inf), ("weight_decay", math.nan), ("betas", (math.nan, 0.9)),
                         ("grad_clip", math.inf), ("warmup_frac", math.nan)]:
        with pytest.raises(ValidationError, match=field):
            TrainConfig(steps=1, **{field: value})


def test_benchmark_spec_refuses_non_finite_numbers():
    from pydantic import ValidationError

    from flows.spec import BaselineRun, BenchmarkSpec, MethodRun

    with pytest.raises(ValidationError, match="lr"):
        MethodRun(lr=math.inf)
    with pytest.raises(ValidationError, match=r"model\.hidden\[1\]=nan"):
        MethodRun(model={"hidden": [4, math.nan]})
    with pytest.raises(ValidationError, match=r"config\.alpha=inf"):
        BaselineRun(name="exact", config={"alpha": math.inf})
    with pytest.raises(ValidationError, match=r"prior_overrides\.interventions\.value_scale=nan"):
        BenchmarkSpec(prior_overrides={"interventions": {"value_scale": math.nan}})


# ------------------------------------------------------------------- 9: YAML errors in the CLI
BROKEN_YAML = {
    "malformed.yaml": ("name: a\ngraph:\n  n_nodes: [3\n", r"malformed\.yaml:4:1: invalid YAML"),
    "tab.yaml": ("name: a\ngraph:\n\tn_nodes: 3\n", r"tab\.yaml:3:1: invalid YAML.*tabs"),
    "empty.yaml": ("", r"empty\.yaml: the file is empty"),
    "list.yaml": ("- name: a\n- name: b\n", r"list\.yaml:1: expected a .*mapping.*got a YAML list"),
    "nan.yaml": ("name: a\ngraph:\n  n_nodes: 3\ninterventions:\n  value_scale: .nan\n",
                 r"nan\.yaml:5: interventions\.value_scale=nan"),
    "name.yaml": ("name: ../../x\ngraph:\n  n_nodes: 3\n", r"name\.yaml:1: name='\.\./\.\./x'"),
    "unknown-key.yaml": ("name: a\ngraph:\n  n_nodes: 3\n  colour: red\n", r"unknown-key\.yaml:4: graph\.colour"),
}


def _cli(*args: str):
    from flows.cli import app

    result = CliRunner().invoke(app, list(args))
    return result, (result.stderr or "") + (result.stdout or "")


@pytest.mark.parametrize("filename", sorted(BROKEN_YAML))
def test_generate_reports_broken_yaml_in_one_line(tmp_path, filename):
    text, expected = BROKEN_YAML[filename]
    path = tmp_path / filename
    path.write_text(text)
    result, out = _cli("generate", str(path), "--root", str(tmp_path / "root"))
    assert result.exit_code == 2, out
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), out
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    assert str(tmp_path) in lines[0]
    import re

    assert re.search(expected, lines[0]), lines[0]
    assert not (tmp_path / "root").exists()  # nothing generated, no store written


@pytest.mark.parametrize("filename", ["malformed.yaml", "tab.yaml", "empty.yaml", "list.yaml"])
def test_benchmark_spec_and_train_prior_report_broken_yaml_in_one_line(tmp_path, filename):
    text, _ = BROKEN_YAML[filename]
    path = tmp_path / filename
    path.write_text(text)
    for args in (["benchmark", "--spec", str(path)], ["train", "--prior", str(path)]):
        result, out = _cli(*args, "--root", str(tmp_path / "root"))
        assert result.exit_code == 2, (args, out)
        lines = [ln for ln in out.splitlines() if ln.strip()]
        assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in out, (args, out)


def test_benchmark_spec_validation_error_names_file_and_line(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: x\npriors: [lin-2node]\nn_test_tasks: 0\n")
    result, out = _cli("benchmark", "--spec", str(path))
    assert result.exit_code == 2
    assert out.strip().splitlines() == [f"error: {path}:3: n_test_tasks: Input should be greater than or equal to 1"]


def test_a_config_file_without_yaml_suffix_is_read_as_a_file(tmp_path, monkeypatch):
    from flows.spec import SpecError, load_prior

    (tmp_path / "myprior").write_text("name: mine\ngraph:\n  n_nodes: 3\n")
    assert load_prior(str(tmp_path / "myprior")).name == "mine"
    monkeypatch.chdir(tmp_path)
    assert load_prior("myprior").name == "mine"  # a file in the cwd wins over the shipped names
    assert load_prior("lin-3node").name == "lin-3node"  # a bare shipped name still works
    with pytest.raises(SpecError, match="neither a file nor a shipped prior"):
        load_prior("no-such-prior")


# ------------------------------------------------------------------- 3: no pickles
class _RunsCode:
    """Unpickling this object runs code (writes ``marker``): what a crafted file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    import torch

    from pipeline_lib.training.checkpoint import CheckpointError, load_checkpoint

    marker = tmp_path / "pwned"
    path = tmp_path / "ckpt" / "last.pt"
    path.parent.mkdir()
    torch.save({"model": {}, "step": 1, "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()

    # train() resuming from that folder refuses before touching the model
    from pipeline_lib.models.mace_tnp import MaceTNP, MaceTNPConfig, mace_tnp_loss
    from pipeline_lib.training.loop import TrainConfig, train

    model = MaceTNP(MaceTNPConfig(d_model=8, n_heads=1, n_layers=1, n_components=1))
    with pytest.raises(CheckpointError):
        train(model, mace_tnp_loss, lambda s: {}, TrainConfig(steps=2, device="cpu"),
              checkpoint_dir=path.parent, progress=False)
    assert not marker.exists()
    # the payload is real: a full unpickle runs it
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


def test_training_checkpoints_load_with_plain_weights_only(tmp_path):
    """What train() writes needs no allow-listed globals: tensors and plain containers only."""
    from functools import partial

    import numpy as np
    import torch

    from pipeline_lib.models.mace_tnp import MaceTNP, MaceTNPConfig, mace_tnp_batch, mace_tnp_loss
    from pipeline_lib.training import StreamSource, TrainConfig, train
    from pipeline_lib.training.checkpoint import restore_rng_state
    from tests.linear_scm import two_node_linear_tasks

    source = StreamSource(lambda n, rng: two_node_linear_tasks(rng, n, 16, 4, noise=0.5),
                          partial(mace_tnp_batch, n_obs_min=8, n_obs_max=12), batch_size=2, seed=0)
    model = MaceTNP(MaceTNPConfig(d_model=8, n_heads=1, n_layers=1, n_components=1))
    train(model, mace_tnp_loss, source, TrainConfig(steps=2, batch_size=2, device="cpu", checkpoint_every=1),
          checkpoint_dir=tmp_path, val_source=source, progress=False)
    for name in ("last.pt", "best.pt"):
        state = torch.load(tmp_path / name, weights_only=True)
        assert state["step"] == 2 or name == "best.pt"
    np.random.seed(5)
    expected = np.random.rand(3)
    np.random.seed(5)
    from pipeline_lib.training.checkpoint import capture_rng_state

    snap = torch.load(_roundtrip(tmp_path / "rng.pt", capture_rng_state()), weights_only=True)
    np.random.rand(7)  # move on, then restore
    restore_rng_state(snap)
    assert np.random.rand(3).tolist() == expected.tolist()


def _roundtrip(path, obj):
    import torch

    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def tracker_root(tmp_path_factory):
    """One MLflow backend for the module (creating the sqlite schema costs seconds)."""
    base = tmp_path_factory.mktemp("hardening-mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(base)
        yield base / "cm"


def _tiny_mace():
    import torch

    from pipeline_lib.models.mace_tnp import MaceTNP, MaceTNPConfig

    torch.manual_seed(0)
    return MaceTNP(MaceTNPConfig(d_model=8, n_heads=1, n_layers=1, n_components=2))


def _artifact_dir(tracker, method, version) -> Path:
    from urllib.parse import urlparse

    source = tracker.client.get_model_version(f"causalmeta-{method}", str(version)).source
    assert source.startswith("file://"), source
    return Path(urlparse(source).path)


def test_registered_model_is_a_state_dict_and_its_config(tracker_root):
    import torch

    from storage.tracking import Tracker

    model = _tiny_mace()
    tracker = Tracker(tracker_root, "hardening")
    with tracker.start_run(run_name="register"):
        version = tracker.log_and_register_model(model, "mace-tnp", "hash-a", "prior-a")
    folder = _artifact_dir(tracker, "mace-tnp", version)
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "state_dict.pt"]
    weights = torch.load(folder / "state_dict.pt", weights_only=True)
    assert set(weights) == set(model.state_dict())
    rng = torch.get_rng_state()
    loaded = tracker.load_registered_model("mace-tnp", version)
    assert torch.equal(rng, torch.get_rng_state())  # rebuilding did not move the caller's RNG
    assert type(loaded) is type(model) and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert tracker.registered_model_for_prior("mace-tnp", "hash-a") == version


def test_a_tampered_registered_version_runs_no_code(tracker_root, tmp_path):
    import hashlib
    import json

    import torch

    from storage.tracking import Tracker, TrackingError

    tracker = Tracker(tracker_root, "hardening")
    with tracker.start_run(run_name="to-tamper"):
        version = tracker.log_and_register_model(_tiny_mace(), "mace-tnp", "hash-b", "prior-b")
    folder = _artifact_dir(tracker, "mace-tnp", version)
    marker = tmp_path / "pwned"
    torch.save({"weight": _RunsCode(marker)}, folder / "state_dict.pt")
    meta = json.loads((folder / "model.json").read_text())
    # whoever can write the artifacts can write the checksum too
    meta["state_dict_sha256"] = hashlib.sha256((folder / "state_dict.pt").read_bytes()).hexdigest()
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(TrackingError, match="weights_only"):
        tracker.load_registered_model("mace-tnp", version)
    assert not marker.exists()


def test_a_pickled_registered_version_is_refused(tracker_root, tmp_path):
    """A version in the old mlflow.pytorch layout (MLmodel + a pickled module) is not loaded."""
    import torch

    from storage.tracking import Tracker, TrackingError

    marker = tmp_path / "pwned"
    legacy = tmp_path / "legacy-model"
    (legacy / "data").mkdir(parents=True)
    (legacy / "MLmodel").write_text("flavors:\n  pytorch:\n    model_data: data\n")
    torch.save(_RunsCode(marker), legacy / "data" / "model.pth")
    tracker = Tracker(tracker_root, "hardening")
    with tracker.start_run(run_name="legacy") as t:
        run_id = t.run_id
    try:
        tracker.client.create_registered_model("causalmeta-mace-tnp")
    except Exception:
        pass
    mv = tracker.client.create_model_version("causalmeta-mace-tnp", source=legacy.as_uri(), run_id=run_id,
                                             tags={"prior_hash": "hash-legacy"})
    # kept and listed, but never offered for reuse: the flow retrains instead
    assert tracker.registered_model_for_prior("mace-tnp", "hash-legacy") is None
    listed = {m["version"]: m["format"] for m in tracker.list_registered_models()}
    assert listed[int(mv.version)] == "pickle (refused)"
    with pytest.raises(TrackingError, match="pickled models are refused"):
        tracker.load_registered_model("mace-tnp", int(mv.version))
    with pytest.raises(TrackingError, match="pickled models are refused"):
        tracker.load_registered_model("mace-tnp", "latest")
    assert not marker.exists()


def test_registering_needs_the_typed_config(tracker_root):
    import torch

    from storage.tracking import Tracker, TrackingError

    tracker = Tracker(tracker_root, "hardening")
    with tracker.start_run(run_name="no-config"):
        with pytest.raises(TrackingError, match="config"):
            tracker.log_and_register_model(torch.nn.Linear(2, 2), "mace-tnp", "h", "p")
        model = _tiny_mace()
        version = tracker.log_and_register_model(model, "mace-tnp", "hash-c", "prior-c",
                                                 config=model.config.model_dump())
    assert tracker.load_registered_model("mace-tnp", version).config == model.config


# ------------------------------------------------------------------- 11: same seed, same bytes
_SEED_SCRIPT = r"""
import hashlib, sys
import torch
torch.set_num_threads(1)
from pipeline_lib.models.registry import get_method
from pipeline_lib.priors import PriorConfig
from pipeline_lib.training.batching import prior_stream
from pipeline_lib.training.loop import TrainConfig, train
from tasks.train import build_seeded
spec = get_method("mace-tnp")
model_cfg = spec.config("cpu-small", n_obs_min=8, n_obs_max=16)
prior = PriorConfig.from_yaml("configs/priors/lin-2node.yaml")
torch.rand(int(sys.argv[1]))  # what earlier work in the process drew from the global RNG
for seed in map(int, sys.argv[2:]):  # several trainings in one process, one after the other
    cfg = TrainConfig(steps=2, batch_size=2, device="cpu", seed=seed)
    model = build_seeded(spec, model_cfg, cfg.seed)
    train(model, spec.loss_fn, prior_stream(prior, spec.make_batch(model_cfg), cfg.batch_size, cfg.seed), cfg,
          progress=False)
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode()); h.update(v.detach().cpu().contiguous().numpy().tobytes())
    print(seed, h.hexdigest())
"""


def test_one_seed_gives_the_same_trained_bytes_across_processes():
    """Process a trains seed 3 first thing; process b draws 1000 numbers, trains seed 4, then
    seed 3: the seed-3 bytes must agree (the code before drew the weights from whatever state
    the global RNG was in), and seed 4 must differ from them (the seed reaches the weights)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    argv = {"a": ["0", "3"], "b": ["1000", "4", "3"]}
    procs = {k: subprocess.Popen([sys.executable, "-c", _SEED_SCRIPT, *a], cwd=REPO, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k, a in argv.items()}
    digests = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        digests[key] = dict(line.split() for line in out.strip().splitlines()[-len(argv[key]) + 1:])
    assert digests["a"]["3"] == digests["b"]["3"], "same seed, different bytes"
    assert digests["b"]["4"] != digests["b"]["3"]


# ------------------------------------------------------------------- 12: killed runs
def test_an_interrupted_run_ends_killed_not_failed(tracker_root):
    from storage.tracking import Tracker

    tracker = Tracker(tracker_root, "hardening")
    with pytest.raises(KeyboardInterrupt):
        with tracker.start_run(run_name="ctrl-c"):
            rid = tracker.run_id
            raise KeyboardInterrupt
    assert tracker.client.get_run(rid).info.status == "KILLED"


_DIE_MID_RUN = r"""
import os, sys
from storage.tracking import Tracker
tracker = Tracker(sys.argv[1], "hardening")
with tracker.training_run(sys.argv[2], resume=False, run_name="dies"):
    for step in range(1, 5):
        tracker.log_metrics({"loss": 10.0 - step}, step=step)
    open(os.path.join(sys.argv[2], "last.pt"), "wb").close()
    os._exit(9)  # as SIGKILL: no finally, the run stays RUNNING
"""


@pytest.fixture(scope="module")
def dead_runs(tracker_root, tmp_path_factory):
    """Two checkpoint folders whose training process died (os._exit) with its run RUNNING."""
    from storage.tracking import Tracker

    Tracker(tracker_root, "hardening").experiment_id()  # schema + experiment exist before the two race
    folders = [tmp_path_factory.mktemp(f"ckpt-{i}") for i in range(2)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([sys.executable, "-c", _DIE_MID_RUN, str(tracker_root), str(f)], cwd=REPO, env=env,
                              stderr=subprocess.PIPE, text=True) for f in folders]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 9, err[-3000:]
    return folders


def test_resume_continues_the_killed_mlflow_run(tracker_root, dead_runs):
    import json

    from storage.tracking import RUN_FILE, Tracker

    folder = dead_runs[0]
    dead_id = json.loads((folder / RUN_FILE).read_text())["run_id"]
    tracker = Tracker(tracker_root, "hardening")
    assert tracker.client.get_run(dead_id).info.status == "RUNNING"
    with tracker.training_run(folder, resume=True, run_name="resumed") as t:
        assert t.run_id == dead_id
        for step in range(5, 9):
            t.log_metrics({"loss": 10.0 - step}, step=step)
    run = tracker.client.get_run(dead_id)
    assert run.info.status == "FINISHED" and run.data.tags["causalmeta.resumed"] == "true"
    steps = [m.step for m in tracker.client.get_metric_history(dead_id, "loss")]
    assert sorted(steps) == list(range(1, 9))  # one run holds the whole curve


def test_a_fresh_start_marks_the_dead_run_killed_and_links_it(tracker_root, dead_runs):
    import json

    from storage.tracking import RUN_FILE, Tracker

    folder = dead_runs[1]
    dead_id = json.loads((folder / RUN_FILE).read_text())["run_id"]
    tracker = Tracker(tracker_root, "hardening")
    with tracker.training_run(folder, resume=False, run_name="fresh") as t:
        new_id = t.run_id
    assert new_id != dead_id
    assert tracker.client.get_run(dead_id).info.status == "KILLED"
    assert tracker.client.get_run(new_id).data.tags["causalmeta.previous_run"] == dead_id
    assert json.loads((folder / RUN_FILE).read_text())["run_id"] == new_id


_TINY_PRIOR_YAML = """\
name: sig-lin-2node
seed: 1
graph: {kind: erdos_renyi, n_nodes: 2, expected_parents: 0.5}
interventions: {n_regimes: 1}
n_obs: 24
n_int: 8
splits: {train: 8, val: 4, test: 4}
chunk_tasks: 4
"""


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signalled_train_cli_stops_its_server_and_its_rerun_continues_the_run(tmp_path, signame):
    """``causalmeta train`` gets ``signame`` after its first checkpoint (the process only, as
    ``kill`` sends it): it exits, Prefect's temporary API server (its child) is gone, the MLflow
    run is KILLED; the same command again resumes the checkpoint in that same MLflow run.
    ~80 s each at load 8 on 2 cores (generation, two Prefect server starts)."""
    import glob
    import json
    import signal
    import time

    import psutil

    from storage.tracking import RUN_FILE, Tracker

    prior = tmp_path / "tiny.yaml"
    prior.write_text(_TINY_PRIOR_YAML)
    root = tmp_path / "root"
    cmd = [str(Path(sys.executable).parent / "causalmeta"), "train", "mace-tnp", "--prior", str(prior),
           "--steps", "200", "--batch-size", "2", "--preset", "cpu-small", "--device", "cpu", "--root", str(root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while not glob.glob(str(root / "checkpoints" / "*" / "last.pt")):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint in 400 s"
            time.sleep(0.3)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("uvicorn" in " ".join(c.cmdline()) for c in children), "no temporary Prefect server found"
        proc.send_signal(getattr(signal, signame))
        rc = proc.wait(90)
        assert rc != 0
        time.sleep(1)
        alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"left running after {signame}: {[' '.join(c.cmdline()[:6]) for c in alive]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    (ckpt_dir,) = [Path(p).parent for p in glob.glob(str(root / "checkpoints" / "*" / "last.pt"))]
    run_id = json.loads((ckpt_dir / RUN_FILE).read_text())["run_id"]
    tracker = Tracker(root)
    assert tracker.client.get_run(run_id).info.status == "KILLED"

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    result = json.loads(second.stdout[second.stdout.index("{"):])
    assert result["run_id"] == run_id and result["steps"] == 200
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags.get("causalmeta.resumed") == "true"
    steps = {m.step for m in tracker.client.get_metric_history(run_id, "loss")}
    assert min(steps) <= 10 and max(steps) == 200  # the whole curve in one run


# ------------------------------------------------------------------- 1: binding (no servers)
def test_local_cluster_http_servers_are_pinned_to_loopback():
    from flows.runtime import make_task_runner

    kwargs = make_task_runner(2).cluster_kwargs
    assert kwargs["processes"] is False  # inproc:// transport: no TCP listener besides HTTP
    assert kwargs["dashboard_address"].startswith("127.0.0.1:")
    assert kwargs["worker_dashboard_address"].startswith("127.0.0.1:")


def test_stack_refuses_a_network_bind_without_authentication(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CAUSALMETA_TLS", "PREFECT_SERVER_API_AUTH", "MLFLOW_TRACKING_"))}
    env.update(CAUSALMETA_BIND="0.0.0.0", CAUSALMETA_ROOT=str(tmp_path / "root"))
    state = tmp_path / "state"
    out = subprocess.run([str(REPO / "deploy" / "stack.sh"), "up", "--state", str(state)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    for needed in ("CAUSALMETA_TLS_CA", "CAUSALMETA_TLS_CERT", "CAUSALMETA_TLS_KEY",
                   "PREFECT_SERVER_API_AUTH_STRING", "MLFLOW_TRACKING_PASSWORD"):
        assert needed in out.stderr
    assert not state.exists() and "started" not in out.stdout  # nothing was started

