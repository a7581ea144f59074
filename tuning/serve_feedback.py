"""The Serve endpoints' feedback recorder: every attempt of every master to the feedback tables.

:class:`serving.config.ServingConfig` names :func:`recorder` by import path
(``feedback_recorder``), and the ingress resolves it at start-up, so :mod:`serving` never
imports this layer. Each request's attempts go in one file (:meth:`FeedbackStore.append`), so
many replicas write side by side without losing or mixing rows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mastering.retry import Attempt
from tuning.store import FeedbackStore, attempt_rows, chain_version


def recorder(feedback_dir: str) -> Callable[[dict[str, Any], str], None]:
    """``record(report, input_hash)`` appending the attempts of one master's full report
    (``POST /v1/master``'s: ``file``, ``conditioning``, ``before``, ``after``, ``attempts``,
    ``adapter_version``) to the store at ``feedback_dir``. Unscored masters (clips shorter
    than the evaluator's minimum) have no attempts and add no rows."""
    store, version = FeedbackStore(feedback_dir), chain_version()

    def record(report: dict[str, Any], input_hash: str) -> None:
        attempts = [Attempt.from_dict(a) for a in report.get("attempts") or []]
        if not attempts:
            return
        before = {k: v for k, v in (report.get("before") or {}).items() if k != "source"}
        rows = attempt_rows(
            song_id=Path(report["file"]).stem,
            input_hash=input_hash,
            conditioning=report.get("conditioning") or {},
            attempts=attempts,
            metrics_before=before,
            metrics_after=report.get("after"),
            chain_version=version,
            adapter_version=report.get("adapter_version", ""),
        )
        store.append(rows)

    return record
