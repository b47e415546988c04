"""Fitting GIM on one system, the answer it gives, and its storage (state dict + JSON config)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from pipeline_lib.models.dpdag import shift_count_scores
from pipeline_lib.models.gim.config import GIMConfig, GIMInputError
from pipeline_lib.models.gim.model import GIMModel
from pipeline_lib.models.gim.prune import PRUNED_LOGIT, NodeScore, order_dag, prune_dag, refine_order
from pipeline_lib.posterior import (GraphPosterior, SampledInterventional, SCMGenerator, TargetPosterior,
                                    check_intervention, check_rows)


def split_experiments(data: Mapping[str, np.ndarray], cfg: GIMConfig) -> dict[str, np.ndarray]:
    """``x_obs (N, d)``, the seen experiments ``x_int (E, n, d)`` with features ``gamma (E, p)``,
    and the features of all K regimes ``gamma_all (K, p)`` (the last ``n_test_regimes`` unseen)."""
    for key in ("x_obs", "x_int", "perturbation"):
        if key not in data:
            raise GIMInputError(f"data['{key}'] is missing: GIM needs x_obs, x_int and perturbation features")
    x_obs = np.asarray(data["x_obs"], dtype=np.float64)
    x_int = np.asarray(data["x_int"], dtype=np.float64)
    gamma = np.asarray(data["perturbation"], dtype=np.float64)
    if x_obs.ndim != 2 or x_obs.shape[0] < 2 or x_obs.shape[1] < 2:
        raise GIMInputError(f"data['x_obs'] must have shape (N >= 2, d >= 2), got {x_obs.shape}")
    d = x_obs.shape[1]
    if x_int.ndim != 3 or x_int.shape[2] != d or x_int.shape[1] < 2:
        raise GIMInputError(f"data['x_int'] must have shape (K, n_int >= 2, {d}), got {x_int.shape}")
    k = x_int.shape[0]
    if gamma.ndim != 2 or gamma.shape[0] != k:
        raise GIMInputError(f"data['perturbation'] must have shape ({k}, p), got {gamma.shape}")
    e = k - cfg.n_test_regimes
    if e < 1:
        raise GIMInputError(f"n_test_regimes={cfg.n_test_regimes} leaves no seen experiment of K={k}")
    if not (np.isfinite(x_obs).all() and np.isfinite(x_int[:e]).all() and np.isfinite(gamma).all()):
        raise GIMInputError("data['x_obs'] / data['x_int'] / data['perturbation'] contain NaN or inf")
    return {"x_obs": x_obs, "x_int": x_int[:e], "gamma": gamma[:e], "gamma_all": gamma}


class GIMPosterior(GraphPosterior, TargetPosterior, SampledInterventional, SCMGenerator):
    """A fitted GIM on one system, in the data's units.

    * graph: DP-DAG edge marginals and DAG samples;
    * targets: ``(K, d)`` probabilities ``sigmoid(l(gamma_k))`` of every regime in store order,
      the unseen ones predicted from their features alone;
    * :meth:`predict_perturbation` / :meth:`sample_perturbation`: targets, shifts and samples
      of ANY feature vector (``p(x; M, gamma, phi)``, targets drawn, graph = the MAP DAG);
    * generator / interventional: the causal model with the MAP DAG (observational, hard do,
      noise abduction; interventional densities by the sample KDE of ``SampledInterventional``).
    """

    def __init__(self, model: GIMModel, cfg: GIMConfig, x_mean, x_std, g_mean, g_std, gamma_all,
                 history: list[dict[str, float]] | None = None, train_seconds: float = float("nan")):
        self.model, self.cfg = model.eval(), cfg
        self.n_nodes = model.d
        self.x_mean, self.x_std = np.asarray(x_mean, np.float64), np.asarray(x_std, np.float64)
        self.g_mean, self.g_std = np.asarray(g_mean, np.float64), np.asarray(g_std, np.float64)
        self.gamma_all = np.asarray(gamma_all, np.float64)
        self.history, self.train_seconds = history or [], train_seconds
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + 1)
        self._edge_probs = model.dag.edge_probs(cfg.n_edge_mc, gen)
        self._adj = model.map_dag()

    # ------------------------------------------------------------------ graph / targets
    def edge_probs(self) -> np.ndarray:
        return self._edge_probs

    def sample_graphs(self, n: int, rng: np.random.Generator) -> np.ndarray:
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return self.model.dag.sample_hard(n, gen)

    def map_graph(self) -> np.ndarray:
        """``(d, d)`` uint8: the DAG the generator uses (the mode of the DP-DAG)."""
        return self._adj.round().to(torch.uint8).numpy()

    def map_graph_before_prune(self) -> np.ndarray | None:
        """``(d, d)`` uint8 MAP DAG of the fit before pruning (None: not pruned, or a loaded fit)."""
        before = self.model.map_before_prune
        return None if before is None else before.round().to(torch.uint8).numpy()

    def intervention_target_probs(self) -> np.ndarray:
        return self.predict_perturbation(self.gamma_all)["target_probs"]

    def _features(self, gamma) -> torch.Tensor:
        g = np.asarray(gamma, dtype=np.float64)
        if g.ndim == 1:
            g = g[None]
        if g.ndim != 2 or g.shape[1] != self.model.p:
            raise GIMInputError(f"perturbation features must have shape (m, {self.model.p}), got {g.shape}")
        if not np.isfinite(g).all():
            raise GIMInputError("perturbation features contain NaN or inf")
        return torch.as_tensor((g - self.g_mean) / self.g_std, dtype=torch.float32)

    @torch.no_grad()
    def predict_perturbation(self, gamma) -> dict[str, np.ndarray]:
        """Features ``gamma: (m, p)`` -> ``target_probs``, ``shift`` (data units) and ``scale``
        (noise std factor of an intervened node), each ``(m, d)``."""
        logits, shift, log_scale = self.model.intervention(self._features(gamma))
        return {"target_probs": torch.sigmoid(logits).double().numpy(),
                "shift": shift.double().numpy() * self.x_std,
                "scale": torch.exp(log_scale).double().numpy()}

    @torch.no_grad()
    def sample_perturbation(self, gamma, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` samples ``(n, d)`` of ``p(x; M, gamma, phi)`` for ONE feature vector ``gamma: (p,)``:
        each row draws its own targets ``I ~ Bernoulli(sigmoid(l(gamma)))`` (``generation_targets=
        "sample"``), or every row takes the most probable target set (``"map"``)."""
        logits, shift, log_scale = self.model.intervention(self._features(np.asarray(gamma).reshape(1, -1)))
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        u = torch.rand(n, self.n_nodes, generator=gen)
        if self.cfg.generation_targets == "map":
            targets = (logits > 0).float().expand(n, -1)
        else:
            targets = (u < torch.sigmoid(logits)).float()
        eps = torch.randn(n, self.n_nodes, generator=gen)
        x = self.model.generate(self._adj, eps, targets, shift.expand(n, -1), log_scale.expand(n, -1))
        return x.double().numpy() * self.x_std + self.x_mean

    # ------------------------------------------------------------------ generator
    def _noise(self, n: int, rng: np.random.Generator | None, noise: np.ndarray | None) -> torch.Tensor:
        if noise is not None:  # exogenous noise in data units -> standard normal units
            u = check_rows(noise, self.n_nodes, "noise") / self.x_std
            return torch.as_tensor(u / np.exp(self.model.log_sigma.detach().double().numpy()), dtype=torch.float32)
        rng = rng or np.random.default_rng()
        return torch.as_tensor(rng.standard_normal((n, self.n_nodes)), dtype=torch.float32)

    def _run(self, eps: torch.Tensor, mask=None, values=None) -> np.ndarray:
        zero = torch.zeros_like(eps)
        x = self.model.generate(self._adj, eps, zero, zero, zero, mask, values)
        return x.double().numpy() * self.x_std + self.x_mean

    def sample_observational(self, n: int, rng: np.random.Generator | None = None,
                             noise: np.ndarray | None = None) -> np.ndarray:
        return self._run(self._noise(n, rng, noise))

    def sample_do(self, intervention: Mapping[int, float], n: int, rng: np.random.Generator | None = None,
                  noise: np.ndarray | None = None) -> np.ndarray:
        mask, values = check_intervention(intervention, self.n_nodes)
        z = (values - self.x_mean) / self.x_std
        return self._run(self._noise(n, rng, noise), torch.as_tensor(mask),
                         torch.as_tensor(z, dtype=torch.float32))

    @torch.no_grad()
    def predict_noise(self, x: np.ndarray) -> np.ndarray:
        z = torch.as_tensor((check_rows(x, self.n_nodes, "x") - self.x_mean) / self.x_std, dtype=torch.float32)
        resid = z - self.model.mechanisms(z[None], self._adj)[0]
        return resid.double().numpy() * self.x_std

    # ------------------------------------------------------------------ storage
    def save(self, path: str | Path) -> Path:
        """Write the fit to ``path`` (a ``.pt`` of tensors + JSON strings; read with weights_only)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"d": self.model.d, "p": self.model.p, "x_mean": self.x_mean.tolist(), "x_std": self.x_std.tolist(),
                "g_mean": self.g_mean.tolist(), "g_std": self.g_std.tolist(), "gamma_all": self.gamma_all.tolist(),
                "train_seconds": self.train_seconds}
        torch.save({"state": self.model.state_dict(), "config": self.cfg.model_dump_json(),
                    "meta": json.dumps(meta)}, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "GIMPosterior":
        """Rebuild a saved fit; only tensors and strings are read (``weights_only=True``, no pickles)."""
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
        try:
            cfg = GIMConfig.model_validate_json(blob["config"])
            meta = json.loads(blob["meta"])
        except (KeyError, TypeError, ValueError) as exc:
            raise GIMInputError(f"{path}: not a saved GIM fit ({exc})") from None
        model = GIMModel(int(meta["d"]), int(meta["p"]), cfg)
        model.load_state_dict(blob["state"])
        return cls(model, cfg, meta["x_mean"], meta["x_std"], meta["g_mean"], meta["g_std"], meta["gamma_all"],
                   train_seconds=meta["train_seconds"])


def train_gim(x_obs: np.ndarray, x_int: np.ndarray, gamma: np.ndarray, cfg: GIMConfig
              ) -> tuple[GIMModel, list[dict[str, float]], float]:
    """Adam on the MAP loss (:mod:`.model`) over the seen experiments (standardized inputs)."""
    torch_gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed * 7919)
    e, n_int, d = x_int.shape
    model = GIMModel(d, gamma.shape[1], cfg).to(cfg.device)
    model.n_data_entries = (len(x_obs) + e * n_int) * d
    if cfg.order_init == "shift_count":
        model.dag.set_order_scores(shift_count_scores(x_obs, x_int, cfg.order_init_z, cfg.order_init_scale))
    graph_ids = {id(p) for p in model.dag.parameters()}
    opt = torch.optim.Adam([
        {"params": [p for p in model.parameters() if id(p) not in graph_ids], "lr": cfg.lr},
        {"params": list(model.dag.parameters()), "lr": cfg.lr_graph},
    ])
    xo = torch.as_tensor(x_obs, dtype=torch.float32, device=cfg.device)
    xi = torch.as_tensor(x_int, dtype=torch.float32, device=cfg.device)
    g = torch.as_tensor(gamma, dtype=torch.float32, device=cfg.device)
    b_int = n_int if cfg.batch_rows is None else min(cfg.batch_rows, n_int)
    b_obs = len(x_obs) if cfg.batch_rows is None else min(cfg.batch_rows, len(x_obs))
    history, start = [], time.perf_counter()
    warm = cfg.sparsity_warmup * cfg.steps

    def step(opt, **kw):
        opt.zero_grad(set_to_none=True)
        rows = torch.rand(e, n_int, generator=torch_gen, device=cfg.device).argsort(1)[:, :b_int]
        obs_rows = torch.randperm(len(x_obs), generator=torch_gen, device=cfg.device)[:b_obs]
        batch = torch.gather(xi, 1, rows[..., None].expand(e, b_int, d))
        loss, parts = model.loss(xo[obs_rows], batch, g, torch_gen, **kw)
        loss.backward()
        opt.step()
        return parts

    for t in range(cfg.steps):
        history.append(step(opt, lambda_G=cfg.lambda_G * min(1.0, t / warm) if warm > 0 else None))
    if cfg.prune != "none":
        prune_map_dag(model, x_obs, x_int, refine_order_too=cfg.prune == "bic+order")
    if cfg.refit_steps:
        # mechanisms, noise and phi on the fixed MAP DAG (the same target marginal as the fit)
        adj = model.map_dag()
        if cfg.refit_init != "continue":
            model.reinit_except_graph(seed=cfg.seed * 7919 + 2, mechanisms=cfg.refit_init == "fresh")
        if cfg.refit_init == "fresh_phi":  # fitted mechanisms kept: their residuals give the noise scales
            model.set_noise_from_observational(xo, adj)
        refit = torch.optim.Adam([p for p in model.parameters() if id(p) not in graph_ids], lr=cfg.lr)
        for _ in range(cfg.refit_steps):
            history.append({**step(refit, adj=adj), "refit": 1.0})
    return model, history, time.perf_counter() - start


@torch.no_grad()
def prune_map_dag(model: GIMModel, x_obs: np.ndarray, x_int: np.ndarray, refine_order_too: bool) -> None:
    """The graph stage after the DP-DAG fit (:mod:`.prune`; ``x_obs, x_int`` standardized seen rows).

    ``refine_order_too=False`` (``prune="bic"``): the MAP DAG's edges that per-node BIC drops get
    ``PRUNED_LOGIT`` (out of the MAP DAG and of the graph posterior's samples).
    ``True`` (``prune="bic+order"``): the MAP ordering is refined by BIC local search and the
    DAG of its best parents becomes the MAP DAG: the ordering scores keep their sorted values,
    reassigned to the new ordering (the Plackett-Luce spread, i.e. the ordering's uncertainty,
    stays), the DAG's edges get ``-PRUNED_LOGIT`` and every other node pair ``PRUNED_LOGIT``:
    the graph posterior becomes the orderings' law over subgraphs of that DAG.
    The MAP DAG before this stage stays on ``model.map_before_prune``."""
    dag = model.dag
    if dag.edge_space != "node":
        raise GIMInputError("prune needs edge_space='node' (a position-space logit is no node pair)")
    before = model.map_dag()
    scorer = NodeScore(x_obs, x_int, "linear" if model.cfg.mechanism == "linear" else "hinge", model.cfg.prune_penalty)
    if refine_order_too:
        start = dag.order_scores.argsort(descending=True).tolist()
        order = refine_order(start, scorer)
        after = torch.as_tensor(order_dag(order, scorer), dtype=dag.edge_logits.dtype, device=dag.edge_logits.device)
        values = dag.order_scores.sort(descending=True).values.clone()
        dag.order_scores[torch.as_tensor(order, device=values.device)] = values
        dag.edge_logits.copy_(torch.where(after > 0.5, -PRUNED_LOGIT, PRUNED_LOGIT))
    else:
        after = prune_dag(before.cpu().numpy(), scorer)
        removed = torch.as_tensor((before.cpu().numpy() > 0.5) & (after == 0), device=before.device)
        dag.edge_logits[removed] = PRUNED_LOGIT
    model.map_before_prune = before.cpu()


def fit_gim(data: Mapping[str, np.ndarray], config: GIMConfig | None = None) -> GIMPosterior:
    """GIM on one system: ``data`` as from :func:`pipeline_lib.taskdata.restrict`; reads ``x_obs``,
    ``perturbation`` and the seen regimes of ``x_int`` (never targets or the graph)."""
    cfg = config or GIMConfig()
    parts = split_experiments(data, cfg)
    d = parts["x_obs"].shape[1]
    if cfg.standardize:
        x_mean, x_std = parts["x_obs"].mean(0), parts["x_obs"].std(0)
        x_std = np.where(x_std > 1e-8, x_std, 1.0)
        g_mean, g_std = parts["gamma"].mean(0), parts["gamma"].std(0)
        g_std = np.where(g_std > 1e-8, g_std, 1.0)
    else:
        x_mean, x_std = np.zeros(d), np.ones(d)
        g_mean, g_std = np.zeros(parts["gamma"].shape[1]), np.ones(parts["gamma"].shape[1])
    best, total_seconds = None, 0.0
    for r in range(cfg.n_restarts):
        run_cfg = cfg.model_copy(update={"seed": cfg.seed + r})
        model, history, seconds = train_gim((parts["x_obs"] - x_mean) / x_std, (parts["x_int"] - x_mean) / x_std,
                                            (parts["gamma"] - g_mean) / g_std, run_cfg)
        total_seconds += seconds
        main = [h for h in history if "refit" not in h]  # restarts compete on the fit's own objective
        tail = main[-max(1, len(main) // 10):]
        score = float(np.mean([h["loss"] for h in tail]))
        if best is None or score < best[0]:
            best = (score, model, history, run_cfg)
    _, model, history, run_cfg = best
    return GIMPosterior(model.cpu(), run_cfg, x_mean, x_std, g_mean, g_std, parts["gamma_all"], history,
                        total_seconds)
