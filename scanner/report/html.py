"""``report.html``: one self-contained page (inline CSS and JS, no network fetches).

The page is where a person decides: provenance of the run, counts by verdict,
a table sortable and filterable by verdict, feature and score (paged by a few
lines of inline JavaScript, so 10k results stay usable), and for every
flagged, review or licensed output the evidence side by side: the output's
thumbnail beside the matched work's (from the index's ``thumbs/``), the matched
regions boxed on both with their share of the picture, each feature's strength
drawn against the review and flag thresholds with "1 in N by chance", and the
work's title, rights holder and licence. Audio matches show spectrogram
strips of both with the matched span highlighted on an mm:ss timeline.

The table lists every output a person must look at (flagged, review,
licensed, error, or carrying a decision) and the first :data:`MAX_CLEAR`
clear ones in file order; the counts count every result, and the page says
how many clear outputs it leaves out (all are in ``results.csv`` and
``results.jsonl``). A scan of millions of outputs thus gives a page a browser
opens, built in memory bounded by the outputs that need a person.

Every string from files, results or metadata goes through jinja2's autoescape;
thumbnails are embedded once each (a work's once, however many outputs match
it) as ``data:`` URIs in a JSON blob, and a Content-Security-Policy forbids
every fetch, so the page cannot reach the network even if a string slipped.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from scanner import thumbs
from scanner.report.words import describe_match, mmss, plain_verdict

VERDICT_ORDER = ("flagged", "error", "review", "licensed", "clear")
#: Verdicts whose evidence a person must see (thumbnails are kept for them).
SHOWN = ("flagged", "review", "licensed")
#: Works shown side by side per output.
MAX_WORKS = 3
#: Table lines per page (the rest wait hidden until paged to).
PAGE = 100
#: Clear outputs the report lists at most (the first ones in file order); the rest are
#: counted but not listed, so a run of millions gives a page a browser can open.
MAX_CLEAR = 2000



def _box(box: Any) -> dict[str, float] | None:
    """A normalised ``[x0, y0, x1, y1]`` as CSS percentages, or ``None`` if malformed."""
    try:
        x0, y0, x1, y1 = (min(max(float(v), 0.0), 1.0) for v in box)
    except (TypeError, ValueError):
        return None
    if x1 <= x0 or y1 <= y0:
        return None
    return {"left": round(100 * x0, 2), "top": round(100 * y0, 2),
            "width": round(100 * (x1 - x0), 2), "height": round(100 * (y1 - y0), 2)}


def _span(start: Any, duration: Any, total: Any) -> dict[str, float] | None:
    """A matched time span as CSS percentages of a strip that stands for ``total`` seconds."""
    try:
        start, duration, total = float(start), float(duration), float(total)
    except (TypeError, ValueError):
        return None
    if total <= 0 or duration <= 0:
        return None
    left = min(max(start / total, 0.0), 1.0)
    return {"left": round(100 * left, 2), "width": round(100 * min(duration / total, 1.0 - left), 2)}


def _heat(grid: Any) -> list[dict[str, float]] | None:
    """The cells of a match's heat map (:func:`scanner.match.geometry.heat_grid`) to draw: position,
    size and opacity in CSS units; ``None`` for anything else."""
    if not isinstance(grid, str) or not grid.isdigit():
        return None
    n = int(round(len(grid) ** 0.5))
    if n * n != len(grid) or n == 0:
        return None
    size = round(100 / n, 3)
    return [{"left": round(i % n * size, 3), "top": round(i // n * size, 3), "size": size,
             "alpha": round(int(d) / 15, 2)} for i, d in enumerate(grid) if d != "0"]


def _works(matches: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Matches grouped by work, strongest work first, with boxes and spans to draw."""
    groups: dict[Any, dict[str, Any]] = {}
    for m in matches:
        g = groups.get(m.get("work_id"))
        if g is None:
            if len(groups) >= MAX_WORKS:
                continue
            g = groups[m.get("work_id")] = {
                "work_id": m.get("work_id"),
                "title": (f"{m['talent']} (talent)" if m.get("talent")
                          else m.get("title") or Path(str(m.get("ref_path") or "?")).name),
                "talent": m.get("talent"), "consent": m.get("consent"),
                "rights_holder": m.get("rights_holder"), "licence": m.get("licence"),
                "licensed": bool(m.get("licensed")), "ref_path": m.get("ref_path"),
                "features": [], "query_box": None, "ref_box": None, "query_span": None, "ref_span": None,
                "audio": None, "share": None, "query_heat": None, "ref_heat": None}
        ev = describe_match(m)
        g["features"].append(ev)
        loc = ev["locator"]
        if g["query_box"] is None and "query_box" in loc:
            g["query_box"], g["ref_box"] = _box(loc.get("query_box")), _box(loc.get("ref_box"))
            g["share"] = loc.get("query_share")
        if g["query_heat"] is None and loc.get("query_heat"):
            g["query_heat"], g["ref_heat"] = _heat(loc.get("query_heat")), _heat(loc.get("ref_heat"))
        elif g["query_box"] is None and loc.get("query_view") == "whole picture" \
                and loc.get("ref_view") == "whole picture":
            g["query_box"] = g["ref_box"] = _box([0, 0, 1, 1])
        if g["audio"] is None and loc.get("query_start") is not None:
            g["audio"] = {"query_start": loc.get("query_start"), "ref_start": loc.get("ref_start"),
                          "duration": loc.get("duration")}
    return list(groups.values())


class _Thumbs:
    """Thumbnails embedded once each, by key (``o<sha256>`` outputs, ``w<id>`` works; ``o<n>``, ``w<n>`` in the page)."""

    def __init__(self, out_dir: Path | None, ref_dir: Path | None, enabled: bool,
                 own: Mapping[str, bytes] | None = None):
        self.out_dir, self.ref_dir, self.enabled = out_dir, ref_dir, enabled
        self.own = dict(own or {})
        self.short: dict[str, str] = {}
        self.uris: dict[str, str] = {}
        self.meta: dict[str, dict[str, Any]] = {}

    def _get(self, key: str, folder: Path | None, name: Any) -> str | None:
        if key not in self.short:
            found = (self.own[key], {}) if key in self.own else thumbs.load(folder, name)
            if found is None:
                return None
            # short keys in the page: a 64-digit sha256 per line adds up over 10k lines
            short = self.short[key] = f"{key[0]}{len(self.short)}"
            self.uris[short], self.meta[short] = thumbs.data_uri(found[0]), found[1]
        return self.short[key]

    def output(self, sha256: Any) -> str | None:
        return self._get(f"o{sha256}", self.out_dir, sha256) if self.enabled and sha256 else None

    def work(self, work_id: Any) -> str | None:
        return self._get(f"w{work_id}", self.ref_dir, work_id) if work_id is not None else None


def _row(i: int, r: Mapping[str, Any], th: _Thumbs, *, expand: bool) -> dict[str, Any]:
    matches = r.get("matches") or []
    best = matches[0] if matches else {}
    row = {"i": i, "verdict": r.get("verdict") or "error", "path": r.get("path") or "",
           "name": Path(str(r.get("path") or "")).name, "reason": r.get("reason") or "",
           "score": float(r.get("score") or 0), "feature": best.get("feature") or "",
           "chance": best.get("chance") or "", "title": best.get("title") or best.get("ref_path") or "",
           "rights_holder": best.get("rights_holder") or "", "decision": r.get("decision"),
           "sha256": r.get("sha256") or "", "modality": r.get("modality") or "", "works": [],
           "features": sorted({m.get("feature") for m in matches if m.get("feature")})}
    if expand or row["verdict"] in SHOWN or row["decision"]:
        row["works"] = _works(matches)
        row["out_thumb"] = th.output(r.get("sha256"))
        out_meta = th.meta.get(row["out_thumb"] or "", {})
        for g in row["works"]:
            g["thumb"] = th.work(g["work_id"])
            ref_meta = th.meta.get(g["thumb"] or "", {})
            a = g["audio"]
            if a is not None:
                g["query_span"] = _span(a["query_start"], a["duration"], out_meta.get("duration"))
                g["ref_span"] = _span(a["ref_start"], a["duration"], ref_meta.get("duration"))
                g["out_total"], g["ref_total"] = mmss(out_meta.get("duration")), mmss(ref_meta.get("duration"))
        row["timeline"], row["video_total"] = _video_timeline(r.get("video"))
    return row


def _video_timeline(video: Any) -> tuple[list[dict[str, Any]], str]:
    """A video's matched stretches as CSS spans over its duration, with their words (``[]`` if none)."""
    if not isinstance(video, Mapping) or not video.get("timeline"):
        return [], ""
    entries = [e for e in video["timeline"] if isinstance(e, Mapping)]
    try:
        total = float(video.get("duration") or max(float(e.get("end") or 0) for e in entries))
    except (TypeError, ValueError):
        return [], ""
    out = []
    for e in entries:
        span = _span(e.get("start"), max(float(e.get("end") or 0) - float(e.get("start") or 0), 1e-3), total)
        if span is None:
            continue
        ref = f" (work at {float(e['ref_start']):.2f} s)" if e.get("ref_start") is not None else ""
        text = (f"{e.get('start_text')}–{e.get('end_text')} {e.get('source')}: "
                f"{e.get('talent') or e.get('title') or Path(str(e.get('ref_path') or '?')).name}{ref} · {e.get('feature')} · "
                f"{e.get('chance')}")
        out.append({**span, "source": "soundtrack" if e.get("source") == "soundtrack" else "picture", "text": text})
    return out, mmss(total)


def _script_json(value: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>`` can close it)."""
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("&", "\\u0026")


def _needs_person(r: Mapping[str, Any]) -> bool:
    """Whether an output must be looked at: any verdict but clear (an unknown one shows as
    error), or a recorded decision."""
    return r.get("verdict") != "clear" or bool(r.get("decision"))


@dataclass
class Listing:
    """The results a report lists, and the counts of all of them.

    Attributes
    ----------
    results : the listed result lines, in file order: every output a person must
        look at (any verdict but clear, or carrying a decision) and the first
        ``max_clear`` clear ones; so every output that gets a thumbnail or a
        ``timeline.csv`` row is here
    counts : results by verdict, every result counted (listed or not)
    total : every result
    unlisted : clear results counted but not listed
    index_id : the first index id a result names (``None`` if none does)
    """

    results: list[Mapping[str, Any]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    total: int = 0
    unlisted: int = 0
    index_id: str | None = None


def listing(results: Iterable[Mapping[str, Any]], *, max_clear: int | None = None) -> Listing:
    """One pass over results keeping what the report lists (see :class:`Listing`).

    Memory is bounded by the outputs that need a person plus ``max_clear``,
    not by the number of results, so ``results`` may stream from a file of
    millions of lines (:func:`scanner.results.iter_results`).

    Parameters
    ----------
    results : result lines as in ``results.jsonl``, iterated once
    max_clear : clear results listed at most (default :data:`MAX_CLEAR`, read
        at call time)

    Returns
    -------
    Listing
    """
    cap = MAX_CLEAR if max_clear is None else max_clear
    out = Listing()
    clear = 0
    for r in results:
        out.total += 1
        out.counts[r.get("verdict")] += 1
        if out.index_id is None and r.get("index_id"):
            out.index_id = r.get("index_id")
        if _needs_person(r):
            out.results.append(r)
        elif clear < cap:
            clear += 1
            out.results.append(r)
        else:
            out.unlisted += 1
    return out


def _unlisted_sentence(n: int) -> str:
    """What the page says of the clear outputs it leaves out (``""`` for none)."""
    if n <= 0:
        return ""
    return (f"{n:,} clear output{'s are' if n != 1 else ' is'} not listed here; "
            "every result is in results.csv and results.jsonl")


def _index_thumbs(run: Mapping[str, Any], first_index_id: str | None,
                  index_dir: str | Path | None) -> tuple[Path | None, str | None]:
    """The index's ``thumbs/`` when the index there is the one the results came from
    (``run["index_id"]``, else the first index id a result names)."""
    from scanner.errors import LikenessError
    from scanner.index.store import open_index

    index_dir = index_dir or run.get("index_path")
    if not index_dir:
        return None, "reference thumbnails not shown: no index given (--index)"
    wanted = run.get("index_id") or first_index_id
    try:
        index = open_index(index_dir)  # reads the manifest only: nothing is written into the index
    except LikenessError as exc:
        return None, f"reference thumbnails not shown: {exc}"
    if wanted and index.index_id != wanted:
        return None, (f"reference thumbnails not shown: the index at {index_dir} is {index.index_id}, "
                      f"these results came from index {wanted}")
    return index.thumbs_dir, None


def render_html(results: Iterable[Mapping[str, Any]] | Listing, run: Mapping[str, Any], *,
                index_dir: str | Path | None = None, out_thumbs: str | Path | None = None,
                thumbnails: bool = True, own_thumbs: Mapping[str, bytes] | None = None,
                single: bool = False) -> str:
    """The report page as a string.

    Parameters
    ----------
    results : result lines as in ``results.jsonl`` (any iterable, read once: a
        stream of millions is fine), or a :class:`Listing` already made of them;
        the page lists those that need a person and at most :data:`MAX_CLEAR`
        clear ones, and counts all
    run : the run's provenance (``run.json``: tool version, index id and size,
        thresholds, dates); for one asset, :meth:`Scanner.describe`
    index_dir : the index, for reference thumbnails (default ``run["index_path"]``);
        used only when its id is the results' index id
    out_thumbs : the scan's ``thumbs/`` folder (output thumbnails by sha256)
    thumbnails : ``False`` leaves output thumbnails out
    own_thumbs : output thumbnails given directly, ``{"o<sha256>": webp bytes}``
    single : one asset's page (``likeness check --html``): its verdict in plain
        words and its evidence, no table

    Returns
    -------
    html : str
    """
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("scanner.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    listed = results if isinstance(results, Listing) else listing(results)
    ref_dir, note = _index_thumbs(run, listed.index_id, index_dir)
    th = _Thumbs(Path(out_thumbs) if out_thumbs else None, ref_dir, thumbnails, own_thumbs)
    counts = listed.counts
    order = {v: i for i, v in enumerate(VERDICT_ORDER)}
    ranked = sorted(listed.results, key=lambda r: (order.get(r.get("verdict"), 9), -(r.get("score") or 0)))
    rows = [_row(i, r, th, expand=single) for i, r in enumerate(ranked)]
    policy = dict(run.get("policy") or {})
    features = sorted({f for row in rows for f in row["features"]})
    decided = [row for row in rows if row["decision"]]
    notes = [note] if note else []
    if not thumbnails:
        notes.append("output thumbnails left out (--no-thumbnails)")
    return env.get_template("report.html.j2").render(
        rows=rows, run=run, policy=policy, features=features, decided=decided, single=single,
        counts=[(v, counts.get(v, 0)) for v in VERDICT_ORDER], total=listed.total, page=PAGE,
        unlisted=_unlisted_sentence(listed.unlisted),
        thumbs_json=_script_json(th.uris), notes=notes, order=order,
        plain=plain_verdict(ranked[0], run) if single and ranked else "",
        generated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        feature_names=", ".join(str(f.get("name")) + (f" ({f['model']})" if f.get("model") else "")
                                for f in run.get("features") or [] if isinstance(f, dict)))


def write_html(results: Iterable[Mapping[str, Any]] | Listing, run: Mapping[str, Any], path: str | Path,
               **options: Any) -> Path:
    """Write the report page atomically (a temporary file beside it, then a rename).

    Takes the results and options of :func:`render_html`; creates the folder when missing.

    Returns
    -------
    path : the page written
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        # a file name that is not UTF-8 (lone surrogates from results.jsonl) is shown as \udcXX escapes
        tmp.write_text(render_html(results, run, **options), encoding="utf-8", errors="backslashreplace")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def output_thumbnails(results: Iterable[Mapping[str, Any]], folder: str | Path) -> int:
    """Keep thumbnails (audio: spectrogram strips) of the outputs a person must look at, by sha256.

    Only outputs whose verdict is flagged, review or licensed (or that carry a
    decision) get one; clear outputs leave no trace. Files already there are
    kept (a resumed scan).

    Returns
    -------
    n : thumbnails written
    """
    n = 0
    for r in results:
        sha = r.get("sha256")
        if not sha or not (r.get("verdict") in SHOWN or r.get("decision")):
            continue
        if thumbs.load(folder, sha) is not None:
            continue
        found = output_thumbnail(r)
        if found is not None:
            thumbs.save(folder, sha, *found)
            n += 1
    return n


def output_thumbnail(r: Mapping[str, Any]) -> tuple[bytes, dict[str, Any]] | None:
    """One output's thumbnail and its sidecar, from its file: a picture, an audio strip
    (``{"duration": s}``), or for a video the frame of its strongest picture match
    (``{"timecode": s}``) or its soundtrack's strip; ``None`` if the file does not decode."""
    if r.get("modality") == "audio":
        return thumbs.audio_strip(r.get("path") or "")
    if r.get("modality") == "video":
        from scanner.video import soundtrack_strip, thumbnail_at

        # the strongest match decides: its soundtrack's strip, or its frame (else the first)
        best = ((r.get("matches") or [{}])[0].get("locator")) or {}
        found = soundtrack_strip(r.get("path") or "") if best.get("query_start") is not None else None
        if found is None:
            at = float(best.get("timecode") or 0.0)
            data = thumbnail_at(r.get("path") or "", at)
            found = (data, {"timecode": at}) if data is not None else None
        return found
    data = thumbs.from_file(r.get("path") or "")
    return (data, {}) if data is not None else None


def rebuild(results_path: str | Path, out: str | Path, *, index_dir: str | Path | None = None,
            thumbnails: bool = True) -> tuple[int, list[str]]:
    """Rebuild ``report.html`` from a ``results.jsonl`` and the index alone.

    The run's provenance comes from ``run.json`` beside the results when it is
    there (else from the index); output thumbnails from the scan's ``thumbs/``
    beside them; reference thumbnails from the index. Nothing is written but
    ``out``.

    Parameters
    ----------
    results_path : a ``results.jsonl`` written by a scan
    out : the HTML file to write
    index_dir : the index the results came from (default: ``run.json``'s)
    thumbnails : ``False`` leaves output thumbnails out

    Returns
    -------
    (n_results, notes) : every result line counted (the page lists at most
        :data:`MAX_CLEAR` clear ones), and what the caller should be told

    Raises
    ------
    ParameterError
        When the results file is missing or holds no result line.
    """
    from scanner.errors import LikenessError, ParameterError
    from scanner.index.store import open_index
    from scanner.results import iter_results

    results_path = Path(results_path)
    if not results_path.is_file():
        raise ParameterError(f"no results file at {results_path} (give the results.jsonl of a scan)")
    # one streamed pass, the same selection a scan's own page gets: memory bounded by what is listed
    listed = listing(iter_results(results_path))
    if not listed.total:
        raise ParameterError(f"{results_path} holds no result line (is it a results.jsonl of `likeness scan`?)")
    notes = []
    run: dict[str, Any] = {}
    try:
        run = json.loads((results_path.parent / "run.json").read_text())
    except (OSError, ValueError):
        notes.append("no run.json beside the results: provenance comes from the index")
    if index_dir is not None:
        try:
            with open_index(index_dir) as index:
                found = {"index_path": str(index_dir), "index_id": index.index_id, "n_works": index.n_works,
                         "policy": index.policy}
        except LikenessError as exc:
            raise ParameterError(str(exc)) from None
        if run.get("index_id") not in (None, found["index_id"]):
            notes.append(f"the index at {index_dir} is {found['index_id']}, run.json names "
                         f"{run['index_id']}: reference thumbnails are left out")
        run = {**found, **run} if run else found
        run.setdefault("index_id", listed.index_id)
    write_html(listed, run, out, index_dir=index_dir, out_thumbs=results_path.parent / "thumbs",
               thumbnails=thumbnails)
    return listed.total, notes
