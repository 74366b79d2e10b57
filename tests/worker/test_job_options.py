"""One contract for a job's options: library, CLI and REST agree field by field."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from service.job_options import DEFAULTS, JobOptions, ScheduleOptions
from service.spec import JobSpec
from worker.cli import _parser
from worker.cli_options import flag_of, options_from_args
from worker.errors import InvalidOptions, UsageError
from worker.search import SearchConfig, search_config

REQUIRED_CLI = ["compress", "--arch", "rankopt:tinycnn", "--weights", "w.safetensors"]
REQUIRED_CLI += ["--dataset", "digits", "--out", "out"]


def _cli_options(*extra: str) -> JobOptions:
    return options_from_args(_parser().parse_args([*REQUIRED_CLI, *extra]))


def test_library_cli_and_rest_defaults_are_identical_field_by_field() -> None:
    library = SearchConfig()
    cli = search_config(_cli_options())
    rest = search_config(JobSpec(arch="rankopt:lenet5"))
    for name in JobOptions.model_fields:
        assert getattr(library, name) == getattr(cli, name) == getattr(rest, name), name
    assert dataclasses.asdict(cli) == dataclasses.asdict(rest) == dataclasses.asdict(library)
    # The defaults that had drifted apart (issue 14) are the CLI/REST ones.
    assert (library.epochs_per_trial, library.final_epochs, library.batch_size) == (3, 10, 64)


def test_every_option_reaches_the_search_config_by_name() -> None:
    config_fields = {f.name for f in dataclasses.fields(SearchConfig)}
    assert set(JobOptions.model_fields) <= config_fields
    assert set(JobOptions.model_fields) <= set(JobSpec.model_fields)
    for name, info in JobOptions.model_fields.items():
        assert info.description or name == "schedule", f"{name} needs a description (CLI help)"


def test_every_option_has_a_cli_flag_that_sets_it() -> None:
    values: dict[str, tuple[str, Any]] = {
        "trials": ("7", 7),
        "timeout_s": ("12.5", 12.5),
        "max_accuracy_drop": ("2", 2.0),
        "max_latency_ratio": ("1.0", 1.0),
        "objective": ("macs", "macs"),
        "sampler": ("random", "random"),
        "pruner": ("none", "none"),
        "seed": ("3", 3),
        "split_seed": ("5", 5),
        "methods": ("svd,cp", ["svd", "cp"]),
        "rank_scale": ("0.2,2", (0.2, 2.0)),
        "rank_multiple": ("8", 8),
        "latency_batch_size": ("32", 32),
        "push_factor": ("0.5", 0.5),
        "lr_scales": ("1,0.5", [1.0, 0.5]),
        "epochs_per_trial": ("1", 1),
        "final_epochs": ("0", 0),
        "distill_weight": ("0", 0.0),
        "temperature": ("4", 4.0),
        "verify_top": ("2", 2),
        "verify_slack": ("1", 1.0),
        "optimizer": ("sgd", "sgd"),
        "batch_size": ("16", 16),
        "trial_finetune_mode": ("lc", "lc"),
        "final_finetune_mode": ("lc", "lc"),
        "lc_mu0": ("0.5", 0.5),
        "lc_mu_factor": ("3", 3.0),
        "lc_steps": ("4", 4),
        "lc_factor_epochs": ("0", 0),
        "trial_samples": ("500", 500),
        "val_samples": ("300", 300),
        "final_samples": ("2000", 2000),
        "augment": ("crop-flip", "crop-flip"),
        "num_workers": ("2", 2),
        "image_size": ("28", 28),
        "preprocess": ("imagenet", "imagenet"),
    }
    args: list[str] = ["--pareto", "--no-seeding"]
    for name, (text, _) in values.items():
        args += [flag_of(name), text]
    args += ["--schedule", "cosine_restarts", "--base-lr", "0.001", "--max-lr", "0.1"]
    args += ["--cycle-epochs", "2"]
    options = _cli_options(*args)
    for name, (_, expected) in values.items():
        assert getattr(options, name) == expected, name
    assert options.pareto is True and options.seeding is False
    assert options.schedule == ScheduleOptions(
        kind="cosine_restarts", base_lr=0.001, max_lr=0.1, cycle_epochs=2.0
    )
    covered = {*values, "pareto", "seeding", "schedule"}
    assert covered == set(JobOptions.model_fields)
    assert _cli_options("--push-factor", "0").push_factor is None
    assert _cli_options("--val-samples", "0").val_samples is None


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--trials", "0"], "--trials (trials)"),
        (["--rank-scale", "abc"], "--rank-scale"),
        (["--max-lr", "-1"], "--max-lr (schedule.max_lr)"),
        (["--max-latency-ratio", "0"], "--max-latency-ratio (max_latency_ratio)"),
    ],
)
def test_cli_option_errors_name_the_flag_and_the_field(args: list[str], needle: str) -> None:
    with pytest.raises(UsageError, match=re.escape(needle)):
        _cli_options(*args)


def test_the_mapping_refuses_unknown_methods_with_the_spec_code() -> None:
    with pytest.raises(InvalidOptions, match="nonsense") as info:
        search_config(JobOptions(methods=["nonsense"]))
    assert info.value.code == "invalid_spec"
    assert search_config(DEFAULTS, trials=2).trials == 2
    constant = JobOptions(schedule=ScheduleOptions(kind="constant", max_lr=0.003))
    assert search_config(constant).schedule.base_lr == 0.003
