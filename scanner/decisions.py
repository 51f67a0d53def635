"""People's decisions: a verdict on one output (the ledger), thresholds from labelled examples (the policy).

:func:`review` appends to the decision ledger beside the index
(:mod:`scanner.ledger`), which later scans honour; :func:`calibrate` scans
labelled outputs and writes the thresholds :func:`scanner.policy.calibrate`
chooses into the index's manifest. Both judge through the pipeline, so they
sit above it.
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scanner import ledger, media, policy as pol
from scanner.errors import ParameterError
from scanner.index import store
from scanner.index.writer import IndexWriter
from scanner.pipeline import FeatureOptions, Progress, Result, check, scan


def review(target: str | Path, index_dir: str | Path, *, decision: str, by: str, why: str,
           work_ids: Sequence[int] | None = None, options: FeatureOptions | None = None,
           hmac_key: bytes | None = None) -> ledger.Decision:
    """Record a person's decision on one output in the index's decision ledger.

    Parameters
    ----------
    target : the output file, or its sha256 (64 hex digits)
    index_dir : the index the decision is made against (the ledger lives beside it)
    decision : ``approved``, ``rejected`` or ``licensed``
    by, why : who decides and why
    work_ids : the works it concerns; default: for a file, the works it matches
        now (checked against the index), else the output as a whole

    Returns
    -------
    ledger.Decision, as appended

    Raises
    ------
    ParameterError
        A target that is neither a file nor a sha256, an unknown work id, or a
        bad decision.
    """
    path = Path(target)
    if path.is_file():
        sha256 = media.sha256_file(path)
        shown_path: str | None = str(path)
    elif ledger.is_sha256(str(target)):
        sha256, shown_path = str(target).lower(), None
    else:
        raise ParameterError(f"{target} is neither an existing file nor a sha256 (64 hex digits)")
    ledger.Decision(sha256, decision, by, why).validate()  # before a check that may take a while
    with store.open_index(index_dir, hmac_key=hmac_key) as index:
        index_id, works = index.index_id, index.works()
    if work_ids:
        unknown = sorted(set(work_ids) - set(works))
        if unknown:
            raise ParameterError(f"no work {', '.join(map(str, unknown))} in index {index_dir} "
                                 "(see `likeness index info` or the report)")
        ids = list(dict.fromkeys(work_ids))
    elif shown_path is not None:
        result, _ = check(path, index_dir, options=options, hmac_key=hmac_key)
        ids = list(dict.fromkeys(m["work_id"] for m in result.matches if m["work_id"] in works))
    else:
        ids = []
    concerned = [{"work_id": i, "sha256": works[i].sha256, "title": works[i].title} for i in ids]
    return ledger.append(index_dir, ledger.Decision(sha256, decision, by, why, works=concerned,
                                                    index_id=index_id, path=shown_path))


@dataclass
class Calibration:
    """What :func:`calibrate` found: the policy, the labelled-set report, and whether it was stored."""

    policy: pol.Policy
    report: dict[str, Any]
    written: bool = False


def calibrate(index_dir: str | Path, positives: Sequence[str | Path], negatives: Sequence[str | Path], *,
              target_precision: float = 0.99, max_flag_rate: float = 0.01, max_review_rate: float = 0.05,
              options: FeatureOptions | None = None, hmac_key: bytes | None = None, write: bool = True,
              progress: Progress | None = None) -> Calibration:
    """Set an index's verdict thresholds from labelled examples.

    Scans ``positives`` (outputs that copy a work of the index) and
    ``negatives`` (outputs that copy none), takes each one's strongest
    evidence on the expected-chance-matches scale, and chooses thresholds
    with :func:`scanner.policy.calibrate`. With ``write=True`` the thresholds
    and the report go into the manifest (an atomic index write), so later
    scans use them.

    Inputs that could not be checked and featureless ones (never flagged
    whatever their score) are left out and counted in the report.

    Returns
    -------
    Calibration
    """
    best: dict[str, list[tuple[float, float]]] = {"positives": [], "negatives": []}
    left_out: Counter = Counter()
    index_policy = None
    for label, inputs in (("positives", positives), ("negatives", negatives)):
        if not inputs:
            raise ParameterError(f"calibration needs {label}: none given")
        results: list[Result] = []
        summary = scan(inputs, index_dir, options=options, hmac_key=hmac_key, progress=progress,
                       on_result=results.append)
        index_policy = summary.run["policy"]
        copy = set(index_policy.get("copy_features") or pol.COPY_EVIDENCE)
        for r in results:
            if r.verdict == "error" or r.featureless:
                left_out[f"{label} {'unreadable' if r.verdict == 'error' else 'featureless'}"] += 1
                continue
            e = r.best_expected
            best[label].append((min((v for f, v in e.items() if f in copy), default=np.inf),
                                min(e.values(), default=np.inf)))
    pos = np.array(best["positives"], dtype=np.float64).reshape(-1, 2)
    neg = np.array(best["negatives"], dtype=np.float64).reshape(-1, 2)
    policy, report = pol.calibrate(pos[:, 0], neg[:, 0], pos[:, 1], neg[:, 1],
                                   target_precision=target_precision, max_flag_rate=max_flag_rate,
                                   max_review_rate=max_review_rate,
                                   base=pol.Policy.from_params(index_policy))
    report["left_out"] = dict(left_out)
    report["calibrated_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    out = Calibration(policy, report)
    if write:
        with IndexWriter(index_dir, hmac_key=hmac_key) as writer:
            writer.set("policy", policy.get_params())
            writer.set("calibration", report)
        out.written = True
    return out
