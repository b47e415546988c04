"""Graph priors: acyclicity, ER density, scale-free hubs and degree bounds, label permutation."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from pipeline_lib.priors import PriorConfig, sample_split_range
from pipeline_lib.metrics import is_dag
from pipeline_lib.priors.graphs import inverse_permutation, relabel_adjacency


def config(graph: dict, n_tasks: int = 300) -> PriorConfig:
    return PriorConfig.from_dict(
        {
            "name": "g",
            "graph": graph,
            "n_obs": 2,
            "n_int": 1,
            "interventions": {"n_regimes": 0},
            "splits": {"train": n_tasks, "val": 1, "test": 1},
        }
    )


@pytest.mark.parametrize(
    "graph",
    [
        {"kind": "erdos_renyi", "n_nodes": 8, "expected_parents": 2.0},
        {"kind": "scale_free", "n_nodes": 8, "attach": 2, "direction": "in"},
        {"kind": "scale_free", "n_nodes": 8, "attach": 2, "direction": "out"},
        {"kind": "fully_connected", "n_nodes": 6},
        {"kind": "watts_strogatz", "n_nodes": 8, "attach": 2},
        {"kind": "sbm", "n_nodes": 8, "expected_parents": 1.5, "sbm_blocks": [2, 5]},
        {"kind": "watts_strogatz", "n_nodes": 10, "attach": 1, "lattice_dims": [2, 3]},
        {"kind": "mixture", "n_nodes": 8, "mix": ["watts_strogatz", "sbm"], "attach": 2},
    ],
)
def test_every_graph_is_a_dag(graph):
    adj = sample_split_range(config(graph, 200), "train", 0, 200)["adjacency"]
    assert adj.dtype == np.uint8 and set(np.unique(adj)) <= {0, 1}
    for a in adj:
        assert is_dag(a)
        assert nx.is_directed_acyclic_graph(nx.from_numpy_array(a, create_using=nx.DiGraph))
    if graph["kind"] == "fully_connected":
        assert (adj.sum(axis=(1, 2)) == 15).all()


def test_is_dag_detects_cycles():
    a = np.zeros((4, 4), dtype=np.uint8)
    a[0, 1] = a[1, 2] = a[2, 3] = 1
    assert is_dag(a)
    a[3, 0] = 1
    assert not is_dag(a)
    assert not is_dag(np.eye(3))


def test_erdos_renyi_edge_density():
    # E[#edges] = expected_parents * n = 1.5 * 10 = 15; per-graph std ~ 3.2, 400 graphs
    adj = sample_split_range(config({"kind": "erdos_renyi", "n_nodes": 10, "expected_parents": 1.5}, 400), "train", 0, 400)["adjacency"]
    edges = adj.sum(axis=(1, 2))
    assert abs(edges.mean() - 15.0) < 0.6
    # edge count is Binomial(45, 1/3): variance 10
    assert 7.0 < edges.var() < 13.5


def test_scale_free_hubs_and_degree_bounds():
    n, m = 30, 2
    for direction, hub_axis, bounded_axis in (("in", 1, 2), ("out", 2, 1)):
        # adj: (T, parent, child); summing the parent axis gives in-degrees, the child axis out-degrees
        adj = sample_split_range(
            config({"kind": "scale_free", "n_nodes": n, "attach": m, "direction": direction}, 60), "train", 0, 60
        )["adjacency"].astype(int)
        # BA with attach m: node k adds min(m, k) edges -> 1 + m (n - 2) edges in total
        assert (adj.sum(axis=(1, 2)) == 1 + m * (n - 2)).all()
        hub_degree = adj.sum(axis=hub_axis)  # (T, n)
        other_degree = adj.sum(axis=bounded_axis)
        assert other_degree.max() <= m  # every node has at most m parents ('out') / children ('in')
        mean_degree = hub_degree.mean()
        assert hub_degree.max(axis=1).mean() > 4.5 * mean_degree  # ER with the same density: ~3.3


def test_scale_free_both_directions_draws_in_and_out_hubs_per_task():
    n, m = 20, 2
    adj = sample_split_range(config({"kind": "scale_free", "n_nodes": n, "attach": m, "direction": "both"}, 200),
                             "train", 0, 200)["adjacency"].astype(int)
    out_hubs = adj.sum(axis=1).max(axis=1) <= m  # every node has at most m parents: hubs have children
    in_hubs = adj.sum(axis=2).max(axis=1) <= m  # at most m children: hubs have parents
    assert (out_hubs ^ in_hubs).all()  # one orientation per task (a 20-node BA graph always has a hub)
    assert 0.38 < out_hubs.mean() < 0.62


def test_watts_strogatz_keeps_the_lattice_edge_count_and_rewires_at_its_rate():
    n, m = 12, 2
    def draw(rewire):
        cfg = config({"kind": "watts_strogatz", "n_nodes": n, "attach": m, "rewire": rewire}, 150)
        return sample_split_range(cfg, "train", 0, 150)["adjacency"].astype(int)

    def lattice_share(adj):
        # an edge of the (labelled) ring lattice joins nodes whose ring distance is <= m, but the
        # labels are permuted: count instead the share of nodes whose undirected degree is 2 m
        und = adj + adj.transpose(0, 2, 1)
        return (und.sum(axis=2) == 2 * m).mean()

    ring = draw(0.0)
    assert (ring.sum(axis=(1, 2)) == n * m).all()  # rewiring moves edges, never adds or drops them
    und = ring + ring.transpose(0, 2, 1)
    assert (und.sum(axis=2) == 2 * m).all()  # every ring node has m neighbours per side
    # the ring is one cycle of the lattice: all 12 nodes connected, each with 4 neighbours
    assert all(nx.is_connected(nx.from_numpy_array(u)) for u in und[:10])
    rewired = draw(0.3)
    assert (rewired.sum(axis=(1, 2)) == n * m).all()
    assert lattice_share(rewired) < 0.5 < lattice_share(ring) == 1.0
    # with p = 1 every edge moves: the degree sequence is far from regular
    assert lattice_share(draw(1.0)) < lattice_share(rewired)


def test_watts_strogatz_torus_lattices():
    # a 4 x 4 torus (n = 16): every site has 4 lattice neighbours -> 32 edges; 3 x 3 x 3 (n = 27): 6 -> 81
    for n, dims, edges in ((16, [2], 32), (27, [3], 81)):
        cfg = config({"kind": "watts_strogatz", "n_nodes": n, "attach": 1, "lattice_dims": dims, "rewire": 0.0}, 20)
        adj = sample_split_range(cfg, "train", 0, 20)["adjacency"].astype(int)
        und = adj + adj.transpose(0, 2, 1)
        assert (adj.sum(axis=(1, 2)) == edges).all() and (und.sum(axis=2) == 2 * dims[0]).all()
    # n = 10 on the 4 x 4 torus: 6 of 16 sites dropped, each edge survives with (10 / 16)(9 / 15): 12 expected
    cfg = config({"kind": "watts_strogatz", "n_nodes": 10, "attach": 1, "lattice_dims": [2]}, 400)
    edges = sample_split_range(cfg, "train", 0, 400)["adjacency"].sum(axis=(1, 2))
    assert abs(edges.mean() - 12.0) < 0.5


def test_block_model_edges_concentrate_inside_groups():
    # 2 groups on 10 nodes with damping 0: edges only inside groups, so the undirected graph
    # has at least 2 components; expected edges = 1.5 * 10 = 15 (p_in = 15 / 20 inside pairs)
    cfg = config({"kind": "sbm", "n_nodes": 10, "expected_parents": 1.5, "sbm_blocks": [2], "sbm_damping": 0.0}, 300)
    adj = sample_split_range(cfg, "train", 0, 300)["adjacency"].astype(int)
    edges = adj.sum(axis=(1, 2))
    assert abs(edges.mean() - 15.0) < 0.5
    for a in adj[:30]:
        assert nx.number_connected_components(nx.from_numpy_array(a + a.T)) >= 2
    # damping 1: no groups, an Erdos-Renyi graph with the same expected edge count
    er = config({"kind": "sbm", "n_nodes": 10, "expected_parents": 1.5, "sbm_damping": 1.0}, 300)
    assert abs(sample_split_range(er, "train", 0, 300)["adjacency"].sum(axis=(1, 2)).mean() - 15.0) < 0.6


def test_mixture_draws_each_law():
    # WS with attach 1 gives exactly n edges; a one-group SBM with 3 expected parents about 3 n
    cfg = config({"kind": "mixture", "n_nodes": 10, "mix": ["watts_strogatz", "sbm"], "attach": 1,
                  "expected_parents": 3.0, "sbm_blocks": [1]}, 200)
    edges = sample_split_range(cfg, "train", 0, 200)["adjacency"].sum(axis=(1, 2))
    ws = (edges == 10).mean()
    assert 0.35 < ws < 0.65 and (edges > 15).mean() > 0.35


@pytest.mark.parametrize("graph, field", [
    ({"kind": "watts_strogatz", "n_nodes": 4, "attach": 2}, "graph.attach"),
    ({"kind": "sbm", "n_nodes": 8, "sbm_damping": 1.5}, "graph.sbm_damping"),
    ({"kind": "sbm", "n_nodes": 8, "sbm_blocks": []}, "graph.sbm_blocks"),
    ({"kind": "watts_strogatz", "n_nodes": 8, "lattice_dims": [0]}, "graph.lattice_dims"),
    ({"kind": "mixture", "n_nodes": 8}, "graph.mix"),
    ({"kind": "erdos_renyi", "n_nodes": 8, "mix": ["sbm"]}, "graph.mix"),
    ({"kind": "watts_strogatz", "n_nodes": 8, "rewire": -0.1}, "graph.rewire"),
])
def test_bad_graph_laws_are_named(graph, field):
    with pytest.raises(ValueError, match=field):
        config(graph)


def test_labels_are_permuted_uniformly():
    # complete DAG: the unique root is uniform over the 4 labels
    adj = sample_split_range(config({"kind": "fully_connected", "n_nodes": 4}, 800), "train", 0, 800)["adjacency"]
    roots = np.flatnonzero((adj.sum(axis=1) == 0).ravel()) % 4
    counts = np.bincount(roots, minlength=4)
    assert counts.sum() == 800
    # chi-square with 3 dof, 0.999 quantile = 16.27
    chi2 = ((counts - 200.0) ** 2 / 200.0).sum()
    assert chi2 < 16.27, counts


def test_relabel_helpers():
    perm = np.array([[2, 0, 1]])
    inv = inverse_permutation(perm)
    assert inv.tolist() == [[1, 2, 0]]
    a = np.zeros((1, 3, 3), dtype=np.uint8)
    a[0, 0, 1] = 1  # canonical 0 -> 1 becomes label 2 -> 0
    out = relabel_adjacency(a, inv)
    assert out[0, 2, 0] == 1 and out.sum() == 1
