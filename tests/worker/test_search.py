"""Tests for worker.search: config, space, seeds, sensitivity, study resume, determinism,
objectives. Finalising and the end-to-end search are in test_search_finalize.py."""

from __future__ import annotations

import copy
import itertools
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from tensorops import (
    KEEP,
    BuildContext,
    applicable_methods,
    get_method,
    inventory,
    list_methods,
)
from tests.worker.search_support import (
    ARCH,
    make_config,
    quick_config,
    seed_labels,
    sqlite,
)
from worker.data import DataBundle
from worker.search import (
    SEED_ATTR,
    SearchConfig,
    SearchContext,
    build_space,
    finished_trials,
    open_study,
    plan_from_params,
    prepare,
    run_search,
    run_trials,
    seed_trials,
)
from worker.search._pruning import FeasibilityPruner
from worker.search._seeds import seed_budget
from worker.search._sensitivity import layer_sensitivity, scale_grid
from worker.search._study import make_pruner

# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def model(trained: nn.Module) -> nn.Module:
    return copy.deepcopy(trained)


@pytest.fixture
def ctx(model: nn.Module, data: DataBundle) -> SearchContext:
    return prepare(model, data, make_config())


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides",
    [
        {"trials": 0},
        {"max_accuracy_drop": -1.0},
        {"objective": "flops"},
        {"sampler": "cmaes"},
        {"rank_scale": (2.0, 1.0)},
        {"rank_scale": (0.1, math.inf)},
        {"rank_multiple": 0},
        {"batch_size": 0},
        {"epochs_per_trial": 0},
        {"seed_min_share": 1.0},
        {"sensitivity_budgets": (1.0, -0.5)},
        {"sensitivity_points": 0},
        {"sensitivity_samples": 0},
        {"distill_weight": 1.5},
        {"temperature": 0.0},
        {"verify_top": 0},
        {"verify_slack": -0.1},
    ],
)
def test_config_rejects_bad_values(overrides: dict[str, Any]) -> None:
    (name,) = overrides
    with pytest.raises(ValueError, match=name):  # the message names the setting to fix
        make_config(**overrides)


# --------------------------------------------------------------------------- search space


class Mixed(nn.Module):
    """A 3x3 conv, a 1x1 conv and a Linear head: every kind of layer the space treats apart."""

    def __init__(self) -> None:
        super().__init__()
        self.spatial = nn.Conv2d(3, 16, 3, padding=1)
        self.pointwise = nn.Conv2d(16, 24, 1)
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.pointwise(torch.relu(self.spatial(x))))  # (N, 24, H, W)
        return self.head(x.mean(dim=(2, 3)))


def test_space_parameter_names(ctx: SearchContext) -> None:
    assert [s.name for s in ctx.spaces] == [i.name for i in ctx.layers if i.compressible]
    for space in ctx.spaces:
        assert space.method_param == f"{space.name}.method"
        assert space.scale_param == f"{space.name}.rank_scale"


def test_space_offers_keep_and_only_applicable_methods() -> None:
    model = Mixed()
    layers = inventory(model, torch.randn(1, 3, 8, 8))
    spaces = {s.name: s for s in build_space(model, layers, make_config())}
    assert set(spaces) == {"spatial", "pointwise", "head"}
    for name, space in spaces.items():
        assert space.methods[0] == KEEP
        default = [
            m
            for m in applicable_methods(model.get_submodule(name))
            if get_method(m).in_default_search
        ]
        assert space.methods[1:] == tuple(default)
    assert {"tucker2", "cp", "svd"} <= set(spaces["spatial"].methods)
    for name in ("pointwise", "head"):
        assert "tucker2" not in spaces[name].methods
        assert "cp" not in spaces[name].methods
        assert "svd" in spaces[name].methods


def test_opt_in_families_join_the_space_only_when_named() -> None:
    model = Mixed()
    layers = inventory(model, torch.randn(1, 3, 8, 8))
    everything = sorted(
        {
            m
            for name in ("spatial", "pointwise", "head")
            for m in applicable_methods(model.get_submodule(name))
        }
    )
    opt_in = [m for m in everything if not get_method(m).in_default_search]
    assert opt_in, "no opt-in decomposition family applies to the test model"
    default = build_space(model, layers, make_config())
    assert not {m for s in default for m in s.methods} & set(opt_in)
    named = build_space(model, layers, make_config(methods=tuple(everything)))
    assert {m for s in named for m in s.methods} == {KEEP, *everything}


def test_pruning_is_never_offered_for_the_output_layer() -> None:
    model = Mixed()
    layers = inventory(model, torch.randn(1, 3, 8, 8))
    spaces = {s.name: s for s in build_space(model, layers, make_config(methods=("svd", "prune")))}
    assert "prune" not in spaces["head"].methods
    assert "prune" in spaces["pointwise"].methods


def test_space_restricted_to_configured_methods() -> None:
    model = Mixed()
    layers = inventory(model, torch.randn(1, 3, 8, 8))
    spaces = build_space(model, layers, make_config(methods=("tucker2",)))
    assert [(s.name, s.methods) for s in spaces] == [("spatial", (KEEP, "tucker2"))]


def test_seed_ranks_clamped_into_range(ctx: SearchContext) -> None:
    fraction = ctx.config.min_rank_fraction
    for space in ctx.spaces:
        module = ctx.model.get_submodule(space.name)
        for method, ranks in space.seed_ranks.items():
            limits = get_method(method).max_ranks(module)
            for rank, raw, limit in zip(ranks, space.raw_ranks[method], limits):
                assert max(1, math.ceil(fraction * limit)) <= rank <= limit
                if 1 <= raw <= limit and raw >= fraction * limit:
                    assert rank == raw


def _all_method_params(ctx: SearchContext, method: str, scale: float) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for space in ctx.spaces:
        params[space.method_param] = method if method in space.methods else KEEP
        params[space.scale_param] = scale
    return params


@pytest.mark.parametrize("method", ["tucker2", "cp", "svd"])
@pytest.mark.parametrize("scale", [0.5, 1.0, 1.7])
def test_plan_from_params_scales_evbmf_ranks(ctx: SearchContext, method: str, scale: float) -> None:
    params = _all_method_params(ctx, method, scale)
    plan = plan_from_params(ctx.model, ctx.spaces, params, ctx.config)
    for space in ctx.spaces:
        if method not in space.methods:
            assert space.name not in plan
            continue
        limits = get_method(method).max_ranks(ctx.model.get_submodule(space.name))
        expected = tuple(
            min(max(round(r * scale), 1), limit)
            for r, limit in zip(space.seed_ranks[method], limits)
        )
        assert plan[space.name].method == method
        assert plan[space.name].ranks == expected


@pytest.mark.parametrize("method", ["tucker2", "cp", "svd"])
@pytest.mark.parametrize("scale", [0.6, 1.0, 1.3, 2.0])
def test_plan_from_params_respects_rank_multiple(
    model: nn.Module, data: DataBundle, method: str, scale: float
) -> None:
    config = make_config(rank_multiple=8)
    ctx = prepare(model, data, config)
    plan = plan_from_params(ctx.model, ctx.spaces, _all_method_params(ctx, method, scale), config)
    checked = 0
    for space in ctx.spaces:
        if method not in space.methods:
            continue
        limits = get_method(method).max_ranks(ctx.model.get_submodule(space.name))
        for rank, base, limit in zip(plan[space.name].ranks, space.seed_ranks[method], limits):
            value = max(1.0, base * scale)
            assert 1 <= rank <= limit
            if value >= 4:  # rounds to a positive multiple of 8
                assert rank % 8 == 0 or rank == limit, (space.name, rank, limit)
                assert rank == min(round(value / 8) * 8, limit)
                checked += 1
    assert checked > 0


def test_plan_from_params_keeps_unnamed_and_keep_layers(ctx: SearchContext) -> None:
    first, second = ctx.spaces[0], ctx.spaces[1]
    params = {first.method_param: KEEP, first.scale_param: 0.5, second.method_param: "svd"}
    plan = plan_from_params(ctx.model, ctx.spaces, params, ctx.config)
    assert list(plan) == [second.name]  # scale defaults to 1.0: the clamped EVBMF rank
    assert plan[second.name].ranks == second.seed_ranks["svd"]


def test_seed_trials_labels_and_dense_output_layer(ctx: SearchContext) -> None:
    seeds = seed_trials(ctx.model, ctx.spaces, ctx.layers, ctx.config)
    labels = [label for label, _ in seeds]
    assert labels[0] == "evbmf-tucker2"
    assert labels[-2:] == ["evbmf-tucker2-x0.5", "evbmf-tucker2-x1.5"]
    assert len(set(labels)) == len(labels)
    output = [i.name for i in ctx.layers if i.macs > 0][-1]
    assert output == "classifier"
    names = {p for s in ctx.spaces for p in (s.method_param, s.scale_param)}
    by_name = {i.name: i for i in ctx.layers}
    total = sum(i.params for i in ctx.layers)
    for label, params in seeds:
        assert set(params) == names
        assert params["classifier.method"] == KEEP, label
        for space in ctx.spaces:
            share = by_name[space.name].params / total
            small = share < ctx.config.seed_min_share and label != "evbmf-tucker2"
            if space.name != output:
                assert (params[space.method_param] == KEEP) == small, (label, space.name)
    tucker = dict(seeds)["evbmf-tucker2"]
    for space in ctx.spaces[:-1]:  # every spatial conv of tinycnn gets Tucker-2 at EVBMF ranks
        assert tucker[space.method_param] == "tucker2"
        assert tucker[space.scale_param] == 1.0
    half = dict(seeds)["evbmf-tucker2-x0.5"]
    assert all(v == 0.5 for k, v in half.items() if k.endswith(".rank_scale"))


def test_seed_trials_keep_small_layers_dense_except_in_the_kim_seed(ctx: SearchContext) -> None:
    by_name = {i.name: i for i in ctx.layers}
    total = sum(i.params for i in ctx.layers)
    share = {s.name: by_name[s.name].params / total for s in ctx.spaces[:-1]}
    threshold = max(share.values())  # every non-output layer but the largest is "small"
    seeds = dict(
        seed_trials(ctx.model, ctx.spaces, ctx.layers, make_config(seed_min_share=threshold))
    )
    largest = max(share, key=lambda n: share[n])
    for name in share:
        assert seeds["evbmf-tucker2"][f"{name}.method"] != KEEP
        assert (seeds["evbmf-tucker2-x0.5"][f"{name}.method"] == KEEP) == (name != largest)
    none_small = dict(seed_trials(ctx.model, ctx.spaces, ctx.layers, make_config(seed_min_share=0)))
    for name in share:
        assert none_small["evbmf-tucker2-x0.5"][f"{name}.method"] != KEEP


def test_scale_grid_is_geometric_from_the_top() -> None:
    grid = scale_grid(make_config(rank_scale=(0.1, 4.0), sensitivity_points=5))
    assert grid[0] == 4.0 and grid[-1] == pytest.approx(0.1, rel=1e-3)
    ratios = [a / b for a, b in itertools.pairwise(grid)]
    assert all(r == pytest.approx(ratios[0], rel=1e-3) for r in ratios)
    assert scale_grid(make_config(rank_scale=(0.5, 0.5))) == [0.5]


def test_layer_sensitivity_full_rank_costs_nothing(ctx: SearchContext, data: DataBundle) -> None:
    """At scales that reach each layer's full rank the model is reproduced: no drop."""
    config = make_config(rank_scale=(0.5, 1000.0), sensitivity_points=4, seed_min_share=0.0)
    scanned = layer_sensitivity(ctx.model, data, ctx.spaces, ctx.layers, config, device=ctx.device)
    output = [i.name for i in ctx.layers if i.macs > 0][-1]
    assert output not in scanned  # kept dense in every seed, so never scanned
    assert set(scanned) == {s.name for s in ctx.spaces} - {output}
    for name, points in scanned.items():
        assert points[0][0] == 1000.0
        assert abs(points[0][1]) <= 100 / len(data.y_val), name  # at most one example flips
        assert [p[0] for p in points] == scale_grid(config)[: len(points)]


def test_layer_sensitivity_stops_past_the_largest_budget(
    ctx: SearchContext, data: DataBundle
) -> None:
    config = make_config(
        sensitivity_budgets=(0.0,), sensitivity_points=9, seed_min_share=0.0, ratio_targets=()
    )
    scanned = layer_sensitivity(ctx.model, data, ctx.spaces, ctx.layers, config, device=ctx.device)
    for points in scanned.values():
        assert all(drop <= 0.0 for _, drop in points[:-1])  # the scan ends at the first miss


def test_sensitivity_seeds_take_the_smallest_scale_within_each_budget(ctx: SearchContext) -> None:
    first, second = ctx.spaces[0].name, ctx.spaces[1].name
    fake = {
        first: [(4.0, 0.0), (2.0, 0.3), (1.0, 0.9), (0.5, 3.0), (0.25, 9.0)],
        second: [(4.0, 0.2), (2.0, 5.0)],
    }
    config = make_config(sensitivity_budgets=(0.5, 1.0, 2.0, 10.0), seed_min_share=0.0)
    seeds = dict(seed_trials(ctx.model, ctx.spaces, ctx.layers, config, sensitivity=fake))
    half, one, ten = seeds["sensitivity-0.5pt"], seeds["sensitivity-1pt"], seeds["sensitivity-10pt"]
    assert (half[f"{first}.rank_scale"], one[f"{first}.rank_scale"]) == (2.0, 1.0)
    assert ten[f"{first}.rank_scale"] == 0.25
    assert half[f"{second}.rank_scale"] == 4.0 and ten[f"{second}.rank_scale"] == 2.0
    assert "sensitivity-2pt" not in seeds  # the same plan as the 1-point seed, enqueued once
    tight = dict(
        seed_trials(
            ctx.model,
            ctx.spaces,
            ctx.layers,
            make_config(sensitivity_budgets=(0.1,), seed_min_share=0.0),
            sensitivity=fake,
        )
    )
    assert tight["sensitivity-0.1pt"][f"{second}.method"] == KEEP  # no scale fits the budget
    assert tight["sensitivity-0.1pt"][f"{first}.rank_scale"] == 4.0


def test_seed_trials_follow_the_rank_scale_bounds(ctx: SearchContext) -> None:
    config = make_config(rank_scale=(1.2, 3.0))
    seeds = dict(seed_trials(ctx.model, ctx.spaces, ctx.layers, config))
    assert "evbmf-tucker2-x0.5" not in seeds
    assert "evbmf-tucker2-x1.5" in seeds
    assert all(v == 1.2 for k, v in seeds["evbmf-tucker2"].items() if k.endswith(".rank_scale"))


def test_decomposition_cache_hit_on_repeated_plan(
    ctx: SearchContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []
    for name in list_methods():
        cls = type(get_method(name))
        original = cls.decompose

        def counting(
            self: Any,
            module: nn.Module,
            ranks: tuple[int, ...],
            bctx: BuildContext,
            _original: Callable[..., nn.Module] = original,
        ) -> nn.Module:
            calls.append((self.name, bctx.layer_name))
            return _original(self, module, ranks, bctx)

        monkeypatch.setattr(cls, "decompose", counting)
    ctx.cache.clear()  # count every decomposition from an empty cache
    _, params = seed_trials(ctx.model, ctx.spaces, ctx.layers, ctx.config)[0]
    plan = plan_from_params(ctx.model, ctx.spaces, params, ctx.config)
    assert len(plan.decomposed()) == 3
    first = ctx.compress(plan)
    assert sorted(layer for _, layer in calls) == sorted(plan.decomposed())
    count = len(calls)
    second = ctx.compress(plan)
    assert len(calls) == count  # every layer came from the cache
    x = ctx.data.example_input(16)
    with torch.no_grad():
        assert torch.equal(first.eval()(x), second.eval()(x))
    other = plan_from_params(
        ctx.model, ctx.spaces, {**params, "features.2.rank_scale": 0.5}, ctx.config
    )
    ctx.compress(other)
    assert calls[count:] == [("tucker2", "features.2")]  # only the changed layer is decomposed


# --------------------------------------------------------------------------- study


@pytest.mark.parametrize(
    ("sampler", "cls"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("gp", optuna.samplers.GPSampler),
        ("random", optuna.samplers.RandomSampler),
    ],
)
def test_samplers_build_and_run(
    model: nn.Module, data: DataBundle, sampler: str, cls: type
) -> None:
    config = quick_config(sampler=sampler, seeding=False, pruner="none")
    ctx = prepare(model, data, config)
    study = open_study(ctx, storage=optuna.storages.InMemoryStorage(), study_name=sampler)
    assert isinstance(study.sampler, cls)
    run_trials(ctx, study)
    trials = study.get_trials()
    assert len(trials) == 3
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    names = {p for s in ctx.spaces for p in (s.method_param, s.scale_param)}
    assert all(set(t.params) == names for t in trials)
    assert not seed_labels(trials)


@pytest.mark.parametrize(
    ("overrides", "cls"),
    [
        ({}, FeasibilityPruner),
        ({"pruner": "feasibility", "pareto": True}, optuna.pruners.NopPruner),
        ({"pruner": "median"}, optuna.pruners.MedianPruner),
        ({"pruner": "halving"}, optuna.pruners.SuccessiveHalvingPruner),
        ({"pruner": "none"}, optuna.pruners.NopPruner),
        ({"pruner": "median", "pareto": True}, optuna.pruners.NopPruner),
    ],
)
def test_pruners(overrides: dict[str, Any], cls: type) -> None:
    assert isinstance(make_pruner(make_config(**overrides)), cls)


def test_sensitivity_scanned_only_by_the_process_that_creates_the_study(
    model: nn.Module, data: DataBundle
) -> None:
    storage = optuna.storages.InMemoryStorage()
    creator = prepare(copy.deepcopy(model), data, make_config())
    assert creator.sensitivity is None  # prepare does not scan
    open_study(creator, storage=storage, study_name="s")
    assert creator.sensitivity  # scanned to build the seeds
    joiner = prepare(copy.deepcopy(model), data, make_config())
    open_study(joiner, storage=storage, study_name="s", fail_running=False)
    assert joiner.sensitivity is None  # the seeds are already queued: no scan


def test_seeds_enqueued_once_on_create(ctx: SearchContext, tmp_path: Path) -> None:
    storage = sqlite(tmp_path / "s.db")
    expected = [
        label
        for label, _ in seed_trials(
            ctx.model, ctx.spaces, ctx.layers, ctx.config, sensitivity=ctx.seed_sensitivity()
        )
    ][: seed_budget(ctx.config.trials)]
    study = open_study(ctx, storage=storage, study_name="s")
    assert seed_labels(study.get_trials()) == expected
    assert all(t.state == TrialState.WAITING for t in study.get_trials())
    again = open_study(ctx, storage=storage, study_name="s")
    assert seed_labels(again.get_trials()) == expected


def test_no_seeds_without_seeding(model: nn.Module, data: DataBundle) -> None:
    ctx = prepare(model, data, make_config(seeding=False))
    study = open_study(ctx, storage=optuna.storages.InMemoryStorage(), study_name="s")
    assert study.get_trials() == []


def test_running_trial_failed_and_seed_requeued_on_resume(
    ctx: SearchContext, tmp_path: Path
) -> None:
    storage = sqlite(tmp_path / "s.db")
    seeds = seed_trials(
        ctx.model, ctx.spaces, ctx.layers, ctx.config, sensitivity=ctx.seed_sensitivity()
    )[: seed_budget(ctx.config.trials)]
    study = open_study(ctx, storage=storage, study_name="s")
    asked = study.ask()  # a process took the first seed, then died without telling
    assert asked.number == 0
    assert study.get_trials()[0].state == TrialState.RUNNING
    resumed = open_study(ctx, storage=storage, study_name="s")
    trials = resumed.get_trials()
    assert trials[0].state == TrialState.FAIL
    assert finished_trials(resumed) == 0  # interrupted trials do not use up the budget
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    labels = seed_labels(waiting)
    assert Counter(labels) == Counter(label for label, _ in seeds)  # each plan still pending
    requeued = [t for t in waiting if t.user_attrs[SEED_ATTR] == seeds[0][0]]
    assert requeued[0].system_attrs["fixed_params"] == seeds[0][1]
    third = open_study(ctx, storage=storage, study_name="s")  # nothing left running: no change
    assert len(third.get_trials()) == len(trials)


def test_running_sampled_trial_failed_on_resume(model: nn.Module, data: DataBundle) -> None:
    ctx = prepare(model, data, make_config(seeding=False))
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.ask()
    resumed = open_study(ctx, storage=storage, study_name="s")
    assert [t.state for t in resumed.get_trials()] == [TrialState.FAIL]


def test_should_stop_then_resume_completes_the_budget(
    model: nn.Module, data: DataBundle, tmp_path: Path
) -> None:
    # One sensitivity budget: at most five seeds, so the six trials reach a sampled one.
    config = make_config(trials=6, epochs_per_trial=1, final_epochs=1, sensitivity_budgets=(1.0,))
    storage = sqlite(tmp_path / "study.db")
    out = tmp_path / "out"
    progress: list[int] = []
    result = run_search(
        copy.deepcopy(model),
        data,
        config,
        out,
        arch=ARCH,
        storage=storage,
        study_name="resume",
        on_progress=lambda p: progress.append(p.done),
        should_stop=lambda: len(progress) >= 2,
    )
    assert result is None
    assert progress == [1, 2]
    assert not (out / "report.json").exists()
    study = optuna.load_study(study_name="resume", storage=storage)
    assert finished_trials(study) == 2

    result = run_search(model, data, config, out, arch=ARCH, storage=storage, study_name="resume")
    assert result is not None
    trials = optuna.load_study(study_name="resume", storage=storage).get_trials()
    assert len(trials) == config.trials
    assert sorted(t.number for t in trials) == list(range(config.trials))
    assert all(t.state.is_finished() for t in trials)
    ctx = prepare(model, data, config)
    expected = [
        label
        for label, _ in seed_trials(
            ctx.model, ctx.spaces, ctx.layers, config, sensitivity=ctx.seed_sensitivity()
        )
    ][: seed_budget(config.trials)]
    # the seeds, once each, in order (pushes of the best trial may follow: see test_push.py)
    assert [s for s in seed_labels(trials) if not s.startswith("push-")] == expected
    assert all(n == 1 for n in Counter(seed_labels(trials)).values())
    assert [r["number"] for r in result.report["trials"]] == list(range(config.trials))


def test_same_seed_same_result(model: nn.Module, data: DataBundle) -> None:
    config = quick_config(trials=7, seeding=False)

    def search(name: str, cfg: SearchConfig) -> list[optuna.trial.FrozenTrial]:
        ctx = prepare(copy.deepcopy(model), data, cfg)
        study = open_study(ctx, storage=optuna.storages.InMemoryStorage(), study_name=name)
        run_trials(ctx, study)
        return study.get_trials()

    first, second = search("a", config), search("b", config)
    assert len(first) == len(second) == 7
    assert [t.params for t in first] == [t.params for t in second]
    assert [t.state for t in first] == [t.state for t in second]
    assert [t.user_attrs.get("accuracy") for t in first] == [
        t.user_attrs.get("accuracy") for t in second
    ]
    other = search("c", quick_config(trials=1, seeding=False, seed=1))
    assert other[0].params != first[0].params
