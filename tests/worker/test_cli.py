"""Tests for the ``rankopt`` command line: train, compress, and one-line usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from tensorops import load_compressed
from tensorops.checkpoint import read_manifest
from worker.cli import EXIT_USAGE, main
from worker.data import load_dataset
from worker.training import evaluate
from worker.weights import load_weights, read_state_dict
from worker.zoo import get_model

TINY = ["--trials", "5", "--epochs-per-trial", "2", "--final-epochs", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tinycnn trained on digits through ``rankopt train``, once for the module."""
    out = tmp_path_factory.mktemp("cli") / "nested" / "tinycnn.safetensors"
    code = main(
        [
            "train",
            "--arch",
            "rankopt:tinycnn",
            "--dataset",
            "digits",
            "--epochs",
            "15",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out


def _compress(weights: Path, out: Path, *extra: str) -> list[str]:
    return [
        "compress",
        "--arch",
        "rankopt:tinycnn",
        "--weights",
        str(weights),
        "--dataset",
        "digits",
        "--out",
        str(out),
        *TINY,
        *extra,
    ]


def test_train_writes_loadable_safetensors(weights: Path) -> None:
    assert weights.is_file()
    state = load_file(str(weights))
    model = get_model("rankopt:tinycnn", num_classes=10)
    assert set(state) == set(model.state_dict())
    load_weights(model, read_state_dict(weights))
    assert evaluate(model, load_dataset("digits"), device="cpu").accuracy > 0.85


def test_train_reports_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "w.safetensors"
    args = ["train", "--arch", "rankopt:tinycnn", "--dataset", "digits", "--epochs", "1"]
    code = main([*args, "--device", "cpu", "--out", str(out)])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "trained rankopt:tinycnn on digits: val accuracy" in stdout
    assert str(out) in stdout
    assert out.is_file()


def test_train_seed_fixes_the_weights(tmp_path: Path) -> None:
    def run(name: str, seed: int) -> dict[str, Any]:
        out = tmp_path / name
        args = ["train", "--arch", "rankopt:tinycnn", "--dataset", "digits", "--epochs", "1"]
        assert main([*args, "--seed", str(seed), "--device", "cpu", "--out", str(out)]) == 0
        return load_file(str(out))

    torch.manual_seed(123)  # the caller's RNG state must not matter
    first = run("a.safetensors", 0)
    second = run("b.safetensors", 0)
    other = run("c.safetensors", 1)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["features.0.weight"], other["features.0.weight"])


def test_compress_writes_outputs_and_prints_json(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "job"
    # Two epochs a trial recover little: a loose tolerance keeps the x1.5 seed feasible.
    code = main(_compress(weights, out, "--max-accuracy-drop", "20"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out[captured.out.index("{") :])
    report = json.loads((out / "report.json").read_text())
    assert summary["params_ratio"] == report["ratios"]["params"]
    assert summary["macs_ratio"] == report["ratios"]["macs"]
    # the default calibration tried three learning-rate multipliers and used one of them
    calibration = report["lr_calibration"]
    assert [s for s, _ in calibration["accuracies"]] == [1.0, 0.3, 0.1]
    assert calibration["scale"] in (1.0, 0.3, 0.1)
    assert summary["final_accuracy"] == report["final"]["accuracy"]
    assert summary["baseline_accuracy"] == report["baseline"]["accuracy"]
    assert report["found_feasible"]
    assert summary["params_ratio"] > 1
    assert summary["accuracy_drop"] == report["final"]["accuracy_drop"]
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "study.db").is_file()  # the default storage, for resuming
    assert len([t for t in report["trials"] if t["state"] != "WAITING"]) == 5
    assert report["search"]["epochs_per_trial"] == 2
    # both seeds are recorded: the search's and the data split's (issue 19)
    assert (report["search"]["seed"], report["search"]["split_seed"]) == (0, 0)
    assert report["data"]["split_seed"] == 0
    meta = read_manifest(summary["checkpoint"])["meta"]
    assert (meta["data"], meta["seed"], meta["split_seed"]) == ("digits", 0, 0)
    assert report["arch"] == {
        "arch": "rankopt:tinycnn",
        "kwargs": {"num_classes": 10, "in_channels": 1},
    }
    model = load_compressed(summary["checkpoint"])
    data = load_dataset("digits")
    assert evaluate(model, data, device="cpu").accuracy == summary["final_accuracy"]


@pytest.fixture
def wrong_weights(tmp_path: Path) -> Path:
    """Weights of tinycnn built for 7 classes: same names, a different head shape."""
    path = tmp_path / "seven.safetensors"
    state = get_model("rankopt:tinycnn", num_classes=7).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"--arch": "rankopt:nope"}, "rankopt:nope"),
        ({"--arch": "rankopt:lenet5"}, "missing"),
        ({"--weights": "MISSING"}, "does not exist"),
        ({"--weights": "WRONG"}, "classifier.bias"),
        ({"--dataset": "nosuch"}, "nosuch"),
        ({"--rank-scale": "abc"}, "--rank-scale"),
        ({"--rank-scale": "2,1"}, "rank_scale"),
        ({"--methods": "tucker2,foo"}, "foo"),
        ({"--device": "tpu"}, "tpu"),
        ({"--trials": "0"}, "trials"),
        ({"--batch-size": "0"}, "batch_size"),
        ({"--distill": "1.5"}, "distill_weight"),
        ({"--verify-top": "0"}, "verify_top"),
        ({"--lr-scales": "1,x"}, "--lr-scales"),
        ({"--lr-scales": "1,-0.5"}, "lr_scales"),
        ({"--push-factor": "1.5"}, "push_factor"),
    ],
    ids=[
        "unknown-arch",
        "other-arch",
        "missing-weights",
        "shape-mismatch",
        "unknown-dataset",
        "rank-scale-text",
        "rank-scale-order",
        "unknown-method",
        "bad-device",
        "no-trials",
        "zero-batch",
        "distill-above-one",
        "no-verification",
        "lr-scales-text",
        "lr-scales-negative",
        "push-factor-above-one",
    ],
)
def test_compress_usage_errors_are_one_line(
    change: dict[str, str],
    needle: str,
    weights: Path,
    wrong_weights: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = _compress(weights, tmp_path / "job")
    for flag, value in change.items():
        if value == "MISSING":
            value = str(tmp_path / "absent.safetensors")
        elif value == "WRONG":
            value = str(wrong_weights)
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    code = main(args)
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rankopt compress: error:")
    assert needle in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "job" / "report.json").exists()


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--device", "tpu", "tpu"),
        ("--lr", "-1", "--lr"),
        ("--batch-size", "0", "--batch-size"),
        ("--epochs", "0", "--epochs"),
        ("--dataset", "nosuch", "nosuch"),
    ],
)
def test_train_usage_errors_are_one_line(
    flag: str, value: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "w.safetensors"
    args = ["train", "--arch", "rankopt:tinycnn", "--dataset", "digits", "--epochs", "1"]
    args += ["--device", "cpu", "--out", str(out)]
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    code = main(args)
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rankopt train: error:")
    assert needle in lines[0]
    assert not out.exists()


def test_missing_required_argument_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["compress", "--arch", "rankopt:tinycnn"])
    assert info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("rankopt compress: error:")
    assert "Traceback" not in err


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "rankopt"
    assert script.is_file()
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "compress" in done.stdout and "train" in done.stdout
