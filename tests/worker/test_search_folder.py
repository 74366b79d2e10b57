"""Real data at real size (issue 15): an image folder is streamed through the whole search.

``rankopt train``/``compress`` and the pool open data with ``open_dataset`` and hand the search
``DataSplits``: nothing decodes a split whole (``DataSplits.to_bundle`` is made to fail here),
a folder's teacher runs per batch rather than from a table, and ``image_size``/``preprocess``
reach the data layer from the CLI, the spec and the pool. A size the model cannot take is one
clear error naming ``image_size``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.torch import save_file

import worker.search._run as run_module
from service.settings import Settings
from service.store import ApiKeyRecord, Store
from tests.worker.pool_support import make_settings, submit
from worker.cli import EXIT_USAGE, main
from worker.data import DataBundle, DataSplits, FolderDataset, InputShapeError, open_dataset
from worker.search import SearchConfig, SearchContext, open_study, prepare, run_trials
from worker.split_record import (
    RECORD_KEY,
    DataRecord,
    check_split,
    read_record,
    reading_mismatch,
)
from worker.zoo import get_model

CLASSES = 3
PER_CLASS = 16
SIDE = 28


def _gray_folder(root: Path, name: str = "fm") -> Path:
    """A flat folder of 28x28 grayscale PNGs: class ``c`` is bright in horizontal band ``c``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    band = SIDE // CLASSES
    for c in range(CLASSES):
        folder = root / name / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            pixels = rng.integers(0, 60, size=(SIDE, SIDE), dtype=np.uint8)
            pixels[c * band : (c + 1) * band] += 180
            Image.fromarray(pixels, mode="L").save(folder / f"{i:03d}.png")
    return root


@pytest.fixture
def no_bundles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any decoding of a whole split into tensors (``load_dataset`` goes through it)."""

    def refuse(self: DataSplits) -> DataBundle:
        raise AssertionError(f"{self.name}: a split was decoded whole (to_bundle)")

    monkeypatch.setattr(DataSplits, "to_bundle", refuse)


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _gray_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def lenet_weights(folder_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet-5 trained by ``rankopt train`` on the folder at 28x28 (one channel)."""
    weights = tmp_path_factory.mktemp("weights") / "lenet.safetensors"
    argv = ["train", "--arch", "rankopt:lenet5", "--dataset", "folder:fm", "--epochs", "4"]
    argv += ["--image-size", str(SIDE), "--data-root", str(folder_root), "--device", "cpu"]
    assert main([*argv, "--batch-size", "16", "--out", str(weights)]) == 0
    return weights


def _compress(weights: Path, root: Path, out: Path, *extra: str) -> list[str]:
    argv = ["compress", "--arch", "rankopt:lenet5", "--weights", str(weights)]
    argv += ["--dataset", "folder:fm", "--data-root", str(root), "--out", str(out)]
    argv += ["--trials", "2", "--epochs-per-trial", "1", "--final-epochs", "1"]
    argv += ["--verify-top", "1", "--lr-scales", "1", "--batch-size", "16", "--device", "cpu"]
    return [*argv, "--max-accuracy-drop", "100", *extra]


def test_a_grayscale_folder_gives_one_channel_examples_at_image_size(
    folder_root: Path, no_bundles: None
) -> None:
    splits = open_dataset("folder:fm", allowed_roots=[folder_root], image_size=SIDE)
    assert splits.input_shape == (1, SIDE, SIDE)  # LeNet-5's input
    assert isinstance(splits.train, FolderDataset) and not splits.train.in_memory
    assert splits.example_input(4).shape == (4, 1, SIDE, SIDE)
    smaller = open_dataset("folder:fm", allowed_roots=[folder_root], image_size=14)
    assert smaller.input_shape == (1, 14, 14)
    imagenet = open_dataset("folder:fm", allowed_roots=[folder_root], preprocess="imagenet")
    assert imagenet.input_shape == (3, 224, 224)  # the preset is RGB, for pretrained models


def test_one_colour_image_makes_a_folder_rgb(tmp_path: Path) -> None:
    from PIL import Image

    root = _gray_folder(tmp_path)
    Image.new("RGB", (SIDE, SIDE), (200, 10, 10)).save(root / "fm" / "class0" / "red.png")
    splits = open_dataset("folder:fm", allowed_roots=[root], image_size=SIDE)
    assert splits.input_shape == (3, SIDE, SIDE)
    assert splits.example_input(2).shape == (2, 3, SIDE, SIDE)  # grayscale images repeated


def test_rankopt_compress_streams_an_image_folder_through_the_search(
    folder_root: Path,
    lenet_weights: Path,
    tmp_path: Path,
    no_bundles: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    contexts: list[SearchContext] = []
    real_prepare = run_module.prepare

    def recording(*args: Any, **kwargs: Any) -> SearchContext:
        ctx = real_prepare(*args, **kwargs)
        contexts.append(ctx)
        return ctx

    monkeypatch.setattr(run_module, "prepare", recording)
    out = tmp_path / "run"
    assert main(_compress(lenet_weights, folder_root, out, "--image-size", str(SIDE))) == 0
    (ctx,) = contexts
    assert isinstance(ctx.data.train, FolderDataset) and isinstance(ctx.data.val, FolderDataset)
    assert ctx.teacher_logits is None and ctx.teacher is not None  # no table for a folder
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["image_size"] == SIDE
    assert report["search"]["preprocess"] == "resize"
    sizes = ctx.data.sizes()
    assert report["data"]["train"] == sizes["train"] and report["data"]["val"] == sizes["val"]
    assert report["test"]["n"] == sizes["test"]  # the held-out split, read by the report only
    assert report["final"]["test_accuracy"] is not None


def test_prepare_and_trials_run_on_folder_splits(folder_root: Path, no_bundles: None) -> None:
    import optuna

    splits = open_dataset("folder:fm", allowed_roots=[folder_root], image_size=SIDE)
    model = get_model("rankopt:lenet5", num_classes=CLASSES, in_channels=1)
    config = SearchConfig(
        trials=2,
        epochs_per_trial=1,
        final_epochs=0,
        lr_scales=(1.0,),
        device="cpu",
        batch_size=16,
        sensitivity_samples=8,
        sensitivity_points=2,
        distill_weight=0.0,
    )
    ctx = prepare(model, splits, config)
    assert ctx.data is splits and ctx.example.shape == (1, 1, SIDE, SIDE)
    study = open_study(ctx, storage=optuna.storages.InMemoryStorage(), study_name="folder")
    run_trials(ctx, study)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2


def test_a_wrong_image_size_is_one_clear_error_naming_image_size(
    folder_root: Path,
    lenet_weights: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    capsys.readouterr()
    argv = _compress(lenet_weights, folder_root, tmp_path / "run")  # the default size: 32
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "[input_shape_mismatch]" in err and "image_size" in err and "--image-size" in err
    assert "1x32x32" in err and "1x28x28" in err  # what the data is, what LeNet-5 takes
    assert "Traceback" not in err
    train = ["train", "--arch", "rankopt:lenet5", "--dataset", "folder:fm", "--device", "cpu"]
    train += ["--data-root", str(folder_root), "--out", str(tmp_path / "w.safetensors")]
    assert main([*train, "--image-size", "20"]) == EXIT_USAGE
    assert "1x20x20" in capsys.readouterr().err


def test_cifar10_refuses_another_image_size_rather_than_ignoring_it(tmp_path: Path) -> None:
    from worker.data import DatasetError

    with pytest.raises(DatasetError, match="image_size must be 32"):
        open_dataset("cifar10:x", allowed_roots=[tmp_path], image_size=28)
    with pytest.raises(DatasetError, match="preprocess"):
        open_dataset("digits", preprocess="crop")  # checked, though built-ins ignore it
    digits = open_dataset("digits", image_size=28)  # built-ins keep their own size
    assert digits.input_shape == (1, 8, 8)


@pytest.fixture
def settings(tmp_path: Path, folder_root: Path) -> Settings:
    """The pool's settings (the ``store`` and ``owner`` fixtures use them), the folder allowed."""
    return make_settings(tmp_path, allowed_data_roots=[folder_root])


def test_the_pool_opens_a_folder_at_the_specs_image_size(
    settings: Settings, store: Store, owner: ApiKeyRecord, tmp_path: Path, no_bundles: None
) -> None:
    from worker.pool._inputs import BadInput, load_inputs, parse_spec

    model = get_model("rankopt:lenet5", num_classes=CLASSES, in_channels=1)
    weights = tmp_path / "lenet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    spec = {"arch": "rankopt:lenet5", "dataset": "folder:fm"}
    job = submit(store, settings, owner, weights, **spec, image_size=SIDE)
    inputs = load_inputs(settings, job, parse_spec(job.spec))
    assert inputs.data.input_shape == (1, SIDE, SIDE)
    assert isinstance(inputs.data.train, FolderDataset)  # streamed, not decoded
    wrong = submit(store, settings, owner, weights, **spec)  # image_size 32 by default
    with pytest.raises(BadInput, match="image_size") as info:
        load_inputs(settings, wrong, parse_spec(wrong.spec))
    assert info.value.code == InputShapeError.code


def test_train_records_how_the_images_were_read_and_compress_warns_on_another_reading(
    folder_root: Path, lenet_weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = read_record(lenet_weights)
    assert record is not None
    assert (record.image_size, record.preprocess) == (SIDE, "resize")
    assert check_split(record, "folder:fm", 0, image_size=SIDE, preprocess="resize") is None
    with caplog.at_level(logging.WARNING, logger="worker.split_record"):
        problem = check_split(record, "folder:fm", 0, image_size=32, preprocess="resize")
    assert problem is not None and "'resize' at 28 px" in problem and "'resize' at 32 px" in problem
    assert "--preprocess resize --image-size 28" in caplog.text
    # imagenet crops to 224 whatever the size: only the preset is compared
    imagenet = replace(record, preprocess="imagenet", image_size=64)
    assert check_split(imagenet, "folder:fm", 0, image_size=128, preprocess="imagenet") is None
    assert reading_mismatch(imagenet, "folder:fm", 28, "resize") is not None
    # not an image source, or weights from before the fields: the split only
    assert reading_mismatch(record, "digits", 32, "imagenet") is None
    older = DataRecord.from_metadata({RECORD_KEY: '{"dataset": "folder:fm", "split_seed": 0}'})
    assert older is not None and older.image_size is None
    assert check_split(older, "folder:fm", 0, image_size=32, preprocess="imagenet") is None
