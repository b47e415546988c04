"""The fit process of ``tasks/fitprocs.py``: ``python -m tasks._fitworker IN_FD OUT_FD``.

Reads requests ``(function, args, kwargs)`` from ``IN_FD`` and writes ``(True, result)`` or
``(False, exception)`` to ``OUT_FD``, each a length-prefixed pickle, one at a time, until its
input closes (the flow process ended or shut the pool). The pipes connect two processes of
this program only: nothing a user can reach is unpickled. Started with one torch / BLAS
thread (the parent sets the thread variables; torch is told again here).
"""
from __future__ import annotations

import os
import pickle
import struct
import sys
import traceback

_HEADER = struct.Struct("!Q")


def read_message(fd: int):
    """The next message on ``fd``; EOFError when the other end closed."""
    header = _read_exactly(fd, _HEADER.size)
    return pickle.loads(_read_exactly(fd, _HEADER.unpack(header)[0]))


def write_message(fd: int, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other end of the pipe closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def serve(in_fd: int, out_fd: int) -> None:
    import torch

    torch.set_num_threads(1)
    import pipeline_lib.evaluation  # noqa: F401  (loaded before the first request)

    while True:
        try:
            fn, args, kwargs = read_message(in_fd)
        except EOFError:
            return
        try:
            answer = (True, fn(*args, **kwargs))
        except Exception as exc:  # sent back and raised there, as the fit raised it
            exc.add_note("raised in the fit process:\n" + traceback.format_exc(limit=8))
            answer = (False, exc)
        try:
            write_message(out_fd, answer)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:  # an answer that does not pickle
            write_message(out_fd, (False, RuntimeError(f"the fit's answer could not be sent back: {exc!r}")))


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
