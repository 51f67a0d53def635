"""``likeness serve``: the API in process (Starlette's TestClient), users, security, privacy, and one
real server on loopback (killed mid-check, a bounded load).

Every test builds on one small index of synthetic pictures (image-phash and image-local: weight-free,
built in about a second).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402

from scanner import ledger  # noqa: E402
from scanner.cli import app as cli_app  # noqa: E402
from scanner.demo import MILD_TRANSFORMS, flatten, synthetic_picture  # noqa: E402
from scanner.pipeline import FeatureOptions, build_index, check as pipeline_check  # noqa: E402
from scanner.results import Result  # noqa: E402
from scanner.serve import check_bind, is_loopback  # noqa: E402
from scanner.serve.app import SESSION_COOKIE, ServeConfig, create_app  # noqa: E402
from scanner.serve.auth import UserStore, hash_token  # noqa: E402
from scanner.serve.worker import open_in_roots, sanitise_name  # noqa: E402

runner = CliRunner()
FEATURES = ["image-phash", "image-local"]
N_REFS = 6
READY_WAIT = 60.0  # seconds, bounded: a loaded machine opens the index slowly, a broken one never


def _png(image: Image.Image, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def copy_bytes(i: int = 2) -> bytes:
    """A JPEG copy (quality 40) of reference ``i``: flagged against that work."""
    return _png(flatten(MILD_TRANSFORMS["jpeg-q40"](synthetic_picture(i))), "PNG")


def unrelated_bytes(seed: int = 900) -> bytes:
    return _png(synthetic_picture(seed))


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-refs")
    refs = root / "refs"
    refs.mkdir()
    with open(root / "meta.csv", "w") as fh:
        fh.write("path,title,rights_holder\n")
        for i in range(N_REFS):
            synthetic_picture(i).save(refs / f"ref{i}.png")
            fh.write(f"ref{i}.png,Work {i},Holder {i}\n")
    return refs


@pytest.fixture(scope="module")
def index(refs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    idx = tmp_path_factory.mktemp("serve-index") / "index"
    build_index([refs], idx, options=FeatureOptions(names=FEATURES), metadata=refs.parent / "meta.csv")
    return idx


class Server:
    """A started app (lifespan run) with a user of each role."""

    def __init__(self, client: TestClient, state: Path, tokens: dict[str, str]):
        self.client, self.state, self.tokens = client, state, tokens
        self.svc = client.app.state.svc

    def auth(self, role: str = "reviewer") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def check(self, data: bytes, name: str = "out.png", role: str = "viewer", **kw: Any) -> Any:
        return self.client.post("/v1/check", files={"file": (name, data, "application/octet-stream")},
                                headers=self.auth(role), **kw)


def _wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + READY_WAIT
    while time.monotonic() < deadline:
        h = client.get("/healthz").json()
        if h["ready"]:
            return
        assert h["status"] != "failed", h
        time.sleep(0.05)
    raise AssertionError("the scanner did not become ready")


@contextlib.contextmanager
def start(index: Path, state: Path, **config: Any) -> Iterator[Server]:
    tokens = {}
    store = UserStore(state)
    for role in ("viewer", "reviewer", "admin"):
        tokens[role] = store.add(f"{role}-person", role)[1]
    app = create_app(ServeConfig(index_dir=index, state_dir=state, **config))
    with TestClient(app) as client:
        _wait_ready(client)
        yield Server(client, state, tokens)


@pytest.fixture(scope="module")
def server(index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with start(index, tmp_path_factory.mktemp("serve-state"), max_upload_bytes=2 * 1024 * 1024) as srv:
        yield srv


def _open_upload_fds(tmp: Path) -> list[str]:
    """This process's descriptors open on files of the private folder (nameless ones included)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(tmp) + "/"):
            found.append(target)
    return found


# --- users ------------------------------------------------------------------------------------------


def test_users_add_prints_token_once_on_the_last_line_and_stores_only_its_hash(tmp_path: Path) -> None:
    state = tmp_path / "state"
    r = runner.invoke(cli_app, ["users", "add", "Ana Lima", "--role", "reviewer", "--state", str(state)])
    assert r.exit_code == 0, r.output
    token = r.output.strip().splitlines()[-1]
    assert token.startswith("lk_") and len(token) > 40 and " " not in token
    stored = (state / "users.json").read_text()
    assert token not in stored and hash_token(token) in stored
    assert (state / "users.json").stat().st_mode & 0o077 == 0
    assert state.stat().st_mode & 0o077 == 0
    assert UserStore(state).by_token(token).name == "Ana Lima"
    r = runner.invoke(cli_app, ["users", "list", "--state", str(state), "--json"])
    assert r.exit_code == 0 and json.loads(r.output) == [
        {"name": "Ana Lima", "role": "reviewer", "created": json.loads(r.output)[0]["created"]}]
    assert hash_token(token) not in r.output
    r = runner.invoke(cli_app, ["users", "add", "Ana Lima", "--role", "viewer", "--state", str(state)])
    assert r.exit_code == 2 and "exists already" in r.output
    r = runner.invoke(cli_app, ["users", "add", "Bo", "--role", "boss", "--state", str(state)])
    assert r.exit_code == 2 and "--role must be one of viewer, reviewer, admin" in r.output
    r = runner.invoke(cli_app, ["users", "remove", "Ana Lima", "--state", str(state)])
    assert r.exit_code == 0 and UserStore(state).by_token(token) is None
    r = runner.invoke(cli_app, ["users", "remove", "Nobody", "--state", str(state)])
    assert r.exit_code == 2 and "no user named" in r.output


# --- binding ------------------------------------------------------------------------------------------


def test_binding_off_loopback_needs_tls_or_an_explicit_insecure_flag(tmp_path: Path, index: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("studio.example")
    assert check_bind("127.0.0.1", tls_cert=None, tls_key=None, insecure_http=False) is None
    with pytest.raises(Exception, match="--tls-cert and --tls-key, or --insecure-http"):
        check_bind("0.0.0.0", tls_cert=None, tls_key=None, insecure_http=False)
    assert "unencrypted" in check_bind("0.0.0.0", tls_cert=None, tls_key=None, insecure_http=True)
    with pytest.raises(Exception, match="go together"):
        check_bind("0.0.0.0", tls_cert=tmp_path / "c.pem", tls_key=None, insecure_http=False)
    r = runner.invoke(cli_app, ["serve", "--index", str(index), "--host", "0.0.0.0", "--state", str(tmp_path)])
    assert r.exit_code == 2 and "--insecure-http" in r.output


# --- health, auth, roles, CSRF --------------------------------------------------------------------------


def test_healthz_answers_without_a_token_and_says_ready(server: Server) -> None:
    h = server.client.get("/healthz")
    assert h.status_code == 200
    body = h.json()
    assert body["ready"] is True and body["status"] == "ready" and body["ready_after_s"] is not None
    assert "index_id" not in body  # nothing about the index without a token


@pytest.mark.parametrize("method,url", [("GET", "/v1/index"), ("GET", "/v1/history"), ("GET", "/openapi.json"),
                                        ("POST", "/v1/check"), ("POST", "/v1/jobs"), ("POST", "/v1/decisions"),
                                        ("GET", "/v1/users"), ("GET", "/static/app.js")])
def test_every_api_call_needs_a_token(server: Server, method: str, url: str) -> None:
    r = server.client.request(method, url)
    assert r.status_code == 401
    assert r.json()["status"] == 401 and "Bearer" in r.headers["www-authenticate"]
    r = server.client.request(method, url, headers={"Authorization": "Bearer lk_not-a-token"})
    assert r.status_code == 401 and r.json()["error"] == "unknown token"
    r = server.client.request(method, url, headers={"Authorization": "Basic YTpi"})
    assert r.status_code == 401


def test_the_page_redirects_to_sign_in_and_every_html_response_has_a_csp(server: Server) -> None:
    r = server.client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/signin"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    r = server.client.get("/signin")
    assert r.status_code == 200 and "script-src 'self'" in r.headers["content-security-policy"]
    r = server.client.get("/", headers=server.auth("viewer"))  # Bearer works on the page too
    assert r.status_code == 200 and "Drop images" in r.text
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert server.client.get("/static/app.css").status_code == 200  # the sign-in page's stylesheet


def _sign_in(server: Server, role: str) -> tuple[TestClient, str]:
    """A browser-like client signed in through the form; returns it and the page's CSRF token."""
    c = TestClient(server.client.app)
    form = c.get("/signin")
    pre = form.text.split('name="csrf" value="')[1].split('"')[0]
    r = c.post("/signin", data={"token": server.tokens[role], "csrf": pre}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "content-security-policy" in r.headers
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    page = c.get("/")
    assert page.status_code == 200
    return c, page.text.split('name="csrf" content="')[1].split('"')[0]


def test_sign_in_sets_a_strict_http_only_session_and_state_changes_need_its_csrf_token(server: Server) -> None:
    c, csrf = _sign_in(server, "viewer")
    assert len(csrf) > 30
    files = {"file": ("x.png", unrelated_bytes(901), "image/png")}
    r = c.post("/v1/check", files=files)
    assert r.status_code == 403 and "CSRF" in r.json()["error"]
    r = c.post("/v1/check", files=files, headers={"X-CSRF-Token": "wrong" * 8})
    assert r.status_code == 403
    r = c.post("/v1/check", files=files, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["verdict"] == "clear"
    assert c.get("/v1/history").status_code == 200  # reading needs no CSRF token
    # the sign-in form itself carries one: without it, no session
    c2 = TestClient(server.client.app)
    r = c2.post("/signin", data={"token": server.tokens["viewer"]}, follow_redirects=False)
    assert r.status_code == 403 and SESSION_COOKIE not in r.headers.get("set-cookie", "")
    # signing out ends the session
    r = c.post("/signout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    c.cookies.clear()
    assert c.get("/v1/history").status_code == 401


def test_removing_a_user_ends_their_live_sessions(index: Path, tmp_path: Path) -> None:
    with start(index, tmp_path / "state") as srv:
        c, _ = _sign_in(srv, "viewer")
        assert c.get("/v1/history").status_code == 200
        UserStore(srv.state).remove("viewer-person")  # as `likeness users remove` does, from another process
        r = c.get("/v1/history")
        assert r.status_code == 401 and "removed" in r.json()["error"]
        assert srv.client.get("/v1/history", headers=srv.auth("viewer")).status_code == 401


def test_roles_viewer_checks_reviewer_decides_admin_manages_users(server: Server) -> None:
    r = server.client.post("/v1/decisions", json={"sha256": "a" * 64, "decision": "approved", "why": "x"},
                           headers=server.auth("viewer"))
    assert r.status_code == 403 and "viewer" in r.json()["error"]
    assert server.client.get("/v1/users", headers=server.auth("reviewer")).status_code == 403
    r = server.client.post("/v1/users", json={"name": "Cy", "role": "viewer"}, headers=server.auth("admin"))
    assert r.status_code == 201
    token = r.json()["token"]
    assert server.client.get("/v1/me", headers={"Authorization": f"Bearer {token}"}).json()["name"] == "Cy"
    names = [u["name"] for u in server.client.get("/v1/users", headers=server.auth("admin")).json()["users"]]
    assert "Cy" in names and "token" not in json.dumps(names)
    r = server.client.delete("/v1/users/Cy", headers=server.auth("admin"))
    assert r.status_code == 200
    assert server.client.get("/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


# --- checks -------------------------------------------------------------------------------------------------


def test_a_copy_is_flagged_an_unrelated_picture_clear_and_the_line_is_the_cli_s(server: Server, index: Path,
                                                                                 tmp_path: Path) -> None:
    data = copy_bytes(2)
    r = server.check(data, "poster final.png")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    line = r.json()
    assert line["verdict"] == "flagged" and line["path"] == "poster final.png"
    assert line["matches"][0]["title"] == "Work 2"
    assert list(line) == list(Result(**{k: line[k] for k in ("path", "sha256", "modality", "verdict", "reason")})
                              .to_dict())  # the keys, in the order results.jsonl writes them
    # the same file through the library (what `likeness check` runs): the same line but its path
    f = tmp_path / "poster final.png"
    f.write_bytes(data)
    cli, _ = pipeline_check(f, index)
    assert {**cli.to_dict(), "path": "poster final.png"} == line
    r = server.check(unrelated_bytes(), "new.png")
    assert r.status_code == 200 and r.json()["verdict"] == "clear" and r.json()["matches"] == []


def test_pictures_are_checked_in_forked_workers_and_one_that_crashes_its_worker_costs_one_error_line(
        index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scanner.pipeline

    real = scanner.pipeline.prepare_one

    def crashing(item, featurizers, reference=False, progress=None):  # as a segfaulting C decoder would
        with Image.open(item.path) as im:
            if im.size == (17, 17):
                os._exit(139)
        return real(item, featurizers, reference, progress)

    monkeypatch.setattr(scanner.pipeline, "prepare_one", crashing)  # before the workers fork: they inherit it
    with start(index, tmp_path / "state") as srv:
        loaded = srv.svc.holder._current
        assert loaded.procs is not None and loaded.n_procs >= 1
        assert srv.check(copy_bytes(2)).json()["verdict"] == "flagged"
        # a picture checked beside the one that crashes may lose its worker too: it is tried again
        crash_png, ok_png = _png(Image.new("RGB", (17, 17), "red")), copy_bytes(4)
        with ThreadPoolExecutor(2) as ex:
            crashed, beside = ex.map(lambda a: srv.check(a[0], a[1]), [(crash_png, "crash.png"), (ok_png, "ok.png")])
        assert beside.status_code == 200 and beside.json()["verdict"] == "flagged", beside.json()
        r = crashed
        assert r.status_code == 200
        line = r.json()
        assert line["verdict"] == "error" and "crashed" in line["error"] and line["path"] == "crash.png"
        assert line["sha256"] and len(line["sha256"]) == 64
        # the next pictures are checked as before, by workers forked anew
        assert srv.check(copy_bytes(3)).json()["verdict"] == "flagged"
        assert srv.check(unrelated_bytes(977)).json()["verdict"] == "clear"
    with start(index, tmp_path / "state-threads", processes=0) as srv:
        assert srv.svc.holder._current.procs is None  # threads only, when asked
        assert srv.check(copy_bytes(2)).json()["verdict"] == "flagged"
        assert srv.check(unrelated_bytes(977)).json()["verdict"] == "clear"


def test_the_logs_carry_no_token_no_file_name_and_no_content(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    data = copy_bytes(1)
    assert server.check(data, "secret-campaign-frame.png").json()["verdict"] == "flagged"
    c, csrf = _sign_in(server, "admin")
    r = c.post("/v1/users", json={"name": "new-person", "role": "viewer"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201
    new_token = r.json()["token"]
    assert server.client.get("/v1/me", headers={"Authorization": "Bearer lk_wrong-token-xyz"}).status_code == 401
    text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "check by viewer-person: flagged" in text  # the log is there, and says who and what
    for secret in (*server.tokens.values(), new_token, "lk_wrong-token-xyz", "secret-campaign-frame"):
        assert secret not in text, secret
    assert repr(data[:32])[2:-1] not in text and "PNG" not in text
    server.svc.users.remove("new-person")


def test_bad_input_gets_clear_errors_with_the_issue_s_status_codes(server: Server) -> None:
    c, h = server.client, server.auth("viewer")
    r = c.post("/v1/check", content=b"hello", headers={**h, "Content-Type": "text/plain"})
    assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]
    r = c.post("/v1/check", files={"other": ("x.png", b"abc", "image/png")}, headers=h)
    assert r.status_code == 400 and "field 'file'" in r.json()["error"]
    r = c.post("/v1/check", content=b"--xyz\r\ngarbage", headers={**h, "Content-Type": "multipart/form-data; "
                                                                                    "boundary=xyz"})
    assert r.status_code == 400
    assert server.check(b"", "empty.png").status_code == 400
    r = server.check(b"just some notes\n", "notes.txt")
    assert r.status_code == 415 and "not an image, audio or video" in r.json()["error"]
    r = server.check(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "broken.png")  # media that does not decode
    assert r.status_code == 200 and r.json()["verdict"] == "error" and r.json()["error"]
    big = b"\x89PNG\r\n\x1a\n" + os.urandom(3 * 1024 * 1024)
    r = server.check(big, "huge.png")
    assert r.status_code == 413 and "too large" in r.json()["error"]
    r = c.post("/v1/check", json={"path": "/etc/passwd"}, headers=h)  # no --allow-root: off
    assert r.status_code == 403 and "--allow-root" in r.json()["error"]
    r = c.post("/v1/check", content=b"{not json", headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    assert c.get("/v1/nothing", headers=h).status_code == 404
    # none of these left anything in the private folder
    assert os.listdir(server.state / "tmp") == [] and _open_upload_fds(server.state / "tmp") == []


@pytest.mark.parametrize("given,shown", [("../../etc/passwd.png", "passwd.png"), ("C:\\work\\x.png", "x.png"),
                                         ("a\x00b\x1b[31m.png", "ab[31m.png"), ("..", "upload"),
                                         ("<img src=x onerror=alert(1)>.png", "<img src=x onerror=alert(1)>.png")])
def test_hostile_file_names_are_sanitised(given: str, shown: str) -> None:
    assert sanitise_name(given) == shown
    long = sanitise_name("é" * 300 + ".png")
    assert long.endswith(".png") and len(long.encode()) <= 255


def test_a_hostile_name_stays_text_in_the_result_and_the_evidence_page(server: Server) -> None:
    hostile = "<img src=x onerror=alert(1)>.png"
    r = server.check(copy_bytes(3), hostile)
    assert r.status_code == 200 and r.json()["path"] == hostile
    ev = server.client.get(f"/v1/checks/{r.headers['x-likeness-check']}/evidence", headers=server.auth())
    assert ev.status_code == 200 and "<img src=x onerror" not in ev.text and "&lt;img src=x onerror" in ev.text
    assert "default-src 'none'" in ev.headers["content-security-policy"]
    assert "frame-ancestors 'self'" in ev.headers["content-security-policy"]


def test_a_decision_on_the_page_goes_to_the_ledger_with_the_user_and_later_checks_honour_it(
        server: Server, index: Path) -> None:
    data = copy_bytes(4)
    r = server.check(data, "hero.png")
    assert r.json()["verdict"] == "flagged"
    check_id = r.headers["x-likeness-check"]
    r = server.client.post("/v1/decisions", json={"check": check_id, "decision": "approved", "why": ""},
                           headers=server.auth("reviewer"))
    assert r.status_code == 400 and "reason" in r.json()["error"]
    r = server.client.post("/v1/decisions", json={"check": check_id, "decision": "maybe", "why": "x"},
                           headers=server.auth("reviewer"))
    assert r.status_code == 400
    r = server.client.post("/v1/decisions", json={"check": check_id, "decision": "approved",
                                                  "why": "parody, cleared on LEG-7"}, headers=server.auth("reviewer"))
    assert r.status_code == 200, r.text
    recorded = [d for d in ledger.read(index) if d.why == "parody, cleared on LEG-7"]
    assert len(recorded) == 1
    d = recorded[0]
    assert d.by == "reviewer-person" and d.decision == "approved" and d.path == "hero.png"
    assert [w["title"] for w in d.works] == ["Work 4"]
    again = server.check(data, "hero-again.png").json()
    assert again["verdict"] == "clear" and again["decision"]["by"] == "reviewer-person"
    hist = server.client.get("/v1/history", headers=server.auth()).json()["checks"]
    assert next(e for e in hist if e["id"] == check_id)["decision"]["decision"] == "approved"


def test_the_history_and_its_decisions_survive_a_restart_and_hold_nothing_of_the_outputs(
        index: Path, tmp_path: Path) -> None:
    import stat

    own = tmp_path / "index"
    shutil.copytree(index, own)
    state = tmp_path / "state"
    data = copy_bytes(5)
    with start(own, state, thumbnails=True) as srv:
        r = srv.check(data, "poster.png")
        check_id = r.headers["x-likeness-check"]
        assert r.json()["verdict"] == "flagged"
        other = srv.check(unrelated_bytes(951), "field.png").headers["x-likeness-check"]
        assert srv.client.post("/v1/decisions", json={"check": check_id, "decision": "licensed", "why": "LIC-12"},
                               headers=srv.auth("reviewer")).status_code == 200
        tokens = srv.tokens
    written = state / "history.jsonl"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    text = written.read_bytes()
    # the result lines and who decided what; never the picture, nor its thumbnail
    assert b"poster.png" in text and b"LIC-12" in text
    assert data[:64] not in text and b"PNG" not in text and b"base64" not in text and b"thumb" not in text
    with open(written, "ab") as fh:
        fh.write(b'{"id": "torn by a cra')  # a crash mid-line is skipped
    with TestClient(create_app(ServeConfig(index_dir=own, state_dir=state))) as client:
        _wait_ready(client)
        hist = client.get("/v1/history", headers={"Authorization": f"Bearer {tokens['viewer']}"}).json()["checks"]
        assert [e["id"] for e in hist] == [other, check_id]
        assert hist[1]["name"] == "poster.png" and hist[1]["verdict"] == "flagged"
        assert hist[1]["decision"]["decision"] == "licensed" and hist[1]["decision"]["by"] == "reviewer-person"
        # its evidence still renders (from the index's own thumbnails; the output's was memory only)
        assert client.get(f"/v1/checks/{check_id}/evidence",
                          headers={"Authorization": f"Bearer {tokens['viewer']}"}).status_code == 200


def test_check_by_path_only_inside_the_allowed_roots(index: Path, tmp_path: Path) -> None:
    root, outside = tmp_path / "outputs", tmp_path / "private"
    root.mkdir()
    outside.mkdir()
    (root / "a.png").write_bytes(copy_bytes(1))
    (outside / "secret.png").write_bytes(copy_bytes(1))
    (root / "escape.png").symlink_to(outside / "secret.png")
    (root / "sub").mkdir()
    with start(index, tmp_path / "state", allow_roots=[root]) as srv:
        c, h = srv.client, srv.auth("viewer")
        r = c.post("/v1/check", json={"path": str(root / "a.png")}, headers=h)
        assert r.status_code == 200 and r.json()["verdict"] == "flagged" and r.json()["path"] == str(root / "a.png")
        for bad in (str(root / ".." / "private" / "secret.png"), str(root / "escape.png"), "/etc/passwd",
                    str(root / "missing.png")):
            r = c.post("/v1/check", json={"path": bad}, headers=h)
            assert r.status_code == 403 and "not a file inside the allowed roots" in r.json()["error"], bad
        r = c.post("/v1/check", json={"path": str(root / "sub")}, headers=h)
        assert r.status_code == 400 and "not a regular file" in r.json()["error"]
        r = c.post("/v1/check", json={"path": 7}, headers=h)
        assert r.status_code == 400
        assert (outside / "secret.png").exists() and (root / "a.png").exists()  # read, never moved or removed
    with pytest.raises(Exception, match="--allow-root"):
        open_in_roots(str(root / "a.png"), [])


def test_rate_limit_answers_429_with_retry_after(index: Path, tmp_path: Path) -> None:
    with start(index, tmp_path / "state", rate_per_minute=6, rate_burst=2) as srv:
        codes = [srv.check(unrelated_bytes(950 + i), f"{i}.png").status_code for i in range(3)]
        assert codes[:2] == [200, 200] and codes[2] == 429
        r = srv.check(unrelated_bytes(960), "x.png")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "retry in" in r.json()["error"]
        assert srv.check(unrelated_bytes(961), "x.png", role="admin").status_code == 200  # per token


def test_a_full_pool_refuses_at_once_with_503(index: Path, tmp_path: Path) -> None:
    with start(index, tmp_path / "state", workers=1, queue=0) as srv:
        srv.svc.pool.admit()  # the one place is taken
        try:
            r = srv.check(unrelated_bytes(970), "x.png")
            assert r.status_code == 503 and "busy" in r.json()["error"] and r.headers["retry-after"]
        finally:
            srv.svc.pool.release()
        assert srv.check(unrelated_bytes(970), "x.png").status_code == 200


# --- privacy ---------------------------------------------------------------------------------------------------


def test_uploads_leave_nothing_behind_and_the_private_folder_is_swept_at_start(index: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "tmp").mkdir(parents=True)
    (state / "tmp" / "left-by-a-killed-server").write_bytes(b"old output bytes")
    (state / "tmp" / "dangling.png").symlink_to("/proc/999999/fd/5")
    with start(index, state) as srv:
        tmp = state / "tmp"
        assert os.listdir(tmp) == []  # swept at start
        assert tmp.stat().st_mode & 0o777 == 0o700
        for i in range(3):
            assert srv.check(copy_bytes(i), f"o{i}.png").status_code == 200
        assert os.listdir(tmp) == [] and _open_upload_fds(tmp) == []
        # nothing of an output was written in the state folder but its result lines, in the history
        assert sorted(p.name for p in state.iterdir()) == [".users.lock", "history.jsonl", "tmp", "users.json"]
        lines = [json.loads(x) for x in (state / "history.jsonl").read_text().splitlines()]
        assert [r["line"]["path"] for r in lines] == ["o0.png", "o1.png", "o2.png"]
        assert all(set(r) == {"id", "time", "user", "seconds", "line", "decision"} for r in lines)


def test_a_client_that_disconnects_mid_upload_leaves_nothing(server: Server) -> None:
    import anyio

    app, tmp = server.client.app, server.state / "tmp"
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"half.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + b"\x89PNG\r\n\x1a\n" + b"x" * 70_000
    seen: dict[str, Any] = {}
    sent: list[dict] = []

    async def run() -> None:
        messages = [{"type": "http.request", "body": head, "more_body": True}]

        async def receive() -> dict:
            if messages:
                return messages.pop(0)
            seen["fds"] = _open_upload_fds(tmp)  # the half upload is open, nameless, while the client is gone
            seen["names"] = os.listdir(tmp)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/check", "raw_path": b"/v1/check", "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 5), "server": ("127.0.0.1", 80),
                 "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {server.tokens['viewer']}".encode()),
                             (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
                             (b"content-length", b"900000")], "state": {}}
        await app(scope, receive, send)

    anyio.run(run)
    assert len(seen["fds"]) == 1 and seen["fds"][0].endswith("(deleted)")  # it never had a name
    assert seen["names"] == []
    assert os.listdir(tmp) == [] and _open_upload_fds(tmp) == []
    assert server.svc.pool.in_flight == 0  # its place in the pool was given back


# --- jobs, index reload, OpenAPI ------------------------------------------------------------------------------------


def test_a_batch_job_streams_one_event_per_file_then_done(server: Server) -> None:
    files = [("file", ("c.png", copy_bytes(5), "image/png")), ("file", ("n.png", unrelated_bytes(980), "image/png")),
             ("file", ("notes.txt", b"not media", "text/plain"))]
    r = server.client.post("/v1/jobs", files=files, headers=server.auth("viewer"))
    assert r.status_code == 202
    job = r.json()
    events = []
    with server.client.stream("GET", job["events"], headers=server.auth("viewer")) as stream:
        event = None
        for raw in stream.iter_lines():
            if raw.startswith("event: "):
                event = raw[7:]
            elif raw.startswith("data: "):
                events.append((event, json.loads(raw[6:])))
                if event == "done":
                    break
    assert [e for e, _ in events] == ["result", "result", "result", "done"]
    verdicts = {d["path"]: d["verdict"] for e, d in events if e == "result"}
    assert verdicts == {"c.png": "flagged", "n.png": "clear", "notes.txt": "error"}
    status = server.client.get(job["status"], headers=server.auth("viewer")).json()
    assert status["state"] == "done" and status["done"] == 3 and status["counts"]["flagged"] == 1
    # another viewer does not see it
    assert server.client.get(job["status"], headers=server.auth("reviewer")).status_code == 404
    assert os.listdir(server.state / "tmp") == [] and _open_upload_fds(server.state / "tmp") == []


def test_a_video_job_streams_its_progress_then_a_result_that_names_its_check(server: Server,
                                                                            tmp_path: Path) -> None:
    from scanner import video

    clip = tmp_path / "cut.mp4"
    video.write_clip(clip, [(synthetic_picture(901), 2.0), (synthetic_picture(3), 2.0), (synthetic_picture(902), 2.0)],
                     fps=5)
    r = server.client.post("/v1/jobs", files=[("file", ("cut.mp4", clip.read_bytes(), "video/mp4"))],
                           headers=server.auth("viewer"))
    assert r.status_code == 202
    events = []
    with server.client.stream("GET", r.json()["events"], headers=server.auth("viewer")) as stream:
        event, ident = None, None
        for raw in stream.iter_lines():
            if raw.startswith("event: "):
                event = raw[7:]
            elif raw.startswith("id: "):
                ident = raw[4:]
            elif raw.startswith("data: "):
                events.append((event, ident, json.loads(raw[6:])))
                event = ident = None
                if events[-1][0] == "done":
                    break
    kinds = [e for e, _, _ in events]
    assert kinds[-2:] == ["result", "done"] and kinds.count("result") == 1
    progress = [d for e, _, d in events if e == "progress"]
    pictures = [p for p in progress if p["stage"] == "picture"]
    assert pictures and all(p["file"] == "cut.mp4" for p in progress), progress
    assert [p["seconds"] for p in pictures] == sorted(p["seconds"] for p in pictures)
    assert abs(pictures[0]["duration"] - 6.0) < 0.5 and progress[-1]["stage"] == "judging"
    _, check_id, line = events[-2]
    assert line["path"] == "cut.mp4" and line["verdict"] == "flagged", line
    assert check_id in {e["id"] for e in server.client.get("/v1/history", headers=server.auth("viewer")).json()["checks"]}
    assert server.client.get(f"/v1/checks/{check_id}/evidence", headers=server.auth("viewer")).status_code == 200


def test_index_add_is_picked_up_without_dropping_checks(refs: Path, tmp_path: Path) -> None:
    idx = tmp_path / "index"
    build_index([refs], idx, options=FeatureOptions(names=FEATURES))
    extra = tmp_path / "extra"
    extra.mkdir()
    synthetic_picture(500).save(extra / "new-work.png")
    with start(idx, tmp_path / "state") as srv:
        first = srv.client.get("/v1/index", headers=srv.auth()).json()
        assert first["n_works"] == N_REFS
        copy = copy_bytes(500)
        assert srv.check(copy, "c.png").json()["verdict"] == "clear"
        results: list[int] = []
        stop = threading.Event()

        def keep_checking() -> None:
            while not stop.is_set():
                results.append(srv.check(unrelated_bytes(990), "x.png").status_code)

        t = threading.Thread(target=keep_checking)
        t.start()
        try:
            build_index([extra], idx, options=FeatureOptions(names=FEATURES), create=False)  # `likeness index add`
            line = srv.check(copy, "c.png").json()  # this check sees the swap and reloads
        finally:
            stop.set()
            t.join(30)
        assert line["verdict"] == "flagged" and line["matches"][0]["ref_path"].endswith("new-work.png")
        now = srv.client.get("/v1/index", headers=srv.auth()).json()
        assert now["n_works"] == N_REFS + 1 and now["reloads"] == 1
        assert results and set(results) == {200}


def test_openapi_document_lists_the_api(server: Server) -> None:
    doc = server.client.get("/openapi.json", headers=server.auth("viewer")).json()
    assert doc["openapi"].startswith("3.")
    for path in ("/v1/check", "/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/events", "/v1/index", "/healthz"):
        assert path in doc["paths"]
    assert {"413", "415", "429"} <= set(doc["paths"]["/v1/check"]["post"]["responses"])


# --- a real server on loopback ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(index: Path, state: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scanner.cli", "serve", "--index", str(index), "--state",
                             str(state), "--port", str(port), "--rate", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _healthz(port: int, deadline: float) -> tuple[float, dict]:
    import httpx

    while time.monotonic() < deadline:
        try:
            return time.monotonic(), httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError("the server never answered /healthz")


def test_real_server_on_loopback_killed_mid_check_keeps_nothing_and_serves_a_bounded_load(
        index: Path, tmp_path: Path) -> None:
    import httpx

    state = tmp_path / "state"
    token = UserStore(state).add("pipeline", "viewer")[1]
    (state / "tmp").mkdir()
    (state / "tmp" / "stale.png").symlink_to("/proc/1/fd/0")
    port = _free_port()
    t0 = time.monotonic()
    proc = _spawn(index, state, port)
    try:
        answered, h = _healthz(port, t0 + 30)
        # the issue's target is 3 s; a loaded test machine gets slack, the figure is in the README
        assert answered - t0 < 15, answered - t0
        assert not os.path.lexists(state / "tmp" / "stale.png")  # swept at start
        deadline = time.monotonic() + 60
        while not h["ready"] and time.monotonic() < deadline:
            time.sleep(0.1)
            h = _healthz(port, deadline)[1]
        assert h["ready"], h
        url, auth = f"http://127.0.0.1:{port}/v1/check", {"Authorization": f"Bearer {token}"}
        # a bounded load: 4 clients x 6 checks, every one answered
        codes: list[int] = []

        def client(k: int) -> None:
            with httpx.Client(timeout=60) as c:
                for j in range(6):
                    data = copy_bytes(j % N_REFS) if j % 2 else unrelated_bytes(1000 + 10 * k + j)
                    codes.append(c.post(url, files={"file": (f"{k}-{j}.png", data)}, headers=auth).status_code)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert codes == [200] * 24
        # now a large picture, and the server killed while it checks it
        big = _png(synthetic_picture(77, size=(3200, 2400)))
        got: dict[str, Any] = {}

        def upload() -> None:
            try:
                got["r"] = httpx.post(url, files={"file": ("big.png", big)}, headers=auth, timeout=30)
            except httpx.HTTPError as exc:
                got["error"] = exc

        t = threading.Thread(target=upload)
        t.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "r" not in got and "error" not in got:
            # the check has begun once its decoders' link to the upload exists (the upload is whole
            # by then); the server holds the content only as a descriptor on a nameless file
            links = [p for p in (state / "tmp").iterdir() if p.is_symlink()]
            if links:
                got["links"] = [os.readlink(p) for p in links]
                got["held"] = [os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{proc.pid}/fd")
                               if os.readlink(f"/proc/{proc.pid}/fd/{fd}").startswith(str(state / "tmp"))]
                break
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)  # the server and its picture workers
        proc.wait(10)
        t.join(30)
        # caught mid-check on an idle machine; on a loaded one the check may have ended first
        if "links" in got:
            assert got["held"] and all(h.endswith("(deleted)") for h in got["held"]), got["held"]
            assert all(link.startswith(f"/proc/{proc.pid}/fd/") for link in got["links"]), got["links"]
        print("mid-check at kill:", got.get("links"), got.get("held"), "answer:", got.get("r") or got.get("error"))
        # no content anywhere: at most a dangling link (swept at the next start), never a file
        left = list((state / "tmp").iterdir())
        assert all(p.is_symlink() and not p.exists() for p in left), left
        proc = _spawn(index, state, port)
        _healthz(port, time.monotonic() + 30)
        assert list((state / "tmp").iterdir()) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl to make a test certificate")
def test_over_tls_the_api_answers_plain_http_does_not_and_the_session_cookie_is_secure(
        index: Path, tmp_path: Path) -> None:
    import re
    import ssl

    import httpx

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    state = tmp_path / "state"
    token = UserStore(state).add("pipeline", "viewer")[1]
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "scanner.cli", "serve", "--index", str(index), "--state",
                             str(state), "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key),
                             "--processes", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    base = f"https://127.0.0.1:{port}"
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        deadline, ready = time.monotonic() + 60, False
        while time.monotonic() < deadline and not ready:
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(base + "/healthz", verify=trust, timeout=2).json()["ready"]
            time.sleep(0.1)
        assert ready, "the server never answered over TLS"
        with httpx.Client(base_url=base, verify=trust, timeout=30) as c:
            r = c.post("/v1/check", files={"file": ("c.png", copy_bytes(1))},
                       headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and r.json()["verdict"] == "flagged"
            form = c.get("/signin")
            pre = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
            assert "secure" in form.headers["set-cookie"].lower()
            r = c.post("/signin", data={"token": token, "csrf": pre}, follow_redirects=False)
            assert r.status_code == 303
            session = [v for k, v in r.headers.multi_items() if k == "set-cookie" and SESSION_COOKIE in v][0]
            assert "secure" in session.lower() and "httponly" in session.lower()
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets no answer
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).raise_for_status()
        with pytest.raises(httpx.ConnectError):  # nor does a client that does not trust the certificate
            httpx.get(base + "/healthz", timeout=5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_a_check_that_sees_a_swapped_index_waits_for_the_reload_under_way(refs: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    """Two checks see the same swap: the one that finds another reloading waits and is judged with
    the new index, not the old one."""
    from scanner.serve.worker import ScannerHolder, _index_stamp

    idx = tmp_path / "index"
    build_index([refs], idx, options=FeatureOptions(names=FEATURES))
    holder = ScannerHolder(idx, options=FeatureOptions(names=FEATURES), warm=False, processes=0)
    holder.start().join(60)
    assert holder.state == "ready"
    extra = tmp_path / "extra"
    extra.mkdir()
    synthetic_picture(500).save(extra / "new-work.png")
    build_index([extra], idx, options=FeatureOptions(names=FEATURES), create=False)
    opening = threading.Event()
    slow_open = holder._open

    def slowly() -> Any:
        opening.set()
        time.sleep(0.5)
        return slow_open()

    monkeypatch.setattr(holder, "_open", slowly)
    first = threading.Thread(target=holder.reload_if_changed)
    try:
        first.start()
        assert opening.wait(10)
        holder.reload_if_changed()          # the second caller, while the first opens the new index
        assert holder._current.stamp == _index_stamp(idx) and holder.reloads == 1
        first.join(10)
        assert holder._current.scanner.index.n_works == N_REFS + 1
    finally:
        first.join(10)
        holder.close()
