"""Cond-FiP given a *predicted* graph instead of the true one (issue 15).

Two steps (they can run at different times):

1. ``--fit-graphs``: DiBS (marginal BGe likelihood, :func:`pipeline_lib.baselines.dibs`) on the
   observational rows of the first ``--n-test`` test tasks of ``condfip-lin-20``; its edge
   marginals are thresholded at 0.5 and made acyclic greedily (edges added by decreasing
   probability, one that closes a cycle is skipped); the graphs go to ``--graphs`` (npz).
2. ``--score``: the LIN Cond-FiP of :mod:`benchmarks.cond_fip` (``<root>/bench-cond-fip/lin.pt``)
   and the ``anm-linear`` fit, each given the true graph and the predicted one, scored with
   :func:`benchmarks.cond_fip.score_generator` (noise / sample / interventional /
   counterfactual RMSE on standardised data), plus the SHD and edge AUROC of the prediction.
   Result: ``benchmarks/results/cond_fip_graph.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.cond_fip import METRICS, score_generator, summarise  # noqa: E402
from pipeline_lib.baselines.anm import ANMConfig, fit_anm  # noqa: E402
from pipeline_lib.baselines.registry import fit_baseline  # noqa: E402
from pipeline_lib.metrics.graph import edge_auroc, is_dag, shd  # noqa: E402
from pipeline_lib.metrics.stats import mean_se  # noqa: E402
from pipeline_lib.models.cond_fip import CondFiP, CondFiPConfig, predict, preset  # noqa: E402
from pipeline_lib.priors import PriorConfig  # noqa: E402
from pipeline_lib.priors.sampler import sample_split_range  # noqa: E402
from pipeline_lib.taskdata import restrict, task_slice  # noqa: E402


def greedy_dag(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Edges with ``P(i -> j) >= threshold`` added by decreasing probability; an edge that would
    close a cycle is skipped. ``(d, d)`` uint8, ``A[i, j] = 1`` iff ``i -> j``."""
    p = np.asarray(probs, dtype=np.float64)
    d = p.shape[0]
    adj = np.zeros((d, d), dtype=np.uint8)
    reach = np.eye(d, dtype=bool)  # reach[a, b]: a path a -> ... -> b
    for flat in np.argsort(-p, axis=None, kind="stable"):
        i, j = divmod(int(flat), d)
        if p[i, j] < threshold:
            break
        if i == j or reach[j, i]:
            continue
        adj[i, j] = 1
        reach |= reach[:, [i]] & reach[[j], :]  # every a reaching i now reaches every b reached from j
    assert is_dag(adj)
    return adj


def fit_graphs(prior: PriorConfig, args) -> None:
    tasks = sample_split_range(prior, "test", 0, args.n_test)
    probs, graphs, secs = [], [], []
    if Path(args.graphs).exists():  # resume: the tasks already fitted are kept
        done = np.load(args.graphs)
        if int(done["dibs_steps"]) != args.dibs_steps:
            raise SystemExit(f"{args.graphs} holds DiBS graphs of {int(done['dibs_steps'])} steps, not {args.dibs_steps}")
        probs, graphs, secs = list(done["probs"]), list(done["graphs"]), list(done["seconds"])
    for t in range(len(graphs), args.n_test):
        data = restrict(task_slice(tasks, t))
        t0 = time.perf_counter()
        post = fit_baseline("dibs", {"x_obs": data["x_obs"]}, {"steps": args.dibs_steps, "seed": args.seed})
        secs.append(time.perf_counter() - t0)
        p = np.asarray(post.edge_probs())
        probs.append(p)
        graphs.append(greedy_dag(p))
        print(t + 1, f"{secs[-1]:.0f} s, SHD {shd(data['adjacency'], graphs[-1])}, edges {graphs[-1].sum()} "
              f"(true {data['adjacency'].sum()})", flush=True)
        np.savez(args.graphs, probs=np.stack(probs), graphs=np.stack(graphs), seconds=np.array(secs),
                 dibs_steps=args.dibs_steps)


def score(prior: PriorConfig, args) -> dict:
    root = Path(args.root)
    meta = root / "bench-cond-fip" / "lin.json"
    # the state dict is written right after training, the json after the first evaluated split
    part = json.loads(meta.read_text()) if meta.exists() else {
        "model": preset(args.preset).model_dump(), "train": {"steps": None, "procedure": "see benchmarks/cond_fip.py"}}
    model = CondFiP(CondFiPConfig(**part["model"]))
    model.load_state_dict(torch.load(root / "bench-cond-fip" / "lin.pt", map_location="cpu", weights_only=True))
    model.eval()
    saved = np.load(args.graphs)
    n = len(saved["graphs"])
    tasks = sample_split_range(prior, "test", 0, n)
    rows = {k: [] for k in ("cond-fip/true", "cond-fip/predicted", "anm-linear/true", "anm-linear/predicted")}
    shds, aurocs = [], []
    for t in range(n):
        data = restrict(task_slice(tasks, t))
        g = saved["graphs"][t]
        shds.append(shd(data["adjacency"], g))
        aurocs.append(edge_auroc(data["adjacency"], saved["probs"][t]))
        ones = np.ones(data["x_obs"].shape[1], bool)
        for name, a in (("true", data["adjacency"]), ("predicted", g)):
            rows[f"cond-fip/{name}"].append(score_generator(predict(model, {**data, "node_mask": ones}, adjacency=a),
                                                            data))
            rows[f"anm-linear/{name}"].append(score_generator(fit_anm({**data, "adjacency": a},
                                                                      ANMConfig(kind="linear")), data))
    mu_shd, se_shd = mean_se(shds)
    mu_auc, se_auc = mean_se(aurocs)
    out = {"benchmark": "cond_fip_graph", "prior": {"name": prior.name, "hash": prior.content_hash()}, "n_tasks": n,
           "graph_method": f"dibs (marginal BGe), steps={int(saved['dibs_steps'])}, edge marginals >= 0.5, greedy DAG",
           "dibs_seconds_per_task": float(np.mean(saved["seconds"])),
           "shd": {"mean": mu_shd, "se": se_shd}, "edge_auroc": {"mean": mu_auc, "se": se_auc},
           "true_edges": float(np.mean([restrict(task_slice(tasks, t))["adjacency"].sum() for t in range(n)])),
           "predicted_edges": float(saved["graphs"].sum((1, 2)).mean()),
           "cond_fip_model": {"steps": part["train"]["steps"], "procedure": part["train"].get("procedure", "joint")},
           "metrics": {k: summarise(v) for k, v in rows.items()}}
    lines = ["| method / graph | " + " | ".join(m for m in METRICS if m != "mmd") + " |", "|---" * 5 + "|"]
    for k, cells in out["metrics"].items():
        lines.append(f"| {k} | " + " | ".join(f"{cells[m]['mean']:.3f} ± {cells[m]['se']:.3f}"
                                             for m in METRICS if m != "mmd") + " |")
    out["table"] = "\n".join(lines)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(out["table"], f"\nSHD {mu_shd:.1f} ± {se_shd:.1f}, edge AUROC {mu_auc:.3f}")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit-graphs", action="store_true")
    ap.add_argument("--score", action="store_true")
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--dibs-steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="cpu-small", help="model config when lin.json is not written yet")
    ap.add_argument("--graphs", default="/tmp/cond_fip_dibs_graphs.npz")
    ap.add_argument("--root", default=os.environ.get("CAUSALMETA_ROOT", str(REPO / ".causalmeta")))
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/cond_fip_graph.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    prior = PriorConfig.from_yaml(REPO / "configs/priors/condfip-lin-20.yaml")
    if args.fit_graphs:
        fit_graphs(prior, args)
    if args.score:
        score(prior, args)


if __name__ == "__main__":
    main()
