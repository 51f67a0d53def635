"""What ``likeness bench search`` runs: search throughput against the machine's own limits.

Every figure is measured in the same process as the limit it is compared with:

- dense (``kind="dense"``): achieved GFLOP/s of the search, ``2·N·Q·D / t``, against
  the GFLOP/s of one fixed large square GEMM in the compute precision (4096³ on
  the CPU, 8192³ on CUDA), which is not the benchmark's own block shape;
- binary (``kind="binary"``): GB/s of codes scanned, ``N·Q·bytes / t``, against the
  memory read bandwidth of a large in-process reduction. One query must read
  every code once, so for ``Q = 1`` this is the bound; a batch reuses codes from
  cache and is then limited by popcount throughput (ratios above 1 are possible);
- postings (``kind="postings"``): fingerprint lookups through
  :func:`scanner.match.postings.lookup`, the scan's own code path, over a sorted
  table of ``N`` uint32 keys. GB/s of the bytes every lookup must move, probe
  keys in (4 B each) and ``(query, row)`` int64 pairs out (16 B each), against
  the same bandwidth.

For ``binary`` and ``postings`` the ``gflops`` and ``peak_gflops`` keys carry those
GB/s figures (``unit`` says which), so every result has the same keys; ``load1``
is the 1-minute load average when the run ended (the machine may be shared).
int8 on the CPU counts integer operations the same way (``2·N·Q·D``) against an
int8 ``torch._int_mm`` of the same size. ``build_s`` is the time to build the
searcher from the fp32 rows (a copy, quantisation, an IVF or an HNSW graph) and
``index_mb`` how much the process's resident memory grew meanwhile (what the
searcher holds); HNSW rows (:class:`HnswSearcher`, the ``ann`` extra) have no
``gflops``: the distances a graph walk computes are not counted.
:func:`bench_compare` runs several paths on the same data, timed in turns.

Recall@k is measured against exact fp32 search (faiss flat on the CPU, plain
fp32 torch on CUDA) on the first ``recall_queries`` queries.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from typing import Any, Callable

import numpy as np

from scanner import blas, search, search_choice
from scanner.search import has_torch  # noqa: F401  (bench.has_torch, as the CLI asks it)
from scanner.errors import ParameterError

LOG = logging.getLogger(__name__)

#: The JSON keys of every result, in order.
KEYS = ("qps", "gflops", "peak_gflops", "ratio", "recall", "rss_mb", "backend", "precision",
        "n_refs", "dim", "n_queries", "k", "kind", "unit", "load1", "index", "p50_ms", "build_s", "index_mb", "blas", "chosen")
KINDS = ("dense", "binary", "postings")


# --------------------------------------------------------------------------- data


class GaussianMixture:
    """Anisotropic Gaussian mixture on the unit sphere, a stand-in for embeddings.

    Real embeddings are neither uniform noise (no structure: approximate indexes
    look worse than they are) nor a few tight clusters (too easy). This generator
    draws ``n_clusters`` centres and per-cluster offsets from one anisotropic
    Gaussian whose variance along a random orthonormal basis falls off as a power
    law, ``λ_i ∝ (i + 1)^-alpha`` (a few strong directions, a long tail, as in CLIP
    embeddings), then L2-normalises. Each cluster has its own spread, log-normal
    around ``spread`` (the within-cluster to between-centre standard deviation
    ratio), and cluster weights are Dirichlet(1): some big, some small clusters.

    Parameters
    ----------
    dim : int > 0
    n_clusters : int > 0
    alpha : float >= 0, power-law decay of the variance spectrum
    spread : float > 0, within-cluster / between-centre standard deviation
    seed : int
    """

    def __init__(self, dim: int, *, n_clusters: int = 256, alpha: float = 0.7, spread: float = 0.8,
                 seed: int = 0):
        if dim < 1 or n_clusters < 1 or spread <= 0 or alpha < 0:
            raise ParameterError(f"bad mixture: dim={dim}, n_clusters={n_clusters}, spread={spread}, "
                                 f"alpha={alpha}")
        rng = np.random.default_rng(seed)
        self.dim = dim
        basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        sd = (np.arange(1, dim + 1) ** (-alpha / 2)).astype(np.float32)
        self.transform = (sd[:, None] * basis.T).astype(np.float32)     # z @ transform ~ N(0, B Λ Bᵀ)
        self.centres = rng.standard_normal((n_clusters, dim), dtype=np.float32) @ self.transform
        self.spreads = (spread * rng.lognormal(0.0, 0.3, n_clusters)).astype(np.float32)
        self.weights = rng.dirichlet(np.ones(n_clusters))

    def sample(self, n: int, *, seed: int = 1, block: int = 1 << 16) -> np.ndarray:
        """``n`` L2-normalised float32 vectors ``[shape=(n, dim)]``."""
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), np.float32)
        for s in range(0, n, block):
            m = min(block, n - s)
            c = rng.choice(len(self.weights), m, p=self.weights)
            z = rng.standard_normal((m, self.dim), dtype=np.float32)
            x = self.centres[c] + self.spreads[c, None] * (z @ self.transform)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[s:s + m] = x
        return out


def synthetic_codes(n: int, nbits: int, *, seed: int = 0, source_dim: int = 32, pool: int = 1 << 18) -> np.ndarray:
    """Packed binary codes with neighbour structure: SimHash of mixture vectors.

    Each code is the sign pattern of a ``source_dim``-dimensional mixture vector
    against ``nbits`` random hyperplanes, so nearby vectors share most bits (as
    perceptual hashes of near-copies do) and Hamming top-k is meaningful. Past
    ``pool`` codes, the rest are pool codes with ``nbits / 16`` random bits
    flipped (near-copies of near-copies), which keeps 10M codes to seconds.

    Returns
    -------
    codes : uint8 ``[shape=(n, nbits // 8)]``
    """
    if nbits % 8 or nbits < 8:
        raise ParameterError(f"nbits must be a positive multiple of 8, given nbits={nbits}")
    mix = GaussianMixture(source_dim, n_clusters=1024, seed=seed)
    planes = np.random.default_rng(seed + 7).standard_normal((source_dim, nbits)).astype(np.float32)
    out = np.empty((n, nbits // 8), np.uint8)
    block = 1 << 18
    head = min(n, pool)
    for i, s in enumerate(range(0, head, block)):
        x = mix.sample(min(block, head - s), seed=seed * 1000 + i + 1)
        out[s:s + len(x)] = np.packbits(x @ planes > 0, axis=1)
    rng = np.random.default_rng(seed + 11)
    for s in range(head, n, block):
        m = min(block, n - s)
        rows = out[s:s + m]
        rows[:] = out[rng.integers(0, head, m)]
        for _ in range(max(1, nbits // 16)):
            bit = rng.integers(0, nbits, m)
            rows[np.arange(m), bit >> 3] ^= (128 >> (bit & 7)).astype(np.uint8)
    return out


def synthetic_postings(n: int, *, seed: int = 0, sigma: float = 1.5) -> Any:
    """A fingerprint postings table of ``n`` rows over the real key space.

    Keys are drawn from the :mod:`scanner.features.fingerprint` key space with
    log-normal popularity (``sigma``), so a few keys are common (some past
    :data:`scanner.match.postings.MAX_POSTINGS_PER_KEY`, stop words) and most are rare,
    as in real indexes; times, spans and pitches are zeros (lookups never read them).

    Returns
    -------
    table : :class:`scanner.match.postings.PostingsTable`, sorted by key
    weights : float64 ``[shape=(n_keys,)]``, each key's probability (for drawing queries)
    """
    from scanner.features.fingerprint import SIZES
    from scanner.match.postings import PostingsTable

    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, sigma, int(np.prod(SIZES)))
    weights /= weights.sum()
    # inverse-CDF draws in blocks: rng.choice(p=...) would hold n float64 uniforms at once
    cdf = np.cumsum(weights)
    keys = np.empty(n, np.uint32)
    for s in range(0, n, 1 << 20):
        m = min(1 << 20, n - s)
        keys[s:s + m] = np.minimum(np.searchsorted(cdf, rng.random(m)), len(cdf) - 1)
    keys.sort()
    zeros = np.zeros(n, np.float32)
    return PostingsTable(keys, np.zeros(n, np.int32), zeros, zeros, zeros, np.zeros(n, np.uint16)), weights


def synthetic_hashes(n: int, weights: np.ndarray, *, seed: int = 1, near: float = 0.2) -> np.ndarray:
    """Query hashes with keys drawn like the table's, each field near a bin edge with probability ``near``.

    Returns
    -------
    hashes : ``[shape=(n,)]`` of :data:`scanner.features.fingerprint.HASH_DTYPE`
    """
    from scanner.features.fingerprint import HASH_DTYPE, SIZES

    rng = np.random.default_rng(seed)
    nf = len(SIZES)
    out = np.zeros(n, HASH_DTYPE)
    out["key"] = np.minimum(np.searchsorted(np.cumsum(weights), rng.random(n)), len(weights) - 1)
    close = rng.random((n, nf)) < near
    up = rng.random((n, nf)) < 0.5
    bits = 1 << np.arange(2 * nf)
    out["near"] = (np.concatenate([close, close & up], axis=1) * bits).sum(1)
    return out


# --------------------------------------------------------------------------- limits


def _no_sync() -> None:
    """Nothing to wait for: the CPU's work is done when the call returns."""


def _best_time(fn: Callable[[], Any], repeat: int, sync: Callable[[], None] = _no_sync) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


#: A CPU's peak is measured on the largest square product (of 4096, 2048, 1024) predicted to take at
#: most this long (seconds) from a first product of 1024: a BLAS running a kernel far older than
#: the CPU (a misdetected core type) took 5 s a 4096 product, 20 s for the measurement alone.
PEAK_SECONDS = 2.0


def _peak_size(make: Callable[[int], Callable[[], Any]], size: int) -> int:
    """``size``, or a half of it down to 1024, whose product ``make(n)()`` is predicted (n³ from
    one product of 1024) to take at most :data:`PEAK_SECONDS`."""
    if size <= 1024:
        return size
    t0 = time.perf_counter()
    make(1024)()
    t = time.perf_counter() - t0
    while size > 1024 and t * (size / 1024) ** 3 > PEAK_SECONDS:
        size //= 2
    return size


def gemm_peak(precision: str = "fp32", device: str = "cpu", *, size: int | None = None,
              repeat: int = 3) -> float | None:
    """GFLOP/s of one square ``size³`` GEMM in the compute precision of ``precision``.

    On the CPU without ``size``: 4096, or smaller where a product that large would take
    longer than :data:`PEAK_SECONDS` (:func:`_peak_size`).

    Parameters
    ----------
    precision : {"fp32", "bf16", "fp16", "int8"}; int8 is an int8 x int8 -> int32
        ``torch._int_mm`` on the CPU (the kernel the int8 search runs; GOP/s) and fp16 on
        CUDA (int8 rows widen to fp16 there), so its peak is that GEMM's
    device : {"cpu", "cuda"}
    size : int, default 4096 on the CPU, 8192 on CUDA
    repeat : int, timed runs after a warm-up (the best counts)

    Returns
    -------
    gflops : float, or ``None`` for a precision no library installed here multiplies in
        (without torch only numpy's fp32 GEMM is measured, on the CPU)
    """
    device = search.resolve_device(device)
    cuda = device.startswith("cuda")
    adapt = size is None and not cuda
    size = size or (8192 if cuda else 4096)
    flops = 0.0
    if has_torch():
        import torch

        _, dtype = search._torch_dtype(precision, device)

        def torch_product(n: int) -> Callable[[], Any]:
            if dtype == torch.int8:
                a = torch.randint(-127, 128, (n, n), dtype=dtype, device=device)
                b = torch.randint(-127, 128, (n, n), dtype=dtype, device=device)
                return lambda: torch._int_mm(a, b.T)   # the search's layout: rows x codes.T
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            return lambda: a @ b

        sync = torch.cuda.synchronize if cuda else _no_sync
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32, not TF32
        try:
            n = _peak_size(torch_product, size) if adapt else size
            flops = 2 * n**3 / _best_time(torch_product(n), repeat, sync) / 1e9
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    elif precision != "fp32":
        return None
    if not cuda and precision == "fp32":
        # faiss multiplies with its own BLAS; count the faster of the two as the peak
        def numpy_product(n: int) -> Callable[[], Any]:
            x = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
            return lambda: x @ x

        n = _peak_size(numpy_product, size) if adapt else size
        flops = max(flops, 2 * n**3 / _best_time(numpy_product(n), repeat) / 1e9)
    return flops


def memory_bandwidth(device: str = "cpu", *, nbytes: int = 1 << 30, repeat: int = 3) -> float:
    """Read bandwidth in GB/s: a sum over ``nbytes`` of int64, best of ``repeat``."""
    device = search.resolve_device(device)
    if device.startswith("cuda"):
        import torch

        x = torch.ones(nbytes // 8, dtype=torch.int64, device=device)
        return nbytes / _best_time(lambda: x.sum(), repeat, torch.cuda.synchronize) / 1e9
    x = np.ones(nbytes // 8, np.int64)
    return nbytes / _best_time(lambda: x.sum(), repeat) / 1e9


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load1() -> float:
    """The 1-minute load average: how busy the (possibly shared) machine was."""
    return round(os.getloadavg()[0], 2)


# --------------------------------------------------------------------------- search


def exact_knn(refs: np.ndarray, queries: np.ndarray, k: int, *, metric: str = "ip",
              device: str = "cpu") -> np.ndarray:
    """Exact fp32 (or Hamming) neighbours, the reference for recall: ``I [shape=(n, k)]``."""
    device = search.resolve_device(device)
    if device.startswith("cuda") and metric == "ip":
        return plain_torch_knn(refs, queries, k, device=device)[1]
    return search.make_searcher(refs, metric=metric, backend=_exact_backend()).search(queries, k)[1]


def _exact_backend() -> str:
    """faiss flat when installed (exact and fast), else numpy."""
    try:
        import faiss  # noqa: F401
        return "faiss"
    except ImportError:
        return "numpy"


def plain_torch_knn(refs: np.ndarray, queries: np.ndarray, k: int, *, device: str = "cuda",
                    query_block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """The naive baseline: fp32 ``q @ R.T`` (no TF32) then ``topk`` on the whole row.

    Returns
    -------
    D : float32 ``[shape=(n, k)]``, I : int64 ``[shape=(n, k)]``
    """
    import torch

    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode():
            R = torch.from_numpy(np.ascontiguousarray(refs, np.float32)).to(device)
            out_d, out_i = [], []
            for s in range(0, len(queries), query_block):
                q = torch.from_numpy(np.ascontiguousarray(queries[s:s + query_block], np.float32)).to(device)
                v, i = (q @ R.T).topk(k, dim=1)
                out_d.append(v.cpu().numpy())
                out_i.append(i.cpu().numpy())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return np.concatenate(out_d), np.concatenate(out_i)


#: Graph (HNSW) libraries ``bench search`` compares when installed (the ``ann`` extra).
ANN_BACKENDS = ("hnswlib", "usearch")
#: HNSW graph parameters used for both libraries: links per node, build beam width.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 128
#: Recall@10 the search beam (``ef``) of a graph index is tuned to, as IVF's nprobe is.
ANN_TARGET_RECALL = 0.95


def current_rss_mb() -> float:
    """Resident set size of this process now, in MiB (``/proc/self/statm``; 0 where absent)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


class HnswSearcher(search.Searcher):
    """An HNSW graph from ``hnswlib`` or ``usearch`` behind the :class:`~scanner.search.Searcher` interface.

    For comparison in ``bench search`` only (the ``ann`` extra): an HNSW graph cannot
    remove a vector, so the scanner's own indexes are flat or IVF. Both libraries get
    the same graph (``M`` links per node, beam ``ef_construction`` while building);
    ``ef`` (the search beam) is set afterwards, see :func:`tune_ef`.

    Parameters
    ----------
    refs : float32 ``[shape=(N, d)]``, L2-normalised
    library : {"hnswlib", "usearch"}
    precision : {"fp32", "bf16", "fp16", "int8"}; usearch stores the vectors in it, hnswlib
        only in fp32
    M, ef_construction : int > 0
    threads : int or None, build and search threads (default: the CPUs this process may use)
    """

    def __init__(self, refs: np.ndarray, *, library: str = "hnswlib", precision: str = "fp32", M: int = HNSW_M,
                 ef_construction: int = HNSW_EF_CONSTRUCTION, threads: int | None = None):
        if library not in ANN_BACKENDS:
            raise ParameterError(f"library must be one of {ANN_BACKENDS}, given library={library!r}")
        dtypes = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "i8"}
        if precision not in dtypes or (library == "hnswlib" and precision != "fp32"):
            raise ParameterError(f"{library} stores fp32{', bf16, fp16 or int8' if library == 'usearch' else ''} "
                                 f"vectors, given precision={precision!r}")
        refs = search._check_refs(refs, "ip")
        self.library, self.M, self.ef_construction = library, M, ef_construction
        self.threads = threads or max(1, len(os.sched_getaffinity(0)))
        self.ntotal, self.dim = refs.shape
        self.ef = 0
        ids = np.arange(self.ntotal, dtype=np.int64)
        if library == "hnswlib":
            try:
                import hnswlib
            except ImportError:
                raise ParameterError("hnswlib is not installed (pip install 'likeness-scanner[ann]')") from None
            self.index = hnswlib.Index(space="ip", dim=self.dim)
            self.index.init_index(max_elements=max(1, self.ntotal), ef_construction=ef_construction, M=M)
            self.index.set_num_threads(self.threads)
            self.index.add_items(refs, ids)
            self.nbytes = self.ntotal * (4 * self.dim + 8 * M + 16)     # vectors + level-0 links + labels
        else:
            try:
                from usearch.index import Index
            except ImportError:
                raise ParameterError("usearch is not installed (pip install 'likeness-scanner[ann]')") from None
            self.index = Index(ndim=self.dim, metric="ip", dtype=dtypes[precision], connectivity=M,
                               expansion_add=ef_construction)
            self.index.add(ids, refs, threads=self.threads)
            self.nbytes = int(self.index.memory_usage)
        self.set_ef(64)

    def set_ef(self, ef: int) -> None:
        """Search beam width: more finds more true neighbours, slower."""
        self.ef = int(ef)
        if self.library == "hnswlib":
            self.index.set_ef(self.ef)
        else:
            self.index.expansion_search = self.ef

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.library == "hnswlib":
            if self.ef < k:
                self.index.set_ef(k)                # hnswlib refuses a beam narrower than k
            labels, dist = self.index.knn_query(queries, k=k, num_threads=self.threads)
            self.index.set_ef(self.ef)
            return (1.0 - dist).astype(np.float32), labels.astype(np.int64)
        found = self.index.search(queries, k, threads=self.threads)
        keys = np.asarray(found.keys, np.int64).reshape(len(queries), -1)
        dist = np.asarray(found.distances, np.float32).reshape(len(queries), -1)
        ok = np.arange(keys.shape[1]) < np.asarray(found.counts).reshape(-1, 1)
        return np.where(ok, 1.0 - dist, -np.finfo(np.float32).max).astype(np.float32), np.where(ok, keys, -1)


def tune_ef(searcher: HnswSearcher, queries: np.ndarray, truth: np.ndarray, *,
            target: float = ANN_TARGET_RECALL) -> tuple[int, float]:
    """Smallest power-of-two ``ef`` (16 to 1024) whose recall@k on ``queries`` reaches ``target``.

    Returns
    -------
    ef : int, set on ``searcher``
    recall : float, measured at that ``ef``
    """
    k = truth.shape[1]
    ef, recall = 16, 0.0
    while True:
        searcher.set_ef(ef)
        recall = search.recall_at_k(searcher.search(queries, k)[1], truth)
        if recall >= target or ef >= 1024:
            return ef, recall
        ef *= 2


def _dataset(kind: str, n_refs: int, dim: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if kind == "binary":
        codes = synthetic_codes(n_refs + n_queries, dim, seed=seed)
        return codes[:n_refs], codes[n_refs:]
    mix = GaussianMixture(dim, seed=seed)
    return mix.sample(n_refs, seed=seed + 1), mix.sample(n_queries, seed=seed + 2)


def _tuning_queries(kind: str, dim: int, seed: int, n: int = 200) -> np.ndarray:
    """Queries that tune a graph's ``ef``: fresh draws, not the queries whose recall is reported."""
    return GaussianMixture(dim, seed=seed).sample(n, seed=seed + 3)


def _parse_entry(entry: str, default_precision: str) -> tuple[str, str, str]:
    """``backend[:precision]`` (``faiss-ivf`` for faiss's IVF) → (backend, precision, index)."""
    backend, _, precision = entry.strip().partition(":")
    index = "flat"
    if backend == "faiss-ivf":
        backend, index = "faiss", "ivf"
    return backend, precision or default_precision, index


def _check_sizes(**sizes: int) -> None:
    for name, v in sizes.items():
        if v < 1:
            raise ParameterError(f"{name} must be >= 1, given {name}={v}")


def bench_search(*, n_refs: int, dim: int = 512, n_queries: int = 10000, k: int = 10, backend: str = "auto",
                 precision: str = "fp32", device: str = "cpu", kind: str = "dense", recall_queries: int = 1000,
                 repeat: int = 1, seed: int = 0, measure_peak: bool = True, index: str = "flat",
                 single: bool = False, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time one batched top-k search and compare it with the machine's limit.

    Parameters
    ----------
    n_refs, dim, n_queries, k : int > 0; for ``kind="binary"`` ``dim`` is bits
        (a multiple of 8, e.g. 64 or 256); for ``kind="postings"`` ``n_refs`` is
        postings, ``n_queries`` query hashes, and ``dim`` and ``k`` are unused
        (see :func:`bench_postings`)
    backend : {"faiss", "torch", "numpy", "torch-plain", "hnswlib", "usearch", "auto"};
        ``torch-plain`` is the naive fp32 ``matmul`` + ``topk`` baseline
        (:func:`plain_torch_knn`); ``hnswlib`` and ``usearch`` build an HNSW graph
        (:class:`HnswSearcher`, the ``ann`` extra) whose ``ef`` is tuned to recall@10
        >= 0.95 on separate queries; ``auto`` is the scanner's own choice for dense search
        (:func:`scanner.search_choice.choose`: measured once on this machine for this shape,
        then cached; its row has ``chosen`` true), faiss for binary, numpy for postings
    precision : {"fp32", "bf16", "fp16", "int8"}
    device : {"cpu", "cuda", "auto"}
    kind : {"dense", "binary", "postings"}
    recall_queries : int, queries whose recall is measured against exact search
        (0 skips it; recall is then ``None``)
    repeat : int >= 1, timed runs; the fastest counts
    seed : int, data seed
    measure_peak : bool, also time the square GEMM / bandwidth (else peak is None)
    index : {"flat", "ivf", "auto"}, faiss dense only: the index
        :func:`scanner.search.build_faiss_index` builds (``ivf``: nprobe tuned
        to recall@10 >= 0.95, as ``likeness index build`` does past its size threshold)
    single : bool, latency mode: every query searched on its own (a one-asset
        ``check``); ``p50_ms`` is the median per-query time and ``qps`` its inverse
    options : dict, searcher options (``query_block``, ``ref_block``, ...)

    Returns
    -------
    result : dict with exactly :data:`KEYS`
    """
    if kind not in KINDS:
        raise ParameterError(f"kind must be one of {KINDS}, given kind={kind!r}")
    _check_sizes(n_refs=n_refs, dim=dim, n_queries=n_queries, k=k, repeat=repeat)
    if backend == "auto" and kind != "dense":
        backend = "numpy" if kind == "postings" else "faiss"
    elif backend == "auto" and (index != "flat" or precision != "fp32" or search.resolve_device(device) != "cpu"):
        # the choice is measured for flat fp32-exact search on the CPU; elsewhere the scanner's path is fixed
        backend = "faiss" if index != "flat" else "torch"
    if kind == "postings":
        if precision != "fp32" or search.resolve_device(device) != "cpu":
            raise ParameterError("kind='postings' is a CPU lookup of uint32 keys: use --precision fp32 --device cpu")
        return bench_postings(n_postings=n_refs, n_hashes=n_queries, backend=backend, repeat=repeat, seed=seed,
                              recall_hashes=min(recall_queries, n_queries), measure_peak=measure_peak)
    if backend.startswith("torch") and not has_torch():
        raise ParameterError(f"backend={backend!r} needs torch, which is not installed "
                             "(pip install 'likeness-scanner[clip]'); faiss and numpy need nothing more")
    return bench_compare([f"{backend}:{precision}"], n_refs=n_refs, dim=dim, n_queries=n_queries, k=k,
                         device=device, kind=kind, recall_queries=recall_queries, repeat=repeat, seed=seed,
                         measure_peak=measure_peak, index=index, single=single, options=options)[0]


def bench_compare(entries: list[str], *, n_refs: int, dim: int = 512, n_queries: int = 10000, k: int = 10,
                  device: str = "cpu", kind: str = "dense", recall_queries: int = 1000, repeat: int = 1,
                  seed: int = 0, measure_peak: bool = True, index: str = "flat", single: bool = False,
                  options: dict[str, Any] | None = None, turns: int | None = 2048,
                  skipped: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Several search paths on the same data, timed in turns, one row each.

    The references and queries are generated once and every path is built; then the
    paths take turns on slices of ``turns`` queries (path 1 on slice 1, path 2 on
    slice 1, ..., path 1 on slice 2, ...), so load from other work on a shared machine
    falls on all of them alike; each path's time is the sum over its slices, the
    fastest of ``repeat`` such rounds. Recall is against one exact search of the
    first ``recall_queries`` queries, and each precision's peak is measured once.

    Parameters
    ----------
    entries : list of ``backend[:precision]``, e.g. ``["faiss", "torch:int8", "hnswlib",
        "usearch:int8"]``; ``faiss-ivf`` is faiss's IVF, ``auto`` the scanner's own choice
        (see :func:`bench_search` for the backends). Dense flat search on the CPU also
        asks :func:`scanner.search_choice.choose` (its cache, or a short measurement) which
        path the scanner would take for this shape: that row has ``chosen`` true. ``hnswlib`` and ``usearch`` entries are left out when the library is
        not installed, with a line through ``skipped``
    turns : int or None, queries per slice in batch mode (None: all queries in one call;
        every backend blocks queries by 1024 to 4096 itself, so slices of 2048 keep its shape)
    skipped : callable or None, told ``"<backend>: <reason>"`` for each path left out
    (other parameters as :func:`bench_search`; ``index`` applies to every entry, so a list
    mixing faiss's IVF with other backends names it as ``faiss-ivf`` instead)

    Returns
    -------
    rows : list of dicts with exactly :data:`KEYS`, in the order of ``entries``
    """
    if kind not in ("dense", "binary"):
        raise ParameterError(f"kind must be dense or binary here, given kind={kind!r}")
    _check_sizes(n_refs=n_refs, dim=dim, n_queries=n_queries, k=k, repeat=repeat)
    device = search.resolve_device(device)
    cuda = device.startswith("cuda")
    metric = "hamming" if kind == "binary" else "ip"
    paths = []
    for entry in entries:
        backend, precision, path_index = _parse_entry(entry, "fp32")
        if path_index == "flat":
            path_index = index
        if backend == "auto" and (kind != "dense" or path_index != "flat"):
            raise ParameterError("backend 'auto' is the scanner's choice for flat dense search only")
        if backend in search.PRECISIONS or precision not in search.PRECISIONS:
            raise ParameterError(f"an entry is backend[:precision], given {entry!r}")
        if path_index != "flat" and (backend != "faiss" or kind != "dense"):
            raise ParameterError(f"index={path_index!r} is for --backend faiss --kind dense only")
        if backend in ANN_BACKENDS:
            if kind != "dense":
                raise ParameterError(f"{backend} searches dense vectors only")
            try:
                __import__(backend)
            except ImportError:
                if skipped is not None:
                    skipped(f"{backend}: not installed (pip install 'likeness-scanner[ann]'), left out")
                continue
        elif backend.startswith("torch") and not has_torch():
            if skipped is not None:
                skipped(f"{backend}:{precision}: torch is not installed (pip install 'likeness-scanner[clip]'), "
                        "left out")
            continue
        elif backend == "torch-plain" and (precision != "fp32" or kind != "dense"):
            raise ParameterError("backend='torch-plain' is the dense fp32 baseline only")
        elif backend not in ANN_BACKENDS + ("torch-plain", "auto") + search.BACKENDS:
            raise ParameterError(f"backend must be one of {search.BACKENDS + ('torch-plain',) + ANN_BACKENDS}, "
                                 f"given backend={backend!r}")
        paths.append((backend, precision, path_index))
    LOG.info("bench: %s %s on %s, %d refs x %d, %d queries, k=%d", kind, entries, device, n_refs, dim,
             n_queries, k)
    refs, queries = _dataset(kind, n_refs, dim, n_queries, seed)
    choice = None
    if kind == "dense" and not cuda and (index == "flat" or any(p[0] == "auto" for p in paths)):
        # what the scanner would search this shape with, in calls of the slices timed here
        choice = search_choice.choose(n_refs, dim, k, min(turns or n_queries, n_queries), refs=refs, seed=seed)
        paths = [(choice.backend, choice.precision, "flat") if p[0] == "auto" else p for p in paths]
    m = min(recall_queries, n_queries)
    truth = None
    if m and kind == "dense":
        truth = exact_knn(refs, queries[:m], k, metric=metric, device=device)

    built = []
    for backend, precision, path_index in paths:
        # libraries load before the clock and the memory count start: index_mb is the index's own
        __import__("torch" if backend.startswith("torch") else backend)
        rss0, t0 = current_rss_mb(), time.perf_counter()
        label, visited, searcher = path_index, 1.0, None
        if backend == "torch-plain":
            run = lambda q: plain_torch_knn(refs, q, k, device=device)  # noqa: E731
        else:
            if backend in ANN_BACKENDS:
                searcher = HnswSearcher(refs, library=backend, precision=precision, **(options or {}))
            elif path_index != "flat":
                ivf, params = search.build_faiss_index(refs, "ip", kind=path_index, seed=seed)
                searcher = search.FaissSearcher(ivf, **(options or {}))
                label = f"ivf{ivf.nlist},nprobe{ivf.nprobe}"
                # an inverted file computes only the lists it probes: count those flops, not N's
                visited = searcher.visited / n_refs
            else:
                searcher = search.make_searcher(refs, metric=metric, backend=backend, device=device,
                                                precision=precision, **(options or {}))
            run = lambda q, s=searcher: s.search(q, k)  # noqa: E731
        build_s = time.perf_counter() - t0
        if isinstance(searcher, HnswSearcher):
            tq = _tuning_queries(kind, dim, seed)
            ef, tuned = tune_ef(searcher, tq, exact_knn(refs, tq, k, metric=metric, device=device))
            label = f"hnsw M{searcher.M} efc{searcher.ef_construction} ef{ef}"
            visited = None                                   # distances computed: not known
            LOG.info("bench: %s ef %d reaches recall %.3f on tuning queries", backend, ef, tuned)
        built.append({"run": run, "searcher": searcher, "label": label, "visited": visited,
                      "build_s": build_s, "index_mb": current_rss_mb() - rss0})

    sync: Callable[[], None] = _no_sync
    if cuda:
        import torch
        sync = torch.cuda.synchronize
    for b in built:                                          # warm-up: first-touch, autotune, caches
        b["run"](queries[:1] if single else queries[:min(len(queries), 64)])
        b.update(best=float("inf"), found=None, lat=[])
    # the paths take turns slice by slice (one query at a time with ``single``), so a load
    # that comes and goes on a shared machine falls on every path alike; a path's time is
    # the sum over its slices, the fastest of ``repeat`` rounds (single: the median latency)
    step = 1 if single else max(1, turns or n_queries)
    for _ in range(repeat):
        for b in built:
            b["took"], b["parts"] = 0.0, []
        for s0 in range(0, n_queries, step):
            for b in built:
                sync()
                t0 = time.perf_counter()
                b["parts"].append(b["run"](queries[s0:s0 + step]))
                sync()
                dt = time.perf_counter() - t0
                b["took"] += dt
                b["lat"].append(dt)
        for b in built:
            took = float(np.median(b["lat"])) * n_queries if single else b["took"]
            if took < b["best"] or single:
                b["best"] = took
                b["found"] = (np.concatenate([p[0] for p in b["parts"]]), np.concatenate([p[1] for p in b["parts"]]))

    peaks: dict[str, float | None] = {}
    rows = []
    for (backend, precision, _), b in zip(paths, built):
        best, found = b["best"], b["found"]
        recall = None
        if m and kind == "binary":
            # Hamming distances tie a lot: a found row counts when it is as near as the k-th true one
            exact = b["searcher"] if backend == "faiss" else search.make_searcher(refs, metric="hamming",
                                                                                   backend=_exact_backend())
            td, _ = exact.search(queries[:m], k)
            recall = round(float((found[0][:m] <= td[:, -1:]).mean()), 5)
        elif m:
            recall = round(search.recall_at_k(found[1][:m], truth), 5)
        if kind == "binary":
            achieved = n_refs * n_queries * (dim // 8) / best / 1e9          # GB/s of codes scanned
            key = "bandwidth"
        else:
            achieved = None if b["visited"] is None else 2.0 * n_refs * n_queries * dim / best / 1e9 * b["visited"]
            key = precision if backend in ("faiss", "torch", "numpy", "torch-plain") else None
        if measure_peak and key is not None and key not in peaks:
            peaks[key] = memory_bandwidth(device) if key == "bandwidth" else gemm_peak(precision, device)
        rows.append(_result(qps=n_queries / best, achieved=achieved, peak=peaks.get(key), recall=recall,
                            backend=backend, precision=precision, n_refs=n_refs, dim=dim, n_queries=n_queries,
                            k=k, kind=kind, index=b["label"],
                            p50_ms=float(np.median(b["lat"])) * 1e3 if single else None,
                            build_s=b["build_s"], index_mb=b["index_mb"],
                            chosen=choice is not None and b["label"] == "flat"
                            and (backend, precision) == (choice.backend, choice.precision)))
    return rows


def _result(*, qps: float, achieved: float | None, peak: float | None, recall: float | None, backend: str,
            precision: str, n_refs: int, dim: int, n_queries: int, k: int, kind: str, index: str = "flat",
            p50_ms: float | None = None, build_s: float | None = None,
            index_mb: float | None = None, chosen: bool = False) -> dict[str, Any]:
    result = {
        "qps": round(qps, 2),
        "gflops": None if achieved is None else round(achieved, 2),
        "peak_gflops": None if peak is None else round(peak, 2),
        "ratio": None if peak is None or achieved is None else round(achieved / peak, 4),
        "recall": recall,
        "rss_mb": round(rss_mb(), 1),
        "backend": backend,
        "precision": precision,
        "n_refs": n_refs,
        "dim": dim,
        "n_queries": n_queries,
        "k": k,
        "kind": kind,
        "unit": "GFLOP/s" if kind == "dense" else "GB/s",
        "load1": load1(),
        "index": index if kind == "dense" else kind,
        "p50_ms": None if p50_ms is None else round(p50_ms, 3),
        "build_s": None if build_s is None else round(build_s, 3),
        "index_mb": None if index_mb is None else round(index_mb, 1),
        "blas": blas.libraries(),  # each loaded BLAS: version and the kernel it runs
        "chosen": chosen,  # the path the scanner's own choice takes (scanner.search_choice)
    }
    return {key: result[key] for key in KEYS}


POSTINGS_BACKENDS = ("numpy", "searchsorted")


def bench_postings(*, n_postings: int, n_hashes: int = 10000, backend: str = "numpy", repeat: int = 1,
                   seed: int = 0, recall_hashes: int = 200, measure_peak: bool = True) -> dict[str, Any]:
    """Time fingerprint lookups of a batch of query hashes against ``n_postings`` postings.

    The timed call is :func:`scanner.match.postings.lookup` (probe expansion, key
    ranges, every ``(query hash, row)`` pair), the scan's own path. ``backend``
    ``numpy`` uses the table's direct-address key directory (built once, before
    timing, as a scan builds it on its first file); ``searchsorted`` forces the
    binary search over the key column, the baseline.

    Parameters
    ----------
    n_postings : int > 0, rows of the table
    n_hashes : int > 0, query hashes looked up in one call
    backend : {"numpy", "searchsorted"}
    repeat : int >= 1, timed runs; the fastest counts
    seed : int
    recall_hashes : int >= 0, hashes whose pairs are checked against a count of the keys
    measure_peak : bool, also measure the memory bandwidth

    Returns
    -------
    result : dict with :data:`KEYS`; ``gflops`` is GB/s of the bytes a lookup must
        move (4 per probe key, 16 per pair), ``qps`` query hashes per second,
        ``dim`` 32 (key bits), ``k`` the mean pairs per hash
    """
    from scanner.match.postings import MAX_POSTINGS_PER_KEY, expand_probes, lookup

    if backend not in POSTINGS_BACKENDS:
        raise ParameterError(f"postings backend must be one of {POSTINGS_BACKENDS}, given backend={backend!r}")
    table, weights = synthetic_postings(n_postings, seed=seed)
    if backend == "searchsorted":
        table.__dict__["directory"] = None   # the cached directory: none, so binary search
    else:
        _ = table.directory
    hashes = synthetic_hashes(n_hashes, weights, seed=seed + 1)
    n_probes = len(expand_probes(hashes)[0])
    best, pairs = float("inf"), 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        q, r = lookup(hashes, table)
        best = min(best, time.perf_counter() - t0)
        pairs = len(q)
        del q, r
    recall = None
    if recall_hashes:
        h = hashes[:recall_hashes]
        probes, source = expand_probes(h)
        counts = np.bincount(table.key, minlength=len(weights))   # an independent count of each key
        # probes of edge fields can leave the key space (uint32 wrap): no postings there
        want = np.where(probes < len(counts), counts[np.minimum(probes, len(counts) - 1)], 0)
        want[want > MAX_POSTINGS_PER_KEY] = 0
        q, r = lookup(h, table)
        code = lambda a, b: a.astype(np.int64) << 32 | b.astype(np.int64)  # noqa: E731
        right = np.isin(code(q, table.key[r]), code(source, probes))
        found = len(np.unique(code(q[right], r[right])))
        recall = round(found / max(1, int(want.sum())), 5) if len(q) == len(np.unique(code(q, r))) else 0.0
    nbytes = 4 * n_probes + 16 * pairs
    peak = memory_bandwidth() if measure_peak else None
    return _result(qps=n_hashes / best, achieved=nbytes / best / 1e9, peak=peak, recall=recall, backend=backend,
                   precision="uint32", n_refs=n_postings, dim=32, n_queries=n_hashes,
                   k=round(pairs / n_hashes, 1), kind="postings")


# --------------------------------------------------------------------------- scan

#: A config small enough for tests (32 px, two blocks), as ``tests/tiny_clip.py`` builds.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "pool_type": "avg"},
    "text_cfg": {"context_length": 16, "vocab_size": 128, "width": 32, "heads": 2, "layers": 1},
}


def random_clip_checkpoint(work_dir: str | os.PathLike[str], arch: str = "ViT-B-32", *, seed: int = 0) -> tuple[Any, Any]:
    """An open_clip config and a random-weight checkpoint for ``arch``, built here (no downloads).

    The vision tower pools patch tokens (``pool_type="avg"``) instead of taking the
    class token: with random weights the class token barely depends on the image
    and the build would (rightly) refuse the model as degenerate; the compute is
    that of ``arch`` all the same.

    Parameters
    ----------
    work_dir : folder to write into (reused when both files exist)
    arch : an open_clip architecture name (``ViT-B-32``), or ``tiny`` (:data:`TINY_CLIP`)

    Returns
    -------
    config_path, checkpoint_path : Path
    """
    import json
    from pathlib import Path

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    name = f"likeness-bench-{arch.lower()}"
    config_path, ckpt_path = work / f"{name}.json", work / f"{name}-seed{seed}.pt"
    if config_path.exists() and ckpt_path.exists():
        return config_path, ckpt_path
    import open_clip
    import torch

    if arch == "tiny":
        cfg = json.loads(json.dumps(TINY_CLIP))
    else:
        cfg = open_clip.get_model_config(arch)
        if cfg is None:
            raise ParameterError(f"unknown open_clip architecture {arch!r}")
        cfg = json.loads(json.dumps(cfg))
        cfg["vision_cfg"]["pool_type"] = "avg"
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**{k: v for k, v in cfg.items() if k != "preprocess_cfg"})
    torch.save(model.state_dict(), ckpt_path)
    config_path.write_text(json.dumps(cfg))
    return config_path, ckpt_path


def _pictures(folder: Any, n: int, *, seed: int = 0, size: tuple[int, int] = (320, 240)) -> list[Any]:
    """``n`` PNG pictures from :func:`scanner.demo.synthetic_picture` (kept when already there)."""
    from pathlib import Path

    from scanner.demo import synthetic_picture

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{i:06d}.png"
        if not p.exists():
            tmp = p.with_suffix(".tmp")
            synthetic_picture(seed * 1_000_003 + i, size).save(tmp, format="PNG")
            os.replace(tmp, p)
        paths.append(p)
    return paths


def bench_clip_scan(*, work_dir: str | os.PathLike[str], arch: str = "ViT-B-32", n_images: int = 256,
                    n_refs: int = 64, device: str = "cpu") -> dict[str, Any]:
    """End-to-end ``image-clip`` scan speed against the bare encoder, same model, batch and precision.

    End to end is :func:`scanner.pipeline.scan` of ``n_images`` PNGs (decode,
    prepare, embed, search, match, policy, results written) against an
    ``image-clip`` index of ``n_refs`` other pictures. The bare encoder is the
    featurizer's own forward (:meth:`scanner.features.clip.Clip._run`: batches of
    its ``batch_size``, its autocast precision) over as many already-prepared images.

    Returns
    -------
    result : dict with ``e2e_images_s``, ``encoder_images_s``, ``ratio``, ``precision``,
        ``batch_size``, ``arch``, ``n_images``, ``e2e_s``, ``load1``
    """
    import shutil
    from pathlib import Path

    from scanner import pipeline
    from scanner.features import make

    work = Path(work_dir)
    config, ckpt = random_clip_checkpoint(work / "models", arch)
    opts = pipeline.FeatureOptions(names=["image-clip"], clip_model=str(config), clip_pretrained=str(ckpt),
                                   device=device)
    refs = _pictures(work / "clip-refs", n_refs, seed=1)
    queries = _pictures(work / f"clip-queries-{n_images}", n_images, seed=2)
    index = work / f"clip-index-{arch}"
    if not (index / "manifest.json").exists():
        pipeline.build_index([refs[0].parent], index, options=opts)
    out = work / "clip-scan-out"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = pipeline.scan([queries[0].parent], index, out_dir=out, options=opts, thumbnails=False)
    e2e = time.perf_counter() - t0
    LOG.info("bench scan: %s", summary)

    clip = make("image-clip", **opts.clip_options())
    from PIL import Image

    prepared = [clip.prepare(Image.open(p)) for p in queries[:min(len(queries), 2 * clip.batch_size)]]
    x = np.stack([prepared[i % len(prepared)] for i in range(n_images)])
    loaded = clip._model()
    clip._run(loaded, x[:clip.batch_size], loaded.autocast_dtype)          # warm-up
    bare = _best_time(lambda: clip._run(loaded, x, loaded.autocast_dtype), 1)
    return {"e2e_images_s": round(n_images / e2e, 2), "encoder_images_s": round(n_images / bare, 2),
            "ratio": round(bare / e2e, 4), "precision": clip.precision_, "batch_size": clip.batch_size,
            "arch": arch, "n_images": n_images, "e2e_s": round(e2e, 2), "load1": load1()}


def check_index(work_dir: str | os.PathLike[str], n_works: int = 10_000) -> Any:
    """An ``image-phash`` + ``image-local`` index of ``n_works`` generated pictures, built once and kept."""
    from pathlib import Path

    from scanner import pipeline

    work = Path(work_dir)
    index = work / f"check-index-{n_works}"
    if not (index / "manifest.json").exists():
        refs = _pictures(work / f"check-refs-{n_works}", n_works, seed=3)
        pipeline.build_index([refs[0].parent], index,
                             options=pipeline.FeatureOptions(names=["image-phash", "image-local"]))
    return index


def bench_check_cold(*, work_dir: str | os.PathLike[str], n_works: int = 10_000, runs: int = 3) -> dict[str, Any]:
    """Wall time of a fresh ``likeness check`` process on one picture against an ``n_works`` index.

    Each run is a new interpreter (imports, index open, decode, features, search,
    verdict printed); the file cache is warm, as on a workstation that has used
    the index before. The picture is a re-encoded copy of one indexed work, so the
    run goes through matching and verification, not an early ``clear``.

    Returns
    -------
    result : dict with ``cold_s`` (each run), ``p50_s``, ``best_s``, ``n_works``, ``exit_codes``, ``load1``
    """
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    index = check_index(work_dir, n_works)
    probe = Path(work_dir) / "check-probe.jpg"
    Image.open(Path(work_dir) / f"check-refs-{n_works}" / f"{n_works // 2:06d}.png").convert("RGB").save(
        probe, quality=85)
    exe = Path(sys.executable).with_name("likeness")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "scanner.cli"]
    times, codes = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd + ["check", str(probe), "--index", str(index)], capture_output=True, text=True)
        times.append(round(time.perf_counter() - t0, 3))
        codes.append(proc.returncode)
        if proc.returncode in (2, 3):
            raise ParameterError(f"likeness check failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return {"cold_s": times, "p50_s": float(np.median(times)), "best_s": min(times), "n_works": n_works,
            "exit_codes": codes, "load1": load1()}
