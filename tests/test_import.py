"""Importing users' tables (storage.importing): CSV / Parquet / h5ad round trips, bad inputs, URLs.

The data comes from the project's own sampler (known graph, two hard single-target regimes,
raw units), written out as a user would hand it in: one row per measurement, a ``regime``
column and a ``targets`` column (empty = observational).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from storage.importing import DataImportError, DataStore, import_dataset

REPO = Path(__file__).resolve().parents[1]
NAMES = ["raf", "mek", "erk"]


def sampled_task(seed: int = 3) -> dict:
    """One task of lin-3node-strong (2 regimes, raw units) whose graph is a v-structure
    (i -> k <- j: identifiable from observational data, so a Bayesian posterior on x_obs alone
    can predict interventions; a complete 3-node DAG would leave all orientations equally likely)."""
    from pipeline_lib.priors import PriorConfig, sample_tasks

    raw = yaml.safe_load((REPO / "configs/priors/lin-3node-strong.yaml").read_text())
    raw["interventions"]["n_regimes"], raw["standardize"] = 2, False
    cfg = PriorConfig.model_validate(raw)
    rng = np.random.default_rng(seed)
    while True:
        t = {k: v[0] for k, v in sample_tasks(cfg, 1, rng).items()}
        if t["adjacency"].sum() == 2 and t["adjacency"].sum(0).max() == 2:
            return t


def frame_of(task: dict):
    import pandas as pd

    rows = [pd.DataFrame(task["x_obs"].astype(np.float64), columns=NAMES).assign(regime="obs", targets="")]
    for k in range(len(task["int_targets"])):
        j = int(np.flatnonzero(task["int_targets"][k])[0])
        rows.append(pd.DataFrame(task["x_int"][k].astype(np.float64), columns=NAMES)
                    .assign(regime=f"do-{NAMES[j]}", targets=NAMES[j]))
    return pd.concat(rows, ignore_index=True)


def edges_csv(task: dict, path: Path) -> Path:
    lines = ["source,target"] + [f"{NAMES[i]},{NAMES[j]}" for i, j in zip(*np.nonzero(task["adjacency"]))]
    path.write_text("\n".join(lines) + "\n")
    return path


def write(frame, path: Path) -> Path:
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False, float_format="%.17g")
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        import anndata

        import warnings

        import pandas as pd

        # object strings: anndata 0.12.6 (the last release that accepts pandas 3) cannot write
        # pandas 3's default Arrow-backed strings (reading is unaffected)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pd.option_context("future.infer_string", False):
                idx = pd.Index([str(i) for i in range(len(frame))], dtype=object)
                obs = pd.DataFrame({c: frame[c].to_numpy(dtype=object) for c in ("regime", "targets")}, index=idx)
                var = pd.DataFrame(index=pd.Index(NAMES, dtype=object))
                anndata.AnnData(X=frame[NAMES].to_numpy(np.float64), obs=obs, var=var).write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def task():
    return sampled_task()


def _no_store_left(root: Path) -> bool:
    data = root / "data"
    return not data.exists() or not any(data.iterdir())


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".h5ad"])
def test_round_trip_each_format(tmp_path, task, suffix):
    src = write(frame_of(task), tmp_path / f"cyto{suffix}")
    ds = import_dataset(src, tmp_path / "root", "cyto", regime_col="regime", targets_col="targets",
                        graph=edges_csv(task, tmp_path / "edges.csv"))
    assert Path(ds.path).parent == tmp_path / "root" / "data" and Path(ds.path).name == f"{ds.label}.zarr"
    assert ds.node_names == NAMES
    assert [r["label"] for r in ds.regimes] == [f"do-{NAMES[int(np.flatnonzero(t)[0])]}" for t in task["int_targets"]]
    assert [r["rows"] for r in ds.regimes] == [100, 100] and ds.attrs["n_obs"] == 200
    assert ds.attrs["truth"] == {"adjacency": True, "noise_obs": False, "x_cf": False, "scm": False}
    t = ds.task()
    assert "noise_obs" not in t and "x_cf" not in t
    np.testing.assert_array_equal(t["adjacency"], task["adjacency"])
    np.testing.assert_array_equal(t["int_targets"], task["int_targets"])
    # standardised with the observational rows, and back to the user's units
    np.testing.assert_allclose(t["x_obs"].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(t["x_obs"].std(0), 1, atol=1e-5)
    for v in range(3):
        np.testing.assert_allclose(ds.to_user(t["x_obs"][:, v], v), task["x_obs"][:, v], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ds.to_user(t["x_int"][1, :, v], v), task["x_int"][1, :, v], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ds.from_user(task["x_obs"][:, v], v), t["x_obs"][:, v], atol=1e-5)


def test_same_table_same_store_whatever_the_format(tmp_path, task):
    """The content hash names the data, not the file: CSV, Parquet and h5ad of one table meet."""
    frame = frame_of(task)
    paths = {import_dataset(write(frame, tmp_path / f"t{s}"), tmp_path / "root", "t", regime_col="regime",
                            targets_col="targets").path for s in (".csv", ".parquet", ".h5ad")}
    assert len(paths) == 1
    assert len(list((tmp_path / "root" / "data").iterdir())) == 1


def test_targets_unknown_and_grouping_by_targets(tmp_path, task):
    frame = frame_of(task)
    # no targets column: regimes have unknown targets, the observational label is named
    src = write(frame.drop(columns="targets"), tmp_path / "a.csv")
    with pytest.raises(DataImportError, match="--observational"):
        import_dataset(src, tmp_path / "r", "a", regime_col="regime")
    ds = import_dataset(src, tmp_path / "r", "a", regime_col="regime", observational="obs")
    assert [r["targets"] for r in ds.regimes] == [None, None]
    assert not ds.task()["targets_known"].any() and not ds.task()["int_targets"].any()
    # no regime column: rows grouped by their targets; '?' = unknown targets
    f2 = frame.drop(columns="regime")
    f2.loc[f2.targets == f2.targets.iloc[-1], "targets"] = "?"
    ds2 = import_dataset(write(f2, tmp_path / "b.csv"), tmp_path / "r", "b", targets_col="targets")
    assert [r["targets"] for r in ds2.regimes] == [[ds.regimes[0]["label"][3:]], None]
    assert ds2.task()["targets_known"].tolist() == [True, False]


BAD = {
    "non-numeric": (lambda f: f.astype({"mek": object}).assign(mek=f.mek.astype(object).where(f.index != 4, "high")),
                    {}, r"column 'mek': non-numeric value 'high' in row 5"),
    "all-nan": (lambda f: f.assign(erk=np.nan), {}, r"column 'erk': all 400 values are NaN"),
    "nan-cells": (lambda f: f.assign(raf=f.raf.where(~f.index.isin([2, 7]), np.nan)), {},
                  r"2 NaN / inf cell\(s\) in 2 row\(s\); by column 'raf': 2 \(rows 3, 8\).*--drop-nan"),
    "inf-cells": (lambda f: f.assign(raf=f.raf.where(f.index != 9, np.inf)), {}, r"'raf': 1 \(row 10\)"),
    "constant": (lambda f: f.assign(erk=2.5), {}, r"column 'erk': constant \(2.5\) on the 200 observational rows"),
    "unknown-target": (lambda f: f.assign(targets=f.targets.where(f.index != 250, "jnk")), {},
                       r"row 251, column 'targets': target 'jnk' is not a variable column"),
    "inconsistent-targets": (lambda f: f.assign(targets=f.targets.where(f.index != 399, "raf;erk")), {},
                             r"regime 'do-\w+': rows disagree on column 'targets'"),
    "tiny-regime": (lambda f: f.assign(regime=f.regime.where(f.index != 399, "solo")), {},
                    r"regime 'solo': 1 row \(row 400\); at least 2 are needed"),
    "node-range": (lambda f: f, {"node_limits": {"mace-tnp v1 (prior lin-2node)": (2, 2)}},
                   r"the data has 3 variables; mace-tnp v1 \(prior lin-2node\) supports d in \[2, 2\]"),
    "no-regime-column": (lambda f: f, {"regime_col": "batch"}, r"regime column 'batch': not a column"),
    "bad-name": (lambda f: f, {"name": "../escape"}, r"name '../escape': must be a slug"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_the_problem_and_writes_nothing(tmp_path, task, case):
    change, kwargs, message = BAD[case]
    src = write(change(frame_of(task)), tmp_path / "bad.csv")
    kw = {"regime_col": "regime", "targets_col": "targets", "name": "bad", **kwargs}
    with pytest.raises(DataImportError, match=message):
        import_dataset(src, tmp_path / "root", kw.pop("name"), **kw)
    assert _no_store_left(tmp_path / "root")


def test_duplicate_column_names(tmp_path, task):
    src = tmp_path / "dup.csv"
    frame_of(task).to_csv(src, index=False)
    text = src.read_text().splitlines()
    src.write_text("\n".join([text[0].replace("erk", "raf")] + text[1:]) + "\n")
    with pytest.raises(DataImportError, match=r"column 'raf': duplicate name \(columns 1 and 3"):
        import_dataset(src, tmp_path / "root", "dup", regime_col="regime", targets_col="targets")
    assert _no_store_left(tmp_path / "root")


def test_drop_nan_drops_and_counts(tmp_path, task):
    f = frame_of(task)
    f.loc[[2, 7, 300], "raf"] = np.nan
    ds = import_dataset(write(f, tmp_path / "n.csv"), tmp_path / "root", "n", regime_col="regime",
                        targets_col="targets", drop_nan=True)
    assert ds.attrs["dropped_rows"] == 3 and ds.attrs["n_obs"] == 198
    assert sum(r["rows"] for r in ds.regimes) == 199


@pytest.mark.parametrize("graph, message", [
    ("source,target\nraf,jnk\n", r"line 2 \(raf -> jnk\) names 'jnk', not a variable"),
    ("raf,raf\n", r"line 1 is a self-loop on 'raf'"),
])
def test_bad_reference_graph(tmp_path, task, graph, message):
    src = write(frame_of(task), tmp_path / "g.csv")
    (tmp_path / "g_edges.csv").write_text(graph)
    with pytest.raises(DataImportError, match=message):
        import_dataset(src, tmp_path / "root", "g", regime_col="regime", targets_col="targets",
                       graph=tmp_path / "g_edges.csv")
    assert _no_store_left(tmp_path / "root")


def test_cyclic_reference_graph_is_kept_and_flagged(tmp_path, task):
    (tmp_path / "cyc.csv").write_text("raf,mek\nmek,erk\nerk,raf\n")
    ds = import_dataset(write(frame_of(task), tmp_path / "g.csv"), tmp_path / "root", "g", regime_col="regime",
                        targets_col="targets", graph=tmp_path / "cyc.csv")
    assert ds.attrs["reference_graph_cycle"] == "raf -> mek -> erk -> raf"
    assert ds.task()["adjacency"].sum() == 3


def test_gml_reference_graph(tmp_path, task):
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(NAMES)
    g.add_edges_from((NAMES[i], NAMES[j]) for i, j in zip(*np.nonzero(task["adjacency"])))
    nx.write_gml(g, tmp_path / "ref.gml")
    ds = import_dataset(write(frame_of(task), tmp_path / "g.csv"), tmp_path / "root", "g", regime_col="regime",
                        targets_col="targets", graph=tmp_path / "ref.gml")
    np.testing.assert_array_equal(ds.task()["adjacency"], task["adjacency"])


def test_failed_write_leaves_nothing(tmp_path, task, monkeypatch):
    import storage.importing as imp

    def boom(tmp, final):
        raise OSError("disk full")

    monkeypatch.setattr(imp, "_publish", boom)
    with pytest.raises(OSError, match="disk full"):
        import_dataset(write(frame_of(task), tmp_path / "x.csv"), tmp_path / "root", "x", regime_col="regime",
                       targets_col="targets")
    assert _no_store_left(tmp_path / "root")


def test_damaged_store_is_refused(tmp_path, task):
    from storage.prior_store import StoreCorruptedError

    ds = import_dataset(write(frame_of(task), tmp_path / "x.csv"), tmp_path / "root", "x", regime_col="regime",
                        targets_col="targets")
    chunk = next(p for p in (Path(ds.path) / "test" / "x_obs").rglob("*") if p.is_file() and p.name != "zarr.json")
    blob = bytearray(chunk.read_bytes())
    blob[-5] ^= 0xFF
    chunk.write_bytes(bytes(blob))
    with pytest.raises(StoreCorruptedError, match="test/x_obs"):
        DataStore.open(ds.path)


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_fsspec_urls_as_input_and_root(tmp_path, task, scheme):
    import fsspec

    frame = frame_of(task)
    if scheme == "memory":
        src, root = "memory://inbox/cyto.parquet", "memory://causalmeta-root"
        with fsspec.open(src, "wb") as f:
            frame.to_parquet(f, index=False)
    else:
        src, root = f"file://{write(frame, tmp_path / 'cyto.parquet')}", f"file://{tmp_path / 'root'}"
    ds = import_dataset(src, root, "cyto", regime_col="regime", targets_col="targets")
    again = DataStore.open(ds.path)
    assert again.hash == ds.hash and again.node_names == NAMES
    np.testing.assert_allclose(again.to_user(again.task()["x_obs"][:, 2], 2), task["x_obs"][:, 2], rtol=1e-5)
    fs, p = fsspec.core.url_to_fs(root)
    assert [Path(x).name for x in fs.ls(f"{p}/data", detail=False)] == [f"{ds.label}.zarr"]  # no temp left
    if scheme == "memory":
        fs.rm(p, recursive=True)


def test_a_data_store_is_not_a_prior_store(tmp_path, task):
    from storage.prior_store import PriorStore, PriorStoreError

    ds = import_dataset(write(frame_of(task), tmp_path / "x.csv"), tmp_path / "root", "x", regime_col="regime",
                        targets_col="targets")
    with pytest.raises(PriorStoreError, match="is an imported data store, not a prior store"):
        PriorStore.open(ds.path)


@pytest.mark.parametrize("suffix, message", [(".parquet", "not a readable Parquet file"),
                                             (".h5ad", "not a readable .h5ad file"),
                                             (".xlsx", "cannot tell the format")])
def test_unreadable_files(tmp_path, suffix, message):
    bad = tmp_path / f"junk{suffix}"
    bad.write_bytes(b"this is not a table")
    with pytest.raises(DataImportError, match=message):
        import_dataset(bad, tmp_path / "root", "junk")
    with pytest.raises(DataImportError, match="no such file"):
        import_dataset(tmp_path / "absent.csv", tmp_path / "root", "junk")
    assert _no_store_left(tmp_path / "root")
