"""Cond-FiP training ablations on a small budget: which change moves the decoder.

Each variant meta-trains the ``cpu-small`` model on fresh tasks of a prior (default
``condfip-lin-10``, observational arrays only) for the same number of optimiser steps and
scores it on the first ``--n-test`` test tasks with :func:`benchmarks.cond_fip.score_generator`
(noise / sample / interventional / counterfactual RMSE, true graph). Variants (``--variants``,
comma-separated names of :data:`VARIANTS`) change one thing against ``base`` (the ``--preset``
as it is, joint training: both losses, stop-gradient into the encoder, AdamW lr 1e-3, betas
(0.9, 0.999), warm-up 5% + cosine). ``cpu-small`` has the per-edge features since session 10;
the records of ``benchmarks/results/cond_fip_quick.json`` and ``cond_fip_quick_s10.json`` were
run before, when ``base`` had the authors' per-node embedding only (now ``node-embedding``):

* ``two-stage``: the authors' procedure, encoder trained alone for ``--enc-frac`` of the
  steps, then frozen while the decoder trains for the rest (:mod:`pipeline_lib.models.cond_fip.training`);
* ``ema``: EMA of the weights (beta 0.99, every 10 steps, the authors' setting, with warm-up);
* ``lr3e-3``, ``lr3e-4``: learning rate; ``beta95``: the authors' Adam beta2 0.95;
* ``mse``: pooled MSE loss instead of the per-task RMSE;
* ``dec4``: 4 decoder blocks instead of 2;
* ``linval``: decoder attention values linear in ``x`` (``decoder_values="linear"``);
  ``linout``: readout without the final LayerNorm (``decoder_readout="linear"``);
  ``linear``: both (:class:`pipeline_lib.models.cond_fip.layers.AdaLNGraphBlock`);
* ``meanpool``: the dataset embedding pools the rows by their mean instead of the max;
  ``linval-meanpool``: with linear values;
* ``nodeids`` (diagnostic): a fixed random identity vector per node label added to the
  encoder's input (are anonymous parents the limiter?);
* ``nodetach``: the decoder loss also trains the encoder (no stop-gradient);
* ``wide``: d_model 128 (noise head 256) instead of 64;
* ``signed``: decoder attention weights are the parents' signed scores, unnormalised (a
  signed weight per edge); ``signed-linear``: with linear values and readout;
  ``signed-nodeids``: with the identity tags of ``nodeids``;
* ``edge``: per-edge dataset features give every decoder edge a score bias and a signed
  gain (``edge_features``); ``edge-linear``: with linear values and readout; ``edge-parents``:
  edge features plus a per-child attention over the parents' edge tokens with raw context
  correlations (``edge_parents``);
  ``node-embedding``: without them (the authors' per-node embedding; both with the authors'
  learned readout and the encoder's abduction, i.e. the session 10 / authors' models);
* ``ridge``: the closed-form ridge readout (``decoder_readout="ridge"``: per dataset and node,
  ``x_j`` regressed on the decoder's features of the context rows); ``ridge-node``: without
  the edge features; ``ridge-linval``: with linear attention values; ``ridge-parents``: with
  ``edge_features`` and ``edge_parents``; ``ridge-values``: the parents' values as extra ridge
  features (``ridge_parent_values``). Since session 11 ``base`` (= ``cpu-small``) is the ridge
  readout without edge features, so ``ridge-node`` = ``base``, ``ridge`` adds the edge features.
* ``kernel`` (session 12): ``base`` + the amortized squared-exponential kernel in the
  closed-form head (``ridge_kernel``: ARD lengthscales, scale and penalty per node predicted
  from the embedding; kernel ridge over the context rows).

Every variant is also scored with the decoder's abduction (``abduction="decoder"``,
``n_hat = x - f_hat(x)``; ``metrics_decoder_abduction``), same trained weights.

``--overfit N``: the capacity check of :func:`overfit` instead (N steps on 4 fixed tasks),
once per variant of ``--variants`` (model overrides only), each from the same seed.

Results are appended to ``--out`` (one record per variant and seed, with the wall time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.cond_fip import score_generator, summarise  # noqa: E402
from pipeline_lib.models.cond_fip import CondFiP, make_batch, predict, preset  # noqa: E402
from pipeline_lib.models.cond_fip.training import WeightEMA, stage_loss, train_two_stage  # noqa: E402
from pipeline_lib.priors import PriorConfig  # noqa: E402
from pipeline_lib.priors.config import InterventionConfig  # noqa: E402
from pipeline_lib.priors.sampler import sample_split_range  # noqa: E402
from pipeline_lib.taskdata import restrict, task_slice  # noqa: E402
from pipeline_lib.training.batching import prior_stream  # noqa: E402
from pipeline_lib.training.loop import TrainConfig, train  # noqa: E402

#: variant -> overrides: "model" (config fields), "train" (TrainConfig fields), "two_stage", "ema"
VARIANTS: dict[str, dict] = {
    "base": {},
    "two-stage": {"two_stage": True},
    "two-stage-ema": {"two_stage": True, "ema": True},
    "ema": {"ema": True},
    "lr3e-3": {"train": {"lr": 3e-3}},
    "lr3e-4": {"train": {"lr": 3e-4}},
    "beta95": {"train": {"betas": (0.9, 0.95)}},
    "mse": {"model": {"loss": "mse"}},
    "dec4": {"model": {"dec_layers": 4}},
    "linval": {"model": {"decoder_values": "linear"}},
    "linout": {"model": {"decoder_readout": "linear"}},
    "linear": {"model": {"decoder_values": "linear", "decoder_readout": "linear"}},
    "meanpool": {"model": {"embed_pool": "mean"}},
    "linval-meanpool": {"model": {"decoder_values": "linear", "embed_pool": "mean"}},
    "nodeids": {"model": {"node_ids": True}},
    "nodetach": {"model": {"detach_embedding": False}},
    "wide": {"model": {"d_model": 128, "head_hidden": 256}},
    "signed": {"model": {"decoder_weights": "signed"}},
    "signed-linear": {"model": {"decoder_weights": "signed", "decoder_values": "linear",
                                "decoder_readout": "linear"}},
    "signed-nodeids": {"model": {"decoder_weights": "signed", "node_ids": True}},
    "edge": {"model": {"edge_features": True, "decoder_readout": "layernorm", "abduction": "encoder"}},
    "node-embedding": {"model": {"edge_features": False, "decoder_readout": "layernorm", "abduction": "encoder"}},
    "edge-linear": {"model": {"edge_features": True, "decoder_values": "linear", "decoder_readout": "linear",
                              "abduction": "encoder"}},
    "edge-parents": {"model": {"edge_features": True, "edge_parents": True, "decoder_readout": "layernorm",
                               "abduction": "encoder"}},
    "ridge": {"model": {"decoder_readout": "ridge", "edge_features": True}},
    "ridge-node": {"model": {"edge_features": False, "decoder_readout": "ridge"}},
    "ridge-linval": {"model": {"decoder_readout": "ridge", "decoder_values": "linear"}},
    "ridge-parents": {"model": {"decoder_readout": "ridge", "edge_features": True, "edge_parents": True}},
    "ridge-values": {"model": {"decoder_readout": "ridge", "ridge_parent_values": True}},
    "kernel": {"model": {"ridge_kernel": True}},
}


def run_variant(name: str, prior: PriorConfig, args, tasks: dict) -> dict:
    spec = VARIANTS[name]
    model_cfg = preset(args.preset, **spec.get("model", {}))
    train_prior = prior.model_copy(update={"counterfactuals": False, "interventions": InterventionConfig(n_regimes=0)})
    base = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device="cpu",
                warmup_frac=0.05, checkpoint_every=10**6, val_every=10**6)
    base.update(spec.get("train", {}))
    torch.manual_seed(args.seed)
    model = CondFiP(model_cfg)
    stream = prior_stream(train_prior, make_batch(model_cfg), args.batch_size, args.seed)
    ema = (0.99, 10) if spec.get("ema") else None
    t0 = time.perf_counter()
    if spec.get("two_stage"):
        n_enc = int(round(args.enc_frac * args.steps))
        r_enc, r_dec = train_two_stage(model, stream, TrainConfig(**{**base, "steps": n_enc}),
                                       TrainConfig(**{**base, "steps": args.steps - n_enc}), ema=ema)
        hist = r_dec.history
        noise_train = r_enc.history[-1]["noise_rmse"]
    else:
        avg = WeightEMA(model, *ema) if ema else None
        res = train(model, stage_loss, stream, TrainConfig(**base), progress=False, callbacks=[avg] if avg else [])
        if avg is not None:
            avg.copy_to(model)
        hist = res.history
        noise_train = float(np.mean([h["noise_rmse"] for h in hist[-20:]]))
    seconds = time.perf_counter() - t0
    model.eval()
    if args.save_dir:
        Path(args.save_dir).mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), Path(args.save_dir) / f"{prior.name}-{name}-{args.steps}-s{args.seed}.pt")
    rows, rows_dec = [], []
    for t in range(len(tasks["x_obs"])):
        data = restrict(task_slice(tasks, t))
        task = {**data, "node_mask": np.ones(data["x_obs"].shape[1], bool)}
        rows.append(score_generator(predict(model, task), data))
        rows_dec.append(score_generator(predict(model, task, abduction="decoder"), data))
    return {"variant": name, "seed": args.seed, "steps": args.steps, "batch_size": args.batch_size,
            "prior": prior.name, "train_seconds": seconds, "n_test": len(rows),
            "train_noise_rmse_last20": noise_train,
            "train_mech_rmse_last20": float(np.mean([h["mech_rmse"] for h in hist[-20:]])),
            "train_mech_curve_per50": [float(np.mean([h["mech_rmse"] for h in hist[i:i + 50]]))
                                       for i in range(0, len(hist), 50)],
            "metrics": summarise(rows), "metrics_decoder_abduction": summarise(rows_dec)}


def overfit(prior: PriorConfig, args, tasks: dict, name: str = "base") -> dict:
    """Capacity check: the joint loss on the first ``--overfit-tasks`` test tasks only (fresh
    row splits each step, AdamW lr ``--lr``, no schedule), then the sample RMSE on each of them.
    Separates "the decoder cannot represent these SCMs" from "it has not seen enough tasks"."""
    from pipeline_lib.training.loop import to_device

    k = args.overfit_tasks
    few = {key: v[:k] for key, v in tasks.items()}
    torch.manual_seed(args.seed)
    model = CondFiP(preset(args.preset, **VARIANTS[name].get("model", {})))
    fn = make_batch(model.config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    curve = []
    t0 = time.perf_counter()
    recent = []
    for step in range(args.overfit):
        loss, m = model.loss(to_device(fn(few, rng), torch.device("cpu")))
        opt.zero_grad()
        loss.backward()
        opt.step()
        recent = (recent + [m["mech_rmse"]])[-20:]
        if (step + 1) % 100 == 0:
            curve.append([step + 1, m["noise_rmse"], m["mech_rmse"], float(np.mean(recent))])
            print("overfit", name, curve[-1], flush=True)
    model.eval()
    sample = []
    for t in range(k):
        data = restrict(task_slice(few, t))
        ans = predict(model, {**data, "node_mask": np.ones(data["x_obs"].shape[1], bool)})
        sample.append(score_generator(ans, data)["sample"])
    return {"variant": "overfit", "model_variant": name, "prior": prior.name, "tasks": k, "steps": args.overfit,
            "seed": args.seed, "train_seconds": time.perf_counter() - t0,
            "curve_step_noise_mech_mech20": curve, "sample_rmse_per_task": sample}


def _append(out: Path, rec: dict) -> None:
    """Append ``rec`` to the results file (a list, or a dict with ``records``)."""
    data = json.loads(out.read_text()) if out.exists() else []
    if isinstance(data, dict):
        data["records"].append(rec)
    else:
        data.append(rec)
    out.write_text(json.dumps(data, indent=1))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="base,two-stage")
    ap.add_argument("--prior", default="condfip-lin-10")
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--enc-frac", type=float, default=0.3, help="two-stage: share of the steps for the encoder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--overfit", type=int, default=0, help="run the capacity check for this many steps instead")
    ap.add_argument("--overfit-tasks", type=int, default=4)
    ap.add_argument("--save-dir", default=None, help="save each trained state dict here")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/cond_fip_quick.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    prior = PriorConfig.from_yaml(REPO / f"configs/priors/{args.prior}.yaml")
    tasks = sample_split_range(prior, "test", 0, args.n_test)
    out = Path(args.out)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    if args.overfit:
        for name in names:
            _append(out, overfit(prior, args, tasks, name))
        return
    for name in names:
        rec = run_variant(name, prior, args, tasks)
        m = rec["metrics"]
        print(f"{name}: {rec['train_seconds']:.0f} s, train mech {rec['train_mech_rmse_last20']:.3f}, "
              + ", ".join(f"{k} {m[k]['mean']:.3f}±{m[k]['se']:.3f}" for k in ("noise", "sample", "interventional",
                                                                                  "counterfactual"))
              + "; decoder abduction: noise {noise:.3f} counterfactual {cf:.3f}".format(
                  noise=rec["metrics_decoder_abduction"]["noise"]["mean"],
                  cf=rec["metrics_decoder_abduction"]["counterfactual"]["mean"]),
              flush=True)
        _append(out, rec)


if __name__ == "__main__":
    main()
