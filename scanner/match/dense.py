"""Dense vectors (``image-clip``): L2-normalised float32 rows, matched by cosine.

The index keeps ``<feature>.faiss`` (exact flat search below a size
threshold, an inverted file above it, a compressed one past
:data:`scanner.search.COMPRESSED_MIN_BYTES`, chosen by
:func:`scanner.search.build_faiss_index`, its parameters and measured
recall in the manifest entry's ``index``) and ``<feature>.rows.npy``. Only
this kind can be built from a vector stream larger than memory.

Query-adaptive null (features in :data:`scanner.features.QUERY_ADAPTIVE`, the learned
copy descriptor): a descriptor's cosine is not comparable across queries. Clip art on
white is close to many works at once (raw cosine 0.69 to some unrelated work), a busy
photograph to none; one threshold fails both. So each distance is read against the
query's own neighbourhood, as the SSCD paper's score normalisation does with a
background set, here the index's own works: ``d' = d - r + c``, where ``r`` is the
distance to the query's :data:`ADAPT_RANK`-th nearest work after its nearest (the
nearest may be the copied work itself) and ``c`` the median of ``r`` over the index's
own rows. A generic query (``r`` small) is held to a closer match; the null is fitted
at build on ``d'`` of pairs of different works, each row's ``r`` found among the other
works of the index, exactly as a query's: a normal law for its bulk and, where the pairs
reach far enough, their lower tail as measured (:func:`scanner.policy.fit_tail`), which is
far lighter than the normal law's and decides at scale.

Aligned looks (a copy descriptor's index whose null measured them, :data:`ALIGNED_LOOKS`):
a work pasted into a larger output, or cropped, shares little of the whole picture's
descriptor, while a landmark feature's geometry places it (a similarity transform
from a few keypoints). The descriptor then looks again at the input cut to where a
work was placed, in the work's frame (:meth:`scanner.features.base.Featurizer.cut`), and
compares the cut with that work alone: the chance is a plain pair's (the pairs' own cosine
distances, their lower tail as measured over at least one decade) times the looks the
judge makes (:data:`ALIGNED_LOOKS`, whatever was placed or cut), not the search of every
work. A placement covering most of the input (:data:`ALIGNED_MAX_SHARE`) is the whole
picture's comparison, already made against the query-adaptive null, and is not cut; a
collapsed transform places nothing (:data:`scanner.match.landmarks.PLACED_SCALES`). The
query-adaptive shift is no guide here:
a cut is mostly ground where the work reaches past the picture, far from every work, and
the shift would read that as close. Such a match is conditional on the geometry that placed
it and is never fused with it (:mod:`scanner.match.fusion`).

Region looks: where the landmark transform collapses (a repeated element, dots or checks,
pairs with shifts of itself), the landmark feature offers the part of the input its inliers
span instead (:func:`scanner.match.landmarks.inlier_region`). That cut is all input, no ground,
and no geometry vouches for it (chance inliers fall on any busy part of a picture, and a crop
of a busy picture is close to a pattern: read as an aligned look, 4 of openclipart's 300
REPORT negatives went to review), so it is read as a whole picture is: its distance shifted
by its own neighbourhood, its chance counted against every row of the index, times the looks.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from scanner import policy as pol
from scanner.features import QUERY_ADAPTIVE
from scanner.features.base import Featurizer
from scanner.features.prepared import Prepared
from scanner.match.base import Evidence, IndexFiles, Judge, Placement, RowsByWork, Staged, WorkRows, Writer
from scanner.match.rows import RowsJudge, RowsKind
from scanner.search_choice import Plan


#: The nearest other work whose distance a query's distances are read against (see above).
ADAPT_RANK = 5
#: Rows whose neighbourhood is searched to fit a query-adaptive null (a sample past this).
ADAPT_ROWS = 4000
#: Works placed by a landmark feature that a copy descriptor looks at again per input (see above).
ALIGNED_LOOKS = 3
#: A placement covering at least this share of the input is not looked at again: that is the
#: comparison the whole picture made already, against its query-adaptive null (read against the
#: plain pairs' instead it sent an apple, as a full moon, to review).
ALIGNED_MAX_SHARE = 0.8
#: Decades of measured tail the aligned looks' null needs (one: 10,000 pairs, about 150 works;
#: a smaller index makes no aligned looks).
ALIGNED_TAIL_DECADES = 1


def reconstruct(index: Any, ids: np.ndarray) -> np.ndarray:
    """Stored vectors of a dense faiss index by row number, float32 ``[shape=(len(ids), d)]``
    (an inverted file gets its id map built on first use)."""
    import faiss

    ids = np.ascontiguousarray(ids, np.int64)
    try:
        return index.reconstruct_batch(ids)
    except RuntimeError:
        faiss.extract_index_ivf(index).make_direct_map()
        return index.reconstruct_batch(ids)


def other_work_distance(vecs: np.ndarray, works: np.ndarray, idx: np.ndarray, *, rank: int = ADAPT_RANK,
                        spare: int = 32) -> np.ndarray:
    """Distance (``1 - cosine``) from rows ``idx`` to their ``rank``-th nearest work other than their own.

    Parameters
    ----------
    vecs : float32 ``[shape=(n, d)]``, L2-normalised; works : int ``[shape=(n,)]`` each row's work
    idx : int ``[shape=(m,)]`` the rows asked about
    rank : int >= 1; spare : extra neighbours searched for works with several rows

    Returns
    -------
    float64 ``[shape=(m,)]``; the farthest found where fewer than ``rank`` other works
    were within reach, NaN where none was
    """
    import faiss

    out = np.full(len(idx), np.nan)
    if len(idx) == 0 or len(vecs) < 2:
        return out
    k = min(len(vecs), rank + 1 + spare)
    D, I = faiss.knn(np.ascontiguousarray(vecs[idx], np.float32), np.ascontiguousarray(vecs, np.float32), k,
                     metric=faiss.METRIC_INNER_PRODUCT)
    for q, (d_row, i_row) in enumerate(zip(D, I)):
        seen: set[int] = {int(works[idx[q]])}
        for s, i in zip(d_row, i_row):
            if i < 0 or int(works[i]) in seen:
                continue
            seen.add(int(works[i]))
            out[q] = 1.0 - float(s)
            if len(seen) > rank:
                break
    return out


def nearest_other_works(vecs: np.ndarray, works: np.ndarray, rows: np.ndarray, n: int, *,
                        spare: int = 32) -> np.ndarray:
    """The ``n`` works nearest to one work's rows, other than its own, nearest first.

    Parameters
    ----------
    vecs : float32 ``[shape=(m, d)]``, L2-normalised; works : int ``[shape=(m,)]`` each row's work
    rows : int ``[shape=(r,)]`` the asking work's rows (a work is as near as its nearest row)
    n : works wanted; spare : extra neighbours searched for works with several rows

    Returns
    -------
    int64 ``[shape=(<= n,)]`` work ids
    """
    import faiss

    if len(rows) == 0 or len(vecs) < 2:
        return np.zeros(0, np.int64)
    k = min(len(vecs), n + len(rows) + spare)
    D, I = faiss.knn(np.ascontiguousarray(vecs[rows], np.float32), np.ascontiguousarray(vecs, np.float32), k,
                     metric=faiss.METRIC_INNER_PRODUCT)
    own = int(works[rows[0]])
    out: list[int] = []
    for j in np.argsort(-D, axis=None, kind="stable"):   # every row's neighbours, nearest first
        i = int(I.flat[j])
        if i >= 0 and int(works[i]) != own and int(works[i]) not in out:
            out.append(int(works[i]))
            if len(out) == n:
                break
    return np.array(out, np.int64)


def adaptive_distances(found: Sequence[Evidence], adapt: dict[str, Any]) -> np.ndarray:
    """Each evidence's distance read against the query's neighbourhood: ``d - r + c`` (module docstring);
    ``r`` is the :data:`ADAPT_RANK`-th work after the nearest in ``found`` (sorted closest first,
    one entry per work), the farthest there when fewer; unchanged when ``found`` holds one work."""
    return np.array([e.distance for e in found], np.float64) - adaptive_shift(found, adapt)


def adaptive_shift(found: Sequence[Evidence], adapt: dict[str, Any]) -> float:
    """``r - c``, what :func:`adaptive_distances` takes off every distance of one query's ``found``
    (sorted closest first, one entry per work); 0 when it holds one work."""
    if len(found) < 2:
        return 0.0
    return found[min(int(adapt["rank"]), len(found) - 1)].distance - float(adapt["centre"])


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
        if name not in QUERY_ADAPTIVE:
            return pol.fit_null(d, prior=pol.PRIOR_COSINE_DISTANCE)
        # each pair read as a query (row a) against the index: its distance shifted by a's neighbourhood
        asked = np.unique(a)
        if len(asked) > ADAPT_ROWS:
            asked = np.sort(np.random.default_rng(0).choice(asked, ADAPT_ROWS, replace=False))
        r = np.full(len(kept), np.nan)
        r[asked] = other_work_distance(kept, rows[keep, 0], asked)
        use = ~np.isnan(r[a])
        centre = float(np.nanmedian(r[asked])) if np.isfinite(r[asked]).any() else 0.0
        shifted = d[use] - r[a[use]] + centre
        null = pol.fit_null(shifted, prior=pol.PRIOR_COSINE_DISTANCE)
        # the bulk's normal law is far too heavy in this descriptor's tail, which decides at scale
        tail = pol.fit_tail(shifted) if not null.get("prior") else None
        # aligned looks: plain distances, their tail measured over one decade at least
        aligned_tail = pol.fit_tail(d, decades=ALIGNED_TAIL_DECADES)
        aligned = {**pol.fit_null(d, prior=pol.PRIOR_COSINE_DISTANCE), "tail": aligned_tail} if aligned_tail else None
        return {**null, "adaptive": {"rank": ADAPT_RANK, "centre": centre, "rows": int(len(asked))},
                **({"tail": tail} if tail else {}), **({"aligned": aligned} if aligned else {})}

    def fusable(self, name: str) -> bool:
        """A copy descriptor (query-adaptive) fuses with landmarks; a semantic embedding does not."""
        return name in QUERY_ADAPTIVE

    def pair_scores(self, writer: Writer, name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Closeness of works ``a[i]`` and ``b[i]`` as a scan reads it: minus the query-adaptive
        distance of their closest rows, work ``a`` the query (module docstring)."""
        vecs, rows = writer.vectors(name)
        works = rows[:, 0]
        rows_of = WorkRows(works)
        out = np.full(len(a), -np.inf)
        asked = np.array(sorted({int(rows_of(w)[0]) for w in a if len(rows_of(w))}), np.int64)
        r = dict(zip(asked.tolist(), other_work_distance(vecs, works, asked))) if len(asked) else {}
        for i, (wa, wb) in enumerate(zip(a.tolist(), b.tolist())):
            ra, rb = rows_of(wa), rows_of(wb)
            if not len(ra) or not len(rb):
                continue
            d = 1.0 - float(np.max(vecs[ra] @ vecs[rb].T))
            shift = r.get(int(ra[0]), np.nan)
            out[i] = -(d - shift) if np.isfinite(shift) else -d   # ranks only: the centre drops out
        return out

    def distances(self, judge: RowsJudge, vecs: np.ndarray, j: int, found: Sequence[Evidence]) -> np.ndarray:
        adapt = judge.index.null[judge.feat.name].get("adaptive")
        return np.array([e.distance for e in found]) if adapt is None else adaptive_distances(found, adapt)

    def open(self, index: IndexFiles, feat: Featurizer, *, plan: Plan | None = None) -> Judge:
        return DenseJudge(self, index, feat, plan or Plan())


def _bounds(where: np.ndarray) -> np.ndarray:
    """The box ``[x0, y0, x1, y1]`` (normalised, clipped to the picture) that the 2 x 3 map ``where``
    takes the unit square to."""
    corners = where @ np.array([[0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    return np.clip([*corners.min(axis=1), *corners.max(axis=1)], 0.0, 1.0)


class DenseJudge(RowsJudge):
    """A dense feature of an open index; one whose null measured aligned looks also looks again
    where another feature placed a work (module docstring)."""

    def __init__(self, kind: RowsKind, index: IndexFiles, feat: Featurizer, plan: Plan):
        super().__init__(kind, index, feat, plan)
        self.looks = ALIGNED_LOOKS if "aligned" in index.null[feat.name] else 0

    def aligned(self, batch: Sequence[Prepared], placed: Sequence[Sequence[Placement]], *,
                by: str = "") -> list[tuple[list[Evidence], np.ndarray] | None]:
        """Each input cut where ``placed`` puts a work (:meth:`Featurizer.cut`), described, and compared
        with that work's closest row: cosine ``raw``; expected chance matches the aligned null's pair
        rate times the looks it makes (``looks``: :data:`ALIGNED_LOOKS`), or, for a cut of a region
        of the input (:attr:`Placement.region`), its chance as a whole picture's against every row
        (module docstring) times the looks; ``detail`` says which
        feature placed the work (``aligned_by``), the looks, the part of the input it covers and the
        part of the work inside the input (``query_box``, ``ref_box``: x0, y0, x1, y1 normalised)."""
        feat = self.feat
        out: list[tuple[list[Evidence], np.ndarray] | None] = [None] * len(batch)
        cuts: list[np.ndarray] = []
        owners: list[tuple[int, Placement, np.ndarray]] = []   # input, placement, the part of it placed
        for i, (p, places) in enumerate(zip(batch, placed)):
            item = p.prepared.get(feat.name) if p.error is None else None
            for place in places if item is not None else ():
                box = _bounds(place.where)
                if (box[2] - box[0]) * (box[3] - box[1]) >= ALIGNED_MAX_SHARE:
                    continue
                cut = feat.cut(item, place.where)
                if cut is not None:
                    cuts.append(cut)
                    owners.append((i, place, box))
        if not cuts:
            return out
        vecs = feat.embed(cuts)
        cosine = self._closest(vecs, np.array([p.work_id for _, p, _ in owners], np.int64))
        null = self.index.null[feat.name]
        # every look the judge makes counts, whatever was offered or cut: a look left out (too few
        # placements, or the whole picture's) must not make the others' chance lighter
        expected = pol.pair_rate(1.0 - cosine, null["aligned"]) * self.looks
        regions = np.array([k for k, (_, p, _) in enumerate(owners) if p.region], np.int64)
        if len(regions) and "adaptive" in null:
            # a region's cut is all input, a picture of its own: read as a whole picture is, against its
            # own neighbourhood and every row of the index (the region's inliers were chance pairs as
            # often as not, and a crop of any busy picture is close to a pattern)
            shifted = self._shifted(vecs[regions], 1.0 - cosine[regions])
            rows = len(self.index.rows(feat.name)) * feat.codes_per_item
            expected[regions] = pol.expected_chance(shifted, null, rows) * self.looks
        for k, (i, place, box) in enumerate(owners):
            if not np.isfinite(cosine[k]):
                continue
            e = Evidence(place.work_id, feat.name, float(cosine[k]), float(1.0 - cosine[k]), 0,
                         detail={"aligned_by": by, "looks": self.looks, **({"region": True} if place.region else {}),
                                 "query_box": [round(float(v), 4) for v in box],
                                 "ref_box": [round(float(v), 4) for v in
                                             _bounds(np.linalg.inv(np.vstack([place.where, [0, 0, 1]]))[:2])]})
            evs, x = out[i] or ([], np.zeros(0))
            out[i] = ([*evs, e], np.append(x, expected[k]))
        return out

    def _shifted(self, vecs: np.ndarray, distance: np.ndarray) -> np.ndarray:
        """``distance`` of each of ``vecs`` (float32 ``[shape=(n, d)]``) to a work, read against the
        vector's own neighbourhood in the index, as a whole picture's (:func:`adaptive_distances`)."""
        adapt = self.index.null[self.feat.name]["adaptive"]
        return distance - np.array([adaptive_shift(evs, adapt) for evs in self.nearest(vecs)])

    def _closest(self, vecs: np.ndarray, works: np.ndarray) -> np.ndarray:
        """Cosine of ``vecs[k]`` with the closest stored row of ``works[k]``; NaN for a work without rows."""
        rows_of = self.cache.setdefault("rows_of", RowsByWork(self.index.rows(self.feat.name)[:, 0]))
        ids = [rows_of(int(w)) for w in works]
        flat = np.concatenate([np.zeros(0, np.int64), *ids])
        stored = reconstruct(self.index.faiss_index(self.feat.name), flat) if len(flat) else np.zeros((0, vecs.shape[1]))
        out = np.full(len(works), np.nan)
        at = 0
        for k, these in enumerate(ids):
            if len(these):
                out[k] = float(np.max(stored[at:at + len(these)] @ vecs[k]))
            at += len(these)
        return out
