"""What a benchmark run is: a pydantic spec (rendered as a form in the Prefect UI) and presets.

A :class:`BenchmarkSpec` names the priors, the amortized methods to meta-train, the
per-dataset baselines, how many test tasks to score and the seeds. Presets ship as YAML in
``configs/benchmarks/`` (``quick``: under 10 minutes on 2 CPU cores; ``paper-3node``: the
MACE-TNP three-node study). Priors are named by a shipped config (``configs/priors/<name>.yaml``)
or given as a path; ``prior_overrides`` deep-merges into every prior config (e.g. fewer tasks).

Every YAML config the CLI reads (``generate``, ``benchmark --spec``, ``train --prior``) goes
through :func:`load_yaml_mapping`, so a broken file is one :class:`SpecError` line naming the
file and line, never a traceback.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from pipeline_lib.baselines.registry import check_baseline, check_config
from pipeline_lib.priors import PriorConfig, PriorConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


class SpecError(ValueError):
    """A benchmark spec or config file that cannot be used; one line naming the file (and line)."""


def _reject_non_finite(value: Any, field: str) -> Any:
    """Free-form override dicts are not typed, so pydantic's ``allow_inf_nan=False`` cannot see
    inside them: a YAML ``.nan`` would reach the method's config (or a loss) unchecked."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{field}={value!r}: numbers must be finite")
    if isinstance(value, dict):
        for k, v in value.items():
            _reject_non_finite(v, f"{field}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _reject_non_finite(v, f"{field}[{i}]")
    return value


def _choices(kind: str):
    """A form dropdown of the names registered when the schema is rendered (the Prefect UI)."""

    def extra(schema: dict) -> None:
        if kind == "methods":
            from pipeline_lib.models.registry import METHODS as names
        else:
            from pipeline_lib.baselines.registry import baseline_names

            names = baseline_names()
        schema["enum"] = list(names)

    return extra


class MethodRun(BaseModel):
    """One amortized method to meta-train and score."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str = Field("mace-tnp", description="registered method name", json_schema_extra=_choices("methods"))
    preset: str | None = Field(None, description="model size preset (default: the method's default)")
    steps: int = Field(300, ge=1, description="meta-training steps")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(5e-4, gt=0)
    device: str = Field("auto", description="auto | cpu | cuda")
    model: dict[str, Any] = Field(default_factory=dict, description="overrides of the model config")
    data: Literal["store", "stream"] = Field("store", description="training tasks: the stored train split or fresh draws")

    @field_validator("model")
    @classmethod
    def _finite_model(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _reject_non_finite(v, "model")

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        from pipeline_lib.models.registry import get_method

        return get_method(v).name

    @model_validator(mode="after")
    def _model_fits_method(self) -> "MethodRun":
        from pipeline_lib.models.registry import get_method

        get_method(self.name).config(self.preset, **self.model)  # unknown preset / field named here
        return self


class BaselineRun(BaseModel):
    """One per-dataset baseline and its config overrides (validated once, into ``typed_config``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str = Field(..., description="registered baseline name", json_schema_extra=_choices("baselines"))
    config: dict[str, Any] = Field(default_factory=dict)
    _typed: BaseModel | None = PrivateAttr(default=None)

    @field_validator("config")
    @classmethod
    def _finite_config(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _reject_non_finite(v, "config")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return check_baseline(v)

    @model_validator(mode="after")
    def _config_fits_method(self) -> "BaselineRun":
        self._typed = check_config(self.name, self.config)
        return self

    @property
    def typed_config(self) -> BaseModel:
        """The config validated into the method's config class (what the fit receives)."""
        return self._typed


class BenchmarkSpec(BaseModel):
    """A benchmark: priors x (amortized methods + baselines), scored on the same test tasks."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str = Field("quick", description="MLflow experiment of the benchmark run")
    priors: list[str] = Field(default_factory=lambda: ["lin-3node"], min_length=1)
    prior_overrides: dict[str, Any] = Field(default_factory=dict)
    methods: list[MethodRun] = Field(default_factory=lambda: [MethodRun()])
    baselines: list[BaselineRun] = Field(default_factory=lambda: [BaselineRun(name="exact")])
    n_test_tasks: int = Field(10, ge=1, description="test tasks scored per prior")
    max_queries_per_task: int | None = Field(None, ge=1)
    int_holdout: float = Field(0.5, ge=0.0, lt=1.0, description=(
        "share of each regime's interventional rows kept out of every method's fit and scored by NLPID "
        "(a method fitted on interventional data is never scored on the rows it saw); 0 fits and scores all"))
    n_workers: int = Field(2, ge=1, description="Dask workers for generation and baselines")
    seed: int = 0
    force_retrain: bool = False

    @field_validator("prior_overrides")
    @classmethod
    def _finite_overrides(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _reject_non_finite(v, "prior_overrides")

    def prior_configs(self) -> list[PriorConfig]:
        return [load_prior(p, self.prior_overrides) for p in self.priors]


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _yaml_line(text: str, loc: tuple) -> int | None:
    """1-based line of the YAML node at ``loc`` (dotted keys / list indices), or of its deepest
    existing ancestor; None when the text does not compose (it was parsed once already)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == str(key)), None)
            key_node = next((k for k, v in node.value if k.value == str(key)), None)
            if match is None:
                break
            line, node = key_node.start_mark.line + 1, match
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def load_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The mapping at the top of YAML file ``path``; every failure is a one-line :class:`SpecError`
    naming ``path`` and, where the parser knows it, ``path:line:column``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read {what} ({exc.__class__.__name__}: {exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        lines = text.splitlines()
        bad_line = lines[mark.line] if mark is not None and mark.line < len(lines) else ""
        hint = " (YAML indentation must use spaces, not tabs)" if "\t" in bad_line else ""
        raise SpecError(f"{where}: invalid YAML: {problem}{hint}") from None
    if data is None:
        raise SpecError(f"{path}: the file is empty; expected a {what} mapping (key: value lines)")
    if not isinstance(data, dict):
        raise SpecError(f"{path}:1: expected a {what} mapping (key: value lines), got a YAML {type(data).__name__}")
    return data


def _validation_line(path: Path, err: Exception) -> str:
    """``path:line: message`` on one line for a pydantic / PriorConfigError failure.

    The line is that of the first failing field: pydantic's location, made deeper by the
    dotted field our own validators put first in their messages (``graph.n_nodes_min/...``).
    """
    cause = err if isinstance(err, ValidationError) else err.__cause__
    if isinstance(err, ValidationError):
        msg = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<top>'}: {e['msg'].removeprefix('Value error, ')}"
                        for e in err.errors())
    else:
        msg = str(err)
    line = None
    if isinstance(cause, ValidationError) and cause.errors():
        first = cause.errors()[0]
        loc = tuple(first["loc"])
        named = re.match(r"[A-Za-z_][\w.]*", first["msg"].removeprefix("Value error, "))
        if named and first["msg"].startswith("Value error, ") and named.group(0).count(".") + 1 > len(loc):
            loc = tuple(named.group(0).split("."))
        try:
            line = _yaml_line(path.read_text(encoding="utf-8"), loc)
        except OSError:
            line = None
    return f"{path}:{line}: {msg}" if line else f"{path}: {msg}"


def load_prior(name_or_path: str, overrides: dict | None = None) -> PriorConfig:
    """A prior config from a YAML file, or a shipped prior by name (``configs/priors/<name>.yaml``),
    with ``overrides`` deep-merged in.

    An existing file always wins, whatever its suffix; only a bare name (no folder, no
    suffix) is looked up among the shipped priors.
    """
    path = Path(name_or_path)
    if not path.is_file():
        shipped_path = CONFIGS / "priors" / f"{name_or_path}.yaml"
        if path.name == str(name_or_path) and not path.suffix and shipped_path.is_file():
            path = shipped_path
        else:
            shipped = sorted(p.stem for p in (CONFIGS / "priors").glob("*.yaml"))
            raise SpecError(f"priors: '{name_or_path}' is neither a file nor a shipped prior ({', '.join(shipped)})")
    raw = load_yaml_mapping(path, "prior config")
    try:
        return PriorConfig.from_dict(_merge(raw, overrides or {}))
    except PriorConfigError as exc:
        raise SpecError(_validation_line(path, exc)) from None


def load_spec(path: str | Path) -> BenchmarkSpec:
    """A :class:`BenchmarkSpec` from a YAML file; errors are one line naming the file and line."""
    path = Path(path)
    raw = load_yaml_mapping(path, "benchmark spec")
    try:
        return BenchmarkSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_validation_line(path, exc)) from None


def shipped_presets() -> tuple[str, ...]:
    """Names of the benchmark presets in configs/benchmarks/ (sorted)."""
    return tuple(sorted(p.stem for p in (CONFIGS / "benchmarks").glob("*.yaml")))


#: The ``preset`` parameter of the benchmark flow: a dropdown of the shipped presets in the
#: Prefect form, and a value the API validates when a run is created (not free text).
PresetName = Literal[shipped_presets()]  # type: ignore[valid-type]


def load_preset(name: str) -> BenchmarkSpec:
    path = CONFIGS / "benchmarks" / f"{name}.yaml"
    if not path.is_file():
        raise SpecError(f"preset '{name}' is unknown; shipped presets: {', '.join(shipped_presets())}")
    return load_spec(path)
