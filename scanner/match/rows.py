"""What the kinds with a fixed number of rows per item share: hash codes and dense vectors.

Each item (a picture, a keyframe) yields ``codes_per_item`` rows, its views
(whole, content inside frames, tiles); a query's rows are searched k-NN in
the feature's faiss index, their neighbours grouped by work
(:func:`scanner.match.base.best_per_work`), and each work's closest row
scored against the null fitted on pairs of different works' rows.
:mod:`scanner.match.hashes` and :mod:`scanner.match.dense` say how distances
are measured and what the index keeps.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Sequence

import numpy as np

from scanner import policy as pol
from scanner.features import WEIGHT_FREE, make
from scanner.features.base import Featurizer
from scanner.features.prepared import BATCH, Prepared, embed_prepared
from scanner.search_choice import Plan
from scanner.match.base import K, Evidence, FeatureKind, IndexFiles, Judge, Writer, best_per_work


class RowsKind(FeatureKind):
    """A kind whose items yield ``codes_per_item`` rows each, searched k-NN."""

    def add(self, writer: Writer, feat: Featurizer, items: Sequence[Prepared], work_ids: Sequence[int | None], *,
            timecodes: np.ndarray | None = None) -> None:
        """Embed the items and queue their rows; locators number the views.

        A video work's keyframe rows carry ``ms * codes_per_item + view`` as
        their locator (decoded by the scanner), embedded :data:`BATCH` at a time.
        """
        m = feat.codes_per_item
        if timecodes is None:
            pos, vecs = embed_prepared(feat, items)
            keep = [j for j, i in enumerate(pos) if work_ids[i] is not None]
            if keep:
                rows = (np.repeat(np.array(keep) * m, m) + np.tile(np.arange(m), len(keep)))
                writer.add_vectors(feat.identity(), vecs[rows],
                                   np.repeat(np.array([work_ids[pos[j]] for j in keep], np.int32), m),
                                   np.tile(np.arange(m, dtype=np.int32), len(keep)))
            return
        m = max(m, 1)
        for lo in range(0, len(items), BATCH):
            pos, vecs = embed_prepared(feat, items[lo:lo + BATCH])
            if not pos:
                continue
            ms = np.asarray(timecodes[lo:lo + BATCH], np.int64)[pos]
            locators = np.repeat(ms * m, m) + np.tile(np.arange(m), len(vecs) // m)
            wids = np.repeat(np.asarray(work_ids[lo:lo + BATCH], np.int32)[pos], m)
            writer.add_vectors(feat.identity(), vecs, wids, locators.astype(np.int32))

    def fit_null(self, writer: Writer, name: str, *, featureless: np.ndarray,
                 chance_pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, Any]:
        """Distances between sampled rows of different works; featureless works and
        uninformative rows are left out (they collide by construction, and are no
        evidence at scan time either)."""
        vecs, rows = writer.vectors(name)
        keep = ~np.isin(rows[:, 0], featureless)
        if name in WEIGHT_FREE:
            keep &= make(name).informative(vecs)
        a, b = pol.sample_pairs(rows[keep, 0])
        return self.fit(writer, name, vecs, rows, keep, a, b)

    @abstractmethod
    def fit(self, writer: Writer, name: str, vecs: np.ndarray, rows: np.ndarray, keep: np.ndarray,
            a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
        """The null from pairs ``(a[i], b[i])`` of the kept rows ``vecs[keep]``."""

    @abstractmethod
    def distances(self, judge: RowsJudge, vecs: np.ndarray, j: int, found: Sequence[Evidence]) -> np.ndarray:
        """Distances of query item ``j``'s evidence on the null's scale, float ``[shape=(len(found),)]``."""

    def preload(self, judge: RowsJudge) -> None:
        """Load what :meth:`distances` needs before the first result (nothing by default)."""

    def open(self, index: IndexFiles, feat: Featurizer, *, plan: Plan | None = None) -> Judge:
        return RowsJudge(self, index, feat, plan or Plan())


class RowsJudge(Judge):
    """A rows feature of an open index: k-NN search, the closest row per work, its chance."""

    def __init__(self, kind: RowsKind, index: IndexFiles, feat: Featurizer, plan: Plan):
        self.kind, self.index, self.feat, self.plan = kind, index, feat, plan
        self.cache: dict[str, Any] = {}
        index.faiss_index(feat.name)
        index.rows(feat.name)
        index.row_weights(feat.name)
        kind.preload(self)

    def nearest(self, vecs: np.ndarray) -> list[list[Evidence]]:
        """Per query vector (``[shape=(n, d)]``), each work's closest row among the :data:`K` nearest,
        closest first (:func:`best_per_work`); none for a vector :meth:`Featurizer.informative` rejects."""
        feat = self.feat
        # --device: dense features go to torch on CUDA when asked (auto: when present); on the
        # CPU a large index goes by the path measured fastest here (--backend auto)
        D, I = self.plan.knn(self.index.faiss_index(feat.name), vecs, K)
        I[~feat.informative(vecs)] = -1  # a flat code's neighbours are no evidence
        return best_per_work(D, I, self.index.rows(feat.name), feature=feat.name, metric=feat.metric,
                             codes_per_query=feat.codes_per_item)

    def evidence(self, batch: Sequence[Prepared]) -> list[tuple[list[Evidence], np.ndarray] | None]:
        feat = self.feat
        out: list[tuple[list[Evidence], np.ndarray] | None] = [None] * len(batch)
        pos, vecs = embed_prepared(feat, batch)
        if not pos:
            return out
        per_query = self.nearest(vecs)
        rows = self.index.rows(feat.name)
        null = self.index.null[feat.name]
        # every (query row, index row) comparison is a chance to match by chance
        comparisons = len(rows) * feat.codes_per_item
        crowd = self.index.row_weights(feat.name)
        for j, (i, evs) in enumerate(zip(pos, per_query)):
            if not evs:
                continue
            expected = pol.expected_chance(self.kind.distances(self, vecs, j, evs), null, comparisons)
            if crowd is not None:
                expected = expected * crowd[[e.row for e in evs]]
            out[i] = (evs, expected)
        return out
