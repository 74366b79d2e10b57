"""Compressed checkpoints: save → load reproduces outputs; bad files are refused."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tensorops import (
    CheckpointError,
    Choice,
    Plan,
    compress,
    export_onnx,
    export_torchscript,
    load_compressed,
    read_manifest,
    save_compressed,
)


class Net(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def build(spec: Mapping[str, Any]) -> nn.Module:
    assert spec["arch"] == "test:net"
    return Net(**spec["kwargs"])


ARCH = {"arch": "test:net", "kwargs": {"width": 8}}
PLAN = Plan(
    {"conv1": Choice("keep"), "conv2": Choice("tucker2", (6, 4)), "fc": Choice("svd", (5,))}
)


@pytest.fixture
def compressed() -> nn.Module:
    model = Net()
    # Non-trivial BatchNorm statistics must survive the round trip too.
    model.train()
    model(torch.randn(16, 1, 8, 8))
    return compress(model.eval(), PLAN)


@pytest.mark.parametrize("name", ["ckpt", "ckpt.safetensors"])
def test_round_trip_gives_identical_outputs(
    compressed: nn.Module, tmp_path: Path, name: str
) -> None:
    path = save_compressed(compressed, PLAN, tmp_path / name, meta={"arch": ARCH, "note": "hi"})
    loaded = load_compressed(path, builder=build)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(loaded(x), compressed(x))
    manifest = read_manifest(path)
    assert Plan.from_dict(manifest["plan"]) == PLAN
    assert manifest["meta"] == {"note": "hi"}
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["tensors"]["conv2.core.weight"]["shape"] == [6, 4, 3, 3]


def test_directory_layout_and_no_temp_files(compressed: nn.Module, tmp_path: Path) -> None:
    path = save_compressed(compressed, PLAN, tmp_path / "c", meta={"arch": ARCH})
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "model.safetensors"]


def test_tampered_weights_are_refused(compressed: nn.Module, tmp_path: Path) -> None:
    path = save_compressed(compressed, PLAN, tmp_path / "c", meta={"arch": ARCH})
    weights = path / "model.safetensors"
    state = load_file(str(weights))
    state["fc.last.bias"] = state["fc.last.bias"] + 1.0
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match="sha256"):
        load_compressed(path, builder=build)


def test_shape_mismatch_is_refused(compressed: nn.Module, tmp_path: Path) -> None:
    path = save_compressed(compressed, PLAN, tmp_path / "c", meta={"arch": ARCH})
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["plan"]["fc"]["ranks"] = [4]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"fc\.first\.weight"):
        load_compressed(path, builder=build)


def test_missing_tensor_is_refused(compressed: nn.Module, tmp_path: Path) -> None:
    path = save_compressed(compressed, PLAN, tmp_path / "c", meta={"arch": ARCH})
    weights = path / "model.safetensors"
    state = load_file(str(weights))
    del state["bn.running_mean"]
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match="missing"):
        load_compressed(path, builder=build)


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        ('{"format": "other"}', "not a rankopt"),
        ('{"format": "rankopt.compressed", "format_version": 99}', "format version"),
    ],
)
def test_malformed_manifests_are_refused(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(CheckpointError, match=match):
        load_compressed(tmp_path, builder=build)


def test_missing_and_non_checkpoint_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_compressed(tmp_path / "nothing", builder=build)
    with pytest.raises(CheckpointError, match=r"manifest\.json"):
        load_compressed(tmp_path, builder=build)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_compressed(junk, builder=build)
    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="manifest"):
        load_compressed(plain, builder=build)


def test_pickled_checkpoint_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (marker.write_text, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "model.safetensors")
    (tmp_path / "manifest.json").write_text(
        json.dumps({"format": "rankopt.compressed", "format_version": 1, "arch": ARCH, "plan": {}})
    )
    with pytest.raises(CheckpointError):
        load_compressed(tmp_path, builder=build)
    assert not marker.exists()


def test_meta_must_name_an_architecture(compressed: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="arch"):
        save_compressed(compressed, PLAN, tmp_path / "c", meta={})
    with pytest.raises(CheckpointError, match="JSON"):
        save_compressed(compressed, PLAN, tmp_path / "c", meta={"arch": ARCH, "x": object()})


def test_unknown_architecture_provider(compressed: nn.Module, tmp_path: Path) -> None:
    path = save_compressed(compressed, PLAN, tmp_path / "c", meta={"arch": ARCH})
    with pytest.raises(CheckpointError, match="architecture provider"):
        load_compressed(path)


def test_torchscript_export_matches(compressed: nn.Module, tmp_path: Path) -> None:
    x = torch.randn(2, 1, 8, 8)
    path = export_torchscript(compressed, x, tmp_path / "model.pt")
    loaded = torch.jit.load(str(path))
    torch.testing.assert_close(loaded(x), compressed(x))


def test_onnx_export_matches_with_dynamic_batch(compressed: nn.Module, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="the 'onnx' extra is not installed")
    path = export_onnx(compressed, torch.randn(2, 1, 8, 8), tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 8, 8)
    (out,) = session.run(None, {"input": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), compressed(x).detach(), atol=1e-4, rtol=1e-3)
