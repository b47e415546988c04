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
- Watts-Strogatz (small world): a ring lattice where every node is joined to its ``attach``
  nearest neighbours on each side (``attach * n`` edges, mean ``attach`` parents), then
  each lattice edge keeps its first end and, with probability ``rewire``, moves its second
  end to a uniform node that is neither that end nor already joined to it (Watts &
  Strogatz 1998); oriented by a uniformly random order of the nodes.
- Stochastic block model: nodes fall into ``blocks`` groups of near-equal size (a random
  assignment); a pair is an edge with probability ``p_in`` inside a group and
  ``damping * p_in`` across groups, ``p_in`` set so that the expected number of edges is
  ``expected_parents * n`` (capped at 1, which then gives fewer); oriented by a uniformly
  random order.
- Fully connected: all i < j.
- Mixture: each task draws one of the ``mix`` laws uniformly, then samples it.

The Watts-Strogatz and block-model laws are the out-of-distribution graph laws of the
Cond-FiP paper (Mahajan et al. 2024, appendix B.1, after AVICI, Lorch et al. 2022); their
lattice is one-dimensional here (AVICI's is 2- or 3-dimensional: mean degree 4-6, i.e.
``attach`` 2-3), a named simplification.
"""

from __future__ import annotations

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


def watts_strogatz(n: int, d_max: int, attach: int, rewire: float, rng: np.random.Generator) -> np.ndarray:
    """Canonical small-world DAG (module docstring); ``attach`` neighbours per side, ``n > 2 attach``."""
    und = np.zeros((n, n), dtype=bool)
    for s in range(1, attach + 1):
        i = np.arange(n)
        und[i, (i + s) % n] = und[(i + s) % n, i] = True
    coins = rng.random((attach, n))
    targets = rng.random((attach, n))  # a uniform choice among the allowed ends, by rank
    for s in range(1, attach + 1):  # lattice edges (i, i + s), rewired one at a time
        for i in range(n):
            j = (i + s) % n
            if coins[s - 1, i] >= rewire or not und[i, j]:
                continue
            free = np.flatnonzero(~und[i])
            free = free[free != i]
            if free.size == 0:
                continue
            k = free[int(targets[s - 1, i] * free.size)]
            und[i, j] = und[j, i] = False
            und[i, k] = und[k, i] = True
    return _orient_random(und, d_max, rng)


def block_model(n: int, d_max: int, expected_parents: float, blocks: int, damping: float,
                rng: np.random.Generator) -> np.ndarray:
    """Canonical stochastic-block-model DAG (module docstring)."""
    group = rng.permutation(n) % blocks
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
        return watts_strogatz(n, d_max, graph_cfg.attach, graph_cfg.rewire, rng)
    if kind == "sbm":
        return block_model(n, d_max, graph_cfg.expected_parents, graph_cfg.sbm_blocks, graph_cfg.sbm_damping, rng)
    if kind == "erdos_renyi":
        return erdos_renyi(n, d_max, graph_cfg.expected_parents, rng)
    if kind == "scale_free":
        return scale_free(n, d_max, graph_cfg.attach, graph_cfg.direction, rng)
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
