"""Turn raw neighbours into per-work evidence. Pure functions, no IO.

A reference work may own several rows of an index (tiles, segments); a query's
``k`` neighbours are grouped by work and the closest row of each work is kept,
with its locator, as that work's evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Evidence:
    """The closest row of one work to one query, for one feature.

    Attributes
    ----------
    work_id : int
    feature : str
    raw : float
        Search score as returned (Hamming bits, or cosine).
    distance : float
        Smaller-is-closer form: Hamming bits, or ``1 - cosine``.
    locator : int
        Which row of the work matched (its view, tile or segment).
    query_locator : int
        Which of the query's rows matched.
    row : int
        The index row that matched.
    """

    work_id: int
    feature: str
    raw: float
    distance: float
    locator: int
    query_locator: int = 0
    row: int = -1


def to_distance(raw: np.ndarray, metric: str) -> np.ndarray:
    """Raw search scores in smaller-is-closer form (``1 - cosine`` for ``ip``)."""
    raw = np.asarray(raw, dtype=np.float64)
    return raw if metric == "hamming" else 1.0 - raw


def best_per_work(D: np.ndarray, I: np.ndarray, rows: np.ndarray, *, feature: str,
                  metric: str, codes_per_query: int = 1) -> list[list[Evidence]]:
    """Group each query's neighbours by work, keeping each work's closest row.

    Parameters
    ----------
    D, I : ``[shape=(n * codes_per_query, k)]`` search results
        (:func:`scanner.index.search.knn`), query rows item-major
    rows : int32 ``[shape=(n_rows, 2)]`` row -> (work_id, locator)
    feature : feature name, copied into the evidence
    metric : ``"hamming"`` or ``"ip"``
    codes_per_query : rows each query item has (all are pooled)

    Returns
    -------
    list of lists
        Per query, evidence sorted closest first, one entry per work.
    """
    k = D.shape[1]
    D = D.reshape(-1, codes_per_query * k)
    I = I.reshape(-1, codes_per_query * k)
    dist = to_distance(D, metric)
    valid = I >= 0
    safe = np.where(valid, I, 0)
    works = np.asarray(rows)[safe, 0]
    locs = np.asarray(rows)[safe, 1]
    out: list[list[Evidence]] = []
    for q in range(len(I)):
        order = np.argsort(dist[q], kind="stable")
        seen: set[int] = set()
        ev = []
        for j in order:
            if not valid[q, j] or int(works[q, j]) in seen:
                continue
            seen.add(int(works[q, j]))
            ev.append(Evidence(int(works[q, j]), feature, float(D[q, j]), float(dist[q, j]), int(locs[q, j]),
                               int(j // k), int(I[q, j])))
        out.append(ev)
    return out
