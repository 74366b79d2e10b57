"""The containers every data source produces: :class:`DataSplits` (datasets) and
:class:`DataBundle` (the same splits held as tensors, for small data and older callers)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.data._datasets import ArrayDataset, LabeledDataset
from worker.data._errors import DatasetError

__all__ = ["SPLIT_NAMES", "DataBundle", "DataSplits", "array_splits", "materialize"]

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class DataSplits:
    """Train, validation and test splits as :class:`LabeledDataset` s.

    ``train`` is for fine-tuning, ``val`` for every decision of a search, ``test`` is held out
    for the final report. ``test`` is ``None`` when the source has none; ``test_note`` then says
    why (otherwise, where the test split came from). ``split_seed`` is the seed of every
    carve-out (never the search seed), so the same data and ``split_seed`` always give the same
    splits. Splits are disjoint.
    """

    name: str
    train: LabeledDataset
    val: LabeledDataset
    test: LabeledDataset | None
    num_classes: int
    split_seed: int = 0
    test_note: str = ""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example: (C, H, W), (C, L) or (F,)."""
        return tuple(int(d) for d in self.val.sample_shape)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A batch of validation images (no transform), for tracing a model."""
        n = min(batch, len(self.val))
        return torch.stack([self.val.image(i) for i in range(n)])

    def split(self, name: str) -> LabeledDataset:
        """The split called ``name`` (``train``, ``val`` or ``test``).

        Raises:
            DatasetError: an unknown name, or ``test`` when the source has none (the message
                gives ``test_note``).
        """
        if name not in SPLIT_NAMES:
            raise DatasetError(f"split must be one of {', '.join(SPLIT_NAMES)}; got {name!r}")
        dataset: LabeledDataset | None = getattr(self, name)
        if dataset is None:
            raise DatasetError(f"dataset {self.name!r} has no test split: {self.test_note}")
        return dataset

    def sizes(self) -> dict[str, int | None]:
        """Examples per split (``None`` for a missing test split)."""
        return {
            "train": len(self.train),
            "val": len(self.val),
            "test": None if self.test is None else len(self.test),
        }

    def to_bundle(self) -> DataBundle:
        """Every split decoded into tensors (memory grows with the data: for small sources)."""
        x_train, y_train = _tensors(self.train)
        x_val, y_val = _tensors(self.val)
        x_test, y_test = _tensors(self.test) if self.test is not None else (None, None)
        return DataBundle(
            name=self.name,
            x_train=x_train,
            y_train=y_train,
            x_val=x_val,
            y_val=y_val,
            num_classes=self.num_classes,
            x_test=x_test,
            y_test=y_test,
            test_note=self.test_note,
            split_seed=self.split_seed,
        )


def materialize(dataset: LabeledDataset) -> ArrayDataset:
    """``dataset`` held in memory, without its transform: an :class:`ArrayDataset` as it is
    (no copy), anything else decoded once (for small subsets read many times over)."""
    if isinstance(dataset, ArrayDataset):
        return dataset.with_transform(None)
    x = torch.stack([dataset.image(i) for i in range(len(dataset))])
    return ArrayDataset(x, dataset.targets)


def _tensors(dataset: LabeledDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All of ``dataset`` as float32 ``(N, C, H, W)`` and int64 ``(N,)`` (no transform)."""
    x, y = materialize(dataset).tensors()
    return x.contiguous(), y.contiguous()


@dataclass(frozen=True)
class DataBundle:
    """Train, validation and (optionally) test splits held as tensors.

    ``x_*`` are float32 examples, already normalised: images ``(N, C, H, W)``, sequences
    ``(N, C, L)`` or feature vectors ``(N, F)``; ``y_*`` are int64 class
    labels in ``[0, num_classes)``. ``name`` says where the data came from (for reports).
    ``x_test``/``y_test`` are ``None`` when the source has no test split, ``test_note`` saying
    why (see :class:`DataSplits`). ``train``, ``val`` and ``test`` are dataset views of the same
    tensors, for code that reads every source through a ``DataLoader``.
    """

    name: str
    x_train: torch.Tensor  # (N_train, C, H, W), (N_train, C, L) or (N_train, F) float32
    y_train: torch.Tensor  # (N_train,) int64
    x_val: torch.Tensor  # like x_train
    y_val: torch.Tensor  # (N_val,) int64
    num_classes: int
    x_test: torch.Tensor | None = None  # (N_test, C, H, W) float32
    y_test: torch.Tensor | None = None  # (N_test,) int64
    test_note: str = ""
    split_seed: int = 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example: (C, H, W), (C, L) or (F,); its first entry is the channels
        (or features) a zoo model is built with."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A batch of validation examples, for tracing a model."""
        return self.x_val[:batch].clone()

    @property
    def train(self) -> ArrayDataset:
        """The training split as a dataset (a view: no copy)."""
        return ArrayDataset(self.x_train, self.y_train)

    @property
    def val(self) -> ArrayDataset:
        """The validation split as a dataset (a view: no copy)."""
        return ArrayDataset(self.x_val, self.y_val)

    @property
    def test(self) -> ArrayDataset | None:
        """The test split as a dataset, or ``None`` (see ``test_note``)."""
        if self.x_test is None or self.y_test is None:
            return None
        return ArrayDataset(self.x_test, self.y_test)

    def splits(self) -> DataSplits:
        """The same tensors as :class:`DataSplits`."""
        return DataSplits(
            name=self.name,
            train=self.train,
            val=self.val,
            test=self.test,
            num_classes=self.num_classes,
            split_seed=self.split_seed,
            test_note=self.test_note,
        )


def array_splits(
    name: str,
    *,
    train: tuple[torch.Tensor, ...],
    val: tuple[torch.Tensor, ...],
    test: tuple[torch.Tensor, ...] | None,
    num_classes: int,
    split_seed: int,
    test_note: str,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> DataSplits:
    """:class:`DataSplits` of in-memory ``(x, y)`` or ``(x, y, ids)`` tensors.

    ``mean``/``std`` normalise uint8 ``x``; ``ids`` number the examples within the source.
    """

    def wrap(part: tuple[torch.Tensor, ...]) -> ArrayDataset:
        x, y = part[0], part[1]
        ids = part[2] if len(part) > 2 else None
        return ArrayDataset(x.contiguous(), y.contiguous(), mean=mean, std=std, ids=ids)

    return DataSplits(
        name=name,
        train=wrap(train),
        val=wrap(val),
        test=None if test is None else wrap(test),
        num_classes=int(num_classes),
        split_seed=split_seed,
        test_note=test_note,
    )
