"""The configurations, input matrices and EVBMF reference of ``bench/bench_decompositions.py``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

CP_GOAL_SECONDS = 2.0
EVBMF_GOAL_SECONDS = 1.0


@dataclass(frozen=True)
class Config:
    channels: int  # the CP / Tucker-2 kernel is (channels, channels, 3, 3)
    cp_rank: int
    tucker_ranks: tuple[int, int]
    evbmf_shape: tuple[int, int]
    evbmf_planted_rank: int
    evbmf_signal_scale: float
    vgg_widths: tuple[int, ...]  # output channels of the 13 conv layers
    tl_timeout: float
    repeats: int


def full_config(tl_timeout: float | None, repeats: int | None) -> Config:
    return Config(
        channels=512,
        cp_rank=128,
        tucker_ranks=(128, 128),
        evbmf_shape=(512, 4608),
        evbmf_planted_rank=40,
        evbmf_signal_scale=0.2,
        vgg_widths=(64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512),
        tl_timeout=600.0 if tl_timeout is None else tl_timeout,
        repeats=3 if repeats is None else repeats,
    )


def quick_config(tl_timeout: float | None, repeats: int | None) -> Config:
    return Config(
        channels=128,
        cp_rank=32,
        tucker_ranks=(32, 32),
        evbmf_shape=(128, 1152),
        evbmf_planted_rank=10,
        evbmf_signal_scale=0.3,
        vgg_widths=(16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128),
        tl_timeout=60.0 if tl_timeout is None else tl_timeout,
        repeats=2 if repeats is None else repeats,
    )


# --------------------------------------------------------------------------------------------
# Inputs


def trained_like_kernel(n_out: int, n_in: int, *, size: int = 3, seed: int = 0) -> np.ndarray:
    """A deterministic float64 kernel whose spectra look like a trained layer's.

    A multilinear-rank (3/16·out, 3/16·in, size, size) part with decaying channel spectra carries
    about 92% of the energy; i.i.d. Gaussian noise the rest (noise norm = 0.3 × signal norm).
    The whole is scaled to He-init standard deviation.
    """
    rng = np.random.default_rng(seed)
    r_out, r_in = max(1, 3 * n_out // 16), max(1, 3 * n_in // 16)
    u_out, _ = np.linalg.qr(rng.standard_normal((n_out, r_out)))
    u_in, _ = np.linalg.qr(rng.standard_normal((n_in, r_in)))
    decay_out = 1.0 / (1.0 + np.arange(r_out) / 8.0)
    decay_in = 1.0 / (1.0 + np.arange(r_in) / 8.0)
    core = rng.standard_normal((r_out, r_in, size, size))
    core *= decay_out[:, None, None, None] * decay_in[None, :, None, None]
    signal = np.einsum("abhw,oa,ib->oihw", core, u_out, u_in, optimize=True)
    noise = rng.standard_normal(signal.shape)
    noise *= 0.3 * np.linalg.norm(signal) / np.linalg.norm(noise)
    kernel = signal + noise
    kernel *= math.sqrt(2.0 / (n_in * size * size)) / kernel.std()
    return np.ascontiguousarray(kernel)


def planted_rank_matrix(
    shape: tuple[int, int], rank: int, scale: float, seed: int = 0
) -> np.ndarray:
    """``scale · randn(m, rank) @ randn(rank, n) + randn(m, n)`` in float64."""
    rng = np.random.default_rng(seed)
    m, n = shape
    low = scale * rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))
    return low + rng.standard_normal((m, n))


def relative_error(x: np.ndarray, approx: np.ndarray) -> float:
    return float(np.linalg.norm(x - approx) / np.linalg.norm(x))


# --------------------------------------------------------------------------------------------
# numpy reference EVBMF (the widely copied public VBMF.py port of Nakajima et al.'s MATLAB code)


def _evb_tau(x: np.ndarray, alpha: float) -> np.ndarray:
    return 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))


def _evb_sigma2(
    sigma2: float, n_l: int, n_m: int, s: np.ndarray, residual: float, xubar: float
) -> float:
    h = len(s)
    alpha = n_l / n_m
    x = s**2 / (n_m * sigma2)
    z1 = x[x > xubar]
    z2 = x[x <= xubar]
    tau_z1 = _evb_tau(z1, alpha)
    term1 = np.sum(z2 - np.log(z2))
    term2 = np.sum(z1 - tau_z1)
    term3 = np.sum(np.log(np.divide(tau_z1 + 1, z1)))
    term4 = alpha * np.sum(np.log(tau_z1 / alpha + 1))
    obj = term1 + term2 + term3 + term4 + residual / (n_m * sigma2) + (n_l - h) * np.log(sigma2)
    return float(obj)


def evbmf_reference(y: np.ndarray) -> tuple[int, float]:
    """EVBMF rank and noise variance, the public numpy way: full SVD + ``minimize_scalar``.

    Returns ``(rank, sigma2)``. The SVD is the thin one (``full_matrices=False``); the public code
    calls ``np.linalg.svd(Y)`` with its default ``full_matrices=True``, which is slower still.
    """
    if y.shape[0] > y.shape[1]:
        y = y.T
    n_l, n_m = y.shape
    h = n_l
    alpha = n_l / n_m
    tauubar = 2.5129 * np.sqrt(alpha)
    u, s, vt = np.linalg.svd(y, full_matrices=False)
    u, s, v = u[:, :h], s[:h], vt[:h].T
    residual = 0.0
    if h < n_l:
        residual = float(np.sum(y**2) - np.sum(s**2))
    xubar = (1 + tauubar) * (1 + alpha / tauubar)
    eh_ub = int(min(np.ceil(n_l / (1 + alpha)) - 1, h)) - 1
    upper_bound = (np.sum(s**2) + residual) / (n_l * n_m)
    lower_bound = max(s[eh_ub + 1] ** 2 / (n_m * xubar), np.mean(s[eh_ub + 1 :] ** 2) / n_m)
    opt = minimize_scalar(
        _evb_sigma2,
        args=(n_l, n_m, s, residual, xubar),
        bounds=[lower_bound, upper_bound],
        method="Bounded",
    )
    sigma2 = float(opt.x)
    threshold = np.sqrt(n_m * sigma2 * (1 + tauubar) * (1 + alpha / tauubar))
    pos = int(np.sum(s > threshold))
    # Posterior singular values (formula 15 of Nakajima et al.), computed as the public code does.
    sp = s[:pos]
    ratio = (n_l + n_m) * sigma2 / sp**2
    _ = (sp / 2) * (1 - ratio + np.sqrt((1 - ratio) ** 2 - 4 * n_l * n_m * sigma2**2 / sp**4))
    _ = (u[:, :pos], v[:, :pos])
    return pos, sigma2
