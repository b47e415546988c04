"""What Cond-FiP's amortized kernel head (``ridge_kernel``) learned, per family (issue 15).

Loads the d = 20 models saved by :mod:`benchmarks.cond_fip` (``<root>/bench-cond-fip/<family>.pt``,
``cpu-small``) and, on the first ``--n-test`` test tasks of ``condfip-<family>-20``, records the
hyperparameters its heads predict (global penalty ``lambda``, per-node signal-to-noise ``r_j``
and penalty ratio ``lambda_j / lambda``, ARD lengthscales of the edges), and the sample RMSE
(:func:`benchmarks.cond_fip.score_generator`, true noise) with the head as trained and with the
squared-exponential part switched off at prediction (``r_j`` forced to ~0, same weights): how
much of the fit the kernel carries. Result: ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.cond_fip import score_generator  # noqa: E402
from pipeline_lib.models.cond_fip import CondFiP, predict, preset  # noqa: E402
from pipeline_lib.priors import PriorConfig  # noqa: E402
from pipeline_lib.priors.sampler import sample_split_range  # noqa: E402
from pipeline_lib.taskdata import restrict, task_slice  # noqa: E402


def ablate(model: CondFiP, prior: PriorConfig, n_test: int) -> dict:
    tasks = sample_split_range(prior, "test", 0, n_test)
    seen: dict[str, torch.Tensor] = {}
    model.kern_node.register_forward_hook(lambda m, i, o: seen.__setitem__("node", o.detach()))

    def no_rbf(m, i, o):  # log r_j -> -30: the squared-exponential part weighs exp(-30) r_j lambda_j n
        o = o.clone()
        o[..., 0] = -30.0
        return o

    lam = float(model.ridge_log_lambda.detach().exp())
    out = {"full": [], "no_kernel": [], "snr": [], "penalty_ratio": [], "lengthscale": []}
    for t in range(n_test):
        data = restrict(task_slice(tasks, t))
        full = {**data, "node_mask": np.ones(data["x_obs"].shape[1], bool)}
        ans = predict(model, full)
        out["full"].append(score_generator(ans, data)["sample"])
        node = seen["node"][0].double()
        has_pa = np.asarray(data["adjacency"]).any(0)
        out["snr"] += node[has_pa, 0].exp().tolist()
        out["penalty_ratio"] += node[has_pa, 1].exp().tolist()
        inv = ans.emb.kern_inv_ell[0].double().numpy()
        out["lengthscale"] += (1.0 / inv[inv > 0]).tolist()
        handle = model.kern_node.register_forward_hook(no_rbf)
        out["no_kernel"].append(score_generator(predict(model, full), data)["sample"])
        handle.remove()
    q = lambda v: [float(np.quantile(v, p)) for p in (0.1, 0.5, 0.9)]  # noqa: E731
    return {"prior": prior.name, "n_test": n_test, "lambda": lam,
            "sample_rmse": {"kernel": float(np.mean(out["full"])), "kernel_off": float(np.mean(out["no_kernel"]))},
            "quantiles_10_50_90": {k: q(out[k]) for k in ("snr", "penalty_ratio", "lengthscale")}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="the --root of a benchmarks/cond_fip.py run (cpu-small)")
    ap.add_argument("--families", default="lin,rff")
    ap.add_argument("--n-test", type=int, default=10)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/cond_fip_kernel_ablation.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = {}
    for fam in args.families.split(","):
        model = CondFiP(preset("cpu-small"))
        path = Path(args.root) / "bench-cond-fip" / f"{fam}.pt"
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        result[fam] = {"model": str(path), **ablate(model.eval(), PriorConfig.from_yaml(
            REPO / f"configs/priors/condfip-{fam}-20.yaml"), args.n_test)}
        print(fam, json.dumps(result[fam]), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
