"""MACE-TNP vs the exact BGe posterior on a 2-node linear-Gaussian prior.

What it measures (paper experiment 1, arXiv 2507.05526, at CPU scale):

1. Meta-train MACE-TNP on the streaming prior (default ``configs/priors/bge-2node.yaml``,
   whose SCMs are drawn from the Normal-Wishart prior behind the BGe score), with
   ``n_obs`` drawn log-uniformly in ``[10, max(--n-obs-list)]`` per batch.
2. NLPID on held-out test tasks (the prior's ``test`` split, its own ``n_obs``):
   MACE-TNP vs the exact posterior ``ExactPosterior.fit(x_obs, edge_penalty=log 2)``.
   ``edge_penalty = log 2`` makes the enumeration's graph prior
   ``p(G) ∝ 2^{-|E|}`` equal to the sampler's 2-node ER prior (no edge 1/2, each
   direction 1/4), so the exact posterior is the Bayes-optimal predictor for this prior;
   the uniform-prior variant (``edge_penalty = 0``) is reported too.
3. KL(p_exact || q_MACE) of the interventional distribution vs ``n_obs`` in ``--n-obs-list``,
   by trapezoidal integration over a fine 1-D grid (``KL = ∫ p (log p - log q) dx``),
   with the grid mass of ``p`` reported as a check, on tasks drawn with enough rows.

Writes ``benchmarks/results/mace_tnp.json`` and logs it with ``Tracker.log_benchmark``.

    .venv/bin/python benchmarks/mace_tnp.py --steps 3000 --batch-size 16
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline_lib.baselines.exact import ExactPosterior  # noqa: E402
from pipeline_lib.evaluation import make_queries, restrict, task_slice  # noqa: E402
from pipeline_lib.models.mace_tnp import MaceTNPAnswer  # noqa: E402
from pipeline_lib.models.registry import get_method  # noqa: E402
from pipeline_lib import metrics as M  # noqa: E402
from pipeline_lib.priors import PriorConfig, sample_split_range  # noqa: E402
from pipeline_lib.training import PoolSource, TrainConfig, prior_stream, train  # noqa: E402


def mean_se(x) -> dict[str, float]:
    mean, se = M.mean_se(x)
    return {"mean": mean, "se": se, "n": int(np.isfinite(np.asarray(x, dtype=np.float64)).sum())}


def task_nlpid(logp: np.ndarray) -> float:
    """Mean over a task's queries of ``-sum_m log p(x^m)`` (the evaluation convention)."""
    return float(np.mean(-logp.sum(-1)))


def exact_log_density(post: ExactPosterior, q, grid: np.ndarray | None = None) -> np.ndarray:
    pts = q.samples if grid is None else grid
    return np.stack([post.interventional_log_density(int(q.j[k]), float(q.a[k]), int(q.i[k]), pts[k]).log_density
                     for k in range(len(q))])


def _log_density(answer, q):
    return answer.log_density_batch(q.j, q.a, q.i, q.samples).log_density


def evaluate_nlpid(model, tasks: dict, n_tasks: int) -> dict:
    mace, exact, exact_uniform = [], [], []
    for t in range(n_tasks):
        task = task_slice(tasks, t)
        q = make_queries(task)
        data = restrict(task)
        mace.append(task_nlpid(_log_density(MaceTNPAnswer(model, data["x_obs"]), q)))
        exact.append(task_nlpid(exact_log_density(ExactPosterior.fit(data["x_obs"], edge_penalty=math.log(2)), q)))
        exact_uniform.append(task_nlpid(exact_log_density(ExactPosterior.fit(data["x_obs"]), q)))
    mace, exact, exact_uniform = map(np.asarray, (mace, exact, exact_uniform))
    m_per = len(q.samples[0])
    return {
        "n_samples_per_query": m_per,
        "nlpid_mace_tnp": mean_se(mace),
        "nlpid_exact": mean_se(exact),
        "nlpid_exact_uniform_graph_prior": mean_se(exact_uniform),
        "paired_diff_mace_minus_exact": mean_se(mace - exact),
        "relative_gap": float((mace.mean() - exact.mean()) / abs(exact.mean())),
    }


def kl_table(model, tasks: dict, n_tasks: int, n_obs_list: list[int], n_grid: int) -> dict:
    rows = {}
    for n in n_obs_list:
        kls, masses, nl_m, nl_e = [], [], [], []
        for t in range(n_tasks):
            task = task_slice(tasks, t)
            q = make_queries(task)
            x = restrict(task)["x_obs"][:n]
            post = ExactPosterior.fit(x, edge_penalty=math.log(2))
            centre = q.samples.mean(-1)
            half = 15.0 * np.maximum(q.samples.std(-1), 0.05) + 5.0
            grid = centre[:, None] + half[:, None] * np.linspace(-1.0, 1.0, n_grid)[None, :]
            lp = exact_log_density(post, q, grid)
            pred = MaceTNPAnswer(model, x)
            lq = _log_density(pred, type(q)(q.j, q.a, q.i, grid))
            p = np.exp(lp)
            kls.append(np.trapezoid(p * (lp - lq), grid, axis=-1).mean())
            masses.append(np.trapezoid(p, grid, axis=-1).min())
            nl_m.append(task_nlpid(_log_density(pred, q)))
            nl_e.append(task_nlpid(exact_log_density(post, q)))
        rows[str(n)] = {"kl_exact_to_mace": mean_se(kls), "min_grid_mass_exact": float(np.min(masses)),
                        "nlpid_mace_tnp": mean_se(nl_m), "nlpid_exact": mean_se(nl_e)}
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default=str(REPO / "configs/priors/bge-2node.yaml"))
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--model", default="{}", help="JSON overrides of the model config")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--kl-tasks", type=int, default=40)
    ap.add_argument("--n-obs-list", default="10,50,200,500")
    ap.add_argument("--n-grid", type=int, default=4001)
    ap.add_argument("--root", default=os.environ.get("CAUSALMETA_ROOT", str(REPO / ".causalmeta")))
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/mace_tnp.json"))
    ap.add_argument("--no-track", action="store_true", help="skip MLflow logging")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    prior = PriorConfig.from_yaml(args.prior)
    n_obs_list = [int(v) for v in args.n_obs_list.split(",")]
    n_max = max(n_obs_list)
    # same SCM prior with enough rows for the largest n: every n <= n_max is a subsample
    prior_big = prior.model_copy(update={"n_obs": max(n_max, prior.n_obs)})
    spec = get_method("mace-tnp")
    model_cfg = spec.config(args.preset, **{"n_obs_min": 10, "n_obs_max": n_max, "n_obs_log_uniform": True,
                                            "n_obs_per_batch": True, **json.loads(args.model)})
    torch.manual_seed(args.seed)
    model = spec.build(model_cfg)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                      checkpoint_every=max(1, args.steps // 10), val_every=max(1, args.steps // 10), val_batches=8)
    make_batch = spec.make_batch(model_cfg)
    val_tasks = sample_split_range(prior_big, "val", 0, min(64, prior_big.n_tasks("val")))
    val_source = PoolSource(val_tasks, make_batch, args.batch_size, args.seed, shuffle=False)
    key = hashlib.sha256(json.dumps([prior_big.content_hash(), model_cfg.model_dump(), cfg.model_dump()],
                                    sort_keys=True).encode()).hexdigest()[:12]
    ckpt = Path(args.root) / "checkpoints" / f"bench-mace-tnp-{key}"
    t0 = time.perf_counter()
    res = train(model, spec.loss_fn, prior_stream(prior_big, make_batch, args.batch_size, args.seed), cfg,
                checkpoint_dir=ckpt, val_source=val_source, progress=sys.stderr.isatty())
    train_s = time.perf_counter() - t0
    model.eval().cpu()
    print(f"trained {res.step} steps in {train_s:.0f} s ({res.throughput:.1f} tasks/s), "
          f"final loss {res.history[-1]['loss']:.3f}, best val {res.best_val}", flush=True)

    t0 = time.perf_counter()
    test = sample_split_range(prior, "test", 0, min(args.n_test, prior.n_tasks("test")))
    nlpid = evaluate_nlpid(model, test, len(test["x_obs"]))
    kl_tasks = sample_split_range(prior_big, "test", 0, min(args.kl_tasks, prior_big.n_tasks("test")))
    kl = kl_table(model, kl_tasks, len(kl_tasks["x_obs"]), n_obs_list, args.n_grid)
    eval_s = time.perf_counter() - t0

    result = {
        "benchmark": "mace_tnp",
        "prior": {"name": prior.name, "hash": prior.content_hash(), "n_obs": prior.n_obs,
                  "train_n_obs_pool": prior_big.n_obs},
        "model": model_cfg.model_dump(),
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "train": {**cfg.model_dump(), "steps_done": res.step, "seconds": train_s,
                  "throughput_tasks_per_s": res.throughput, "final_loss": res.history[-1]["loss"],
                  "best_val_loss": res.best_val, "device": res.device, "torch_threads": args.threads,
                  "val_curve": [[h["step"], h["val_loss"]] for h in res.history if "val_loss" in h]},
        "test_nlpid": nlpid,
        "kl_vs_n_obs": kl,
        "eval_seconds": eval_s,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    print(json.dumps({"test_nlpid": nlpid, "kl_vs_n_obs": kl}, indent=1))
    if not args.no_track:
        from storage.tracking import Tracker

        flat = {"nlpid_mace_tnp": nlpid["nlpid_mace_tnp"]["mean"], "nlpid_exact": nlpid["nlpid_exact"]["mean"],
                "relative_gap": nlpid["relative_gap"], "train_seconds": train_s,
                "throughput_tasks_per_s": res.throughput,
                **{f"kl_n{n}": row["kl_exact_to_mace"]["mean"] for n, row in kl.items()}}
        run_id = Tracker(args.root).log_benchmark(
            "mace_tnp", flat, artifacts=[out],
            params={"prior": prior.name, "prior_hash": prior.content_hash(), "model": model_cfg.model_dump(),
                    "train": cfg.model_dump()})
        print(f"MLflow run {run_id}")
    return result


if __name__ == "__main__":
    main()
