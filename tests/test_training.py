"""Generic training loop: bitwise resume, LR schedule, early stopping, batch sources."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch

from pipeline_lib.models.mace_tnp import MaceTNP, MaceTNPConfig, mace_tnp_loss
from pipeline_lib.models.mace_tnp import mace_tnp_batch
from pipeline_lib.training import PoolSource, StreamSource, TrainConfig, lr_multiplier, train
from pipeline_lib.training.checkpoint import LAST, load_checkpoint
from tests.linear_scm import two_node_linear_tasks


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _linear_tasks(n_tasks: int, rng: np.random.Generator, n: int = 24, n_int: int = 8):
    """Two-node linear Gaussian tasks X0 -> X1 (random weight), one hard intervention on X0."""
    return two_node_linear_tasks(rng, n_tasks, n, n_int, noise=0.5)


MAKE = partial(mace_tnp_batch, n_obs_min=8, n_obs_max=16)
CFG = MaceTNPConfig(d_model=16, n_heads=2, n_layers=1, n_components=2)


def _source(seed=0, batch_size=4):
    return StreamSource(_linear_tasks, MAKE, batch_size=batch_size, seed=seed)


def _fresh_model():
    torch.manual_seed(123)
    return MaceTNP(CFG)


class _Crash(RuntimeError):
    pass


def test_resume_after_crash_is_bitwise_identical(tmp_path):
    cfg = TrainConfig(steps=6, batch_size=4, checkpoint_every=3, warmup_frac=0.34, device="cpu", seed=7)
    straight = _fresh_model()
    r1 = train(straight, mace_tnp_loss, _source(), cfg, checkpoint_dir=tmp_path / "a", progress=False)
    assert r1.step == 6

    crashed = _fresh_model()

    def crash_after_three(record):
        if record["step"] == 3:
            raise _Crash

    with pytest.raises(_Crash):
        train(crashed, mace_tnp_loss, _source(), cfg, checkpoint_dir=tmp_path / "b",
              callbacks=[crash_after_three], progress=False)
    assert load_checkpoint(tmp_path / "b" / LAST)["step"] == 3

    resumed = _fresh_model()  # a new process would rebuild the model from scratch
    r2 = train(resumed, mace_tnp_loss, _source(), cfg, checkpoint_dir=tmp_path / "b", progress=False)
    assert r2.step == 6 and len(r2.history) == 6
    sa, sb = straight.state_dict(), resumed.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert [h["loss"] for h in r1.history] == [h["loss"] for h in r2.history]
    # the run did learn something: parameters moved away from the initialisation
    init = _fresh_model().state_dict()
    assert any(not torch.equal(init[k], sa[k]) for k in sa)


def test_resume_refuses_a_different_schedule(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=4, checkpoint_every=1, device="cpu")
    train(_fresh_model(), mace_tnp_loss, _source(), cfg, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="steps"):
        train(_fresh_model(), mace_tnp_loss, _source(), cfg.model_copy(update={"steps": 5}),
              checkpoint_dir=tmp_path, progress=False)


def test_warmup_cosine_values():
    cfg = TrainConfig(steps=100, warmup_frac=0.1, lr=1e-3, min_lr_frac=0.0)
    assert cfg.warmup_steps == 10
    assert lr_multiplier(0, cfg) == pytest.approx(0.1)
    assert lr_multiplier(4, cfg) == pytest.approx(0.5)
    assert lr_multiplier(9, cfg) == pytest.approx(1.0)
    assert lr_multiplier(10, cfg) == pytest.approx(1.0)
    assert lr_multiplier(55, cfg) == pytest.approx(0.5)  # half way through the 90 cosine steps
    assert lr_multiplier(100, cfg) == pytest.approx(0.0, abs=1e-12)
    floor = cfg.model_copy(update={"min_lr_frac": 0.1})
    assert lr_multiplier(55, floor) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(10 + 30, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi / 3)))


def test_loop_applies_the_schedule():
    cfg = TrainConfig(steps=5, batch_size=4, warmup_frac=0.4, lr=1e-3, device="cpu")
    res = train(_fresh_model(), mace_tnp_loss, _source(), cfg, progress=False)
    lrs = [h["lr"] for h in res.history]
    expected = [1e-3 * lr_multiplier(s, cfg) for s in range(5)]
    assert lrs == pytest.approx(expected)
    assert lrs[:2] == pytest.approx([5e-4, 1e-3])


def test_early_stopping_triggers(tmp_path):
    """With lr ~ 0 the validation loss never improves after the first evaluation."""
    cfg = TrainConfig(steps=50, batch_size=4, lr=1e-12, val_every=2, val_batches=1,
                      early_stopping_patience=2, device="cpu", checkpoint_every=50)
    val = PoolSource(_linear_tasks(8, np.random.default_rng(1)), MAKE, batch_size=4, seed=0, shuffle=False)
    res = train(_fresh_model(), mace_tnp_loss, _source(), cfg, val_source=val,
                checkpoint_dir=tmp_path, progress=False)
    assert res.stopped_early
    assert res.step == 6  # validations at 2 (best), 4 (worse or equal), 6 (second miss) -> stop
    assert res.best_val is not None and (tmp_path / "best.pt").is_file()
    assert load_checkpoint(tmp_path / LAST)["step"] == 6


def test_sources_are_pure_functions_of_seed_and_step():
    s = _source(seed=3)
    a, b = s(5), s(5)
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=True)
    assert not np.array_equal(s(5)["x_obs"], s(6)["x_obs"])
    pool = PoolSource(_linear_tasks(10, np.random.default_rng(0)), MAKE, batch_size=3, seed=1)
    # 3 steps per epoch cover 9 distinct tasks of the 10
    seen = np.concatenate([pool.indices(s) for s in range(3)])
    assert len(np.unique(seen)) == 9
    assert np.array_equal(pool.indices(4), PoolSource(pool.tasks, MAKE, 3, seed=1).indices(4))


def test_non_finite_loss_is_reported():
    def bad_loss(model, batch):
        return model.loss(batch) * float("nan")

    with pytest.raises(FloatingPointError, match="step 0"):
        train(_fresh_model(), bad_loss, _source(), TrainConfig(steps=2, batch_size=4, device="cpu"), progress=False)


def test_prior_stream_feeds_the_registered_method():
    """Integration: a real prior config -> registry batcher -> MACE-TNP loss, deterministic per step."""
    from pathlib import Path

    from pipeline_lib.models.registry import get_method
    from pipeline_lib.priors import PriorConfig
    from pipeline_lib.training import prior_stream

    prior = PriorConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs/priors/lin-3node.yaml")
    spec = get_method("mace-tnp")
    cfg = spec.config("cpu-small", d_model=16, n_heads=2, n_layers=1, n_obs_max=40)
    source = prior_stream(prior, spec.make_batch(cfg), batch_size=3, seed=0)
    b1, b2 = source(4), source(4)
    for k in b1:
        assert np.array_equal(b1[k], b2[k], equal_nan=True), k
    assert (b1["int_node"] != b1["out_node"]).all()
    assert b1["node_mask"][np.arange(3), b1["out_node"]].all()
    torch.manual_seed(0)
    loss, metrics = spec.loss_fn(spec.build(cfg), {k: torch.from_numpy(v) for k, v in b1.items()})
    assert torch.isfinite(loss) and metrics["nll"] == pytest.approx(float(loss.detach()))
