"""Benchmark of prior generation: vectorised sampler vs a per-sample loop, and Dask scaling.

(1) Sampler throughput (tasks/s). ``pipeline_lib.priors.sample_split_range`` batches the
    ancestral sampling ``x_j = f_j(x_pa(j)) + eps_j`` over tasks, regimes and samples, looping
    only over node positions. The reference below (`naive_split_range`) draws the *same*
    random ingredients per task (the sampler's own `_draw_task`, so both sides do the same
    random-number work) and then evaluates the SCM one sample at a time, one node at a
    time, in plain Python/numpy scalar code: observational samples, hard-intervention
    regimes, standardization. Its x_obs / x_int are checked against the vectorised output
    (max abs difference reported), so the two sides compute the same thing.
(2) Generation scaling on a 20-node prior: wall time of the whole `generate_prior` flow
    (Prefect ephemeral API + threaded Dask LocalCluster) with 1 vs 2 workers, and, without
    Prefect, the same chunks written by a Dask `LocalCluster` of threads and of processes
    (a real scheduler, `processes=True`), 1 vs 2 workers, plus a serial in-process loop.
    Cluster start-up and the Prefect server start-up are excluded (warm-up runs first).

Writes benchmarks/results/prior_generation.json and logs it to MLflow through
`storage.tracking.Tracker.log_benchmark` (tracking root: ``$CAUSALMETA_ROOT`` or
``.causalmeta``). Run: ``.venv/bin/python benchmarks/prior_generation.py [--quick]``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline_lib.priors import PriorConfig, sample_split_range  # noqa: E402
from pipeline_lib.priors import graphs  # noqa: E402
from pipeline_lib.priors.sampler import _draw_task, split_seed  # noqa: E402
from storage.prior_store import PriorStore, store_path  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "prior_generation.json"


# ----------------------------------------------------------------------------- (1) naive reference
def _act(name: str, z: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "tanh":
        return np.tanh(z)
    raise ValueError(f"naive reference: activation {name!r} not implemented")


def _f_one_sample(cfg: PriorConfig, task: dict, x: np.ndarray, j: int, parents: list[int]) -> float:
    """f_j at one sample ``x: (d,)`` (canonical order), looping over the parents of j."""
    kind = cfg.mechanism.kind
    if kind == "linear":
        w = task["mech_weights"]
        total = float(task["mech_intercepts"][j])
        for i in parents:
            total += w[i, j] * x[i]
        return total
    if kind == "nn":
        if not parents:
            return 0.0
        pre = task["mech_c"][j].copy()  # (H,)
        for i in parents:
            pre += x[i] * task["mech_u"][i, j]
        return float(_act(cfg.mechanism.activation, pre) @ task["mech_v"][j])
    raise ValueError(f"naive reference: mechanism {kind!r} not implemented")


def naive_split_range(cfg: PriorConfig, split: str, start: int, stop: int) -> dict[str, np.ndarray]:
    """x_obs, x_int of tasks ``start:stop`` by ancestral sampling one sample at a time.

    Same model as the vectorised sampler for linear/nn mechanisms with hard interventions:
    ``x_j = f_j(x_pa) + s_j u_j``; in regime k a target j is fixed to
    ``mean_j + value_scale * std_j * z_kj``; then ``(x - mean) / std`` if standardize.
    """
    if cfg.interventions.kind != "hard":
        raise ValueError("naive reference: only hard interventions")
    d, k_reg = cfg.d_max, cfg.interventions.n_regimes
    xs_obs, xs_int = [], []
    for t in range(start, stop):
        task = _draw_task(cfg, split_seed(cfg, split, t))
        n = int(task["n"])
        adj, scale = task["adj"], task["scale"] * (np.arange(d) < n)
        parents = [list(np.flatnonzero(adj[:, j])) for j in range(d)]
        x_obs = np.zeros((cfg.n_obs, d))
        for m in range(cfg.n_obs):
            for j in range(d):  # canonical order is topological
                x_obs[m, j] = _f_one_sample(cfg, task, x_obs[m], j, parents[j]) + scale[j] * task["u_obs"][m, j]
        mean = np.where(np.arange(d) < n, x_obs.mean(axis=0), 0.0)
        std = np.where(np.arange(d) < n, x_obs.std(axis=0), 1.0)
        std = np.where(std > 0, std, 1.0)
        x_int = np.zeros((k_reg, cfg.n_int, d))
        for k in range(k_reg):
            targets = task["int_targets"][k]
            value = mean + cfg.interventions.value_scale * std * task["int_z"][k]
            for m in range(cfg.n_int):
                for j in range(d):
                    if targets[j]:
                        x_int[k, m, j] = value[j]
                    else:
                        f = _f_one_sample(cfg, task, x_int[k, m], j, parents[j])
                        x_int[k, m, j] = f + scale[j] * task["u_int"][k, m, j]
        if cfg.standardize:
            x_obs, x_int = (x_obs - mean) / std, (x_int - mean) / std
        inv = graphs.inverse_permutation(task["perm"][None])[0]
        xs_obs.append(x_obs[:, inv].astype(np.float32))
        xs_int.append(x_int[..., inv].astype(np.float32))
    return {"x_obs": np.stack(xs_obs), "x_int": np.stack(xs_int)}


def bench_config(mechanism: str, train: int = 100, chunk_tasks: int = 100) -> PriorConfig:
    return PriorConfig.from_dict(
        dict(
            name=f"bench-{mechanism}",
            seed=1,
            graph={"kind": "erdos_renyi", "n_nodes": 20, "expected_parents": 2.0},
            mechanism={"kind": mechanism, "hidden": 16},
            interventions={"n_regimes": 4, "kind": "hard"},
            n_obs=200,
            n_int=100,
            splits={"train": train, "val": max(1, train // 10), "test": max(1, train // 10)},
            chunk_tasks=chunk_tasks,
        )
    )


def bench_sampler(mechanism: str, n_vec: int, n_naive: int, repeats: int = 3) -> dict:
    cfg = bench_config(mechanism, train=max(n_vec, n_naive))
    vec_times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        vec = sample_split_range(cfg, "train", 0, n_vec)
        vec_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    naive = naive_split_range(cfg, "train", 0, n_naive)
    naive_s = time.perf_counter() - t0
    vec_tps = n_vec / min(vec_times)
    naive_tps = n_naive / naive_s
    diff = max(
        float(np.max(np.abs(naive[key] - vec[key][:n_naive]))) for key in ("x_obs", "x_int")
    )
    return {
        "mechanism": mechanism,
        "d": cfg.d_max, "n_obs": cfg.n_obs, "n_regimes": cfg.interventions.n_regimes, "n_int": cfg.n_int,
        "vectorised_tasks": n_vec, "vectorised_best_s": min(vec_times), "vectorised_tasks_per_s": vec_tps,
        "naive_tasks": n_naive, "naive_s": naive_s, "naive_tasks_per_s": naive_tps,
        "speedup": vec_tps / naive_tps,
        "max_abs_diff_naive_vs_vectorised": diff,
    }


# ----------------------------------------------------------------------------- (2) scaling
def _write_chunk_plain(config_json: str, root: str, split: str, chunk_index: int, start: int, stop: int) -> int:
    """The body of tasks.generate.generate_chunk without Prefect (for the Dask-only runs)."""
    cfg = PriorConfig.model_validate_json(config_json)
    store = PriorStore.open(store_path(root, cfg), cfg, allow_incomplete=True)
    store.write_chunk(split, chunk_index, sample_split_range(cfg, split, start, stop))
    return stop - start


def _fresh_store(cfg: PriorConfig, root: Path) -> list:
    shutil.rmtree(root, ignore_errors=True)
    return PriorStore.create_or_open(root, cfg).pending_chunks()


def bench_serial(cfg: PriorConfig, root: Path) -> tuple[float, dict]:
    chunks = _fresh_store(cfg, root)
    t0 = time.perf_counter()
    for chunk in chunks:
        _write_chunk_plain(cfg.to_json(), str(root), *chunk)
    checksums = PriorStore.open(store_path(root, cfg), allow_incomplete=True).finalize()
    return time.perf_counter() - t0, checksums


def bench_dask(cfg: PriorConfig, root: Path, n_workers: int, processes: bool) -> tuple[float, dict]:
    import dask
    from distributed import Client, LocalCluster

    # Dask sets MALLOC_TRIM_THRESHOLD_ in worker processes; fixing that glibc threshold also
    # freezes the mmap threshold, so every large numpy temporary is mmapped and page-faulted
    # afresh (measured here: a serial run slowed 1.3-1.7x with it). Drop it for the sampler.
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=processes, dashboard_address=None
    ) as cluster, Client(cluster) as client:
        client.submit(sum, [1]).result()  # workers up before timing
        chunks = _fresh_store(cfg, root)
        t0 = time.perf_counter()
        futures = client.map(_write_chunk_plain, [cfg.to_json()] * len(chunks), [str(root)] * len(chunks),
                             *zip(*chunks), pure=False)
        client.gather(futures)
        checksums = PriorStore.open(store_path(root, cfg), allow_incomplete=True).finalize()
        return time.perf_counter() - t0, checksums


def bench_flow(cfg: PriorConfig, root: Path, n_workers: int) -> tuple[float, dict]:
    from flows.generate import generate_prior

    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    path = generate_prior(cfg, root=str(root), n_workers=n_workers)
    seconds = time.perf_counter() - t0
    return seconds, PriorStore.open(path, cfg).checksums


def bench_scaling(train: int, chunk_tasks: int, work: Path) -> dict:
    cfg = bench_config("nn", train=train, chunk_tasks=chunk_tasks)
    n_total = sum(cfg.n_tasks(s) for s in ("train", "val", "test"))
    out: dict = {"n_tasks": n_total, "chunk_tasks": chunk_tasks, "d": cfg.d_max, "mechanism": "nn"}

    out["serial_s"], reference = bench_serial(cfg, work / "serial")
    identical = True
    for processes in (False, True):
        kind = "processes" if processes else "threads"
        for n in (1, 2):
            out[f"dask_{kind}_{n}w_s"], sums = bench_dask(cfg, work / f"dask-{kind}-{n}", n, processes)
            identical &= sums == reference
        out[f"dask_{kind}_speedup_2v1"] = out[f"dask_{kind}_1w_s"] / out[f"dask_{kind}_2w_s"]

    # Prefect: warm the ephemeral API server on a tiny prior first, so start-up is not timed.
    tiny = bench_config("linear", train=2, chunk_tasks=2)
    bench_flow(tiny, work / "warmup", 1)
    out["flow_1w_s"], sums1 = bench_flow(cfg, work / "flow-1", 1)
    out["flow_2w_s"], sums2 = bench_flow(cfg, work / "flow-2", 2)
    out["flow_speedup_2v1"] = out["flow_1w_s"] / out["flow_2w_s"]
    out["checksums_identical_all_runs"] = bool(identical and sums1 == reference and sums2 == reference)
    out["flow_tasks_per_s_2w"] = n_total / out["flow_2w_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args()
    n_vec, n_naive, train, chunk = (20, 2, 40, 10) if args.quick else (200, 10, 1000, 50)

    work = Path(tempfile.mkdtemp(prefix="causalmeta-bench-"))
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    load_before = os.getloadavg()
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "loadavg_1m_at_start": load_before[0],
        },
        "sampler": [],
    }
    try:
        for mech in ("linear", "nn"):
            r = bench_sampler(mech, n_vec, n_naive)
            print(f"[sampler {mech}] vectorised {r['vectorised_tasks_per_s']:.1f} tasks/s, naive "
                  f"{r['naive_tasks_per_s']:.2f} tasks/s, speedup {r['speedup']:.1f}x, "
                  f"max|diff| {r['max_abs_diff_naive_vs_vectorised']:.2e}", flush=True)
            results["sampler"].append(r)
        results["scaling"] = s = bench_scaling(train, chunk, work)
        print(f"[scaling] {s['n_tasks']} tasks: serial {s['serial_s']:.1f}s | dask threads 1w "
              f"{s['dask_threads_1w_s']:.1f}s 2w {s['dask_threads_2w_s']:.1f}s "
              f"({s['dask_threads_speedup_2v1']:.2f}x) | dask processes 1w {s['dask_processes_1w_s']:.1f}s "
              f"2w {s['dask_processes_2w_s']:.1f}s ({s['dask_processes_speedup_2v1']:.2f}x) | prefect flow "
              f"1w {s['flow_1w_s']:.1f}s 2w {s['flow_2w_s']:.1f}s ({s['flow_speedup_2v1']:.2f}x)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["machine"]["loadavg_1m_at_end"] = os.getloadavg()[0]
    if args.quick:
        print(json.dumps(results, indent=2))
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    if not args.no_mlflow:
        from storage.tracking import Tracker

        metrics = {f"sampler_{r['mechanism']}": r for r in results["sampler"]}
        metrics["scaling"] = results["scaling"]
        run_id = Tracker(os.environ.get("CAUSALMETA_ROOT", ".causalmeta")).log_benchmark(
            "prior_generation", metrics, artifacts=[RESULTS]
        )
        print(f"logged to MLflow run {run_id}")


if __name__ == "__main__":
    main()
