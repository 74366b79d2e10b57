"""``make demo``: train a small CNN on scikit-learn's digits, then compress it end to end.

Runs on the embedded default: the CPU, a local output folder (``runs/demo``) and a SQLite
Optuna study inside it. Running it again resumes the same study and re-finalises.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from worker.cli import main as cli_main

OUT = Path("runs/demo")


def main() -> int:
    weights = OUT / "tinycnn-digits.safetensors"
    if not weights.exists():
        print("== training rankopt:tinycnn on digits (the starting model)")
        code = cli_main(
            ["train", "--arch", "rankopt:tinycnn", "--dataset", "digits", "--epochs", "30",
             "--device", "cpu", "--out", str(weights)]
        )  # fmt: skip
        if code:
            return code
    print("== compressing it: EVBMF-seeded TPE over per-layer methods and ranks, 20 trials")
    code = cli_main(
        ["compress", "--arch", "rankopt:tinycnn", "--weights", str(weights), "--dataset", "digits",
         "--trials", "20", "--epochs-per-trial", "10", "--final-epochs", "20",
         "--max-accuracy-drop", "2.0", "--device", "cpu", "--out", str(OUT / "search")]
    )  # fmt: skip
    if code:
        return code
    report = json.loads((OUT / "search" / "report.json").read_text())
    print("== chosen plan")
    for layer in report["layers"]:
        ranks = ",".join(str(r) for r in layer["ranks"])
        print(f"  {layer['layer']:<14} {layer['method']:<8} {ranks}")
    print(f"== outputs in {OUT / 'search'}: model/ (load with tensorops.load_compressed), "
          "report.json, pareto.png, study.db")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
