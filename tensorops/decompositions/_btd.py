"""Block-term decomposition (BTD) of a convolution kernel in Tucker-2 blocks (De Lathauwer, 2008).

``W[o, i, h, w] ≈ Σ_b Σ_{a,c} G_b[a, c, h, w] · U_b[o, a] · V_b[i, c]``: a sum of ``blocks``
Tucker-2 terms, each with its own ``(r_out, r_in)`` channel bases and a full spatial core.
Equivalently one Tucker-2 whose core is block-diagonal, which is what makes it cheaper than a
Tucker-2 of the same channel widths.

Algorithm (deterministic given ``seed``):

1. **Starts.** Greedy deflation (block 1 is the truncated HOSVD, plus a few HOOI sweeps, of the
   kernel, block 2 that of the residual, and so on) and ``n_starts - 1`` random orthonormal bases
   drawn from a generator seeded with ``seed``. ALS on BTD has local minima and long swamps
   (De Lathauwer and Nion, 2008); each start gets ``probe_sweeps`` sweeps and the best one goes on.
2. **ALS refinement.** Each sweep solves three least-squares problems exactly: all output bases
   ``U = [U_1 … U_R]`` jointly given the rest, then all input bases jointly, then each block's
   core given every other block (block coordinate descent). After each basis update the block
   bases are re-orthonormalised (QR, the triangular part folded into the core), which leaves the
   model unchanged and makes the core step a projection computed in the small
   ``(R·r_out, R·r_in)`` space (one pass over the kernel per sweep). Every step minimises the fit
   over its variables, so the error never rises; sweeps stop when it improves by less than
   ``tol`` (relative error) or after ``n_iter_max`` sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tensorops.decompositions._linalg import as_float64, relative_error, threads_for
from tensorops.decompositions._tucker2 import tucker2
from tensorops.exceptions import RankError

#: (cores (R, r_out, r_in, kh, kw), out bases (R, out, r_out), in bases (R, in, r_in)).
_Blocks = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class BTDResult:
    """``cores`` (R, r_out, r_in, kh, kw), ``out_factors`` (R, out, r_out), ``in_factors``
    (R, in, r_in); ``errors`` holds the relative error after deflation and after each sweep."""

    cores: torch.Tensor
    out_factors: torch.Tensor
    in_factors: torch.Tensor
    relative_error: float
    n_iter: int
    errors: tuple[float, ...]

    @property
    def ranks(self) -> tuple[int, int, int]:
        """``(blocks, r_out, r_in)``."""
        blocks, r_out, r_in = self.cores.shape[:3]
        return int(blocks), int(r_out), int(r_in)

    @property
    def num_params(self) -> int:
        return int(self.cores.numel() + self.out_factors.numel() + self.in_factors.numel())

    def to_tensor(self) -> torch.Tensor:
        return btd_to_tensor(self.cores, self.out_factors, self.in_factors)


def btd_to_tensor(
    cores: torch.Tensor, out_factors: torch.Tensor, in_factors: torch.Tensor
) -> torch.Tensor:
    """Rebuild the (out, in, kh, kw) kernel from BTD blocks (the sum of the Tucker-2 terms)."""
    return torch.einsum("bachw,boa,bic->oihw", cores, out_factors, in_factors)


def max_btd_blocks(shape: tuple[int, ...]) -> int:
    """Largest number of blocks accepted: ``min(out, in)`` (beyond it rank-1 blocks alone span
    every channel pair a Tucker-2 of full rank could)."""
    return max(1, min(int(shape[0]), int(shape[1])))


def validate_btd_ranks(shape: tuple[int, ...], ranks: tuple[int, ...]) -> tuple[int, int, int]:
    """Return ``(blocks, r_out, r_in)`` as ints, each within ``[1, limit]`` for ``shape``."""
    if len(shape) != 4:
        raise ValueError(f"BTD needs a 4-D kernel (out, in, kh, kw), got shape {shape}")
    if len(ranks) != 3:
        raise RankError(f"BTD takes three ranks (blocks, r_out, r_in), got {ranks!r}")
    limits = (max_btd_blocks(shape), int(shape[0]), int(shape[1]))
    for name, rank, limit in zip(("blocks", "r_out", "r_in"), ranks, limits):
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
            raise RankError(
                f"BTD {name} must be an integer in [1, {limit}] for kernel {shape}, got {rank!r}"
            )
    return int(ranks[0]), int(ranks[1]), int(ranks[2])


def btd(
    kernel: torch.Tensor,
    ranks: tuple[int, int, int],
    *,
    seed: int = 0,
    n_starts: int = 5,
    probe_sweeps: int = 12,
    n_iter_max: int = 100,
    tol: float = 1e-9,
    deflation_sweeps: int = 3,
) -> BTDResult:
    """BTD of a 4-D ``kernel`` in ``ranks = (blocks, r_out, r_in)`` Tucker-2 blocks.

    Tries the greedy-deflation start and ``n_starts - 1`` seeded random starts for
    ``probe_sweeps`` ALS sweeps each, then continues the best one for at most ``n_iter_max``
    sweeps in all, stopping when the relative error improves by less than ``tol``. Computed in
    float64 without gradients; factors are returned in the kernel's dtype.
    """
    if kernel.ndim != 4:
        raise ValueError(
            f"expected a 4-D convolution kernel (out, in, kh, kw), got shape {tuple(kernel.shape)}"
        )
    blocks, r_out, r_in = validate_btd_ranks(tuple(kernel.shape), ranks)
    for name, value in (("n_starts", n_starts), ("probe_sweeps", probe_sweeps)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if n_iter_max < 0:
        raise ValueError(f"n_iter_max must be >= 0, got {n_iter_max}")
    with torch.no_grad(), threads_for(kernel.numel()):
        x = as_float64(kernel)
        norm = float(torch.linalg.vector_norm(x))
        generator = torch.Generator().manual_seed(seed)
        best: tuple[_Blocks, list[float]] | None = None
        for start in range(n_starts):
            if start == 0:
                initial = _deflate(x, blocks, (r_out, r_in), deflation_sweeps)
            else:
                initial = _random_start(x, blocks, (r_out, r_in), generator)
            run = _als(x, initial, norm, min(probe_sweeps, n_iter_max), tol)
            if best is None or run[1][-1] < best[1][-1]:
                best = run
        assert best is not None
        (cores, u, v), errors = best
        (cores, u, v), more = _als(x, (cores, u, v), norm, n_iter_max - (len(errors) - 1), tol)
        errors.extend(more[1:])
        exact = relative_error(x, btd_to_tensor(cores, u, v))
    dtype = kernel.dtype
    return BTDResult(
        cores=cores.to(dtype),
        out_factors=u.to(dtype),
        in_factors=v.to(dtype),
        relative_error=exact,
        n_iter=len(errors) - 1,
        errors=tuple(errors),
    )


def _deflate(x: torch.Tensor, blocks: int, ranks: tuple[int, int], sweeps: int) -> _Blocks:
    """Fit the blocks one after another, each to the residual the previous ones leave."""
    residual = x.clone()
    cores, outs, ins = [], [], []
    for _ in range(blocks):
        term = tucker2(residual, ranks, n_iter=sweeps)
        cores.append(term.core)
        outs.append(term.out_factor)
        ins.append(term.in_factor)
        residual -= term.to_tensor()
    return torch.stack(cores), torch.stack(outs), torch.stack(ins)


def _als(
    x: torch.Tensor, blocks: _Blocks, norm: float, sweeps: int, tol: float
) -> tuple[_Blocks, list[float]]:
    """Up to ``sweeps`` ALS sweeps from ``blocks``; the error after the start and each sweep."""
    errors = [_error(x, *blocks, norm)]
    for _ in range(max(sweeps, 0)):
        if errors[-1] <= 1e-13:
            break
        blocks = _sweep(x, *blocks)
        errors.append(_error(x, *blocks, norm))
        if errors[-2] - errors[-1] < tol:
            break
    return blocks, errors


def _random_start(
    x: torch.Tensor, blocks: int, ranks: tuple[int, int], generator: torch.Generator
) -> _Blocks:
    """Seeded random orthonormal bases per block; cores are the kernel's projections on them."""
    n_out, n_in = x.shape[:2]
    shape_u, shape_v = (blocks, n_out, ranks[0]), (blocks, n_in, ranks[1])
    u = torch.linalg.qr(torch.randn(shape_u, generator=generator, dtype=x.dtype).to(x.device))[0]
    v = torch.linalg.qr(torch.randn(shape_v, generator=generator, dtype=x.dtype).to(x.device))[0]
    return torch.einsum("oihw,boa,bic->bachw", x, u, v), u, v


def _sweep(x: torch.Tensor, cores: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> _Blocks:
    n_blocks, r_out, r_in = cores.shape[:3]
    n_out, n_in = x.shape[:2]
    # Output bases, all blocks at once: x_(0) ≈ [U_1 … U_R] · M, M's rows (b, a) = (G_b ×1 V_b).
    m = torch.einsum("bachw,bic->baihw", cores, v).reshape(n_blocks * r_out, -1)
    u_all = _right_solve(x.reshape(n_out, -1) @ m.T, m @ m.T)  # (out, R·r_out)
    u, cores = _orthonormalise(u_all.reshape(n_out, n_blocks, r_out).transpose(0, 1), cores, 1)
    # Input bases likewise on the mode-1 unfolding.
    m = torch.einsum("bachw,boa->bcohw", cores, u).reshape(n_blocks * r_in, -1)
    x1 = x.transpose(0, 1).reshape(n_in, -1)
    v_all = _right_solve(x1 @ m.T, m @ m.T)  # (in, R·r_in)
    v, cores = _orthonormalise(v_all.reshape(n_in, n_blocks, r_in).transpose(0, 1), cores, 2)
    # Cores, one block at a time against the residual of the others. With orthonormal bases
    # G_b = U_bᵀ (x - Σ_{c≠b} block_c) V_b, which stays in the small space:
    # U_bᵀ block_c V_b = (U_bᵀ U_c) G_c (V_cᵀ V_b).
    proj = torch.einsum("oihw,boa->baihw", x, u)
    proj = torch.einsum("baihw,bic->bachw", proj, v)
    out_gram = torch.einsum("boa,cox->bcax", u, u)  # (R, R, r_out, r_out)
    in_gram = torch.einsum("ciy,biz->cbyz", v, v)  # (R, R, r_in, r_in): [c, b] = V_cᵀ V_b
    new_cores = cores.clone()
    for b in range(n_blocks):
        target = proj[b].clone()
        for c in range(n_blocks):
            if c != b:
                target -= torch.einsum(
                    "ax,xyhw,yc->achw", out_gram[b, c], new_cores[c], in_gram[c, b]
                )
        new_cores[b] = target
    return new_cores, u, v


def _right_solve(rhs: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``rhs @ pinv(gram)`` for a symmetric PSD ``gram``: the least-squares basis update."""
    return rhs @ torch.linalg.pinv(gram, hermitian=True)


def _orthonormalise(
    factors: torch.Tensor, cores: torch.Tensor, core_mode: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """QR each block's basis (R, n, r) and fold the triangular factor into ``core_mode``."""
    q, tri = torch.linalg.qr(factors)  # (R, n, r), (R, r, r)
    if core_mode == 1:
        cores = torch.einsum("bxa,bachw->bxchw", tri, cores)
    else:
        cores = torch.einsum("byc,bachw->bayhw", tri, cores)
    return q, cores


def _error(
    x: torch.Tensor, cores: torch.Tensor, u: torch.Tensor, v: torch.Tensor, norm: float
) -> float:
    if norm == 0.0:
        return 0.0
    return float(torch.linalg.vector_norm(x - btd_to_tensor(cores, u, v))) / norm
