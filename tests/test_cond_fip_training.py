"""Cond-FiP training procedures (two-stage, EMA), the Gaussian interventional density option,
and the greedy DAG of the predicted-graph benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from pipeline_lib.models.cond_fip import CondFiP, make_batch, predict, preset
from pipeline_lib.models.cond_fip.training import WeightEMA, stage_loss, train_two_stage
from pipeline_lib.priors import PriorConfig
from pipeline_lib.priors.sampler import sample_tasks
from pipeline_lib.taskdata import task_slice
from pipeline_lib.training.batching import prior_stream
from pipeline_lib.training.loop import TrainConfig, to_device

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")
PRIOR = PriorConfig.from_yaml("configs/priors/lin-3node.yaml")

ENCODER = ("enc_embed", "enc_layers", "enc_norm", "noise_head")


def _groups(model: CondFiP) -> tuple[dict, dict]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    enc = {k: v for k, v in state.items() if k.startswith(ENCODER)}
    return enc, {k: v for k, v in state.items() if not k.startswith(ENCODER)}


def _batch(model: CondFiP, seed: int = 0) -> dict:
    return to_device(make_batch(model.config)(sample_tasks(PRIOR, 4, seed), np.random.default_rng(seed)), CPU)


def test_stages_train_only_their_part():
    torch.manual_seed(0)
    model = CondFiP(preset("tiny", n_embed=32, n_target=32))
    enc0, dec0 = _groups(model)
    cfg = TrainConfig(steps=3, batch_size=4, lr=1e-2, device="cpu", warmup_frac=0.0)
    stream = prior_stream(PRIOR, make_batch(model.config), 4, 0)
    train_two_stage(model, stream, cfg, TrainConfig(steps=3, batch_size=4, lr=1e-2, device="cpu", warmup_frac=0.0,
                                                    seed=1))
    enc1, dec1 = _groups(model)
    assert any(not torch.equal(enc0[k], enc1[k]) for k in enc0)  # stage 1 moved the encoder
    assert any(not torch.equal(dec0[k], dec1[k]) for k in dec0)  # stage 2 moved the decoder
    # stage 1 alone leaves the decoder bitwise unchanged; stage 2 alone leaves the encoder
    for stage, frozen in (("encoder", 1), ("decoder", 0)):
        torch.manual_seed(0)
        m = CondFiP(preset("tiny", n_embed=32, n_target=32))
        before = _groups(m)[frozen]
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
        loss, metrics = stage_loss(m, _batch(m), stage)
        loss.backward()
        opt.step()
        after = _groups(m)[frozen]
        assert all(torch.equal(before[k], after[k]) for k in before), stage
        assert ("mech_rmse" in metrics) == (stage == "decoder")
    with pytest.raises(ValueError, match="stage"):
        m.loss(_batch(m), stage="both")


def test_weight_ema_follows_the_warm_up_formula():
    lin = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = WeightEMA(lin, beta=0.99, every=2)
    want = 0.0
    for step in range(1, 9):
        with torch.no_grad():
            lin.weight.fill_(float(step))
        if step % 2 == 0:
            beta = min(0.99, 1 - (1 + ema.updates) ** (-2 / 3))
            want = beta * want + (1 - beta) * step
        ema({})
    assert ema.updates == 4
    assert float(ema.shadow["weight"]) == pytest.approx(want, rel=1e-6)
    assert float(ema.shadow["weight"]) != pytest.approx(8.0)  # an average, not the last weight
    ema.copy_to(lin)
    assert float(lin.weight.detach()) == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="beta"):
        WeightEMA(lin, beta=1.0)


def _tiny_answer():
    """An untrained tiny Cond-FiP's answer on one 3-node task, 500 draws per intervention."""
    torch.manual_seed(0)
    model = CondFiP(preset("tiny")).eval()
    ans = predict(model, task_slice(sample_tasks(PRIOR, 1, 3), 0))
    ans.kde_samples = 500
    return ans


def test_gaussian_density_option_is_the_normal_of_the_draws():
    ans = _tiny_answer()
    assert (ans.density, ans.calibrated, ans.quantiles_from_draws) == ("gaussian", True, True)  # the defaults
    ans.calibrated = False
    x = np.linspace(-2, 2, 7)
    est = ans.interventional_log_density(0, 0.5, 1, x)
    y = ans._kde_draws(0, 0.5)[:, 1]
    np.testing.assert_allclose(est.log_density, norm.logpdf(x, y.mean(), y.std(ddof=1)), rtol=1e-10)
    assert np.all(est.mc_stderr > 0)
    q = ans.quantiles_batch(np.array([0, 0]), np.array([0.5, 0.5]), np.array([1, 2]), np.array([0.05, 0.5, 0.95]),
                            np.random.default_rng(0))
    np.testing.assert_allclose(q[0], norm.ppf([0.05, 0.5, 0.95], y.mean(), y.std(ddof=1)), rtol=1e-10)
    assert q[1, 1] == pytest.approx(ans._kde_draws(0, 0.5)[:, 2].mean())
    ans.density = "kde"
    q_kde = ans.quantiles_batch(np.array([0]), np.array([0.5]), np.array([1]), np.array([0.5]),
                                np.random.default_rng(0))
    assert q_kde[0, 0] == pytest.approx(np.median(y))
    ans.density = "poisson"
    with pytest.raises(ValueError, match="density"):
        ans.interventional_log_density(0, 0.5, 1, x)


def test_greedy_dag_keeps_the_most_probable_acyclic_edges(monkeypatch):
    # benchmarks/ is a folder of scripts, importable from the repository root only
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from benchmarks.cond_fip_graph import greedy_dag

    p = np.array([[0.0, 0.9, 0.2], [0.6, 0.0, 0.8], [0.7, 0.1, 0.0]])
    # 0->1 (0.9), 1->2 (0.8); 2->0 (0.7) and 1->0 (0.6) would close cycles; 0->2 is below 0.5
    np.testing.assert_array_equal(greedy_dag(p), [[0, 1, 0], [0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(greedy_dag(p, threshold=0.95), np.zeros((3, 3)))


def test_calibrated_density_adds_the_reconstruction_variance():
    ans = _tiny_answer()
    ans.calibrated = False
    rec = ans.reconstruction_variance()
    x_rec = ans.sample_observational(len(ans.x_ctx), noise=ans.predict_noise(ans.x_ctx))
    np.testing.assert_allclose(rec, ((x_rec - ans.x_ctx) ** 2).mean(0), rtol=1e-6)
    assert rec.shape == (3,) and np.all(rec > 0)  # an untrained decoder does not reconstruct
    x = np.linspace(-2, 2, 5)
    plain = ans.interventional_log_density(0, 0.5, 1, x).log_density
    ans.calibrated = True
    y = ans._kde_draws(0, 0.5)[:, 1]
    wide = ans.interventional_log_density(0, 0.5, 1, x).log_density
    np.testing.assert_allclose(wide, norm.logpdf(x, y.mean(), np.sqrt(y.var(ddof=1) + rec[1])), rtol=1e-10)
    assert not np.allclose(plain, wide)


def test_query_protocol_scores_the_held_out_rows_with_their_own_noise(monkeypatch):
    """benchmarks/cond_fip.py, the paper's protocol: per-row RMSE (hand-computed), and the true SCM
    fitted on the context scores exactly 0 on the queries only when each query row meets its own
    noise and counterfactual (a row shift, the bug it guards against, does not)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from benchmarks.cond_fip import first_rows, node_rmse, row_rmse, score_queries
    from pipeline_lib.priors import PriorConfig, sample_split_range
    from pipeline_lib.priors.oracle import TrueSCM
    from pipeline_lib.taskdata import restrict, task_slice

    err = np.array([[3.0, 4.0], [0.0, 0.0]])
    assert row_rmse(err, np.zeros_like(err)) == pytest.approx(np.sqrt(12.5) / 2)  # rows: 3.536, 0
    assert node_rmse(err, np.zeros_like(err)) == pytest.approx((np.sqrt(4.5) + np.sqrt(8.0)) / 2)
    cfg = PriorConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs/priors/condfip-lin-10-ood.yaml")
    cfg = cfg.model_copy(update={"n_obs": 60, "n_int": 5})
    data = restrict(task_slice(sample_split_range(cfg, "test", 0, 1), 0))
    ctx, query = first_rows(data, 30), first_rows(data, 30, start=30)
    assert np.array_equal(query["x_obs"], data["x_obs"][30:]) and np.array_equal(query["x_cf"], data["x_cf"][:, 30:])
    truth = TrueSCM(cfg, "test", 0)
    scores = score_queries(truth, query)
    assert set(scores) == {"noise_q", "sample_q", "interventional_q", "counterfactual_q"}
    assert max(scores.values()) < 1e-4, scores
    shifted = {**query, "noise_obs": np.roll(query["noise_obs"], 1, axis=0)}
    bad = score_queries(truth, shifted)
    assert bad["sample_q"] > 0.3 and bad["noise_q"] > 0.3 and bad["counterfactual_q"] < 1e-4
