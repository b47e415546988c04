"""The deployments of causalmeta, declared once and rendered two ways.

``DEPLOYMENTS`` (built by :func:`deployment_table`) is the single source of truth:

| deployment                | flow            | schedule / trigger                             | pool           |
|---------------------------|-----------------|------------------------------------------------|----------------|
| ``nightly-benchmark``     | benchmark       | cron ``0 2 * * *`` (UTC), preset ``quick``     | causalmeta-cpu |
| ``benchmark``             | benchmark       | on demand (the UI renders BenchmarkSpec as a form) | causalmeta-cpu |
| ``generate-prior``        | generate-prior  | on demand                                      | causalmeta-cpu |
| ``meta-train``            | meta-train      | on demand                                      | causalmeta-gpu |
| ``retrain-on-prior-change`` | meta-train    | event ``causalmeta.prior.updated`` (not for the methods the generating flow trains) | causalmeta-gpu |
| ``train-mace-5-20``       | meta-train      | on demand: one MACE-TNP for d in [5, 20]       | causalmeta-gpu |
| ``evaluate-dataset``      | evaluate-dataset | on demand (store path and options as a form)  | causalmeta-cpu |

Two renderings of that table:

- ``python -m deploy.serve``: one process that registers the deployments with the
  Prefect API in ``$PREFECT_API_URL`` and executes their runs itself (``prefect.serve``,
  no work pool): the single-machine stack of ``deploy/stack.sh``.
- ``python -m deploy.serve --render-prefect-yaml``: the text of ``deploy/prefect.yaml`` for
  ``prefect deploy --all`` against a server with work pools (multi-machine, see
  deploy/README.md). A test checks the committed file equals this rendering, so the two
  never drift apart.

The retrain trigger passes the store of the new prior to ``meta_train`` through the Jinja
template ``{{ event.resource['causalmeta.prior.path'] }}``: Prefect renders trigger
parameters with the triggering event in the context, and an event resource supports
item access by label (``Resource.__getitem__``). A single-expression template is rendered
with ``| tojson`` by the server, so the parameter arrives as a plain string.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # prefect is imported lazily: rendering the table needs none of it
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

__all__ = [
    "CPU_POOL",
    "GPU_POOL",
    "PRIOR_PATH_TEMPLATE",
    "PRIOR_RESOURCE_PATTERN",
    "PRIOR_UPDATED_EVENT",
    "DeploymentSpec",
    "EventTrigger",
    "build_runner_deployments",
    "deployment_table",
    "load_flow",
    "main",
    "render_prefect_yaml",
    "serve",
]

CPU_POOL = "causalmeta-cpu"
GPU_POOL = "causalmeta-gpu"
#: Emitted by flows.generate.generate_prior when a store is finalized (a test checks they agree).
PRIOR_UPDATED_EVENT = "causalmeta.prior.updated"
PRIOR_RESOURCE_PATTERN = "causalmeta.prior.*"
PRIOR_PATH_TEMPLATE = "{{ event.resource['causalmeta.prior.path'] }}"
#: Resource label listing the methods the generating flow trains itself (flows.generate.training_label).
PRIOR_TRAINING_LABEL = "causalmeta.prior.training"
#: The method runs of retrain-on-prior-change train (meta_train's default).
RETRAIN_METHOD = "mace-tnp"
#: train-mace-5-20: the settings of configs/benchmarks/mace-5-20.yaml (a test checks they agree).
MACE_5_20_TRAINING = {"method": "mace-tnp", "prior": "mace-5-20", "preset": "paper-5-20", "steps": 20000,
                      "batch_size": 32, "lr": 0.0003}
NIGHTLY_CRON = "0 2 * * *"
TIMEZONE = "UTC"
#: prefect.yaml is deployed from another machine than the one that runs the flows, so the
#: data root and the code location are placeholders that `prefect deploy` fills from the
#: deploying shell's environment.
ROOT_PLACEHOLDER = "{{ $CAUSALMETA_ROOT }}"
CODE_DIR_PLACEHOLDER = "{{ $CAUSALMETA_CODE_DIR }}"


@dataclass(frozen=True)
class EventTrigger:
    """Run the deployment whenever an event named `expect` whose resource matches `match` arrives.

    `parameters` may hold Jinja templates over the event (``{{ event.resource[...] }}``);
    they are merged over the deployment's default parameters by the server.
    """

    name: str
    expect: str
    match: dict[str, str]
    parameters: dict[str, Any]

    def as_prefect_yaml(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": "event",
            "enabled": True,
            "expect": [self.expect],
            "match": dict(self.match),
            "parameters": dict(self.parameters),
        }

    def as_deployment_trigger(self):
        from prefect.events import DeploymentEventTrigger

        return DeploymentEventTrigger(
            name=self.name,
            enabled=True,
            expect={self.expect},
            match=dict(self.match),
            parameters=dict(self.parameters),
        )


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: which flow, with which default parameters, when, and where it runs."""

    name: str
    flow_name: str
    entrypoint: str  # "<file relative to the repository root>:<function>"
    description: str
    work_pool: str
    parameters: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None
    trigger: EventTrigger | None = None
    tags: tuple[str, ...] = ("causalmeta",)

    @property
    def module_and_function(self) -> tuple[str, str]:
        path, func = self.entrypoint.split(":")
        return path.removesuffix(".py").replace("/", "."), func


def deployment_table(
    root: str,
    *,
    benchmark_preset: str = "quick",
    train_steps: int | None = None,
) -> tuple[DeploymentSpec, ...]:
    """The five deployments, with `root` as the data root of every flow.

    `train_steps` (None: the method's configured default) is passed to runs started by the
    retrain trigger; tests set it small so a triggered run finishes in seconds.
    """
    if train_steps is not None and (isinstance(train_steps, bool) or train_steps < 1):
        raise ValueError(f"train_steps must be a positive int or None, got {train_steps!r}")
    retrain_params: dict[str, Any] = {"prior": PRIOR_PATH_TEMPLATE, "method": RETRAIN_METHOD}
    if train_steps is not None:
        retrain_params["steps"] = int(train_steps)
    return (
        DeploymentSpec(
            name="nightly-benchmark",
            flow_name="benchmark",
            entrypoint="flows/benchmark.py:benchmark",
            description=f"Scheduled benchmark, preset '{benchmark_preset}', every night at 02:00 UTC.",
            work_pool=CPU_POOL,
            parameters={"preset": benchmark_preset, "root": root},
            cron=NIGHTLY_CRON,
            tags=("causalmeta", "benchmark", "scheduled"),
        ),
        DeploymentSpec(
            name="benchmark",
            flow_name="benchmark",
            entrypoint="flows/benchmark.py:benchmark",
            description=(
                "Benchmark on demand: fill in a BenchmarkSpec (priors, methods, baselines) or name "
                "a preset; the spec wins when both are given."
            ),
            work_pool=CPU_POOL,
            parameters={"preset": benchmark_preset, "root": root},
            tags=("causalmeta", "benchmark"),
        ),
        DeploymentSpec(
            name="generate-prior",
            flow_name="generate-prior",
            entrypoint="flows/generate.py:generate_prior",
            description="Generate (or resume) the Zarr store of a PriorConfig; emits causalmeta.prior.updated.",
            work_pool=CPU_POOL,
            parameters={"root": root},
            tags=("causalmeta", "prior"),
        ),
        DeploymentSpec(
            name="meta-train",
            flow_name="meta-train",
            entrypoint="flows/train.py:meta_train",
            description="Meta-train an amortized method on a prior (config YAML or store path).",
            work_pool=GPU_POOL,
            parameters={"root": root},
            tags=("causalmeta", "train"),
        ),
        DeploymentSpec(
            name="retrain-on-prior-change",
            flow_name="meta-train",
            entrypoint="flows/train.py:meta_train",
            description="Meta-train on every newly finalized prior store (event causalmeta.prior.updated).",
            work_pool=GPU_POOL,
            parameters={"root": root},
            trigger=EventTrigger(
                name="retrain-on-prior-change",
                expect=PRIOR_UPDATED_EVENT,
                match={"prefect.resource.id": PRIOR_RESOURCE_PATTERN,
                       # not when the flow that generated the prior trains this method itself
                       PRIOR_TRAINING_LABEL: f"!*,{RETRAIN_METHOD},*"},
                parameters=retrain_params,
            ),
            tags=("causalmeta", "train", "event"),
        ),
        DeploymentSpec(
            name="evaluate-dataset",
            flow_name="evaluate-dataset",
            entrypoint="flows/dataset.py:evaluate_dataset",
            description=(
                "Score methods on held-out experiments of an imported dataset (causalmeta import): the store "
                "path, the held-out regimes (all or R1,R2), baselines and registered models as a form."
            ),
            work_pool=CPU_POOL,
            parameters={"root": root, "holdout_regimes": "all"},
            tags=("causalmeta", "dataset"),
        ),
        DeploymentSpec(
            name="train-mace-5-20",
            flow_name="meta-train",
            entrypoint="flows/train.py:meta_train",
            description=(
                "One MACE-TNP for 5 to 20 variables (prior mace-5-20, model preset paper-5-20, 20000 steps of "
                "32 tasks): the model `causalmeta import --method mace-tnp` and evaluate-dataset apply to "
                "imported tables without retraining. A GPU job (hours on a CPU)."
            ),
            work_pool=GPU_POOL,
            parameters={"root": root, **MACE_5_20_TRAINING},
            tags=("causalmeta", "train", "mace-5-20"),
        ),
    )


# ---------------------------------------------------------------------------- serve
def load_flow(spec: DeploymentSpec) -> "Flow":
    """Import the flow object a deployment runs; its Prefect name must be `spec.flow_name`."""
    module_name, func = spec.module_and_function
    flow = getattr(importlib.import_module(module_name), func)
    if getattr(flow, "name", None) != spec.flow_name:
        raise ValueError(
            f"deployment {spec.name!r}: {spec.entrypoint} is flow {getattr(flow, 'name', None)!r}, "
            f"the table says {spec.flow_name!r}"
        )
    return flow


def build_runner_deployments(table: Sequence[DeploymentSpec]) -> list["RunnerDeployment"]:
    """`flow.to_deployment(...)` for every row (no work pool: the serve process runs them)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    out = []
    for spec in table:
        out.append(
            load_flow(spec).to_deployment(
                name=spec.name,
                description=spec.description,
                parameters=dict(spec.parameters),
                schedules=[Cron(spec.cron, timezone=TIMEZONE)] if spec.cron else None,
                triggers=[spec.trigger.as_deployment_trigger()] if spec.trigger else None,
                tags=list(spec.tags),
                # module path, not file path: runs load the flow by import, whatever the cwd.
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return out


def serve(table: Sequence[DeploymentSpec], *, limit: int | None = None) -> None:
    """Register the deployments with the Prefect API and execute their runs until interrupted."""
    from prefect import serve as prefect_serve

    prefect_serve(*build_runner_deployments(table), limit=limit, print_starting_message=True)


# ---------------------------------------------------------------------------- prefect.yaml
_YAML_HEADER = """\
# GENERATED by `python -m deploy.serve --render-prefect-yaml > deploy/prefect.yaml`
# from the table in deploy/serve.py; edit the table, not this file (a test compares them).
#
# Multi-machine deployments on work pools (deploy/README.md):
#   export CAUSALMETA_ROOT=/data/causalmeta        # data root every worker mounts
#   export CAUSALMETA_CODE_DIR=/opt/causalmeta     # the checkout on every worker
#   prefect work-pool create causalmeta-cpu --type process
#   prefect work-pool create causalmeta-gpu --type process
#   prefect --no-prompt deploy --all --prefect-file deploy/prefect.yaml
# `prefect deploy` fills {{ $VAR }} from the deploying shell; {{ event.* }} stays a
# template that the server renders when the trigger fires.
"""


def prefect_yaml_document(table: Sequence[DeploymentSpec]) -> dict[str, Any]:
    """The prefect.yaml content as a dict (see :func:`render_prefect_yaml`)."""
    deployments = []
    for spec in table:
        entry: dict[str, Any] = {
            "name": spec.name,
            "entrypoint": spec.entrypoint,
            "description": spec.description,
            "tags": list(spec.tags),
            "parameters": dict(spec.parameters),
            "work_pool": {"name": spec.work_pool, "work_queue_name": "default", "job_variables": {}},
            "schedules": [{"cron": spec.cron, "timezone": TIMEZONE}] if spec.cron else [],
        }
        if spec.trigger is not None:
            entry["triggers"] = [spec.trigger.as_prefect_yaml()]
        deployments.append(entry)
    return {
        "name": "causalmeta",
        "prefect-version": "3.9.1",
        "build": None,
        "push": None,
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": CODE_DIR_PLACEHOLDER}}],
        "deployments": deployments,
    }


def render_prefect_yaml(table: Sequence[DeploymentSpec] | None = None) -> str:
    """deploy/prefect.yaml as text; `table` defaults to the one with the root placeholder."""
    import yaml

    table = deployment_table(ROOT_PLACEHOLDER) if table is None else table
    body = yaml.safe_dump(prefect_yaml_document(table), sort_keys=False, width=100)
    return _YAML_HEADER + body


# ---------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    from storage.settings import load_settings

    settings = load_settings()
    parser = argparse.ArgumentParser(prog="python -m deploy.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=settings.root, help="data root (default $CAUSALMETA_ROOT or .causalmeta)")
    parser.add_argument("--preset", default="quick", help="benchmark preset of the two benchmark deployments")
    parser.add_argument("--train-steps", type=int, default=None, help="steps of runs started by the retrain trigger")
    parser.add_argument("--limit", type=int, default=None, help="at most this many concurrent runs")
    parser.add_argument("--render-prefect-yaml", action="store_true", help="print deploy/prefect.yaml and exit")
    args = parser.parse_args(argv)

    if args.render_prefect_yaml:
        sys.stdout.write(render_prefect_yaml())
        return 0
    # Absolute: runs execute in subprocesses and, with a work pool, on other machines.
    root = str(Path(args.root).resolve()) if "://" not in args.root else args.root
    table = deployment_table(root, benchmark_preset=args.preset, train_steps=args.train_steps)
    api = settings.prefect_api_url or "(ephemeral API: runs are not visible to a UI)"
    # Runs started from the UI may only use this root (or folders below it): the `root` field of
    # a form is not a free path into the machine (flows/runtime.check_root). The flow-run
    # subprocesses inherit the variable.
    from flows.runtime import ALLOWED_ROOTS_ENV

    os.environ.setdefault(ALLOWED_ROOTS_ENV, root)
    print(f"causalmeta serve: root={root} api={api} allowed roots={os.environ[ALLOWED_ROOTS_ENV]}", flush=True)
    serve(table, limit=args.limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
