"""Batched k-nearest-neighbour search over an index's vectors.

Queries are searched in blocks as one matrix product (dense) or one Hamming scan
(binary) plus top-k: keep it GEMM-shaped, never a Python loop per query.

One small interface, several backends::

    searcher = make_searcher(refs, metric="ip", backend="torch", device="cuda", precision="fp16")
    D, I = searcher.search(queries, k)

- ``faiss``: exact flat (``IndexFlatIP`` / ``IndexBinaryFlat``) on the CPU, or an
  IVF index for approximate search (:func:`build_faiss_index` picks by size); on a
  GPU too where faiss was built with GPU support (``faiss-gpu``; the ``faiss-cpu``
  wheel this project installs has none: :func:`faiss_gpus`).
- ``torch``: dense inner product on ``cpu`` or ``cuda``; the reference matrix stays
  resident on the device in fp32, bf16, fp16 or int8 and is walked in chunks, with
  a running top-k merge, so memory is bounded by one (query block x ref chunk)
  score tile. On CUDA with Triton, the product and per-group maxima are fused in
  one persistent kernel, so the full score matrix never reaches GPU memory, and a
  second kernel re-scores the few candidate rows in fp32.
- ``numpy``: matmul + ``argpartition`` (dense) or XOR + popcount (binary): the
  plain baseline every other backend is checked against.

Every backend returns the same ``(D, I)`` layout as faiss: ``D`` float32 inner
products (larger is closer) or int32 Hamming distances (smaller is closer), ``I``
int64 row numbers, -1 where the index has fewer than ``k`` rows.

Exactness of the group-maximum prefilter: split each row of scores into groups of
``G`` columns. The top-``k`` scores lie in at most ``k`` groups, and each such
group's maximum is at least the ``k``-th score, so the ``k`` groups with the largest
maxima contain every top-``k`` score. Top-k over the ``N / G`` maxima, then over the
``k * G`` candidates, is therefore exact, and reads the score tile once.

The argument nests. The fused CUDA kernel writes two levels of maxima from the same
fp32 accumulators: per group of ``G`` columns and per super-group of
:data:`SUPER_GROUP` columns (a union of whole groups). The ``k`` super-groups with the
largest maxima hold every top-``k`` score; the groups holding those scores lie among
theirs, and each such group's maximum is again at least the ``k``-th score, so the
``k`` largest group maxima *within those super-groups* name groups holding every
top-``k`` score. Selection therefore reads ``N / SUPER_GROUP + k·SUPER_GROUP / G``
values per query instead of ``N / G``, and only ``k·G`` rows are scored again. (Ties
at the ``k``-th value may pick either of equal-scoring rows, as any top-k does.)
Exact here means exact for the scores the kernel computes: fp16/bf16 inputs with fp32
accumulation; the final order is by an fp32 re-score of the candidates, so the only
recall loss against exact fp32 search is a true neighbour that low-precision rounding
pushes out of the chosen groups (measured recall@10 0.9989 for fp16 at 1M x 512).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

import numpy as np

from scanner.errors import ParameterError

LOG = logging.getLogger(__name__)

#: Queries per faiss call; bounds the (block, k) result buffers.
QUERY_BLOCK = 4096
#: Below this many distance computations per call, faiss runs on one thread:
#: waking an OpenMP team costs more than it saves, and its spinning threads
#: take the cores the decode workers need.
PARALLEL_WORK = 1 << 24
#: Fewer queries than this against a flat dense index are searched with numpy (BLAS).
SMALL_BATCH = 4
#: Index sizes from which :func:`build_faiss_index` builds IVF instead of flat.
IVF_MIN_ROWS = 1 << 20
#: fp32 sizes (rows x dim x 4 bytes) from which it builds an IVF of compressed codes
#: (:func:`build_compressed_ivf`), memory-mapped when opened: a 10M x 512 index (20 GB of
#: fp32 rows) is searched from a file of 5.2 GB (SQ8) whose pages are read as lists are probed.
COMPRESSED_MIN_BYTES = 4 << 30
#: Inverted lists of a compressed IVF at most: assigning N vectors costs N·nlist·d
#: multiply-adds (10M x 4096 x 512 is minutes on two cores), and lists of ~2k rows keep a probe cheap.
COMPRESSED_MAX_LISTS = 4096
#: Codes of a compressed IVF. ``sq8``: each dimension to 8 bits (a quarter of fp32); ``pq``:
#: product quantization, :data:`PQ_CODE_BYTES` bytes. Recall@10 against exact search at 200k x
#: 512 mixture vectors, 1024 lists (``benchmarks/README.md``): SQ8 0.980 (512 bytes); PQ 0.45
#: with 64 bytes, 0.67 with 128, 0.89 with 256; so SQ8.
COMPRESSED_CODEC = "sq8"
#: Bytes of PQ code per vector (sub-quantizers of 8 bits; the largest divisor of d up to this).
PQ_CODE_BYTES = 256
#: ``type`` of the compressed indexes in the manifest (their rows cannot be decoded exactly).
COMPRESSED_TYPES = ("ivfsq8", "ivfpq")
#: Inverted lists probed per query in a binary inverted file (keypoint descriptors),
#: applied when an index is opened, so indexes built before a change follow it. Voting
#: needs a work's keypoints to find their own, not every exact nearest descriptor: at
#: 8.3M descriptors, 4 probes cost about half of 6 and agree on the nearest one for
#: 90% of descriptors.
BINARY_IVF_NPROBE = 4
#: A binary inverted file of at least this many lists chooses the lists it probes through a
#: coarse inverted file over its centroids (:func:`coarse_probing`), not by comparing every
#: centroid: at 8.3M descriptors in 11.5k lists, those comparisons were most of a search.
COARSE_FROM = 4096
#: Lists of that coarse file (times the square root of the centroids) and how many it probes.
COARSE_LISTS_PER_ROOT = 2
COARSE_NPROBE = 16
#: Lists probed when they are found through the coarse file: one more than
#: :data:`BINARY_IVF_NPROBE`, for the nearest lists the coarse file does not see.
COARSE_LIST_PROBES = BINARY_IVF_NPROBE + 1
#: Recall probe of approximate indexes: queries, and the recall@10 nprobe is tuned to.
PROBE_QUERIES = 500
TARGET_RECALL = 0.95

#: int8 search on the CPU: rows a group of the group-maximum prefilter (16 int32 scores, one
#: 64-byte line), and score tiles whose group maxima are gathered before a top-k merges them.
INT8_GROUP = 16
INT8_MERGE_TILES = 64

BACKENDS = ("faiss", "torch", "numpy")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
METRICS = ("ip", "hamming")
Backend = Literal["faiss", "torch", "numpy"]
Precision = Literal["fp32", "bf16", "fp16", "int8"]

_configured = False
_n_threads = 1


def configure_faiss(threads: int | None = None) -> None:
    """Set faiss's threads and make small query batches use BLAS.

    faiss computes inner products with a slow non-BLAS loop below
    ``distance_compute_blas_threshold`` queries (20 by default), which is
    exactly the one-asset ``check`` case; a threshold of 1 keeps every batch on
    the GEMM path. The database block of faiss's BLAS path is raised from 1024 to
    4096 rows: with ``d = 512`` a 4096-query x 1024-row ``sgemm`` is too flat to
    run at the machine's GEMM peak.

    Parameters
    ----------
    threads : int > 0 or None
        OpenMP threads for faiss; default: the CPUs this process may run on.
    """
    global _configured, _n_threads
    import faiss

    if threads is not None and threads < 1:
        raise ParameterError(f"threads must be >= 1, given threads={threads}")
    faiss.cvar.distance_compute_blas_threshold = 1
    faiss.cvar.distance_compute_blas_database_bs = 4096
    _n_threads = threads or max(1, len(os.sched_getaffinity(0)))
    faiss.omp_set_num_threads(_n_threads)
    _configured = True


def threads() -> int:
    """The threads searches run on (faiss's OpenMP team; torch is given the same):
    :func:`configure_faiss`'s setting, the CPUs this process may use by default."""
    if not _configured:
        configure_faiss()
    return _n_threads


def _check_k(k: int) -> int:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ParameterError(f"k must be an integer >= 1, given k={k!r}")
    return int(k)


def _empty(n: int, k: int, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    return (np.zeros((n, k), np.int32 if binary else np.float32), np.full((n, k), -1, np.int64))


def _pad(D: np.ndarray, I: np.ndarray, k: int, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """Widen results with fewer than ``k`` columns the way faiss does (-1 rows)."""
    if D.shape[1] >= k:
        return D, I
    n, have = D.shape
    fill = np.iinfo(np.int32).max if binary else -np.finfo(np.float32).max
    Dp = np.full((n, k), fill, D.dtype)
    Ip = np.full((n, k), -1, np.int64)
    Dp[:, :have], Ip[:, :have] = D, I
    return Dp, Ip


# --------------------------------------------------------------------------- devices


def has_torch() -> bool:
    """Whether torch can be imported here (the ``clip`` extra); found without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except ValueError:  # a module set to None in sys.modules: as good as absent
        return False


def _nvidia_driver() -> bool:
    """Whether an NVIDIA driver is loaded (a GPU torch could see), without importing torch."""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0") or \
        bool(os.environ.get("CUDA_VISIBLE_DEVICES"))


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; checks the name.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"} or "cuda:N"

    Returns
    -------
    device : str, ``cpu`` or ``cuda[:N]``
    """
    if not may_use_gpu(device):
        return "cpu"  # without importing torch, which alone costs ~400 MB of memory and a second
    if device == "auto" or device.startswith("cuda"):
        try:
            import torch
        except ImportError:
            if device == "auto":
                return "cpu"
            raise ParameterError(f"device={device!r} needs torch, which is not installed") from None
        if torch.cuda.is_available():
            return "cuda" if device == "auto" else device
        if device == "auto":
            return "cpu"
        raise ParameterError(f"device={device!r} asked for, but torch sees no CUDA GPU")
    raise ParameterError(f"device must be auto, cpu or cuda, given device={device!r}")


def may_use_gpu(device: str = "auto") -> bool:
    """Whether a search asked to run on ``device`` may run on a GPU, answered without
    importing torch: ``cuda``, or ``auto`` where an NVIDIA driver is loaded."""
    return device != "cpu" and (device != "auto" or _nvidia_driver())


def faiss_gpus() -> int:
    """GPUs faiss itself can search on: 0 with the ``faiss-cpu`` wheel (no GPU code in it)."""
    try:
        import faiss
    except ImportError:
        return 0
    if not hasattr(faiss, "StandardGpuResources") or not hasattr(faiss, "get_num_gpus"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # noqa: BLE001 - a broken driver means no GPU for faiss, as for torch
        return 0


def _gpu_number(device: str) -> int:
    """``cuda`` -> 0, ``cuda:N`` -> N."""
    try:
        return int(device.partition(":")[2] or 0)
    except ValueError:
        raise ParameterError(f"device must be cuda or cuda:N, given device={device!r}") from None


# --------------------------------------------------------------------------- interface


class Searcher:
    """Batched top-k over a fixed set of reference vectors.

    Attributes
    ----------
    metric : {"ip", "hamming"}
    ntotal : int, number of reference rows
    dim : int, vector dimension (bits for ``hamming``)
    nbytes : int, bytes the resident reference data takes
    """

    metric: str = "ip"
    ntotal: int = 0
    dim: int = 0
    nbytes: int = 0

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` neighbours of every query.

        Parameters
        ----------
        queries : float32 ``[shape=(n, dim)]`` (L2-normalised) or uint8 ``[shape=(n, dim // 8)]``
        k : int > 0

        Returns
        -------
        D : ``[shape=(n, k)]`` float32 inner products, descending, or int32 Hamming
            distances, ascending
        I : int64 ``[shape=(n, k)]`` row numbers, -1 past ``ntotal``
        """
        k = _check_k(k)
        binary = self.metric == "hamming"
        queries = self._check_queries(queries)
        n = len(queries)
        if n == 0 or self.ntotal == 0:
            return _empty(n, k, binary)
        D, I = self._search(queries, min(k, self.ntotal))
        return _pad(D, I, k, binary)

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        q = np.asarray(queries)
        want = (self.dim // 8) if self.metric == "hamming" else self.dim
        if q.ndim != 2 or q.shape[1] != want:
            raise ParameterError(f"queries must have shape (n, {want}), given shape={q.shape}")
        if self.metric == "hamming":
            if q.dtype != np.uint8:
                raise ParameterError(f"binary queries must be uint8 codes, given dtype={q.dtype}")
            return np.ascontiguousarray(q)
        return np.ascontiguousarray(q, dtype=np.float32)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


def _check_refs(refs: np.ndarray, metric: str) -> np.ndarray:
    if metric not in METRICS:
        raise ParameterError(f"metric must be one of {METRICS}, given metric={metric!r}")
    r = np.asarray(refs)
    if r.ndim != 2:
        raise ParameterError(f"reference vectors must be 2-D, given shape={r.shape}")
    if metric == "hamming":
        if r.dtype != np.uint8:
            raise ParameterError(f"binary references must be uint8 codes, given dtype={r.dtype}")
        return np.ascontiguousarray(r)
    return np.ascontiguousarray(r, dtype=np.float32)


def make_searcher(refs: np.ndarray, *, metric: str = "ip", backend: str = "faiss", device: str = "cpu",
                  precision: str = "fp32", **options: Any) -> Searcher:
    """Build a searcher over ``refs`` with the chosen backend.

    Parameters
    ----------
    refs : float32 ``[shape=(N, d)]`` L2-normalised vectors (``metric="ip"``) or
        uint8 ``[shape=(N, bits // 8)]`` packed codes (``metric="hamming"``)
    metric : {"ip", "hamming"}
    backend : {"faiss", "torch", "numpy"}
    device : {"cpu", "cuda", "auto"}; ``torch`` runs on ``cuda``, and ``faiss`` where it
        has GPU support (:func:`faiss_gpus`)
    precision : {"fp32", "bf16", "fp16", "int8"}
        Storage (and, where the device has it, compute) precision of the
        references; only ``torch`` offers other than ``fp32`` for ``ip``. Results
        are re-scored in fp32, see :class:`TorchSearcher`.
    **options
        Backend tuning, passed to the searcher's constructor (``query_block``,
        ``ref_block``, ``oversample``, ``fused``, ``threads``).

    Returns
    -------
    searcher : Searcher
    """
    if backend not in BACKENDS:
        raise ParameterError(f"backend must be one of {BACKENDS}, given backend={backend!r}")
    if precision not in PRECISIONS:
        raise ParameterError(f"precision must be one of {PRECISIONS}, given precision={precision!r}")
    refs = _check_refs(refs, metric)
    if backend == "faiss" and device != "cpu" and faiss_gpus():
        device = "cuda" if device == "auto" else device
    else:
        device = resolve_device(device)
    if backend == "numpy" and device != "cpu":
        raise ParameterError(f"backend='numpy' runs on the CPU only, given device={device!r}")
    if backend != "torch" and precision != "fp32":
        raise ParameterError(f"backend={backend!r} searches in fp32 only, given precision={precision!r}; "
                             "reduced precision is offered by backend='torch'")
    if backend == "faiss":
        return FaissSearcher(build_faiss_index(refs, metric, kind="flat")[0], device=device, **options)
    if backend == "numpy":
        return NumpySearcher(refs, metric=metric, **options)
    if metric == "hamming":
        raise ParameterError("backend='torch' searches dense vectors only; use faiss or numpy for binary codes")
    return TorchSearcher(refs, device=device, precision=precision, **options)


# --------------------------------------------------------------------------- faiss


@dataclass(frozen=True)
class VectorStream:
    """Dense vectors read block by block, so an index can be built from more rows than fit in memory.

    Attributes
    ----------
    n, dim : int, rows and dimension of the whole set
    blocks : callable returning an iterable of float32 ``[shape=(m, dim)]`` blocks, in row
        order, ``n`` rows in all (called once per pass)
    sample : callable ``(size, seed) -> float32 [shape=(size, dim)]``: rows drawn like the
        data (training and recall probes)
    """

    n: int
    dim: int
    blocks: Callable[[], Iterable[np.ndarray]]
    sample: Callable[[int, int], np.ndarray]

    @classmethod
    def of(cls, vectors: np.ndarray, *, block: int = 1 << 18) -> "VectorStream":
        """A stream over an array (or a memory-mapped ``.npy``): slices, and seeded row samples."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise ParameterError(f"vectors must be 2-D, given shape={vectors.shape}")
        n = len(vectors)

        def sample(size: int, seed: int) -> np.ndarray:
            rows = np.sort(np.random.default_rng(seed).choice(n, min(n, size), replace=False))
            return np.ascontiguousarray(vectors[rows], np.float32)

        return cls(n, vectors.shape[1], lambda: (vectors[s:s + block] for s in range(0, n, block)), sample)

    def array(self) -> np.ndarray:
        """Every row in memory (for indexes small enough to build from an array)."""
        parts = [np.asarray(b, np.float32) for b in self.blocks()]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)


def build_faiss_index(vectors: np.ndarray | VectorStream, metric: str = "ip", *, kind: str = "auto",
                      nlist: int | None = None, seed: int = 0, code_bytes: int | None = None) -> tuple[Any, dict[str, Any]]:
    """A faiss index over ``vectors``, flat, IVF or compressed IVF chosen by size.

    Exact flat search up to :data:`IVF_MIN_ROWS` rows; above, an inverted-file
    index (``IndexIVFFlat``, ``nlist ≈ 4·√N`` lists, trained on a sample of at most
    ``64·nlist`` rows) whose ``nprobe`` is the smallest that reached recall@10 ≥ 0.95
    on held-in queries; from :data:`COMPRESSED_MIN_BYTES` of fp32 rows on, an IVF of
    :data:`COMPRESSED_CODEC` codes (:func:`build_compressed_ivf`, built in one streamed
    pass, recall measured on held-out queries). Binary codes
    always get ``IndexBinaryFlat`` (a Hamming scan is memory-bound, so an inverted file
    buys little at these code sizes).

    Parameters
    ----------
    vectors : float32 ``[shape=(N, d)]`` or uint8 ``[shape=(N, bits // 8)]``, or a
        :class:`VectorStream` of dense vectors (read in blocks for a compressed IVF;
        smaller sets are read into memory)
    metric : {"ip", "hamming"}
    kind : {"auto", "flat", "ivf", "ivfsq8", "ivfpq"}
    nlist : int > 0 or None, inverted lists for IVF (default ``4·√N``, at least 16; at
        most :data:`COMPRESSED_MAX_LISTS` for a compressed IVF)
    seed : int, seed of the training sample and of the recall probe
    code_bytes : int or None, PQ code bytes per vector (``ivfpq``; default :data:`PQ_CODE_BYTES`)

    Returns
    -------
    index : faiss.Index or faiss.IndexBinary, with ``vectors`` added (row i = vector i)
    params : dict, JSON-ready description for the manifest
        (``{"type": "flat"}``, ``{"type": "ivf", "nlist", "nprobe", "recall_at_10"}`` or
        the description of :func:`build_compressed_ivf`)
    """
    import faiss

    kinds = ("auto", "flat", "ivf") + COMPRESSED_TYPES
    if kind not in kinds:
        raise ParameterError(f"kind must be one of {kinds}, given kind={kind!r}")
    shape = (vectors.n, vectors.dim) if isinstance(vectors, VectorStream) else np.shape(vectors)
    if kind == "auto" and metric == "ip" and int(np.prod(shape)) * 4 >= COMPRESSED_MIN_BYTES:
        kind = f"ivf{COMPRESSED_CODEC}"
    if isinstance(vectors, VectorStream) or kind in COMPRESSED_TYPES:
        if metric != "ip":
            raise ParameterError(f"streamed and compressed indexes are dense (metric 'ip'), given metric={metric!r}")
        stream = vectors if isinstance(vectors, VectorStream) else VectorStream.of(_check_refs(vectors, metric))
        if kind in COMPRESSED_TYPES:
            return build_compressed_ivf(stream, codec=kind[3:], nlist=nlist, code_bytes=code_bytes, seed=seed)
        vectors = stream.array()
    vectors = _check_refs(vectors, metric)
    n, d = vectors.shape
    if metric == "hamming":
        index = faiss.IndexBinaryFlat(d * 8)
        index.add(vectors)
        return index, {"type": "flat", "metric": "hamming"}
    if kind == "flat" or (kind == "auto" and n < IVF_MIN_ROWS):
        index = faiss.IndexFlatIP(d)
        index.add(vectors)
        return index, {"type": "flat", "metric": "ip"}
    if not _configured:
        configure_faiss()
    nlist = nlist or max(16, int(4 * math.sqrt(n)))
    if nlist < 1 or nlist > n:
        raise ParameterError(f"nlist must be in 1..{n}, given nlist={nlist}")
    rng = np.random.default_rng(seed)
    train = vectors[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))]
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(train)
    index.add(vectors)
    nprobe, recall = tune_nprobe(index, vectors, seed=seed)
    index.nprobe = nprobe
    return index, {"type": "ivf", "metric": "ip", "nlist": nlist, "nprobe": nprobe, "recall_at_10": recall}


def _largest_divisor(d: int, at_most: int) -> int:
    return max(m for m in range(1, min(d, at_most) + 1) if d % m == 0)


def _noisy_copies(rows: np.ndarray, rng: np.random.Generator, spread: np.ndarray) -> np.ndarray:
    """Recall-probe queries: rows plus Gaussian noise of half the data's spread, L2-normalised."""
    q = rows + 0.5 * spread * rng.standard_normal(rows.shape, np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.astype(np.float32)


def build_compressed_ivf(stream: VectorStream, *, codec: str = COMPRESSED_CODEC, nlist: int | None = None,
                         code_bytes: int | None = None, seed: int = 0, n_probe_queries: int = PROBE_QUERIES,
                         target: float = TARGET_RECALL) -> tuple[Any, dict[str, Any]]:
    """An IVF of compressed codes over a stream of dense vectors, its recall measured in the same pass.

    One pass over ``stream`` does three things per block: the block is assigned to its
    inverted lists and encoded (``sq8``: ``IndexIVFScalarQuantizer``, 8 bits a
    dimension, ranges per dimension; ``pq``: ``IndexIVFPQ``, 8-bit sub-quantizers; both
    inner product, residuals of the list centroid), and the exact top-10 of the probe
    queries is merged with the block's (a ``faiss.ResultHeap``, as ``knn_ground_truth``
    streams a database), so memory holds one block, the codes, and the heaps; never the
    rows. Training (coarse spherical k-means, then the codec) uses ``stream.sample``. The
    probe queries are noisy copies of rows sampled with another seed than the training
    rows (held out: no probe is a row of the index as it stands, nor a training row).
    ``nprobe`` then doubles from 1 until recall@10 against the exact neighbours reaches
    ``target``, or stops gaining (less than 0.005 a doubling: the codes' rounding, not the
    lists probed, limits it then); every recall tried is kept.

    Parameters
    ----------
    stream : VectorStream, L2-normalised float32 rows
    codec : {"sq8", "pq"}
    nlist : int or None, inverted lists (default ``4·√N``, 16 to :data:`COMPRESSED_MAX_LISTS`)
    code_bytes : int or None, PQ sub-quantizers (= bytes a vector; default the largest
        divisor of ``dim`` up to :data:`PQ_CODE_BYTES`); SQ8 codes are ``dim`` bytes
    seed : int, seed of the training sample and the probe
    n_probe_queries : int, probe queries
    target : float, recall@10 the ``nprobe`` search stops at

    Returns
    -------
    index : faiss.IndexIVFScalarQuantizer or faiss.IndexIVFPQ with every row added (row i =
        id i), ``nprobe`` set
    params : dict ``{"type": "ivfsq8" | "ivfpq", "metric", "nlist", "code_bytes", "nprobe",
        "recall_at_10", "recall_by_nprobe", "probe_queries", "train_rows"}``
    """
    import faiss

    if codec not in ("sq8", "pq"):
        raise ParameterError(f"codec must be sq8 or pq, given codec={codec!r}")
    if not _configured:
        configure_faiss()
    n, d = stream.n, stream.dim
    nlist = nlist or int(min(COMPRESSED_MAX_LISTS, max(16, 4 * math.sqrt(n))))
    if nlist < 1 or nlist > n:
        raise ParameterError(f"nlist must be in 1..{n}, given nlist={nlist}")
    m = d if codec == "sq8" else (code_bytes or _largest_divisor(d, PQ_CODE_BYTES))
    if m < 1 or d % m:
        raise ParameterError(f"code_bytes must divide the dimension {d}, given code_bytes={m}")
    train = stream.sample(min(n, max(64 * nlist, 65536)), seed)
    rng = np.random.default_rng(seed + 1)
    probes = _noisy_copies(stream.sample(n_probe_queries, seed + 1), rng, train.std(0))
    name = f"IVF-{codec.upper()}"
    LOG.info("%s: training %d lists, %d-byte codes on %d rows", name, nlist, m, len(train))
    t0 = time.perf_counter()
    # coarse lists: spherical k-means (inner product), large GEMMs on every thread
    quantizer = faiss.IndexFlatIP(d)
    clustering = faiss.Clustering(d, nlist)
    clustering.spherical, clustering.seed = True, seed
    clustering.train(train, quantizer)
    if codec == "sq8":
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    # the codec (the quantizer is trained, so only it): PQ's m small k-means run many short
    # parallel loops that crawl when the threads share their cores with other work (10-20x
    # slower on two busy cores) and take seconds on one thread
    faiss.omp_set_num_threads(1)
    try:
        index.train(train)
    finally:
        faiss.omp_set_num_threads(threads())
    ntrain = len(train)
    del train
    LOG.info("%s: trained in %.1f s", name, time.perf_counter() - t0)
    heap = faiss.ResultHeap(len(probes), 10, keep_max=True)
    start = 0
    for block in stream.blocks():
        block = np.ascontiguousarray(block, np.float32)
        if block.ndim != 2 or block.shape[1] != d:
            raise ParameterError(f"stream blocks must have shape (m, {d}), given shape={block.shape}")
        index.add(block)
        D, I = faiss.knn(probes, block, min(10, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(D, I + start)
        start += len(block)
        LOG.debug("%s: %d of %d rows added", name, start, n)
    if start != n:
        raise ParameterError(f"the stream said {n} rows but gave {start}")
    LOG.info("%s: %d rows added (and the probe's exact neighbours found), %.1f s", name, n,
             time.perf_counter() - t0)
    heap.finalize()
    nprobe, recall, curve = _sweep_nprobe(index, probes, heap.I, target=target, min_gain=0.005)
    LOG.info("%s: nprobe %d, recall@10 %.4f; built in %.1f s", name, nprobe, recall, time.perf_counter() - t0)
    return index, {"type": f"ivf{codec}", "metric": "ip", "nlist": nlist, "code_bytes": m,
                   "nprobe": nprobe, "recall_at_10": round(recall, 4), "recall_by_nprobe": curve,
                   "probe_queries": len(probes), "train_rows": ntrain}


def sampled_binary_ivf(codes: np.ndarray, nlist: int) -> Any:
    """A binary inverted file of ``codes`` whose ``nlist`` centroids are a seeded sample of the codes
    themselves (no training), every code added (row i = code i).

    Parameters
    ----------
    codes : uint8 ``[shape=(n, nbytes)]``, ``n >= nlist``
    nlist : int > 0

    Returns
    -------
    faiss.IndexBinaryIVF, ``nprobe`` left at faiss's default (the caller sets it)
    """
    import faiss

    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    dim = codes.shape[1] * 8
    quantizer = faiss.IndexBinaryFlat(dim)
    quantizer.add(codes[np.sort(np.random.default_rng(0).choice(len(codes), nlist, replace=False))])
    index = faiss.IndexBinaryIVF(quantizer, dim, nlist)
    index.is_trained = True
    index.own_fields = True
    quantizer.this.disown()
    index.add(codes)
    return index


def coarse_probing(index: Any) -> Any:
    """A binary inverted file that finds the lists to probe through a coarse inverted file.

    Searching an ``IndexBinaryIVF`` first compares each query with every list's centroid
    (its flat quantizer), then scans the ``nprobe`` nearest lists. With thousands of lists the
    first step dominates. The index returned shares ``index``'s lists but picks them through an
    inverted file over the centroids (:func:`sampled_binary_ivf`, :data:`COARSE_LISTS_PER_ROOT` x
    sqrt(lists) coarse lists, :data:`COARSE_NPROBE` probed): a few hundred comparisons instead of
    every centroid. It probes :data:`COARSE_LIST_PROBES` lists, one more than ``index``, for the
    nearest lists the coarse file misses. ``index`` itself is left as it is (it is what index
    files hold); an index with fewer than :data:`COARSE_FROM` lists, or a quantizer other than a
    flat one, is returned unchanged.

    Parameters
    ----------
    index : faiss.IndexBinary

    Returns
    -------
    faiss.IndexBinary, holding a reference to ``index`` (whose lists it reads)
    """
    import faiss

    if not isinstance(index, faiss.IndexBinaryIVF) or index.nlist < COARSE_FROM:
        return index
    flat = faiss.downcast_IndexBinary(index.quantizer)
    if not isinstance(flat, faiss.IndexBinaryFlat):
        return index
    centroids = binary_codes(flat)
    # list i's centroid is row i of the coarse file: its search returns list numbers
    coarse = sampled_binary_ivf(centroids, int(COARSE_LISTS_PER_ROOT * np.sqrt(len(centroids))))
    coarse.nprobe = COARSE_NPROBE
    fast = faiss.IndexBinaryIVF(coarse, index.d, index.nlist)
    fast.is_trained, fast.own_fields = True, True
    coarse.this.disown()
    fast.replace_invlists(index.invlists, False)
    fast.ntotal, fast.nprobe = index.ntotal, COARSE_LIST_PROBES
    fast.referenced = index  # the lists belong to it
    return fast


def binary_codes(index: Any) -> np.ndarray:
    """Every code of a faiss binary index (flat or inverted file), in row order, uint8."""
    import faiss

    if index.ntotal == 0:
        return np.zeros((0, index.code_size), np.uint8)
    if isinstance(index, faiss.IndexBinaryFlat):
        return faiss.vector_to_array(index.xb).reshape(index.ntotal, index.code_size)
    index.make_direct_map()
    return index.reconstruct_n(0, index.ntotal)


def describe_index(params: dict[str, Any] | None) -> str:
    """One line for ``index info``: the search structure and its measured recall."""
    if not params:
        return "exact"
    kind = params.get("type")
    if kind == "flat":
        return "exact (flat)"
    label = {"ivfsq8": "IVF-SQ8", "ivfpq": "IVF-PQ"}.get(kind, "IVF")
    text = f"{label} with {params.get('nlist')} lists, nprobe {params.get('nprobe')}"
    if kind in COMPRESSED_TYPES:
        text += f", {params.get('code_bytes')}-byte codes"
    if params.get("recall_at_10") is not None:
        text += f"; recall@10 {params['recall_at_10']:.3f} against exact search at build"
        if params.get("probe_queries"):
            text += f" ({params['probe_queries']} held-out queries)"
        if params.get("rows_since_recall"):
            text += f", {params['rows_since_recall']} rows added since"
    return text


def tune_nprobe(index: Any, vectors: np.ndarray, *, target: float = 0.95, n_probe_queries: int = 500,
                seed: int = 0) -> tuple[int, float]:
    """Smallest power-of-two ``nprobe`` reaching ``target`` recall@10 against exact search.

    Probe queries are index rows plus Gaussian noise of the data's own per-dimension
    spread, so they fall between references as real near-copies do.

    Returns
    -------
    nprobe : int
    recall : float in [0, 1], recall@10 measured at that ``nprobe``
    """
    import faiss

    rng = np.random.default_rng(seed + 1)
    rows = rng.choice(len(vectors), min(n_probe_queries, len(vectors)), replace=False)
    q = _noisy_copies(vectors[rows], rng, vectors.std(0))
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    _, gt = flat.search(q, 10)
    nprobe, recall, _ = _sweep_nprobe(index, q, gt, target=target)
    return nprobe, recall


def _sweep_nprobe(index: Any, queries: np.ndarray, truth: np.ndarray, *, target: float,
                  min_gain: float | None = None) -> tuple[int, float, dict[str, float]]:
    """Double an inverted file's ``nprobe`` from 1 (the last step is ``nlist``) until recall@10 reaches ``target``.

    With ``min_gain``, also stop when a doubling gains less recall than that (the
    codes' rounding, not the lists probed, limits it then). Leaves ``index.nprobe``
    at the answer.

    Returns
    -------
    nprobe : int
    recall : float, recall@10 against ``truth`` at that ``nprobe``
    curve : dict ``str(nprobe) -> recall`` (4 decimals) of every step tried
    """
    curve: dict[str, float] = {}
    nprobe, previous = 1, -1.0
    while True:
        index.nprobe = nprobe
        recall = recall_at_k(index.search(queries, 10)[1], truth)
        curve[str(nprobe)] = round(recall, 4)
        if recall >= target or nprobe >= index.nlist or (min_gain is not None and recall - previous < min_gain):
            return nprobe, recall, curve
        previous, nprobe = recall, min(2 * nprobe, index.nlist)


class FaissSearcher(Searcher):
    """faiss search over a built index (flat, IVF or binary flat), on the CPU or a GPU.

    Parameters
    ----------
    index : faiss.Index or faiss.IndexBinary
    device : ``cpu``, or ``cuda[:N]`` where faiss has GPU support (:func:`faiss_gpus`):
        the index is copied to that GPU once (``index_cpu_to_gpu``; binary flat codes
        through ``GpuIndexBinaryFlat``) and searched there
    query_block : int > 0, queries per faiss call (bounds the result buffers)
    """

    def __init__(self, index: Any, *, device: str = "cpu", query_block: int = QUERY_BLOCK):
        import faiss

        self.device = device
        if device != "cpu":
            gpu = _gpu_number(device)
            if gpu >= faiss_gpus():
                raise ParameterError(
                    f"device={device!r} asked of faiss, but this faiss has no GPU support (the faiss-cpu wheel) "
                    "or no such GPU; install faiss-gpu, or search on the GPU with backend='torch'")
            self._resources = faiss.StandardGpuResources()   # kept: the GPU index uses it
            if isinstance(index, faiss.IndexBinaryFlat):
                cfg = faiss.GpuIndexBinaryFlatConfig()
                cfg.device = gpu
                index = faiss.GpuIndexBinaryFlat(self._resources, index, cfg)
            else:
                index = faiss.index_cpu_to_gpu(self._resources, gpu, index)
        self.index = index
        self.metric = "hamming" if isinstance(index, faiss.IndexBinary) else "ip"
        self.ntotal = int(index.ntotal)
        self.dim = int(index.d)
        self.nbytes = self.ntotal * (self.dim // 8 if self.metric == "hamming" else 4 * self.dim)
        self.query_block = query_block
        # rows one query really visits: an inverted file scans nprobe of its nlist lists
        nlist = int(getattr(index, "nlist", 0) or 0)
        self.visited = self.ntotal * min(1.0, int(getattr(index, "nprobe", 1)) / nlist) if nlist else self.ntotal

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not _configured:
            configure_faiss()
        import faiss

        n = len(queries)
        if self.device == "cpu":
            faiss.omp_set_num_threads(1 if min(n, self.query_block) * self.visited < PARALLEL_WORK else threads())
        out_d, out_i = [], []
        for start in range(0, n, self.query_block):
            d, i = self.index.search(np.ascontiguousarray(queries[start:start + self.query_block]), k)
            out_d.append(d)
            out_i.append(i)
        return np.concatenate(out_d), np.concatenate(out_i)


# --------------------------------------------------------------------------- numpy


class NumpySearcher(Searcher):
    """Plain numpy: ``queries @ refs.T`` + ``argpartition``, or XOR + popcount.

    The baseline: no tricks, memory bounded by a (query_block, ref_block) tile.

    Parameters
    ----------
    refs : float32 ``[shape=(N, d)]`` or uint8 ``[shape=(N, bits // 8)]``
    metric : {"ip", "hamming"}
    query_block, ref_block : int > 0, tile size
    """

    def __init__(self, refs: np.ndarray, *, metric: str = "ip", query_block: int = 1024,
                 ref_block: int = 65536):
        self.refs = _check_refs(refs, metric)
        self.metric = metric
        self.ntotal = len(self.refs)
        self.dim = self.refs.shape[1] * (8 if metric == "hamming" else 1)
        self.nbytes = self.refs.nbytes
        self.query_block, self.ref_block = query_block, ref_block
        if metric == "hamming" and self.refs.shape[1] % 8 == 0:
            # XOR and popcount 64 bits at a time
            self._words = self.refs.view(np.uint64)
        else:
            self._words = self.refs

    def _scores(self, q: np.ndarray, r0: int, r1: int) -> np.ndarray:
        if self.metric == "ip":
            return q @ self.refs[r0:r1].T
        w = self._words[r0:r1]
        qw = q.view(w.dtype) if w.dtype == np.uint64 else q
        return np.bitwise_count(qw[:, None, :] ^ w[None, :, :]).sum(-1, dtype=np.int32)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sign = 1 if self.metric == "ip" else -1  # larger is closer after the sign flip
        # a Hamming tile is (qb, rb, words): keep it small
        rb = self.ref_block if self.metric == "ip" else max(k, 4096)
        qb = self.query_block if self.metric == "ip" else 64
        out_d, out_i = [], []
        for q0 in range(0, len(queries), qb):
            q = queries[q0:q0 + qb]
            best_s = np.full((len(q), 0), 0, np.float32 if sign > 0 else np.int32)
            best_i = np.zeros((len(q), 0), np.int64)
            for r0 in range(0, self.ntotal, rb):
                s = sign * self._scores(q, r0, min(r0 + rb, self.ntotal))
                s = np.concatenate([best_s, s], axis=1)
                idx = np.concatenate([best_i, np.broadcast_to(np.arange(r0, r0 + s.shape[1] - best_i.shape[1]),
                                                              (len(q), s.shape[1] - best_i.shape[1]))], axis=1)
                if s.shape[1] > k:
                    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
                    s, idx = np.take_along_axis(s, part, 1), np.take_along_axis(idx, part, 1)
                best_s, best_i = s, idx
            # sort by score, then by row number (faiss's order on ties)
            order = np.lexsort((best_i, -best_s), axis=1)
            out_d.append(sign * np.take_along_axis(best_s, order, 1))
            out_i.append(np.take_along_axis(best_i, order, 1))
        D = np.concatenate(out_d)
        return D.astype(np.float32 if sign > 0 else np.int32), np.concatenate(out_i).astype(np.int64)


# --------------------------------------------------------------------------- torch


def _torch_dtype(precision: str, device: str) -> tuple[Any, Any]:
    """(storage dtype, compute dtype) of the reference matrix on ``device``."""
    import torch

    cuda = device.startswith("cuda")
    storage = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}[precision]
    if precision == "fp32":
        compute = torch.float32
    elif precision == "bf16":
        compute = torch.bfloat16
    elif precision == "fp16":
        # CPUs without AVX512-FP16/AMX-FP16 run fp16 GEMM through a slow path;
        # bf16 has the same width and native dot products on recent CPUs
        compute = torch.float16 if cuda else torch.bfloat16
    else:
        # CUDA: int8 values (|v| <= 127) are exact in fp16, the tensor cores' input.
        # CPU: an int8 x int8 -> int32 GEMM (AVX512-VNNI/AMX through oneDNN): about 4x the
        # fp32 GEMM rate where bf16 gives 2x
        compute = torch.float16 if cuda else torch.int8
    return storage, compute


def _topk_grouped(S: Any, kk: int, group: int) -> tuple[Any, Any]:
    """Exact row-wise top-``kk`` of ``S`` through a group-maximum prefilter.

    Parameters
    ----------
    S : torch.Tensor ``[shape=(q, n)]``
    kk : int, 1 <= kk <= n
    group : int, columns per group (1 disables the prefilter)

    Returns
    -------
    values, columns : torch.Tensor ``[shape=(q, kk)]`` (unsorted)
    """
    import torch

    q, n = S.shape
    ng = n // group
    if group <= 1 or ng < 4 * kk:
        return S.topk(kk, dim=1, sorted=False)
    head = S[:, :ng * group]
    gmax = head.view(q, ng, group).amax(-1)
    _, gi = _topk_grouped(gmax, kk, group)                     # groups holding the top kk
    cols = (gi.unsqueeze(-1) * group + torch.arange(group, device=S.device)).reshape(q, -1)
    vals = S.gather(1, cols)
    if ng * group < n:                                          # columns past the last whole group
        tail_cols = torch.arange(ng * group, n, device=S.device).expand(q, -1)
        vals = torch.cat([vals, S[:, ng * group:]], 1)
        cols = torch.cat([cols, tail_cols], 1)
    v, j = vals.topk(kk, dim=1, sorted=False)
    return v, cols.gather(1, j)


class TorchSearcher(Searcher):
    """Dense inner-product search with torch on CPU or CUDA.

    The reference matrix is copied once to ``device`` in the storage precision and
    stays there. Each block of ``query_block`` queries walks it in chunks of
    ``ref_block`` rows: one GEMM per chunk, an exact group-max top-``kk`` of the
    score tile (:func:`_topk_grouped`), and a running merge; the ``kk`` survivors
    are re-scored in fp32 against the stored rows and the best ``k`` kept. Memory:
    references + one (query_block x ref_block) tile.

    Reduced precision: ``bf16``/``fp16`` store the rows rounded, ``int8`` stores
    ``round(r / s)`` with a per-dimension scale ``s = max|r_d| / 127`` folded into
    the queries (``q·r ≈ (q ∘ s)·round(r / s)``). Low-precision scores choose
    ``kk = oversample · k`` candidates; the fp32 re-score then orders them, so the
    only recall loss is a true neighbour ranked below ``kk`` by rounding. On the CPU the
    re-score reads the caller's fp32 rows (kept by reference), so every precision returns
    exact fp32 scores.

    int8 on the CPU is integer arithmetic end to end: each query block, ``q ∘ s``
    rounded to int8 with its own scale (a per-query factor does not change that
    query's order), is multiplied with each chunk of codes by ``torch._int_mm``
    (int32 scores, exact for these integers), and each score tile is reduced at once,
    while it is in cache, to the maxima of :data:`INT8_GROUP` columns (the group-maximum
    prefilter of the module docstring, with strided groups: columns ``c, c + T/G, ...``
    of a ``T``-row tile, an elementwise max of ``G`` contiguous slices). The ``kk = oversample · k``
    groups with the largest maxima hold the top ``kk`` int8 scores; their ``kk·G`` rows
    are re-scored against the caller's fp32 rows ``refs`` (kept by reference, not
    copied: a memory-mapped array is read only at those rows), so the final scores and
    order are exact fp32 and the resident copy is the int8 codes, a quarter of the fp32
    rows. Everything in the loop is torch (one OpenMP runtime): a per-tile faiss heap,
    tried first, ran 2x slower when faiss had been imported before torch, its threads and
    torch's taking turns on the cores every tile.

    On CUDA with Triton installed (``fused=True``, default), the GEMM and the group
    maxima are one kernel (:func:`ip_group_max`) writing ``N / group`` group and
    ``N / SUPER_GROUP`` super-group maxima per query instead of ``N`` scores; the
    ``k`` groups holding the top ``k`` are found through both levels
    (:func:`select_candidates`) and their ``k·group`` rows re-scored in fp32 by a
    second kernel (:func:`rescore_candidates`; ``oversample`` is not used there: all
    ``k·group`` candidates are re-scored). Query blocks are uploaded through pinned
    memory on a side stream while the previous block computes, and results stay on
    the device until the last block, so the GPU never waits for the host.

    Parameters
    ----------
    refs : float32 ``[shape=(N, d)]``
    device : str, ``cpu`` or ``cuda[:N]``
    precision : {"fp32", "bf16", "fp16", "int8"}
    query_block : int > 0, queries per block (default 1024 on CPU, 8192 on CUDA)
    ref_block : int > 0, reference rows per GEMM (default 16384 on CPU, 4096 for int8 on
        the CPU, whose 1024 x 4096 int32 tile stays in the last-level cache, 262144 on CUDA)
    oversample : int >= 1, candidates per wanted neighbour at reduced precision (default 3;
        groups of :data:`INT8_GROUP` rows per wanted neighbour for int8 on the CPU, default 2:
        recall@10 0.9998 at 1M x 512 where 1 gave 0.964)
    group : int >= 1, columns per group of the prefilter (default 16 on CUDA, 1 = off on the CPU;
        fused: a power of two in 2..64)
    fused : bool or None, use the Triton kernel on CUDA (None: when available, for
        fp16, bf16 and int8; fp32 is searched exactly through cuBLAS)
    threads : int or None, torch CPU threads (default: leave torch's setting)
    """

    def __init__(self, refs: np.ndarray, *, device: str = "cpu", precision: str = "fp32",
                 query_block: int | None = None, ref_block: int | None = None, oversample: int | None = None,
                 group: int | None = None, fused: bool | None = None, threads: int | None = None):
        import torch

        if precision not in PRECISIONS:
            raise ParameterError(f"precision must be one of {PRECISIONS}, given precision={precision!r}")
        if (oversample is not None and oversample < 1) or (group is not None and group < 1):
            raise ParameterError(f"oversample and group must be >= 1, given {oversample}, {group}")
        refs = _check_refs(refs, "ip")
        self.device = resolve_device(device)
        cuda = self.device.startswith("cuda")
        if threads is not None and not cuda:
            torch.set_num_threads(threads)
        self.precision = precision
        self.storage_dtype, self.compute_dtype = _torch_dtype(precision, self.device)
        self.ntotal, self.dim = refs.shape
        self.query_block = query_block or (8192 if cuda else 1024)
        self.int8_gemm = self.compute_dtype == torch.int8
        self.ref_block = ref_block or (262144 if cuda else 4096 if self.int8_gemm else 16384)
        if self.int8_gemm:                               # whole groups of INT8_GROUP rows a tile
            self.ref_block = -(-self.ref_block // INT8_GROUP) * INT8_GROUP
            oversample = oversample or 2
        self.oversample = 1 if precision == "fp32" else (oversample or 3)
        if fused is None:
            # fp32 stays on cuBLAS (TF32 off: exact); the kernel's tl.dot would round fp32
            # inputs to TF32 and its fp16-sized tiles do not fit fp32 in shared memory
            fused = cuda and precision != "fp32" and _triton_ok()
        elif fused and not (cuda and _triton_ok()):
            raise ParameterError("fused=True needs a CUDA device and Triton")
        self.fused = fused
        # CUDA: 16 re-scores only 16·k rows per query (0.55 ms per 8192-query block
        # at 1M refs on an H100, against 1.0 ms for 32); the selection reads the
        # N / 128 super-group maxima, so the finer groups cost the top-k nothing
        # (1.16 against 1.06 ms). CPU: bf16 reductions are not vectorised in torch,
        # so amax over the tile cost more than a plain topk (measured on this Zen 4): off.
        self.group = group or (16 if cuda else 1)
        scale = None
        if precision == "int8":
            amax = np.abs(refs).max(0)
            scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        self.scale = None if scale is None else torch.from_numpy(scale).to(self.device)
        # reduced precision on the CPU: candidates are re-scored against the caller's fp32 rows
        # (no copy), so scores are exact fp32 whichever precision chose them
        self.exact = refs if not cuda and precision != "fp32" else None
        if not cuda and precision == "fp32":
            # the caller's rows as they are (a view, not a copy: the scanner's index already holds them)
            self.refs = torch.from_numpy(refs)
            self.nbytes = 0
            return
        # copy in slices: never hold a second full fp32 copy on the device
        self.refs = torch.empty((self.ntotal, self.dim), dtype=self.storage_dtype, device=self.device)
        for r0 in range(0, self.ntotal, 1 << 18):
            part = refs[r0:r0 + (1 << 18)]
            if scale is not None:
                part = np.clip(np.rint(part / scale), -127, 127).astype(np.int8)
            self.refs[r0:r0 + len(part)] = torch.from_numpy(np.ascontiguousarray(part)).to(self.device)
        self.nbytes = self.refs.element_size() * self.refs.numel()
        LOG.debug("torch searcher: %d x %d %s on %s (%.2f GiB)", self.ntotal, self.dim, precision,
                  self.device, self.nbytes / 2**30)

    # the query as the GEMM sees it: per-dimension int8 scale folded in
    def _prepare_queries(self, q: Any) -> Any:
        if self.scale is not None:
            q = q * self.scale
        if self.int8_gemm:
            # each query rounded to int8 on its own scale: the order of its scores is unchanged
            top = q.abs().amax(1, keepdim=True).clamp_min(1e-30)
            return (q * (127.0 / top)).round_().to(self.compute_dtype)
        return q.to(self.compute_dtype)

    def _rescore(self, q32: Any, cand: Any) -> Any:
        """fp32 inner products of each query with its candidate rows ``[shape=(q, c)]``."""
        import torch

        if self.exact is not None:
            rows = torch.from_numpy(self.exact[cand.clamp(min=0).reshape(-1).numpy()]).view(*cand.shape, self.dim)
        else:
            rows = self.refs[cand.reshape(-1)].view(*cand.shape, self.dim).float()
            if self.scale is not None:
                rows = rows * self.scale
        scores = torch.bmm(rows, q32.unsqueeze(-1)).squeeze(-1)
        if self.exact is not None:
            scores.masked_fill_(cand < 0, float("-inf"))             # past the last row
        return scores

    def _int8_candidates(self, q: Any, groups: int) -> Any:
        """Rows ``[shape=(q, groups · INT8_GROUP)]`` of the ``groups`` int8 score groups with the largest maxima.

        Rows past the last reference (the last tile's padding) are -1.
        """
        import torch

        n, g = q.shape[0], INT8_GROUP
        tile = self.ref_block
        width = tile // g                                    # groups a tile
        tiles = -(-self.ntotal // tile)
        groups = min(groups, tiles * width)
        per = min(tiles, INT8_MERGE_TILES)
        maxima = torch.empty((n, per * width), dtype=torch.int32)
        best_v = best_g = None
        fill, first = 0, 0
        for t in range(tiles):
            r0 = t * tile
            S = torch._int_mm(q, self.refs[r0:r0 + tile].T)
            if S.shape[1] < tile:                            # the last tile: pad to whole groups
                S = torch.nn.functional.pad(S, (0, tile - S.shape[1]), value=torch.iinfo(torch.int32).min)
            # group c of this tile is columns c, c + width, ..., c + (g-1)·width: max of g slices
            torch.amax(S.view(n, g, width), 1, out=maxima[:, fill * width:(fill + 1) * width])
            fill += 1
            if fill == per or t == tiles - 1:
                fresh = maxima[:, :fill * width]
                if best_v is None:
                    best_v, j = fresh.topk(min(groups, fresh.shape[1]), 1, sorted=False)
                    best_g = j + first * width
                else:
                    kb = best_v.shape[1]
                    v, j = torch.cat([best_v, fresh], 1).topk(min(groups, kb + fresh.shape[1]), 1, sorted=False)
                    best_g = torch.where(j < kb, best_g.gather(1, j.clamp(max=kb - 1)), j - kb + first * width)
                    best_v = v
                fill, first = 0, t + 1
        rows = ((best_g // width) * tile + best_g % width).unsqueeze(-1) + torch.arange(g) * width
        rows = rows.reshape(n, -1)
        return rows.masked_fill_(rows >= self.ntotal, -1)

    def _block_candidates(self, q: Any, kk: int) -> Any:
        """Row numbers ``[shape=(q, kk)]`` of the top-``kk`` low-precision scores of ``q``."""
        import torch

        nq = q.shape[0]
        best_v = torch.empty((nq, 0), dtype=self.compute_dtype, device=q.device)
        best_i = torch.empty((nq, 0), dtype=torch.int64, device=q.device)
        for r0 in range(0, self.ntotal, self.ref_block):
            chunk = self.refs[r0:r0 + self.ref_block]
            if chunk.dtype != self.compute_dtype:
                chunk = chunk.to(self.compute_dtype)
            S = q @ chunk.T
            v, i = _topk_grouped(S, min(kk, S.shape[1]), self.group)
            del S
            best_v = torch.cat([best_v, v], 1)
            best_i = torch.cat([best_i, i + r0], 1)
            if best_v.shape[1] > kk:
                best_v, j = best_v.topk(kk, dim=1, sorted=False)
                best_i = best_i.gather(1, j)
        return best_i

    def _fused_block(self, q32: Any, q: Any, k: int) -> tuple[Any, Any]:
        """Top-``k`` fp32 scores and rows of one query block, through the fused kernel.

        One kernel pass (:func:`ip_group_max`) gives, per query, the maximum of every
        ``group`` columns and of every :data:`SUPER_GROUP` columns. The ``k`` super-groups
        with the largest maxima hold the top ``k`` scores, and among their groups the ``k``
        with the largest maxima do too (the argument of the module docstring, applied
        twice), so only ``k·group`` rows per query are scored again, in fp32, by a second
        kernel that reads each candidate row once (:func:`rescore_candidates`).
        """
        g = self.group
        gmax, smax = ip_group_max(q, self.refs, group=g, super_group=SUPER_GROUP)
        cols = select_candidates(gmax, smax, k, g)
        del gmax, smax
        scores = rescore_candidates(q32, self.refs, cols, self.scale)   # -inf past the last row
        v, j = scores.topk(min(k, cols.shape[1]), dim=1)
        return v, cols.gather(1, j)

    def _upload(self, queries: np.ndarray) -> Any:
        """Query blocks on the device, in order: pinned double buffer, copies on a side stream.

        The copy of block ``b + 1`` overlaps the search of block ``b``; the host waits
        only before reusing a pinned buffer, two blocks behind.
        """
        import torch

        n, qb = len(queries), self.query_block
        if not self.device.startswith("cuda") or n <= qb:
            for q0 in range(0, n, qb):
                yield torch.from_numpy(queries[q0:q0 + qb]).to(self.device)
            return
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        pinned = [torch.empty((qb, self.dim), dtype=torch.float32, pin_memory=True) for _ in range(2)]
        done: list[Any] = [None, None]

        def start(b: int) -> Any:
            slot, src = b % 2, queries[b * qb:(b + 1) * qb]
            if done[slot] is not None:
                done[slot].synchronize()
            buf = pinned[slot][:len(src)]
            np.copyto(buf.numpy(), src)
            with torch.cuda.stream(side):
                dev = buf.to(self.device, non_blocking=True)
                done[slot] = torch.cuda.Event()
                done[slot].record(side)
            return dev

        blocks = -(-n // qb)
        nxt = start(0)
        for b in range(blocks):
            cur = nxt
            main.wait_event(done[b % 2])
            cur.record_stream(main)
            if b + 1 < blocks:
                nxt = start(b + 1)
            yield cur

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        kk = min(self.ntotal, k * self.oversample)
        out_d, out_i = [], []
        with torch.inference_mode():
            for q32 in self._upload(queries):
                q = self._prepare_queries(q32)
                if self.fused:
                    v, idx = self._fused_block(q32, q, k)
                else:
                    cand = self._int8_candidates(q, kk) if self.int8_gemm else self._block_candidates(q, kk)
                    # fp32 re-score of the survivors (cheap) fixes low-precision order; the
                    # gathered rows are bounded to 64 MB a step
                    step = max(1, min(1024, (64 << 20) // (4 * self.dim * cand.shape[1])))
                    scores = torch.cat([self._rescore(q32[j:j + step], cand[j:j + step])
                                        for j in range(0, len(q32), step)])
                    v, j = scores.topk(min(k, cand.shape[1]), dim=1)
                    idx = cand.gather(1, j)
                # ties: order by row number like faiss (stable sort after a row sort)
                order = torch.argsort(idx, dim=1)
                v, idx = v.gather(1, order), idx.gather(1, order)
                order = torch.argsort(v, dim=1, descending=True, stable=True)
                # results stay on the device until the end: no host sync per block
                out_d.append(v.gather(1, order))
                out_i.append(idx.gather(1, order))
            D, I = torch.cat(out_d).cpu().numpy(), torch.cat(out_i).cpu().numpy()
        return D.astype(np.float32), I.astype(np.int64)


def _triton_ok() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


#: Columns per super-group: the fused kernel also writes the maximum of every
#: ``SUPER_GROUP`` columns, so the group selection reads ``N / SUPER_GROUP`` values per
#: query instead of ``N / group``. A divisor of every tile width ``BN`` the kernel uses.
SUPER_GROUP = 128
#: Persistent grid of the fused kernel: programs per multiprocessor.
PROGRAMS_PER_SM = 1

_KERNELS: dict[str, Any] = {}


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _ip_group_max_kernel() -> Any:
    """Compile (once) the Triton kernel: tile GEMM with a per-group max epilogue.

    Persistent: ``PROGRAMS_PER_SM`` programs per multiprocessor walk the tiles in a
    grouped order (``GROUP_M`` query tiles share each reference tile in L2), and the
    tile loop is flattened into the ``d`` loop, so the loads of the next tile are in
    flight during the max epilogue of this one (with ``d = 512`` a tile is only
    ``512 / BK`` steps deep: without that, every tile pays a pipeline fill). With
    ``TMA`` the tiles come in through Hopper's bulk tensor copies (``tl.make_tensor_descriptor``).
    """
    if "ip" in _KERNELS:
        return _KERNELS["ip"]
    import triton
    import triton.language as tl

    configs = [
        triton.Config({"BM": 128, "BN": 256, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BM": 128, "BN": 256, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BM": 128, "BN": 256, "BK": 64, "GROUP_M": 64}, num_warps=8, num_stages=3),
        triton.Config({"BM": 128, "BN": 256, "BK": 128, "GROUP_M": 8}, num_warps=8, num_stages=2),
        triton.Config({"BM": 256, "BN": 128, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BM": 128, "BN": 128, "BK": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
    ]
    if os.environ.get("LIKENESS_IP_CONFIG"):  # benchmarks: pin one config, "BM,BN,BK,GROUP_M,warps,stages"
        bm, bn, bk, gm, w, s = (int(x) for x in os.environ["LIKENESS_IP_CONFIG"].split(","))
        configs = [triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": gm}, num_warps=w, num_stages=s)]
    if _interpret():  # CPU interpreter (tests): one small config
        configs = [triton.Config({"BM": 32, "BN": 128, "BK": 32, "GROUP_M": 2})]

    @triton.autotune(configs=configs, key=["d", "G", "SG", "TMA", "WRITE_S"])
    @triton.jit
    def kernel(Q, R, M, S, nq, nr, ng, ns, d, sq, sr, sm, ss, G: tl.constexpr, SG: tl.constexpr,
               TMA: tl.constexpr, WRITE_S: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
               BK: tl.constexpr, GROUP_M: tl.constexpr):
        num_m = tl.cdiv(nq, BM)
        num_n = tl.cdiv(nr, BN)
        in_group = GROUP_M * num_n
        if TMA:
            q_desc = tl.make_tensor_descriptor(Q, shape=[nq, d], strides=[sq, 1], block_shape=[BM, BK])
            r_desc = tl.make_tensor_descriptor(R, shape=[nr, d], strides=[sr, 1], block_shape=[BN, BK])
        for tile in tl.range(tl.program_id(0), num_m * num_n, tl.num_programs(0), flatten=True):
            first_m = (tile // in_group) * GROUP_M
            size_m = tl.minimum(num_m - first_m, GROUP_M)
            pid_m = first_m + (tile % in_group) % size_m
            pid_n = (tile % in_group) // size_m
            offs_m = pid_m * BM + tl.arange(0, BM)
            offs_n = pid_n * BN + tl.arange(0, BN)
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for k0 in range(0, d, BK):
                if TMA:  # out-of-range rows and columns read as zeros
                    a = q_desc.load([pid_m * BM, k0])
                    b = r_desc.load([pid_n * BN, k0])
                else:
                    offs_k = k0 + tl.arange(0, BK)
                    a = tl.load(Q + offs_m[:, None].to(tl.int64) * sq + offs_k[None, :],
                                mask=(offs_m[:, None] < nq) & (offs_k[None, :] < d), other=0.0)
                    b = tl.load(R + offs_n[:, None].to(tl.int64) * sr + offs_k[None, :],
                                mask=(offs_n[:, None] < nr) & (offs_k[None, :] < d), other=0.0)
                acc = tl.dot(a, tl.trans(b.to(a.dtype)), acc)  # int8 rows widen here, in registers
            acc = tl.where(offs_n[None, :] < nr, acc, float("-inf"))
            gmax = tl.max(tl.reshape(acc, (BM, BN // G, G)), axis=2)
            offs_g = pid_n * (BN // G) + tl.arange(0, BN // G)
            rows = offs_m[:, None].to(tl.int64)
            tl.store(M + rows * sm + offs_g[None, :], gmax, mask=(offs_m[:, None] < nq) & (offs_g[None, :] < ng))
            if WRITE_S:
                smax = tl.max(tl.reshape(gmax, (BM, BN // SG, SG // G)), axis=2)
                offs_s = pid_n * (BN // SG) + tl.arange(0, BN // SG)
                tl.store(S + rows * ss + offs_s[None, :], smax,
                         mask=(offs_m[:, None] < nq) & (offs_s[None, :] < ns))

    _KERNELS["ip"] = kernel
    return kernel


_allocator_set = False


def _use_tma(q: Any, refs: Any) -> bool:
    """Bulk tensor copies: Hopper or newer, same dtype, 16-byte aligned rows (env ``LIKENESS_TMA=0`` turns off)."""
    global _allocator_set
    import torch
    import triton

    if _interpret() or os.environ.get("LIKENESS_TMA", "1") == "0" or not q.is_cuda:
        return False
    if torch.cuda.get_device_capability(q.device)[0] < 9 or refs.dtype != q.dtype:
        return False
    if any(t.data_ptr() % 16 or (t.stride(0) * t.element_size()) % 16 for t in (q, refs)):
        return False
    if not _allocator_set:
        set_allocator = getattr(triton, "set_allocator", None)
        if set_allocator is None:
            return False
        # device-side tensor descriptors need a little global scratch memory
        set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
        _allocator_set = True
    return True


def ip_group_max(q: Any, refs: Any, *, group: int = 32, super_group: int | None = None) -> Any:
    """Per-group maxima of ``q @ refs.T`` without writing the score matrix.

    Parameters
    ----------
    q : torch.Tensor ``[shape=(nq, d)]`` fp16/bf16/fp32 on CUDA (or CPU under ``TRITON_INTERPRET=1``)
    refs : torch.Tensor ``[shape=(N, d)]``, same dtype as ``q`` or int8
    group : int, power of two in 2..64, columns per group
    super_group : int or None, power-of-two multiple of ``group`` dividing 128: also
        return the maxima over ``super_group`` columns

    Returns
    -------
    gmax : torch.Tensor float32 ``[shape=(nq, ceil(N / group))]``; max over the scores
        of columns ``[g·group, (g+1)·group)``, accumulated in fp32
    smax : torch.Tensor float32 ``[shape=(nq, ceil(N / super_group))]``, only when
        ``super_group`` is given
    """
    import torch
    import triton

    if group < 2 or group > 64 or group & (group - 1):
        raise ParameterError(f"group must be a power of two in 2..64, given group={group}")
    sg = super_group or 128
    if sg % group or sg > 128 or sg & (sg - 1):
        raise ParameterError(f"super_group must be a power-of-two multiple of group up to 128, given {super_group}")
    nq, d = q.shape
    nr = refs.shape[0]
    ng, ns = -(-nr // group), -(-nr // sg)
    out = torch.empty((nq, ng), dtype=torch.float32, device=q.device)
    sout = torch.empty((nq, ns if super_group else 1), dtype=torch.float32, device=q.device)
    q = q.contiguous()
    refs = refs.contiguous()
    kernel = _ip_group_max_kernel()
    if q.is_cuda:
        slots = PROGRAMS_PER_SM * torch.cuda.get_device_properties(q.device).multi_processor_count
    else:
        slots = 4
    grid = lambda meta: (min(slots, triton.cdiv(nq, meta["BM"]) * triton.cdiv(nr, meta["BN"])),)  # noqa: E731
    kernel[grid](q, refs, out, sout, nq, nr, ng, ns, d, q.stride(0), refs.stride(0), out.stride(0), sout.stride(0),
                 G=group, SG=sg, TMA=_use_tma(q, refs), WRITE_S=bool(super_group))
    return (out, sout) if super_group else out


def select_candidates(gmax: Any, smax: Any, k: int, group: int) -> Any:
    """Columns of the ``k`` groups with the largest maxima, through the super-group maxima.

    Parameters
    ----------
    gmax, smax : torch.Tensor float32 ``[shape=(nq, ng)]``, ``[shape=(nq, ns)]``, from
        :func:`ip_group_max` with ``super_group=SUPER_GROUP``
    k : int >= 1
    group : int, columns per group

    Returns
    -------
    cols : torch.Tensor int64 ``[shape=(nq, min(k, ng) · group)]``, row numbers (those of
        the last group may run past the last row)
    """
    import torch

    nq, ng = gmax.shape
    kg = min(k, ng)
    dev = gmax.device
    if smax.shape[1] > kg:
        per = SUPER_GROUP // group
        _, si = smax.topk(kg, dim=1, sorted=False)
        gidx = (si.unsqueeze(-1) * per + torch.arange(per, device=dev)).reshape(nq, -1)
        gv = gmax.gather(1, gidx.clamp(max=ng - 1)).masked_fill_(gidx >= ng, float("-inf"))
        _, j = gv.topk(kg, dim=1, sorted=False)
        gi = gidx.gather(1, j)
    else:
        _, gi = gmax.topk(kg, dim=1, sorted=False)
    return (gi.unsqueeze(-1) * group + torch.arange(group, device=dev)).reshape(nq, -1)


_RESCORE: Any = None


def _rescore_kernel() -> Any:
    global _RESCORE
    if _RESCORE is not None:
        return _RESCORE
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(Q, R, SC, C, O, nr, nc, d, sq, sr, sc, so, HAS_SCALE: tl.constexpr, BC: tl.constexpr,
               BD: tl.constexpr):
        i = tl.program_id(0)
        offs_c = tl.program_id(1) * BC + tl.arange(0, BC)
        in_c = offs_c < nc
        cols = tl.load(C + i * sc + offs_c, mask=in_c, other=0)
        valid = in_c & (cols >= 0) & (cols < nr)
        rows = tl.where(valid, cols, 0).to(tl.int64) * sr
        acc = tl.zeros((BC,), dtype=tl.float32)
        for d0 in range(0, d, BD):
            offs_d = d0 + tl.arange(0, BD)
            in_d = offs_d < d
            qv = tl.load(Q + i.to(tl.int64) * sq + offs_d, mask=in_d, other=0.0)
            if HAS_SCALE:
                qv = qv * tl.load(SC + offs_d, mask=in_d, other=0.0)
            r = tl.load(R + rows[:, None] + offs_d[None, :], mask=valid[:, None] & in_d[None, :], other=0.0)
            acc += tl.sum(r.to(tl.float32) * qv[None, :], axis=1)
        tl.store(O + i.to(tl.int64) * so + offs_c, tl.where(valid, acc, float("-inf")), mask=in_c)

    _RESCORE = kernel
    return kernel


def rescore_candidates(q32: Any, refs: Any, cols: Any, scale: Any = None) -> Any:
    """fp32 inner products of each query with its candidate rows, reading each row once.

    Parameters
    ----------
    q32 : torch.Tensor float32 ``[shape=(nq, d)]``
    refs : torch.Tensor ``[shape=(N, d)]`` (any stored dtype; widened to fp32 in registers)
    cols : torch.Tensor int64 ``[shape=(nq, c)]``, row numbers; those outside ``[0, N)`` score ``-inf``
    scale : torch.Tensor float32 ``[shape=(d,)]`` or None, per-dimension scale of int8 rows

    Returns
    -------
    scores : torch.Tensor float32 ``[shape=(nq, c)]``
    """
    import torch

    nq, nc = cols.shape
    d = q32.shape[1]
    out = torch.empty((nq, nc), dtype=torch.float32, device=q32.device)
    if nq == 0 or nc == 0:
        return out
    q32, refs, cols = q32.contiguous(), refs.contiguous(), cols.contiguous()
    bc = 16
    bd = min(128, 1 << max(4, (d - 1).bit_length()))
    sc = scale if scale is not None else q32
    _rescore_kernel()[(nq, -(-nc // bc))](q32, refs, sc, cols, out, refs.shape[0], nc, d, q32.stride(0),
                                          refs.stride(0), cols.stride(0), out.stride(0),
                                          HAS_SCALE=scale is not None, BC=bc, BD=bd, num_warps=4)
    return out


# --------------------------------------------------------------------------- postings

#: Key spaces up to this many values get a direct-address directory (int32/int64 row starts).
DIRECTORY_MAX_KEYS = 1 << 24


def key_directory(keys: np.ndarray) -> np.ndarray | None:
    """Row where every key value starts in a sorted key column: a direct-address table.

    ``rows[directory[v]:directory[v + 1]]`` are the rows whose key is ``v``, so a
    lookup is two reads from one cache line instead of a binary search over the
    whole column (``log2 N`` dependent reads, most of them cache misses at 10M rows).

    Parameters
    ----------
    keys : uint32 ``[shape=(n,)]``, sorted ascending

    Returns
    -------
    directory : int32 (int64 past 2**31 rows) ``[shape=(max_key + 2,)]``, or None when
        the key space is larger than :data:`DIRECTORY_MAX_KEYS` (binary search is then used)
    """
    keys = np.asarray(keys)
    if keys.ndim != 1:
        raise ParameterError(f"keys must be 1-D, given shape={keys.shape}")
    top = int(keys[-1]) + 1 if len(keys) else 0
    if top > DIRECTORY_MAX_KEYS:
        return None
    dtype = np.int32 if len(keys) < 2**31 else np.int64
    directory = np.zeros(top + 1, dtype)
    np.cumsum(np.bincount(keys, minlength=top), out=directory[1:])
    return directory


def postings_ranges(keys: np.ndarray, probes: np.ndarray, *,
                    directory: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row ranges of the sorted ``keys`` equal to each probe key.

    Parameters
    ----------
    keys : uint32 ``[shape=(n,)]``, sorted ascending
    probes : uint32 ``[shape=(m,)]``, any order
    directory : from :func:`key_directory` on ``keys``, or None (binary search)

    Returns
    -------
    lo, hi : int64 ``[shape=(m,)]``; rows ``lo[i]:hi[i]`` hold key ``probes[i]`` (empty when absent)
    """
    probes = np.asarray(probes)
    if directory is None:
        return (np.searchsorted(keys, probes, side="left").astype(np.int64),
                np.searchsorted(keys, probes, side="right").astype(np.int64))
    p = probes.astype(np.int64)
    top = len(directory) - 1
    inside = p < top
    p = np.where(inside, p, top)            # a key past the last one has an empty range
    lo = directory[p].astype(np.int64)
    hi = directory[np.minimum(p + 1, top)].astype(np.int64)
    hi[~inside] = lo[~inside]
    return lo, hi


def expand_runs(source: np.ndarray, lo: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (source, row) pair of runs of rows ``lo[i] .. lo[i] + n[i] - 1``.

    Rows are written with one running sum over a step array (1 inside a run, a jump
    at each run's start), so each output byte is written about twice; the obvious
    ``np.repeat(starts) + np.arange(total)`` writes it four times.

    Parameters
    ----------
    source : int64 ``[shape=(m,)]``, the label of each run (a query hash number)
    lo, n : int64 ``[shape=(m,)]``, first row and length of each run (n >= 0)

    Returns
    -------
    q, r : int64 ``[shape=(n.sum(),)]``, run labels and rows, run after run
    """
    n = np.asarray(n, np.int64)
    total = int(n.sum())
    if not total:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keep = n > 0
    lo, n, source = np.asarray(lo, np.int64)[keep], n[keep], np.asarray(source, np.int64)[keep]
    first = np.zeros(len(n), np.int64)
    np.cumsum(n[:-1], out=first[1:])
    r = np.ones(total, np.int64)
    # at each run's first position: jump from the previous run's last row to this run's first
    r[first[1:]] = lo[1:] - (lo[:-1] + n[:-1] - 1)
    r[0] = lo[0]
    np.cumsum(r, out=r)
    return np.repeat(source, n), r


# --------------------------------------------------------------------------- helpers


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true neighbours found (``knn_intersection_measure`` / (n·k)).

    Parameters
    ----------
    found, truth : int64 ``[shape=(n, k)]`` row numbers, -1 for none

    Returns
    -------
    recall : float in [0, 1]
    """
    found, truth = np.asarray(found), np.asarray(truth)
    if found.shape[0] != truth.shape[0]:
        raise ParameterError(f"found and truth differ in rows: {found.shape} vs {truth.shape}")
    hits = sum(len(np.intersect1d(f[f >= 0], t[t >= 0])) for f, t in zip(found, truth))
    total = int((truth >= 0).sum())
    return hits / total if total else 1.0


_CACHE: dict[tuple[Any, ...], tuple[Any, Searcher]] = {}
_CACHE_SIZE = 4


def vectors_of(index: Any) -> np.ndarray:
    """The rows of a faiss index as an array: float32 ``[shape=(N, d)]`` (a view of a flat
    index's own rows, not a copy) or uint8 codes ``[shape=(N, bytes)]`` for a binary one."""
    import faiss

    if isinstance(index, faiss.IndexBinaryFlat):
        return faiss.vector_to_array(index.xb).reshape(index.ntotal, index.code_size)
    if isinstance(index, faiss.IndexFlat):
        return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
    return index.reconstruct_n(0, index.ntotal)


def searcher_for(index: Any, *, backend: str = "faiss", device: str = "cpu", precision: str = "fp32",
                 **options: Any) -> Searcher:
    """A (cached) searcher over a faiss index's rows with another backend.

    The torch backend copies the rows to the device once; the cache keeps that copy
    for the next batch of the same index (keyed by the index object and its size).
    """
    if backend == "faiss" and precision == "fp32" and device == "cpu":
        return FaissSearcher(index, **options)
    key = (id(index), int(index.ntotal), backend, device, precision, tuple(sorted(options.items())))
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is index:
        return hit[1]
    import faiss

    s: Searcher
    if backend == "faiss":  # on a GPU: the index itself, copied there once
        if precision != "fp32":
            raise ParameterError(f"backend='faiss' searches in fp32 only, given precision={precision!r}")
        s = FaissSearcher(index, device="cuda" if device == "auto" else device, **options)
    else:
        metric = "hamming" if isinstance(index, faiss.IndexBinary) else "ip"
        s = make_searcher(vectors_of(index), metric=metric, backend=backend, device=device, precision=precision,
                          **options)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = (index, s)
    return s


def knn(index: Any, queries: np.ndarray, k: int, *, backend: str = "faiss", device: str = "cpu",
        precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours of every query.

    Parameters
    ----------
    index : faiss.Index or faiss.IndexBinary
    queries : float32 ``[shape=(n, d)]`` (L2-normalised) or uint8 ``[shape=(n, d // 8)]``
    k : int > 0
    backend : {"faiss", "torch", "numpy"}; binary indexes use faiss or numpy
    device : {"cpu", "cuda", "auto"}; on a GPU (``cuda``, or ``auto`` when one is
        present) dense indexes are searched by torch, binary ones by faiss where faiss
        has GPU support and on the CPU otherwise
    precision : {"fp32", "bf16", "fp16", "int8"}, torch only

    Returns
    -------
    D : ``[shape=(n, k)]`` inner products (float32, larger is closer) or Hamming
        distances (int32, smaller is closer)
    I : int64 ``[shape=(n, k)]`` row numbers, -1 where the index has fewer than k rows
    """
    import faiss

    binary = isinstance(index, faiss.IndexBinary)
    if device != "cpu":
        if binary:
            # Hamming codes: faiss on its GPU where it has one, else the CPU (torch does no
            # Hamming search), so `scan --device cuda` still searches hashes on a faiss-cpu install
            gpu = backend == "faiss" and faiss_gpus() > 0
            device = ("cuda" if device == "auto" else device) if gpu else "cpu"
        else:
            # dense: torch's fused kernel on a GPU (benchmarks/README.md); cuda asked of a
            # machine without one is an error (resolve_device), auto falls back to the CPU
            device = resolve_device(device)
            if device != "cpu":
                backend = "torch"
    if isinstance(index, (faiss.IndexIVFPQ, faiss.IndexIVFScalarQuantizer)):
        # compressed codes are searched as built: another backend would search the decoded
        # (approximate) rows, all of them, in memory: 20 GB for a 10M x 512 index
        backend, device, precision = "faiss", "cpu", "fp32"
    k = max(1, min(_check_k(k), max(index.ntotal, 1)))
    n = len(queries)
    if n == 0 or index.ntotal == 0:
        return _empty(n, k, binary)
    if backend == "faiss" and device == "cpu" and n < SMALL_BATCH and type(index) in (faiss.IndexFlatIP,
                                                                                       faiss.IndexFlat):
        # a few queries: faiss scans the references on one thread, a BLAS product reads them
        # on every core (3x the queries/s at 10k-1M references, benchmarks/README.md sweep)
        backend = "numpy"
    return searcher_for(index, backend=backend, device=device, precision=precision).search(queries, k)
