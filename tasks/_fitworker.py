"""The fit process of ``tasks/fitprocs.py``: ``python -m tasks._fitworker IN_FD OUT_FD``.

Reads fit requests from ``IN_FD`` and writes answers to ``OUT_FD``, one at a time, until its
input closes (the flow process ended or shut the pool). Nothing is unpickled on either side:
a message is a JSON header plus ``.npy`` arrays read with ``allow_pickle=False``
(:func:`write_message` / :func:`read_message`). A request names the baseline and carries its
config as JSON (rebuilt here by the baseline's registered config class) and the task's
arrays; an answer is (metrics, arrays, info), or an error by class name, message and
traceback (rebuilt there as the same built-in or project exception class, see
``tasks/fitprocs.py``). Started with one torch / BLAS thread (the parent sets the thread
variables; torch is told again here).
"""
from __future__ import annotations

import io
import json
import os
import struct
import sys
import traceback

import numpy as np

_HEADER = struct.Struct("!QQ")  # JSON bytes, array bytes


def _split(obj, arrays: list):
    """``obj`` with every ndarray replaced by ``{"__array__": i}`` (arrays appended)."""
    if isinstance(obj, np.ndarray):
        arrays.append(obj)
        return {"__array__": len(arrays) - 1}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("fit messages: dict keys must be strings")
        return {k: _split(v, arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split(v, arrays) for v in obj]
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    raise TypeError(f"fit messages carry JSON values and numpy arrays, not {type(obj).__name__}")


def _join(obj, arrays: list):
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        return {k: _join(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, arrays) for v in obj]
    return obj


def write_message(fd: int, obj) -> None:
    arrays: list[np.ndarray] = []
    header = json.dumps(_split(obj, arrays)).encode()
    buf = io.BytesIO()
    for a in arrays:
        np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    body = buf.getvalue()
    view = memoryview(_HEADER.pack(len(header), len(body)) + header + body)
    while view:
        view = view[os.write(fd, view):]


def read_message(fd: int):
    """The next message on ``fd``; EOFError when the other end closed."""
    n_header, n_body = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    header = json.loads(_read_exactly(fd, n_header))
    buf, arrays = io.BytesIO(_read_exactly(fd, n_body)), []
    while buf.tell() < n_body:
        arrays.append(np.load(buf, allow_pickle=False))
    return _join(header, arrays)


def _read_exactly(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other end of the pipe closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def evaluate(method: str, config, task: dict, max_queries: int | None, seed: int,
             int_holdout: float = 0.0) -> tuple[dict, dict, dict]:
    """``evaluate_baseline`` of one task, here: (metrics, arrays, info), ``info["fit_pid"]`` this process."""
    from pipeline_lib.evaluation import evaluate_baseline

    info: dict = {}
    metrics, arrays = evaluate_baseline(method, config, task, max_queries=max_queries, seed=seed, info=info,
                                        int_holdout=int_holdout)
    return metrics, arrays, {**info, "fit_pid": os.getpid()}


def fit(request: dict) -> dict:
    """One request ``{"method", "config", "task", "max_queries", "seed", "int_holdout"}`` -> its answer."""
    from pipeline_lib.baselines.registry import get_baseline

    method = request["method"]
    config = get_baseline(method).config_cls.model_validate(request["config"])
    metrics, arrays, info = evaluate(method, config, request["task"], request["max_queries"], request["seed"],
                                     request["int_holdout"])
    return {"ok": True, "metrics": metrics, "arrays": arrays, "info": info}


def serve(in_fd: int, out_fd: int) -> None:
    import torch

    torch.set_num_threads(1)
    import pipeline_lib.evaluation  # noqa: F401  (loaded before the first request)

    while True:
        try:
            request = read_message(in_fd)
        except EOFError:
            return
        try:
            answer = fit(request)
        except Exception as exc:  # sent back and raised there, as the fit raised it
            message = "\n".join([str(exc), *getattr(exc, "__notes__", [])])  # notes say why, e.g. rows held out
            answer = {"ok": False, "error": {"module": type(exc).__module__, "type": type(exc).__qualname__,
                                             "message": message, "traceback": traceback.format_exc(limit=8)}}
        try:
            write_message(out_fd, answer)
        except TypeError as exc:  # an answer that is not JSON + arrays
            write_message(out_fd, {"ok": False, "error": {"module": "builtins", "type": "RuntimeError",
                                                          "message": f"the fit's answer could not be sent back: {exc}",
                                                          "traceback": ""}})


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
