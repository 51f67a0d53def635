"""The decision ledger: what people decided about outputs, kept beside the index.

``likeness review`` appends one JSON line per decision to
``<index-parent>/<index-name>.decisions.jsonl`` (for ``indexes/studio`` that is
``indexes/studio.decisions.jsonl``). It lives *beside* the index directory, not
in it: writes to an index swap the whole directory in by rename, so a file
inside would be replaced by every ``index add``/``remove``/``build`` and an
append racing a swap would be lost. Beside it, decisions survive every rebuild.

A line::

    {"sha256": "<output sha256>", "decision": "approved", "by": "Ana", "why": "...",
     "time": "2026-11-25T10:02:11+00:00", "index_id": "...", "path": "out/0001.png",
     "works": [{"work_id": 12, "sha256": "<reference sha256>", "title": "..."}]}

Decisions are keyed by the output's sha256 and the works they concern, named
by the reference file's sha256 as well as its id (ids are per index; content
is not). ``works == []`` means the decision covers the output as a whole.

The file is append-only: each line is written with one ``write`` on a file
opened with ``O_APPEND`` under an exclusive ``flock``, so concurrent reviewers
never interleave; a torn last line (a killed writer) is ignored when read.

How later scans honour decisions (:func:`honour`):

* ``rejected``: the output stays (or becomes) ``flagged``, with who and why.
* ``approved``: the output is not escalated again (``clear``, with who and
  why), as long as every work it now matches is one the approval covered; a
  match with a work the person never saw is escalated as usual.
* ``licensed``: the same, with verdict ``licensed``.
* The latest decision on an output wins; approvals after the last rejection
  add up (approving work A, then work B, covers both).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from scanner.errors import ParameterError

DECISIONS = ("approved", "rejected", "licensed")
SUFFIX = ".decisions.jsonl"


@dataclass
class Decision:
    """One person's decision on one output (one ledger line).

    Parameters
    ----------
    sha256 : the output file's sha256 (64 hex digits)
    decision : ``approved``, ``rejected`` or ``licensed``
    by, why : who decided and why (free text, shown in reports)
    works : the works it concerns, each ``{"work_id", "sha256", "title"}``;
        empty for the output as a whole
    time : ISO 8601 UTC, set when appended
    index_id : the index the decision was made against
    path : the output's path when decided (for people; the key is the sha256)
    """

    sha256: str
    decision: str
    by: str
    why: str
    works: list[dict[str, Any]] = field(default_factory=list)
    time: str | None = None
    index_id: str | None = None
    path: str | None = None

    def validate(self) -> "Decision":
        if self.decision not in DECISIONS:
            raise ParameterError(f"decision must be one of {', '.join(DECISIONS)}, given {self.decision!r}")
        if not is_sha256(self.sha256):
            raise ParameterError(f"not a sha256 (64 hex digits): {self.sha256!r}")
        if not self.by.strip():
            raise ParameterError("--by must name who decided")
        if not self.why.strip():
            raise ParameterError("--why must say why (it is shown to the next reviewer)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_sha256(text: str) -> bool:
    """Whether ``text`` is 64 hex digits."""
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def ledger_path(index_dir: str | Path) -> Path:
    """Where the ledger of an index lives: ``<parent>/<name>.decisions.jsonl``."""
    index_dir = Path(index_dir)
    return index_dir.parent / f"{index_dir.name}{SUFFIX}"


def append(index_dir: str | Path, decision: Decision) -> Decision:
    """Validate, time-stamp and append a decision to the index's ledger.

    Returns
    -------
    Decision
        As written (with ``time`` set).

    Raises
    ------
    ParameterError
        A bad decision, or the ledger cannot be written (the path is named).
    """
    decision.validate()
    decision.sha256 = decision.sha256.lower()
    decision.time = decision.time or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    line = (json.dumps(decision.to_dict(), ensure_ascii=False) + "\n").encode("utf-8")
    path = ledger_path(index_dir)
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ParameterError(f"cannot write the decision ledger {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # a killed writer may have left a torn line: start ours on a fresh one
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return decision


def read(index_dir: str | Path) -> list[Decision]:
    """Every decision of an index's ledger, oldest first (``[]`` when none yet).

    Lines that do not parse (torn by a killed writer, or edited by hand) are
    skipped.
    """
    path = ledger_path(index_dir)
    out = []
    try:
        with open(path, "rb") as fh:
            for raw in fh:
                try:
                    d = json.loads(raw)
                    out.append(Decision(**{k: d[k] for k in Decision.__dataclass_fields__ if k in d}))
                except (ValueError, TypeError, KeyError):
                    continue
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ParameterError(f"cannot read the decision ledger {path}: {exc.strerror}") from None
    return out


class Decisions:
    """Decisions by output sha256, ready to be applied to results.

    Parameters
    ----------
    decisions : ledger lines, oldest first (as :func:`read` gives them)
    """

    def __init__(self, decisions: Iterable[Decision]):
        self._by_sha: dict[str, list[Decision]] = {}
        for d in decisions:
            self._by_sha.setdefault(d.sha256.lower(), []).append(d)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_sha.values())

    def for_output(self, sha256: str | None) -> list[Decision]:
        """Every decision on one output, oldest first."""
        return list(self._by_sha.get((sha256 or "").lower(), []))

    def applicable(self, sha256: str | None, work_sha256s: Sequence[str]) -> Decision | None:
        """The decision that settles an output now matching these works, if any.

        Parameters
        ----------
        sha256 : the output's sha256
        work_sha256s : sha256 of each work the output now matches

        Returns
        -------
        Decision or None
            The latest decision when it is a rejection, or when the approvals
            (and licences) since the last rejection cover every matched work.
        """
        history = self.for_output(sha256)
        if not history:
            return None
        latest = history[-1]
        if latest.decision == "rejected":
            return latest
        last_reject = max((i for i, d in enumerate(history) if d.decision == "rejected"), default=-1)
        covered: set[str] = set()
        for d in history[last_reject + 1:]:
            if not d.works:
                return latest  # decided for the output as a whole
            covered.update(w.get("sha256") or "" for w in d.works)
        return latest if set(work_sha256s) <= covered else None


def load(index_dir: str | Path) -> Decisions:
    """The ledger of an index, ready for :func:`honour`."""
    return Decisions(read(index_dir))


def honour(result: Any, decisions: Decisions, works: Mapping[int, Any]) -> None:
    """Apply a person's decision to a freshly judged result, in place.

    Parameters
    ----------
    result : a :class:`scanner.results.Result` (``sha256``, ``verdict``,
        ``reason``, ``matches``, ``decision``)
    decisions : the ledger
    works : the index's works by id (for their sha256)

    Notes
    -----
    An ``error`` result is never settled by a decision: the file was not
    checked this time. A ``clear`` result is settled only by a rejection.
    """
    if result.verdict == "error" or not result.sha256:
        return
    matched = []
    for m in result.matches:
        work = works.get(m.get("work_id"))
        if work is not None:
            matched.append(work.sha256)
    d = decisions.applicable(result.sha256, matched)
    if d is None or (result.verdict == "clear" and d.decision != "rejected"):
        return
    verdict = {"approved": "clear", "licensed": "licensed", "rejected": "flagged"}[d.decision]
    was = result.verdict
    result.verdict = verdict
    result.reason = (f"{d.decision} by {d.by} on {(d.time or '')[:10]}: {d.why}"
                     + (f" (the scanner said {was}: {result.reason})" if was != verdict else ""))
    result.decision = {k: v for k, v in d.to_dict().items() if k not in ("sha256", "path")}
