"""Setting names and name patterns are defined once and name real settings."""

from __future__ import annotations

import pytest

from service import names
from service.settings import Settings
from service.spec import JobSpec


def test_setting_names_are_settings_fields() -> None:
    for constant in (names.ALLOWED_FACTORIES_ENV, names.ALLOWED_DATA_ROOTS_ENV):
        assert constant.startswith(names.ENV_PREFIX)
        assert constant.removeprefix(names.ENV_PREFIX).lower() in Settings.model_fields


def test_allowed_factories_setting_is_read_under_its_constant_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(names.ALLOWED_FACTORIES_ENV, "pkg.mod:Build.make")
    assert Settings().allowed_factories == ["pkg.mod:Build.make"]


@pytest.mark.parametrize(
    ("factory", "valid"),
    [
        ("pkg.mod:build", True),
        ("pkg:Class.method", True),
        ("pkg..mod:build", False),
        ("pkg.mod:", False),
        ("pkg.mod:build\n", False),
        ("9pkg:build", False),
    ],
)
def test_one_factory_pattern_for_settings_spec_and_zoo(factory: str, valid: bool) -> None:
    from worker.zoo._factories import is_factory_spec

    assert (names.FACTORY_RE.fullmatch(factory) is not None) == valid
    assert is_factory_spec(factory) == valid
    try:
        JobSpec(arch=factory)
        spec_ok = True
    except ValueError:
        spec_ok = False
    assert spec_ok == valid
    try:
        Settings(allowed_factories=[factory])
        settings_ok = True
    except ValueError:
        settings_ok = False
    assert settings_ok == valid
