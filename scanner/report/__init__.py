"""Reports from results alone: JSONL (streamed by the pipeline), CSV, HTML, console.

Every writer takes the result dicts (as in ``results.jsonl``) and the run's
provenance (``run.json``); none re-opens inputs or re-runs a scan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from scanner.report.csvfile import write_csv
from scanner.report.html import write_html


def write_all(results: Sequence[dict[str, Any]], run: dict[str, Any], out: Path) -> None:
    """Write ``results.csv`` and ``report.html`` into ``out``."""
    write_csv(results, out / "results.csv")
    write_html(results, run, out / "report.html")


__all__ = ["write_all", "write_csv", "write_html"]
