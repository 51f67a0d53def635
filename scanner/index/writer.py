"""Writing an index: changes staged in a copy beside it and swapped in atomically, one writer at a time.

:class:`IndexWriter` stages works, thumbnails and each feature's rows; at
:meth:`IndexWriter.commit` every feature's files are written by its kind
(:mod:`scanner.match`: which files it keeps is its business), every file is
hashed into the manifest, and the staging copy is swapped in by one atomic
exchange (or two renames where the system cannot exchange). A killed writer
leaves the previous index whole; the next reader or writer puts back an index
whose writer died between two renames (:func:`scanner.index.store.recover`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import hmac
import json
import os
import shutil
import signal
import sqlite3
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from scanner import __version__
from scanner.errors import IndexError_, IndexMismatchError, ParameterError
from scanner.index import store
from scanner.talents import MODALITIES
from scanner.index.store import (CATALOG, CATALOG_SCHEMA, FORMAT, FORMAT_VERSION, MANIFEST, SIGNATURE, STAMP, THUMBS,
                                  file_hashes)
from scanner.match import kind_of


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    """Write a small file and fsync it (the manifest must be on disk before the swap)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _crash_point(step: str) -> None:
    """Test hook: die here by SIGKILL when ``LIKENESS_CRASH_AT`` names ``step``.

    ``LIKENESS_CRASH_AT=<step>:stop`` stops the process (SIGSTOP) instead, so a
    test can look at the index while a writer is paused mid-commit and then let
    it go on (SIGCONT). Steps, in commit order: ``staged`` (data files written),
    ``manifest`` (manifest written and synced), ``first-rename`` (old index moved
    aside; only where paths cannot be exchanged atomically), ``swapped`` (new
    index in place, old one not yet removed). Does nothing when unset.
    """
    want = os.environ.get("LIKENESS_CRASH_AT")
    if want and want.partition(":")[0] == step:
        os.kill(os.getpid(), signal.SIGSTOP if want.endswith(":stop") else signal.SIGKILL)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the system or file system cannot, so the caller falls
    back to two renames (and :func:`scanner.index.store.recover` after a kill between them).
    """
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


@dataclass
class _FeatureData:
    identity: dict[str, Any]
    vectors: list[np.ndarray] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    extra: list[dict[str, np.ndarray]] = field(default_factory=list)


class _StagedFeature:
    """One feature of the staging copy, as its kind reads and writes its files
    (:class:`scanner.match.base.Staged`). Every file is written under a new name
    and renamed over the old: ``os.replace`` over a hard link leaves the published
    copy alone."""

    def __init__(self, writer: IndexWriter, name: str, spec: dict[str, Any]):
        assert writer.staging is not None
        self.writer, self.name, self.spec = writer, name, spec
        self.stream = writer._streams[name][1:] if name in writer._streams else None
        self.removed = writer._removed_ids()
        new = writer._features.get(name)
        self.added = list(new.vectors) if new is not None else []
        self.added_rows = list(new.rows) if new is not None else []

    def path(self, suffix: str) -> Path:
        assert self.writer.staging is not None
        return self.writer.staging / f"{self.name}{suffix}"

    def final(self) -> tuple[np.ndarray, np.ndarray]:
        return self.writer.vectors(self.name)

    def arrays(self) -> dict[str, np.ndarray]:
        return self.writer.extras(self.name)

    def derived(self, make: Callable[[], Any]) -> Any:
        return self.writer.derived(self.name, make)

    def _replace(self, suffix: str, write: Callable[[Any], None]) -> None:
        path = self.path(suffix)
        tmp = path.with_name(path.name + ".new")
        with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a name
            write(fh)
        os.replace(tmp, path)

    def read_faiss(self) -> Any:
        """The staged copy's ``<feature>.faiss`` as written before (binary or dense), or ``None``."""
        path = self.path(".faiss")
        return store.read_faiss(path, mmap=False) if path.exists() else None

    def load_npy(self, suffix: str) -> np.ndarray:
        path = self.path(suffix)
        return np.load(path, allow_pickle=False)

    def load_npz(self, suffix: str) -> dict[str, np.ndarray]:
        path = self.path(suffix)
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def save_npy(self, suffix: str, array: np.ndarray) -> None:
        self._replace(suffix, lambda fh: np.save(fh, array, allow_pickle=False))

    def save_npz(self, suffix: str, arrays: dict[str, np.ndarray]) -> None:
        self._replace(suffix, lambda fh: np.savez(fh, **arrays))

    def save_faiss(self, index: Any) -> None:
        import faiss

        path = self.path(".faiss")
        tmp = path.with_name(path.name + ".new")
        (faiss.write_index_binary if isinstance(index, faiss.IndexBinary) else faiss.write_index)(index, str(tmp))
        os.replace(tmp, path)

    def drop(self, suffix: str) -> None:
        self.path(suffix).unlink(missing_ok=True)


class IndexWriter:
    """Stage changes to an index and publish them atomically.

    Use as a context manager; changes are published by :meth:`commit` (called
    on a clean exit) and thrown away on an exception or kill.

    Parameters
    ----------
    path : index directory
    create : bool
        Start a new index (an existing one at ``path`` is replaced on commit).
    hmac_key : bytes, optional
        Sign the new manifest with this key.
    """

    def __init__(self, path: str | Path, *, create: bool = False, hmac_key: bytes | None = None):
        self.path = Path(path)
        self.create = create
        self.hmac_key = hmac_key
        self._lock_cm: contextlib.AbstractContextManager[None] | None = None
        self.staging: Path | None = None
        self.manifest: dict[str, Any] = {}
        self._db: sqlite3.Connection | None = None
        self._features: dict[str, _FeatureData] = {}
        self._removed: set[int] = set()
        self._final: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._final_extra: dict[str, dict[str, np.ndarray]] = {}
        self._derived: dict[str, Any] = {}
        # dense features given as a VectorStream (more rows than memory): identity, stream, rows
        self._streams: dict[str, tuple[dict[str, Any], Any, np.ndarray]] = {}
        self._committed = False

    # -- lifecycle -----------------------------------------------------------------
    def __enter__(self) -> "IndexWriter":
        self._lock_cm = store.locked(self.path)
        self._lock_cm.__enter__()
        try:
            store.recover(self.path)
            self._stage()
        except BaseException:
            self._abort()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None and not self._committed:
                self.commit()
        finally:
            self._abort()

    def _abort(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self.staging is not None and self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)
        if self._lock_cm is not None:
            self._lock_cm.__exit__(None, None, None)
            self._lock_cm = None

    def _stage(self) -> None:
        self.staging = self.path.parent / f".{self.path.name}.tmp-{uuid.uuid4().hex[:12]}"
        if self.create or not self.path.exists():
            if not self.create:
                raise IndexError_(f"no index at {self.path} (build one with `likeness index build`)")
            self.staging.mkdir(parents=True)
            self.manifest = {
                "format": FORMAT, "format_version": FORMAT_VERSION,
                "index_id": str(uuid.uuid4()), "created_at": _now(),
                "features": {}, "works": {"count": 0}, "files": {}, "policy": {}, "null": {},
            }
        else:
            self.manifest = store.read_manifest(self.path, hmac_key=self.hmac_key)
            for name, expected in self.manifest["files"].items():
                store.verify_file(self.path, name, expected, use_stamp=True)
            # sqlite edits in place, so it is copied; other files are rewritten whole
            # (never edited) and can be hard-linked into the staging copy
            self.staging.mkdir(parents=True)
            for name in self.manifest["files"]:
                src, dst = self.path / name, self.staging / name
                if name == CATALOG:
                    shutil.copy2(src, dst)
                else:
                    try:
                        os.link(src, dst)
                    except OSError:
                        shutil.copy2(src, dst)
            _link_tree(self.path / THUMBS, self.staging / THUMBS)
        self._db = sqlite3.connect(self.staging / CATALOG)
        self._db.execute("PRAGMA journal_mode=DELETE")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS works (id INTEGER PRIMARY KEY, path TEXT NOT NULL, "
            "sha256 TEXT NOT NULL UNIQUE, modality TEXT NOT NULL, title TEXT, rights_holder TEXT, "
            "licence TEXT, notes TEXT, licensed INTEGER NOT NULL DEFAULT 0, added_at TEXT NOT NULL, "
            "featureless TEXT, talent TEXT)")
        if "talent" not in {r[1] for r in self._db.execute("PRAGMA table_info(works)")}:
            self._db.execute("ALTER TABLE works ADD COLUMN talent TEXT")   # a schema-1 catalog
        # consent per talent and modality, read at scan time (scanner.talents)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS talents (name TEXT PRIMARY KEY, face TEXT NOT NULL DEFAULT 'no', "
            "face_until TEXT, voice TEXT NOT NULL DEFAULT 'no', voice_until TEXT, updated_at TEXT NOT NULL)")
        self._db.execute(f"PRAGMA user_version={CATALOG_SCHEMA}")

    # -- edits ---------------------------------------------------------------------
    def has_sha256(self, sha256: str) -> int | None:
        """Work id holding a file with this content, if any."""
        assert self._db is not None
        row = self._db.execute("SELECT id FROM works WHERE sha256=?", (sha256,)).fetchone()
        return row[0] if row else None

    def featureless_work_ids(self) -> np.ndarray:
        """Ids of works judged featureless at build time, int32."""
        assert self._db is not None
        ids = self._db.execute("SELECT id FROM works WHERE featureless IS NOT NULL").fetchall()
        return np.array([r[0] for r in ids], dtype=np.int32)

    def add_work(self, *, path: str, sha256: str, modality: str, **meta: Any) -> int:
        """Add a work to the catalog and return its id (ids are never reused)."""
        assert self._db is not None
        cols = {"path": path, "sha256": sha256, "modality": modality}
        cols.update({k: meta.get(k) for k in ("title", "rights_holder", "licence", "notes", "featureless", "talent")})
        cols["licensed"] = int(bool(meta.get("licensed")))
        cols["added_at"] = _now()
        next_id = max(self.manifest.get("next_work_id", 1),
                      (self._db.execute("SELECT MAX(id) FROM works").fetchone()[0] or 0) + 1)
        self._db.execute(f"INSERT INTO works (id, {', '.join(cols)}) VALUES (?{', ?' * len(cols)})",
                         (next_id, *cols.values()))
        self.manifest["next_work_id"] = next_id + 1
        return next_id

    def add_vectors(self, identity: dict[str, Any], vectors: np.ndarray, work_ids: np.ndarray,
                    locators: np.ndarray | None = None, extra: dict[str, np.ndarray] | None = None) -> None:
        """Queue vectors of one feature for the index.

        Parameters
        ----------
        identity : featurizer identity (:meth:`Featurizer.identity`)
        vectors : float32 ``[shape=(n, dim)]`` or uint8 ``[shape=(n, dim // 8)]``
        work_ids : int ``[shape=(n,)]``
        locators : int ``[shape=(n,)]``, optional (tile or segment number; 0 by default)
        extra : per-row arrays of a landmark feature (keypoint positions), each
            ``[shape=(n, ...)]``, kept in ``<feature>.npz``; every call of one
            feature must give the same keys
        """
        name = identity["name"]
        existing = self.manifest["features"].get(name)
        if existing is not None:
            for key in ("model", "version", "dim"):
                if existing.get(key) != identity.get(key):
                    raise IndexMismatchError(
                        f"index {self.path} holds {name} vectors with {key} {existing.get(key)!r}; "
                        f"cannot add vectors with {identity.get(key)!r}; rebuild the index instead")
        data = self._features.setdefault(name, _FeatureData(identity))
        n = len(vectors)
        if len(work_ids) != n:
            raise ParameterError(f"{n} vectors but {len(work_ids)} work ids")
        loc = np.zeros(n, np.int32) if locators is None else np.asarray(locators, np.int32)
        extra = {k: np.asarray(v) for k, v in (extra or {}).items()}
        if kind_of(identity).has_arrays != bool(extra):
            raise ParameterError(f"{name}: per-row arrays (keypoint positions, times) are given for the "
                                 f"kinds that keep them, and only for them (kind {identity['kind']!r})")
        if any(len(v) != n for v in extra.values()):
            raise ParameterError(f"{n} vectors but per-row arrays of lengths "
                                 f"{ {k: len(v) for k, v in extra.items()} }")
        self._final.clear()
        self._final_extra.clear()
        self._derived.clear()
        data.vectors.append(vectors)
        data.rows.append(np.stack([np.asarray(work_ids, np.int32), loc], axis=1))
        data.extra.append(extra)

    def add_vector_stream(self, identity: dict[str, Any], stream: Any, work_ids: np.ndarray,
                          locators: np.ndarray | None = None) -> None:
        """Queue a dense feature whose vectors are read block by block at commit.

        For sets larger than memory (10M x 512 fp32 is 20 GB): the index is built by
        :func:`scanner.search.build_faiss_index` in one pass over the stream
        (compressed IVF past :data:`scanner.search.COMPRESSED_MIN_BYTES`) and written like any
        other feature (staged, hashed into the manifest, swapped in).

        Parameters
        ----------
        identity : featurizer identity of a ``dense`` feature this index does not hold yet
        stream : :class:`scanner.search.VectorStream` of ``identity["dim"]``-d rows
        work_ids : int ``[shape=(stream.n,)]``
        locators : int ``[shape=(stream.n,)]``, optional (0 by default)
        """
        name = identity["name"]
        if not kind_of(identity).streams or stream.dim != identity.get("dim"):
            raise ParameterError(f"{name}: a vector stream is for dense features of the identity's dim, given "
                                 f"kind {identity.get('kind')!r}, dim {identity.get('dim')} and a {stream.dim}-d stream")
        if name in self.manifest["features"] or name in self._features or name in self._streams:
            raise ParameterError(f"{name}: a vector stream builds a feature new to the index, as its only vectors")
        if len(work_ids) != stream.n:
            raise ParameterError(f"{stream.n} vectors but {len(work_ids)} work ids")
        loc = np.zeros(stream.n, np.int32) if locators is None else np.asarray(locators, np.int32)
        self._streams[name] = (identity, stream, np.stack([np.asarray(work_ids, np.int32), loc], axis=1))

    def add_thumbnail(self, work_id: int, data: bytes, meta: dict[str, Any] | None = None) -> None:
        """Keep a work's thumbnail (WebP bytes, see :mod:`scanner.thumbs`) in the staged ``thumbs/``."""
        from scanner import thumbs

        assert self.staging is not None
        thumbs.save(self.staging / THUMBS, int(work_id), data, meta)

    def set_consent(self, name: str, modality: str, given: bool, until: str | None = None) -> None:
        """Record talent ``name``'s consent for ``modality`` (``face``, ``voice``), ending after
        ``until`` (ISO date) if given; a talent not yet in the table is added with no other consent."""
        assert self._db is not None
        if modality not in MODALITIES:
            raise ParameterError(f"consent is given per modality ({', '.join(MODALITIES)}), not {modality!r}")
        self._db.execute("INSERT OR IGNORE INTO talents (name, updated_at) VALUES (?, ?)", (name, _now()))
        self._db.execute(f"UPDATE talents SET {modality}=?, {modality}_until=?, updated_at=? WHERE name=?",
                         ("yes" if given else "no", until, _now(), name))

    def talent_work_ids(self, name: str) -> list[int]:
        """Ids of talent ``name``'s reference files."""
        assert self._db is not None
        return [r[0] for r in self._db.execute("SELECT id FROM works WHERE talent=? ORDER BY id", (name,))]

    def talent_work_ids_of(self, work_ids: Iterable[int]) -> list[int]:
        """Those of ``work_ids`` that are talents' references."""
        assert self._db is not None
        ids = [int(w) for w in work_ids]
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        return [r[0] for r in self._db.execute(
            f"SELECT id FROM works WHERE talent IS NOT NULL AND id IN ({marks})", ids)]

    def work_talents(self) -> dict[int, str]:
        """Talent of each talent reference, by work id."""
        assert self._db is not None
        return dict(self._db.execute("SELECT id, talent FROM works WHERE talent IS NOT NULL"))

    def talent_names(self) -> list[str]:
        """Talents with consent on record or references in the index."""
        assert self._db is not None
        return [r[0] for r in self._db.execute(
            "SELECT name FROM talents UNION SELECT talent FROM works WHERE talent IS NOT NULL ORDER BY 1")]

    def remove_talent(self, name: str) -> list[int]:
        """Remove talent ``name``: their references (and so their templates) and their consent row;
        returns the work ids removed."""
        assert self._db is not None
        found = self.remove_works(self.talent_work_ids(name))
        self._db.execute("DELETE FROM talents WHERE name=?", (name,))
        return found

    def remove_works(self, work_ids: Iterable[int]) -> list[int]:
        """Remove works (catalog rows and their vectors); returns the ids that existed."""
        assert self._db is not None
        found = []
        for wid in work_ids:
            if self._db.execute("DELETE FROM works WHERE id=?", (int(wid),)).rowcount:
                found.append(int(wid))
                if self.staging is not None:  # staged links: the published index keeps its copies
                    for p in (self.staging / THUMBS).glob(f"{int(wid)}.*"):
                        p.unlink()
        self._removed.update(found)
        self._final.clear()
        self._final_extra.clear()
        self._derived.clear()
        return found

    def set(self, key: str, value: Any) -> None:
        """Set a manifest section (``policy``, ``null``, ...)."""
        self.manifest[key] = value

    def set_row_weights(self, name: str, weights: np.ndarray | None) -> None:
        """Keep per-row weights of feature ``name`` (crowding factors), row-aligned with
        :meth:`vectors` as committed; ``None`` drops them."""
        assert self.staging is not None
        path = self.staging / f"{name}.weights.npy"
        if weights is None:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_name(path.name + ".new")  # a new file: the published copy may be a hard link
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(weights, np.float32), allow_pickle=False)
        os.replace(tmp, path)

    # -- publish -------------------------------------------------------------------
    def vectors(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Every vector of ``name`` the committed index will hold, with its rows.

        Returns
        -------
        vectors : ``[shape=(n, dim)]`` float32 or ``[shape=(n, dim // 8)]`` uint8 (as its kind stores them)
        rows : int32 ``[shape=(n, 2)]`` (work_id, locator)
        """
        if name in self._final:
            return self._final[name]
        if name in self._streams:
            raise ParameterError(f"{name} was given as a vector stream: its vectors are not held in memory")
        spec = self.spec(name)
        kind = kind_of(spec)
        parts_v: list[np.ndarray] = []
        parts_r: list[np.ndarray] = []
        parts_e: list[dict[str, np.ndarray]] = []
        old = kind.read(_StagedFeature(self, name, spec))
        if old is not None:
            parts_v.append(old[0])
            parts_r.append(old[1])
            if old[2]:
                parts_e.append(old[2])
        new = self._features.get(name)
        if new is not None:
            parts_v += new.vectors
            parts_r += new.rows
            parts_e += new.extra
        empty = kind.empty(spec)
        vecs = np.concatenate(parts_v).astype(empty.dtype) if parts_v else empty
        rows = np.concatenate(parts_r).astype(np.int32) if parts_r else np.zeros((0, 2), np.int32)
        extra = {k: np.concatenate([e[k] for e in parts_e]) for k in (parts_e[0] if parts_e else {})}
        if self._removed and len(rows):
            keep = ~np.isin(rows[:, 0], self._removed_ids())
            vecs, rows = vecs[keep], rows[keep]
            extra = {k: v[keep] for k, v in extra.items()}
        self._final[name] = (vecs, rows)
        self._final_extra[name] = extra
        return vecs, rows

    def derived(self, name: str, make: Callable[[], Any]) -> Any:
        """What ``make`` builds from feature ``name``'s final data, built once until the data
        changes (a landmark feature's faiss index: its null is fitted on the one written)."""
        if name not in self._derived:
            self._derived[name] = make()
        return self._derived[name]

    def extras(self, name: str) -> dict[str, np.ndarray]:
        """Per-row arrays of a feature (keypoint positions, times), row-aligned with :meth:`vectors`."""
        self.vectors(name)
        return self._final_extra[name]

    def spec(self, name: str) -> dict[str, Any]:
        """Feature ``name``'s manifest entry, or its featurizer identity while it is new to the index."""
        if name in self._streams:
            return self._streams[name][0]
        return self.manifest["features"].get(name) or self._features[name].identity

    def feature_names(self) -> list[str]:
        """Features the committed index will hold."""
        return sorted(set(self.manifest["features"]) | set(self._features) | set(self._streams))

    def _removed_ids(self) -> np.ndarray:
        return np.fromiter(self._removed, np.int32, len(self._removed))

    def _write_feature(self, name: str) -> None:
        """Write one feature's files into the staging copy (its kind says which) and its manifest entry."""
        assert self.staging is not None
        staged = _StagedFeature(self, name, dict(self.spec(name)))
        staged.spec["count"] = kind_of(staged.spec).write(staged)
        self.manifest["features"][name] = staged.spec

    def commit(self) -> None:
        """Write data files and the manifest into the staging copy, then swap it in."""
        assert self.staging is not None and self._db is not None
        names = set(self._features) | set(self._streams) | (set(self.manifest["features"]) if self._removed else set())
        for name in sorted(names):
            self._write_feature(name)
        counts = dict(self._db.execute("SELECT modality, COUNT(*) FROM works GROUP BY modality").fetchall())
        self._db.commit()
        self._db.close()
        self._db = None
        self.manifest["works"] = {"count": int(sum(counts.values())), "by_modality": counts}
        self.manifest["updated_at"] = _now()
        self.manifest["tool_version"] = __version__
        files = {}
        for p in sorted(self.staging.iterdir()):
            if p.is_file() and p.name not in (MANIFEST, SIGNATURE, STAMP):
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
                files[p.name] = file_hashes(p)
        self.manifest["files"] = files
        raw = json.dumps(self.manifest, indent=2, sort_keys=True).encode()
        _crash_point("staged")
        _write_synced(self.staging / MANIFEST, raw)
        if self.hmac_key is not None:
            _write_synced(self.staging / SIGNATURE, hmac.new(self.hmac_key, raw, hashlib.sha256).hexdigest().encode())
        _fsync_dir(self.staging)
        _crash_point("manifest")
        # one atomic exchange where the system allows it: readers never find the
        # index missing; the old version is left under the staging name
        if self.path.exists() and _exchange(self.staging, self.path):
            old = self.staging
        else:
            old = self.path.parent / f".{self.path.name}.old-{uuid.uuid4().hex[:12]}"
            if self.path.exists():
                os.rename(self.path, old)
                _crash_point("first-rename")
            os.rename(self.staging, self.path)
        _fsync_dir(self.path.parent)
        _crash_point("swapped")
        shutil.rmtree(old, ignore_errors=True)
        self.staging = None
        self._committed = True


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy) the files of a flat folder into a new one, when it exists."""
    if not src.is_dir():
        return
    dst.mkdir()
    for p in src.iterdir():
        if p.is_file():
            try:
                os.link(p, dst / p.name)
            except OSError:
                shutil.copy2(p, dst / p.name)
