"""Compressed checkpoints: safetensors weights plus a JSON manifest, loaded without unpickling.

A checkpoint is either a directory holding ``manifest.json`` and ``model.safetensors``, or a
single ``.safetensors`` file whose metadata carries the manifest. The manifest names the
architecture (``{"arch": "rankopt:lenet5", "kwargs": {...}}``), the plan, every tensor's shape
and dtype, library versions and the sha256 of the weights. Loading rebuilds the architecture
through an entry point of the ``rankopt.architectures`` group (installed code, never code named
by the file), applies the plan's structure, checks every shape and the digest, then loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tensorops.exceptions import CheckpointError
from tensorops.plan import Plan
from tensorops.surgery import compress

logger = logging.getLogger(__name__)

FORMAT = "rankopt.compressed"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "model.safetensors"
METADATA_KEY = "rankopt.manifest"
ENTRY_POINT_GROUP = "rankopt.architectures"

ArchitectureBuilder = Callable[[Mapping[str, Any]], nn.Module]


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    out: dict[str, str] = {"torch": str(torch.__version__)}
    for dist in ("rankopt", "tensorly", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; clone so tied tensors are written independently.
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_compressed(
    model: nn.Module,
    plan: Plan,
    path: str | os.PathLike[str],
    *,
    meta: Mapping[str, Any],
) -> Path:
    """Write ``model`` (compressed by ``plan``) to ``path``; returns the path written.

    ``meta`` must hold ``arch``: ``{"arch": "<prefix>:<name>", "kwargs": {...}}`` describing how
    to rebuild the uncompressed architecture; any other JSON-serialisable keys are kept. A
    ``path`` ending in ``.safetensors`` gives a single file; anything else a directory. Files are
    written to a temporary name and renamed, so a crash never leaves a half-written checkpoint.
    """
    arch = _validate_arch(meta.get("arch"))
    state = _state(model)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "plan": plan.to_dict(),
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in state.items()},
        "weights_sha256": weights_digest(state),
        "versions": _versions(),
        "meta": {k: v for k, v in meta.items() if k != "arch"},
    }
    try:
        manifest_text = json.dumps(manifest, sort_keys=True, indent=2)
    except TypeError as exc:
        raise CheckpointError(f"meta must be JSON-serialisable: {exc}") from None
    target = Path(path)
    if target.suffix == ".safetensors":
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic(
            target, lambda tmp: save_file(state, str(tmp), metadata={METADATA_KEY: manifest_text})
        )
    else:
        target.mkdir(parents=True, exist_ok=True)
        _atomic(target / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp)))
        _atomic(target / MANIFEST_NAME, lambda tmp: tmp.write_text(manifest_text + "\n"))
    logger.info("saved compressed checkpoint to %s", target)
    return target


def _atomic(target: Path, write: Callable[[Path], object]) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _validate_arch(arch: object) -> dict[str, Any]:
    if not isinstance(arch, Mapping) or not isinstance(arch.get("arch"), str):
        raise CheckpointError(
            "meta['arch'] must be {'arch': '<prefix>:<name>', 'kwargs': {...}} so the model can "
            f"be rebuilt; got {arch!r}"
        )
    kwargs = arch.get("kwargs", {})
    if not isinstance(kwargs, Mapping):
        raise CheckpointError(f"meta['arch']['kwargs'] must be an object, got {kwargs!r}")
    return {"arch": arch["arch"], "kwargs": dict(kwargs)}


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a checkpoint (directory or single file), validated for format."""
    source = Path(path)
    if source.is_dir():
        manifest_path = source / MANIFEST_NAME
        if not manifest_path.is_file():
            raise CheckpointError(f"{source} has no {MANIFEST_NAME}: not a rankopt checkpoint")
        text = manifest_path.read_text()
    elif source.is_file():
        text = _file_metadata(source)
    else:
        raise CheckpointError(f"no checkpoint at {source}")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"manifest of {source} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{source} is not a rankopt compressed checkpoint")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{source} has format version {manifest.get('format_version')!r}; this rankopt "
            f"reads version {FORMAT_VERSION}"
        )
    return manifest


def _file_metadata(path: Path) -> str:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    if METADATA_KEY not in meta:
        raise CheckpointError(f"{path} carries no rankopt manifest in its metadata")
    return meta[METADATA_KEY]


def _builder_for(arch_name: str) -> ArchitectureBuilder:
    prefix = arch_name.split(":", 1)[0]
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == prefix:
            builder: ArchitectureBuilder = entry.load()
            return builder
    raise CheckpointError(
        f"no installed architecture provider for {arch_name!r} (entry point group "
        f"{ENTRY_POINT_GROUP!r}, name {prefix!r}); pass builder= to load_compressed"
    )


def load_compressed(
    path: str | os.PathLike[str],
    *,
    builder: ArchitectureBuilder | None = None,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Rebuild the compressed model saved at ``path`` and load its weights (no unpickling).

    ``builder`` maps the manifest's ``arch`` spec to a fresh uncompressed model; by default the
    installed ``rankopt.architectures`` entry point for the spec's prefix does it. Raises
    :class:`CheckpointError` on any mismatch: unknown format, missing or extra tensors, shapes or
    dtypes that differ from the rebuilt structure, or weights whose digest does not match.
    """
    source = Path(path)
    manifest = read_manifest(source)
    arch = _validate_arch(manifest.get("arch"))
    plan = Plan.from_dict(manifest.get("plan", {}))
    build = builder or _builder_for(arch["arch"])
    base = build(arch)
    model = compress(base, plan, weights=False)
    weights_file = source / WEIGHTS_NAME if source.is_dir() else source
    try:
        state = load_file(str(weights_file), device=str(map_location))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read weights from {weights_file}: {exc}") from None
    _check_state(model, state, manifest)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _check_state(
    model: nn.Module, state: Mapping[str, torch.Tensor], manifest: Mapping[str, Any]
) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint tensors do not match the architecture: missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    for name, tensor in state.items():
        want = expected[name]
        if tuple(tensor.shape) != tuple(want.shape) or tensor.dtype != want.dtype:
            raise CheckpointError(
                f"tensor {name!r} is {tuple(tensor.shape)} {tensor.dtype}, the architecture "
                f"expects {tuple(want.shape)} {want.dtype}"
            )
    if weights_digest(state) != manifest.get("weights_sha256"):
        raise CheckpointError("weights do not match the manifest's sha256: the file was altered")
