"""PriorConfig: validation messages name the field, serialisation round trips, content hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline_lib.priors import GENERATOR_VERSION, PriorConfig, PriorConfigError
from pipeline_lib.priors import config as config_module


def base(**overrides) -> dict:
    cfg = {
        "name": "t",
        "graph": {"kind": "erdos_renyi", "n_nodes": 5, "expected_parents": 1.0},
        "mechanism": {"kind": "linear"},
        "interventions": {"n_regimes": 2, "max_targets": 2},
        "n_obs": 50,
        "n_int": 20,
        "splits": {"train": 10, "val": 2, "test": 2},
    }
    for dotted, value in overrides.items():
        node = cfg
        *path, leaf = dotted.split("__")
        for key in path:
            node = node.setdefault(key, {})
        node[leaf] = value
    return cfg


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"graph__n_nodes": 1}, "graph.n_nodes"),
        ({"graph__expected_parents": 2.5}, "graph.expected_parents"),
        ({"graph__expected_parents": -0.1}, "graph.expected_parents"),
        ({"graph__kind": "small_world"}, "graph.kind"),
        ({"mechanism__kind": "transformer"}, "mechanism.kind"),
        ({"noise__kind": "cauchy"}, "noise.kind"),
        ({"noise__scale_min": 0.0}, "noise.scale_min"),
        ({"splits__train": -1}, "splits.train"),
        ({"n_int": -3}, "n_int"),
        ({"n_obs": 1}, "n_obs"),
        ({"interventions__n_regimes": -1}, "interventions.n_regimes"),
        ({"interventions__max_targets": 6}, "interventions.max_targets"),
        ({"interventions__perturbation_dim": -2}, "interventions.perturbation_dim"),
        ({"chunk_tasks": 0}, "chunk_tasks"),
        ({"mechanism__lengthscale_min": 0.0}, "mechanism.lengthscale_min"),
        ({"mechanism__kind": "bge", "noise__kind": "laplace"}, "noise.kind"),
        ({"graph__n_nodes_typo": 3}, "graph.n_nodes_typo"),
    ],
)
def test_bad_input_names_the_field(overrides, field):
    with pytest.raises(PriorConfigError) as info:
        PriorConfig.from_dict(base(**overrides))
    assert field in str(info.value), str(info.value)


def test_expected_parents_bound_is_the_complete_dag():
    # (n - 1) / 2 is allowed (ER becomes the complete DAG), a hair above is not
    PriorConfig.from_dict(base(graph__expected_parents=2.0))
    with pytest.raises(PriorConfigError, match=r"\(n_nodes - 1\) / 2 = 2"):
        PriorConfig.from_dict(base(graph__expected_parents=2.01))


def test_node_range_validation():
    cfg = base()
    cfg["graph"] = {"kind": "erdos_renyi", "n_nodes_min": 4, "n_nodes_max": 8, "expected_parents": 1.0}
    c = PriorConfig.from_dict(cfg)
    assert (c.graph.d_min, c.d_max) == (4, 8)
    cfg["graph"]["n_nodes_max"] = 3
    with pytest.raises(PriorConfigError, match="graph.n_nodes_max"):
        PriorConfig.from_dict(cfg)
    cfg["graph"] = {"n_nodes": 4, "n_nodes_min": 2, "n_nodes_max": 5}
    with pytest.raises(PriorConfigError, match="graph.n_nodes"):
        PriorConfig.from_dict(cfg)
    with pytest.raises(PriorConfigError, match="graph.n_nodes"):
        PriorConfig.from_dict({"name": "t", "graph": {}})


def test_yaml_json_round_trip_and_hash(tmp_path):
    c = PriorConfig.from_dict(base())
    path = tmp_path / "c.yaml"
    c.to_yaml(path)
    back = PriorConfig.from_yaml(path)
    assert back == c
    assert back.content_hash() == c.content_hash()
    assert PriorConfig.from_json(c.to_json()) == c
    # canonical JSON: sorted keys, no whitespace
    text = c.to_json()
    assert " " not in text and json.loads(text) == json.loads(json.dumps(json.loads(text), sort_keys=True))
    assert len(c.content_hash()) == 64


def test_hash_tracks_bytes_not_presentation(monkeypatch):
    c = PriorConfig.from_dict(base())
    h = c.content_hash()
    assert PriorConfig.from_dict(base(description="a note")).content_hash() == h
    assert PriorConfig.from_dict(base(seed=1)).content_hash() != h
    assert PriorConfig.from_dict(base(noise__scale_max=2.0)).content_hash() != h
    assert PriorConfig.from_dict(base(chunk_tasks=7)).content_hash() != h  # names the store layout
    monkeypatch.setattr(config_module, "GENERATOR_VERSION", GENERATOR_VERSION + "x")
    assert c.content_hash() != h


def test_example_configs_load():
    files = sorted((Path(__file__).parents[1] / "configs" / "priors").glob("*.yaml"))
    names = {f.stem for f in files}
    assert {"lin-2node", "lin-3node", "nn-3node", "gp-3node", "er-20node", "bge-2node", "bge-3node"} <= names
    for f in files:
        c = PriorConfig.from_yaml(f)
        assert c.name == f.stem
