"""The web app of ``likeness serve``: the creative lead's page and the pipeline's API (Starlette).

Every route but ``/healthz``, the sign-in page and its stylesheet needs a
user: ``Authorization: Bearer TOKEN`` anywhere, or the session cookie the
sign-in page sets (HttpOnly, SameSite=Strict; every state-changing request
made with it carries the session's CSRF token in ``X-CSRF-Token`` or a
``csrf`` form field). Every response carries a Content-Security-Policy (a
strict one for the page; the evidence pages, rendered by the report's own
template, get the report's: inline only, no fetch).

Errors are JSON ``{"error": "...", "status": N}``: 400 bad input, 401 no or
unknown token, 403 a role too low, a CSRF token missing or a path outside the
roots, 404, 413 too large, 415 not media, 429 over the rate limit (with
``Retry-After``), 503 starting or busy (with ``Retry-After``). A file that is
media but does not decode is not an HTTP error: its result line says
``error``, as in ``results.jsonl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import hmac
import json
import logging
import secrets
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from scanner import __version__, ledger
from scanner.errors import LikenessError
from scanner.serve.auth import RateLimiter, Sessions, User, UserStore, check_name, check_role
from scanner.serve.history import Entry, History
from scanner.serve.worker import (Busy, CheckPool, Checked, Forbidden, NotMedia, PrivateTmp, ScannerHolder,
                                  Upload, open_in_roots, sanitise_name)

LOG = logging.getLogger("likeness.serve")

SESSION_COOKIE = "likeness_session"
PRE_COOKIE = "likeness_signin"
#: The page's policy: its own script and stylesheet, fetches to itself, evidence frames from itself.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
#: An evidence page (the report's template: inline CSS and JS, pictures as data: URIs), framed by the page only.
EVIDENCE_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                "base-uri 'none'; form-action 'none'; frame-ancestors 'self'")
#: JSON and everything else: nothing may load or frame it.
API_CSP = "default-src 'none'; frame-ancestors 'none'"
#: Largest JSON body accepted (``{"path": ...}``, decisions, users).
MAX_JSON = 64 * 1024
#: Batch jobs kept (the oldest finished one goes first).
MAX_JOBS = 200
#: Seconds between a job's progress events for one stage of one file (each new stage is told at once).
PROGRESS_EVERY = 0.5


@dataclass
class ServeConfig:
    """What ``likeness serve`` was started with.

    Parameters
    ----------
    index_dir : the index checked against (its ledger beside it takes the page's decisions)
    state_dir : users, and ``tmp/`` for uploads (0700)
    max_upload_bytes : largest file accepted (413 beyond)
    workers, queue : checks running at once, and waiting beyond those (503 beyond)
    processes : processes forked from the opened scanner that check pictures (default: the
        CPUs, where every feature may be forked and no GPU is in use; 0: threads only)
    rate_per_minute, rate_burst : requests per token (429 beyond); 0 turns limiting off
    allow_roots : folders whose files ``{"path": ...}`` may name (none: checking by path is off)
    thumbnails : keep flagged/review/licensed outputs' thumbnails in memory for the page's
        evidence (off: no picture of any output is shown or kept)
    secure_cookies : mark the session cookie ``Secure`` (served over TLS)
    max_job_files : files in one batch job
    """

    index_dir: Path
    state_dir: Path
    max_upload_bytes: int = 512 * 1024 * 1024
    workers: int | None = None
    queue: int | None = None
    processes: int | None = None
    rate_per_minute: float = 600.0
    rate_burst: int | None = None
    allow_roots: list[Path] = field(default_factory=list)
    thumbnails: bool = False
    secure_cookies: bool = False
    session_hours: float = 12.0
    max_job_files: int = 100
    hmac_key: bytes | None = None
    options: Any = None
    warm: bool = True


class ApiError(Exception):
    """An answer other than success, with its status and a message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Job:
    """A batch of files checked one after another; results stream to whoever listens."""

    id: str
    user: str
    total: int
    created: str
    results: list[dict[str, Any]] = field(default_factory=list)
    #: how far the file being checked has got (``file``, ``stage``, ``seconds``, ``duration``)
    progress: dict[str, Any] | None = None
    #: what the event stream sends, in order, from the start to every listener: ``(event, id, data)``
    #: (progress at most every :data:`PROGRESS_EVERY` seconds, and at each new stage)
    events: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)
    state: str = "queued"
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _told: float = 0.0

    def signal(self) -> None:
        """Wake whoever listens for this job's events."""
        self.changed.set()
        self.changed = asyncio.Event()

    def result(self, line: dict[str, Any], check_id: str | None) -> None:
        """A file decided: its line, and its check in the history (None for a file not checked)."""
        self.results.append(line)
        self.progress = None
        self.events.append(("result", check_id, line))
        self.signal()

    def progressed(self, progress: dict[str, Any]) -> None:
        if self.state != "running" or len(self.results) >= self.total:
            return
        new_stage = self.progress is None or self.progress.get("stage") != progress.get("stage")
        self.progress = progress
        now = time.monotonic()
        if new_stage or now - self._told >= PROGRESS_EVERY:
            self._told = now
            self.events.append(("progress", None, progress))
            self.signal()

    def public(self, with_results: bool = True) -> dict[str, Any]:
        out = {"id": self.id, "state": self.state, "total": self.total, "done": len(self.results),
               "created": self.created, "counts": dict(Counter(r.get("verdict") for r in self.results)),
               "progress": self.progress}
        if with_results:
            out["results"] = self.results
        return out


class Service:
    """Everything the routes share: users, sessions, the warm scanner, the pool, history and jobs."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.users = UserStore(config.state_dir)
        self.sessions = Sessions(config.session_hours * 3600)
        self.limiter = RateLimiter(config.rate_per_minute, config.rate_burst)
        self.tmp = PrivateTmp(Path(config.state_dir) / "tmp")
        self.holder = ScannerHolder(config.index_dir, options=config.options, hmac_key=config.hmac_key,
                                    warm=config.warm, processes=config.processes)
        self.pool = CheckPool(self.holder, workers=config.workers, queue=config.queue,
                              thumbnails=config.thumbnails)
        self.roots = [Path(r).resolve() for r in config.allow_roots]
        self.history = History(config.state_dir)
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.started = time.monotonic()
        self.first_check_s: float | None = None
        self.tasks: set[asyncio.Task] = set()
        import jinja2

        self.templates = jinja2.Environment(loader=jinja2.PackageLoader("scanner.serve", "templates"),
                                            autoescape=True, undefined=jinja2.StrictUndefined)
        static = Path(__file__).resolve().parent / "static"
        self.static = {p.name: p.read_bytes() for p in static.iterdir() if p.is_file()}

    # --- who is asking ------------------------------------------------------------------------

    def authenticate(self, request: Request) -> tuple[User, Any]:
        """The user behind a request and their session (``None`` for a Bearer token).

        Raises
        ------
        ApiError
            401 without a valid token or session; 403 when a session's request
            changes state without the session's CSRF token.
        """
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiError(401, "the Authorization header must be 'Bearer TOKEN'",
                               {"WWW-Authenticate": 'Bearer realm="likeness"'})
            user = self.users.by_token(token.strip())
            if user is None:
                raise ApiError(401, "unknown token", {"WWW-Authenticate": 'Bearer realm="likeness", '
                                                                         'error="invalid_token"'})
            return user, None
        sid = request.cookies.get(SESSION_COOKIE)
        session = self.sessions.get(sid)
        if session is None:
            raise ApiError(401, "sign in first: send 'Authorization: Bearer TOKEN' or sign in on /signin",
                           {"WWW-Authenticate": 'Bearer realm="likeness"'})
        user = self.users.get(session.user)
        if user is None:  # removed since signing in: their sessions end now
            self.sessions.end_user(session.user)
            raise ApiError(401, "this user was removed; sign in again")
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            given = request.headers.get("x-csrf-token") or ""
            if not given or not hmac.compare_digest(given, session.csrf):
                raise ApiError(403, "CSRF token missing or wrong (send the page's X-CSRF-Token header)")
        return user, session

    def allow(self, user: User, role: str, *, limited: bool = True) -> None:
        if not user.may(role):
            raise ApiError(403, f"{user.name} is a {user.role}; this needs a {role} or above")
        if limited:
            wait = self.limiter.allow(user.token_sha256)
            if wait > 0:
                raise ApiError(429, f"too many requests for this token; retry in {wait:.1f} s",
                               {"Retry-After": str(max(1, int(wait + 0.999)))})

    # --- checking ------------------------------------------------------------------------------

    async def ready(self, timeout: float = 120.0) -> None:
        """Wait for the scanner (models load in the background); 503 when it failed or takes too long."""
        if not self.holder.ready.is_set():
            await run_in_threadpool(self.holder.ready.wait, timeout)
        if self.holder.state != "ready":
            if self.holder.state == "failed":
                raise ApiError(503, f"the scanner could not start: {self.holder.error}")
            raise ApiError(503, "the scanner is still starting; retry shortly", {"Retry-After": "5"})

    async def run_check(self, upload: Upload, user: User, progress: Any = None) -> tuple[Checked, Entry]:
        """Check one upload in the pool (the caller admitted it). From this call on, the upload
        is closed and the place released when the check ends, whatever happens, even if the
        client is gone by then (the pool's future does it, not the request). ``progress`` is
        called from the pool's thread (see :meth:`CheckPool.submit`)."""
        submitted = False
        try:
            if upload.size == 0:
                raise ApiError(400, f"{upload.name!r} is empty (0 bytes)")
            try:
                modality = upload.modality()
            except NotMedia as exc:
                raise ApiError(415, str(exc)) from None
            await self.ready()
            future = self.pool.submit(upload, modality, progress)
            submitted = True
        finally:
            if not submitted:
                upload.close()
                self.pool.release()

        def finished(_: Any) -> None:
            upload.close()
            self.pool.release()

        future.add_done_callback(finished)
        try:
            checked: Checked = await asyncio.wrap_future(future)
        except Busy as exc:
            raise ApiError(503, str(exc), {"Retry-After": "5"}) from None
        if self.first_check_s is None:
            self.first_check_s = checked.seconds
        entry = Entry(secrets.token_hex(8), _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      user.name, checked.line, checked.thumb, checked.seconds)
        self.history.add(entry)
        LOG.info("check by %s: %s %s in %.3f s", user.name, checked.line.get("verdict"),
                 (checked.line.get("sha256") or "-")[:12], checked.seconds)
        return checked, entry


# --- multipart uploads, streamed into private files --------------------------------------------


async def read_uploads(request: Request, svc: Service, *, max_files: int) -> list[Upload]:
    """The files of a ``multipart/form-data`` body (field ``file``), each streamed into its own
    nameless private file as it arrives, never spooled anywhere else.

    Raises
    ------
    ApiError
        400 for a body that is not multipart or does not parse; 413 for a file
        over the limit or more files than ``max_files``.
    ClientDisconnect
        The client went away mid-upload (the files written so far are closed: gone).
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    limit = svc.config.max_upload_bytes
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise ApiError(400, "send the file as multipart/form-data in the field 'file'"
                            + (" (or JSON {\"path\": ...})" if svc.roots else ""))
    try:
        declared = int(request.headers.get("content-length", "0") or 0)
    except ValueError:
        raise ApiError(400, "Content-Length is not a number") from None
    if declared > limit * max_files + 1024 * 1024:
        raise ApiError(413, f"too large: {declared:,} bytes; the limit is {limit:,} bytes a file")
    uploads: list[Upload] = []
    state: dict[str, Any] = {"field": b"", "value": b"", "headers": {}, "current": None, "error": None,
                             "pending": []}

    def on_part_begin() -> None:
        state["headers"], state["current"] = {}, None

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        if disp.get(b"name") == b"file" and b"filename" in disp:
            if len(uploads) >= max_files:
                state["error"] = ApiError(413, f"at most {max_files} file(s) in one request")
                return
            name = sanitise_name(disp[b"filename"].decode("utf-8", "replace"))
            up = svc.tmp.upload(name)
            uploads.append(up)
            state["current"] = up

    def on_part_data(data: bytes, start: int, end: int) -> None:
        up = state["current"]
        if up is not None and state["error"] is None:
            state["pending"].append((up, data[start:end]))

    def on_part_end() -> None:
        state["current"] = None

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished})
    try:
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except Exception:  # noqa: BLE001 - python-multipart raises several kinds on bad input
                raise ApiError(400, "the multipart body does not parse") from None
            if state["error"] is not None:
                raise state["error"]
            for up, data in state["pending"]:
                if up.size + len(data) > limit:
                    raise ApiError(413, f"{up.name!r} is too large: the limit is {limit:,} bytes")
                up.write(data)
            state["pending"].clear()
        try:
            parser.finalize()
        except Exception:  # noqa: BLE001
            raise ApiError(400, "the multipart body ends early") from None
    except BaseException:
        for up in uploads:
            up.close()
        raise
    return uploads


async def read_json(request: Request) -> Any:
    """A small JSON body (at most :data:`MAX_JSON` bytes), or 400 naming what is wrong."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON:
            raise ApiError(413, f"a JSON body has at most {MAX_JSON:,} bytes")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ApiError(400, f"the body is not JSON: {exc}") from None


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


# --- responses --------------------------------------------------------------------------------


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def json_line_response(line: dict[str, Any], **headers: str) -> Response:
    """A result line as JSON, the same text ``results.jsonl`` holds (UTF-8, not ASCII-escaped)."""
    from scanner.results import json_line

    return Response(json_line(line), media_type="application/json", headers=headers)


Handler = Callable[[Request, Service, User], Awaitable[Response]]


def api(role: str, *, limited: bool = True) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """A route that needs a user of ``role`` or above; maps every error to its JSON answer."""

    def wrap(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            svc: Service = request.app.state.svc
            try:
                user, _ = svc.authenticate(request)
                svc.allow(user, role, limited=limited)
                return await fn(request, svc, user)
            except ApiError as exc:
                return error_response(exc.status, exc.message, exc.headers)
            except Busy as exc:
                return error_response(503, str(exc), {"Retry-After": "5"})
            except Forbidden as exc:
                return error_response(403, str(exc))
            except NotMedia as exc:
                return error_response(415, str(exc))
            except LikenessError as exc:
                return error_response(400, str(exc))
            except ClientDisconnect:
                return Response(status_code=499)  # nobody reads it: the client is gone
            except Exception:  # noqa: BLE001 - a bug must not leak a traceback (logged here, not sent)
                LOG.exception("internal error on %s %s", request.method, request.url.path)
                return error_response(500, "internal error (logged on the server)")

        endpoint.__name__ = fn.__name__
        endpoint.__doc__ = fn.__doc__
        return endpoint

    return wrap


# --- routes: health, sign-in, page ---------------------------------------------------------------


async def healthz(request: Request) -> Response:
    """Whether the server is up and the scanner ready (no token needed; nothing about the index)."""
    svc: Service = request.app.state.svc
    h = svc.holder
    return JSONResponse({"status": h.state, "ready": h.state == "ready", "version": __version__,
                         "uptime_s": round(time.monotonic() - svc.started, 3), "ready_after_s": h.ready_after,
                         "warm_s": h.warm_seconds, "first_check_s": svc.first_check_s,
                         "error": h.error if h.state == "failed" else None,
                         "in_flight": svc.pool.in_flight})


def _html(svc: Service, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(svc.templates.get_template(template).render(version=__version__, **context),
                        status_code=status, headers={"Content-Security-Policy": PAGE_CSP})


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Content-Security-Policy": PAGE_CSP})


async def signin_page(request: Request) -> Response:
    """The sign-in form: a token, and a CSRF token tied to a short-lived cookie (double submit)."""
    svc: Service = request.app.state.svc
    pre = secrets.token_urlsafe(24)
    resp = _html(svc, "signin.html.j2", csrf=pre, message=request.query_params.get("m", "")[:200])
    resp.set_cookie(PRE_COOKIE, pre, max_age=600, httponly=True, samesite="strict",
                    secure=svc.config.secure_cookies, path="/signin")
    return resp


async def signin(request: Request) -> Response:
    svc: Service = request.app.state.svc
    try:
        form = await request.form(max_files=0, max_fields=5, max_part_size=4096)
    except Exception:  # noqa: BLE001 - a malformed form gets the form again
        return _html(svc, "signin.html.j2", 400, csrf="", message="the form did not parse")
    pre = request.cookies.get(PRE_COOKIE) or ""
    given = str(form.get("csrf") or "")
    if not pre or not given or not hmac.compare_digest(pre, given):
        return _html(svc, "signin.html.j2", 403, csrf="", message="the form expired or its CSRF token is "
                                                                  "wrong: reload the sign-in page")
    user = svc.users.by_token(str(form.get("token") or "").strip())
    if user is None:
        LOG.info("sign-in refused (unknown token)")
        return _redirect("/signin?m=unknown+token")
    sid, _ = svc.sessions.create(user.name)
    LOG.info("signed in: %s", user.name)
    resp = _redirect("/")
    resp.set_cookie(SESSION_COOKIE, sid, max_age=int(svc.config.session_hours * 3600), httponly=True,
                    samesite="strict", secure=svc.config.secure_cookies, path="/")
    resp.delete_cookie(PRE_COOKIE, path="/signin")
    return resp


async def signout(request: Request) -> Response:
    svc: Service = request.app.state.svc
    sid = request.cookies.get(SESSION_COOKIE)
    session = svc.sessions.get(sid)
    if session is not None:
        try:
            form = await request.form(max_files=0, max_fields=5, max_part_size=4096)
        except Exception:  # noqa: BLE001
            form = {}
        given = str(form.get("csrf") or request.headers.get("x-csrf-token") or "")
        if not given or not hmac.compare_digest(given, session.csrf):
            return _html(svc, "signin.html.j2", 403, csrf="", message="CSRF token missing or wrong")
        svc.sessions.end(sid)
    resp = _redirect("/signin")
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


async def page(request: Request) -> Response:
    """The creative lead's desk (Bearer works here too; without either, the sign-in page)."""
    svc: Service = request.app.state.svc
    try:
        user, session = svc.authenticate(request)
    except ApiError:
        return _redirect("/signin")
    return _html(svc, "page.html.j2", user=user, csrf=session.csrf if session else "",
                 may_decide=user.may("reviewer"), thumbnails=svc.config.thumbnails,
                 index=svc.holder.describe() or {})


async def static(request: Request) -> Response:
    """The page's own script and stylesheet (the stylesheet is public: the sign-in page uses it)."""
    svc: Service = request.app.state.svc
    name = request.path_params["name"]
    if name not in svc.static:
        return error_response(404, "no such file")
    if name.endswith(".js"):
        try:
            svc.authenticate(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.headers)
    kind = "text/javascript" if name.endswith(".js") else "text/css"
    return Response(svc.static[name], media_type=kind)


# --- routes: the API ------------------------------------------------------------------------------


@api("viewer")
async def check(request: Request, svc: Service, user: User) -> Response:
    """Check one file: multipart field ``file``, or JSON ``{"path": ...}`` inside an allowed root."""
    svc.pool.admit()  # back-pressure before reading a byte of the upload
    handed = False
    uploads: list[Upload] = []
    try:
        if _is_json(request):
            body = await read_json(request)
            if not isinstance(body, dict) or "path" not in body:
                raise ApiError(400, 'the JSON body must be {"path": "..."}')
            fd, shown = await run_in_threadpool(open_in_roots, body["path"], svc.roots)
            uploads = [Upload.of_file(svc.tmp, fd, str(shown))]
        else:
            uploads = await read_uploads(request, svc, max_files=1)
        if not uploads:
            raise ApiError(400, "no file in the field 'file' (multipart/form-data, with a file name)")
        handed = True  # from here run_check closes the upload and releases the place
        checked, entry = await svc.run_check(uploads[0], user)
        return json_line_response(checked.line, **{"X-Likeness-Check": entry.id})
    finally:
        if not handed:
            for up in uploads:
                up.close()
            svc.pool.release()


@api("viewer", limited=False)
async def index_info(request: Request, svc: Service, user: User) -> Response:
    """The index checked against: id, works, features, thresholds (and the server's state)."""
    await svc.ready()
    run = svc.holder.describe() or {}
    return JSONResponse({"index_id": run.get("index_id"), "n_works": run.get("n_works"),
                         "features": run.get("features"), "policy": run.get("policy"),
                         "tool_version": run.get("tool_version"), "reloads": svc.holder.reloads})


@api("admin")
async def index_reload(request: Request, svc: Service, user: User) -> Response:
    """Open the index again now if another was swapped in (checks in flight finish on the old one)."""
    await svc.ready()
    reloaded = await run_in_threadpool(svc.holder.reload_if_changed)
    return JSONResponse({"reloaded": reloaded, "index_id": (svc.holder.describe() or {}).get("index_id")})


@api("viewer", limited=False)
async def history(request: Request, svc: Service, user: User) -> Response:
    """This server's checks since it started, newest first (names, sha256, verdicts, decisions)."""
    run = svc.holder.describe()
    return JSONResponse({"checks": [e.public(run) for e in reversed(svc.history)]})


def _entry(svc: Service, entry_id: str) -> Entry:
    entry = svc.history.find(entry_id)
    if entry is None:
        raise ApiError(404, "no such check in this server's history")
    return entry


@api("viewer", limited=False)
async def evidence(request: Request, svc: Service, user: User) -> Response:
    """One check's evidence as the report shows it (its one-asset page), for the page's frame."""
    from scanner.report.html import render_html

    entry = _entry(svc, request.path_params["id"])
    run = svc.holder.describe() or {}
    own = {f"o{entry.line.get('sha256')}": entry.thumb} if entry.thumb else None
    text = await run_in_threadpool(lambda: render_html([entry.line], run, index_dir=svc.config.index_dir,
                                                       single=True, thumbnails=bool(entry.thumb),
                                                       own_thumbs=own))
    return HTMLResponse(text, headers={"Content-Security-Policy": EVIDENCE_CSP, "X-Frame-Options": "SAMEORIGIN"})


@api("reviewer")
async def decide(request: Request, svc: Service, user: User) -> Response:
    """Record a decision in the index's ledger (the one ``likeness review`` writes), by the signed-in user.

    Body: ``{"check": ID}`` (a check of this server: the works it matched) or
    ``{"sha256": ...}`` (with ``"works": [ids]``, or the output as a whole),
    and ``"decision"`` (approved, rejected, licensed) and ``"why"``.
    """
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    decision, why = str(body.get("decision") or ""), str(body.get("why") or "")
    if decision not in ledger.DECISIONS:
        raise ApiError(400, f"decision must be one of {', '.join(ledger.DECISIONS)}, given {decision!r}")
    if not why.strip():
        raise ApiError(400, "a decision needs a reason ('why'): it is shown to whoever looks next")
    await svc.ready()
    entry = None
    if body.get("check"):
        entry = _entry(svc, str(body["check"]))
        sha256, path = entry.line.get("sha256"), entry.line.get("path")
        ids = list(dict.fromkeys(m.get("work_id") for m in entry.line.get("matches") or []))
    else:
        sha256, path = str(body.get("sha256") or ""), None
        raw_ids = body.get("works") or []
        if not isinstance(raw_ids, list) or not all(isinstance(i, int) for i in raw_ids):
            raise ApiError(400, "'works' must be a list of work ids")
        ids = list(dict.fromkeys(raw_ids))
    if not sha256 or not ledger.is_sha256(sha256):
        raise ApiError(400, "no sha256 to decide on (the check could not read the file)")
    with svc.holder.acquire() as loaded:
        works, index_id = loaded.scanner.works, loaded.scanner.index.index_id
    unknown = [i for i in ids if i not in works]
    if unknown and entry is None:
        raise ApiError(400, f"no work {', '.join(map(str, unknown))} in the index")
    concerned = [{"work_id": i, "sha256": works[i].sha256, "title": works[i].title} for i in ids if i in works]
    d = ledger.Decision(sha256, decision, user.name, why.strip(), works=concerned, index_id=index_id, path=path)
    d = await run_in_threadpool(ledger.append, svc.config.index_dir, d)
    if entry is not None:
        svc.history.decided(entry, {k: v for k, v in d.to_dict().items() if k not in ("sha256", "path")})
    LOG.info("decision by %s: %s on %s", user.name, decision, sha256[:12])
    return JSONResponse({"recorded": d.to_dict(), "ledger": str(ledger.ledger_path(svc.config.index_dir))})


@api("viewer", limited=False)
async def me(request: Request, svc: Service, user: User) -> Response:
    return JSONResponse(user.public())


# --- users (admins) -------------------------------------------------------------------------------


@api("admin")
async def users_list(request: Request, svc: Service, user: User) -> Response:
    return JSONResponse({"users": [u.public() for u in svc.users.list()]})


@api("admin")
async def users_add(request: Request, svc: Service, user: User) -> Response:
    """Add a user; the answer holds their token, the one time it is shown."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, 'the body must be {"name": ..., "role": ...}')
    name, role = check_name(str(body.get("name") or "")), check_role(str(body.get("role") or ""))
    new, token = await run_in_threadpool(svc.users.add, name, role)
    LOG.info("user added by %s: %s (%s)", user.name, new.name, new.role)
    return JSONResponse({**new.public(), "token": token}, status_code=201)


@api("admin")
async def users_remove(request: Request, svc: Service, user: User) -> Response:
    name = request.path_params["name"]
    gone = await run_in_threadpool(svc.users.remove, name)
    ended = svc.sessions.end_user(gone.name)
    LOG.info("user removed by %s: %s", user.name, gone.name)
    return JSONResponse({"removed": gone.name, "sessions_ended": ended})


# --- batch jobs -----------------------------------------------------------------------------------


@api("viewer")
async def jobs_create(request: Request, svc: Service, user: User) -> Response:
    """A batch: multipart with one or more ``file`` fields, or JSON ``{"paths": [...]}`` inside the roots.
    Answers 202 with the job's id at once; results come by ``GET /v1/jobs/ID`` or its event stream."""
    uploads: list[Upload] = []
    try:
        if _is_json(request):
            body = await read_json(request)
            paths = body.get("paths") if isinstance(body, dict) else None
            if not isinstance(paths, list) or not paths:
                raise ApiError(400, 'the JSON body must be {"paths": ["...", ...]}')
            if len(paths) > svc.config.max_job_files:
                raise ApiError(413, f"at most {svc.config.max_job_files} files in one job")
            for p in paths:
                fd, shown = await run_in_threadpool(open_in_roots, p, svc.roots)
                uploads.append(Upload.of_file(svc.tmp, fd, str(shown)))
        else:
            uploads = await read_uploads(request, svc, max_files=svc.config.max_job_files)
        if not uploads:
            raise ApiError(400, "no file in the field 'file'")
    except BaseException:
        for up in uploads:
            up.close()
        raise
    while len(svc.jobs) >= MAX_JOBS:
        oldest = next((k for k, j in svc.jobs.items() if j.state == "done"), None)
        if oldest is None:
            for up in uploads:
                up.close()
            raise ApiError(503, "too many jobs running; retry shortly", {"Retry-After": "10"})
        svc.jobs.pop(oldest)
    job = Job(secrets.token_hex(8), user.name, len(uploads),
              _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    svc.jobs[job.id] = job
    task = asyncio.get_running_loop().create_task(_run_job(svc, job, uploads, user))
    svc.tasks.add(task)
    task.add_done_callback(svc.tasks.discard)
    return JSONResponse({"id": job.id, "total": job.total, "status": f"/v1/jobs/{job.id}",
                         "events": f"/v1/jobs/{job.id}/events"}, status_code=202)


async def _run_job(svc: Service, job: Job, uploads: list[Upload], user: User) -> None:
    """Check a job's files one after another, each waiting for a place in the pool (a job
    queues rather than fails); every upload is closed by the end, whatever happens."""
    job.state = "running"
    loop = asyncio.get_running_loop()

    def progress_of(name: str) -> Any:
        def told(p: dict[str, Any]) -> None:  # from the pool's thread: hand it to the loop
            loop.call_soon_threadsafe(job.progressed, {"file": name, **p})
        return told

    try:
        for up in uploads:
            check_id = None
            admitted = await run_in_threadpool(svc.pool.admit_wait, 600.0)
            if not admitted:
                line = {"path": up.name, "sha256": None, "modality": None, "verdict": "error", "score": 0.0,
                        "reason": "the server stayed busy", "error": "the server stayed busy",
                        "index_id": None, "matches": []}
                up.close()
            else:
                try:
                    checked, entry = await svc.run_check(up, user, progress_of(up.name))
                    line, check_id = checked.line, entry.id
                except ApiError as exc:  # not media, empty: the job goes on, as a scan does
                    line = {"path": up.name, "sha256": None, "modality": None, "verdict": "error",
                            "score": 0.0, "reason": exc.message, "error": exc.message, "index_id": None,
                            "matches": []}
            job.result(line, check_id)
    except Exception:  # noqa: BLE001
        LOG.exception("job %s failed", job.id)
    finally:
        for up in uploads:
            up.close()
        job.state = "done"
        job.signal()


def _job(svc: Service, user: User, job_id: str) -> Job:
    job = svc.jobs.get(job_id)
    if job is None or (job.user != user.name and not user.may("admin")):
        raise ApiError(404, "no such job")
    return job


@api("viewer", limited=False)
async def job_status(request: Request, svc: Service, user: User) -> Response:
    return JSONResponse(_job(svc, user, request.path_params["id"]).public())


@api("viewer", limited=False)
async def job_events(request: Request, svc: Service, user: User) -> Response:
    """Server-sent events: ``progress`` while a long file decodes (``file``, ``stage``: picture,
    sound or judging, ``seconds``, ``duration``), one ``result`` per file as it is decided (the
    result line; the event's id is the check's, for its evidence and decisions), then ``done``."""
    job = _job(svc, user, request.path_params["id"])

    async def stream() -> AsyncIterator[bytes]:
        sent = 0
        while True:
            waiter = job.changed
            while sent < len(job.events):
                event, ident, data = job.events[sent]
                head = f"id: {ident}\n" if ident else ""
                yield f"event: {event}\n{head}data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
                sent += 1
            if job.state == "done" and sent >= len(job.events):
                yield f"event: done\ndata: {json.dumps(job.public(with_results=False))}\n\n".encode()
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(waiter.wait(), 15)
            if not waiter.is_set():
                yield b": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


@api("viewer", limited=False)
async def openapi(request: Request, svc: Service, user: User) -> Response:
    from scanner.serve.openapi import document

    return JSONResponse(document(__version__, svc.config.max_upload_bytes))


# --- the app --------------------------------------------------------------------------------------


class SecurityHeaders:
    """Pure ASGI middleware: every response gets a Content-Security-Policy (unless it set its
    own), ``nosniff``, no referrer, no caching, no framing (unless it allowed its own)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                for k, v in ((b"content-security-policy", API_CSP.encode()),
                             (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                             (b"cache-control", b"no-store"), (b"x-frame-options", b"DENY"),
                             (b"cross-origin-opener-policy", b"same-origin")):
                    if k not in names:
                        headers.append((k, v))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return error_response(exc.status_code, str(exc.detail))
    LOG.exception("internal error on %s %s", request.method, request.url.path)
    return error_response(500, "internal error (logged on the server)")


def create_app(config: ServeConfig) -> Starlette:
    """The web app for ``config``: the state folder is made private and swept now; the index
    opens in the background when the app starts (``/healthz`` answers meanwhile).

    Parameters
    ----------
    config : :class:`ServeConfig`

    Returns
    -------
    starlette.applications.Starlette
        ``app.state.svc`` holds the :class:`Service`.
    """
    svc = Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        svc.holder.start()
        try:
            yield
        finally:
            for task in list(svc.tasks):
                task.cancel()
            await run_in_threadpool(svc.pool.shutdown)
            svc.holder.close()
            svc.tmp.sweep()

    from starlette.middleware import Middleware

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/signin", signin_page, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signout", signout, methods=["POST"]),
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/check", check, methods=["POST"]),
        Route("/v1/jobs", jobs_create, methods=["POST"]),
        Route("/v1/jobs/{id}", job_status, methods=["GET"]),
        Route("/v1/jobs/{id}/events", job_events, methods=["GET"]),
        Route("/v1/index", index_info, methods=["GET"]),
        Route("/v1/index/reload", index_reload, methods=["POST"]),
        Route("/v1/history", history, methods=["GET"]),
        Route("/v1/checks/{id}/evidence", evidence, methods=["GET"]),
        Route("/v1/decisions", decide, methods=["POST"]),
        Route("/v1/me", me, methods=["GET"]),
        Route("/v1/users", users_list, methods=["GET"]),
        Route("/v1/users", users_add, methods=["POST"]),
        Route("/v1/users/{name}", users_remove, methods=["DELETE"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(SecurityHeaders)],
                    exception_handlers={HTTPException: _http_error, Exception: _http_error})
    app.state.svc = svc
    return app
