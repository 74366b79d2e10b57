"""Reading user-supplied weights without ever executing code from the file."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from worker.errors import WorkerError

#: Uploaded weight files larger than this are refused before they are read.
MAX_WEIGHTS_BYTES = 2 * 1024**3


class WeightsError(WorkerError, ValueError):
    """A weights file is unreadable, unsafe, or does not fit the architecture."""

    code = "invalid_weights"


def read_state_dict(
    path: str | os.PathLike[str], *, max_bytes: int = MAX_WEIGHTS_BYTES
) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a state_dict read with ``weights_only=True``."""
    source = Path(path)
    if not source.is_file():
        raise WeightsError(f"weights file {source} does not exist")
    size = source.stat().st_size
    if size > max_bytes:
        raise WeightsError(f"weights file {source} is {size} bytes; the limit is {max_bytes}")
    if source.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(source)))
        except (SafetensorError, OSError) as exc:
            raise WeightsError(f"{source} is not a readable safetensors file: {exc}") from None
    try:
        loaded = torch.load(str(source), map_location="cpu", weights_only=True)
    except Exception as exc:  # untrusted bytes: any parse failure (KeyError, EOFError, ...)
        detail = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise WeightsError(
            f"{source} is not a plain PyTorch state_dict (only tensors are accepted; objects "
            f"that would run code are refused): {detail}"
        ) from None
    if (
        isinstance(loaded, dict)
        and "state_dict" in loaded
        and isinstance(loaded["state_dict"], dict)
    ):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise WeightsError(f"{source} must hold a dict of name → tensor (a state_dict)")
    return dict(loaded)


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load ``state`` into ``model`` strictly, explaining any mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise WeightsError(
            f"weights do not fit the architecture: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(extra)} unexpected (e.g. {extra[:3]})"
        )
    for name, tensor in state.items():
        want = expected[name]
        if tuple(tensor.shape) != tuple(want.shape):
            raise WeightsError(
                f"tensor {name!r} has shape {tuple(tensor.shape)}, the architecture expects "
                f"{tuple(want.shape)}"
            )
        if tensor.is_floating_point() != want.is_floating_point():
            raise WeightsError(f"tensor {name!r} has dtype {tensor.dtype}, expected {want.dtype}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise WeightsError(f"tensor {name!r} contains NaN or infinite values")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    return model
