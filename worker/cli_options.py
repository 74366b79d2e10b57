"""``rankopt compress``'s search options, generated from :class:`service.job_options.JobOptions`.

Each option field becomes ``--<name-with-dashes>`` (a few keep their historical short names,
:data:`FLAGS`), its help is the field's description and its default the model's; the schedule's
fields are flattened (``--schedule`` for its kind, ``--base-lr``, ``--max-lr``,
``--cycle-epochs``). A flag not given is left out of the parsed arguments, so the model fills
in its own default: nothing is restated here. Lists are comma-separated (``--lr-scales
1,0.3,0.1``), a true-by-default switch is ``--no-<name>``, and ``--push-factor 0`` means none.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Collection
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from service.job_options import JobOptions
from worker.errors import UsageError

__all__ = ["FLAGS", "add_option_arguments", "flag_of", "options_from_args"]

#: Flags that are not ``--<name-with-dashes>`` (field name, or ``schedule.<field>``).
FLAGS: dict[str, str] = {
    "timeout_s": "--timeout",
    "latency_batch_size": "--latency-batch",
    "distill_weight": "--distill",
    "schedule.kind": "--schedule",
    "schedule.base_lr": "--base-lr",
    "schedule.max_lr": "--max-lr",
    "schedule.cycle_epochs": "--cycle-epochs",
}
_ZERO_MEANS_NONE = frozenset({"push_factor", "val_samples"})
_PREFIX = "option:"  # argparse dest of an option: "option:<path>"


def flag_of(path: str) -> str:
    """The flag of the option at ``path`` (``"trials"``, ``"schedule.max_lr"``)."""
    return FLAGS.get(path, "--" + path.replace("_", "-"))


def _flag(path: str, info: FieldInfo) -> str:
    """The flag of a leaf: ``--no-<name>`` for a switch that is on by default."""
    if _scalar(info.annotation) is bool and info.default:
        return "--no-" + path.replace("_", "-")
    return flag_of(path)


def _leaves(model: type[BaseModel], prefix: str = "") -> list[tuple[str, FieldInfo]]:
    leaves: list[tuple[str, FieldInfo]] = []
    for name, info in model.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            leaves += _leaves(info.annotation, f"{prefix}{name}.")
        else:
            leaves.append((prefix + name, info))
    return leaves


def _scalar(annotation: Any) -> Any:
    """The non-None member of ``X | None``."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return members[0] if len(members) == 1 else annotation
    return annotation


def add_option_arguments(
    parser: argparse.ArgumentParser,
    *,
    only: Collection[str] | None = None,
    title: str = "search options (defaults as in the REST spec)",
) -> None:
    """Add one argument per search option to ``parser`` (defaults: the model's).

    ``only`` names the options to add, which then parse into plain ``args.<name>`` holding the
    model's default when not given (``rankopt train``'s data options); without it every option
    is added for :func:`options_from_args`.
    """
    group = parser.add_argument_group(title)
    for path, info in _leaves(JobOptions):
        if only is not None and path not in only:
            continue
        kind = _scalar(info.annotation)
        default = info.get_default(call_default_factory=True)
        described = info.description or path
        common: dict[str, Any] = {"dest": _PREFIX + path, "default": argparse.SUPPRESS}
        if only is not None:
            common = {"dest": path, "default": default}
        if kind is bool:
            action = "store_false" if default else "store_true"
            help_text = f"turn off: {described}" if default else f"{described} (off by default)"
            group.add_argument(_flag(path, info), action=action, help=help_text, **common)
            continue
        if isinstance(default, list | tuple):
            shown = ",".join(str(v) for v in default)
        else:
            shown = "none" if default is None else str(default)
        zero = "; 0: none" if path in _ZERO_MEANS_NONE else ""
        help_text = f"{described} (default: {shown}{zero})"
        common["metavar"] = path.rpartition(".")[2].upper()
        if get_origin(kind) is Literal:
            del common["metavar"]
            group.add_argument(flag_of(path), choices=get_args(kind), help=help_text, **common)
        elif get_origin(kind) in (list, tuple):
            common["metavar"] = "A,B,..."
            group.add_argument(flag_of(path), help=help_text, **common)
        else:
            group.add_argument(flag_of(path), type=kind, help=help_text, **common)


_LIST_PATHS = frozenset(
    path
    for path, info in _leaves(JobOptions)
    if get_origin(_scalar(info.annotation)) in (list, tuple)
)


def _parsed_value(path: str, value: Any) -> Any:
    if isinstance(value, str) and path in _LIST_PATHS:
        return [v.strip() for v in value.split(",") if v.strip()]
    if path in _ZERO_MEANS_NONE and value == 0:
        return None
    return value


def options_from_args(args: argparse.Namespace) -> JobOptions:
    """The :class:`JobOptions` of parsed ``rankopt compress`` arguments.

    Raises:
        UsageError: a value the options refuse; the message names the flag and the field.
    """
    data: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith(_PREFIX):
            continue
        path = dest.removeprefix(_PREFIX)
        outer, _, inner = path.partition(".")
        if inner:
            data.setdefault(outer, {})[inner] = _parsed_value(path, value)
        else:
            data[path] = _parsed_value(path, value)
    try:
        return JobOptions.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = [str(p) for p in error["loc"]]
            where = ".".join(loc) or "options"
            flag = _flag_at(loc)
            problems.append(
                f"{flag} ({where}): {error['msg']}" if flag else f"{where}: {error['msg']}"
            )
        raise UsageError("; ".join(problems)) from None


def _flag_at(loc: list[str]) -> str | None:
    """The flag that sets the value at an error's location, if one does."""
    leaves = dict(_leaves(JobOptions))
    for depth in (2, 1):
        path = ".".join(loc[:depth])
        if path in leaves:
            return _flag(path, leaves[path])
    return "--schedule" if loc[:1] == ["schedule"] else None
