"""Tests for worker.weights: reading user weight files safely and fitting them to a model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from worker.weights import WeightsError, load_weights, read_state_dict
from worker.zoo import get_model


class _Payload:
    """Unpickling this writes ``marker``: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.fixture
def model() -> nn.Module:
    return get_model("rankopt:tinycnn", num_classes=10)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _outputs_equal(a: nn.Module, b: nn.Module) -> bool:
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


# --------------------------------------------------------------------------- reading


def test_safetensors_round_trip(model: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(_state(model), str(path))
    state = read_state_dict(path)
    assert set(state) == set(model.state_dict())
    fresh = get_model("rankopt:tinycnn", num_classes=10)
    assert not _outputs_equal(fresh, model)  # different random init, so the load matters
    load_weights(fresh, state)
    assert _outputs_equal(fresh, model)


def test_pt_state_dict_round_trip(model: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    state = read_state_dict(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(state[name], tensor)
    fresh = load_weights(get_model("rankopt:tinycnn", num_classes=10), state)
    assert _outputs_equal(fresh, model)


def test_state_dict_wrapped_in_a_checkpoint_dict(model: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 7, "best_acc": 0.9}, path)
    state = read_state_dict(path)
    assert set(state) == set(model.state_dict())
    assert _outputs_equal(load_weights(get_model("rankopt:tinycnn", num_classes=10), state), model)


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    # Control: the payload is live, an unrestricted load runs it.
    control = tmp_path / "control-marker"
    torch.save({"w": _Payload(control)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists()

    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(2), "evil": _Payload(marker)}, path)
    with pytest.raises(WeightsError, match="refused"):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [
        [torch.ones(2)],  # not a dict
        torch.ones(3),  # a bare tensor
        {"weight": 1.5},  # a non-tensor value
        {1: torch.ones(2)},  # a non-string key
        {"state_dict": {"weight": "text"}},  # wrapped, with a non-tensor inside
    ],
    ids=["list", "tensor", "float-value", "int-key", "wrapped-str"],
)
def test_non_state_dict_contents_refused(content: object, tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(content, path)
    with pytest.raises(WeightsError, match="state_dict"):
        read_state_dict(path)


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("empty.pt", b""),
        ("text.pt", b"hello, not a checkpoint\n"),
        ("garbage.pt", b"\x00\x01\x02garbage" * 20),
        ("garbage.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage"),
        ("empty.safetensors", b""),
    ],
)
def test_unreadable_files_give_weights_error(name: str, payload: bytes, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(WeightsError, match=name):
        read_state_dict(path)


def test_missing_file_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        read_state_dict(tmp_path / "nope.safetensors")


def test_oversized_file_refused_before_reading(model: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(_state(model), str(path))
    size = path.stat().st_size
    assert read_state_dict(path, max_bytes=size)  # exactly at the limit is fine
    with pytest.raises(WeightsError, match=rf"{size} bytes; the limit is {size - 1}"):
        read_state_dict(path, max_bytes=size - 1)


# --------------------------------------------------------------------------- fitting


def test_missing_and_unexpected_keys_named(model: nn.Module) -> None:
    state = _state(model)
    del state["classifier.bias"]
    state["head.extra"] = torch.zeros(3)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(WeightsError) as info:
        load_weights(model, state)
    message = str(info.value)
    assert "1 missing" in message and "classifier.bias" in message
    assert "1 unexpected" in message and "head.extra" in message
    for name, tensor in model.state_dict().items():  # nothing was loaded
        assert torch.equal(tensor, before[name])


def test_shape_mismatch_named(model: nn.Module) -> None:
    state = _state(get_model("rankopt:tinycnn", num_classes=7))
    with pytest.raises(WeightsError, match=r"'classifier\.(weight|bias)' has shape"):
        load_weights(model, state)


def test_nan_weights_named(model: nn.Module) -> None:
    state = _state(model)
    state["features.2.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(WeightsError, match=r"'features\.2\.weight' contains NaN"):
        load_weights(model, state)


def test_infinite_weights_named(model: nn.Module) -> None:
    state = _state(model)
    state["classifier.bias"][3] = float("inf")
    with pytest.raises(WeightsError, match=r"'classifier\.bias' contains NaN or infinite"):
        load_weights(model, state)


def test_integer_tensor_for_float_parameter_named(model: nn.Module) -> None:
    state = _state(model)
    state["features.0.bias"] = torch.zeros(16, dtype=torch.int64)
    with pytest.raises(WeightsError, match=r"'features\.0\.bias' has dtype torch\.int64"):
        load_weights(model, state)


def test_half_precision_weights_cast_to_model_dtype(model: nn.Module) -> None:
    state = {k: v.half() for k, v in _state(model).items()}
    load_weights(model, state)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model.state_dict()["classifier.weight"], state["classifier.weight"].float())
