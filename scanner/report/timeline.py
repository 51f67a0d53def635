"""``timeline.csv``: every place a matched work shows in the outputs, one row each, with timecodes.

The listing behind the final-cut audit (index a production's temporary
generated assets, scan the deliverables): for each output a person must look
at (flagged, review, licensed, or settled by a decision), one row per place a
work shows — a video's picture stretches and soundtrack spans
(``result["video"]["timeline"]``), an audio file's aligned spans, a
picture's matches (no timecode). From results alone, like every report.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from scanner.video import timecode

__all__ = ["COLUMNS", "timeline_rows", "write_timeline"]

COLUMNS = ("deliverable", "verdict", "source", "start", "end", "start_tc", "end_tc", "asset", "work_id", "title",
           "rights_holder", "feature", "score", "chance", "asset_start", "asset_start_tc", "talent")

#: Verdicts whose outputs are listed.
LISTED = ("flagged", "review", "licensed")


def timeline_rows(results: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """Rows of :data:`COLUMNS` for the listed outputs, in results order and time order within each.

    ``start``/``end`` are seconds into the output (empty for a picture),
    ``asset_start`` seconds into the matched work (a video or audio work).
    """
    for r in results:
        if r.get("verdict") not in LISTED and not r.get("decision"):
            continue
        base = {"deliverable": r.get("path"), "verdict": r.get("verdict")}
        video = r.get("video") or {}
        if video.get("timeline"):
            entries = [(e, e.get("source"), e.get("start"), e.get("end"), e.get("ref_start"))
                       for e in video["timeline"]]
        else:
            entries = []
            for m in r.get("matches") or []:
                loc = m.get("locator") or {}
                if loc.get("query_start") is not None:
                    start = float(loc["query_start"])
                    entries.append((m, "sound", start, start + float(loc.get("duration") or 0), loc.get("ref_start")))
                else:
                    entries.append((m, "picture", loc.get("timecode"), None, loc.get("ref_timecode")))
        for e, source, start, end, ref_start in entries:
            yield {**base, "source": source, "start": start, "end": end, "start_tc": timecode(start),
                   "end_tc": timecode(end), "asset": e.get("ref_path"), "work_id": e.get("work_id"),
                   "title": e.get("title"), "rights_holder": e.get("rights_holder"), "feature": e.get("feature"),
                   "score": e.get("score"), "chance": e.get("chance"), "asset_start": ref_start,
                   "asset_start_tc": timecode(ref_start), "talent": e.get("talent")}


def write_timeline(results: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write ``timeline.csv`` atomically (tmp file, then rename); returns the rows written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", newline="", encoding="utf-8", errors="backslashreplace") as fh:
        writer = csv.DictWriter(fh, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in timeline_rows(results):
            writer.writerow(row)
            n += 1
    os.replace(tmp, path)
    return n
