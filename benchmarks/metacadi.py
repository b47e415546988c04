"""MetaCaDI benchmark: graph and intervention-target quality against BaCaDI and DCDI-unknown,
closed-form vs MAML adaptation time, and the sample-size-imbalance case.

Protocol (the paper's, at a reduced CPU size). A *system* is one test task of
``configs/priors/metacadi-gp.yaml`` or ``metacadi-sergio.yaml`` (``--n-systems`` of each,
default 20) with ``graph.n_nodes`` overridden by ``--n-nodes`` (default 10; the YAMLs have 20)
and 40 experiments of 110 rows. MetaCaDI (:mod:`pipeline_lib.models.metacadi`) meta-trains on
regimes 0..19 (10 support + 100 query rows) plus the 110 observational rows and adapts to each
meta-test regime 20..39 **one at a time from its first 10 rows**, in closed form.

Baselines (``registry.fit_baseline``, reduced budgets ``BASELINE_BUDGETS``, ``--budget``) fit
once per system on ``x_obs`` plus **all 40 experiments together**: the 20 meta-training regimes
with their 110 rows and the 20 meta-test regimes with the same 10 rows MetaCaDI sees, each
repeated 11 times (BaCaDI / DCDI take rectangular ``(K, n_int, d)`` regimes; repetition adds
no information, it gives every regime the same weight). They see all T' test experiments at
once, MetaCaDI one at a time, as in the paper (its App. C).

Reference row ``empty-graph``, from the truth: E-SHD = the number of true edges, E-SID = the
SID of the empty DAG (a posterior worse than these adds nothing over "no edges").

``--reuse-baselines JSON`` takes the BaCaDI / DCDI rows and the imbalance BaCaDI fits of a
stored result (same protocol and budgets, checked; rows carry a fingerprint of their system's
data) instead of refitting them, so that only MetaCaDI is recomputed.

Metrics (``pipeline_lib.metrics``): E-SHD and E-SID over 100 posterior DAG samples, edge
AUROC / AUPRC, Intv-AUROC / AUPRC over the (regime, node) entries of the 20 **meta-test**
regimes (the paper's headline; ``intv_*_train``: the meta-training regimes). Mean +- sd over
systems and Welch's two-sided p of every method against MetaCaDI.

Ablations and timing, on the first ``--maml-systems`` systems of each prior: MetaCaDI
with ``inner = intv_maml`` and ``full_maml`` (``inner_steps`` gradient steps), trained for
``MAML_STEPS`` outer steps only (CPU budget): the seconds per training step (epoch = one
outer step over all meta-training experiments) against the closed form, and the seconds to
adapt to the 20 meta-test experiments one at a time (``adapt``), closed form vs MAML, in
the same run. Their quality numbers are those of the short training (not comparable).

Imbalance (``--imbalance-systems``): BaCaDI refitted on the 20 meta-training regimes plus ONE
10-row experiment (meta-test regime 20, repeated 11 times); Intv-AUROC / AUPRC on that
regime's entries, pooled over systems, against MetaCaDI's closed-form adaptation to the same 10
rows (already part of the main fit).

Everything runs on ``torch.set_num_threads(--threads)`` (default 1), CPU. Results go to
``benchmarks/results/metacadi.json`` after every system and to
``storage.tracking.Tracker(root).log_benchmark("metacadi", ...)`` at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from pipeline_lib import metrics as M
from pipeline_lib.baselines.registry import fit_baseline
from pipeline_lib.models.metacadi import MetaCaDIConfig, fit_metacadi
from pipeline_lib.priors.config import PriorConfig
from pipeline_lib.priors.sampler import sample_split_range
from pipeline_lib.taskdata import restrict, task_slice

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "metacadi.json"

#: MetaCaDI at the CPU size (per_node predictor: see the README / report for the comparison)
METACADI = dict(steps=300)
#: the MAML ablations are trained for timing only (epoch and adaptation seconds): few outer steps
MAML_STEPS = 30
#: reduced from the method defaults (1000 SVGD steps, 20 particles, 128 MC; DCDI 20000 iterations)
BASELINE_BUDGETS = {
    "bacadi": dict(steps=100, n_particles=4, n_grad_mc=2),
    "dcdi-unknown": dict(max_iter=400),
}
T, T_TEST, N_TEST_ROWS = 20, 20, 10
GRAPH_KEYS = ("e_shd", "e_sid", "edge_auroc", "edge_auprc")


def system_config(name: str, n_nodes: int) -> PriorConfig:
    cfg = PriorConfig.from_yaml(ROOT / "configs" / "priors" / f"{name}.yaml")
    return cfg.model_copy(update={"graph": cfg.graph.model_copy(update={"n_nodes": n_nodes})})


def system_fingerprint(data: dict) -> str:
    """sha256[:12] of one system's truth and rows: a stored row is reused only for the same system."""
    h = hashlib.sha256()
    for key in ("adjacency", "int_targets", "x_obs", "x_int"):
        h.update(np.ascontiguousarray(data[key]).tobytes())
    return h.hexdigest()[:12]


def load_reuse(path: Path, args) -> dict:
    """Stored baseline rows per prior, if their protocol and budgets match this run's."""
    old = json.loads(Path(path).read_text())
    proto = old["protocol"]
    same = {"n_nodes": args.n_nodes, "T": T, "T_test": T_TEST, "n_test_rows": N_TEST_ROWS}
    bad = {k: (proto.get(k), v) for k, v in same.items() if proto.get(k) != v}
    bad.update({f"budget {b}": (proto["baselines"].get(b), args.budgets[b]) for b in args.baselines
                if proto["baselines"].get(b) != args.budgets[b]})
    if bad:
        raise SystemExit(f"--reuse-baselines {path}: protocol differs (stored, now): {bad}")
    return old["priors"]


def reuse_record(path: Path | None) -> dict | None:
    """Which stored result the baseline rows came from: its name and content hash (no machine path)."""
    if path is None:
        return None
    return {"file": Path(path).name, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def baseline_data(data: dict, test_regimes: slice) -> dict:
    """x_obs + the meta-training regimes (all rows) + the given meta-test regimes' first 10 rows,
    each repeated to the full row count (rectangular regimes)."""
    x_int = data["x_int"]
    reps = -(-x_int.shape[1] // N_TEST_ROWS)
    test = np.tile(x_int[test_regimes, :N_TEST_ROWS], (1, reps, 1))[:, : x_int.shape[1]]
    return {"x_obs": data["x_obs"], "x_int": np.concatenate([x_int[:T], test])}


def graph_scores(post, adj: np.ndarray) -> dict[str, float]:
    graphs = post.sample_graphs(100, np.random.default_rng(0))
    probs = post.edge_probs()
    return {"e_shd": float(M.expected_shd(adj, graphs)), "e_sid": float(M.expected_sid(adj, graphs)),
            "edge_auroc": float(M.edge_auroc(adj, probs)), "edge_auprc": float(M.edge_auprc(adj, probs))}


def empty_graph_scores(adj: np.ndarray) -> dict[str, float]:
    """The empty graph as a reference guess (no posterior, no targets): its SHD is the number of
    true edges, its SID that of the empty DAG; a graph posterior with higher E-SHD / E-SID is
    worse than answering "no edges"."""
    empty = np.zeros_like(adj)
    return {"e_shd": float(M.shd(adj, empty)), "e_sid": float(M.sid(adj, empty)), "n_true_edges": float(adj.sum())}


def target_scores(probs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    test = slice(T, T + T_TEST)
    return {"intv_auroc": float(M.intervention_auroc(truth[test], probs[test])),
            "intv_auprc": float(M.intervention_auprc(truth[test], probs[test])),
            "intv_auroc_train": float(M.intervention_auroc(truth[:T], probs[:T])),
            "intv_auprc_train": float(M.intervention_auprc(truth[:T], probs[:T]))}


def adapt_seconds(post, data: dict, repeats: int = 5) -> float:
    """Wall time to adapt to the 20 meta-test experiments one at a time (10 rows each): the
    median of ``repeats`` passes (one pass is ~0.1 s in closed form, too short to time once
    on a shared machine)."""
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for k in range(T, T + T_TEST):
            post.adapt(data["x_int"][k, :N_TEST_ROWS])
        passes.append(time.perf_counter() - start)
    return float(np.median(passes))


def run_metacadi(data: dict, cfg: MetaCaDIConfig) -> tuple[dict, object]:
    start = time.perf_counter()
    post = fit_metacadi(data, cfg)
    row = {"seconds": time.perf_counter() - start, "step_seconds": post.train_seconds / cfg.steps}
    row.update(graph_scores(post, data["adjacency"]))
    row.update(target_scores(post.intervention_target_probs(), data["int_targets"]))
    row["adapt_seconds"] = adapt_seconds(post, data)
    return row, post


def run_baseline(name: str, data: dict, budget: dict) -> tuple[dict, object]:
    start = time.perf_counter()
    post = fit_baseline(name, baseline_data(data, slice(T, T + T_TEST)), budget)
    row = {"seconds": time.perf_counter() - start}
    row.update(graph_scores(post, data["adjacency"]))
    probs = post.intervention_target_probs()  # regimes in the order given: train, then test
    row.update(target_scores(probs, data["int_targets"][: T + T_TEST]))
    return row, post


def summarise(rows: dict[str, list[dict]], reference: str = "metacadi") -> dict:
    """mean, sd, n per method and metric; Welch p against the reference method."""
    out = {}
    for method, rs in rows.items():
        keys = sorted({k for r in rs for k, v in r.items() if isinstance(v, (int, float))})
        out[method] = {}
        for k in keys:
            v = np.array([r.get(k, np.nan) for r in rs], dtype=float)
            v = v[np.isfinite(v)]
            cell = {"mean": float(v.mean()) if v.size else float("nan"),
                    "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan"), "n": int(v.size)}
            ref = np.array([r.get(k, np.nan) for r in rows.get(reference, [])], dtype=float)
            if method != reference and v.size > 1 and np.isfinite(ref).sum() > 1:
                cell["welch_p_vs_" + reference] = M.welch_test(v, ref)[1]
            out[method][k] = cell
    return out


def bench_prior(name: str, args, result: dict, save):
    """Runs the systems of one prior, saving and yielding after each (``--interleave`` alternates priors)."""
    cfg = system_config(name, args.n_nodes)
    batch = sample_split_range(cfg, "test", 0, args.n_systems)
    res = result["priors"].setdefault(name, {"rows": {}, "imbalance": {"truth": [], "metacadi": [], "bacadi": []}})
    rows = res["rows"]
    mc_cfg = MetaCaDIConfig(**{**METACADI, **args.metacadi})
    stored = (args.reuse or {}).get(name, {})
    for i in range(args.n_systems):
        data = restrict(task_slice(batch, i))
        system = system_fingerprint(data)
        rows.setdefault("empty-graph", []).append({"system": system, **empty_graph_scores(data["adjacency"])})
        row, post = run_metacadi(data, mc_cfg)
        row["system"] = system
        rows.setdefault("metacadi", []).append(row)
        print(f"[{name} {i}] metacadi {row['seconds']:.0f}s intv {row['intv_auroc']:.3f}/{row['intv_auprc']:.3f} "
              f"edge {row['edge_auroc']:.3f}", flush=True)
        if i < args.maml_systems:
            for inner in ("intv_maml", "full_maml"):
                r, _ = run_metacadi(data, mc_cfg.model_copy(update={"inner": inner, "steps": MAML_STEPS}))
                # in the same run: how much slower this inner loop is than the closed form
                r["adapt_over_closed_form"] = r["adapt_seconds"] / row["adapt_seconds"]
                r["step_over_closed_form"] = r["step_seconds"] / row["step_seconds"]
                rows.setdefault(f"metacadi-{inner.replace('_', '-')}", []).append(r)
                print(f"[{name} {i}] {inner} step {r['step_seconds']:.3f}s adapt {r['adapt_seconds']:.2f}s "
                      f"({r['adapt_over_closed_form']:.1f}x; closed form {row['step_seconds']:.3f}s / {row['adapt_seconds']:.2f}s)", flush=True)
        for base in args.baselines:
            kept = stored.get("rows", {}).get(base, [])
            # --reuse-baselines: rows stored before fingerprints were kept carry none (protocol checked)
            reused = i < len(kept) and kept[i].get("system", system) == system
            if reused:
                r = {**kept[i], "system": system}
            else:
                try:
                    r, _ = run_baseline(base, data, args.budgets[base])
                except Exception as exc:  # a failed fit is recorded, not fatal (e.g. all particles cyclic)
                    r = {"error": f"{type(exc).__name__}: {exc}"}
                r["system"] = system
            rows.setdefault(base, []).append(r)
            print(f"[{name} {i}] {base} {r.get('seconds', 0):.0f}s intv {r.get('intv_auroc', np.nan):.3f} "
                  f"edge {r.get('edge_auroc', np.nan):.3f}{' (reused)' if reused else ''}", flush=True)
        if i < args.imbalance_systems:
            imb = res["imbalance"]
            imb["truth"].append(data["int_targets"][T].tolist())
            imb["metacadi"].append(post.intervention_target_probs()[T].tolist())
            kept = stored.get("imbalance", {})
            if i < len(kept.get("bacadi", [])) and kept["truth"][i] == imb["truth"][-1]:
                imb["bacadi"].append(kept["bacadi"][i])  # --reuse-baselines (same regime targets checked)
            else:
                try:
                    bpost = fit_baseline("bacadi", baseline_data(data, slice(T, T + 1)), args.budgets["bacadi"])
                    imb["bacadi"].append(bpost.intervention_target_probs()[T].tolist())
                except Exception as exc:
                    imb["bacadi"].append(None)
                    imb.setdefault("errors", []).append(f"{type(exc).__name__}: {exc}")
        res["summary"] = summarise(rows)
        res["imbalance"]["summary"] = summarise_imbalance(res["imbalance"])
        save()
        yield i


def summarise_imbalance(imb: dict) -> dict:
    """Pooled Intv-AUROC / AUPRC over the one 10-row regime of each system."""
    ok = [k for k, b in enumerate(imb["bacadi"]) if b is not None]
    if not ok:
        return {}
    truth = np.array([imb["truth"][k] for k in ok], dtype=bool)
    out = {"n_systems": len(ok)}
    for method in ("metacadi", "bacadi"):
        probs = np.array([imb[method][k] for k in ok])
        if truth.any() and not truth.all():
            out[method] = {"intv_auroc": float(M.intervention_auroc(truth, probs)),
                           "intv_auprc": float(M.intervention_auprc(truth, probs))}
    return out


def parse_budgets(items) -> dict:
    budgets = {k: dict(v) for k, v in BASELINE_BUDGETS.items()}
    for item in items or []:
        name, *pairs = item
        for pair in pairs:
            key, val = pair.split("=", 1)
            budgets.setdefault(name, {})[key] = json.loads(val)
    return budgets


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--priors", nargs="+", default=["metacadi-gp", "metacadi-sergio"])
    ap.add_argument("--n-systems", type=int, default=20)
    ap.add_argument("--n-nodes", type=int, default=10)
    ap.add_argument("--maml-systems", type=int, default=2)
    ap.add_argument("--imbalance-systems", type=int, default=10)
    ap.add_argument("--baselines", nargs="*", default=["bacadi", "dcdi-unknown"])
    ap.add_argument("--budget", nargs="+", action="append", metavar="NAME KEY=VALUE")
    ap.add_argument("--metacadi", nargs="*", default=[], metavar="KEY=VALUE", help="MetaCaDIConfig overrides")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--interleave", action="store_true",
                    help="alternate the priors system by system (a run cut short still covers each prior)")
    ap.add_argument("--reuse-baselines", type=Path, default=None, metavar="JSON",
                    help="take the baseline rows (and the imbalance BaCaDI fits) of a stored result with the same "
                         "protocol and budgets instead of refitting them; only MetaCaDI is recomputed")
    ap.add_argument("--no-mlflow", action="store_true")
    ap.add_argument("--merge", nargs="+", type=Path, default=None,
                    help="only merge result files of runs on disjoint --priors into --out (and log them)")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out, not args.no_mlflow)
    args.budgets = parse_budgets(args.budget)
    args.metacadi = {k: json.loads(v) for k, v in (p.split("=", 1) for p in args.metacadi)}
    args.reuse = load_reuse(args.reuse_baselines, args) if args.reuse_baselines else None
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = {
        "protocol": {"n_systems": args.n_systems, "n_nodes": args.n_nodes, "T": T, "T_test": T_TEST,
                     "n_support": 10, "n_query": 100, "n_test_rows": N_TEST_ROWS, "threads": args.threads,
                     "metacadi": {**METACADI, **args.metacadi}, "baselines": args.budgets,
                     "metacadi_config": MetaCaDIConfig(**{**METACADI, **args.metacadi}).model_dump(),
                     "maml_systems": args.maml_systems, "imbalance_systems": args.imbalance_systems,
                     "reused_baselines": reuse_record(args.reuse_baselines),
                     "interleave": args.interleave},
        "machine": {"load_start": os.getloadavg()},
        "priors": {},
    }

    def save() -> None:
        result["total_seconds"] = time.perf_counter() - start
        result["machine"]["load_now"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=float))

    runs = [bench_prior(name, args, result, save) for name in args.priors]
    for _ in (itertools.zip_longest(*runs) if args.interleave else itertools.chain(*runs)):
        pass  # every system saved as it ends: an interrupted run keeps what finished
    save()
    if not args.no_mlflow:
        log_result(result, args.out)
    print(f"wrote {args.out} in {result['total_seconds']:.0f} s")
    return result


def merge(files: list[Path], out: Path, mlflow: bool) -> dict:
    """One result from runs on disjoint priors (e.g. one process per prior)."""
    parts = [json.loads(Path(f).read_text()) for f in files]
    result = {"protocol": parts[0]["protocol"], "machine": [p["machine"] for p in parts],
              "total_seconds": max(p["total_seconds"] for p in parts),
              "priors": {k: v for p in parts for k, v in p["priors"].items()}}
    out.write_text(json.dumps(result, indent=1, default=float))
    if mlflow:
        log_result(result, out)
    return result


def log_result(result: dict, out: Path) -> None:
    """Summary means (and the imbalance case) to ``Tracker.log_benchmark("metacadi")``."""
    from storage.tracking import Tracker

    flat = {"total_seconds": result["total_seconds"]}
    for name, res in result["priors"].items():
        for method, cells in res.get("summary", {}).items():
            for k, c in cells.items():
                flat[f"{name}.{method}.{k}"] = c["mean"]
        for method, cells in res["imbalance"].get("summary", {}).items():
            if isinstance(cells, dict):
                for k, v in cells.items():
                    flat[f"{name}.imbalance.{method}.{k}"] = v
    root = os.environ.get("CAUSALMETA_ROOT", str(ROOT / ".causalmeta"))
    params = {k: result["protocol"][k] for k in ("n_nodes", "n_systems", "maml_systems", "imbalance_systems")}
    Tracker(root).log_benchmark("metacadi", flat, [out], params=params)


if __name__ == "__main__":
    main()
