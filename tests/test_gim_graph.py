"""GIM's graph fit (issue 16, second pass): the shift-count ordering start, the node-space MAP
DAG, the prior normalisation by the whole data, the refit on the MAP DAG, MAP-target generation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline_lib.metrics import is_dag
from pipeline_lib.models.gim import GIMConfig, GIMModel, fit_gim
from pipeline_lib.models.dpdag import shift_count_scores
from pipeline_lib.models.gim.metrics import score_fit
from pipeline_lib.priors import PriorConfig, sample_split_range
from pipeline_lib.taskdata import restrict, task_slice

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_shift_count_scores_put_often_shifted_nodes_late():
    """Known answer: experiment 1 shifts nodes {0, 1, 2}, 2 shifts {1, 2}, 3 shifts {2} (a chain
    0 -> 1 -> 2 with each node targeted once): counts 1, 2, 3, so the start order is 0, 1, 2 (node 3,
    never shifted, before them)."""
    rng = np.random.default_rng(0)
    x_obs = rng.standard_normal((400, 4))
    shifts = np.array([[2.0, 2.0, 2.0, 0.0], [0.0, 2.0, 2.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    x_int = rng.standard_normal((3, 100, 4)) + shifts[:, None]
    scores = shift_count_scores(x_obs, x_int, z_min=3.0, scale=2.0)
    assert scores[3] > scores[0] > scores[1] > scores[2]  # node 3, never shifted, first
    counts = np.array([1, 2, 3, 0], float)
    assert np.allclose(scores, -2.0 * (counts - counts.mean()) / counts.std())
    assert np.allclose(shift_count_scores(x_obs, x_int[:, :, :] * 0 + x_obs.mean(0), 3.0, 2.0), 0.0)  # no shift


def test_node_space_map_dag_is_the_mode_ordering_masked_edges():
    model = GIMModel(6, 2, GIMConfig(edge_space="node"))
    with torch.no_grad():
        model.dag.order_scores.copy_(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0]))  # order 0, 1, ..., 5
        model.dag.edge_logits.fill_(-3.0)
        model.dag.edge_logits[0, 3] = model.dag.edge_logits[3, 0] = 2.0  # both directions on: the order picks 0 -> 3
        model.dag.edge_logits[4, 1] = 2.0  # against the order: dropped
        model.dag.edge_logits[2, 5] = 2.0
    adj = model.map_dag().numpy()
    expected = np.zeros((6, 6))
    expected[0, 3] = expected[2, 5] = 1.0
    assert np.array_equal(adj, expected) and is_dag(adj.astype(np.uint8))


def test_priors_are_divided_by_the_whole_data_not_the_minibatch():
    torch.manual_seed(0)
    x_obs, x_int, gamma = torch.randn(50, 4), torch.randn(3, 20, 4), torch.randn(3, 2)
    parts = {}
    for scale in ("data", "batch"):
        model = GIMModel(4, 2, GIMConfig(prior_scale=scale, n_graph_mc=1))
        model.n_data_entries = 10_000
        _, parts[scale] = model.loss(x_obs, x_int, gamma, torch.Generator().manual_seed(1))
    n_batch = (50 + 3 * 20) * 4
    assert parts["data"]["prior"] == pytest.approx(parts["batch"]["prior"] * n_batch / 10_000, rel=1e-5)
    assert parts["data"]["nll"] == pytest.approx(parts["batch"]["nll"], rel=1e-6)  # the likelihood is per batch entry


def planted_system(index: int = 0) -> dict:
    cfg = PriorConfig.from_dict(dict(
        name="planted", graph=dict(kind="erdos_renyi", n_nodes=5, expected_parents=1), mechanism=dict(kind="linear"),
        interventions=dict(n_regimes=18, kind="soft", perturbation_dim=5, drugs=dict(
            n_drugs=6, doses=[0.3, 0.6, 1.0], embedding_dim=4, max_targets=1, effect_low=2.0, effect_high=3.0,
            n_heldout=4)),
        n_obs=200, n_int=100, splits=dict(train=0, val=0, test=4)))
    return restrict(task_slice(sample_split_range(cfg, "test", index, index + 1), 0))


def test_refit_freezes_the_graph_and_map_targets_share_one_target_set():
    data = planted_system(0)
    base = dict(n_test_regimes=4, steps=60, n_restarts=1)
    plain = fit_gim(data, GIMConfig(**base))
    refit = fit_gim(data, GIMConfig(**base, refit_steps=20, generation_targets="map"))
    for name in ("order_scores", "edge_logits"):  # same seeded fit, graph untouched by the refit
        assert torch.equal(getattr(plain.model.dag, name), getattr(refit.model.dag, name))
    assert np.array_equal(plain.map_graph(), refit.map_graph())
    assert not torch.equal(plain.model.weight, refit.model.weight)  # the mechanisms were refitted
    assert sum("refit" in h for h in refit.history) == 20
    # MAP targets: every row shifts the same nodes, so with an empty DAG the non-target columns are noise only
    gamma = data["perturbation"][-1]
    probs = refit.predict_perturbation(gamma)["target_probs"][0]
    refit._adj = torch.zeros_like(refit._adj)
    x = refit.sample_perturbation(gamma, 4000, np.random.default_rng(0))
    z = (x - refit.x_mean) / refit.x_std - refit.model.bias.detach().numpy()
    off = probs <= 0.5
    assert np.allclose(z[:, off].mean(0), 0.0, atol=0.1)


@pytest.mark.slow
def test_planted_linear_graph_recovered_with_the_shift_count_start():
    """5-node planted systems: edge AUROC >= 0.85 and E-SHD below the empty graph's on both
    (measured: AUROC 1.0 / 1.0, E-SHD 1.2 / 0.5 against 4 / 6 true edges; a third system,
    index 2, stays at 0.59: the start ordering is a heuristic)."""
    from pipeline_lib import metrics as M

    for index in (0, 1):
        data = planted_system(index)
        post = fit_gim(data, GIMConfig(n_test_regimes=4, steps=400, n_restarts=1))
        scores = score_fit(post, data, 4)
        empty = float(np.asarray(data["adjacency"]).sum())
        assert scores["edge_auroc"] >= 0.85, scores
        assert scores["e_shd"] < empty, (scores, empty)
        assert M.shd(data["adjacency"], post.map_graph()) <= empty
