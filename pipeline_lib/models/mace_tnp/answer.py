"""What a trained MACE-TNP answers about one dataset: an interventional predictor.

All queries of a task go through ONE batched forward pass: the observational data is
shared, each query ``(j, a, i)`` is one row of the batch, and the mixture-of-Gaussians head
gives ``log q(x_i^m | do(X_j = a), D_obs)`` for every true sample ``m`` of that query.
Quantiles (for calibration) are the mixture's, by bisection on its CDF.

An answer keeps the mixtures of the last query sets it computed, so scoring NLPID and then
calibration on the same queries costs one forward pass, not two. :func:`prepare_many`
computes the mixtures of MANY tasks' queries in few forward passes: tasks with the same
``(n_obs, d)`` are stacked (no padding, so every row sees exactly the tensors it would
alone) and their queries split into chunks of at most ``max_rows`` batch rows.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from pipeline_lib.models.mog import MixtureOfGaussians
from pipeline_lib.posterior import DensityEstimate, InterventionalPredictor, check_query
from pipeline_lib.taskdata import restrict

#: query sets whose mixtures an answer keeps (NLPID, calibration and sampling reuse them)
_CACHE_SIZE = 4


class MaceTNPAnswer(InterventionalPredictor):
    """``q(x_i | do(X_j = a), D_obs)`` of a trained model for the dataset ``x_obs: (N, d)``.

    MACE-TNP predicts each outcome's marginal, not the joint law: :meth:`sample_interventional`
    draws every column from its own predicted marginal (column ``j`` is ``a``), so the
    columns are independent given the intervention. Marginal metrics (NLPID, calibration)
    are exact; joint-sample metrics would not be meaningful for this method.
    """

    def __init__(self, model, x_obs: np.ndarray):
        x_obs = np.asarray(x_obs, dtype=np.float32)
        if x_obs.ndim != 2:
            raise ValueError(f"x_obs must have shape (N, d), got {x_obs.shape}")
        self.model = model
        self.x_obs = x_obs
        self.n_nodes = x_obs.shape[1]
        self._cache: dict[bytes, MixtureOfGaussians] = {}

    def _queries(self, j, a, i) -> tuple[np.ndarray, np.ndarray, np.ndarray, bytes]:
        """Validated query arrays and their cache key."""
        j, i = np.asarray(j, dtype=np.int64).reshape(-1), np.asarray(i, dtype=np.int64).reshape(-1)
        a = np.asarray(a, dtype=np.float32).reshape(-1)
        if not len(j) == len(a) == len(i):
            raise ValueError(f"j, a, i must have one entry per query, got lengths {len(j)}, {len(a)}, {len(i)}")
        d = self.n_nodes
        bad = (j < 0) | (j >= d) | (i < 0) | (i >= d) | (j == i)
        if bad.any():
            q = int(np.flatnonzero(bad)[0])
            check_query(int(j[q]), int(i[q]), d)  # raises, naming the problem
        return j, a, i, j.tobytes() + a.tobytes() + i.tobytes()

    def _remember(self, key: bytes, mog: MixtureOfGaussians) -> None:
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = mog

    def _mog(self, j: np.ndarray, a: np.ndarray, i: np.ndarray) -> MixtureOfGaussians:
        j, a, i, key = self._queries(j, a, i)
        if key not in self._cache:
            x = torch.as_tensor(self.x_obs)[None].expand(len(j), *self.x_obs.shape)
            self._remember(key, self.model.predict(x, None, torch.as_tensor(j), torch.as_tensor(a),
                                                   torch.as_tensor(i)))
        return self._cache[key]

    def log_density_batch(self, j, a, i, x) -> DensityEstimate:
        mog = self._mog(j, a, i)
        with torch.no_grad():
            y = torch.as_tensor(np.asarray(x), dtype=mog.means.dtype, device=mog.means.device)
            lp = mog.log_prob(y).double().cpu().numpy()
        return DensityEstimate(lp, np.zeros_like(lp))

    def quantiles_batch(self, j, a, i, probs, rng=None, n_samples: int = 0) -> np.ndarray:
        mog = self._mog(j, a, i)  # one forward pass serves every level
        levels = torch.as_tensor(np.asarray(probs, dtype=np.float64).reshape(-1), dtype=mog.means.dtype)
        with torch.no_grad():  # one bisection over every level at once
            return mog.quantile(levels).reshape(-1, len(levels)).double().cpu().numpy()

    def interventional_log_density(self, j: int, a: float, i: int, x: np.ndarray) -> DensityEstimate:
        est = self.log_density_batch(np.array([j]), np.array([a]), np.array([i]), np.asarray(x).reshape(1, -1))
        return DensityEstimate(est.log_density[0], est.mc_stderr[0])

    def sample_interventional(self, j: int, a: float, n: int, rng: np.random.Generator) -> np.ndarray:
        others = np.array([v for v in range(self.n_nodes) if v != j], dtype=np.int64)
        out = np.full((n, self.n_nodes), float(a))
        if len(others):
            mog = self._mog(np.full(len(others), j), np.full(len(others), a), others)
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            with torch.no_grad():
                out[:, others] = mog.sample(n, generator=gen).double().cpu().numpy().reshape(len(others), n).T
        return out

    @staticmethod
    def prepare_many(answers: list["MaceTNPAnswer"], queries: list[tuple], max_rows: int = 24) -> None:
        """Compute the mixtures of ``queries[t] = (j, a, i)`` for ``answers[t]`` in few forward passes.

        All answers must share one model. Tasks with the same ``x_obs`` shape ``(N, d)`` are
        stacked and their queries concatenated; one forward pass takes at most ``max_rows``
        query rows, cut between tasks where possible. With ``torch.get_num_threads() = T > 1``
        the chunks run in ``T`` threads of one intra-op thread each (PyTorch's thread count is 1
        process-wide meanwhile): independent chunks scale across cores, and a thread preempted
        on a shared machine stalls only its own chunk, not every operation's thread team
        (measured at d = 3 on the loaded 2-core machine: 9.0 ms per query vs 15.7 with two
        intra-op threads and 11.3 with one).
        Afterwards ``answers[t].log_density_batch(j, a, i, ...)`` and ``quantiles_batch`` on the
        same queries run no network. The mixture of a query does not depend on which other
        queries share its batch (no padding; rows never interact), up to float rounding.
        """
        if len(answers) != len(queries):
            raise ValueError(f"answers and queries differ in length: {len(answers)} vs {len(queries)}")
        if not answers:
            return
        model = answers[0].model
        if any(ans.model is not model for ans in answers):
            raise ValueError("prepare_many: all answers must come from one model")
        if max_rows < 1:
            raise ValueError(f"max_rows={max_rows} must be >= 1")
        groups: dict[tuple[int, int], list[int]] = {}
        for t, ans in enumerate(answers):
            groups.setdefault(ans.x_obs.shape, []).append(t)
        for members in groups.values():
            checked = [answers[t]._queries(*queries[t]) for t in members]
            # one row per query: (task position in the group, j, a, i)
            owner = np.concatenate([np.full(len(c[0]), m) for m, c in enumerate(checked)])
            j = np.concatenate([c[0] for c in checked])
            a = np.concatenate([c[1] for c in checked])
            i = np.concatenate([c[2] for c in checked])
            x_all = torch.as_tensor(np.stack([answers[t].x_obs for t in members]))  # (G, N, d)

            def forward(sl: slice) -> MixtureOfGaussians:
                x = x_all[torch.as_tensor(owner[sl])]  # (rows, N, d)
                return model.predict(x, None, torch.as_tensor(j[sl]), torch.as_tensor(a[sl]),
                                     torch.as_tensor(i[sl]))

            parts = _map_chunks(model, forward, _chunks([len(c[0]) for c in checked], max_rows))
            logits, means, scales = (torch.cat([getattr(p, f) for p in parts]) for f in ("logits", "means", "scales"))
            start = 0
            for m, t in enumerate(members):
                stop = start + len(checked[m][0])
                answers[t]._remember(checked[m][3], MixtureOfGaussians(logits[start:stop], means[start:stop],
                                                                       scales[start:stop]))
                start = stop


_THREADS = threading.Lock()


def _map_chunks(model, forward, chunks: list[slice]) -> list[MixtureOfGaussians]:
    """``[forward(c) for c in chunks]``, in ``torch.get_num_threads()`` threads of one intra-op
    thread each where there are several chunks (see :meth:`MaceTNPAnswer.prepare_many`)."""
    n = min(torch.get_num_threads(), len(chunks))
    if n <= 1:
        return [forward(c) for c in chunks]
    with _THREADS:  # one such pool at a time: each restores the thread count it found
        threads, was_training = torch.get_num_threads(), model.training
        model.eval()  # predict's own eval()/train() toggle is then a no-op in every thread
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(n, thread_name_prefix="mace-tnp") as pool:
                return list(pool.map(forward, chunks))
        finally:
            torch.set_num_threads(threads)
            model.train(was_training)


def _chunks(counts: list[int], max_rows: int) -> list[slice]:
    """Consecutive row ranges of at most ``max_rows`` rows over tasks of ``counts[t]`` rows each,
    cut between tasks where possible: a task's queries share their first-layer columns only
    within one forward pass. A task with more than ``max_rows`` rows is cut into pieces."""
    out, lo, rows = [], 0, 0
    for c in counts:
        if rows and rows + c > max_rows:
            out.append(slice(lo, lo + rows))
            lo, rows = lo + rows, 0
        while c > max_rows:
            out.append(slice(lo, lo + max_rows))
            lo, c = lo + max_rows, c - max_rows
        rows += c
    if rows:
        out.append(slice(lo, lo + rows))
    return out


#: :meth:`MaceTNPAnswer.prepare_many` as a function
prepare_many = MaceTNPAnswer.prepare_many


def predict(model, task: dict) -> MaceTNPAnswer:
    """MACE-TNP's answer for ONE task (arrays without the task axis): its real nodes' D_obs."""
    return MaceTNPAnswer(model, restrict(task)["x_obs"])
