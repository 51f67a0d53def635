"""``likeness serve`` in a real browser: headless Chromium signs in with a token, drops a copy and an
unrelated picture on the page, sees flagged and clear, approves the copy with a reason, and the decision
is in the index's ledger with the signed-in person as ``by``.

Skipped, with the reason, when no Chromium is installed (``make test`` installs it when it can).
Set ``LIKENESS_SCREENSHOT=PATH`` to keep the page's screenshot (the README's ``docs/serve.png``).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for cdp, whatever the rootdir
from cdp import Browser, find_chromium  # noqa: E402
from scanner import ledger  # noqa: E402
from scanner.demo import MILD_TRANSFORMS, flatten, synthetic_picture  # noqa: E402
from scanner.pipeline import FeatureOptions, build_index  # noqa: E402
from scanner.serve.auth import UserStore  # noqa: E402

CHROMIUM = find_chromium()
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium, or set "
                                 "LIKENESS_CHROMIUM): the real-browser test of likeness serve did not run"),
              pytest.mark.skipif(pytest.importorskip("httpx") is None, reason="no httpx")]


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _wait(b: Browser, expression: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if b.js(expression):
            return
        time.sleep(0.1)
    raise AssertionError(f"the page never reached: {expression}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    import httpx

    root = tmp_path_factory.mktemp("serve-browser")
    refs = root / "refs"
    refs.mkdir()
    with open(root / "meta.csv", "w") as fh:
        fh.write("path,title,rights_holder\n")
        for i in range(5):
            synthetic_picture(i).save(refs / f"ref{i}.png")
            fh.write(f"ref{i}.png,Work {i},Holder {i}\n")
    index = root / "index"
    build_index([refs], index, options=FeatureOptions(names=["image-phash", "image-local"]),
                metadata=root / "meta.csv")
    state = root / "state"
    token = UserStore(state).add("Ana Lima", "reviewer")[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "scanner.cli", "serve", "--index", str(index), "--state",
                             str(state), "--port", str(port), "--thumbnails"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()["ready"]:
                    break
            time.sleep(0.1)
        else:
            raise AssertionError("the server never became ready")
        yield f"http://127.0.0.1:{port}", token, index
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _sign_in(b: Browser, base: str, token: str) -> None:
    b.open(base + "/")
    assert b.js("location.pathname") == "/signin"  # no session: the sign-in page
    b.js(f"document.getElementById('token').value = {json.dumps(token)};"
         "document.querySelector('form').submit(); true")
    b.wait_event("Page.loadEventFired")
    _wait(b, "location.pathname === '/' && !!document.getElementById('drop')")


def _drop(b: Browser, files: list[tuple[str, bytes, str]]) -> None:
    """Drop files (name, content, MIME type) on the page, as a person dragging them would."""
    given = json.dumps([[name, base64.b64encode(data).decode(), kind] for name, data, kind in files])
    b.js(f"""(function () {{
        const dt = new DataTransfer();
        for (const [name, data, kind] of {given}) {{
          const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
          dt.items.add(new File([bytes], name, {{type: kind}}));
        }}
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {{dataTransfer: dt, bubbles: true,
                                                                           cancelable: true}}));
        return true; }})()""")


def test_sign_in_drop_see_flagged_and_clear_approve_and_find_it_in_the_ledger(
        served: tuple[str, str, Path]) -> None:
    base, token, index = served
    copy = _png(flatten(MILD_TRANSFORMS["jpeg-q40"](synthetic_picture(2))))
    other = _png(synthetic_picture(4242))
    assert CHROMIUM is not None
    with Browser(CHROMIUM) as b:
        _sign_in(b, base, token)
        assert b.js("document.cookie") == ""  # the session cookie is HttpOnly: no script reads it
        _drop(b, [("copy of work 2.png", copy, "image/png"), ("something new.png", other, "image/png")])
        cards = "Array.from(document.querySelectorAll('#checks .card'))"
        _wait(b, f"{cards}.length === 2 && {cards}.every(c => c.dataset.verdict)")
        verdicts = b.js(f"Object.fromEntries({cards}.map(c => [c.querySelector('.name').textContent, "
                        "c.dataset.verdict]))")
        assert verdicts == {"copy of work 2.png": "flagged", "something new.png": "clear"}
        flagged = f"{cards}.find(c => c.dataset.verdict === 'flagged')"
        assert "Too close to a protected work" in b.js(f"{flagged}.querySelector('.plain').textContent")
        # the evidence, as the report renders it, framed beside the verdict
        assert b.js(f"{flagged}.querySelector('iframe.evidence').hidden") is False
        _wait(b, f"{flagged}.querySelector('iframe.evidence').src.includes('/evidence')")
        # a reason is required: without one nothing is recorded
        b.js(f"{flagged}.querySelector('button[data-decision=approved]').click(); true")
        _wait(b, f"{flagged}.querySelector('.done').textContent.includes('reason')")
        assert not [d for d in ledger.read(index) if d.by == "Ana Lima"]
        b.js(f"{flagged}.querySelector('input[name=why]').value = 'parody, cleared by counsel on LEG-112';"
             f"{flagged}.querySelector('button[data-decision=approved]').click(); true")
        _wait(b, f"{flagged}.dataset.decision === 'approved'")
        _wait(b, "document.querySelectorAll('#history tbody tr').length === 2 && "
                 "document.querySelector('#history tbody').textContent.includes('approved by Ana Lima')")
        time.sleep(1.0)  # let the evidence frame paint for the screenshot
        png = b.screenshot()
    shot = os.environ.get("LIKENESS_SCREENSHOT")
    if shot:
        Path(shot).write_bytes(png)
    with Image.open(io.BytesIO(png)) as im:
        assert im.size[0] > 500 and len(im.convert("L").getcolors(1 << 16) or range(11)) > 10  # not a blank page
    decided = [d for d in ledger.read(index) if d.by == "Ana Lima"]
    assert len(decided) == 1
    d = decided[0]
    assert d.decision == "approved" and d.why == "parody, cleared by counsel on LEG-112"
    assert d.path == "copy of work 2.png" and [w["title"] for w in d.works] == ["Work 2"]


def test_a_dropped_video_shows_its_progress_then_its_verdict_and_evidence(
        served: tuple[str, str, Path], tmp_path: Path) -> None:
    from scanner import video

    base, token, _ = served
    clip = tmp_path / "trailer cut.mp4"
    video.write_clip(clip, [(synthetic_picture(7001 + k), 1.5) for k in range(4)] + [(synthetic_picture(3), 2.0)],
                     fps=5, size=(320, 240))
    assert CHROMIUM is not None
    with Browser(CHROMIUM) as b:
        _sign_in(b, base, token)
        # every text the card's status line shows, as it changes
        b.js("""window.seen = []; new MutationObserver(() => document.querySelectorAll('#checks .status')
                  .forEach(s => s.textContent && window.seen.push(s.textContent)))
                .observe(document.getElementById('checks'), {subtree: true, childList: true,
                                                              characterData: true}); true""")
        _drop(b, [(clip.name, clip.read_bytes(), "video/mp4")])
        card = "document.querySelector('#checks .card')"
        _wait(b, f"!!{card} && !!{card}.dataset.verdict")
        assert b.js(f"{card}.dataset.verdict") == "flagged", b.js(f"{card}.querySelector('.plain').textContent")
        seen = b.js("window.seen")
        assert any(s.startswith("decoding pictures") and s.endswith("of 8 s") for s in seen), seen
        assert "matching against the index…" in seen, seen
        _wait(b, f"{card}.querySelector('iframe.evidence').src.includes('/evidence')")
