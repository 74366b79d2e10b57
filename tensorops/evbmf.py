"""Rank estimation by empirical variational Bayesian matrix factorisation (EVBMF).

Implements the global analytic solution of Nakajima, Sugiyama, Babacan and Tomioka, "Global
analytic solution of fully-observed variational Bayesian matrix factorization" (JMLR 14, 2013),
with the noise variance estimated by minimising the free energy over its analytically bounded
range (their Theorem 15 and the "EVB with noise estimation" procedure). Only the singular values
are needed: for an (L, M) matrix with L <= M they come from the L x L Gram matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tensorops.decompositions import unfold
from tensorops.exceptions import RankError

#: Ranks estimated as 0 (an untrained or all-noise kernel) are raised to at least this by callers.
DEFAULT_RANK_FLOOR = 1


@dataclass(frozen=True)
class EVBMFResult:
    """EVBMF's estimate for one matrix.

    ``rank`` is the number of components whose EVB posterior mean is non-zero,
    ``singular_values`` the observed singular values of those components (largest first),
    ``shrunk_values`` their EVB estimates, and ``noise_variance`` the estimated noise variance.
    """

    rank: int
    singular_values: torch.Tensor
    shrunk_values: torch.Tensor
    noise_variance: float
    threshold: float


def _singular_values(matrix: torch.Tensor) -> np.ndarray:
    """All singular values of ``matrix`` in float64, largest first, via the smaller Gram matrix."""
    m64 = matrix.detach().to(torch.float64)
    if m64.shape[0] > m64.shape[1]:
        m64 = m64.T
    gram = m64 @ m64.T
    eigenvalues = torch.linalg.eigvalsh(gram).clamp_min(0.0)
    values = eigenvalues.flip(0).sqrt().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    """The positive root of the EVB stationarity condition (eq. 34 of the paper)."""
    return 0.5 * (
        x - (1.0 + alpha) + np.sqrt(np.maximum((x - (1.0 + alpha)) ** 2 - 4.0 * alpha, 0.0))
    )


def _free_energy(sigma2: float, n_rows: int, n_cols: int, s: np.ndarray, x_bar: float) -> float:
    """Free energy (up to constants) as a function of the noise variance ``sigma2``."""
    alpha = n_rows / n_cols
    x = s**2 / (n_cols * sigma2)
    above = x[x > x_bar]
    below = x[x <= x_bar]
    tau_above = _tau(above, alpha)
    # Every value contributes -log(x) = log(M·σ²) - log(s²); the -log(s²) part does not depend
    # on σ² and is dropped, so exact zeros (dead channels) cannot make the energy infinite.
    energy = float(np.sum(below)) + below.size * math.log(n_cols * sigma2)
    energy += float(np.sum(above - tau_above))
    energy += float(np.sum(np.log(tau_above + 1.0))) + above.size * math.log(n_cols * sigma2)
    energy += alpha * float(np.sum(np.log(tau_above / alpha + 1.0)))
    return energy


def evbmf(matrix: torch.Tensor | np.ndarray, *, noise_variance: float | None = None) -> EVBMFResult:
    """Estimate the rank of ``matrix`` (tall or wide) with EVBMF.

    With ``noise_variance=None`` the noise variance is estimated too (the usual case for weight
    matrices). A matrix that is all noise, or all zeros, has rank 0.
    """
    tensor = torch.as_tensor(matrix)
    if tensor.ndim != 2:
        raise ValueError(f"evbmf expects a 2-D matrix, got shape {tuple(tensor.shape)}")
    if min(tensor.shape) < 1:
        raise ValueError(f"evbmf needs a non-empty matrix, got shape {tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError("evbmf got a matrix with NaN or infinite entries")
    n_rows, n_cols = sorted((int(tensor.shape[0]), int(tensor.shape[1])))  # L <= M
    s = _singular_values(tensor)
    alpha = n_rows / n_cols
    tau_bar = 2.5129 * math.sqrt(alpha)  # the root of the threshold equation, to 4 digits
    x_bar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar)
    total = float(np.sum(s**2))
    empty = torch.zeros(0, dtype=torch.float64)
    if total == 0.0:
        return EVBMFResult(0, empty, empty, 0.0, 0.0)
    if noise_variance is None:
        sigma2 = _estimate_noise(s, n_rows, n_cols, x_bar, total)
    else:
        if noise_variance <= 0:
            raise ValueError(f"noise_variance must be positive, got {noise_variance}")
        sigma2 = float(noise_variance)
    threshold = math.sqrt(n_cols * sigma2 * x_bar)
    kept = s[s > threshold]
    rank = int(kept.size)
    shrunk = _shrink(kept, n_rows, n_cols, sigma2)
    return EVBMFResult(
        rank=rank,
        singular_values=torch.from_numpy(kept.copy()),
        shrunk_values=torch.from_numpy(shrunk),
        noise_variance=sigma2,
        threshold=threshold,
    )


def _estimate_noise(s: np.ndarray, n_rows: int, n_cols: int, x_bar: float, total: float) -> float:
    """Minimise the free energy over the noise variance within its analytic bounds."""
    alpha = n_rows / n_cols
    upper = total / (n_rows * n_cols)
    # At most this many components can be kept (Nakajima et al. 2013, Theorem 13).
    h_max = min(math.ceil(n_rows / (1.0 + alpha)) - 1, s.size) - 1
    h_max = max(h_max, 0)
    tail = s[h_max + 1 :] if h_max + 1 < s.size else s[-1:]
    lower = max(
        float(s[min(h_max + 1, s.size - 1)] ** 2) / (n_cols * x_bar),
        float(np.mean(tail**2)) / n_cols,
    )
    if not lower < upper:
        return upper
    from scipy.optimize import minimize_scalar  # on first use: 1-2 s off every worker's start

    result = minimize_scalar(
        _free_energy,
        args=(n_rows, n_cols, s, x_bar),
        bounds=(lower, upper),
        method="bounded",
        options={"xatol": upper * 1e-10},
    )
    return float(result.x)


def _shrink(kept: np.ndarray, n_rows: int, n_cols: int, sigma2: float) -> np.ndarray:
    """EVB posterior estimates of the kept singular values (eq. 37 of the paper)."""
    if kept.size == 0:
        return np.zeros(0)
    gap = kept - (n_rows + n_cols) * sigma2 / kept
    return 0.5 * (gap + np.sqrt(np.maximum(gap**2 - 4.0 * n_rows * n_cols * sigma2**2, 0.0)))


def tucker2_ranks(kernel: torch.Tensor) -> tuple[int, int]:
    """EVBMF ranks ``(r_out, r_in)`` of the mode-0 and mode-1 unfoldings of a 4-D kernel."""
    if kernel.ndim != 4:
        raise ValueError(
            f"expected a 4-D kernel (out, in, kh, kw), got shape {tuple(kernel.shape)}"
        )
    return evbmf(unfold(kernel, 0)).rank, evbmf(unfold(kernel, 1)).rank


def cp_rank_from_tucker2(shape: tuple[int, ...], ranks: tuple[int, int]) -> int:
    """The CP rank whose parameter count matches Tucker-2 at ``ranks`` (at least 0).

    Tucker-2 costs ``in·r_in + r_in·r_out·kh·kw + r_out·out`` parameters; CP of rank R costs
    ``R·(out + in + kh + kw)``. Matching the two gives a CP plan of the same size as the EVBMF
    Tucker-2 plan, which is how the EVBMF estimate seeds the CP rank.
    """
    out_ch, in_ch, kh, kw = shape
    r_out, r_in = ranks
    tucker_params = in_ch * r_in + r_in * r_out * kh * kw + r_out * out_ch
    return round(tucker_params / (out_ch + in_ch + kh + kw))


def clamp_rank(rank: int, maximum: int, *, floor: int = DEFAULT_RANK_FLOOR) -> int:
    """Clamp an estimated rank into ``[min(floor, maximum), maximum]``."""
    if maximum < 1:
        raise RankError(f"maximum rank must be >= 1, got {maximum}")
    if floor < 1:
        raise RankError(f"rank floor must be >= 1, got {floor}")
    return max(min(floor, maximum), min(rank, maximum))
