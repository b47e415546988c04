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
  trained on this prior?";
* a registered model is **data, never a pickle**: the version's artifact folder
  ``model/`` holds ``state_dict.pt`` (tensors only, read with
  ``torch.load(weights_only=True)``) and ``model.json`` (method, the typed model
  config, the state dict's sha256). Loading rebuilds the module from the method
  registry (``get_method(method).build(config)``) and loads the tensors into it,
  so whoever can register a version can change weights, not run code. Versions
  logged as pickles (``mlflow.pytorch``) by earlier code are refused;
* a training run keeps its run id next to its checkpoints (``mlflow_run.json``,
  :meth:`Tracker.training_run`): a run resumed from a checkpoint continues the
  same MLflow run, so one run holds the whole curve.
"""

from __future__ import annotations

import hashlib
import json
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
MODEL_FORMAT = "causalmeta-state-dict/1"
RUN_FILE = "mlflow_run.json"  # next to a training run's checkpoints: the MLflow run they belong to


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


DATASET_DIGEST_CHARS = 12  # MLflow keeps 36 characters; 12 hex name the store on disk too


def store_dataset(store, split: str | None = None):
    """An MLflow dataset (metadata only, nothing copied) for a stored prior or one of its splits.

    The profile carries what the run page shows about it: tasks per split, the full config hash
    and the byte digest of the store (:attr:`PriorStore.content_digest`).
    """
    from mlflow.data.dataset_source import DatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    class ZarrStoreSource(DatasetSource):
        """Where a stored prior lives: a ``file://`` URI or an fsspec URL of the ``.zarr`` folder."""

        def __init__(self, uri: str):
            self.uri = uri

        @staticmethod
        def _get_source_type() -> str:
            return "zarr"

        def load(self, dst_path=None) -> str:
            return self.uri

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return str(raw_source).rstrip("/").endswith(".zarr")

        @classmethod
        def _resolve(cls, raw_source: Any) -> "ZarrStoreSource":
            return cls(str(raw_source))

        def to_dict(self) -> dict[str, Any]:
            return {"uri": self.uri}

        @classmethod
        def from_dict(cls, source_dict: dict[Any, Any]) -> "ZarrStoreSource":
            return cls(source_dict["uri"])

    class StoreDataset(MetaDataset):
        def __init__(self, source, name, digest, profile):
            self._profile = profile
            super().__init__(source=source, name=name, digest=digest)

        @property
        def profile(self) -> Any | None:
            return self._profile

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self._profile)}

    path = str(store.path)
    uri = path if "://" in path else Path(path).resolve().as_uri()
    splits = ("train", "val", "test")
    profile = {f"tasks_{s}": store.n_tasks(s) for s in splits if split in (None, s)}
    profile.update(prior_hash=store.hash, content_digest=store.content_digest if store.is_complete else "")
    name = f"{store.config.name}-{store.hash[:12]}" + (f"/{split}" if split else "")
    return StoreDataset(ZarrStoreSource(uri), name, store.hash[:DATASET_DIGEST_CHARS], profile)


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
        self._run = None
        if self._local:
            self.client = self._init_local_db(MlflowClient)
        else:
            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def _init_local_db(self, client_cls):
        """Create / migrate the sqlite database under a file lock.

        Two processes opening a fresh root at once (two runs started together by the serve
        process) both ran MLflow's schema migrations and one failed with ``duplicate column
        name: step``; the first query creates the schema, so it runs alone.
        """
        import fcntl

        fd = os.open(self.root / ".mlflow-db.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            client = client_cls(tracking_uri=self.uri, registry_uri=self.uri)
            client.search_experiments(max_results=1)  # the tracking store
            client.search_registered_models(max_results=1)  # the registry store: its own engine
            return client
        finally:
            os.close(fd)

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
                  experiment: str | None = None, run_id: str | None = None) -> Iterator["Tracker"]:
        """Context manager: an active MLflow run (a new one, or run ``run_id`` continued).

        The run ends FAILED if the body raises an error, KILLED if it is interrupted
        (KeyboardInterrupt, SystemExit, Prefect's TerminationSignal on SIGTERM: BaseExceptions
        that are not errors of the run itself).
        """
        previous = _fluent_uris()
        self._use()
        try:
            str_tags = {k: str(v) for k, v in (tags or {}).items()}
            if run_id is not None:
                run = self._mlflow.start_run(run_id=run_id)
                if str_tags:
                    self._mlflow.set_tags(str_tags)
            else:
                run = self._mlflow.start_run(experiment_id=self.experiment_id(experiment), run_name=run_name,
                                             tags=str_tags)
            with self._ending(run, restore=None):
                yield self
        finally:
            _restore_fluent_uris(previous)

    @contextmanager
    def training_run(self, folder: str | Path, resume: bool, run_name: str | None = None,
                     tags: Mapping[str, str] | None = None) -> Iterator["Tracker"]:
        """:meth:`start_run` for a training whose checkpoints live in ``folder``.

        The run id is kept in ``folder/mlflow_run.json``. With ``resume`` (the caller found a
        checkpoint there) and that run still unfinished (RUNNING after a SIGKILL, FAILED or
        KILLED), the same run is continued: its curve goes on from the checkpoint step (steps
        between the checkpoint and the crash are logged again, with the same values on CPU).
        Otherwise a new run starts; an old run left RUNNING is marked KILLED and the new one
        carries its id in the tag ``causalmeta.previous_run``.
        """
        from mlflow.exceptions import MlflowException

        folder = Path(folder)
        marker = folder / RUN_FILE
        previous = None
        try:
            recorded = json.loads(marker.read_text())
            if recorded.get("tracking_uri") == self.uri:
                previous = self.client.get_run(str(recorded["run_id"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError, MlflowException):
            previous = None  # no (readable) record, or a run this backend does not know
        if resume and previous is not None and previous.info.status != "FINISHED":
            with self.start_run(run_id=previous.info.run_id,
                                tags={**(tags or {}), "causalmeta.resumed": "true"}) as tracker:
                yield tracker
            return
        extra = {}
        if previous is not None:
            extra["causalmeta.previous_run"] = previous.info.run_id
            if previous.info.status == "RUNNING":  # its process died without ending it
                self.client.set_terminated(previous.info.run_id, status="KILLED")
        with self.start_run(run_name=run_name, tags={**(tags or {}), **extra}) as tracker:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(json.dumps({"run_id": tracker.run_id, "tracking_uri": self.uri}))
            os.replace(tmp, marker)
            yield tracker

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
                               config: Any = None, recipe: str | None = None) -> int:
        """Log ``model``'s state dict and typed config to the active run; register a version.

        ``config`` (a pydantic model or dict) defaults to ``model.config``; it must validate
        as the registered method's config class, or the version could not be rebuilt. The
        version of ``causalmeta-<method>`` is tagged ``prior_hash``/``prior_name``/``method``/
        ``run_id`` (and ``recipe``, the training recipe's hash, when given: see
        :meth:`registered_model_for_prior`). Tensors are copied to the CPU so the model loads
        on any machine.

        Returns:
            The registered version number.
        """
        self._require_run("log_and_register_model")
        import torch

        from pipeline_lib.models.registry import get_method

        name = registered_name(method)
        spec = get_method(method)
        config = config if config is not None else getattr(model, "config", None)
        if config is None:
            raise TrackingError(f"config: {type(model).__name__} has no .config; pass config= explicitly")
        raw = config.model_dump(mode="json") if hasattr(config, "model_dump") else dict(config)
        typed = spec.config_cls.model_validate(raw)  # refuse now what could not be rebuilt later
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "model"
            folder.mkdir()
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            torch.save(state, folder / "state_dict.pt")
            meta = {"format": MODEL_FORMAT, "method": method,
                    "config_class": f"{spec.config_cls.__module__}.{spec.config_cls.__qualname__}",
                    "config": typed.model_dump(mode="json"), "torch": torch.__version__,
                    "state_dict_sha256": _sha256(folder / "state_dict.pt")}
            (folder / "model.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            self._mlflow.log_artifacts(str(folder), artifact_path="model")
        source = f"{self._run.info.artifact_uri.rstrip('/')}/model"
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException:  # exists (or was created concurrently)
            pass
        tags = {"prior_hash": prior_hash, "prior_name": prior_name, "method": method, "run_id": self.run_id,
                "format": MODEL_FORMAT, **({"recipe": recipe} if recipe else {})}
        mv = self.client.create_model_version(name, source=source, run_id=self.run_id,
                                              tags={k: str(v) for k, v in tags.items()})
        if mv.version is None:
            raise TrackingError(f"log_and_register_model: registration of {name} returned no version")
        return int(mv.version)

    def _versions(self, method: str) -> list:
        from mlflow.exceptions import MlflowException

        try:
            return list(self.client.search_model_versions(f"name='{registered_name(method)}'"))
        except MlflowException:
            return []

    def latest_version(self, method: str) -> int | None:
        versions = [int(v.version) for v in self._versions(method)]
        return max(versions) if versions else None

    def registered_model_for_prior(self, method: str, prior_hash: str, recipe: str | None = None) -> int | None:
        """Newest loadable version of ``causalmeta-<method>`` tagged with ``prior_hash`` (and, when
        ``recipe`` is given, trained by that recipe: model config, training config, data source;
        versions registered without the tag do not match it), or None.

        Versions in the pickled format of earlier code do not count (they are kept, but
        :meth:`load_registered_model` refuses them), so a flow that reuses a model trained on
        the prior retrains instead of reusing one it cannot load.
        """
        hits = [int(v.version) for v in self._versions(method)
                if v.tags.get("prior_hash") == prior_hash and v.tags.get("format") == MODEL_FORMAT
                and (recipe is None or v.tags.get("recipe") == recipe)]
        return max(hits) if hits else None

    def load_registered_model(self, method: str, version: int | str = "latest", map_location: str = "cpu"):
        """The registered model ``causalmeta-<method>`` at ``version`` (int or "latest"), in eval mode.

        Rebuilt from the method registry with the stored config; the weights are read with
        ``torch.load(weights_only=True)``. Nothing else of the version is loaded: a version
        without ``model.json`` (e.g. a pickled ``mlflow.pytorch`` model) is refused.
        """
        import torch
        from mlflow.artifacts import download_artifacts
        from mlflow.exceptions import MlflowException

        from pipeline_lib.models.registry import get_method

        name = registered_name(method)
        if version == "latest":
            version = self.latest_version(method)
            if version is None:
                raise TrackingError(f"method: no registered model {name} under {self.uri}")
        elif not isinstance(version, int) and not str(version).isdigit():
            raise TrackingError(f"version: expected an int or 'latest', got {version!r}")
        label = f"{name} version {int(version)}"
        try:
            mv = self.client.get_model_version(name, str(int(version)))
        except MlflowException:
            raise TrackingError(f"version: {label} is not registered under {self.uri}") from None
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = Path(download_artifacts(artifact_uri=mv.source, dst_path=tmp, tracking_uri=self.uri))
            except (MlflowException, OSError) as exc:
                raise TrackingError(f"{label}: artifacts at {mv.source} unreadable ({exc})") from None
            meta_path, weights = local / "model.json", local / "state_dict.pt"
            if not meta_path.is_file() or not weights.is_file():
                raise TrackingError(
                    f"{label} is not a state dict + config (model.json, state_dict.pt) but "
                    f"{sorted(p.name for p in local.iterdir()) if local.is_dir() else local.name}; "
                    "pickled models are refused: retrain it (causalmeta train --force)"
                )
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != MODEL_FORMAT or meta.get("method") != method:
                raise TrackingError(f"{label}: model.json has format {meta.get('format')!r} / method "
                                    f"{meta.get('method')!r}, expected {MODEL_FORMAT!r} / {method!r}")
            if _sha256(weights) != meta.get("state_dict_sha256"):
                raise TrackingError(f"{label}: state_dict.pt does not match the sha256 in model.json")
            try:
                state = torch.load(weights, map_location=map_location, weights_only=True)
            except Exception as exc:  # UnpicklingError for anything but tensors and containers
                raise TrackingError(f"{label}: state_dict.pt refused by torch.load(weights_only=True): "
                                    f"{str(exc).splitlines()[-1] if str(exc) else type(exc).__name__}") from None
        spec = get_method(method)
        with torch.random.fork_rng(devices=[]):  # the discarded initial weights must not move the caller's RNG
            model = spec.build(spec.config_cls.model_validate(meta["config"]))
        model.load_state_dict(state, strict=True)
        return model.to(map_location).eval()

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
                    "format": v.tags.get("format", "pickle (refused)"),
                })
        return sorted(out, key=lambda r: (r["name"], r["version"]))

    # ----------------------------------------------------------- artifacts
    def download_artifact_text(self, run_id: str, path: str) -> str:
        """Text content of artifact ``path`` of run ``run_id``."""
        from mlflow.artifacts import download_artifacts

        with tempfile.TemporaryDirectory() as tmp:
            local = download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp, tracking_uri=self.uri)
            return Path(local).read_text()

    def run_url(self, run_id: str, experiment_id: str | None = None) -> str | None:
        """The run's page in the MLflow UI when tracking goes to a server, else None.

        A local ``sqlite:`` backend has no UI of its own: :meth:`ui_command` starts one.
        """
        if not self.uri.startswith(("http://", "https://")):
            return None
        exp = experiment_id or self.client.get_run(run_id).info.experiment_id
        return f"{self.uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"

    def ui_command(self, port: int = 5000) -> str:
        """The command that serves this tracker's backend in the MLflow UI on loopback."""
        art = f" --artifacts-destination {(self.root.resolve() / 'mlartifacts')}" if self._local else ""
        return (f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server --backend-store-uri {self.uri}{art} "
                f"--host 127.0.0.1 --port {port} --workers 1")

    def describe_run(self, markdown: str) -> None:
        """The active run's description (``mlflow.note.content``): the markdown on top of its run page.

        Also marks the run's experiment as model development (``mlflow.experimentKind``), so
        the MLflow 3 UI opens it on its runs table and compare view rather than its GenAI
        (traces) overview.
        """
        self._require_run("describe_run")
        self._mlflow.set_tag("mlflow.note.content", markdown)
        self.client.set_experiment_tag(self._run.info.experiment_id, "mlflow.experimentKind",
                                       "custom_model_development")

    # ------------------------------------------------------ lineage (inputs)
    def log_store_input(self, store_path: str | Path, context: str, split: str | None = None) -> str:
        """Log a stored prior as an input dataset of the active run; return the digest.

        MLflow's dataset API: name ``<prior>-<hash12>[/<split>]``, source the store's ``file://``
        URI (or its fsspec URL), digest the first :data:`DATASET_DIGEST_CHARS` hex of the store's
        content hash (the ``prior_hash`` tag of the models trained on it), context ``train`` /
        ``val`` / ``test``. The run page's Datasets panel and the lineage view then say which
        prior trained which model and which data scored which result.
        """
        self._require_run("log_store_input")
        from storage.prior_store import PriorStore

        ds = store_dataset(PriorStore.open(store_path), split)
        self._mlflow.log_input(ds, context=context)
        return ds.digest

    @contextmanager
    def _ending(self, run, restore):
        """Make ``run`` the tracker's run; end it FINISHED, FAILED (an error) or KILLED (an
        interrupt such as Ctrl-C / SIGTERM); then the tracker's run is ``restore`` again."""
        self._run = run
        status = "FINISHED"
        try:
            yield
        except Exception:
            status = "FAILED"
            raise
        except BaseException:
            status = "KILLED"
            raise
        finally:
            self._mlflow.end_run(status=status)
            self._run = restore

    @contextmanager
    def child_run(self, run_name: str, tags: Mapping[str, str] | None = None) -> Iterator["Tracker"]:
        """A run nested under the active one (``mlflow.parentRunId``), e.g. one per benchmarked method.

        The parent stays the tracker's run again when the child ends; status rules as in
        :meth:`start_run`.
        """
        self._require_run("child_run")
        parent = self._run
        run = self._mlflow.start_run(experiment_id=parent.info.experiment_id, run_name=run_name, nested=True,
                                     tags={k: str(v) for k, v in (tags or {}).items()})
        with self._ending(run, restore=parent):
            yield self

    def describe_model_version(self, method: str, version: int | str, description: str,
                               tags: Mapping[str, Any] | None = None) -> None:
        """Set the description (shown on the registry's version page) and extra tags of a version."""
        name = registered_name(method)
        self.client.update_model_version(name, str(version), description=description)
        for k, v in (tags or {}).items():
            self.client.set_model_version_tag(name, str(version), k, str(v))

    def log_input_example(self, task: Mapping[str, Any], answers: Iterable[str], max_rows: int = 5,
                          artifact_file: str = "model/input_example.json") -> dict[str, Any]:
        """The input example and signature of ``predict(model, task)`` as a JSON artifact.

        Written beside the registered weights (the version's ``model/`` folder, where MLflow
        puts ``input_example.json``): the first ``max_rows`` samples of every array of one task,
        and per array its dtype and shape with named axes, plus the capabilities the answer has.
        """
        import numpy as np

        self._require_run("log_input_example")
        axes = {"x_obs": ["n_obs", "d"], "noise_obs": ["n_obs", "d"], "node_mask": ["d"], "adjacency": ["d", "d"],
                "int_targets": ["K", "d"], "int_values": ["K", "d"], "x_int": ["K", "n_int", "d"],
                "perturbation": ["K", "p"]}
        example, inputs = {}, {}
        for k, v in task.items():
            a = np.asarray(v)
            if a.dtype.kind not in "biuf":
                continue
            inputs[k] = {"dtype": str(a.dtype), "shape": axes.get(k, [f"dim{i}" for i in range(a.ndim)])}
            cut = a[:max_rows] if k in ("x_obs", "noise_obs") else a
            cut = cut[:, :max_rows] if k == "x_int" else cut
            example[k] = np.where(np.isfinite(cut), cut, 0).tolist() if a.dtype.kind == "f" else cut.tolist()
        doc = {"signature": {"inputs": inputs, "outputs": sorted(answers),
                             "call": "get_method(method).predict(model, task)"},
               "input_example": example, "note": f"samples truncated to the first {max_rows} rows"}
        self._mlflow.log_dict(doc, artifact_file)
        return doc

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


def _fluent_uris() -> tuple[str | None, str | None]:
    """mlflow's process-wide tracking / registry URIs as set (None: unset, its default applies).
    Private attributes of mlflow 3; if they move, nothing is restored (the old behaviour)."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    return getattr(tracking_utils, "_tracking_uri", None), getattr(registry_utils, "_registry_uri", None)


def _restore_fluent_uris(uris: tuple[str | None, str | None]) -> None:
    """Give mlflow's fluent API back the URIs it had before a run of ours (a later plain
    ``MlflowClient()`` of the same process then means what its user configured, not our root)."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    tracking, registry = uris
    if hasattr(tracking_utils, "_tracking_uri"):
        tracking_utils._tracking_uri = tracking
    if hasattr(registry_utils, "_registry_uri"):
        registry_utils._registry_uri = registry
