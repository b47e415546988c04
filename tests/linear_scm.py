"""A known linear-Gaussian SCM as a posterior (a point mass on the truth), for tests."""
import numpy as np
import torch

from pipeline_lib.baselines.base import AncestralGaussianPosterior


class LinearMixture(AncestralGaussianPosterior):
    """Components p: x_v = sum_u W[p, u, v] x_u + sigma[p, v] eps_v."""

    def __init__(self, W, sigma, log_weights, n_mc=256):
        super().__init__((np.asarray(W) != 0).astype(np.uint8), log_weights, n_mc=n_mc)
        self.W = torch.as_tensor(np.asarray(W, dtype=np.float64))
        self.noise_std = np.asarray(sigma, dtype=np.float64)

    def conditional_mean(self, x):
        return torch.einsum("psu,puv->psv", x, self.W)


def chain_task(n_obs=300, n_int=400, seed=0, w=(2.0, -1.0)):
    """One task dict (no T axis) of the chain 0 -> 1 -> 2, a hard regime per node, plus its weights."""
    rng = np.random.default_rng(seed)
    W = np.zeros((3, 3))
    W[0, 1], W[1, 2] = w
    inv = np.linalg.inv(np.eye(3) - W)

    def draw(n, j=None, a=None):
        e = rng.standard_normal((n, 3))
        if j is None:
            return e @ inv
        x = np.zeros((n, 3))
        for v in range(3):
            x[:, v] = a if v == j else x @ W[:, v] + e[:, v]
        return x

    values = np.array([1.5, -1.0, 0.5])
    targets = np.eye(3, dtype=bool)
    int_values = np.where(targets, values[:, None], np.nan)
    return {
        "adjacency": (W != 0).astype(np.uint8),
        "node_mask": np.ones(3, bool),
        "x_obs": draw(n_obs).astype(np.float32),
        "int_targets": targets,
        "int_values": int_values.astype(np.float32),
        "x_int": np.stack([draw(n_int, k, values[k]) for k in range(3)]).astype(np.float32),
    }, W


def two_node_linear_tasks(rng, n_tasks=16, n=64, n_int=32, noise=0.3):
    """Batched two-node tasks X0 -> X1 (random weight), one hard intervention on X0 per task."""
    w = rng.normal(size=n_tasks).astype(np.float32)
    x0 = rng.normal(size=(n_tasks, n)).astype(np.float32)
    x1 = w[:, None] * x0 + noise * rng.normal(size=(n_tasks, n)).astype(np.float32)
    a = rng.normal(size=n_tasks).astype(np.float32)
    x_int = np.zeros((n_tasks, 1, n_int, 2), np.float32)
    x_int[:, 0, :, 0] = a[:, None]
    x_int[:, 0, :, 1] = w[:, None] * a[:, None] + noise * rng.normal(size=(n_tasks, n_int))
    targets = np.zeros((n_tasks, 1, 2), bool)
    targets[:, 0, 0] = True
    values = np.full((n_tasks, 1, 2), np.nan, np.float32)
    values[:, 0, 0] = a
    return {"x_obs": np.stack([x0, x1], -1), "node_mask": np.ones((n_tasks, 2), bool),
            "int_targets": targets, "int_values": values, "x_int": x_int}
