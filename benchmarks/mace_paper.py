"""The MACE-TNP paper table (issue 13) on one 3-node paper prior, at CPU scale.

Protocol (arXiv 2507.05526 as issue 13 reads it): test tasks ``0 .. n-1`` of the prior's test
split as configured (``mace-nn-3node`` / ``mace-gp-3node``: 500 observational rows, 3 hard
single-target queries x 2 outcomes per task, 500 interventional samples each); NLPID = per-task
sum over the 500 samples, mean over the task's queries; mean +- s.e. over tasks, Welch p against
the best non-reference method, the empty graph (non-causal) and the oracle (true SCM) as
references, and the captured fraction (empty - method) / (empty - oracle) of mean NLPID.

MACE-TNP is a registered model: ``--model-version N``, or the model registered for the prior
of a benchmark spec (``--train-spec configs/benchmarks/mace-gp-quick.yaml``: the spec's first
prior with its ``prior_overrides``, whose hash names the trained model). Baselines are fitted
per task with ``evaluate_baseline`` (seed = task index), as ``causalmeta benchmark`` does.

Per-task results are written after every task to ``--out`` (JSON), so an interrupted run
keeps what it finished and ``--resume`` continues it; the table is computed from the tasks
every method finished. Logged to MLflow (experiment ``benchmarks``, run ``--run-name``)::

    nice -n 10 .venv/bin/python benchmarks/mace_paper.py --prior mace-gp-3node \\
        --train-spec configs/benchmarks/mace-gp-quick.yaml --n-tasks 100 \\
        --out benchmarks/results/mace_paper_gp.json --run-name mace_paper_gp
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline_lib import metrics as M  # noqa: E402
from pipeline_lib.evaluation import evaluate_amortized_many, evaluate_baseline, task_slice  # noqa: E402
from pipeline_lib.priors import sample_split_range  # noqa: E402

MACE = "mace-tnp"
REFERENCES = ("empty-graph", "oracle")
# the baselines of the NN table (benchmarks/results/mace_paper_nn.json), same budgets
DEFAULT_BASELINES = {"exact": {"graph_prior": "random_order_er", "edge_prob": 0.75},
                     "dibs": {"steps": 300}, "empty-graph": {}, "oracle": {}}


def parse_baseline(text: str) -> tuple[str, dict]:
    """``"dibs"`` or ``"dibs:{\"steps\": 300}"`` -> (name, config)."""
    name, _, cfg = text.partition(":")
    try:
        config = json.loads(cfg) if cfg else {}
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--baseline {text!r}: the config after ':' is not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise SystemExit(f"--baseline {text!r}: the config after ':' must be a JSON object")
    return name, config


def load_model(root: str, version: int | None, train_spec: Path | None):
    from storage.tracking import Tracker

    tracker = Tracker(root)
    if version is None:
        if train_spec is None:
            raise SystemExit("give --model-version or --train-spec (the spec whose training registered the model)")
        from flows.spec import load_spec

        cfg = load_spec(train_spec).prior_configs()[0]
        version = tracker.registered_model_for_prior(MACE, cfg.content_hash())
        if version is None:
            raise SystemExit(f"--train-spec {train_spec}: no registered {MACE} model for prior {cfg.name} "
                             f"hash {cfg.content_hash()[:12]} (run `causalmeta benchmark --spec {train_spec}` first)")
    return tracker.load_registered_model(MACE, int(version)), int(version)


def fit_observational(name: str, cfg: dict, task: dict, seed: int) -> tuple[dict, dict]:
    """``evaluate_baseline`` with the fit shown no interventional regime (x_int, int_targets,
    int_values of zero regimes); the queries are scored on the full task as usual.
    Returns (metrics, info)."""
    from pipeline_lib.baselines.registry import convergence_of, fit_baseline
    from pipeline_lib.evaluation import evaluate_answer, restrict

    data = restrict(task)
    data = {**data, "x_int": data["x_int"][:0], "int_targets": data["int_targets"][:0],
            "int_values": data["int_values"][:0]}
    t0 = time.perf_counter()
    answer = fit_baseline(name, data, cfg)
    metrics = {"runtime_s": time.perf_counter() - t0}
    converged, note = convergence_of(name, answer)
    metrics.update(evaluate_answer(answer, task, seed=seed))
    return metrics, {"converged": converged, "convergence": note}


def nlpid_rows(arrays: dict[str, np.ndarray]) -> tuple[str, dict]:
    """(best method, rows) of one table: per method (arrays of per-task NLPID over the same
    tasks) mean +- s.e., Welch p vs the best non-reference method and vs the empty graph, and
    the captured fraction with its paired s.e. where both references are present."""
    methods = [m for m in arrays if m not in REFERENCES]
    best = min(methods, key=lambda m: arrays[m].mean())
    empty, oracle = arrays.get("empty-graph"), arrays.get("oracle")
    rows = {}
    for m, a in arrays.items():
        mean, se = M.mean_se(a)
        row = {"nlpid_mean": mean, "nlpid_se": se, "per_task": a.tolist()}
        if m in methods and m != best:
            row["welch_p_vs_best"] = M.welch_test(a, arrays[best])[1]
        if empty is not None and m != "empty-graph":
            row["welch_p_vs_empty"] = M.welch_test(a, empty)[1]
        if empty is not None and oracle is not None:
            row["captured"] = M.captured_fraction(mean, float(empty.mean()), float(oracle.mean()))
            row["captured_se"] = M.captured_se(*(dict(enumerate(x)) for x in (a, empty, oracle)))
        rows[m] = row
    return best, rows


def summarise(per_task: dict[str, dict[int, float]], mace: str | None = None) -> dict:
    """Table of the tasks every method finished: mean +- s.e., Welch p vs the best method and vs
    the empty graph, captured fraction; best baseline / MACE-TNP (the row ``mace``, the model of
    this run, where merged files bring other MACE-TNP rows; else the first MACE-TNP row)."""
    common = sorted(set.intersection(*(set(v) for v in per_task.values())))
    arrays = {m: np.array([v[t] for t in common]) for m, v in per_task.items()}
    methods = [m for m in arrays if m not in REFERENCES]
    best, rows = nlpid_rows(arrays)
    out = {"tasks": common, "n_tasks": len(common), "best": best, "rows": rows}
    mace = mace if mace in arrays else next((m for m in methods if m.startswith(MACE)), None)
    baselines = [m for m in methods if not m.startswith(MACE)]
    if mace and baselines:
        out["best_baseline"] = min(baselines, key=lambda m: arrays[m].mean())
        out["best_baseline_over_mace"] = float(arrays[out["best_baseline"]].mean() / arrays[mace].mean())
        out["mace"] = mace
    return out


def markdown(summary: dict) -> str:
    rows = summary["rows"]
    head = "| | " + " | ".join(rows) + " |"
    cells = []
    for m, r in rows.items():
        txt = f"{r['nlpid_mean']:.0f} ± {r['nlpid_se']:.1f}"
        txt = f"**{txt}**" if m == summary["best"] else txt
        if "welch_p_vs_best" in r:
            txt += f" (p={r['welch_p_vs_best']:.2g})"
        cells.append(txt)
    cap = [f"{r['captured']:.2f} ± {r['captured_se']:.2f}" if "captured" in r else "-" for r in rows.values()]
    return "\n".join([head, "|---" * (len(rows) + 1) + "|", "| NLPID | " + " | ".join(cells) + " |",
                      "| captured fraction | " + " | ".join(cap) + " |"]) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="mace-gp-3node", help="shipped prior name or config YAML (test tasks)")
    ap.add_argument("--train-spec", type=Path, help="benchmark spec whose training registered the model")
    ap.add_argument("--model-version", type=int, help="registered causalmeta-mace-tnp version")
    ap.add_argument("--n-tasks", type=int, default=100)
    ap.add_argument("--baseline", action="append", default=None,
                    help="name[:JSON config], repeatable (default: exact, dibs 300 steps, empty-graph, oracle)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/mace_paper_gp.json")
    ap.add_argument("--resume", action="store_true", help="keep the per-task results already in --out")
    ap.add_argument("--merge", type=Path, action="append", default=[],
                    help="a JSON of another run of this script on the same prior (e.g. the oracle run "
                         "alone): its per-task results are taken over, repeatable")
    ap.add_argument("--fit-obs-only", action="store_true",
                    help="fit the baselines on the observational rows alone (rows named NAME-obs): the "
                         "task's interventional regimes ARE the NLPID test samples, so a method that sees "
                         "x_int (DCDI) otherwise fits on the samples it is scored on")
    ap.add_argument("--run-name", default=None, help="MLflow run name (default: mace_paper_<prior>)")
    ap.add_argument("--root", default=os.environ.get("CAUSALMETA_ROOT", ".causalmeta"))
    ap.add_argument("--no-mlflow", action="store_true")
    ap.add_argument("--skip-mace", action="store_true",
                    help="baselines only (e.g. while the model trains); a later --resume run adds MACE-TNP")
    args = ap.parse_args(argv)
    if args.n_tasks < 1:
        raise SystemExit(f"--n-tasks={args.n_tasks}: need >= 1")

    import torch

    torch.set_num_threads(1)
    from flows.spec import load_prior

    config = load_prior(args.prior)
    baselines = dict(parse_baseline(b) for b in args.baseline) if args.baseline else dict(DEFAULT_BASELINES)
    model, version = (None, None) if args.skip_mace else load_model(args.root, args.model_version, args.train_spec)
    label = f"{MACE} v{version}"
    state = json.loads(args.out.read_text()) if args.resume and args.out.exists() else {}
    per_task = {m: {int(t): v for t, v in d.items()} for m, d in state.get("per_task_by_method", {}).items()}
    runtime = {m: {int(t): v for t, v in d.items()} for m, d in state.get("runtime_by_method", {}).items()}
    not_converged = {m: {int(t): v for t, v in d.items()} for m, d in state.get("not_converged", {}).items()}
    for other in args.merge:
        doc = json.loads(other.read_text())
        # session 5's file has no hash: its prior name must match (it was scored on the same config)
        if doc.get("prior_hash", config.content_hash()) != config.content_hash() or doc.get("prior") != config.name:
            raise SystemExit(f"--merge {other}: prior hash {str(doc.get('prior_hash'))[:12]} is not "
                             f"{config.name}'s {config.content_hash()[:12]}")
        if "per_task_by_method" not in doc and "rows" in doc:  # session 5's mace_paper_nn.json: rows of per-task lists
            doc["per_task_by_method"] = {m.replace("(", "").replace(")", ""): dict(zip(doc["tasks"], r["per_task"]))
                                         for m, r in doc["rows"].items()}  # MLflow names take no parentheses
        for key, into in (("per_task_by_method", per_task), ("runtime_by_method", runtime),
                          ("not_converged", not_converged)):
            for m, d in doc.get(key, {}).items():
                into.setdefault(m, {}).update({int(t): v for t, v in d.items()})
    meta = {"prior": config.name, "prior_hash": config.content_hash(), "n_obs": config.n_obs,
            "samples_per_query": config.n_int, "model": None if args.skip_mace else label, "train_spec": str(args.train_spec or ""),
            "baselines": baselines}

    def save(summary=None):
        doc = {**meta, "per_task_by_method": per_task, "runtime_by_method": runtime, "not_converged": not_converged}
        if summary:
            doc.update(summary)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=float))
        tmp.replace(args.out)

    batch = sample_split_range(config, "test", 0, args.n_tasks)
    tasks = [task_slice(batch, t) for t in range(args.n_tasks)]
    for t, task in enumerate(tasks):
        task["scm"] = {"config": config.to_json(), "split": "test", "index": t}
    todo = [] if args.skip_mace else [t for t in range(args.n_tasks) if t not in per_task.get(label, {})]
    if todo:
        res = evaluate_amortized_many(MACE, model, [tasks[t] for t in todo], seeds=todo)
        for t, (metrics, _) in zip(todo, res):
            per_task.setdefault(label, {})[t] = metrics["nlpid"]
            runtime.setdefault(label, {})[t] = metrics["runtime_s"]
        save()

    def label_of(name: str) -> str:
        return f"{name}-obs" if args.fit_obs_only else name

    for t in range(args.n_tasks):  # task-major: an interrupted run has every method on its first tasks
        for name, cfg in baselines.items():
            if t in per_task.get(label_of(name), {}):
                continue
            t0 = time.perf_counter()
            info: dict = {}
            if args.fit_obs_only:
                metrics, info = fit_observational(name, cfg, tasks[t], seed=t)
            else:
                metrics, _ = evaluate_baseline(name, cfg, tasks[t], seed=t, info=info)
            if info.get("converged") is False:  # named in the table, as the benchmark report does
                not_converged.setdefault(label_of(name), {})[t] = str(info.get("convergence", ""))
            per_task.setdefault(label_of(name), {})[t] = metrics["nlpid"]
            runtime.setdefault(label_of(name), {})[t] = metrics["runtime_s"]
            print(f"task {t} {name}: nlpid {metrics['nlpid']:.1f} ({time.perf_counter() - t0:.1f} s)", flush=True)
        save()
    if args.skip_mace and not any(m.startswith(MACE) for m in per_task):
        print("baselines done (--skip-mace): run again with --resume and the model for the table")
        return {}
    summary = summarise(per_task, None if args.skip_mace else label)
    summary["not_converged_tasks"] = {m: len(set(d) & set(summary["tasks"])) for m, d in not_converged.items()}
    summary["runtime_s_mean"] = {m: float(np.mean([v[t] for t in summary["tasks"]])) for m, v in runtime.items()}
    save(summary)
    print(markdown(summary))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("rows", "tasks")}, default=float))
    if not args.no_mlflow:
        from storage.tracking import Tracker

        flat = {f"{m}.{k}": v for m, r in summary["rows"].items() for k, v in r.items() if k != "per_task"}
        flat.update({k: summary[k] for k in ("n_tasks", "best_baseline_over_mace") if k in summary})
        Tracker(args.root).log_benchmark(args.run_name or f"mace_paper_{config.name}", flat, [args.out],
                                         params={k: v for k, v in meta.items() if k != "baselines"}
                                         | {"baselines": json.dumps(baselines)})
    return summary


if __name__ == "__main__":
    main()
