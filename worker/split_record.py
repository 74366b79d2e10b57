"""Which data split a model was trained on: written with its weights, checked before a search.

A dataset's train/val/test split is seeded by ``split_seed``, which belongs to the data, not
to the search (issue 19): a model trained with one split and compressed with another would be
validated partly on its own training images. ``rankopt train`` writes a :class:`DataRecord`
into the ``.safetensors`` metadata (key :data:`RECORD_KEY`, a JSON object), so it travels with
the weights to ``rankopt compress`` and to REST uploads. :func:`check_split` compares it with
the split a search will use: a mismatch is logged as a warning, or refused with
:class:`SplitMismatchError` (code ``split_mismatch``) when strict. Weights without a record
(PyTorch files, other tools' safetensors) are not checked.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from worker.errors import WorkerError

__all__ = ["RECORD_KEY", "DataRecord", "SplitMismatchError", "check_split", "read_record"]

logger = logging.getLogger(__name__)

#: The safetensors metadata key of the record.
RECORD_KEY = "rankopt.data"

_FILE_SUFFIXES = (".npz", ".safetensors")


class SplitMismatchError(WorkerError, ValueError):
    """The weights were trained on another dataset or split than the search would use."""

    code = "split_mismatch"


@dataclass(frozen=True)
class DataRecord:
    """The data a model was trained on: the source as given, its name and split seed."""

    dataset: str
    split_seed: int
    name: str = ""

    def to_metadata(self) -> dict[str, str]:
        """The record as safetensors metadata (string values only)."""
        return {RECORD_KEY: json.dumps(asdict(self), sort_keys=True)}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str] | None) -> DataRecord | None:
        """The record in ``metadata``, or ``None`` when there is none or it is malformed."""
        raw = (metadata or {}).get(RECORD_KEY)
        if raw is None:
            return None
        try:
            data: Any = json.loads(raw)
            seed = data["split_seed"]
            if isinstance(seed, bool) or not isinstance(seed, int):
                return None
            name = str(data.get("name", ""))
            return cls(dataset=str(data["dataset"]), split_seed=seed, name=name)
        except (ValueError, TypeError, KeyError):
            return None


def read_record(path: str | Path) -> DataRecord | None:
    """The :class:`DataRecord` of a ``.safetensors`` weights file, or ``None`` (another format,
    no record, or a file that cannot be read: reading the weights reports that)."""
    if Path(path).suffix.lower() != ".safetensors":
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
    except Exception:  # unreadable weights are reported by read_state_dict
        return None
    return DataRecord.from_metadata(metadata)


def _is_file(source: str) -> bool:
    return source.lower().endswith(_FILE_SUFFIXES)


def mismatch(record: DataRecord, dataset: str, split_seed: int) -> str | None:
    """Why ``record`` disagrees with searching ``dataset`` split by ``split_seed``, or ``None``.

    Datasets are compared only when both are named sources (built-ins, ``folder:``,
    ``cifar10:``): a file's path differs between the trainer's machine and the server.
    """
    problems = []
    if not _is_file(dataset) and not _is_file(record.dataset) and record.dataset != dataset:
        problems.append(f"dataset {record.dataset!r}, not {dataset!r}")
    if record.split_seed != split_seed:
        problems.append(f"split_seed {record.split_seed}, not {split_seed}")
    if not problems:
        return None
    return (
        "the weights were trained with "
        + " and ".join(problems)
        + ": the search's validation and test examples may include the model's training "
        f"images; use --split-seed {record.split_seed} (spec split_seed) and the same dataset"
    )


def check_split(
    record: DataRecord | None, dataset: str, split_seed: int, *, strict: bool = False
) -> str | None:
    """Warn (log) about a mismatch between ``record`` and the search's split, and return it.

    Raises:
        SplitMismatchError: ``strict`` and the record disagrees.
    """
    if record is None:
        return None
    problem = mismatch(record, dataset, split_seed)
    if problem is None:
        return None
    if strict:
        raise SplitMismatchError(problem)
    logger.warning("%s", problem)
    return problem
