"""Batched k-nearest-neighbour search over an index's vectors.

Queries are searched in blocks as one matrix product (dense) or one Hamming scan
(binary) plus top-k: keep it GEMM-shaped, never a Python loop per query.

One small interface, several backends::

    searcher = make_searcher(refs, metric="ip", backend="torch", device="cuda", precision="fp16")
    D, I = searcher.search(queries, k)

- ``faiss``: exact flat (``IndexFlatIP`` / ``IndexBinaryFlat``) on the CPU, or an
  IVF index for approximate search (:func:`build_faiss_index` picks by size).
- ``torch``: dense inner product on ``cpu`` or ``cuda``; the reference matrix stays
  resident on the device in fp32, bf16, fp16 or int8 and is walked in chunks, with
  a running top-k merge, so memory is bounded by one (query block x ref chunk)
  score tile. On CUDA with Triton, the product and a per-group maximum are fused in
  one kernel, so the full score matrix never reaches GPU memory.
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
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Literal

import numpy as np

from scanner.errors import ParameterError

LOG = logging.getLogger(__name__)

#: Queries per faiss call; bounds the (block, k) result buffers.
QUERY_BLOCK = 4096
#: Below this many distance computations per call, faiss runs on one thread:
#: waking an OpenMP team costs more than it saves, and its spinning threads
#: take the cores the decode workers need.
PARALLEL_WORK = 1 << 24
#: Index sizes from which :func:`build_faiss_index` builds IVF instead of flat.
IVF_MIN_ROWS = 1 << 20

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


def _threads() -> int:
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


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; checks the name.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"} or "cuda:N"

    Returns
    -------
    device : str, ``cpu`` or ``cuda[:N]``
    """
    if device == "cpu":
        return "cpu"
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
    device : {"cpu", "cuda", "auto"}; only ``torch`` runs on ``cuda``
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
    device = resolve_device(device)
    if backend != "torch" and device != "cpu":
        raise ParameterError(f"backend={backend!r} runs on the CPU only, given device={device!r}")
    if backend != "torch" and precision != "fp32":
        raise ParameterError(f"backend={backend!r} searches in fp32 only, given precision={precision!r}; "
                             "reduced precision is offered by backend='torch'")
    if backend == "faiss":
        return FaissSearcher(build_faiss_index(refs, metric, kind="flat")[0], **options)
    if backend == "numpy":
        return NumpySearcher(refs, metric=metric, **options)
    if metric == "hamming":
        raise ParameterError("backend='torch' searches dense vectors only; use faiss or numpy for binary codes")
    return TorchSearcher(refs, device=device, precision=precision, **options)


# --------------------------------------------------------------------------- faiss


def build_faiss_index(vectors: np.ndarray, metric: str = "ip", *, kind: str = "auto",
                      nlist: int | None = None, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A faiss index over ``vectors``, flat or IVF chosen by size.

    Exact flat search up to :data:`IVF_MIN_ROWS` rows; above, an inverted-file
    index (``IndexIVFFlat``, ``nlist ≈ 4·√N`` lists, trained on a sample of at most
    ``64·nlist`` rows) whose ``nprobe`` is the smallest that reached recall@10 ≥ 0.95
    on held-in queries. Binary codes always get ``IndexBinaryFlat`` (a Hamming scan
    is memory-bound, so an inverted file buys little at these code sizes).

    Parameters
    ----------
    vectors : float32 ``[shape=(N, d)]`` or uint8 ``[shape=(N, bits // 8)]``
    metric : {"ip", "hamming"}
    kind : {"auto", "flat", "ivf"}
    nlist : int > 0 or None, inverted lists for IVF (default ``4·√N``, at least 16)
    seed : int, seed of the training sample and of the recall probe

    Returns
    -------
    index : faiss.Index or faiss.IndexBinary, with ``vectors`` added (row i = vector i)
    params : dict, JSON-ready description for the manifest
        (``{"type": "flat"}`` or ``{"type": "ivf", "nlist", "nprobe", "recall_at_10"}``)
    """
    import faiss

    vectors = _check_refs(vectors, metric)
    if kind not in ("auto", "flat", "ivf"):
        raise ParameterError(f"kind must be auto, flat or ivf, given kind={kind!r}")
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
    q = vectors[rows] + 0.5 * vectors.std(0) * rng.standard_normal((len(rows), vectors.shape[1]), np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    _, gt = flat.search(q, 10)
    nprobe, recall = 1, 0.0
    while nprobe <= index.nlist:
        index.nprobe = nprobe
        _, got = index.search(q, 10)
        recall = recall_at_k(got, gt)
        if recall >= target:
            break
        nprobe *= 2
    return min(nprobe, index.nlist), recall


class FaissSearcher(Searcher):
    """faiss CPU search over a built index (flat, IVF or binary flat).

    Parameters
    ----------
    index : faiss.Index or faiss.IndexBinary
    query_block : int > 0, queries per faiss call (bounds the result buffers)
    """

    def __init__(self, index: Any, *, query_block: int = QUERY_BLOCK):
        import faiss

        self.index = index
        self.metric = "hamming" if isinstance(index, faiss.IndexBinary) else "ip"
        self.ntotal = int(index.ntotal)
        self.dim = int(index.d)
        self.nbytes = self.ntotal * (self.dim // 8 if self.metric == "hamming" else 4 * self.dim)
        self.query_block = query_block

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not _configured:
            configure_faiss()
        import faiss

        n = len(queries)
        faiss.omp_set_num_threads(1 if min(n, self.query_block) * self.ntotal < PARALLEL_WORK else _threads())
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
    else:  # int8 values (|v| <= 127) are exact in both
        compute = torch.float16 if cuda else torch.bfloat16
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
    only recall loss is a true neighbour ranked below ``kk`` by rounding.

    On CUDA with Triton installed (``fused=True``, default), the GEMM and the group
    maxima are one kernel (:func:`ip_group_max`) writing ``N / group``
    maxima per query instead of ``N`` scores.

    Parameters
    ----------
    refs : float32 ``[shape=(N, d)]``
    device : str, ``cpu`` or ``cuda[:N]``
    precision : {"fp32", "bf16", "fp16", "int8"}
    query_block : int > 0, queries per block (default 1024 on CPU, 8192 on CUDA)
    ref_block : int > 0, reference rows per GEMM (default 16384 on CPU, 262144 on CUDA)
    oversample : int >= 1, candidates per wanted neighbour at reduced precision (default 3)
    group : int >= 1, columns per group of the prefilter (default 32 on CUDA, 1 = off on the CPU)
    fused : bool or None, use the Triton kernel on CUDA (None: when available)
    threads : int or None, torch CPU threads (default: leave torch's setting)
    """

    def __init__(self, refs: np.ndarray, *, device: str = "cpu", precision: str = "fp32",
                 query_block: int | None = None, ref_block: int | None = None, oversample: int = 3,
                 group: int | None = None, fused: bool | None = None, threads: int | None = None):
        import torch

        if precision not in PRECISIONS:
            raise ParameterError(f"precision must be one of {PRECISIONS}, given precision={precision!r}")
        if oversample < 1 or (group is not None and group < 1):
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
        self.ref_block = ref_block or (262144 if cuda else 16384)
        self.oversample = 1 if precision == "fp32" else oversample
        if fused is None:
            fused = cuda and _triton_ok()
        elif fused and not (cuda and _triton_ok()):
            raise ParameterError("fused=True needs a CUDA device and Triton")
        self.fused = fused
        # CUDA: 32 keeps the top-k over N / 32 maxima cheap and gathers only 32·k
        # rows per query again (measured on an H100: 16 costs more in the group
        # top-k). CPU: bf16 reductions are not vectorised in torch, so amax over
        # the tile cost more than a plain topk (measured on this Zen 4): off.
        self.group = group or (32 if cuda else 1)
        scale = None
        if precision == "int8":
            amax = np.abs(refs).max(0)
            scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        self.scale = None if scale is None else torch.from_numpy(scale).to(self.device)
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
        return q.to(self.compute_dtype)

    def _rescore(self, q32: Any, cand: Any) -> Any:
        """fp32 inner products of each query with its candidate rows ``[shape=(q, c)]``."""
        import torch

        rows = self.refs[cand.reshape(-1)].view(*cand.shape, self.dim).float()
        if self.scale is not None:
            rows = rows * self.scale
        return torch.bmm(rows, q32.unsqueeze(-1)).squeeze(-1)

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

    def _fused_candidates(self, q: Any, k: int, kk: int) -> Any:
        """As :meth:`_block_candidates`, the GEMM and group maxima fused in Triton.

        The ``k`` groups with the largest maxima hold the top ``k`` scores; their
        ``k·group`` rows are scored again (gathered rows x query, compute precision,
        fp32 accumulation) and the best ``kk`` returned.
        """
        import torch

        g = self.group
        nq = q.shape[0]
        gmax = ip_group_max(q, self.refs, group=g)             # (nq, ceil(N / g)) float32
        # kernel scores accumulate in fp32, so the top-k groups already hold the top k
        kg = min(k, gmax.shape[1])
        _, gi = _topk_grouped(gmax, kg, g)
        del gmax
        cols = (gi.unsqueeze(-1) * g + torch.arange(g, device=q.device)).reshape(nq, -1)
        valid = cols < self.ntotal                             # the last group may be short
        cols = cols.clamp_(max=self.ntotal - 1)
        out = []
        for j in range(0, nq, 1024):
            c = cols[j:j + 1024]
            rows = self.refs[c.reshape(-1)].view(*c.shape, self.dim)
            if rows.dtype != q.dtype:
                rows = rows.to(q.dtype)
            s = torch.bmm(rows, q[j:j + 1024].unsqueeze(-1)).squeeze(-1).float()
            s = s.masked_fill_(~valid[j:j + 1024], float("-inf"))
            _, pick = s.topk(min(kk, s.shape[1]), dim=1, sorted=False)
            out.append(c.gather(1, pick))
        return torch.cat(out)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        kk = min(self.ntotal, k * self.oversample)
        out_d, out_i = [], []
        with torch.inference_mode():
            for q0 in range(0, len(queries), self.query_block):
                q32 = torch.from_numpy(queries[q0:q0 + self.query_block]).to(self.device)
                q = self._prepare_queries(q32)
                cand = self._fused_candidates(q, k, kk) if self.fused else self._block_candidates(q, kk)
                # fp32 re-score of the kk survivors (cheap) fixes low-precision order
                scores = torch.cat([self._rescore(q32[j:j + 1024], cand[j:j + 1024])
                                    for j in range(0, len(q32), 1024)])
                v, j = scores.topk(min(k, cand.shape[1]), dim=1)
                idx = cand.gather(1, j)
                # ties: order by row number like faiss (stable sort after a row sort)
                order = torch.argsort(idx, dim=1)
                v, idx = v.gather(1, order), idx.gather(1, order)
                order = torch.argsort(v, dim=1, descending=True, stable=True)
                out_d.append(v.gather(1, order).cpu().numpy())
                out_i.append(idx.gather(1, order).cpu().numpy())
        return np.concatenate(out_d).astype(np.float32), np.concatenate(out_i).astype(np.int64)


def _triton_ok() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


_KERNEL: Any = None


def _ip_group_max_kernel() -> Any:
    """Compile (once) the Triton kernel: tile GEMM with a per-group max epilogue."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    import triton
    import triton.language as tl

    configs = [
        triton.Config({"BM": 128, "BN": 256, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BM": 128, "BN": 128, "BK": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
        triton.Config({"BM": 256, "BN": 128, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BM": 128, "BN": 256, "BK": 32, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BM": 128, "BN": 256, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BM": 128, "BN": 256, "BK": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BM": 256, "BN": 128, "BK": 64, "GROUP_M": 16}, num_warps=8, num_stages=4),
        triton.Config({"BM": 64, "BN": 256, "BK": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
    ]
    if os.environ.get("TRITON_INTERPRET") == "1":  # CPU interpreter (tests): one small config
        configs = [triton.Config({"BM": 32, "BN": 64, "BK": 32, "GROUP_M": 2})]

    @triton.autotune(configs=configs, key=["d", "G"])
    @triton.jit
    def kernel(Q, R, M, nq, nr, ng, d, sq, sr, sm, G: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
               BK: tl.constexpr, GROUP_M: tl.constexpr):
        pid = tl.program_id(0)
        num_m = tl.cdiv(nq, BM)
        num_n = tl.cdiv(nr, BN)
        # grouped launch order: GROUP_M query tiles share each reference tile in L2
        in_group = GROUP_M * num_n
        first_m = (pid // in_group) * GROUP_M
        size_m = min(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % in_group) % size_m
        pid_n = (pid % in_group) // size_m
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_n = pid_n * BN + tl.arange(0, BN)
        offs_k = tl.arange(0, BK)
        q_ptr = Q + offs_m[:, None] * sq + offs_k[None, :]
        r_ptr = R + offs_n[:, None] * sr + offs_k[None, :]
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, d, BK):
            kmask = offs_k[None, :] + k0 < d
            a = tl.load(q_ptr, mask=(offs_m[:, None] < nq) & kmask, other=0.0)
            b = tl.load(r_ptr, mask=(offs_n[:, None] < nr) & kmask, other=0.0)
            acc = tl.dot(a, tl.trans(b.to(a.dtype)), acc)  # int8 rows widen here, in registers
            q_ptr += BK
            r_ptr += BK
        acc = tl.where(offs_n[None, :] < nr, acc, float("-inf"))
        gmax = tl.max(tl.reshape(acc, (BM, BN // G, G)), axis=2)
        offs_g = pid_n * (BN // G) + tl.arange(0, BN // G)
        tl.store(M + offs_m[:, None] * sm + offs_g[None, :], gmax,
                 mask=(offs_m[:, None] < nq) & (offs_g[None, :] < ng))

    _KERNEL = kernel
    return kernel


def ip_group_max(q: Any, refs: Any, *, group: int = 32) -> Any:
    """Per-group maxima of ``q @ refs.T`` without writing the score matrix.

    Parameters
    ----------
    q : torch.Tensor ``[shape=(nq, d)]`` fp16/bf16/fp32 on CUDA (or CPU under ``TRITON_INTERPRET=1``)
    refs : torch.Tensor ``[shape=(N, d)]``, same dtype as ``q`` or int8
    group : int, power of two in 2..64, columns per group

    Returns
    -------
    gmax : torch.Tensor float32 ``[shape=(nq, ceil(N / group))]``; max over the scores
        of columns ``[g·group, (g+1)·group)``, accumulated in fp32
    """
    import torch
    import triton

    if group < 2 or group > 64 or group & (group - 1):
        raise ParameterError(f"group must be a power of two in 2..64, given group={group}")
    nq, d = q.shape
    nr = refs.shape[0]
    ng = -(-nr // group)
    out = torch.empty((nq, ng), dtype=torch.float32, device=q.device)
    q = q.contiguous()
    refs = refs.contiguous()
    kernel = _ip_group_max_kernel()
    grid = lambda meta: (triton.cdiv(nq, meta["BM"]) * triton.cdiv(nr, meta["BN"]),)  # noqa: E731
    kernel[grid](q, refs, out, nq, nr, ng, d, q.stride(0), refs.stride(0), out.stride(0), G=group)
    return out


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


def _vectors_of(index: Any) -> np.ndarray:
    """The rows of a flat faiss index as an array (no copy for flat float indexes)."""
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
    if backend == "faiss" and precision == "fp32" and resolve_device(device) == "cpu":
        return FaissSearcher(index, **options)
    key = (id(index), int(index.ntotal), backend, device, precision, tuple(sorted(options.items())))
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is index:
        return hit[1]
    import faiss

    metric = "hamming" if isinstance(index, faiss.IndexBinary) else "ip"
    s = make_searcher(_vectors_of(index), metric=metric, backend=backend, device=device, precision=precision,
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
    device : {"cpu", "cuda", "auto"}; ``auto`` picks torch on CUDA for dense
        indexes when a GPU is present, faiss otherwise
    precision : {"fp32", "bf16", "fp16", "int8"}, torch only

    Returns
    -------
    D : ``[shape=(n, k)]`` inner products (float32, larger is closer) or Hamming
        distances (int32, smaller is closer)
    I : int64 ``[shape=(n, k)]`` row numbers, -1 where the index has fewer than k rows
    """
    import faiss

    binary = isinstance(index, faiss.IndexBinary)
    if device == "auto":
        device = "cpu" if binary else resolve_device("auto")
        if device != "cpu":
            backend = "torch"
    k = max(1, min(_check_k(k), max(index.ntotal, 1)))
    n = len(queries)
    if n == 0 or index.ntotal == 0:
        return _empty(n, k, binary)
    return searcher_for(index, backend=backend, device=device, precision=precision).search(queries, k)
