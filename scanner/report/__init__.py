"""Reports from results alone: JSONL (streamed by the pipeline), CSV, HTML, console.

Every writer takes the result dicts (as in ``results.jsonl``) and the run's
provenance (``run.json``); none re-opens inputs or re-runs a scan (the HTML
report reads thumbnails kept by the scan and the index).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from scanner.report.csvfile import write_csv
from scanner.report.html import output_thumbnails, write_html


def write_all(results: Sequence[dict[str, Any]], run: dict[str, Any], out: Path, *,
              thumbnails: bool = True) -> None:
    """Write ``results.csv`` and ``report.html`` into ``out``.

    With ``thumbnails``, outputs a person must look at (flagged, review,
    licensed) get a small thumbnail in ``out/thumbs/`` first, which the page
    embeds; without, no picture of an output is kept or embedded.
    """
    write_csv(results, out / "results.csv")
    if thumbnails:
        output_thumbnails(results, out / "thumbs")
    write_html(results, run, out / "report.html", out_thumbs=out / "thumbs", thumbnails=thumbnails)


__all__ = ["output_thumbnails", "write_all", "write_csv", "write_html"]
