"""Dense vectors (``image-clip``): L2-normalised float32 rows, matched by cosine.

The index keeps ``<feature>.faiss`` (exact flat search below a size
threshold, an inverted file above it, a compressed one past
:data:`scanner.search.COMPRESSED_MIN_BYTES`, chosen by
:func:`scanner.search.build_faiss_index`, its parameters and measured
recall in the manifest entry's ``index``) and ``<feature>.rows.npy``. Only
this kind can be built from a vector stream larger than memory.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from scanner import policy as pol
from scanner.match.base import Evidence, IndexFiles, Staged, Writer
from scanner.match.rows import RowsJudge, RowsKind


class Dense(RowsKind):
    """Dense rows, ``codes_per_item`` per item, matched by cosine distance."""

    name = "dense"
    raw_kind = "cosine"
    streams = True

    def empty(self, spec: dict[str, Any]) -> np.ndarray:
        return np.zeros((0, spec["dim"]), np.float32)

    def read(self, staged: Staged) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]] | None:
        old = staged.read_faiss()
        if old is None or not old.ntotal:
            return None
        return old.reconstruct_n(0, old.ntotal), staged.load_npy(".rows.npy"), {}

    def write(self, staged: Staged) -> int:
        from scanner.search import COMPRESSED_TYPES, build_faiss_index

        spec = staged.spec
        if staged.stream is not None:
            stream, rows = staged.stream
            index, spec["index"] = build_faiss_index(stream, "ip")
        elif (spec.get("index") or {}).get("type") in COMPRESSED_TYPES:
            index, rows = self._extend_compressed(staged)
        else:
            vecs, rows = staged.final()
            # exact flat search below a size threshold, an inverted file above it,
            # with its parameters and measured recall kept for `index info`
            index, spec["index"] = build_faiss_index(np.ascontiguousarray(vecs, dtype=np.float32), "ip")
        staged.save_faiss(index)
        staged.save_npy(".rows.npy", np.ascontiguousarray(rows, np.int32))
        return int(index.ntotal)

    @staticmethod
    def _extend_compressed(staged: Staged) -> tuple[Any, np.ndarray]:
        """A compressed IVF feature with removed works dropped and new vectors added, codes kept.

        Compressed codes cannot be decoded back to the rows they came from, so the
        index is never rebuilt from its own reconstruction: the trained index is read,
        the removed rows' codes are deleted and the rest renumbered in row order, and new
        rows are encoded with the same lists and codebooks. The recall measured at build
        stays in the manifest, with the rows added since.
        """
        import faiss

        spec = staged.spec
        index = faiss.read_index(str(staged.path(".faiss")))   # the codes: code_bytes + 8 a row
        rows = staged.load_npy(".rows.npy")
        if len(staged.removed) and len(rows):
            keep = ~np.isin(rows[:, 0], staged.removed)
            if not keep.all():
                index.remove_ids(np.flatnonzero(~keep).astype(np.int64))
                renumber = np.cumsum(keep) - 1                             # old row -> new row
                lists = index.invlists
                for lst in range(index.nlist):
                    size = lists.list_size(lst)
                    if size:
                        ids = faiss.rev_swig_ptr(lists.get_ids(lst), size)
                        ids[:] = renumber[ids]
                rows = rows[keep]
        added = 0
        for part in staged.added:
            index.add(np.ascontiguousarray(part, np.float32))      # ids continue from ntotal
            added += len(part)
        if staged.added_rows:
            rows = np.concatenate([rows] + staged.added_rows)
        spec["index"] = dict(spec["index"], rows_since_recall=int(spec["index"].get("rows_since_recall", 0)) + added)
        return index, rows

    def stored(self, index: IndexFiles, name: str) -> int:
        return int(index.faiss_index(name).ntotal)

    def fit(self, writer: Writer, name: str, vecs: np.ndarray, rows: np.ndarray, keep: np.ndarray,
            a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
        kept = vecs[keep]
        d = 1.0 - np.einsum("ij,ij->i", kept[a], kept[b])
        return pol.fit_null(d, prior=pol.PRIOR_COSINE_DISTANCE)

    def distances(self, judge: RowsJudge, vecs: np.ndarray, j: int, found: Sequence[Evidence]) -> np.ndarray:
        return np.array([e.distance for e in found])
