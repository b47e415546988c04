"""Users' own tables (CSV, Parquet, AnnData) imported into the Zarr data contract.

``import_dataset(source, root, name, ...)`` reads a table of measurements, some rows
observational and some from experiments, validates it, standardises it and writes ONE task
into ``<root>/data/<name>-<hash12>.zarr`` (DESIGN.md, "Imported data"). Readers are the
well-kept libraries: pandas (CSV), pyarrow through pandas (Parquet), anndata (``.h5ad``:
``X`` is the rows x variables matrix, ``var_names`` the variable names, ``obs`` columns the
regime / target columns). ``source`` and ``root`` may be local paths or fsspec URLs
(``file://``, ``memory://``, ``s3://`` with s3fs installed, ...).

Regimes and targets
-------------------
* ``regime_col``: the experiment each row comes from. Without it, rows are grouped by their
  targets cell (or all rows are observational when there is no targets column either).
* ``targets_col``: the intervened variables of a row, names separated by ``;``. An empty
  cell means observational; ``?`` means the row's regime intervened on unknown targets.
  Every row of a regime must carry the same targets.
* Without ``targets_col`` every regime has unknown targets, and ``observational`` names the
  regime label of the observational rows.

All observational rows form ``x_obs``; every other regime is one entry of the regime axis.

Validation (nothing is written unless all of it passes): a missing regime / targets column,
duplicate variable names, non-numeric or all-NaN variable columns, NaN / inf cells (counted
per column; ``drop_nan`` drops those rows instead), a target name that is not a variable, a
regime with inconsistent targets or fewer than 2 rows, fewer than 2 observational rows, a
column constant on the observational rows, a reference graph naming unknown variables or
holding a self-loop, and more variables than a chosen method supports (``node_limits``). Each
error is a :class:`DataImportError` naming the column, the row or the regime and the problem.
Rows are numbered from 1, the header excluded (row r of a CSV file is its line r + 1).

Standardisation
---------------
As every training prior does (``PriorConfig.standardize``, pipeline_lib.priors.sampler):
``z = (x - obs_mean) / obs_std`` with the mean and standard deviation (ddof 0) of the
OBSERVATIONAL rows, applied to every row. ``obs_mean`` / ``obs_std`` are stored (float64) so
that predictions return to the user's units: ``x = obs_mean + obs_std * z`` and a density of
``X_i`` in user units is ``p_z(z) / obs_std[i]``.

Store layout
------------
Root attributes: ``kind = "imported"``, ``name``, ``hash`` (sha256 of the content, below),
``node_names``, ``regimes`` (label, rows, targets or None when unknown, per regime),
``n_obs``, ``truth`` (which truth arrays exist: ``adjacency`` only with a reference graph;
``noise_obs``, ``x_cf`` and ``scm`` never: real data has no known noise or SCM),
``reference_graph_cycle`` (one cycle of a cyclic reference graph, else None),
``standardization``, ``source``, ``reference_graph``, ``dropped_rows``, ``created_at`` and,
written last, ``checksums`` ({"test/<array>": sha256 hex}). One group ``test`` holds the one
task (leading task axis of length 1, like a prior's split):

=================  ==================  ======  ==============================================
array              shape               dtype   meaning
=================  ==================  ======  ==============================================
``node_mask``      (1, d)              bool    all True (no padding)
``x_obs``          (1, n_obs, d)       f4      standardised observational rows
``int_targets``    (1, K, d)           bool    known targets of each regime (False if unknown)
``targets_known``  (1, K)              bool    whether regime k's targets are known
``int_values``     (1, K, d)           f4      NaN: real interventions have no set value
``x_int``          (1, K, n_max, d)    f4      standardised rows of each regime, NaN-padded
``int_rows``       (1, K)              i4      real rows of each regime (the rest is padding)
``obs_mean``       (1, d)              f8      the standardisation
``obs_std``        (1, d)              f8
``adjacency``      (1, d, d)           u1      the reference graph (only when given)
=================  ==================  ======  ==============================================

Each array is one Zarr chunk; its digest is the prior stores' per-chunk sha256
(``storage.prior_store._chunk_digest``), re-checked by :meth:`DataStore.read` on every open.
The content hash covers the node names, the regimes and every digest, so the same table
imported twice lands in the same store (the second import finds it and returns it).

Atomicity: the store is written under ``<root>/data/.tmp-<uuid>.zarr`` and renamed into place
(``os.rename``: atomic on one local filesystem); on any error the temporary store is
removed. On object stores (no rename) the temporary prefix is moved key by key; a reader
then still refuses a store whose ``checksums`` attribute or any digest is missing or wrong.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["DataImportError", "DataStore", "ImportedData", "import_dataset", "is_data_store", "parse_table",
           "prior_node_range", "read_reference_graph", "read_table", "write_data_store"]

KIND = "imported"
SPLIT = "test"
UNKNOWN_TARGETS = "?"
_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet", ".h5ad": "h5ad"}


class DataImportError(ValueError):
    """Bad input of an import (the message names the column, row or regime, and the problem)."""


# ---------------------------------------------------------------------------- URLs
def _is_url(path: str | Path) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def _local(path: str | Path) -> str:
    """``file://`` URLs as plain paths (the local code path renames atomically)."""
    s = str(path)
    return s[len("file://"):] if s.startswith("file://") else s


def _join(root: str | Path, *parts: str) -> str:
    return "/".join([str(root).rstrip("/"), *parts]) if _is_url(root) else str(Path(_local(root), *parts))


def _exists(path: str) -> bool:
    if _is_url(path):
        import fsspec

        fs, p = fsspec.core.url_to_fs(path)
        return fs.exists(p)
    return Path(path).exists()


def _zarr_store(path: str, mode: str):
    """A Zarr store for a local path or an fsspec URL."""
    if _is_url(path):
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(path, read_only=mode == "r")
    from zarr.storage import LocalStore

    return LocalStore(path, read_only=mode == "r")


def _remove(path: str) -> None:
    if _is_url(path):
        import fsspec

        fs, p = fsspec.core.url_to_fs(path)
        if fs.exists(p):
            fs.rm(p, recursive=True)
    elif Path(path).exists():
        shutil.rmtree(path)


# ---------------------------------------------------------------------------- reading
@dataclass
class RawTable:
    """A table as read: variable columns and the optional regime / targets columns.

    ``names``: the column names in file order (duplicates kept, for the check);
    ``frame``: a pandas DataFrame of the variable columns (object or numeric dtypes);
    ``regime`` / ``targets``: per-row labels (pandas Series) or None.
    """

    names: list[str]
    frame: Any
    regime: Any | None
    targets: Any | None
    source: str
    fmt: str


def _format(source: str, fmt: str | None) -> str:
    if fmt:
        if fmt not in ("csv", "parquet", "h5ad"):
            raise DataImportError(f"format: {fmt!r} is not one of csv, parquet, h5ad")
        return fmt
    suffix = os.path.splitext(str(source).rstrip("/"))[1].lower()
    if suffix not in _FORMATS:
        raise DataImportError(f"{source}: cannot tell the format from the suffix {suffix or '(none)'!r}; "
                              "use .csv, .parquet or .h5ad (or pass format=)")
    return _FORMATS[suffix]


def _open_bytes(source: str) -> bytes:
    import fsspec

    try:
        with fsspec.open(_local(source) if not _is_url(source) else source, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataImportError(f"{source}: no such file") from None


def read_table(source: str | Path, regime_col: str | None = None, targets_col: str | None = None,
               fmt: str | None = None) -> RawTable:
    """Read ``source`` with pandas / pyarrow / anndata; split off the regime and targets columns."""
    import pandas as pd

    source = str(source)
    fmt = _format(source, fmt)
    local = None if _is_url(source) else _local(source)
    if local is not None and not Path(local).is_file():
        raise DataImportError(f"{source}: no such file")
    # local Parquet / h5ad files go to their readers by path (no copy in memory); URLs as bytes
    raw = _open_bytes(source) if fmt == "csv" or local is None else None
    if fmt == "csv":
        import csv

        text = raw.decode("utf-8-sig", errors="replace")
        sep = "\t" if source.lower().endswith(".tsv") else ","
        header = next(csv.reader(io.StringIO(text), delimiter=sep), None)
        if not header:
            raise DataImportError(f"{source}: empty file (no header row)")
        names = [h.strip() for h in header]
        # read every cell as text: the numeric check below names the offending cell
        frame = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, header=None,
                            skiprows=1, names=list(range(len(names))))
        frame.columns = names if len(set(names)) == len(names) else list(range(len(names)))
        obs_cols = None
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(local if raw is None else io.BytesIO(raw))
        except Exception as exc:  # pyarrow errors: not a readable Parquet file
            raise DataImportError(f"{source}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
        names = [str(n) for n in table.column_names]
        frame = table.to_pandas()
        if len(set(names)) == len(names):
            frame.columns = names
        obs_cols = None
    else:
        import anndata

        try:
            adata = anndata.read_h5ad(local if raw is None else io.BytesIO(raw))
        except Exception as exc:  # h5py / anndata errors: not a readable h5ad file
            raise DataImportError(f"{source}: not a readable .h5ad file ({type(exc).__name__}: {exc})") from None
        x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
        names = [str(n) for n in adata.var_names]
        frame = pd.DataFrame(x, columns=names if len(set(names)) == len(names) else range(len(names)))
        obs_cols = adata.obs.reset_index(drop=True)
    _check_duplicates(names, source)
    regime = targets = None
    for col, what in ((regime_col, "regime"), (targets_col, "targets")):
        if col is None:
            continue
        if obs_cols is not None:  # AnnData: regime / targets live in obs
            if col not in obs_cols.columns:
                raise DataImportError(f"{what} column {col!r}: not in the obs columns of {source} "
                                      f"({', '.join(map(str, obs_cols.columns)) or 'none'})")
            series = obs_cols[col]
        else:
            if col not in frame.columns:
                raise DataImportError(f"{what} column {col!r}: not a column of {source} ({', '.join(names)})")
            series = frame.pop(col)
        if what == "regime":
            regime = series.astype(str).str.strip()
        else:
            targets = series.where(series.notna(), "").astype(str).str.strip()
    return RawTable([n for n in names if n not in (regime_col, targets_col) or obs_cols is not None], frame,
                    regime, targets, source, fmt)


def _check_duplicates(names: Sequence[str], source: str) -> None:
    seen: dict[str, int] = {}
    for pos, n in enumerate(names, start=1):
        if n in seen:
            raise DataImportError(f"column {n!r}: duplicate name (columns {seen[n]} and {pos} of {source})")
        if n == "":
            raise DataImportError(f"column {pos} of {source}: empty name")
        seen[n] = pos


# ---------------------------------------------------------------------------- validation
@dataclass
class ImportedData:
    """A validated table, standardised, ready to store (see the module docstring)."""

    name: str
    node_names: list[str]
    x_obs: np.ndarray  # (n_obs, d) standardised
    regimes: list[dict]  # label, rows, targets (list of names) or None when unknown
    x_regimes: list[np.ndarray]  # K arrays (n_k, d) standardised
    obs_mean: np.ndarray
    obs_std: np.ndarray
    adjacency: np.ndarray | None
    source: str
    reference_graph: str | None = None
    dropped_rows: int = 0
    obs_labels: list[str] = field(default_factory=list)

    @property
    def d(self) -> int:
        return len(self.node_names)

    def arrays(self) -> dict[str, np.ndarray]:
        """The stored arrays, leading task axis of length 1 (module docstring)."""
        d, k = self.d, len(self.regimes)
        n_max = max([1] + [len(x) for x in self.x_regimes])
        x_int = np.full((1, k, n_max, d), np.nan, np.float32)
        targets = np.zeros((1, k, d), bool)
        for r, (meta, x) in enumerate(zip(self.regimes, self.x_regimes)):
            x_int[0, r, : len(x)] = x
            for t in meta["targets"] or []:
                targets[0, r, self.node_names.index(t)] = True
        out = {
            "node_mask": np.ones((1, d), bool),
            "x_obs": self.x_obs.astype(np.float32)[None],
            "int_targets": targets,
            "targets_known": np.array([[m["targets"] is not None for m in self.regimes]], bool).reshape(1, k),
            "int_values": np.full((1, k, d), np.nan, np.float32),
            "x_int": x_int,
            "int_rows": np.array([[len(x) for x in self.x_regimes]], np.int32).reshape(1, k),
            "obs_mean": self.obs_mean.astype(np.float64)[None],
            "obs_std": self.obs_std.astype(np.float64)[None],
        }
        if self.adjacency is not None:
            out["adjacency"] = self.adjacency.astype(np.uint8)[None]
        return out


def _rows(idx: np.ndarray, limit: int = 3) -> str:
    idx = np.asarray(idx)
    head = ", ".join(str(int(i) + 1) for i in idx[:limit])
    return f"row {head}" if len(idx) == 1 else f"rows {head}" + (f" (and {len(idx) - limit} more)" if len(idx) > limit else "")


def _numeric(raw: RawTable, drop_nan: bool) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float64 values of the variable columns and the mask of rows kept."""
    import pandas as pd

    frame = raw.frame
    if frame.shape[1] == 0:
        raise DataImportError(f"{raw.source}: no variable columns (only the regime / targets columns)")
    cols = []
    for pos, name in enumerate(raw.names):
        series = frame.iloc[:, pos]
        if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
            text = series.astype(str).str.strip()
            missing = text.str.lower().isin(["", "nan", "na", "n/a", "null", "none"])
            values = pd.to_numeric(text.where(~missing, None), errors="coerce")
            bad = np.flatnonzero(values.isna().to_numpy() & ~missing.to_numpy())
            if len(bad):
                raise DataImportError(f"column {name!r}: non-numeric value {text.iloc[bad[0]]!r} in {_rows(bad)}")
            col = values.to_numpy(dtype=np.float64)
        elif pd.api.types.is_bool_dtype(series.dtype) or not pd.api.types.is_numeric_dtype(series.dtype):
            raise DataImportError(f"column {name!r}: non-numeric dtype {series.dtype}")
        else:
            col = series.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isnan(col).all():
            raise DataImportError(f"column {name!r}: all {len(col)} values are NaN / empty")
        cols.append(col)
    x = np.stack(cols, axis=1)
    bad_cells = ~np.isfinite(x)
    keep = ~bad_cells.any(axis=1)
    if bad_cells.any() and not drop_nan:
        per_col = [f"{raw.names[j]!r}: {int(bad_cells[:, j].sum())} ({_rows(np.flatnonzero(bad_cells[:, j]))})"
                   for j in np.flatnonzero(bad_cells.any(axis=0))]
        raise DataImportError(f"{int(bad_cells.sum())} NaN / inf cell(s) in {int((~keep).sum())} row(s); by column "
                              f"{'; '.join(per_col)}; pass --drop-nan to drop those rows")
    return x, keep


def _targets_of(cell: str, names: Sequence[str], row: int, col: str) -> list[str] | None:
    if cell == UNKNOWN_TARGETS:
        return None
    out = [t.strip() for t in cell.split(";") if t.strip()]
    for t in out:
        if t not in names:
            raise DataImportError(f"row {row + 1}, column {col!r}: target {t!r} is not a variable column "
                                  f"({', '.join(names)})")
    if len(set(out)) != len(out):
        raise DataImportError(f"row {row + 1}, column {col!r}: target listed twice in {cell!r}")
    return sorted(out, key=list(names).index)


def parse_table(raw: RawTable, name: str, *, observational: str | None = None, drop_nan: bool = False,
                graph: str | Path | None = None, node_limits: Mapping[str, tuple[int, int]] | None = None,
                regime_col: str | None = None, targets_col: str | None = None) -> ImportedData:
    """Validate and standardise a read table (module docstring); raises :class:`DataImportError`."""
    if not _NAME_RE.fullmatch(name) or ".." in name:
        raise DataImportError(f"name {name!r}: must be a slug of at most 128 letters, digits and '-_.' "
                              "(no '/' or '..'): it names the store")
    names = list(raw.names)
    for label, (lo, hi) in (node_limits or {}).items():
        if not lo <= len(names) <= hi:
            raise DataImportError(f"the data has {len(names)} variables; {label} supports d in [{lo}, {hi}]")
    x, keep = _numeric(raw, drop_nan)
    n = len(x)
    tcol = targets_col or "targets"
    if raw.regime is not None:
        labels = raw.regime.to_numpy(dtype=str)
    elif raw.targets is not None:
        labels = np.array([t if t else "observational" for t in raw.targets.to_numpy(dtype=str)])
    else:
        labels = np.array(["observational"] * n)
    cells = raw.targets.to_numpy(dtype=str) if raw.targets is not None else None
    kept = np.flatnonzero(keep)
    if cells is not None:  # every distinct targets cell names variables (first offending row named)
        for cell in dict.fromkeys(cells[kept]):
            _targets_of(str(cell), names, int(kept[cells[kept] == cell][0]), tcol)
    order = [str(lab) for lab in dict.fromkeys(labels[kept])]
    obs_labels, regimes, x_regimes, obs_rows = [], [], [], []
    for lab in order:
        rows = kept[labels[kept] == lab]
        if cells is not None:
            found = [str(c) for c in dict.fromkeys(cells[rows])]
            if len(found) > 1:
                first = {c: rows[cells[rows] == c][0] for c in found[:2]}
                raise DataImportError(
                    f"regime {lab!r}: rows disagree on column {tcol!r}: {found[0]!r} ({_rows([first[found[0]]])}) "
                    f"vs {found[1]!r} ({_rows([first[found[1]]])}); one regime has one set of targets")
            targets = _targets_of(found[0], names, int(rows[0]), tcol)
            is_obs = targets == []
        else:
            targets = None
            is_obs = raw.regime is None or lab == observational
        if len(rows) < 2:
            after = " after dropping the NaN rows" if (~keep).any() else ""
            raise DataImportError(f"regime {lab!r}: {len(rows)} row ({_rows(rows)}){after}; at least 2 are needed")
        if is_obs:
            obs_labels.append(lab)
            obs_rows.append(rows)
        else:
            regimes.append({"label": lab, "rows": int(len(rows)), "targets": targets})
            x_regimes.append(x[rows])
    if raw.regime is not None and cells is None and observational is None:
        raise DataImportError(f"regime column {regime_col or ''!r}: without a targets column, name the regime of "
                              f"the observational rows with --observational (regimes: {', '.join(order)})")
    if raw.regime is not None and cells is None and observational not in order:
        raise DataImportError(f"--observational {observational!r}: no such regime (regimes: {', '.join(order)})")
    obs = np.sort(np.concatenate(obs_rows)) if obs_rows else np.zeros(0, int)
    if len(obs) < 2:
        raise DataImportError(f"{len(obs)} observational row(s) (empty {tcol!r} cell); at least 2 are needed")
    x_obs = x[obs]
    mean, std = x_obs.mean(axis=0), x_obs.std(axis=0)
    for j in np.flatnonzero(~(std > 1e-12 * np.maximum(1.0, np.abs(mean)))):
        raise DataImportError(f"column {names[j]!r}: constant ({x_obs[0, j]:g}) on the {len(obs)} observational "
                              "rows; it cannot be standardised (drop the column)")
    adjacency = read_reference_graph(graph, names) if graph is not None else None
    return ImportedData(
        name=name, node_names=names, x_obs=(x_obs - mean) / std, regimes=regimes,
        x_regimes=[(xr - mean) / std for xr in x_regimes], obs_mean=mean, obs_std=std, adjacency=adjacency,
        source=raw.source, reference_graph=str(graph) if graph is not None else None,
        dropped_rows=int((~keep).sum()), obs_labels=obs_labels)


def read_reference_graph(path: str | Path, names: Sequence[str]) -> np.ndarray:
    """``(d, d)`` uint8 adjacency (``A[i, j] = 1`` iff ``i -> j``) from an edge list or GML.

    Edge list: a CSV whose first two columns are source and target names (a header row is
    recognised when its cells are not both variable names). GML: read by networkx, directed.
    A cyclic reference graph is accepted (published consensus networks have feedback loops,
    e.g. Sachs et al. 2005's PIP3 -> plcg -> PIP2 -> PIP3): it is flagged in the store and
    scored by SHD and edge AUROC / AUPRC only, since SID is defined for DAGs.
    """
    import networkx as nx

    path = str(path)
    raw = _open_bytes(path)
    idx = {n: i for i, n in enumerate(names)}
    if path.lower().endswith(".gml"):
        try:
            g = nx.parse_gml(raw.decode(), label="label")
        except Exception as exc:
            raise DataImportError(f"--graph {path}: not readable GML ({type(exc).__name__}: {exc})") from None
        edges = [(str(u), str(v), f"edge {n}") for n, (u, v) in enumerate(g.edges(), start=1)]
        if not g.is_directed():
            raise DataImportError(f"--graph {path}: the GML graph is undirected; a reference DAG is directed")
    else:
        import csv

        lines = [r for r in csv.reader(io.StringIO(raw.decode("utf-8-sig"))) if r and any(c.strip() for c in r)]
        if lines and not (lines[0][0].strip() in idx and len(lines[0]) > 1 and lines[0][1].strip() in idx):
            lines = [(None, None)] + lines[1:]  # header row
        edges = []
        for n, r in enumerate(lines, start=1):
            if r[0] is None:
                continue
            if len(r) < 2:
                raise DataImportError(f"--graph {path}: line {n} has {len(r)} column(s); expected source,target")
            edges.append((r[0].strip(), r[1].strip(), f"line {n}"))
    adj = np.zeros((len(names), len(names)), np.uint8)
    for u, v, n in edges:
        for node in (u, v):
            if node not in idx:
                raise DataImportError(f"--graph {path}: {n} ({u} -> {v}) names {node!r}, not a variable column")
        if u == v:
            raise DataImportError(f"--graph {path}: {n} is a self-loop on {u!r}")
        adj[idx[u], idx[v]] = 1
    return adj


def graph_cycle(adj: np.ndarray, names: Sequence[str]) -> str | None:
    """One directed cycle of ``adj`` as ``"a -> b -> a"``, or None for a DAG."""
    import networkx as nx

    from pipeline_lib.metrics.graph import is_dag

    if is_dag(adj):
        return None
    cyc = nx.find_cycle(nx.DiGraph([(names[i], names[j]) for i, j in zip(*np.nonzero(adj))]))
    return " -> ".join([u for u, _ in cyc] + [cyc[0][0]])


# ---------------------------------------------------------------------------- writing
def _digests(arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
    from storage.prior_store import _chunk_digest

    return {f"{SPLIT}/{k}": _chunk_digest(SPLIT, k, 0, v).hex() for k, v in sorted(arrays.items())}


def _content_hash(data: ImportedData, digests: Mapping[str, str]) -> str:
    blob = json.dumps({"format": 1, "node_names": data.node_names, "regimes": data.regimes,
                       "digests": dict(sorted(digests.items()))}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def data_store_path(root: str | Path, name: str, content_hash: str) -> str:
    return _join(root, "data", f"{name}-{content_hash[:12]}.zarr")


def write_data_store(root: str | Path, data: ImportedData) -> str:
    """Write ``data`` into its content-hashed store under ``<root>/data`` (atomically); the path.

    An existing complete store of the same content is verified and returned unchanged.
    """
    import zarr
    import zarr.codecs

    arrays = data.arrays()
    digests = _digests(arrays)
    h = _content_hash(data, digests)
    final = data_store_path(root, data.name, h)
    if _exists(final):
        DataStore.open(final)  # verified; a damaged one raises rather than being reused
        return final
    tmp = _join(root, "data", f".tmp-{data.name}-{uuid.uuid4().hex[:12]}.zarr")
    if not _is_url(tmp):
        Path(tmp).parent.mkdir(parents=True, exist_ok=True)
    try:
        group = zarr.open_group(store=_zarr_store(tmp, "w"), mode="w", zarr_format=3)
        sg = group.require_group(SPLIT)
        for key, value in arrays.items():
            arr = sg.create_array(key, shape=value.shape, chunks=tuple(max(1, s) for s in value.shape),
                                  dtype=value.dtype,
                                  compressors=zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
                                  fill_value=np.zeros((), value.dtype).item(), config={"write_empty_chunks": True})
            arr[...] = value
        group.attrs.update({
            "kind": KIND, "name": data.name, "hash": h, "node_names": list(data.node_names),
            "regimes": data.regimes, "observational_labels": list(data.obs_labels), "n_obs": int(len(data.x_obs)),
            "truth": {"adjacency": data.adjacency is not None, "noise_obs": False, "x_cf": False, "scm": False},
            "reference_graph_cycle": None if data.adjacency is None else graph_cycle(data.adjacency, data.node_names),
            "standardization": {"kind": "z-score with the observational rows' mean and std (ddof 0)",
                                "arrays": ["obs_mean", "obs_std"]},
            "source": data.source, "reference_graph": data.reference_graph, "dropped_rows": data.dropped_rows,
            "created_at": datetime.now(timezone.utc).isoformat(),
        })
        group.attrs.update({"checksums": digests})  # last: marks the store complete
        _publish(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
    return final


def _publish(tmp: str, final: str) -> None:
    if _is_url(tmp):
        import fsspec

        fs, p = fsspec.core.url_to_fs(tmp)
        fs.mv(p, fsspec.core.url_to_fs(final)[1], recursive=True)
        return
    try:
        os.rename(tmp, final)
    except OSError:
        if Path(final).exists():  # a concurrent import of the same content won: keep theirs
            shutil.rmtree(tmp)
        else:
            raise


def import_dataset(source: str | Path, root: str | Path, name: str, *, regime_col: str | None = None,
                   targets_col: str | None = None, observational: str | None = None, graph: str | Path | None = None,
                   drop_nan: bool = False, fmt: str | None = None,
                   node_limits: Mapping[str, tuple[int, int]] | None = None) -> "DataStore":
    """Read, validate, standardise and store ``source``; the opened :class:`DataStore`."""
    raw = read_table(source, regime_col, targets_col, fmt)
    data = parse_table(raw, name, observational=observational, drop_nan=drop_nan, graph=graph,
                       node_limits=node_limits, regime_col=regime_col, targets_col=targets_col)
    return DataStore.open(write_data_store(root, data))


# ---------------------------------------------------------------------------- reading a store
def is_data_store(path: str | Path) -> bool:
    """Whether ``path`` holds an imported data store (not a prior store)."""
    import zarr

    try:
        group = zarr.open_group(store=_zarr_store(_local(path) if not _is_url(path) else str(path), "r"),
                                mode="r", zarr_format=3)
    except Exception:
        return False
    return group.attrs.get("kind") == KIND


class DataStore:
    """An imported dataset: one verified task with node names and its standardisation."""

    def __init__(self, path: str, attrs: dict[str, Any], arrays: dict[str, np.ndarray]):
        self.path = path
        self.attrs = attrs
        self._arrays = arrays

    @classmethod
    def open(cls, path: str | Path) -> "DataStore":
        """Open and verify a store; ``FileNotFoundError`` if absent, ``StoreCorruptedError`` if damaged.

        Every array is read whole and its sha256 digest compared with the stored checksums.
        """
        import zarr

        from storage.prior_store import IncompleteStoreError, StoreCorruptedError, _chunk_digest

        path = str(path) if _is_url(path) else _local(path)
        if not _exists(_join(path, "zarr.json")):
            raise FileNotFoundError(f"no Zarr data store at {path}")
        group = zarr.open_group(store=_zarr_store(path, "r"), mode="r", zarr_format=3)
        attrs = dict(group.attrs)
        if attrs.get("kind") != KIND:
            raise DataImportError(f"{path}: not an imported data store (kind={attrs.get('kind')!r})")
        if "checksums" not in attrs:
            raise IncompleteStoreError(f"{path}: attribute 'checksums' absent: the import did not finish")
        expected = dict(attrs["checksums"])
        sg = group[SPLIT]
        present = {f"{SPLIT}/{k}" for k in sg.array_keys()}
        if present != set(expected):
            raise StoreCorruptedError(f"{path}: arrays {sorted(present ^ set(expected))} differ from the checksummed "
                                      "ones")
        arrays = {}
        for key in sorted(expected):
            name = key.split("/", 1)[1]
            try:
                value = sg[name][...]
            except Exception as exc:
                raise StoreCorruptedError(f"{path}: {key} undecodable ({type(exc).__name__}: {exc})") from None
            if _chunk_digest(SPLIT, name, 0, value).hex() != expected[key]:
                raise StoreCorruptedError(f"{path}: {key} chunk 0 digest mismatch; no data returned, re-import it")
            arrays[name] = value
        return cls(path, attrs, arrays)

    # -- what it holds ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.attrs["name"]

    @property
    def hash(self) -> str:
        return self.attrs["hash"]

    @property
    def label(self) -> str:
        """``<name>-<hash12>``, the store's folder name without ``.zarr``."""
        return f"{self.name}-{self.hash[:12]}"

    @property
    def content_digest(self) -> str:
        return self.hash

    @property
    def node_names(self) -> list[str]:
        return list(self.attrs["node_names"])

    @property
    def d(self) -> int:
        return len(self.attrs["node_names"])

    @property
    def regimes(self) -> list[dict]:
        return [dict(r) for r in self.attrs["regimes"]]

    @property
    def regime_labels(self) -> list[str]:
        return [r["label"] for r in self.attrs["regimes"]]

    @property
    def has_reference_graph(self) -> bool:
        return bool(self.attrs["truth"]["adjacency"])

    @property
    def obs_mean(self) -> np.ndarray:
        return self._arrays["obs_mean"][0]

    @property
    def obs_std(self) -> np.ndarray:
        return self._arrays["obs_std"][0]

    def node(self, name: str) -> int:
        """Index of the variable ``name`` (``DataImportError`` listing the names otherwise)."""
        if name not in self.attrs["node_names"]:
            raise DataImportError(f"variable {name!r} is not in {self.name} ({', '.join(self.node_names)})")
        return self.attrs["node_names"].index(name)

    def task(self) -> dict[str, np.ndarray]:
        """The one task, arrays without the task axis (x_int NaN-padded; ``int_rows`` says how far)."""
        return {k: np.array(v[0]) for k, v in self._arrays.items()}

    # -- the standardisation -----------------------------------------------------------------
    def to_user(self, z: np.ndarray, node: int) -> np.ndarray:
        return self.obs_mean[node] + self.obs_std[node] * np.asarray(z, dtype=np.float64)

    def from_user(self, x: np.ndarray, node: int) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.obs_mean[node]) / self.obs_std[node]

    def summary(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "hash": self.hash[:12], "variables": self.d,
                "observational_rows": int(self.attrs["n_obs"]), "regimes": self.regimes,
                "reference_graph": self.has_reference_graph, "dropped_rows": int(self.attrs["dropped_rows"])}

    def __repr__(self) -> str:
        return f"DataStore({self.path!r}, d={self.d}, regimes={len(self.regimes)})"


# ---------------------------------------------------------------------------- node ranges
def prior_node_range(root: str | Path, prior_hash: str) -> tuple[str, int, int] | None:
    """(prior name, d_min, d_max) of the stored prior with content hash ``prior_hash``, or None.

    The node range a registered amortized model was trained on (its ``prior_hash`` tag).
    """
    from storage.prior_store import PriorStore

    priors = Path(_local(root)) / "priors"
    for p in sorted(priors.glob(f"*-{prior_hash[:12]}.zarr")) if priors.is_dir() else []:
        try:
            cfg = PriorStore.open(p, allow_incomplete=True).config
        except Exception:
            continue
        if cfg.content_hash() == prior_hash:
            return cfg.name, int(cfg.graph.d_min), int(cfg.graph.d_max)
    return None
