"""Benchmark: meta-training fed from the stored prior vs from the streaming sampler, in one run.

For each prior (lin-3node, er-20node with single-target regimes so every task has a MACE-TNP
query) the train split is written into its Zarr store first (not timed). Then, alternating
the two sources and keeping the best of ``--repeats`` (so a busy neighbour on the machine
hurts both alike):

* **feed only**: batches per second of ``source(step)`` alone (``ChunkedSource`` over the
  store: chunk reads, digest checks, the background prefetch; ``StreamSource``: sampling
  fresh tasks from the prior every step);
* **training**: tasks per second of ``pipeline_lib.training.train`` (MACE-TNP ``cpu-small``,
  batch 16, one torch thread), the number a user sees.

The goal (issue 11): the store feed is not slower than the stream. Writes
benchmarks/results/training_feed.json and logs it to MLflow (experiment ``benchmarks``).
Run: ``.venv/bin/python benchmarks/training_feed.py [--steps 60] [--repeats 2]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.spec import load_prior  # noqa: E402
from pipeline_lib.models.registry import get_method  # noqa: E402
from pipeline_lib.priors import sample_split_range  # noqa: E402
from pipeline_lib.training import ChunkedSource, TrainConfig, prior_stream, train  # noqa: E402
from storage.prior_store import PriorStore  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "training_feed.json"
PRIORS = {
    "lin-3node": {},
    "er-20node": {"interventions": {"max_targets": 1, "distinct_targets": True}, "splits": {"train": 400}},
}


def write_store(root: Path, cfg) -> PriorStore:
    store = PriorStore.create_or_open(root, cfg)
    for split, chunk, start, stop in store.pending_chunks():
        store.write_chunk(split, chunk, sample_split_range(cfg, split, start, stop))
    store.finalize()
    return PriorStore.open(store.path)


def sources(cfg, store: PriorStore, make_batch, batch: int, seed: int) -> dict:
    bounds = [store.chunk_range("train", c) for c in range(store.n_chunks("train"))]
    return {
        "stream": lambda: prior_stream(cfg, make_batch, batch, seed),
        "store": lambda: ChunkedSource(lambda a, b: store.read("train", a, b), bounds, make_batch, batch, seed),
    }


def time_feed(make_source, steps: int) -> float:
    src = make_source()
    src(0)  # first window / first draw outside the clock
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        src(s)
    dt = time.perf_counter() - t0
    getattr(src, "close", lambda: None)()
    return steps / dt


def time_training(spec, model_cfg, make_source, steps: int, batch: int) -> float:
    torch.manual_seed(0)
    model = spec.build(model_cfg)
    src = make_source()
    res = train(model, spec.loss_fn, src, TrainConfig(steps=steps, batch_size=batch, device="cpu"), progress=False)
    getattr(src, "close", lambda: None)()
    return res.throughput


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = get_method("mace-tnp")
    model_cfg = spec.config("cpu-small", n_obs_max=200)
    make_batch = spec.make_batch(model_cfg)
    out = {"steps": args.steps, "repeats": args.repeats, "batch_size": args.batch, "torch_threads": 1,
           "load_average_start": os.getloadavg()[0], "priors": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, over in PRIORS.items():
            cfg = load_prior(name, over)
            store = write_store(Path(tmp), cfg)
            srcs = sources(cfg, store, make_batch, args.batch, 0)
            feed = {k: 0.0 for k in srcs}
            trn = {k: 0.0 for k in srcs}
            for _ in range(args.repeats):
                for k, make in srcs.items():  # alternate, best of repeats
                    feed[k] = max(feed[k], time_feed(make, args.steps))
                    trn[k] = max(trn[k], time_training(spec, model_cfg, make, args.steps, args.batch))
            row = {"train_tasks": store.n_tasks("train"), "nodes": cfg.graph.n_nodes,
                   "feed_batches_per_s": feed, "train_tasks_per_s": trn,
                   "feed_ratio_store_over_stream": feed["store"] / feed["stream"],
                   "train_ratio_store_over_stream": trn["store"] / trn["stream"]}
            out["priors"][name] = row
            print(f"{name}: feed {feed['store']:.1f} vs {feed['stream']:.1f} batches/s "
                  f"(x{row['feed_ratio_store_over_stream']:.2f}); training {trn['store']:.1f} vs "
                  f"{trn['stream']:.1f} tasks/s (x{row['train_ratio_store_over_stream']:.2f})", flush=True)
    out["load_average_end"] = os.getloadavg()[0]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    from storage.tracking import Tracker

    Tracker(os.environ.get("CAUSALMETA_ROOT", str(ROOT / ".causalmeta"))).log_benchmark(
        "training_feed", out, artifacts=[RESULTS])
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
