"""Keypoint landmarks (``image-local``): votes, then geometric verification per work.

Any number of rows per item, each a keypoint's packed descriptor with its
position. The index keeps ``<feature>.faiss`` (a binary faiss index: flat, or
an inverted file from :data:`IVF_FROM` rows, :func:`binary_index`),
``<feature>.rows.npy`` (work, keypoint number; a video work's keyframe
timecode in ms), ``<feature>.npz`` (positions ``xy`` and picture ``size`` per
row) and, for an inverted file, ``<feature>.codes.npy`` (the codes, mapped
for verification). A query's keypoints vote for (work, view) pairs
(:func:`landmark_votes`); the best-voted are verified by one similarity
transform (:func:`verify_landmarks`), counted by two statistics, each with
the null fitted at build on references queried against the other works
(:func:`landmark_null_scores`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from scanner import policy as pol
from scanner.features.base import Featurizer
from scanner.features.prepared import Prepared
from scanner.search import BINARY_IVF_NPROBE, binary_codes, coarse_probing, sampled_binary_ivf
from scanner.search_choice import Plan
from scanner.match.base import Evidence, FeatureKind, IndexFiles, Judge, Placement, RowsByWork, Staged, Writer
from scanner.match.geometry import heat_grid, landmark_boxes, ransac_repeated

#: Landmark descriptors from this many rows on are searched through an inverted
#: file (exact flat search below).
IVF_FROM = 32768


# --- landmarks: voting, then geometric verification ------------------------------------

#: Largest Hamming distance (of 256 bits) between two ORB descriptors of the same spot.
LANDMARK_MAX_DISTANCE = 64
#: A keypoint votes for the works among its neighbours at most this many bits
#: farther than its nearest one.
LANDMARK_VOTE_MARGIN = 6
#: Neighbours searched per query keypoint.
LANDMARK_K = 8
#: Keypoints per view of a query that are searched and vote (all are verified).
LANDMARK_VOTERS = 100
#: Best-voted (work, view) pairs verified geometrically per query. (64 voters
#: and 4 pairs saved 3% of a 10k-work scan's CPU time, and cost copies.)
LANDMARK_TOP = 6
#: Views a query may have (as given, mirrored, tiles): keys of (work, view) votes.
MAX_VIEWS = 16
#: The view of a query that is its mirror image (boxes are turned back).
MIRRORED_VIEW = 1
#: Lowe's ratio: a query keypoint pairs with a work keypoint only if the
#: work's second-nearest keypoint is clearly farther.
LANDMARK_RATIO = 0.8
#: Work keypoints a query keypoint may pair with when its nearest ones are
#: alike (a repeated element: the dots of a grid, the tips of a star), for
#: the ``repeated`` statistic; 1 would be Lowe's test alone.
LANDMARK_HYPOTHESES = 3
#: Largest distance of those alike pairs (a repeated element's keypoints
#: match their likes within 10 to 26 bits): fewer chance pairs for RANSAC.
LANDMARK_ALIKE_DISTANCE = 40
#: What a landmark candidate is counted by, each with its own null: ``unique``
#: pairs only keypoints Lowe's ratio test finds unambiguous (a small pasted
#: work is significant at a few inliers, as chance pairs rarely agree);
#: ``repeated`` also lets a keypoint on a repeated element keep
#: :data:`LANDMARK_HYPOTHESES` alike pairs and lets geometry choose (fill
#: tiles, stars, rotated copies: Lowe's test drops nearly all their
#: keypoints), at the price of more chance inliers (a null median near 8 on
#: clip art against 3). The evidence is the more significant of the two.
LANDMARK_STATISTICS = ("unique", "repeated")
#: Best-voted candidates each statistic verifies (in vote order): RANSAC over
#: the repeated statistic's pairs costs several times Lowe's, and a work whose
#: keypoints repeat still wins the vote.
STATISTIC_TOP = {"unique": LANDMARK_TOP, "repeated": 3}
#: Pairs the repeated statistic's RANSAC draws from (its inliers are then
#: counted over all): a chance candidate gives it about 1,000 pairs.
RANSAC_SAMPLE = 256
#: References sampled as queries to fit a landmark feature's null.
LANDMARK_NULL_QUERIES = 300
#: Works a proposer (:data:`scanner.features.PROPOSERS`, a learned copy descriptor) offers
#: per query: verified in :data:`PROPOSAL_VIEWS` whatever the keypoints' vote found, and
#: scored against a null of the proposer's own top works (:func:`proposal_null_scores`),
#: not of the best-voted among all works.
PROPOSALS = 1
#: Views of a query a proposed work is verified in, each one more chance: as given only (a
#: mirrored copy is the vote's to find; each view verified costs a search of the work's keypoints).
PROPOSAL_VIEWS = (0,)
#: Routes a work can be found by (the vote, a proposal): a proposed work's chance is counted twice.
ROUTES = 2
#: RANSAC tolerance in working pixels (pictures are matched at 512 pixels).
LANDMARK_TOLERANCE = 6.0


@dataclass(frozen=True)
class LandmarkTable:
    """Reference keypoints of an index, row-aligned with its faiss index.

    Attributes
    ----------
    rows : int32 ``[shape=(n, 2)]`` row -> (work_id, keypoint number)
    desc : uint8 ``[shape=(n, 32)]`` descriptors
    xy : float32 ``[shape=(n, 2)]`` positions normalised to the work's picture
    size : float32 ``[shape=(n, 2)]`` the work's picture size in working pixels
    """

    rows: np.ndarray
    desc: np.ndarray
    xy: np.ndarray
    size: np.ndarray
    _rows_of: RowsByWork | None = field(default=None, repr=False, compare=False)

    def work_rows(self, work_id: int) -> np.ndarray:
        """Row numbers of one work's keypoints, int64."""
        if self._rows_of is None:
            object.__setattr__(self, "_rows_of", RowsByWork(self.rows[:, 0]))  # a cache on a frozen table
        return self._rows_of(work_id)  # type: ignore[misc]


def landmark_votes(D: np.ndarray, I: np.ndarray, rows: np.ndarray, views: np.ndarray | None = None, *,
                   max_distance: int = LANDMARK_MAX_DISTANCE, margin: int = LANDMARK_VOTE_MARGIN,
                   exclude: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Votes of one query's keypoints for works, per view of the query.

    Each keypoint votes for the works among its neighbours within ``margin``
    bits of its nearest one (and within ``max_distance``), one vote split
    evenly among them: a descriptor of a stock shape, near many works alike,
    counts little (an inverse document frequency over the neighbourhood).

    Parameters
    ----------
    D, I : ``[shape=(n, k)]`` Hamming distances and index rows of each keypoint's neighbours
    rows : int32 ``[shape=(n_rows, 2)]`` row -> (work_id, keypoint number)
    views : uint8 ``[shape=(n,)]`` each keypoint's view (0 as given, 1 mirrored, 2+ tiles); all 0 if omitted
    exclude : a work whose rows are passed over (a reference queried against its own index)

    Returns
    -------
    works, views : int64 ``[shape=(m,)]`` the (work, view) pairs that got votes
    votes : float64 ``[shape=(m,)]``, most first
    """
    w = np.where((I >= 0) & (D <= max_distance), np.asarray(rows)[np.maximum(I, 0), 0], -1).astype(np.int64)
    if exclude is not None:
        w[w == exclude] = -1
    D = np.asarray(D, np.int64)
    near = np.where(w >= 0, D, 1 << 30).min(axis=1, keepdims=True)
    w[D > near + margin] = -1
    w.sort(axis=1)
    first = w >= 0
    first[:, 1:] &= w[:, 1:] != w[:, :-1]
    weight = 1.0 / np.maximum(first.sum(axis=1), 1)  # an inverse document frequency
    v = np.zeros(len(w), np.int64) if views is None else np.asarray(views, np.int64)
    # views vote with different numbers of keypoints (tiles with fewer): a (work, view)
    # pair is ranked by the share of its view's voters it won, not their count
    _, view_of, per_view = np.unique(v, return_inverse=True, return_counts=True)
    weight = weight / per_view[view_of] * len(v)
    keys = (w * MAX_VIEWS + v[:, None])[first]
    pairs, inv = np.unique(keys, return_inverse=True)
    votes = np.bincount(inv, weights=np.broadcast_to(weight[:, None], w.shape)[first], minlength=len(pairs))
    order = np.argsort(-votes, kind="stable")
    return pairs[order] // MAX_VIEWS, pairs[order] % MAX_VIEWS, votes[order]


def _ratio_pairs(d: np.ndarray, j: np.ndarray, *, ratio: float, max_distance: int,
                 hypotheses: int = 1, alike_distance: int = LANDMARK_ALIKE_DISTANCE
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Query and work keypoints paired by Lowe's ratio test.

    With ``hypotheses`` = 1, a query keypoint pairs with its nearest work
    keypoint only if the second nearest is clearly farther, and each work
    keypoint is used once, by the nearest query keypoint (descriptor distance
    is all there is to choose by before geometry). With more, a keypoint that
    passes the test pairs as above, and one whose nearest work keypoints are
    alike (a repeated element) keeps up to ``hypotheses`` of them, those
    within ``1 / ratio`` of its nearest distance and ``alike_distance``, and
    geometry picks among them (:func:`_one_to_one` counts each keypoint once
    afterwards).

    Parameters
    ----------
    d, j : ``[shape=(n, k)]`` each query keypoint's nearest work keypoints,
        Hamming distances and rows, nearest first (:func:`scanner.features.local.hamming_knn`);
        ``k >= hypotheses``, and ``k >= 2`` for Lowe's test

    Returns
    -------
    qi, ri : int64 ``[shape=(m,)]`` query rows and work rows of the pairs
    """
    # a tie for nearest fails the test whatever order the search returned it in
    second = d[:, 1] if d.shape[1] > 1 else np.full(len(d), 256)
    lowe = (d[:, 0] <= max_distance) & (d[:, 0] < ratio * second)
    if hypotheses <= 1:
        qi, ri, di = np.flatnonzero(lowe), j[lowe, 0], d[lowe, 0]
        o = np.lexsort((di, ri))
        keep = np.ones(len(o), bool)
        keep[1:] = ri[o][1:] != ri[o][:-1]
        return qi[o][keep].astype(np.int64), ri[o][keep].astype(np.int64)
    d, j = d[:, :hypotheses], j[:, :hypotheses]
    # alike ones (those Lowe's test calls ambiguous) are kept only when close:
    # a chance keypoint's neighbours are all alike and far, and pairing every
    # one of them would make RANSAC's work and the chance inliers balloon
    ok = (d <= alike_distance) & (d * ratio <= d[:, :1])
    ok[:, 0] |= lowe
    rows = np.broadcast_to(np.arange(len(d))[:, None], d.shape)
    return rows[ok].astype(np.int64), j[ok].astype(np.int64)


def verify_landmarks(query: np.ndarray, candidates: Iterable[tuple[int, int]], table: LandmarkTable, *,
                     feature: str, ratio: float = LANDMARK_RATIO,
                     max_distance: int = LANDMARK_MAX_DISTANCE,
                     tolerance: float = LANDMARK_TOLERANCE,
                     hypotheses: int = LANDMARK_HYPOTHESES,
                     statistics: Sequence[str] = LANDMARK_STATISTICS,
                     choose: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                     top: dict[str, int] | None = None, boxes: bool = True) -> list[Evidence]:
    """Verify candidate works geometrically against one query's keypoints.

    Per candidate (work, view of the query) and statistic, query keypoints
    are paired with the work's (:func:`_ratio_pairs`: by Lowe's ratio test
    for ``unique``; for ``repeated``, a keypoint whose nearest work keypoints
    are alike keeps up to ``hypotheses`` of them), and the pairs one
    similarity transform explains
    (:func:`scanner.features.local.ransac_similarity`) are counted, each
    query and work keypoint once; a work verified in several views keeps
    its best per statistic.

    Parameters
    ----------
    query : ``[shape=(n,)]`` of :data:`scanner.features.local.KEYPOINT_DTYPE`
    candidates : (work id, view) pairs (:func:`landmark_votes`)
    table : the index's keypoints
    feature : feature name, copied into the evidence
    hypotheses : work keypoints a query keypoint may pair with under ``repeated``
    statistics : which of :data:`LANDMARK_STATISTICS` to count
    choose : ``choose(inliers, statistics)``, float ``[shape=(m,)]``, smaller
        is stronger (a scan's expected chance matches): per work, only the
        statistic it calls strongest is kept. ``None`` keeps every statistic
        (the null is fitted on each).
    top : per statistic, how many of the first candidates it verifies
        (:data:`STATISTIC_TOP` by default)
    boxes : build each evidence's boxes and heat maps now; ``False`` leaves
        ``detail`` with ``inliers`` and ``statistic`` only, the rest built by
        :func:`landmark_detail` for the evidence that is shown (a scan verifies
        several works per query and shows few)

    Returns
    -------
    list of Evidence with at least 3 inliers, one per work and statistic kept,
    most inliers first; ``raw`` is the inlier count and ``detail`` the boxes
    of :func:`landmark_boxes` with ``inliers`` and ``statistic``
    """
    from scanner.features.local import hamming_knn, ransac_similarity

    top = STATISTIC_TOP if top is None else top
    k = max(2, hypotheses if "repeated" in statistics else 1)
    hits: dict[tuple[int, str], tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for rank, (w, view) in enumerate(candidates):
        w = int(w)
        r_rows = table.work_rows(w)
        q_rows = np.flatnonzero(query["view"] == view)
        if len(r_rows) < 3 or len(q_rows) < 3:
            continue
        d, j = hamming_knn(query["desc"][q_rows], table.desc[r_rows], k=k)
        for stat in statistics:
            if rank >= top.get(stat, rank + 1):
                continue
            qi, ri = _ratio_pairs(d, j, ratio=ratio, max_distance=max_distance,
                                  hypotheses=hypotheses if stat == "repeated" else 1)
            if len(qi) < 3:
                continue
            qk, rk = q_rows[qi], r_rows[ri]
            q_px = query["xy"][qk].astype(np.float64) * query["size"][qk]
            r_px = table.xy[rk].astype(np.float64) * table.size[rk]
            if stat == "repeated":
                inl, m = ransac_repeated(q_px, r_px, qk, rk, tolerance=tolerance, sample=RANSAC_SAMPLE)
            else:
                inl, m = ransac_similarity(q_px, r_px, tolerance=tolerance)
            n_in = int(inl.sum())
            if m is not None and n_in >= 3 and n_in > hits.get((w, stat), (0,))[0]:
                hits[w, stat] = (n_in, int(view), m, qk[inl], rk[inl], q_px[inl], r_px[inl])
    keys = list(hits)
    if choose is not None and keys:
        strength = choose(np.array([hits[key][0] for key in keys], np.float64), np.array([s for _, s in keys]))
        best: dict[int, int] = {}
        for i, (w, _) in enumerate(keys):
            if w not in best or strength[i] < strength[best[w]]:
                best[w] = i
        keys = [keys[i] for i in sorted(best.values())]
    out = [Evidence(w, feature, float(hits[w, stat][0]), -float(hits[w, stat][0]), 0,
                    int(hits[w, stat][1] == MIRRORED_VIEW), -1,
                    _landmark_detail(query, table, stat, *hits[w, stat]) if boxes
                    else {"inliers": hits[w, stat][0], "statistic": stat},
                    None if boxes else (query, table, stat, *hits[w, stat]))
           for w, stat in keys]
    out.sort(key=lambda e: -e.raw)
    return out


#: Scales (work working pixels per query working pixel) of a transform that places a work
#: (:func:`placement`): outside, the similarity collapses one picture onto a few pixels of the
#: other, where keypoints paired by chance fall within the tolerance of one spot. On openclipart's
#: 300 REPORT negatives 62% of the verified works were such (scale under 0.1); copies of the
#: works, never above weak fill-tile matches (scale 0.2-2.6 otherwise).
PLACED_SCALES = (0.1, 10.0)


def placement(e: Evidence) -> np.ndarray | None:
    """Where a verified work lies in the query: float64 ``[shape=(2, 3)]`` mapping the work's
    picture to the query's, both normalised to their width and height (the query as given, also
    when the work was found in its mirror image); ``None`` for evidence without its geometry or
    whose transform is of an implausible scale (:data:`PLACED_SCALES`).

    The similarity RANSAC fitted (:func:`verify_landmarks`) maps the query's working pixels to
    the work's; keypoint positions are normalised to the whole picture of their view, so
    the inverse, between the two normalised frames, places the work whatever view found it.
    """
    if e.pending is None:
        return None
    query, table, _, _, view, m, qk, rk = e.pending[:8]
    if not PLACED_SCALES[0] <= float(np.sqrt(abs(np.linalg.det(m[:, :2])))) <= PLACED_SCALES[1]:
        return None   # a collapsed transform places nothing
    try:
        back = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))
    except np.linalg.LinAlgError:
        return None
    q_size, r_size = query["size"][qk[0]].astype(np.float64), table.size[rk[0]].astype(np.float64)
    out = np.diag([1.0 / q_size[0], 1.0 / q_size[1], 1.0]) @ back @ np.diag([r_size[0], r_size[1], 1.0])
    if view == MIRRORED_VIEW:   # positions there are in the mirrored picture
        out = np.array([[-1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ out
    return out[:2] if np.all(np.isfinite(out)) else None


#: Margin around the query's inliers (a share of their box's side) and least side of that box (a share
#: of the query's) for :func:`inlier_region`.
INLIER_REGION_MARGIN, INLIER_REGION_MIN = 0.15, 0.08


def inlier_region(e: Evidence) -> np.ndarray | None:
    """The part of the query a verified work's inliers span (widened by :data:`INLIER_REGION_MARGIN`),
    as a map from the work's normalised picture onto it, float64 ``[shape=(2, 3)]`` like
    :func:`placement`; ``None`` without the geometry or where the box is thinner than
    :data:`INLIER_REGION_MIN` of the query on a side.

    For a transform too collapsed to place the work: a repeated element (a tile of dots,
    chevrons, checks) pairs with many shifts of itself, and the similarity RANSAC keeps may
    squeeze the whole work onto one period, while the inliers still lie on the pasted element
    (and a crop of a pattern looks like the pattern).
    """
    if e.pending is None:
        return None
    query, _, _, _, view, _, qk, _, q_px = e.pending[:9]
    pts = np.asarray(q_px, np.float64) / query["size"][qk[0]].astype(np.float64)
    if view == MIRRORED_VIEW:
        pts[:, 0] = 1.0 - pts[:, 0]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pad = INLIER_REGION_MARGIN * (hi - lo)
    lo, hi = np.clip(lo - pad, 0.0, 1.0), np.clip(hi + pad, 0.0, 1.0)
    if np.any(hi - lo < INLIER_REGION_MIN):
        return None
    return np.array([[hi[0] - lo[0], 0.0, lo[0]], [0.0, hi[1] - lo[1], lo[1]]])


def landmark_detail(e: Evidence) -> dict[str, Any] | None:
    """The whole detail of landmark evidence, its boxes built now if they were left for later
    (with who proposed the work, when a proposer did: :class:`LandmarkJudge`)."""
    if e.pending is None:
        return e.detail
    told = {k: e.detail[k] for k in ("proposed_by", "proposals") if k in (e.detail or {})}
    return {**_landmark_detail(*e.pending), **told}


def _landmark_detail(query: np.ndarray, table: LandmarkTable, statistic: str, n_in: int, view: int,
                     m: np.ndarray, qk: np.ndarray, rk: np.ndarray, q_px: np.ndarray,
                     r_px: np.ndarray) -> dict[str, Any]:
    """The evidence of one verified work: boxes (:func:`landmark_boxes`), heat maps, inliers, statistic."""
    detail = landmark_boxes(m, q_px, r_px, query["size"][qk[0]], table.size[rk[0]],
                            mirrored=view == MIRRORED_VIEW)
    detail["inliers"] = n_in
    detail["statistic"] = statistic
    q_norm = q_px / query["size"][qk[0]]
    if view == MIRRORED_VIEW:
        q_norm[:, 0] = 1.0 - q_norm[:, 0]
    detail["query_heat"] = heat_grid(q_norm)
    detail["ref_heat"] = heat_grid(r_px / table.size[rk[0]])
    # the work's locator most inliers carry: a video work's keyframe (its timecode, ms)
    locs, counts = np.unique(table.rows[rk, 1], return_counts=True)
    detail["ref_locator"] = int(locs[counts.argmax()])
    return detail


def landmark_evidence(queries: Sequence[np.ndarray], index: Any, table: LandmarkTable, *, feature: str,
                      k: int = LANDMARK_K, top: int = LANDMARK_TOP, per_view: int = LANDMARK_VOTERS,
                      exclude: Sequence[int | None] | None = None,
                      statistics: Sequence[str] = LANDMARK_STATISTICS,
                      choose: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                      boxes: bool = True) -> list[list[Evidence]]:
    """Per-work landmark evidence for a batch of queries: search, vote, verify.

    An even subset of each query's keypoints (:func:`voters`) is searched,
    all queries in one batch (:func:`scanner.search.knn`); these
    keypoints vote for works (:func:`landmark_votes`) and the ``top``
    best-voted (work, view) pairs are verified with every keypoint
    (:func:`verify_landmarks`).

    Parameters
    ----------
    queries : per query, ``[shape=(n,)]`` of :data:`scanner.features.local.KEYPOINT_DTYPE`
    index : faiss binary index over ``table.desc``
    table : the index's keypoints
    feature : feature name, copied into the evidence
    k : neighbours per query keypoint
    top : (work, view) pairs verified per query
    per_view : keypoints per view searched and voting
    exclude : per query, a work to pass over (references queried against
        their own index, to fit the null); ``k`` grows by 8 to make room
    statistics : which of :data:`LANDMARK_STATISTICS` to count (an index
        built before ``repeated`` had its null has only ``unique``)
    choose : per work, which statistic to keep (:func:`verify_landmarks`);
        ``None`` keeps all
    boxes : build the evidence's boxes now (:func:`verify_landmarks`)

    Returns
    -------
    list of lists of Evidence, one list per query, one Evidence per work and
    statistic kept, most inliers first
    """
    from scanner.search import knn

    exclude = list(exclude) if exclude is not None else [None] * len(queries)
    if exclude and any(e is not None for e in exclude):
        k += 8
    chosen = [voters(q["view"], per_view=per_view) for q in queries]
    counts = [len(c) for c in chosen]
    if not sum(counts) or index.ntotal == 0:
        return [[] for _ in queries]
    desc = np.concatenate([q["desc"][c] for q, c in zip(queries, chosen)])
    D, I = knn(index, desc, k)
    out = []
    start = 0
    for q, c, ex in zip(queries, chosen, exclude):
        d, i = D[start:start + len(c)], I[start:start + len(c)]
        start += len(c)
        if not len(c):
            out.append([])
            continue
        works, views, _ = landmark_votes(d, i, table.rows, q["view"][c], exclude=ex)
        out.append(verify_landmarks(q, list(zip(works[:top], views[:top])), table, feature=feature,
                                    statistics=statistics, choose=choose, boxes=boxes))
    return out


def voters(views: np.ndarray, *, per_view: int = LANDMARK_VOTERS) -> np.ndarray:
    """Keypoints of a query that are searched and vote: an even subset of each view.

    Every other keypoint (or every third...) across all pyramid levels and
    the whole picture: voting needs far fewer keypoints than verification, and
    the search is what a scan spends most on.

    Parameters
    ----------
    views : uint8 ``[shape=(n,)]`` each keypoint's view
    per_view : most voters per view (a third of it for each tile, views 2 and up)

    Returns
    -------
    int64 ``[shape=(m,)]`` row numbers, in order
    """
    out = []
    for view in np.unique(views):
        rows = np.flatnonzero(views == view)
        # a tile repeats part of the whole view's picture: a third of the voters finds its work
        budget = per_view if view <= MIRRORED_VIEW else max(1, per_view // 3)
        if len(rows):
            out.append(rows[::max(1, -(-len(rows) // budget))])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def null_queries(table: LandmarkTable, *, skip: Sequence[int] = (), n_queries: int = LANDMARK_NULL_QUERIES,
                 seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """A seeded sample of references made queries: each work's keypoints thinned to a query's count.

    Returns
    -------
    (works, queries): int64 ``[shape=(m,)]`` sorted, and per work ``[shape=(n,)]`` of
    :data:`scanner.features.local.KEYPOINT_DTYPE` (view 0, as given); none when
    fewer than two works are left after ``skip``
    """
    from scanner.features.local import KEYPOINT_DTYPE, N_FEATURES

    rng = np.random.default_rng(seed)
    works = np.setdiff1d(np.unique(table.rows[:, 0]), np.asarray(skip, np.int64))
    if len(works) < 2:
        return np.zeros(0, np.int64), []
    sample = np.sort(rng.choice(works, min(len(works), n_queries), replace=False))
    queries = []
    for w in sample:
        r = np.sort(rng.choice(table.work_rows(int(w)), min(len(table.work_rows(int(w))), N_FEATURES),
                               replace=False))
        q = np.zeros(len(r), KEYPOINT_DTYPE)
        q["desc"], q["xy"], q["size"] = table.desc[r], table.xy[r], table.size[r]
        queries.append(q)
    return sample.astype(np.int64), queries


def landmark_null_scores(table: LandmarkTable, index: Any, sample: np.ndarray, queries: Sequence[np.ndarray], *,
                         feature: str, statistics: Sequence[str] = LANDMARK_STATISTICS
                         ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Inliers of chance candidates: a sample of references verified against the other works.

    Each sampled work is a query (its keypoints thinned to a query's count,
    as given only), matched like a scan (:func:`landmark_evidence`) against
    the index less itself. Every one of the candidates a query may verify
    with a statistic (:data:`STATISTIC_TOP`) gives a score (0 when it was not
    verified or fell short).

    Parameters
    ----------
    table : the index's keypoints; ``index`` the faiss index over them
    sample, queries : the sampled works and their queries (:func:`null_queries`)
    statistics : which of :data:`LANDMARK_STATISTICS` to count

    Returns
    -------
    dict statistic -> ``(scores, query_works, candidate_works)``: float64
    inlier counts and int64 works, each ``[shape=(n_sampled * STATISTIC_TOP[statistic],)]``,
    the candidate -1 where a slot had no candidate
    """
    if len(sample) < 2:
        empty = np.zeros(0)
        return {stat: (empty, empty.astype(np.int64), empty.astype(np.int64)) for stat in statistics}
    found = landmark_evidence(queries, index, table, feature=feature, exclude=[int(w) for w in sample],
                              statistics=statistics, boxes=False)
    out = {}
    for stat in statistics:
        slots = STATISTIC_TOP[stat]
        scores = np.zeros((len(found), slots))
        cands = np.full((len(found), slots), -1, np.int64)
        for j, evs in enumerate(found):
            evs = [e for e in evs if e.detail["statistic"] == stat][:slots]
            scores[j, :len(evs)] = [e.raw for e in evs]
            cands[j, :len(evs)] = [e.work_id for e in evs]
        out[stat] = (scores.ravel(), np.repeat(sample.astype(np.int64), slots), cands.ravel())
    return out


def proposal_null_scores(table: LandmarkTable, queries: Sequence[np.ndarray], sample: np.ndarray,
                         vecs: np.ndarray, rows: np.ndarray, *, top: int = PROPOSALS,
                         statistics: Sequence[str] = LANDMARK_STATISTICS) -> dict[str, np.ndarray]:
    """Inliers of chance proposals: each sampled reference verified against the proposer's nearest other works.

    What a proposer (a copy descriptor) offers for a work it was not copied from are
    works that look alike to it, and geometry on those is what a proposal's inliers
    must be read against (:func:`null_queries` gives the sample and its queries).

    Parameters
    ----------
    table : the index's keypoints
    queries, sample : :func:`null_queries`
    vecs, rows : the proposer's rows (float32 ``[shape=(m, d)]`` L2-normalised) and row map
    top : proposals per query

    Returns
    -------
    dict statistic -> float64 ``[shape=(len(sample) * top,)]`` inlier counts (0: not verified or short)
    """
    from scanner.match.base import WorkRows
    from scanner.match.dense import nearest_other_works

    works = np.asarray(rows)[:, 0]
    rows_of = WorkRows(works)
    out = {stat: np.zeros((len(sample), top)) for stat in statistics}
    for j, (w, q) in enumerate(zip(sample.tolist(), queries)):
        proposed = nearest_other_works(vecs, works, rows_of(w), top)
        found = verify_landmarks(q, [(int(p), 0) for p in proposed], table, feature="", statistics=statistics,
                                 top={stat: top for stat in statistics}, boxes=False)
        for stat in statistics:
            counts = sorted((e.raw for e in found if e.detail["statistic"] == stat), reverse=True)[:top]
            out[stat][j, :len(counts)] = counts
    return {stat: v.ravel() for stat, v in out.items()}


def fit_proposal_null(by: str, table: LandmarkTable, queries: Sequence[np.ndarray], sample: np.ndarray,
                      vecs: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    """The null of proposed works' inliers (:func:`proposal_null_scores`), per statistic as
    :func:`fit_landmark_null`'s, with ``by`` (the proposer) and ``top`` (proposals per query)."""
    stats = proposal_null_scores(table, queries, sample, vecs, rows)
    null = pol.fit_inlier_null(stats["unique"], candidates=PROPOSALS)
    for stat in LANDMARK_STATISTICS:
        if stat != "unique":
            null[stat] = pol.fit_inlier_null(stats[stat], candidates=PROPOSALS, prior=pol.PRIOR_REPEATED_INLIERS)
    return {**null, "by": by, "top": PROPOSALS, "views": len(PROPOSAL_VIEWS)}


def expected_proposed(inliers: np.ndarray, statistic: np.ndarray, null: dict[str, Any]) -> np.ndarray:
    """Expected chance matches of proposed works' landmark evidence: its statistic's chance among the
    proposals (:func:`fit_proposal_null`), times the views tried and the :data:`ROUTES` a work is found by."""
    return pol.expected_landmark(inliers, statistic, statistic_nulls(null)) * int(null["views"]) * ROUTES


def binary_index(codes: np.ndarray) -> Any:
    """A faiss binary index over packed codes, rows numbered in order.

    Below :data:`IVF_FROM` rows, exact flat search. From there on, an inverted
    file whose centroids are a seeded sample of the codes themselves (no
    training: k-means on millions of ORB descriptors costs minutes and, for
    voting, finds the same works), with ``4 sqrt(n)`` lists of which
    :data:`scanner.search.BINARY_IVF_NPROBE` are probed; the probe count is stored in the file.
    Scans and the null's fit search it through :func:`scanner.search.coarse_probing` (the
    lists to probe found without comparing every centroid), the file keeps the plain one.

    Parameters
    ----------
    codes : uint8 ``[shape=(n, nbytes)]``
    """
    import faiss

    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if len(codes) >= IVF_FROM:
        index = sampled_binary_ivf(codes, int(min(65536, 4 * np.sqrt(len(codes)))))
        index.nprobe = BINARY_IVF_NPROBE
        return index
    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(codes)
    return index


# --- the kind: what the index keeps, the null, the judge ------------------------------


def statistic_nulls(null: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Statistic -> null of a landmark feature: ``unique`` always, the others where the index fitted them."""
    return {"unique": null, **{s: null[s] for s in LANDMARK_STATISTICS if s != "unique" and s in null}}


def fit_landmark_null(name: str, codes: np.ndarray, rows: np.ndarray, extra: dict[str, np.ndarray],
                      index: Any, featureless: np.ndarray,
                      chance_pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], *,
                      proposer: tuple[str, np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """A landmark feature's null: references queried against the other works, as a scan would.

    The ``unique`` statistic's model is the null itself (as indexes built
    before the others had it); each other statistic's is kept under its name.
    The (chance, reference, candidate work) triples of the evidence a scan
    would keep, the more significant statistic per pair, go to
    ``chance_pairs[name]`` for :func:`scanner.match.fusion.fit_fusion`. With a
    ``proposer`` (its name, rows and row map), the null of its proposals is kept
    under ``proposals`` (:func:`fit_proposal_null`), fitted on the same sample.
    """
    none = np.zeros((0, 2), np.float32)
    table = LandmarkTable(rows, codes, extra.get("xy", none), extra.get("size", none))
    sample, queries = null_queries(table, skip=featureless)  # one sample for the vote's null and the proposals'
    stats = landmark_null_scores(table, index, sample, queries, feature=name)
    null = pol.fit_inlier_null(stats["unique"][0], candidates=STATISTIC_TOP["unique"])
    for stat in LANDMARK_STATISTICS:
        if stat != "unique":
            null[stat] = pol.fit_inlier_null(stats[stat][0], candidates=STATISTIC_TOP[stat],
                                             prior=pol.PRIOR_REPEATED_INLIERS)
    scores, q, c = (np.concatenate(parts) for parts in zip(*stats.values()))
    kinds = np.repeat(list(stats), [len(v[0]) for v in stats.values()])
    strength = -np.log(pol.expected_landmark(scores, kinds, statistic_nulls(null)))
    # one pair per (reference, candidate): the stronger statistic; slots without a candidate stay
    key = np.where(c >= 0, q * (int(c.max(initial=0)) + 1) + c, -1 - np.arange(len(c)))
    order = np.lexsort((-strength, key))
    first = np.ones(len(order), bool)
    first[1:] = key[order][1:] != key[order][:-1]
    keep = order[first]
    chance_pairs[name] = (strength[keep], q[keep], c[keep])
    if proposer is not None and len(proposer[1]):
        null["proposals"] = fit_proposal_null(proposer[0], table, queries, sample, *proposer[1:])
    return null


class Landmarks(FeatureKind):
    """Keypoints, any number per item, verified per work by geometry."""

    name = "landmark"
    raw_kind = "inliers"
    has_arrays = True

    def empty(self, spec: dict[str, Any]) -> np.ndarray:
        return np.zeros((0, spec["dim"] // 8), np.uint8)

    def read(self, staged: Staged) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]] | None:
        old = staged.read_faiss()
        if old is None or not old.ntotal:
            return None
        return binary_codes(old), staged.load_npy(".rows.npy"), staged.load_npz(".npz")

    def write(self, staged: Staged) -> int:
        import faiss

        vecs, rows = staged.final()
        index = staged.derived(lambda: binary_index(vecs))  # the one the null was fitted with
        staged.save_faiss(index)
        staged.save_npy(".rows.npy", np.ascontiguousarray(rows, np.int32))
        staged.save_npz(".npz", {k: np.ascontiguousarray(v) for k, v in staged.arrays().items()})
        # an inverted file gives its codes back only by walking every list: keep a
        # plain copy that opens memory-mapped (verification reads a work's keypoints)
        if isinstance(index, faiss.IndexBinaryIVF):
            staged.save_npy(".codes.npy", np.ascontiguousarray(vecs, np.uint8))
        else:
            staged.drop(".codes.npy")
        return int(index.ntotal)

    def stored(self, index: IndexFiles, name: str) -> int:
        return int(index.faiss_index(name).ntotal)

    def fit_null(self, writer: Writer, name: str, *, featureless: np.ndarray,
                 chance_pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, Any]:
        from scanner.features import PROPOSERS

        vecs, rows = writer.vectors(name)
        index = writer.derived(name, lambda: binary_index(vecs))  # written as fitted
        by = PROPOSERS.get(name)
        proposer = (by, *writer.vectors(by)) if by in writer.feature_names() else None
        # searched as a scan searches it (LandmarkJudge)
        return fit_landmark_null(name, vecs, rows, writer.extras(name), coarse_probing(index), featureless,
                                 chance_pairs, proposer=proposer)

    def detail(self, e: Evidence) -> dict[str, Any] | None:
        return landmark_detail(e)

    def open(self, index: IndexFiles, feat: Featurizer, *, plan: Plan | None = None) -> Judge:
        return LandmarkJudge(index, feat)


class LandmarkJudge(Judge):
    """A landmark feature of an open index: its reference keypoints loaded, verified per work."""

    locates = True

    def __init__(self, index: IndexFiles, feat: Featurizer):
        self.index, self.feat = index, feat
        self.search_index = coarse_probing(index.faiss_index(feat.name))
        index.rows(feat.name)
        index.row_weights(feat.name)
        extra = index.landmarks(feat.name)
        none = np.zeros((0, 2), np.float32)  # an index whose works gave no keypoints at all
        # plain arrays over the memory map: each verified work indexes them, and a
        # numpy.memmap wraps every slice of one in an object of its own
        self.table = LandmarkTable(np.asarray(index.rows(feat.name)), np.asarray(index.codes(feat.name)),
                                   extra.get("xy", none), extra.get("size", none))
        self.proposal_null = index.null[feat.name].get("proposals")
        if self.proposal_null is not None:
            self.proposer, self.proposals = self.proposal_null["by"], int(self.proposal_null["top"])

    def evidence(self, batch: Sequence[Prepared], *,
                 proposed: Sequence[Sequence[int]] | None = None) -> list[tuple[list[Evidence], np.ndarray] | None]:
        feat = self.feat
        out: list[tuple[list[Evidence], np.ndarray] | None] = [None] * len(batch)
        pos = [i for i, p in enumerate(batch) if p.error is None and feat.name in p.prepared]
        nulls = statistic_nulls(self.index.null[feat.name])

        def expected(inliers: np.ndarray, statistics: np.ndarray) -> np.ndarray:
            return pol.expected_landmark(inliers, statistics, nulls)

        queries = [batch[i].prepared[feat.name] for i in pos]
        found = landmark_evidence(queries, self.search_index, self.table, feature=feat.name, statistics=tuple(nulls),
                                  choose=expected,  # per work, its most significant statistic
                                  boxes=False)  # built for the matches shown (the scanner asks landmark_detail)
        for i, q, evs in zip(pos, queries, found):
            x = expected(np.array([e.raw for e in evs]), np.array([e.detail["statistic"] for e in evs]))
            if proposed is not None and self.proposal_null is not None:
                # a work the vote verified has its inliers counted already (the same geometry)
                voted = {e.work_id for e in evs}
                works = [w for w in list(proposed[i])[:self.proposals] if w not in voted]
                if works:
                    evs, x = self._with_proposals(q, works, evs, x, tuple(nulls))
            if evs:
                out[i] = (evs, x)
        return out

    def placements(self, found: tuple[list[Evidence], np.ndarray] | None, n: int) -> list[Placement]:
        """The ``n`` works of ``found`` with the fewest expected chance matches that :func:`placement`
        puts somewhere; where fewer, then works on their :func:`inlier_region` (a collapsed transform),
        also fewest expected first."""
        if not found or n <= 0:
            return []
        evs, x = found
        order = np.argsort(np.asarray(x, np.float64), kind="stable")
        out: list[Placement] = []
        for place, region in ((placement, False), (inlier_region, True)):
            for k in order:
                if len(out) == n:
                    return out
                if any(p.work_id == evs[k].work_id for p in out):
                    continue
                where = place(evs[k])
                if where is not None:
                    out.append(Placement(evs[k].work_id, where, region))
        return out

    def _with_proposals(self, query: np.ndarray, works: list[int], evs: list[Evidence], x: np.ndarray,
                        statistics: tuple[str, ...]) -> tuple[list[Evidence], np.ndarray]:
        """The vote's evidence ``evs`` (expected ``x``) with the proposed ``works`` (none of them
        verified by the vote) verified too, read against the proposals' null
        (:func:`expected_proposed`); their detail names the proposer."""
        null = self.proposal_null
        views = [v for v in PROPOSAL_VIEWS if np.any(query["view"] == v)]
        found = verify_landmarks(query, [(w, v) for w in works for v in views], self.table, feature=self.feat.name,
                                 statistics=statistics, top={s: len(works) * len(views) for s in statistics},
                                 choose=lambda n, s: expected_proposed(n, s, null), boxes=False)
        told = {"proposed_by": null["by"], "proposals": self.proposals}
        extra = [replace(e, detail={**e.detail, **told}) for e in found]
        xe = expected_proposed(np.array([e.raw for e in found]), np.array([e.detail["statistic"] for e in found]), null)
        return list(evs) + extra, np.concatenate([np.asarray(x, np.float64), xe])
