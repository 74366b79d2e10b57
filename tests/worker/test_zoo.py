"""Tests of the model zoo: every registered net builds, the registry and its errors behave."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from worker import zoo
from worker.zoo import (
    ModelNotAllowedError,
    ModelSpecError,
    UnknownModelError,
    _registry,
    build_from_spec,
    get_model,
    input_shape,
    list_models,
    register_model,
    resolve_factory,
)

RANKOPT_MODELS = [
    "rankopt:lenet5",
    "rankopt:lenet500_300",
    "rankopt:minivgg",
    "rankopt:resnet20",
    "rankopt:tabular_cnn1d",
    "rankopt:tabular_mlp",
    "rankopt:tinycnn",
    "rankopt:vgg11_bn",
    "rankopt:vgg16_bn",
]
THIS_MODULE_FACTORY = f"{__name__}:tiny_factory"


def tiny_factory(*, width: int = 4, num_classes: int = 3) -> nn.Module:
    """An operator-style factory living outside the zoo, for the allow-list tests."""
    return nn.Sequential(nn.Flatten(), nn.Linear(width, num_classes))


def not_a_model_factory() -> str:
    return "not a module"


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models train much faster on one intra-op thread than on two busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- our own nets ---------------------------------------------------------------------------


def test_rankopt_models_are_all_listed() -> None:
    assert list_models(prefix="rankopt") == RANKOPT_MODELS


@pytest.mark.parametrize("name", RANKOPT_MODELS)
def test_rankopt_model_builds_and_runs_at_its_input_shape(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *input_shape(name)))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", RANKOPT_MODELS)
def test_rankopt_model_defaults_to_ten_classes_and_documents_its_input(name: str) -> None:
    model = get_model(name)
    with torch.no_grad():
        out = model.eval()(torch.zeros(2, *input_shape(name)))
    assert out.shape == (2, 10)
    assert "x".join(str(d) for d in input_shape(name)) in (type(model).__doc__ or "")


@pytest.mark.parametrize("name", RANKOPT_MODELS)
def test_rankopt_model_accepts_other_in_channels(name: str) -> None:
    rest = input_shape(name)[1:]
    model = get_model(name, in_channels=2, num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 2, *rest)).shape == (2, 4)


def test_input_shapes() -> None:
    assert input_shape("rankopt:lenet5") == (1, 28, 28)
    assert input_shape("rankopt:lenet500_300") == (1, 28, 28)
    assert input_shape("rankopt:minivgg") == (1, 28, 28)
    assert input_shape("rankopt:tinycnn") == (1, 8, 8)
    assert input_shape("rankopt:vgg11_bn") == (3, 32, 32)
    assert input_shape("rankopt:resnet20") == (3, 32, 32)
    assert input_shape("rankopt:tabular_mlp") == (30,)
    assert input_shape("rankopt:tabular_cnn1d") == (3, 10)
    assert input_shape("torchvision:resnet18") == (3, 224, 224)
    assert input_shape("torchvision:inception_v3") == (3, 299, 299)
    with pytest.raises(UnknownModelError):
        input_shape("torchvision:resnet19")


def test_parameter_counts() -> None:
    mlp = get_model("rankopt:lenet500_300")
    assert num_params(mlp) == 784 * 500 + 500 + 500 * 300 + 300 + 300 * 10 + 10
    lenet = get_model("rankopt:lenet5")
    assert num_params(lenet) == (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (
        120 * 84 + 84
    ) + (84 * 10 + 10)
    convs = [(1, 16), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64)]
    assert num_params(get_model("rankopt:minivgg")) == sum(o * i * 9 + 2 * o for i, o in convs) + (
        64 * 10 + 10
    )
    # He et al. report 0.27M for ResNet-20; the 1x1 projection shortcuts add a few thousand.
    assert 0.26e6 < num_params(get_model("rankopt:resnet20")) < 0.28e6


def test_architecture_shapes_by_dotted_name() -> None:
    def convs(model: nn.Module) -> list[nn.Conv2d]:
        return [m for m in model.modules() if isinstance(m, nn.Conv2d)]

    assert len(convs(get_model("rankopt:vgg11_bn"))) == 8
    assert len(convs(get_model("rankopt:vgg16_bn"))) == 13

    resnet = dict(get_model("rankopt:resnet20").named_modules())
    # 1 stem conv + 9 blocks x 2 convs + 2 projection shortcuts
    assert sum(isinstance(m, nn.Conv2d) for m in resnet.values()) == 1 + 18 + 2
    assert isinstance(resnet["layer1.0.shortcut"], nn.Identity)
    shortcut = resnet["layer2.0.shortcut.0"]
    assert isinstance(shortcut, nn.Conv2d)
    assert shortcut.kernel_size == (1, 1) and shortcut.stride == (2, 2)
    assert isinstance(resnet["layer3.0.shortcut.1"], nn.BatchNorm2d)
    assert [resnet[f"layer{i}.2.conv2"].out_channels for i in (1, 2, 3)] == [16, 32, 64]

    lenet = dict(get_model("rankopt:lenet5").named_modules())
    first = lenet["features.0"]
    assert isinstance(first, nn.Conv2d) and first.kernel_size == (5, 5) and first.padding == (2, 2)
    assert isinstance(lenet["classifier.0"], nn.Linear)
    assert lenet["classifier.0"].in_features == 400

    mlp = dict(get_model("rankopt:lenet500_300").named_modules())
    assert [mlp[f"classifier.{i}"].out_features for i in (0, 2, 4)] == [500, 300, 10]


@pytest.mark.parametrize("bad", [0, -3, True, 2.0, "10"])
def test_rankopt_model_rejects_bad_num_classes(bad: Any) -> None:
    with pytest.raises(ModelSpecError, match="num_classes"):
        get_model("rankopt:lenet5", num_classes=bad)


@pytest.mark.slow
def test_tinycnn_learns_sklearn_digits(one_thread: None) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16  # (1797,1,8,8)
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, val = order[:1400], order[1400:]

    torch.manual_seed(0)
    model = get_model("rankopt:tinycnn")
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(20):
        shuffled = train[torch.randperm(len(train))]
        for start in range(0, len(shuffled), 64):
            batch = shuffled[start : start + 64]
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    with torch.no_grad():
        accuracy = (model.eval()(x[val]).argmax(dim=1) == y[val]).float().mean().item()
    assert accuracy > 0.9


# --- torchvision ----------------------------------------------------------------------------


def test_list_models_holds_every_torchvision_classifier_and_ours() -> None:
    names = list_models()
    assert names == sorted(names)
    assert len(names) == len(set(names))
    expected = {
        f"torchvision:{n}" for n in torchvision.models.list_models(module=torchvision.models)
    }
    assert expected <= set(names)
    assert set(RANKOPT_MODELS) <= set(names)
    assert set(list_models(prefix="torchvision")) == expected
    # Detection / segmentation / video models are not classifiers.
    assert "torchvision:fasterrcnn_resnet50_fpn" not in names


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("torchvision:resnet18", 64),
        ("torchvision:mobilenet_v3_small", 64),
        ("torchvision:squeezenet1_0", 64),
        ("torchvision:googlenet", 64),
        ("torchvision:inception_v3", 75),
    ],
)
def test_torchvision_sample_builds_with_ten_classes(name: str, size: int) -> None:
    model = get_model(name, num_classes=10)
    for mode in (model.train(), model.eval()):  # aux heads would make train() return a tuple
        with torch.no_grad():
            out = mode(torch.randn(2, 3, size, size))
        assert isinstance(out, torch.Tensor)
        assert out.shape == (2, 10)


def test_torchvision_defaults_to_imagenet_classes_and_no_aux_heads() -> None:
    resnet = get_model("torchvision:resnet18")
    assert isinstance(resnet, torchvision.models.ResNet)
    assert resnet.fc.out_features == 1000
    googlenet = get_model("torchvision:googlenet")
    assert isinstance(googlenet, torchvision.models.GoogLeNet)
    assert googlenet.aux1 is None and googlenet.aux2 is None


def test_torchvision_refuses_weights_and_bad_kwargs() -> None:
    with pytest.raises(ModelSpecError, match="weights"):
        get_model("torchvision:resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(ModelSpecError, match="no_such_option"):
        get_model("torchvision:resnet18", no_such_option=1)
    with pytest.raises(ModelSpecError, match="num_classes"):
        get_model("torchvision:resnet18", num_classes=0)


@pytest.mark.slow
def test_every_torchvision_classifier_builds_on_meta_device() -> None:
    """Shapes only: built and run on the meta device, no memory or time spent on weights."""
    for name in list_models(prefix="torchvision"):
        if name.startswith("torchvision:regnet"):
            continue  # regnet computes its widths with tensors, impossible on meta; below
        with torch.device("meta"):
            model = get_model(name, num_classes=10).eval()
            out = model(torch.empty(2, *input_shape(name)))
        assert out.shape == (2, 10), name
    regnet = get_model("torchvision:regnet_x_400mf", num_classes=10).eval()
    with torch.no_grad():
        assert regnet(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_import_does_not_import_torchvision() -> None:
    code = "import sys, worker.zoo; assert 'torchvision' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- names and errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "close"),
    [
        ("resnet18", "torchvision:resnet18"),
        ("torchvision:resnet19", "torchvision:resnet18"),
        ("rankopt:lenet", "rankopt:lenet5"),
        ("rankopt:resnet_20", "rankopt:resnet20"),
    ],
)
def test_unknown_name_lists_close_names(name: str, close: str) -> None:
    with pytest.raises(UnknownModelError, match=f"'{close}'") as info:
        get_model(name)
    assert isinstance(info.value, ValueError)
    assert repr(name) in str(info.value)


def test_unknown_name_without_close_names() -> None:
    with pytest.raises(UnknownModelError, match="list_models"):
        get_model("zzzzqqq")


def test_unknown_kwarg_is_named() -> None:
    with pytest.raises(ModelSpecError, match="num_clases") as info:
        get_model("rankopt:resnet20", num_clases=10)
    assert "num_classes" in str(info.value)  # says what is accepted


def test_register_model_rejects_bad_registrations() -> None:
    def factory() -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register_model("rankopt:lenet5", input_shape=(1, 28, 28))(factory)
    with pytest.raises(ValueError, match="reserved"):
        register_model("torchvision:mine", input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match="<prefix>:<name>"):
        register_model("no_prefix", input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match="input_shape"):
        register_model("test:mine", input_shape=(3, 8, 8, 8))
    with pytest.raises(ValueError, match="input_shape"):
        register_model("test:mine", input_shape=())
    with pytest.raises(ValueError, match="input_shape"):
        register_model("test:mine", input_shape=(3, 0, 8))


def test_register_model_adds_a_buildable_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "_MODELS", dict(_registry._MODELS))

    @register_model("test:linear", input_shape=(1, 2, 2))
    def linear(*, num_classes: int = 10) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(4, num_classes))

    assert "test:linear" in list_models()
    assert list_models(prefix="test") == ["test:linear"]
    assert input_shape("test:linear") == (1, 2, 2)
    assert get_model("test:linear", num_classes=3)(torch.zeros(2, 1, 2, 2)).shape == (2, 3)
    with pytest.raises(UnknownModelError, match="test:linear"):
        get_model("test:linea")  # a registered prefix is never taken for a factory


# --- build_from_spec ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        {"arch": "rankopt:lenet5", "kwargs": {"num_classes": 10}},
        {"arch": "rankopt:resnet20", "kwargs": {"num_classes": 4, "in_channels": 1}},
        {"arch": "rankopt:tinycnn"},
        {"arch": "torchvision:squeezenet1_1", "kwargs": {"num_classes": 5}},
    ],
)
def test_build_from_spec_round_trip(spec: dict[str, Any]) -> None:
    torch.manual_seed(0)
    original = build_from_spec(spec).eval()
    rebuilt = build_from_spec(json.loads(json.dumps(spec))).eval()
    assert type(rebuilt) is type(original)
    rebuilt.load_state_dict(original.state_dict())  # strict: same architecture

    c, h, w = input_shape(spec["arch"])
    c = spec.get("kwargs", {}).get("in_channels", c)
    h, w = min(h, 64), min(w, 64)
    x = torch.randn(2, c, h, w)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), original(x))


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("rankopt:lenet5", "mapping"),
        ({"kwargs": {}}, "arch"),
        ({"arch": 5}, "arch"),
        ({"arch": "rankopt:lenet5", "weights": "x"}, "weights"),
        ({"arch": "rankopt:lenet5", "kwargs": [10]}, "kwargs"),
        ({"arch": "rankopt:lenet5", "kwargs": {"num_classes": (10,)}}, r"kwargs\.num_classes"),
        ({"arch": "rankopt:lenet5", "kwargs": {"num_classes": math.nan}}, r"kwargs\.num_classes"),
        ({"arch": "rankopt:lenet5", "kwargs": {"num_classes": torch.tensor(3)}}, "num_classes"),
        ({"arch": "rankopt:lenet5", "kwargs": {"width": {"a": [1, {2: 3}]}}}, r"kwargs\.width"),
        ({"arch": "rankopt:lenet5", "kwargs": {"not an id": 1}}, "not an id"),
        ({"arch": "rankopt:lenet5", "kwargs": {"depth": 3}}, "depth"),
        ({"arch": "rankopt:lenet5", "kwargs": {"num_classes": 0}}, "num_classes"),
    ],
)
def test_build_from_spec_rejects_bad_specs(spec: Any, match: str) -> None:
    with pytest.raises(ModelSpecError, match=match):
        build_from_spec(spec)


def test_build_from_spec_unknown_arch() -> None:
    with pytest.raises(UnknownModelError, match="rankopt:vgg16_bn"):
        build_from_spec({"arch": "rankopt:vgg16", "kwargs": {}})


def test_build_from_spec_is_the_declared_entry_point() -> None:
    from importlib import metadata

    points = metadata.entry_points(group="rankopt.architectures")
    if not points:
        pytest.skip("rankopt is not installed with its entry points")
    for point in points:
        assert point.load() is build_from_spec


# --- operator factories ---------------------------------------------------------------------


def test_factory_outside_allow_list_is_refused_before_import() -> None:
    spec = "tests.worker.no_such_module_anywhere:factory"  # would fail if imported
    with pytest.raises(ModelNotAllowedError, match="RANKOPT_ALLOWED_FACTORIES"):
        resolve_factory(spec, allowed=["worker.zoo._mnist:lenet5"])
    with pytest.raises(ModelNotAllowedError, match="RANKOPT_ALLOWED_FACTORIES"):
        get_model(spec)
    with pytest.raises(ModelNotAllowedError):
        get_model("worker.zoo._mnist:lenet5", allowed_factories={"worker.zoo._mnist:lenet500_300"})
    assert zoo.ALLOW_LIST_SETTING == "RANKOPT_ALLOWED_FACTORIES"


def test_allow_list_matches_exact_strings_only() -> None:
    allowed = ["worker.zoo._mnist:lenet5"]
    with pytest.raises(ModelNotAllowedError):
        resolve_factory("worker.zoo._mnist:lenet", allowed)
    with pytest.raises(TypeError, match="not one str"):
        resolve_factory("worker.zoo._mnist:lenet", "worker.zoo._mnist:lenet5")  # a substring
    with pytest.raises(TypeError, match="not one str"):
        get_model("worker.zoo._mnist:lenet", allowed_factories="worker.zoo._mnist:lenet5")


def test_allowed_factory_is_resolved_and_built() -> None:
    spec = "worker.zoo._mnist:lenet5"
    factory = resolve_factory(spec, allowed=[spec])
    assert factory is zoo._mnist.lenet5
    model = get_model(spec, allowed_factories=[spec], num_classes=3)
    assert isinstance(model, zoo._mnist.LeNet5)

    mine = get_model(THIS_MODULE_FACTORY, allowed_factories={THIS_MODULE_FACTORY}, width=6)
    assert mine(torch.zeros(2, 6)).shape == (2, 3)
    built = build_from_spec(
        {"arch": THIS_MODULE_FACTORY, "kwargs": {"num_classes": 2}},
        allowed_factories=[THIS_MODULE_FACTORY],
    )
    assert built(torch.zeros(2, 4)).shape == (2, 2)
    with pytest.raises(ModelSpecError, match="height"):
        get_model(THIS_MODULE_FACTORY, allowed_factories=[THIS_MODULE_FACTORY], height=2)


def test_allowed_factory_that_cannot_be_resolved() -> None:
    missing = "worker.zoo._mnist:no_such_function"
    with pytest.raises(UnknownModelError, match="no_such_function"):
        resolve_factory(missing, allowed=[missing])
    malformed = "worker.zoo._mnist.lenet5"
    with pytest.raises(ModelSpecError, match=r"package\.module:function"):
        resolve_factory(malformed, allowed=[malformed])
    returns_str = f"{__name__}:not_a_model_factory"
    with pytest.raises(TypeError, match=r"not a torch\.nn\.Module"):
        get_model(returns_str, allowed_factories=[returns_str])
