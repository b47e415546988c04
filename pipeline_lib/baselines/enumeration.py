"""All DAGs on d labelled nodes, and the graph bookkeeping exact inference needs.

Every DAG has a topological order, so every DAG is ``P^T U P`` for a strictly upper
triangular 0/1 matrix ``U`` and a permutation matrix ``P``. We build all
``d! * 2^(d(d-1)/2)`` such products (122,880 at d = 5), pack each adjacency into an integer
key (bit ``i*d + j`` is the edge ``i -> j``) and deduplicate the keys. The counts are the
number of labelled DAGs (OEIS A003024): 1, 1, 3, 25, 543, 29281 for d = 0..5.

Conventions: ``A[i, j] = 1`` iff ``i -> j`` (row = parent). The parent set of node ``v``
is encoded as the bitmask ``sum_{u in pa(v)} 2^u``.
"""
from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

MAX_ENUMERATION_NODES = 5


class EnumerationError(ValueError):
    """Raised when exact enumeration is asked for more nodes than it can handle."""


def _pack(adj: np.ndarray) -> np.ndarray:
    """(B, d, d) 0/1 -> (B,) int64 keys, bit i*d + j set iff i -> j."""
    d = adj.shape[-1]
    weights = (np.int64(1) << np.arange(d * d, dtype=np.int64)).reshape(d, d)
    return np.einsum("bij,ij->b", adj.astype(np.int64), weights)


def _unpack(keys: np.ndarray, d: int) -> np.ndarray:
    bits = (keys[:, None] >> np.arange(d * d, dtype=np.int64)[None, :]) & 1
    return bits.reshape(-1, d, d).astype(np.uint8)


@lru_cache(maxsize=None)
def _enumerate_dags_cached(d: int) -> np.ndarray:
    if d == 0:
        return np.zeros((1, 0, 0), np.uint8)
    iu = np.triu_indices(d, k=1)
    n_upper = len(iu[0])
    # all strictly upper-triangular patterns: (2^n_upper, d, d)
    patterns = (np.arange(2**n_upper)[:, None] >> np.arange(n_upper)[None, :]) & 1
    upper = np.zeros((2**n_upper, d, d), np.uint8)
    upper[:, iu[0], iu[1]] = patterns
    keys = []
    for perm in itertools.permutations(range(d)):
        p = np.asarray(perm)
        # relabel node k as perm[k]: A'[perm[a], perm[b]] = U[a, b]
        relabelled = np.empty_like(upper)
        relabelled[:, p[:, None], p[None, :]] = upper
        keys.append(_pack(relabelled))
    unique = np.unique(np.concatenate(keys))
    dags = _unpack(unique, d)
    dags.setflags(write=False)
    return dags


def enumerate_dags(d: int) -> np.ndarray:
    """All DAGs on d labelled nodes, (n_dags, d, d) uint8, sorted by packed key.

    The empty graph comes first. Cached per d; the returned array is read-only.
    Raises :class:`EnumerationError` for ``d > 5`` (d = 6 already has 3,781,503 DAGs).
    """
    d = int(d)
    if d < 0:
        raise EnumerationError(f"d={d}: the number of nodes must be non-negative")
    if d > MAX_ENUMERATION_NODES:
        raise EnumerationError(
            f"d={d}: exact DAG enumeration supports at most {MAX_ENUMERATION_NODES} nodes"
        )
    return _enumerate_dags_cached(d)


def parent_bitmasks(dags: np.ndarray) -> np.ndarray:
    """(B, d, d) adjacency -> (B, d) int64 parent bitmasks, ``sum_u A[u, v] 2^u``."""
    dags = np.asarray(dags)
    if dags.ndim != 3 or dags.shape[1] != dags.shape[2]:
        raise ValueError(f"dags must have shape (B, d, d), got {dags.shape}")
    d = dags.shape[-1]
    if d > 62:
        raise ValueError(f"dags: parent bitmasks need d <= 62 nodes, got d={d}")
    pow2 = np.int64(1) << np.arange(d, dtype=np.int64)
    return np.einsum("buv,u->bv", (dags != 0).astype(np.int64), pow2)


def reachability(adj: np.ndarray) -> np.ndarray:
    """Transitive closure, (B, d, d) bool: ``reach[b, u, v]`` iff a directed path u ~> v
    of length >= 1 exists. Warshall's algorithm, vectorised over the batch: after step k
    ``reach`` holds the paths whose intermediate nodes are all < k + 1."""
    reach = np.asarray(adj) != 0
    for k in range(reach.shape[-1]):
        reach = reach | (reach[:, :, k, None] & reach[:, None, k, :])
    return reach


def v_structures(adj: np.ndarray) -> np.ndarray:
    """(B, d, d) -> (B, d, d, d) bool: ``V[b, u, w, v]`` iff u -> v <- w with u, w
    non-adjacent and u < w (each unshielded collider counted once)."""
    a = np.asarray(adj) != 0
    skel = a | np.swapaxes(a, 1, 2)
    d = a.shape[-1]
    coll = a[:, :, None, :] & a[:, None, :, :]  # u -> v and w -> v
    upper = np.triu(np.ones((d, d), bool), k=1)[None, :, :, None]
    return coll & ~skel[:, :, :, None] & upper


def markov_equivalent(dags: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(B,) bool: which DAGs share the skeleton and the v-structures of ``ref`` (d, d).

    By Verma & Pearl (1990) this is exactly Markov equivalence of DAGs.
    """
    dags = np.asarray(dags) != 0
    ref = (np.asarray(ref) != 0)[None]
    if ref.shape[1:] != dags.shape[1:]:
        raise ValueError(f"ref has shape {ref.shape[1:]}, expected {dags.shape[1:]}")
    skel = dags | np.swapaxes(dags, 1, 2)
    ref_skel = ref | np.swapaxes(ref, 1, 2)
    same_skel = (skel == ref_skel).all(axis=(1, 2))
    same_v = (v_structures(dags) == v_structures(ref)).all(axis=(1, 2, 3))
    return same_skel & same_v
