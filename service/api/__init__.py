"""The REST API of rankopt (FastAPI). Imports neither torch nor optuna nor the worker."""

from service.api.app import create_app

__all__ = ["create_app"]
