"""Packed hash codes (``image-phash``): Hamming distances standardised by code density.

The index keeps ``<feature>.faiss`` (a flat binary faiss index, rows in
order), ``<feature>.rows.npy`` and ``<feature>.weights.npy`` (each row's
crowding factor: stock shapes recur across works, and a match on a crowded
code is weaker evidence, :func:`scanner.policy.crowding`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from scanner import policy as pol
from scanner.match.base import Evidence, IndexFiles, Staged, WorkRows, Writer
from scanner.match.rows import RowsJudge, RowsKind


def ones(codes: np.ndarray) -> np.ndarray:
    """Bits set per packed code, int ``[shape=(n,)]``."""
    return np.bitwise_count(codes).sum(axis=1, dtype=np.int32)


def best_work_z(codes: np.ndarray, work_ids: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest standardised Hamming distance between any code of work ``a[i]`` and any of ``b[i]``."""
    rows_of = WorkRows(work_ids)
    n_ones = ones(codes)
    dim = codes.shape[1] * 8
    out = np.full(len(a), np.inf)
    for i, (wa, wb) in enumerate(zip(a, b)):  # a few hundred pairs of a few codes each, once per build
        ra, rb = rows_of(wa), rows_of(wb)
        if len(ra) and len(rb):
            x, y = np.repeat(ra, len(rb)), np.tile(rb, len(ra))
            out[i] = pol.standardize_hamming(pol.hamming_pairs(codes, x, y), n_ones[x], n_ones[y], dim).min()
    return np.where(np.isfinite(out), out, 0.0)


class Hashes(RowsKind):
    """Binary codes, ``codes_per_item`` per item, matched by standardised Hamming distance."""

    name = "binary"
    raw_kind = "hamming_bits"
    fuses = True

    def empty(self, spec: dict[str, Any]) -> np.ndarray:
        return np.zeros((0, spec["dim"] // 8), np.uint8)

    def read(self, staged: Staged) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]] | None:
        from scanner.search import binary_codes

        old = staged.read_faiss()
        return (binary_codes(old), staged.load_npy(".rows.npy"), {}) if old is not None and old.ntotal else None

    def write(self, staged: Staged) -> int:
        import faiss

        vecs, rows = staged.final()
        index = faiss.IndexBinaryFlat(staged.spec["dim"])
        index.add(np.ascontiguousarray(vecs, dtype=np.uint8))
        staged.save_faiss(index)
        staged.save_npy(".rows.npy", np.ascontiguousarray(rows, np.int32))
        return int(index.ntotal)

    def stored(self, index: IndexFiles, name: str) -> int:
        return int(index.faiss_index(name).ntotal)

    def fit(self, writer: Writer, name: str, vecs: np.ndarray, rows: np.ndarray, keep: np.ndarray,
            a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
        kept = vecs[keep]
        n_ones = ones(kept)
        d = pol.standardize_hamming(pol.hamming_pairs(kept, a, b), n_ones[a], n_ones[b], kept.shape[1] * 8)
        null = pol.fit_null(d, prior=pol.PRIOR_HAMMING_Z)
        # stock shapes recur across works: a match on a crowded code is weaker evidence
        writer.set_row_weights(name, pol.crowding(vecs, rows[:, 0], null, usable=keep))
        return null

    def pair_scores(self, writer: Writer, name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Closeness of works ``a[i]`` and ``b[i]``: minus the smallest standardised distance of their codes."""
        vecs, rows = writer.vectors(name)
        return -best_work_z(vecs, rows[:, 0], a, b)

    def preload(self, judge: RowsJudge) -> None:
        judge.cache["ones"] = ones(judge.index.codes(judge.feat.name))

    def distances(self, judge: RowsJudge, vecs: np.ndarray, j: int, found: Sequence[Evidence]) -> np.ndarray:
        feat = judge.feat
        dist = np.array([e.distance for e in found])
        q_ones = ones(vecs[[j * feat.codes_per_item + e.query_locator for e in found]])
        r_ones = judge.cache["ones"][[e.row for e in found]]
        return pol.standardize_hamming(dist, q_ones, r_ones, feat.dim)
