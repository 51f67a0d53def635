"""Reports from results alone: JSONL (streamed by the pipeline), CSV, HTML, console.

Every writer takes the result dicts (as in ``results.jsonl``) and the run's
provenance (``run.json``); none re-opens inputs or re-runs a scan (the HTML
report reads thumbnails kept by the scan and the index). Results may stream
from the file (:func:`scanner.results.iter_results`): no writer needs them
all in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from scanner.report.csvfile import write_csv
from scanner.report.html import Listing, listing, output_thumbnails, write_html


def write_all(results: Iterable[Mapping[str, Any]], run: dict[str, Any], out: Path, *,
              thumbnails: bool = True) -> Listing:
    """Write ``results.csv`` and ``report.html`` into ``out``, in two passes over ``results``.

    With ``thumbnails``, outputs a person must look at (flagged, review,
    licensed) get a small thumbnail in ``out/thumbs/`` first, which the page
    embeds; without, no picture of an output is kept or embedded.

    Parameters
    ----------
    results : result lines, iterated twice, so re-iterable: a list, or
        :class:`scanner.results.ResultsFile`, which re-reads ``results.jsonl``
        per pass (a one-shot iterator is refused: its second pass would be empty)
    run : the run's provenance (``run.json``)
    out : the scan's folder
    thumbnails : ``False`` keeps and embeds no picture of an output

    Returns
    -------
    Listing
        What the page lists: every output a person must look at and at most
        :data:`scanner.report.html.MAX_CLEAR` clear ones, with the counts of all.
    """
    if iter(results) is results:
        raise TypeError("write_all reads the results twice: give a list or a ResultsFile, not an iterator")
    write_csv(results, out / "results.csv")  # every result, streamed
    listed = listing(results)  # bounded: the outputs that need a person plus the clear ones listed
    if thumbnails:
        # thumbnails are only for outputs that need a person, all of which the listing holds
        output_thumbnails(listed.results, out / "thumbs")
    write_html(listed, run, out / "report.html", out_thumbs=out / "thumbs", thumbnails=thumbnails)
    return listed


__all__ = ["Listing", "listing", "output_thumbnails", "write_all", "write_csv", "write_html"]
