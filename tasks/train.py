"""Prefect task: meta-train one amortized method on one prior, tracked and registered in MLflow."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from pipeline_lib.models.registry import get_method
from pipeline_lib.priors import PriorConfig
from pipeline_lib.taskdata import task_slice
from pipeline_lib.training.batching import ChunkedSource, PoolSource, prior_stream
from pipeline_lib.training.checkpoint import LAST
from pipeline_lib.training.loop import TrainConfig, train
from tasks.artifacts import Progress, artifact_key, publish_markdown

__all__ = ["train_method_task", "training_recipe"]


DATA_SOURCES = ("store", "stream")


def training_recipe(model_cfg, train_cfg: TrainConfig, data: str) -> str:
    """sha256 of what makes one trained model differ from another on the same prior: the model
    config, the training config and the data source. Names the checkpoint folder (first 8 hex)
    and tags the registered version, so a changed preset or budget trains anew instead of
    reusing the model of another recipe."""
    return hashlib.sha256(json.dumps([model_cfg.model_dump(), train_cfg.model_dump(), data], sort_keys=True,
                                     default=str).encode()).hexdigest()


def _batch_source(data: str, prior: PriorConfig, store_path: str | None, make_batch, cfg: TrainConfig):
    if data == "stream":
        return prior_stream(prior, make_batch, cfg.batch_size, cfg.seed)
    if data != "store":
        raise ValueError(f"data={data!r}: choose one of {', '.join(DATA_SOURCES)}")
    if not store_path:
        raise ValueError("data='store' needs a stored prior: pass a store path (or data='stream')")
    from storage.prior_store import PriorStore

    store = PriorStore.open(store_path)
    bounds = [store.chunk_range("train", c) for c in range(store.n_chunks("train"))]
    return ChunkedSource(lambda a, b: store.read("train", a, b), bounds, make_batch, cfg.batch_size, cfg.seed)


def _summary_markdown(method: str, prior: PriorConfig, version, run_id: str, result, data: str) -> str:
    """The training run's Prefect artifact: the registered version and the final metrics."""
    rows = [("registered model", f"`causalmeta-{method}` version **{version}**"),
            ("prior", f"`{prior.name}` (`{prior.content_hash()[:12]}`), {data} data"),
            ("steps", str(result.step)), ("final training loss", f"{result.history[-1]['loss']:.4g}"),
            ("best validation loss", "-" if result.best_val is None else f"{result.best_val:.4g}"),
            ("throughput", f"{result.throughput:.1f} tasks/s on {result.device}"), ("MLflow run", f"`{run_id}`")]
    return "\n".join([f"### {method} on {prior.name}", "", "| | |", "|---|---|",
                      *(f"| {k} | {v} |" for k, v in rows)]) + "\n"


def build_seeded(spec, model_cfg, seed: int):
    """The model with initial weights that are a function of ``seed`` alone.

    The global torch RNG is seeded right before the build: otherwise the weights depend on
    whatever drew from it earlier in the process (another task of the same Dask worker, an
    import), and two runs with one seed differ from step 1.
    """
    import torch

    torch.manual_seed(seed)
    return spec.build(model_cfg)


@task(retries=1, retry_delay_seconds=[5], persist_result=False, task_run_name="train-{method}")
def train_method_task(method: str, prior_json: str, store_path: str | None, root: str, experiment: str,
                      train_cfg: dict[str, Any], preset: str | None, model_overrides: dict[str, Any],
                      data: str = "store", threads: int | None = None) -> dict:
    """Train, log and register; resumes from the checkpoint folder after a crash (same seed -> same state).

    Data: ``store`` (default) reads the stored ``train`` split chunk by chunk
    (:class:`~pipeline_lib.training.batching.ChunkedSource`: a seeded permutation per epoch,
    background prefetch, the batch of a step a pure function of the step, so a resumed run
    continues at the exact batch); ``stream`` draws fresh tasks from the prior every step
    (unlimited tasks). Validation on the stored ``val`` split when a store is given.
    ``threads``: torch's intra-op threads for the run (its share of the machine's cores,
    flows/runtime.train_threads); None keeps the process's setting.
    """
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        out = _train(method, prior_json, store_path, root, experiment, train_cfg, preset, model_overrides, data)
        out["threads"] = torch.get_num_threads()
        return out
    finally:
        torch.set_num_threads(before)


def _train(method: str, prior_json: str, store_path: str | None, root: str, experiment: str,
           train_cfg: dict[str, Any], preset: str | None, model_overrides: dict[str, Any], data: str) -> dict:
    from storage.tracking import Tracker

    logger = get_run_logger()
    prior = PriorConfig.model_validate_json(prior_json)
    spec = get_method(method)
    model_cfg = spec.config(preset, **model_overrides)
    cfg = TrainConfig(**train_cfg)
    model = build_seeded(spec, model_cfg, cfg.seed)
    make_batch = spec.make_batch(model_cfg)
    source = _batch_source(data, prior, store_path, make_batch, cfg)
    val_source = None
    if store_path:
        from storage.prior_store import PriorStore

        val = PriorStore.open(store_path).read("val")
        val_source = PoolSource(val, make_batch, min(cfg.batch_size, len(val["x_obs"])), cfg.seed, shuffle=False)
    recipe = training_recipe(model_cfg, cfg, data)
    run_key = recipe[:8]
    ckpt_dir = Path(root) / "checkpoints" / f"{method}-{prior.content_hash()[:12]}-{run_key}"
    tracker = Tracker(root, experiment)
    # a checkpoint means a killed run is resumed: it continues that run's MLflow run (storage/tracking.py)
    with tracker.training_run(ckpt_dir, resume=(ckpt_dir / LAST).is_file(),
                              run_name=f"{method}-{prior.name}-{prior.content_hash()[:8]}",
                              tags={"method": method, "prior_hash": prior.content_hash(), "prior_name": prior.name}):
        tracker.log_params({"method": method, "prior_hash": prior.content_hash(), "prior_name": prior.name,
                            "model": model_cfg.model_dump(), "train": cfg.model_dump(), "data_source": data,
                            **({"store": str(store_path)} if store_path else {})})
        if store_path:  # lineage: the run's Datasets panel names the stored splits it read
            if data == "store":
                tracker.log_store_input(store_path, "train", "train")
            tracker.log_store_input(store_path, "val", "val")
        every = max(1, cfg.steps // 100)
        progress = Progress(artifact_key("train", method, prior.name, "steps"), cfg.steps,
                            f"{method} on {prior.name}: training steps")

        def log_step(rec: dict) -> None:
            if rec["step"] % every == 0 or "val_loss" in rec:
                tracker.log_metrics({k: v for k, v in rec.items() if k != "step"}, step=rec["step"])
            progress.update(rec["step"], f"loss {rec['loss']:.3g}")

        try:
            result = train(model, spec.loss_fn, source, cfg, checkpoint_dir=ckpt_dir, val_source=val_source,
                           callbacks=[log_step], progress=True)
        finally:
            if isinstance(source, ChunkedSource):
                source.close()
        if isinstance(source, ChunkedSource):
            tracker.log_metrics({"epochs": source.epochs_at(result.step), "train_tasks": float(source.n_tasks)})
        tracker.log_metrics({"final_loss": result.history[-1]["loss"], "throughput_tasks_per_s": result.throughput,
                             **({"best_val_loss": result.best_val} if result.best_val is not None else {})})
        tracker.log_loss_curve_png(result.history)
        tracker.log_dict({"prior": json.loads(prior.to_json()), "model": model_cfg.model_dump(),
                          "train": cfg.model_dump()}, "config.json")
        if (ckpt_dir / "last.pt").is_file():
            tracker.log_artifact(ckpt_dir / "last.pt")
        version = tracker.log_and_register_model(model, method, prior.content_hash(), prior.name, config=model_cfg,
                                                 recipe=recipe)
        run_id = tracker.run_id
        if val_source is not None:
            tracker.log_input_example(task_slice(val, 0), spec.answers)
        headline = (f"best validation loss {result.best_val:.4g}" if result.best_val is not None
                    else f"final training loss {result.history[-1]['loss']:.4g}")
        description = (f"{method} meta-trained on prior {prior.name} ({prior.content_hash()[:12]}), "
                       f"{result.step} steps on {data} data, {headline}."
                       + (" Input example and signature: model/input_example.json." if val_source is not None else ""))
        tracker.describe_model_version(method, version, description, tags={k: v for k, v in {
            "steps": result.step, "data_source": data,
            "best_val_loss": None if result.best_val is None else f"{result.best_val:.4g}",
            "device": result.device}.items() if v is not None})
        tracker.describe_run(f"{description} Registered as `causalmeta-{method}` version {version}.")
    logger.info("%s trained on %s: %d steps, %.1f tasks/s, registered version %s", method, prior.name,
                result.step, result.throughput, version)
    publish_markdown(artifact_key("train", method, prior.name), _summary_markdown(
        method, prior, version, run_id, result, data), description=f"causalmeta-{method} v{version}")
    return {"method": method, "version": str(version), "run_id": run_id, "prior_hash": prior.content_hash(),
            "steps": result.step, "throughput_tasks_per_s": result.throughput, "device": result.device,
            "final_loss": result.history[-1]["loss"], "reused": False, "data": data}
