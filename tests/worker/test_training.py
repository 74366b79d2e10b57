"""Tests for worker.training: LR schedules, device resolution, evaluation, the training loop."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from worker.data import DataBundle
from worker.training import (
    SCHEDULE_KINDS,
    EpochReport,
    ScheduleConfig,
    TrainSchedule,
    evaluate,
    finetune,
    lr_at,
    predict_logits,
    resolve_device,
    train,
)

BASE, MAX = 0.01, 0.1
AMP = MAX - BASE
SPE = 10  # steps per epoch in the schedule tests

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    """Tiny models train several times faster on one thread than with intra-op threading."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    """sklearn digits as a DataBundle: 1400 train / 397 val, a fixed shuffled split."""
    raw = load_digits()
    x = torch.tensor(raw.data, dtype=torch.float32).div(16.0).reshape(-1, 1, 8, 8)  # (N,1,8,8)
    y = torch.tensor(raw.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train_idx, val_idx = order[:1400], order[1400:]
    return DataBundle(
        name="digits",
        x_train=x[train_idx],
        y_train=y[train_idx],
        x_val=x[val_idx],
        y_val=y[val_idx],
        num_classes=10,
    )


def tiny_net(seed: int = 0, *, dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N,16,4,4)
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(16 * 4 * 4, 10),
    )


FAST = ScheduleConfig(kind="triangular", base_lr=0.01, max_lr=0.1, cycle_epochs=3)


class ConstantClassifier(nn.Module):
    """Predicts ``cls`` for every input, with fixed logits."""

    logits: torch.Tensor

    def __init__(self, num_classes: int, cls: int) -> None:
        super().__init__()
        logits = torch.zeros(num_classes)
        logits[cls] = 2.0
        self.register_buffer("logits", logits)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1) + 0.0 * self.dummy


class NaNModel(nn.Module):
    """Produces NaN logits, in training mode always, in eval mode when ``eval_only``."""

    def __init__(self, eval_only: bool = False) -> None:
        super().__init__()
        self.eval_only = eval_only
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x.flatten(1))
        if self.training and self.eval_only:
            return out
        return out * math.nan


# --------------------------------------------------------------------------- schedules


def cfg(kind: str, **kwargs: float) -> ScheduleConfig:
    return ScheduleConfig(kind=kind, base_lr=BASE, max_lr=MAX, **kwargs)  # type: ignore[arg-type]


def test_triangular_known_points() -> None:
    c = cfg("triangular", cycle_epochs=2)  # 20 steps per cycle
    assert lr_at(c, 0, SPE) == pytest.approx(BASE)
    assert lr_at(c, 5, SPE) == pytest.approx(BASE + AMP / 2)
    assert lr_at(c, 10, SPE) == pytest.approx(MAX)
    assert lr_at(c, 15, SPE) == pytest.approx(BASE + AMP / 2)
    assert lr_at(c, 20, SPE) == pytest.approx(BASE)
    assert lr_at(c, 30, SPE) == pytest.approx(MAX)  # second cycle peaks at max again


def test_triangular_fractional_cycle() -> None:
    c = cfg("triangular", cycle_epochs=0.5)  # 4 steps per cycle with 8 steps per epoch
    assert [lr_at(c, s, 8) for s in range(5)] == pytest.approx(
        [BASE, BASE + AMP / 2, MAX, BASE + AMP / 2, BASE]
    )


def test_triangular2_halves_peak_each_cycle() -> None:
    c = cfg("triangular2", cycle_epochs=2)
    assert lr_at(c, 0, SPE) == pytest.approx(BASE)
    assert lr_at(c, 10, SPE) == pytest.approx(MAX)
    assert lr_at(c, 30, SPE) == pytest.approx(BASE + AMP / 2)
    assert lr_at(c, 50, SPE) == pytest.approx(BASE + AMP / 4)
    assert lr_at(c, 40, SPE) == pytest.approx(BASE)


def test_exp_range_peaks_decay_by_gamma() -> None:
    gamma = 0.99
    c = cfg("exp_range", cycle_epochs=2, gamma=gamma)
    assert lr_at(c, 0, SPE) == pytest.approx(BASE)
    assert lr_at(c, 10, SPE) == pytest.approx(BASE + AMP * gamma**10)
    assert lr_at(c, 30, SPE) == pytest.approx(BASE + AMP * gamma**30)
    ratio = (lr_at(c, 30, SPE) - BASE) / (lr_at(c, 10, SPE) - BASE)
    assert ratio == pytest.approx(gamma**20)


def test_exp_range_default_gamma_halves_amplitude_per_cycle() -> None:
    c = cfg("exp_range", cycle_epochs=2)
    assert c.resolved_gamma(SPE) == pytest.approx(0.5 ** (1 / 20))
    first, second = lr_at(c, 10, SPE) - BASE, lr_at(c, 30, SPE) - BASE
    assert second / first == pytest.approx(0.5)


def test_cosine_restarts_known_points() -> None:
    c = cfg("cosine_restarts", cycle_epochs=2)  # 20 steps per cycle
    assert lr_at(c, 0, SPE) == pytest.approx(MAX)
    assert lr_at(c, 10, SPE) == pytest.approx(BASE + AMP / 2)
    last = lr_at(c, 19, SPE)
    assert BASE < last < BASE + AMP * 0.01  # ends near base
    assert lr_at(c, 20, SPE) == pytest.approx(MAX)  # restart
    assert lr_at(c, 30, SPE) == pytest.approx(BASE + AMP / 2)
    assert all(lr_at(c, s, SPE) > lr_at(c, s + 1, SPE) for s in range(19))  # monotone in a cycle


def test_cosine_restarts_t_mult_grows_cycles() -> None:
    c = cfg("cosine_restarts", cycle_epochs=1, t_mult=2)  # cycles of 10, 20, 40 steps
    for restart in (0, 10, 30, 70):
        assert lr_at(c, restart, SPE) == pytest.approx(MAX)
        if restart:
            assert lr_at(c, restart - 1, SPE) < BASE + AMP * 0.05
    assert lr_at(c, 5, SPE) == pytest.approx(BASE + AMP / 2)  # middle of cycle 0
    assert lr_at(c, 20, SPE) == pytest.approx(BASE + AMP / 2)  # middle of cycle 1
    assert lr_at(c, 50, SPE) == pytest.approx(BASE + AMP / 2)  # middle of cycle 2
    assert lr_at(c, 29, SPE) < lr_at(c, 9, SPE)  # longer cycle anneals in finer steps


def test_cosine_restarts_float_cycle_length_restarts_on_time() -> None:
    c = cfg("cosine_restarts", cycle_epochs=0.3)  # 0.3 * 10 = 3.0000000000000004 steps
    assert lr_at(c, 3, 10) == pytest.approx(MAX)
    assert lr_at(c, 6, 10) == pytest.approx(MAX)


def test_constant_is_max_lr() -> None:
    c = cfg("constant")
    assert {lr_at(c, s, SPE) for s in range(50)} == {MAX}
    assert lr_at(ScheduleConfig.constant(0.3), 7, SPE) == 0.3


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_every_schedule_stays_within_bounds(kind: str) -> None:
    c = cfg(kind, cycle_epochs=1.5)
    values = [lr_at(c, s, 7) for s in range(200)]
    assert all(BASE - 1e-12 <= v <= MAX + 1e-12 for v in values)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "linear"}, "kind"),
        ({"base_lr": 0.0}, "base_lr"),
        ({"base_lr": -1e-3}, "base_lr"),
        ({"base_lr": math.nan}, "base_lr"),
        ({"max_lr": -0.1}, "max_lr"),
        ({"max_lr": math.inf}, "max_lr"),
        ({"base_lr": 0.5, "max_lr": 0.1}, "base_lr"),
        ({"cycle_epochs": 0}, "cycle_epochs"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": 1.5}, "gamma"),
        ({"t_mult": 0.5}, "t_mult"),
    ],
)
def test_schedule_config_validation(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ScheduleConfig(**kwargs)  # type: ignore[arg-type]


def test_schedule_config_is_frozen() -> None:
    c = ScheduleConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.max_lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(("step", "spe"), [(-1, 10), (1.5, 10), (0, 0), (0, 2.5)])
def test_lr_at_rejects_bad_step_arguments(step: object, spe: object) -> None:
    with pytest.raises(ValueError, match="step"):
        lr_at(ScheduleConfig(), step, spe)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- device


def test_resolve_device_forms() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device().type == expected
    assert resolve_device("auto").type == expected


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "", "tpu:0", torch.device("meta")])
def test_resolve_device_rejects_unknown(bad: str | torch.device) -> None:
    with pytest.raises(ValueError, match="'auto'"):
        resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("request_", ["cuda", "cuda:0"])
def test_resolve_device_cuda_unavailable(request_: str) -> None:
    with pytest.raises(ValueError, match="not available"):
        resolve_device(request_)


# --------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("cls", [0, 3, 9])
def test_evaluate_constant_prediction_gives_class_frequency(digits: DataBundle, cls: int) -> None:
    model = ConstantClassifier(10, cls)
    result = evaluate(model, digits, batch_size=50, device="cpu")
    assert result.n == len(digits.y_val)
    assert result.accuracy == pytest.approx(float((digits.y_val == cls).float().mean()))
    with torch.no_grad():
        logits = model(digits.x_val)
    assert result.loss == pytest.approx(float(F.cross_entropy(logits, digits.y_val)), rel=1e-5)


def test_evaluate_is_batch_size_independent_and_restores_mode(digits: DataBundle) -> None:
    model = tiny_net(dropout=0.5)
    model.train()
    model[4].eval()  # mixed modes must come back as they were
    xy = (digits.x_train, digits.y_train)
    small = evaluate(model, xy, batch_size=7, device="cpu")
    large = evaluate(model, xy, batch_size=4096, device="cpu")
    assert small.n == large.n == len(digits.y_train)
    assert small.accuracy == large.accuracy
    assert small.loss == pytest.approx(large.loss, rel=1e-5)
    assert model.training and not model[4].training and model[0].training


def test_evaluate_rejects_bad_input(digits: DataBundle) -> None:
    model = tiny_net()
    with pytest.raises(ValueError, match="examples"):
        evaluate(model, (digits.x_val, digits.y_val[:-1]), device="cpu")
    with pytest.raises(ValueError, match="zero"):
        evaluate(model, (digits.x_val[:0], digits.y_val[:0]), device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(model, digits, batch_size=0, device="cpu")


# --------------------------------------------------------------------------- finetune


def test_finetune_learns_digits(digits: DataBundle) -> None:
    model = tiny_net()
    result = finetune(model, digits, FAST, epochs=3, batch_size=32, device="cpu")
    assert result.status == "completed"
    assert result.epochs_run == 3 and len(result.history) == 3
    assert result.final_val_accuracy > 0.85
    assert result.final_val_accuracy == result.history[-1].val_accuracy
    assert result.steps_run == 3 * math.ceil(1400 / 32)
    assert not model.training
    assert evaluate(model, digits, device="cpu").accuracy == result.final_val_accuracy


def test_finetune_adamw_learns_digits(digits: DataBundle) -> None:
    schedule = ScheduleConfig(kind="cosine_restarts", base_lr=1e-4, max_lr=1e-2, cycle_epochs=3)
    result = finetune(
        tiny_net(), digits, schedule, epochs=3, optimizer="adamw", batch_size=32, device="cpu"
    )
    assert result.status == "completed"
    assert result.final_val_accuracy > 0.85


def test_callback_gets_one_report_per_epoch(digits: DataBundle) -> None:
    reports: list[EpochReport] = []

    def record(report: EpochReport) -> bool | None:
        reports.append(report)
        return None if report.epoch % 2 else True

    schedule = ScheduleConfig(kind="triangular2", base_lr=0.01, max_lr=0.1, cycle_epochs=1)
    result = finetune(
        tiny_net(), digits, schedule, epochs=3, batch_size=64, device="cpu", callback=record
    )
    assert result.status == "completed"
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert tuple(reports) == result.history
    steps_per_epoch = math.ceil(1400 / 64)
    for r in reports:
        assert r.lr == lr_at(schedule, r.epoch * steps_per_epoch - 1, steps_per_epoch)
        assert math.isfinite(r.train_loss) and r.seconds >= 0
        assert 0.0 <= r.val_accuracy <= 1.0


def test_callback_can_stop_the_run(digits: DataBundle) -> None:
    seen: list[int] = []

    def stop_at_two(report: EpochReport) -> bool:
        seen.append(report.epoch)
        return report.epoch < 2

    model = tiny_net()
    result = finetune(
        model, digits, FAST, epochs=5, batch_size=64, device="cpu", callback=stop_at_two
    )
    assert result.status == "stopped"
    assert "callback" in result.message
    assert seen == [1, 2]
    assert result.epochs_run == 2 and len(result.history) == 2
    assert not model.training


def test_callback_exception_propagates_and_leaves_eval_mode(digits: DataBundle) -> None:
    class Pruned(Exception):
        pass

    def prune(report: EpochReport) -> None:
        raise Pruned

    model = tiny_net()
    with pytest.raises(Pruned):
        finetune(model, digits, FAST, epochs=2, device="cpu", callback=prune, max_steps=3)
    assert not model.training


def test_huge_learning_rate_diverges_without_raising(digits: DataBundle) -> None:
    model = tiny_net()
    result = finetune(
        model, digits, ScheduleConfig.constant(1e6), epochs=3, batch_size=64, device="cpu"
    )
    assert result.status == "diverged"
    assert "epoch" in result.message and "step" in result.message
    assert 0.0 <= result.final_val_accuracy <= 1.0
    assert not model.training


def test_nan_model_diverges_at_first_step(digits: DataBundle) -> None:
    calls: list[EpochReport] = []
    result = finetune(NaNModel(), digits, FAST, epochs=2, device="cpu", callback=calls.append)
    assert result.status == "diverged"
    assert "epoch 1" in result.message and "global step 0" in result.message
    assert result.history == () and calls == []
    assert result.steps_run == 0 and result.epochs_run == 1


def test_nan_validation_loss_counts_as_divergence(digits: DataBundle) -> None:
    result = finetune(NaNModel(eval_only=True), digits, FAST, epochs=3, device="cpu")
    assert result.status == "diverged"
    assert "validation" in result.message
    assert len(result.history) == 1 and math.isnan(result.history[0].val_loss)


def test_same_seed_gives_identical_weights(digits: DataBundle) -> None:
    def run(seed: int) -> tuple[dict[str, torch.Tensor], tuple[EpochReport, ...]]:
        model = tiny_net(123, dropout=0.3)  # same initial weights every time
        rng_before = torch.get_rng_state()
        result = finetune(
            model, digits, FAST, epochs=2, batch_size=64, device="cpu", seed=seed, max_steps=30
        )
        assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
        return model.state_dict(), result.history

    first, history_a = run(7)
    second, history_b = run(7)
    other, _ = run(8)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert [h.train_loss for h in history_a] == [h.train_loss for h in history_b]
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_max_steps_cuts_the_run(digits: DataBundle) -> None:
    result = finetune(tiny_net(), digits, FAST, epochs=4, batch_size=64, device="cpu", max_steps=5)
    assert result.status == "completed"
    assert "max_steps" in result.message
    assert result.steps_run == 5 and result.epochs_run == 1 and len(result.history) == 1


def test_trailing_batch_of_one_is_merged_for_batchnorm(digits: DataBundle) -> None:
    small = dataclasses.replace(digits, x_train=digits.x_train[:65], y_train=digits.y_train[:65])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 10))
    result = finetune(model, small, FAST, epochs=2, batch_size=64, device="cpu")
    assert result.status == "completed"
    assert result.steps_run == 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"momentum": -0.1}, "momentum"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"max_steps": 0}, "max_steps"),
        ({"device": "gpu"}, "device"),
    ],
)
def test_finetune_validates_arguments(
    digits: DataBundle, kwargs: dict[str, object], field: str
) -> None:
    options: dict[str, object] = {"epochs": 1, **kwargs}
    with pytest.raises(ValueError, match=field):
        finetune(tiny_net(), digits, FAST, **options)  # type: ignore[arg-type]


def test_finetune_rejects_non_config_schedule(digits: DataBundle) -> None:
    with pytest.raises(ValueError, match="schedule"):
        finetune(tiny_net(), digits, 0.1, epochs=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("split", ["train", "val"])
def test_finetune_rejects_empty_split(digits: DataBundle, split: str) -> None:
    empty = dataclasses.replace(
        digits,
        **{f"x_{split}": digits.x_val[:0], f"y_{split}": digits.y_val[:0]},  # type: ignore[arg-type]
    )
    with pytest.raises(ValueError, match=split):
        finetune(tiny_net(), empty, FAST, epochs=1, device="cpu")


def test_label_smoothing_raises_train_loss_floor(digits: DataBundle) -> None:
    result = finetune(
        tiny_net(), digits, FAST, epochs=1, batch_size=64, device="cpu", label_smoothing=0.2
    )
    assert result.status == "completed"
    # With smoothing eps over K classes the loss cannot fall below the smoothed target entropy.
    eps, k = 0.2, 10
    floor = -(1 - eps + eps / k) * math.log(1 - eps + eps / k) - (k - 1) * (eps / k) * math.log(
        eps / k
    )
    assert result.history[0].train_loss > floor


# --------------------------------------------------------------------------- train


@pytest.mark.parametrize("schedule", ["one_cycle", "cosine"])
def test_train_from_scratch(digits: DataBundle, schedule: TrainSchedule) -> None:
    model = tiny_net(1)
    result = train(model, digits, epochs=3, lr=0.1, schedule=schedule, batch_size=32, device="cpu")
    assert result.status == "completed"
    assert result.final_val_accuracy > 0.85
    assert not model.training


def test_train_validates_arguments(digits: DataBundle) -> None:
    with pytest.raises(ValueError, match="schedule"):
        train(tiny_net(), digits, epochs=1, schedule="step")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr"):
        train(tiny_net(), digits, epochs=1, lr=0.0)


# --------------------------------------------------------------------------- distillation


def test_predict_logits_matches_forward_in_eval_mode(digits: DataBundle) -> None:
    model = tiny_net(3, dropout=0.5).train()
    logits = predict_logits(model, digits.x_train, batch_size=100, device="cpu")
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        expected = model(digits.x_train)
    assert logits.shape == (1400, 10)
    assert torch.allclose(logits, expected, atol=1e-6)


def test_full_distillation_learns_the_teacher_not_the_labels(digits: DataBundle) -> None:
    """A teacher that always says "label + 1" is what a weight-1 student learns."""
    shifted = (digits.y_train + 1) % 10
    teacher = F.one_hot(shifted, 10).float() * 8.0  # confident, wrong on purpose
    model = tiny_net()
    result = finetune(
        model,
        digits,
        FAST,
        epochs=3,
        batch_size=32,
        device="cpu",
        teacher_logits=teacher,
        distill_weight=1.0,
        temperature=2.0,
    )
    assert result.status == "completed"
    assert result.final_val_accuracy < 0.2  # true labels
    shifted_val = (digits.y_val + 1) % 10
    assert evaluate(model, (digits.x_val, shifted_val), device="cpu").accuracy > 0.8


def test_distill_weight_zero_ignores_the_teacher(digits: DataBundle) -> None:
    def run(**kwargs: object) -> dict[str, torch.Tensor]:
        model = tiny_net(5)
        finetune(model, digits, FAST, epochs=1, batch_size=64, device="cpu", max_steps=10, **kwargs)  # type: ignore[arg-type]
        return model.state_dict()

    plain = run()
    noise = torch.randn(1400, 10)
    ignored = run(teacher_logits=noise, distill_weight=0.0)
    mixed = run(teacher_logits=noise, distill_weight=0.5)
    assert all(torch.equal(plain[k], ignored[k]) for k in plain)
    assert any(not torch.equal(plain[k], mixed[k]) for k in plain)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distill_weight": 0.5}, "needs teacher_logits"),
        ({"teacher_logits": torch.zeros(10, 10), "distill_weight": 0.5}, "shape"),
        ({"teacher_logits": torch.full((1400, 10), math.nan), "distill_weight": 0.5}, "NaN"),
        ({"teacher_logits": torch.zeros(1400, 10), "distill_weight": 1.5}, "distill_weight"),
        ({"teacher_logits": torch.zeros(1400, 10), "temperature": 0.0}, "temperature"),
    ],
)
def test_distillation_arguments_validated(
    digits: DataBundle, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        finetune(tiny_net(), digits, FAST, epochs=1, device="cpu", **kwargs)  # type: ignore[arg-type]
