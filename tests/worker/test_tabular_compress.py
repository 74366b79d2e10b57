"""The drug-design stand-ins compress end to end: an MLP on (N, 30) descriptors and a 1-D CNN
on (N, 3, 10) sequences, each trained on the built-in breast cancer data, searched with a tiny
budget, finalised, and reloaded from the checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tensorops import inventory, load_compressed, measure_cost
from worker.data import load_dataset
from worker.search import SearchConfig, run_search
from worker.training import evaluate, train
from worker.zoo import get_model

CASES = [
    ("rankopt:tabular_mlp", "breast-cancer", {"linear"}),
    ("rankopt:tabular_cnn1d", "breast-cancer-seq", {"conv1d", "linear"}),
]


@pytest.mark.parametrize(("arch", "dataset", "kinds"), CASES)
def test_tabular_model_compresses_end_to_end(
    arch: str, dataset: str, kinds: set[str], tmp_path: Path
) -> None:
    data = load_dataset(dataset, seed=0)
    torch.manual_seed(0)
    kwargs = {"num_classes": data.num_classes, "in_channels": data.input_shape[0]}
    model = get_model(arch, **kwargs)
    layers = inventory(model, data.example_input(1))
    assert kinds == {info.kind for info in layers if info.compressible}
    trained = train(model, data, epochs=15, optimizer="adamw", lr=0.003, device="cpu")
    assert trained.final_val_accuracy > 0.9
    config = SearchConfig(
        trials=6,
        epochs_per_trial=1,
        final_epochs=2,
        batch_size=64,
        device="cpu",
        max_accuracy_drop=3.0,
    )
    result = run_search(model.eval(), data, config, tmp_path, arch={"arch": arch, "kwargs": kwargs})
    assert result is not None
    report = result.report
    assert any(entry["method"] != "keep" for entry in report["layers"])
    assert report["final"]["params"] < report["baseline"]["params"]
    loaded = load_compressed(result.checkpoint)
    assert evaluate(loaded, data, device="cpu").accuracy == report["final"]["accuracy"]
    cost = measure_cost(loaded, data.example_input(1))
    assert (cost.params, cost.macs) == (report["final"]["params"], report["final"]["macs"])
