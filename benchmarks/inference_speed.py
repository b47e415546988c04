"""Warm MACE-TNP inference, batched over test tasks, against the exact posterior and DiBS: one run.

What it measures (issue 13: amortized inference must be fast, or it has no point), all in
one process with ``torch.set_num_threads(--threads)``, wall clock (``time.perf_counter``):

1. **MACE-TNP, seconds per task** on ``--n-tasks`` test tasks of a 3-node prior and of its
   5-node variant (``graph.n_nodes = 5``, one single-target regime per node), warm (model
   built and loaded once; a warm-up call first). Inference = ``predict`` for every task plus
   the forward passes that answer every query ``(j, a, i)`` of every task (what a user
   waits for); scoring is not timed. Two ways, same answers:
   * ``per_task``: one task per call (``evaluate_amortized``, one forward pass per task);
   * ``batched``: all tasks in one call (``evaluate_amortized_many``: tasks of equal shape
     stacked, query rows in chunks), per-task seconds = total / tasks.
   The per-task NLPIDs of both ways are compared (``max_abs_nlpid_diff``), and the batched
   ones against the training path on ``reference_tasks`` tasks (autograd on: PyTorch's
   attention kernel, no shared columns; ``max_abs_nlpid_diff_reference``).
   Where time goes: ``profile`` splits the batched call into building the answers and
   queries (Python, tensors) and the forward passes; ``profile.ops`` splits one thread's
   forward passes on a few tasks into attention (the fused kernel or PyTorch's), linear
   maps, LayerNorm, GELU, copies/indexing and the rest, in ms per query (torch.profiler);
   ``load_seconds`` is the cold part (state dict from disk into a fresh module), paid once
   per process, not per task.
   Weights are random unless ``--version`` names a registered model: the cost of a forward
   pass does not depend on the weights.
2. **Exact BGe enumeration** (3 and 5 nodes): fit + answering the same queries, per task.
3. **DiBS** (3 nodes, its default config unless ``--dibs-steps``): fit + answering, per task,
   on ``--dibs-tasks`` tasks after one warm-up fit.
4. Ratios against the goals: DiBS / MACE-TNP batched at 3 nodes (goal >= 1000) and exact /
   MACE-TNP batched at 5 nodes (goal > 1); the load average and a large-matmul GFLOP/s of
   the same process say how busy the shared machine was.

Writes ``benchmarks/results/inference_speed.json`` and logs it with ``Tracker.log_benchmark``;
the same with the opt-in fused attention kernel (``attention_kernel`` in the JSON says which)::

    nice -n 10 .venv/bin/python benchmarks/inference_speed.py
    CAUSALMETA_FUSED_ATTENTION=1 nice -n 10 .venv/bin/python benchmarks/inference_speed.py \
        --out benchmarks/results/inference_speed_fused.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline_lib.baselines.registry import fit_baseline  # noqa: E402
from pipeline_lib.evaluation import evaluate_amortized, evaluate_amortized_many, evaluate_answer, make_queries  # noqa: E402
from pipeline_lib.models import fused_attention  # noqa: E402
from pipeline_lib.models.registry import get_method  # noqa: E402
from pipeline_lib.priors import PriorConfig, sample_split_range  # noqa: E402
from pipeline_lib.taskdata import restrict, task_slice  # noqa: E402

#: the quick preset's MACE-TNP (configs/benchmarks/quick.yaml)
QUICK_MODEL = {"preset": "cpu-small", "d_model": 32, "n_heads": 4, "ff_mult": 2, "n_obs_min": 20, "n_obs_max": 200}


def five_node(config: PriorConfig) -> PriorConfig:
    """The same prior on 5 nodes, one single-target hard regime per node."""
    data = config.model_dump(mode="json")
    data["name"] = f"{config.name}-5node"
    data["graph"].update(n_nodes=5, n_nodes_min=None, n_nodes_max=None)
    if data["graph"]["kind"] == "erdos_renyi":
        data["graph"]["expected_parents"] = min(data["graph"]["expected_parents"] * 2, 2.0)
    data["interventions"]["n_regimes"] = 5
    return PriorConfig.from_dict(data)


def test_tasks(config: PriorConfig, n: int) -> list[dict]:
    n = min(n, config.n_tasks("test"))
    batch = sample_split_range(config, "test", 0, n)
    return [task_slice(batch, t) for t in range(n)]


def load_model(args):
    """The model and the seconds a cold load takes (state dict from bytes into a fresh module)."""
    spec = get_method("mace-tnp")
    if args.version is not None:
        from storage.tracking import Tracker

        t0 = time.perf_counter()
        model = Tracker(args.root).load_registered_model("mace-tnp", int(args.version))
        return model, time.perf_counter() - t0, dict(model.config.model_dump())
    overrides = dict(QUICK_MODEL, **json.loads(args.model))
    name = overrides.pop("preset")
    cfg = spec.config(name, **overrides)
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(spec.build(cfg).state_dict(), buf)
    t0 = time.perf_counter()
    model = spec.build(cfg)
    model.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    model.eval()
    return model, time.perf_counter() - t0, dict(cfg.model_dump())


def time_mace(model, tasks: list[dict], reference_tasks: int = 20, profile_tasks: int = 10) -> dict:
    """Per-task and batched inference seconds, the profile of the batched call, NLPID agreement."""
    evaluate_amortized_many("mace-tnp", model, tasks[:2])  # warm-up (allocator, kernels)
    per_task = [evaluate_amortized("mace-tnp", model, t, seed=k) for k, t in enumerate(tasks)]
    batched = evaluate_amortized_many("mace-tnp", model, tasks, seeds=list(range(len(tasks))))
    diff = max(abs(a[0]["nlpid"] - b[0]["nlpid"]) for a, b in zip(per_task, batched))
    ref_tasks = min(len(tasks), reference_tasks)
    ref_diff = reference_nlpid_diff(model, tasks[:ref_tasks], batched[:ref_tasks])
    # where the batched call's time goes: answers + queries (Python, tensors) vs forward passes
    spec = get_method("mace-tnp")
    t0 = time.perf_counter()
    answers = [spec.predict(model, t) for t in tasks]
    queries = [make_queries(t, None, np.random.default_rng(k)) for k, t in enumerate(tasks)]
    t1 = time.perf_counter()
    type(answers[0]).prepare_many(answers, [(q.j, q.a, q.i) for q in queries])
    t2 = time.perf_counter()
    n_queries = sum(len(q) for q in queries)
    return {
        "n_tasks": len(tasks), "n_queries": n_queries,
        "per_task_seconds": float(np.mean([m["runtime_s"] for m, _ in per_task])),
        "batched_seconds_per_task": float(batched[0][0]["runtime_s"]),
        "batched_seconds_total": float(batched[0][0]["runtime_batch_s"]),
        "max_abs_nlpid_diff": float(diff),
        "reference_tasks": ref_tasks, "max_abs_nlpid_diff_reference": ref_diff,
        "nlpid_mean": float(np.mean([m["nlpid"] for m, _ in batched])),
        "profile": {"answers_and_queries_seconds": t1 - t0, "forward_seconds": t2 - t1,
                    "forward_seconds_per_query": (t2 - t1) / n_queries,
                    "ops": op_profile(model, tasks[:profile_tasks])},
    }


def reference_nlpid_diff(model, tasks: list[dict], batched: list) -> float:
    """Max |NLPID| difference between the timed batched answers and the training path (autograd
    on: PyTorch's attention kernel, no column sharing), one task per pass, on these tasks."""
    spec = get_method("mace-tnp")
    diffs = []
    for k, (task, (metrics, _)) in enumerate(zip(tasks, batched)):
        answer = spec.predict(model, task)
        q = make_queries(task, None, np.random.default_rng(k))
        x = torch.as_tensor(answer.x_obs)[None].expand(len(q.j), *answer.x_obs.shape)
        batch = {"x_obs": x, "obs_mask": torch.ones(x.shape[:2], dtype=torch.bool),
                 "node_mask": torch.ones(x.shape[0], x.shape[2], dtype=torch.bool),
                 "int_node": torch.as_tensor(q.j), "int_value": torch.as_tensor(q.a, dtype=torch.float32),
                 "out_node": torch.as_tensor(q.i)}
        with torch.enable_grad():
            mog = model(batch)
        answer._remember(answer._queries(q.j, q.a, q.i)[3],
                         type(mog)(mog.logits.detach(), mog.means.detach(), mog.scales.detach()))
        diffs.append(abs(evaluate_answer(answer, task, seed=k)["nlpid"] - metrics["nlpid"]))
    return float(max(diffs)) if diffs else None


#: profiler op names -> the parts of a forward pass they are
OP_GROUPS = {"attention": ("fused_attention", "aten::_scaled_dot_product"), "linear": ("aten::addmm", "aten::mm"),
             "layer_norm": ("aten::native_layer_norm",), "gelu": ("aten::gelu",),
             "copies_and_indexing": ("aten::copy_", "aten::index", "aten::_index_put_impl_", "aten::cat")}


def op_profile(model, tasks: list[dict]) -> dict:
    """Milliseconds per query by part of the batched forward, on ONE thread (the profiler sees
    the calling thread's operations; the fused kernel is named by its record_function)."""
    from torch.profiler import ProfilerActivity, profile

    spec = get_method("mace-tnp")
    answers = [spec.predict(model, t) for t in tasks]
    queries = [make_queries(t, None, np.random.default_rng(k)) for k, t in enumerate(tasks)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            type(answers[0]).prepare_many(answers, [(q.j, q.a, q.i) for q in queries])
            wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    n_queries = sum(len(q) for q in queries)
    out = {name: 0.0 for name in OP_GROUPS}
    total = 0.0
    for ev in prof.key_averages():
        own = ev.self_cpu_time_total / 1e3 if ev.key != "fused_attention" else ev.cpu_time_total / 1e3
        total += own
        for group, prefixes in OP_GROUPS.items():
            if ev.key.startswith(prefixes):
                out[group] += own
    out = {f"{k}_ms_per_query": v / n_queries for k, v in out.items()}
    out["other_ms_per_query"] = (total - sum(out.values()) * n_queries) / n_queries
    out["wall_ms_per_query_under_profiler_1_thread"] = wall * 1e3 / n_queries
    out["n_tasks"] = len(tasks)
    return out


def time_baseline(name: str, tasks: list[dict], config=None, warmup: bool = True) -> dict:
    """Fit + answering every query of the task, per task (after one warm-up fit)."""
    if warmup:
        fit_baseline(name, restrict(tasks[0]), config)
    seconds, fits = [], []
    for task in tasks:
        q = make_queries(task)
        t0 = time.perf_counter()
        answer = fit_baseline(name, restrict(task), config)
        t1 = time.perf_counter()
        answer.log_density_batch(q.j, q.a, q.i, q.samples)
        seconds.append(time.perf_counter() - t0)
        fits.append(t1 - t0)
    return {"n_tasks": len(tasks), "seconds_per_task": float(np.mean(seconds)), "fit_seconds": float(np.mean(fits)),
            "config": None if config is None else dict(config)}


def matmul_gflops(n: int = 1024, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prior", default=str(REPO / "configs/priors/mace-nn-3node.yaml"))
    ap.add_argument("--n-tasks", type=int, default=100)
    ap.add_argument("--exact-tasks", type=int, default=10)
    ap.add_argument("--dibs-tasks", type=int, default=3)
    ap.add_argument("--dibs-steps", type=int, default=None, help="DiBS steps (default: its config default)")
    ap.add_argument("--model", default="{}", help="JSON overrides of the quick preset's MACE-TNP config")
    ap.add_argument("--version", default=None, help="a registered causalmeta-mace-tnp version instead")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--root", default=os.environ.get("CAUSALMETA_ROOT", str(REPO / ".causalmeta")))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/inference_speed.json")
    ap.add_argument("--no-mlflow", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = os.getloadavg()

    prior3 = PriorConfig.from_yaml(args.prior)
    prior5 = five_node(prior3)
    tasks3, tasks5 = test_tasks(prior3, args.n_tasks), test_tasks(prior5, args.n_tasks)
    model, load_seconds, model_cfg = load_model(args)
    result = {"prior": prior3.name, "prior_hash": prior3.content_hash()[:12], "n_obs": prior3.n_obs,
              "threads": args.threads, "model": model_cfg, "load_seconds": load_seconds,
              "attention_kernel": "fused (opt-in)" if fused_attention.available() else "pytorch",
              "mace_tnp": {"d3": time_mace(model, tasks3), "d5": time_mace(model, tasks5)}}
    result["matmul_gflops"] = matmul_gflops()
    dibs_cfg = None if args.dibs_steps is None else {"steps": args.dibs_steps}
    result["exact"] = {"d3": time_baseline("exact", tasks3[:args.exact_tasks]),
                       "d5": time_baseline("exact", tasks5[:args.exact_tasks])}
    result["dibs"] = {"d3": time_baseline("dibs", tasks3[:args.dibs_tasks], dibs_cfg)}
    mace3, mace5 = result["mace_tnp"]["d3"], result["mace_tnp"]["d5"]
    result["ratios"] = {
        "dibs_over_mace_d3": result["dibs"]["d3"]["seconds_per_task"] / mace3["batched_seconds_per_task"],
        "exact_over_mace_d5": result["exact"]["d5"]["seconds_per_task"] / mace5["batched_seconds_per_task"],
        "exact_over_mace_d3": result["exact"]["d3"]["seconds_per_task"] / mace3["batched_seconds_per_task"],
        "per_task_over_batched_d3": mace3["per_task_seconds"] / mace3["batched_seconds_per_task"],
        "per_task_over_batched_d5": mace5["per_task_seconds"] / mace5["batched_seconds_per_task"],
    }
    result["goals"] = {"dibs_over_mace_d3 >= 1000": result["ratios"]["dibs_over_mace_d3"] >= 1000,
                       "exact_over_mace_d5 > 1": result["ratios"]["exact_over_mace_d5"] > 1}
    result["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    result["total_seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps({k: result[k] for k in ("ratios", "goals", "load_average")}, indent=2))
    for d in ("d3", "d5"):
        m = result["mace_tnp"][d]
        print(f"{d}: MACE-TNP per task {m['per_task_seconds'] * 1e3:.2f} ms one by one, "
              f"{m['batched_seconds_per_task'] * 1e3:.2f} ms batched; exact {result['exact'][d]['seconds_per_task'] * 1e3:.1f} ms"
              + (f"; DiBS {result['dibs'][d]['seconds_per_task']:.2f} s" if d in result["dibs"] else ""))
    if not args.no_mlflow:
        from storage.tracking import Tracker

        flat = {"load_seconds": load_seconds, "matmul_gflops": result["matmul_gflops"], **result["ratios"]}
        for d in ("d3", "d5"):
            m = result["mace_tnp"][d]
            flat.update({f"mace_tnp.{d}.{k}": m[k] for k in ("per_task_seconds", "batched_seconds_per_task",
                                                              "max_abs_nlpid_diff")})
            flat[f"exact.{d}.seconds_per_task"] = result["exact"][d]["seconds_per_task"]
        flat["dibs.d3.seconds_per_task"] = result["dibs"]["d3"]["seconds_per_task"]
        Tracker(args.root).log_benchmark("inference_speed", flat, [args.out],
                                         params={"prior": prior3.name, "threads": args.threads,
                                                 **{f"model.{k}": v for k, v in model_cfg.items()}})
    return result


if __name__ == "__main__":
    main()
