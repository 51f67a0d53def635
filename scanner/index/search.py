"""Batched k-nearest-neighbour search over an index's vectors.

Queries are searched in blocks as one matrix product (dense) or one Hamming scan
(binary) plus top-k: keep it GEMM-shaped, never a Python loop per query.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

#: Queries per faiss call; bounds the (block, k) result buffers.
QUERY_BLOCK = 4096
#: Below this many distance computations per call, faiss runs on one thread:
#: waking an OpenMP team costs more than it saves, and its spinning threads
#: take the cores the decode workers need.
PARALLEL_WORK = 1 << 24
_configured = False
_n_threads = 1


def configure_faiss(threads: int | None = None) -> None:
    """Set faiss's threads and make small query batches use BLAS.

    faiss computes inner products with a slow non-BLAS loop below
    ``distance_compute_blas_threshold`` queries (20 by default), which is
    exactly the one-asset ``check`` case; a threshold of 1 keeps every batch on
    the GEMM path.
    """
    global _configured
    import faiss

    global _n_threads
    faiss.cvar.distance_compute_blas_threshold = 1
    _n_threads = threads or max(1, len(os.sched_getaffinity(0)))
    faiss.omp_set_num_threads(_n_threads)
    _configured = True


def _threads() -> int:
    return _n_threads


def knn(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours of every query.

    Parameters
    ----------
    index : faiss.Index or faiss.IndexBinary
    queries : float32 ``[shape=(n, d)]`` (L2-normalised) or uint8 ``[shape=(n, d // 8)]``
    k : int > 0

    Returns
    -------
    D : ``[shape=(n, k)]`` inner products (float32, larger is closer) or Hamming
        distances (int32, smaller is closer)
    I : int64 ``[shape=(n, k)]`` row numbers, -1 where the index has fewer than k rows
    """
    if not _configured:
        configure_faiss()
    n = len(queries)
    k = max(1, min(k, max(index.ntotal, 1)))
    if n == 0 or index.ntotal == 0:
        binary = queries.dtype == np.uint8
        return (np.zeros((n, k), np.int32 if binary else np.float32), np.full((n, k), -1, np.int64))
    import faiss

    out_d, out_i = [], []
    faiss.omp_set_num_threads(1 if min(n, QUERY_BLOCK) * index.ntotal < PARALLEL_WORK else _threads())
    for start in range(0, n, QUERY_BLOCK):
        block = np.ascontiguousarray(queries[start:start + QUERY_BLOCK])
        d, i = index.search(block, k)
        out_d.append(d)
        out_i.append(i)
    return np.concatenate(out_d), np.concatenate(out_i)
