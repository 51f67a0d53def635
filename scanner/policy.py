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

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np

from scanner.errors import ParameterError

VERDICTS = ("flagged", "error", "review", "licensed", "clear")
#: Features whose match is evidence of copying (not semantic likeness).
COPY_EVIDENCE = frozenset({"image-phash", "image-local", "audio-fingerprint"})
#: Pairs sampled to fit a null distribution.
NULL_PAIRS = 400_000
#: Tail levels kept in the fitted null (per-pair chance rates).
_LEVELS = np.logspace(-7, np.log10(0.5), 48)
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


def fit_null(distances: np.ndarray) -> dict[str, Any]:
    """Fit a null model of chance-pair distances (smaller = closer).

    Keeps the empirical lower tail at fixed chance levels and an exponential
    extrapolation (log-rate linear in distance) below the smallest level the
    sample supports.

    Parameters
    ----------
    distances : ``[shape=(m,)]`` distances between pairs of different works
        (Hamming bits, or ``1 - cosine``).

    Returns
    -------
    dict
        JSON-serialisable model for :func:`pair_rate`.
    """
    d = np.sort(np.asarray(distances, dtype=np.float64))
    m = len(d)
    if m < 20:
        return {"pairs": int(m)}
    # levels the sample supports: at least ~5 pairs below each
    levels = _LEVELS[_LEVELS >= 5.0 / m]
    xs = np.quantile(d, levels)
    # tail slope from the lowest decade of supported levels
    lo = levels <= levels[0] * 20
    if lo.sum() >= 2 and np.ptp(xs[lo]) > 0:
        slope = float(np.polyfit(xs[lo], np.log10(levels[lo]), 1)[0])
    else:
        slope = float(np.log10(levels[-1] / levels[0]) / max(np.ptp(xs), 1e-9))
    # a tail must fall at least as fast as the bulk does, or extrapolation is too lenient
    bulk = np.log10(levels[-1] / levels[0]) / max(xs[-1] - xs[0], 1e-9)
    return {"pairs": int(m), "levels": levels.tolist(), "x": xs.tolist(),
            "slope": max(slope, bulk, 1e-9), "mean": float(d.mean()), "std": float(d.std())}


def pair_rate(distance: np.ndarray | float, null: dict[str, Any], *, dim: int | None = None) -> np.ndarray:
    """Chance that an unrelated pair is at most ``distance`` apart.

    Parameters
    ----------
    distance : distance(s) as in :func:`fit_null`
    null : the fitted model
    dim : int, optional
        Code length, used for a binomial prior when the index is too small to fit.

    Returns
    -------
    float64 ``[shape=distance.shape]`` in ``[MIN_RATE, 1]``
    """
    x = np.asarray(distance, dtype=np.float64)
    if "x" not in null:
        # too few works to fit: independent fair bits (hash) or a wide cosine prior
        from math import erf, sqrt

        mu, sd = ((dim / 2, sqrt(dim) / 2) if dim else (1.0, 0.08))
        z = (x - mu) / (sd * 2)  # doubled spread: real codes are correlated
        rate = 0.5 * (1 + np.vectorize(erf)(z / np.sqrt(2)))
        return np.clip(rate, MIN_RATE, 1.0)
    xs, levels = np.asarray(null["x"]), np.asarray(null["levels"])
    # tied quantiles (many pairs at one distance): the rate at that distance is
    # the highest level reaching it
    xs, last = np.unique(xs[::-1], return_index=True)
    levels = levels[::-1][last]
    log_rate = np.interp(x, xs, np.log10(levels))
    below = x < xs[0]
    log_rate = np.where(below, np.log10(levels[0]) - null["slope"] * (xs[0] - x), log_rate)
    rate = np.where(x > xs[-1], np.minimum(1.0, levels[-1] + (1 - levels[-1]) * (x - xs[-1]) /
                                           max(2 * null["mean"] - xs[-1], 1e-9)), 10 ** log_rate)
    return np.clip(rate, MIN_RATE, 1.0)


def expected_chance(distance: np.ndarray | float, null: dict[str, Any], comparisons: int,
                    *, dim: int | None = None) -> np.ndarray:
    """Expected number of chance matches at least this close among ``comparisons`` pairs.

    ``comparisons`` is what one query is compared with: the index's rows times
    the query's own rows.
    """
    return pair_rate(distance, null, dim=dim) * max(int(comparisons), 1)


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
    for unit, size in (("trillion", 1e12), ("billion", 1e9), ("million", 1e6)):
        if n >= size:
            return f"1 in {n / size:.3g} {unit} by chance" if n < size * 1000 or unit == "trillion" \
                else "1 in more than a trillion by chance"
    return f"1 in {n:,.0f} by chance"


# --- verdicts ---------------------------------------------------------------------------


def decide(matches: Iterable[dict[str, Any]], policy: Policy, *,
           featureless: str | None = None) -> tuple[str, str]:
    """Verdict and its plain-words reason for one checked output.

    Parameters
    ----------
    matches : per-work evidence dicts with ``feature``, ``expected`` (chance
        matches), ``licensed`` (bool) and ``featureless_ref`` (reason or None)
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
        copy = m["feature"] in policy.copy_features
        if m["expected"] > policy.flag_at:
            return "review", f"doubtful {m['feature']} match: a person decides"
        if copy:
            return "flagged", f"copy evidence from {m['feature']}"
        return policy.semantic_cap, f"semantic likeness only ({m['feature']}): a person decides"

    judged = [(judge(m), m) for m in matches]
    (verdict, reason), best = min(judged, key=lambda t: (VERDICTS.index(t[0][0]), t[1]["expected"]))
    if verdict in ("flagged", "review") and best.get("licensed"):
        return "licensed", "matches a work the studio holds the rights to: " + reason
    return verdict, reason
