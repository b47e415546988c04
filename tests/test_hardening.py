"""Issue 12: hardening. One test (or a few) per item; each failed on the code before the fix.

- 1  services bind loopback; a network bind is refused without TLS (the bind checks with
     real services are in tests/test_service_bind.py);
- 2  a prior's name is a slug (it becomes a folder name under the root);
- 3  stored models and checkpoints are state dicts + typed configs, loaded with
     ``weights_only=True``: a pickle that runs code is refused;
- 8  NaN / inf are refused in every config model, with the field named;
- 9  the CLI answers a broken YAML file with one line naming the file and line, exit 2;
- 11 one seed -> the same trained bytes, across processes;
- 12 a resumed training continues the killed MLflow run; a signalled CLI stops Prefect's
     temporary server.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import REPO
from pipeline_lib.priors import PriorConfig, PriorConfigError

TINY = {"name": "t", "graph": {"kind": "erdos_renyi", "n_nodes": 3, "expected_parents": 0.5},
        "n_obs": 8, "n_int": 4, "splits": {"train": 2, "val": 1, "test": 1}}


def _with(dotted: str, value) -> dict:
    import copy

    cfg = copy.deepcopy(TINY)
    node = cfg
    *path, leaf = dotted.split(".")
    for key in path:
        node = node.setdefault(key, {})
    node[leaf] = value
    return cfg


# ------------------------------------------------------------------- 2: names are slugs
@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "a..b", "a b", "x\\y", "", "é", "a" * 129])
def test_prior_name_must_be_a_slug(name):
    with pytest.raises(PriorConfigError, match=r"^name"):
        PriorConfig.from_dict(_with("name", name))


@pytest.mark.parametrize("name", ["lin-3node", "er_20node", "v1.2", "A", "0-x"])
def test_slug_names_pass(name):
    assert PriorConfig.from_dict(_with("name", name)).name == name


def test_every_shipped_prior_name_is_still_valid():
    from flows.spec import load_prior

    for path in sorted((REPO / "configs" / "priors").glob("*.yaml")):
        assert load_prior(str(path)).name == path.stem


# ------------------------------------------------------------------- 8: finite numbers only
@pytest.mark.parametrize("field", ["interventions.value_scale", "mechanism.w_min", "mechanism.w_max",
                                   "graph.expected_parents", "noise.scale_max", "mechanism.grn.hill",
                                   "mechanism.alpha_w", "interventions.perturbation_noise"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_prior_config_refuses_non_finite_numbers(field, value):
    import re

    with pytest.raises(PriorConfigError, match="^" + re.escape(field) + "="):
        PriorConfig.from_dict(_with(field, value))


def test_train_config_refuses_non_finite_numbers():
    from pydantic import ValidationError

    from pipeline_lib.training.loop import TrainConfig

    for field, value in [("lr", math.inf), ("weight_decay", math.nan), ("betas", (math.nan, 0.9)),
                         ("grad_clip", math.inf), ("warmup_frac", math.nan)]:
        with pytest.raises(ValidationError, match=field):
            TrainConfig(steps=1, **{field: value})


def test_benchmark_spec_refuses_non_finite_numbers():
    from pydantic import ValidationError

    from flows.spec import BaselineRun, BenchmarkSpec, MethodRun

    with pytest.raises(ValidationError, match="lr"):
        MethodRun(lr=math.inf)
    with pytest.raises(ValidationError, match=r"model\.hidden\[1\]=nan"):
        MethodRun(model={"hidden": [4, math.nan]})
    with pytest.raises(ValidationError, match=r"config\.alpha=inf"):
        BaselineRun(name="exact", config={"alpha": math.inf})
    with pytest.raises(ValidationError, match=r"prior_overrides\.interventions\.value_scale=nan"):
        BenchmarkSpec(prior_overrides={"interventions": {"value_scale": math.nan}})


# ------------------------------------------------------------------- 9: YAML errors in the CLI
BROKEN_YAML = {
    "malformed.yaml": ("name: a\ngraph:\n  n_nodes: [3\n", r"malformed\.yaml:4:1: invalid YAML"),
    "tab.yaml": ("name: a\ngraph:\n\tn_nodes: 3\n", r"tab\.yaml:3:1: invalid YAML.*tabs"),
    "empty.yaml": ("", r"empty\.yaml: the file is empty"),
    "list.yaml": ("- name: a\n- name: b\n", r"list\.yaml:1: expected a .*mapping.*got a YAML list"),
    "nan.yaml": ("name: a\ngraph:\n  n_nodes: 3\ninterventions:\n  value_scale: .nan\n",
                 r"nan\.yaml:5: interventions\.value_scale=nan"),
    "name.yaml": ("name: ../../x\ngraph:\n  n_nodes: 3\n", r"name\.yaml:1: name='\.\./\.\./x'"),
    "unknown-key.yaml": ("name: a\ngraph:\n  n_nodes: 3\n  colour: red\n", r"unknown-key\.yaml:4: graph\.colour"),
}


def _cli(*args: str):
    from flows.cli import app

    result = CliRunner().invoke(app, list(args))
    return result, (result.stderr or "") + (result.stdout or "")


@pytest.mark.parametrize("filename", sorted(BROKEN_YAML))
def test_generate_reports_broken_yaml_in_one_line(tmp_path, filename):
    text, expected = BROKEN_YAML[filename]
    path = tmp_path / filename
    path.write_text(text)
    result, out = _cli("generate", str(path), "--root", str(tmp_path / "root"))
    assert result.exit_code == 2, out
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), out
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    assert str(tmp_path) in lines[0]
    import re

    assert re.search(expected, lines[0]), lines[0]
    assert not (tmp_path / "root").exists()  # nothing generated, no store written


@pytest.mark.parametrize("filename", ["malformed.yaml", "tab.yaml", "empty.yaml", "list.yaml"])
def test_benchmark_spec_and_train_prior_report_broken_yaml_in_one_line(tmp_path, filename):
    text, _ = BROKEN_YAML[filename]
    path = tmp_path / filename
    path.write_text(text)
    for args in (["benchmark", "--spec", str(path)], ["train", "--prior", str(path)]):
        result, out = _cli(*args, "--root", str(tmp_path / "root"))
        assert result.exit_code == 2, (args, out)
        lines = [ln for ln in out.splitlines() if ln.strip()]
        assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in out, (args, out)


def test_benchmark_spec_validation_error_names_file_and_line(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: x\npriors: [lin-2node]\nn_test_tasks: 0\n")
    result, out = _cli("benchmark", "--spec", str(path))
    assert result.exit_code == 2
    assert out.strip().splitlines() == [f"error: {path}:3: n_test_tasks: Input should be greater than or equal to 1"]


def test_a_config_file_without_yaml_suffix_is_read_as_a_file(tmp_path, monkeypatch):
    from flows.spec import SpecError, load_prior

    (tmp_path / "myprior").write_text("name: mine\ngraph:\n  n_nodes: 3\n")
    assert load_prior(str(tmp_path / "myprior")).name == "mine"
    monkeypatch.chdir(tmp_path)
    assert load_prior("myprior").name == "mine"  # a file in the cwd wins over the shipped names
    assert load_prior("lin-3node").name == "lin-3node"  # a bare shipped name still works
    with pytest.raises(SpecError, match="neither a file nor a shipped prior"):
        load_prior("no-such-prior")
