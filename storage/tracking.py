"""MLflow tracking and model registry for causalmeta.

Layout (embedded default, one machine)::

    <root>/mlflow.db              sqlite backend store (runs, params, metrics, registry)
    <root>/mlartifacts/<exp>/     artifacts of experiment <exp> (runs and logged models)

``MLFLOW_TRACKING_URI`` overrides the backend (e.g. ``http://host:5000``); the
server then chooses artifact locations.

Conventions:

* one experiment per training campaign or benchmark name, one run per
  (method, prior hash) training; benchmark scripts log into experiment
  ``benchmarks`` through :meth:`Tracker.log_benchmark`;
* nested parameter dicts are flattened with dots (``model.d_model``);
* a trained model is registered as ``causalmeta-<method>``; every model version
  carries the tags ``prior_hash`` and ``prior_name``, which is how
  :meth:`Tracker.registered_model_for_prior` answers "is the registered model
  trained on this prior?". Loading a registered model needs the causalmeta
  package importable (the model is pickled with its class references).
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

# Set before mlflow is imported anywhere in this process (see ENVIRONMENT.md).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

from storage.settings import ENV_MLFLOW_URI, default_tracking_uri  # noqa: E402

BENCHMARK_EXPERIMENT = "benchmarks"
MODEL_PREFIX = "causalmeta-"
_PARAM_MAX = 6000  # MLflow's limit on one parameter value


class TrackingError(ValueError):
    """A tracking request that cannot be served; the message names the field."""


def tracking_uri(root: str | Path) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<abs root>/mlflow.db``."""
    env = os.environ.get(ENV_MLFLOW_URI, "").strip()
    return env or default_tracking_uri(str(root))


def registered_name(method: str) -> str:
    """Registry name of a method: ``causalmeta-<method>``."""
    if not method or "/" in method:
        raise TrackingError(f"method: invalid name {method!r}")
    return MODEL_PREFIX + method


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": 1, "c": [1, 2]}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _pip_requirements() -> list[str]:
    """Explicit requirements: MLflow's inference of them costs seconds per logged model."""
    import numpy
    import pydantic
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}",
            f"pydantic=={pydantic.__version__}"]


class Tracker:
    """MLflow helper bound to one root (and, for logging, one experiment).

    Args:
        root: causalmeta data root; holds ``mlflow.db`` and ``mlartifacts/``
            unless ``MLFLOW_TRACKING_URI`` is set.
        experiment: experiment for :meth:`start_run` (created on first use).
    """

    def __init__(self, root: str | Path, experiment: str = "default"):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.root = Path(root)
        self.experiment = experiment
        self.uri = tracking_uri(root)
        self._local = self.uri.startswith("sqlite:")
        if self._local:
            self.root.mkdir(parents=True, exist_ok=True)
        self._mlflow = mlflow
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self._run = None

    # ---------------------------------------------------------------- runs
    def _use(self) -> None:
        """Point mlflow's fluent API (used by log_model) at this tracker's backend.

        ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` (and the registry
        variable) into ``os.environ``; left there, every later Tracker of this process, and
        every child process, would silently use this root's database. The user's values are
        restored, so the environment keeps meaning "what the user configured".
        """
        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        self._mlflow.set_tracking_uri(self.uri)
        self._mlflow.set_registry_uri(self.uri)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def experiment_id(self, name: str | None = None) -> str:
        """Id of experiment ``name`` (default: this tracker's), created with an explicit artifact location."""
        from mlflow.exceptions import MlflowException

        name = name or self.experiment
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = (self.root.resolve() / "mlartifacts" / name).as_uri() if self._local else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created concurrently by another process
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    @contextmanager
    def start_run(self, run_name: str | None = None, tags: Mapping[str, str] | None = None,
                  experiment: str | None = None) -> Iterator["Tracker"]:
        """Context manager: an active MLflow run; the run ends FAILED if the body raises."""
        self._use()
        exp_id = self.experiment_id(experiment)
        run = self._mlflow.start_run(experiment_id=exp_id, run_name=run_name,
                                     tags={k: str(v) for k, v in (tags or {}).items()})
        self._run = run
        status = "FINISHED"
        try:
            yield self
        except BaseException:
            status = "FAILED"
            raise
        finally:
            self._mlflow.end_run(status=status)
            self._run = None

    @property
    def run_id(self) -> str:
        if self._run is None:
            raise TrackingError("run_id: no active run (use `with tracker.start_run(...)`)")
        return self._run.info.run_id

    def _require_run(self, what: str) -> None:
        if self._run is None:
            raise TrackingError(f"{what}: no active run (use `with tracker.start_run(...)`)")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (nested) parameters, flattened with dots; values stringified and truncated to 6000 chars."""
        self._require_run("log_params")
        flat = {k: str(v)[:_PARAM_MAX] for k, v in flatten(params).items()}
        self._mlflow.log_params(flat)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric metrics (nested dicts flattened; non-numeric values skipped)."""
        self._require_run("log_metrics")
        flat = {}
        for k, v in flatten(metrics).items():
            try:
                flat[k] = float(v)
            except (TypeError, ValueError):
                continue
        if flat:
            self._mlflow.log_metrics(flat, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._require_run("log_artifact")
        path = Path(path)
        if not path.exists():
            raise TrackingError(f"log_artifact: no file at {path}")
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name)
        else:
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dict(self, data: Mapping[str, Any], filename: str) -> None:
        """A JSON (or YAML by extension) artifact, e.g. the run's config."""
        self._require_run("log_dict")
        self._mlflow.log_dict(dict(data), filename)

    def log_figure(self, figure, filename: str) -> None:
        """A matplotlib figure as an image artifact."""
        self._require_run("log_figure")
        self._mlflow.log_figure(figure, filename)

    def log_loss_curve_png(self, history: Iterable[Mapping[str, float]], filename: str = "loss_curve.png") -> None:
        """Training (and validation) loss against step, rendered with matplotlib's Agg backend."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        hist = list(history)
        if not hist:
            raise TrackingError("log_loss_curve_png: history is empty")
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([h["step"] for h in hist], [h["loss"] for h in hist], lw=1, label="train")
        val = [(h["step"], h["val_loss"]) for h in hist if "val_loss" in h]
        if val:
            ax.plot(*zip(*val), "o-", ms=3, label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        fig.tight_layout()
        try:
            self.log_figure(fig, filename)
        finally:
            plt.close(fig)

    # ------------------------------------------------------------ registry
    def log_and_register_model(self, model, method: str, prior_hash: str, prior_name: str,
                               input_example: Any = None) -> int:
        """Log ``model`` (torch) to the active run and register it as ``causalmeta-<method>``.

        The new model version is tagged ``prior_hash``/``prior_name`` (and
        ``method``). A CPU copy is logged so the model loads on any machine.

        Returns:
            The registered version number.
        """
        self._require_run("log_and_register_model")
        import mlflow.pytorch

        name = registered_name(method)
        cpu_model = copy.deepcopy(model).cpu().eval()
        info = mlflow.pytorch.log_model(
            cpu_model,
            name="model",
            registered_model_name=name,
            # pickle, not the pt2 export: forward takes a dict and returns a distribution object
            serialization_format="pickle",
            pip_requirements=_pip_requirements(),
            input_example=input_example,
        )
        version = info.registered_model_version
        if version is None:
            raise TrackingError(f"log_and_register_model: registration of {name} returned no version")
        for key, value in {"prior_hash": prior_hash, "prior_name": prior_name, "method": method,
                           "run_id": self.run_id}.items():
            self.client.set_model_version_tag(name, str(version), key, str(value))
        return int(version)

    def _versions(self, method: str) -> list:
        from mlflow.exceptions import MlflowException

        try:
            return list(self.client.search_model_versions(f"name='{registered_name(method)}'"))
        except MlflowException:
            return []

    def latest_version(self, method: str) -> int | None:
        versions = [int(v.version) for v in self._versions(method)]
        return max(versions) if versions else None

    def registered_model_for_prior(self, method: str, prior_hash: str) -> int | None:
        """Newest version of ``causalmeta-<method>`` tagged with ``prior_hash``, or None."""
        hits = [int(v.version) for v in self._versions(method) if v.tags.get("prior_hash") == prior_hash]
        return max(hits) if hits else None

    def load_registered_model(self, method: str, version: int | str = "latest", map_location: str = "cpu"):
        """The registered torch model ``causalmeta-<method>`` at ``version`` (int or "latest"), in eval mode."""
        import mlflow.pytorch

        if version == "latest":
            version = self.latest_version(method)
            if version is None:
                raise TrackingError(f"method: no registered model {registered_name(method)} under {self.uri}")
        elif not isinstance(version, int) and not str(version).isdigit():
            raise TrackingError(f"version: expected an int or 'latest', got {version!r}")
        self._use()
        model = mlflow.pytorch.load_model(f"models:/{registered_name(method)}/{int(version)}",
                                          map_location=map_location)
        return model.eval()

    def list_registered_models(self) -> list[dict[str, Any]]:
        """Every version of every ``causalmeta-*`` model: name, method, version, tags, run id."""
        out = []
        for rm in self.client.search_registered_models(f"name LIKE '{MODEL_PREFIX}%'"):
            for v in self.client.search_model_versions(f"name='{rm.name}'"):
                out.append({
                    "name": rm.name,
                    "method": rm.name.removeprefix(MODEL_PREFIX),
                    "version": int(v.version),
                    "prior_hash": v.tags.get("prior_hash", ""),
                    "prior_name": v.tags.get("prior_name", ""),
                    "run_id": v.run_id,
                    "created": v.creation_timestamp,
                })
        return sorted(out, key=lambda r: (r["name"], r["version"]))

    # ----------------------------------------------------------- artifacts
    def download_artifact_text(self, run_id: str, path: str) -> str:
        """Text content of artifact ``path`` of run ``run_id``."""
        from mlflow.artifacts import download_artifacts

        with tempfile.TemporaryDirectory() as tmp:
            local = download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp, tracking_uri=self.uri)
            return Path(local).read_text()

    # ---------------------------------------------------------- benchmarks
    def log_benchmark(self, name: str, metrics: Mapping[str, Any], artifacts: Iterable[str | Path] = (),
                      params: Mapping[str, Any] | None = None) -> str:
        """One run named ``name`` in experiment ``benchmarks`` with metrics, params and artifacts.

        Returns:
            The run id.
        """
        with self.start_run(run_name=name, tags={"benchmark": name}, experiment=BENCHMARK_EXPERIMENT):
            if params:
                self.log_params(params)
            finite = {k: v for k, v in flatten(metrics).items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
            self.log_metrics(finite)
            for p in artifacts:
                self.log_artifact(p)
            return self.run_id
