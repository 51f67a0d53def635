"""Faces of talents (``image-face``): each face a row, matched per talent by descriptor distance.

The index keeps ``<feature>.faiss`` (exact L2 search over the talents' face
descriptors: a registry of people is small), ``<feature>.rows.npy`` (work, face
number in its picture) and ``<feature>.npz`` (each face's ``box``, normalised
``x0, y0, x1, y1`` in its picture, and ``eye``, the eye distance in pixels), all
covered by the manifest's checksums (and its HMAC) like every index file.

A query's faces are each compared with every template; a talent's evidence is their
closest template (of any of their photos, as photographed or re-rendered: :data:`scanner.features.face.RENDERINGS`)
to any face of the output, its chance the share of pairs of *different* people that close
(:func:`scanner.policy.pair_rate`) times the comparisons made (photos x faces). The null is fitted at build on the index's
own talents: distances between faces of different talents. A registry too small
for that (fewer than :data:`scanner.policy.MIN_NULL_PAIRS` such pairs) keeps
:data:`PRIOR_FACE_DISTANCE`, set from the descriptor's published operating point;
``index info`` says which an index uses.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from scanner import policy as pol
from scanner.features.base import Featurizer
from scanner.features.face import RENDERINGS
from scanner.features.prepared import Prepared
from scanner.match.base import Evidence, IndexFiles, Judge, Writer
from scanner.match.templates import Templates, talent_numbers
from scanner.search_choice import Plan

#: Null of the distance between two different people's faces when the index has too few talents
#: to fit one: (centre, spread) of a normal law. dlib's descriptor is trained so that 0.6 separates
#: people (99.38% right on LFW's balanced pairs, so about 0.6% of different people's pairs fall
#: below it); a centre of 0.78 (the median across people in group photos measured here) and a
#: spread of 0.072 put 0.6 at that rate (2.5 spreads below the centre).
PRIOR_FACE_DISTANCE = (0.78, 0.072)
#: Neighbours searched per query face (then grouped by talent).
FACE_K = 64
#: Pairs of templates sampled to fit the null (all of them below this).
NULL_PAIRS = 200_000


def talent_pairs(talent_of_row: np.ndarray, *, limit: int = NULL_PAIRS, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of template rows of different talents, and of one talent's different references.

    Parameters
    ----------
    talent_of_row : int ``[shape=(n,)]`` each row's talent number (-1: none, left out)

    Returns
    -------
    (a, b, a_same, b_same): int64 row numbers, every pair (or a seeded sample of ``limit``)
    """
    rows = np.flatnonzero(talent_of_row >= 0)
    if len(rows) < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, empty
    i, j = np.triu_indices(len(rows), 1)
    if len(i) > limit:
        pick = np.random.default_rng(seed).choice(len(i), limit, replace=False)
        i, j = i[pick], j[pick]
    a, b = rows[i], rows[j]
    same = talent_of_row[a] == talent_of_row[b]
    return a[~same], b[~same], a[same], b[same]


def closest_rendering(vecs: np.ndarray, a: np.ndarray, b: np.ndarray, work_of_row: np.ndarray,
                      rendering: np.ndarray) -> np.ndarray:
    """Distance from row ``a[i]`` to the closest rendering of the face of photo row ``b[i]``
    (the rows of ``b[i]``'s reference: one face, described once per rendering), float ``[shape=(m,)]``."""
    row_of = {(int(w), int(k)): r for r, (w, k) in enumerate(zip(work_of_row, rendering))}
    d = np.full(len(a), np.inf)
    for k in range(int(rendering.max(initial=0)) + 1):
        alt = np.array([row_of.get((int(w), k), -1) for w in work_of_row[b]], np.int64)
        has = alt >= 0
        d[has] = np.minimum(d[has], np.linalg.norm(vecs[a[has]] - vecs[alt[has]], axis=1))
    return d


def fit_face_null(vecs: np.ndarray, talent_of_row: np.ndarray, work_of_row: np.ndarray,
                  rendering: np.ndarray | None = None) -> dict[str, Any]:
    """The null of distances between different people's faces, from the index's own talents.

    Each face (as photographed or rendered) against another talent's photo is scored
    as a scan scores it: at the photo's closest rendering (:func:`closest_rendering`).
    The prior applies while photos alone give too few pairs (a rendering is no new
    sample of a face).

    Parameters
    ----------
    vecs : float32 ``[shape=(n, 128)]`` face descriptors
    talent_of_row : int ``[shape=(n,)]`` each row's talent number (-1: none)
    work_of_row : int ``[shape=(n,)]`` each row's reference (one talent's faces in
        different references give the spread within one person)
    rendering : int ``[shape=(n,)]`` each row's rendering (:data:`scanner.features.face.RENDERINGS`);
        all 0 (as photographed) when None

    Returns
    -------
    dict
        :func:`scanner.policy.fit_null`'s model plus ``source`` (``talents``, or
        ``prior`` when too few pairs), ``talents``, and ``within`` (median and
        90th percentile of one talent's faces across their references, for ``index info``)
    """
    rendering = np.zeros(len(vecs), np.int64) if rendering is None else np.asarray(rendering, np.int64)
    a, b, sa, sb = talent_pairs(talent_of_row)
    # both ways round, each against a photo (rendering 0) of the other talent
    a, b = np.concatenate([a, b]), np.concatenate([b, a])
    a, b = a[rendering[b] == 0], b[rendering[b] == 0]
    d = closest_rendering(vecs, a, b, work_of_row, rendering) if len(a) else np.zeros(0)
    null = pol.fit_null(d, prior=PRIOR_FACE_DISTANCE, independent=int((rendering[a] == 0).sum()) // 2)
    photos = (rendering[sa] == 0) & (rendering[sb] == 0)
    sa, sb = sa[photos], sb[photos]
    across = work_of_row[sa] != work_of_row[sb]
    within = np.linalg.norm(vecs[sa[across]] - vecs[sb[across]], axis=1) if across.any() else np.zeros(0)
    return {**null, "source": "prior" if null.get("prior") else "talents",
            "talents": int(len(np.unique(talent_of_row[talent_of_row >= 0]))),
            "within": ({"pairs": int(len(within)), "median": round(float(np.median(within)), 4),
                        "p90": round(float(np.quantile(within, 0.9)), 4)} if len(within) else {"pairs": 0})}


class Faces(Templates):
    """Talents' faces: any number per picture, each a descriptor with its box."""

    name = "face"
    raw_kind = "face_distance"
    metric = "l2"
    described = "rendering"

    def fit_null(self, writer: Writer, name: str, *, featureless: np.ndarray,
                 chance_pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, Any]:
        vecs, rows = writer.vectors(name)
        talent_of_row = talent_numbers(writer.work_talents(), rows[:, 0])
        return fit_face_null(np.asarray(vecs, np.float32), talent_of_row, np.asarray(rows[:, 0]),
                             writer.extras(name).get("rendering"))

    def open(self, index: IndexFiles, feat: Featurizer, *, plan: Plan | None = None) -> Judge:
        return FaceJudge(index, feat)


class FaceJudge(Judge):
    """A face feature of an open index: every face of an input against every template."""

    def __init__(self, index: IndexFiles, feat: Featurizer):
        self.index, self.feat = index, feat
        self.rows = np.asarray(index.rows(feat.name))
        arrays = index.landmarks(feat.name)
        self.boxes = arrays.get("box", np.zeros((0, 4), np.float32))
        self.rendering = arrays.get("rendering", np.zeros(len(self.rows), np.uint8))
        self.photos = int((self.rendering == 0).sum())
        # a talent's evidence is their closest template, whichever of their photos holds it
        self.talent_of_row = (talent_numbers(index.work_talents(), self.rows[:, 0]) if len(self.rows)
                              else np.zeros(0, np.int64))

    def evidence(self, batch: Sequence[Prepared]) -> list[tuple[list[Evidence], np.ndarray] | None]:
        from scanner.search import knn

        name = self.feat.name
        out: list[tuple[list[Evidence], np.ndarray] | None] = [None] * len(batch)
        faces = {i: p.prepared[name] for i, p in enumerate(batch)
                 if p.error is None and name in p.prepared and len(p.prepared[name])}
        index = self.index.faiss_index(name)
        if not faces or not index.ntotal:
            return out
        desc = np.concatenate([f["desc"] for f in faces.values()]).astype(np.float32)
        D, I = knn(index, desc, min(FACE_K, int(index.ntotal)))
        dist = np.sqrt(np.maximum(D, 0.0))  # faiss gives squared L2
        null = self.index.null[name]
        start = 0
        for i, f in faces.items():
            d, rows = dist[start:start + len(f)], I[start:start + len(f)]
            start += len(f)
            best: dict[int, Evidence] = {}
            for q in range(len(f)):
                for dd, r in zip(d[q], rows[q]):
                    if r < 0:
                        continue
                    who = int(self.talent_of_row[r])
                    if who not in best or dd < best[who].distance:
                        best[who] = Evidence(int(self.rows[r, 0]), name, float(dd), float(dd), int(self.rows[r, 1]),
                                             q, int(r), self._detail(f, q, int(r)))
            evs = sorted(best.values(), key=lambda e: e.distance)
            # every photo against every face of the output is a chance to match by chance (a photo's
            # closest rendering, as the null was fitted: fit_face_null)
            expected = pol.expected_chance(np.array([e.distance for e in evs]), null, self.photos * len(f))
            out[i] = (evs, expected)
        return out

    def _detail(self, faces: np.ndarray, q: int, row: int) -> dict[str, Any]:
        """Where the match sits: the face's box in the output and in the talent's reference."""
        out = {"query_box": [round(float(v), 4) for v in faces["box"][q]],
               "ref_box": [round(float(v), 4) for v in self.boxes[row]] if row < len(self.boxes) else None,
               "face": int(q), "faces_in_output": int(len(faces)),
               "eye_px": round(float(faces["eye"][q]), 1)}
        if row < len(self.rendering) and self.rendering[row]:
            out["talent_seen"] = RENDERINGS[int(self.rendering[row])]
        return out
