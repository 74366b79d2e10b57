"""Whether a model takes a dataset's examples: one clear error before any training or search.

An image folder resized to another side than the model's (``image_size``) would otherwise fail
deep inside the first forward pass with a raw shape error (``mat1 and mat2 shapes cannot be
multiplied``); :func:`check_model_input` runs the model once on one validation example and turns
such a failure into an :class:`~worker.data.InputShapeError` that names the example's shape,
the shape the architecture is documented for, and the option that changes it.
"""

from __future__ import annotations

import torch
from torch import nn

from worker.data import DataBundle, DataSplits, InputShapeError
from worker.training._evaluate import _eval_mode

__all__ = ["check_model_input"]

_REASON_CHARS = 200


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def check_model_input(
    model: nn.Module,
    data: DataSplits | DataBundle,
    *,
    expected: tuple[int, ...] | None = None,
) -> None:
    """Run ``model`` on one validation example (no gradients, eval mode, restored after).

    ``expected`` is the input the architecture is documented for (see
    :func:`worker.zoo.documented_input`), given in the message when known.

    Raises:
        InputShapeError: the forward pass fails (code ``input_shape_mismatch``); the message
            gives the example's shape, ``expected`` and how to resize an image folder
            (``image_size``, ``preprocess``).
    """
    example = data.example_input(1)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with _eval_mode(model), torch.no_grad():
            model(example.to(device))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:_REASON_CHARS]
        shape = _shape_text(tuple(example.shape[1:]))
        wanted = f"; the architecture takes {_shape_text(expected)}" if expected else ""
        raise InputShapeError(
            f"the model does not take the examples of {data.name!r}, which are {shape}{wanted} "
            f"({reason}). Image folders are resized to image_size (--image-size, spec "
            "image_size; default 32), or cropped to 224 by preprocess 'imagenet': set "
            "image_size to the side the model expects"
        ) from None
