"""Verdict counts per transform, and the ISC2021/DISC21 descriptor-track metrics.

Descriptor-track metrics (Douze et al., "The 2021 Image Similarity Dataset and
Challenge", and the reference code ``isc/metrics.py`` of facebookresearch/isc2021):

* every (query, reference, score) prediction of every query is pooled into one
  list, sorted by decreasing score; at equal scores wrong predictions come
  first (the worst case, so constant scores gain nothing);
* precision at rank i = correct predictions among the first i; recall = correct
  predictions among the first i / number of queries that have a ground truth;
* micro-average precision (muAP) = sum over ranks of (recall increase) x precision;
* recall at precision 0.9 = the highest recall reached at any rank whose
  precision is at least 0.9 (None if precision never reaches 0.9).

Here each copy's ground truth is its one reference; negatives are queries
without ground truth, so each of their predictions is a false one. The
predictions are a scan's ``candidates`` (the N nearest works of each input,
whatever the verdict).
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Sequence

import numpy as np

#: Verdicts that catch a copy (a person sees it).
CAUGHT = ("flagged", "review")


def candidate_score(candidate: dict[str, Any]) -> float:
    """The score ranked by the metrics: ``-log10(expected)`` of a candidate.

    ``expected`` is the scanner's expected number of chance matches at least
    this strong in the index (smaller is stronger). Its negative logarithm
    keeps the full order; the 0–1 ``score`` field saturates at 1 for every
    match stronger than 1e-12 expected, and the pessimistic tie rule would then
    rank all those ties wrong-first.
    """
    return -math.log10(max(float(candidate["expected"]), 1e-300))


def strength_score(candidate: dict[str, Any]) -> float:
    """The alternative score: the candidate's 0–1 ``score`` (reported for comparison)."""
    return float(candidate["score"])


def precision_recall(correct: np.ndarray, scores: np.ndarray, num_positives: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every rank of the pooled predictions.

    Parameters
    ----------
    correct : bool ``[shape=(m,)]`` whether each prediction is a ground-truth pair
    scores : float ``[shape=(m,)]`` larger is more similar
    num_positives : number of ground-truth pairs (queries with a reference)

    Returns
    -------
    precisions, recalls, thresholds : ``[shape=(m,)]``, by decreasing score
        (increasing recall); at equal scores wrong predictions rank first.
    """
    correct = np.asarray(correct, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((correct, -scores))  # by decreasing score, then wrong (False) first
    correct, scores = correct[order], scores[order]
    tp = np.cumsum(correct)
    precisions = tp / np.arange(1, len(correct) + 1)
    recalls = tp / max(num_positives, 1)
    return precisions, recalls, scores


def micro_ap(precisions: np.ndarray, recalls: np.ndarray) -> float:
    """Micro-average precision: sum of (recall increase) x precision, recalls increasing."""
    if not len(recalls):
        return 0.0
    return float(((recalls - np.concatenate([[0.0], recalls[:-1]])) * precisions).sum())


def operating_point(precisions: np.ndarray, recalls: np.ndarray, thresholds: np.ndarray,
                    min_precision: float = 0.9) -> tuple[float | None, float | None, float | None]:
    """The highest recall at precision >= ``min_precision``: (recall, precision, threshold), or Nones."""
    ok = precisions >= min_precision
    if not ok.any():
        return None, None, None
    i = int(np.flatnonzero(ok)[np.argmax(recalls[ok])])
    return float(recalls[i]), float(precisions[i]), float(thresholds[i])


def _real(path: str | None) -> str | None:
    return os.path.realpath(path) if path else None


def predictions(results: Iterable[dict[str, Any]], truth: dict[str, str | None], *,
                score=candidate_score) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Pool every input's candidates as (query, correct, score) predictions.

    Parameters
    ----------
    results : result lines (with ``candidates``)
    truth : real path of each input -> real path of its reference (None for negatives)
    score : candidate -> score (larger is more similar)

    Returns
    -------
    query_index, correct, scores, queries
        Per prediction: the query's position in ``queries``, whether it names
        the query's reference, and its score.
    """
    qi, correct, scores, queries = [], [], [], []
    for r in results:
        path = _real(r["path"])
        if path not in truth:
            continue
        queries.append(path)
        ref = truth[path]
        for c in r.get("candidates") or []:
            qi.append(len(queries) - 1)
            correct.append(ref is not None and _real(c.get("ref_path")) == ref)
            scores.append(score(c))
    return np.asarray(qi, dtype=np.int64), np.asarray(correct, dtype=bool), np.asarray(scores), queries


def descriptor_metrics(correct: np.ndarray, scores: np.ndarray, num_positives: int, *,
                       curve_points: int = 0) -> dict[str, Any]:
    """muAP, recall at precision 0.9 (and its threshold) of pooled predictions.

    Parameters
    ----------
    correct, scores : pooled predictions (:func:`predictions`)
    num_positives : queries with a ground truth (missed ones count against recall)
    curve_points : if > 0, also return the precision-recall curve thinned to about this many points

    Returns
    -------
    dict
        ``muAP``, ``recall_at_p90``, ``threshold_at_p90`` (on the score scale),
        ``predictions``, ``positives`` and optionally ``curve`` (``precision``, ``recall`` lists).
    """
    p, r, t = precision_recall(correct, scores, num_positives)
    rec90, prec90, thr90 = operating_point(p, r, t, 0.9)
    out: dict[str, Any] = {"muAP": micro_ap(p, r), "recall_at_p90": rec90, "threshold_at_p90": thr90,
                           "precision_at_p90_point": prec90, "predictions": int(len(correct)),
                           "positives": int(num_positives)}
    if curve_points and len(p):
        keep = np.unique(np.linspace(0, len(p) - 1, min(len(p), curve_points)).round().astype(int))
        out["curve"] = {"precision": [round(float(x), 5) for x in p[keep]],
                        "recall": [round(float(x), 5) for x in r[keep]],
                        "threshold": [round(float(x), 4) for x in t[keep]]}
    return out


def at_threshold(correct: np.ndarray, scores: np.ndarray, num_positives: int, threshold: float) -> dict[str, Any]:
    """Precision and recall of the predictions scoring at least ``threshold`` (a threshold chosen elsewhere)."""
    keep = scores >= threshold
    tp = int((correct & keep).sum())
    n = int(keep.sum())
    return {"threshold": threshold, "predictions": n, "precision": tp / n if n else None,
            "recall": tp / max(num_positives, 1)}


def recall_at_rank1(results: Iterable[dict[str, Any]], truth: dict[str, str | None]) -> tuple[int, int]:
    """(queries whose first candidate is their reference, queries with a reference)."""
    hits = n = 0
    for r in results:
        ref = truth.get(_real(r["path"]))
        if ref is None:
            continue
        n += 1
        cands = r.get("candidates") or []
        hits += bool(cands) and _real(cands[0].get("ref_path")) == ref
    return hits, n


def copy_counts(results: Sequence[dict[str, Any]], queries: dict[str, dict[str, Any]]
                ) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Verdict counts of one transform's copies, and its misses.

    A copy counts as caught (``flagged_right`` or ``review_right``) when its
    verdict is flagged or review *and* the best listed match is its own
    reference; flagged or review with another work first is ``wrong_work``.

    Parameters
    ----------
    results : result lines of these copies
    queries : real query path -> set entry (``ref``, ``featureless_ref``, ``params``)
    """
    c = {"n": 0, "flagged_right": 0, "review_right": 0, "wrong_work": 0, "clear": 0, "error": 0,
         "licensed": 0, "missing": 0, "n_featureful_refs": 0, "caught_featureful_refs": 0}
    misses = []
    by_path = {_real(r["path"]): r for r in results}
    for qpath, q in queries.items():
        c["n"] += 1
        featureful = q["featureless_ref"] is None
        c["n_featureful_refs"] += featureful
        r = by_path.get(qpath)
        if r is None:
            c["missing"] += 1
            continue
        best = r["matches"][0] if r.get("matches") else None
        right = best is not None and _real(best["ref_path"]) == _real(q["ref"])
        if r["verdict"] in CAUGHT and right:
            c[f"{r['verdict']}_right"] += 1
            c["caught_featureful_refs"] += featureful
            continue
        if r["verdict"] in CAUGHT:
            c["wrong_work"] += 1
        else:
            c[r["verdict"]] = c.get(r["verdict"], 0) + 1
        cands = r.get("candidates") or []
        rank = next((k for k, x in enumerate(cands) if _real(x.get("ref_path")) == _real(q["ref"])), None)
        misses.append({"query": qpath, "ref": q["ref"], "verdict": r["verdict"], "reason": r.get("reason"),
                       "best_ref": _real(best["ref_path"]) if best else None,
                       "best_expected": best.get("expected") if best else None,
                       "own_rank_in_candidates": rank,
                       "own_expected": cands[rank]["expected"] if rank is not None else None,
                       "featureless_ref": q["featureless_ref"], "params": q.get("params")})
    n = max(c["n"], 1)
    c["recall_flagged"] = c["flagged_right"] / n
    c["recall_review"] = c["review_right"] / n
    c["recall"] = (c["flagged_right"] + c["review_right"]) / n
    c["recall_featureful_refs"] = c["caught_featureful_refs"] / max(c["n_featureful_refs"], 1)
    return c, misses


def negative_counts(results: Sequence[dict[str, Any]], negatives: Iterable[str]
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Verdict counts on negatives (unseen works), and the ones flagged or sent to review."""
    by_path = {_real(r["path"]): r for r in results}
    c: dict[str, Any] = {"n": 0, "flagged": 0, "review": 0, "clear": 0, "error": 0, "licensed": 0, "missing": 0}
    hits = []
    for npath in negatives:
        c["n"] += 1
        r = by_path.get(npath)
        if r is None:
            c["missing"] += 1
            continue
        c[r["verdict"]] = c.get(r["verdict"], 0) + 1
        if r["verdict"] in CAUGHT:
            best = r["matches"][0] if r.get("matches") else {}
            hits.append({"negative": npath, "verdict": r["verdict"], "reason": r.get("reason"),
                         "best_ref": _real(best.get("ref_path")), "feature": best.get("feature"),
                         "best_expected": best.get("expected")})
    n = max(c["n"], 1)
    c["share_flagged"] = c["flagged"] / n
    c["share_review"] = c["review"] / n
    return c, hits


def best_expected(results: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Each input's strongest evidence, expected chance matches (inf: none), by real path.

    Read from the candidates (every feature counted: the harness indexes copy
    features only), as :func:`scanner.decisions.calibrate` reads a scan.
    """
    out = {}
    for r in results:
        if r["verdict"] == "error" or r.get("featureless"):
            continue
        cands = r.get("candidates") or []
        out[_real(r["path"])] = min((float(c["expected"]) for c in cands), default=float("inf"))
    return out


def at_policy(results: Iterable[dict[str, Any]], truth: dict[str, str | None], flag_at: float,
              review_at: float) -> dict[str, Any]:
    """Verdict-level figures under other thresholds, re-decided from the candidates.

    A copy counts as flagged (review) when its own work's evidence is at most
    ``flag_at`` (``review_at``) and no other work's is stronger; a negative
    when its strongest evidence is. Featureless inputs are never flagged.

    Returns
    -------
    dict with ``copies``, ``flagged``, ``review`` (recall of the right work),
    ``negatives``, ``negatives_flagged``, ``negatives_review`` (shares)
    """
    c = {"copies": 0, "flagged": 0, "review": 0, "negatives": 0, "negatives_flagged": 0, "negatives_review": 0}
    for r in results:
        p = _real(r["path"])
        if p not in truth:
            continue
        cands = [] if r.get("featureless") else (r.get("candidates") or [])
        best = min(cands, key=lambda x: x["expected"], default=None)
        e = float(best["expected"]) if best else float("inf")
        verdict = "flagged" if e <= flag_at else "review" if e <= review_at else "clear"
        if truth[p] is None:
            c["negatives"] += 1
            if verdict != "clear":
                c[f"negatives_{verdict}"] += 1
        else:
            c["copies"] += 1
            if verdict != "clear" and _real(best.get("ref_path")) == truth[p]:
                c[verdict] += 1
    for k in ("flagged", "review"):
        c[k] = c[k] / max(c["copies"], 1)
        c[f"negatives_{k}"] = c[f"negatives_{k}"] / max(c["negatives"], 1)
    return c


def distribution(x: Sequence[float], below: float | None = None) -> dict[str, Any]:
    """A sample's size and spread for a report: ``n``, ``min``, ``p10``, ``median``, ``p90``, ``max``
    (4 decimals), and with ``below`` the share of values under it (``below_<value>``); ``{"n": 0}``
    for an empty sample."""
    if not len(x):
        return {"n": 0}
    a = np.asarray(x, np.float64)
    out = {"n": int(len(a)), "min": round(float(a.min()), 4), "p10": round(float(np.quantile(a, 0.1)), 4),
           "median": round(float(np.median(a)), 4), "p90": round(float(np.quantile(a, 0.9)), 4),
           "max": round(float(a.max()), 4)}
    if below is not None:
        out[f"below_{below}"] = round(float((a < below).mean()), 3)
    return out
