"""A result in words for people: the verdict in plain language and each match described.

Shared by the HTML page (:mod:`scanner.report.html`) and the console
(:mod:`scanner.report.console`), from result lines alone.
"""

from __future__ import annotations

from typing import Any, Mapping

from scanner.talents import describe_match as describe_talent


def mmss(seconds: float | None) -> str:
    """``93.4 -> "1:33"``; ``None -> "?"``."""
    if seconds is None:
        return "?"
    s = max(0, int(round(float(seconds))))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _today() -> str:
    import datetime as _dt

    return _dt.date.today().isoformat()


def plain_verdict(result: Mapping[str, Any], run: Mapping[str, Any]) -> str:
    """The verdict in plain words for a person (never "cleared")."""
    n, index = run.get("n_works", 0), run.get("index_path", "the index")
    v = result["verdict"]
    d = result.get("decision")
    if d:
        return (f"Decided by a person: {d.get('decision')} by {d.get('by')} on {(d.get('time') or '')[:10]}: "
                f"{d.get('why')}")
    if v == "clear":
        return (f"No near-copy found among the {n} works of index {index} ({run.get('index_id', '?')}) "
                f"on {str(run.get('started_at') or _today())[:10]}: {result['reason']}. "
                "This is not a legal clearance.")
    talent = next((m for m in result.get("matches") or [] if m.get("talent")), None)
    if talent is not None and v in ("flagged", "review", "licensed"):  # a protected performer's face or voice
        said = describe_talent(talent["talent"], talent.get("consent") or "no")
        return {"flagged": f"{said[0].upper()}{said[1:]}: do not use without their consent.",
                "review": f"Doubtful: {said}; a person must look at the evidence below and decide.",
                "licensed": f"{said[0].upper()}{said[1:]}: reported, not flagged."}[v]
    if v == "flagged":
        return "Too close to a protected work: do not use without clearing the rights."
    if v == "review":
        return "Doubtful: a person must look at the evidence below and decide."
    if v == "licensed":
        return "Matches a work the studio holds the rights to (reported, not flagged)."
    return f"Could not be checked: {result.get('error')}. This file is NOT cleared."


def describe_match(m: Mapping[str, Any]) -> dict[str, Any]:
    """One feature's match in display form: strength, "1 in N by chance", raw score in words,
    where it matched (views, boxes and their shares, mm:ss spans); shared by the HTML and console reports."""
    loc = m.get("locator") or {}
    raw, kind = m.get("raw"), m.get("raw_kind")
    words = {"inliers": f"{raw} keypoints agree on one transform",
             "face_distance": f"face descriptor distance {raw} (0.6 separates people)",
             "voice_cosine": f"voice cosine {raw} to the talent's voice",
             "hamming_bits": f"{raw} of 256 hash bits differ",
             "cosine": f"cosine {raw}"}.get(kind or "", "")
    if kind == "inliers" and isinstance(loc, Mapping) and loc.get("statistic") == "repeated":
        words += " (repeated elements paired by geometry)"
    if kind == "inliers" and isinstance(loc, Mapping) and loc.get("proposed_by"):
        words += (f" on a work {loc['proposed_by']} ranked among its {loc.get('proposals', '?')} nearest"
                  " (its chance counted among those)")
    if kind == "cosine" and isinstance(loc, Mapping) and loc.get("aligned_by") and loc.get("region"):
        words += (f" for the part of the output that {loc['aligned_by']}'s matching keypoints span, cut out and"
                  f" compared with the work (its chance counted as a whole picture's against every work, over"
                  f" {loc.get('looks', '?')} such looks at this output)")
    elif kind == "cosine" and isinstance(loc, Mapping) and loc.get("aligned_by"):
        words += (f" for the part of the output where {loc['aligned_by']} placed the work, cut out and compared"
                  f" with it alone (its chance counted over {loc.get('looks', '?')} such looks at this output)")
    if kind == "face_distance" and isinstance(loc, Mapping) and loc.get("talent_seen"):
        words += f" to the talent's photo re-rendered ({loc['talent_seen']})"
    if kind == "voice_cosine" and isinstance(loc, Mapping) and loc.get("talent_heard"):
        words += f" as heard {loc['talent_heard']}"
    if kind == "fused" and isinstance(m.get("fused_from"), Mapping):
        from scanner.policy import one_in

        words = "stronger together: " + "; ".join(f"{f} alone {one_in(float(e))}"
                                                  for f, e in m["fused_from"].items())
    where = []
    if isinstance(loc, dict):
        if loc.get("query_view"):
            where.append(f"{loc['query_view']} of the output matches the {loc.get('ref_view', 'work')}")
        if loc.get("mirrored"):
            where.append("mirrored")
        if loc.get("aligned_by") and loc.get("query_box"):
            x0, y0, x1, y1 = (float(v) for v in loc["query_box"])
            where.append(f"{'a part' if loc.get('region') else 'the work placed'} on "
                         f"{100 * (x1 - x0) * (y1 - y0):.0f}% of the output")
        if loc.get("query_share") is not None and loc.get("ref_share") is not None:
            where.append(f"matched area {100 * float(loc['query_share']):.0f}% of the output, "
                         f"{100 * float(loc['ref_share']):.0f}% of the work")
        if loc.get("query_start") is not None:
            d = float(loc.get("duration") or 0)
            span = f"output {mmss(loc['query_start'])}–{mmss(float(loc['query_start']) + d)}"
            where.append(span + (f" matches work {mmss(loc.get('ref_start'))}–"
                                 f"{mmss(float(loc.get('ref_start') or 0) + d * float(loc.get('rate') or 1))}"
                                 if loc.get("ref_start") is not None else " speaks"))
            if loc.get("rate") is not None:  # audio fingerprint: how the copy was played, and the hashes that agree
                where.append(f"rate {float(loc['rate']):.3f}, pitch {float(loc.get('pitch_shift') or 0):+.2f} "
                             f"semitones, {loc.get('aligned')} aligned hashes")
        if loc.get("timecode") is not None:  # a video's keyframe
            where.append(f"keyframe at {loc.get('timecode_text') or loc['timecode']} of the output"
                         + (f", {float(loc['ref_timecode']):.2f} s into the work"
                            if loc.get("ref_timecode") is not None else ""))
    score = float(m.get("score") or 0)
    return {"feature": m.get("feature"), "score": score, "pct": round(100 * min(max(score, 0.0), 1.0), 1),
            "chance": m.get("chance") or "", "expected": m.get("expected"), "words": words,
            "where": "; ".join(where), "locator": loc if isinstance(loc, dict) else {}}
