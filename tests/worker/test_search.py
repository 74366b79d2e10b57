"""Tests for worker.search: space, seeds, study resume, determinism, finalise, end to end."""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections import Counter
from collections.abc import Callable
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
    BuildContext,
    Choice,
    Plan,
    applicable_methods,
    get_method,
    inventory,
    list_methods,
    load_compressed,
    measure_cost,
)
from worker.data import DataBundle
from worker.search import (
    SEED_ATTR,
    SearchConfig,
    SearchContext,
    SearchResult,
    build_space,
    fallback_candidate,
    finalize,
    finished_trials,
    open_study,
    pareto_front,
    plan_from_params,
    prepare,
    run_search,
    run_trials,
    seed_trials,
    verification_candidates,
)
from worker.search._pruning import FeasibilityPruner
from worker.search._seeds import seed_budget
from worker.search._sensitivity import layer_sensitivity, scale_grid
from worker.search._study import make_pruner
from worker.training import evaluate

ARCH = {"arch": "rankopt:tinycnn", "kwargs": {"num_classes": 10, "in_channels": 1}}
MAX_DROP = 3.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_config(**overrides: Any) -> SearchConfig:
    settings: dict[str, Any] = {
        "trials": 8,
        "epochs_per_trial": 3,
        "final_epochs": 4,
        "batch_size": 64,
        "device": "cpu",
        "max_accuracy_drop": MAX_DROP,
    }
    settings.update(overrides)
    return SearchConfig(**settings)


def quick_config(**overrides: Any) -> SearchConfig:
    """For tests about the machinery rather than the result: one epoch a trial, no final run."""
    settings: dict[str, Any] = {"trials": 3, "epochs_per_trial": 1, "final_epochs": 0}
    settings.update(overrides)
    return make_config(**settings)


def sqlite(path: Path) -> str:
    return f"sqlite:///{path}"


def memory_search(
    model: nn.Module, data: DataBundle, config: SearchConfig, out: Path, name: str = "job"
) -> tuple[SearchContext, optuna.Study, SearchResult]:
    """What run_search does, on an in-memory storage (SQLite costs ~0.4 s a trial here)."""
    ctx = prepare(model, data, config)
    study = open_study(ctx, storage=optuna.storages.InMemoryStorage(), study_name=name)
    run_trials(ctx, study)
    return ctx, study, finalize(ctx, study, out, arch=ARCH)


def seed_labels(trials: list[Any]) -> list[str]:
    return [t.user_attrs[SEED_ATTR] for t in trials if SEED_ATTR in t.user_attrs]


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
    x = ctx.data.x_val[:16]
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
    if report["chosen_trial"] is not None:  # the closed-form estimate equals the measurement
        chosen = next(r for r in records if r["number"] == report["chosen_trial"])
        assert report["final"]["macs"] == chosen["macs"]
        assert report["final"]["params"] == chosen["params_count"]


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
    from worker.search import SEED_ATTR, finished_trials
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

    example = ctx.data.x_val[:4]
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
