"""Where a trained Cond-FiP decoder loses accuracy: mechanism error by parent count, and the
slope it implies for single-parent nodes against the true one.

For each of the first ``--n-test`` test tasks (true graph, the dataset standardised as
:func:`pipeline_lib.models.cond_fip.predict` does), the decoder's ``f_hat(x)`` on the
dataset's own rows is compared with the truth ``f = x - n``:

* RMSE per node, grouped by the node's number of parents, next to ordinary least squares
  fitted per node on the first 64 rows (the context size of ``cpu-small``) and scored on the rest;
* for nodes with exactly one parent ``i``: the least-squares slope of ``f_hat_j`` on ``x_i``
  against that of ``f_j`` (exact for LIN), their correlation and the ratio
  ``slope_hat / slope`` (1 = right, 0 = no dependence, < 1 = shrunk towards the prior's mean);
* for nodes with two parents: the least-squares coefficients of ``f_hat_j`` on both parents
  against the true ones: their correlation, that of their sum and of their difference (does
  the decoder tell the two parents apart?), and how linear ``f_hat_j`` is (R^2).

Usage: ``python benchmarks/cond_fip_diagnose.py --state MODEL.pt --prior condfip-lin-10
[--model '{"edge_features": false}']`` (the ``--model`` overrides must rebuild the
architecture the state dict was trained with).
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

from pipeline_lib.models.cond_fip import CondFiP, predict, preset  # noqa: E402
from pipeline_lib.priors import PriorConfig  # noqa: E402
from pipeline_lib.priors.sampler import sample_split_range  # noqa: E402
from pipeline_lib.taskdata import restrict, task_slice  # noqa: E402


def diagnose(model: CondFiP, prior: PriorConfig, n_test: int, n_ctx: int = 64) -> dict:
    tasks = sample_split_range(prior, "test", 0, n_test)
    by_k: dict[int, dict[str, list]] = {}
    slopes, pairs = [], []
    for t in range(len(tasks["x_obs"])):
        data = restrict(task_slice(tasks, t))
        x, n, a = data["x_obs"], data["noise_obs"], data["adjacency"]
        ans = predict(model, {**data, "node_mask": np.ones(x.shape[1], bool)})
        z = torch.as_tensor(((x - ans.mean) / ans.std).astype(np.float32))[None]
        with torch.no_grad():
            f_hat = model.mechanism(z, ans.emb, ans.allowed)[0].double().numpy() * ans.std
        f = x - n
        for j in range(x.shape[1]):
            pa = np.flatnonzero(a[:, j])
            cell = by_k.setdefault(len(pa), {"model": [], "ols": []})
            cell["model"].append(float(np.sqrt(np.mean((f_hat[:, j] - f[:, j]) ** 2))))
            xc = np.c_[x[:n_ctx, pa], np.ones(n_ctx)]
            beta = np.linalg.lstsq(xc, x[:n_ctx, j], rcond=None)[0]
            pred = np.c_[x[n_ctx:, pa], np.ones(len(x) - n_ctx)] @ beta
            cell["ols"].append(float(np.sqrt(np.mean((pred - f[n_ctx:, j]) ** 2))))
            if len(pa) == 2:
                xp = np.c_[x[:, pa], np.ones(len(x))]
                b_true = np.linalg.lstsq(xp, f[:, j], rcond=None)[0][:2]
                b_hat = np.linalg.lstsq(xp, f_hat[:, j], rcond=None)[0][:2]
                r2 = 1 - np.mean((xp @ np.linalg.lstsq(xp, f_hat[:, j], rcond=None)[0] - f_hat[:, j]) ** 2) / f_hat[:, j].var()
                pairs.append((*b_true, *b_hat, r2))
            if len(pa) == 1:
                xi = np.c_[x[:, pa[0]], np.ones(len(x))]
                s_true = np.linalg.lstsq(xi, f[:, j], rcond=None)[0][0]
                s_hat = np.linalg.lstsq(xi, f_hat[:, j], rcond=None)[0][0]
                slopes.append((s_true, s_hat))
    s, p2 = np.array(slopes), np.array(pairs)
    mean_true = np.repeat(p2[:, :2].mean(1, keepdims=True), 2, 1).ravel()
    table = {str(k): {"nodes": len(v["model"]), "model_rmse": float(np.mean(v["model"])),
                      "ols64_rmse": float(np.mean(v["ols"]))} for k, v in sorted(by_k.items())}
    return {"prior": prior.name, "n_test": n_test, "by_parent_count": table,
            "single_parent": {"nodes": len(s), "corr_slope": float(np.corrcoef(s[:, 0], s[:, 1])[0, 1]),
                              "mean_abs_true": float(np.abs(s[:, 0]).mean()),
                              "mean_abs_hat": float(np.abs(s[:, 1]).mean()),
                              "sign_agreement": float(np.mean(np.sign(s[:, 0]) == np.sign(s[:, 1]))),
                              "ratio_median": float(np.median(s[:, 1] / s[:, 0])),
                              "slope_rmse": float(np.sqrt(np.mean((s[:, 1] - s[:, 0]) ** 2)))},
            "two_parents": {"nodes": len(p2),
                            "corr_coef": float(np.corrcoef(p2[:, :2].ravel(), p2[:, 2:4].ravel())[0, 1]),
                            "corr_with_mean_of_true": float(np.corrcoef(mean_true, p2[:, 2:4].ravel())[0, 1]),
                            "corr_sum": float(np.corrcoef(p2[:, :2].sum(1), p2[:, 2:4].sum(1))[0, 1]),
                            "corr_difference": float(np.corrcoef(p2[:, 0] - p2[:, 1], p2[:, 2] - p2[:, 3])[0, 1]),
                            "coef_rmse": float(np.sqrt(np.mean((p2[:, :2] - p2[:, 2:4]) ** 2))),
                            "linear_r2_of_f_hat": float(np.mean(p2[:, 4]))}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state", required=True)
    ap.add_argument("--prior", default="condfip-lin-10")
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--model", default="{}", help="JSON overrides of the model config")
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = CondFiP(preset(args.preset, **json.loads(args.model)))
    model.load_state_dict(torch.load(args.state, map_location="cpu", weights_only=True))
    model.eval()
    rec = {"state": str(args.state), **diagnose(model, PriorConfig.from_yaml(REPO / f"configs/priors/{args.prior}.yaml"),
                                                 args.n_test)}
    print(json.dumps(rec, indent=1))
    if args.out:
        out = Path(args.out)
        data = json.loads(out.read_text()) if out.exists() else []
        out.write_text(json.dumps(data + [rec], indent=1))


if __name__ == "__main__":
    main()
