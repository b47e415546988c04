"""Fault injection on prior stores: damage a store, check nothing wrong is ever read, repair it.

A small prior is generated once as the clean reference. Then, N times (``--n``, default 20),
one fault drawn at random:

- ``delete``   1-3 random chunk files removed (data arrays, markers or digests alike);
- ``flip``     1-3 random chunk files with bytes flipped in place;
- ``truncate`` 1-3 random chunk files cut to a random shorter length (possibly empty);
- ``kill``     a ``causalmeta generate`` subprocess on an empty root, SIGKILLed once a random
               number of chunks (0 .. all) carry markers, plus a random delay.

is applied to a fresh copy of the reference store (``kill``: to the half-written store the
killed run left). Each fault is then checked in two steps:

1. reading: ``PriorStore.open`` + ``read`` of every split must raise a ``PriorStoreError``
   (whose message names the split, and for a damaged chunk its array and chunk), or
   return values identical to the reference; returning anything else is a failure.
   ``verify()`` must agree (False exactly when something fails).
2. repair: the ``generate_prior`` flow is run again on the store; afterwards every file of
   the store (the root zarr.json aside: it holds timestamps; ``*.partial`` temp files a kill
   may leave are counted, not compared) must equal the reference byte for byte, and the
   store must verify and read back the reference.

A fault is "survived with nothing lost" when both hold. The script also measures what
verified reads cost: on a 1000-task store, a full read of a split and 200 single-task reads,
``PriorStore.read`` (verified) against plain Zarr reads of the same arrays (best of 5, interleaved).

All flow runs, in this process and in the killed subprocesses, share one Prefect server
started here on a free loopback port (one start-up instead of one per run).

Writes benchmarks/results/fault_injection.json and logs it to MLflow through
`storage.tracking.Tracker.log_benchmark` (tracking root: ``$CAUSALMETA_ROOT`` or
``.causalmeta``). Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fault_injection.py [--n 20]``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline_lib.priors import PriorConfig, sample_split_range  # noqa: E402
from storage.prior_store import SPLITS, PriorStore, PriorStoreError, store_path  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "fault_injection.json"
KINDS = ("delete", "flip", "truncate", "kill")


def fault_config() -> PriorConfig:
    """Every optional array present (perturbation, x_cf), 10 chunks over the three splits."""
    return PriorConfig.from_dict(dict(
        name="faults", seed=12,
        graph={"kind": "erdos_renyi", "n_nodes_min": 3, "n_nodes_max": 6, "expected_parents": 1.0},
        mechanism={"kind": "nn", "hidden": 8},
        interventions={"n_regimes": 2, "perturbation_dim": 3},
        n_obs=32, n_int=16, counterfactuals=True,
        splits={"train": 24, "val": 8, "test": 8}, chunk_tasks=4,
    ))


def overhead_config() -> PriorConfig:
    return PriorConfig.from_dict(dict(
        name="read-overhead", seed=1,
        graph={"kind": "erdos_renyi", "n_nodes": 10, "expected_parents": 1.5},
        mechanism={"kind": "linear"}, interventions={"n_regimes": 3},
        n_obs=100, n_int=50, splits={"train": 1000, "val": 0, "test": 0}, chunk_tasks=50,
    ))


# ----------------------------------------------------------------------------- prefect server
def start_prefect_server(home: Path) -> subprocess.Popen:
    """`prefect server start` on a free loopback port; PREFECT_API_URL points this process and its
    children at it (set before prefect is first imported)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("prefect server did not become healthy within 180 s")


# ----------------------------------------------------------------------------- store helpers
def store_files(path: Path) -> dict[str, bytes]:
    """Every file of the store except the root zarr.json (timestamps) and zarr's temp files."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p != path / "zarr.json" and not p.name.endswith(".partial")
    }


def chunk_files(path: Path) -> list[Path]:
    """All chunk files (data and bookkeeping arrays), no metadata."""
    return sorted(p for p in path.rglob("*") if p.is_file() and "/c/" in str(p.relative_to(path).as_posix()) + "/"
                  and not p.name.endswith(".partial") and p.name != "zarr.json")


def read_all(path: Path) -> dict[str, dict[str, np.ndarray]]:
    store = PriorStore.open(path)
    return {split: store.read(split) for split in SPLITS}


def same_values(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[s].keys() == b[s].keys()
        and all(np.array_equal(a[s][k], b[s][k], equal_nan=a[s][k].dtype.kind == "f") for k in a[s])
        for s in a
    )


def describe(path: Path, store_dir: Path) -> str:
    """``train/x_obs chunk 1`` for a chunk file (for checking that errors name the damage)."""
    rel = path.relative_to(store_dir).parts  # split, array, "c", chunk, 0, ...
    return f"{rel[0]}/{rel[1]} chunk {rel[3]}"


# ----------------------------------------------------------------------------- faults
def damage_files(kind: str, store_dir: Path, rng: np.random.Generator) -> list[str]:
    files = chunk_files(store_dir)
    picked = [files[i] for i in rng.choice(len(files), size=int(rng.integers(1, 4)), replace=False)]
    for f in picked:
        raw = f.read_bytes()
        if kind == "delete":
            f.unlink()
        elif kind == "flip":
            buf = bytearray(raw)
            for i in rng.choice(len(buf), size=min(len(buf), int(rng.integers(1, 9))), replace=False):
                buf[i] ^= int(rng.integers(1, 256))
            f.write_bytes(bytes(buf))
        elif kind == "truncate":
            f.write_bytes(raw[: int(rng.integers(0, len(raw)))])
    return [describe(f, store_dir) for f in picked]


def kill_generate(config_yaml: Path, root: Path, store_dir: Path, n_chunks: int,
                  rng: np.random.Generator) -> dict:
    """Run `causalmeta generate` and SIGKILL it once `k` markers exist (+ a random delay)."""
    k = int(rng.integers(0, n_chunks + 1))
    delay = float(rng.uniform(0.0, 0.3))
    cmd = [sys.executable, "-c", "from flows.cli import main; main()", "generate", str(config_yaml),
           "--root", str(root), "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < 300:
        markers = len(list(store_dir.glob("*/chunk_done/c/*"))) if store_dir.exists() else -1
        if markers >= k and (k > 0 or store_dir.exists()):
            break
        time.sleep(0.01)
    time.sleep(delay)
    finished_before_kill = proc.poll() is not None
    if not finished_before_kill:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its Dask workers, all at once
    proc.wait()
    markers = len(list(store_dir.glob("*/chunk_done/c/*"))) if store_dir.exists() else 0
    return {"kill_after_markers": k, "extra_delay_s": round(delay, 3), "markers_at_kill": markers,
            "finished_before_kill": finished_before_kill}


def check_read(store_dir: Path, reference: dict, damaged: list[str]) -> dict:
    """Reading must raise a clear error or give the reference values, never anything else."""
    out: dict = {}
    try:
        got = read_all(store_dir)
    except PriorStoreError as exc:
        msg = str(exc)
        out.update(read="raised", error=f"{type(exc).__name__}: {msg[:300]}")
        # a damaged chunk's error names split, array and chunk; some damaged file must be named
        # (reads stop at the first bad chunk, which may be any of them)
        out["error_names_damage"] = (not damaged) or any(d in msg for d in damaged) or (
            "IncompleteStore" in type(exc).__name__)
    except Exception as exc:  # anything else is not a clear error
        out.update(read="unclear-error", error=f"{type(exc).__name__}: {str(exc)[:300]}", error_names_damage=False)
    else:
        out.update(read="identical" if same_values(got, reference) else "WRONG-DATA", error_names_damage=True)
    try:
        out["verify"] = PriorStore.open(store_dir, allow_incomplete=True).verify()
    except Exception as exc:
        out["verify"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    # verify() must agree with the read: False when the read refused the store, True when it
    # returned the reference
    out["read_ok"] = bool(
        (out["read"] == "raised" and out["error_names_damage"] and out["verify"] is not True)
        or (out["read"] == "identical" and out["verify"] is True))
    return out


def repair(config: PriorConfig, root: Path) -> float:
    from flows.generate import generate_prior

    t0 = time.perf_counter()
    generate_prior(config, root=str(root), n_workers=2)
    return time.perf_counter() - t0


def run_faults(n: int, seed: int, work: Path) -> dict:
    import yaml

    config = fault_config()
    config_yaml = work / "faults.yaml"
    config_yaml.write_text(yaml.safe_dump(json.loads(config.to_json()), sort_keys=False))
    ref_root = work / "reference"
    t0 = time.perf_counter()
    repair(config, ref_root)
    ref_seconds = time.perf_counter() - t0
    ref_dir = store_path(ref_root, config)
    ref_files, reference = store_files(ref_dir), read_all(ref_dir)
    ref_checksums = PriorStore.open(ref_dir).checksums
    n_chunks = sum(PriorStore.open(ref_dir).n_chunks(s) for s in SPLITS)

    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n):
        kind = KINDS[int(rng.integers(len(KINDS)))]
        root = work / f"trial-{i:03d}"
        store_dir = store_path(root, config)
        trial: dict = {"trial": i, "kind": kind}
        if kind == "kill":
            trial.update(kill_generate(config_yaml, root, store_dir, n_chunks, rng))
            damaged: list[str] = []
        else:
            shutil.copytree(ref_root, root)
            damaged = damage_files(kind, store_dir, rng)
            trial["damaged"] = damaged
        if store_dir.exists():
            trial.update(check_read(store_dir, reference, damaged))
        else:  # killed before the store existed: nothing to read, nothing can be wrong
            trial.update(read="no-store", read_ok=True)
        trial["partial_files_left"] = len(list(store_dir.rglob("*.partial"))) if store_dir.exists() else 0
        try:
            trial["repair_s"] = round(repair(config, root), 2)
            repaired = PriorStore.open(store_dir)
            trial["repaired_identical"] = bool(
                store_files(store_dir) == ref_files and repaired.checksums == ref_checksums
                and repaired.verify() and same_values(read_all(store_dir), reference))
        except Exception as exc:
            trial.update(repaired_identical=False, repair_error=f"{type(exc).__name__}: {str(exc)[:300]}")
        trial["survived"] = bool(trial["read_ok"] and trial["repaired_identical"])
        print(f"[{i + 1}/{n}] {kind:8s} {', '.join(damaged) or trial.get('markers_at_kill', '')!s:60.60s} "
              f"read={trial['read']:10s} repaired={trial['repaired_identical']} -> "
              f"{'survived' if trial['survived'] else 'LOST'}", flush=True)
        trials.append(trial)
        shutil.rmtree(root, ignore_errors=True)

    survived = sum(t["survived"] for t in trials)
    by_kind = {k: {"total": sum(t["kind"] == k for t in trials),
                   "survived": sum(t["survived"] for t in trials if t["kind"] == k)} for k in KINDS}
    return {
        "config": json.loads(config.to_json()), "n_chunks": n_chunks, "reference_generate_s": ref_seconds,
        "faults_total": len(trials), "faults_survived": survived,
        "faults survived with nothing lost / total": f"{survived}/{len(trials)}",
        "by_kind": by_kind,
        "reads_raised": sum(t["read"] == "raised" for t in trials),
        "reads_identical": sum(t["read"] == "identical" for t in trials),
        "reads_wrong_data": sum(t["read"] == "WRONG-DATA" for t in trials),
        "trials": trials,
    }


# ----------------------------------------------------------------------------- read overhead
def run_overhead(work: Path, repeats: int = 5, n_single: int = 200) -> dict:
    import zarr

    config = overhead_config()
    store = PriorStore.create_or_open(work / "overhead", config)
    t0 = time.perf_counter()
    for split, c, start, stop in store.pending_chunks():
        store.write_chunk(split, c, sample_split_range(config, split, start, stop))
    store.finalize()
    write_s = time.perf_counter() - t0
    store = PriorStore.open(store.path)
    group = zarr.open_group(str(store.path), mode="r")["train"]
    names = store.array_names("train")
    raw_arrays = {name: group[name] for name in names}  # opened once, like PriorStore's handles
    idx = np.random.default_rng(0).integers(0, 1000, n_single)

    def best(*fns) -> list[float]:
        """Best time of each function; repeats interleaved, so load changes hit both sides alike."""
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(repeats):
            for fn, ts in zip(fns, times):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
        return [min(ts) for ts in times]

    full_plain, full_verified = best(lambda: {n: a[:] for n, a in raw_arrays.items()},
                                     lambda: store.read("train"))
    single_plain, single_verified = best(lambda: [{n: a[i : i + 1] for n, a in raw_arrays.items()} for i in idx],
                                         lambda: [store.read("train", int(i), int(i) + 1) for i in idx])
    nbytes = sum(a.nbytes for a in store.read("train", 0, 1000).values())
    return {
        "n_tasks": 1000, "chunk_tasks": config.chunk_tasks, "arrays": len(names), "decoded_mb": nbytes / 1e6,
        "write_s": write_s,
        "full_read_plain_s": full_plain, "full_read_verified_s": full_verified,
        "full_read_ratio": full_verified / full_plain,
        "single_task_reads": n_single,
        "single_read_plain_ms": 1e3 * single_plain / n_single,
        "single_read_verified_ms": 1e3 * single_verified / n_single,
        "single_read_ratio": single_verified / single_plain,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20, help="number of faults")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--no-overhead", action="store_true", help="skip the 1000-task read-overhead measurement")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="causalmeta-faults-"))
    server = start_prefect_server(work / "prefect")
    load_before = os.getloadavg()
    results: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "python": platform.python_version(), "loadavg_1m_at_start": load_before[0]},
                     "n": args.n, "seed": args.seed}
    try:
        if not args.no_overhead:
            results["read_overhead"] = o = run_overhead(work)
            print(f"[overhead] 1000 tasks: full read {o['full_read_plain_s']:.3f}s plain vs "
                  f"{o['full_read_verified_s']:.3f}s verified ({o['full_read_ratio']:.2f}x); single task "
                  f"{o['single_read_plain_ms']:.2f} vs {o['single_read_verified_ms']:.2f} ms "
                  f"({o['single_read_ratio']:.2f}x)", flush=True)
        results["faults"] = f = run_faults(args.n, args.seed, work)
        print(f"[faults] survived with nothing lost: {f['faults survived with nothing lost / total']} "
              f"{json.dumps(f['by_kind'])}", flush=True)
    finally:
        try:  # send the flow logs still queued while the server is up (else: "connection failed" at exit)
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=5)
        except Exception as exc:
            print(f"prefect log flush: {exc}")
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    results["machine"]["loadavg_1m_at_end"] = os.getloadavg()[0]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    if not args.no_mlflow:
        os.environ.pop("PREFECT_API_URL", None)
        from storage.tracking import Tracker

        metrics = {"faults": {k: v for k, v in results["faults"].items() if k not in ("trials", "config")}}
        if "read_overhead" in results:
            metrics["read_overhead"] = results["read_overhead"]
        run_id = Tracker(os.environ.get("CAUSALMETA_ROOT", ".causalmeta")).log_benchmark(
            "fault_injection", metrics, artifacts=[RESULTS], params={"n": args.n, "seed": args.seed})
        print(f"logged to MLflow run {run_id}")


if __name__ == "__main__":
    main()
