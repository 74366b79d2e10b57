"""Which data split a model was trained on: written with its weights, checked before a search.

A dataset's train/val/test split is seeded by ``split_seed``, which belongs to the data, not
to the search (issue 19): a model trained with one split and compressed with another would be
validated partly on its own training images. ``rankopt train`` writes a :class:`DataRecord`
into the ``.safetensors`` metadata (key :data:`RECORD_KEY`, a JSON object), so it travels with
the weights to ``rankopt compress`` and to REST uploads. :func:`check_split` compares it with
the split a search will use: a mismatch is logged as a warning, or refused with
:class:`SplitMismatchError` (code ``split_mismatch``) when strict. For image sources whose
reading is a choice (``folder:``, ``cifar10:``) the record also keeps ``image_size`` and
``preprocess``; a search that would read the images otherwise is warned (the model would be
judged on inputs unlike those it learnt; a size it cannot take at all is refused later, by the
input check). Weights without a record (PyTorch files, other tools' safetensors) are not
checked, and a record without the two fields (older weights) checks the split only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from service.names import SERVER_DATA_RE
from worker.errors import WorkerError

__all__ = [
    "RECORD_KEY",
    "DataRecord",
    "SplitMismatchError",
    "check_split",
    "read_record",
    "reading_mismatch",
    "reads_images",
]

logger = logging.getLogger(__name__)

#: The safetensors metadata key of the record.
RECORD_KEY = "rankopt.data"

_FILE_SUFFIXES = (".npz", ".safetensors")


def reads_images(source: str) -> bool:
    """Whether ``source`` is read through ``image_size``/``preprocess``: the server-side image
    sources (``folder:``, ``cifar10:``) of :data:`service.names.SERVER_DATA_PATTERN`."""
    return SERVER_DATA_RE.match(source) is not None


class SplitMismatchError(WorkerError, ValueError):
    """The weights were trained on another dataset or split than the search would use."""

    code = "split_mismatch"


@dataclass(frozen=True)
class DataRecord:
    """The data a model was trained on: the source as given, its name and split seed."""

    dataset: str
    split_seed: int
    name: str = ""
    image_size: int | None = None  # how an image source was read (None: not one)
    preprocess: str | None = None

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
            size, preprocess = data.get("image_size"), data.get("preprocess")
            if isinstance(size, bool) or not isinstance(size, int | None):
                size = None
            return cls(
                dataset=str(data["dataset"]),
                split_seed=seed,
                name=name,
                image_size=size,
                preprocess=preprocess if isinstance(preprocess, str) else None,
            )
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


def reading_mismatch(
    record: DataRecord, dataset: str, image_size: int, preprocess: str
) -> str | None:
    """Why the search would read ``dataset``'s images otherwise than ``record`` says the model
    was trained on, or ``None`` (also when either side is no image source or the record
    predates the fields). The size counts only for ``resize`` (``imagenet`` crops to 224)."""
    if not reads_images(dataset) or record.preprocess is None or record.image_size is None:
        return None
    trained = (record.preprocess, record.image_size if record.preprocess == "resize" else None)
    searched = (preprocess, image_size if preprocess == "resize" else None)
    if trained == searched:
        return None

    def said(how: str, size: int | None) -> str:
        return f"{how!r}" + (f" at {size} px" if size is not None else "")

    return (
        f"the weights were trained on images read as {said(*trained)}, and the search would "
        f"read them as {said(*searched)}: the model would be judged on inputs unlike those it "
        f"learnt; use --preprocess {record.preprocess} --image-size {record.image_size} (spec "
        "preprocess, image_size)"
    )


def check_split(
    record: DataRecord | None,
    dataset: str,
    split_seed: int,
    *,
    strict: bool = False,
    image_size: int | None = None,
    preprocess: str | None = None,
) -> str | None:
    """Warn (log) about a mismatch between ``record`` and the search's split, and return it;
    with ``image_size`` and ``preprocess``, also (a warning only) about reading the images
    otherwise than the model was trained on.

    Raises:
        SplitMismatchError: ``strict`` and the record disagrees on the split.
    """
    if record is None:
        return None
    problem = mismatch(record, dataset, split_seed)
    if problem is not None and strict:
        raise SplitMismatchError(problem)
    reading = None
    if image_size is not None and preprocess is not None:
        reading = reading_mismatch(record, dataset, image_size, preprocess)
    found = [p for p in (problem, reading) if p is not None]
    for message in found:
        logger.warning("%s", message)
    return "; ".join(found) or None
