"""The page's history of this server's checks, kept across restarts in ``STATE/history.jsonl``.

What is written is what the studio's rule allows of an output: its result line
(the client's file name, sha256, verdict, the works it matched) and who checked
it when, and the decisions taken on it; never its content, and never its
thumbnail (thumbnails, when allowed at all, stay in memory and are gone at the
next start). The file is private (0600), appended to one line per event, and
rewritten with the newest :data:`HISTORY` checks when it has grown to twice
that; a line torn by a crash is skipped when the file is read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

LOG = logging.getLogger("likeness.serve")

#: Checks the history keeps (the oldest goes first).
HISTORY = 500
#: Its file's name in the state folder.
FILE = "history.jsonl"


@dataclass
class Entry:
    """One check of this server, as the page's history shows it."""

    id: str
    time: str
    user: str
    line: dict[str, Any]
    thumb: bytes | None = None
    seconds: float = 0.0
    decision: dict[str, Any] | None = None

    def public(self, run: dict[str, Any] | None) -> dict[str, Any]:
        """What the page and ``GET /v1/history`` show of it: the verdict in plain words
        (against ``run``, the index's description), the works matched, the decision."""
        from scanner.report.words import plain_verdict

        line = self.line
        works = []
        for m in line.get("matches") or []:
            if m.get("work_id") not in [w["work_id"] for w in works]:
                works.append({"work_id": m.get("work_id"), "title": m.get("title") or m.get("talent"),
                              "rights_holder": m.get("rights_holder")})
        return {"id": self.id, "time": self.time, "user": self.user, "name": line.get("path"),
                "sha256": line.get("sha256"), "modality": line.get("modality"), "verdict": line.get("verdict"),
                "reason": line.get("reason"), "score": line.get("score"), "works": works,
                "plain": plain_verdict(line, run or {}), "decision": self.decision or line.get("decision"),
                "seconds": self.seconds}

    def record(self) -> dict[str, Any]:
        """Its line in the history file (no thumbnail)."""
        return {"id": self.id, "time": self.time, "user": self.user, "seconds": self.seconds,
                "line": self.line, "decision": self.decision}


class History:
    """The newest :data:`HISTORY` checks, in order, written through to ``state_dir/history.jsonl``.

    Parameters
    ----------
    state_dir : the server's state folder (``None``: memory only)
    keep : checks kept
    """

    def __init__(self, state_dir: str | Path | None, keep: int = HISTORY):
        self.keep = keep
        self.entries: deque[Entry] = deque(maxlen=keep)
        self.path = Path(state_dir) / FILE if state_dir is not None else None
        self._lines = 0
        if self.path is not None:
            self._load()

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __reversed__(self) -> Iterator[Entry]:
        return reversed(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def find(self, entry_id: str) -> Entry | None:
        return next((e for e in self.entries if e.id == entry_id), None)

    def add(self, entry: Entry) -> None:
        self.entries.append(entry)
        self._write(entry.record())

    def decided(self, entry: Entry, decision: dict[str, Any]) -> None:
        """Note a decision taken on a check of the history."""
        entry.decision = decision
        self._write({"id": entry.id, "decision": decision})

    def _load(self) -> None:
        assert self.path is not None
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            LOG.warning("the history in %s could not be read (%s); starting a new one", self.path, exc)
            return
        by_id: dict[str, Entry] = {}
        for raw in text.splitlines():
            self._lines += 1
            try:
                rec = json.loads(raw)
                if "line" in rec:
                    by_id[rec["id"]] = Entry(rec["id"], rec["time"], rec["user"], rec["line"],
                                             seconds=rec.get("seconds", 0.0), decision=rec.get("decision"))
                elif rec.get("id") in by_id:
                    by_id[rec["id"]].decision = rec.get("decision")
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash, or not ours
        self.entries.extend(list(by_id.values())[-self.keep:])

    def _write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        try:
            if self._lines >= 2 * self.keep:
                self._rewrite()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._lines += 1
        except OSError as exc:  # the check's answer matters more than its history line
            LOG.warning("the history in %s could not be written (%s)", self.path, exc)

    def _rewrite(self) -> None:
        """Keep only the checks in memory (atomically: a crash leaves the old file or the new)."""
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                for e in self.entries:
                    fh.write(json.dumps(e.record(), ensure_ascii=False) + "\n")
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._lines = len(self.entries)
