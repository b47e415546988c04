"""Drug x dose perturbation experiments whose features determine their atomic interventions (GIM).

The GIM setting (Schneider et al., arXiv 2411.14003): an experiment ``e`` is described by
features ``gamma_e`` (a drug embedding and a dose) and acts on the system through atomic
interventions that the features determine through a map no method sees. Per task (one
*system*: one DAG and its mechanisms) we draw

    u_c   ~ N(0, I_q),                c = 1..C          (drug embeddings, q = embedding_dim)
    H, V  ~ N(0, 1)^(q x d)                             (the hidden map, per task)
    m_c   ~ U{1..max_targets}
    T_c   = the m_c real nodes with the largest scores u_c^T H   (targets of drug c)
    a_cj  = sign(u_c^T V_j) (effect_low + (effect_high - effect_low) tanh|u_c^T V_j|)

and run every drug at every dose ``delta_l`` of ``doses`` (K = C L experiments, drug-major).
The dose acts through a Hill response normalised to 1 at the largest dose,

    rho(delta) = h(delta) / h(max doses),   h(delta) = delta^n / (delta^n + ec50^n).

Additive-noise mechanisms: experiment ``e = (c, l)`` is a shift intervention on the targets,
``x_j = f_j(x_pa) + rho(delta_l) a_cj std_j + eps_j`` (``std_j``: the observational std of
X_j, so ``a`` is in standard deviations; the sampler's soft branch with ``soft_scale = 1``).
GRN mechanism (the scRNA-like variant): a knockdown, production of target j times
``1 - rho(delta_l) k_cj`` with ``k_cj ~ U[knockdown_min, knockdown_max]``.

Features: ``gamma_e = [u_c, log(delta_l)] + feature_noise * N(0, I)`` (``features="embedding"``,
p = q + 1), or i.i.d. ``N(0, I_p)`` unrelated to anything (``features="noise"``: the control in
which no method can predict an unseen experiment).

Held-out combinations: ``n_heldout`` (drug, dose) pairs, drawn so that every drug keeps at
least one seen dose (``heldout="random"``) or the largest dose of ``n_heldout`` drugs
(``"highest_dose"``, the SciPlex3 protocol), are moved to the END of the regime axis: regimes ``0..K - n_heldout - 1``
are the training experiments, the last ``n_heldout`` the unseen ones (a fit reads only the
first block; GIM's ``n_test_regimes``). The order of the training block is drug-major.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DrugPerturbationConfig", "check_drug_prior", "dose_response", "draw_drug_regimes"]


class DrugPerturbationConfig(BaseModel):
    """The drug x dose design of the module docstring (``interventions.drugs``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    n_drugs: int = Field(8, ge=1, description="C: drugs, each run at every dose")
    doses: list[float] = Field(default_factory=lambda: [0.1, 0.3, 1.0], min_length=1,
                               description="dose levels delta_l > 0 (K = n_drugs * len(doses) experiments)")
    embedding_dim: int = Field(6, ge=1, description="q: drug embedding size (features p = q + 1 with the dose)")
    max_targets: int = Field(2, ge=1, description="targets per drug m_c ~ U{1..max_targets}")
    effect_low: float = Field(1.0, ge=0, description="|shift| at the largest dose, in std of X_j: lower end")
    effect_high: float = Field(2.5, ge=0, description="|shift| at the largest dose: upper end")
    knockdown_min: float = Field(0.6, ge=0, le=1, description="GRN: production knockdown at the largest dose")
    knockdown_max: float = Field(0.95, ge=0, le=1)
    ec50: float = Field(0.2, gt=0, description="dose of half the maximal response")
    hill: float = Field(2.0, gt=0, description="Hill coefficient of the dose response")
    n_heldout: int = Field(4, ge=0, description="(drug, dose) pairs held out, stored as the last regimes")
    heldout: Literal["random", "highest_dose"] = Field(
        "random", description="random: any pairs, each drug keeping a seen dose; highest_dose: the largest dose "
                              "of n_heldout drugs (the SciPlex3 protocol)")
    features: Literal["embedding", "noise"] = "embedding"
    feature_noise: float = Field(0.0, ge=0, description="std of Gaussian noise added to each experiment's features")

    @model_validator(mode="after")
    def _check(self) -> "DrugPerturbationConfig":
        from .config import PriorConfigError

        if any(not np.isfinite(x) or x <= 0 for x in self.doses):
            raise PriorConfigError(f"interventions.drugs.doses={self.doses}: every dose must be > 0")
        if len(set(self.doses)) != len(self.doses):
            raise PriorConfigError(f"interventions.drugs.doses={self.doses}: doses must be distinct")
        if self.effect_high < self.effect_low:
            raise PriorConfigError("interventions.drugs.effect_low/effect_high: need effect_low <= effect_high")
        if self.knockdown_max < self.knockdown_min:
            raise PriorConfigError("interventions.drugs.knockdown_min/knockdown_max: need min <= max")
        max_out = self.n_drugs * (len(self.doses) - 1)  # every drug keeps one seen dose
        if self.heldout == "highest_dose":
            max_out = self.n_drugs if len(self.doses) > 1 else 0
        if self.n_heldout > max_out:
            raise PriorConfigError(
                f"interventions.drugs.n_heldout={self.n_heldout}: at most n_drugs * (len(doses) - 1) = {max_out} "
                "combinations can be held out with every drug keeping a seen dose")
        return self

    @property
    def n_experiments(self) -> int:
        return self.n_drugs * len(self.doses)

    @property
    def feature_dim(self) -> int:
        return self.embedding_dim + 1


def check_drug_prior(config) -> None:
    """Cross-field checks of a ``PriorConfig`` with ``interventions.drugs`` (names the field)."""
    from .config import PriorConfigError

    icfg = config.interventions
    drugs = icfg.drugs
    if drugs is None:
        return
    if icfg.kind != "soft":
        raise PriorConfigError(f"interventions.kind={icfg.kind!r}: drug perturbations are soft (shift / knockdown)"
                               "; set interventions.kind='soft'")
    if icfg.n_regimes != drugs.n_experiments:
        raise PriorConfigError(
            f"interventions.n_regimes={icfg.n_regimes}: with drugs it must be n_drugs * len(doses) = "
            f"{drugs.n_experiments}")
    if icfg.perturbation_dim != drugs.feature_dim:
        raise PriorConfigError(
            f"interventions.perturbation_dim={icfg.perturbation_dim}: with drugs it must be embedding_dim + 1 = "
            f"{drugs.feature_dim} (the drug embedding and the log dose; it sizes the stored array)")
    if drugs.max_targets > config.graph.d_min:
        raise PriorConfigError(f"interventions.drugs.max_targets={drugs.max_targets} exceeds the number of nodes "
                               f"({config.graph.d_min})")


def dose_response(doses: np.ndarray, ec50: float, hill: float, max_dose: float) -> np.ndarray:
    """``rho(delta) = h(delta) / h(max_dose)`` with the Hill curve ``h = delta^n / (delta^n + ec50^n)``."""
    doses = np.asarray(doses, dtype=np.float64)

    def h(x):
        return x**hill / (x**hill + ec50**hill)

    return h(doses) / h(max_dose)


def heldout_order(cfg: DrugPerturbationConfig, rng: np.random.Generator) -> np.ndarray:
    """Permutation of the K drug-major experiments: the seen ones (in drug-major order) first,
    then ``n_heldout`` held-out pairs, each drug keeping at least one seen dose."""
    n_doses = len(cfg.doses)
    if cfg.heldout == "highest_dose":
        top = int(np.argmax(cfg.doses))
        drugs = np.sort(rng.permutation(cfg.n_drugs)[: cfg.n_heldout])
        out = drugs * n_doses + top
        return np.concatenate([np.setdiff1d(np.arange(cfg.n_experiments), out), out])
    keep = rng.integers(0, n_doses, size=cfg.n_drugs)  # one guaranteed seen dose per drug
    candidates = np.array([c * n_doses + l for c in range(cfg.n_drugs) for l in range(n_doses) if l != keep[c]],
                          dtype=np.int64)
    out = np.sort(rng.permutation(candidates)[: cfg.n_heldout]) if cfg.n_heldout else np.zeros(0, np.int64)
    seen = np.setdiff1d(np.arange(cfg.n_experiments), out)
    return np.concatenate([seen, out])


def draw_drug_regimes(cfg: DrugPerturbationConfig, mechanism_kind: str, n: int, d: int,
                      rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Intervention ingredients of one task in canonical node order, the keys of
    ``interventions.draw_interventions`` plus ``features: (K, p)``: ``targets (K, d)``,
    ``z (K, d)`` (shift in std units, 0 off target), ``soft_scale (K, d)`` (GRN production
    factor; 1 for additive mechanisms), unused zero ``pert_map`` / ``pert_noise``."""
    q, c_count, n_doses = cfg.embedding_dim, cfg.n_drugs, len(cfg.doses)
    emb = rng.standard_normal((c_count, q))  # (C, q)
    hid_t = rng.standard_normal((q, d))  # (q, d) targets map
    hid_v = rng.standard_normal((q, d))  # (q, d) effect map
    m = rng.integers(1, min(cfg.max_targets, n) + 1, size=c_count)  # (C,)
    knock = rng.uniform(cfg.knockdown_min, cfg.knockdown_max, (c_count, d))
    score = emb @ hid_t / np.sqrt(q)
    score[:, n:] = -np.inf  # padding is never a target
    rank = np.argsort(np.argsort(-score, axis=1), axis=1)
    drug_targets = rank < m[:, None]  # (C, d)
    v = emb @ hid_v / np.sqrt(q)
    effect = np.sign(v) * (cfg.effect_low + (cfg.effect_high - cfg.effect_low) * np.tanh(np.abs(v)))
    rho = dose_response(np.asarray(cfg.doses), cfg.ec50, cfg.hill, max(cfg.doses))  # (L,)

    drug = np.repeat(np.arange(c_count), n_doses)  # drug-major experiments
    level = np.tile(np.arange(n_doses), c_count)
    targets = drug_targets[drug]  # (K, d)
    z = np.where(targets, rho[level, None] * effect[drug], 0.0)
    if mechanism_kind == "grn":
        soft_scale = np.where(targets, 1.0 - rho[level, None] * knock[drug], 1.0)
    else:
        soft_scale = np.ones_like(z)
    log_dose = np.log(np.asarray(cfg.doses))[level]
    features = np.concatenate([emb[drug], log_dose[:, None]], axis=1)  # (K, q + 1)
    noise = rng.standard_normal(features.shape)
    if cfg.features == "noise":
        features = noise
    else:
        features = features + cfg.feature_noise * noise
    order = heldout_order(cfg, rng)
    k = cfg.n_experiments
    return {
        "targets": targets[order],
        "z": z[order],
        "soft_scale": soft_scale[order],
        "pert_map": np.zeros((d, cfg.feature_dim)),  # unused: the features come from the drugs
        "pert_noise": np.zeros((k, cfg.feature_dim)),
        "features": features[order],
        "drug": drug[order],
        "dose_level": level[order],
    }
