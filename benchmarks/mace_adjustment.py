"""The MACE-TNP paper's adjustment check (issue 13): trained on complete 3-node DAGs, scored on
confounder vs mediator queries.

On a complete DAG over three nodes with causal order a < b < c, every task's hard single-target
regimes give six queries do(X_j = v) -> X_i, and the role of the third node k decides what a
correct answer must do:

* **confounder** (do(b) -> c, k = a: a -> b, a -> c): p(c | do(b)) = E_a[p(c | b, a)] -- the
  observational conditional p(c | b) is biased, a must be adjusted for;
* **mediator** (do(a) -> c, k = b: a -> b -> c): p(c | do(a)) = p(c | a) -- adjusting for b
  would block the indirect effect;
* **child of both** (do(a) -> b, k = c): p(b | do(a)) = p(b | a); k must not be conditioned on;
* **no effect** (do(b) -> a, do(c) -> a, do(c) -> b): the outcome's marginal.

The order is random per task (node labels permuted), so a method must find it from the data:
with NN mechanisms and additive noise it is identifiable, while the linear-Gaussian BGe
posterior cannot orient a complete DAG (all six orders are one Markov class) and averages them.

Per query type: NLPID (sum over the 500 interventional samples of the query, mean +- s.e. over
tasks), Welch p vs the best method, and the captured fraction of the empty-graph -> oracle gap.
Per-task, per-query results are written after every task to ``--out``; ``--resume`` continues.
MLflow: experiment ``benchmarks``, run ``--run-name``::

    .venv/bin/causalmeta benchmark --spec configs/benchmarks/mace-fc-quick.yaml --root ROOT
    .venv/bin/python benchmarks/mace_adjustment.py --root ROOT --n-tasks 100
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
sys.path.insert(0, str(REPO / "benchmarks"))

from mace_paper import MACE, REFERENCES, load_model, nlpid_rows, parse_baseline  # noqa: E402

from pipeline_lib import metrics as M  # noqa: E402
from pipeline_lib.evaluation import make_queries, restrict, task_slice  # noqa: E402
from pipeline_lib.priors import sample_split_range  # noqa: E402

ROLES = ("confounder", "mediator", "child of both", "no effect")
DEFAULT_BASELINES = {"exact": {"graph_prior": "random_order_er", "edge_prob": 0.99},
                     "dibs": {"steps": 300}, "empty-graph": {}, "oracle": {}}


def query_roles(adj: np.ndarray, j: np.ndarray, i: np.ndarray) -> list[str]:
    """The role of the third node of each 3-node query do(X_j) -> X_i (module docstring);
    ``adj[u, v] = 1`` iff u -> v."""
    desc = np.linalg.matrix_power(adj.astype(int) + np.eye(3, dtype=int), 3) > 0  # desc[u, v]: v reachable from u
    out = []
    for jq, iq in zip(j, i):
        k = 3 - jq - iq
        if not desc[jq, iq]:
            out.append("no effect")
        elif adj[k, jq] and adj[k, iq]:
            out.append("confounder")
        elif adj[jq, k] and adj[k, iq]:
            out.append("mediator")
        elif adj[jq, k] and adj[iq, k]:
            out.append("child of both")
        else:
            out.append("other")
    return out


def per_query_nlpid(answer, q) -> np.ndarray:
    """``(Q,)`` NLPID (summed over each query's samples) of one answer."""
    logp = np.asarray(answer.log_density_batch(q.j, q.a, q.i, q.samples).log_density)
    if not np.all(np.isfinite(logp)):
        raise FloatingPointError("log densities of the true interventional samples are not finite")
    return -logp.sum(axis=1)


def summarise(per_task: dict[str, dict[int, dict[str, float]]]) -> dict:
    """Per role: mean +- s.e. over the tasks every method finished, Welch p vs the best
    non-reference method, captured fraction (+- paired s.e.)."""
    common = sorted(set.intersection(*(set(v) for v in per_task.values())))
    out: dict = {"tasks": common, "n_tasks": len(common), "roles": {}}
    for role in ROLES:
        arrays = {m: np.array([v[t][role] for t in common if role in v[t]]) for m, v in per_task.items()}
        if not all(len(a) for a in arrays.values()):
            continue
        best, rows = nlpid_rows(arrays)
        out["roles"][role] = {"best": best, "n": len(arrays[best]), "rows": rows}
    return out


def markdown(summary: dict) -> str:
    roles = summary["roles"]
    methods = list(next(iter(roles.values()))["rows"])
    lines = ["| query (third node) | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for role, r in roles.items():
        cells = []
        for m in methods:
            row = r["rows"][m]
            txt = f"{row['nlpid_mean']:.0f} ± {row['nlpid_se']:.1f}"
            txt = f"**{txt}**" if m == r["best"] else txt
            if "welch_p_vs_best" in row:
                txt += f" (p={row['welch_p_vs_best']:.2g})"
            if "captured" in row and m not in REFERENCES and role != "no effect":  # no gap to capture
                txt += f", captured {row['captured']:.2f}"
            cells.append(txt)
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="mace-nn-3node-fc", help="a 3-node prior of complete DAGs (test tasks)")
    ap.add_argument("--train-spec", type=Path, default=REPO / "configs/benchmarks/mace-fc-quick.yaml",
                    help="benchmark spec whose training registered the model")
    ap.add_argument("--model-version", type=int, help="registered causalmeta-mace-tnp version")
    ap.add_argument("--n-tasks", type=int, default=100)
    ap.add_argument("--baseline", action="append", default=None,
                    help="name[:JSON config], repeatable (default: exact, dibs 300 steps, empty-graph, oracle)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/mace_adjustment.json")
    ap.add_argument("--resume", action="store_true", help="keep the per-task results already in --out")
    ap.add_argument("--run-name", default="mace_adjustment")
    ap.add_argument("--root", default=os.environ.get("CAUSALMETA_ROOT", ".causalmeta"))
    ap.add_argument("--no-mlflow", action="store_true")
    args = ap.parse_args(argv)
    if args.n_tasks < 1:
        raise SystemExit(f"--n-tasks={args.n_tasks}: need >= 1")

    import torch

    torch.set_num_threads(1)
    from flows.spec import load_prior
    from pipeline_lib.baselines.registry import fit_baseline
    from pipeline_lib.models.registry import get_method

    config = load_prior(args.prior)
    if config.graph.kind != "fully_connected" or config.graph.n_nodes != 3:
        raise SystemExit(f"--prior {args.prior}: needs complete DAGs on 3 nodes (graph.kind fully_connected, "
                         f"n_nodes 3), got {config.graph.kind} / {config.graph.n_nodes}")
    baselines = dict(parse_baseline(b) for b in args.baseline) if args.baseline else dict(DEFAULT_BASELINES)
    model, version = load_model(args.root, args.model_version, args.train_spec)
    label = f"{MACE} v{version}"
    state = json.loads(args.out.read_text()) if args.resume and args.out.exists() else {}
    if state and state.get("prior_hash") != config.content_hash():
        raise SystemExit(f"--resume: {args.out} holds another prior ({str(state.get('prior_hash'))[:12]})")
    per_task = {m: {int(t): v for t, v in d.items()} for m, d in state.get("per_task_by_method", {}).items()}
    meta = {"prior": config.name, "prior_hash": config.content_hash(), "n_obs": config.n_obs,
            "samples_per_query": config.n_int, "model": label, "train_spec": str(args.train_spec),
            "baselines": baselines}

    def save(summary=None):
        doc = {**meta, "per_task_by_method": per_task, **(summary or {})}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=float))
        tmp.replace(args.out)

    batch = sample_split_range(config, "test", 0, args.n_tasks)
    spec = get_method(MACE)
    for t in range(args.n_tasks):
        task = task_slice(batch, t)
        task["scm"] = {"config": config.to_json(), "split": "test", "index": t}
        data = restrict(task)
        q = make_queries(task)
        roles = query_roles(data["adjacency"], q.j, q.i)
        answers = {label: lambda: spec.predict(model, task)}
        answers.update({name: (lambda name=name, cfg=cfg: fit_baseline(name, data, cfg)) for name, cfg in baselines.items()})
        t0 = time.perf_counter()
        for name, make in answers.items():
            if t in per_task.get(name, {}):
                continue
            nl = per_query_nlpid(make(), q)
            by_role = {}
            for role in set(roles):
                by_role[role] = float(np.mean(nl[[r == role for r in roles]]))
            per_task.setdefault(name, {})[t] = by_role
        save()
        print(f"task {t}: {time.perf_counter() - t0:.1f} s", flush=True)
    summary = summarise(per_task)
    save(summary)
    print(markdown(summary))
    if not args.no_mlflow:
        from storage.tracking import Tracker

        flat = {f"{role.replace(' ', '_')}.{m}.{k}": v for role, r in summary["roles"].items()
                for m, row in r["rows"].items() for k, v in row.items()}
        flat["n_tasks"] = summary["n_tasks"]
        Tracker(args.root).log_benchmark(args.run_name, flat, [args.out],
                                         params={k: v for k, v in meta.items() if k != "baselines"}
                                         | {"baselines": json.dumps(baselines)})
    return summary


if __name__ == "__main__":
    main()
