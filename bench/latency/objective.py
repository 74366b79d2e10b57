"""The latency objective (experiment 5): what the params and latency searches chose per layer,
and each choice's measured speed-up over the dense layer at the search batch."""

from __future__ import annotations

import statistics
from typing import Any

import torch
from _common import markdown_table
from torch import nn

import tensorops as to
from latency.common import KEEP, SLOWER_BELOW, BenchConfig, interleaved, plan_text
from latency.layers import choice_speedup, verdict


def objective_check(
    model: nn.Module,
    layers: list[to.LayerInfo],
    searches: dict[str, dict[str, Any]],
    cfg: BenchConfig,
    shape: tuple[int, int, int],
) -> dict[str, Any]:
    """Per layer: each search's choice and its measured speed-up over the dense layer at the
    search batch (first thread count); which chosen factorisations are slower than dense."""
    torch.set_num_threads(cfg.threads[0])
    plans = {obj: to.Plan.from_dict(s["plan"]) for obj, s in searches.items()}
    rows = []
    slow: dict[str, list[str]] = {obj: [] for obj in plans}
    for info in layers:
        if not info.compressible:
            continue
        row: dict[str, Any] = {"layer": info.name, "choices": {}}
        for objective, plan in plans.items():
            choice = plan.get(info.name)
            if choice is None or choice.keeps:
                row["choices"][objective] = {"choice": "keep", "speedup": 1.0}
                continue
            speed, dense_s = choice_speedup(model, info, choice, cfg.search_batch, cfg)
            row["choices"][objective] = {
                "choice": plan_text(plan, info.name),
                "speedup": speed,
                "verdict": verdict(speed),
                "dense_s": dense_s,
                "added_s": dense_s * (1.0 / max(speed, 1e-12) - 1.0),
            }
            if speed < SLOWER_BELOW:
                slow[objective].append(info.name)
        rows.append(row)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(cfg.search_batch, *shape, generator=gen)
    times, _ = interleaved({"original": model}, x, cfg)
    return {
        "batch": cfg.search_batch,
        "threads": torch.get_num_threads(),
        "model_median_s": statistics.median(times["original"]),
        "rows": rows,
        "slow_choices": slow,
    }


def print_objective(record: dict[str, Any]) -> None:
    check = record.get("objective_check")
    if not check:
        return
    searches = record["searches"]
    print(
        f"\n## {record['arch']}: latency objective vs params objective "
        f"(latency batch {check['batch']}, {check['threads']} thread(s))\n"
    )
    summary = []
    for objective, search in searches.items():
        ratios = search["ratios"]
        summary.append(
            [
                objective,
                search["config"]["trials"],
                search["chosen_trial"],
                "yes" if search["found_feasible"] else "no",
                f"{search['final_accuracy_drop']:.2f} pt",
                f"{ratios.get('params', float('nan')):.2f}x",
                f"{ratios.get('macs', float('nan')):.2f}x",
                f"{ratios.get('latency', float('nan')):.2f}x",
                f"{search['seconds']:.0f} s",
            ]
        )
    print(
        markdown_table(
            [
                "objective",
                "trials",
                "chosen trial",
                "feasible",
                "final drop",
                "params ratio",
                "MAC ratio",
                "latency ratio (search's own measure)",
                "wall",
            ],
            summary,
        )
    )
    print()
    objectives = list(searches)
    headers = ["layer"]
    for objective in objectives:
        headers += [f"{objective}: choice", f"{objective}: layer speed-up, time added"]
    table = []
    for row in check["rows"]:
        cells: list[object] = [row["layer"]]
        for objective in objectives:
            choice = row["choices"][objective]
            mark = choice.get("verdict", "")
            mark = f" **{mark}**" if mark == "SLOWER" else ""
            added = choice.get("added_s")
            extra = "" if added is None else f", {added * 1000:+.3f} ms"
            cells += [choice["choice"], f"{choice['speedup']:.2f}x{mark}{extra}"]
        table.append(cells)
    print(markdown_table(headers, table))
    print()
    model_ms = check["model_median_s"] * 1000
    for objective in objectives:
        slow = check["slow_choices"][objective]
        added = sum(
            row["choices"][objective].get("added_s", 0.0)
            for row in check["rows"]
            if row["layer"] in slow
        )
        print(
            f"* {objective} search: {len(slow)} chosen factorisation(s) measured slower than "
            f"dense at batch {check['batch']}"
            + (
                f" ({', '.join(slow)}), together {added * 1000:+.3f} ms, "
                f"{100 * added / check['model_median_s']:.1f}% of the original's {model_ms:.2f} ms"
                if slow
                else ""
            )
        )
    for objective, search in searches.items():
        checks = search.get("verification") or []
        text = "; ".join(
            f"trial {c['trial']} ({c['compression']:.2f}x): drop {c['final_accuracy_drop']:.2f} pt "
            + ("met" if c["met"] else "rejected")
            for c in checks
        )
        print(f"* {objective} search, final fine-tune of the candidates: {text or 'none'}")
    trials = searches.get("latency", {}).get("trials", [])
    if trials:
        print("\nLatency search trials (compression = the search's measured speed-up):\n")
        table = [
            [
                t["number"],
                t["seed"] or "sampler",
                t["state"],
                "-" if t["accuracy_drop"] is None else f"{t['accuracy_drop']:.2f}",
                "-" if t["compression"] is None else f"{t['compression']:.2f}x",
                sum(
                    1
                    for c in (t["plan"] or {}).values()
                    if isinstance(c, dict) and c.get("method") != KEEP
                ),
            ]
            for t in trials
        ]
        print(
            markdown_table(
                ["trial", "seed plan", "state", "drop (pt)", "speed-up", "layers factorised"],
                table,
            )
        )
