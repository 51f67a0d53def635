"""Scores to significance, significance to verdicts.

Each featurizer's raw score (Hamming distance, cosine) becomes a *significance*:
the expected number of chance matches at least this close in an index of this
many works. The chance rate per pair comes from the index's own null
distribution, fitted at build time from reference-versus-other-work scores, so
thresholds on the significance scale carry over between index sizes and
corpora without labels.

Default verdict boundaries (configurable, stored in the manifest):

* ``flagged``: copy evidence (a hash match) with expected chance matches
  <= ``flag_at``;
* ``review``: any feature with expected chance matches <= ``review_at``, or
  semantic likeness alone (CLIP) at the flag level — a person decides;
* ``licensed``: the strongest match is a work the studio holds the rights to;
* ``clear``: nothing closer than chance; never worded as legal clearance;
* ``error``: could not be checked (never ``clear``).

Featureless inputs (near-uniform, almost empty) are never flagged.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np

from scanner.errors import ParameterError
from scanner.talents import describe_match

VERDICTS = ("flagged", "error", "review", "licensed", "clear")
#: Features whose match is evidence of copying (not semantic likeness).
COPY_EVIDENCE = frozenset({"image-phash", "image-local", "image-sscd", "audio-fingerprint"})
#: Pairs sampled to fit a null distribution.
NULL_PAIRS = 400_000
#: Fewer pairs than this and the null falls back to a prior.
MIN_NULL_PAIRS = 50
#: Priors (centre, spread) for tiny indexes: standardised Hamming distances of
#: correlated bits, and CLIP cosine distances between unrelated pictures.
PRIOR_HAMMING_Z = (0.0, 1.2)
PRIOR_COSINE_DISTANCE = (0.5, 0.15)
#: Factor on the fitted spread: real score tails are heavier than normal ones
#: (on clip art, the nearest unrelated work sits about 1.25 spreads nearer than
#: a normal law predicts); 1.5 keeps chance-match estimates on the safe side.
TAIL_WIDENING = 1.5
#: Landmark nulls: fewer chance-candidate scores than this and the prior is used.
#: The prior (half the chance candidates reach 4 inliers, then one in e fewer
#: per 2.5 more) is a little wider than what a 200-work openclipart library
#: gives (4, 0.54, 1.9).
MIN_INLIER_SAMPLES = 100
PRIOR_INLIERS = {"threshold": 4.0, "p_threshold": 0.5, "scale": 2.5}
#: The same for the ``repeated`` landmark statistic (several hypotheses per
#: keypoint: more chance inliers), a little wider than what openclipart
#: libraries of 150-200 works give (medians 8-10, scales 4.6-4.7).
PRIOR_REPEATED_INLIERS = {"threshold": 8.0, "p_threshold": 0.5, "scale": 5.0}
#: The same for audio fingerprints' aligned-hash counts (per 10-second window),
#: for indexes of too few audio works to fit: half the chance candidates reach
#: 6 aligned hashes, then one in e fewer per 3 more.
PRIOR_ALIGNED = {"threshold": 6.0, "p_threshold": 0.5, "scale": 3.0}
#: Bounds of a fitted landmark null's scale (inliers per e-fold of the tail):
#: counts come in whole keypoints, and a body that does not fall off at all
#: (every candidate related) is capped rather than made infinite.
MIN_INLIER_SCALE = 0.5
MAX_INLIER_SCALE = 10.0
_erfc = np.vectorize(math.erfc, otypes=[np.float64])
#: Smallest chance rate reported (the fitted tail is not trusted further).
MIN_RATE = 1e-30


@dataclass
class Policy:
    """Verdict thresholds on the expected-chance-matches scale.

    Parameters
    ----------
    flag_at : float > 0
        Flag copy evidence whose expected number of chance matches in the
        index is at most this (1e-3: one such match by chance in a thousand scans).
    review_at : float >= flag_at
        Send to review any match at most this expected.
    semantic_cap : str
        Verdict ceiling for semantic-only evidence (``"review"``).
    """

    flag_at: float = 1e-3
    review_at: float = 2e-2
    semantic_cap: str = "review"
    copy_features: tuple[str, ...] = field(default_factory=lambda: tuple(sorted(COPY_EVIDENCE)))

    def validate(self) -> "Policy":
        if not (0 < self.flag_at <= self.review_at):
            raise ParameterError(f"thresholds must satisfy 0 < flag_at <= review_at, given "
                                 f"flag_at={self.flag_at}, review_at={self.review_at}")
        if self.semantic_cap not in ("review", "clear", "flagged"):
            raise ParameterError(f"semantic_cap must be review, clear or flagged, given {self.semantic_cap!r}")
        return self

    def get_params(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> "Policy":
        params = dict(params or {})
        if "copy_features" in params:
            params["copy_features"] = tuple(params["copy_features"])
        known = {k: v for k, v in params.items() if k in cls.__dataclass_fields__}
        return cls(**known).validate()


# --- null distribution ------------------------------------------------------------------


def hamming_pairs(codes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between rows ``a`` and ``b`` of packed codes.

    Parameters
    ----------
    codes : uint8 ``[shape=(n, nbytes)]``
    a, b : int ``[shape=(m,)]`` row numbers

    Returns
    -------
    int ``[shape=(m,)]``
    """
    return np.bitwise_count(codes[a] ^ codes[b]).sum(axis=1)


def sample_pairs(work_ids: np.ndarray, *, n_pairs: int = NULL_PAIRS,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs from different works: all of them when few, else a random sample."""
    n = len(work_ids)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if n * (n - 1) // 2 <= n_pairs:
        a, b = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        a = rng.integers(0, n, n_pairs)
        b = rng.integers(0, n, n_pairs)
    keep = work_ids[a] != work_ids[b]
    return a[keep], b[keep]


def standardize_hamming(distance: np.ndarray, ones_a: np.ndarray, ones_b: np.ndarray,
                        dim: int) -> np.ndarray:
    """Hamming distances as z-scores against what two codes of these densities give by chance.

    Two unrelated codes with ``ones_a`` and ``ones_b`` bits set differ in a
    share ``q = pa (1 - pb) + pb (1 - pa)`` of their bits; sparse codes (a
    symmetric picture ties many DCT coefficients) are therefore close by
    construction, and only the standardised distance is comparable across codes.

    Parameters
    ----------
    distance, ones_a, ones_b : ``[shape=(m,)]`` Hamming distances and bit counts
    dim : code length in bits

    Returns
    -------
    float64 ``[shape=(m,)]``: ``(distance - dim q) / sqrt(dim q (1 - q))``
    """
    pa = np.asarray(ones_a, dtype=np.float64) / dim
    pb = np.asarray(ones_b, dtype=np.float64) / dim
    q = np.clip(pa * (1 - pb) + pb * (1 - pa), 1.0 / dim, 1 - 1.0 / dim)
    return (np.asarray(distance, dtype=np.float64) - dim * q) / np.sqrt(dim * q * (1 - q))


def fit_null(distances: np.ndarray, *, prior: tuple[float, float], independent: int | None = None) -> dict[str, Any]:
    """Fit a null model of chance-pair distances (smaller = closer).

    The model is a normal law fitted robustly to the bulk of the distances
    (median, and the spread of the central half), with its spread widened by
    :data:`TAIL_WIDENING` for tails heavier than normal. The bulk, not the
    extreme tail, is used on purpose: a library holds related works (variants,
    series) whose mutual closeness is no chance, and fitting the tail to them
    would call every real copy a chance match.

    Parameters
    ----------
    distances : ``[shape=(m,)]`` distances between rows of different works
        (standardised Hamming distances, or ``1 - cosine``).
    prior : (centre, spread) used when there are too few pairs to fit (a tiny index)
    independent : how many of the pairs are independent samples, when fewer than ``m``
        (the same stretch of speech described through several channels): the
        prior applies below :data:`MIN_NULL_PAIRS` of them

    Returns
    -------
    dict
        JSON-serialisable model for :func:`pair_rate`: ``centre``, ``spread``
        (before widening), ``pairs``, and ``mean``/``std`` for information.
    """
    d = np.asarray(distances, dtype=np.float64)
    m = len(d)
    if (m if independent is None else min(m, independent)) < MIN_NULL_PAIRS:
        return {"pairs": int(m), "centre": prior[0], "spread": prior[1], "tail_widening": TAIL_WIDENING,
                "prior": True}
    q25, centre, q75 = np.quantile(d, [0.25, 0.5, 0.75])
    spread = max((q75 - q25) / 1.349, 1e-6)  # interquartile range of a normal law
    return {"pairs": int(m), "centre": float(centre), "spread": float(spread),
            "tail_widening": TAIL_WIDENING, "mean": float(d.mean()), "std": float(d.std())}


#: The measured lower tail (:func:`fit_tail`): its largest rate, the step between its points
#: (decades of rate), the fewest pairs below its smallest point, and the fewest decades it
#: must span to be used (so at least 100,000 pairs: about 450 works). Over one decade (150
#: openclipart works) its slope, extrapolated, made the deepest tail heavier than the normal
#: law by three decades and turned flags of copies into reviews.
TAIL_TOP = 1e-2
TAIL_STEP = 0.25
TAIL_MIN_PAIRS = 10
TAIL_DECADES = 2
#: Points of the measured tail its extrapolation below the last one is fitted on (its last
#: decade of rate).
TAIL_FIT_POINTS = 5


def fit_tail(distances: np.ndarray, *, decades: int = TAIL_DECADES) -> dict[str, Any] | None:
    """The lower tail of chance-pair distances as measured: where the rate of pairs at most that
    close falls through :data:`TAIL_TOP`, then every :data:`TAIL_STEP` decade below, down to the
    rate :data:`TAIL_MIN_PAIRS` pairs give.

    A normal law fitted to the bulk (:func:`fit_null`) is the safe model of most
    distances, but the tail of a learned copy descriptor's is far lighter than normal
    (on a 10,000-work library, d' <= 0.17 for 3.1e-5 of the pairs where the normal law
    says 2.1e-2), and at scale the tail is all that decides. Quantiles of the pairs
    themselves say how rare a distance is as far as they reach; :func:`pair_rate`
    extrapolates below them along their last decade.

    Parameters
    ----------
    distances : ``[shape=(m,)]`` distances between rows of different works
    decades : the fewest decades of rate the tail must span (:data:`TAIL_DECADES`)

    Returns
    -------
    dict ``{"distance": [...], "log10_rate": [...], "pairs": m}``, closest first, or None
    when there are too few pairs for ``decades`` decades of tail
    """
    d = np.sort(np.asarray(distances, dtype=np.float64))
    m = len(d)
    if m < TAIL_MIN_PAIRS / TAIL_TOP * 10 ** decades:
        return None
    lowest = np.log10(TAIL_MIN_PAIRS / m)
    logs = np.arange(np.log10(TAIL_TOP), lowest - 1e-9, -TAIL_STEP)[::-1]
    x = np.quantile(d, 10.0 ** logs, method="inverted_cdf")
    return {"distance": [round(float(v), 6) for v in x], "log10_rate": [round(float(v), 4) for v in logs],
            "pairs": int(m)}


@functools.lru_cache(maxsize=64)
def _slope(x: tuple[float, ...], y: tuple[float, ...]) -> float:
    """Least-squares slope of ``y`` against ``x`` (0 where it is undefined): a tail's closest
    points, the same for every query of an index, so fitted once (a fit costs more than the rest
    of a picture's chance)."""
    if len(x) < 2 or max(x) == min(x):
        return 0.0
    return float(np.polyfit(np.asarray(x, np.float64), np.asarray(y, np.float64), 1)[0])


def tail_rate(distance: np.ndarray, tail: dict[str, Any]) -> np.ndarray:
    """Chance that an unrelated pair is at most ``distance`` apart, from the measured tail
    (:func:`fit_tail`): interpolated between its points (log rate against distance), extrapolated
    below them along the slope of its :data:`TAIL_FIT_POINTS` closest (no lower than its last
    point where that slope is not positive), 1 above its top (the bulk's model applies there).

    Returns
    -------
    float64 ``[shape=distance.shape]`` in ``[MIN_RATE, 1]``
    """
    x = np.asarray(tail["distance"], dtype=np.float64)
    y = np.asarray(tail["log10_rate"], dtype=np.float64)
    d = np.asarray(distance, dtype=np.float64)
    out = np.interp(d, x, y, left=y[0], right=0.0)
    k = min(TAIL_FIT_POINTS, len(x))
    slope = _slope(tuple(tail["distance"][:k]), tuple(tail["log10_rate"][:k]))
    if slope > 0:
        out = np.where(d < x[0], y[0] - slope * (x[0] - d), out)
    return np.clip(10.0 ** out, MIN_RATE, 1.0)


def pair_rate(distance: np.ndarray | float, null: dict[str, Any]) -> np.ndarray:
    """Chance that an unrelated pair is at most ``distance`` apart.

    The normal law of :func:`fit_null`; where the null also measured its lower tail
    (``null["tail"]``, :func:`fit_tail`), that tail below its top (:data:`TAIL_TOP`),
    lighter or heavier than the normal law's, and the normal law above it, never
    under the tail's top (rates keep growing with the distance).

    Parameters
    ----------
    distance : distance(s) on the scale the null was fitted on
    null : the model from :func:`fit_null`

    Returns
    -------
    float64 ``[shape=distance.shape]`` in ``[MIN_RATE, 1]``
    """
    z = (np.asarray(distance, dtype=np.float64) - null["centre"]) / (
        null["spread"] * null.get("tail_widening", TAIL_WIDENING))
    rate = np.clip(0.5 * _erfc(-z / np.sqrt(2)), MIN_RATE, 1.0)
    tail = null.get("tail")
    if tail is None:
        return rate
    top = 10.0 ** tail["log10_rate"][-1]
    return np.where(np.asarray(distance, dtype=np.float64) < tail["distance"][-1], tail_rate(distance, tail),
                    np.maximum(rate, top))


def distance_at_rate(rate: float, null: dict[str, Any]) -> float:
    """The distance at which :func:`pair_rate` is ``rate``: how close a pair must be to be that rare
    by chance (what a threshold on expected chance matches means on the null's own scale)."""
    from statistics import NormalDist

    spread = null["spread"] * null.get("tail_widening", TAIL_WIDENING)
    return float(null["centre"] + spread * NormalDist().inv_cdf(min(max(rate, MIN_RATE), 1.0 - 1e-12)))


def expected_chance(distance: np.ndarray | float, null: dict[str, Any], comparisons: int) -> np.ndarray:
    """Expected number of chance matches at least this close among ``comparisons`` pairs.

    ``comparisons`` is what one query is compared with: the index's rows times
    the query's own rows.
    """
    return pair_rate(distance, null) * max(int(comparisons), 1)


#: Chance rate per pair at which a code's neighbourhood is counted for crowding:
#: the nearest one in a thousand unrelated codes.
CROWD_RATE = 1e-3
#: Neighbours looked at per code when counting its crowd.
CROWD_K = 64
#: Codes compared against when counting crowds; a larger library is subsampled.
CROWD_SAMPLE = 200_000
#: Largest crowding factor (a code in a crowd this dense is stock material).
MAX_CROWDING = 1e4


def crowding(codes: np.ndarray, work_ids: np.ndarray, null: dict[str, Any], *,
             usable: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """How much more crowded each code's neighbourhood is than the null predicts.

    The null says what share of unrelated codes lies within a distance of any
    code; a stock shape (a star, an arrow, a plain frame) recurs across many
    works, so far more of the library's codes sit near it than the null
    predicts, and an output near it is near it by chance far more often. This
    is a library-wide inverse document frequency for hashes (as cross-domain
    similarity local scaling penalises hubs in nearest-neighbour retrieval):
    the chance rate of a match on code ``r`` is multiplied by

        ``rho_r = max(1, (1 + n_r) / (1 + E_r))``

    where ``n_r`` counts other works' codes within the null's
    :data:`CROWD_RATE` quantile of ``r`` and ``E_r = CROWD_RATE * (codes of
    other works)`` is what the null expects there. A distinctive code, simple
    or not, keeps ``rho = 1``.

    Parameters
    ----------
    codes : uint8 ``[shape=(n, nbytes)]`` packed binary codes
    work_ids : int ``[shape=(n,)]`` the work of each code
    null : the model of :func:`fit_null`, on standardised Hamming distances
    usable : bool ``[shape=(n,)]``, codes that count (informative, not
        featureless); others get ``rho = 1`` and are not counted
    seed : sample of the library compared against, when it is larger than
        :data:`CROWD_SAMPLE`

    Returns
    -------
    float32 ``[shape=(n,)]`` crowding factors, >= 1
    """
    import faiss

    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    work_ids = np.asarray(work_ids, np.int64)
    n, dim = len(codes), codes.shape[1] * 8
    out = np.ones(n, np.float32)
    idx = np.flatnonzero(np.ones(n, bool) if usable is None else usable)
    if len(idx) < 2:
        return out
    pool = idx
    if len(pool) > CROWD_SAMPLE:
        pool = np.sort(np.random.default_rng(seed).choice(pool, CROWD_SAMPLE, replace=False))
    scale = len(idx) / len(pool)  # counts in the sample stand for the whole library
    index = faiss.IndexBinaryFlat(dim)
    index.add(codes[pool])
    k = min(CROWD_K, len(pool))
    D, I = index.search(codes[idx], k)
    ones = np.bitwise_count(codes).sum(axis=1).astype(np.int64)
    nb = pool[np.maximum(I, 0)]
    z = standardize_hamming(D, ones[idx][:, None], ones[nb], dim)
    # the distance at which a share CROWD_RATE of unrelated pairs lies, in the null's units
    z0 = null["centre"] + null["spread"] * null.get("tail_widening", TAIL_WIDENING) * math.sqrt(2) * \
        float(_erfinv(2 * CROWD_RATE - 1))
    near = (I >= 0) & (work_ids[nb] != work_ids[idx][:, None]) & (z <= z0)
    counted = near.sum(axis=1) * scale
    own = np.bincount(work_ids[idx] - work_ids[idx].min())[work_ids[idx] - work_ids[idx].min()]
    expected = CROWD_RATE * (len(idx) - own)
    out[idx] = np.clip((1.0 + counted) / (1.0 + expected), 1.0, MAX_CROWDING)
    return out


def _erfinv(y: float) -> float:
    """Inverse error function by bisection on :func:`math.erf` (a scalar, once per index)."""
    lo, hi = -6.0, 6.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if math.erf(mid) < y:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def fit_inlier_null(inliers: np.ndarray, *, candidates: int,
                    prior: dict[str, float] | None = None) -> dict[str, Any]:
    """Fit a null model of landmark inlier counts (larger = closer).

    ``inliers`` are the counts of chance candidates: references verified
    against the best-voted other works (:func:`scanner.match.landmarks.landmark_null_scores`).
    Above a threshold ``u`` (their median), the chance that a candidate
    reaches ``n`` inliers is modelled as an exponential tail,
    ``P(X >= n) = p_u exp(-(n - u) / scale)`` (a generalised-Pareto tail with
    shape 0: consensus among random pairs falls off geometrically), widened by
    :data:`TAIL_WIDENING`. The scale is read from how the histogram of counts
    falls off from ``u`` until the counts are an eighth of the count at ``u``
    (a least-squares line through the logarithm of the counts), not from the
    extreme tail, on purpose: a library holds related works (a series,
    variants, the same picture filed twice; a quarter of the best candidates
    in the whole openclipart collection) whose shared keypoints are no chance,
    and fitting them would call real copies chance. ``p_u`` counts them,
    which keeps it on the safe side.

    Parameters
    ----------
    inliers : ``[shape=(m,)]`` inlier counts of chance candidates (0: not verified)
    candidates : candidates verified per query (every one is a chance to match)
    prior : ``threshold``, ``p_threshold``, ``scale`` used when there are fewer
        than :data:`MIN_INLIER_SAMPLES` counts (:data:`PRIOR_INLIERS` by default;
        audio fingerprints pass :data:`PRIOR_ALIGNED`)

    Returns
    -------
    dict
        JSON-serialisable model for :func:`expected_inliers`: ``threshold``
        (``u``), ``p_threshold``, ``scale`` (before widening), ``candidates``,
        ``samples``, ``prior`` when too few samples to fit.
    """
    x = np.rint(np.asarray(inliers, dtype=np.float64)).astype(np.int64)
    model: dict[str, Any] = {"kind": "inliers", "candidates": int(candidates), "samples": int(len(x)),
                             "tail_widening": TAIL_WIDENING}
    if len(x) < MIN_INLIER_SAMPLES:
        return {**model, **(prior or PRIOR_INLIERS), "prior": True}
    u = int(np.quantile(x, 0.5))
    counts = np.bincount(x[x >= u] - u).astype(np.float64)
    body = np.flatnonzero(counts < counts[0] / 8)
    span = counts[: body[0] if len(body) else len(counts)]
    n = np.flatnonzero(span > 0)
    if len(n) >= 2:
        slope, _ = np.polyfit(n, np.log(span[n]), 1, w=np.sqrt(span[n]))
        scale = -1.0 / slope if slope < 0 else np.inf
    else:  # all of the body in one count: it falls off within one inlier
        scale = MIN_INLIER_SCALE
    scale = float(np.clip(scale, MIN_INLIER_SCALE, MAX_INLIER_SCALE))
    return {**model, "threshold": float(u), "p_threshold": float(np.mean(x >= u)), "scale": scale,
            "quantiles": [float(q) for q in np.quantile(x, [0.5, 0.9, 0.99])], "max": float(x.max())}


def expected_inliers(inliers: np.ndarray | float, null: dict[str, Any]) -> np.ndarray:
    """Expected number of chance candidates with at least this many inliers, per query.

    ``candidates * P(X >= n)`` under the model of :func:`fit_inlier_null`.
    """
    n = np.asarray(inliers, dtype=np.float64)
    scale = null["scale"] * null.get("tail_widening", TAIL_WIDENING)
    rate = np.minimum(null["p_threshold"] * np.exp(-(n - null["threshold"]) / scale), 1.0)
    rate = np.where(n < null["threshold"], 1.0, rate)
    return np.clip(rate, MIN_RATE, 1.0) * max(int(null["candidates"]), 1)


def expected_landmark(inliers: np.ndarray, statistic: np.ndarray,
                      nulls: dict[str, dict[str, Any]]) -> np.ndarray:
    """Expected chance candidates per query for landmark evidence counted by several statistics.

    Each count is scored against the null of the statistic that counted it
    (:func:`expected_inliers`); as a scan keeps, per work, the most
    significant of the statistics it tested, each is multiplied by their
    number (Bonferroni's bound on the chance that any of them is this strong).

    Parameters
    ----------
    inliers : ``[shape=(m,)]`` inlier counts
    statistic : str ``[shape=(m,)]`` the statistic of each count
    nulls : statistic -> its null (:func:`fit_inlier_null`), every statistic tested

    Returns
    -------
    float64 ``[shape=(m,)]``
    """
    inliers = np.asarray(inliers, np.float64)
    statistic = np.asarray(statistic)
    out = np.full(len(inliers), np.inf)
    for name, null in nulls.items():
        at = statistic == name
        out[at] = expected_inliers(inliers[at], null) * len(nulls)
    return out


#: Fewer chance scores than this and :func:`fit_score_null` keeps its prior.
MIN_SCORE_SAMPLES = 50


def fit_score_null(scores: np.ndarray, *, prior: tuple[float, float]) -> dict[str, Any]:
    """Fit a null model of a score that is itself a best chance match (larger = closer).

    ``scores`` are the best chance matches of reference excerpts queried like
    a scan against the rest of the index (the statistic that is scored, after
    the maximum over candidates and alignments). The model is a normal upper
    tail: centred on their median, with the wider of the spreads their 90th
    and 99th percentiles imply, so a tail heavier than normal in the sample
    widens it and a lighter one does not narrow it below the 90th
    percentile's. No further widening: the maximum the scan takes is already
    in the sample.

    Parameters
    ----------
    scores : ``[shape=(m,)]`` best chance scores, one per sampled excerpt
    prior : (centre, spread) used with fewer than :data:`MIN_SCORE_SAMPLES` scores

    Returns
    -------
    dict
        JSON-serialisable model for :func:`score_rate`: ``centre``, ``spread``,
        ``samples``, ``quantiles`` (50/90/99th) and ``max``, or ``prior``.
    """
    x = np.asarray(scores, dtype=np.float64)
    if len(x) < MIN_SCORE_SAMPLES:
        return {"kind": "score", "centre": float(prior[0]), "spread": float(prior[1]), "samples": int(len(x)),
                "prior": True}
    q50, q90, q99 = np.quantile(x, [0.5, 0.9, 0.99])
    spread = max((q90 - q50) / 1.2816, (q99 - q50) / 2.3263, 1e-6)
    return {"kind": "score", "centre": float(q50), "spread": float(spread), "samples": int(len(x)),
            "quantiles": [float(q50), float(q90), float(q99)], "max": float(x.max())}


def score_rate(score: np.ndarray | float, null: dict[str, Any]) -> np.ndarray:
    """Chance that a best chance match scores at least ``score``, under :func:`fit_score_null`'s model.

    Returns
    -------
    float64 ``[shape=score.shape]`` in ``[MIN_RATE, 1]``
    """
    z = (np.asarray(score, dtype=np.float64) - null["centre"]) / null["spread"]
    return np.clip(0.5 * _erfc(z / np.sqrt(2)), MIN_RATE, 1.0)


def strength(expected: np.ndarray | float, policy: Policy) -> np.ndarray:
    """A 0–1 strength for display: 0 at chance level, 0.5 at review, 0.8 at flag, 1 at 1e-12.

    Piecewise linear in ``-log10(expected)``.
    """
    e = -np.log10(np.clip(np.asarray(expected, dtype=np.float64), 1e-300, None))
    anchors = [0.0, -np.log10(policy.review_at), -np.log10(policy.flag_at), 12.0]
    return np.interp(e, anchors, [0.0, 0.5, 0.8, 1.0])


def one_in(expected: float) -> str:
    """Plain-words rendering of a significance: ``"1 in 3.2 million by chance"``."""
    if expected >= 0.5:
        return "likely by chance"
    n = 1.0 / max(expected, 1e-300)
    if n >= 1e15:
        return "less than 1 in 1,000 trillion by chance"
    for unit, size in (("trillion", 1e12), ("billion", 1e9), ("million", 1e6)):
        if n >= size:
            return f"1 in {n / size:.3g} {unit} by chance"
    return f"1 in {n:,.0f} by chance"


# --- verdicts ---------------------------------------------------------------------------


#: Features whose agreement may rest on a picture's outline alone (a stock silhouette on white:
#: a gold coin and an egg-shaped drawing share their low frequencies), and the feature that must
#: then see the same work for the match to flag.
OUTLINE_FEATURES = ("image-phash",)
OUTLINE_CONFIRM = "image-sscd"
#: Expected chance matches at most which the confirming feature counts as seeing a work (lenient:
#: as close as the nearest of the works it finds by chance for any output). Being its nearest
#: work is not enough: a CD on white is nearest a blue globe at 6.8 expected chance matches.
CONFIRM_AT = 1.0
#: Shorter side (pixels) below which a picture is not asked for confirmation: the descriptor
#: sees it upscaled more than twice to its 288-pixel input, and a thumbnail-sized copy of a
#: work is then no longer near it (on clip art, every copy whose hash flag went unconfirmed
#: this way was under 75 pixels).
CONFIRM_MIN_SIDE = 128


def outline_only(matches: list[dict[str, Any]], policy: Policy, *, confirmed_by: bool) -> None:
    """Mark flag-strength matches of :data:`OUTLINE_FEATURES` that no other feature confirms.

    A perceptual hash agrees on low frequencies, which a stock silhouette on a plain
    background carries alone; so where the output was also seen by :data:`OUTLINE_CONFIRM`
    (``confirmed_by``: the caller also leaves out pictures under :data:`CONFIRM_MIN_SIDE`), a
    hash match flags only if that feature found the same work within :data:`CONFIRM_AT`
    chance matches, or another copy feature found it at flag strength; else
    it is marked ``unconfirmed`` and goes to review (:func:`decide`). Changes ``matches`` in place.
    """
    if not confirmed_by:
        return
    seen = {(m["work_id"]) for m in matches
            if (m["feature"] not in OUTLINE_FEATURES and not m.get("fused_from")
                and m["expected"] <= (CONFIRM_AT if m["feature"] == OUTLINE_CONFIRM else policy.flag_at))}
    for m in matches:
        if m["feature"] in OUTLINE_FEATURES and m["expected"] <= policy.flag_at and m["work_id"] not in seen:
            m["unconfirmed"] = f"not confirmed by {OUTLINE_CONFIRM} (the outline alone may explain it)"


def decide(matches: Iterable[dict[str, Any]], policy: Policy, *,
           featureless: str | None = None) -> tuple[str, str]:
    """Verdict and its plain-words reason for one checked output.

    Parameters
    ----------
    matches : per-work evidence dicts with ``feature``, ``expected`` (chance
        matches), ``licensed`` (bool) and ``featureless_ref`` (reason or None);
        a talent's (:mod:`scanner.talents`) has ``talent`` and ``consent`` (words), and
        flags like copy evidence unless the consent in force makes it ``licensed``;
        fused evidence lists its parts in ``fused_from`` (feature -> expected);
        ``unconfirmed`` (why, or absent) keeps a copy match from flagging on its own
        (:func:`outline_only`)
    policy : thresholds
    featureless : why the output itself carries no identifiable expression

    Returns
    -------
    (verdict, reason)
    """
    matches = [m for m in matches if m["expected"] <= policy.review_at]
    if not matches:
        if featureless:
            return "clear", f"{featureless}: carries no identifiable expression, not judged similar"
        return "clear", "no match closer than chance"

    def judge(m: dict[str, Any]) -> tuple[str, str]:
        if featureless or m.get("featureless_ref"):
            return "clear", (f"{featureless or m['featureless_ref']}: a collision on featureless "
                             "content is not evidence of copying")
        # fused evidence is copy evidence when every part of it is
        copy = all(f in policy.copy_features for f in (m.get("fused_from") or [m["feature"]]))
        if m.get("talent"):  # a protected performer's face or voice: flags like copy evidence
            said = describe_match(m["talent"], m.get("consent") or "no")
            return ("review", f"doubtful {m['feature']} match, {said}: a person decides") \
                if m["expected"] > policy.flag_at else ("flagged", said)
        if m["expected"] > policy.flag_at:
            return "review", f"doubtful {m['feature']} match: a person decides"
        if copy and m.get("unconfirmed"):
            return "review", f"{m['feature']} match {m['unconfirmed']}: a person decides"
        if copy:
            return "flagged", f"copy evidence from {m['feature']}"
        return policy.semantic_cap, f"semantic likeness only ({m['feature']}): a person decides"

    judged = [(judge(m), m) for m in matches]
    (verdict, reason), best = min(judged, key=lambda t: (VERDICTS.index(t[0][0]), t[1]["expected"]))
    if verdict in ("flagged", "review") and best.get("licensed"):
        if best.get("talent"):
            return "licensed", describe_match(best["talent"], best.get("consent") or "yes")
        return "licensed", "matches a work the studio holds the rights to: " + reason
    return verdict, reason


# --- calibration from labelled examples ----------------------------------------------------

#: Fewer labelled negatives than this and a calibration says its precision is not shown.
MIN_CALIBRATION_NEGATIVES = 100
#: Bounds of calibrated thresholds: never looser than a one-in-ten chance match,
#: never tighter than what the fitted tails can tell apart.
CALIBRATION_BOUNDS = (1e-15, 0.1)
#: How far below the first negative it must not call a review threshold sits.
RATE_MARGIN = 3.0


def threshold_for_precision(pos: np.ndarray, neg: np.ndarray, target: float) -> float | None:
    """Loosest significance threshold whose precision on labelled examples meets a target.

    Outputs with expected chance matches ``e <= t`` are called; precision is
    the share of called outputs that are positives. The threshold returned
    lies a factor :data:`RATE_MARGIN` below the first score that would break
    the target (never below the last score admitted), so unseen outputs a
    little weaker than the admitted positives are still called while the
    nearest negative keeps a margin.

    Parameters
    ----------
    pos, neg : ``[shape=(n,)]`` expected chance matches of the best evidence of
        each labelled positive (a copy) and negative (unrelated); ``inf`` when
        an output had no evidence at all
    target : precision to reach, in (0, 1]

    Returns
    -------
    float or None
        The threshold, or ``None`` when not even the strongest score reaches
        the target precision.
    """
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    scores = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)])
    order = np.argsort(scores, kind="stable")
    scores, is_pos = scores[order], is_pos[order]
    # a threshold sits between distinct scores: judge it at the last of each run of ties
    last = np.r_[scores[1:] != scores[:-1], True] & np.isfinite(scores)
    tp = np.cumsum(is_pos)
    precision = tp / np.arange(1, len(scores) + 1)
    ok = np.flatnonzero(last & (precision >= target) & (tp > 0))
    if not len(ok):
        return None
    i = int(ok[-1])
    nxt = scores[i + 1] if i + 1 < len(scores) else np.inf
    t = max(float(scores[i]), nxt / RATE_MARGIN) if np.isfinite(nxt) else float(scores[i]) * RATE_MARGIN
    return float(np.clip(t, *CALIBRATION_BOUNDS))


def threshold_for_rate(neg: np.ndarray, rate: float) -> float:
    """Loosest significance threshold that calls at most a share ``rate`` of the negatives.

    The threshold sits a factor :data:`RATE_MARGIN` below the first negative
    it must not call, so the share holds with a margin on unseen negatives of
    the same kind.

    Parameters
    ----------
    neg : ``[shape=(n,)]`` best expected chance matches per labelled negative
    rate : share of negatives allowed, in [0, 1]

    Returns
    -------
    float, within :data:`CALIBRATION_BOUNDS`
    """
    neg = np.sort(np.asarray(neg, dtype=np.float64))  # inf (no evidence) sorts last
    allowed = int(np.floor(rate * len(neg) + 1e-9))
    if allowed >= len(neg) or not np.isfinite(neg[allowed]):
        return CALIBRATION_BOUNDS[1]
    return float(np.clip(neg[allowed] / RATE_MARGIN, *CALIBRATION_BOUNDS))


def calibrate(pos_copy: np.ndarray, neg_copy: np.ndarray, pos_any: np.ndarray, neg_any: np.ndarray, *,
              target_precision: float = 0.99, max_flag_rate: float = 0.01, max_review_rate: float = 0.05,
              base: Policy | None = None) -> tuple[Policy, dict[str, Any]]:
    """Verdict thresholds from labelled positives and negatives.

    ``flag_at`` is the loosest threshold on copy evidence whose precision on
    the labelled set meets ``target_precision`` and that flags at most
    ``max_flag_rate`` of the negatives (precision alone moves with the share
    of copies in the labelled set: nine copies to one negative let a
    precision of 0.99 flag every tenth negative). ``review_at`` is the loosest
    threshold on any evidence that sends at most ``max_review_rate`` of the
    negatives to a person (precision is the wrong yardstick there: it moves
    with the share of copies in the labelled set, while the workload of
    reviewers is a rate on unrelated outputs); never tighter than ``flag_at``.
    Where the precision target cannot be met, the base policy's ``flag_at`` is
    kept and the report says so.

    Parameters
    ----------
    pos_copy, neg_copy : ``[shape=(n,)]`` best copy-evidence expected chance
        matches per labelled positive / negative (``inf``: none)
    pos_any, neg_any : the same over every feature (semantic ones included)
    target_precision : in (0, 1]
    max_flag_rate : share of negatives a calibrated policy may flag, in [0, 1]
    max_review_rate : share of negatives a calibrated policy may send to review, in [0, 1]
    base : thresholds to start from (the index's current policy)

    Returns
    -------
    (Policy, report)
        The calibrated policy and a JSON-serialisable report: counts,
        thresholds, precision and recall of flagging and of flag-or-review on
        the labelled set, and warnings.
    """
    if not (0 < target_precision <= 1):
        raise ParameterError(f"target precision must lie in (0, 1], given {target_precision}")
    for name, rate in (("flag", max_flag_rate), ("review", max_review_rate)):
        if not (0 <= rate <= 1):
            raise ParameterError(f"{name} rate must lie in [0, 1], given {rate}")
    base = base or Policy()
    pos_copy, neg_copy, pos_any, neg_any = (np.asarray(a, dtype=np.float64)
                                            for a in (pos_copy, neg_copy, pos_any, neg_any))
    warnings = []
    if len(pos_copy) == 0 or len(neg_copy) == 0:
        raise ParameterError(f"calibration needs labelled positives and negatives that could be checked; "
                             f"given {len(pos_copy)} positive(s) and {len(neg_copy)} negative(s)")
    flag_at = threshold_for_precision(pos_copy, neg_copy, target_precision)
    if flag_at is None:
        warnings.append(f"no threshold reaches precision {target_precision} on copy evidence; "
                        f"flag_at kept at {base.flag_at:g}")
        flag_at = base.flag_at
    flag_at = min(flag_at, threshold_for_rate(neg_copy, max_flag_rate))
    review_at = threshold_for_rate(neg_any, max_review_rate)
    if len(neg_copy) < MIN_CALIBRATION_NEGATIVES:
        # zero false calls among n negatives bounds the false-call rate only by
        # about 3/n: too few to loosen thresholds on, enough to tighten them
        warnings.append(f"only {len(neg_copy)} negatives: thresholds may only tighten (give at least "
                        f"{MIN_CALIBRATION_NEGATIVES} to loosen them)")
        flag_at, review_at = min(flag_at, base.flag_at), min(review_at, base.review_at)
    review_at = max(review_at, flag_at)
    policy = Policy(flag_at=flag_at, review_at=review_at, semantic_cap=base.semantic_cap,
                    copy_features=base.copy_features).validate()

    def rates(pos: np.ndarray, neg: np.ndarray, t: float) -> dict[str, Any]:
        tp, fp = int(np.sum(pos <= t)), int(np.sum(neg <= t))
        return {"threshold": t, "recall": tp / len(pos), "precision": tp / (tp + fp) if tp + fp else None,
                "positives_called": tp, "negatives_called": fp}

    report = {"positives": int(len(pos_copy)), "negatives": int(len(neg_copy)),
              "target_precision": target_precision, "max_flag_rate": max_flag_rate,
              "max_review_rate": max_review_rate,
              "flag": rates(pos_copy, neg_copy, flag_at), "review": rates(pos_any, neg_any, review_at),
              "before": {"flag_at": base.flag_at, "review_at": base.review_at}, "warnings": warnings}
    return policy, report


# --- fusing features ---------------------------------------------------------------------

#: Correlation between two features' evidence under the null when the index
#: could not measure it (few works): on the safe side, strongly correlated.
PRIOR_FUSION_CORRELATION = 0.6


def fused_rate(rates: np.ndarray, correlation: float) -> np.ndarray:
    """Chance that an unrelated work shows every feature's evidence at least this strong.

    Fisher's combination ``X = -2 sum(ln p_i)`` with Brown's correction for
    correlated tests: ``X / c`` follows a chi-squared law with ``f`` degrees
    of freedom, matched to the mean and variance of ``X`` when each pair of
    features' ``-2 ln p`` has the covariance Kost and McDermott give for a
    correlation ``rho`` of the underlying scores (``3.263 rho + 0.710 rho^2 +
    0.027 rho^3``). Independent features (``rho = 0``) give Fisher's method;
    ``rho = 1`` gives back about the single strongest rate.

    Parameters
    ----------
    rates : float64 ``[shape=(m, k)]`` per-work chance rates of ``k`` features
        (1 where a feature has no evidence for that work)
    correlation : correlation of the features' scores between unrelated works, in [0, 1]

    Returns
    -------
    float64 ``[shape=(m,)]`` fused chance rates in ``[MIN_RATE, 1]``
    """
    from scipy.special import chdtrc

    p = np.clip(np.asarray(rates, dtype=np.float64), MIN_RATE, 1.0)
    k = p.shape[1]
    rho = float(np.clip(correlation, 0.0, 1.0))
    cov = 3.263 * rho + 0.710 * rho ** 2 + 0.027 * rho ** 3
    mean, var = 2.0 * k, 4.0 * k + k * (k - 1) * cov
    f, c = 2.0 * mean ** 2 / var, var / (2.0 * mean)
    x = -2.0 * np.log(p).sum(axis=1)
    return np.clip(chdtrc(f, x / c), MIN_RATE, 1.0)


def score_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two features' evidence over the same unrelated pairs, clipped to [0, 1].

    Parameters
    ----------
    a, b : ``[shape=(m,)]`` each feature's ``-log`` chance rate for the same
        (reference, other work) pairs

    Returns
    -------
    float: Spearman's rho (ties averaged), or :data:`PRIOR_FUSION_CORRELATION`
    when there are fewer than :data:`MIN_NULL_PAIRS` pairs or a feature is constant
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < MIN_NULL_PAIRS or np.ptp(a) == 0 or np.ptp(b) == 0:
        return PRIOR_FUSION_CORRELATION

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=r)
        return (sums / counts)[inv]  # average rank of ties

    return float(np.clip(np.corrcoef(ranks(a), ranks(b))[0, 1], 0.0, 1.0))
