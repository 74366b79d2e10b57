"""The data split belongs to the data, not the search (issue 19): ``--split-seed``/``split_seed``
is separate from ``--seed``, recorded with the weights, and checked before a search."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import save_file

import worker.data as data_module
import worker.search as search_module
from service.settings import Settings
from service.spec import BUILTIN_DATASETS, JobSpec
from service.store import ApiKeyRecord, Store
from tests.worker.pool_support import submit
from worker.cli import EXIT_INTERRUPTED, EXIT_USAGE, main
from worker.data import DataSplits, LabeledDataset, list_builtin_datasets, open_dataset
from worker.split_record import (
    RECORD_KEY,
    DataRecord,
    SplitMismatchError,
    check_split,
    mismatch,
    read_record,
)


class Spy:
    """Stands in for the data layer and the search behind the CLI: records the splits each
    command loaded (with their example ids) and what the search was given, runs no search."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.splits: list[DataSplits] = []
        self.searches: list[tuple[Any, Any]] = []
        monkeypatch.setattr(data_module, "open_dataset", self.open_dataset)
        monkeypatch.setattr(search_module, "run_search", self.run_search)

    def open_dataset(self, source: str, **kwargs: Any) -> DataSplits:
        splits = open_dataset(source, **kwargs)  # the real one, imported before the patch
        self.splits.append(splits)
        return splits

    def run_search(self, model: Any, data: Any, config: Any, *_: Any, **__: Any) -> None:
        self.searches.append((data, config))
        return None  # as if stopped: compress exits 130 without searching


def _keys(dataset: LabeledDataset | None) -> set[str]:
    assert dataset is not None
    return {dataset.key(i) for i in range(len(dataset))}


def _train(out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--arch",
        "rankopt:tinycnn",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]


def _compress(weights: Path, out: Path, *extra: str) -> list[str]:
    return [
        "compress",
        "--arch",
        "rankopt:tinycnn",
        "--weights",
        str(weights),
        "--dataset",
        "digits",
        "--out",
        str(out),
        "--device",
        "cpu",
        *extra,
    ]


@pytest.fixture
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Spy]:
    spy = Spy(monkeypatch)
    weights = tmp_path / "tiny.safetensors"
    assert main(_train(weights)) == 0
    return weights, spy


def test_train_records_dataset_and_split_seed(tmp_path: Path) -> None:
    weights = tmp_path / "tiny.safetensors"
    assert main(_train(weights, "--seed", "4", "--split-seed", "2")) == 0
    assert read_record(weights) == DataRecord(dataset="digits", split_seed=2, name="digits")


def test_only_seed_changes_keeps_training_images_out_of_val_and_test(
    trained: tuple[Path, Spy], tmp_path: Path
) -> None:
    weights, spy = trained
    code = main(_compress(weights, tmp_path / "job", "--seed", "1"))
    assert code == EXIT_INTERRUPTED  # the spy's search stops at once
    trained_on, searched = spy.splits
    data, config = spy.searches[0]
    assert data is spy.splits[1]  # the search got the split the data layer carved
    assert (config.seed, config.split_seed) == (1, 0)
    train_keys = _keys(trained_on.train)
    assert len(train_keys) == len(trained_on.train)  # ids: one key per example
    assert train_keys.isdisjoint(_keys(searched.val))
    assert train_keys.isdisjoint(_keys(searched.test))
    assert _keys(searched.train) == train_keys  # the very same split


def test_another_split_seed_warns_and_would_leak(
    trained: tuple[Path, Spy], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights, spy = trained
    with caplog.at_level(logging.WARNING, logger="worker.split_record"):
        code = main(_compress(weights, tmp_path / "job", "--split-seed", "1"))
    assert code == EXIT_INTERRUPTED  # warned, searched anyway
    assert "split_seed 0, not 1" in caplog.text and "--split-seed 0" in caplog.text
    # what the warning is about: this split's validation holds training images of the model
    trained_on, searched = spy.splits
    assert _keys(trained_on.train) & _keys(searched.val)


def test_strict_split_refuses_another_split_seed(
    trained: tuple[Path, Spy], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights, spy = trained
    args = _compress(weights, tmp_path / "job", "--split-seed", "3", "--strict-split")
    assert main(args) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "[split_mismatch]" in err and "split_seed 0, not 3" in err
    assert spy.searches == []
    # the same split passes the strict check
    assert main(_compress(weights, tmp_path / "job", "--seed", "7", "--strict-split")) == 130


def test_weights_without_a_record_are_not_checked(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"w": __import__("torch").zeros(1)}, str(plain))
    assert read_record(plain) is None
    assert read_record(tmp_path / "state.pt") is None
    assert check_split(None, "digits", 5, strict=True) is None
    broken = DataRecord.from_metadata({RECORD_KEY: "{not json"})
    assert broken is None


def test_mismatch_compares_named_datasets_only() -> None:
    record = DataRecord(dataset="digits", split_seed=0)
    assert mismatch(record, "digits", 0) is None
    assert "dataset 'digits', not 'mnist5k'" in (mismatch(record, "mnist5k", 0) or "")
    # a file's path differs between machines: only the split seed is compared
    uploaded = DataRecord(dataset="/home/me/data.npz", split_seed=0)
    assert mismatch(uploaded, "/srv/uploads/ab12.npz", 0) is None
    assert mismatch(uploaded, "/srv/uploads/ab12.npz", 1) is not None
    with pytest.raises(SplitMismatchError) as err:
        check_split(record, "digits", 2, strict=True)
    assert err.value.code == "split_mismatch"


def test_spec_split_seed_is_separate_from_seed() -> None:
    spec = JobSpec.model_validate({"arch": "rankopt:lenet5", "seed": 3})
    assert (spec.seed, spec.split_seed) == (3, 0)
    assert JobSpec.model_validate({"arch": "rankopt:lenet5", "split_seed": 2}).split_seed == 2
    with pytest.raises(ValueError, match="split_seed"):
        JobSpec.model_validate({"arch": "rankopt:lenet5", "split_seed": -1})


def test_spec_lists_every_builtin_dataset() -> None:
    assert set(BUILTIN_DATASETS) == set(list_builtin_datasets())
    assert JobSpec.model_validate({"arch": "rankopt:lenet5", "dataset": "fashion-mnist"})


def test_a_job_splits_by_its_split_seed_and_warns_on_another(
    settings: Settings,
    store: Store,
    owner: ApiKeyRecord,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import torch

    from worker.pool._inputs import load_inputs, parse_spec
    from worker.zoo import get_model

    model = get_model("rankopt:tinycnn", num_classes=10)
    weights = tmp_path / "w.safetensors"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata=DataRecord("digits", 0).to_metadata())
    job = submit(store, settings, owner, weights, dataset="digits", seed=1, split_seed=2)
    with caplog.at_level(logging.WARNING, logger="worker.split_record"):
        inputs = load_inputs(settings, job, parse_spec(job.spec))
    assert inputs.data.split_seed == 2
    expected = open_dataset("digits", split_seed=2).to_bundle().x_val
    assert torch.equal(inputs.data.to_bundle().x_val, expected)
    assert "split_seed 0, not 2" in caplog.text


def test_submit_sends_split_seed_apart_from_seed() -> None:
    from service.cli.commands import _spec
    from worker.cli import _parser

    argv = "submit --arch rankopt:lenet5 --weights w.safetensors --dataset fashion-mnist"
    args = _parser().parse_args([*argv.split(), "--seed", "1", "--split-seed", "2"])
    spec, upload = _spec(args)
    assert upload is None
    assert (spec["dataset"], spec["seed"], spec["split_seed"]) == ("fashion-mnist", 1, 2)
    assert JobSpec.model_validate(spec).split_seed == 2
