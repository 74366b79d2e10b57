"""LC fine-tuning against decompose-then-fine-tune, same plan and same epochs x samples.

A small run (tinycnn on sklearn digits, one seed, CPU), standing in for the issue's
fashion-mnist VGG-16-BN/ResNet-20 3-seed evidence: digits' validation split is held out as
the *test* set, and a validation split for fine-tuning is carved from its training split.
Two plans: Tucker-2 at half of each conv's full ranks, the classifier and the first conv
dense (a rankopt-like plan), and the same with ranks shrunk until the plan has about half the
parameters (2x more compression). Both modes get ``--epochs`` epochs in all.

    .venv/bin/python bench/bench_lc.py --epochs 6
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import torch
from _common import machine_info, markdown_table
from torch import nn

from tensorops import Choice, Plan, estimate_cost, get_method, inventory, measure_cost
from worker.data import DataBundle, load_dataset
from worker.search import SearchConfig, prepare
from worker.training import evaluate, train
from worker.zoo import get_model


def _splits(seed: int) -> tuple[DataBundle, tuple[torch.Tensor, torch.Tensor]]:
    full = load_dataset("digits", seed=seed)
    n = len(full.y_train)
    cut = int(n * 0.8)
    data = DataBundle(
        name="digits-bench",
        x_train=full.x_train[:cut],
        y_train=full.y_train[:cut],
        x_val=full.x_train[cut:],
        y_val=full.y_train[cut:],
        num_classes=full.num_classes,
    )
    return data, (full.x_val, full.y_val)


def _plan(model: nn.Module, shrink: float) -> Plan:
    choices = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels > 1:
            full = get_method("tucker2").max_ranks(module)
            choices[name] = Choice("tucker2", tuple(max(1, round(r * shrink / 2)) for r in full))
    return Plan(choices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data, test = _splits(args.seed)
    torch.manual_seed(args.seed)
    model = get_model("rankopt:tinycnn", num_classes=10)
    train(model, data, epochs=30, optimizer="adamw", lr=0.01, device="cpu")
    model.eval()
    example = data.example_input(1)
    layers = inventory(model, example)
    base = measure_cost(model, example)
    base_acc = evaluate(model, test, device="cpu").accuracy
    plans = {"rankopt-like": _plan(model, 1.0)}
    ratio = base.params / estimate_cost(layers, plans["rankopt-like"], total=base).params
    shrink = 1.0
    while base.params / estimate_cost(layers, _plan(model, shrink), total=base).params < 2 * ratio:
        shrink *= 0.9
        if shrink < 0.05:
            break
    plans["2x more compressed"] = _plan(model, shrink)
    rows: list[list[Any]] = []
    for label, plan in plans.items():
        plan_ratio = base.params / estimate_cost(layers, plan, total=base).params
        for mode in ("decompose", "lc"):
            config = SearchConfig(
                trials=1,
                epochs_per_trial=args.epochs,
                final_epochs=args.epochs,
                device="cpu",
                seed=args.seed,
                final_finetune_mode=mode,  # type: ignore[arg-type]
            )
            ctx = prepare(copy.deepcopy(model), data, config)
            fitted, fit = ctx.fit(plan, mode=mode, epochs=args.epochs, seed=args.seed)  # type: ignore[arg-type]
            acc = evaluate(fitted, test, device="cpu").accuracy
            rows.append(
                [
                    label,
                    f"{plan_ratio:.1f}x",
                    mode,
                    f"{100 * base_acc:.2f}",
                    f"{100 * acc:.2f}",
                    f"{100 * (base_acc - acc):+.2f}",
                    f"{fit.seconds:.1f}",
                ]
            )
            print(rows[-1], flush=True)
    print(f"machine: {machine_info()}")
    print(
        markdown_table(
            [
                "plan",
                "params ratio",
                "mode",
                "dense test acc %",
                "test acc %",
                "drop pt",
                "last phase s",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
