"""GIM diagnosis (issue 16): one GIM fit on one system under a config change, optionally with
the true ordering or the true graph fixed, scored like ``benchmarks/gim.py`` (graph, targets,
unseen distribution errors with targets drawn per row and with the MAP target set).

    python benchmarks/gim_diagnosis.py gim-linear-er-20 0 TAG '{"lambda_G": 50}'
    python benchmarks/gim_diagnosis.py gim-linear-er-20 0 TAG '{"oracle": "order"}'
    python benchmarks/gim_diagnosis.py gim-linear-er-20 0 TAG '{"refit_steps": 300, "prune": "bic"}'

``oracle``: ``"order"`` fixes the DP-DAG's ordering scores at the true topological order (its
gradient zeroed; start with ``order_init: uniform``, else the fit overwrites them), ``"graph"``
replaces every DAG sample and the MAP DAG by the true adjacency: what GIM reaches once the
ordering / the graph is right. Appends one JSON line to ``--out``
(``benchmarks/results/gim_diagnosis.jsonl``). Base config: the ``gim-synthetic`` preset's GIM settings
for this prior (``benchmarks/gim.py gim_config``) at one restart; each line records the full config
(``config``). Lines before the fourth pass had a smaller base (n_test_regimes 6, steps 1200, one
restart, the mechanism; every other field at GIMConfig's default) and no ``config``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def fixed(model_cls, adjacency: np.ndarray, what: str):
    """A GIMModel subclass whose ordering (``what="order"``) or graph (``"graph"``) is the truth."""
    import networkx as nx

    topo = list(nx.topological_sort(nx.DiGraph(adjacency)))
    adj_true = torch.as_tensor(adjacency, dtype=torch.float32)

    class Fixed(model_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            d = self.d
            if what == "order":
                with torch.no_grad():
                    for pos, node in enumerate(topo):
                        self.dag.order_scores[node] = 50.0 - 2.0 * pos
                self.dag.order_scores.register_hook(torch.zeros_like)
            else:
                def sample(n, generator=None, return_order=False):
                    a = adj_true.expand(n, d, d)
                    return (a, torch.zeros(n, d, dtype=torch.long)) if return_order else a
                self.dag.sample = sample
                self.map_dag = lambda: adj_true

    return Fixed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("prior")
    ap.add_argument("index", type=int)
    ap.add_argument("tag")
    ap.add_argument("changes", nargs="?", default="{}", help="JSON: GIMConfig fields, plus oracle=order|graph")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gim_diagnosis.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import pipeline_lib.models.gim.fit as gim_fit
    from pipeline_lib.metrics import shd
    from pipeline_lib.models.gim import GIMConfig, fit_gim
    from pipeline_lib.models.gim.metrics import score_fit
    from pipeline_lib.priors import PriorConfig, sample_split_range
    from pipeline_lib.taskdata import restrict, task_slice
    from flows.spec import load_preset
    from gim import gim_config  # benchmarks/gim.py, beside this script

    changes = json.loads(args.changes)
    oracle = changes.pop("oracle", None)
    cfg = PriorConfig.from_yaml(ROOT / "configs" / "priors" / f"{args.prior}.yaml")
    data = restrict(task_slice(sample_split_range(cfg, "test", args.index, args.index + 1), 0))
    preset = {b.name: dict(b.config) for b in load_preset("gim-synthetic").baselines}
    if oracle == "order":  # the shift-count start would overwrite the fixed scores
        changes["order_init"] = "uniform"
    gim_cfg = GIMConfig(**{**gim_config(preset["gim"], cfg), "n_restarts": 1, **changes})
    if oracle:
        gim_fit.GIMModel = fixed(gim_fit.GIMModel, np.asarray(data["adjacency"]), oracle)
    t0 = time.perf_counter()
    post = fit_gim(data, gim_cfg)
    main_fit = [h for h in post.history if "refit" not in h]
    before = post.map_graph_before_prune()
    out = {"tag": args.tag, "prior": args.prior, "index": args.index, "changes": changes, "oracle": oracle,
           "config": gim_cfg.model_dump(mode="json"),
           "s": round(time.perf_counter() - t0, 1), "map_edges": int(post.map_graph().sum()),
           "true_edges": int(np.asarray(data["adjacency"]).sum()),
           "map_edges_before_prune": None if before is None else int(before.sum()),
           "shd_before_prune": None if before is None else int(shd(data["adjacency"], before)),
           "final_loss": round(float(np.mean([h["loss"] for h in main_fit[-len(main_fit) // 10:]])), 4)}
    for mode in ("sample", "map"):
        post.cfg = post.cfg.model_copy(update={"generation_targets": mode})
        scores = score_fit(post, data, 6, 500, seed=args.index)
        prefix = "" if mode == "sample" else "map_"
        out.update({prefix + k: round(v, 4) for k, v in scores.items() if mode == "sample" or k.startswith("unseen_")})
    print(json.dumps(out), flush=True)
    with args.out.open("a") as f:
        f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
