"""Flow: score trained models and fitted baselines on the same test tasks; build the report.

Results are keyed by (model version or baseline config, prior hash) and reused when present.
"""
from __future__ import annotations


from prefect import flow

from flows.runtime import check_root, store_run_name

from storage.prior_store import PriorStore
from storage.results import ResultStore
from tasks.evaluate import score_amortized_task

__all__ = ["evaluate"]


@flow(name="evaluate", flow_run_name=store_run_name("evaluate"))
def evaluate(store: str, models: list[dict], baseline_keys: dict[str, str], n_tasks: int = 10,
             root: str = ".causalmeta", max_queries: int | None = None, seed: int = 0,
             int_holdout: float = 0.0) -> dict[str, list[dict]]:
    """Per-task records by method label for one prior.

    ``models``: meta_train results (``method``, ``version``); ``baseline_keys``: {method key:
    baseline name} from run_baselines (records already on disk); ``int_holdout``: the share of
    interventional rows held out of every fit and scored (the baselines' keys carry it already).
    """
    root = check_root(root)
    PriorStore.open(store)
    out: dict[str, list[dict]] = {}
    for m in models:
        out[f"{m['method']} v{m['version']}"] = score_amortized_task(store, root, m["method"], str(m["version"]),
                                                                     n_tasks, max_queries, seed, int_holdout)
    results = ResultStore.for_store(root, store)
    for key, name in baseline_keys.items():
        out[name if list(baseline_keys.values()).count(name) == 1 else key] = results.collect(key)[:n_tasks]
    return out
