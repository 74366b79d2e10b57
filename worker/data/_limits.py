"""Size limits applied to every data source before (and while) it is read."""

from __future__ import annotations

from dataclasses import dataclass

from worker.data._errors import DataLimitError

__all__ = ["DEFAULT_LIMITS", "DataLimits"]


@dataclass(frozen=True)
class DataLimits:
    """Upper bounds on what a data source may hold; the operator tunes them in settings.

    Attributes:
        max_file_bytes: size on disk of one file (an uploaded ``.npz``/``.safetensors``, one
            image of a folder, one CIFAR batch).
        max_decoded_bytes: total bytes of the arrays an upload declares, checked from the array
            headers before anything is decompressed (guards against zip bombs).
        max_examples: train plus validation examples.
        max_image_side: height and width of the images handed to the model.
        max_source_pixels: width times height of one source image in a folder, checked from the
            image header before it is decoded.
        max_classes: number of classes (``max(label) + 1``).
    """

    max_file_bytes: int = 1 << 30  # 1 GiB
    max_decoded_bytes: int = 4 << 30  # 4 GiB
    max_examples: int = 200_000
    max_image_side: int = 512
    max_source_pixels: int = 40_000_000
    max_classes: int = 1_000

    def __post_init__(self) -> None:
        for name in (
            "max_file_bytes",
            "max_decoded_bytes",
            "max_examples",
            "max_image_side",
            "max_source_pixels",
            "max_classes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DataLimits.{name} must be a positive integer, got {value!r}")
        if self.max_classes < 2:
            raise ValueError(f"DataLimits.max_classes must be at least 2, got {self.max_classes}")

    def check_file_bytes(self, what: str, size: int) -> None:
        """Raise :class:`DataLimitError` when a file of ``size`` bytes is too large."""
        if size > self.max_file_bytes:
            raise DataLimitError(
                f"{what} is {size} bytes; the limit is {self.max_file_bytes} bytes (max_file_bytes)"
            )

    def check_examples(self, what: str, count: int) -> None:
        """Raise :class:`DataLimitError` when ``count`` examples are too many."""
        if count > self.max_examples:
            raise DataLimitError(
                f"{what} holds {count} examples; the limit is {self.max_examples} (max_examples)"
            )

    def check_image_side(self, what: str, height: int, width: int) -> None:
        """Raise :class:`DataLimitError` when an image side exceeds ``max_image_side``."""
        if max(height, width) > self.max_image_side:
            raise DataLimitError(
                f"{what} images are {height}x{width}; the largest side allowed is "
                f"{self.max_image_side} (max_image_side)"
            )


DEFAULT_LIMITS = DataLimits()
"""The limits used when a loader is given none."""
