"""Tests of worker.data's three splits: train/val/test per source, split seeds, bad splits,
Fashion-MNIST, transforms, and image folders streamed under a memory cap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from worker.data import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_PACKAGE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetError,
    DataSplits,
    FolderDataset,
    LabeledDataset,
    MissingDatasetPackageError,
    SplitError,
    check_augment,
    imagenet_eval_transform,
    load_dataset,
    open_dataset,
    open_fashion_mnist,
    train_transform,
)

HAS_FASHION = (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(
    not HAS_FASHION, reason=f"Debian package {FASHION_MNIST_PACKAGE} is not installed"
)


def _keys(dataset: LabeledDataset | None) -> set[str]:
    return set() if dataset is None else {dataset.key(i) for i in range(len(dataset))}


def _assert_disjoint(splits: DataSplits) -> None:
    train, val, test = _keys(splits.train), _keys(splits.val), _keys(splits.test)
    assert len(train) == len(splits.train) and len(val) == len(splits.val)  # keys are unique
    assert not train & val and not train & test and not val & test


# --- built-ins -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_builtins_carve_a_documented_test_split(name: str) -> None:
    splits = open_dataset(name)
    assert splits.test is not None and "carved out" in splits.test_note
    sizes = splits.sizes()
    total = sum(v for v in sizes.values() if v is not None)
    assert sizes["val"] == pytest.approx(0.2 * total, abs=10)
    assert sizes["test"] == pytest.approx(0.2 * total, abs=10)
    assert set(splits.test.targets.tolist()) == set(range(10))  # stratified
    _assert_disjoint(splits)


def test_test_fraction_zero_means_no_test_split_with_a_reason() -> None:
    splits = open_dataset("digits", test_fraction=0.0)
    assert splits.test is None and "test_fraction=0" in splits.test_note
    with pytest.raises(DatasetError, match="no test split"):
        splits.split("test")
    bundle = splits.to_bundle()
    assert bundle.test is None and bundle.x_test is None
    assert len(bundle.y_train) + len(bundle.y_val) == 1797


def test_split_seed_moves_val_and_test_but_never_overlaps() -> None:
    a, b = open_dataset("digits", split_seed=0), open_dataset("digits", split_seed=1)
    assert _keys(a.val) != _keys(b.val) and _keys(a.test) != _keys(b.test)
    for splits in (a, b):
        _assert_disjoint(splits)
    again = open_dataset("digits", split_seed=1)
    assert _keys(again.val) == _keys(b.val) and _keys(again.test) == _keys(b.test)


def test_old_seed_keyword_is_the_split_seed() -> None:
    assert torch.equal(
        load_dataset("digits", seed=2).y_val, load_dataset("digits", split_seed=2).y_val
    )
    with pytest.raises(DatasetError, match="split_seed"):
        load_dataset("digits", seed=2, split_seed=3)


# --- Fashion-MNIST -------------------------------------------------------------------------------


@needs_fashion
def test_fashion_mnist_official_test_and_carved_val() -> None:
    splits = open_dataset("fashion-mnist")
    assert splits.sizes() == {"train": 55_000, "val": 5_000, "test": 10_000}
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert np.bincount(splits.val.labels()).tolist() == [500] * 10  # stratified
    assert splits.test is not None and "official" in splits.test_note
    _assert_disjoint(splits)
    x, y = splits.train[0]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28) and int(y) in range(10)
    capped = open_dataset("fashion-mnist", max_train=1000, split_seed=3)
    assert capped.sizes() == {"train": 1000, "val": 5000, "test": 10_000}


def test_fashion_mnist_missing_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(MissingDatasetPackageError, match=FASHION_MNIST_PACKAGE) as info:
        open_fashion_mnist(root=tmp_path)
    assert info.value.code == "dataset_package_missing"
    assert info.value.package == FASHION_MNIST_PACKAGE


# --- uploaded arrays with a test split -----------------------------------------------------------


def _arrays(rng: np.random.Generator, n: int, shape: tuple[int, ...] = (8, 8)) -> np.ndarray:
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return str(path)


def _base(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "x_train": _arrays(rng, 20),
        "y_train": np.arange(20) % 3,
        "x_val": _arrays(rng, 6),
        "y_val": np.arange(6) % 3,
    }


def test_npz_with_a_test_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    source = _npz(tmp_path / "d.npz", **_base(rng), x_test=_arrays(rng, 9), y_test=np.arange(9) % 3)
    splits = open_dataset(source)
    assert splits.sizes() == {"train": 20, "val": 6, "test": 9}
    assert splits.test_note == "x_test/y_test of the file"
    bundle = load_dataset(source)
    assert bundle.x_test is not None and bundle.x_test.shape == (9, 1, 8, 8)


def test_npz_without_a_test_split_says_so(tmp_path: Path) -> None:
    splits = open_dataset(_npz(tmp_path / "d.npz", **_base(np.random.default_rng(0))))
    assert splits.test is None and "no x_test/y_test" in splits.test_note


@pytest.mark.parametrize(
    ("extra", "word"),
    [
        ({"x_test": np.zeros((3, 8, 8), np.uint8)}, "holds x_test but not y_test"),
        ({"y_test": np.zeros(3, np.int64)}, "holds y_test but not x_test"),
        ({"x_test": np.zeros((3, 9, 9), np.uint8), "y_test": np.zeros(3, np.int64)}, "shape"),
        ({"x_test": np.zeros((3, 8, 8), np.uint8), "y_test": np.zeros(4, np.int64)}, "labels"),
    ],
    ids=["x without y", "y without x", "other image shape", "count mismatch"],
)
def test_npz_bad_test_split(tmp_path: Path, extra: dict[str, np.ndarray], word: str) -> None:
    source = _npz(tmp_path / "d.npz", **_base(np.random.default_rng(0)), **extra)
    with pytest.raises(SplitError, match=word) as info:
        open_dataset(source)
    assert info.value.code == "dataset_split_invalid"


# --- image folders -------------------------------------------------------------------------------


def _png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _tree(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    for split, classes in layout.items():
        for index, (name, count) in enumerate(classes.items()):
            for i in range(count):
                _png(root / split / name / f"{split}{i}.png", (40 * index, 10 * i, 200))
    return root


def test_folder_with_train_val_test_trees(tmp_path: Path) -> None:
    _tree(
        tmp_path / "ds",
        {"train": {"a": 4, "b": 4}, "val": {"a": 2, "b": 1}, "test": {"a": 1, "b": 2}},
    )
    splits = open_dataset("folder:ds", allowed_roots=[tmp_path])
    assert splits.sizes() == {"train": 8, "val": 3, "test": 3}
    assert splits.test_note == "the folder's test/ tree"
    assert isinstance(splits.train, FolderDataset) and splits.train.classes == ["a", "b"]
    assert sorted(splits.test.targets.tolist()) == [0, 1, 1]  # type: ignore[union-attr]
    _assert_disjoint(splits)


def test_folder_train_tree_alone_carves_val_and_has_no_test(tmp_path: Path) -> None:
    _tree(tmp_path / "ds", {"train": {"a": 5, "b": 5}})
    splits = open_dataset("folder:ds", allowed_roots=[tmp_path], split_seed=4)
    assert splits.sizes() == {"train": 8, "val": 2, "test": None}
    assert "no test/ tree" in splits.test_note
    _assert_disjoint(splits)


def test_flat_folder_is_split_three_ways(tmp_path: Path) -> None:
    for index, name in enumerate(("a", "b")):
        for i in range(10):
            _png(tmp_path / "ds" / name / f"{i}.png", (100 * index, 5 * i, 0))
    splits = open_dataset("folder:ds", allowed_roots=[tmp_path])
    assert splits.sizes() == {"train": 12, "val": 4, "test": 4}
    _assert_disjoint(splits)


@pytest.mark.parametrize(
    ("layout", "word"),
    [
        ({"train": {"a": 5, "b": 5}, "test": {}}, "test/ holds no images"),
        ({"train": {"a": 5, "b": 5}, "test": {"a": 0, "b": 0}}, "test/ holds no images"),
        ({"train": {"a": 5, "b": 5}, "test": {"a": 1, "zebra": 1}}, "'zebra' that train/ lacks"),
        ({"train": {"a": 5, "b": 5}, "val": {"c": 1}}, "'c' that train/ lacks"),
    ],
    ids=["empty test/", "empty test classes", "class missing from train/", "val class"],
)
def test_folder_bad_trees(tmp_path: Path, layout: dict[str, dict[str, int]], word: str) -> None:
    _tree(tmp_path / "ds", layout)
    for split, classes in layout.items():
        (tmp_path / "ds" / split).mkdir(parents=True, exist_ok=True)
        for name in classes:
            (tmp_path / "ds" / split / name).mkdir(parents=True, exist_ok=True)
    with pytest.raises(SplitError, match=word):
        open_dataset("folder:ds", allowed_roots=[tmp_path])


def test_folder_imagenet_preset_shapes_and_statistics(tmp_path: Path) -> None:
    colour = (255, 128, 0)
    _tree(tmp_path / "ds", {"train": {"a": 3, "b": 3}, "test": {"a": 1}})
    for file in (tmp_path / "ds").rglob("*.png"):
        _png(file, colour, size=(300, 260))
    splits = open_dataset("folder:ds", allowed_roots=[tmp_path], preprocess="imagenet")
    assert splits.input_shape == (3, 224, 224)
    x, _ = splits.train[0]
    assert x.shape == (3, 224, 224)
    for channel in range(3):
        want = (colour[channel] / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert float(x[channel].mean()) == pytest.approx(want, abs=1e-3)
    with pytest.raises(DatasetError, match="preprocess"):
        open_dataset("folder:ds", allowed_roots=[tmp_path], preprocess="bicubic")


def test_folder_resize_preset_normalises_with_train_statistics(tmp_path: Path) -> None:
    for index, name in enumerate(("a", "b")):
        for i in range(6):
            _png(tmp_path / "ds" / name / f"{i}.png", (30 * i, 200 * index, 17 * i))
    splits = open_dataset("folder:ds", allowed_roots=[tmp_path], image_size=16)
    train = torch.stack([splits.train[i][0] for i in range(len(splits.train))])
    assert train.shape[1:] == (3, 16, 16)
    means = train.mean(dim=(0, 2, 3))
    stds = train.std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(means, torch.zeros(3), atol=1e-4)
    assert torch.allclose(stds[stds > 0], torch.ones_like(stds[stds > 0]), atol=1e-3)


# --- transforms ----------------------------------------------------------------------------------


def test_imagenet_eval_transform_on_tensors() -> None:
    x = torch.full((3, 300, 400), 0.5)
    y = imagenet_eval_transform()(x)
    assert y.shape == (3, 224, 224)
    want = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(y.mean(dim=(1, 2)), want, atol=1e-4)


@pytest.mark.parametrize("augment", ["crop-flip", "imagenet"])
def test_augmentation_keeps_shape_and_is_seeded(augment: str) -> None:
    transform = train_transform(augment, (3, 32, 32))
    assert transform is not None
    x = torch.arange(3 * 32 * 32, dtype=torch.float32).reshape(3, 32, 32)

    def draw(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [transform(x) for _ in range(4)]

    first, again, other = draw(0), draw(0), draw(1)
    assert all(t.shape == x.shape for t in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_crop_flip_pads_with_zeros_and_crops_a_window() -> None:
    transform = train_transform("crop-flip", (1, 8, 8))
    assert transform is not None
    x = torch.ones(1, 8, 8)
    torch.manual_seed(0)
    outs = [transform(x) for _ in range(30)]
    zero_share = [float((o == 0).float().mean()) for o in outs]
    assert max(zero_share) > 0  # some crops reach into the padding
    assert all(s <= 1 - (4 * 4) / 64 + 1e-6 for s in zero_share)  # at most 4 rows/cols shifted


def test_unknown_augmentation_is_refused() -> None:
    assert train_transform("none", (3, 8, 8)) is None
    with pytest.raises(DatasetError, match="augment"):
        check_augment("mixup")


# --- streaming under a memory cap ----------------------------------------------------------------


def _rss_bytes() -> int:
    import os

    with open("/proc/self/statm") as fp:
        return int(fp.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux)")
def test_folder_streams_under_a_memory_cap_the_in_memory_path_exceeds(tmp_path: Path) -> None:
    """400 images of 160x160: 123 MB once decoded as float32, read in batches of 32."""
    from PIL import Image
    from torch.utils.data import DataLoader

    side, count = 160, 400
    gradient = np.linspace(0, 255, side * side * 3).astype(np.uint8).reshape(side, side, 3)
    for i in range(count):
        path = tmp_path / "big" / f"c{i % 2}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(gradient, i, axis=0)).save(path, compress_level=1)
    decoded = count * 3 * side * side * 4
    cap = decoded // 3
    splits = open_dataset(
        "folder:big",
        allowed_roots=[tmp_path],
        image_size=side,
        val_fraction=0.1,
        test_fraction=0.0,
    )
    before = _rss_bytes()
    peak = 0
    seen = 0
    for xb, _ in DataLoader(splits.train, batch_size=32):
        seen += len(xb)
        peak = max(peak, _rss_bytes() - before)
    assert seen == len(splits.train) == 360
    assert peak < cap, f"streaming grew RSS by {peak / 2**20:.1f} MiB"
    before = _rss_bytes()
    bundle = splits.to_bundle()  # the in-memory path: everything decoded at once
    held = _rss_bytes() - before
    assert bundle.x_train.numel() * 4 > cap
    assert held > cap, f"decoding everything grew RSS by only {held / 2**20:.1f} MiB"
