"""``results.csv``: one row per input, the best match flattened into columns."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

COLUMNS = ("path", "verdict", "score", "reason", "sha256", "modality", "work_id", "ref_path", "title",
           "rights_holder", "feature", "chance", "error", "index_id")


def write_csv(results: Iterable[Mapping[str, Any]], path: Path) -> int:
    """Write results as CSV (atomically: tmp file, then rename), one row per result.

    Parameters
    ----------
    results : result lines as in ``results.jsonl``, iterated once (a stream of
        millions is written in constant memory)
    path : the CSV file

    Returns
    -------
    n : rows written (header not counted)
    """
    n = 0
    tmp = path.with_name(path.name + ".tmp")
    # a file name that is not UTF-8 is written with \udcXX escapes, keeping the CSV valid UTF-8
    with open(tmp, "w", newline="", encoding="utf-8", errors="backslashreplace") as fh:
        writer = csv.DictWriter(fh, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in results:
            best = (r.get("matches") or [{}])[0]
            writer.writerow({**{k: best.get(k) for k in ("work_id", "ref_path", "title", "rights_holder",
                                                          "feature", "chance")}, **r})
            n += 1
    os.replace(tmp, path)
    return n
