"""What a benchmark run is: a pydantic spec (rendered as a form in the Prefect UI) and presets.

A :class:`BenchmarkSpec` names the priors, the amortized methods to meta-train, the
per-dataset baselines, how many test tasks to score and the seeds. Presets ship as YAML in
``configs/benchmarks/`` (``quick``: under 10 minutes on 2 CPU cores; ``paper-3node``: the
MACE-TNP three-node study). Priors are named by a shipped config (``configs/priors/<name>.yaml``)
or given as a path; ``prior_overrides`` deep-merges into every prior config (e.g. fewer tasks).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline_lib.baselines.registry import check_baseline, check_config
from pipeline_lib.priors import PriorConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


class SpecError(ValueError):
    pass


class MethodRun(BaseModel):
    """One amortized method to meta-train and score."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("mace-tnp", description="registered method name")
    preset: str | None = Field(None, description="model size preset (default: the method's default)")
    steps: int = Field(300, ge=1, description="meta-training steps")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(5e-4, gt=0)
    device: str = Field("auto", description="auto | cpu | cuda")
    model: dict[str, Any] = Field(default_factory=dict, description="overrides of the model config")


class BaselineRun(BaseModel):
    """One per-dataset baseline and its config overrides."""

    model_config = ConfigDict(extra="forbid")
    name: str
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return check_baseline(v)

    @model_validator(mode="after")
    def _config_fits_method(self) -> "BaselineRun":
        check_config(self.name, self.config)
        return self


class BenchmarkSpec(BaseModel):
    """A benchmark: priors x (amortized methods + baselines), scored on the same test tasks."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("quick", description="MLflow experiment of the benchmark run")
    priors: list[str] = Field(default_factory=lambda: ["lin-3node"], min_length=1)
    prior_overrides: dict[str, Any] = Field(default_factory=dict)
    methods: list[MethodRun] = Field(default_factory=lambda: [MethodRun()])
    baselines: list[BaselineRun] = Field(default_factory=lambda: [BaselineRun(name="exact")])
    n_test_tasks: int = Field(10, ge=1, description="test tasks scored per prior")
    max_queries_per_task: int | None = Field(None, ge=1)
    n_workers: int = Field(2, ge=1, description="Dask workers for generation and baselines")
    seed: int = 0
    force_retrain: bool = False

    def prior_configs(self) -> list[PriorConfig]:
        return [load_prior(p, self.prior_overrides) for p in self.priors]


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_prior(name_or_path: str, overrides: dict | None = None) -> PriorConfig:
    """A shipped prior by name (``configs/priors/<name>.yaml``) or a YAML path, with overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIGS / "priors" / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in (CONFIGS / "priors").glob("*.yaml"))
        raise SpecError(f"priors: '{name_or_path}' is neither a file nor a shipped prior ({', '.join(shipped)})")
    raw = yaml.safe_load(path.read_text())
    return PriorConfig.model_validate(_merge(raw, overrides or {}))


def load_preset(name: str) -> BenchmarkSpec:
    path = CONFIGS / "benchmarks" / f"{name}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in (CONFIGS / "benchmarks").glob("*.yaml"))
        raise SpecError(f"preset '{name}' is unknown; shipped presets: {', '.join(shipped)}")
    return BenchmarkSpec.model_validate(yaml.safe_load(path.read_text()))
