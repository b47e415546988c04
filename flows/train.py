"""Flow: meta-train an amortized method on a prior, only when no registered model carries its hash.

``prior`` is a shipped prior name, a YAML config path, or a store path (``*.zarr``). The
``retrain-on-prior-change`` deployment runs this flow when ``generate_prior`` emits
``causalmeta.prior.updated`` for a store with a new hash (deploy/).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.concurrency import occupy_cores, training_lock
from flows.runtime import check_root, train_threads
from flows.spec import load_prior
from pipeline_lib.models.registry import get_method
from pipeline_lib.priors import PriorConfig
from pipeline_lib.training.loop import TrainConfig
from tasks.artifacts import artifact_key, publish_markdown
from tasks.train import train_method_task, training_recipe

__all__ = ["meta_train", "resolve_prior"]


def resolve_prior(prior: str | PriorConfig) -> tuple[PriorConfig, str | None]:
    """(config, store path or None) for a config object, a store path, a YAML path or a shipped name."""
    if isinstance(prior, PriorConfig):
        return prior, None
    if str(prior).rstrip("/").endswith(".zarr"):
        from storage.prior_store import PriorStore

        store = PriorStore.open(prior)
        return store.config, str(store.path)
    return load_prior(str(prior)), None


def _run_name() -> str:
    """``train-<method>-<prior>``: the prior's name, also when it is given as a store or YAML path."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    prior = params.get("prior", "")
    if isinstance(prior, dict):  # a config sent as JSON (UI, REST)
        prior = PriorConfig.model_validate(prior)
    label = prior.name if isinstance(prior, PriorConfig) else Path(str(prior).rstrip("/")).stem
    if str(prior).rstrip("/").endswith(".zarr"):
        label = label.rsplit("-", 1)[0]  # <name>-<hash12>.zarr
    return f"train-{params.get('method', 'mace-tnp')}-{label}"


@flow(name="meta-train", flow_run_name=_run_name)
def meta_train(method: str = "mace-tnp", prior: str = "lin-3node", root: str = ".causalmeta",
               steps: int = 300, batch_size: int = 16, lr: float = 5e-4, device: str = "auto",
               preset: str | None = None, model: dict[str, Any] | None = None, force: bool = False,
               experiment: str = "meta-train", seed: int = 0, data: str = "store") -> dict:
    """Meta-train ``method`` on ``prior``; reuse the registered model trained on the same prior hash
    by the same recipe (model config, training config, data source).

    ``data``: ``store`` trains on the stored train split (generated first when ``prior`` names
    a config rather than a store), ``stream`` on fresh draws from the prior every step.

    Returns ``{"method", "version", "run_id", "prior_hash", ..., "reused"}``.
    """
    from storage.tracking import Tracker

    logger = get_run_logger()
    root = check_root(root)
    get_method(method)  # an unknown name fails here, before any lock or store
    config, store_path = resolve_prior(prior)
    prior_hash = config.content_hash()
    tracker = Tracker(root, experiment)
    train_cfg = dict(steps=steps, batch_size=batch_size, lr=lr, device=device, seed=seed,
                     checkpoint_every=max(10, steps // 10), val_every=max(10, steps // 5))
    recipe = training_recipe(get_method(method).config(preset, **dict(model or {})), TrainConfig(**train_cfg), data)
    if not force and (reused := _reuse(tracker, method, config, recipe, waited=None)) is not None:
        return reused
    # One training per (method, prior) at a time, across processes and machines (flows/concurrency.py):
    # a second request waits here, then finds the model the first one registered.
    with training_lock(method, prior_hash, logger, root) as waited:
        if not force and (reused := _reuse(tracker, method, config, recipe, waited=waited)) is not None:
            return reused
        if data == "store" and store_path is None:
            from flows.generate import generate_prior

            store_path = generate_prior(config, root, 2)
        threads = train_threads()
        with occupy_cores(threads, f"training {method} on {config.name}", logger=logger):
            return train_method_task(method, config.to_json(), store_path, root, experiment, train_cfg, preset,
                                     dict(model or {}), data, threads)


def _reuse(tracker, method: str, config: PriorConfig, recipe: str, waited: float | None) -> dict | None:
    """The reuse answer when a model of ``method`` trained by ``recipe`` (model config, training
    config, data source: :func:`tasks.train.training_recipe`) is registered for the prior's
    hash, else None: another preset, budget or data source trains anew."""
    prior_hash = config.content_hash()
    version = tracker.registered_model_for_prior(method, prior_hash, recipe)
    if version is None:
        return None
    how = "" if waited is None else f" by the run that held the training lock ({waited:.0f} s waited)"
    get_run_logger().info("causalmeta-%s v%s is already trained on prior %s (%s)%s: reused", method, version,
                          config.name, prior_hash[:12], how)
    publish_markdown(artifact_key("train", method, config.name),
                     f"### {method} on {config.name}\n\nreused: `causalmeta-{method}` version **{version}** "
                     f"is registered for prior hash `{prior_hash[:12]}`{how} (no training run)\n",
                     description=f"causalmeta-{method} v{version} (reused)")
    return {"method": method, "version": str(version), "prior_hash": prior_hash, "reused": True,
            **({"waited_s": round(waited, 1)} if waited is not None else {})}
