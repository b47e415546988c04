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
- Fully connected: all i < j.
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


def fully_connected(n: int, d_max: int) -> np.ndarray:
    """The complete canonical DAG on ``n`` nodes, padded to ``d_max``."""
    adj = np.zeros((d_max, d_max), dtype=np.uint8)
    adj[:n, :n] = np.triu(np.ones((n, n), dtype=np.uint8), k=1)
    return adj


def sample_canonical_graph(graph_cfg, n: int, rng: np.random.Generator) -> np.ndarray:
    """Dispatch on ``graph_cfg.kind`` (a ``GraphConfig``); returns ``(d_max, d_max)`` uint8."""
    d_max = graph_cfg.d_max
    if graph_cfg.kind == "erdos_renyi":
        return erdos_renyi(n, d_max, graph_cfg.expected_parents, rng)
    if graph_cfg.kind == "scale_free":
        return scale_free(n, d_max, graph_cfg.attach, graph_cfg.direction, rng)
    if graph_cfg.kind == "fully_connected":
        return fully_connected(n, d_max)
    raise ValueError(f"graph.kind={graph_cfg.kind!r}: unknown graph kind")


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
