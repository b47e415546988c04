"""Baseline fits in worker processes, for the embedded (threaded) Dask cluster.

The local cluster's workers are threads of the flow process (``flows/runtime.py``: worker
processes would each start an ephemeral Prefect API on one SQLite file). A DiBS, BaCaDI or
DCDI fit is thousands of small torch ops whose Python dispatch holds the GIL, so two such
threads fitted no faster than one (``benchmarks/stack.py``: 0.96x with 2 workers). So the
flow opens a pool of ``n`` single-threaded processes for its baseline stage
(:func:`fit_processes`), and each Prefect task, still in its worker thread where it logs,
retries and persists, hands its fits to the processes (:func:`evaluate_many`: a group queued at once).

The processes are ``python -m tasks._fitworker``, started with ``subprocess`` and one torch /
BLAS thread each (environment), talking over two private pipes in JSON and ``.npy`` arrays
(no pickles either way). Not ``multiprocessing``: its
``spawn`` and ``forkserver`` children re-run the caller's ``__main__`` script (a script
without a ``__main__`` guard then runs its whole benchmark again in every child; measured),
and a ``fork`` of a process that runs threads may deadlock. They never touch Prefect, MLflow
or the store: they get the task's arrays, run ``pipeline_lib.evaluation.evaluate_baseline``
and send back metrics and arrays. A process that dies (out of memory, a native crash) fails
its own fit with :class:`FitProcessDied` and is replaced, so the other fits go on. No pool
open (one worker, or a remote Dask cluster whose workers are processes already), or a
baseline registered at run time outside ``pipeline_lib`` (the fit processes do not know it):
the fit runs in the calling thread.
"""
from __future__ import annotations

import builtins
import contextlib
import importlib
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from tasks._fitworker import evaluate, read_message, write_message

__all__ = ["FitProcessDied", "evaluate_in_process", "evaluate_many", "fit_processes", "open_pool_size"]

_REPO = Path(__file__).resolve().parents[1]
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class FitProcessDied(RuntimeError):
    """The process that ran a fit ended without an answer (killed, out of memory, a native crash)."""


class _Worker:
    """One ``tasks._fitworker`` process and its two pipes; one request at a time."""

    def __init__(self):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        env = {**os.environ, **dict.fromkeys(_THREAD_VARS, "1"),
               "PYTHONPATH": os.pathsep.join(p for p in (str(_REPO), os.environ.get("PYTHONPATH")) if p)}
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "tasks._fitworker", str(to_child_r), str(from_child_w)],
                                         pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, env=env)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)

    def call(self, request: dict) -> dict:
        try:
            write_message(self._to_child, request)
            answer = read_message(self._from_child)
        except (EOFError, BrokenPipeError, OSError) as exc:
            self.close(kill=True)
            code = self.proc.poll()
            raise FitProcessDied(f"the process running this fit (pid {self.proc.pid}) died without an answer "
                                 f"(exit code {code}; killed or out of memory?); the fit was not retried, the "
                                 f"other fits go on") from exc
        if not answer["ok"]:
            raise _rebuilt(answer["error"])
        return answer

    def close(self, kill: bool = False) -> None:
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)
        if kill:
            self.proc.kill()
        try:  # an idle worker ends at once on EOF; one still fitting (the flow was interrupted) is killed
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Pool:
    """``n`` worker processes, started at once (their imports overlap the Dask cluster's start);
    a dead one is replaced by the next fit.

    :meth:`submit` queues a fit (first in, first out) and returns at once: ``n`` feeder threads
    hand the queue to the processes, so a Prefect task that submits its whole group keeps the
    processes busy while the other worker thread is between task runs (orchestration, records);
    with one fit at a time per task thread, those gaps left the processes idle ~10% of the stage.
    """

    def __init__(self, n: int):
        self.n = n
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._slots = threading.BoundedSemaphore(n)
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._feeders = ThreadPoolExecutor(max_workers=n, thread_name_prefix="fit-feeder")
        for _ in range(n):
            self._idle.put(self._start())

    def submit(self, request: dict) -> Future:
        """Queue one fit; the future's result is (the answer or the fit's exception, its seconds)."""

        def timed() -> tuple[dict | Exception, float]:
            t0 = time.perf_counter()
            try:
                answer = self.run(request)
            except Exception as exc:
                answer = exc
            return answer, time.perf_counter() - t0

        return self._feeders.submit(timed)

    def run(self, request: dict) -> dict:
        with self._slots:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                worker = self._start()
            try:
                answer = worker.call(request)
            except FitProcessDied:
                with self._lock:
                    self._all.discard(worker)
                raise
            except BaseException:
                self._idle.put(worker)  # the method raised; its process is fine
                raise
            self._idle.put(worker)
            return answer

    def _start(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("the fit pool is closed")
            worker = _Worker()
            self._all.add(worker)
            return worker

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._all = list(self._all), set()
        self._feeders.shutdown(wait=False, cancel_futures=True)  # queued fits of an interrupted flow
        for worker in workers:  # closing its input ends a worker's loop
            worker.close()


_OPEN: _Pool | None = None
_OPEN_LOCK = threading.Lock()


@contextlib.contextmanager
def fit_processes(n: int) -> Iterator[None]:
    """Run the fits of :func:`evaluate_in_process` in up to ``n`` worker processes inside this block.

    The pool is process-wide (the local Dask cluster's worker threads see it); blocks nest, the
    innermost pool serving, and a block inside an open pool of the same size reuses it (the
    benchmark flow opens one at its start, so the processes' imports overlap generation and
    training, and its baseline stages find them ready). Its processes start on entry and end
    with the block that started them.
    """
    global _OPEN
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n: the number of fit processes must be a positive int, got {n!r}")
    if _OPEN is not None and _OPEN.n == n:
        yield
        return
    pool = _Pool(n)
    with _OPEN_LOCK:
        previous, _OPEN = _OPEN, pool
    try:
        yield
    finally:
        with _OPEN_LOCK:
            _OPEN = previous
        pool.shutdown()


def open_pool_size() -> int:
    """The number of processes of the open pool, 0 when fits run in the calling thread."""
    pool = _OPEN
    return 0 if pool is None else pool.n


def _rebuilt(error: dict) -> Exception:
    """The fit process's exception as its own class where that is a built-in or project
    (``pipeline_lib``, ``storage``) exception, else a RuntimeError naming it; its traceback
    there as a note."""
    module, name, message = error["module"], error["type"], error["message"]
    cls = None
    if module == "builtins":
        cls = getattr(builtins, name, None)
    elif module.split(".")[0] in ("pipeline_lib", "storage"):
        with contextlib.suppress(ImportError):
            cls = getattr(importlib.import_module(module), name, None)
    try:
        exc = cls(message) if isinstance(cls, type) and issubclass(cls, Exception) else None
    except Exception:  # a class that takes other arguments
        exc = None
    if exc is None:
        exc = RuntimeError(f"{module}.{name}: {message}")
    if error.get("traceback"):
        exc.add_note("raised in the fit process:\n" + error["traceback"])
    return exc


def _builtin(method: str) -> bool:
    from pipeline_lib.baselines.registry import get_baseline

    return get_baseline(method).fit.__module__.startswith("pipeline_lib.")


def evaluate_in_process(method: str, config, task_data: dict, *, max_queries: int | None,
                        seed: int, int_holdout: float = 0.0) -> tuple[dict, dict, dict]:
    """``evaluate_baseline`` of one task in the open pool (or here): (metrics, arrays, info).

    ``info`` holds ``converged`` / ``convergence`` of the fit and ``fit_pid``, the process that
    fitted. An error of the method is raised here as it was raised there. A baseline registered
    outside ``pipeline_lib`` (by a user's script or a test, at run time) exists in this process
    only: it is fitted here.
    """
    (outcome, _), = evaluate_many(method, config, [(task_data, seed)], max_queries=max_queries,
                                  int_holdout=int_holdout)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def evaluate_many(method: str, config, tasks: Sequence[tuple[dict, int]], *, max_queries: int | None,
                  int_holdout: float = 0.0) -> Iterator[tuple[tuple[dict, dict, dict] | Exception, float]]:
    """:func:`evaluate_in_process` of several ``(task_data, seed)``, all queued at once in the
    open pool: yields, in the given order, ``((metrics, arrays, info) or the method's exception,
    seconds of the fit)`` as each finishes. Without a pool (or for a baseline registered at run
    time) each task is fitted here, lazily, when its turn comes."""
    pool = _OPEN
    if pool is None or not _builtin(method):
        for task_data, seed in tasks:
            t0 = time.perf_counter()
            try:
                outcome = evaluate(method, config, task_data, max_queries, seed, int_holdout)
            except Exception as exc:
                outcome = exc
            yield outcome, time.perf_counter() - t0
        return
    cfg = config.model_dump(mode="json")
    futures = [pool.submit({"method": method, "config": cfg, "task": task_data, "max_queries": max_queries,
                            "seed": seed, "int_holdout": int_holdout}) for task_data, seed in tasks]
    try:
        for fut in futures:
            answer, seconds = fut.result()
            yield (answer if isinstance(answer, Exception)
                   else (answer["metrics"], answer["arrays"], answer["info"])), seconds
    finally:  # the caller stopped early (its task was cancelled): fits not started are dropped
        for fut in futures:
            fut.cancel()
