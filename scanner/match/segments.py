"""Aligned segments (``audio-melody``): dense windows, any number per item, aligned in time per work.

Stored as dense rows are (:class:`scanner.match.dense.Dense`: ``<feature>.faiss``
and ``<feature>.rows.npy``, a window's start in its locator); the manifest
names them ``dense`` with ``codes_per_item`` 0. A query's key-invariant windows
(:func:`scanner.features.melody.segments`, 12 pitch-class shifts each) are
searched like any dense rows; their neighbours only *propose* alignments. Each
hit of a query window (start ``qt``, shift ``s``) on a reference window (start
``rt``) of work ``w`` votes, for every tempo ratio ``rate`` looked for, for the
line

    ``ref_time = offset + rate * query_time``

(:func:`candidate_lines`; one vote per reference window and cell, so a static
passage hit by many query windows does not outvote a line through a melody).
The best-voted lines of the best-voted works are then scored frame by frame
(:func:`line_score`): the query's chroma frames (a quarter second each,
zero-mean and unit length) against the reference's (:class:`WorkFrames` puts
them back together from its window rows) along the line, each frame's cosine
with the reference frame the line puts it on, summed over the best span of
the query (:data:`SPANS`: the longest the query fills). A re-performed melody
keeps its notes frame after frame for the whole span; an unrelated melody
over the same chords agrees on some frames, not on most. The sum (aligned
frames, a soft count) is the score. Its chance distribution is fitted at
build time on the same statistic: reference excerpts of :data:`NULL_EXCERPT`
seconds, cut into query windows with all 12 shifts, searched and aligned like
a query against the index less their own work (:func:`melody_null_scores`,
:func:`fit_melody_null`); a score's significance is the chance that the best
chance alignment of a query scores as much (:func:`expected_chance`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from scanner.features.base import Featurizer
from scanner.features.melody import FRAME, QUERY_HOP, REF_HOP, WINDOW, segments, window_frames
from scanner.features.prepared import Prepared
from scanner import search
from scanner.search_choice import Plan
from scanner.match.base import K, Evidence, FeatureKind, IndexFiles, Judge, RowsByWork, Writer
from scanner.match.dense import Dense, reconstruct

#: Tempo ratios looked for (reference seconds per query second): a re-performance
#: up to 10% faster or slower.
RATES = tuple(np.round(np.arange(0.90, 1.1001, 0.02), 4))
#: Seconds of query the score is summed over: the longest of these the query
#: fills (a longer span holds more evidence; the null is fitted for each).
SPANS = (10.0, 20.0, 30.0)
#: Works whose best line is scored per query.
MELODY_TOP = 16
#: Lines scored per work (its best-voted (shift, rate, offset) cells).
LINES_PER_WORK = 2
#: Offset cells of the vote (seconds of reference time at query time 0): a
#: window hit lies within half a reference hop of its line.
OFFSET_CELL = REF_HOP
#: Reference frames either side of a voted offset cell searched by :func:`line_score`.
OFFSET_SLACK = 4
#: A reference frame counts within this many frames of where the line puts it
#: (a note a little early or late, and the rate grid's step).
DILATE = 1
#: Reference excerpts sampled to fit the null, and their length (seconds).
NULL_QUERIES = 200
NULL_EXCERPT = 30.0
#: Fewer works to sample excerpts from than this and the prior null is used.
MIN_NULL_WORKS = 10
#: Prior null per frame of the span (indexes too small to fit one): the best
#: chance line's mean frame cosine centred at 0.55 with a spread of 0.1 (the
#: wesnoth-music library's, 0.49-0.52 and 0.09, a little widened).
PRIOR_FRAME_MEAN = 0.55
PRIOR_FRAME_SPREAD = 0.1


def work_frames(starts: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """A work's (or a query's) chroma frames, put back together from its window rows.

    Rows are windows of :data:`~scanner.features.melody.WINDOW` seconds
    starting at ``starts``; frame ``f`` is taken from the last window that
    starts at or before it and still covers it. Frames no window covers are zero.

    Parameters
    ----------
    starts : ``[shape=(n,)]`` seconds, window starts (any order)
    vectors : ``[shape=(n, dim)]`` the windows' rows, unshifted

    Returns
    -------
    float32 ``[shape=(12, t)]`` frames from time 0, each unit-length or zero
    """
    width = int(round(WINDOW / FRAME))
    if not len(starts):
        return np.zeros((12, 0), np.float32)
    first = np.rint(np.asarray(starts, np.float64) / FRAME).astype(np.int64)
    order = np.argsort(first, kind="stable")
    first = first[order]
    patches = window_frames(np.asarray(vectors)[order])  # (n, 12, width)
    out = np.zeros((12, int(first[-1]) + width), np.float32)
    for f0, p in zip(first, patches):  # later windows overwrite the overlap: each frame from its last window
        out[:, f0:f0 + width] = p
    return out


def candidate_lines(D: np.ndarray, I: np.ndarray, rows: np.ndarray, query_start: np.ndarray,
                    query_shift: np.ndarray, *, ref_hop: float = REF_HOP, top: int = MELODY_TOP,
                    lines: int = LINES_PER_WORK, exclude: int | None = None) -> list[tuple[int, int, float, float]]:
    """Alignments worth scoring: a vote of the window hits over (work, shift, rate, offset).

    Parameters
    ----------
    D, I : ``[shape=(n, k)]`` the query windows' search results (cosines, index rows; -1 = none)
    rows : int32 ``[shape=(n_rows, 2)]`` row -> (work_id, window number)
    query_start : ``[shape=(n,)]`` seconds; query_shift : ``[shape=(n,)]`` pitch-class shift of each row
    ref_hop : seconds between a reference's windows
    top : works kept (the best-voted)
    lines : cells kept per work
    exclude : a work passed over (a reference queried against its own index)

    Returns
    -------
    list of ``(work_id, shift, rate, offset)``, best-voted first; ``offset`` in
    seconds of reference time at query time 0
    """
    q, j = np.nonzero(I >= 0)
    if not len(q):
        return []
    r = I[q, j]
    work = rows[r, 0].astype(np.int64)
    keep = work != exclude if exclude is not None else np.ones(len(r), bool)
    weight = np.maximum(D[q, j], 0.0)
    keep &= weight > 0
    q, r, work, weight = q[keep], r[keep], work[keep], weight[keep]
    if not len(q):
        return []
    qt = np.asarray(query_start, np.float64)[q]
    rt = rows[r, 1].astype(np.float64) * ref_hop
    shift = np.asarray(query_shift, np.int64)[q]
    rates = np.asarray(RATES)
    # every hit votes once per rate, for the offset cell its line passes through
    off = np.floor((rt[:, None] - rates[None, :] * qt[:, None]) / OFFSET_CELL).astype(np.int64)  # (hits, rates)
    n_rates = len(rates)
    works, wi = np.unique(work, return_inverse=True)
    o0 = off.min()
    n_off = int(off.max() - o0) + 2
    cell = ((wi[:, None] * 12 + shift[:, None]) * n_rates + np.arange(n_rates)[None, :]) * n_off + (off - o0)
    # one vote per reference window and cell (its best hit there): a line through a
    # melody passes through one reference window after another, while a static
    # passage is hit by many query windows on a few reference windows
    voter = np.repeat(r.astype(np.int64), n_rates)
    flat, w_flat = cell.ravel(), np.repeat(weight, n_rates)
    order = np.lexsort((-w_flat, voter, flat))
    first = np.r_[True, (np.diff(flat[order]) != 0) | (np.diff(voter[order]) != 0)]
    flat, w_flat = flat[order][first], w_flat[order][first]
    cells, inv = np.unique(flat, return_inverse=True)
    votes = np.bincount(inv, weights=w_flat)
    # a line near a cell's edge is not split: each cell also counts its next one
    nxt = np.searchsorted(cells, cells + 1)
    votes = votes + np.where((nxt < len(cells)) & (cells[np.minimum(nxt, len(cells) - 1)] == cells + 1),
                             votes[np.minimum(nxt, len(cells) - 1)], 0.0)
    order = np.argsort(-votes, kind="stable")
    out: list[tuple[int, int, float, float]] = []
    per_work: dict[int, int] = {}
    for c in order:
        w = int(works[cells[c] // (12 * n_rates * n_off)])
        if per_work.get(w, 0) >= lines or (w not in per_work and len(per_work) >= top):
            continue
        rest = cells[c] % (12 * n_rates * n_off)
        s, rest = divmod(rest, n_rates * n_off)
        k, o = divmod(rest, n_off)
        per_work[w] = per_work.get(w, 0) + 1
        out.append((w, int(s), float(rates[k]), float((o + o0 + 1) * OFFSET_CELL)))  # the pair's middle
        if len(per_work) >= top and all(v >= lines for v in per_work.values()):
            break
    return out


def line_score(query: np.ndarray, ref: np.ndarray, *, shift: int, rate: float, offset: float,
               spans: Sequence[float]) -> dict[float, dict[str, Any]]:
    """The best lines near ``(rate, offset)``: query frames against reference frames, summed over spans.

    Lines ``ref_frame = o + round(rate' * query_frame)`` are tried for every
    rate of :data:`RATES` and offsets ``o`` within half an :data:`OFFSET_CELL`
    plus :data:`OFFSET_SLACK` frames of the voted line (pivoting on the
    query's middle, where its hits sit on average); each query frame scores
    its cosine with the best reference frame within :data:`DILATE` frames of
    the line, and a line's score over a span is the largest sum over that
    many seconds of consecutive query frames (all of them, when the query is
    shorter).

    Parameters
    ----------
    query : ``[shape=(12, n)]`` the query's frames (:func:`work_frames`), unshifted
    ref : ``[shape=(12, m)]`` the work's frames from time 0
    shift : pitch classes the query is rolled up by (the window rows' ``shift``)
    rate, offset : the voted line (reference seconds per query second; reference seconds at query time 0)
    spans : seconds of query summed

    Returns
    -------
    dict
        span -> the best line's ``score`` (summed cosine: aligned frames),
        ``frames`` (sounding query frames on it), ``mean`` (score per such
        frame), ``rate``, ``offset`` (s), ``query_start``, ``ref_start``,
        ``duration`` (s); spans without a line on the reference are left out.
    """
    n, m = query.shape[1], ref.shape[1]
    if not n or not m:
        return {}
    q = np.roll(query, shift, axis=0)
    t = np.arange(n)
    rates = np.asarray(RATES)
    # every rate, its offsets around the voted line's, pivoting on the query's middle
    # (where a vote's hits sit on average)
    slack = int(round(OFFSET_CELL / FRAME)) // 2 + OFFSET_SLACK
    centre = np.rint(offset / FRAME + (rate - rates) * 0.5 * (n - 1)).astype(np.int64)
    offs = centre[:, None] + np.arange(-slack, slack + 1)[None, :]  # (rates, offsets)
    lo = max(0, int(offs.min()) - DILATE)
    hi = min(m, int(offs.max() + np.ceil(rates.max() * (n - 1))) + DILATE + 1)
    if hi <= lo:
        return {}
    sim = q.T @ ref[:, lo:hi]  # (n, hi - lo)
    if DILATE:
        padded = np.pad(sim, ((0, 0), (DILATE, DILATE)), constant_values=-1.0)
        sim = np.lib.stride_tricks.sliding_window_view(padded, 2 * DILATE + 1, axis=1).max(axis=2)
    sounding = np.abs(query).sum(axis=0) > 0
    u = offs[:, :, None] + np.rint(rates[:, None, None] * t).astype(np.int64) - lo  # (rates, offsets, n)
    ok = (u >= 0) & (u < hi - lo) & sounding
    vals = np.where(ok, sim[t, np.clip(u, 0, hi - lo - 1)], 0.0)
    zero = np.zeros(vals.shape[:2] + (1,))
    csum = np.concatenate([zero, np.cumsum(vals, axis=2)], axis=2)
    ccount = np.concatenate([zero, np.cumsum(ok, axis=2)], axis=2)
    out: dict[float, dict[str, Any]] = {}
    for span in spans:
        w = min(int(round(span / FRAME)), n)
        sums = csum[:, :, w:] - csum[:, :, :-w]  # (rates, offsets, starts): spans starting at each frame
        k, i, s0 = np.unravel_index(int(np.argmax(sums)), sums.shape)
        frames = int(ccount[k, i, s0 + w] - ccount[k, i, s0])
        if not frames:
            continue
        score, o, rt = float(sums[k, i, s0]), int(offs[k, i]), float(rates[k])
        out[float(span)] = {"score": score, "frames": frames, "mean": score / frames, "rate": rt,
                            "offset": o * FRAME, "query_start": s0 * FRAME,
                            "ref_start": float((o + np.rint(rt * s0)) * FRAME), "duration": w * FRAME}
    return out


class WorkFrames:
    """Reference works' frames, put back together from the index's rows on demand (a few kept).

    Parameters
    ----------
    rows : int32 ``[shape=(n, 2)]`` row -> (work_id, window number), possibly memory-mapped
    vectors : row numbers (int64, sorted) -> their vectors ``[shape=(len, dim)]``
    keep : works whose frames are kept between calls
    """

    def __init__(self, rows: np.ndarray, vectors: Callable[[np.ndarray], np.ndarray], *, keep: int = 64):
        self.rows, self.vectors, self.keep = rows, vectors, keep
        self.work_rows = RowsByWork(rows[:, 0])
        self._cache: dict[int, np.ndarray] = {}

    def __call__(self, work_id: int) -> np.ndarray:
        """The work's frames from time 0 (:func:`work_frames`), ``[shape=(12, t)]``."""
        w = int(work_id)
        if w not in self._cache:
            if len(self._cache) >= self.keep:
                self._cache.pop(next(iter(self._cache)))
            sel = self.work_rows(w)
            loc = np.asarray(self.rows[sel, 1], np.float64)
            self._cache[w] = work_frames(loc * REF_HOP, self.vectors(sel)) if len(sel) else np.zeros((12, 0), np.float32)
        return self._cache[w]


def span_for(seconds: float, spans: Sequence[float] = SPANS) -> float:
    """The span a query of ``seconds`` is scored over: the longest of ``spans`` it fills, else the shortest."""
    fits = [s for s in spans if s <= seconds + 1e-6]
    return float(max(fits) if fits else min(spans))


def query_frames(item: np.ndarray) -> np.ndarray:
    """A query's frames from its unshifted window rows (:func:`work_frames`)."""
    base = item[item["shift"] == 0]
    return work_frames(base["start"], base["v"])


def _score_lines(lines: Sequence[tuple[int, int, float, float]], query: np.ndarray,
                 ref_frames: Callable[[int], np.ndarray], *, feature: str,
                 spans: Sequence[float]) -> dict[float, list[Evidence]]:
    """Each work's best line per span, as evidence (most aligned first)."""
    best: dict[float, dict[int, tuple[dict[str, Any], int]]] = {float(sp): {} for sp in spans}
    for w, s, rate, offset in lines:
        for sp, f in line_score(query, ref_frames(w), shift=s, rate=rate, offset=offset, spans=spans).items():
            if w not in best[sp] or f["score"] > best[sp][w][0]["score"]:
                best[sp][w] = (f, s)
    out: dict[float, list[Evidence]] = {}
    for sp, per_work in best.items():
        evs = []
        for w, (f, s) in per_work.items():
            transpose = (-s) % 12
            detail = {"query_start": round(f["query_start"], 2), "ref_start": round(f["ref_start"], 2),
                      "duration": round(f["duration"], 2), "rate": round(f["rate"], 3),
                      "transpose": int(transpose - 12 if transpose > 6 else transpose),
                      "aligned_frames": round(f["score"], 2), "frames": f["frames"],
                      "segment_score": round(f["mean"], 4)}
            evs.append(Evidence(int(w), feature, float(f["mean"]), 1.0 - float(f["mean"]),
                                int(round(f["ref_start"] / REF_HOP)), 0, -1, detail))
        evs.sort(key=lambda e: -e.detail["aligned_frames"])  # type: ignore[index]
        out[sp] = evs
    return out


def melody_evidence(D: np.ndarray, I: np.ndarray, rows: np.ndarray, item: np.ndarray,
                    ref_frames: Callable[[int], np.ndarray], *, feature: str, exclude: int | None = None,
                    top: int = MELODY_TOP, span: float | None = None) -> list[Evidence]:
    """Per-work melody evidence for one query: vote for lines, score the best ones frame by frame.

    Parameters
    ----------
    D, I : ``[shape=(len(item), k)]`` search results of the query's window rows
    rows : int32 ``[shape=(n_rows, 2)]`` row -> (work_id, window number)
    item : the query's rows (:data:`~scanner.features.melody.SEGMENT_DTYPE`)
    ref_frames : work id -> its frames from time 0 (:class:`WorkFrames`)
    feature : feature name, copied into the evidence
    exclude : a work passed over (for the null)
    top : works scored
    span : seconds of query summed (default: :func:`span_for` the query's length)

    Returns
    -------
    list of Evidence, one per work (its best line), most aligned first; ``raw``
    is the mean cosine of the span's frames, ``detail`` holds ``query_start``,
    ``ref_start``, ``duration`` (s), ``rate``, ``transpose`` (semitones, the
    query relative to the work), ``aligned_frames`` (the score), ``frames``
    (sounding frames of the span) and ``segment_score`` (mean cosine)
    """
    lines = candidate_lines(D, I, rows, item["start"], item["shift"], top=top, exclude=exclude)
    if not lines:
        return []
    query = query_frames(item)
    if span is None:
        span = span_for(query.shape[1] * FRAME)
    return _score_lines(lines, query, ref_frames, feature=feature, spans=(span,))[float(span)]


def query_rows(frames: np.ndarray) -> np.ndarray:
    """Query-style window rows (12 shifts, every :data:`QUERY_HOP`) of frames, as a scan makes them."""
    return segments(frames, hop=QUERY_HOP, shifts=12)


def melody_null_scores(rows: np.ndarray, ref_frames: WorkFrames,
                       search: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], *, feature: str,
                       skip: Sequence[int] = (), n_queries: int = NULL_QUERIES, excerpt: float = NULL_EXCERPT,
                       spans: Sequence[float] = SPANS, min_works: int = MIN_NULL_WORKS,
                       seed: int = 0) -> tuple[dict[float, np.ndarray], int]:
    """Scores of chance alignments: reference excerpts aligned against the other works, as a scan would.

    Each sampled work gives an excerpt of ``excerpt`` seconds (the whole work
    when shorter) at a random offset where most frames sound; its frames
    (from the work's rows) are cut into query rows with all 12 shifts
    (:func:`query_rows`), searched, and aligned against the index less the
    work itself (:func:`melody_evidence`), once per span. The best work's
    aligned frames is the excerpt's score for that span.

    Parameters
    ----------
    rows : the index's row map, (work_id, window number)
    ref_frames : the works' frames
    search : query rows -> ``(D, I)`` against the whole index
    skip : works left out of the sample (featureless ones)
    n_queries : excerpts sampled (works reused when fewer)
    excerpt : seconds per excerpt
    spans : spans scored
    min_works : fewer works with a long enough excerpt and nothing is sampled

    Returns
    -------
    scores : span -> float64 ``[shape=(m,)]``, one score per excerpt (0 when
        nothing aligned); empty with fewer than ``min_works`` works long enough
    works : works sampled from (those with a long enough sounding excerpt)
    """
    rng = np.random.default_rng(seed)
    works = np.unique(np.asarray(rows[:, 0]))
    skip_set = {int(x) for x in skip}
    width = int(round(excerpt / FRAME))
    shortest = int(round(min(spans) / FRAME))
    eligible = []
    for w in works.tolist():
        if w in skip_set:
            continue
        sounding = np.abs(ref_frames(w)).sum(axis=0) > 0
        n = min(width, len(sounding))
        if n >= shortest:
            ok = np.convolve(sounding, np.ones(n), "valid") >= 0.5 * n
            if ok.any():
                eligible.append((w, np.flatnonzero(ok), n))
    empty = {float(s): np.zeros(0) for s in spans}
    if len(works) < 2 or len(eligible) < min_works:
        return empty, len(eligible)
    scores = {float(s): np.zeros(n_queries) for s in spans}
    picks = rng.integers(len(eligible), size=n_queries)
    for i, p in enumerate(picks):
        w, starts, n = eligible[p]
        f0 = int(starts[rng.integers(len(starts))])
        item = query_rows(ref_frames(w)[:, f0:f0 + n])
        if not len(item):
            continue
        D, I = search(np.ascontiguousarray(item["v"], np.float32))
        I = np.where(np.linalg.norm(item["v"], axis=1)[:, None] > 0.5, I, -1)
        lines = candidate_lines(D, I, rows, item["start"], item["shift"], exclude=w)
        if not lines:
            continue
        for sp, found in _score_lines(lines, query_frames(item), ref_frames, feature=feature, spans=spans).items():
            scores[sp][i] = found[0].detail["aligned_frames"] if found else 0.0  # type: ignore[index]
    return scores, len(eligible)


def fit_melody_null(scores: dict[float, np.ndarray], works: int, *, excerpt: float = NULL_EXCERPT) -> dict[str, Any]:
    """The melody null: per span of :data:`SPANS`, the chance distribution of the best aligned frames.

    Each span's scores (:func:`melody_null_scores`) get :func:`scanner.policy.fit_score_null`; with fewer
    than :data:`MIN_NULL_WORKS` works to sample from (excerpts of a handful of
    works are not independent draws) or too few scores, the prior
    :data:`PRIOR_FRAME_MEAN` / :data:`PRIOR_FRAME_SPREAD` per frame of the span.

    Returns
    -------
    dict
        ``kind`` (``"aligned-frames"``), ``excerpt`` (s), ``works``, and
        ``spans``: span (str, seconds) -> model for :func:`scanner.policy.score_rate`
    """
    from scanner import policy as pol

    out: dict[str, Any] = {"kind": "aligned-frames", "excerpt": float(excerpt), "works": int(works), "spans": {}}
    for span in SPANS:
        x = scores.get(float(span), np.zeros(0))
        frames = span / FRAME
        prior = (PRIOR_FRAME_MEAN * frames, PRIOR_FRAME_SPREAD * frames)
        if works < MIN_NULL_WORKS:
            x = np.zeros(0)
        out["spans"][f"{span:g}"] = pol.fit_score_null(x, prior=prior)
    return out


def expected_chance(found: Sequence[Evidence], null: dict[str, Any], *, span: float,
                    query_seconds: float) -> np.ndarray:
    """Expected chance alignments at least as strong as each piece of evidence, for a query this long.

    The chance rate of each score under the null of the span it was summed
    over, times the query's length in the null's excerpts (a longer query has
    that many more places to find a chance alignment in).

    Parameters
    ----------
    found : evidence from :func:`melody_evidence` scored over ``span``
    null : the index's melody null (:func:`fit_melody_null`)
    span : seconds the scores were summed over (one of the null's spans)
    query_seconds : the query's length

    Returns
    -------
    float64 ``[shape=(len(found),)]``
    """
    from scanner import policy as pol

    model = null["spans"][f"{float(span):g}"]
    factor = max(1.0, query_seconds / float(null.get("excerpt", NULL_EXCERPT)))
    x = np.array([e.detail["aligned_frames"] for e in found], np.float64)  # type: ignore[index]
    return np.asarray(pol.score_rate(x, model), np.float64) * factor


# --- the kind: the null and the judge (stored as dense rows) --------------------------


class Segments(Dense):
    """Dense windows, any number per item: chroma frames aligned in time per work."""

    name = "segments"
    #: any number of windows per item, each a row of its own (not Dense's fixed rows per item)
    add = FeatureKind.add

    def fit_null(self, writer: Writer, name: str, *, featureless: np.ndarray,
                 chance_pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, Any]:
        """Reference excerpts aligned against the other works, as a scan would
        (:func:`melody_null_scores`), searched in an index of the rows to be written."""
        vecs, rows = writer.vectors(name)
        if not len(vecs):
            return fit_melody_null({}, 0)
        index, _ = search.build_faiss_index(np.ascontiguousarray(vecs, np.float32), "ip")
        frames = WorkFrames(rows, lambda ids: vecs[ids])
        scores, works = melody_null_scores(rows, frames, lambda q: search.knn(index, q, K), feature=name,
                                           skip=[int(w) for w in featureless])
        return fit_melody_null(scores, works)

    def open(self, index: IndexFiles, feat: Featurizer, *, plan: Plan | None = None) -> Judge:
        return SegmentsJudge(index, feat, plan or Plan())


class SegmentsJudge(Judge):
    """A segments feature of an open index; the works' frames read back from its faiss index as matches need them."""

    def __init__(self, index: IndexFiles, feat: Featurizer, plan: Plan):
        self.index, self.feat, self.plan = index, feat, plan
        index.faiss_index(feat.name)
        index.rows(feat.name)
        index.row_weights(feat.name)
        self.frames = WorkFrames(index.rows(feat.name), lambda ids: reconstruct(index.faiss_index(feat.name), ids))

    def evidence(self, batch: Sequence[Prepared]) -> list[tuple[list[Evidence], np.ndarray] | None]:
        """Every window is searched like any dense row; the hits vote for lines
        (work, transposition, tempo ratio, offset) and the best lines are
        scored frame by frame against the works' frames (:func:`melody_evidence`);
        the chance of each score comes from the null fitted on the same statistic
        at build time."""
        feat = self.feat
        out: list[tuple[list[Evidence], np.ndarray] | None] = [None] * len(batch)
        pos = [i for i, p in enumerate(batch)
               if p.error is None and feat.name in p.prepared and len(p.prepared[feat.name])]
        if not pos:
            return out
        items = [batch[i].prepared[feat.name] for i in pos]
        vecs = feat.embed(items)
        D, I = self.plan.knn(self.index.faiss_index(feat.name), vecs, K)
        I[~feat.informative(vecs)] = -1  # silent windows are no evidence
        rows = self.index.rows(feat.name)
        null = self.index.null[feat.name]
        end = np.cumsum([len(p) for p in items])
        spans = [float(k) for k in null["spans"]]
        for i, item, hi in zip(pos, items, end):
            lo = hi - len(item)
            seconds = float(item["start"].max()) + feat.window  # type: ignore[attr-defined]
            span = span_for(seconds, spans)
            found = melody_evidence(D[lo:hi], I[lo:hi], rows, item, self.frames, feature=feat.name, span=span)
            if found:
                out[i] = (found, expected_chance(found, null, span=span, query_seconds=seconds))
        return out
