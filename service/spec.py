"""What a client asks for: the JSON ``spec`` of a compression job, validated without torch.

The API validates a spec when a job is submitted and stores it as given (``model_dump``); the
worker reads it back with :meth:`JobSpec.model_validate` and turns it into a search config with
:func:`worker.search.search_config`. The search options and their defaults are those of
:class:`service.job_options.JobOptions`, shared with ``rankopt compress`` and the library.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from service.job_options import JobOptions, ScheduleOptions
from service.names import ARCH_RE, SERVER_DATA_RE

__all__ = ["BUILTIN_DATASETS", "DATASET_UPLOAD", "EXPORTS", "JobSpec", "ScheduleSpec"]

BUILTIN_DATASETS: tuple[str, ...] = (
    "digits",
    "mnist5k",
    "fashion-mnist",
    "breast-cancer",
    "breast-cancer-seq",
)
DATASET_UPLOAD = "upload"  # the dataset comes as the job's uploaded file
EXPORTS: tuple[str, ...] = ("torchscript", "onnx")

#: The schedule's options under the name the spec has always used.
ScheduleSpec = ScheduleOptions


class JobSpec(JobOptions):
    """A compression job: model, data and exports, plus the search options of
    :class:`~service.job_options.JobOptions`.

    ``arch`` names a zoo model (``rankopt:lenet5``, ``torchvision:resnet18``) or an
    operator-allowed factory (``package.module:function``; the worker refuses one that is not
    in ``RANKOPT_ALLOWED_FACTORIES``). ``dataset`` is a built-in (``digits``, ``mnist5k``,
    ``fashion-mnist``, ``breast-cancer``, ``breast-cancer-seq``), ``upload`` (the file sent with
    the job) or ``folder:PATH`` / ``cifar10:PATH`` under an allowed data root, split by
    ``split_seed`` (the data's seed: keep the starting model's).
    """

    arch: str = Field(min_length=3, max_length=200)
    num_classes: int | None = Field(default=None, ge=2, le=100_000)
    dataset: str = Field(default="mnist5k", min_length=1, max_length=1000)
    exports: list[Literal["torchscript", "onnx"]] = Field(default_factory=list)

    @field_validator("arch")
    @classmethod
    def _check_arch(cls, value: str) -> str:
        if not ARCH_RE.fullmatch(value):
            raise ValueError(
                f"arch {value!r} must be 'rankopt:<net>', 'torchvision:<model>' or an allowed "
                "'package.module:function'"
            )
        return value

    @field_validator("dataset")
    @classmethod
    def _check_dataset(cls, value: str) -> str:
        if value in (*BUILTIN_DATASETS, DATASET_UPLOAD) or SERVER_DATA_RE.fullmatch(value):
            return value
        raise ValueError(
            f"dataset {value!r} must be one of {', '.join(BUILTIN_DATASETS)}, "
            f"'{DATASET_UPLOAD}' (send the file as 'dataset'), 'folder:PATH' or 'cifar10:PATH'"
        )

    @property
    def needs_dataset_upload(self) -> bool:
        """True when the job's data is the uploaded ``dataset`` file."""
        return self.dataset == DATASET_UPLOAD
