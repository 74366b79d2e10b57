"""The configurations, search variants and efficiency curves of ``bench/bench_search.py``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from worker.data import DataBundle
from worker.search import SearchConfig
from worker.training import ScheduleConfig, lr_at

DATASET = "mnist5k"
MAX_DROP = 1.0
ALT_DROP = 0.5
SPEED_GOAL_FRACTION = 0.25  # rankopt must reach random's best within N/4 trials
ONE_SHOT_GOAL_FACTOR = 1.5  # rankopt's ratio must be >= 1.5x the one-shot's
ONE_SHOT_SEED = "evbmf-tucker2"
FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")


@dataclass(frozen=True)
class BenchConfig:
    arch: str
    trials: int
    epochs_per_trial: int
    final_epochs: int
    batch_size: int
    train_epochs: int
    max_train: int | None
    seeds: tuple[int, ...]
    constant_lr: float | None  # None: the cyclic schedule's mean over one trial
    quick: bool


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    config: SearchConfig


def make_config(args: argparse.Namespace, arch: str) -> BenchConfig:
    if args.quick:
        return BenchConfig(
            arch=arch,
            trials=args.trials if args.trials is not None else 4,
            epochs_per_trial=1,
            final_epochs=1,
            batch_size=64,
            train_epochs=2,
            max_train=1000,
            seeds=tuple(args.seeds),
            constant_lr=args.constant_lr,
            quick=True,
        )
    return BenchConfig(
        arch=arch,
        trials=args.trials if args.trials is not None else 20,
        epochs_per_trial=2,
        final_epochs=6,
        batch_size=64,
        train_epochs=8,
        max_train=None,
        seeds=tuple(args.seeds),
        constant_lr=args.constant_lr,
        quick=False,
    )


def mean_cyclic_lr(schedule: ScheduleConfig, epochs: int, steps_per_epoch: int) -> float:
    """Mean learning rate of ``schedule`` over ``epochs`` epochs of ``steps_per_epoch`` steps."""
    steps = max(epochs * steps_per_epoch, 1)
    return sum(lr_at(schedule, step, steps_per_epoch) for step in range(steps)) / steps


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps per epoch (the loop merges a last batch of one into the one before)."""
    full, rest = divmod(n_train, batch_size)
    return max(full + (1 if rest > 1 else 0), 1)


def variants(cfg: BenchConfig, seed: int, data: DataBundle) -> list[Variant]:
    base = SearchConfig(
        trials=cfg.trials,
        max_accuracy_drop=MAX_DROP,
        seed=seed,
        epochs_per_trial=cfg.epochs_per_trial,
        final_epochs=cfg.final_epochs,
        batch_size=cfg.batch_size,
        device="cpu",
    )
    lr = cfg.constant_lr
    if lr is None:
        spe = steps_per_epoch(int(data.y_train.shape[0]), cfg.batch_size)
        lr = mean_cyclic_lr(base.schedule, cfg.epochs_per_trial, spe)
    return [
        Variant("rankopt", "TPE, EVBMF seeding, MTD, triangular2 cyclic LR", base),
        Variant("no-seeding", "rankopt without the EVBMF seed plans", replace(base, seeding=False)),
        Variant(
            "random", "random sampler, no seeding", replace(base, sampler="random", seeding=False)
        ),
        Variant(
            "tucker-only",
            "no MTD: keep / Tucker-2 / SVD",
            replace(base, methods=("tucker2", "svd")),
        ),
        Variant(
            "constant-lr",
            f"constant LR {lr:.2e} instead of cyclic",
            replace(base, schedule=ScheduleConfig.constant(lr)),
        ),
        Variant(
            "one-shot",
            "Kim et al. 2016: the evbmf-tucker2 seed plan, final fine-tune only",
            replace(base, trials=1, max_accuracy_drop=100.0),
        ),
    ]


def feasible(record: dict[str, Any], max_drop: float) -> bool:
    drop = record.get("accuracy_drop")
    return record["state"] == "COMPLETE" and drop is not None and drop <= max_drop


def efficiency_curve(records: Sequence[dict[str, Any]], max_drop: float) -> list[float | None]:
    """Best feasible compression after each trial, in trial order (None before the first)."""
    best: float | None = None
    curve: list[float | None] = []
    for record in sorted(records, key=lambda r: r["number"]):
        if feasible(record, max_drop):
            ratio = float(record["compression"])
            best = ratio if best is None else max(best, ratio)
        curve.append(best)
    return curve


def best_trial(records: Sequence[dict[str, Any]], max_drop: float) -> dict[str, Any] | None:
    """The feasible trial with the highest compression (the lowest number on a tie)."""
    candidates = [r for r in records if feasible(r, max_drop)]
    if not candidates:
        return None
    best = max(candidates, key=lambda r: (r["compression"], -r["number"]))
    return {
        "number": best["number"],
        "seed": best["seed"],
        "compression": best["compression"],
        "accuracy": best["accuracy"],
        "accuracy_drop": best["accuracy_drop"],
    }
