"""finetune(penalty_weight=...): the L1 of the unit norms of ``prune`` layers joins the loss."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import tensorops as to
from worker.data import DataBundle
from worker.training import ScheduleConfig, evaluate, finetune

SCHEDULE = ScheduleConfig(kind="triangular", base_lr=0.01, max_lr=0.1, cycle_epochs=8)
L1_SCHEDULE = ScheduleConfig(kind="triangular", base_lr=0.01, max_lr=0.05, cycle_epochs=10)
HIDDEN = 48
#: Accuracy the L1-trained, thresholded MLP may lose against the dense one (397 validation
#: digits, so 4 points is 16 examples); observed: 1.0 point with 22 of 48 units removed.
MARGIN = 0.04


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    """sklearn digits, flattened to 64 features: 1400 train / 397 val, a fixed split."""
    raw = load_digits()
    x = torch.tensor(raw.data, dtype=torch.float32).div(16.0)  # (N, 64)
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


@pytest.fixture(scope="module")
def dense(digits: DataBundle) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))
    finetune(model, digits, SCHEDULE, epochs=8, device="cpu")
    return model


PLAN = to.Plan({"0": to.Choice("prune", (HIDDEN, 64))})


def _l1_train(dense: nn.Module, digits: DataBundle, weight: float) -> nn.Module:
    model = to.compress(dense, PLAN)
    finetune(
        model, digits, L1_SCHEDULE, epochs=10, device="cpu", weight_decay=0.0, penalty_weight=weight
    )
    return model


def test_l1_penalty_drives_unit_norms_under_the_threshold(
    dense: nn.Module, digits: DataBundle
) -> None:
    val = (digits.x_val, digits.y_val)
    baseline = evaluate(dense, val, device="cpu").accuracy
    assert baseline > 0.9

    penalised = to.prune_channels(_l1_train(dense, digits, 0.05), PLAN, threshold=0.05)
    kept, _ = penalised.plan["0"].ranks
    assert kept <= 0.75 * HIDDEN  # at least a quarter of the hidden units are gone
    assert penalised.plan["2"].ranks == (10, kept)  # and the head's matching inputs
    assert evaluate(penalised.model, val, device="cpu").accuracy >= baseline - MARGIN

    # Without the penalty the same training leaves every unit above the threshold.
    control = to.prune_channels(_l1_train(dense, digits, 0.0), PLAN, threshold=0.05)
    assert control.plan["0"].ranks == (HIDDEN, 64)


def test_penalty_is_added_to_the_reported_training_loss(
    dense: nn.Module, digits: DataBundle
) -> None:
    losses = []
    for weight in (0.0, 0.01):
        model = to.compress(dense, PLAN)
        result = finetune(
            model, digits, SCHEDULE, epochs=1, max_steps=1, device="cpu", penalty_weight=weight
        )
        losses.append(result.history[0].train_loss)
    start = to.compress(dense, PLAN).get_submodule("0")
    assert isinstance(start, to.NormLinear)
    expected = 0.01 * float(start.penalty().detach())
    assert losses[1] - losses[0] == pytest.approx(expected, rel=1e-4)


def test_penalty_weight_changes_nothing_without_penalized_modules(digits: DataBundle) -> None:
    states = []
    for weight in (0.0, 0.5):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
        finetune(model, digits, SCHEDULE, epochs=1, device="cpu", penalty_weight=weight)
        states.append(model.state_dict())
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key])


@pytest.mark.parametrize("weight", [-0.1, float("nan"), float("inf"), True])
def test_bad_penalty_weight_is_refused(digits: DataBundle, weight: float) -> None:
    model = nn.Sequential(nn.Linear(64, 10))
    with pytest.raises(ValueError, match="penalty_weight"):
        finetune(model, digits, SCHEDULE, epochs=1, device="cpu", penalty_weight=weight)
