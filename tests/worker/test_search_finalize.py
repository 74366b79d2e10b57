"""Tests for worker.search's objectives and finalising (verification, fallback, the kept plan),
and one search end to end."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from tensorops import (
    KEEP,
    Choice,
    Plan,
    get_method,
    inventory,
    load_compressed,
    measure_cost,
)
from tests.worker.search_support import (
    ARCH,
    MAX_DROP,
    PNG_MAGIC,
    make_config,
    memory_search,
    quick_config,
    sqlite,
)
from worker.data import DataBundle
from worker.search import (
    SEED_ATTR,
    SearchConfig,
    SearchContext,
    SearchResult,
    fallback_candidate,
    finalize,
    finished_trials,
    open_study,
    pareto_front,
    prepare,
    run_search,
    run_trials,
    seed_trials,
    verification_candidates,
)
from worker.search._seeds import seed_budget
from worker.training import evaluate

# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def model(trained: nn.Module) -> nn.Module:
    return copy.deepcopy(trained)


@pytest.fixture
def ctx(model: nn.Module, data: DataBundle) -> SearchContext:
    return prepare(model, data, make_config())


@dataclass(frozen=True)
class EndToEnd:
    result: SearchResult
    config: SearchConfig
    expected_seeds: list[tuple[str, dict[str, Any]]]
    study: optuna.Study
    model: nn.Module


@pytest.fixture(scope="module")
def end_to_end(
    trained: nn.Module, data: DataBundle, tmp_path_factory: pytest.TempPathFactory
) -> EndToEnd:
    """One full search on digits, shared by the end-to-end tests."""
    out = tmp_path_factory.mktemp("search")
    config = make_config()
    model = copy.deepcopy(trained)
    ctx = prepare(copy.deepcopy(trained), data, config)
    expected = seed_trials(
        ctx.model, ctx.spaces, ctx.layers, config, sensitivity=ctx.seed_sensitivity()
    )
    storage = sqlite(out / "study.db")
    result = run_search(model, data, config, out, arch=ARCH, storage=storage, study_name="e2e")
    assert result is not None
    study = optuna.load_study(study_name="e2e", storage=storage)
    return EndToEnd(result, config, expected, study, trained)


# --------------------------------------------------------------------------- objectives


def test_pareto_search_is_two_objective_and_finalises(
    model: nn.Module, data: DataBundle, tmp_path: Path
) -> None:
    config = quick_config(pareto=True, final_epochs=1)
    _, study, result = memory_search(model, data, config, tmp_path)
    assert len(study.directions) == 2
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert complete
    for trial in complete:
        assert trial.values == [trial.user_attrs["accuracy"], trial.user_attrs["compression"]]
    report = result.report
    assert report["search"]["pareto"] is True
    assert report["pareto_front"]
    assert (tmp_path / "report.json").is_file()
    assert (tmp_path / "pareto.png").read_bytes()[:8] == PNG_MAGIC
    assert load_compressed(result.checkpoint) is not None


def test_macs_objective_ratio(model: nn.Module, data: DataBundle, tmp_path: Path) -> None:
    _, study, result = memory_search(model, data, quick_config(objective="macs"), tmp_path)
    report = result.report
    records = [r for r in report["trials"] if r["state"] == "COMPLETE"]
    assert records
    values = {t.number: t.value for t in study.get_trials()}
    for record in records:
        expected = report["baseline"]["macs"] / record["macs"]
        assert record["compression"] == pytest.approx(expected, rel=1e-12)
        assert values[record["number"]] == pytest.approx(expected, rel=1e-12)
        params_ratio = report["baseline"]["params"] / record["params_count"]
        assert record["compression"] != pytest.approx(params_ratio, rel=1e-3)
    if report["chosen_trial"] is not None and not report["chosen_by_spending"]:
        # the closed-form estimate equals the measurement
        chosen = next(r for r in records if r["number"] == report["chosen_trial"])
        assert report["final"]["macs"] == chosen["macs"]
        assert report["final"]["params"] == chosen["params_count"]
    if report["chosen_by_spending"]:  # a spent plan's ratio, estimated, equals the measured one
        met = [step for step in report["spend"]["steps"] if step["met"]]
        kept = max(met, key=lambda step: step["compression"])
        assert report["ratios"]["macs"] == pytest.approx(kept["compression"], rel=1e-9)


def test_latency_objective_ratio(model: nn.Module, data: DataBundle, tmp_path: Path) -> None:
    _, _, result = memory_search(model, data, quick_config(objective="latency"), tmp_path)
    report = result.report
    baseline = report["baseline"]["latency_s"]
    assert baseline is not None and baseline > 0
    records = [r for r in report["trials"] if r["state"] == "COMPLETE"]
    assert records
    for record in records:
        assert record["latency_s"] > 0
        assert record["compression"] == pytest.approx(baseline / record["latency_s"], rel=1e-12)
    final = report["final"]["latency_s"]
    assert report["ratios"]["latency"] == pytest.approx(baseline / final, rel=1e-12)


def test_pareto_front_of_records() -> None:
    def rec(number: int, accuracy: float, compression: float, state: str = "COMPLETE") -> dict:
        return {"number": number, "state": state, "accuracy": accuracy, "compression": compression}

    records = [
        rec(0, 0.90, 2.0),
        rec(1, 0.95, 1.5),
        rec(2, 0.89, 1.9),  # dominated by 0
        rec(3, 0.80, 4.0),
        rec(4, 0.99, 9.0, state="PRUNED"),  # not complete: ignored
        rec(5, 0.90, 2.0),  # equal to 0: neither dominates
    ]
    assert pareto_front(records) == [0, 1, 3, 5]


# --------------------------------------------------------------------------- end to end


def test_e2e_seed_trials_come_first(end_to_end: EndToEnd) -> None:
    trials = sorted(end_to_end.study.get_trials(), key=lambda t: t.number)
    assert len(trials) == end_to_end.config.trials
    assert len(end_to_end.expected_seeds) >= 3
    expected = end_to_end.expected_seeds[: seed_budget(len(trials))]  # a quarter is sampled
    k = len(expected)
    assert [t.user_attrs.get(SEED_ATTR) for t in trials[:k]] == [label for label, _ in expected]
    assert trials[0].user_attrs[SEED_ATTR].startswith("evbmf-tucker2")
    for trial, (_, params) in zip(trials, expected):
        assert trial.params == params
    # after the seeds: sampled trials and pushes of the best one (see test_push.py)
    assert all(str(t.user_attrs.get(SEED_ATTR, "push-")).startswith("push-") for t in trials[k:])
    records = end_to_end.result.report["trials"]
    assert [r["seed"] for r in records[:k]] == [label for label, _ in expected]
    assert all(r["seed"] is None or r["seed"].startswith("push-") for r in records[k:])


def test_e2e_chosen_plan_meets_the_constraint(end_to_end: EndToEnd) -> None:
    report = end_to_end.result.report
    assert report["found_feasible"], "no trial within 3 points on digits"
    final = report["final"]
    assert final["accuracy_drop"] <= MAX_DROP
    assert final["constraint_met"] is True
    assert final["accuracy_drop"] == pytest.approx(
        (report["baseline"]["accuracy"] - final["accuracy"]) * 100
    )
    records = {r["number"]: r for r in report["trials"]}
    chosen = records[report["chosen_trial"]]
    assert chosen["state"] == "COMPLETE"
    config = end_to_end.config
    assert chosen["accuracy_drop"] <= MAX_DROP + config.verify_slack
    # Verification tried candidates most compressed first and stopped at the first that met
    # the tolerance after the final fine-tune: the chosen one. Its plan and accuracy are the
    # result unless spending the margin found a more compressed plan that also met it.
    checks = report["verification"]
    assert [c["met"] for c in checks] == [False] * (len(checks) - 1) + [True]
    assert checks[-1]["trial"] == chosen["number"]
    spend = report["spend"]
    assert spend["margin_left"] == pytest.approx(MAX_DROP - final["accuracy_drop"])
    if report["chosen_by_spending"]:
        kept = max((s for s in spend["steps"] if s["met"]), key=lambda s: s["compression"])
        assert kept["final_accuracy"] == final["accuracy"]
        assert kept["compression"] > checks[-1]["compression"]
        assert report["ratios"]["params"] == pytest.approx(kept["compression"], rel=0.01)
    else:
        assert Plan.from_dict(report["plan"]) == Plan.from_dict(chosen["plan"])
        assert checks[-1]["final_accuracy"] == final["accuracy"]
    ratios = [c["compression"] for c in checks]
    near = [
        r["compression"]
        for r in records.values()
        if r["state"] == "COMPLETE" and r["accuracy_drop"] <= MAX_DROP + config.verify_slack
    ]
    assert ratios == sorted(near, reverse=True)[: len(ratios)]


def test_e2e_checkpoint_reproduces_final_accuracy(end_to_end: EndToEnd, data: DataBundle) -> None:
    report = end_to_end.result.report
    loaded = load_compressed(end_to_end.result.checkpoint)
    assert evaluate(loaded, data, device="cpu").accuracy == report["final"]["accuracy"]
    cost = measure_cost(loaded, data.example_input(1))
    assert (cost.params, cost.macs) == (report["final"]["params"], report["final"]["macs"])


def test_e2e_outputs_written(end_to_end: EndToEnd) -> None:
    out = end_to_end.result.out_dir
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["final"] == end_to_end.result.report["final"]
    assert on_disk["plan"] == end_to_end.result.report["plan"]
    assert on_disk["arch"] == ARCH
    assert on_disk["search"] == end_to_end.config.to_dict()
    assert (out / "pareto.png").read_bytes()[:8] == PNG_MAGIC
    assert end_to_end.result.checkpoint.exists()


def test_e2e_report_costs_and_ratios(end_to_end: EndToEnd, data: DataBundle) -> None:
    report = end_to_end.result.report
    before = measure_cost(end_to_end.model, data.example_input(1))
    assert report["baseline"]["params"] == before.params
    assert report["baseline"]["macs"] == before.macs
    assert report["final"]["params"] < before.params
    assert report["final"]["macs"] < before.macs
    assert report["ratios"]["params"] == pytest.approx(before.params / report["final"]["params"])
    assert report["ratios"]["macs"] == pytest.approx(before.macs / report["final"]["macs"])
    assert report["ratios"]["params"] > 1
    assert report["ratios"]["macs"] > 1
    assert report["data"] == {
        "name": "digits",
        "train": len(data.y_train),
        "val": len(data.y_val),
        "split_seed": data.split_seed,
    }


def test_e2e_every_layer_reported(end_to_end: EndToEnd, data: DataBundle) -> None:
    report = end_to_end.result.report
    layers = inventory(end_to_end.model, data.example_input(1))
    assert [entry["layer"] for entry in report["layers"]] == [info.name for info in layers]
    plan = Plan.from_dict(report["plan"])
    for entry in report["layers"]:
        if entry["method"] == KEEP:
            assert entry["reason"]
            assert entry["layer"] not in plan.decomposed()
        else:
            choice = plan[entry["layer"]]
            assert (entry["method"], tuple(entry["ranks"])) == (choice.method, choice.ranks)
    assert any(entry["method"] != KEEP for entry in report["layers"])


def _fake_trial(
    ctx: SearchContext, number: int, plan: Plan, drop: float
) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        value=ctx.compression(plan),
        user_attrs={
            "plan": plan.to_dict(),
            "compression": ctx.compression(plan),
            "accuracy": ctx.baseline_accuracy - drop / 100,
            "accuracy_drop": drop,
        },
    )


def test_verification_candidates_order_and_fallback(ctx: SearchContext) -> None:
    study = optuna.create_study(direction="maximize")
    first, second = ctx.spaces[0], ctx.spaces[1]
    plans = [
        Plan({first.name: Choice("tucker2", (1, 1))}),
        Plan({second.name: Choice("tucker2", (1, 1))}),
        Plan({first.name: Choice("tucker2", (1, 1)), second.name: Choice("tucker2", (1, 1))}),
        Plan({second.name: Choice("tucker2", (2, 2))}),
    ]
    drops = [0.2, MAX_DROP + 0.3, MAX_DROP + 5.0, MAX_DROP - 1.0]
    for number, (plan, drop) in enumerate(zip(plans, drops)):
        study.add_trial(_fake_trial(ctx, number, plan, drop))
    config = make_config(verify_top=1, verify_slack=0.5)
    picked = [t.number for t in verification_candidates(study, config)]
    near = sorted((0, 1, 3), key=lambda n: -ctx.compression(plans[n]))
    best_within = max((0, 3), key=lambda n: ctx.compression(plans[n]))
    assert picked == near[:1] + ([best_within] if best_within != near[0] else [])
    assert 2 not in picked  # beyond the slack
    wide = [t.number for t in verification_candidates(study, make_config(verify_top=9))]
    assert wide == near


def _ruinous_and_mild(ctx: SearchContext) -> tuple[Plan, Plan]:
    """A plan that no fine-tune rescues (rank 1 everywhere) and a mild, less compressed one
    (one layer at half its ranks) that meets the tolerance after the final fine-tune."""
    ruinous = Plan(
        {s.name: Choice(s.methods[1], (1,) * len(s.seed_ranks[s.methods[1]])) for s in ctx.spaces}
    )
    full = get_method("tucker2").max_ranks(ctx.model.get_submodule(ctx.spaces[1].name))
    mild = Plan({ctx.spaces[1].name: Choice("tucker2", (full[0] // 2, full[1] // 2))})
    assert ctx.compression(ruinous) > ctx.compression(mild) > 1
    return ruinous, mild


def test_finalize_rejects_a_candidate_that_fails_the_longer_fine_tune(
    model: nn.Module, data: DataBundle, tmp_path: Path
) -> None:
    """A trial whose recorded drop flatters it is fine-tuned, found wanting and passed over."""
    ctx = prepare(model, data, quick_config(verify_top=2))
    study = optuna.create_study(direction="maximize")
    ruinous, mild = _ruinous_and_mild(ctx)
    study.add_trial(_fake_trial(ctx, 0, ruinous, 0.0))
    study.add_trial(_fake_trial(ctx, 1, mild, 0.0))
    report = finalize(ctx, study, tmp_path, arch=ARCH).report
    checks = report["verification"]
    assert [(c["trial"], c["met"]) for c in checks] == [(0, False), (1, True)]
    assert checks[0]["final_accuracy_drop"] > MAX_DROP
    assert report["chosen_trial"] == 1 and report["found_feasible"]
    assert report["final"]["constraint_met"]
    assert Plan.from_dict(report["plan"]) == mild


def test_finalize_keeps_the_original_when_no_candidate_holds(
    model: nn.Module, data: DataBundle, tmp_path: Path
) -> None:
    ctx = prepare(model, data, quick_config())
    study = optuna.create_study(direction="maximize")
    ruinous = Plan(
        {s.name: Choice(s.methods[1], (1,) * len(s.seed_ranks[s.methods[1]])) for s in ctx.spaces}
    )
    study.add_trial(_fake_trial(ctx, 0, ruinous, 0.0))
    report = finalize(ctx, study, tmp_path, arch=ARCH).report
    assert [c["met"] for c in report["verification"]] == [False]
    assert report["chosen_trial"] is None and not report["found_feasible"]
    assert report["plan"] == Plan().to_dict()
    assert report["final"]["accuracy"] == pytest.approx(report["baseline"]["accuracy"])


def test_stop_during_a_trial_does_not_use_up_the_budget(
    model: nn.Module, data: DataBundle, tmp_path: Path
) -> None:
    """A stop inside a trial fails it as interrupted; resuming reruns its seed plan."""
    from worker.search import SEED_ATTR
    from worker.search._study import INTERRUPTED_ATTR

    config = SearchConfig(
        trials=6,
        epochs_per_trial=1,
        final_epochs=0,
        batch_size=64,
        device="cpu",
        pruner="none",
        sensitivity_budgets=(1.0,),
    )
    storage = f"sqlite:///{tmp_path / 's.db'}"
    calls = {"n": 0}

    def stop_in_first_trial() -> bool:
        calls["n"] += 1
        return calls["n"] >= 2  # the first epoch callback of trial 0 asks to stop

    ctx = prepare(model, data, config)
    study = open_study(ctx, storage=storage, study_name="job-stop")
    run_trials(ctx, study, should_stop=stop_in_first_trial)
    first = study.get_trials()[0]
    assert first.user_attrs.get(INTERRUPTED_ATTR) is True
    assert finished_trials(study) == 0
    run_trials(ctx, study)
    assert finished_trials(study) == 6
    labels = [t.user_attrs.get(SEED_ATTR) for t in study.get_trials() if t.state.name == "COMPLETE"]
    # The interrupted seed plan is rerun (after the other seeds) and every seed runs once;
    # the budget's last trial is sampled.
    assert len(labels) == 6
    assert sorted(label for label in labels if label and not label.startswith("push-")) == sorted(
        label
        for label, _ in seed_trials(
            ctx.model, ctx.spaces, ctx.layers, config, sensitivity=ctx.seed_sensitivity()
        )[: seed_budget(config.trials)]
    )


def test_latency_seeds_keep_measured_slow_layers_dense(ctx: SearchContext) -> None:
    plain = seed_trials(ctx.model, ctx.spaces, ctx.layers, ctx.config)
    # Synthetic measurements: every method is slower than dense on the first layer and
    # faster on the others (the timing itself is exercised in bench/bench_latency.py).
    first = ctx.spaces[0].name
    speedups = {
        s.name: {m: (0.5 if s.name == first else 3.0 if m == "cp" else 1.2) for m in s.methods[1:]}
        for s in ctx.spaces
    }
    seeds = seed_trials(ctx.model, ctx.spaces, ctx.layers, ctx.config, speedups=speedups)
    assert seeds[0] == plain[0]  # the pure Kim et al. seed is left as it is
    labels = [label for label, _ in seeds]
    assert labels[1] == "latency-fastest"
    output = [i.name for i in ctx.layers if i.macs > 0][-1]
    fastest = seeds[1][1]
    for space in ctx.spaces:
        chosen = fastest[space.method_param]
        if space.name in (first, output):
            assert chosen == KEEP
        else:
            assert chosen == max(speedups[space.name], key=lambda m: speedups[space.name][m])
    for label, params in seeds[1:]:
        assert params[f"{first}.method"] == KEEP, label


def test_capture_inputs_and_layer_speedups_cover_every_method(ctx: SearchContext) -> None:
    from worker.search._layer_latency import capture_inputs, layer_speedups

    example = ctx.data.example_input(4)
    names = [s.name for s in ctx.spaces]
    inputs = capture_inputs(ctx.model, names, example, torch.device("cpu"))
    for info in ctx.layers:
        if info.name in inputs and info.kind == "conv2d":
            assert inputs[info.name].shape[:2] == (4, info.in_channels)
    speeds = layer_speedups(ctx.model, ctx.spaces, example, device=torch.device("cpu"), repeats=2)
    assert set(speeds) == set(names)
    for space in ctx.spaces:
        assert set(speeds[space.name]) == set(space.methods[1:])
        assert all(v > 0 and math.isfinite(v) for v in speeds[space.name].values())


def test_fallback_candidate_is_the_most_accurate_untried_trial_within_the_tolerance(
    ctx: SearchContext,
) -> None:
    study = optuna.create_study(direction="maximize")
    first, second = ctx.spaces[0], ctx.spaces[1]
    plans = [
        Plan({first.name: Choice("tucker2", (1, 1)), second.name: Choice("tucker2", (1, 1))}),
        Plan({second.name: Choice("tucker2", (1, 1))}),
        Plan({second.name: Choice("tucker2", (2, 2))}),
        Plan({first.name: Choice("tucker2", (2, 2))}),
    ]
    drops = [0.0, MAX_DROP - 0.5, MAX_DROP - 0.5, MAX_DROP + 0.1]
    for number, (plan, drop) in enumerate(zip(plans, drops)):
        study.add_trial(_fake_trial(ctx, number, plan, drop))
    config = make_config(verify_top=1)
    # trial 0 is the candidate; 1 and 2 tie on drop, so the more compressed one; never 3,
    # beyond the tolerance however accurate the others are
    tie = max((1, 2), key=lambda n: (ctx.compression(plans[n]), -n))
    picked = fallback_candidate(study, config, {0})
    assert picked is not None and picked.number == tie
    assert fallback_candidate(study, config, {0, 1, 2}) is None


def test_finalize_falls_back_on_the_most_accurate_plan_when_every_candidate_fails(
    model: nn.Module, data: DataBundle, tmp_path: Path
) -> None:
    """The one candidate fails the longer fine-tune; the plan with the largest margin is tried
    last and kept, instead of the original model."""
    ctx = prepare(model, data, quick_config(verify_top=1))
    study = optuna.create_study(direction="maximize")
    ruinous, mild = _ruinous_and_mild(ctx)
    study.add_trial(_fake_trial(ctx, 0, ruinous, 0.0))
    study.add_trial(_fake_trial(ctx, 1, mild, -0.5))
    report = finalize(ctx, study, tmp_path, arch=ARCH).report
    assert [(c["trial"], c["met"]) for c in report["verification"]] == [(0, False), (1, True)]
    assert report["chosen_trial"] == 1 and report["found_feasible"]
    assert Plan.from_dict(report["plan"]) == mild


def test_candidates_no_smaller_than_the_original_are_never_verified() -> None:
    study = optuna.create_study(direction="maximize")
    for ratio, drop in [(0.9, 0.1), (1.0, 0.0), (2.0, 0.2), (3.0, 5.0)]:
        trial = optuna.trial.create_trial(
            value=ratio,
            user_attrs={"compression": ratio, "accuracy_drop": drop, "plan": {}},
        )
        study.add_trial(trial)
    picked = verification_candidates(study, make_config(max_accuracy_drop=1.0))
    assert [t.user_attrs["compression"] for t in picked] == [2.0]


OPT_IN = ("tt", "qtt", "qcp", "ntt", "btd", "tt_conv", "tt_tucker", "prune")


def test_search_picks_the_opt_in_families_and_saves_a_loadable_model(
    model: nn.Module, data: DataBundle, tmp_path: Path
) -> None:
    # Random sampling over the opt-in families only, tolerance lifted: the most compressed plan
    # wins, whatever its accuracy; what is checked is that these methods go through the
    # whole search (trials, finalise, checkpoint) like the default ones.
    config = quick_config(
        methods=OPT_IN, sampler="random", seeding=False, trials=4, max_accuracy_drop=100.0
    )
    ctx, study, result = memory_search(model, data, config, tmp_path)
    offered = {m for s in ctx.spaces for m in s.methods} - {KEEP}
    assert offered and offered <= set(OPT_IN)
    used = {
        choice["method"]
        for t in study.get_trials(deepcopy=False)
        if t.state == TrialState.COMPLETE
        for choice in t.user_attrs["plan"].values()
    }
    assert used & set(OPT_IN)
    assert result.report["found_feasible"]
    chosen = [layer["method"] for layer in result.report["layers"] if layer["method"] != KEEP]
    assert chosen and set(chosen) <= set(OPT_IN)
    loaded = load_compressed(result.checkpoint)
    assert evaluate(loaded, data, device="cpu").accuracy == result.report["final"]["accuracy"]
