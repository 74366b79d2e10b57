"""Service configuration: one pydantic-settings object read from ``RANKOPT_*`` variables.

Every component takes an explicit :class:`Settings` (tests build their own); :func:`get_settings`
is a cached convenience for processes that read the environment once.

List settings accept JSON (``RANKOPT_ALLOWED_DATA_ROOTS='["/data", "/mnt/x"]'``) or a plain
separated string: ``os.pathsep`` (``:`` on Unix) or ``,`` for paths, ``,`` for factories.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.names import ENV_PREFIX, FACTORY_RE

__all__ = ["MIB", "Settings", "get_settings"]

MIB = 1 << 20
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
_DASHBOARD_RE = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")


def _split_list(value: Any, separators: str) -> Any:
    """Turn an environment string into a list: JSON array, or items split on ``separators``."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a valid JSON list: {exc.msg} at position {exc.pos}") from exc
    return [item.strip() for item in re.split(f"[{re.escape(separators)}]", text) if item.strip()]


class Settings(BaseSettings):
    """Configuration of the REST service and the worker pool.

    Attributes:
        database_url: SQLAlchemy URL of the shared database (job queue and Optuna studies).
            ``postgresql://`` is rewritten to the psycopg driver.
        artifact_root: folder where finished jobs write their checkpoints and reports.
        upload_dir: folder for uploaded weights and datasets; defaults to
            ``<artifact_root>/uploads``.
        max_upload_bytes: largest accepted uploaded file (weights or dataset).
        max_dataset_bytes: largest dataset a job may read (uploaded file or allowed folder).
        allowed_data_roots: folders under which server-side datasets may be read; empty means
            none (only built-in and uploaded data).
        allowed_factories: ``package.module:function`` model factories a spec may name.
        lease_seconds: lifetime of a prepare/finalize lease without heartbeat.
        heartbeat_seconds: how often a lease holder renews its lease; must be < lease_seconds.
        trial_heartbeat_seconds: Optuna trial heartbeat interval (stale trials are retried).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        max_trial_failures: failed trials after which a job is failed.
        max_phase_attempts: times a job's prepare or finalize phase may raise (the worker
            recorded an error and gave the lease back) before the job is failed
            (``prepare_failed`` / ``finalize_failed``).
        max_lost_leases: times the worker of a job's prepare or finalize phase may vanish (its
            lease expired with no error recorded: killed, crashed, stalled) before the job is
            failed (``prepare_lost`` / ``finalize_lost``); larger than ``max_phase_attempts``,
            since a worker killed from outside says nothing about the job.
        db_pool_size: PostgreSQL: connections each engine keeps open per process (a worker
            process has two engines, the job store's and Optuna's; the API one).
        db_max_overflow: PostgreSQL: extra connections an engine may open under load.
        db_pool_recycle_seconds: PostgreSQL: replace connections older than this (0: never).
        dashboard_url: base URL of an optuna-dashboard on the same database (e.g.
            ``http://127.0.0.1:8080``); the web page links each job to its study there.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        validate_default=True,
    )

    database_url: str = "sqlite:///./rankopt.db"
    artifact_root: Path = Path("./rankopt-artifacts")
    upload_dir: Path | None = None
    max_upload_bytes: int = Field(default=512 * MIB, gt=0)
    max_dataset_bytes: int = Field(default=4096 * MIB, gt=0)
    allowed_data_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    allowed_factories: Annotated[list[str], NoDecode] = Field(default_factory=list)
    lease_seconds: float = Field(default=60.0, gt=0)
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    trial_heartbeat_seconds: float = Field(default=30.0, gt=0)
    device: str = "auto"
    max_trial_failures: int = Field(default=5, ge=1)
    max_phase_attempts: int = Field(default=3, ge=1)
    max_lost_leases: int = Field(default=10, ge=1)
    db_pool_size: int = Field(default=5, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    db_pool_recycle_seconds: float = Field(default=1800.0, ge=0)
    dashboard_url: str | None = None

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        value = value.strip()
        if "://" not in value:
            raise ValueError(
                "database_url must be a SQLAlchemy URL such as 'sqlite:///./rankopt.db' or "
                "'postgresql://user@host/db'"
            )
        return value

    @field_validator("dashboard_url")
    @classmethod
    def _check_dashboard_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not _DASHBOARD_RE.match(value):
            raise ValueError(
                f"dashboard_url {value!r} must be an http:// or https:// URL such as "
                "'http://127.0.0.1:8080'"
            )
        return value

    @field_validator("allowed_data_roots", mode="before")
    @classmethod
    def _parse_roots(cls, value: Any) -> Any:
        return _split_list(value, os.pathsep + ",")

    @field_validator("allowed_factories", mode="before")
    @classmethod
    def _parse_factories(cls, value: Any) -> Any:
        return _split_list(value, ",")

    @field_validator("allowed_data_roots")
    @classmethod
    def _absolute_roots(cls, value: list[Path]) -> list[Path]:
        return [root.expanduser().resolve() for root in value]

    @field_validator("allowed_factories")
    @classmethod
    def _check_factories(cls, value: list[str]) -> list[str]:
        for item in value:
            if not FACTORY_RE.fullmatch(item):
                raise ValueError(
                    f"allowed factory {item!r} is not of the form 'package.module:function'"
                )
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE_RE.match(value):
            raise ValueError(
                f"device {value!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'"
            )
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds}) must be smaller than "
                f"lease_seconds ({self.lease_seconds}), or leases expire between heartbeats; "
                "a third of the lease is a good heartbeat"
            )
        if self.upload_dir is None:
            self.upload_dir = self.artifact_root / "uploads"
        return self

    @property
    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`service.store.make_engine` for these settings."""
        return {
            "pool_size": self.db_pool_size,
            "max_overflow": self.db_max_overflow,
            "pool_recycle_s": self.db_pool_recycle_seconds,
        }

    @property
    def resolved_upload_dir(self) -> Path:
        """The upload folder (never ``None`` after validation)."""
        return self.upload_dir if self.upload_dir is not None else self.artifact_root / "uploads"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read from the environment once per process (``get_settings.cache_clear()``)."""
    return Settings()
