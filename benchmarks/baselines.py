"""Benchmark of the per-dataset baselines: fit time, SVGD vectorisation, graph/target quality.

All numbers: wall clock (``time.perf_counter``), one process, ``torch.set_num_threads(--threads)``
(default 1), CPU. The load average at start and end is recorded (``machine``): on a
shared machine the seconds are upper bounds of what an idle core gives.

(1) **Seconds per task** of every baseline through ``registry.fit_baseline`` (exact where
    d <= 5, dibs, dibs-joint, bacadi, dcdi, dcdi-unknown) at d = 3, 5, 20. The task is the
    first test task of the shipped prior ``er-20node`` with ``graph.n_nodes`` overridden to
    d and ``expected_parents = min(2, (d - 1) / 4)`` (the DAG maximum is (d - 1) / 2) (ReLU
    MLP mechanisms, standardized data, 500 observational rows, 5 regimes of 100 rows with
    1-3 hard targets). Every method's config is its default (1000 SVGD steps, 128 MC
    samples, 20 particles; DCDI ``max_iter`` 20000) unless stated. Each method is first
    warmed up by one short fit on the same task (one-off setup: allocator, kernels); the
    warm-up is not timed.

    * SVGD methods: fits at two step counts ``s1 < s2`` (``--slope-steps``; at d = 20
      ``--slope-steps-20``) give ``seconds_per_step`` (the slope) and
      ``setup_seconds`` (the intercept); ``seconds_default_extrapolated`` =
      slope * 1000 + intercept. Where that is at most ``--direct-max-s`` seconds the
      default-config fit (1000 steps) is also run and timed: ``seconds_default_measured``.
      A short run may end with every particle cyclic (recorded as ``error``, still timed:
      the error is raised after the SVGD loop).
    * DCDI: one fit with ``max_iter = --dcdi-time-iter`` (default: the config default
      20000), timed; ``iterations_run`` and ``final_phase`` (0 augmented Lagrangian, 1
      converged, 2 refit on the thresholded DAG) come from the fitted ``history``; it
      stopped by its own criterion iff ``iterations_run < max_iter``.
    * exact: one timed fit (enumeration of all DAGs, d <= 5).

(2) **Vectorisation**: the SVGD loops of DiBS (marginal), DiBS-joint (known targets) and
    BaCaDI with 1 and with 20 particles, same steps and data (d = 5, all 1000 rows), at each
    torch thread count of ``--vec-threads`` (1 2), best of ``--vec-repeats``. All particles
    move as one batched tensor, so no per-particle Python overhead is repeated; what stays
    is the arithmetic, which is linear in the particles: on one thread a likelihood-bound
    step can only approach 20x from below (the fixed per-step costs are shared), and more
    threads (or a GPU) are what turn the batch into parallel work. (The marginal variant
    scores 20 x 128 sampled graphs with BGe per step instead of 128: that part is real work
    that grows with the particle count, cached per parent set.)

(3) **Quality** on the first ``--n-tasks`` (20) test tasks of ``er-20node`` (d = 20) for
    dibs, dibs-joint, bacadi, dcdi, dcdi-unknown: E-SHD, E-SID (100 posterior graph
    samples), edge AUROC / AUPRC, and Intv-AUROC / AUPRC for the methods that infer
    targets (bacadi, dcdi-unknown), via ``pipeline_lib.evaluation.restrict`` /
    ``score_graph``; ``seconds`` is the fit alone (scoring is ``score_seconds``). Mean and
    standard error over tasks; a failed fit (e.g. every particle cyclic) is listed under
    ``errors`` and left out of the means (``n`` says how many tasks a mean has).

    The budgets (``QUALITY_BUDGETS``) are **reduced from the method defaults for CPU**, so
    that the 100 fits finish in about an hour on one torch thread: DiBS-joint and BaCaDI
    cost ~0.05 and ~0.1 s per MC sample per SVGD step at d = 20 (20 particles x 500 / 1000
    rows x 20 node MLPs), i.e. ~2 and ~4 hours per task at the defaults. DiBS marginal runs
    its defaults (~33 s per task); DCDI gets half its max_iter. Override with ``--budget NAME
    KEY=VALUE ...``. References: ``empty_graph`` (predict no edge: E-SHD = number of true
    edges) and ``random_prior`` (100 DAGs drawn from the prior's own graph model, ER with
    the prior's expected parents and a random node order; constant edge probabilities, so
    edge AUROC 0.5).

Writes benchmarks/results/baselines.json after every timing row and every quality task
(an interrupted run keeps what it measured), ``--markdown PATH`` renders the tables, and
the summary is logged through ``storage.tracking.Tracker.log_benchmark`` (root
``$CAUSALMETA_ROOT`` or ``.causalmeta``; ``--no-mlflow`` skips).
Run: ``.venv/bin/python benchmarks/baselines.py --threads 1 --markdown /tmp/bench_table.md``
(on a GPU: add ``--device cuda``, which runs the SVGD methods and DCDI there, with the
default MC chunking of an accelerator; the BGe scoring of DiBS-marginal stays on the CPU);
``--render RESULTS.json --markdown PATH`` only renders.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
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
from pipeline_lib import metrics as M  # noqa: E402
from pipeline_lib.baselines.registry import fit_baseline  # noqa: E402
from pipeline_lib.evaluation import restrict, score_graph, score_targets, task_slice  # noqa: E402
from pipeline_lib.metrics import mean_se  # noqa: E402
from pipeline_lib.posterior import capabilities  # noqa: E402
from pipeline_lib.priors import sample_split_range  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "baselines.json"
SVGD_METHODS = ("dibs", "dibs-joint", "bacadi")
DCDI_METHODS = ("dcdi", "dcdi-unknown")
DEFAULT_STEPS = 1000  # DiBSConfig / BaCaDIConfig default
DEFAULT_GRAD_MC = 128
DEFAULT_DCDI_ITER = 20_000  # DCDIConfig default

# Quality budgets (item 3), REDUCED from the defaults (1000 SVGD steps, 128 MC samples;
# DCDI max_iter 20000) so that 20 tasks x 5 methods run in about an hour on one CPU thread.
# Measured at d = 20 on the shared 2-core machine (one torch thread; the 20-task run):
#   dibs (marginal, BGe): ~33 ms/step at 128 MC over 1000 steps     -> the defaults;
#   dibs-joint / bacadi:  ~6 / ~14 s per step at 128 MC (~linear in MC) -> 4 MC, 300 steps;
#   dcdi / dcdi-unknown:  ~3-4 ms/iteration                          -> max_iter halved.
# Seconds per task below are the 20-task means (about 40% of that run at load average ~3).
QUALITY_BUDGETS: dict[str, dict] = {
    "dibs": {"steps": 1000, "n_grad_mc": 128},  # the defaults: 33 s per task
    "dibs-joint": {"steps": 300, "n_grad_mc": 4},  # 39 s per task (default: ~1.8 h)
    "bacadi": {"steps": 300, "n_grad_mc": 4},  # 73 s per task (default: ~3.8 h)
    "dcdi": {"max_iter": 10_000},  # 32 s per task; at 20000 (63 s) still not converged at d = 20
    "dcdi-unknown": {"max_iter": 10_000},  # 37 s per task
}


DEVICE = "cpu"  # --device: torch device of the SVGD and DCDI fits


def _on_device(name: str, config: dict) -> dict:
    """The config with ``device`` set for the methods that run on torch devices."""
    if DEVICE == "cpu" or name not in SVGD_METHODS + DCDI_METHODS:
        return config
    return {**config, "device": DEVICE}


def _default_config(name: str) -> dict:
    if name in SVGD_METHODS:
        return {"steps": DEFAULT_STEPS, "n_grad_mc": DEFAULT_GRAD_MC}
    if name in DCDI_METHODS:
        return {"max_iter": DEFAULT_DCDI_ITER}
    return {}


def fit_info(post) -> dict:
    """What a fitted DCDI posterior says about its run (iterations, final phase)."""
    h = getattr(post, "history", None)
    if not isinstance(h, dict) or "loss" not in h:
        return {}
    phase = np.asarray(h["phase"])
    return {"iterations_run": int(len(h["loss"])), "final_phase": int(phase[-1]) if len(phase) else -1,
            "al_updates": int(len(h.get("al_updates", [])))}


def try_fit(name: str, data: dict, config: dict) -> dict:
    """Timed fit; a failing baseline is a result (``error``), not a crash of the benchmark."""
    t0 = time.perf_counter()
    try:
        post = fit_baseline(name, data, _on_device(name, config))
        return {"seconds": time.perf_counter() - t0, **fit_info(post)}
    except Exception as e:
        return {"seconds": time.perf_counter() - t0, "error": f"{type(e).__name__}: {e}"}


def particle_diagnostics(parts, data: dict, failed: bool) -> dict:
    """Acyclic-particle count and, for a failed fit, scores of the raw final particles
    (cyclic ones included, uniform weights): mean SHD of their hard graphs, edge AUROC of
    the particles' edge frequencies, and for BaCaDI Intv-AUROC of the mean
    ``sigmoid(alpha_T / 2 * gamma)``. A diagnostic, not the method's posterior.

    parts: the final SVGD particles, ``posterior.particles`` of a fit or ``.particles`` of
    the ``DiBSError`` raised when every particle is cyclic; None for other methods."""
    if parts is None:
        return {}
    graphs = np.asarray(parts.graphs)
    out = {"n_acyclic_particles": int(np.asarray(parts.acyclic).sum()), "particle_edges": float(graphs.sum((1, 2)).mean())}
    if failed:
        true = data["adjacency"]
        out["diag_particle_shd"] = float(M.expected_shd(true, graphs))
        out["diag_edge_auroc"] = float(M.edge_auroc(true, graphs.mean(0)))
        gamma = getattr(parts, "gamma", None)
        if gamma is not None and np.isfinite(parts.alpha_final):
            probs = (1.0 / (1.0 + np.exp(-parts.alpha_final / 2 * np.asarray(gamma, np.float64)))).mean(0)
            out["diag_intv_auroc"] = float(M.intervention_auroc(data["int_targets"], probs))
    return out


def one_task(prior: str, d: int, seed_index: int = 0) -> dict:
    # the shipped 2 expected parents exceed the DAG maximum (d - 1) / 2 for small d
    graph = {"n_nodes": d, "expected_parents": min(2.0, (d - 1) / 4)}
    cfg = load_prior(prior, {"graph": graph, "splits": {"test": seed_index + 1}})
    return restrict(task_slice(sample_split_range(cfg, "test", seed_index, seed_index + 1), 0))


def _warm_config(name: str) -> dict:
    if name in SVGD_METHODS:
        return {"steps": 2}
    if name in DCDI_METHODS:
        return {"max_iter": 20}
    return {}


def time_method(name: str, d: int, data: dict, args) -> dict:
    """Item 1 for one method and one d (module docstring)."""
    try_fit(name, data, _warm_config(name))  # warm-up, not timed
    if name in SVGD_METHODS:
        s1, s2 = args.slope_steps_20 if d >= 20 else args.slope_steps
        base = {} if args.time_grad_mc is None else {"n_grad_mc": args.time_grad_mc}
        r1 = try_fit(name, data, {**base, "steps": s1})
        r2 = try_fit(name, data, {**base, "steps": s2})
        slope = (r2["seconds"] - r1["seconds"]) / (s2 - s1)
        intercept = r1["seconds"] - slope * s1
        row = {
            "n_grad_mc": base.get("n_grad_mc", DEFAULT_GRAD_MC),
            "slope_runs": {str(s1): r1, str(s2): r2},
            "seconds_per_step": slope,
            "setup_seconds": intercept,
            "seconds_default_extrapolated": slope * DEFAULT_STEPS + intercept,
        }
        if row["seconds_default_extrapolated"] <= args.direct_max_s and not base:
            r = try_fit(name, data, {})
            row["seconds_default_measured"] = r["seconds"]
            if "error" in r:
                row["default_error"] = r["error"]
        return row
    if name in DCDI_METHODS:
        r = try_fit(name, data, {"max_iter": args.dcdi_time_iter})
        r["max_iter"] = args.dcdi_time_iter
        if "iterations_run" in r:
            r["stopped_early"] = r["iterations_run"] < args.dcdi_time_iter
        return r
    return try_fit(name, data, {})


def bench_fit_times(args, result: dict, save) -> dict:
    out = result.setdefault("fit_seconds", {})
    for d in args.dims:
        data = one_task(args.prior, d)
        row = out.setdefault(f"d{d}", {"n_true_edges": int(data["adjacency"].sum())})
        for name in args.methods:
            if name == "exact" and d > 5:
                continue
            row[name] = time_method(name, d, data, args)
            print(f"[times] d={d:3d} {name:12s} {json.dumps(row[name], default=float)}", flush=True)
            save()
    return out


def bench_vectorisation(args) -> dict:
    """SVGD loop (``run_*``) with 1 and with 20 particles, same data and steps, per torch
    thread count in ``--vec-threads``; best of ``--vec-repeats`` timings (after a warm-up)."""
    from pipeline_lib.baselines.bacadi import BaCaDIConfig, run_bacadi
    from pipeline_lib.baselines.dibs import DiBSConfig, run_dibs_joint, run_dibs_marginal

    data = one_task(args.prior, 5)
    runs = {
        "marginal": (DiBSConfig, lambda cfg: run_dibs_marginal(data["x_obs"], cfg)),
        "joint": (DiBSConfig, lambda cfg: run_dibs_joint(data["x_obs"], cfg, data["x_int"], data["int_targets"])),
        "bacadi": (BaCaDIConfig, lambda cfg: run_bacadi(data["x_obs"], data["x_int"], cfg)),
    }
    rows = len(data["x_obs"]) + data["x_int"].shape[0] * data["x_int"].shape[1]
    res = {"d": 5, "steps": args.vec_steps, "rows": rows, "repeats": args.vec_repeats, "by_threads": {}}
    before = torch.get_num_threads()
    try:
        for n_threads in args.vec_threads:
            torch.set_num_threads(n_threads)
            out = res["by_threads"][str(n_threads)] = {}
            for label, (config_cls, run) in runs.items():
                times = {}
                for p in (1, 20):
                    # the SVGD loop alone: a short run may leave only cyclic particles,
                    # which fit_* rejects after the loop
                    cfg = config_cls(n_particles=p, steps=args.vec_steps, seed=0, device=DEVICE)
                    run(cfg.model_copy(update={"steps": 2}))  # warm-up
                    best = math.inf
                    for _ in range(args.vec_repeats):
                        t0 = time.perf_counter()
                        run(cfg)
                        best = min(best, time.perf_counter() - t0)
                    times[p] = best
                out[label] = {"seconds_1_particle": times[1], "seconds_20_particles": times[20],
                              "ms_per_step_1": 1000 * times[1] / args.vec_steps,
                              "ms_per_step_20": 1000 * times[20] / args.vec_steps,
                              "ratio_20_over_1": times[20] / times[1]}
                print(f"[vectorisation] threads={n_threads} {label:8s} {out[label]}", flush=True)
    finally:
        torch.set_num_threads(before)
    return res


def _mean_se(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    n = int(np.isfinite(v).sum())
    if n == 0:
        return {"mean": float("nan"), "se": float("nan"), "n": 0}
    mean, se = mean_se(v)
    return {"mean": mean, "se": se, "n": n}


def reference_rows(data: dict, graph_cfg, rng: np.random.Generator, n: int = 100) -> dict[str, dict]:
    """Empty-graph and random-prior references for one task (module docstring)."""
    from pipeline_lib.priors.graphs import erdos_renyi

    true = data["adjacency"]
    d = true.shape[0]
    empty = np.zeros((1, d, d), np.uint8)
    out = {"empty_graph": {"e_shd": float(M.expected_shd(true, empty)), "e_sid": float(M.expected_sid(true, empty))}}
    graphs = []
    for _ in range(n):
        g = erdos_renyi(d, d, float(graph_cfg.expected_parents), rng)
        perm = rng.permutation(d)
        graphs.append(g[np.ix_(perm, perm)])
    graphs = np.stack(graphs)
    p = min(1.0, 2.0 * float(graph_cfg.expected_parents) / (d - 1)) / 2.0  # P(i -> j) of the prior
    probs = np.full((d, d), p)
    np.fill_diagonal(probs, 0.0)
    out["random_prior"] = {
        "e_shd": float(M.expected_shd(true, graphs)), "e_sid": float(M.expected_sid(true, graphs)),
        "edge_auroc": float(M.edge_auroc(true, probs)), "edge_auprc": float(M.edge_auprc(true, probs)),
    }
    return out


def summarise(per_method: dict[str, list[dict]], budgets: dict[str, dict]) -> dict:
    summary = {}
    for name, rows in per_method.items():
        keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "task"})
        summary[name] = {k: _mean_se([r.get(k, np.nan) for r in rows]) for k in keys}
        summary[name]["errors"] = [f"task {r['task']}: {r['error']}" for r in rows if "error" in r]
        summary[name]["n_tasks_run"] = len(rows)
        if name in budgets:
            summary[name]["config"] = budgets[name]
    return summary


def bench_quality(args, budgets: dict[str, dict], result: dict, save) -> dict:
    cfg = load_prior(args.prior)
    batch = sample_split_range(cfg, "test", 0, args.n_tasks)
    per_method: dict[str, list[dict]] = {m: [] for m in args.quality_methods}
    refs: dict[str, list[dict]] = {"empty_graph": [], "random_prior": []}
    q = result["quality"] = {"prior": args.prior, "n_tasks": args.n_tasks,
                             "budgets": {m: budgets[m] for m in args.quality_methods},
                             "defaults": {m: _default_config(m) for m in args.quality_methods},
                             "per_task": per_method, "references_per_task": refs}
    t_start = time.perf_counter()
    for t in range(args.n_tasks):
        data = restrict(task_slice(batch, t))
        for k, v in reference_rows(data, cfg.graph, np.random.default_rng(1000 + t)).items():
            refs[k].append({"task": t, **v})
        for name in args.quality_methods:
            m = {"task": t, "n_true_edges": int(data["adjacency"].sum())}
            parts = None
            try:
                t0 = time.perf_counter()
                try:
                    post = fit_baseline(name, data, _on_device(name, budgets[name]))
                except Exception as e:
                    parts = getattr(e, "particles", None)  # DiBSError: every particle cyclic
                    raise
                finally:  # a failed fit (raised after its loop) is timed too
                    m["seconds"] = time.perf_counter() - t0
                parts = getattr(post, "particles", None)
                m.update(fit_info(post))
                t0 = time.perf_counter()
                m.update(score_graph(post, data["adjacency"], n_graph_samples=100, seed=t))
                if "targets" in capabilities(post):
                    m.update(score_targets(post, data["int_targets"]))
                m["score_seconds"] = time.perf_counter() - t0
                if hasattr(post, "graphs"):
                    m["n_mixture_components"] = int(len(post.graphs))
            except Exception as e:
                m["error"] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
            try:
                m.update(particle_diagnostics(parts, data, failed="error" in m))
            except Exception as e:  # a diagnostic must not cost the row
                m["diag_error"] = f"{type(e).__name__}: {e}"
            per_method[name].append(m)
            short = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in m.items()}
            print(f"[quality] task {t:2d} {name:12s} {short}", flush=True)
        elapsed = time.perf_counter() - t_start
        eta = elapsed / (t + 1) * (args.n_tasks - t - 1)
        print(f"[quality] {t + 1}/{args.n_tasks} tasks, {elapsed:.0f} s, ETA {eta:.0f} s, "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
        q["summary"] = summarise({**per_method, **refs}, budgets)
        q["tasks_done"] = t + 1
        q["seconds"] = elapsed
        save()
    return q


# ----------------------------------------------------------------------------- rendering


def _fmt(s: dict | None, digits: int = 2) -> str:
    if not s or s.get("n", 0) == 0 or not np.isfinite(s["mean"]):
        return "-"
    se = f" ± {s['se']:.{digits}f}" if np.isfinite(s.get("se", np.nan)) else ""
    return f"{s['mean']:.{digits}f}{se}"


def _sec(x: float | None) -> str:
    if x is None or not np.isfinite(x):
        return "-"
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def render_markdown(result: dict) -> str:
    mach = result.get("machine", {})
    lines = ["### Baselines on CPU (benchmarks/baselines.py)", ""]
    lines.append(
        f"One process, {mach.get('torch_threads')} torch thread, {mach.get('cpus')}-core machine shared with "
        f"other jobs: load average (1/5/15 min) {', '.join(f'{x:.2f}' for x in mach.get('load_avg_at_start', []))} "
        f"at start, {', '.join(f'{x:.2f}' for x in mach.get('load_avg_at_end', []))} at the end. "
        f"Total wall time {result.get('total_seconds', float('nan')) / 60:.0f} min."
    )
    fs = result.get("fit_seconds")
    q_all = result.get("quality")
    if fs:
        lines += ["", "**Seconds per task** (one fit at the method's default config; first test task of "
                  "`er-20node` with d overridden; after a warm-up fit). *m* = measured, *x* = extrapolated "
                  "from the per-step slope of two short runs (slope × 1000 steps + intercept; a negative "
                  "intercept is timing noise, the setup is negligible).", ""]
        dims = list(fs)
        lines.append("| method | " + " | ".join(f"d = {k[1:]}" for k in dims) + " |")
        lines.append("|---|" + "---|" * len(dims))
        methods = [m for m in ("exact", "dibs", "dibs-joint", "bacadi", "dcdi", "dcdi-unknown")
                   if any(m in fs[k] for k in dims)]
        for name in methods:
            cells = []
            for k in dims:
                r = fs[k].get(name)
                if r is None:
                    cells.append("n/a")
                elif name in SVGD_METHODS:
                    ps = r["seconds_per_step"]
                    per = f"{ps:.3g} s/step" if ps >= 1 else f"{1000 * ps:.3g} ms/step"
                    c = f"{_sec(r['seconds_default_extrapolated'])} x ({per}"
                    c += f", intercept {r['setup_seconds']:+.2g} s)"
                    if "seconds_default_measured" in r:
                        c = f"**{_sec(r['seconds_default_measured'])} m**; " + c
                    qs = (q_all or {}).get("summary", {}).get(name, {}).get("seconds")
                    if (k == "d20" and qs and qs.get("n") and q_all["budgets"].get(name) == _default_config(name)):
                        c = f"**{_fmt(qs, 1)} m** (default config, quality run, {qs['n']} tasks); " + c
                    if r.get("n_grad_mc", DEFAULT_GRAD_MC) != DEFAULT_GRAD_MC:
                        c += f" [{r['n_grad_mc']} MC]"
                    cells.append(c)
                elif name in DCDI_METHODS:
                    c = f"**{_sec(r['seconds'])} m**"
                    if "iterations_run" in r:
                        stop = "stopped by its criterion" if r.get("stopped_early") else "hit max_iter"
                        c += f" ({r['iterations_run']} of max {r['max_iter']} it., {stop})"
                    if "error" in r:
                        c += f" error: {r['error'][:60]}"
                    cells.append(c)
                else:
                    cells.append(f"**{_sec(r['seconds'])} m**" + (" (error)" if "error" in r else ""))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    vec = result.get("vectorisation")
    if vec and "by_threads" in vec:
        lines += ["", f"**SVGD vectorisation** (d = {vec['d']}, {vec['rows']} rows, {vec['steps']} steps, default "
                  f"configs, 128 MC samples; best of {vec['repeats']}): one step with 20 particles vs 1.", "",
                  "| method | torch threads | ms / step, 1 particle | ms / step, 20 particles | ratio |",
                  "|---|---|---|---|---|"]
        for label, name in (("marginal", "DiBS (marginal)"), ("joint", "DiBS-joint"), ("bacadi", "BaCaDI")):
            for n_threads, out in vec["by_threads"].items():
                r = out.get(label)
                if r:
                    lines.append(f"| {name} | {n_threads} | {r['ms_per_step_1']:.1f} | {r['ms_per_step_20']:.1f} "
                                 f"| {r['ratio_20_over_1']:.1f}x |")
    elif vec:
        lines += ["", f"SVGD vectorisation (d = {vec['d']}, {vec['steps']} steps): 20 particles vs 1 take "
                  f"{vec['marginal']['ratio_20_over_1']:.1f}x the time for DiBS marginal and "
                  f"{vec['joint']['ratio_20_over_1']:.1f}x for DiBS-joint."]
    q = q_all
    if q and "summary" in q:
        s = q["summary"]
        lines += ["", f"**Quality on the first {q.get('tasks_done', q['n_tasks'])} test tasks of `{q['prior']}`** "
                  "(d = 20, ReLU-MLP mechanisms, 500 obs + 5 regimes × 100 rows with 1-3 hard targets; "
                  "mean ± s.e. over tasks; E-SHD / E-SID over 100 posterior graph samples). "
                  "Budgets **reduced from the defaults for CPU** (below): these are not the methods at "
                  f"their intended settings. The section took {q.get('seconds', float('nan')) / 60:.0f} min.", ""]
        lines.append("| method | budget | E-SHD | E-SID | edge AUROC | edge AUPRC | Intv-AUROC | s / task (fit) | failed |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for name in list(q["budgets"]) + ["random_prior", "empty_graph"]:
            r = s.get(name)
            if r is None:
                continue
            budget = ", ".join(f"{k}={v}" for k, v in q["budgets"].get(name, {}).items()) or "-"
            if name == "empty_graph":
                budget = "reference: no edges"
            if name == "random_prior":
                budget = "reference: 100 ER DAGs from the prior"
            fails = f"{len(r.get('errors', []))}/{r.get('n_tasks_run', '-')}" if name in q["budgets"] else "-"
            lines.append(
                f"| {name} | {budget} | {_fmt(r.get('e_shd'), 1)} | {_fmt(r.get('e_sid'), 0)} | {_fmt(r.get('edge_auroc'))} "
                f"| {_fmt(r.get('edge_auprc'))} | {_fmt(r.get('intv_auroc'))} | {_fmt(r.get('seconds'), 1)} | {fails} |"
            )
        failed = [n for n in q["budgets"] if n in SVGD_METHODS and s.get(n, {}).get("errors")]
        if failed:
            lines += ["", "**Failed SVGD fits** (every particle cyclic at the end, so `fit_baseline` raises): the "
                      "raw final particles of those tasks scored as a diagnostic (20 particles, uniform weights, "
                      "cyclic graphs included; not a posterior, no E-SID).", "",
                      "| method | failed | acyclic particles / 20 (all tasks) | edges per particle (all tasks) | "
                      "particle SHD | edge AUROC (particle edge frequency) | Intv-AUROC | s / task (fit) |",
                      "|---|---|---|---|---|---|---|---|"]
            for n in failed:
                r = s[n]
                lines.append(
                    f"| {n} | {len(r['errors'])}/{r['n_tasks_run']} | {_fmt(r.get('n_acyclic_particles'), 1)} "
                    f"| {_fmt(r.get('particle_edges'), 1)} | {_fmt(r.get('diag_particle_shd'), 1)} "
                    f"| {_fmt(r.get('diag_edge_auroc'))} | {_fmt(r.get('diag_intv_auroc'))} | {_fmt(r.get('seconds'), 1)} |")
        lines += ["", "Method defaults: " + "; ".join(
            f"{m}: " + ", ".join(f"{k}={v}" for k, v in q["defaults"][m].items()) for m in q["budgets"]) + "."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def _parse_budgets(items: list[list[str]] | None) -> dict[str, dict]:
    budgets = {k: dict(v) for k, v in QUALITY_BUDGETS.items()}
    for item in items or []:
        name, *kvs = item
        for kv in kvs:
            k, v = kv.split("=", 1)
            budgets.setdefault(name, {})[k] = int(v) if v.lstrip("-").isdigit() else float(v)
    return budgets


def _git(*a: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        return ""


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prior", default="er-20node")
    ap.add_argument("--dims", type=int, nargs="+", default=[3, 5, 20])
    ap.add_argument("--methods", nargs="+", default=["exact", "dibs", "dibs-joint", "bacadi", "dcdi", "dcdi-unknown"])
    ap.add_argument("--quality-methods", nargs="+", default=["dibs", "dibs-joint", "bacadi", "dcdi", "dcdi-unknown"])
    ap.add_argument("--slope-steps", type=int, nargs=2, default=[5, 25],
                    help="SVGD step counts of the two timing fits at d < 20 (slope and intercept)")
    ap.add_argument("--slope-steps-20", type=int, nargs=2, default=[2, 8],
                    help="SVGD step counts of the two timing fits at d = 20")
    ap.add_argument("--time-grad-mc", type=int, default=None,
                    help="n_grad_mc of the timing fits (default: the config default 128)")
    ap.add_argument("--direct-max-s", type=float, default=200.0,
                    help="also time the full default SVGD fit when its extrapolated seconds are at most this")
    ap.add_argument("--dcdi-time-iter", type=int, default=DEFAULT_DCDI_ITER, help="DCDI max_iter of the timing fits")
    ap.add_argument("--budget", nargs="+", action="append", metavar="NAME KEY=VALUE",
                    help="override a quality budget, e.g. --budget bacadi steps=300 n_grad_mc=4")
    ap.add_argument("--vec-steps", type=int, default=30)
    ap.add_argument("--vec-threads", type=int, nargs="+", default=[1, 2],
                    help="torch thread counts of the vectorisation timings")
    ap.add_argument("--vec-repeats", type=int, default=2)
    ap.add_argument("--n-tasks", type=int, default=20, help="test tasks for the quality table (0 skips)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="torch device of the SVGD and DCDI fits, e.g. cuda")
    ap.add_argument("--skip", nargs="*", default=[], choices=["times", "vectorisation", "quality"])
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--markdown", type=Path, default=None, help="also write the tables as a markdown section")
    ap.add_argument("--render", type=Path, default=None, help="only render an existing results JSON (--markdown)")
    ap.add_argument("--no-mlflow", action="store_true")
    args = ap.parse_args(argv)
    if args.render is not None:
        text = render_markdown(json.loads(args.render.read_text()))
        (args.markdown.write_text(text) if args.markdown else print(text))
        return {}
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = args.device
    budgets = _parse_budgets(args.budget)

    t0 = time.perf_counter()
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads,
                    "device": args.device,
                    "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
                    "torch": torch.__version__, "load_avg_at_start": list(os.getloadavg())},
        "code": {"commit": _git("rev-parse", "--short", "HEAD"),
                 "uncommitted_baselines": _git("status", "--porcelain", "--", "pipeline_lib/baselines")},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }

    def save():  # after every row / task, so an interrupted run keeps what it measured
        result["total_seconds"] = time.perf_counter() - t0
        result["machine"]["load_avg_at_end"] = list(os.getloadavg())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=float))
        if args.markdown is not None:
            args.markdown.write_text(render_markdown(result))

    if "times" not in args.skip:
        bench_fit_times(args, result, save)
    if "vectorisation" not in args.skip:
        result["vectorisation"] = bench_vectorisation(args)
        save()
    if "quality" not in args.skip and args.n_tasks > 0:
        bench_quality(args, budgets, result, save)
    save()
    print(f"wrote {args.out} in {result['total_seconds']:.0f} s")
    if not args.no_mlflow:
        from storage.tracking import Tracker

        flat = {"total_seconds": result["total_seconds"]}
        for n_threads, out in result.get("vectorisation", {}).get("by_threads", {}).items():
            for label, r in out.items():
                flat[f"vectorisation_ratio.{label}.threads{n_threads}"] = r["ratio_20_over_1"]
        for dk, row in result.get("fit_seconds", {}).items():
            for name, r in row.items():
                if not isinstance(r, dict):
                    continue
                for key in ("seconds", "seconds_per_step", "setup_seconds", "seconds_default_extrapolated",
                            "seconds_default_measured"):
                    if key in r:
                        flat[f"{key}.{dk}.{name}"] = r[key]
        for name, s in result.get("quality", {}).get("summary", {}).items():
            for k, v in s.items():
                if isinstance(v, dict) and "mean" in v and np.isfinite(v["mean"]):
                    flat[f"quality.{name}.{k}"] = v["mean"]
                    if np.isfinite(v.get("se", np.nan)):
                        flat[f"quality.{name}.{k}.se"] = v["se"]
        root = os.environ.get("CAUSALMETA_ROOT", str(ROOT / ".causalmeta"))
        files = [args.out] + ([args.markdown] if args.markdown is not None and args.markdown.exists() else [])
        Tracker(root).log_benchmark("baselines", flat, files)
    return result


if __name__ == "__main__":
    main()
