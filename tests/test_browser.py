"""The report in a real browser: headless Chromium opens it, filters, sorts, pages and screenshots it.

Skipped, with the reason, when no Chromium is installed (``make test`` and
``.ci/run`` install the Debian package ``chromium`` when they can).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for cdp, whatever the rootdir
from cdp import Browser, find_chromium  # noqa: E402
from scanner.cli import app
from scanner.demo import MILD_TRANSFORMS, flatten, synthetic_picture
from scanner.pipeline import read_results
from scanner.report.html import PAGE, write_html

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium, "
                                "or set LIKENESS_CHROMIUM): the real-browser tests of the report did not run")
runner = CliRunner()
HOSTILE = "<img src=x onerror=window.__pwned=1>.png"
VISIBLE = "document.querySelectorAll('#results tbody.item:not([hidden])')"


@pytest.fixture(scope="module")
def browser() -> Browser:
    assert CHROMIUM is not None
    with Browser(CHROMIUM) as b:
        yield b


@pytest.fixture(scope="module")
def scanned(phash_index: Path, refs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    outs = root / "outs"
    outs.mkdir()
    for i, (name, t) in enumerate(MILD_TRANSFORMS.items()):
        t(flatten(Image.open(refs_dir / f"ref{i}.png"))).save(outs / f"copy-{name}.png")
    MILD_TRANSFORMS["jpeg-q40"](flatten(Image.open(refs_dir / "ref5.png"))).save(outs / HOSTILE)
    for j in range(3):
        synthetic_picture(700 + j).save(outs / f"new{j}.png")
    r = runner.invoke(app, ["scan", str(outs), "--index", str(phash_index), "--out", str(root / "res"), "-q"])
    assert r.exit_code == 1, r.output
    return root / "res"


def _select(b: Browser, control: str, value: str) -> None:
    b.js(f"(function(){{var s=document.getElementById({json.dumps(control)}); s.value={json.dumps(value)};"
         "s.dispatchEvent(new Event('change'));})()")


def test_filter_by_verdict_counts_visible_rows_and_pictures_load(browser: Browser, scanned: Path) -> None:
    results = read_results(scanned / "results.jsonl")
    n_flagged = sum(r["verdict"] == "flagged" for r in results)
    assert 0 < n_flagged < len(results)
    browser.open((scanned / "report.html").as_uri())
    assert browser.js(f"{VISIBLE}.length") == len(results)
    _select(browser, "f-verdict", "flagged")
    assert browser.js(f"{VISIBLE}.length") == n_flagged
    assert browser.js(f"Array.from({VISIBLE}).every(t => t.dataset.verdict === 'flagged')")
    assert browser.js("location.hash") == "#verdict=flagged"
    _select(browser, "f-verdict", "clear")
    assert browser.js(f"{VISIBLE}.length") == sum(r["verdict"] == "clear" for r in results)
    _select(browser, "f-verdict", "")
    # every thumbnail of a flagged line decoded (data: URIs, nothing fetched)
    loaded = browser.js("Array.from(document.querySelectorAll('tbody.item[data-verdict=flagged] img'))"
                        ".map(i => [i.complete, i.naturalWidth > 0, i.src.slice(0, 5)])")
    assert loaded and all(c and w and s == "data:" for c, w, s in loaded)


def test_hostile_file_name_is_text_not_markup(browser: Browser, scanned: Path) -> None:
    browser.open((scanned / "report.html").as_uri())
    assert browser.js("window.__pwned") is None
    assert browser.js(f"document.body.textContent.includes({json.dumps(HOSTILE)})")
    assert browser.js("document.querySelectorAll('img[src=x]').length") == 0


def test_sort_and_pages_on_many_results(browser: Browser, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    verdicts = rng.choice(["flagged", "review", "clear", "error"], size=3 * PAGE + 17, p=[0.45, 0.15, 0.35, 0.05])
    results = [{"path": f"out/{i:04d}.png", "sha256": f"{i:064x}", "modality": "image", "verdict": str(v),
                "score": float(rng.random()), "reason": "r", "error": None, "index_id": "i",
                "matches": [{"work_id": int(i % 7), "title": f"T{i % 7}", "feature": "image-phash",
                             "score": 0.9, "expected": 1e-6, "chance": "1 in 1 million by chance",
                             "locator": {}}] if v != "clear" else []}
               for i, v in enumerate(verdicts)]
    page = write_html(results, {"index_id": "i", "policy": {}}, tmp_path / "many.html")
    browser.open(page.as_uri() + "#verdict=flagged&sort=score&dir=desc")
    n_flagged = int((verdicts == "flagged").sum())
    assert browser.js(f"{VISIBLE}.length") == min(PAGE, n_flagged)
    assert browser.js("document.getElementById('shown').textContent") == f"{n_flagged} of {len(results)} outputs match"
    scores = browser.js(f"Array.from({VISIBLE}).map(t => parseFloat(t.dataset.score))")
    best = max(r["score"] for r in results if r["verdict"] == "flagged")
    assert scores == sorted(scores, reverse=True) and abs(scores[0] - best) < 1e-4
    browser.js("document.getElementById('next').click()")
    assert browser.js(f"{VISIBLE}.length") == min(PAGE, n_flagged - PAGE)
    assert "page=2" in browser.js("location.hash")


def test_screenshot_is_not_blank(browser: Browser, scanned: Path) -> None:
    browser.open((scanned / "report.html").as_uri())
    png = browser.screenshot()
    with Image.open(io.BytesIO(png)) as im:
        px = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert px.shape[0] >= 600 and px.shape[1] >= 1000
    assert px.std() > 20  # text, colour badges and thumbnails, not a blank page
    assert len(np.unique(px.reshape(-1, 3)[::7], axis=0)) > 200
