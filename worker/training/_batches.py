"""Reading batches of a dataset: a ``DataLoader`` where it pays, a plain gather where not.

Training and evaluation choose *which* examples form each batch themselves (a seeded
permutation, a sample budget), so the batches here are given as index tensors and read in that
order. An in-memory :class:`~worker.data.ArrayDataset` read without worker processes is one
tensor gather per batch; anything else (image folders, worker processes) goes through a
``torch.utils.data.DataLoader`` with the :class:`LoaderOptions`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from worker.data import ArrayDataset, DataBundle, DataSplits, LabeledDataset

__all__ = [
    "BatchReader",
    "LoaderOptions",
    "as_dataset",
    "budget_indices",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoaderOptions:
    """How a ``DataLoader`` reads a dataset.

    Attributes:
        num_workers: worker processes decoding examples; 0 (the default) decodes in the
            training process, which is fastest for in-memory arrays.
        pin_memory: page-locked host batches for faster copies to a GPU; ``None`` (the
            default): on when the device is CUDA.
        persistent_workers: keep the worker processes between epochs; ``None`` (the default):
            on when the device is CUDA and ``num_workers > 0``.
        prefetch_factor: batches each worker loads ahead; ``None``: torch's default (2).
    """

    num_workers: int = 0
    pin_memory: bool | None = None
    persistent_workers: bool | None = None
    prefetch_factor: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int):
            raise ValueError(f"num_workers must be an int >= 0, got {self.num_workers!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {self.num_workers!r}")
        if self.prefetch_factor is not None and (
            not isinstance(self.prefetch_factor, int) or self.prefetch_factor < 1
        ):
            raise ValueError(f"prefetch_factor must be None or >= 1, got {self.prefetch_factor!r}")

    def loader_kwargs(self, device: torch.device) -> dict[str, Any]:
        """Keyword arguments for ``DataLoader`` on ``device``."""
        cuda = device.type == "cuda"
        kwargs: dict[str, Any] = {
            "num_workers": self.num_workers,
            "pin_memory": cuda if self.pin_memory is None else self.pin_memory,
        }
        if self.num_workers > 0:
            persistent = cuda if self.persistent_workers is None else self.persistent_workers
            kwargs["persistent_workers"] = persistent
            if self.prefetch_factor is not None:
                kwargs["prefetch_factor"] = self.prefetch_factor
        return kwargs


DEFAULT_LOADER = LoaderOptions()


def as_dataset(
    data: DataBundle | DataSplits | LabeledDataset | tuple[torch.Tensor, torch.Tensor],
    split: str = "val",
) -> LabeledDataset:
    """The ``split`` of a bundle or splits, a dataset as is, or ``(x, y)`` tensors wrapped."""
    if isinstance(data, LabeledDataset):
        return data
    if isinstance(data, DataSplits):
        return data.split(split)
    if isinstance(data, DataBundle):
        found = getattr(data, split)
        if found is None:
            raise ValueError(f"dataset {data.name!r} has no {split} split: {data.test_note}")
        return found
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise ValueError("x and y must be torch tensors")
        if y.ndim != 1:
            raise ValueError(f"y must be one-dimensional class labels, got shape {tuple(y.shape)}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
        return ArrayDataset(x, y)
    raise ValueError(
        "data must be a DataBundle, DataSplits, a dataset or an (x, y) tuple, "
        f"got {type(data).__name__}"
    )


def budget_indices(
    n: int, budget: int | None, *, seed: int, what: str, generator: torch.Generator | None = None
) -> torch.Tensor | None:
    """A seeded random subset of ``budget`` of ``range(n)``, or ``None`` for all of it.

    A budget of at least ``n`` is clamped to the whole split, and said in the log when it is
    larger. ``generator`` (when given) draws the subset instead of a fresh one seeded with
    ``seed``, so successive calls draw fresh subsets.
    """
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"{what} must be None or an int >= 1, got {budget!r}")
    if budget >= n:
        if budget > n:
            logger.info(
                "%s=%d exceeds the %d examples of the split; using all %d", what, budget, n, n
            )
        return None
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:budget]


class _EpochBatches:
    """A batch sampler whose batches are set before each pass (read in the main process)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _collate(batch: Any) -> Any:
    # ArrayDataset.__getitems__ returns a ready (x, y) batch; anything else is a list of pairs.
    if isinstance(batch, tuple):
        return batch
    return default_collate(batch)


class BatchReader:
    """Reads given batches of indices from ``dataset``, in order, as ``(x, y)`` on the CPU."""

    def __init__(
        self,
        dataset: LabeledDataset,
        *,
        device: torch.device,
        options: LoaderOptions = DEFAULT_LOADER,
        seed: int = 0,
    ) -> None:
        self.dataset = dataset
        direct = isinstance(dataset, ArrayDataset) and options.num_workers == 0
        self._array = dataset if isinstance(dataset, ArrayDataset) and direct else None
        self.pin = device.type == "cuda" and options.loader_kwargs(device)["pin_memory"]
        self._sampler = _EpochBatches()
        self._loader: DataLoader[Any] | None = None
        if self._array is None:
            data: Dataset[Any] = dataset
            self._loader = DataLoader(
                data,
                batch_sampler=self._sampler,
                collate_fn=_collate,
                generator=torch.Generator().manual_seed(seed),
                **options.loader_kwargs(device),
            )

    def read(self, batches: Sequence[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` for each index tensor of ``batches``, in order."""
        if self._array is not None:
            for idx in batches:
                xb, yb = self._array.batch(idx)
                yield (xb.pin_memory(), yb.pin_memory()) if self.pin else (xb, yb)
            return
        if self._loader is None:  # unreachable: set whenever _array is None
            raise RuntimeError("BatchReader has neither an array nor a loader")
        self._sampler.batches = [idx.tolist() for idx in batches]
        yield from self._loader
