"""Task sampler: draws tasks of a ``PriorConfig`` into the arrays of the Zarr data contract.

Determinism. Task ``i`` of split ``s`` is a pure function of
``np.random.SeedSequence([config.seed, SPLIT_IDS[s], i])``; its child streams
(graph, mechanism, noise, interventions, and GRN dynamics) are drawn per task, so any chunking or worker
count gives byte-identical arrays, and changing e.g. the mechanism keeps the graphs.

Vectorisation. The per-task loop only *draws random numbers* (fixed shapes per config).
The heavy part, ancestral sampling ``x_j = f_j(x_pa(j)) + eps_j`` through the mechanisms,
is batched over tasks, regimes and samples, looping only over the d_max node positions of
the canonical topological order (all tasks share it: parents have smaller canonical index).
The real nodes are then relabelled by each task's random permutation. The GRN mechanism
(``grn.py``) is the exception: it integrates an SDE over time steps, batched over tasks,
cells and genes, with each task's Wiener increments from that task's own stream.

Returned arrays (T tasks, d = d_max, K = n_regimes, p = perturbation_dim):

=============  ================  =========================================================
adjacency      (T, d, d) uint8   A[i, j] = 1 iff i -> j
node_mask      (T, d) bool       real nodes (padding is always the last d - d_t columns)
x_obs          (T, n_obs, d) f4  observational samples
noise_obs      (T, n_obs, d) f4  the exogenous noise eps that produced x_obs (NaN for grn)
int_targets    (T, K, d) bool    intervened nodes per regime
int_values     (T, K, d) f4      hard values (NaN where not a hard target / soft regimes)
x_int          (T, K, n_int, d)  interventional samples, fresh noise per regime
perturbation   (T, K, p) f4      only if p > 0
x_cf           (T, K, n_obs, d)  only if ``counterfactuals``: x_obs's counterfactuals under
                                 each regime, same exogenous noise (``noise_obs``)
obs_mean       (T, d) f4         per-task x_obs mean used to standardize (0 if not)
obs_std        (T, d) f4         per-task x_obs std (ddof 0) used to standardize (1 if not)
=============  ================  =========================================================

Standardization (``config.standardize``): ``x' = (x - obs_mean) / obs_std`` for x_obs, x_int
and hard int_values; ``noise_obs' = eps / obs_std``. For additive noise this keeps
``x'_j = (f_j(x_pa) - mean_j) / std_j + noise'_j``. Padded entries are 0 in x_obs,
noise_obs, x_int and x_cf, never targets (int_values NaN), mean 0 / std 1.
All arithmetic is float64; the outputs are cast to float32 at the end.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import graphs, grn, interventions, mechanisms, noise, perturbation
from .config import SPLIT_IDS, PriorConfig, PriorConfigError

#: Entropy tag of streaming (``sample_tasks``) seeds, distinct from split ids 0, 1, 2.
_STREAM_TAG = 7


def split_seed(config: PriorConfig, split: str, index: int) -> np.random.SeedSequence:
    """The seed of task ``index`` of ``split``: ``SeedSequence([seed, split_id, index])``."""
    return np.random.SeedSequence([config.seed, SPLIT_IDS[split], index])


def _draw_task(config: PriorConfig, seed: np.random.SeedSequence) -> dict[str, np.ndarray]:
    """All random ingredients of one task, canonical node order, fixed shapes."""
    streams = seed.spawn(5)  # graph, mechanism, noise, interventions, GRN dynamics
    g_graph, g_mech, g_noise, g_int = (np.random.default_rng(s) for s in streams[:4])
    d = config.d_max
    gcfg = config.graph
    n = int(g_graph.integers(gcfg.d_min, gcfg.d_max + 1))
    adj = graphs.sample_canonical_graph(gcfg, n, g_graph)
    perm = graphs.random_labels(n, d, g_graph)

    k = config.interventions.n_regimes
    if config.mechanism.kind == "grn":
        n_cells = config.n_obs + k * config.n_int
        params = grn.draw_params(config.mechanism.grn, adj, n, n_cells, g_mech)
    else:
        params = mechanisms.draw_params(config.mechanism, adj, n, g_mech)
    scale = params.pop("noise_std", None)
    s_draw = noise.noise_scales(config.noise, d, g_noise)
    scale = s_draw if scale is None else scale
    u_obs = noise.standard_noise(config.noise.kind, (config.n_obs, d), g_noise)
    u_int = noise.standard_noise(config.noise.kind, (k, config.n_int, d), g_noise)
    if config.mechanism.node_standardize:  # standardise inside the SCM, by its own x_obs noise
        params, node_std = mechanisms.standardize_nodes(config.mechanism, params, adj, n, u_obs * scale)
        scale = scale / node_std
    if config.interventions.drugs is not None:  # drug x dose experiments (GIM)
        ints = perturbation.draw_drug_regimes(config.interventions.drugs, config.mechanism.kind, n, d, g_int)
    else:
        ints = interventions.draw_interventions(config.interventions, n, d, g_int)

    task = {"n": np.int64(n), "adj": adj, "perm": perm, "scale": scale, "u_obs": u_obs, "u_int": u_int}
    task.update({"mech_" + key: val for key, val in params.items()})
    task.update({"int_" + key: val for key, val in ints.items()})
    if config.mechanism.kind == "grn":
        task["_rng"] = np.random.default_rng(streams[4])  # per-step Wiener increments
    return task


def _columns(arr: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """Relabel the last (node) axis: ``out[..., c] = arr[..., inv[t, c]]``; ``inv: (T, d)``."""
    shape = (inv.shape[0],) + (1,) * (arr.ndim - 2) + (inv.shape[1],)
    return np.take_along_axis(arr, inv.reshape(shape), axis=-1)


def _obs_stats(x_obs: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-task mean and std (ddof 0) of x_obs per node; padding (and constant nodes,
    e.g. an all-dropout gene) get mean 0 / std 1 so that standardizing is a no-op there."""
    mean = np.where(mask, x_obs.mean(axis=1), 0.0)
    std = np.where(mask, x_obs.std(axis=1), 1.0)
    return mean, np.where(std > 0, std, 1.0)


def _simulate_grn(cfg, params, mask, targets, soft_scale, rngs) -> tuple[np.ndarray, np.ndarray]:
    """Observational and interventional cells of a GRN prior in one simulation.

    Cells ``0..n_obs-1`` are observational, then ``n_int`` cells per regime. Production is
    scaled per cell and gene: 0 for knocked-out (hard) targets, ``soft_scale`` for soft ones.
    Returns ``x_obs (T, n_obs, d)`` and ``x_int (T, K, n_int, d)``.
    """
    t_count, k, d = targets.shape
    n_obs, n_int = cfg.n_obs, cfg.n_int
    per_regime = np.where(targets, 0.0 if cfg.interventions.kind == "hard" else soft_scale, 1.0)  # (T, K, d)
    prod_scale = np.concatenate(
        [np.ones((t_count, n_obs, d)), np.repeat(per_regime, n_int, axis=1)], axis=1
    )  # (T, M, d)
    x = grn.simulate(cfg.mechanism.grn, params, prod_scale, rngs)
    if cfg.mechanism.grn.technical_noise:
        x = grn.technical_noise(cfg.mechanism.grn, x, mask, rngs)
    x = x * mask[:, None, :]
    return x[:, :n_obs], x[:, n_obs:].reshape(t_count, k, n_int, d)


class _Regimes:
    """Ancestral sampling of the K intervened SCMs of each task for given noise.

    ``sample(eps: (T, K, N, d)) -> x: (T, K, N, d)``, looping over canonical node positions
    and batching tasks, regimes and samples: for node j,
    ``x_j = a_kj`` (hard target), ``r_kj f_j(x_pa) + offset_kj + eps_j`` (soft target) or
    ``f_j(x_pa) + eps_j`` (not a target).
    """

    def __init__(self, cfg, params, adj, targets, shift, offset, soft_scale):
        self.cfg, self.params, self.adj = cfg, params, adj
        self.targets, self.shift, self.offset, self.soft_scale = targets, shift, offset, soft_scale

    def sample(self, eps: np.ndarray) -> np.ndarray:
        t_count, k, n, d = eps.shape
        x = np.zeros((t_count, k, n, d))
        if k == 0 or n == 0:
            return x
        flat = x.reshape(t_count, k * n, d)  # a view: columns written below are seen here
        hard = self.cfg.interventions.kind == "hard"
        for j in range(d):
            f = mechanisms.evaluate(self.cfg.mechanism, self.params, self.adj, flat, j).reshape(t_count, k, n)
            tgt = self.targets[:, :, j, None]
            if hard:
                x[..., j] = np.where(tgt, self.shift[:, :, j, None], f + eps[..., j])
            else:
                soft = self.soft_scale[:, :, j, None] * f + self.offset[:, :, j, None]
                x[..., j] = np.where(tgt, soft, f) + eps[..., j]
        return x


def sample_batch(
    config: PriorConfig,
    seeds: Sequence[np.random.SeedSequence],
    return_params: bool = False,
) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Sample one task per seed; see the module docstring for the arrays.

    With ``return_params`` also returns the SCM parameters in the tasks' node labels:
    ``noise_scale (T, d)`` (raw-unit noise std), ``order (T, d)`` (labels in a topological
    order) and, for linear/bge, ``weights (T, d, d)`` (``weights[t, i, j]`` = coefficient of
    x_i in x_j) and ``intercepts (T, d)``; all in raw (unstandardized) units.
    """
    cfg = config
    d, k, n_obs, n_int = cfg.d_max, cfg.interventions.n_regimes, cfg.n_obs, cfg.n_int
    tasks = [_draw_task(cfg, s) for s in seeds]
    t_count = len(tasks)
    if t_count == 0:
        raise PriorConfigError("n_tasks: need at least one task")
    b = {key: np.stack([task[key] for task in tasks]) for key in tasks[0] if not key.startswith("_")}

    adj = b["adj"]  # (T, d, d) canonical, strictly upper triangular
    mask = np.arange(d)[None, :] < b["n"][:, None]  # (T, d)
    params = {key[5:]: val for key, val in b.items() if key.startswith("mech_")}
    scale = b["scale"] * mask  # (T, d); padded nodes get no noise

    icfg = cfg.interventions
    targets = b["int_targets"]  # (T, K, d) canonical
    x_cf = None
    if cfg.mechanism.kind == "grn":
        x_obs, x_int = _simulate_grn(cfg, params, mask, targets, b["int_soft_scale"], [t["_rng"] for t in tasks])
        eps_obs = np.full_like(x_obs, np.nan)  # no additive exogenous noise in a GRN
        mean, std = _obs_stats(x_obs, mask)
        shift = np.zeros((t_count, k, d))  # knockout: x_j = 0 in raw units
    else:
        # --- observational ancestral sampling, vectorised over tasks and samples
        eps_obs = b["u_obs"] * scale[:, None, :]  # (T, n_obs, d)
        x_obs = np.zeros((t_count, n_obs, d))
        for j in range(d):
            x_obs[:, :, j] = mechanisms.evaluate(cfg.mechanism, params, adj, x_obs, j) + eps_obs[:, :, j]
        mean, std = _obs_stats(x_obs, mask)

        # --- interventional regimes: fresh noise, batched over (task, regime, sample)
        offset = icfg.value_scale * std[:, None, :] * b["int_z"]  # (T, K, d)
        shift = mean[:, None, :] + offset  # hard values a = mean + value_scale * std * z
        if icfg.value_dist == "beyond_range":  # from the edge of the observed range outwards
            lo, hi = x_obs.min(axis=1)[:, None, :], x_obs.max(axis=1)[:, None, :]  # (T, 1, d)
            shift = np.where(b["int_z"] > 0, hi, lo) + offset
        eps_int = b["u_int"] * scale[:, None, None, :]  # (T, K, n_int, d)
        regime = _Regimes(cfg, params, adj, targets, shift, offset, b["int_soft_scale"])
        x_int = regime.sample(eps_int)
        if cfg.counterfactuals:
            # the same regimes driven by the observational noise of x_obs
            x_cf = regime.sample(np.broadcast_to(eps_obs[:, None], (t_count, k, n_obs, d)))
    if icfg.kind == "hard":
        int_values = np.where(targets, shift, np.nan)
    else:
        int_values = np.full((t_count, k, d), np.nan)

    # --- standardization with the observational statistics of each task
    if cfg.standardize:
        x_obs = (x_obs - mean[:, None, :]) / std[:, None, :]
        x_int = (x_int - mean[:, None, None, :]) / std[:, None, None, :]
        if x_cf is not None:
            x_cf = (x_cf - mean[:, None, None, :]) / std[:, None, None, :]
        int_values = (int_values - mean[:, None, :]) / std[:, None, :]
        noise_obs = eps_obs / std[:, None, :]
        obs_mean, obs_std = mean, std
    else:
        noise_obs = eps_obs
        obs_mean, obs_std = np.zeros_like(mean), np.ones_like(std)

    # --- relabel real nodes: canonical node k becomes label perm[t, k]
    perm = b["perm"]
    inv = graphs.inverse_permutation(perm)
    targets_out = _columns(targets, inv)
    out = {
        "adjacency": graphs.relabel_adjacency(adj, inv).astype(np.uint8),
        "node_mask": _columns(mask, inv),
        "x_obs": _columns(x_obs, inv).astype(np.float32),
        "noise_obs": _columns(noise_obs, inv).astype(np.float32),
        "int_targets": targets_out,
        "int_values": _columns(int_values, inv).astype(np.float32),
        "x_int": _columns(x_int, inv).astype(np.float32),
        "obs_mean": _columns(obs_mean, inv).astype(np.float32),
        "obs_std": _columns(obs_std, inv).astype(np.float32),
    }
    if x_cf is not None:
        out["x_cf"] = _columns(x_cf, inv).astype(np.float32)
    if icfg.drugs is not None:  # features of the drug x dose experiments, node-label free
        out["perturbation"] = b["int_features"].astype(np.float32)
    elif icfg.perturbation_dim > 0:
        out["perturbation"] = interventions.perturbation_features(
            targets_out, b["int_pert_map"], b["int_pert_noise"], icfg.perturbation_noise
        ).astype(np.float32)
    if not return_params:
        return out
    extra = {"noise_scale": _columns(scale, inv), "order": perm}
    if "weights" in params:
        extra["weights"] = graphs.relabel_adjacency(params["weights"], inv)
        extra["intercepts"] = _columns(params["intercepts"], inv)
    return out, extra


def sample_split_range(config: PriorConfig, split: str, start: int, stop: int) -> dict[str, np.ndarray]:
    """Tasks ``[start, stop)`` of ``split``; byte-identical for any chunking of the range."""
    n_total = config.n_tasks(split)
    if not (0 <= start < stop <= n_total):
        raise PriorConfigError(
            f"start/stop=({start}, {stop}): need 0 <= start < stop <= splits.{split}={n_total}"
        )
    return sample_batch(config, [split_seed(config, split, i) for i in range(start, stop)])


def sample_tasks(
    config: PriorConfig, n_tasks: int, rng: np.random.Generator | int
) -> dict[str, np.ndarray]:
    """``n_tasks`` fresh tasks for streaming training; task seeds are drawn from ``rng``
    (an int seeds a new generator), so successive calls with one generator never repeat."""
    if n_tasks < 1:
        raise PriorConfigError(f"n_tasks={n_tasks} must be >= 1")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    entropy = gen.integers(0, 2**63 - 1, size=n_tasks, dtype=np.int64)
    seeds = [np.random.SeedSequence([_STREAM_TAG, int(e)]) for e in entropy]
    return sample_batch(config, seeds)
