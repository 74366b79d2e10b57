"""Tucker-2 of a convolution kernel on its two channel modes.

``W[o, i, h, w] ≈ Σ_ab core[a, b, h, w] · out_factor[o, a] · in_factor[i, b]``: the output
and input channel modes are projected onto orthonormal bases while the spatial modes stay whole.
HOSVD gives the initial bases (the leading left singular vectors of the mode-0 and mode-1
unfoldings); optional HOOI iterations refine them. Because HOSVD factors are truncations of one
basis per mode, :func:`mode_bases` can be computed once and reused for every rank pair.
"""

from __future__ import annotations

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
class ModeBasis:
    """Every left singular vector of one channel-mode unfolding, best first (float64)."""

    vectors: torch.Tensor  # (dim, k)
    singular_values: torch.Tensor  # (k,)

    def truncate(self, rank: int) -> torch.Tensor:
        return self.vectors[:, :rank]


@dataclass(frozen=True)
class Tucker2Result:
    """``core`` (r_out, r_in, kh, kw), ``out_factor`` (out, r_out), ``in_factor`` (in, r_in)."""

    core: torch.Tensor
    out_factor: torch.Tensor
    in_factor: torch.Tensor
    relative_error: float
    n_iter: int

    @property
    def ranks(self) -> tuple[int, int]:
        return int(self.core.shape[0]), int(self.core.shape[1])

    @property
    def num_params(self) -> int:
        return int(self.core.numel() + self.out_factor.numel() + self.in_factor.numel())

    def to_tensor(self) -> torch.Tensor:
        return tucker2_to_tensor(self.core, self.out_factor, self.in_factor)


def tucker2_to_tensor(
    core: torch.Tensor, out_factor: torch.Tensor, in_factor: torch.Tensor
) -> torch.Tensor:
    """Rebuild the full (out, in, kh, kw) kernel from Tucker-2 factors."""
    return torch.einsum("abhw,oa,ib->oihw", core, out_factor, in_factor)


def unfold(kernel: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-``mode`` unfolding: that mode's index becomes the rows, the rest the columns."""
    return torch.movedim(kernel, mode, 0).reshape(kernel.shape[mode], -1)


def mode_bases(kernel: torch.Tensor) -> tuple[ModeBasis, ModeBasis]:
    """Full bases of the output-channel (mode 0) and input-channel (mode 1) unfoldings."""
    _check_kernel(kernel)
    with torch.no_grad(), threads_for(kernel.numel()):
        k64 = as_float64(kernel)
        bases = []
        for mode in (0, 1):
            vectors, values = leading_left_singular_vectors(unfold(k64, mode))
            bases.append(ModeBasis(vectors=vectors, singular_values=values))
    return bases[0], bases[1]


def validate_tucker2_ranks(shape: tuple[int, ...], ranks: tuple[int, int]) -> tuple[int, int]:
    """Return ``ranks`` as ints if ``1 <= r_out <= out`` and ``1 <= r_in <= in``."""
    if len(shape) != 4:
        raise ValueError(f"Tucker-2 needs a 4-D kernel (out, in, kh, kw), got shape {shape}")
    if len(ranks) != 2:
        raise RankError(f"Tucker-2 takes two ranks (r_out, r_in), got {ranks!r}")
    for name, rank, limit in (("r_out", ranks[0], shape[0]), ("r_in", ranks[1], shape[1])):
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
            raise RankError(
                f"Tucker-2 {name} must be an integer in [1, {limit}] for kernel {shape}, "
                f"got {rank!r}"
            )
    return int(ranks[0]), int(ranks[1])


def tucker2(
    kernel: torch.Tensor,
    ranks: tuple[int, int],
    *,
    n_iter: int = 0,
    tol: float = 1e-7,
    bases: tuple[ModeBasis, ModeBasis] | None = None,
) -> Tucker2Result:
    """Tucker-2 decomposition of a 4-D ``kernel`` at ``ranks = (r_out, r_in)``.

    ``n_iter`` HOOI sweeps follow the HOSVD initialisation (0 = plain truncated HOSVD); they stop
    early when the relative error improves by less than ``tol``. ``bases`` may pass precomputed
    :func:`mode_bases` so that many rank pairs share one eigendecomposition per mode.
    """
    _check_kernel(kernel)
    r_out, r_in = validate_tucker2_ranks(tuple(kernel.shape), ranks)
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    with torch.no_grad(), threads_for(kernel.numel()):
        k64 = as_float64(kernel)
        out_basis, in_basis = bases if bases is not None else mode_bases(kernel)
        u_out = out_basis.truncate(r_out)
        u_in = in_basis.truncate(r_in)
        norm_sq = float((k64 * k64).sum())
        error = _projected_error(k64, u_out, u_in, norm_sq)
        done = 0
        for _ in range(n_iter):
            # Refine each basis against the other one's projection (HOOI).
            partial = torch.einsum("oihw,ib->obhw", k64, u_in)
            u_out = leading_left_singular_vectors(unfold(partial, 0))[0][:, :r_out]
            partial = torch.einsum("oihw,oa->aihw", k64, u_out)
            u_in = leading_left_singular_vectors(unfold(partial, 1))[0][:, :r_in]
            done += 1
            new_error = _projected_error(k64, u_out, u_in, norm_sq)
            improved = error - new_error
            error = new_error
            if improved < tol:
                break
        core = torch.einsum("oihw,oa,ib->abhw", k64, u_out, u_in)
        exact_error = relative_error(k64, tucker2_to_tensor(core, u_out, u_in))
    dtype = kernel.dtype
    return Tucker2Result(
        core=core.to(dtype),
        out_factor=u_out.to(dtype),
        in_factor=u_in.to(dtype),
        relative_error=exact_error,
        n_iter=done,
    )


def _projected_error(
    k64: torch.Tensor, u_out: torch.Tensor, u_in: torch.Tensor, norm_sq: float
) -> float:
    """Relative error of the orthogonal projection: sqrt(1 - ||core||² / ||W||²)."""
    if norm_sq == 0.0:
        return 0.0
    core = torch.einsum("oihw,oa,ib->abhw", k64, u_out, u_in)
    return max(0.0, 1.0 - float((core * core).sum()) / norm_sq) ** 0.5


def _check_kernel(kernel: torch.Tensor) -> None:
    if kernel.ndim != 4:
        raise ValueError(
            f"expected a 4-D convolution kernel (out, in, kh, kw), got shape {tuple(kernel.shape)}"
        )
