"""Graph metrics: SHD, SID (hand cases, paper example, brute-force reference), CPDAG,
E-SHD / E-SID, edge AUROC / AUPRC."""

import itertools
import warnings

import networkx as nx
import numpy as np
import pytest
import torch

from pipeline_lib.metrics import (
    GraphInputError,
    MetricUndefinedWarning,
    cpdag,
    edge_auprc,
    edge_auroc,
    expected_shd,
    expected_sid,
    shd,
    shd_cpdag,
    sid,
    transitive_closure,
)


def adj(d, edges):
    a = np.zeros((d, d), dtype=np.uint8)
    for i, j in edges:
        a[i, j] = 1
    return a


def random_dag(rng, d, p):
    a = np.triu(rng.random((d, d)) < p, 1).astype(np.uint8)
    perm = rng.permutation(d)
    return a[np.ix_(perm, perm)]


CHAIN = adj(3, [(0, 1), (1, 2)])
FORK = adj(3, [(0, 1), (0, 2)])
COLLIDER = adj(3, [(0, 2), (1, 2)])
EMPTY3 = np.zeros((3, 3), dtype=np.uint8)

# Peters & Buhlmann (2015), Fig. 1: X1 -> X2, both -> Y1, Y2, Y3.
PAPER_G = adj(5, [(0, 1)] + [(i, j) for i in (0, 1) for j in (2, 3, 4)])
PAPER_H1 = PAPER_G.copy()
PAPER_H1[2, 3] = 1  # an extra edge Y1 -> Y2
PAPER_H2 = PAPER_G.copy()
PAPER_H2[0, 1], PAPER_H2[1, 0] = 0, 1  # X1 -> X2 reversed


# --------------------------------------------------------------------------- SHD


def test_shd_hand_cases():
    full = adj(3, [(0, 1), (0, 2), (1, 2)])
    assert shd(CHAIN, CHAIN) == 0
    assert shd(EMPTY3, full) == 3
    assert shd(full, EMPTY3) == 3
    assert shd(adj(2, [(0, 1)]), adj(2, [(1, 0)])) == 1  # reversed counts 1, not 2
    assert shd(CHAIN, FORK) == 2  # 1->2 missing, 0->2 extra
    assert shd(CHAIN, COLLIDER) == 2  # 0->1 missing, 0->2 extra, 1->2 kept
    # one reversed + one missing + one extra on 4 nodes
    t = adj(4, [(0, 1), (1, 2), (2, 3)])
    e = adj(4, [(1, 0), (2, 3), (0, 3)])
    assert shd(t, e) == 3


def test_shd_fork_vs_collider_counts_each_pair_once():
    # pairs: {0,1}: edge vs none -> 1; {0,2}: 0->2 vs 0->2 -> 0; {1,2}: none vs 1->2 -> 1
    assert shd(FORK, COLLIDER) == 2
    assert shd(COLLIDER, FORK) == 2


def test_shd_undirected_pairs_count_once():
    undirected = adj(3, [(0, 1), (1, 0)])
    assert shd(adj(3, [(0, 1)]), undirected) == 1
    assert shd(EMPTY3, undirected) == 1
    assert shd(undirected, undirected) == 0


def test_shd_accepts_torch_and_validates():
    assert shd(torch.tensor(CHAIN), torch.tensor(FORK, dtype=torch.float32)) == 2
    with pytest.raises(GraphInputError, match="est_adj must contain only 0/1"):
        shd(CHAIN, CHAIN * 0.5)
    with pytest.raises(GraphInputError, match="est_adj must have shape"):
        shd(CHAIN, np.zeros((3, 2)))
    with pytest.raises(GraphInputError, match="nodes"):
        shd(CHAIN, np.zeros((4, 4)))
    with pytest.raises(GraphInputError, match="true_adj has self-loops"):
        shd(np.eye(3), CHAIN)


# --------------------------------------------------------------------------- SID


def test_sid_paper_example():
    assert sid(PAPER_G, PAPER_G) == 0
    assert sid(PAPER_G, PAPER_H1) == 0
    assert sid(PAPER_G, PAPER_H2) == 8
    assert shd(PAPER_G, PAPER_H1) == 1 and shd(PAPER_G, PAPER_H2) == 1


def test_sid_hand_cases_against_empty_estimate():
    # Empty H adjusts for nothing: p(x_j | do x_i) is estimated by p(x_j | x_i), wrong
    # exactly when i and j are d-connected by a non-causal path.
    assert sid(CHAIN, EMPTY3) == 3  # (1,0), (2,1), (2,0)
    assert sid(FORK, EMPTY3) == 4  # (1,0), (2,0), (1,2), (2,1)
    assert sid(COLLIDER, EMPTY3) == 2  # (2,0), (2,1)
    # the truth has no edges: any parent set is a valid adjustment set
    assert sid(EMPTY3, CHAIN) == 0
    assert sid(EMPTY3, adj(3, [(2, 1), (1, 0), (2, 0)])) == 0


def test_sid_reversed_edge_and_asymmetry():
    g, h = adj(2, [(0, 1)]), adj(2, [(1, 0)])
    assert sid(g, h) == 2  # (0,1): H says 1 is a parent -> no effect; (1,0): confounded
    assert sid(CHAIN, EMPTY3) == 3 and sid(EMPTY3, CHAIN) == 0  # SID(G,H) != SID(H,G)
    # truth chain 0->1->2, estimate collider 0->2<-1: only (1, 0) is wrong (Pa_H(1) is
    # empty but 0 -> 1 confounds nothing else; (2, *) adjust for {0, 1} correctly)
    assert sid(CHAIN, COLLIDER) == 1
    # truth collider, estimate chain: only (2, 0) is wrong (Z = {1} leaves 2 <- 0 open)
    assert sid(COLLIDER, CHAIN) == 1


def test_sid_complete_supergraph_in_causal_order_is_zero():
    rng = np.random.default_rng(3)
    for _ in range(5):
        g = random_dag(rng, 8, 0.3)
        order = list(nx.topological_sort(nx.DiGraph(g)))
        full = np.zeros_like(g)
        for a_pos, i in enumerate(order):
            for j in order[a_pos + 1 :]:
                full[i, j] = 1
        assert sid(g, full) == 0
        assert sid(g, g) == 0


def _sid_brute_force(g, h):
    """SID by definition: parent adjustment validity via the adjustment criterion,
    checked with networkx d-separation in the proper back-door graph."""
    d = g.shape[0]
    G = nx.DiGraph()
    G.add_nodes_from(range(d))
    G.add_edges_from(zip(*np.nonzero(g)))
    wrong = 0
    for i, j in itertools.permutations(range(d), 2):
        z = set(np.flatnonzero(h[:, i]).tolist())
        de_i = nx.descendants(G, i)
        if j in z:
            wrong += j in de_i
            continue
        causal = {w for w in de_i if w == j or j in nx.descendants(G, w)}
        forb = set()
        for w in causal:
            forb |= {w} | nx.descendants(G, w)
        if z & forb:
            wrong += 1
            continue
        pbd = G.copy()
        pbd.remove_edges_from([(i, w) for w in causal if G.has_edge(i, w)])
        wrong += not nx.is_d_separator(pbd, {i}, {j}, z)
    return wrong


def test_sid_matches_brute_force_reference_on_random_dags():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(40):
        d = int(rng.integers(2, 7))
        g = random_dag(rng, d, rng.uniform(0.2, 0.8))
        h = random_dag(rng, d, rng.uniform(0.2, 0.8))
        assert sid(g, h) == _sid_brute_force(g, h), (g, h)
        checked += sid(g, h) > 0
    assert checked > 20  # the comparison covered many non-trivial cases


def test_sid_validation():
    cyc = adj(3, [(0, 1), (1, 2), (2, 0)])
    with pytest.raises(GraphInputError, match="est_adj is cyclic"):
        sid(CHAIN, cyc)
    with pytest.raises(GraphInputError, match="true_adj is cyclic"):
        sid(cyc, CHAIN)
    with pytest.raises(GraphInputError, match="graph_samples is cyclic"):
        expected_sid(CHAIN, np.stack([CHAIN, cyc]))


def test_sid_runs_at_50_nodes():
    rng = np.random.default_rng(1)
    g, h = random_dag(rng, 50, 0.1), random_dag(rng, 50, 0.1)
    v = sid(g, h)
    assert 0 < v <= 50 * 49
    assert sid(g, g) == 0


def test_transitive_closure():
    r = transitive_closure(CHAIN)
    assert r.tolist() == [[False, True, True], [False, False, True], [False, False, False]]


# --------------------------------------------------------------------------- CPDAG


def _v_structures(a):
    d = a.shape[0]
    skel = a | a.T
    return {
        (min(i, j), k, max(i, j))
        for k in range(d)
        for i, j in itertools.combinations(np.flatnonzero(a[:, k]), 2)
        if not skel[i, j]
    }


def _cpdag_brute_force(a):
    """Union of all DAGs with the same skeleton and v-structures (Verma & Pearl)."""
    edges = list(zip(*np.nonzero(a)))
    target = _v_structures(a)
    union = np.zeros_like(a)
    for flips in itertools.product((False, True), repeat=len(edges)):
        b = np.zeros_like(a)
        for (i, j), f in zip(edges, flips):
            b[(j, i) if f else (i, j)] = 1
        if nx.is_directed_acyclic_graph(nx.DiGraph(b)) and _v_structures(b) == target:
            union |= b
    return union


def test_cpdag_small_cases():
    both = lambda e: adj(3, e + [(j, i) for i, j in e])  # noqa: E731
    assert (cpdag(CHAIN) == both([(0, 1), (1, 2)])).all()
    assert (cpdag(FORK) == both([(0, 1), (0, 2)])).all()
    assert (cpdag(COLLIDER) == COLLIDER).all()
    # R1 downstream of a collider: 0 -> 2 <- 1, 2 -> 3 is compelled
    g = adj(4, [(0, 2), (1, 2), (2, 3)])
    assert (cpdag(g) == g).all()


def test_cpdag_matches_markov_equivalence_enumeration():
    rng = np.random.default_rng(5)
    for _ in range(25):
        d = int(rng.integers(3, 6))
        g = random_dag(rng, d, rng.uniform(0.3, 0.7))
        assert (cpdag(g) == _cpdag_brute_force(g)).all(), g


def test_shd_cpdag_zero_for_markov_equivalent_dags():
    assert shd_cpdag(CHAIN, adj(3, [(1, 0), (2, 1)])) == 0  # reversed chain
    assert shd_cpdag(CHAIN, FORK.T.copy()) == 3  # FORK.T = 1 -> 0 <- 2, a compelled collider
    assert shd_cpdag(CHAIN, adj(3, [(1, 0), (1, 2)])) == 0  # fork at 1, same class
    assert shd(CHAIN, adj(3, [(1, 0), (1, 2)])) == 1
    # undirected vs directed counts 1: chain class vs collider class differ in 2 pairs
    assert shd_cpdag(CHAIN, adj(3, [(0, 1), (2, 1)])) == 2


# --------------------------------------------------------------------------- expectations


def test_expected_shd_and_sid_weighted_means():
    samples = np.stack([CHAIN, EMPTY3, FORK, EMPTY3])
    assert expected_shd(CHAIN, samples) == pytest.approx((0 + 2 + 2 + 2) / 4)
    w = np.array([2.0, 1.0, 1.0, 0.0])
    assert expected_shd(CHAIN, samples, w) == pytest.approx((0 * 2 + 2 + 2) / 4)
    sids = [sid(CHAIN, s) for s in samples]
    assert expected_sid(CHAIN, samples) == pytest.approx(np.mean(sids))
    assert expected_sid(CHAIN, samples, w) == pytest.approx(np.dot(w / w.sum(), sids))
    assert expected_sid(CHAIN, torch.tensor(samples)) == pytest.approx(np.mean(sids))
    with pytest.raises(ValueError, match="weights"):
        expected_shd(CHAIN, samples, np.ones(3))


def test_expected_sid_batched_equals_loop_on_many_samples():
    rng = np.random.default_rng(7)
    g = random_dag(rng, 12, 0.25)
    samples = np.stack([random_dag(rng, 12, 0.25) for _ in range(30)] * 2)
    assert expected_sid(g, samples) == pytest.approx(np.mean([sid(g, s) for s in samples]))


# --------------------------------------------------------------------------- edge scores


def test_edge_auroc_auprc_hand_values_with_ties():
    # off-diagonal entries in row-major order: (0,1) (0,2) (1,0) (1,2) (2,0) (2,1)
    true = adj(3, [(0, 1), (1, 2)])
    probs = np.array([[0, 0.9, 0.9], [0.1, 0, 0.5], [0.1, 0.1, 0]])
    # positives {0.9, 0.5}; negatives {0.9, 0.1, 0.1, 0.1}
    # AUROC = (0.5 + 3 + 0 + 3) / 8
    assert edge_auroc(true, probs) == pytest.approx(6.5 / 8)
    # thresholds 0.9: P=1/2, R=1/2; 0.5: P=2/3, R=1  -> AP = 0.25 + 1/3
    assert edge_auprc(true, probs) == pytest.approx(0.25 + 1 / 3)


def test_edge_scores_perfect_reversed_and_undefined():
    true = CHAIN
    assert edge_auroc(true, true * 0.8 + 0.1) == 1.0
    assert edge_auprc(true, true * 0.8 + 0.1) == 1.0
    assert edge_auroc(true, 1.0 - true) == 0.0
    with pytest.warns(MetricUndefinedWarning):
        assert np.isnan(edge_auroc(EMPTY3, np.full((3, 3), 0.5)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricUndefinedWarning)
        assert np.isnan(edge_auprc(EMPTY3, np.full((3, 3), 0.5)))
    with pytest.raises(ValueError, match="edge_probs must have shape"):
        edge_auroc(true, np.zeros((2, 2)))
