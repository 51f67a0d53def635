"""A dense index larger than memory: build, size on disk, one-query latency, memory, recall.

The reference vectors are a streamed :class:`scanner.bench.GaussianMixture` (the
generator ``bench search`` uses), drawn block by block with a seed per block, so no
copy of the rows is ever held in memory or written to disk (10M x 512 fp32 is 20 GB).
The index is built the way ``likeness index build`` writes any feature: through
:class:`scanner.index.writer.IndexWriter` (staged, hashed into the manifest, swapped in
by rename), here from a :class:`scanner.search.VectorStream`; past
``search.COMPRESSED_MIN_BYTES`` of fp32 rows that is an IVF of SQ8 codes whose recall@10 against
exact search is measured on held-out queries during the same pass and kept in the
manifest (``likeness index info`` prints it).

Searching runs in a fresh process that opens the index as a scan does
(``store.open_index(...).faiss_index``: memory-mapped) and searches fresh queries one
at a time through ``search.knn``: p50/p95 latency, its peak RSS and the resident
anonymous and file-backed memory after the queries (file pages are the page cache's,
reclaimable, shared). The recall of those fresh queries is measured against an exact
search over a second streamed pass of the rows.

Usage::

    .venv/bin/python benchmarks/large_index.py --rows 10000000 --dim 512 \\
        --work /tmp/likeness-large --out benchmarks/results/large-index-10m.json

The index directory is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import logging
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scanner.bench import GaussianMixture, load1  # noqa: E402
from scanner import search  # noqa: E402
from scanner.index import store, writer  # noqa: E402

FEATURE = "synthetic-dense"
#: rows per generated block, and per work in the catalog (one work, many locators)
BLOCK = 1 << 16
ROWS_PER_WORK = 1000


def identity(dim: int) -> dict:
    return {"name": FEATURE, "version": "bench-1", "modality": "image", "kind": "dense", "metric": "ip",
            "dim": dim, "codes_per_item": 0, "model": "synthetic-gaussian-mixture"}


def stream(rows: int, dim: int, seed: int) -> search.VectorStream:
    """The rows, generated a block at a time (block i from seed ``seed·10⁶ + i``)."""
    mix = GaussianMixture(dim, seed=seed)

    def blocks():
        for i, s in enumerate(range(0, rows, BLOCK)):
            yield mix.sample(min(BLOCK, rows - s), seed=seed * 1_000_000 + i)

    # training and probe rows: fresh draws from the same mixture (seeds the blocks never use)
    return search.VectorStream(rows, dim, blocks, lambda size, s: mix.sample(size, seed=seed * 1_000_000 - 1 - s))


def status_mb() -> dict:
    """Resident memory of this process now, by kind, from /proc/self/status (MiB)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = round(int(rest.split()[0]) / 1024, 1)
    return out


def build(args: argparse.Namespace) -> dict:
    path = Path(args.work) / "index"
    shutil.rmtree(path, ignore_errors=True)
    st = stream(args.rows, args.dim, args.seed)
    n_works = -(-args.rows // ROWS_PER_WORK)
    t0 = time.perf_counter()
    with writer.IndexWriter(path, create=True) as w:
        ids = np.array([w.add_work(path=f"synthetic/{i}", sha256=f"{i:064x}", modality="image")
                        for i in range(n_works)], np.int32)
        rows = np.arange(args.rows)
        w.add_vector_stream(identity(args.dim), st, ids[rows // ROWS_PER_WORK],
                            (rows % ROWS_PER_WORK).astype(np.int32))
    build_s = time.perf_counter() - t0
    files = {p.name: p.stat().st_size for p in path.iterdir() if p.is_file()}
    with store.open_index(path) as idx:
        params = idx.features[FEATURE]["index"]
    info = subprocess.run([str(ROOT / ".venv/bin/likeness"), "index", "info", "--index", str(path)],
                          capture_output=True, text=True).stdout
    return {"build_s": round(build_s, 1), "build_peak_rss_mb": status_mb().get("VmHWM"),
            "index_bytes": sum(files.values()), "files": files, "params": params, "index_info": info,
            "fp32_bytes": args.rows * args.dim * 4, "load1_after_build": load1()}


def exact_truth(args: argparse.Namespace, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k of ``queries`` over a fresh pass of the streamed rows (a ResultHeap per query)."""
    import faiss

    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    start = 0
    for block in stream(args.rows, args.dim, args.seed).blocks():
        D, I = faiss.knn(queries, block, k, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(D, I + start)
        start += len(block)
    heap.finalize()
    return heap.I


def searcher(args: argparse.Namespace) -> None:
    """Child process: open as a scan does, search one query at a time, report JSON on stdout."""
    before = status_mb()
    queries = GaussianMixture(args.dim, seed=args.seed).sample(args.queries, seed=args.seed * 1_000_000 - 10**6)
    t0 = time.perf_counter()
    idx = store.open_index(Path(args.work) / "index")
    index = idx.faiss_index(FEATURE)
    open_s = time.perf_counter() - t0
    search.knn(index, queries[:1], 10)                       # first touch of the coarse centroids
    lat, found = [], []
    for i in range(len(queries)):
        t0 = time.perf_counter()
        found.append(search.knn(index, queries[i:i + 1], 10)[1])
        lat.append(time.perf_counter() - t0)
    np.save(Path(args.work) / "found.npy", np.concatenate(found))
    np.save(Path(args.work) / "queries.npy", queries)
    after = status_mb()
    print(json.dumps({"open_s": round(open_s, 3), "p50_ms": round(float(np.median(lat)) * 1e3, 3),
                      "p95_ms": round(float(np.percentile(lat, 95)) * 1e3, 3), "nprobe": int(index.nprobe),
                      "index_bytes": sum(p.stat().st_size for p in (Path(args.work) / "index").iterdir()),
                      "mapped": any(str(Path(args.work) / "index") in line for line in open("/proc/self/maps")),
                      "memory_before_open_mb": before, "memory_after_search_mb": after,
                      "peak_rss_mb": after.get("VmHWM"), "load1": load1()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200, help="fresh queries searched one at a time")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", default="/tmp/likeness-large", help="folder for the index (deleted unless --keep)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--compressed", action="store_true", help="compressed IVF whatever the size (small dry runs)")
    ap.add_argument("--codec", choices=("sq8", "pq"), default=search.COMPRESSED_CODEC)
    ap.add_argument("--search-only", action="store_true", help=argparse.SUPPRESS)   # the child process
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.search_only:
        searcher(args)
        return
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.compressed:
        search.COMPRESSED_MIN_BYTES = 0
    search.COMPRESSED_CODEC = args.codec
    t0 = time.perf_counter()
    result = {"machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs",
              "rows": args.rows, "dim": args.dim, "queries": args.queries}
    try:
        result["build"] = build(args)
        print(json.dumps(result["build"], indent=1), flush=True)
        child = subprocess.run([sys.executable, __file__, "--search-only", "--rows", str(args.rows), "--dim",
                                str(args.dim), "--queries", str(args.queries), "--seed", str(args.seed),
                                "--work", args.work], capture_output=True, text=True, check=True)
        result["search"] = json.loads(child.stdout.strip().splitlines()[-1])
        queries = np.load(Path(args.work) / "queries.npy")
        found = np.load(Path(args.work) / "found.npy")
        result["search"]["recall_at_10"] = round(search.recall_at_k(found, exact_truth(args, queries, 10)), 4)
        result["total_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(result["search"], indent=1), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(Path(args.work) / "index", ignore_errors=True)
            for name in ("found.npy", "queries.npy"):
                (Path(args.work) / name).unlink(missing_ok=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
