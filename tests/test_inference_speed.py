"""Batched MACE-TNP inference: the same answers as one task at a time, from fewer forward passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline_lib.evaluation import evaluate_amortized, evaluate_amortized_many, make_queries
from pipeline_lib.models.mace_tnp import MaceTNP, MaceTNPAnswer, MaceTNPConfig, predict
from pipeline_lib.models.mace_tnp.answer import _chunks
from pipeline_lib.models.mace_tnp.model import ROLE_OTHER
from pipeline_lib.priors import PriorConfig, sample_split_range
from pipeline_lib.taskdata import task_slice

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = MaceTNPConfig(d_model=16, n_heads=2, n_layers=2, n_components=3, ff_mult=2)


def _model(seed: int = 0) -> MaceTNP:
    torch.manual_seed(seed)
    return MaceTNP(TINY).eval()


def _tasks(n_tasks: int = 6) -> list[dict]:
    """Tasks with 3 to 4 real nodes (two shapes after restriction, padding in the store)."""
    cfg = PriorConfig.from_dict({
        "name": "speed-test", "graph": {"kind": "erdos_renyi", "n_nodes_min": 3, "n_nodes_max": 4,
                                        "expected_parents": 1.0},
        "mechanism": {"kind": "linear"}, "interventions": {"n_regimes": 4}, "n_obs": 24, "n_int": 10,
        "splits": {"train": 1, "val": 1, "test": n_tasks}})
    batch = sample_split_range(cfg, "test", 0, n_tasks)
    tasks = [task_slice(batch, t) for t in range(n_tasks)]
    assert len({int(t["node_mask"].sum()) for t in tasks}) == 2  # both shapes present
    return tasks


def _embed_by_role(mlps, values: torch.Tensor, roles: torch.Tensor) -> torch.Tensor:
    """``mlps[roles[b, v]](values[b, :, v])`` by evaluating all three and selecting: ``(B, R, d, D)``."""
    out = torch.stack([mlp(values[..., None]) for mlp in mlps], dim=0)  # (3, B, R, d, D)
    return torch.einsum("rbndk,bdr->bndk", out, torch.nn.functional.one_hot(roles, 3).to(out.dtype))


def _reference_forward(model: MaceTNP, batch: dict):
    """The forward pass of the module docstring, literally: every layer on every row in the row
    layout, no column sharing, every role MLP on every entry, PyTorch's attention kernel."""
    x, om, nm = batch["x_obs"], batch["obs_mask"], batch["node_mask"]
    j, i, a = batch["int_node"], batch["out_node"], batch["int_value"]
    b, n, d = x.shape
    roles = model._roles(j, i, d)
    h_obs = _embed_by_role(model.obs_embed, x, roles)
    v = torch.arange(d)[None, :]
    h_int = _embed_by_role(model.int_embed, torch.where(v == j[:, None], a[:, None], 0.0)[:, None, :], roles)
    with torch.enable_grad():  # autograd on: PyTorch's attention kernel
        for layer in model.layers:
            h_obs, h_int = layer(h_obs, h_int, om, nm)
        params = model.decoder(model.out_norm(h_int[torch.arange(b), 0, i])).float()
    return params.detach()


@torch.no_grad()
def test_inference_shortcuts_change_no_output():
    """Shared first-layer columns and the last layer on interventional rows only are exact."""
    model = _model()
    g = torch.Generator().manual_seed(3)
    data = torch.randn(2, 30, 4, generator=g)
    # every (j, i) query of two datasets: their first-layer columns repeat (2 * 12 * 4 = 96 columns)
    pairs = [(jq, iq) for jq in range(4) for iq in range(4) if jq != iq]
    owner = torch.arange(2).repeat_interleave(len(pairs))
    batch = {"x_obs": data[owner], "obs_mask": torch.ones(len(owner), 30, dtype=torch.bool),
             "node_mask": torch.ones(len(owner), 4, dtype=torch.bool),
             "int_node": torch.tensor([p[0] for p in pairs] * 2), "out_node": torch.tensor([p[1] for p in pairs] * 2),
             "int_value": torch.randn(len(owner), generator=g)}
    roles = model._roles(batch["int_node"], batch["out_node"], 4)
    first, inverse = model._distinct_columns(batch["x_obs"], roles, batch["obs_mask"])
    assert len(first) == 2 * 4 * 3  # per dataset: 4 columns x 3 roles
    assert (roles.reshape(-1)[first] != ROLE_OTHER).sum() == 2 * 4 * 2
    mog = model(batch)
    ref = _reference_forward(model, batch)
    torch.testing.assert_close(torch.cat([mog.logits, mog.means], -1), torch.cat(ref.chunk(3, -1)[:2], -1),
                               atol=1e-5, rtol=1e-5)
    # with gradients (training) nothing is shared, and the answer is the same
    with torch.enable_grad():
        trained_way = model(batch)
    torch.testing.assert_close(trained_way.means.detach(), mog.means, atol=1e-5, rtol=1e-5)


def test_batched_answers_equal_per_task_answers():
    """prepare_many over tasks of two shapes, in chunks of 5 rows, == each task alone (1e-5)."""
    model, tasks = _model(), _tasks()
    alone = [predict(model, t) for t in tasks]
    together = [predict(model, t) for t in tasks]
    queries = [make_queries(t) for t in tasks]
    MaceTNPAnswer.prepare_many(together, [(q.j, q.a, q.i) for q in queries], max_rows=5)
    for a1, a2, q in zip(alone, together, queries):
        lp1 = a1.log_density_batch(q.j, q.a, q.i, q.samples).log_density
        calls = []
        real_forward = model.forward
        model.forward = lambda *args, **kw: calls.append(1) or real_forward(*args, **kw)
        try:
            lp2 = a2.log_density_batch(q.j, q.a, q.i, q.samples).log_density
            qu2 = a2.quantiles_batch(q.j, q.a, q.i, np.array([0.05, 0.5, 0.95]))
        finally:
            del model.forward
        assert not calls  # answered from the batched pass, no network
        np.testing.assert_allclose(lp2, lp1, atol=1e-5, rtol=0)
        np.testing.assert_allclose(qu2, a1.quantiles_batch(q.j, q.a, q.i, np.array([0.05, 0.5, 0.95])),
                                   atol=1e-5, rtol=0)


def test_evaluate_many_scores_like_one_by_one_with_one_forward_per_task():
    model, tasks = _model(1), _tasks()
    calls = []
    real_forward = model.forward
    model.forward = lambda *args, **kw: calls.append(1) or real_forward(*args, **kw)
    try:
        one = [evaluate_amortized("mace-tnp", model, t, seed=5 + k) for k, t in enumerate(tasks)]
        assert len(calls) == len(tasks)  # NLPID and calibration share the timed pass
        calls.clear()
        many = evaluate_amortized_many("mace-tnp", model, tasks, seeds=[5 + k for k in range(len(tasks))])
        # one per chunk of at most 24 query rows cut between tasks, per shape (3 and 4 real nodes)
        counts: dict[int, list[int]] = {}
        for t in tasks:
            counts.setdefault(int(t["node_mask"].sum()), []).append(len(make_queries(t)))
        assert len(calls) == sum(len(_chunks(c, 24)) for c in counts.values()) < len(tasks)
    finally:
        del model.forward
    for (m1, s1), (m2, s2) in zip(one, many):
        for key in ("nlpid", "nlpid_per_sample", "coverage_50", "coverage_90"):
            assert m2[key] == pytest.approx(m1[key], abs=1e-5)
        assert m2["batch_tasks"] == len(tasks) and m1["batch_tasks"] == 1
        assert m2["runtime_s"] == pytest.approx(m2["runtime_batch_s"] / len(tasks))
    with pytest.raises(ValueError, match="seeds"):
        evaluate_amortized_many("mace-tnp", model, tasks, seeds=[0])


def test_chunks_cut_between_tasks():
    assert _chunks([6] * 5, 12) == [slice(0, 12), slice(12, 24), slice(24, 30)]
    assert _chunks([20, 20, 5], 24) == [slice(0, 20), slice(20, 40), slice(40, 45)]
    assert _chunks([20, 3, 5], 24) == [slice(0, 23), slice(23, 28)]
    assert _chunks([70, 3], 32) == [slice(0, 32), slice(32, 64), slice(64, 73)]


def test_prepare_many_in_threads_equals_one_thread():
    """Chunks in two threads (one intra-op thread each) give the one-thread mixtures and restore
    the thread count and the model's mode."""
    model, tasks = _model(), _tasks()
    model.train()
    queries = [(q.j, q.a, q.i) for q in map(make_queries, tasks)]
    one, two = [predict(model, t) for t in tasks], [predict(model, t) for t in tasks]
    MaceTNPAnswer.prepare_many(one, queries, max_rows=5)
    torch.set_num_threads(2)
    try:
        MaceTNPAnswer.prepare_many(two, queries, max_rows=5)
        assert torch.get_num_threads() == 2 and model.training
    finally:
        torch.set_num_threads(1)
    for a1, a2, q in zip(one, two, queries):
        torch.testing.assert_close(a2._mog(*q).means, a1._mog(*q).means, atol=1e-5, rtol=1e-5)


def test_prepare_many_refuses_bad_queries_and_mixed_models():
    tasks = _tasks(2)
    model = _model()
    answers = [predict(model, t) for t in tasks]
    with pytest.raises(ValueError, match="outcome node"):
        MaceTNPAnswer.prepare_many(answers[:1], [(np.array([0]), np.array([1.0]), np.array([0]))])
    with pytest.raises(ValueError, match="one model"):
        MaceTNPAnswer.prepare_many([answers[0], predict(_model(1), tasks[1])], [None, None])


@pytest.fixture
def fused_kernel(monkeypatch):
    """The opt-in fused attention switched on for one test (and off again after it)."""
    from pipeline_lib.models import fused_attention

    monkeypatch.setenv("CAUSALMETA_FUSED_ATTENTION", "1")
    fused_attention._state.pop("lib", None)
    yield fused_attention
    fused_attention._state.pop("lib", None)


def test_fused_attention_is_off_unless_asked_for(monkeypatch):
    from pipeline_lib.models import fused_attention

    monkeypatch.delenv("CAUSALMETA_FUSED_ATTENTION", raising=False)
    fused_attention._state.pop("lib", None)
    try:
        assert not fused_attention.available()
    finally:
        fused_attention._state.pop("lib", None)


@pytest.mark.parametrize("dh, l_q, l_k", [(8, 200, 301), (8, 5, 4), (16, 3, 3), (4, 17, 70)])
def test_fused_attention_equals_pytorch_kernel(dh, l_q, l_k, fused_kernel):
    """The fused CPU kernel against scaled_dot_product_attention: full and tail key vectors,
    the dh = 8 / 16 specialisations and the generic width, masks, one and two threads."""
    fa = fused_kernel
    if not fa.available():
        pytest.skip("no C compiler: the fused kernel is unavailable (PyTorch's kernel is used)")
    g = torch.Generator().manual_seed(dh)
    b, h = 5, 3
    q, k, v = (3 * torch.randn(b, length, h, dh, generator=g) for length in (l_q, l_k, l_k))
    mask = torch.rand(b, l_k, generator=g) > 0.4
    mask[:, 0] = True
    for key_mask in (None, mask):
        ref = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=None if key_mask is None else key_mask[:, None, None, :]).transpose(1, 2)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            try:
                out = fa.attention(q, k, v, key_mask, dh ** -0.5)
            finally:
                torch.set_num_threads(1)
            torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
    masked = fa.attention(q, k, v, mask, dh ** -0.5)
    perturbed = v.clone()
    perturbed[~mask[:, :, None, None].expand_as(v)] = 1e30  # padded keys get exactly zero weight
    assert torch.equal(fa.attention(q, k, perturbed, mask, dh ** -0.5), masked)


@pytest.mark.parametrize("fused", [False, True], ids=["pytorch-attention", "fused-attention"])
@torch.no_grad()
def test_fast_inference_nlpid_equals_reference_path(fused, request):
    """What the benchmark times (column sharing, last layer on interventional rows; PyTorch's
    attention by default, the opt-in fused kernel where compiled) scores NLPID like the literal
    forward pass, to 1e-3 of a per-query sum over 200 samples, at 3 and 4 nodes with padded
    samples and nodes."""
    if fused and not request.getfixturevalue("fused_kernel").available():
        pytest.skip("no C compiler: the fused kernel is unavailable")
    model = MaceTNP(MaceTNPConfig(d_model=32, n_heads=4, n_layers=2, n_components=5, ff_mult=2))
    torch.manual_seed(0)
    model.eval()
    g = torch.Generator().manual_seed(1)
    n, d = 150, 4
    data = torch.randn(3, n, d, generator=g)
    pairs = [(jq, iq) for jq in range(d) for iq in range(d) if jq != iq]
    owner = torch.arange(3).repeat_interleave(len(pairs))
    node_mask = torch.ones(len(owner), d, dtype=torch.bool)
    node_mask[owner == 2, 3] = False  # dataset 2 has 3 real nodes
    obs_mask = torch.ones(len(owner), n, dtype=torch.bool)
    obs_mask[owner == 1, 120:] = False  # dataset 1 has 120 real samples
    jq = torch.tensor([p[0] for p in pairs] * 3)
    iq = torch.tensor([p[1] for p in pairs] * 3)
    keep = node_mask[torch.arange(len(owner)), jq] & node_mask[torch.arange(len(owner)), iq]
    batch = {"x_obs": data[owner][keep], "obs_mask": obs_mask[keep], "node_mask": node_mask[keep],
             "int_node": jq[keep], "out_node": iq[keep], "int_value": 3 * torch.randn(int(keep.sum()), generator=g)}
    y = 2 * torch.randn(int(keep.sum()), 200, generator=g)
    fast = model(batch)
    ref = _reference_forward(model, batch)
    logits, means, raw = ref.chunk(3, -1)
    from pipeline_lib.models.mog import MixtureOfGaussians

    ref_mog = MixtureOfGaussians(logits, means, torch.nn.functional.softplus(raw) + model.config.min_scale)
    nlpid_fast, nlpid_ref = -fast.log_prob(y).sum(-1), -ref_mog.log_prob(y).sum(-1)
    assert float((nlpid_fast - nlpid_ref).abs().max()) < 1e-3
    assert float(nlpid_ref.std()) > 1.0  # the queries differ: a wrong row or role would show
