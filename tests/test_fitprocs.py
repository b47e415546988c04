"""Baseline fits in worker processes (tasks/fitprocs.py): the same answers as in the calling
thread, from another process, and a dying process fails only its own fit."""
from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline_lib.baselines.registry import check_config
from tasks.fitprocs import FitProcessDied, evaluate_in_process, evaluate_many, fit_processes, open_pool_size
from tests.linear_scm import chain_task


def _without_runtime(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("runtime")}


def test_a_fit_in_a_process_answers_as_in_the_thread_errors_come_back_and_a_death_fails_one_fit():
    from tasks import fitprocs

    task, _ = chain_task()
    config = check_config("dibs", {"steps": 40, "n_particles": 4})
    here, here_arrays, here_info = evaluate_in_process("dibs", config, task, max_queries=3, seed=5)
    assert here_info["fit_pid"] == os.getpid() and open_pool_size() == 0
    with fit_processes(1):
        assert open_pool_size() == 1
        there, there_arrays, there_info = evaluate_in_process("dibs", config, task, max_queries=3, seed=5)
        other, _, _ = evaluate_in_process("dibs", config, task, max_queries=3, seed=6)
        # a method's error is raised here as itself, with where it was raised
        with pytest.raises(ValueError, match="no_such_prior") as err:
            evaluate_in_process("exact", check_config("exact", {"graph_prior": "no_such_prior"}), task,
                                max_queries=2, seed=0)
        assert "raised in the fit process" in "".join(getattr(err.value, "__notes__", []))
        # an out-of-memory kill (SIGKILL) in the middle of a fit: that fit fails, the next one runs
        import signal
        import threading

        (worker,) = fitprocs._OPEN._all
        threading.Timer(1.0, os.kill, (worker.proc.pid, signal.SIGKILL)).start()
        with pytest.raises(FitProcessDied, match="died without an answer.*exit code -9"):
            evaluate_in_process("dibs", check_config("dibs", {"steps": 100000, "n_particles": 4}), task,
                                max_queries=3, seed=5)
        after, _, after_info = evaluate_in_process("exact", check_config("exact", {}), task, max_queries=2, seed=0)
    assert open_pool_size() == 0
    assert there_info["fit_pid"] != os.getpid() and after_info["fit_pid"] not in (os.getpid(), there_info["fit_pid"])
    assert np.isfinite(after["nlpid"]) and there_info["converged"] == here_info["converged"]
    # seeded SVGD: the same particles in a fresh single-threaded process (float rounding of a
    # different thread count aside), and a different seed is a different fit
    a, b = _without_runtime(here), _without_runtime(there)
    assert a.keys() == b.keys() and all(np.isclose(a[k], b[k], rtol=1e-4, equal_nan=True) for k in a), (a, b)
    assert _without_runtime(other) != b
    assert here_arrays.keys() == there_arrays.keys()


def test_a_queued_group_answers_in_order_on_both_processes_and_one_error_stops_nothing():
    """``evaluate_many`` queues a group at once: answers come back in the order given, the fits
    are spread over both processes (one fit at a time per caller would use one), an error is
    that fit's outcome only, and the seeds are those given (the same as one by one)."""
    task, _ = chain_task()
    config = check_config("exact", {})
    seeds = [0, 1, 2, 3, 4, 5]
    bad = [(task, 0), (dict(task, x_obs=task["x_obs"][:, :2]), 1), (task, 2)]  # a 2-column x_obs: a shape error
    with fit_processes(2):
        outcomes = list(evaluate_many("dibs", check_config("dibs", {"steps": 30, "n_particles": 2}),
                                      [(task, s) for s in seeds], max_queries=2))
        mixed = list(evaluate_many("exact", config, bad, max_queries=2))
        one_by_one = evaluate_in_process("dibs", check_config("dibs", {"steps": 30, "n_particles": 2}), task,
                                         max_queries=2, seed=3)
    assert len(outcomes) == len(seeds) and all(not isinstance(o, Exception) for o, _ in outcomes)
    assert len({info["fit_pid"] for (_, _, info), _ in outcomes}) == 2
    assert all(sec > 0 for _, sec in outcomes)
    assert _without_runtime(outcomes[3][0][0]) == _without_runtime(one_by_one[0])  # task order = seed order
    assert _without_runtime(outcomes[3][0][0]) != _without_runtime(outcomes[4][0][0])
    assert not isinstance(mixed[0][0], Exception) and not isinstance(mixed[2][0], Exception)
    assert isinstance(mixed[1][0], ValueError) and "x_obs" in str(mixed[1][0])


def test_fit_processes_refuses_a_bad_size():
    with pytest.raises(ValueError, match="positive int"), fit_processes(0):
        pass


def test_a_script_without_a_main_guard_is_not_run_again_by_the_fit_processes(tmp_path):
    """multiprocessing's spawn / forkserver children re-run the caller's script; ours must not."""
    import subprocess
    import sys

    script = tmp_path / "user_script.py"
    script.write_text(
        "print('script ran', flush=True)\n"
        "from pipeline_lib.baselines.registry import check_config\n"
        "from tasks.fitprocs import evaluate_in_process, fit_processes\n"
        "from tests.linear_scm import chain_task\n"
        "task, _ = chain_task()\n"
        "with fit_processes(2):\n"
        "    m, _, info = evaluate_in_process('exact', check_config('exact', {}), task, max_queries=2, seed=0)\n"
        "print('fitted in', info['fit_pid'], flush=True)\n")
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(repo)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("script ran") == 1 and "fitted in" in out.stdout, out.stdout


def test_fits_are_grouped_into_few_prefect_tasks_per_worker():
    """Several fits share a Prefect task run (its orchestration costs more than a small fit):
    at least two groups per worker and baseline for balance, at most MAX_FITS_PER_TASK fits
    each, sizes differing by one at most; every task exactly once, in order."""
    from flows.baselines import MAX_FITS_PER_TASK, group_count
    from tasks.baselines import task_groups

    assert task_groups(10, 4) == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert task_groups(0, 3) == [] and task_groups(2, 5) == [[0], [1]]
    assert group_count(10, 2) == 4 and group_count(10, 1) == 2 and group_count(1, 4) == 1
    assert group_count(10, 2, fits_per_task=5) == 2 and group_count(10, 2, fits_per_task=3) == 4
    for n in range(1, 120):
        for w in (1, 2, 3, 8):
            groups = task_groups(n, group_count(n, w))
            assert [t for g in groups for t in g] == list(range(n))
            sizes = [len(g) for g in groups]
            assert len(groups) >= min(n, 2 * w) and max(sizes) <= MAX_FITS_PER_TASK
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="fits_per_task"):
        group_count(5, 2, fits_per_task=0)
