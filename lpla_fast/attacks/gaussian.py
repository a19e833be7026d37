"""Multivariate Gaussians of per-sample statistics: fitting, log densities, log-ratios.

A covariance is (V, V) (shared by every sample) or (N, V, V) (one per sample); means are
(V,) or (N, V). A small ridge (min_std^2 on the diagonal) keeps every covariance
positive definite.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.covariance import ledoit_wolf


def covariance(residuals: np.ndarray, dof: float, min_std: float, diagonal: bool) -> np.ndarray:
    """(V, V) covariance from residuals (n, V) around their means, with `dof` degrees of
    freedom; only the variances when diagonal; min_std^2 added on the diagonal."""
    v = residuals.shape[-1]
    cov = residuals.T @ residuals / max(dof, 1.0)
    if diagonal:
        cov = np.diag(np.diag(cov))
    return cov + (min_std ** 2) * np.eye(v)


def fit(values: np.ndarray, min_std: float, diagonal: bool = False, shrink: bool = False):
    """(mean (V,), covariance (V, V)) of values (n, V), ddof=1; with shrink, the Ledoit-Wolf
    covariance instead (shrunk towards a multiple of the identity by the amount its formula
    estimates, large when n is small against V, vanishing as n grows; values should share a
    scale, as standardized coordinates do)."""
    values = np.asarray(values, np.float64)
    mean = values.mean(axis=0)
    if not shrink or values.shape[0] < 2:
        return mean, covariance(values - mean, values.shape[0] - 1, min_std, diagonal)
    cov, _ = ledoit_wolf(values)
    return mean, cov + (min_std ** 2) * np.eye(values.shape[1])


def fit_shared(groups, min_std: float):
    """([mean (V,) of each group], one covariance (V, V)) of groups of values (n_g, V): the
    Ledoit-Wolf covariance of every group's residuals around its own mean, pooled (so a
    log-ratio between groups is linear in x: a linear discriminant, which needs far fewer
    samples than one covariance per group)."""
    groups = [np.asarray(g, np.float64) for g in groups]
    means = [g.mean(axis=0) for g in groups]
    residuals = np.concatenate([g - m for g, m in zip(groups, means)])
    cov, _ = ledoit_wolf(residuals, assume_centered=True)
    return means, cov + (min_std ** 2) * np.eye(residuals.shape[1])


def logpdf(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """(N,) log N(x_i; mean(_i), cov(_i)) for x (N, V)."""
    d = np.asarray(x, np.float64) - mean
    chol = np.linalg.cholesky(cov)
    y = np.linalg.solve(chol, d[..., None])[..., 0]
    log_det = 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)
    return -0.5 * (y * y).sum(axis=-1) - 0.5 * log_det - 0.5 * d.shape[-1] * math.log(2 * math.pi)


def log_ratio(x: np.ndarray, mean_in, cov_in, mean_out, cov_out) -> np.ndarray:
    """(N,) log N(x; in) - log N(x; out)."""
    return logpdf(x, mean_in, cov_in) - logpdf(x, mean_out, cov_out)


def to_list(a: np.ndarray):
    return np.asarray(a, np.float64).tolist()


def from_list(a) -> np.ndarray:
    return np.asarray(a, np.float64)
