"""The query roles of the MACE-TNP adjustment check (benchmarks/mace_adjustment.py)."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from mace_adjustment import query_roles  # noqa: E402


def test_query_roles_of_a_complete_dag_under_any_labelling():
    """Order a < b < c: do(b) -> c has the confounder a, do(a) -> c the mediator b, do(a) -> b the
    common child c, and the three upstream queries no effect, whatever the labels."""
    canonical = np.triu(np.ones((3, 3), dtype=np.uint8), k=1)  # 0 -> 1 -> 2, 0 -> 2
    expect = {(1, 2): "confounder", (0, 2): "mediator", (0, 1): "child of both",
              (1, 0): "no effect", (2, 0): "no effect", (2, 1): "no effect"}
    for perm in ([0, 1, 2], [2, 0, 1], [1, 2, 0], [2, 1, 0]):
        p = np.array(perm)  # canonical node u gets label p[u]
        adj = np.zeros_like(canonical)
        adj[np.ix_(p, p)] = canonical
        js, is_ = zip(*[(p[j], p[i]) for j, i in expect])
        assert query_roles(adj, np.array(js), np.array(is_)) == list(expect.values())


def test_query_roles_of_sparser_graphs():
    """A chain 0 -> 1 -> 2 without the shortcut: do(0) -> 2 is still mediated; a fork 1 <- 0 -> 2
    confounds nothing between 1 and 2 (no effect either way)."""
    chain = np.zeros((3, 3), dtype=np.uint8)
    chain[0, 1] = chain[1, 2] = 1
    assert query_roles(chain, np.array([0, 1, 0]), np.array([2, 2, 1])) == ["mediator", "other", "other"]
    fork = np.zeros((3, 3), dtype=np.uint8)
    fork[0, 1] = fork[0, 2] = 1
    assert query_roles(fork, np.array([1, 2]), np.array([2, 1])) == ["no effect", "no effect"]
