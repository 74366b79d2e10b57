"""The model zoo: architectures by name, for building models to train or to load weights into.

``get_model("rankopt:resnet20", num_classes=10)`` builds one untrained; ``list_models()`` names
them all (``rankopt:`` CIFAR/MNIST/tabular nets of ours and every ``torchvision:``
classification model); ``input_shape(name)`` gives the input each is documented for: (C, H, W),
(C, L) for 1-D CNNs or (F,) for MLPs.
``build_from_spec`` rebuilds one from the spec stored with a checkpoint. Operator factories
(``"package.module:function"``) are imported only when allow-listed.
"""

from __future__ import annotations

from worker.zoo import _cifar, _digits, _mnist, _tabular  # noqa: F401  (fill the registry)
from worker.zoo._errors import ModelNotAllowedError, ModelSpecError, UnknownModelError, ZooError
from worker.zoo._factories import ALLOW_LIST_SETTING, resolve_factory
from worker.zoo._registry import (
    documented_input,
    get_model,
    input_shape,
    list_models,
    register_model,
)
from worker.zoo._spec import build_from_spec

__all__ = [
    "ALLOW_LIST_SETTING",
    "ModelNotAllowedError",
    "ModelSpecError",
    "UnknownModelError",
    "ZooError",
    "build_from_spec",
    "documented_input",
    "get_model",
    "input_shape",
    "list_models",
    "register_model",
    "resolve_factory",
]
