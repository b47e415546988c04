"""Fitting MetaCaDI on one system and the posterior it answers with."""
from __future__ import annotations

import time

import numpy as np
import torch

from pipeline_lib.models.dpdag import shift_count_scores
from pipeline_lib.models.metacadi.config import MetaCaDIConfig, MetaCaDIInputError
from pipeline_lib.models.metacadi.model import MetaCaDIModel
from pipeline_lib.posterior import GraphPosterior, TargetPosterior


def split_experiments(data: dict, cfg: MetaCaDIConfig) -> dict[str, np.ndarray]:
    """Cut one system's arrays into experiments (layout in :mod:`pipeline_lib.models.metacadi`).

    Reads ``data["x_int"]: (K, n_int, d)`` and, with ``use_obs``, ``data["x_obs"]: (N, d)``
    only. Returns ``support: (T_all, n_support, d)`` and ``query: (T_all, n_query, d)`` of the
    meta-training experiments (regimes 0..T-1, then x_obs if used) and ``test: (K - T,
    n_test_rows, d)``, the rows of regimes T..K-1 that adaptation sees.
    """
    if "x_int" not in data:
        raise MetaCaDIInputError("data['x_int'] is missing: MetaCaDI needs the (K, n_int, d) experiments")
    x_int = np.asarray(data["x_int"], dtype=np.float64)
    if x_int.ndim != 3:
        raise MetaCaDIInputError(f"data['x_int'] must have shape (K, n_int, d), got {x_int.shape}")
    k, n_int, d = x_int.shape
    if d < 2:
        raise MetaCaDIInputError(f"data['x_int'] has d={d} nodes; MetaCaDI needs at least 2")
    t, t_test = cfg.n_train_tasks, cfg.n_test_tasks
    if k < t + t_test:
        raise MetaCaDIInputError(
            f"data['x_int'] has K={k} regimes but n_train_tasks + n_test_tasks = {t} + {t_test} = {t + t_test}")
    rows = cfg.n_support + cfg.n_query
    if n_int < rows:
        raise MetaCaDIInputError(
            f"data['x_int'] has n_int={n_int} rows per regime but n_support + n_query = {rows}")
    if n_int < cfg.n_test_rows:
        raise MetaCaDIInputError(f"data['x_int'] has n_int={n_int} rows but n_test_rows = {cfg.n_test_rows}")
    train = x_int[:t, :rows]
    if cfg.use_obs:
        x_obs = np.asarray(data.get("x_obs", np.zeros((0, d))), dtype=np.float64)
        if x_obs.ndim != 2 or x_obs.shape[1] != d or x_obs.shape[0] < rows:
            raise MetaCaDIInputError(
                f"data['x_obs'] must have shape (N >= n_support + n_query = {rows}, {d}) with use_obs=True, "
                f"got {x_obs.shape}")
        train = np.concatenate([train, x_obs[None, :rows]])
    test = x_int[t:, : cfg.n_test_rows]
    if not (np.isfinite(train).all() and np.isfinite(test).all()):
        raise MetaCaDIInputError("data['x_int'] / data['x_obs'] contain NaN or inf in the rows MetaCaDI uses")
    return {"support": train[:, : cfg.n_support], "query": train[:, cfg.n_support:], "test": test}


class MetaCaDIPosterior(GraphPosterior, TargetPosterior):
    """The trained task-shared model of one system: DP-DAG graph posterior, the target
    probabilities of all K regimes in store order, and closed-form :meth:`adapt` for new
    experiments. ``history``: per-step loss parts; ``train_seconds``: the outer loop's wall time."""

    def __init__(self, model: MetaCaDIModel, cfg: MetaCaDIConfig, mean: np.ndarray, std: np.ndarray,
                 target_probs: np.ndarray, history: list[dict[str, float]], train_seconds: float):
        self.model, self.cfg = model.eval(), cfg
        self.n_nodes = model.d
        self.mean, self.std = mean, std
        self.target_probs = target_probs
        self.history, self.train_seconds = history, train_seconds
        self._edge_probs = model.dag.edge_probs(cfg.n_edge_mc, _generator(cfg, 1))

    def edge_probs(self) -> np.ndarray:
        return self._edge_probs

    def sample_graphs(self, n: int, rng: np.random.Generator) -> np.ndarray:
        gen = torch.Generator(device=self.cfg.device).manual_seed(int(rng.integers(2**62)))
        return self.model.dag.sample_hard(n, gen)

    def intervention_target_probs(self) -> np.ndarray:
        return self.target_probs

    def adapt(self, x_new: np.ndarray) -> np.ndarray:
        """Target probabilities ``(d,)`` of a newly arriving experiment ``x_new: (n, d)``, by the
        model's adaptation rule (ridge for ``inner='closed_form'``), no retraining."""
        x_new = np.asarray(x_new, dtype=np.float64)
        if x_new.ndim != 2 or x_new.shape[1] != self.n_nodes or x_new.shape[0] < 2:
            raise MetaCaDIInputError(f"x_new must have shape (n >= 2, {self.n_nodes}), got {x_new.shape}")
        if not np.isfinite(x_new).all():
            raise MetaCaDIInputError("x_new contains NaN or inf")
        return self.adapt_batch(x_new[None])[0]

    def adapt_batch(self, x_new: np.ndarray) -> np.ndarray:
        """``(B, n, d)`` experiments (raw units) -> ``(B, d)`` target probabilities, each
        experiment adapted on its own rows. The DAG samples averaged over are the same for
        every call (a fixed seed), so the answer is a deterministic function of the rows."""
        x = torch.as_tensor((x_new - self.mean) / self.std, dtype=torch.float32, device=self.cfg.device)
        probs = self.model.target_probs(x, self.cfg.n_eval_graphs, _generator(self.cfg, 3))
        return probs.double().cpu().numpy()


def _generator(cfg: MetaCaDIConfig, offset: int) -> torch.Generator:
    return torch.Generator(device=cfg.device).manual_seed(cfg.seed * 7919 + offset)


def train_model(support: np.ndarray, query: np.ndarray, cfg: MetaCaDIConfig,
                order_scores: np.ndarray | None = None) -> tuple[MetaCaDIModel, list[dict[str, float]], float]:
    """Adam on eq. 7 over all meta-training experiments (already standardized), the DP-DAG's
    ordering scores started at ``order_scores`` when given."""
    d = support.shape[-1]
    model = MetaCaDIModel(d, cfg).to(cfg.device)
    if order_scores is not None:
        model.dag.set_order_scores(order_scores)
    graph_params = list(model.dag.parameters())
    ids = {id(p) for p in graph_params}
    opt = torch.optim.Adam([
        {"params": [p for p in model.parameters() if id(p) not in ids], "lr": cfg.lr},
        {"params": graph_params, "lr": cfg.lr_graph},
    ])
    x_s = torch.as_tensor(support, dtype=torch.float32, device=cfg.device)
    x_q = torch.as_tensor(query, dtype=torch.float32, device=cfg.device)
    gen = _generator(cfg, 0)
    t, n_q = x_q.shape[:2]
    batch = n_q if cfg.query_batch is None else min(cfg.query_batch, n_q)
    history = []
    start = time.perf_counter()
    warmup = max(1.0, cfg.occam_warmup * cfg.steps)
    for step in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        # a minibatch of query rows per experiment: random keys, the `batch` smallest win
        keys = torch.rand(t, n_q, generator=gen, device=cfg.device)
        rows = keys.argsort(dim=1)[:, :batch]  # (T, batch)
        x_batch = torch.gather(x_q, 1, rows[..., None].expand(t, batch, x_q.shape[2]))
        loss, parts = model.loss(x_s, x_batch, gen, occam_scale=min(1.0, step / warmup))
        loss.backward()
        opt.step()
        history.append(parts)
    return model, history, time.perf_counter() - start


def fit_metacadi(data: dict, config: MetaCaDIConfig | None = None) -> MetaCaDIPosterior:
    """MetaCaDI on one system: ``data`` as from :func:`pipeline_lib.taskdata.restrict` (only
    ``x_int`` and, with ``use_obs``, ``x_obs`` are read: targets and graph stay unknown)."""
    cfg = config or MetaCaDIConfig()
    parts = split_experiments(data, cfg)
    d = parts["support"].shape[-1]
    if cfg.standardize:
        rows = np.concatenate([parts["support"], parts["query"]], axis=1).reshape(-1, d)
        mean, std = rows.mean(0), rows.std(0)
        std = np.where(std > 1e-8, std, 1.0)
    else:
        mean, std = np.zeros(d), np.ones(d)
    support = (parts["support"] - mean) / std
    query = (parts["query"] - mean) / std
    scores = None
    if cfg.order_init == "shift_count" and cfg.use_obs:  # without x_obs there is no reference: uniform
        rows = np.concatenate([support, query], axis=1)  # the obs experiment is the last one
        scores = shift_count_scores(rows[-1], rows[:-1], cfg.order_init_z, cfg.order_init_scale)
    model, history, seconds = train_model(support, query, cfg, scores)
    t = cfg.n_train_tasks
    x_s = torch.as_tensor(support[:t], dtype=torch.float32, device=cfg.device)
    train_probs = model.target_probs(x_s, cfg.n_eval_graphs, _generator(cfg, 2)).double().cpu().numpy()
    post = MetaCaDIPosterior(model, cfg, mean, std, np.zeros((0, d)), history, seconds)
    test_probs = post.adapt_batch(parts["test"]) if len(parts["test"]) else np.zeros((0, d))
    post.target_probs = np.concatenate([train_probs, test_probs])
    return post
