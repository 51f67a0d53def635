"""Fingerprint postings (``audio-fingerprint``): hashes aligned per work in time.

The index keeps no faiss file: ``<feature>.npz`` holds the hash keys sorted
(``key``) with each posting's anchor time, triplet span, pitch and near-edge
bits, and ``<feature>.rows.npy`` their (work, posting number) rows, in the
same order. A query's hashes (:data:`scanner.features.fingerprint.HASH_DTYPE`)
are looked up in the index's postings, kept sorted by key, with
:func:`numpy.searchsorted` (:func:`lookup`). Every hit pairs a query hash with a
reference hash; a copy shows as many pairs that agree on one alignment

    ``ref_time = offset + rate * query_time``

with one pitch shift. :func:`align` finds it by a 2-D vote over (rate,
offset), all works at once: each pair votes with its own rate (the ratio of
the two triplets' spans, which a speed or tempo change scales alike) for the
reference time it puts at the query's middle; the fullest cells give the
candidate works, and :func:`align_work` fits the line to each one's pairs
(so a query sped up by 2%, or slowed in tempo by 4%, lines up over its whole
length). The score is the number of distinct query anchor peaks whose hashes agree
(the aligned-hash count), within a window of :data:`WINDOW` seconds, so that its chance
distribution, fitted at build time on excerpts of that length
(:func:`postings_null_scores`), does not depend on the query's length.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Sequence

import numpy as np

from scanner import policy as pol
from scanner.features.base import Featurizer
from scanner.features.prepared import Prepared
from scanner.search_choice import Plan
from scanner.match.base import Evidence, FeatureKind, IndexFiles, Judge, Staged, WorkRows, Writer

#: Largest time-scale change looked for (ref seconds per query second, either way).
MAX_RATE = 1.12
#: A pair's own rate (ratio of the two triplets' spans) must lie this close to the alignment's.
PAIR_RATE_TOLERANCE = 0.08
#: Largest pitch shift looked for (semitones, either way).
MAX_SHIFT = 1.5
#: Pairs of one alignment agree on the pitch shift within this many semitones.
SHIFT_TOLERANCE = 0.4
#: Tolerances (seconds) of the refinement's second and last rounds: how far an
#: aligned pair may sit from the fitted line.
OFFSET_BIN = 0.1
OFFSET_TOLERANCE = 0.06
#: Coarse vote cells: relative rate step, and seconds of reference time at the query's middle.
COARSE_RATE = 0.03
COARSE_OFFSET = 0.5
#: Works aligned per query (the most hit ones).
AUDIO_TOP = 8
#: Keys with more postings than this are too common to be evidence (stop words).
MAX_POSTINGS_PER_KEY = 4096
#: Seconds of query the aligned-hash count is taken over (and the null fitted on).
WINDOW = 10.0
#: Reference excerpts sampled to fit the null.
NULL_QUERIES = 300
#: Fewest aligned hashes reported as evidence at all.
MIN_ALIGNED = 4


@dataclass(frozen=True)
class PostingsTable:
    """An index's fingerprint postings, sorted by key.

    Attributes
    ----------
    key : uint32 ``[shape=(n,)]``, sorted
    work : int32 ``[shape=(n,)]``
    t, span, pitch : float32 ``[shape=(n,)]`` anchor time (s), triplet span (s), anchor pitch (semitones)
    near : uint16 ``[shape=(n,)]`` near-edge bits of the hash fields
    """

    key: np.ndarray
    work: np.ndarray
    t: np.ndarray
    span: np.ndarray
    pitch: np.ndarray
    near: np.ndarray

    @classmethod
    def from_arrays(cls, keys: np.ndarray, work_ids: np.ndarray, extra: dict[str, np.ndarray]) -> "PostingsTable":
        """A table from postings in any order (sorted here unless they are already)."""
        keys = np.asarray(keys, np.uint32).ravel()
        cols = {k: np.asarray(extra[k]) if k in extra else np.zeros(len(keys), np.float32)
                for k in ("t", "span", "pitch")}
        near = np.asarray(extra.get("near", np.zeros(len(keys), np.uint16)), np.uint16)
        work = np.asarray(work_ids, np.int32)
        if len(keys) > 1 and np.any(keys[1:] < keys[:-1]):
            order = np.argsort(keys, kind="stable")
            keys, work, near = keys[order], work[order], near[order]
            cols = {k: v[order] for k, v in cols.items()}
        return cls(keys, work, cols["t"], cols["span"], cols["pitch"], near)

    def __len__(self) -> int:
        return len(self.key)

    @cached_property
    def directory(self) -> np.ndarray | None:
        """Row where each key value starts (:func:`scanner.search.key_directory`), built on first use."""
        from scanner.search import key_directory

        return key_directory(self.key)

    def hashes(self, rows: np.ndarray) -> np.ndarray:
        """Rows of the table as query hashes (:data:`~scanner.features.fingerprint.HASH_DTYPE`)."""
        from scanner.features.fingerprint import HASH_DTYPE

        out = np.zeros(len(rows), HASH_DTYPE)
        out["key"], out["t"], out["span"] = self.key[rows], self.t[rows], self.span[rows]
        out["pitch"], out["near"] = self.pitch[rows], self.near[rows]
        return out


def expand_probes(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys to look up for query hashes: each key, and its neighbours for fields near a bin edge.

    A field whose value lies close to an edge of its bin (its ``near`` bit,
    set by :func:`scanner.features.fingerprint.triplet_hashes`) may fall in
    the neighbouring bin in a transformed copy; every combination of such
    fields is looked up.

    Parameters
    ----------
    hashes : ``[shape=(n,)]`` of :data:`~scanner.features.fingerprint.HASH_DTYPE`

    Returns
    -------
    keys : uint32 ``[shape=(m,)]``, m >= n
    source : int64 ``[shape=(m,)]`` the hash each key probes for
    """
    from scanner.features.fingerprint import SIZES, STRIDES

    nf = len(SIZES)
    near = hashes["near"].astype(np.int64)
    key = hashes["key"].astype(np.int64)
    step = np.zeros((len(hashes), nf), np.int64)
    for i in range(nf):
        up = (near >> (i + nf)) & 1
        step[:, i] = np.where(up == 1, STRIDES[i], -STRIDES[i])
    keys, source = [key], [np.arange(len(hashes))]
    for subset in range(1, 1 << nf):
        fields = [i for i in range(nf) if subset >> i & 1]
        want = np.bitwise_or.reduce([1 << i for i in fields])
        rows = np.flatnonzero((near & want) == want)
        if len(rows):
            keys.append(key[rows] + step[rows][:, fields].sum(axis=1))
            source.append(rows)
    return np.concatenate(keys).astype(np.uint32), np.concatenate(source)


def lookup(hashes: np.ndarray, table: PostingsTable, *,
           max_postings: int = MAX_POSTINGS_PER_KEY) -> tuple[np.ndarray, np.ndarray]:
    """Every (query hash, posting) pair with equal keys, probes included; vectorised.

    Returns
    -------
    q, r : int64 ``[shape=(p,)]`` query hash numbers and table rows
    """
    from scanner.search import expand_runs, postings_ranges

    keys, source = expand_probes(hashes)
    lo, hi = postings_ranges(table.key, keys, directory=table.directory)
    n = hi - lo
    n[n > max_postings] = 0  # a key this common says nothing about any one work
    return expand_runs(source, lo, n)


def _windowed_count(times: np.ndarray, window: float) -> tuple[int, float]:
    """Most of ``times`` (sorted) inside any ``window`` seconds, and where that window starts."""
    if not len(times):
        return 0, 0.0
    ends = np.searchsorted(times, times + window, side="left")
    i = int(np.argmax(ends - np.arange(len(times))))
    return int(ends[i] - i), float(times[i])


def align_work(qt: np.ndarray, qspan: np.ndarray, qpitch: np.ndarray, rt: np.ndarray,
               rspan: np.ndarray, rpitch: np.ndarray, *, window: float = WINDOW) -> dict[str, Any] | None:
    """The alignment of one work's hits from its best coarse cell, refined.

    The pairs of the cell (:func:`align`) start from their median rate and
    offset; the line ``ref_time = offset + rate * query_time`` is then fitted
    by least squares to the pairs near it, twice, tightening the tolerance
    from :data:`OFFSET_BIN` to :data:`OFFSET_TOLERANCE`; pairs must also agree
    on the pitch shift and, within :data:`PAIR_RATE_TOLERANCE`, on the rate.

    Parameters
    ----------
    qt, qspan, qpitch : float ``[shape=(p,)]`` query anchor time (s), span (s), pitch (semitones) of each pair
    rt, rspan, rpitch : the same for the reference side
    window : seconds of query the count is taken over

    Returns
    -------
    dict or None
        ``aligned`` (distinct query anchor peaks in the best ``window``),
        ``total`` (over the whole query), ``rate`` (reference seconds per
        query second), ``offset`` (reference time at query time 0, s),
        ``shift`` (pitch shift of the query, semitones), ``query_start``,
        ``ref_start``, ``duration`` (s); ``None`` with fewer than
        :data:`MIN_ALIGNED` pairs.
    """
    if len(qt) < MIN_ALIGNED:
        return None
    pair_rate = rspan / np.maximum(qspan, 1e-6)
    shift_all = qpitch - rpitch
    rate = float(np.median(pair_rate))
    off = rt - rate * qt
    a0 = float(np.median(off))
    ok = np.ones(len(qt), bool)
    for tol in (4 * OFFSET_BIN, OFFSET_BIN, OFFSET_TOLERANCE):
        ok = (np.abs(off - a0) <= tol) & (np.abs(np.log(pair_rate / rate)) <= np.log1p(PAIR_RATE_TOLERANCE))
        if ok.sum() < MIN_ALIGNED:
            return None
        shift = float(np.median(shift_all[ok]))
        ok &= np.abs(shift_all - shift) <= SHIFT_TOLERANCE
        if ok.sum() < MIN_ALIGNED:
            return None
        if np.ptp(qt[ok]) > 1.0:  # the rate is measured over the query's length, not by one triplet
            rate, a0 = (float(v) for v in np.polyfit(qt[ok], rt[ok], 1))
            rate = float(np.clip(rate, 1 / MAX_RATE, MAX_RATE))
        off = rt - rate * qt
        a0 = float(np.median(off[ok]))
    ok &= np.abs(off - a0) <= OFFSET_TOLERANCE
    # one vote per peak: the triplets of one anchor peak (and the probes of one
    # hash) are one coincidence, not many
    times = np.unique(qt[ok])
    n_ref = len(np.unique(rt[ok]))
    if min(len(times), n_ref) < MIN_ALIGNED:
        return None
    aligned, _ = _windowed_count(times, window)
    aligned = min(aligned, n_ref)
    q0, q1 = float(times[0]), float(times[-1])
    return {"aligned": aligned, "total": int(min(len(times), n_ref)), "rate": rate, "offset": a0,
            "shift": shift, "query_start": q0, "ref_start": a0 + rate * q0, "duration": q1 - q0}


def align(hashes: np.ndarray, table: PostingsTable, *, feature: str, top: int = AUDIO_TOP,
          exclude: int | None = None, window: float = WINDOW) -> list[Evidence]:
    """Per-work fingerprint evidence for one query: look up, pick candidate works, align each.

    Parameters
    ----------
    hashes : ``[shape=(n,)]`` of :data:`~scanner.features.fingerprint.HASH_DTYPE`
    table : the index's postings
    feature : feature name, copied into the evidence
    top : candidate works aligned (the ones with most distinct hashes hit)
    exclude : a work passed over (a reference queried against its own index, for the null)
    window : seconds the aligned count is taken over

    Returns
    -------
    list of Evidence, most aligned first; ``raw`` is the aligned-hash count and
    ``detail`` the locator: ``query_start``, ``ref_start``, ``duration`` (s),
    ``rate``, ``pitch_shift`` (semitones), ``aligned``
    """
    if not len(hashes) or not len(table):
        return []
    q, r = lookup(hashes, table)
    if exclude is not None and len(r):
        keep = table.work[r] != exclude
        q, r = q[keep], r[keep]
    if not len(q):
        return []
    # loose filters first: a pair of a copy agrees on rate and pitch within the ranges looked for
    rate = table.span[r] / np.maximum(hashes["span"][q], 1e-6)
    shift = hashes["pitch"][q] - table.pitch[r]
    keep = (rate <= MAX_RATE * (1 + PAIR_RATE_TOLERANCE)) & (rate >= 1 / (MAX_RATE * (1 + PAIR_RATE_TOLERANCE))) \
        & (np.abs(shift) <= MAX_SHIFT + SHIFT_TOLERANCE)
    q, r = q[keep], r[keep]
    if not len(q):
        return []
    rate = rate[keep]
    work = table.work[r].astype(np.int64)
    # coarse vote, all works at once: each pair votes for its own rate (ratio of
    # spans) and the reference time it puts at the query's middle (where an error
    # in that rate moves it least); cells are COARSE_RATE by COARSE_OFFSET
    qt, rt = hashes["t"][q].astype(np.float64), table.t[r].astype(np.float64)
    mid = 0.5 * float(hashes["t"].min() + hashes["t"].max())
    rb = np.floor(np.log(rate) / np.log1p(COARSE_RATE)).astype(np.int64)
    mb = np.floor((rt + rate * (mid - qt)) / COARSE_OFFSET).astype(np.int64)
    rb -= rb.min()
    mb -= mb.min()
    n_rb, n_mb = int(rb.max()) + 2, int(mb.max()) + 2
    works, wd = np.unique(work, return_inverse=True)
    cell = (wd * n_rb + rb) * n_mb + mb
    cells, counts = np.unique(cell, return_counts=True)

    def count_at(c: np.ndarray) -> np.ndarray:
        i = np.minimum(np.searchsorted(cells, c), len(cells) - 1)
        return np.where(cells[i] == c, counts[i], 0)

    # 2 x 2 windows of cells: an alignment near a cell's edge is not split
    score = counts + count_at(cells + 1) + count_at(cells + n_mb) + count_at(cells + n_mb + 1)
    cw = cells // (n_rb * n_mb)
    best = np.full(len(works), -1, np.int64)
    order = np.lexsort((-score, cw))  # per work, best window first
    first = np.r_[0, np.flatnonzero(np.diff(cw[order])) + 1]
    best[cw[order[first]]] = cells[order[first]]
    best_score = np.zeros(len(works), np.int64)
    best_score[cw[order[first]]] = score[order[first]]
    chosen = np.argsort(-best_score, kind="stable")[:top]
    chosen = chosen[best_score[chosen] >= MIN_ALIGNED]
    # each chosen work's pairs in its best window, with a cell of margin around it
    is_chosen = np.zeros(len(works), bool)
    is_chosen[chosen] = True
    r0, m0 = (best[wd] // n_mb) % n_rb, best[wd] % n_mb
    near = is_chosen[wd] & (rb >= r0 - 1) & (rb <= r0 + 2) & (mb >= m0 - 1) & (mb <= m0 + 2)
    sel_all = np.flatnonzero(near)
    sel_all = sel_all[np.argsort(wd[sel_all], kind="stable")]
    bounds = np.searchsorted(wd[sel_all], np.arange(len(works) + 1))
    out = []
    for w in chosen:
        sel = sel_all[bounds[w]:bounds[w + 1]]
        qi, ri = q[sel], r[sel]
        w = works[w]
        found = align_work(hashes["t"][qi].astype(np.float64), hashes["span"][qi].astype(np.float64),
                           hashes["pitch"][qi].astype(np.float64), table.t[ri].astype(np.float64),
                           table.span[ri].astype(np.float64), table.pitch[ri].astype(np.float64), window=window)
        if found is None:
            continue
        detail = {"query_start": round(found["query_start"], 3), "ref_start": round(found["ref_start"], 3),
                  "duration": round(found["duration"], 3), "rate": round(found["rate"], 4),
                  "pitch_shift": round(found["shift"], 2), "aligned": found["aligned"],
                  "aligned_total": found["total"]}
        out.append(Evidence(int(w), feature, float(found["aligned"]), -float(found["aligned"]), 0, 0, -1, detail))
    out.sort(key=lambda e: -e.raw)
    return out


def postings_null_scores(table: PostingsTable, *, feature: str, skip: Sequence[int] = (),
                         n_queries: int = NULL_QUERIES, seconds: float = WINDOW, top: int = AUDIO_TOP,
                         seed: int = 0) -> np.ndarray:
    """Aligned-hash counts of chance candidates: reference excerpts aligned against the other works.

    Each sampled work gives an excerpt of ``seconds`` at a random offset (its
    hashes there, times from the excerpt's start), aligned like a scan
    (:func:`align`) against the index less itself. Each of the ``top``
    candidates gives a score (0 when fewer were found).

    Parameters
    ----------
    table : the index's postings
    skip : works left out of the sample (featureless ones)
    n_queries : excerpts sampled (works are reused when fewer)

    Returns
    -------
    float64 ``[shape=(n_queries * top,)]`` aligned counts (empty with fewer than 2 works)
    """
    rng = np.random.default_rng(seed)
    works = np.setdiff1d(np.unique(table.work), np.asarray(skip, np.int64))
    if len(works) < 2:
        return np.zeros(0)
    rows_of = WorkRows(table.work)
    scores = np.zeros((n_queries, top))
    for j, w in enumerate(rng.choice(works, n_queries, replace=len(works) < n_queries)):
        rows = rows_of(w)
        t = table.t[rows]
        t0 = rng.uniform(float(t.min()), max(float(t.min()), float(t.max()) - seconds))
        rows = rows[(t >= t0) & (t < t0 + seconds)]
        q = table.hashes(rows)
        q["t"] -= t0
        raw = [e.raw for e in align(q, table, feature=feature, top=top, exclude=int(w))][:top]
        scores[j, :len(raw)] = raw
    return scores.ravel()


# --- the kind: what the index keeps, the null, the judge ------------------------------


def bounded_tail(null: dict[str, Any], scores: np.ndarray) -> dict[str, Any]:
    """Keep a fitted exponential tail no heavier than twice what its own sample allows.

    A body that does not fall off before the sample ends (a small library:
    chance counts bunched at a few values) gives no slope, and the fitted
    scale runs to its cap, far heavier than the sample: ``n`` chance scores
    whose largest is ``m`` say ``P(X > m)`` is about ``1 / n``, i.e. a scale
    near ``(m + 1 - u) / ln(p_u n)``. Twice that is kept as the bound (the
    tail beyond the sample is unknown), before the usual widening.
    """
    if null.get("prior") or not len(scores):
        return null
    u, p_u, n = null["threshold"], null["p_threshold"], len(scores)
    if p_u * n <= np.e:
        return null
    bound = 2.0 * (float(scores.max()) + 1.0 - u) / np.log(p_u * n)
    if bound < null["scale"]:
        null = {**null, "scale_fitted": null["scale"], "scale": max(bound, pol.MIN_INLIER_SCALE)}
    return null


class Postings(FeatureKind):
    """Hash keys, any number per item, each with a time; aligned per work."""

    name = "postings"
    raw_kind = "aligned_hashes"
    has_arrays = True

    def empty(self, spec: dict[str, Any]) -> np.ndarray:
        return np.zeros(0, np.uint32)

    def read(self, staged: Staged) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]] | None:
        if not staged.path(".npz").exists():
            return None
        arrays = staged.load_npz(".npz")
        return arrays.pop("key"), staged.load_npy(".rows.npy"), arrays

    def write(self, staged: Staged) -> int:
        """Postings as plain arrays sorted by key (a lookup is a binary search): rows and npz."""
        keys, rows = staged.final()
        order = np.argsort(keys, kind="stable")
        staged.save_npy(".rows.npy", np.ascontiguousarray(rows[order], np.int32))
        staged.save_npz(".npz", {"key": np.ascontiguousarray(keys[order], np.uint32),
                                 **{k: np.ascontiguousarray(v[order]) for k, v in staged.arrays().items()}})
        staged.drop(".faiss")
        return int(len(keys))

    def stored(self, index: IndexFiles, name: str) -> int:
        return len(index.landmarks(name).get("key", ()))

    def declare(self, writer: Writer, feat: Featurizer) -> None:
        """Present even when no work has audio: audio scans check against none."""
        codes, extra = feat.index_rows(np.zeros(0, feat.hash_dtype))  # type: ignore[attr-defined]
        writer.add_vectors(feat.identity(), codes, np.zeros(0, np.int32), extra=extra)

    def fit_null(self, writer: Writer, name: str, *, featureless: np.ndarray,
                 chance_pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, Any]:
        vecs, rows = writer.vectors(name)
        table = PostingsTable.from_arrays(vecs, rows[:, 0], writer.extras(name))
        scores = postings_null_scores(table, feature=name, skip=featureless)
        # candidates that aligned at all: the empty slots of a small library
        # would pile up at 0 and make the tail look steeper than it is
        scores = scores[scores > 0]
        return bounded_tail({**pol.fit_inlier_null(scores, candidates=AUDIO_TOP, prior=pol.PRIOR_ALIGNED),
                             "window": WINDOW}, scores)

    def open(self, index: IndexFiles, feat: Featurizer, *, plan: Plan | None = None) -> Judge:
        return PostingsJudge(index, feat)


class PostingsJudge(Judge):
    """A postings feature of an open index: its table loaded, each input aligned against it."""

    def __init__(self, index: IndexFiles, feat: Featurizer):
        self.index, self.feat = index, feat
        extra = index.landmarks(feat.name)
        self.table = PostingsTable.from_arrays(extra["key"], np.asarray(index.rows(feat.name))[:, 0], extra)

    def evidence(self, batch: Sequence[Prepared]) -> list[tuple[list[Evidence], np.ndarray] | None]:
        feat = self.feat
        null = self.index.null[feat.name]
        out: list[tuple[list[Evidence], np.ndarray] | None] = [None] * len(batch)
        for i, p in enumerate(batch):
            if p.error is not None or feat.name not in p.prepared:
                continue
            hashes = p.prepared[feat.name]
            evs = align(hashes, self.table, feature=feat.name)
            if not evs:
                continue
            # the count is over the best window of the null's length; a longer
            # query has that many more windows to find a chance alignment in
            length = float(hashes["t"].max() - hashes["t"].min()) if len(hashes) else 0.0
            windows = max(1.0, length / null.get("window", WINDOW))
            out[i] = (evs, pol.expected_inliers(np.array([e.raw for e in evs]), null) * windows)
        return out
