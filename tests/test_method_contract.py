"""The method contract: a new amortized method and a new baseline, added through the public
registries alone, run through the benchmark flow and get their rows in the report; metrics
are picked by what each answer implements; training reads the stored prior chunk-wise."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats
from torch import nn

from pipeline_lib.baselines.registry import BaselineSpec, fit_baseline, get_baseline, register_baseline
from pipeline_lib.evaluation import evaluate_answer
from pipeline_lib.models.mace_tnp import mace_tnp_batch
from pipeline_lib.models.registry import METHODS, MethodSpec, register_method
from pipeline_lib.posterior import DensityEstimate, GraphPosterior, InterventionalPredictor, capabilities
from pipeline_lib.taskdata import restrict
from pipeline_lib.training.batching import ChunkedSource


# --- a new amortized method: a Gaussian at each outcome's observational marginal -------------
class MarginalGaussianConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    init_log_scale: float = 0.0


class MarginalGaussian(nn.Module):
    """q(x_i | do(X_j = a), D) = N(mean_i, (exp(s) sd_i)^2): one learned scale factor, no causality."""

    def __init__(self, config: MarginalGaussianConfig):
        super().__init__()
        self.config = config
        self.log_scale = nn.Parameter(torch.tensor(float(config.init_log_scale)))


def _moments(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = mask.to(x.dtype)[..., None]
    n = w.sum(-2).clamp_min(1.0)
    mean = (x * w).sum(-2) / n
    return mean, (((x - mean[..., None, :]) ** 2 * w).sum(-2) / n).sqrt().clamp_min(1e-3)


def marginal_loss(model: MarginalGaussian, batch: dict) -> torch.Tensor:
    mean, sd = _moments(batch["x_obs"], batch["obs_mask"])  # (B, d)
    ar = torch.arange(len(mean))
    mu, s = mean[ar, batch["out_node"]], sd[ar, batch["out_node"]] * model.log_scale.exp()
    return -torch.distributions.Normal(mu[:, None], s[:, None]).log_prob(batch["y"]).mean()


class MarginalAnswer(InterventionalPredictor):
    def __init__(self, x_obs: np.ndarray, scale: float):
        self.mean, self.sd = x_obs.mean(0), x_obs.std(0) * scale
        self.n_nodes = x_obs.shape[1]

    def interventional_log_density(self, j, a, i, x):
        lp = stats.norm.logpdf(np.asarray(x), self.mean[i], self.sd[i])
        return DensityEstimate(lp, np.zeros_like(lp))

    def sample_interventional(self, j, a, n, rng):
        out = self.mean + self.sd * rng.standard_normal((n, self.n_nodes))
        out[:, j] = a
        return out


def marginal_predict(model: MarginalGaussian, task: dict) -> MarginalAnswer:
    return MarginalAnswer(restrict(task)["x_obs"], float(model.log_scale.detach().exp()))


# --- a new baseline: the empty graph with Gaussian marginals ----------------------------------
class GaussEmptyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    inflate: float = Field(1.0, gt=0)


class GaussEmptyAnswer(GraphPosterior, MarginalAnswer):
    def edge_probs(self):
        return np.zeros((self.n_nodes, self.n_nodes))

    def sample_graphs(self, n, rng):
        return np.zeros((n, self.n_nodes, self.n_nodes), np.uint8)


def fit_gauss_empty(data: dict, cfg: GaussEmptyConfig) -> GaussEmptyAnswer:
    assert set(data) == {"x_obs"}, "a baseline receives only the arrays its entry lists"
    return GaussEmptyAnswer(data["x_obs"], cfg.inflate)


@pytest.fixture(scope="module")
def registered():
    spec = register_method(MethodSpec(
        name="marginal-gaussian", model_cls=MarginalGaussian, config_cls=MarginalGaussianConfig,
        loss_fn=marginal_loss, make_batch=lambda cfg: (lambda t, rng: mace_tnp_batch(t, rng, n_obs_min=10,
                                                                                       n_obs_max=50)),
        predict=marginal_predict, answers=("interventional",), description="test: the observational marginal"),
        replace=True)
    base = register_baseline(BaselineSpec("gauss-empty", GaussEmptyConfig, fit_gauss_empty, ("x_obs",),
                                          "test: Gaussian marginals, no edges"), replace=True)
    yield spec, base
    METHODS.pop("marginal-gaussian", None)
    from pipeline_lib.baselines import registry

    registry._REGISTRY.pop("gauss-empty", None)


def _linear_task(seed: int = 0):
    from pipeline_lib.priors import sample_split_range
    from flows.spec import load_prior

    prior = load_prior("lin-3node-strong", {"n_obs": 200, "n_int": 100})
    from pipeline_lib.taskdata import task_slice

    return task_slice(sample_split_range(prior, "test", seed, seed + 1), 0)


def test_metrics_are_chosen_by_capability(registered):
    """An interventional-only answer gets NLPID and calibration but no graph metric; a graph +
    interventional answer gets both; a graph-only answer gets no NLPID (never a zero)."""
    task = _linear_task()
    data = restrict(task)
    inter = evaluate_answer(MarginalAnswer(data["x_obs"], 1.0), task)
    both = evaluate_answer(fit_baseline("gauss-empty", data), task)
    assert "nlpid" in inter and "e_shd" not in inter and "intv_auroc" not in inter
    assert both["nlpid"] == pytest.approx(inter["nlpid"])
    assert both["e_shd"] == pytest.approx(data["adjacency"].sum())  # the empty graph misses every edge

    class GraphOnly(GraphPosterior):
        n_nodes = 3

        def edge_probs(self):
            return data["adjacency"].astype(float)

        def sample_graphs(self, n, rng):
            return np.repeat(data["adjacency"][None], n, 0)

    g = evaluate_answer(GraphOnly(), task)
    assert g["e_shd"] == 0 and "nlpid" not in g and capabilities(GraphOnly()) == {"graph"}
    # the exact posterior beats the marginal on this strong-effect prior: the metric can fail
    exact = evaluate_answer(fit_baseline("exact", data), task)
    assert exact["nlpid"] < inter["nlpid"]


def test_baseline_sees_only_its_arrays_and_config_is_typed(registered):
    task = _linear_task()
    data = restrict(task)
    fit_baseline("gauss-empty", data, {"inflate": 2.0})  # the fit asserts it got x_obs only
    from pipeline_lib.baselines.registry import BaselineConfigError, check_config

    with pytest.raises(BaselineConfigError, match="'gauss-empty': field 'inflate'"):
        check_config("gauss-empty", {"inflate": -1})
    assert check_config("gauss-empty", {"inflate": 2.0}).inflate == 2.0
    assert get_baseline("dcdi-unknown").sees == ("x_obs", "x_int")  # targets unknown: not given
    with pytest.raises(ValueError, match="unknown data fields"):
        BaselineSpec("bad", GaussEmptyConfig, fit_gauss_empty, ("x_obss",))


def _fake_store(n_tasks: int = 23, chunk: int = 5):
    rng = np.random.default_rng(0)
    tasks = {"id": np.arange(n_tasks), "x": rng.normal(size=(n_tasks, 3))}
    bounds = [(a, min(a + chunk, n_tasks)) for a in range(0, n_tasks, chunk)]
    reads = []

    def read(a, b):
        reads.append((a, b))
        return {k: v[a:b] for k, v in tasks.items()}

    return tasks, bounds, read, reads


def test_chunked_source_is_a_pure_function_of_the_step_and_visits_each_task_once_per_epoch():
    _, bounds, read, reads = _fake_store()
    ident = lambda t, rng: {"id": t["id"], "u": rng.random(len(t["id"]))}  # noqa: E731
    src = ChunkedSource(read, bounds, ident, batch_size=4, seed=3, window_chunks=2)
    steps = [src(s) for s in range(12)]
    per_epoch = src._cum[1]
    ids = np.concatenate([b["id"] for b in steps[:per_epoch]])
    assert len(ids) == len(set(ids.tolist())) == 4 * per_epoch  # no task twice within an epoch
    assert all(b - a <= 5 for a, b in reads)  # chunk-wise reads only, never the whole split
    fresh = ChunkedSource(read, bounds, ident, batch_size=4, seed=3, window_chunks=2)
    for s in (7, 2, 11):  # resumed at any step (any order): the same batch, same example rng
        np.testing.assert_array_equal(fresh(s)["id"], steps[s]["id"])
        np.testing.assert_array_equal(fresh(s)["u"], steps[s]["u"])
    other = ChunkedSource(read, bounds, ident, batch_size=4, seed=4, window_chunks=2)
    assert not np.array_equal(np.concatenate([other(s)["id"] for s in range(4)]),
                              np.concatenate([b["id"] for b in steps[:4]]))
    assert 1.0 <= src.epochs_at(per_epoch) < 1.01
    src.close(), fresh.close(), other.close()


@pytest.mark.usefixtures("prefect_harness")
def test_new_method_and_baseline_run_through_the_benchmark_flow(registered, tmp_path):
    """Registered from this test only: no evaluation, task, flow or CLI code names them."""
    from flows.benchmark import benchmark
    from flows.spec import BaselineRun, BenchmarkSpec, MethodRun

    spec = BenchmarkSpec(
        name="contract", priors=["lin-3node-strong"],
        prior_overrides={"n_obs": 60, "n_int": 40, "splits": {"train": 16, "val": 4, "test": 3}, "chunk_tasks": 4},
        methods=[MethodRun(name="marginal-gaussian", steps=20, batch_size=4, lr=0.05)],
        baselines=[BaselineRun(name="gauss-empty"), BaselineRun(name="empty-graph")],
        n_test_tasks=3, n_workers=2)
    summary = benchmark(spec=spec, root=str(tmp_path / "root"))
    (label, records), = summary["records"].items()
    mean = {(r["method"], r["metric"]): r["mean"] for r in records}
    methods = {m for m, _ in mean}
    amort = next(m for m in methods if m.startswith("marginal-gaussian v"))
    assert {"gauss-empty", "empty-graph"} <= methods
    table = summary["tables"][label]
    header = [c.strip().split(" ")[0] for c in table.splitlines()[0].strip("| ").split("|")]
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| {amort} "))
    cells = dict(zip(header, [c.strip() for c in line.strip("| ").split("|")]))
    assert cells["e_shd"] == "-" and cells["nlpid"] not in ("-", "")  # no graph: "-", not 0
    assert (amort, "e_shd") not in mean and ("gauss-empty", "e_shd") in mean
    # the trained model is the one answering: its learned scale widens the marginal towards the
    # interventional spread, which beats the same Gaussian at scale 1 (the untrained baseline)
    assert math.isfinite(mean[(amort, "nlpid")]) and mean[(amort, "nlpid")] < mean[("gauss-empty", "nlpid")]
    assert summary["models"][label][0]["data"] == "store"


def test_bad_task_input_is_one_clear_error_at_the_contract_entry():
    """NaN, 1-D data, a wrong-size node mask and too few rows fail before any method runs
    (issue 12, item 10): never NaN output with exit 0."""
    from pipeline_lib.models.registry import get_method
    from pipeline_lib.taskdata import TaskDataError

    task = _linear_task()
    spec = get_method("mace-tnp")
    model = spec.build(spec.config("cpu-small", d_model=16, n_heads=2, n_components=2))
    cases = {
        "x_obs: 1 NaN/inf": lambda t: t["x_obs"].__setitem__((0, 0), np.nan),
        "x_obs: expected shape": lambda t: t.__setitem__("x_obs", t["x_obs"][:, 0]),
        "node_mask: shape": lambda t: t.__setitem__("node_mask", np.ones(5, bool)),
        "at least 2": lambda t: t.__setitem__("x_obs", t["x_obs"][:1]),
        "x_int: 1 NaN/inf": lambda t: t["x_int"].__setitem__((0, 0, 1), np.inf),
    }
    for msg, spoil in cases.items():
        bad = {k: np.array(v, copy=True) for k, v in task.items()}
        spoil(bad)
        for run in (lambda: spec.predict(model, bad), lambda: fit_baseline("exact", restrict(bad))):
            with pytest.raises(TaskDataError, match=msg):
                run()
    with pytest.raises(ValueError, match="NaN or inf"):
        model.predict(torch.full((10, 3), float("nan")), None, 0, 1.0, 1)
    with pytest.raises(ValueError, match="node_mask must be"):
        model.predict(torch.zeros(10, 3), torch.ones(4, dtype=torch.bool), 0, 1.0, 1)


def _small_lin3_store(tmp_path):
    """A finished store of ``lin-3node-strong`` (80 observational rows, 2 test tasks)."""
    from flows.spec import load_prior
    from pipeline_lib.priors import sample_split_range
    from storage.prior_store import PriorStore

    cfg = load_prior("lin-3node-strong", {"n_obs": 80, "n_int": 30, "splits": {"train": 4, "val": 2, "test": 2},
                                          "chunk_tasks": 2})
    store = PriorStore.create_or_open(tmp_path, cfg)
    for split, chunk, start, stop in store.pending_chunks():
        store.write_chunk(split, chunk, sample_split_range(cfg, split, start, stop))
    store.finalize()
    return store


def test_cli_predict_answers_with_a_baseline_and_lists_methods(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    store = _small_lin3_store(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["predict", "exact", "--data", str(store.path), "--task", "1"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert "answers graph, interventional" in r.output and "Most probable edges" in r.output
    assert "90% interval" in r.output and max(len(ln) for ln in r.output.splitlines()) <= 80
    r = runner.invoke(app, ["predict", "no-such", "--data", str(store.path)])
    assert r.exit_code == 2 and "amortized: mace-tnp" in r.output
    r = runner.invoke(app, ["predict", "exact", "--data", str(store.path), "--task", "7"])
    assert r.exit_code == 2 and "has tasks 0..1" in r.output
    r = runner.invoke(app, ["methods"])
    assert r.exit_code == 0 and "mace-tnp" in r.output and "dcdi-unknown" in r.output


def test_prefect_form_lists_the_registered_names(registered):
    from flows.spec import BaselineRun, MethodRun

    assert "marginal-gaussian" in MethodRun.model_json_schema()["properties"]["name"]["enum"]
    assert {"gauss-empty", "exact", "bacadi"} <= set(BaselineRun.model_json_schema()["properties"]["name"]["enum"])
    with pytest.raises(ValueError, match="method 'nope' is unknown"):
        MethodRun(name="nope")


def test_every_shipped_preset_validates_against_the_registries():
    from flows.spec import CONFIGS, load_preset

    names = sorted(p.stem for p in (CONFIGS / "benchmarks").glob("*.yaml"))
    assert "cond-fip-cpu" in names
    for name in names:
        spec = load_preset(name)
        assert spec.methods or spec.baselines
        assert any(b.name == "oracle" for b in spec.baselines)  # every NLPID table shows the floor


def test_cli_predict_writes_do_samples_and_a_counterfactual_row(tmp_path):
    """``predict anm-linear --do X1=1.5 --counterfactual 3``: the do-samples CSV holds the
    intervened column at 1.5 exactly; the counterfactual row keeps the values of the nodes that
    are not descendants of X1 (additive-noise abduction is exact for them) and sets X1 = 1.5."""
    import networkx as nx
    from typer.testing import CliRunner

    from flows.cli import app
    from pipeline_lib.taskdata import task_slice
    from storage.prior_store import PriorStore

    store = _small_lin3_store(tmp_path)
    out = tmp_path / "pred"
    r = CliRunner().invoke(app, ["predict", "anm-linear", "--data", str(store.path), "--do", "X1=1.5",
                                 "--samples", "50", "--counterfactual", "3", "--out", str(out)],
                           env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    x = np.loadtxt(out / "do-X1=1.5-samples.csv", delimiter=",", skiprows=1)
    assert x.shape == (50, 3) and np.all(x[:, 1] == 1.5) and x[:, [0, 2]].std(0).min() > 0
    fact, cf = np.loadtxt(out / "do-X1=1.5-counterfactual-row3.csv", delimiter=",", skiprows=1)
    task = task_slice(PriorStore.open(store.path).read("test", 0, 1), 0)
    np.testing.assert_allclose(fact, task["x_obs"][3], rtol=1e-5)
    desc = nx.descendants(nx.DiGraph(np.asarray(task["adjacency"])), 1)
    keep = [v for v in range(3) if v != 1 and v not in desc]
    assert cf[1] == 1.5
    np.testing.assert_allclose(cf[keep], fact[keep], atol=1e-4)
    assert desc and np.all(np.abs(cf[sorted(desc)] - fact[sorted(desc)]) > 1e-3)  # the effect reaches them
    r = CliRunner().invoke(app, ["predict", "exact", "--data", str(store.path), "--counterfactual", "3"])
    assert r.exit_code == 2 and "--counterfactual needs --do and an SCM generator" in r.output
    r = CliRunner().invoke(app, ["predict", "anm-linear", "--data", str(store.path), "--do", "X1=1.5",
                                 "--counterfactual", "999", "--out", str(out)])
    assert r.exit_code == 2 and "rows are 0..79" in r.output
