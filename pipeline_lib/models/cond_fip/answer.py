"""Cond-FiP's answer for one dataset: a generative SCM plus sample-based interventional densities.

:func:`predict` embeds one task's observational data (with the true graph, or a graph the
caller passes) and returns a :class:`CondFiPAnswer`, which implements
:class:`pipeline_lib.posterior.SCMGenerator` and :class:`pipeline_lib.posterior.InterventionalPredictor`
over the task's real nodes, in the units of the data it was given:

* data are standardised per node with the mean ``m_v`` and std ``s_v`` (ddof 0) of the given
  ``x_obs`` (the paper's convention; a no-op on stores written with ``standardize: true``),
  the model runs in standardised units and every output is mapped back,
  ``x = m + s z``, noise ``n = s n_z``, intervention values ``a_z = (a - m_j) / s_j``;
* ``predict_noise(x)``: the encoder's ``n_hat`` with the given dataset as context (rows of
  ``x`` that are not the dataset itself attend to the dataset rows, never to each other), or
  with ``abduction="decoder"`` the additive-noise inverse ``x - f_hat(x)``;
* with ``decoder_readout="ridge"`` the readout is refitted on *all* rows of the dataset (the
  embedding still pools ``embed_rows`` of them);
* ``sample_observational`` / ``sample_do``: fixed-point generation from given noise, or
  from *fresh* noise drawn per node, independently, from the empirical law of the
  abducted noise of the dataset rows (a bootstrap of ``n_hat``; Cond-FiP does not model
  the noise law itself);
* ``counterfactual(x, do)``: abduct ``n_hat(x)`` with the encoder, then act (the default of
  :class:`~pipeline_lib.posterior.SCMGenerator`).

The interventional density (:class:`pipeline_lib.posterior.SampledInterventional`) is fitted to
``S`` generated samples ``y_s`` of ``X_i`` under ``do(X_j = a)``, not a closed form. By default
(``density = "gaussian"``, ``calibrated = True``) it is the *calibrated Gaussian*::

    q(x_i | do(X_j = a)) = N(x_i; mean(y), var(y) + e_i),   e_i = mean_m (x_gen_i^m - x_i^m)^2,

``x_gen`` the dataset rows regenerated from the noise the *encoder* abducts from them (with
``abduction="decoder"`` the decoder's own noise would regenerate them exactly: ``e_i = 0``; the
encoder's noise measures how far the two parts of the model disagree on this dataset). ``density = "kde"``,
``calibrated = False`` gives the earlier **Gaussian kernel density estimate**::

    q(x_i | do(X_j = a)) = (1/S) sum_s N(x_i; y_s, h^2),   y_s = X_i of sample s ~ do(X_j = a),
    h = 1.06 sd(y) S^{-1/5}  (Silverman / Scott rule),

with the delta-method standard error ``sd_s(k_s) / (sqrt(S) q)`` of the log estimate.
``calibrated = False`` with ``density = "gaussian"`` is the plain normal of the samples. ``e_i``
is the model's own error on the dataset, measured without the truth, and treated as
independent Gaussian noise (a simplification: under an intervention the error of a node
changes with the intervention). ``quantiles_from_draws``: coverage quantiles from the same
draws. ``benchmarks/cond_fip_density.py`` compares the options (README, Results).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from pipeline_lib.metrics.graph import is_dag
from pipeline_lib.models.cond_fip.model import CondFiP, DatasetEmbedding, parent_mask
from pipeline_lib.posterior import SampledInterventional, SCMGenerator, check_intervention, check_rows
from pipeline_lib.taskdata import restrict

#: rows per forward pass when generating or abducting (bounds memory, not results)
CHUNK_ROWS = 2048


class CondFiPAnswer(SampledInterventional, SCMGenerator):
    """Cond-FiP's generative SCM for one dataset (module docstring). Built by :func:`predict`.

    ``schedule``: how :meth:`CondFiP.generate` reaches the fixed point (``"levels"``, one
    decoder evaluation per node, or the plain ``"fixed_point"`` iteration; same result).
    """

    schedule: str = "levels"
    #: the interventional density (module docstring): the calibrated Gaussian by default, since
    #: the KDE's NLPID was 20-90x the empty graph's (benchmarks/cond_fip_density.py, README)
    density: str = "gaussian"
    #: with ``density = "gaussian"``: add the reconstruction variance of :meth:`density_extra_variance`
    calibrated: bool = True
    quantiles_from_draws: bool = True

    def __init__(self, model: CondFiP, emb: DatasetEmbedding, allowed: torch.Tensor, x_ctx: np.ndarray,
                 mean: np.ndarray, std: np.ndarray, noise_ctx_z: np.ndarray, abduction: str = "encoder",
                 noise_enc_z: np.ndarray | None = None):
        self.model = model
        self.abduction = abduction
        self.emb = emb  # batch of one task
        self.allowed = allowed  # (1, d, d)
        self.x_ctx = x_ctx  # (N, d) data units, as given
        self.mean, self.std = mean, std  # (d,)
        self.noise_ctx_z = noise_ctx_z  # (N, d) abducted noise of the dataset rows, standardised
        # the encoder's noise of the same rows (the reconstruction variance; = noise_ctx_z by default)
        self.noise_enc_z = noise_ctx_z if noise_enc_z is None else noise_enc_z
        self.n_nodes = int(x_ctx.shape[1])
        self._device = next(model.parameters()).device

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32), device=self._device)

    # ----------------------------------------------------------------- noise
    @torch.no_grad()
    def predict_noise(self, x: np.ndarray) -> np.ndarray:
        """``(n, d)`` noise abducted by the encoder from rows ``x`` (data units)."""
        x = check_rows(x, self.n_nodes, "x")
        if x.shape == self.x_ctx.shape and np.array_equal(x, self.x_ctx):
            return self.noise_ctx_z * self.std
        ctx = self._tensor((self.x_ctx - self.mean) / self.std)
        z = self._tensor((x - self.mean) / self.std)
        node_mask = torch.ones(1, self.n_nodes, dtype=torch.bool, device=self._device)
        out = []
        for start in range(0, len(z), CHUNK_ROWS):
            q = z[start:start + CHUNK_ROWS]
            if self.abduction == "decoder":
                out.append((q - self.model.mechanism(q[None], self.emb, self.allowed)[0]).double().cpu().numpy())
                continue
            inp = torch.cat([ctx, q])[None]  # (1, N + c, d)
            keys = torch.zeros(1, inp.shape[1], dtype=torch.bool, device=self._device)
            keys[:, : len(ctx)] = True  # query rows read the dataset, never each other
            h = self.model.encode(inp, keys, self.allowed & node_mask[:, :, None])
            out.append(self.model.noise_from_tokens(inp, h)[0, len(ctx):].double().cpu().numpy())
        return np.concatenate(out) * self.std if out else np.zeros((0, self.n_nodes))

    def _noise_z(self, n: int, rng: np.random.Generator | None, noise: np.ndarray | None) -> np.ndarray:
        if noise is not None:
            noise = check_rows(noise, self.n_nodes, "noise")
            if len(noise) != n:
                raise ValueError(f"noise has {len(noise)} rows but n={n}")
            return noise / self.std
        rng = np.random.default_rng() if rng is None else rng
        idx = rng.integers(0, len(self.noise_ctx_z), size=(n, self.n_nodes))
        return self.noise_ctx_z[idx, np.arange(self.n_nodes)[None, :]]

    # ------------------------------------------------------------ generation
    @torch.no_grad()
    def _generate(self, noise_z: np.ndarray, intervention: Mapping[int, float]) -> np.ndarray:
        mask, values = check_intervention(intervention, self.n_nodes)
        int_mask = torch.as_tensor(mask[None], device=self._device)
        int_value = self._tensor(((values - self.mean) / self.std)[None])
        node_mask = torch.ones(1, self.n_nodes, dtype=torch.bool, device=self._device)
        out = []
        for start in range(0, len(noise_z), CHUNK_ROWS):
            nz = self._tensor(noise_z[start:start + CHUNK_ROWS])[None]
            x = self.model.generate(nz, self.emb, self.allowed, node_mask, int_mask, int_value,
                                    schedule=self.schedule)
            out.append(x[0].double().cpu().numpy())
        z = np.concatenate(out) if out else np.zeros((0, self.n_nodes))
        x = z * self.std + self.mean
        x[:, mask] = values[mask]  # exact constants, not the float32 round trip
        return x

    def reconstruction_variance(self) -> np.ndarray:
        """``(d,)`` per-node mean squared error (data units) of the dataset rows regenerated from
        the encoder's noise of them, ``mean_m (x_gen^m - x^m)^2``: the model's error on *this*
        dataset, measured without the truth (cached)."""
        if "_recon_var" not in self.__dict__:
            x_rec = self._generate(self.noise_enc_z, {})
            self._recon_var = ((x_rec - self.x_ctx) ** 2).mean(0)
        return self._recon_var

    def density_extra_variance(self, i: int) -> float:
        """With ``calibrated``: :meth:`reconstruction_variance` of node ``i`` widens the Gaussian
        density (generation error treated as independent Gaussian noise); else 0."""
        return float(self.reconstruction_variance()[int(i)]) if self.calibrated else 0.0

    def sample_observational(self, n: int, rng: np.random.Generator | None = None,
                             noise: np.ndarray | None = None) -> np.ndarray:
        """``(n, d)`` observational samples from given (data units) or bootstrapped noise."""
        return self._generate(self._noise_z(n, rng, noise), {})

    def sample_do(self, intervention: Mapping[int, float], n: int, rng: np.random.Generator | None = None,
                  noise: np.ndarray | None = None) -> np.ndarray:
        """``(n, d)`` samples under the hard intervention ``{node: value}`` (data units)."""
        return self._generate(self._noise_z(n, rng, noise), intervention)


def _graph_for(task: dict, data: dict, adjacency: np.ndarray | None) -> np.ndarray:
    d = data["x_obs"].shape[1]
    if adjacency is None:
        if "adjacency" not in data:
            raise ValueError("task has no 'adjacency'; pass adjacency= (a predicted graph)")
        a = data["adjacency"]
    else:
        a = np.asarray(adjacency)
        d_max = np.asarray(task["node_mask"]).shape[0]
        if a.shape == (d_max, d_max) and d_max != d:
            nodes = np.flatnonzero(np.asarray(task["node_mask"], dtype=bool))
            a = a[np.ix_(nodes, nodes)]
        if a.shape != (d, d):
            raise ValueError(f"adjacency must be ({d}, {d}) over the real nodes (or ({d_max}, {d_max})), "
                             f"got {a.shape}")
    if not np.isin(a, (0, 1)).all():
        raise ValueError("adjacency must be binary (A[i, j] = 1 iff i -> j)")
    a = a.astype(np.uint8)
    if np.any(np.diag(a)) or not is_dag(a):
        raise ValueError("adjacency is not a DAG: Cond-FiP's fixed-point iteration needs an acyclic graph")
    return a


@torch.no_grad()
def predict(model: CondFiP, task: dict, adjacency: np.ndarray | None = None,
            abduction: str | None = None) -> CondFiPAnswer:
    """Cond-FiP's :class:`CondFiPAnswer` for ONE task (task axis dropped, nodes padded).

    Args:
        model: a trained :class:`CondFiP` (put in eval mode here, restored afterwards).
        task: arrays of one task (``x_obs (n, d_max)``, ``node_mask (d_max,)``, usually
            ``adjacency``); :func:`pipeline_lib.taskdata.restrict` drops the padding.
        adjacency: a graph to use instead of the true one, ``(d, d)`` over the real nodes or
            ``(d_max, d_max)``; must be a DAG.
        abduction: ``"encoder"`` or ``"decoder"`` (module docstring); default the model config's.

    All rows are encoded; a fixed random subset of ``config.embed_rows`` (default
    ``n_embed``) of them is pooled into the dataset embedding.
    """
    for key in ("x_obs", "node_mask"):
        if key not in task:
            raise ValueError(f"task is missing field {key!r}")
    d_max = np.asarray(task["node_mask"]).shape[0]
    # observational-only tasks (e.g. imported tables) carry no regimes: empty ones for restrict
    empty = {"x_int": np.zeros((0, 1, d_max)), "int_targets": np.zeros((0, d_max), dtype=bool),
             "int_values": np.zeros((0, d_max))}
    data = restrict({**empty, **task})
    x = data["x_obs"]
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x_obs must be (n >= 2, d), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("x_obs contains NaN/inf on real nodes")
    a = _graph_for(task, data, adjacency)
    abduction = model.config.abduction if abduction is None else abduction
    if abduction not in ("encoder", "decoder"):
        raise ValueError(f"abduction must be 'encoder' or 'decoder', got {abduction!r}")
    mean = x.mean(0)
    std = x.std(0)
    std = np.where(std > 0, std, 1.0)
    dev = next(model.parameters()).device
    z = torch.as_tensor(((x - mean) / std).astype(np.float32), device=dev)[None]
    node_mask = torch.ones(1, x.shape[1], dtype=torch.bool, device=dev)
    allowed = parent_mask(torch.as_tensor(a[None], device=dev), node_mask)
    obs_mask = torch.ones(1, x.shape[0], dtype=torch.bool, device=dev)
    was_training = model.training
    model.eval()
    try:
        h = model.encode(z, obs_mask, allowed)
        noise_z = noise_enc = model.noise_from_tokens(z, h)[0].double().cpu().numpy()
        n_pool = min(x.shape[0], model.config.embed_rows or model.config.n_embed)
        rows = torch.as_tensor(np.sort(np.random.default_rng(0).permutation(x.shape[0])[:n_pool]), device=dev)
        emb = model.embed(h[:, rows], obs_mask[:, rows], allowed, z[:, rows])
        if model.config.decoder_readout == "ridge":
            emb = model.fit_readout(emb, z, obs_mask, allowed)  # the readout is fitted on every row
        if abduction == "decoder":
            noise_z = (z - model.mechanism(z, emb, allowed))[0].double().cpu().numpy()
    finally:
        model.train(was_training)
    return CondFiPAnswer(model, emb, allowed, x, mean, std, noise_z, abduction, noise_enc)
