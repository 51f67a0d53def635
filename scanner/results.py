"""Result lines: one verdict per input, as ``results.jsonl`` holds it, written and read back.

Below both the pipeline (which streams the lines as a scan decides them) and
the report (which reads them back, in constant memory): nothing here judges.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator


@dataclass
class Result:
    """The verdict for one input, as one line of ``results.jsonl``."""

    path: str
    sha256: str | None
    modality: str
    verdict: str
    reason: str
    score: float = 0.0
    error: str | None = None
    index_id: str | None = None
    matches: list[dict[str, Any]] = field(default_factory=list)
    candidates: list[dict[str, Any]] | None = None
    #: why the input carries no identifiable expression (never flagged), if so
    featureless: str | None = None
    #: strongest evidence per feature, expected chance matches (not written to
    #: results: calibration reads it in-process)
    best_expected: dict[str, float] = field(default_factory=dict, repr=False)
    #: a person's decision from the ledger that settled this verdict (see :mod:`scanner.ledger`)
    decision: dict[str, Any] | None = None
    #: a video's decoding (duration, size, keyframes checked) and ``timeline``:
    #: where in it each matched work shows (:meth:`scanner.match.video.VideoEvidence.timeline`)
    video: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        line = {"path": self.path, "sha256": self.sha256, "modality": self.modality,
                "verdict": self.verdict, "score": round(self.score, 4), "reason": self.reason,
                "error": self.error, "index_id": self.index_id, "matches": self.matches}
        if self.candidates is not None:
            line["candidates"] = self.candidates
        if self.featureless is not None:
            line["featureless"] = self.featureless
        if self.decision is not None:
            line["decision"] = self.decision
        if self.video is not None:
            line["video"] = self.video
        return line


def iter_results(path: str | Path) -> Iterator[dict[str, Any]]:
    """Complete lines of a ``results.jsonl``, one dict at a time, in file order.

    A torn last line (killed writer) and any line that is not JSON are
    skipped; a missing file yields nothing. Only one line is held at a time,
    so a file of millions of results (2-5 KB a line) is read in constant memory.

    Parameters
    ----------
    path : a ``results.jsonl`` written by a scan

    Yields
    ------
    result : dict
        One result line as written by :meth:`Result.to_dict`.
    """
    try:
        with open(path, "rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                try:
                    yield json.loads(line)
                except ValueError:
                    continue
    except FileNotFoundError:
        return


class ResultsFile:
    """A ``results.jsonl`` that can be iterated more than once: each pass re-reads the file.

    What the end-of-scan writers take (:func:`scanner.report.write_all`
    makes two passes), so no pass holds more than one line of the file.

    Parameters
    ----------
    path : a ``results.jsonl``
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter_results(self.path)

    def __repr__(self) -> str:
        return f"ResultsFile({str(self.path)!r})"


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Complete lines of a ``results.jsonl`` as a list (see :func:`iter_results`, which streams them).

    Holds every line in memory: for small files and tests; the pipeline streams.
    """
    return list(iter_results(path))


def json_line(record: dict[str, Any]) -> str:
    """One ``results.jsonl`` line, newline included, that always encodes as UTF-8.

    A file name that is not UTF-8 (bytes the OS allows) reaches Python as lone
    surrogates; written as ``\\udcXX`` escapes the line stays valid JSON and
    reads back to the same path string, so ``--resume`` recognises it.
    """
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(record)
    return line + "\n"


def truncate_torn_tail(path: Path, *, block: int = 1 << 16) -> None:
    """Cut a partial last line left by a killed scan, so appends start on a new line.

    Reads backwards from the end, one block at a time, so a results file of
    millions of lines is never held in memory.
    """
    try:
        with open(path, "rb+") as fh:
            end = fh.seek(0, os.SEEK_END)
            if end == 0:
                return
            fh.seek(end - 1)
            if fh.read(1) == b"\n":
                return
            pos = end
            while pos > 0:
                start = max(0, pos - block)
                fh.seek(start)
                newline = fh.read(pos - start).rfind(b"\n")
                if newline >= 0:
                    fh.truncate(start + newline + 1)
                    return
                pos = start
            fh.truncate(0)
    except FileNotFoundError:
        pass
