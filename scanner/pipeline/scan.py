"""Scanning: the :class:`Scanner` (an opened index judging batches), engines, and :func:`scan` writing results.

Each feature's kind (:mod:`scanner.match`) turns a batch into per-work evidence
with its expected chance matches; the scanner makes them match records,
fuses copy evidence, decides with the policy and honours the ledger. Results
stream to ``results.jsonl`` (:mod:`scanner.results`); the report is written
from that file.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from scanner import __version__
from scanner import blas, ledger, media, policy as pol, search
from scanner.features import Featurizer
from scanner.features.prepared import BATCH, Prepared
from scanner.index import store
from scanner.match import fusion, kind_of
from scanner.pipeline.options import FeatureOptions, NoProgress, Progress, features_for_index
from scanner.pipeline.prepare import batches, forks, prepare_stream
from scanner.results import Result, ResultsFile, iter_results, json_line, truncate_torn_tail
from scanner.search_choice import Plan
from scanner.talents import Talent

#: Matches listed per result.
MAX_MATCHES = 5
#: Key of a match whose locator is still to be built (:meth:`Scanner._shown_locators`);
#: never in a result.
PENDING = "_locator_pending"


def provenance(index: store.Index, policy: pol.Policy | None = None) -> dict[str, Any]:
    """What a scan's results were judged against, for ``run.json`` and report headers.

    From the manifest alone (no model is loaded): the featurizers a scan uses
    are the index's own (:func:`features_for_index` refuses any other).
    """
    policy = policy or pol.Policy.from_params(index.policy)
    # a feature's manifest entry is its featurizer's identity plus what the store adds
    features = [{k: v for k, v in spec.items() if k not in store.FEATURE_STORAGE_KEYS}
                for spec in index.features.values()]
    return {"tool": "likeness", "tool_version": __version__, "index_id": index.index_id,
            "index_path": str(index.path), "n_works": index.n_works,
            "features": features, "policy": policy.get_params()}


def proposed(found: tuple[Any, np.ndarray] | None, n: int) -> list[int]:
    """The ``n`` works a feature's evidence for one input ranks first (fewest expected chance
    matches), as proposals to a judge that verifies them (:attr:`scanner.match.base.Judge.proposer`)."""
    if found is None:
        return []
    evs, expected = found
    return [int(evs[j].work_id) for j in np.argsort(expected, kind="stable")[:n]]


class Scanner:
    """An opened index with its featurizers, ready to judge batches of inputs.

    Parameters
    ----------
    index_dir : the index to match against
    options : featurizer options (must agree with the index's models)
    policy : thresholds; the index's own by default
    candidates : also record this many nearest works per input, whatever the
        verdict (for evaluation: precision-recall curves need the scores of
        non-matches too)
    """

    def __init__(self, index_dir: str | Path, *, options: FeatureOptions | None = None,
                 policy: pol.Policy | None = None, hmac_key: bytes | None = None, candidates: int = 0):
        from scanner.models import set_offline

        set_offline()
        self.index = store.open_index(index_dir, hmac_key=hmac_key)
        self.options = options or FeatureOptions()
        self.policy = policy or pol.Policy.from_params(self.index.policy)
        self.featurizers = features_for_index(self.index, self.options)
        self.index.catalog()  # verified now, with every other file, before the first result
        self.works = self.index.work_lookup()  # read as matches need them
        # consent is read now: a withdrawn or lapsed one applies from this scan on
        self.talents, self.today = self.index.talents(), _dt.date.today()
        self.candidates = candidates
        self.decisions = ledger.load(index_dir)  # people's decisions are honoured, not re-escalated
        # load and verify everything before the first result (and before decode workers
        # fork and judge with this scanner: what they inherit is the index opened here,
        # even if a writer swaps another in while the scan runs)
        self.kinds = {feat.name: kind_of(self.index.features[feat.name]) for feat in self.featurizers}
        self.plan = Plan(self.options.device, self.options.backend, self.options.precision)
        self.judges = {feat.name: self.kinds[feat.name].open(self.index, feat, plan=self.plan)
                       for feat in self.featurizers}

    def describe(self) -> dict[str, Any]:
        """Provenance for ``run.json`` and report headers; ``search``: the dense search paths
        chosen by measurement so far (:class:`scanner.search_choice.Plan`); ``models``: where each
        feature with a model runs (:meth:`~scanner.features.base.Featurizer.runtime`)."""
        return {**provenance(self.index, self.policy), "search": dict(self.plan.used),
                "models": {f.name: r for f in self.featurizers if (r := f.runtime()) is not None}}

    def judge(self, batch: Sequence[Prepared]) -> list[Result]:
        """Embed, search, match and decide one batch of prepared inputs.

        A video's keyframes and soundtrack are judged as inputs of their own,
        :data:`BATCH` at a time, and gathered into the video's evidence as
        they come (:meth:`_judge_video`).
        """
        plain = [p for p in batch if p.parts is None]
        decided = iter([self._result(p, ev) for p, ev in zip(plain, self._evidence(plain))] if plain else [])
        return [next(decided) if p.parts is None else self._judge_video(p) for p in batch]

    def _judge_video(self, p: Prepared) -> Result:
        """A video's verdict from its keyframes' and soundtrack's evidence, with a timeline.

        Each keyframe is one more chance to match by chance: a keyframe's
        expected chance matches are multiplied by the number of keyframes
        checked (Bonferroni), so a two-hour film is held to the same chance
        rate as one picture. The soundtrack's evidence is scaled by its own
        length already (:class:`scanner.match.postings.PostingsJudge`). Featureless keyframes (black,
        flat) and a silent soundtrack give no evidence.
        """
        from scanner.match.video import VideoEvidence
        from scanner.video import timecode

        parts = p.parts or []
        frames = [q for q in parts if q.item.modality == "image"]
        checked = max(1, sum(1 for q in frames if not q.featureless and q.error is None))
        gathered = VideoEvidence([q.timecode or 0.0 for q in frames], (p.video or {}).get("duration"),
                                 keep_at=self.policy.review_at)
        numbers = {id(q): k for k, q in enumerate(frames)}
        for lo in range(0, len(parts), BATCH):
            chunk = parts[lo:lo + BATCH]
            for q, ev in zip(chunk, self._evidence(chunk)):
                if q.error is not None or q.featureless or not ev:
                    continue
                self._shown_locators(ev)  # a keyframe's locator gains its timecode below
                ev = ev + self._fused(ev)  # within one keyframe: both copy features saw the same picture
                if q.item.modality == "image":
                    scaled = []
                    for m in ev:
                        x = float(m["expected"]) * checked
                        loc = {**(m.get("locator") or {}), "timecode": q.timecode,
                               "timecode_text": timecode(q.timecode)}
                        scaled.append({**m, "expected": x, "chance": pol.one_in(x), "locator": loc,
                                       "score": round(float(pol.strength(np.array([x]), self.policy)[0]), 4)})
                    gathered.add(scaled, keyframe=numbers[id(q)])
                else:
                    if q.timecode:  # a soundtrack that starts apart from the picture
                        ev = [{**m, "locator": {**m["locator"], "query_start": round(m["locator"]["query_start"]
                                                                                   + q.timecode, 3)}}
                              if (m.get("locator") or {}).get("query_start") is not None else m for m in ev]
                    gathered.add(ev)
        result = self._result(p, gathered.best(), fuse=False)
        if p.error is None:
            result.video = {**(p.video or {}), "keyframes_checked": checked if frames else 0,
                            "timeline": gathered.timeline() if result.verdict != "clear" else []}
        return result

    def _evidence(self, batch: Sequence[Prepared]) -> list[list[dict[str, Any]]]:
        """Per-work evidence of every featurizer, for each prepared input of one batch:
        each feature's kind finds it (:meth:`scanner.match.base.Judge.evidence`), this
        makes it match records with their strength."""
        evidence: list[list[dict[str, Any]]] = [[] for _ in batch]
        found: dict[str, list[tuple[Any, np.ndarray] | None]] = {}
        # a judge that verifies another feature's best works (Judge.proposer) goes after it
        for feat in sorted(self.featurizers, key=lambda f: self.judges[f.name].proposer in self.judges):
            judge = self.judges[feat.name]
            if judge.proposer in found:
                found[feat.name] = judge.evidence(batch, proposed=[proposed(f, judge.proposals)
                                                                   for f in found[judge.proposer]])
            else:
                found[feat.name] = judge.evidence(batch)
        self._look_again(batch, found)
        for feat in self.featurizers:
            for i, one in enumerate(found[feat.name]):
                if one is None:
                    continue
                evs, expected = one
                strength = pol.strength(expected, self.policy)
                evidence[i].extend(self._match(feat, e, float(x), float(s)) for e, x, s in zip(evs, expected, strength))
        return evidence

    def _look_again(self, batch: Sequence[Prepared], found: dict[str, list[tuple[Any, np.ndarray] | None]]) -> None:
        """A judge that :attr:`~scanner.match.base.Judge.looks` again where a locating judge placed
        works (:meth:`~scanner.match.base.Judge.aligned`) does so for the inputs nothing has
        flagged yet; its evidence joins its own in ``found``."""
        placer = next((f.name for f in self.featurizers if self.judges[f.name].locates), None)
        if placer is None:
            return
        for feat in self.featurizers:
            judge = self.judges[feat.name]
            if not judge.looks:
                continue
            placed = [[] if any(one[i] is not None and np.min(one[i][1], initial=np.inf) <= self.policy.flag_at
                                for one in found.values())
                      else self.judges[placer].placements(found[placer][i], judge.looks) for i in range(len(batch))]
            if not any(placed):
                continue
            for i, more in enumerate(judge.aligned(batch, placed, by=placer)):
                if more is not None:
                    had = found[feat.name][i]
                    found[feat.name][i] = more if had is None else (
                        [*had[0], *more[0]], np.concatenate([np.asarray(had[1], np.float64), more[1]]))

    def _match(self, feat: Featurizer, e: Any, expected: float, strength: float) -> dict[str, Any]:
        work = self.works.get(e.work_id)
        kind = self.kinds[feat.name]
        raw = int(e.raw) if feat.metric == "hamming" else round(e.raw, 4)
        talent = self.talents.get(work.talent) if work is not None and work.talent else None
        if work is not None and work.talent and talent is None:
            talent = Talent(work.talent)  # references with no consent row: no consent
        consent = talent.consent_for(feat.name) if talent is not None else None
        return {
            "work_id": e.work_id, "ref_path": work.path if work else None,
            "title": work.title if work else None, "rights_holder": work.rights_holder if work else None,
            "licence": work.licence if work else None,
            "licensed": consent.in_force(self.today) if consent is not None else bool(work and work.licensed),
            **({"talent": talent.name, "consent": consent.words(self.today)} if talent is not None else {}),
            "feature": feat.name, "score": round(strength, 4), "raw": raw,
            "raw_kind": kind.raw_kind,
            "expected": expected, "chance": pol.one_in(expected),
            "featureless_ref": work.featureless if work else None,
            "locator": self._locator(feat, e, work),
            **({PENDING: lambda: self._locator(feat, replace(e, detail=kind.detail(e), pending=None), work)}
               if e.pending is not None else {}),
        }

    @staticmethod
    def _shown_locators(matches: Iterable[dict[str, Any]]) -> None:
        """Landmark matches about to be shown get their boxes and heat maps, left for now
        when verified (:func:`scanner.match.landmarks.verify_landmarks`): a scan verifies several
        works per query and shows few."""
        for m in matches:
            build = m.pop(PENDING, None)
            if build is not None:
                m["locator"] = build()

    def _locator(self, feat: Featurizer, e: Any, work: Any) -> dict[str, Any] | None:
        """Where a match sits; in a video work, also the reference keyframe's ``ref_timecode`` (seconds).

        A video work's keyframe rows carry the keyframe's timecode in their
        locator (:func:`_add_video_rows`): milliseconds for keypoints,
        ``ms * codes_per_item + view`` for hashes and embeddings.
        """
        video = work is not None and work.modality == "video"
        if e.detail is not None:
            loc = dict(e.detail)
            ms = loc.pop("ref_locator", None)  # an image work's is a keypoint number: no use to anyone
            if video and ms is not None:
                loc["ref_timecode"] = round(ms / 1000, 3)
            return loc
        if not video:
            return feat.locator(e.query_locator, e.locator)
        ms, view = divmod(int(e.locator), max(feat.codes_per_item, 1))
        return {**(feat.locator(e.query_locator, view) or {}), "ref_timecode": round(ms / 1000, 3)}

    def _fused(self, evidence: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Evidence of two copy features for one work, fused (:func:`scanner.match.fusion.fuse`)."""
        return fusion.fuse(evidence, self.index.manifest.get("fusion") or [], self.index.n_works, self.policy)

    def _result(self, p: Prepared, evidence: list[dict[str, Any]], fuse: bool = True) -> Result:
        base = dict(path=str(p.item.path), sha256=p.sha256, modality=p.item.modality,
                    index_id=self.index.index_id)
        if p.error is not None:
            return Result(verdict="error", reason=p.error, error=p.error, **base)
        if fuse:  # (a video's evidence is fused per keyframe already)
            evidence = evidence + self._fused(evidence)
            seen = (pol.OUTLINE_CONFIRM in self.judges and (pol.OUTLINE_CONFIRM in p.prepared
                                                              or pol.OUTLINE_CONFIRM in p.vectors)
                    and min(p.size or (0, 0)) >= pol.CONFIRM_MIN_SIDE)
            pol.outline_only(evidence, self.policy, confirmed_by=seen)
        verdict, reason = pol.decide(evidence, self.policy, featureless=p.featureless)
        shown = sorted((m for m in evidence if m["expected"] <= self.policy.review_at),
                       key=lambda m: m["expected"])[:MAX_MATCHES]
        if verdict == "clear":
            shown = []
        # collisions on featureless content carry no strength worth showing
        best = 0.0 if p.featureless else max(
            (m["score"] for m in evidence if not m["featureless_ref"]), default=0.0)
        result = Result(verdict=verdict, reason=reason, score=best, matches=shown,
                        featureless=p.featureless, **base)
        for m in evidence:
            if not m["featureless_ref"]:
                f = m["feature"]
                result.best_expected[f] = min(result.best_expected.get(f, np.inf), m["expected"])
        if self.candidates:
            nearest: dict[int, dict[str, Any]] = {}
            for m in sorted(evidence, key=lambda m: m["expected"]):
                nearest.setdefault(m["work_id"], m)
            result.candidates = list(nearest.values())[: self.candidates]
            self._shown_locators(result.candidates)
        self._shown_locators(result.matches)
        ledger.honour(result, self.decisions, self.works)
        return result

    def check_paths(self, items: Iterable[media.Input]) -> Iterator[Result]:
        """Results for items, in order.

        Where decoding runs in forked processes (:func:`forks`) and the
        search on the CPU, each process judges the pictures it decoded, with
        this scanner as forked (the index's large files are memory-mapped,
        their pages shared): every core decodes and searches pictures. The
        rest (recordings, videos, everything when decoding runs in threads)
        is judged here, in batches.
        """
        judge = self if forks(self.featurizers) and not search.may_use_gpu(self.options.device) else None
        for batch in batches(prepare_stream(items, self.featurizers, judge=judge), BATCH):
            todo = [p for p in batch if isinstance(p, Prepared)]
            judged = iter(self.judge(todo) if todo else [])
            yield from (next(judged) if isinstance(p, Prepared) else p for p in batch)

    def close(self) -> None:
        self.index.close()


class Engine(Protocol):
    """Where the work of a build or a scan runs; results and index writes stay in this process."""

    name: str

    def prepare(self, items: Sequence[media.Input], featurizers: Sequence[Featurizer], *,
                reference: bool = False) -> Iterator[Prepared]:
        """Decoded and featurized items, in order (``reference``: works being indexed)."""
        ...

    def scanner(self, index_dir: str | Path, **kwargs: Any) -> Any:
        """An opened scanner: ``describe()``, ``check_paths(items)`` yielding one
        :class:`Result` per item (any order), ``close()``; ``kwargs`` as :class:`Scanner`'s."""
        ...

    def describe(self) -> dict[str, Any]:
        """The engine's provenance for ``run.json``."""
        ...


class LocalEngine:
    """The default engine: decoding in this machine's worker processes, judging in this process."""

    name = "local"

    def prepare(self, items: Sequence[media.Input], featurizers: Sequence[Featurizer], *,
                reference: bool = False) -> Iterator[Prepared]:
        return prepare_stream(items, featurizers, reference=reference)

    def scanner(self, index_dir: str | Path, **kwargs: Any) -> Scanner:
        return Scanner(index_dir, **kwargs)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass
class ScanSummary:
    """Counts of a scan (every verdict, errors and skips) and where results went."""

    counts: Counter = field(default_factory=Counter)
    skipped: int = 0
    resumed: int = 0
    out_dir: str | None = None
    run: dict[str, Any] = field(default_factory=dict)

    def exit_code(self) -> int:
        """Exit code of DESIGN.md: 1 flagged, else 3 errors, else 4 review, else 0."""
        if self.counts["flagged"]:
            return 1
        if self.counts["error"]:
            return 3
        if self.counts["review"]:
            return 4
        return 0


def scan(inputs: Sequence[str | Path], index_dir: str | Path, *, out_dir: str | Path | None = None,
         resume: bool = False, options: FeatureOptions | None = None, policy: pol.Policy | None = None,
         hmac_key: bytes | None = None, progress: Progress | None = None, candidates: int = 0,
         on_result: Callable[[Result], None] | None = None, thumbnails: bool = True,
         engine: Engine | None = None) -> ScanSummary:
    """Scan inputs against an index, streaming one result line per input.

    Parameters
    ----------
    inputs : files and folders (folders walked; explicit files always inputs)
    index_dir : the index
    out_dir : where ``results.jsonl``, ``results.csv``, ``report.html`` and
        ``run.json`` go; ``None`` writes nothing (results via ``on_result``)
    resume : skip inputs already in ``out_dir/results.jsonl``
    candidates : also record this many nearest works per input (see :class:`Scanner`)
    on_result : called with every new result as it is decided
    thumbnails : keep small thumbnails of flagged, review and licensed outputs in
        ``out_dir/thumbs/`` for the report (``False``: no picture of an output
        is kept or embedded)
    engine : where inputs are decoded, embedded and judged (:class:`LocalEngine`
        by default; ``scanner.engine_ray.RayEngine`` on a cluster); results are
        written here, by this process, either way

    Returns
    -------
    ScanSummary
    """
    progress = progress or NoProgress()
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    engine = engine or LocalEngine()
    scanner = engine.scanner(index_dir, options=options, policy=policy, hmac_key=hmac_key, candidates=candidates)
    summary = ScanSummary(out_dir=str(out_dir) if out_dir else None)
    items = []
    for found in media.discover([Path(i) for i in inputs]):
        if isinstance(found, media.Skipped):
            summary.skipped += 1
        else:
            items.append(found)
    sink = None
    results_path = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        results_path = out / "results.jsonl"
        if resume:
            # one pass keeping paths and counts only, not millions of whole result lines
            done_paths = set()
            for r in iter_results(results_path):
                done_paths.add(r["path"])
                summary.counts[r["verdict"]] += 1
            truncate_torn_tail(results_path)
            before = len(items)
            items = [i for i in items if str(i.path) not in done_paths]
            summary.resumed = before - len(items)
        sink = open(results_path, "a" if resume else "w", encoding="utf-8")
    progress.start(len(items), "scanning")
    try:
        for result in scanner.check_paths(items):
            summary.counts[result.verdict] += 1
            if sink is not None:
                sink.write(json_line(result.to_dict()))
                sink.flush()
            if on_result is not None:
                on_result(result)
            progress.advance()
    finally:
        if sink is not None:
            sink.close()
        summary.run = {
            **scanner.describe(), "started_at": started.isoformat(timespec="seconds"),
            "ended_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - t0, 3), "inputs": [str(i) for i in inputs],
            "counts": {v: summary.counts[v] for v in pol.VERDICTS}, "skipped": summary.skipped,
            "resumed": summary.resumed, "engine": engine.describe(), "blas": blas.libraries(),
        }
        scanner.close()
        if out_dir is not None:
            write_outputs(Path(out_dir), summary.run, thumbnails=thumbnails)
    return summary


def write_outputs(out: Path, run: dict[str, Any], *, thumbnails: bool = True) -> None:
    """Write ``run.json``, ``results.csv``, ``report.html`` and ``timeline.csv`` from ``out/results.jsonl``.

    The results are streamed from the file (two passes), never all held: memory
    is bounded by the outputs a person must look at plus the clear lines the
    page lists (:data:`scanner.report.html.MAX_CLEAR`), whatever the run's size.
    """
    from scanner.report import write_all
    from scanner.report.timeline import write_timeline

    tmp = out / "run.json.tmp"
    tmp.write_text(json.dumps(run, indent=2))
    os.replace(tmp, out / "run.json")
    listed = write_all(ResultsFile(out / "results.jsonl"), run, out, thumbnails=thumbnails)
    # the timeline lists only outputs a person must look at, all of which the listing kept (in file
    # order), so it is written from there rather than by a third pass over the file
    write_timeline(listed.results, out / "timeline.csv")  # where each matched work shows, with timecodes


def check(path: str | Path, index_dir: str | Path, *, options: FeatureOptions | None = None,
          hmac_key: bytes | None = None) -> tuple[Result, dict[str, Any]]:
    """Judge one file (always an input, whatever its name); returns the result and provenance."""
    scanner = Scanner(index_dir, options=options, hmac_key=hmac_key)
    try:
        modality = media.sniff(Path(path)) or "image"
        result = next(scanner.check_paths([media.Input(Path(path), modality)]))
        return result, scanner.describe()
    finally:
        scanner.close()
