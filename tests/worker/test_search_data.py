"""The search and its data: sample budgets honoured, the test split read only by the report."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from worker.data import ArrayDataset, DataBundle
from worker.search import SearchConfig, finalize, open_study, prepare, run_trials

ARCH = {"arch": "rankopt:tinycnn", "kwargs": {"num_classes": 10, "in_channels": 1}}


@dataclass
class Read:
    split: str
    examples: int
    in_report: bool  # read from inside the final report's held-out evaluation


@dataclass
class ReadLog:
    reads: list[Read] = field(default_factory=list)

    def of(self, split: str) -> list[Read]:
        return [r for r in self.reads if r.split == split]

    def examples(self, split: str) -> int:
        return sum(r.examples for r in self.of(split))


def _in_report() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "held_out":
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


class CountingDataset(ArrayDataset):
    """An in-memory split that records every read (views and subsets share the log)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, split: str, log: ReadLog) -> None:
        super().__init__(x, y)
        self.split = split
        self.log = log

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.log.reads.append(Read(self.split, int(indices.numel()), _in_report()))
        return super().batch(indices)

    def image(self, index: int) -> torch.Tensor:
        self.log.reads.append(Read(self.split, 1, _in_report()))
        return super().image(index)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.log.reads.append(Read(self.split, len(self), _in_report()))
        return super().tensors()


@dataclass(frozen=True)
class CountingBundle(DataBundle):
    """A bundle whose dataset views record their reads in ``log``."""

    log: ReadLog = field(default_factory=ReadLog)

    @property
    def train(self) -> ArrayDataset:
        return CountingDataset(self.x_train, self.y_train, split="train", log=self.log)

    @property
    def val(self) -> ArrayDataset:
        return CountingDataset(self.x_val, self.y_val, split="val", log=self.log)

    @property
    def test(self) -> ArrayDataset | None:
        if self.x_test is None or self.y_test is None:
            return None
        return CountingDataset(self.x_test, self.y_test, split="test", log=self.log)


def with_test(data: DataBundle) -> CountingBundle:
    """``data`` with the last 200 training examples carved out as a test split."""
    return CountingBundle(
        name=data.name,
        x_train=data.x_train[:-200],
        y_train=data.y_train[:-200],
        x_val=data.x_val,
        y_val=data.y_val,
        num_classes=data.num_classes,
        x_test=data.x_train[-200:],
        y_test=data.y_train[-200:],
        test_note="the last 200 training examples (a test)",
    )


def config(**overrides: object) -> SearchConfig:
    settings: dict[str, object] = {
        "trials": 3,
        "epochs_per_trial": 1,
        "final_epochs": 1,
        "verify_top": 1,
        "spend_steps": 0,
        "batch_size": 64,
        "device": "cpu",
        "max_accuracy_drop": 3.0,
        "lr_scales": (1.0,),
    }
    settings.update(overrides)
    return SearchConfig(**settings)  # type: ignore[arg-type]


def test_search_reads_the_test_split_only_for_the_final_report(
    trained: nn.Module, data: DataBundle, tmp_path: Path
) -> None:
    bundle = with_test(data)
    ctx = prepare(copy.deepcopy(trained), bundle, config(lr_scales=(1.0, 0.3)))
    ctx.calibrate_lr()
    study = open_study(ctx, storage=optuna.storages.InMemoryStorage(), study_name="t")
    run_trials(ctx, study)
    assert bundle.log.of("train") and bundle.log.of("val")
    assert not bundle.log.of("test"), "the search read the test split before the report"
    report = finalize(ctx, study, tmp_path, arch=ARCH).report
    test_reads = bundle.log.of("test")
    assert test_reads, "the report did not evaluate the test split"
    assert all(r.in_report for r in test_reads)
    assert bundle.log.examples("test") == 2 * 200  # the original and the chosen model, once
    held = report["test"]
    assert held["n"] == 200
    assert report["baseline"]["test_accuracy"] == held["baseline_accuracy"]
    assert report["final"]["test_accuracy"] == held["final_accuracy"]
    assert report["final"]["test_accuracy_drop"] == held["accuracy_drop"]
    assert report["final"]["test_constraint_met"] == (held["accuracy_drop"] <= 3.0)
    assert report["final"]["val_accuracy"] == report["final"]["accuracy"]


def test_report_without_a_test_split_says_why(
    trained: nn.Module, data: DataBundle, tmp_path: Path
) -> None:
    ctx = prepare(copy.deepcopy(trained), data, config(trials=1, final_epochs=0, seeding=False))
    study = open_study(ctx, storage=optuna.storages.InMemoryStorage(), study_name="t")
    run_trials(ctx, study)
    report = finalize(ctx, study, tmp_path, arch=ARCH).report
    assert report["test"] is None
    assert report["test_note"] == data.test_note != ""
    assert report["final"]["test_accuracy"] is None
    assert report["final"]["test_constraint_met"] is None
    assert report["baseline"]["test_accuracy"] is None


def test_trial_fine_tunes_read_their_sample_budgets(trained: nn.Module, data: DataBundle) -> None:
    bundle = with_test(data)
    ctx = prepare(copy.deepcopy(trained), bundle, config(trial_samples=100, val_samples=50))
    bundle.log.reads.clear()
    ctx.finetune(copy.deepcopy(trained), epochs=2, seed=1)
    assert bundle.log.examples("train") == 2 * 100  # a fresh subset of 100 each epoch
    assert bundle.log.examples("val") == 2 * 50  # the fixed subset, once an epoch
    assert not bundle.log.of("test")

    bundle.log.reads.clear()
    ctx.finetune(copy.deepcopy(trained), epochs=1, seed=1, final=True)
    assert bundle.log.examples("train") == len(bundle.y_train)  # final: the whole split
    assert bundle.log.examples("val") == len(bundle.y_val)


def test_search_evaluations_share_one_fixed_validation_subset(
    trained: nn.Module, data: DataBundle
) -> None:
    ctx = prepare(copy.deepcopy(trained), data, config(val_samples=100))
    first = ctx.val_indices()
    assert first.numel() == 100
    assert torch.equal(first, ctx.val_indices())
    assert len(ctx.search_splits().val) == 100 and len(ctx.search_splits(final=True).val) == len(
        data.y_val
    )
    assert ctx.search_splits().test is None
    sub = ctx.search_splits().val
    from worker.training import evaluate

    assert ctx.trial_baseline_accuracy == pytest.approx(evaluate(ctx.model, sub).accuracy)


def test_trial_budget_defaults_to_the_split_up_to_ten_thousand(
    trained: nn.Module, data: DataBundle
) -> None:
    ctx = prepare(copy.deepcopy(trained), data, config(distill_weight=0.0))
    assert ctx.samples_per_epoch() == min(len(data.y_train), 10_000)
    assert ctx.samples_per_epoch(final=True) is None


def test_augmentation_distils_from_a_per_batch_teacher(
    trained: nn.Module, data: DataBundle
) -> None:
    table = prepare(copy.deepcopy(trained), data, config())
    assert table.teacher_logits is not None and table.teacher is None
    batch = prepare(copy.deepcopy(trained), data, config(augment="crop-flip"))
    assert batch.teacher_logits is None and batch.teacher is not None
    assert batch.teacher is not batch.model  # a copy: finetune moves it in place
    fit = batch.finetune(copy.deepcopy(trained), epochs=1, seed=0)
    assert fit.status == "completed"
