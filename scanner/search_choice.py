"""Which dense search path this machine runs fastest: chosen by a short measurement, cached.

Exact dense search can run through faiss (fp32 through its BLAS), torch fp32, torch
int8 (an integer GEMM picks candidates, re-scored in fp32) or torch bf16 (where the
CPU has bf16 dot products). Which is fastest depends on the CPU (AVX-512, VNNI,
bf16 units), the BLAS faiss bundles, the threads, the index's size and how many
queries come at a time: on an Intel Xeon with VNNI torch int8 ran 6x faster than
faiss; on an AVX2-only AMD faiss wins. So the scanner measures instead of guessing.

:func:`choose` answers for one search shape (rows, dimension, k, queries per call):

- from the cache when this machine measured that shape before;
- otherwise by timing every candidate (:func:`candidates`) on up to
  :data:`CALIBRATION_ROWS` rows (the index's own where given, queries made from
  them) in turns, and keeping the fastest whose recall@k against exact fp32
  search is at least :data:`TARGET_RECALL`; faiss is the fallback, so the choice
  is never slower than faiss by more than the measurement's noise;
- by rule, without measuring, below :data:`MIN_ROWS` rows (such a search costs
  less than measuring it) and off the CPU.

The cache is one JSON file, :func:`cache_path` (``$LIKENESS_CACHE_DIR``, else
``$XDG_CACHE_HOME/likeness``, else ``~/.cache/likeness``; file
``search-choice.json``). Its key holds the CPU model and the flags that matter,
the thread count, the versions of likeness, numpy, faiss and torch, and the
shape (rows rounded up to a power of two, queries per call likewise), so a new
machine, library or thread count measures again. ``likeness bench choice`` lists
it and ``likeness bench choice --clear`` (or deleting the file) clears it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from scanner import blas, search
from scanner.errors import ParameterError

LOG = logging.getLogger(__name__)

#: Below this many rows faiss is used without measuring: the search costs less than a calibration.
MIN_ROWS = 1 << 16
#: Rows a calibration times each path on: at d = 512, 128 MB, more than a last-level cache holds,
#: so a path that streams the rows from memory is timed as it will run on the whole index (a
#: calibration takes 2 to 5 s on two cores).
CALIBRATION_ROWS = 1 << 16
#: Queries a calibration times and checks recall on (whole calls of the shape's batch).
CALIBRATION_QUERIES = 256
#: recall@k a path must keep against exact fp32 search to be chosen.
TARGET_RECALL = 0.99
#: A path this many times slower than the fastest on one call is dropped from a calibration.
SLOWER = 3
#: CPU flags that change which path is fastest (part of the cache key).
_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
_FILE = "search-choice.json"
ENV = "LIKENESS_CACHE_DIR"


@dataclass(frozen=True)
class Choice:
    """A search path: ``backend`` and ``precision`` as :func:`scanner.search.knn` takes them.

    ``source`` says how it was chosen: ``measured`` (now), ``cache`` (measured
    before on this machine), ``rule`` (not measured: small index, or not the
    CPU) or ``user`` (named by ``--backend``/``--precision``). ``timings`` holds,
    for measured choices, each candidate's queries/s and recall.
    """

    backend: str = "faiss"
    precision: str = "fp32"
    source: str = "rule"
    timings: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.backend}:{self.precision}"


def cache_path() -> Path:
    """The cache file of measured choices (see the module docstring)."""
    base = os.environ.get(ENV)
    if base:
        return Path(base) / _FILE
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "likeness" / _FILE


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def candidates() -> list[tuple[str, str]]:
    """The paths a calibration times on this machine's CPU: ``(backend, precision)``, faiss first.

    torch paths only where torch is installed; int8 only on CPUs with int8 dot products
    (VNNI or AMX: elsewhere torch's integer GEMM has no fast kernel, 0.04x faiss on an AVX2
    AMD Zen 3), bf16 only on CPUs with bf16 dot products (elsewhere it is emulated).
    """
    out = [("faiss", "fp32")]
    if search.has_torch():
        out.append(("torch", "fp32"))
        found = blas.cpu()
        flags = found[1] if found else set()
        if {"avx512_vnni", "avx_vnni", "amx_int8"} & flags:
            out.append(("torch", "int8"))
        if {"avx512_bf16", "amx_bf16"} & flags:
            out.append(("torch", "bf16"))
    return out


def _bucket(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def machine_key(n_rows: int, dim: int, k: int, batch: int, threads: int) -> str:
    """The cache key of one search shape on this machine (a JSON string, keys sorted)."""
    from scanner import __version__

    found = blas.cpu()
    flags = sorted(set(_FLAGS) & found[1]) if found else []
    key = {"cpu": blas.cpu_name(), "flags": flags, "threads": threads, "likeness": __version__,
           "numpy": np.__version__, "faiss": _version("faiss-cpu") or _version("faiss-gpu") or _version("faiss"),
           "torch": _version("torch") if search.has_torch() else None,
           "rows": _bucket(n_rows), "dim": dim, "k": k, "batch": min(_bucket(batch), 4096)}
    return json.dumps(key, sort_keys=True)


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, entry: dict[str, Any]) -> None:
    """Add one entry; written to a temporary file and renamed, so readers never see half a file.
    A cache that cannot be written (read-only home) is only logged: the choice still applies."""
    path = cache_path()
    data = _read_cache()
    data[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:
        LOG.warning("search choice not cached (%s): %s", path, exc)


def cached() -> list[dict[str, Any]]:
    """Every cached choice: ``{"key": {...}, "backend", "precision", "timings", "measured_at"}``."""
    return [{"key": json.loads(k), **v} for k, v in sorted(_read_cache().items())]


def clear() -> int:
    """Delete the cache; returns how many choices it held."""
    n = len(_read_cache())
    try:
        cache_path().unlink()
    except FileNotFoundError:
        pass
    return n


def _queries(refs: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Queries near the references, as outputs that resemble some works are:
    ``normalise(r_i + 0.5 r_j)`` for random rows ``i, j`` (float32, L2-normalised)."""
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(refs), n), rng.integers(0, len(refs), n)
    q = refs[i] + 0.5 * refs[j]
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    return q.astype(np.float32)


def measure(refs: np.ndarray, k: int, batch: int, *, paths: list[tuple[str, str]] | None = None,
            repeat: int = 2, seed: int = 0) -> dict[str, dict[str, float]]:
    """Queries/s and recall@k of each path over ``refs``, timed in turns.

    Parameters
    ----------
    refs : float32 ``[shape=(N, d)]``, L2-normalised
    k : int > 0
    batch : int > 0, queries per search call (as the scanner sends them)
    paths : ``(backend, precision)`` pairs; default :func:`candidates`
    repeat : int >= 1, rounds; each path's fastest round counts

    Returns
    -------
    timings : ``{"backend:precision": {"qps": float, "recall": float or None}}``; a path
        :data:`SLOWER` times slower than the fastest on the first call is timed no further:
        its ``qps`` is that call's, its ``recall`` None
    """
    refs = np.ascontiguousarray(refs, dtype=np.float32)
    queries = _queries(refs, max(batch, CALIBRATION_QUERIES // batch * batch), seed)
    truth = search.make_searcher(refs).search(queries, k)[1]
    built, probe = {}, {}
    for backend, precision in paths or candidates():
        s = search.make_searcher(refs, backend=backend, precision=precision,
                                 **({"threads": search.threads()} if backend == "torch" else {}))
        s.search(queries[:batch], k)                             # first touch, thread start
        t0 = time.perf_counter()
        s.search(queries[:batch], k)
        probe[f"{backend}:{precision}"] = batch / (time.perf_counter() - t0)
        built[f"{backend}:{precision}"] = s
    # a path several times slower than the fastest on one call is not timed further
    slow = {name: {"qps": round(qps, 1), "recall": None} for name, qps in probe.items()
            if qps * SLOWER < max(probe.values())}
    built = {name: s for name, s in built.items() if name not in slow}
    best = dict.fromkeys(built, float("inf"))
    found: dict[str, list[np.ndarray]] = {}
    for _ in range(repeat):
        took = dict.fromkeys(built, 0.0)
        found = {name: [] for name in built}
        # in turns, call by call: load from other work falls on every path alike
        for q0 in range(0, len(queries), batch):
            for name, s in built.items():
                t0 = time.perf_counter()
                found[name].append(s.search(queries[q0:q0 + batch], k)[1])
                took[name] += time.perf_counter() - t0
        best = {name: min(best[name], took[name]) for name in built}
    return {**{name: {"qps": round(len(queries) / best[name], 1),
                      "recall": round(search.recall_at_k(np.concatenate(found[name]), truth), 5)}
               for name in built}, **slow}


def pick(timings: dict[str, dict[str, float]]) -> tuple[str, str]:
    """The fastest path of :func:`measure`'s timings whose recall is at least :data:`TARGET_RECALL`
    (faiss when none is)."""
    ok = [(t["qps"], name) for name, t in timings.items() if (t["recall"] or 0) >= TARGET_RECALL]
    name = max(ok)[1] if ok else "faiss:fp32"
    backend, _, precision = name.partition(":")
    return backend, precision


def choose(n_rows: int, dim: int, k: int, batch: int, *, refs: np.ndarray | None = None,
           seed: int = 0) -> Choice:
    """The dense exact search path on this machine's CPU for this shape (a user's named path is
    :class:`Plan`'s business, a GPU's :func:`scanner.search.knn`'s).

    Parameters
    ----------
    n_rows, dim : int, the index's rows and dimension
    k : int, neighbours per query
    batch : int, queries per search call
    refs : float32 ``[shape=(m, dim)]``: rows to calibrate on, the index's own (at most
        :data:`CALIBRATION_ROWS` are used); needed only when the choice is measured

    Returns
    -------
    Choice
    """
    if n_rows < MIN_ROWS or len(candidates()) == 1:
        return Choice(source="rule")
    threads = search.threads()
    key = machine_key(n_rows, dim, k, batch, threads)
    hit = _read_cache().get(key)
    if isinstance(hit, dict) and hit.get("backend") in search.BACKENDS and hit.get("precision") in search.PRECISIONS:
        return Choice(hit["backend"], hit["precision"], "cache", hit.get("timings") or {})
    if refs is None:
        raise ParameterError("a search choice is measured on rows: give refs")
    t0 = time.perf_counter()
    timings = measure(refs[:CALIBRATION_ROWS], k, batch, seed=seed)
    chosen = pick(timings)
    LOG.info("search choice for %d x %d, %d queries a call: %s (measured in %.1f s: %s)", n_rows, dim, batch,
             ":".join(chosen), time.perf_counter() - t0, timings)
    _write_cache(key, {"backend": chosen[0], "precision": chosen[1], "timings": timings,
                       "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return Choice(*chosen, "measured", timings)


def describe(choice: Choice) -> dict[str, Any]:
    """A choice as JSON (``run.json``, ``bench`` rows)."""
    return asdict(choice)


_faiss_only = False


def faiss_only() -> None:
    """From now on this process searches with faiss and measures nothing: a forked decode
    worker that judges searches on one thread, and a torch copy of the rows per worker would
    multiply the index's memory by the workers."""
    global _faiss_only
    _faiss_only = True


@dataclass
class Plan:
    """How a scan runs its dense searches: ``--device``, ``--backend`` and ``--precision``.

    ``backend="auto"`` (default) searches a large flat dense index on the CPU by the
    path :func:`choose` finds fastest here, for the number of queries each call
    brings; everything else (binary codes, inverted files, small indexes, a GPU)
    goes to :func:`scanner.search.knn` as it is. ``used`` records each choice made,
    for ``run.json``.
    """

    device: str = "auto"
    backend: str = "auto"
    precision: str | None = None
    used: dict[str, dict[str, Any]] = field(default_factory=dict)
    _memo: dict[tuple[int, int, int], Choice] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.backend != "auto" and self.backend not in search.BACKENDS:
            raise ParameterError(f"--backend must be auto or one of {search.BACKENDS}, given {self.backend!r}")
        if self.precision is not None and self.precision not in search.PRECISIONS:
            raise ParameterError(f"--precision must be one of {search.PRECISIONS}, given {self.precision!r}")
        if self.backend in ("auto", "faiss", "numpy") and self.precision not in (None, "fp32"):
            raise ParameterError(f"--precision {self.precision} is offered by --backend torch only")

    def choice(self, index: Any, batch: int, k: int) -> Choice:
        """The path for ``index`` (a faiss index), chosen once per index and ``k`` with the size of
        the first batch (a scan's last, smaller batch does not measure again)."""
        if self.backend != "auto":
            return Choice(self.backend, self.precision or "fp32", "user")
        import faiss

        key = (id(index), index.ntotal, k)
        if key in self._memo:
            return self._memo[key]
        c = Choice()
        if type(index) in (faiss.IndexFlatIP, faiss.IndexFlat) and not _faiss_only \
                and not search.may_use_gpu(self.device) and batch >= search.SMALL_BATCH:
            c = choose(index.ntotal, index.d, k, batch, refs=search.vectors_of(index))  # a view: no copy
        if c.source != "rule":
            self.used[f"{index.ntotal}x{index.d}"] = {"batch": batch, **describe(c)}
        self._memo[key] = c
        return c

    def knn(self, index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """:func:`scanner.search.knn` by this plan's path (arguments and results as there)."""
        c = self.choice(index, len(queries), k)
        return search.knn(index, queries, k, backend=c.backend, device=self.device, precision=c.precision)
