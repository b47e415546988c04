"""The one place that reads the environment: where data lives and which services to use.

Every setting has an embedded, single-machine default, so nothing needs to be set to run
on a laptop; a multi-machine deployment (deploy/README.md) sets the same names:

| variable                 | default                              | meaning |
|--------------------------|--------------------------------------|---------|
| ``CAUSALMETA_ROOT``      | ``.causalmeta``                      | root of prior stores, checkpoints, local tracking |
| ``MLFLOW_TRACKING_URI``  | ``sqlite:///<root>/mlflow.db``       | MLflow backend (a server URL beyond one machine) |
| ``DASK_SCHEDULER_ADDRESS`` | unset: a local threaded cluster    | ``tcp://host:8786`` of a distributed scheduler |
| ``PREFECT_API_URL``      | unset: Prefect's ephemeral API       | ``http://host:4200/api`` of a Prefect server |

``PREFECT_API_URL`` is read by Prefect itself; it is exposed here only so that scripts and
logs can say which API a process talks to. Empty strings count as unset (a compose file
that writes ``FOO=`` means "no value", not "the empty path").
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

__all__ = [
    "DEFAULT_ROOT",
    "ENV_DASK_ADDRESS",
    "ENV_MLFLOW_URI",
    "ENV_PREFECT_API",
    "ENV_ROOT",
    "Settings",
    "SettingsError",
    "default_tracking_uri",
    "load_settings",
]

ENV_ROOT = "CAUSALMETA_ROOT"
ENV_MLFLOW_URI = "MLFLOW_TRACKING_URI"
ENV_DASK_ADDRESS = "DASK_SCHEDULER_ADDRESS"
ENV_PREFECT_API = "PREFECT_API_URL"
DEFAULT_ROOT = ".causalmeta"


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used; the message names it."""


@dataclass(frozen=True)
class Settings:
    """Resolved settings of this process (see the module docstring for the variables)."""

    root: str
    mlflow_tracking_uri: str
    dask_scheduler_address: str | None
    prefect_api_url: str | None

    @property
    def root_path(self) -> Path:
        return Path(self.root)

    @property
    def is_local_root(self) -> bool:
        """False for fsspec URLs such as ``s3://bucket/causalmeta``."""
        return "://" not in self.root


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def default_tracking_uri(root: str) -> str:
    """``sqlite:///<absolute root>/mlflow.db`` for a local root.

    The path is made absolute because a relative sqlite URI is resolved against the cwd of
    whichever process opens it (a Prefect worker, a served deployment), not of the caller.
    """
    if "://" in root:
        raise SettingsError(
            f"{ENV_MLFLOW_URI}: unset while {ENV_ROOT}={root!r} is a URL; a remote root needs an "
            "MLflow tracking server (set MLFLOW_TRACKING_URI=http://host:5000)"
        )
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from `environ` (default ``os.environ``), applying the defaults."""
    env = os.environ if environ is None else environ
    root = _get(env, ENV_ROOT) or DEFAULT_ROOT
    dask = _get(env, ENV_DASK_ADDRESS)
    if dask is not None and "://" not in dask:
        raise SettingsError(
            f"{ENV_DASK_ADDRESS}={dask!r}: expected a scheduler address with protocol, "
            "e.g. tcp://10.0.0.5:8786"
        )
    api = _get(env, ENV_PREFECT_API)
    if api is not None and not api.startswith(("http://", "https://")):
        raise SettingsError(f"{ENV_PREFECT_API}={api!r}: expected an http(s) URL ending in /api")
    return Settings(
        root=root,
        mlflow_tracking_uri=_get(env, ENV_MLFLOW_URI) or default_tracking_uri(root),
        dask_scheduler_address=dask,
        prefect_api_url=api,
    )
