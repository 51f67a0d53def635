"""Works' metadata sidecars (CSV or JSON): title, rights holder, licence, notes, licensed, per reference file."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Sequence

from scanner.errors import ParameterError
from scanner.talents import parse_consent


def read_metadata(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a work-metadata sidecar: CSV with a ``path`` column, or JSON.

    JSON may be a list of objects with ``path`` or an object keyed by path.
    Recognised fields: title, rights_holder, licence (or license), notes,
    licensed (true/yes/1: the studio holds the rights); and for a talent's
    reference (a photo or recording of a protected performer, :mod:`scanner.talents`),
    talent (the person's name; rows with one name are one person) and consent
    (yes/no, for face and voice alike; per modality later with ``likeness index talent``).

    Returns
    -------
    dict
        Metadata by path as written in the file (matched later by full path,
        relative path or file name).
    """
    import csv

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ParameterError(f"cannot read metadata file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ParameterError(f"metadata file {path} is not UTF-8 text") from None
    records: list[dict[str, Any]]
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ParameterError(f"metadata file {path} is not valid JSON: {exc}") from None
        if isinstance(data, dict):
            records = [{"path": k, **v} for k, v in data.items() if isinstance(v, dict)]
        elif isinstance(data, list):
            records = [r for r in data if isinstance(r, dict)]
        else:
            raise ParameterError(f"metadata file {path}: expected a list or an object")
    else:
        records = list(csv.DictReader(text.splitlines()))
        if records and "path" not in records[0]:
            raise ParameterError(f"metadata file {path} has no 'path' column "
                                 f"(columns: {', '.join(records[0])})")
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        if not rec.get("path"):
            continue
        meta = {k: (str(rec[k]).strip() or None) if rec.get(k) is not None else None
                for k in ("title", "rights_holder", "notes")}
        meta["licence"] = rec.get("licence") or rec.get("license")
        meta["licensed"] = str(rec.get("licensed", "")).strip().lower() in ("1", "true", "yes", "y")
        talent = str(rec.get("talent") or "").strip()
        if talent:
            meta["talent"] = talent
            meta["consent"] = parse_consent(rec.get("consent"), where=f"metadata file {path}, {rec['path']}")
        out[str(rec["path"]).strip()] = meta
    return out


def match_metadata(meta: dict[str, dict[str, Any]], path: Path, root: Path | None) -> dict[str, Any]:
    """Metadata for ``path`` by full path, path relative to ``root``, or file name."""
    keys: Sequence[str] = [str(path), path.name]
    if root is not None:
        with contextlib.suppress(ValueError):
            keys = [str(path), str(path.relative_to(root)), path.name]
    for key in keys:
        if key in meta:
            return meta[key]
    return {}
