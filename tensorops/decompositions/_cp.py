"""CP (CANDECOMP/PARAFAC) of a 4-D convolution kernel by alternating least squares.

``W[o, i, h, w] ≈ Σ_r weights[r] · A[o, r] · B[i, r] · C[h, r] · D[w, r]``.

Initialisation takes the leading left singular vectors of each unfolding (seeded Gaussian
columns fill in where a mode has fewer than ``rank`` of them). Each sweep solves the four
least-squares problems exactly, so the fit never gets worse. The two big contractions per sweep
are plain matrix products against the mode-0 unfolding, and the spatial modes share one partial
contraction, which keeps a 512x512x3x3 kernel at rank 128 to a fraction of a second per sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tensorops.decompositions._linalg import (
    as_float64,
    leading_left_singular_vectors,
    relative_error,
    threads_for,
)
from tensorops.exceptions import RankError


@dataclass(frozen=True)
class CPResult:
    """Factors ``(out, r), (in, r), (kh, r), (kw, r)``, unit-norm columns, scaled by ``weights``."""

    weights: torch.Tensor
    factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    relative_error: float
    n_iter: int
    converged: bool
    errors: tuple[float, ...]  # relative error after each sweep (non-increasing)

    @property
    def rank(self) -> int:
        return int(self.weights.shape[0])

    @property
    def num_params(self) -> int:
        """Parameters once ``weights`` are folded into one factor (as the layers do)."""
        return int(sum(f.numel() for f in self.factors))

    def to_tensor(self) -> torch.Tensor:
        return cp_to_tensor(self.weights, self.factors)


def cp_to_tensor(weights: torch.Tensor, factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Rebuild the full 4-D tensor from CP weights and factors."""
    a, b, c, d = factors
    return torch.einsum("r,or,ir,hr,wr->oihw", weights, a, b, c, d)


def max_cp_rank(shape: tuple[int, ...]) -> int:
    """Largest rank accepted: the generic upper bound, product of all dims but the largest."""
    total = 1
    for dim in shape:
        total *= dim
    return total // max(shape)


def validate_cp_rank(shape: tuple[int, ...], rank: int) -> int:
    """Return ``rank`` if it is an int in ``[1, max_cp_rank(shape)]``."""
    if len(shape) != 4:
        raise ValueError(f"CP needs a 4-D kernel (out, in, kh, kw), got shape {shape}")
    limit = max_cp_rank(shape)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
        raise RankError(
            f"CP rank must be an integer in [1, {limit}] for kernel {shape}, got {rank!r}"
        )
    return rank


def _khatri_rao3(b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Column-wise Kronecker product, rows ordered (j, k, l) as a C-order reshape expects."""
    rank = b.shape[1]
    return (b[:, None, None, :] * c[None, :, None, :] * d[None, None, :, :]).reshape(-1, rank)


def _solve(mttkrp: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Least-squares factor update ``mttkrp @ gram⁻¹`` for symmetric PSD ``gram``.

    A Cholesky solve is several times cheaper than a pseudo-inverse; a singular ``gram``
    (collinear columns) falls back to the pseudo-inverse.
    """
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0:
        return torch.cholesky_solve(mttkrp.T, factor).T
    return mttkrp @ torch.linalg.pinv(gram, hermitian=True)


def _normalise(factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norms = torch.linalg.vector_norm(factor, dim=0)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    return factor / safe, norms


def _init_factor(
    unfolding: torch.Tensor, rank: int, generator: torch.Generator, method: str
) -> torch.Tensor:
    rows = unfolding.shape[0]
    if method == "random":
        return torch.randn(rows, rank, generator=generator, dtype=torch.float64).to(
            unfolding.device
        )
    vectors, _ = leading_left_singular_vectors(unfolding)
    vectors = vectors[:, : min(rank, vectors.shape[1])]
    if vectors.shape[1] < rank:
        extra = torch.randn(rows, rank - vectors.shape[1], generator=generator, dtype=torch.float64)
        vectors = torch.cat([vectors, extra.to(unfolding.device) / rows**0.5], dim=1)
    return vectors


def cp_als(
    kernel: torch.Tensor,
    rank: int,
    *,
    n_iter_max: int = 100,
    tol: float = 1e-7,
    seed: int = 0,
    init: str = "svd",
    compression: float | None = 1.5,
    n_refine: int = 6,
) -> CPResult:
    """CP decomposition of a 4-D ``kernel`` at ``rank`` by ALS, in float64.

    With ``compression`` set (the default) and channel modes wider than ``compression * rank``,
    the kernel is first projected onto its leading HOSVD channel bases of that width
    (CANDELINC): up to ``n_iter_max`` cheap sweeps run on the small core, the factors are lifted
    back and ``n_refine`` sweeps on the full kernel finish the job. ``compression=None`` runs every
    sweep on the full kernel. Sweeps stop when one lowers the relative error by less than ``tol``.
    ``seed`` fixes the random initial columns (``init='svd'`` uses them only where a mode has
    fewer than ``rank`` singular vectors; ``init='random'`` for all). ``errors`` records the
    relative error against the full kernel after every sweep, and never rises.
    """
    if kernel.ndim != 4:
        raise ValueError(
            f"expected a 4-D kernel (out, in, kh, kw), got shape {tuple(kernel.shape)}"
        )
    validate_cp_rank(tuple(kernel.shape), rank)
    if init not in ("svd", "random"):
        raise ValueError(f"init must be 'svd' or 'random', got {init!r}")
    if n_iter_max < 1:
        raise ValueError(f"n_iter_max must be >= 1, got {n_iter_max}")
    if compression is not None and compression < 1.0:
        raise ValueError(f"compression must be >= 1 or None, got {compression}")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = as_float64(kernel)
        norm_sq = float((x * x).sum())
        width = None if compression is None else math.ceil(compression * rank)
        if width is not None and (width < x.shape[0] or width < x.shape[1]):
            u_out = leading_left_singular_vectors(x.reshape(x.shape[0], -1))[0][:, :width]
            u_in = leading_left_singular_vectors(x.transpose(0, 1).reshape(x.shape[1], -1))[0]
            u_in = u_in[:, :width]
            core = torch.einsum("oihw,oa,ib->abhw", x, u_out, u_in)
            # The model stays inside the projected subspace, so the full error splits into the
            # projection error and the core's fitting error (Pythagoras).
            offset_sq = max(0.0, norm_sq - float((core * core).sum()))
            factors = _initial_factors(core, rank, generator, init)
            with threads_for(core.numel()):
                factors, errors, converged = _sweeps(
                    core, factors, n_iter_max, tol, offset_sq, norm_sq
                )
            factors = (u_out @ factors[0], u_in @ factors[1], factors[2], factors[3])
            if n_refine > 0:
                with threads_for(x.numel()):
                    factors, more, converged = _sweeps(x, factors, n_refine, tol, 0.0, norm_sq)
                errors += more
        else:
            factors = _initial_factors(x, rank, generator, init)
            with threads_for(x.numel()):
                factors, errors, converged = _sweeps(x, factors, n_iter_max, tol, 0.0, norm_sq)
        d, weights = _normalise(factors[3])
        final = (factors[0], factors[1], factors[2], d)
        exact_error = relative_error(x, cp_to_tensor(weights, final))
    dtype = kernel.dtype
    return CPResult(
        weights=weights.to(dtype),
        factors=(final[0].to(dtype), final[1].to(dtype), final[2].to(dtype), final[3].to(dtype)),
        relative_error=exact_error,
        n_iter=len(errors),
        converged=converged,
        errors=tuple(errors),
    )


_Factors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _initial_factors(x: torch.Tensor, rank: int, generator: torch.Generator, init: str) -> _Factors:
    a, b, c, d = (
        _init_factor(torch.movedim(x, mode, 0).reshape(x.shape[mode], -1), rank, generator, init)
        for mode in range(4)
    )
    return a, b, c, d


def _sweeps(
    x: torch.Tensor,
    factors: _Factors,
    n_iter: int,
    tol: float,
    offset_sq: float,
    norm_sq: float,
) -> tuple[_Factors, list[float], bool]:
    """ALS sweeps on ``x``; errors are ``sqrt(offset_sq + ||x - model||²) / sqrt(norm_sq)``."""
    n_out, n_in, n_h, n_w = x.shape
    x_sq = float((x * x).sum())
    x0 = x.reshape(n_out, -1)  # (O, I*H*W)
    x1 = x.permute(1, 0, 2, 3).reshape(n_in, -1)  # (I, O*H*W)
    a, b, c, d = factors
    rank = a.shape[1]
    errors: list[float] = []
    converged = False
    for _ in range(n_iter):
        gb, gc, gd = b.T @ b, c.T @ c, d.T @ d
        a, _ = _normalise(_solve(x0 @ _khatri_rao3(b, c, d), gb * gc * gd))
        ga = a.T @ a
        b, _ = _normalise(_solve(x1 @ _khatri_rao3(a, c, d), ga * gc * gd))
        gb = b.T @ b
        # One partial contraction serves both spatial modes: z[i, h, w, r] = Σ_o x[o,i,h,w] a[o,r].
        z = (x0.T @ a).reshape(n_in, n_h, n_w, rank)
        spatial = torch.einsum("ihwr,ir->hwr", z, b)  # (H, W, R)
        c, _ = _normalise(_solve(torch.einsum("hwr,wr->hr", spatial, d), ga * gb * gd))
        gc = c.T @ c
        mttkrp_d = torch.einsum("hwr,hr->wr", spatial, c)
        d = _solve(mttkrp_d, ga * gb * gc)  # left unnormalised: it carries the weights
        gd = d.T @ d
        residual_sq = x_sq - 2.0 * float((mttkrp_d * d).sum()) + float((ga * gb * gc * gd).sum())
        error = (max(0.0, offset_sq + residual_sq) / max(norm_sq, 1e-300)) ** 0.5
        improved = errors[-1] - error if errors else float("inf")
        errors.append(error)
        if improved < tol:
            converged = True
            break
    return (a, b, c, d), errors, converged
