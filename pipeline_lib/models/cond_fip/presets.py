"""Named Cond-FiP sizes.

``default`` is the authors' d = 20 setting (d_model 256, 8 heads, 4 encoder and 4
decoder layers, 2 dataset-embedding layers, feed-forward 512, noise head 1024; 200
context + 200 target rows of n = 400), GPU-sized, with the authors' per-node embedding.
``cpu-small`` fits a ~10 minute single-thread meta-training run and replaces the learned
readout by the closed-form ridge readout fitted per dataset (``decoder_readout="ridge"``), with
the parents' own values among the ridge features (``ridge_parent_values``) and the decoder's
additive-noise abduction (``abduction="decoder"``; :class:`.model.CondFiPConfig`), and, since
session 12, the amortized kernel in that head (``ridge_kernel``: ARD squared-exponential on
the parents' values, lengthscales / scale / penalty per node predicted from the embedding):
with the authors' readout the decoder could not tell two or more parents apart (per-node
embedding, session 10), the per-edge features of session 10 (``edge_features``) add
nothing on top of the ridge readout, and the kernel took d = 20 sample RMSE at 400 steps from
0.086 to 0.050 on LIN and from 0.215 to 0.130 on RFF (measured in the README's Cond-FiP
results, ``benchmarks/cond_fip.py``, ``benchmarks/cond_fip_quick.py``, ``benchmarks/cond_fip_diagnose.py``).
``tiny`` is for tests.
"""

from __future__ import annotations

from pipeline_lib.models.cond_fip.model import CondFiPConfig

PRESETS: dict[str, dict] = {
    "default": dict(d_model=256, n_heads=8, ff_mult=2, enc_layers=4, emb_layers=2, dec_layers=4,
                    head_hidden=1024, n_embed=200, n_target=200),
    "cpu-small": dict(d_model=64, n_heads=4, ff_mult=2, enc_layers=2, emb_layers=1, dec_layers=2,
                      head_hidden=128, n_embed=64, n_embed_min=32, n_target=64, decoder_readout="ridge",
                      ridge_parent_values=True, ridge_kernel=True, abduction="decoder"),
    "tiny": dict(d_model=32, n_heads=4, ff_mult=2, enc_layers=2, emb_layers=1, dec_layers=2,
                 head_hidden=64, n_embed=64, n_target=64),
}


def preset(name: str, **overrides) -> CondFiPConfig:
    """A named :class:`CondFiPConfig` (see :data:`PRESETS`) with field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown Cond-FiP preset {name!r}; choose from {sorted(PRESETS)}")
    return CondFiPConfig(**{**PRESETS[name], **overrides})
