"""Random DAG priors, drawn in canonical topological order, plus label permutation.

Every sampler returns a *canonical* adjacency ``A: (d_max, d_max) uint8`` of one task:
``A[i, j] = 1`` iff edge i -> j (row = parent), strictly upper triangular (parents have
smaller canonical index), nodes ``n .. d_max-1`` are padding with no edges. The sampler
then relabels the real nodes by a uniform random permutation (``relabel``) so that the
column order carries no information about the causal order.

Definitions (``n`` real nodes):

- Erdos-Renyi: ``P(i -> j) = p = 2 e / (n - 1)`` independently for i < j, so
  ``E[#edges] = p n (n-1) / 2 = e n`` and the mean number of parents is ``e``.
- Scale-free (Barabasi-Albert): node ``k = 1..n-1`` draws ``min(m, k)`` distinct earlier
  nodes with probability proportional to ``deg + 1`` (the +1 lets isolated nodes be
  chosen), sequentially without replacement (Gumbel top-k). Edges are oriented
  earlier -> later (``out``: hubs are early nodes with many children) or, for ``in``, the
  canonical order is reversed so hubs receive many parents.
- Watts-Strogatz (small world; Watts & Strogatz 1998): a periodic lattice (torus) of
  dimension ``dim`` (drawn per task from ``lattice_dims``) and side ``ceil(n ** (1/dim))``
  (``n`` itself for the ring, dim 1), every site joined to the sites within lattice
  distance ``attach``; each lattice edge keeps its first end and, with probability
  ``rewire``, moves its second end to a uniform site that is neither that end nor already
  joined to it; then sites are dropped uniformly at random, with their edges, down to ``n``;
  oriented by a uniformly random order. The ring (dim 1) has ``attach * n`` edges, mean
  ``attach`` parents; the 2- and 3-dimensional lattices with ``attach`` 1 lose edges with
  the dropped sites (about 1.2 and 1.0 parents per node at n = 10, 1.6 and 2.2 at n = 20).
- Stochastic block model: a random order of the nodes cut at ``B - 1`` random places (``B``
  drawn per task from ``blocks``) gives ``B`` non-empty groups; a pair is an edge with
  probability ``p_in`` inside a group and ``damping * p_in`` across groups, ``p_in`` set so
  that the expected number of edges is ``expected_parents * n``, capped at 1 (with many
  small groups the cap binds and the graph is sparser); oriented by a uniformly random order.
- Fully connected: all i < j.
- Mixture: each task draws one of the ``mix`` laws uniformly, then samples it.

The Watts-Strogatz and block-model laws are the out-of-distribution graph laws of the
Cond-FiP paper (Mahajan et al. 2024, appendix B.1; after AVICI, Lorch et al. 2022, whose
settings the authors' generator uses: lattice dimension 2 or 3, distance 1, rewiring 0.3;
5 or 10 groups, damping 0.1); their edges per node are drawn from {1, 2, 3} per task,
``expected_parents`` is one number here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def erdos_renyi(n: int, d_max: int, expected_parents: float, rng: np.random.Generator) -> np.ndarray:
    """Canonical ER DAG with mean ``expected_parents`` parents per node; ``(d_max, d_max)``."""
    p = min(1.0, 2.0 * expected_parents / (n - 1))
    adj = np.zeros((d_max, d_max), dtype=np.uint8)
    upper = np.triu(rng.random((n, n)) < p, k=1)
    adj[:n, :n] = upper
    return adj


def scale_free(
    n: int, d_max: int, attach: int, direction: str, rng: np.random.Generator
) -> np.ndarray:
    """Canonical Barabasi-Albert DAG; ``direction`` 'out' (child-rich hubs) or 'in'."""
    adj = np.zeros((d_max, d_max), dtype=np.uint8)
    degree = np.zeros(n, dtype=np.float64)
    # one uniform per (new node, candidate): Gumbel keys log(w) + G give sequential
    # weighted sampling without replacement by taking the top-m keys
    gumbel = -np.log(-np.log(rng.random((n, n))))
    for k in range(1, n):
        m = min(attach, k)
        keys = np.log(degree[:k] + 1.0) + gumbel[k, :k]
        chosen = np.argpartition(-keys, m - 1)[:m] if m < k else np.arange(k)
        adj[chosen, k] = 1
        degree[chosen] += 1.0
        degree[k] += m
    if direction == "in":
        # orient new -> old: reverse the edges, then reverse the order to stay upper triangular
        sub = adj[:n, :n].T[::-1, ::-1]
        adj[:n, :n] = sub
    return adj


def _orient_random(und: np.ndarray, d_max: int, rng: np.random.Generator) -> np.ndarray:
    """Canonical DAG of an undirected graph ``und: (n, n)`` bool: node u gets canonical index
    ``rank[u]`` of a uniform random order, every edge points from the lower rank to the higher."""
    n = und.shape[0]
    rank = rng.permutation(n)
    adj = np.zeros((d_max, d_max), dtype=np.uint8)
    u, v = np.nonzero(np.triu(und, k=1))
    lo, hi = np.minimum(rank[u], rank[v]), np.maximum(rank[u], rank[v])
    adj[lo, hi] = 1
    return adj


def _torus_distance(side: int, dim: int) -> np.ndarray:
    """Lattice (Manhattan, wrap-around) distance between the ``side ** dim`` sites of a torus."""
    coords = np.stack(np.unravel_index(np.arange(side**dim), (side,) * dim), axis=1)  # (N, dim)
    gap = np.abs(coords[:, None, :] - coords[None, :, :])
    return np.minimum(gap, side - gap).sum(axis=-1)


def watts_strogatz(n: int, d_max: int, attach: int, rewire: float, dims: Sequence[int],
                   rng: np.random.Generator) -> np.ndarray:
    """Canonical small-world DAG (module docstring): a torus lattice of dimension drawn from ``dims``
    and side ``ceil(n ** (1 / dim))``, sites joined within lattice distance ``attach``, far ends
    rewired with probability ``rewire``, then sites dropped at random down to ``n``."""
    dim = int(dims[int(rng.integers(len(dims)))])
    side = n if dim == 1 else int(np.ceil(n ** (1.0 / dim) - 1e-9))
    dist = _torus_distance(side, dim)
    und = (dist > 0) & (dist <= attach)
    big = und.shape[0]
    lo, hi = np.nonzero(np.triu(und, k=1))  # the lattice edges, rewired one at a time
    coins = rng.random(lo.size)
    picks = rng.random(lo.size)  # a uniform choice among the allowed new ends, by rank
    for e in np.flatnonzero(coins < rewire):
        i, j = lo[e], hi[e]
        free = np.flatnonzero(~und[i])
        free = free[free != i]
        if free.size == 0 or not und[i, j]:
            continue
        k = free[int(picks[e] * free.size)]
        und[i, j] = und[j, i] = False
        und[i, k] = und[k, i] = True
    keep = np.sort(rng.choice(big, size=n, replace=False)) if big > n else np.arange(n)
    return _orient_random(und[np.ix_(keep, keep)], d_max, rng)


def block_model(n: int, d_max: int, expected_parents: float, blocks: Sequence[int], damping: float,
                rng: np.random.Generator) -> np.ndarray:
    """Canonical stochastic-block-model DAG (module docstring); the number of groups is drawn from
    ``blocks`` (at most ``n``), the groups are the runs of a random order cut at random places."""
    n_blocks = min(int(blocks[int(rng.integers(len(blocks)))]), n)
    cuts = np.sort(rng.choice(np.arange(1, n), size=n_blocks - 1, replace=False)) if n_blocks > 1 else []
    group = np.empty(n, dtype=np.int64)
    for g, members in enumerate(np.split(rng.permutation(n), cuts)):
        group[members] = g
    same = group[:, None] == group[None, :]
    pairs = np.triu(np.ones((n, n), dtype=bool), k=1)
    n_in, n_out = int((same & pairs).sum()), int((~same & pairs).sum())
    p_in = min(1.0, expected_parents * n / max(n_in + damping * n_out, 1e-12))
    prob = np.where(same, p_in, damping * p_in)
    und = pairs & (rng.random((n, n)) < prob)
    return _orient_random(und | und.T, d_max, rng)


def fully_connected(n: int, d_max: int) -> np.ndarray:
    """The complete canonical DAG on ``n`` nodes, padded to ``d_max``."""
    adj = np.zeros((d_max, d_max), dtype=np.uint8)
    adj[:n, :n] = np.triu(np.ones((n, n), dtype=np.uint8), k=1)
    return adj


def sample_canonical_graph(graph_cfg, n: int, rng: np.random.Generator) -> np.ndarray:
    """Dispatch on ``graph_cfg.kind`` (a ``GraphConfig``); returns ``(d_max, d_max)`` uint8."""
    d_max = graph_cfg.d_max
    kind = graph_cfg.kind
    if kind == "mixture":
        kind = graph_cfg.mix[int(rng.integers(len(graph_cfg.mix)))]
    if kind == "watts_strogatz":
        return watts_strogatz(n, d_max, graph_cfg.attach, graph_cfg.rewire, graph_cfg.lattice_dims, rng)
    if kind == "sbm":
        return block_model(n, d_max, graph_cfg.expected_parents, graph_cfg.sbm_blocks, graph_cfg.sbm_damping, rng)
    if kind == "erdos_renyi":
        return erdos_renyi(n, d_max, graph_cfg.expected_parents, rng)
    if kind == "scale_free":
        direction = graph_cfg.direction
        if direction == "both":
            direction = ("in", "out")[int(rng.integers(2))]
        return scale_free(n, d_max, graph_cfg.attach, direction, rng)
    if kind == "fully_connected":
        return fully_connected(n, d_max)
    raise ValueError(f"graph.kind={kind!r}: unknown graph kind")


def random_labels(n: int, d_max: int, rng: np.random.Generator) -> np.ndarray:
    """``perm: (d_max,)``: canonical node k gets label ``perm[k]``; padding keeps its index."""
    perm = np.arange(d_max)
    perm[:n] = rng.permutation(n)
    return perm


def inverse_permutation(perm: np.ndarray) -> np.ndarray:
    """Row-wise inverse of ``perm: (..., d)``: ``inv[..., perm[..., k]] = k``."""
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.broadcast_to(np.arange(perm.shape[-1]), perm.shape), axis=-1)
    return inv


def relabel_adjacency(adj: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """``A_out[t, a, b] = A[t, inv[t, a], inv[t, b]]`` for ``adj: (T, d, d)``, ``inv: (T, d)``."""
    t = np.arange(adj.shape[0])[:, None, None]
    return adj[t, inv[:, :, None], inv[:, None, :]]
