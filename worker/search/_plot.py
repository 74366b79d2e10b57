"""The Pareto plot of a search: accuracy against compression for every completed trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_pareto(
    records: list[dict[str, Any]],
    front: list[int],
    chosen: int | None,
    path: Path,
    *,
    baseline: float,
    max_drop: float,
) -> None:
    """Accuracy against compression for every completed trial, front joined, choice marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r["state"] == "COMPLETE" and r["accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.scatter(
        [r["compression"] for r in done],
        [100 * r["accuracy"] for r in done],
        s=14,
        c="#999999",
        label="trials",
    )
    seeds = [r for r in done if r["seed"]]
    ax.scatter(
        [r["compression"] for r in seeds],
        [100 * r["accuracy"] for r in seeds],
        s=22,
        marker="s",
        facecolors="none",
        edgecolors="#1f77b4",
        label="EVBMF seeds",
    )
    pts = sorted((r for r in done if r["number"] in front), key=lambda r: r["compression"])
    ax.plot(
        [r["compression"] for r in pts],
        [100 * r["accuracy"] for r in pts],
        "-o",
        color="#ff7f0e",
        ms=4,
        label="Pareto front",
    )
    ax.axhline(100 * baseline - max_drop, color="#d62728", ls="--", lw=1, label="tolerance")
    for r in done:
        if r["number"] == chosen:
            ax.scatter(
                [r["compression"]],
                [100 * r["accuracy"]],
                s=120,
                marker="*",
                color="#2ca02c",
                zorder=5,
                label=f"chosen (trial {chosen})",
            )
    ax.set_xlabel("compression (x)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
