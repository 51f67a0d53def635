"""What ``likeness bench search`` runs: search throughput against the machine's own limits.

Every figure is measured in the same process as the limit it is compared with:

- dense (``kind="dense"``): achieved GFLOP/s of the search, ``2·N·Q·D / t``, against
  the GFLOP/s of one fixed large square GEMM in the compute precision (4096³ on
  the CPU, 8192³ on CUDA), which is not the benchmark's own block shape;
- binary (``kind="binary"``): GB/s of codes scanned, ``N·Q·bytes / t``, against the
  memory read bandwidth of a large in-process reduction (a Hamming scan cannot go
  faster than reading the codes once per query block).

For ``kind="binary"`` the ``gflops`` and ``peak_gflops`` keys carry those GB/s
figures, so every result has the same keys.

Recall@k is measured against exact fp32 search (faiss flat on the CPU, plain
fp32 torch on CUDA) on the first ``recall_queries`` queries.
"""

from __future__ import annotations

import logging
import resource
import time
from typing import Any, Callable

import numpy as np

from scanner.errors import ParameterError
from scanner.index import search

LOG = logging.getLogger(__name__)

#: The JSON keys of every result, in order.
KEYS = ("qps", "gflops", "peak_gflops", "ratio", "recall", "rss_mb", "backend", "precision",
        "n_refs", "dim", "n_queries", "k")
KINDS = ("dense", "binary")


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


def synthetic_codes(n: int, nbits: int, *, seed: int = 0, source_dim: int = 32) -> np.ndarray:
    """Packed binary codes with neighbour structure: SimHash of mixture vectors.

    Each code is the sign pattern of a ``source_dim``-dimensional mixture vector
    against ``nbits`` random hyperplanes, so nearby vectors share most bits (as
    perceptual hashes of near-copies do) and Hamming top-k is meaningful.

    Returns
    -------
    codes : uint8 ``[shape=(n, nbits // 8)]``
    """
    if nbits % 8:
        raise ParameterError(f"nbits must be a multiple of 8, given nbits={nbits}")
    mix = GaussianMixture(source_dim, n_clusters=1024, seed=seed)
    planes = np.random.default_rng(seed + 7).standard_normal((source_dim, nbits)).astype(np.float32)
    out = np.empty((n, nbits // 8), np.uint8)
    block = 1 << 18
    for i, s in enumerate(range(0, n, block)):
        x = mix.sample(min(block, n - s), seed=seed * 1000 + i + 1)
        out[s:s + len(x)] = np.packbits(x @ planes > 0, axis=1)
    return out


# --------------------------------------------------------------------------- limits


def _best_time(fn: Callable[[], Any], repeat: int, sync: Callable[[], None] = lambda: None) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_peak(precision: str = "fp32", device: str = "cpu", *, size: int | None = None, repeat: int = 3) -> float:
    """GFLOP/s of one square ``size³`` GEMM in the compute precision of ``precision``.

    Parameters
    ----------
    precision : {"fp32", "bf16", "fp16", "int8"}; int8 storage is computed in bf16
        (CPU) or fp16 (CUDA), so its peak is theirs
    device : {"cpu", "cuda"}
    size : int, default 4096 on the CPU, 8192 on CUDA
    repeat : int, timed runs after a warm-up (the best counts)

    Returns
    -------
    gflops : float
    """
    import torch

    device = search.resolve_device(device)
    cuda = device.startswith("cuda")
    size = size or (8192 if cuda else 4096)
    _, dtype = search._torch_dtype(precision, device)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32, not TF32
    try:
        t = _best_time(lambda: a @ b, repeat, sync)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    flops = 2 * size**3 / t / 1e9
    if not cuda and precision == "fp32":
        # faiss multiplies with its own BLAS; count the faster of the two as the peak
        x = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
        flops = max(flops, 2 * size**3 / _best_time(lambda: x @ x, repeat) / 1e9)
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


# --------------------------------------------------------------------------- search


def exact_knn(refs: np.ndarray, queries: np.ndarray, k: int, *, metric: str = "ip",
              device: str = "cpu") -> np.ndarray:
    """Exact fp32 (or Hamming) neighbours, the reference for recall: ``I [shape=(n, k)]``."""
    device = search.resolve_device(device)
    if device.startswith("cuda") and metric == "ip":
        return plain_torch_knn(refs, queries, k, device=device)[1]
    try:
        import faiss  # noqa: F401
        backend = "faiss"
    except ImportError:
        backend = "numpy"
    return search.make_searcher(refs, metric=metric, backend=backend).search(queries, k)[1]


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


def bench_search(*, n_refs: int, dim: int = 512, n_queries: int = 10000, k: int = 10, backend: str = "faiss",
                 precision: str = "fp32", device: str = "cpu", kind: str = "dense", recall_queries: int = 1000,
                 repeat: int = 1, seed: int = 0, measure_peak: bool = True,
                 options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time one batched top-k search and compare it with the machine's limit.

    Parameters
    ----------
    n_refs, dim, n_queries, k : int > 0; for ``kind="binary"`` ``dim`` is bits
        (a multiple of 8, e.g. 64 or 256)
    backend : {"faiss", "torch", "numpy", "torch-plain"}; ``torch-plain`` is the
        naive fp32 ``matmul`` + ``topk`` baseline (:func:`plain_torch_knn`)
    precision : {"fp32", "bf16", "fp16", "int8"}
    device : {"cpu", "cuda", "auto"}
    kind : {"dense", "binary"}
    recall_queries : int, queries whose recall is measured against exact search
        (0 skips it; recall is then ``None``)
    repeat : int >= 1, timed runs; the fastest counts
    seed : int, data seed
    measure_peak : bool, also time the square GEMM / bandwidth (else peak is None)
    options : dict, searcher options (``query_block``, ``ref_block``, ...)

    Returns
    -------
    result : dict with exactly :data:`KEYS`
    """
    if kind not in KINDS:
        raise ParameterError(f"kind must be one of {KINDS}, given kind={kind!r}")
    for name, v in (("n_refs", n_refs), ("dim", dim), ("n_queries", n_queries), ("k", k), ("repeat", repeat)):
        if v < 1:
            raise ParameterError(f"{name} must be >= 1, given {name}={v}")
    device = search.resolve_device(device)
    cuda = device.startswith("cuda")
    metric = "hamming" if kind == "binary" else "ip"
    LOG.info("bench: %s %s %s on %s, %d refs x %d, %d queries, k=%d", kind, backend, precision, device,
             n_refs, dim, n_queries, k)
    if kind == "binary":
        codes = synthetic_codes(n_refs + n_queries, dim, seed=seed)
        refs, queries = codes[:n_refs], codes[n_refs:]
    else:
        mix = GaussianMixture(dim, seed=seed)
        refs, queries = mix.sample(n_refs, seed=seed + 1), mix.sample(n_queries, seed=seed + 2)

    if backend == "torch-plain":
        if precision != "fp32" or kind != "dense":
            raise ParameterError("backend='torch-plain' is the dense fp32 baseline only")
        run = lambda: plain_torch_knn(refs, queries, k, device=device)  # noqa: E731
    else:
        searcher = search.make_searcher(refs, metric=metric, backend=backend, device=device,
                                        precision=precision, **(options or {}))
        run = lambda: searcher.search(queries, k)  # noqa: E731
    if cuda:
        import torch
        sync: Callable[[], None] = torch.cuda.synchronize
    else:
        sync = lambda: None  # noqa: E731
    best, found = float("inf"), None
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        found = run()
        sync()
        best = min(best, time.perf_counter() - t0)

    recall = None
    if recall_queries:
        m = min(recall_queries, n_queries)
        truth = exact_knn(refs, queries[:m], k, metric=metric, device=device)
        recall = round(search.recall_at_k(found[1][:m], truth), 5)

    if kind == "binary":
        achieved = n_refs * n_queries * (dim // 8) / best / 1e9          # GB/s of codes scanned
        peak = memory_bandwidth(device) if measure_peak else None
    else:
        achieved = 2.0 * n_refs * n_queries * dim / best / 1e9
        peak = gemm_peak(precision, device) if measure_peak else None
    result = {
        "qps": round(n_queries / best, 2),
        "gflops": round(achieved, 2),
        "peak_gflops": None if peak is None else round(peak, 2),
        "ratio": None if peak is None else round(achieved / peak, 4),
        "recall": recall,
        "rss_mb": round(rss_mb(), 1),
        "backend": backend,
        "precision": precision,
        "n_refs": n_refs,
        "dim": dim,
        "n_queries": n_queries,
        "k": k,
    }
    return {key: result[key] for key in KEYS}
