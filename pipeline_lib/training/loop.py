"""Device-agnostic meta-training loop shared by every amortized method.

Optimisation: AdamW with learning rate ``lr * m(s)`` at update ``s`` (0-based)
of ``S`` total, warm-up length ``W = round(warmup_frac * S)`` and floor
``r = min_lr_frac``::

    m(s) = (s + 1) / W                                              s <  W
    m(s) = r + (1 - r) * 0.5 * (1 + cos(pi * (s - W) / max(1, S - W)))   s >= W

(linear warm-up, then cosine decay), gradients clipped to global L2 norm
``grad_clip``. CUDA with bf16 autocast when available (``device="auto"``),
CPU otherwise.

Determinism and resume: the batch for step ``s`` comes from
``batch_source(s)``, a pure function of ``(seed, s)`` (see
:mod:`pipeline_lib.training.batching`); checkpoints hold the model, optimiser,
scheduler and RNG states. A run killed after checkpoint ``c`` and resumed
therefore replays steps ``c..S-1`` on identical data from identical state,
and on CPU reaches bitwise identical parameters.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from pipeline_lib.training.checkpoint import (
    BEST,
    LAST,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

LossOutput = torch.Tensor | tuple[torch.Tensor, Mapping[str, float]]
LossFn = Callable[[torch.nn.Module, Mapping[str, torch.Tensor]], LossOutput]
Callback = Callable[[dict[str, float]], None]


class TrainConfig(BaseModel):
    """Optimisation settings (method-specific data settings live in the model config)."""

    # allow_inf_nan=False: the `gt`/`ge` bounds let inf through and `betas` has none (a NaN beta
    # poisons every parameter at the first step): non-finite numbers are refused by name.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    steps: int = Field(..., ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_frac: float = Field(0.02, ge=0, le=1)
    min_lr_frac: float = Field(0.0, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = Field(True, description="bf16 autocast, used on CUDA only")
    checkpoint_every: int = Field(100, ge=1)
    val_every: int = Field(100, ge=1)
    val_batches: int = Field(4, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1, description="validations without improvement")

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_frac * self.steps))


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """``m(step)`` of the module docstring: the factor applied to ``cfg.lr`` at update ``step``."""
    w, s_total, r = cfg.warmup_steps, cfg.steps, cfg.min_lr_frac
    if step < w:
        return (step + 1) / w
    progress = min(1.0, (step - w) / max(1, s_total - w))
    return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU. Checked at train time, not in the config:
    a config may be written on a CPU-only orchestrator for a GPU worker."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but CUDA is not available on this machine")
    return torch.device(name)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """numpy arrays / tensors -> tensors on ``device`` (dtypes kept)."""
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else torch.as_tensor(v)
        out[k] = t.to(device, non_blocking=True)
    return out


def _split_loss(out: LossOutput) -> tuple[torch.Tensor, dict[str, float]]:
    if isinstance(out, tuple):
        loss, metrics = out
        return loss, {k: float(v) for k, v in metrics.items()}
    return out, {}


def _autocast(device: torch.device, cfg: TrainConfig):
    if device.type == "cuda" and cfg.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: torch.nn.Module, loss_fn: LossFn, source: Callable[[int], Mapping], n_batches: int,
             device: torch.device, cfg: TrainConfig) -> float:
    """Mean loss over the fixed batches ``source(0..n_batches-1)`` in eval mode."""
    was_training = model.training
    model.eval()
    try:
        total = 0.0
        for b in range(n_batches):
            with _autocast(device, cfg):
                loss, _ = _split_loss(loss_fn(model, to_device(source(b), device)))
            total += float(loss)
        return total / n_batches
    finally:
        model.train(was_training)


@dataclass
class TrainResult:
    step: int
    history: list[dict[str, float]]
    best_val: float | None
    throughput: float  # tasks per second over this call's steps
    peak_gpu_memory: int | None  # bytes, CUDA only
    stopped_early: bool = False
    checkpoint_dir: Path | None = None
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


def train(
    model: torch.nn.Module,
    loss_fn: LossFn,
    batch_source: Callable[[int], Mapping],
    cfg: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    val_source: Callable[[int], Mapping] | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> TrainResult:
    """Meta-train ``model`` in place for ``cfg.steps`` updates.

    Args:
        model: any ``nn.Module``; parameters are moved to the chosen device.
        loss_fn: ``loss_fn(model, batch) -> loss`` or ``(loss, metrics)``; the
            batch is a dict of tensors on the device.
        batch_source: ``batch_source(step) -> dict of arrays``, deterministic in ``step``.
        cfg: :class:`TrainConfig`.
        checkpoint_dir: where ``last.pt`` (every ``checkpoint_every`` steps and at
            the end) and ``best.pt`` (best validation loss) go; None disables them.
        resume: continue from ``checkpoint_dir/last.pt`` when it exists.
        val_source: validation batches ``val_source(0..val_batches-1)``, scored
            every ``val_every`` steps and at the end.
        callbacks: called with each step's record (``step`` counts completed
            updates; ``loss``, ``lr``, ``grad_norm``, ``tasks_per_s``, loss
            metrics, ``val_loss`` on validation steps), e.g. MLflow logging.
        progress: show a tqdm bar with loss and tasks/s.

    Returns:
        :class:`TrainResult`.
    """
    device = resolve_device(cfg.device)
    model.to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, cfg))

    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start, history = 0, []
    best_val, bad_evals = math.inf, 0
    if ckpt_dir is not None and resume and (ckpt_dir / LAST).is_file():
        state = load_checkpoint(ckpt_dir / LAST, map_location=device)
        if state["train_config"].get("steps") != cfg.steps:
            raise ValueError(
                f"checkpoint in {ckpt_dir} was written for steps={state['train_config'].get('steps')}, "
                f"this run has steps={cfg.steps}; the LR schedule would differ (use resume=False or a new dir)"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        start, history = state["step"], list(state["history"])
        best_val, bad_evals = state["best_val"], state["bad_evals"]
    else:
        torch.manual_seed(cfg.seed)

    def snapshot(step: int) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": capture_rng_state(),
            "step": step,
            "history": history,
            "best_val": best_val,
            "bad_evals": bad_evals,
            "train_config": cfg.model_dump(mode="json"),
        }

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train", dynamic_ncols=True, leave=False)
    stopped_early = False
    t0 = time.perf_counter()
    steps_done = 0
    try:
        for step in range(start, cfg.steps):
            batch = to_device(batch_source(step), device)
            lr_now = opt.param_groups[0]["lr"]
            with _autocast(device, cfg):
                loss, metrics = _split_loss(loss_fn(model, batch))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {float(loss.detach())} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (
                float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                if cfg.grad_clip is not None
                else float("nan")
            )
            opt.step()
            sched.step()
            steps_done += 1
            elapsed = time.perf_counter() - t0
            record = {
                "step": step + 1,
                "loss": float(loss.detach()),
                "lr": lr_now,
                "grad_norm": grad_norm,
                "tasks_per_s": steps_done * cfg.batch_size / max(elapsed, 1e-9),
                **metrics,
            }
            last = step + 1 == cfg.steps
            if val_source is not None and ((step + 1) % cfg.val_every == 0 or last):
                val = evaluate(model, loss_fn, val_source, cfg.val_batches, device, cfg)
                record["val_loss"] = val
                if val < best_val:
                    best_val, bad_evals = val, 0
                    if ckpt_dir is not None:
                        save_checkpoint(ckpt_dir / BEST, {"model": model.state_dict(), "step": step + 1,
                                                          "val_loss": val})
                else:
                    bad_evals += 1
                    if cfg.early_stopping_patience is not None and bad_evals >= cfg.early_stopping_patience:
                        stopped_early = True
            history.append(record)
            if ckpt_dir is not None and ((step + 1) % cfg.checkpoint_every == 0 or last or stopped_early):
                save_checkpoint(ckpt_dir / LAST, snapshot(step + 1))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}", tasks_s=f"{record['tasks_per_s']:.0f}")
            for cb in callbacks:
                cb(record)
            if stopped_early:
                break
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    return TrainResult(
        step=history[-1]["step"] if history else start,
        history=history,
        best_val=None if math.isinf(best_val) else best_val,
        throughput=steps_done * cfg.batch_size / elapsed if steps_done else 0.0,
        peak_gpu_memory=int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        stopped_early=stopped_early,
        checkpoint_dir=ckpt_dir,
        device=str(device),
    )
