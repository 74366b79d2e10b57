"""Deployment exports (TorchScript, ONNX), each verified against the module it came from."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from tensorops.exceptions import TensorOpsError

logger = logging.getLogger(__name__)


class ExportError(TensorOpsError, RuntimeError):
    """An export failed, or the exported program does not reproduce the module's outputs."""


def _reference(model: nn.Module, example_input: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(example_input)
    if not isinstance(out, torch.Tensor):
        raise ExportError("only models returning a single tensor can be exported")
    return out


def _verify(
    name: str, expected: torch.Tensor, actual: torch.Tensor, atol: float, rtol: float
) -> None:
    if expected.shape != actual.shape or not torch.allclose(expected, actual, atol=atol, rtol=rtol):
        worst = (
            float((expected - actual).abs().max())
            if expected.shape == actual.shape
            else float("nan")
        )
        raise ExportError(f"{name} export does not reproduce the module (max abs diff {worst:g})")


def export_torchscript(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> Path:
    """Trace ``model`` to TorchScript at ``path``, reload it and check it gives the same output."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    expected = _reference(model, example_input)
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream but still what many deployments load.
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad():
            traced = torch.jit.trace(model, example_input, check_trace=False)
        torch.jit.save(traced, str(target))
        loaded = torch.jit.load(str(target), map_location=example_input.device)
    with torch.no_grad():
        _verify("TorchScript", expected, loaded(example_input), atol, rtol)
    logger.info("exported TorchScript to %s", target)
    return target


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    opset: int = 18,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> Path:
    """Export ``model`` to ONNX (dynamic batch), run it with onnxruntime and compare outputs.

    Needs the ``onnx`` extra (``pip install 'rankopt[onnx]'``): onnx, onnxscript, onnxruntime.
    """
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(
            "ONNX export needs the 'onnx' extra: pip install 'rankopt[onnx]'"
        ) from None
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    expected = _reference(model, example_input)
    batch = torch.export.Dim("batch", min=1, max=1024)
    try:
        program = torch.onnx.export(
            model,
            (example_input,),
            dynamo=True,
            opset_version=opset,
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=({0: batch},),
        )
    except Exception as exc:  # the exporter raises many unrelated types
        raise ExportError(f"ONNX export failed: {exc}") from exc
    if program is None:
        raise ExportError("ONNX export produced no program")
    program.save(str(target))
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"input": example_input.detach().cpu().numpy()})
    _verify("ONNX", expected.cpu(), torch.from_numpy(actual), atol, rtol)
    logger.info("exported ONNX to %s", target)
    return target
