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
