"""The goals and printed tables of ``bench/bench_gpu_vgg.py``."""

from __future__ import annotations

import sys
from typing import Any

from _common import markdown_table

#: Published mixed-decomposition results on CIFAR-10: parameter compression, < 1 point drop.
ANCHORS = {"rankopt:vgg11_bn": 32.0, "rankopt:vgg16_bn": 37.0}
ANCHOR_DROP = 1.0
#: Top-1 accuracy on CIFAR-10 that a well-trained CIFAR-style VGG with batch norm reaches.
FULL_ACCURACY = {"rankopt:vgg11_bn": 0.92, "rankopt:vgg16_bn": 0.935}
FULL_ACCURACY_SLACK = 0.005  # the baseline counts as "full" within half a point


# ----------------------------------------------------------------------------------- report


def anchor_goal(arch: str, report: dict[str, Any], is_cifar10: bool) -> dict[str, Any]:
    anchor = ANCHORS.get(arch)
    ratio = float(report["ratios"]["params"])
    drop = float(report["final"]["accuracy_drop"])
    beats = anchor is not None and ratio > anchor and drop <= ANCHOR_DROP
    if anchor is None:
        status = "n/a (no anchor)"
    elif not is_cifar10:
        status = "N/A: not CIFAR-10"
    else:
        status = "PASS" if beats else "MISS"
    return {
        "goal": f"params ratio > {anchor:g}x at drop ≤ {ANCHOR_DROP:g} pt on CIFAR-10"
        if anchor is not None
        else "-",
        "anchor": anchor,
        "ratio": ratio,
        "drop": drop,
        "comparable": is_cifar10,
        "would_pass": beats,
        "status": status,
    }


def full_accuracy_check(arch: str, accuracy: float, is_cifar10: bool) -> str:
    reference = FULL_ACCURACY.get(arch)
    if reference is None or not is_cifar10:
        return "n/a (not CIFAR-10)" if reference is not None else "n/a"
    gap = 100 * (reference - accuracy)
    if accuracy >= reference - FULL_ACCURACY_SLACK:
        return f"yes (reference {100 * reference:.1f}%)"
    return f"NO: {gap:.2f} pt short of {100 * reference:.1f}%"


def fmt_count(value: Any) -> str:
    return "-" if value is None else f"{int(value):,}"


def print_header(device: dict[str, Any], vers: dict[str, str]) -> None:
    print("\n## Device and versions\n")
    rows: list[list[object]] = [["device", f"{device['type']}: {device['name']}"]]
    if device["type"] == "cuda":
        rows += [
            ["GPU memory", f"{device['total_memory_gib']:.1f} GiB"],
            ["compute capability", device["capability"]],
            ["CUDA / cuDNN", f"{device['cuda']} / {device['cudnn']}"],
        ]
    else:
        rows.append(["note", "no CUDA device used: CPU run"])
    rows += [[name, version] for name, version in vers.items()]
    rows.append(["command", " ".join(["python", *sys.argv])])
    print(markdown_table(["", ""], rows))


def print_arch(result: dict[str, Any]) -> None:
    arch, report = result["arch"], result["report"]
    base, final, ratios = report["baseline"], report["final"], report["ratios"]
    train = result["train"]
    print(f"\n## {arch} on {result['data']['name']}\n")
    if not result["data"]["is_cifar10"]:
        print("**NOT CIFAR-10** — " + result["data"]["description"] + "\n")
    rows: list[list[object]] = [
        [
            "baseline accuracy",
            f"{100 * base['accuracy']:.2f}% after {train['epochs']} epoch(s) ("
            + ("reused from a previous run" if train["reused"] else f"{train['seconds']:.0f} s")
            + ")",
        ],
        ["reached full accuracy", result["full_accuracy"]],
        ["final accuracy", f"{100 * final['accuracy']:.2f}%"],
        [
            "accuracy drop",
            f"{final['accuracy_drop']:.2f} pt (allowed {result['search']['max_accuracy_drop']:g})",
        ],
        ["constraint met", "yes" if final["constraint_met"] else "NO"],
        [
            "params",
            f"{fmt_count(base['params'])} → {fmt_count(final['params'])} ({ratios['params']:.2f}x)",
        ],
        ["MACs", f"{fmt_count(base['macs'])} → {fmt_count(final['macs'])} ({ratios['macs']:.2f}x)"],
        [
            "chosen trial",
            "none: original kept" if report["chosen_trial"] is None else report["chosen_trial"],
        ],
        [
            "trials (complete / feasible / finished)",
            f"{result['trials_complete']} / {result['trials_feasible']} / "
            f"{result['trials_finished']}",
        ],
        ["study", result["study"]],
    ]
    print(markdown_table(["", ""], rows))
    print("\nPer-layer plan:\n")
    layer_rows = [
        [
            layer["layer"],
            layer["method"],
            "x".join(str(r) for r in layer["ranks"]) or "-",
            fmt_count(layer.get("params_before")),
            fmt_count(layer.get("params_after")),
            fmt_count(layer.get("macs_before")),
            fmt_count(layer.get("macs_after")),
        ]
        for layer in report["layers"]
    ]
    headers = ["layer", "method", "ranks", "params", "params after", "MACs", "MACs after"]
    print(markdown_table(headers, layer_rows))
    print("\nPhases:\n")
    phase_rows = [
        [
            name,
            f"{p['seconds']:.1f}",
            "-" if p["peak_gib"] is None else f"{p['peak_gib']:.2f}",
        ]
        for name, p in result["phases"].items()
    ]
    print(markdown_table(["phase", "wall s", "peak GPU memory GiB"], phase_rows))


def print_summary(results: list[dict[str, Any]]) -> None:
    print("\n## Against the published anchors\n")
    rows = []
    for result in results:
        goal = result["anchor"]
        anchor = "-" if goal["anchor"] is None else f"{goal['anchor']:g}x"
        rows.append(
            [
                result["arch"],
                result["data"]["name"],
                anchor,
                f"{goal['ratio']:.2f}x",
                f"{goal['drop']:.2f}",
                "yes" if goal["comparable"] else "NO",
                goal["status"],
            ]
        )
    headers = ["arch", "data", "anchor", "ours (params)", "drop (pt)", "comparable", "status"]
    print(markdown_table(headers, rows))
    if any(not r["data"]["is_cifar10"] for r in results):
        print(
            "\nNOT CIFAR-10: the rows marked N/A ran on mnist5k upsampled; they show the pipeline "
            "works, not how rankopt compares with the anchors."
        )
