"""Tests for learning-compression fine-tuning (worker.training._lc) and its use in the search."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from tensorops import BuildContext, Choice, Plan, compress, get_method
from worker.data import DataBundle
from worker.training import (
    EpochCallback,
    FinetuneResult,
    LcSchedule,
    ScheduleConfig,
    finetune,
    lc_finetune,
)
from worker.training._lc import dense_kernel, project
from worker.training._loop import steps_per_epoch

SCHEDULE = ScheduleConfig(kind="triangular2", base_lr=1e-4, max_lr=3e-3, cycle_epochs=1.0)
BATCH = 64


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trainer(data: DataBundle) -> Callable[..., FinetuneResult]:
    def train(
        model: nn.Module,
        *,
        epochs: int,
        seed: int,
        max_steps: int | None = None,
        callback: EpochCallback | None = None,
        after_step: Callable[[float], None] | None = None,
    ) -> FinetuneResult:
        return finetune(
            model,
            data,
            SCHEDULE,
            epochs=epochs,
            optimizer="adamw",
            batch_size=BATCH,
            device="cpu",
            seed=seed,
            max_steps=max_steps,
            callback=callback,
            after_step=after_step,
        )

    return train


def run_lc(
    model: nn.Module, plan: Plan, data: DataBundle, schedule: LcSchedule, epochs: int
) -> tuple[nn.Module, list[float]]:
    result = lc_finetune(
        model,
        plan,
        trainer(data),
        schedule=schedule,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch(len(data.y_train), BATCH),
        seed=3,
    )
    assert result.fit is None or result.fit.status == "completed"
    return result.model, result.distances


CONV_CASES = [
    ("tucker2", (3, 4)),
    ("cp", (5,)),
    ("svd", (4,)),
    ("btd", (2, 2, 2)),
    ("tt_conv", (3,)),
    ("tt_tucker", (3, 3, 3)),
]


def _conv() -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(6, 8, 3, stride=2, padding=1)


@pytest.mark.parametrize(("method", "ranks"), CONV_CASES)
def test_dense_kernel_computes_what_the_factorised_conv_does(
    method: str, ranks: tuple[int, ...]
) -> None:
    conv = _conv()
    impl = get_method(method)
    if impl.refusal(conv) is not None:
        pytest.skip(impl.refusal(conv))
    ranks = impl.validate_ranks(conv, ranks)
    layer = impl.decompose(conv, ranks, BuildContext(seed=0))
    dense = copy.deepcopy(conv)
    with torch.no_grad():
        dense.weight.copy_(dense_kernel(layer, conv))
    x = torch.randn(2, 6, 9, 9)
    torch.testing.assert_close(dense(x), layer(x), atol=1e-4, rtol=1e-4)


def test_dense_kernel_of_a_low_rank_linear() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(12, 7)
    layer = get_method("svd").decompose(linear, (3,), BuildContext())
    dense = copy.deepcopy(linear)
    with torch.no_grad():
        dense.weight.copy_(dense_kernel(layer, linear))
    x = torch.randn(5, 12)
    torch.testing.assert_close(dense(x), layer(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("method", "ranks"), [("tucker2", (3, 4)), ("svd", (4,)), ("tt_conv", (3,)), ("cp", (3,))]
)
def test_the_c_step_of_a_layer_already_in_the_format_is_exact(
    method: str, ranks: tuple[int, ...]
) -> None:
    conv = _conv()
    _, delta = project(conv, method, ranks, name="conv", seed=0)
    with torch.no_grad():
        conv.weight.copy_(delta)
    _, again = project(conv, method, ranks, name="conv", seed=0)
    scale = float(delta.norm())
    assert float((again - delta).norm()) <= 1e-4 * scale


def _mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32, bias=False), nn.ReLU(), nn.Linear(32, 10, bias=False)
    )


def test_distance_shrinks_as_mu_grows(trained: nn.Module, data: DataBundle) -> None:
    plan = _tight_plan(trained)
    schedule = LcSchedule(mu0=1.0, mu_factor=8.0, steps=4, factor_epochs=0)
    _, distances = run_lc(trained, plan, data, schedule, epochs=2)
    assert len(distances) == 5
    assert distances[1:] == sorted(distances[1:], reverse=True)
    assert distances[-1] < 0.5 * distances[1]


def _tight_plan(model: nn.Module) -> Plan:
    choices = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels > 1:
            choices[name] = Choice("tucker2", (2, 2))
        elif isinstance(module, nn.Linear):
            choices[name] = Choice("svd", (2,))
    assert choices
    return Plan(choices)


def test_infinite_mu_equals_decompose_then_finetune(data: DataBundle) -> None:
    """With μ = ∞ the L step cannot move W off Δ(Θ): only the factor fine-tune counts."""
    model = _mlp()
    finetune(model, data, SCHEDULE, epochs=2, optimizer="adamw", device="cpu", seed=0)
    plan = Plan({"1": Choice("svd", (6,)), "3": Choice("svd", (5,))})
    schedule = LcSchedule(mu0=math.inf, steps=2, factor_epochs=2)
    lc_model, distances = run_lc(model, plan, data, schedule, epochs=3)
    assert all(d < 1e-4 for d in distances[1:])
    baseline = compress(model, plan, seed=3)
    trainer(data)(baseline, epochs=2, seed=3)
    x = data.x_val[:64]
    torch.testing.assert_close(lc_model(x), baseline(x), atol=1e-3, rtol=1e-3)


def test_a_seeded_lc_run_repeats(trained: nn.Module, data: DataBundle) -> None:
    plan = _tight_plan(trained)
    schedule = LcSchedule(steps=2, factor_epochs=1)
    first, d1 = run_lc(trained, plan, data, schedule, epochs=2)
    second, d2 = run_lc(trained, plan, data, schedule, epochs=2)
    assert d1 == d2
    for (k, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), k


def test_lc_leaves_the_original_untouched(trained: nn.Module, data: DataBundle) -> None:
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    run_lc(trained, _tight_plan(trained), data, LcSchedule(steps=1, factor_epochs=0), epochs=1)
    for k, v in trained.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_search_with_lc_for_the_final_model(
    trained: nn.Module, data: DataBundle, tmp_path: Path
) -> None:
    from tests.worker.search_support import memory_search, quick_config

    config = quick_config(
        trials=2, final_epochs=2, final_finetune_mode="lc", lc_steps=2, lc_factor_epochs=1
    )
    _, _, result = memory_search(copy.deepcopy(trained), data, config, tmp_path)
    report = result.report
    assert report["search"]["final_finetune_mode"] == "lc"
    assert report["verification"], "no candidate was verified"
    assert {c["fine_tune_mode"] for c in report["verification"]} == {"lc"}
    assert report["final"]["accuracy"] > 0.5
