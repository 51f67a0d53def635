"""The checking side of ``likeness serve``: private uploads, the warm scanner, a bounded pool.

Uploads (the studio's rule: tools must not keep outputs). Each upload is
written to a file that has no name from the start: ``O_TMPFILE`` in the
private folder ``STATE/tmp`` (0700), or, where the filesystem lacks it, a
``mkstemp`` file unlinked at once. Decoders open it through a symlink to
``/proc/PID/fd/N`` that carries the client's extension (an m4a goes through
ffmpeg by its name); the symlink holds no content and is removed when the
check ends. When the file's descriptor closes (the check ended, the client
went away, the server was killed) the kernel frees the content: nothing of
an output survives the check but its result line. The folder is swept at
start, for symlinks a killed server left behind.

The scanner (:class:`ScannerHolder`) opens the index once, in the
background, so ``/healthz`` answers at once and says when it is ready; it is
opened again when ``likeness index add`` swaps a new index in, and checks in
flight finish on the one they started with.

Checks (:class:`CheckPool`) run in a bounded pool of threads, off the event
loop; a request beyond the pool's workers plus its queue is refused with 503
at once (back-pressure), before its upload is read. Pictures are checked in
processes forked from the opened, warm scanner (as a scan's decode workers
are, where every feature may be forked and no GPU is in use): each decodes,
describes, searches and verifies its own picture on one core, the index's
memory-mapped files shared, none waiting on another's GIL; it reads the upload
through the server's own descriptor (``/proc/PID/fd/N``), so nothing is
copied. A decoder that kills its process costs that picture an error line,
and the workers are forked anew. Sound and video are checked in the server's
threads (their progress is reported as they decode): decoding and featurizing
in parallel, judging one at a time per scanner, since the judges keep search
state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import threading
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from scanner import ledger, media
from scanner.errors import LikenessError, ParameterError
from scanner.results import Result

LOG = logging.getLogger("likeness.serve")

#: Checks waiting beyond the workers before a request is refused with 503 (the default).
QUEUE = 32

#: Longest file name kept of a client's (in bytes of UTF-8, as file systems count).
MAX_NAME_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class Busy(LikenessError):
    """Every worker is busy and the queue is full: the client should retry later (503)."""


class NotMedia(LikenessError):
    """Neither the content nor the name of an upload says image, audio or video (415)."""


class Forbidden(LikenessError):
    """A path outside the allowed roots (403)."""


def sanitise_name(name: str | None) -> str:
    """A client's file name made safe to show and to write in a result line.

    Only the last component of any path is kept (``../../x.png`` and
    ``C:\\a\\x.png`` give ``x.png``); control characters go; Unicode is
    normalised (NFC); the name is cut to :data:`MAX_NAME_BYTES` bytes keeping
    its extension; an empty or dot-only name becomes ``upload``. Markup is
    left as text: every page escapes it.
    """
    name = unicodedata.normalize("NFC", str(name or ""))
    name = re.split(r"[\\/]", name)[-1]
    name = _CONTROL.sub("", name).strip()
    if name in ("", ".", ".."):
        return "upload"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        ext = ext if dot and len(ext) <= 10 else ""
        keep = stem if ext else name
        while len((keep + ("." + ext if ext else "")).encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            keep = keep[:-1]
        name = keep + ("." + ext if ext else "")
    return name


def name_modality(name: str) -> str | None:
    """Image, audio or video by a file name's extension (``None``: the name says nothing)."""
    suffix = Path(name).suffix.lower()
    for modality, known in (("image", media.IMAGE_EXTENSIONS), ("audio", media.AUDIO_EXTENSIONS),
                            ("video", media.VIDEO_EXTENSIONS)):
        if suffix in known:
            return modality
    return None


class PrivateTmp:
    """The server's private folder for uploads (``STATE/tmp``, 0700), swept at start.

    Parameters
    ----------
    path : the folder (created 0700; anything in it is removed now: symlinks
        and, should a filesystem without ``O_TMPFILE`` have let one through,
        unnamed files a killed server left)
    """

    def __init__(self, path: str | Path):
        from scanner.serve.auth import private_dir

        self.path = private_dir(path)
        self.swept = self.sweep()

    def sweep(self) -> int:
        """Remove everything in the folder; returns how many entries went."""
        n = 0
        for entry in os.scandir(self.path):
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    import shutil

                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                n += 1
        return n

    def upload(self, name: str) -> "Upload":
        """A new, nameless file in the folder for one upload named ``name`` by its client."""
        return Upload(self, name)


class Upload:
    """One upload's bytes in a file that has no name (see the module's notes).

    Parameters
    ----------
    tmp : the private folder
    name : the client's file name, sanitised (:func:`sanitise_name`)
    """

    def __init__(self, tmp: PrivateTmp, name: str):
        self.tmp, self.name, self.size = tmp, name, 0
        self._link: Path | None = None
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
        try:
            self.fd = os.open(tmp.path, flags | os.O_TMPFILE, 0o600)
        except (AttributeError, OSError):
            fd, path = tempfile.mkstemp(dir=tmp.path)
            os.unlink(path)  # unnamed from now on: only the descriptor reaches the content
            self.fd = fd

    @classmethod
    def of_file(cls, tmp: PrivateTmp, fd: int, name: str) -> "Upload":
        """A file opened by the server itself (``{"path": ...}`` inside an allowed root), read
        through its descriptor: what is checked is what was opened, whatever the path does next."""
        self = cls.__new__(cls)
        self.tmp, self.name, self._link, self.fd = tmp, name, None, fd
        self.size = os.fstat(fd).st_size
        return self

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)

    def head(self, n: int = 64) -> bytes:
        return os.pread(self.fd, n, 0)

    def modality(self) -> str:
        """What the upload is, by content first, then by its name (as ``likeness scan`` decides).

        Raises
        ------
        NotMedia
            Neither says image, audio or video.
        """
        by_content = media._sniff_bytes(self.head())  # noqa: SLF001 (the scanner's own signatures)
        by_name = name_modality(self.name)
        if by_content == "audio" and by_name == "video":
            return "video"  # Ogg and other containers that also carry audio alone
        found = by_content or by_name
        if found is None:
            raise NotMedia(f"{self.name!r} is not an image, audio or video file (by its content and its name)")
        return found

    def path(self) -> Path:
        """A path decoders can open (a symlink with the client's extension to the descriptor);
        removed by :meth:`close`."""
        if self._link is None:
            suffix = Path(self.name).suffix.lower()
            suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""
            for _ in range(10):
                link = self.tmp.path / f"{os.urandom(8).hex()}{suffix}"
                try:
                    os.symlink(f"/proc/{os.getpid()}/fd/{self.fd}", link)
                except FileExistsError:
                    continue
                self._link = link
                break
            else:  # pragma: no cover - 64 random bits collided ten times
                raise ParameterError("could not name a private link for an upload")
        return self._link

    def close(self) -> None:
        """Forget the upload: the link goes, the descriptor closes, the kernel frees the content."""
        if self._link is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._link)
            self._link = None
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Upload":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_in_roots(path: str, roots: list[Path]) -> tuple[int, str]:
    """Open a file named by a client, only inside the allowed roots.

    The path is resolved (symlinks followed, ``..`` removed) and must lie in
    one of ``roots`` (themselves resolved), so neither traversal nor a
    symlink that points out escapes; the file is then opened with
    ``O_NOFOLLOW`` at its resolved place and must be a regular file, so a
    link swapped in between is refused rather than followed.

    Returns
    -------
    (fd, shown) : an open descriptor and the path as given (for the result line)

    Raises
    ------
    Forbidden
        No roots were allowed, or the path is outside them.
    ParameterError
        The path is empty, missing, or not a regular file.
    """
    if not roots:
        raise Forbidden("checking by path is off: the server was started without --allow-root")
    if not isinstance(path, str) or not path or "\x00" in path:
        raise ParameterError("'path' must be a non-empty string naming a file")
    try:
        real = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        # the same answer whether outside the roots or missing, so nothing is learnt of other folders
        raise Forbidden(f"{path!r} is not a file inside the allowed roots") from None
    if not any(real == r or r in real.parents for r in roots):
        raise Forbidden(f"{path!r} is not a file inside the allowed roots")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ParameterError(f"{path!r} cannot be opened: {exc.strerror}") from None
    import stat

    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ParameterError(f"{path!r} is not a regular file")
    return fd, path


# --- the warm scanner -------------------------------------------------------------------------


@dataclass
class Loaded:
    """One opened scanner with the lock its judges need and how many checks hold it, and
    the processes forked from it that check pictures (``None``: every check in threads)."""

    scanner: Any
    stamp: tuple[int, int]
    judge_lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0
    retired: bool = False
    ledger_stamp: tuple[int, int, int] | None = None
    procs: Any = None
    n_procs: int = 0
    procs_lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        if self.procs is not None:
            self.procs.shutdown(wait=False, cancel_futures=True)
        self.scanner.close()


#: The scanner forked picture workers check with, and the index folder whose ledger they follow
#: (set in the server just before it forks them; each child keeps its own copy).
_FORKED: tuple[Any, Path] | None = None
_FORKED_LEDGER: list[Any] = [None]
_FORK_LOCK = threading.Lock()
_FORKER: ThreadPoolExecutor | None = None


def _in_forker(fn: Any) -> Any:
    """Run ``fn`` in the one thread that forks picture workers, which lives as long as the
    server: a worker is killed when the *thread* that forked it ends (``PR_SET_PDEATHSIG``
    follows the thread), so neither the thread that opens the index nor a pool thread may."""
    global _FORKER
    with _FORK_LOCK:
        if _FORKER is None:
            _FORKER = ThreadPoolExecutor(1, thread_name_prefix="likeness-forker")
        forker = _FORKER
    return forker.submit(fn).result()


def warm_scanner(scanner: Any, judge_lock: Any = None) -> None:
    """Check one made-up picture so that every model and lazily read file is loaded now,
    not in a client's check (the picture is made here, in a private folder; nothing is kept)."""
    import io

    from scanner.demo import synthetic_picture
    from scanner.pipeline import prepare_one

    if not any(f.modality == "image" for f in scanner.featurizers):
        return
    buf = io.BytesIO()
    synthetic_picture(12345).save(buf, "PNG")
    tmp = PrivateTmp.__new__(PrivateTmp)
    tmp.path = Path(tempfile.mkdtemp(prefix="likeness-warm-"))
    try:
        with Upload(tmp, "warm.png") as up:
            up.write(buf.getvalue())
            p = prepare_one(media.Input(up.path(), "image"), scanner.featurizers)
            with judge_lock or contextlib.nullcontext():
                scanner.judge([p])
    except Exception as exc:  # noqa: BLE001 - warming is a courtesy: a failure shows in the first check
        LOG.warning("warming the scanner failed: %s", type(exc).__name__)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(tmp.path)


def _procs_start(parent: int) -> None:
    """A forked picture worker starts: what a scan's decode worker does (go with the server,
    one thread for BLAS, searches and models), then its own models loaded and warm."""
    from scanner.pipeline import prepare

    assert _FORKED is not None
    scanner = _FORKED[0]
    prepare.start_worker(parent, scanner.featurizers, judge=True)
    warm_scanner(scanner)


def _check_picture(path: str) -> Result:
    """In a forked worker: check one picture, by the private link to the server's upload
    (the worker reads the server's open file; nothing is copied), honouring the ledger as it is now."""
    from scanner.pipeline import prepare_one

    assert _FORKED is not None
    scanner, index_dir = _FORKED
    _FORKED_LEDGER[0] = _follow_ledger(scanner, index_dir, _FORKED_LEDGER[0])
    return scanner.judge([prepare_one(media.Input(Path(path), "image"), scanner.featurizers)])[0]


def _index_stamp(index_dir: Path) -> tuple[int, int]:
    """Identity of the index now in place: index writes swap the whole folder in by rename."""
    st = os.stat(index_dir / "manifest.json")
    return st.st_ino, st.st_mtime_ns


def _ledger_stamp(index_dir: Path) -> tuple[int, int, int]:
    try:
        st = os.stat(ledger.ledger_path(index_dir))
        return st.st_ino, st.st_size, st.st_mtime_ns
    except FileNotFoundError:
        return 0, 0, 0


def _follow_ledger(scanner: Any, index_dir: Path, seen: tuple[int, int, int] | None) -> tuple[int, int, int]:
    """Load the scanner's decisions again when the ledger changed since ``seen`` (a decision
    recorded here or by ``likeness review``); returns the ledger's stamp now."""
    stamp = _ledger_stamp(index_dir)
    if stamp != seen:
        scanner.decisions = ledger.load(index_dir)
    return stamp


class ScannerHolder:
    """The scanner, opened in the background and opened again when the index changes.

    Parameters
    ----------
    index_dir : the index
    options : featurizer options (:class:`scanner.pipeline.FeatureOptions`)
    hmac_key : the manifest's signing key, if the index has one
    warm : a picture checked after opening, so models load before the first real check
    """

    def __init__(self, index_dir: str | Path, *, options: Any = None, hmac_key: bytes | None = None,
                 warm: bool = True, processes: int | None = None):
        self.index_dir = Path(index_dir)
        self.options, self.hmac_key, self.warm = options, hmac_key, warm
        self.processes = processes
        self.state = "starting"
        self.error: str | None = None
        self.started = time.monotonic()
        self.ready_after: float | None = None
        self.warm_seconds: float | None = None
        self.reloads = 0
        self._current: Loaded | None = None
        self._lock = threading.Lock()
        self._reloading = threading.Lock()
        self.ready = threading.Event()

    # --- opening ------------------------------------------------------------------------------

    def start(self) -> threading.Thread:
        """Open the scanner in a background thread (``state`` goes ``starting`` -> ``ready`` or ``failed``)."""
        t = threading.Thread(target=self._first_load, name="likeness-open-index", daemon=True)
        t.start()
        return t

    def _open(self) -> Loaded:
        from scanner.pipeline import Scanner

        stamp = _index_stamp(self.index_dir)
        scanner = Scanner(self.index_dir, options=self.options, hmac_key=self.hmac_key)
        loaded = Loaded(scanner, stamp, ledger_stamp=_ledger_stamp(self.index_dir))
        t0 = time.perf_counter()
        if self.warm:
            warm_scanner(scanner, loaded.judge_lock)
        try:
            self._fork(loaded)
        except Exception:
            loaded.close()
            raise
        if self.warm:
            self.warm_seconds = round(time.perf_counter() - t0, 3)
        return loaded

    def forks(self, scanner: Any) -> int:
        """How many processes to fork for pictures: ``processes`` (default: the CPUs) where every
        image featurizer may be forked and no GPU is in use, as a scan's decode workers; else 0
        (sound and video are checked in threads whatever their featurizers)."""
        from scanner import search
        from scanner.pipeline import forks

        images = [f for f in scanner.featurizers if f.modality == "image"]
        if self.processes == 0 or not images or not forks(images) or search.may_use_gpu(scanner.options.device):
            return 0
        return self.processes or max(1, len(os.sched_getaffinity(0)))

    def _fork(self, loaded: Loaded) -> None:
        """Fork the picture workers from this scanner now (opened and warm: its memory-mapped index
        is shared), each warming its own models before it takes a check."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        n = self.forks(loaded.scanner)
        if not n:
            return

        def fork() -> None:
            global _FORKED
            from scanner.pipeline import prepare

            prepare.before_fork()
            _FORKED = (loaded.scanner, self.index_dir)
            loaded.procs = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork"),
                                               initializer=_procs_start, initargs=(os.getpid(),))
            loaded.n_procs = n
            # the fork start method starts every worker at the first task: now, not in a client's check
            loaded.procs.submit(os.getpid).result()

        _in_forker(fork)

    def refork(self, loaded: Loaded, broken: Any) -> None:
        """A picture worker of the pool ``broken`` died (a decoder crashed it), which breaks the
        pool: fork a new one, unless another check has done so already."""
        with loaded.procs_lock:
            if loaded.procs is not broken:
                return
            broken.shutdown(wait=False, cancel_futures=True)
            self._fork(loaded)

    def _first_load(self) -> None:
        try:
            loaded = self._open()
        except LikenessError as exc:
            self.state, self.error = "failed", str(exc)
            LOG.error("the index could not be opened: %s", exc)
            self.ready.set()
            return
        except Exception as exc:  # noqa: BLE001 - reported by /healthz, never a silent hang
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            LOG.exception("the index could not be opened")
            self.ready.set()
            return
        with self._lock:
            self._current = loaded
        self.state = "ready"
        self.ready_after = round(time.monotonic() - self.started, 3)
        self.ready.set()

    def reload_if_changed(self) -> bool:
        """Open the index again if another one was swapped in; True when reloaded.

        The new scanner is opened while checks already under way go on with the old
        one; the swap is one assignment; the old one closes when its last check ends.
        One reload at a time: a caller that sees the swap while another reloads waits
        for that reload (a check that starts after an index was swapped in is judged
        with it), then finds the index current.
        """
        if self._current is None:
            return False
        try:
            stamp = _index_stamp(self.index_dir)
        except OSError:
            return False  # between the rename of the old folder and the new one: next time
        if stamp == self._current.stamp:
            return False
        self._reloading.acquire()
        try:
            if self._current is not None and stamp == self._current.stamp:
                return False
            try:
                new = self._open()
            except LikenessError as exc:
                LOG.error("the new index could not be opened (keeping the old one): %s", exc)
                return False
            with self._lock:
                old, self._current = self._current, new
                if old is not None:
                    old.retired = True
                    close_now = old.users == 0
            self.reloads += 1
            LOG.info("index reloaded: %s", new.scanner.index.index_id)
            if old is not None and close_now:
                old.close()
            return True
        finally:
            self._reloading.release()

    @contextlib.contextmanager
    def acquire(self) -> Iterator[Loaded]:
        """The current scanner, held for one check (a reload does not close it under the check)."""
        with self._lock:
            loaded = self._current
            if loaded is None:
                raise Busy(self.error or "the scanner is still starting")
            loaded.users += 1
        try:
            yield loaded
        finally:
            with self._lock:
                loaded.users -= 1
                close = loaded.retired and loaded.users == 0
            if close:
                loaded.close()

    def describe(self) -> dict[str, Any] | None:
        """The current scanner's provenance (index id, works, features, thresholds), or ``None``; the
        index is named by its folder's name only (the server's paths are nobody's business on the page)."""
        loaded = self._current
        if loaded is None:
            return None
        run = loaded.scanner.describe()
        return {**run, "index_path": Path(str(run.get("index_path") or "index")).name}

    def close(self) -> None:
        with self._lock:
            loaded, self._current = self._current, None
        if loaded is not None:
            loaded.close()


# --- the pool ---------------------------------------------------------------------------------


@dataclass
class Checked:
    """A check's result line and, when thumbnails are allowed, the output's thumbnail (in memory)."""

    result: Result
    line: dict[str, Any]
    thumb: bytes | None = None
    seconds: float = 0.0


class CheckPool:
    """Checks in a bounded pool of threads, with a queue that refuses rather than grows.

    Parameters
    ----------
    holder : the warm scanner
    workers : threads checking at once (default: the CPUs this process may use)
    queue : checks waiting beyond those (default: ``QUEUE``, so that a pipeline's usual
        handful of concurrent clients waits its turn rather than being refused)
    thumbnails : keep each flagged, review or licensed output's thumbnail in memory for the page
    """

    def __init__(self, holder: ScannerHolder, *, workers: int | None = None, queue: int | None = None,
                 thumbnails: bool = False):
        self.holder = holder
        self.workers = workers or max(1, len(os.sched_getaffinity(0)))
        self.capacity = self.workers + (queue if queue is not None else max(QUEUE, 2 * self.workers))
        self.thumbnails = thumbnails
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="likeness-check")
        self._retry_lock = threading.Lock()
        self._admitted = 0
        self._lock = threading.Lock()
        self.done = 0

    def admit(self) -> None:
        """Take a place in the pool or its queue.

        Raises
        ------
        Busy
            Every place is taken.
        """
        with self._lock:
            if self._admitted >= self.capacity:
                raise Busy(f"the server is busy ({self.capacity} checks running or queued); retry shortly")
            self._admitted += 1

    def admit_wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a place (batch jobs queue rather than fail)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.admit()
                return True
            except Busy:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)

    def release(self) -> None:
        with self._lock:
            self._admitted = max(0, self._admitted - 1)

    @property
    def in_flight(self) -> int:
        return self._admitted

    def submit(self, upload: Upload, modality: str, progress: Any = None) -> Any:
        """Check an upload in the pool; returns a future of :class:`Checked`. The caller
        has admitted it and releases the place (and closes the upload) when the future is done.
        ``progress`` (:data:`scanner.pipeline.prepare.Progress`) is told how decoding goes, then
        ``{"stage": "judging"}``; it is called from the pool's thread."""
        return self._executor.submit(self._check, upload, modality, progress)

    def _check(self, upload: Upload, modality: str, progress: Any = None) -> Checked:
        from scanner.pipeline import prepare_one

        t0 = time.perf_counter()
        self.holder.reload_if_changed()
        with self.holder.acquire() as loaded:
            scanner = loaded.scanner
            path = upload.path()
            result = self._forked(loaded, path) if modality == "image" and loaded.procs is not None else None
            if result is None:
                prepared = prepare_one(media.Input(path, modality), scanner.featurizers, progress=progress)
                if progress is not None and modality != "image":  # a picture is decoded in a blink
                    progress({"stage": "judging"})
                with loaded.judge_lock:
                    loaded.ledger_stamp = _follow_ledger(scanner, self.holder.index_dir, loaded.ledger_stamp)
                    result = scanner.judge([prepared])[0]
            # the line names the client's file, never the private link it was read through
            result.path = upload.name
            for attr in ("reason", "error"):
                text = getattr(result, attr)
                if isinstance(text, str) and str(path) in text:
                    setattr(result, attr, text.replace(str(path), upload.name))
            line = result.to_dict()
            thumb = None
            if self.thumbnails and line["verdict"] in ("flagged", "review", "licensed"):
                thumb = _thumbnail(line, path)
        return Checked(result, line, thumb, round(time.perf_counter() - t0, 4))

    def _forked(self, loaded: Loaded, path: Path) -> Result | None:
        """Check a picture in one of the processes forked from the scanner (every core checks,
        none waits on another's GIL); ``None`` to check it here instead (the pool was shut down
        by a reload). When a worker dies, the pool is forked again and the picture tried once
        more there (the one that died may have been another's: a broken pool fails every check
        in it); a picture whose second try kills a worker too gets an error line."""
        from concurrent.futures.process import BrokenProcessPool

        from scanner.features.prepared import Prepared

        def attempt() -> Result | None | bool:
            pool = loaded.procs
            try:
                return pool.submit(_check_picture, str(path)).result()
            except BrokenProcessPool:
                LOG.error("a picture worker died during a check; forking new ones")
                self.holder.refork(loaded, pool)
                return False
            except RuntimeError:  # "cannot schedule new futures after shutdown"
                return None

        result = attempt()
        if result is False:
            # second tries one at a time, each with the pool it broke forked anew before the next
            # starts: a crasher's second try cannot take an innocent's down
            with self._retry_lock:
                result = attempt()
        if result is not False:
            return result
        failed = Prepared(media.Input(path, "image"), error="the decoder crashed on this file")
        failed.sha256 = media.sha256_file(path)
        with loaded.judge_lock:
            return loaded.scanner.judge([failed])[0]

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _thumbnail(line: dict[str, Any], path: Path) -> bytes | None:
    """The output's thumbnail as the report makes it, while its file is still open (memory only)."""
    from scanner.report.html import output_thumbnail

    try:
        found = output_thumbnail({**line, "path": str(path)})
    except Exception:  # noqa: BLE001 - a thumbnail is never worth failing a check for
        return None
    return None if found is None else found[0]
