"""Tests of the training loop reading datasets: sample budgets, augmentation, DataLoader paths,
distillation from a table or the teacher per batch, and splits that ignore the search seed."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from worker.data import ArrayDataset, DataBundle, DataSplits, load_dataset, open_dataset
from worker.training import (
    LoaderOptions,
    ScheduleConfig,
    evaluate,
    finetune,
    predict_logits,
    use_teacher_table,
)

FAST = ScheduleConfig(kind="triangular", base_lr=0.01, max_lr=0.1, cycle_epochs=1.0)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_dataset("digits")


def tiny_net(seed: int = 0, channels: int = 1) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),  # (N, 8, 2, 2)
        nn.Flatten(),
        nn.Linear(32, 10),
    )


class Counting(ArrayDataset):
    """An in-memory split that records the keys of every example read."""

    def __init__(self, base: ArrayDataset) -> None:
        super().__init__(base.x, base.targets, ids=base.ids)
        self.read: list[str] = []

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.read.extend(self.key(int(i)) for i in indices)
        return super().batch(indices)


def _counting(bundle: DataBundle) -> DataSplits:
    splits = bundle.splits()
    assert splits.test is not None
    return DataSplits(
        name=splits.name,
        train=Counting(splits.train),  # type: ignore[arg-type]
        val=Counting(splits.val),  # type: ignore[arg-type]
        test=Counting(splits.test),  # type: ignore[arg-type]
        num_classes=10,
    )


def _digest(image: torch.Tensor) -> str:
    return hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()


def _weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# --- sample budgets ------------------------------------------------------------------------------


def test_samples_per_epoch_reads_a_fresh_subset_each_epoch(digits: DataBundle) -> None:
    splits = _counting(digits)
    train, val = splits.train, splits.val
    assert isinstance(train, Counting) and isinstance(val, Counting)
    result = finetune(
        tiny_net(),
        splits,
        FAST,
        epochs=3,
        batch_size=32,
        device="cpu",
        samples_per_epoch=100,
        val_samples=50,
    )
    assert result.status == "completed" and result.epochs_run == 3
    assert len(train.read) == 300  # 3 epochs x 100 examples
    epochs = [set(train.read[i * 100 : (i + 1) * 100]) for i in range(3)]
    assert all(len(e) == 100 for e in epochs) and epochs[0] != epochs[1]
    assert len(val.read) == 150  # 50 per epoch, the final result reuses the last evaluation
    assert set(val.read[:50]) == set(val.read[50:100])  # a fixed subset
    assert splits.test is not None and not splits.test.read  # type: ignore[attr-defined]
    steps_full = finetune(tiny_net(), digits, FAST, epochs=1, batch_size=32, device="cpu")
    assert result.steps_run == 3 * 4 and steps_full.steps_run > 4


def test_budget_larger_than_the_split_is_clamped_and_logged(
    digits: DataBundle, caplog: pytest.LogCaptureFixture
) -> None:
    splits = _counting(digits)
    with caplog.at_level(logging.INFO, logger="worker.training"):
        finetune(
            tiny_net(),
            splits,
            FAST,
            epochs=1,
            device="cpu",
            samples_per_epoch=10**6,
            val_samples=10**6,
        )
    assert len(splits.train.read) == len(splits.train)  # type: ignore[attr-defined]
    assert len(set(splits.val.read)) == len(splits.val)  # type: ignore[attr-defined]
    text = caplog.text
    assert "samples_per_epoch=1000000 exceeds" in text and "max_samples=1000000 exceeds" in text


def test_evaluate_max_samples_is_a_fixed_seeded_subset(digits: DataBundle) -> None:
    model = tiny_net()
    first = evaluate(model, digits, device="cpu", max_samples=100, seed=3)
    again = evaluate(model, digits, device="cpu", max_samples=100, seed=3)
    whole = evaluate(model, digits, device="cpu", max_samples=10**6)
    assert first == again and first.n == 100
    assert whole.n == len(digits.y_val) == evaluate(model, digits, device="cpu").n
    test = evaluate(model, digits, device="cpu", split="test")
    assert digits.y_test is not None and test.n == len(digits.y_test)
    with pytest.raises(ValueError, match="max_samples"):
        evaluate(model, digits, device="cpu", max_samples=0)


def test_evaluating_a_missing_test_split_gives_the_reason() -> None:
    bundle = load_dataset("digits", test_fraction=0.0)
    with pytest.raises(ValueError, match=r"no test split.*test_fraction=0"):
        evaluate(tiny_net(), bundle, device="cpu", split="test")


# --- splits belong to the data, not the search (issue 19) ----------------------------------------


@pytest.mark.parametrize("search_seed", [0, 1, 7])
def test_search_seed_never_brings_training_images_into_val_or_test(search_seed: int) -> None:
    """Train with split seed 0, then "search" with another seed: the search reloads the data
    with the same split seed (the default), and whatever its seed samples is training data."""
    trained_on = open_dataset("mnist5k", max_train=600)
    train_keys = {_digest(trained_on.train.image(i)) for i in range(len(trained_on.train))}
    searched = _counting(load_dataset("mnist5k", max_train=600))  # split_seed stays 0 (no ids:
    # keys are pixel digests, so images are compared, not indices)
    finetune(
        tiny_net(),
        searched,
        FAST,
        epochs=1,
        device="cpu",
        seed=search_seed,
        samples_per_epoch=200,
        val_samples=100,
    )
    held_out = {searched.val.key(i) for i in range(len(searched.val))}
    assert searched.test is not None
    held_out |= {searched.test.key(i) for i in range(len(searched.test))}
    assert not train_keys & held_out
    assert set(searched.train.read) <= train_keys  # type: ignore[attr-defined]
    assert not set(searched.val.read) - held_out  # type: ignore[attr-defined]


# --- augmentation and DataLoader paths -----------------------------------------------------------


def test_augmented_finetune_is_seeded(digits: DataBundle) -> None:
    def run(seed: int) -> torch.Tensor:
        model = tiny_net()
        finetune(model, digits, FAST, epochs=1, device="cpu", seed=seed, augment="crop-flip")
        return _weights(model)

    plain = tiny_net()
    finetune(plain, digits, FAST, epochs=1, device="cpu", seed=0)
    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    assert not torch.equal(run(0), _weights(plain))  # the augmentation did something
    with pytest.raises(ValueError, match="augment"):
        finetune(tiny_net(), digits, FAST, epochs=1, device="cpu", augment="mixup")


def _folder(root: Path) -> DataSplits:
    from PIL import Image

    for c in range(3):
        for i in range(8):
            path = root / "ds" / f"class{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (10, 10), (80 * c, 20 * i, 100)).save(path)
    return open_dataset("folder:ds", allowed_roots=[root], image_size=8)


def test_finetune_streams_a_folder_through_a_dataloader(tmp_path: Path) -> None:
    splits = _folder(tmp_path)
    results = []
    for options in (LoaderOptions(), LoaderOptions(num_workers=1)):
        model = tiny_net(channels=3)
        result = finetune(
            model, splits, FAST, epochs=2, batch_size=4, device="cpu", seed=5, loader=options
        )
        assert result.status == "completed"
        results.append(_weights(model))
    assert torch.equal(results[0], results[1])  # worker processes change nothing
    model = tiny_net(channels=3)
    one = finetune(
        model, splits, FAST, epochs=1, device="cpu", augment="crop-flip", samples_per_epoch=6
    )
    assert one.status == "completed"


def test_loader_options_validated_and_cuda_defaults() -> None:
    with pytest.raises(ValueError, match="num_workers"):
        LoaderOptions(num_workers=-1)
    cuda = LoaderOptions(num_workers=2).loader_kwargs(torch.device("cuda"))
    assert cuda["pin_memory"] is True and cuda["persistent_workers"] is True
    cpu = LoaderOptions(num_workers=2).loader_kwargs(torch.device("cpu"))
    assert cpu["pin_memory"] is False and cpu["persistent_workers"] is False
    assert "persistent_workers" not in LoaderOptions().loader_kwargs(torch.device("cuda"))


# --- distillation: a table or the teacher on each batch ------------------------------------------


def test_teacher_per_batch_gives_the_same_loss_as_the_table(digits: DataBundle) -> None:
    teacher = tiny_net(seed=9)
    finetune(teacher, digits, FAST, epochs=2, device="cpu")
    table = predict_logits(teacher, digits.x_train, device="cpu")
    assert torch.allclose(table, predict_logits(teacher, digits.train, device="cpu"))
    options = {"epochs": 2, "device": "cpu", "seed": 3, "distill_weight": 0.7}
    with_table, online = tiny_net(), tiny_net()
    a = finetune(with_table, digits, FAST, teacher_logits=table, **options)  # type: ignore[arg-type]
    b = finetune(online, digits, FAST, teacher=teacher, **options)  # type: ignore[arg-type]
    for ra, rb in zip(a.history, b.history, strict=True):
        assert ra.train_loss == pytest.approx(rb.train_loss, rel=1e-5)
    assert torch.allclose(_weights(with_table), _weights(online), atol=1e-5)
    with pytest.raises(ValueError, match="augment"):
        finetune(tiny_net(), digits, FAST, teacher_logits=table, augment="crop-flip", **options)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        finetune(tiny_net(), digits, FAST, teacher_logits=table, teacher=teacher, **options)  # type: ignore[arg-type]
    augmented = finetune(tiny_net(), digits, FAST, teacher=teacher, augment="crop-flip", **options)  # type: ignore[arg-type]
    assert augmented.status == "completed"


def test_use_teacher_table_only_when_cheap_and_exact() -> None:
    assert use_teacher_table(55_000, 10)
    assert not use_teacher_table(55_000, 10, augment="crop-flip")
    assert not use_teacher_table(55_000, 10, in_memory=False)
    assert not use_teacher_table(1_281_167, 1000)
