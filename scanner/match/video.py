"""Gather a video's evidence from its keyframes and soundtrack. Pure functions, no IO.

A video is judged as many small inputs — its keyframes (pictures) and its
soundtrack (audio) — each giving per-work evidence dicts as images and audio
files do. This module gathers them as they come, in bounded memory:

* the strongest evidence per (work, feature) over the whole video, which is
  what the verdict is decided on;
* a **timeline**: every stretch of the video where a work was found, with its
  timecodes — runs of consecutive keyframes that match the same work, and
  the soundtrack's aligned spans.

Significance (each keyframe is one more chance to match by chance) is the
caller's: evidence arrives here with its ``expected`` already scaled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from scanner.video import timecode

__all__ = ["VideoEvidence"]

#: What a timeline entry copies from the evidence it stands for.
_WORK_FIELDS = ("work_id", "ref_path", "title", "rights_holder", "licensed", "feature", "score", "expected",
                "chance", "talent", "consent")


@dataclass
class VideoEvidence:
    """Evidence of one video's parts, gathered as they are judged.

    Parameters
    ----------
    keyframe_times : seconds of the video's keyframes, in order (a run of
        matching keyframes ends at the next keyframe's time)
    duration : seconds of the video, if known (the end of a run that reaches
        the last keyframe)
    keep_at : evidence with ``expected`` at most this goes into the timeline
        (the policy's ``review_at``: what a person would be shown)
    """

    keyframe_times: Sequence[float]
    duration: float | None = None
    keep_at: float = 1.0
    _best: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict, repr=False)
    #: per work, {keyframe number: its strongest evidence}
    _frames: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict, repr=False)
    _spans: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def add(self, evidence: Sequence[dict[str, Any]], *, keyframe: int | None = None) -> None:
        """Take one part's evidence: a keyframe's (its number in :attr:`keyframe_times`) or the soundtrack's.

        Parameters
        ----------
        evidence : evidence dicts of :meth:`scanner.pipeline.scan.Scanner._match`
            (``work_id``, ``feature``, ``expected``, ``locator`` ...); a
            keyframe's locators carry its ``timecode`` already.
        keyframe : the keyframe's number, or ``None`` for the soundtrack
        """
        for m in evidence:
            key = (m["work_id"], m["feature"])
            if key not in self._best or m["expected"] < self._best[key]["expected"]:
                self._best[key] = m
            if m["expected"] > self.keep_at or m.get("featureless_ref"):
                continue
            if keyframe is None:
                loc = m.get("locator") or {}
                if loc.get("query_start") is None:
                    continue
                start = float(loc["query_start"])
                self._spans.append({**{f: m.get(f) for f in _WORK_FIELDS}, "source": "soundtrack",
                                    "start": start, "end": start + float(loc.get("duration") or 0.0),
                                    "ref_start": loc.get("ref_start")})
            else:
                shown = self._frames.setdefault(m["work_id"], {})
                if keyframe not in shown or m["expected"] < shown[keyframe]["expected"]:
                    shown[keyframe] = m

    def best(self) -> list[dict[str, Any]]:
        """The strongest evidence per (work, feature) over the whole video, strongest first."""
        return sorted(self._best.values(), key=lambda m: m["expected"])

    def timeline(self) -> list[dict[str, Any]]:
        """Every stretch of the video where a work was found, in time order.

        Returns
        -------
        list of dicts with ``source`` (``"picture"`` or ``"soundtrack"``),
        ``start``, ``end`` (seconds), ``start_text``, ``end_text`` (``mm:ss.ff``),
        the work (``work_id``, ``ref_path``, ``title``, ``rights_holder``,
        ``licensed``), the strongest evidence of the stretch (``feature``,
        ``score``, ``expected``, ``chance``), and ``ref_start`` (seconds
        into the work, when the work is a video or audio). A picture stretch
        runs from its first matching keyframe to the next keyframe that does
        not match (the picture changed by then), and counts its ``keyframes``.
        """
        times = list(self.keyframe_times)
        out = list(self._spans)
        for frames in self._frames.values():
            numbers = sorted(frames)
            run: list[int] = []
            for k in numbers + [None]:  # type: ignore[list-item]
                if run and (k is None or k != run[-1] + 1):
                    best = min((frames[j] for j in run), key=lambda m: m["expected"])
                    after = run[-1] + 1
                    end = times[after] if after < len(times) else (self.duration or times[run[-1]])
                    loc = best.get("locator") or {}
                    out.append({**{f: best.get(f) for f in _WORK_FIELDS}, "source": "picture",
                                "start": times[run[0]], "end": max(float(end), times[run[-1]]),
                                "keyframes": len(run), "ref_start": loc.get("ref_timecode")})
                    run = []
                if k is not None:
                    run.append(k)
        for e in out:
            e["start"], e["end"] = round(float(e["start"]), 3), round(float(e["end"]), 3)
            e["start_text"], e["end_text"] = timecode(e["start"]), timecode(e["end"])
        out.sort(key=lambda e: (e["start"], e["expected"]))
        return out
