"""Cond-FiP's interventional density: is the NLPID of a density fitted to its samples meaningful?

Meta-trains Cond-FiP on ``condfip-lin-10`` (or loads ``--model-path``, a state dict saved by
:mod:`benchmarks.cond_fip_quick`), then scores ``--n-test`` test tasks with
:func:`pipeline_lib.evaluation.score_interventional` (NLPID summed over the 100
interventional samples of each do(X_j = a) query, averaged over the task's queries; 50/90%
coverage) for:

* ``cond-fip/kde``: Gaussian KDE (Silverman bandwidth) on 2000 generated samples per
  intervention (the current default of :class:`pipeline_lib.posterior.SampledInterventional`);
* ``cond-fip/gaussian``: a normal fitted to the same samples;
* ``cond-fip/calibrated``: that normal widened by the model's reconstruction variance on the
  dataset (:meth:`pipeline_lib.models.cond_fip.CondFiPAnswer.reconstruction_variance`);
* the same two densities on the per-dataset ``anm-linear`` fit given the true graph;
* ``empty-graph`` (BGe with the empty DAG: ignores the intervention) and ``oracle``
  (the true SCM, closed form for linear-Gaussian).

Also reported per method: seconds per task for the scoring, and for Cond-FiP the sample
RMSE (true noise), so the density can be read against the generator's error.
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

from benchmarks.cond_fip import node_rmse  # noqa: E402
from pipeline_lib.baselines.anm import ANMConfig, fit_anm  # noqa: E402
from pipeline_lib.baselines.registry import fit_baseline  # noqa: E402
from pipeline_lib.evaluation import make_queries, score_interventional  # noqa: E402
from pipeline_lib.metrics.stats import mean_se  # noqa: E402
from pipeline_lib.models.cond_fip import CondFiP, make_batch, predict, preset  # noqa: E402
from pipeline_lib.models.cond_fip.training import train_two_stage  # noqa: E402
from pipeline_lib.priors import PriorConfig  # noqa: E402
from pipeline_lib.priors.config import InterventionConfig  # noqa: E402
from pipeline_lib.priors.oracle import TrueSCM  # noqa: E402
from pipeline_lib.priors.sampler import sample_split_range  # noqa: E402
from pipeline_lib.taskdata import restrict, task_slice  # noqa: E402
from pipeline_lib.training.batching import prior_stream  # noqa: E402
from pipeline_lib.training.loop import TrainConfig  # noqa: E402

KEYS = ("nlpid", "coverage_50", "coverage_90", "calibration_error")


def load_or_train(prior: PriorConfig, args) -> CondFiP:
    model = CondFiP(preset(args.preset, **json.loads(args.model)))
    if args.model_path:
        model.load_state_dict(torch.load(args.model_path, map_location="cpu", weights_only=True))
        return model.eval()
    train_prior = prior.model_copy(update={"counterfactuals": False, "interventions": InterventionConfig(n_regimes=0)})
    stream = prior_stream(train_prior, make_batch(model.config), args.batch_size, args.seed)
    n_enc = int(round(0.3 * args.steps))
    base = dict(batch_size=args.batch_size, lr=args.lr, seed=args.seed, device="cpu", warmup_frac=0.05,
                checkpoint_every=10**6, val_every=10**6)
    train_two_stage(model, stream, TrainConfig(steps=n_enc, **base), TrainConfig(steps=args.steps - n_enc, **base),
                    ema=(0.99, 10))
    return model.eval()


class _Styled:
    """One answer object scored with a given density option (instance attributes shadow the class's)."""

    @staticmethod
    def set(answer, density: str):
        answer.calibrated = density == "calibrated"
        density = "gaussian" if density == "calibrated" else density
        answer.density = density
        answer.quantiles_from_draws = True
        answer.__dict__.pop("_kde_cache", None)
        return answer


def write(rows: dict, seconds: dict, n_done: int, prior: PriorConfig, args, train_s: float) -> dict:
    summary = {}
    for name, recs in rows.items():
        summary[name] = {}
        for key in KEYS + ("sample_rmse",):
            vals = [r[key] for r in recs if key in r]
            if vals:
                mu, se = mean_se(vals)
                summary[name][key] = {"mean": mu, "se": se}
        summary[name]["seconds_per_task"] = seconds[name] / n_done
    out = {"benchmark": "cond_fip_density", "prior": prior.name, "n_test": n_done,
           "model": args.model_path or f"two-stage + EMA, {args.steps} steps x {args.batch_size}",
           "train_seconds": train_s, "per_task_nlpid": {k: [r["nlpid"] for r in v] for k, v in rows.items()},
           "summary": summary}
    Path(args.out).write_text(json.dumps(out, indent=1))
    return summary


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="condfip-lin-10")
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--model", default="{}", help="JSON overrides of the preset: they must rebuild the architecture "
                    "of --model-path (a model trained before session 10: '{\"edge_features\": false}')")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--densities", default="kde,gaussian,calibrated")
    ap.add_argument("--save-model", default=None, help="save the trained state dict here")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/cond_fip_density.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    prior = PriorConfig.from_yaml(REPO / f"configs/priors/{args.prior}.yaml")
    t0 = time.perf_counter()
    model = load_or_train(prior, args)
    train_s = time.perf_counter() - t0
    if args.save_model and not args.model_path:
        torch.save(model.state_dict(), args.save_model)
    tasks = sample_split_range(prior, "test", 0, args.n_test)
    rows: dict[str, list[dict]] = {}
    seconds: dict[str, float] = {}

    def add(name: str, answer, build_s: float, extra: dict | None = None) -> None:
        t = time.perf_counter()
        rec = score_interventional(answer, make_queries(task))
        seconds[name] = seconds.get(name, 0.0) + build_s + time.perf_counter() - t
        rows.setdefault(name, []).append({**rec, **(extra or {})})

    for t in range(args.n_test):
        task = task_slice(tasks, t)
        data = restrict(task)
        for density in args.densities.split(","):
            t1 = time.perf_counter()
            ans = _Styled.set(predict(model, task), density)
            b = time.perf_counter() - t1
            add(f"cond-fip/{density}", ans, b,
                {"sample_rmse": node_rmse(ans.sample_observational(len(data["x_obs"]), noise=data["noise_obs"]),
                                          data["x_obs"])})
            if density == "calibrated":
                continue  # ANM has no reconstruction variance (its residuals are its noise)
            t1 = time.perf_counter()
            anm = _Styled.set(fit_anm(data, ANMConfig(kind="linear")), density)
            add(f"anm-linear/{density}", anm, time.perf_counter() - t1)
        t1 = time.perf_counter()
        add("empty-graph", fit_baseline("empty-graph", data), time.perf_counter() - t1)
        t1 = time.perf_counter()
        add("oracle", TrueSCM(prior, "test", t, check_x_obs=data["x_obs"]), time.perf_counter() - t1)
        print(t + 1, {k: round(float(np.mean([r["nlpid"] for r in v])), 1) for k, v in rows.items()}, flush=True)
        summary = write(rows, seconds, t + 1, prior, args, train_s)  # kept after every task
    for name, s in summary.items():
        print(name, {k: (round(v["mean"], 3) if isinstance(v, dict) else round(v, 2)) for k, v in s.items()})


if __name__ == "__main__":
    main()
