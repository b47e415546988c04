"""DP-DAG sampler: acyclic samples, straight-through gradients, edge marginals, KL."""
import math

import numpy as np
import pytest
import torch

from pipeline_lib.metrics import is_dag
from pipeline_lib.models.dpdag import DPDAG, softsort


@pytest.mark.parametrize("d", [2, 5, 12])
def test_samples_are_always_dags(d):
    torch.manual_seed(0)
    model = DPDAG(d)
    with torch.no_grad():  # arbitrary (also dense) parameters
        model.order_scores.normal_(0, 3)
        model.edge_logits.normal_(2, 3)
    graphs = model.sample_hard(300, torch.Generator().manual_seed(1))
    assert graphs.shape == (300, d, d) and graphs.dtype == np.uint8
    assert set(np.unique(graphs)) <= {0, 1}
    assert all(is_dag(g) for g in graphs)
    assert graphs.sum() > 0  # not trivially acyclic because empty


def test_forward_values_are_exactly_binary_and_gradients_reach_both_factors():
    model = DPDAG(6)
    a = model.sample(8, torch.Generator().manual_seed(0))
    assert torch.all((a.detach() - a.detach().round()).abs() < 1e-6)
    target = torch.randn(6, 6, generator=torch.Generator().manual_seed(3))
    (a * target).sum().backward()
    assert model.order_scores.grad is not None and model.order_scores.grad.abs().sum() > 0
    assert model.edge_logits.grad is not None and model.edge_logits.grad.abs().sum() > 0


def test_softsort_hard_permutation_is_the_descending_argsort():
    s = torch.tensor([0.3, -1.0, 2.0, 0.9])
    p_soft, p_hard = softsort(s, 0.1)
    order = torch.argsort(s, descending=True)
    assert torch.equal(p_hard.argmax(-1), order)
    assert torch.allclose(p_soft.sum(-1), torch.ones(4))


def test_edge_probs_recover_a_planted_distribution():
    d = 4
    model = DPDAG(d)
    with torch.no_grad():  # order 0, 1, 2, 3 almost surely; edges only between consecutive positions
        model.order_scores.copy_(torch.tensor([30.0, 20.0, 10.0, 0.0]))
        model.edge_logits.fill_(-20.0)
        for k in range(d - 1):
            model.edge_logits[k, k + 1] = 20.0
    probs = model.edge_probs(500, torch.Generator().manual_seed(0))
    chain = np.diag(np.ones(d - 1), 1)
    np.testing.assert_allclose(probs, chain, atol=1e-6)
    assert np.all(np.diag(probs) == 0)


def test_edge_probs_of_the_uniform_model():
    # uniform ordering and p = 1/2 per forward pair: P(i -> j) = 1/2 * 1/2
    probs = DPDAG(5).edge_probs(4000, torch.Generator().manual_seed(0))
    off = probs[~np.eye(5, dtype=bool)]
    assert np.all(np.abs(off - 0.25) < 0.04)
    assert np.all(probs + probs.T <= 1 + 1e-9)


def test_kl_to_bernoulli_is_zero_at_the_prior_and_positive_elsewhere():
    model = DPDAG(4)
    with torch.no_grad():
        model.edge_logits.fill_(math.log(0.2 / 0.8))
    assert float(model.kl_to_bernoulli(0.2)) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        model.edge_logits.fill_(2.0)
    assert float(model.kl_to_bernoulli(0.2)) > 0.5
    with pytest.raises(ValueError, match="p0"):
        model.kl_to_bernoulli(1.0)


# ----------------------------------------------------------------------------- node-space edges


@pytest.mark.parametrize("d", [3, 7])
def test_node_space_samples_are_dags_and_gradients_reach_both_factors(d):
    model = DPDAG(d, edge_space="node")
    with torch.no_grad():
        model.order_scores.normal_(0, 3)
        model.edge_logits.normal_(2, 3)
    graphs = model.sample_hard(300, torch.Generator().manual_seed(1))
    assert all(is_dag(g) for g in graphs) and graphs.sum() > 0 and np.all(graphs[:, range(d), range(d)] == 0)
    a = model.sample(8, torch.Generator().manual_seed(0))
    (a * torch.randn(d, d, generator=torch.Generator().manual_seed(3))).sum().backward()
    assert model.order_scores.grad.abs().sum() > 0 and model.edge_logits.grad.abs().sum() > 0


def test_node_space_edge_probs_are_the_order_probability_times_the_edge_probability():
    model = DPDAG(3, edge_space="node")
    with torch.no_grad():  # node 0 first almost surely, 1 and 2 in either order; L[i, j] per node pair
        model.order_scores.copy_(torch.tensor([30.0, 0.0, 0.0]))
        model.edge_logits.copy_(torch.tensor([[0.0, 20.0, -20.0], [0.0, 0.0, 0.0], [20.0, 20.0, 0.0]]))
    probs = model.edge_probs(4000, torch.Generator().manual_seed(0))
    # 0 -> 1 always allowed, p = 1; 1 -> 2 allowed half the time, p = 1/2; 2 -> 1 likewise, p = 1
    expected = np.array([[0, 1, 0], [0, 0, 0.25], [0, 0.5, 0]])
    np.testing.assert_allclose(probs, expected, atol=0.03)
    assert model.n_edge_params == 6 and DPDAG(3).n_edge_params == 3
    with pytest.raises(ValueError, match="edge_space"):
        DPDAG(3, edge_space="both")


def test_order_log_prob_is_the_plackett_luce_law_of_the_samples():
    import itertools

    model = DPDAG(3)
    with torch.no_grad():
        model.order_scores.copy_(torch.tensor([1.0, -0.5, 0.3]))
    orders = torch.tensor(list(itertools.permutations(range(3))))
    probs = model.order_log_prob(orders).exp()
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-6)  # a distribution over the 6 orderings
    _, sampled = model.sample(20000, torch.Generator().manual_seed(0), return_order=True)
    freq = [(sampled == o).all(-1).float().mean() for o in orders]  # Gumbel-top-k draws follow it
    np.testing.assert_allclose(torch.stack(freq).numpy(), probs.detach().numpy(), atol=0.015)
