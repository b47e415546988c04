"""Benchmark of the per-dataset baselines: fit time, SVGD vectorisation, graph/target quality.

(1) **Seconds per task** of every baseline through ``registry.fit_baseline`` (exact where
    d <= 5, dibs, dibs-joint, bacadi, dcdi) at d = 3, 5, 20 on CPU. The tasks are drawn
    from the shipped prior ``er-20node`` with ``graph.n_nodes`` overridden to d and
    ``expected_parents = min(2, (d - 1) / 4)`` (the DAG maximum is (d - 1) / 2) (ReLU MLP
    mechanisms, standardized data, 500 observational rows, 5 regimes of 100 rows with 1-3
    hard targets). Defaults of each method's config (n_grad_mc = 128, 20 particles, ...),
    except the iteration counts: SVGD runs ``--time-steps`` steps and the seconds at the
    default 1000 steps are *extrapolated* (SVGD cost is linear in the steps; a short run
    may end with all particles cyclic, recorded as an error but still timed); DCDI runs
    ``--dcdi-iter`` iterations at most (default 20000). At d = 20 the SVGD timing runs use
    ``--time-grad-mc-20`` MC samples instead of 128 (memory).
(2) **Vectorisation**: the SVGD loop of DiBS (marginal and joint) with 1 and with 20
    particles, same steps and data (d = 5); all particles move as one batched tensor, so
    the ratio of the two times should be well under 20. (The marginal variant scores
    20 x 128 sampled graphs with BGe per step instead of 128: that part is real work that
    grows with the particle count, cached per parent set.)
(3) **Quality** on the first N test tasks of ``er-20node`` (d = 20) with reduced budgets
    (``--quality-steps`` SVGD steps, ``--quality-grad-mc`` MC samples): E-SHD, E-SID, edge
    AUROC, and Intv-AUROC for the methods that infer targets (bacadi, dcdi-unknown), via
    ``pipeline_lib.evaluation.restrict`` / ``score_graph``. Mean and standard error over
    tasks, plus the trivial reference "empty graph" E-SHD (the number of true edges).

Wall clock (``time.perf_counter``), single process, ``torch.set_num_threads(--threads)``.
Writes benchmarks/results/baselines.json and logs it through
``storage.tracking.Tracker.log_benchmark`` (root ``$CAUSALMETA_ROOT`` or ``.causalmeta``;
``--no-mlflow`` skips). Run: ``.venv/bin/python benchmarks/baselines.py --help``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.spec import load_prior  # noqa: E402
from pipeline_lib.baselines.registry import fit_baseline  # noqa: E402
from pipeline_lib.evaluation import restrict, score_graph, task_slice  # noqa: E402
from pipeline_lib.priors import sample_split_range  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "baselines.json"
SVGD_METHODS = ("dibs", "dibs-joint", "bacadi")
DEFAULT_STEPS = 1000  # DiBSConfig / BaCaDIConfig default


def timing_config(name: str, d: int, args) -> dict:
    """Overrides for the timing runs (item 1): the number of iterations, and at d = 20 the
    MC sample count of the SVGD methods (128 samples of (P, M, N, d, hidden) MLP
    activations need several GB at d = 20)."""
    if name in SVGD_METHODS:
        cfg = {"steps": args.time_steps}
        if d >= 20:
            cfg["n_grad_mc"] = args.time_grad_mc_20
        return cfg
    if name in ("dcdi", "dcdi-unknown"):
        return {"max_iter": args.dcdi_iter}
    return {}


def quality_config(name: str, args) -> dict:
    """Overrides for the quality runs (item 3): fewer steps and MC samples (budget)."""
    if name in SVGD_METHODS:
        return {"steps": args.quality_steps, "n_grad_mc": args.quality_grad_mc}
    if name in ("dcdi", "dcdi-unknown"):
        return {"max_iter": args.dcdi_iter}
    return {}


def fit_timed(name: str, data: dict, config: dict):
    t0 = time.perf_counter()
    post = fit_baseline(name, data, config)
    return post, time.perf_counter() - t0


def one_task(prior: str, d: int, seed_index: int = 0) -> dict:
    # the shipped 2 expected parents exceed the DAG maximum (d - 1) / 2 for small d
    graph = {"n_nodes": d, "expected_parents": min(2.0, (d - 1) / 4)}
    cfg = load_prior(prior, {"graph": graph, "splits": {"test": seed_index + 1}})
    return restrict(task_slice(sample_split_range(cfg, "test", seed_index, seed_index + 1), 0))


def bench_fit_times(args) -> dict:
    out = {}
    for d in args.dims:
        data = one_task(args.prior, d)
        row = {}
        for name in args.methods:
            if name == "exact" and d > 5:
                continue
            cfg = timing_config(name, d, args)
            t0 = time.perf_counter()
            try:
                fit_baseline(name, data, cfg)
                row[name] = {"seconds": time.perf_counter() - t0, "config": cfg}
            except Exception as e:  # a failing baseline is a result, not a crash of the benchmark
                row[name] = {"seconds": time.perf_counter() - t0, "error": f"{type(e).__name__}: {e}", "config": cfg}
            if name in SVGD_METHODS:
                # SVGD cost is linear in the steps: extrapolate to the default step count
                per_step = row[name]["seconds"] / cfg["steps"]
                row[name]["seconds_per_step"] = per_step
                row[name]["seconds_at_default_steps_extrapolated"] = per_step * DEFAULT_STEPS
            print(f"d={d:3d} {name:12s} {row[name]}", flush=True)
        out[f"d{d}"] = row
    return out


def bench_vectorisation(args) -> dict:
    from pipeline_lib.baselines.dibs import DiBSConfig, run_dibs_joint, run_dibs_marginal

    data = one_task(args.prior, 5)
    res = {"d": 5, "steps": args.vec_steps}
    for label, run in (("marginal", run_dibs_marginal), ("joint", run_dibs_joint)):
        times = {}
        for p in (1, 20):
            # the SVGD loop alone (run_*): a short run may leave only cyclic particles,
            # which fit_* rejects after the loop
            cfg = DiBSConfig(n_particles=p, steps=args.vec_steps, seed=0)
            run(data["x_obs"], cfg.model_copy(update={"steps": 2}))  # warm-up
            t0 = time.perf_counter()
            run(data["x_obs"], cfg)
            times[p] = time.perf_counter() - t0
        res[label] = {"seconds_1_particle": times[1], "seconds_20_particles": times[20],
                      "ratio_20_over_1": times[20] / times[1]}
    print("vectorisation", res, flush=True)
    return res


def _mean_se(values: list[float]) -> dict:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return {"mean": float("nan"), "se": float("nan"), "n": 0}
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "se": se, "n": int(len(v))}


def bench_quality(args) -> dict:
    cfg = load_prior(args.prior)
    batch = sample_split_range(cfg, "test", 0, args.n_tasks)
    per_method: dict[str, list[dict]] = {m: [] for m in args.quality_methods}
    n_edges = []
    for t in range(args.n_tasks):
        data = restrict(task_slice(batch, t))
        n_edges.append(float(data["adjacency"].sum()))
        d = data["adjacency"].shape[0]
        for name in args.quality_methods:
            conf = quality_config(name, args)
            try:
                post, sec = fit_timed(name, data, conf)
                m = score_graph(post, data["adjacency"], data["int_targets"], n_graph_samples=100, seed=t)
                m["seconds"] = sec
            except Exception as e:
                m = {"error": f"{type(e).__name__}: {e}"}
                traceback.print_exc()
            per_method[name].append(m)
            print(f"task {t} {name:12s} {m}", flush=True)
    summary = {}
    for name, rows in per_method.items():
        keys = sorted({k for r in rows for k in r if k != "error"})
        summary[name] = {k: _mean_se([r.get(k, np.nan) for r in rows]) for k in keys}
        summary[name]["errors"] = [r["error"] for r in rows if "error" in r]
        summary[name]["config"] = quality_config(name, args)
    summary["empty_graph"] = {"e_shd": _mean_se(n_edges)}
    return {"prior": args.prior, "n_tasks": args.n_tasks, "summary": summary, "per_task": per_method}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prior", default="er-20node")
    ap.add_argument("--dims", type=int, nargs="+", default=[3, 5, 20])
    ap.add_argument("--methods", nargs="+", default=["exact", "dibs", "dibs-joint", "bacadi", "dcdi"])
    ap.add_argument("--quality-methods", nargs="+", default=["dibs", "dibs-joint", "bacadi", "dcdi-unknown"])
    ap.add_argument("--time-steps", type=int, default=10, help="SVGD steps of the timing runs (default config: 1000)")
    ap.add_argument("--time-grad-mc-20", type=int, default=32, help="n_grad_mc of the d = 20 timing runs")
    ap.add_argument("--quality-steps", type=int, default=300, help="SVGD steps of the quality runs")
    ap.add_argument("--quality-grad-mc", type=int, default=16, help="n_grad_mc of the quality runs (default 128)")
    ap.add_argument("--dcdi-iter", type=int, default=2000, help="DCDI max_iter (default 20000)")
    ap.add_argument("--vec-steps", type=int, default=50)
    ap.add_argument("--n-tasks", type=int, default=20, help="test tasks for the quality table (0 skips)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip", nargs="*", default=[], choices=["times", "vectorisation", "quality"])
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-mlflow", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads,
                    "load_avg_at_start": list(os.getloadavg())},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    def save():  # after every section, so an interrupted run keeps what it measured
        result["total_seconds"] = time.perf_counter() - t0
        result["machine"]["load_avg_at_end"] = list(os.getloadavg())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=float))

    if "times" not in args.skip:
        result["fit_seconds"] = bench_fit_times(args)
        save()
    if "vectorisation" not in args.skip:
        result["vectorisation"] = bench_vectorisation(args)
        save()
    if "quality" not in args.skip and args.n_tasks > 0:
        result["quality"] = bench_quality(args)
    save()
    print(f"wrote {args.out} in {result['total_seconds']:.0f} s")
    if not args.no_mlflow:
        from storage.tracking import Tracker

        flat = {"total_seconds": result["total_seconds"]}
        if "vectorisation" in result:
            for label in ("marginal", "joint"):
                flat[f"vectorisation_ratio.{label}"] = result["vectorisation"][label]["ratio_20_over_1"]
        for dk, row in result.get("fit_seconds", {}).items():
            for name, r in row.items():
                if "seconds" in r:
                    flat[f"seconds.{dk}.{name}"] = r["seconds"]
        for name, s in result.get("quality", {}).get("summary", {}).items():
            for k, v in s.items():
                if isinstance(v, dict) and "mean" in v:
                    flat[f"quality.{name}.{k}"] = v["mean"]
        root = os.environ.get("CAUSALMETA_ROOT", str(ROOT / ".causalmeta"))
        Tracker(root).log_benchmark("baselines", flat, [args.out])
    return result


if __name__ == "__main__":
    main()
