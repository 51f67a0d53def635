"""People, tokens, sessions and rate limits of ``likeness serve``.

Users live in ``STATE/users.json`` (mode 0600): a name, a role and the
sha256 of their token. The token itself is printed once by ``likeness users
add`` and never stored: a stolen state folder gives no way in. A token is 32
random bytes (``secrets.token_urlsafe``), so one unsalted sha256 is enough
(nothing to guess by brute force); lookups compare every stored hash with
:func:`hmac.compare_digest`, so the time taken says nothing about how close a
wrong token came.

Roles are ordered: a ``viewer`` checks files and reads results; a
``reviewer`` also records decisions; an ``admin`` also manages users.

The running server re-reads the file when it changes on disk, so ``likeness
users remove`` ends that person's live sessions and token at once, without a
restart.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from scanner.errors import ParameterError

ROLES = ("viewer", "reviewer", "admin")
#: What each role may do, by rank: a role may do everything a lower one may.
RANK = {role: i for i, role in enumerate(ROLES)}
#: Prefix of every token, so a leaked one is recognisable in a secret scanner's rules.
TOKEN_PREFIX = "lk_"
USERS_FILE = "users.json"
#: Longest accepted user name (names are shown in the ledger as ``by``).
MAX_NAME = 80


def default_state_dir() -> Path:
    """Where ``serve`` and ``users`` keep their state unless ``--state`` says otherwise:
    ``$LIKENESS_STATE_DIR``, else ``$XDG_STATE_HOME/likeness``, else ``~/.local/state/likeness``."""
    env = os.environ.get("LIKENESS_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "likeness"


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) if needed and make it readable by the owner only (0700).

    Raises
    ------
    ParameterError
        When it cannot be created or is not a directory.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise ParameterError(f"cannot use {path} as a state folder: {exc.strerror}") from None
    if not path.is_dir():
        raise ParameterError(f"{path} is not a folder")
    return path


def hash_token(token: str) -> str:
    """The sha256 (hex) of a token: what is stored and compared, never the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    """A fresh token: :data:`TOKEN_PREFIX` and 32 random bytes, URL-safe base64 (43 characters)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class User:
    """One person who may use the server.

    Parameters
    ----------
    name : shown in the decision ledger as ``by``
    role : ``viewer``, ``reviewer`` or ``admin``
    token_sha256 : the sha256 (hex) of their token
    created : ISO 8601 UTC
    """

    name: str
    role: str
    token_sha256: str
    created: str = ""

    def may(self, role: str) -> bool:
        """Whether this user's role is ``role`` or above."""
        return RANK.get(self.role, -1) >= RANK[role]

    def public(self) -> dict[str, str]:
        """What may be shown of a user (never the token's hash)."""
        return {"name": self.name, "role": self.role, "created": self.created}


def check_name(name: str) -> str:
    """A user name stripped, or :class:`ParameterError` naming what is wrong with it."""
    name = (name or "").strip()
    if not name:
        raise ParameterError("a user needs a name")
    if len(name) > MAX_NAME:
        raise ParameterError(f"a user name has at most {MAX_NAME} characters, given {len(name)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ParameterError(f"a user name may not hold control characters, given {name!r}")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ParameterError(f"--role must be one of {', '.join(ROLES)}, given {role!r}")
    return role


class UserStore:
    """The users of one state folder (``users.json``), read again whenever the file changes.

    Parameters
    ----------
    state_dir : the server's state folder (made 0700 when created)
    """

    def __init__(self, state_dir: str | Path):
        self.dir = private_dir(state_dir)
        self.path = self.dir / USERS_FILE
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, User] = {}

    # --- file -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock over read-modify-write of ``users.json`` (a CLI and a server may race)."""
        fd = os.open(self.dir / ".users.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read(self) -> dict[str, User]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ParameterError(f"cannot read the users file {self.path}: {exc}") from None
        users = {}
        for d in raw.get("users", []) if isinstance(raw, dict) else []:
            try:
                u = User(str(d["name"]), str(d["role"]), str(d["token_sha256"]), str(d.get("created", "")))
            except (KeyError, TypeError):
                continue  # a line edited by hand into nonsense is no user
            if u.role in RANK:
                users[u.name] = u
        return users

    def _write(self, users: dict[str, User]) -> None:
        tmp = self.path.with_name(f".{USERS_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"users": [asdict(u) for u in users.values()]}, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)  # readers see the old file or the new one, never half
        self._stamp = None

    def _fresh(self) -> dict[str, User]:
        """The users as on disk now; re-read only when the file's (inode, size, mtime) changed."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        with self._lock:
            if stamp != self._stamp:
                self._users, self._stamp = self._read(), stamp
            return self._users

    # --- operations ---------------------------------------------------------------------------

    def add(self, name: str, role: str) -> tuple[User, str]:
        """Add a user; returns the user and their token (shown once, never stored).

        Raises
        ------
        ParameterError
            A bad name or role, or a user of that name already exists.
        """
        name, role = check_name(name), check_role(role)
        token = new_token()
        with self._locked():
            users = self._read()
            if name in users:
                raise ParameterError(f"a user named {name!r} exists already (remove them first to "
                                     "give a new token)")
            user = User(name, role, hash_token(token),
                        _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
            users[name] = user
            self._write(users)
        return user, token

    def remove(self, name: str) -> User:
        """Remove a user: their token stops working and a running server ends their sessions.

        Raises
        ------
        ParameterError
            No user of that name.
        """
        with self._locked():
            users = self._read()
            if name not in users:
                raise ParameterError(f"no user named {name!r} (see `likeness users list`)")
            user = users.pop(name)
            self._write(users)
        return user

    def list(self) -> list[User]:
        """Every user, in the order they were added."""
        return list(self._fresh().values())

    def get(self, name: str) -> User | None:
        """The user of that name as on disk now, or ``None`` (removed)."""
        return self._fresh().get(name)

    def by_token(self, token: str) -> User | None:
        """The user whose token this is, or ``None``.

        Every stored hash is compared in constant time, and all of them are
        compared whatever matched, so timing tells nothing.
        """
        if not token or len(token) > 200:
            return None
        digest = hash_token(token)
        found = None
        for user in self._fresh().values():
            if hmac.compare_digest(digest, user.token_sha256):
                found = user
        return found


@dataclass
class Session:
    """A signed-in browser: whose, its CSRF token, and when it ends (``time.monotonic()``)."""

    user: str
    csrf: str
    expires: float


class Sessions:
    """Live browser sessions, in memory (a restart signs everyone out).

    The cookie holds a random 32-byte id; the server keeps only its sha256,
    so a memory dump gives no cookie to replay. A session ends when it
    expires, when its user signs out, or when its user is removed (checked on
    every request against :class:`UserStore`).

    Parameters
    ----------
    lifetime : seconds a session lasts from sign-in
    """

    def __init__(self, lifetime: float = 12 * 3600):
        self.lifetime = lifetime
        self._by_hash: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: str) -> tuple[str, Session]:
        """A new session for ``user``: the cookie value (returned once) and the session."""
        sid = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), time.monotonic() + self.lifetime)
        with self._lock:
            self._expire()
            self._by_hash[hash_token(sid)] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        """The live session of a cookie value, or ``None``."""
        if not sid or len(sid) > 100:
            return None
        with self._lock:
            s = self._by_hash.get(hash_token(sid))
            if s is not None and s.expires < time.monotonic():
                self._by_hash.pop(hash_token(sid), None)
                return None
            return s

    def end(self, sid: str | None) -> None:
        if sid:
            with self._lock:
                self._by_hash.pop(hash_token(sid), None)

    def end_user(self, name: str) -> int:
        """End every session of one user; returns how many there were."""
        with self._lock:
            gone = [k for k, s in self._by_hash.items() if s.user == name]
            for k in gone:
                del self._by_hash[k]
        return len(gone)

    def _expire(self) -> None:
        now = time.monotonic()
        for k in [k for k, s in self._by_hash.items() if s.expires < now]:
            del self._by_hash[k]


class RateLimiter:
    """A token bucket per caller: ``per_minute`` requests a minute on average, bursts of ``burst``.

    Parameters
    ----------
    per_minute : sustained rate; 0 turns limiting off
    burst : requests allowed at once (default: a tenth of a minute's, at least 10)
    """

    def __init__(self, per_minute: float, burst: int | None = None):
        self.rate = per_minute / 60.0
        self.burst = float(burst if burst is not None else max(10, int(per_minute / 10)))
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> float:
        """0 when ``key`` may go now (and spend one), else seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            level, last = self._buckets.get(key, (self.burst, now))
            level = min(self.burst, level + (now - last) * self.rate)
            if level >= 1.0:
                self._buckets[key] = (level - 1.0, now)
                return 0.0
            self._buckets[key] = (level, now)
            return (1.0 - level) / self.rate
