"""Prefect artifacts of the pipeline: valid keys, and progress bars that never slow a stage down.

The Prefect UI shows a run's artifacts on its page (Artifacts tab) and under Artifacts by key;
a key is the stable name of "the latest such artifact" (e.g. the last comparison table of a
benchmark), so keys are built from what a run does, not from run ids.
"""
from __future__ import annotations

import logging
import re
import time

__all__ = ["Progress", "artifact_key", "publish_markdown", "publish_table"]

_log = logging.getLogger(__name__)


def _in_run() -> bool:
    """Artifacts belong to a flow or task run; outside one (a plain function call) there is none to show."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def artifact_key(*parts: object) -> str:
    """A Prefect artifact key from ``parts``: lowercase letters, digits and dashes only.

    ``artifact_key("train", "mace-tnp", "Lin_3node.v2")`` -> ``"train-mace-tnp-lin-3node-v2"``.
    Prefect refuses any other character, so everything else becomes a dash.
    """
    key = re.sub(r"[^a-z0-9]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")
    if not key:
        raise ValueError(f"artifact_key: nothing left of {parts!r}")
    return key


class Progress:
    """A Prefect progress artifact (0-100 %) for ``total`` units of work.

    :meth:`update` sends at most one request per ``min_interval`` seconds (plus the final one),
    so a 10 000-step training loop costs a handful of API calls. Artifacts are a view: when the
    API cannot be reached (a task run outside any flow, a server hiccup) the failure is logged
    once at debug level and the work goes on.
    """

    def __init__(self, key: str, total: int, description: str, min_interval: float = 2.0):
        self.key, self.total, self.description = key, max(int(total), 1), description
        self.min_interval = min_interval
        self._id = None
        self._last = 0.0
        self._done = 0
        if not _in_run():
            return
        try:
            from prefect.artifacts import create_progress_artifact

            self._id = create_progress_artifact(0.0, key=key, description=f"{description}: 0/{self.total}")
        except Exception as exc:  # a view, never a reason to fail the stage
            _log.debug("progress artifact %s not created: %s", key, exc)

    @property
    def done(self) -> int:
        return self._done

    def update(self, done: int, note: str = "") -> None:
        """Report ``done`` of ``total`` units; ``note`` is appended to the description."""
        self._done = min(int(done), self.total)
        now = time.monotonic()
        if self._id is None or (self._done < self.total and now - self._last < self.min_interval):
            return
        self._last = now
        try:
            from prefect.artifacts import update_progress_artifact

            text = f"{self.description}: {self._done}/{self.total}" + (f" ({note})" if note else "")
            update_progress_artifact(self._id, 100.0 * self._done / self.total, description=text)
        except Exception as exc:
            _log.debug("progress artifact %s not updated: %s", self.key, exc)
            self._id = None


def publish_markdown(key: str, markdown: str, description: str | None = None) -> None:
    """A markdown artifact on the current flow or task run (skipped, logged, if the API is unreachable)."""
    if not _in_run():
        return
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=markdown, key=key, description=description)
    except Exception as exc:
        _log.warning("markdown artifact %s not published: %s", key, exc)


def publish_table(key: str, rows: list[dict], description: str | None = None) -> None:
    """A table artifact (one dict per row, same keys) on the current run."""
    if not _in_run():
        return
    try:
        from prefect.artifacts import create_table_artifact

        create_table_artifact(table=rows, key=key, description=description)
    except Exception as exc:
        _log.warning("table artifact %s not published: %s", key, exc)
