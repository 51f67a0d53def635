"""The HTML report, the one-asset check page, reference thumbnails and the decision ledger."""

from __future__ import annotations

import json
import multiprocessing
import re
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from scanner import ledger, thumbs
from scanner.cli import app
from scanner.demo import MILD_TRANSFORMS, flatten, synthetic_picture
from scanner.errors import ParameterError
from scanner.index import store
from scanner.pipeline import FeatureOptions, build_index, read_results, scan
from scanner.report.html import render_html
from scanner.report.words import mmss

runner = CliRunner()
XSS = "<img src=x onerror=alert(1)>.png"


def _outputs(refs_dir: Path, root: Path) -> Path:
    """Two copies of works (one named to attack the page), a copy of the licensed work, two new pictures."""
    outs = root / "outs"
    outs.mkdir()
    MILD_TRANSFORMS["jpeg-q40"](flatten(Image.open(refs_dir / "ref1.png"))).save(outs / "copy1.png")
    MILD_TRANSFORMS["resize-50"](flatten(Image.open(refs_dir / "ref2.png"))).save(outs / XSS)
    MILD_TRANSFORMS["jpeg-q40"](flatten(Image.open(refs_dir / "ref9.png"))).save(outs / "licensed9.png")
    synthetic_picture(333).save(outs / "new1.png")
    synthetic_picture(334).save(outs / "new2.png")
    return outs


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _thumb_keys(html: str) -> dict[str, str]:
    blob = re.search(r'<script type="application/json" id="thumbs">(.*?)</script>', html, re.S)
    assert blob is not None
    return json.loads(blob.group(1))


@pytest.fixture
def scanned(fresh_index: Path, refs_dir: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(index, outputs, scan folder) after one scan of :func:`_outputs`."""
    outs = _outputs(refs_dir, tmp_path)
    res = tmp_path / "res"
    r = runner.invoke(app, ["scan", str(outs), "--index", str(fresh_index), "--out", str(res), "-q"])
    assert r.exit_code == 1, r.output
    return fresh_index, outs, res


def test_index_keeps_one_thumbnail_per_work_through_add_and_remove(fresh_index: Path, tmp_path: Path) -> None:
    with store.open_index(fresh_index) as idx:
        ids = sorted(idx.works())
        folder = idx.thumbs_dir
    assert sorted(int(p.stem) for p in folder.glob("*.webp")) == ids
    with Image.open(folder / f"{ids[0]}.webp") as im:
        assert max(im.size) <= thumbs.SIDE and im.format == "WEBP"
    extra = tmp_path / "extra"
    extra.mkdir()
    synthetic_picture(4242).save(extra / "new-work.png")
    build_index([extra], fresh_index, create=False)
    r = runner.invoke(app, ["index", "remove", str(ids[0]), "--index", str(fresh_index)])
    assert r.exit_code == 0, r.output
    assert sorted(int(p.stem) for p in folder.glob("*.webp")) == ids[1:] + [max(ids) + 1]
    store.verify_index(fresh_index)  # thumbs/ is part of the index, not a stray file


def test_scan_report_is_self_contained_with_evidence(scanned: tuple[Path, Path, Path]) -> None:
    index, outs, res = scanned
    html = (res / "report.html").read_text()
    results = read_results(res / "results.jsonl")
    run = json.loads((res / "run.json").read_text())
    # no fetch of anything: every src/href is inline, and the page forbids fetches anyway
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "http://" not in html and "https://" not in html
    assert "default-src 'none'" in html
    # provenance and counts
    assert run["index_id"] in html and run["tool_version"] in html
    assert f"({run['n_works']} works" in html and "flag at ≤ 0.001" in html
    assert html.count('<tbody class="item"') == len(results) == 5
    verdicts = {Path(r["path"]).name: r["verdict"] for r in results}
    assert verdicts["copy1.png"] == "flagged" and verdicts["licensed9.png"] == "licensed"
    assert html.count('data-verdict="flagged"') == sum(v == "flagged" for v in verdicts.values())
    # side by side: the output's thumbnail and the work's, each embedded once
    keys = _thumb_keys(html)
    shown = [r for r in results if r["verdict"] in ("flagged", "review", "licensed")]
    assert len([k for k in keys if k.startswith("o")]) == len(shown)
    assert len([k for k in keys if k.startswith("w")]) == len({m["work_id"] for r in shown for m in r["matches"]})
    assert set(re.findall(r'data-t="(\w+)"', html)) == set(keys)  # every picture has its data, once
    assert all(v.startswith("data:image/webp;base64,") for v in keys.values())
    # thumbnails only for outputs a person must look at
    kept = {p.stem for p in (res / "thumbs").glob("*.webp")}
    assert kept == {r["sha256"] for r in results if r["verdict"] in ("flagged", "review", "licensed")}
    # strength against thresholds, in plain words; the work's metadata
    assert "by chance" in html and 'class="bar"' in html and "0.8 (flag)" in html
    assert "Work 1" in html and "Holder 1" in html and "all rights reserved" in html
    assert 'class="box"' in html  # the whole picture matched: boxed on both


def test_hostile_file_name_and_metadata_show_as_text(scanned: tuple[Path, Path, Path]) -> None:
    _, _, res = scanned
    html = (res / "report.html").read_text()
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in html
    hostile = [{"path": "<script>alert(1)</script>.png", "sha256": "ab" * 32, "modality": "image",
                "verdict": "flagged", "score": 1.0, "reason": "</script><b>x</b>", "error": None,
                "index_id": "i", "matches": [{"work_id": 1, "title": "<b onmouseover=alert(1)>T</b>",
                                              "rights_holder": "\"><svg onload=alert(1)>", "licence": "'</td>",
                                              "feature": "image-phash", "score": 1.0, "expected": 1e-9,
                                              "chance": "1 in 1 billion by chance", "locator": {}}]}]
    page = render_html(hostile, {"index_id": "i", "policy": {}})
    for raw in ("<script>alert", "<b onmouseover", "<svg onload", "</td>'", "<b>x</b>"):
        assert raw not in page


def test_no_thumbnails_keeps_and_embeds_no_output_picture(fresh_index: Path, refs_dir: Path,
                                                          tmp_path: Path) -> None:
    outs = _outputs(refs_dir, tmp_path)
    res = tmp_path / "res"
    r = runner.invoke(app, ["scan", str(outs), "--index", str(fresh_index), "--out", str(res), "-q",
                            "--no-thumbnails"])
    assert r.exit_code == 1, r.output
    assert not (res / "thumbs").exists()
    keys = _thumb_keys((res / "report.html").read_text())
    assert keys and all(k.startswith("w") for k in keys)  # the works' thumbnails still show
    assert "output thumbnails left out" in (res / "report.html").read_text()


def test_report_rebuilds_from_results_and_index_alone_writing_nothing_else(
        scanned: tuple[Path, Path, Path], tmp_path: Path) -> None:
    index, outs, res = scanned
    for p in outs.iterdir():  # the outputs are gone: the report needs only results and the index
        p.unlink()
    before = {p: p.stat().st_mtime_ns for p in _files(tmp_path)}
    page = tmp_path / "elsewhere" / "rebuilt.html"
    r = runner.invoke(app, ["report", str(res / "results.jsonl"), "--out", str(page), "--index", str(index)])
    assert r.exit_code == 0, r.output
    after = {p: p.stat().st_mtime_ns for p in _files(tmp_path)}
    assert set(after) - set(before) == {page}
    assert all(after[p] == t for p, t in before.items())
    rebuilt, original = page.read_text(), (res / "report.html").read_text()
    assert _thumb_keys(rebuilt) == _thumb_keys(original)
    assert rebuilt.count('<tbody class="item"') == 5
    r = runner.invoke(app, ["report", str(tmp_path / "none.jsonl"), "--out", str(page)])
    assert r.exit_code == 2 and "no results file" in r.output and "Traceback" not in r.output


def test_report_refuses_reference_thumbnails_of_another_index(scanned: tuple[Path, Path, Path],
                                                                refs_dir: Path, tmp_path: Path) -> None:
    _, _, res = scanned
    other = tmp_path / "other"
    build_index([refs_dir], other, options=FeatureOptions(names=["image-phash"]))
    page = tmp_path / "r.html"
    r = runner.invoke(app, ["report", str(res / "results.jsonl"), "--out", str(page), "--index", str(other)])
    assert r.exit_code == 0, r.output
    html = page.read_text()
    assert "reference thumbnails not shown" in html
    assert not [k for k in _thumb_keys(html) if k.startswith("w")]


def test_check_html_is_one_asset_page_in_plain_words(phash_index: Path, refs_dir: Path, tmp_path: Path) -> None:
    outs = _outputs(refs_dir, tmp_path)
    page = tmp_path / "one" / "copy.html"
    r = runner.invoke(app, ["check", str(outs / "copy1.png"), "--index", str(phash_index), "--html", str(page)])
    assert r.exit_code == 1 and "FLAGGED" in r.output and "Holder 1" in r.output
    html = page.read_text()
    assert "likeness check of one asset" in html and "Too close to a protected work" in html
    assert len([k for k in _thumb_keys(html) if k.startswith("o")]) == 1
    assert len([k for k in _thumb_keys(html) if k.startswith("w")]) == 1
    r = runner.invoke(app, ["check", str(outs / "new1.png"), "--index", str(phash_index), "--html", str(page)])
    assert r.exit_code == 0
    html = page.read_text()
    assert "No near-copy found among the 10 works" in html and "not a legal clearance" in html
    assert "cleared" not in html.lower().replace("not a legal clearance", "")


def test_audio_locator_draws_spans_on_spectrogram_strips(tmp_path: Path) -> None:
    import numpy as np

    sr = 8000
    t = np.arange(sr * 4) / sr
    strip = thumbs.spectrogram_strip(np.sin(2 * np.pi * 440 * t * (1 + t / 4)), sr)
    with Image.open(__import__("io").BytesIO(strip)) as im:
        assert im.height == thumbs.STRIP_HEIGHT and im.width > 16
    out_thumbs, sha = tmp_path / "thumbs", "cd" * 32
    thumbs.save(out_thumbs, sha, strip, {"duration": 40.0})
    result = {"path": "song.wav", "sha256": sha, "modality": "audio", "verdict": "flagged", "score": 0.95,
              "reason": "copy evidence", "error": None, "index_id": "i",
              "matches": [{"work_id": 3, "title": "Theme", "feature": "audio-fingerprint", "score": 0.95,
                           "expected": 1e-8, "chance": "1 in 100 million by chance",
                           "locator": {"query_start": 10.0, "ref_start": 65.0, "duration": 8.0}}]}
    html = render_html([result], {"index_id": "i", "policy": {}}, out_thumbs=out_thumbs)
    assert 'class="span" style="left:25.0%;width:20.0%"' in html
    assert "output 0:10–0:18 matches work 1:05–1:13" in html and "0:40" in html
    assert mmss(3725) == "1:02:05" and mmss(None) == "?"


# --- the decision ledger ----------------------------------------------------------------


def test_decisions_are_honoured_by_later_scans_and_listed(scanned: tuple[Path, Path, Path],
                                                          tmp_path: Path) -> None:
    index, outs, res = scanned
    r = runner.invoke(app, ["review", str(outs / "copy1.png"), "--index", str(index), "--decision", "approved",
                            "--by", "Ana <Legal>", "--why", "parody, cleared by counsel"])
    assert r.exit_code == 0, r.output
    new2 = read_results(res / "results.jsonl")
    sha_new2 = next(x["sha256"] for x in new2 if x["path"].endswith("new2.png"))
    r = runner.invoke(app, ["review", sha_new2, "--index", str(index), "--decision", "rejected",
                            "--by", "Bo", "--why", "too close to the client's mascot"])
    assert r.exit_code == 0, r.output
    lines = ledger.read(index)
    assert [d.decision for d in lines] == ["approved", "rejected"]
    assert lines[0].works and lines[0].works[0]["title"] == "Work 1" and lines[1].works == []
    assert ledger.ledger_path(index).parent == index.parent  # beside the index, outside its swap
    # an index rebuild (add) keeps the ledger, and later scans honour it
    extra = tmp_path / "extra"
    extra.mkdir()
    synthetic_picture(4243).save(extra / "w.png")
    build_index([extra], index, create=False)
    res2 = tmp_path / "res2"
    r = runner.invoke(app, ["scan", str(outs), "--index", str(index), "--out", str(res2), "-q"])
    by = {Path(x["path"]).name: x for x in read_results(res2 / "results.jsonl")}
    assert by["copy1.png"]["verdict"] == "clear" and by["copy1.png"]["decision"]["by"] == "Ana <Legal>"
    assert "parody, cleared by counsel" in by["copy1.png"]["reason"]
    assert by["copy1.png"]["matches"]  # the evidence stays visible
    assert by["new2.png"]["verdict"] == "flagged" and by["new2.png"]["decision"]["decision"] == "rejected"
    assert by[XSS]["verdict"] == "flagged" and "decision" not in by[XSS]  # nobody decided it
    html = (res2 / "report.html").read_text()
    assert '<table id="decisions">' in html and "Ana &lt;Legal&gt;" in html and "too close to the client" in html
    assert r.exit_code == 1


def test_approval_covers_only_the_works_it_names() -> None:
    a, b = "a" * 64, "b" * 64
    sha = "c" * 64
    decisions = ledger.Decisions([ledger.Decision(sha, "approved", "Ana", "ok", works=[{"work_id": 1, "sha256": a}])])
    assert decisions.applicable(sha, [a]) is not None
    assert decisions.applicable(sha, [a, b]) is None  # a work nobody looked at: escalate again
    assert decisions.applicable("d" * 64, [a]) is None
    later = ledger.Decisions(decisions.for_output(sha) + [
        ledger.Decision(sha, "licensed", "Cy", "bought", works=[{"work_id": 2, "sha256": b}])])
    assert later.applicable(sha, [a, b]).decision == "licensed"
    flip = ledger.Decisions(later.for_output(sha) + [ledger.Decision(sha, "rejected", "Di", "no")])
    assert flip.applicable(sha, []).decision == "rejected"


def _append_many(args: tuple[str, int]) -> None:
    index, worker = args
    for i in range(25):
        ledger.append(index, ledger.Decision(f"{worker:02x}" * 32, "approved", f"w{worker}", "x" * (200 + i)))


def test_concurrent_appends_never_interleave_and_bad_input_is_refused(tmp_path: Path) -> None:
    index = tmp_path / "idx"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_append_many, [(str(index), w) for w in range(4)])
    raw = ledger.ledger_path(index).read_text().splitlines()
    assert len(raw) == 100 and all(json.loads(x)["why"].startswith("xxx") for x in raw)
    with open(ledger.ledger_path(index), "a") as fh:
        fh.write('{"sha256": "torn')  # a killed writer
    ledger.append(index, ledger.Decision("ee" * 32, "rejected", "Ed", "after a torn line"))
    assert len(ledger.read(index)) == 101 and ledger.read(index)[-1].by == "Ed"
    for bad in (dict(decision="maybe"), dict(by=" "), dict(why=""), dict(sha256="xyz")):
        args = {"sha256": "ab" * 32, "decision": "approved", "by": "A", "why": "w", **bad}
        with pytest.raises(ParameterError):
            ledger.append(index, ledger.Decision(**args))


def test_review_cli_errors_are_one_line(fresh_index: Path) -> None:
    for args, words in ((["nope"], "neither an existing file nor a sha256"),
                        (["ab" * 32, "--work", "999"], "no work 999"),
                        (["ab" * 32, "--decision", "maybe"], "decision must be one of")):
        cmd = ["review", *args[:1], "--index", str(fresh_index), "--by", "A", "--why", "w", *args[1:]]
        if "--decision" not in cmd:
            cmd += ["--decision", "approved"]
        r = runner.invoke(app, cmd)
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, r.output


def _tune(seed: int, seconds: float, sr: int = 22050):
    """A made-up melody: plucked notes of random pitch and length."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, t = np.zeros(int(seconds * sr), np.float32), 0
    while t < len(y):
        d, f = int(rng.uniform(0.12, 0.4) * sr), 220 * 2 ** (rng.integers(0, 24) / 12)
        tt = np.arange(min(d, len(y) - t)) / sr
        y[t:t + len(tt)] += 0.5 * np.sin(2 * np.pi * f * tt) * np.exp(-3 * tt) \
            + 0.2 * np.sin(4 * np.pi * f * tt) * np.exp(-5 * tt)
        t += d
    return y


def _wav(path: Path, y, sr: int = 22050) -> None:
    import wave

    import numpy as np

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((np.clip(y, -1, 1) * 32000).astype("<i2").tobytes())


def test_audio_works_get_strips_at_build_and_the_report_marks_the_span(tmp_path: Path) -> None:
    refs, outs = tmp_path / "refs", tmp_path / "outs"
    refs.mkdir()
    outs.mkdir()
    for s in (1, 2):
        _wav(refs / f"song{s}.wav", _tune(s, 20.0))
    _wav(outs / "excerpt.wav", _tune(2, 20.0)[5 * 22050:13 * 22050])
    index = tmp_path / "index"
    build_index([refs], index, options=FeatureOptions(names=["audio-fingerprint"]))
    meta = json.loads((index / "thumbs" / "1.json").read_text())
    assert abs(meta["duration"] - 20.0) < 0.05
    res = tmp_path / "res"
    scan([outs], index, out_dir=res)
    (r,) = read_results(res / "results.jsonl")
    assert r["verdict"] == "flagged", r
    loc = r["matches"][0]["locator"]
    assert abs(loc["ref_start"] - 5.0) < 0.3
    html = (res / "report.html").read_text()
    assert len(_thumb_keys(html)) == 2 and html.count('class="strip"') == 2
    spans = re.findall(r'class="span" style="left:([\d.]+)%;width:([\d.]+)%"', html)
    assert len(spans) == 2
    ref_left = float(spans[1][0])  # the work's strip stands for 20 s: the copy starts a quarter in
    assert abs(ref_left - 25.0) < 2.0
    assert "matches work 0:05–0:1" in html and "0:20" in html


# --- a run of many results ------------------------------------------------------------


def _many_results(folder: Path, n_clear: int) -> dict[str, dict]:
    """A ``results.jsonl`` of ``n_clear + 2`` tiny lines, clear but for those a person must see (among
    and after the clear ones; one clear line carries a decision), then a torn line; returns those by path."""
    def match(work_id: int) -> dict:
        return {"work_id": work_id, "ref_path": f"refs/w{work_id}.png", "title": f"Work {work_id}",
                "feature": "image-phash", "score": 0.9, "chance": "1 in 1e9", "locator": {}}

    decision = {"decision": "approved", "by": "Ana", "why": "parody", "time": "2025-01-01T00:00:00", "works": []}
    special = {
        10: {"verdict": "flagged", "score": 0.95, "matches": [match(1)]},
        70: {"verdict": "review", "score": 0.6, "matches": [match(2)]},
        3000: {"verdict": "clear", "score": 0.1, "matches": [], "decision": decision},
        n_clear - 1: {"verdict": "error", "score": 0.0, "matches": [], "error": "does not decode"},
        n_clear: {"verdict": "licensed", "score": 0.9, "matches": [match(3)]},
        n_clear + 1: {"verdict": "flagged", "score": 0.99, "matches": [match(4)]},
    }
    folder.mkdir(parents=True)
    with open(folder / "results.jsonl", "w") as fh:
        for i in range(n_clear + 2):
            line = {"path": f"outs/o{i}.png", "verdict": "clear", "score": 0.0, "sha256": f"{i:064x}",
                    "modality": "image", "index_id": "idx-1", "matches": [], **special.get(i, {})}
            fh.write(json.dumps(line) + "\n")
        fh.write('{"path": "outs/torn.png", "verd')  # a killed writer's last line
    return {f"outs/o{i}.png": s for i, s in special.items()}


def test_report_of_many_results_lists_those_needing_a_person_and_a_cap_of_clear(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scanner.pipeline as pipeline
    import scanner.report.html as report_html

    n_clear, cap = 5000, 50
    res = tmp_path / "res"
    special = _many_results(res, n_clear)
    monkeypatch.setattr(report_html, "MAX_CLEAR", cap)

    def no_list(path: object) -> None:
        raise AssertionError("the end of a scan must stream results.jsonl, not read it whole")

    reached: list[int] = []  # how many result dicts the page is made from
    real_render = report_html.render_html

    def render(results, *args, **kwargs):  # type: ignore[no-untyped-def]
        reached.append(len(results.results))
        return real_render(results, *args, **kwargs)

    monkeypatch.setattr(pipeline, "read_results", no_list)
    monkeypatch.setattr(report_html, "render_html", render)
    pipeline.write_outputs(res, {"skipped": 0}, thumbnails=True)

    listed = len(special) + cap  # every line that needs a person, and the cap of clear ones
    assert reached == [listed]
    rows = (res / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + n_clear + 2 and "outs/torn.png" not in "".join(rows)
    html = (res / "report.html").read_text()
    shown = re.findall(r'<tbody class="item"[^>]* data-path="([^"]+)"', html)
    assert len(shown) == listed and set(special) <= set(shown)
    clear_shown = [p for p in shown if p not in special]
    assert sorted(clear_shown, key=lambda p: int(p[6:-4])) == [f"outs/o{i}.png" for i in range(cap + 1) if i != 10]
    counts = dict(re.findall(r'<span class="v (\w+)">\1</span> (\d+)', html))
    n_clear_lines = n_clear + 2 - 5  # all lines, less the five of another verdict
    assert counts == {"flagged": "2", "error": "1", "review": "1", "licensed": "1", "clear": str(n_clear_lines)}
    unlisted = n_clear_lines - 1 - cap  # clear lines, less the one with a decision and those listed
    assert (f"{unlisted:,} clear outputs are not listed here; every result is in results.csv and "
            "results.jsonl") in html
    assert "Ana" in html  # the decided clear output is listed with its decision
    timeline = (res / "timeline.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in timeline[1:]] == ["outs/o10.png", "outs/o70.png", f"outs/o{n_clear}.png",
                                                       f"outs/o{n_clear + 1}.png"]

    # `likeness report` rebuilds the page by the same selection, from the same stream
    reached.clear()
    page = tmp_path / "r.html"
    r = runner.invoke(app, ["report", str(res / "results.jsonl"), "--out", str(page)])
    assert r.exit_code == 0, r.output
    assert f"report of {n_clear + 2} result(s)" in r.output and reached == [listed]
    rebuilt = page.read_text()
    assert re.findall(r'<tbody class="item"[^>]* data-path="([^"]+)"', rebuilt) == shown
    assert f"{unlisted:,} clear outputs are not listed here" in rebuilt


def test_small_report_lists_every_result_and_write_all_refuses_a_one_shot_iterator(tmp_path: Path) -> None:
    from scanner.report import write_all

    lines = [{"path": f"o{i}.png", "verdict": "clear", "score": 0.0, "matches": []} for i in range(3)]
    html = render_html(iter(lines), {})  # any iterable, read once
    assert html.count('<tbody class="item"') == 3 and "not listed here" not in html
    with pytest.raises(TypeError, match="reads the results twice"):
        write_all(iter(lines), {}, tmp_path)
