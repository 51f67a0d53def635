"""Fused copy evidence: a hash match and a geometric match on one work, stronger together.

Two moderate matches on one work, a hash and a geometry, are stronger
together than either alone, by as much as their correlation between
unrelated works allows: measured at build (:func:`fit_fusion`, kept in
``manifest["fusion"]``), applied at scan (:func:`fuse`,
:func:`scanner.policy.fused_rate`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from scanner import policy as pol
from scanner.match import kind_of
from scanner.match.base import Writer


def fit_fusion(writer: Writer, nulls: dict[str, Any],
               chance_pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    """How correlated the copy features' evidence is between unrelated works.

    For each feature that left chance pairs (a landmark feature's (reference,
    chance candidate) pairs, from its null fit) and each feature that fuses
    (:meth:`FeatureKind.fusable`: binary hashes, the learned copy descriptor) with a null, the pairs are
    scored by the second too, and the rank correlation of the two is kept:
    :func:`scanner.policy.fused_rate` discounts fused evidence by it.

    Returns
    -------
    list of ``{"features": [a, b], "correlation": rho, "pairs": m}``
    """
    out = []
    for landmark, (scores, q, c) in chance_pairs.items():
        for name in writer.feature_names():
            kind = kind_of(writer.spec(name))
            if not kind.fusable(name) or name not in nulls:
                continue
            ok = c >= 0
            rho = pol.PRIOR_FUSION_CORRELATION
            if ok.sum() >= pol.MIN_NULL_PAIRS:
                rho = pol.score_correlation(scores[ok], kind.pair_scores(writer, name, q[ok], c[ok]))
            out.append({"features": sorted([landmark, name]), "correlation": round(float(rho), 4),
                        "pairs": int(ok.sum())})
    return out


def fuse(evidence: Sequence[dict[str, Any]], fusions: Sequence[dict[str, Any]], n_works: int,
         policy: pol.Policy) -> list[dict[str, Any]]:
    """Evidence of two copy features for one work, fused (:func:`scanner.policy.fused_rate`).

    Parameters
    ----------
    evidence : one input's match dicts (``work_id``, ``feature``, ``expected``, ``featureless_ref``, ...)
    fusions : the index's ``manifest["fusion"]``
    n_works : works in the index

    Returns
    -------
    list of match dicts: a fused match only where it is stronger than its
    parts; it keeps the stronger part's locator and lists its parts.
    """
    n = max(n_works, 1)
    out = []
    for spec in fusions:
        a, b = spec["features"]
        best: dict[int, dict[str, dict[str, Any]]] = {}
        for m in evidence:
            # a look again where the other feature placed the work stands on that geometry: not fused with it
            if m["feature"] in (a, b) and not m["featureless_ref"] and "aligned_by" not in (m["locator"] or {}):
                cur = best.setdefault(m["work_id"], {}).get(m["feature"])
                if cur is None or m["expected"] < cur["expected"]:
                    best[m["work_id"]][m["feature"]] = m
        both = [(w, ms) for w, ms in best.items() if len(ms) == 2]
        if not both:
            continue
        rates = np.array([[min(ms[f]["expected"] / n, 1.0) for f in (a, b)] for _, ms in both])
        fused = pol.fused_rate(rates, spec["correlation"]) * n
        for (w, ms), e in zip(both, fused):
            parts = sorted(ms.values(), key=lambda m: m["expected"])
            if e >= parts[0]["expected"]:
                continue
            out.append({**parts[0], "feature": f"{a}+{b}", "expected": float(e), "chance": pol.one_in(e),
                        "score": round(float(pol.strength(e, policy)), 4), "raw": None,
                        "raw_kind": "fused", "fused_from": {m["feature"]: m["expected"] for m in parts}})
    return out
