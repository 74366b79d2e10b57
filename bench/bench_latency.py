"""Measured CPU latency of compressed models against their MAC reduction, per layer and per
model, and what the search's latency objective chooses where factorised layers are slow.

Usage::

    .venv/bin/python bench/bench_latency.py [--quick] [--threads 1 2] [--out bench/results]
        [--search-arch rankopt:minivgg] [--search-batch 32] [--search-trials 12]

What runs, in one command (25 minutes on 2 cores that other jobs kept busy, load 7 to 10;
an estimated 10 on 2 quiet ones; ``--quick`` 6 busy, about 2 quiet):

1. **Models.** ``rankopt:lenet5``, ``rankopt:minivgg`` and ``rankopt:lenet500_300`` trained for
   a few epochs on mnist5k (AdamW, lr 0.01, one-cycle), and the CIFAR-size
   ``rankopt:vgg11_bn`` at 3x32x32, *not trained*: its conv and linear weights are synthetic
   "trained-looking" tensors (a decaying-spectrum low-multilinear-rank part plus noise, see
   ``bench_decompositions.trained_like_kernel``) so that EVBMF finds plausible ranks. Its
   accuracy is not measured; its compressed variants are built as structure only (latency
   does not depend on weight values).
2. **Variants** per model: ``evbmf-tucker2`` (Kim et al. 2016: the search's first seed plan,
   Tucker-2 on spatial convs and SVD on matrices at the EVBMF ranks, output layer dense),
   ``evbmf-cp`` (the same with CP on every spatial conv at its EVBMF-derived rank),
   ``uniform-2x`` / ``uniform-4x`` (Tucker-2 on spatial convs, SVD elsewhere, every layer but
   the output one at 1/2 resp. 1/4 of its parameters; a layer that cannot reach the ratio
   stays dense), and for the trained nets the plan a quick params-objective search picks
   (``search-params``) and, for ``--search-arch``, the latency-objective search's plan
   (``search-latency``). Trained-net variants other than the search plans are fine-tuned for
   one epoch before their accuracy is read (the searches' plans are finalised by the search).
3. **Latency**: ``torch.inference_mode``, eval mode, batch 1 and batch 32, for each thread
   count in ``--threads`` (``torch.set_num_threads``). The original and all its variants run
   interleaved, one forward pass each per round with the order rotating every round, after
   warm-up; medians and IQRs are over rounds, and the speed-up is the median over rounds of
   (original's time / variant's time), which is steadier than a ratio of medians when other
   processes share the cores. Goal per row: speed-up >= 0.7 * min(MAC reduction, 4).
4. **Per layer**: for every compressible layer of the CIFAR-size net and of the search net,
   the dense layer against Tucker-2, CP and SVD at the seed ranks, on a random input of that
   layer's shape; speed-ups under 0.9 are marked slower, 0.9 to 1.1 as about dense.
5. **Latency objective**: on the search net, one search with ``objective="params"`` and one
   with ``objective="latency"`` (``latency_batch_size=--search-batch``), same seed and budget,
   one epoch per trial. Per layer: what each chose, and that choice's measured speed-up over
   the dense layer at the search batch; the reading says whether the latency search avoided
   the factorisations measured slower than dense.

Prints markdown tables (machine and versions first, load average and CPU pressure before and
after), writes ``<out>/latency[_quick].json`` and ``<out>/latency[_quick].png``.

The experiments live in ``bench/latency/``: ``common`` (configuration, plans, searches and the
interleaved timing, which is the search's own ``worker.search.time_rounds``), ``models``
(1 to 3), ``layers`` (4) and ``objective`` (5); this script runs them and prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
import torch
from _common import cpu_pressure, machine_info, print_machine, versions
from latency.common import CIFAR_ARCH, DATASET, TRAINED_ARCHS, BenchConfig
from latency.layers import print_per_layer
from latency.models import bench_cifar, bench_trained, plot, print_rows, print_summary
from latency.objective import print_objective

from worker.data import load_dataset

# ---------------------------------------------------------------------------------- main


def make_config(args: argparse.Namespace) -> BenchConfig:
    threads = tuple(args.threads)
    if args.quick:
        return BenchConfig(
            quick=True,
            threads=threads,
            train_epochs=3,
            max_train=1000,
            finetune_epochs=1,
            search_arch=args.search_arch,
            search_batch=args.search_batch,
            search_trials=args.search_trials or 3,
            search_final_epochs=1,
            group_seconds=0.5,
            layer_seconds=0.3,
            min_rounds=5,
            max_rounds=40,
            warmup=2,
            cifar_arch=args.cifar_arch,
        )
    return BenchConfig(
        quick=False,
        threads=threads,
        train_epochs=3,
        max_train=None,
        finetune_epochs=1,
        search_arch=args.search_arch,
        search_batch=args.search_batch,
        search_trials=args.search_trials or 12,
        search_final_epochs=1,
        group_seconds=4.0,
        layer_seconds=2.0,
        min_rounds=15,
        max_rounds=400,
        warmup=5,
        cifar_arch=args.cifar_arch,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget, for a smoke test")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts (1 2)"
    )
    parser.add_argument("--out", default="bench/results", help="folder for the JSON and plot")
    parser.add_argument(
        "--archs", nargs="+", default=list(TRAINED_ARCHS), help="trained (mnist5k) models"
    )
    parser.add_argument("--cifar-arch", default=CIFAR_ARCH, help="untrained CIFAR-size model")
    parser.add_argument(
        "--search-arch",
        default="rankopt:minivgg",
        help="the trained model that gets the latency-objective search too",
    )
    parser.add_argument(
        "--search-batch", type=int, default=32, help="latency_batch_size of the latency search"
    )
    parser.add_argument(
        "--search-trials", type=int, default=None, help="trials per search (12; 3 with --quick)"
    )
    args = parser.parse_args(argv)
    if any(t < 1 for t in args.threads) or args.search_batch < 1:
        parser.error("--threads and --search-batch must be >= 1")
    if args.search_trials is not None and args.search_trials < 1:
        parser.error("--search-trials must be >= 1")
    cfg = make_config(args)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    torch.set_num_threads(cfg.threads[0])
    started = time.perf_counter()
    machine = machine_info()
    vers = versions()
    print("# rankopt CPU latency benchmark" + (" (--quick)" if cfg.quick else ""))
    print("\nCommand: " + " ".join(["bench/bench_latency.py", *(argv or sys.argv[1:])]))
    print_machine(
        machine,
        vers,
        heading="Machine and versions (before the run)",
        threads_label="torch.get_num_threads() at start",
    )
    sys.stdout.flush()

    data = load_dataset(DATASET, split_seed=0, max_train=cfg.max_train)
    records: list[dict[str, Any]] = []
    for arch in args.archs:
        print(f"[{arch}] ...", file=sys.stderr, flush=True)
        record = bench_trained(arch, data, cfg)
        records.append(record)
        print_rows(record)
        print_per_layer(record)
        print_objective(record)
        sys.stdout.flush()
    print(f"[{cfg.cifar_arch}] ...", file=sys.stderr, flush=True)
    cifar = bench_cifar(cfg)
    records.append(cifar)
    print_rows(cifar)
    print_per_layer(cifar)
    print_summary(records)

    after_load = list(os.getloadavg()) if hasattr(os, "getloadavg") else []
    after_pressure = cpu_pressure()
    total = time.perf_counter() - started
    print(
        f"\nTotal {total:.0f} s. After the run: load average "
        + " ".join(f"{v:.2f}" for v in after_load)
        + ", CPU pressure (PSI some avg10/60/300 %) "
        + (" ".join(f"{v:.1f}" for v in after_pressure.values()) or "-")
        + ". Other processes sharing the cores make every timing noisy; the interleaved, paired "
        "speed-ups are far less affected than the absolute milliseconds."
    )
    if cfg.quick:
        print("\n--quick: few rounds and trials; a smoke test, not evidence for the goals.")
    results = {
        "config": asdict(cfg),
        "machine": machine,
        "versions": {**vers, "optuna": optuna.__version__},
        "records": records,
        "load_average_after": after_load,
        "cpu_pressure_after": after_pressure,
        "total_seconds": total,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "latency_quick" if cfg.quick else "latency"
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    png_path = out / f"{stem}.png"
    plot(records, png_path)
    print(f"Results written to {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
