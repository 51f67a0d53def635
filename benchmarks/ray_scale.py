#!/usr/bin/env python
"""The Ray engine on this machine: throughput with 1 and 2 decode workers, overhead against the local engine.

1. The set of :mod:`scan_throughput` (``--works`` real pictures indexed with
   image-phash + image-local; ``--queries`` inputs, half copies, half not in
   the index), built once and reused.
2. The local engine scans it (in-process :func:`scanner.pipeline.scan`), then
   the Ray engine on a private cluster of this machine's CPUs with
   ``--workers`` 1 and 2 (decode actors; one judge actor holds the index).
   Each Ray run is timed twice: the scan alone (``run.json`` seconds: actors
   start, the index opens in the judge, every result written) and the cluster's
   start before it.
3. Per-worker figures for sizing (in-process, no Ray): one decode worker's
   inputs/s (:func:`scanner.pipeline.prepare_stream` with one process) and one
   judge's inputs/s (:meth:`scanner.pipeline.Scanner.judge` on prepared
   batches), and the index's bytes per work.

Writes ``benchmarks/results/ray_scale-<works>.json`` and ``.md``; the sizing
note for a billion outputs in benchmarks/README.md is worked out from them.

Usage::

    python benchmarks/ray_scale.py [--works 1000] [--queries 400] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scan_throughput import make_set, set_arguments  # noqa: E402

from scanner import media, pipeline  # noqa: E402


def timed_scan(query_dir: Path, index: Path, out: Path, engine: Any = None) -> dict[str, Any]:
    load = os.getloadavg()[0]
    summary = pipeline.scan([query_dir], index, out_dir=out, engine=engine)
    run = summary.run
    n = sum(run["counts"].values())
    return {"inputs": n, "seconds": run["seconds"], "inputs_per_s": round(n / run["seconds"], 1),
            "counts": run["counts"], "load1_before": round(load, 2)}


def per_worker(query_dir: Path, index: Path) -> dict[str, Any]:
    """One decode worker's and one judge's inputs per second, measured apart."""
    scanner = pipeline.Scanner(index)
    items = [x for x in media.discover([query_dir]) if isinstance(x, media.Input)]
    t0 = time.perf_counter()
    prepared = list(pipeline.prepare_stream(items, scanner.featurizers, workers=1))
    decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    for lo in range(0, len(prepared), pipeline.BATCH):
        scanner.judge(prepared[lo:lo + pipeline.BATCH])
    judge = time.perf_counter() - t0
    scanner.close()
    size = sum(p.stat().st_size for p in index.rglob("*") if p.is_file())
    return {"decode_inputs_per_s": round(len(items) / decode, 1), "judge_inputs_per_s": round(len(items) / judge, 1),
            "index_bytes": size, "index_bytes_per_work": round(size / scanner.index.n_works)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    set_arguments(ap, works=1000, queries=400)
    args = ap.parse_args(argv)
    from scanner.engine_ray import RayEngine

    _, query_dir, index, info = make_set(args)
    runs: dict[str, Any] = {"local": timed_scan(query_dir, index, args.work / "ray-out-local")}
    for workers in (1, 2):
        t0 = time.perf_counter()
        with RayEngine(workers=workers) as engine:
            start = time.perf_counter() - t0
            run = timed_scan(query_dir, index, args.work / f"ray-out-{workers}", engine)
            run["cluster_start_seconds"] = round(start, 2)
            run["plan"] = engine.plan
        runs[f"ray-{workers}"] = run
    local = runs["local"]["inputs_per_s"]
    for name, run in runs.items():
        run["vs_local"] = round(run["inputs_per_s"] / local, 3)
    workers = per_worker(query_dir, index)
    rep = {"benchmark": "ray_scale", "works": args.works, "queries": args.queries, "seed": args.seed, "index": info,
           "runs": runs, "per_worker": workers,
           "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform()}}
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"ray_scale-{args.works}"
    stem.with_suffix(".json").write_text(json.dumps(rep, indent=1) + "\n")
    rows = "\n".join(f"| {name} | {r['inputs']} | {r['seconds']:.1f} | {r.get('cluster_start_seconds', '-')} | "
                     f"{r['inputs_per_s']} | {r['vs_local']} | {r['load1_before']} |" for name, r in runs.items())
    text = (f"# The Ray engine on {rep['machine']['cpus']} cores, {info['n_works']} works (image-phash + image-local)\n\n"
            f"`python benchmarks/ray_scale.py --works {args.works} --queries {args.queries}`; private cluster, "
            f"one judge actor; `ray-N`: N decode actors.\n\n"
            "| engine | inputs | scan seconds | cluster start s | inputs/s | vs local | load average before |\n"
            "|---|---:|---:|---:|---:|---:|---:|\n" + rows + "\n\n"
            f"Per worker, measured apart in-process: one decode worker {workers['decode_inputs_per_s']} inputs/s, "
            f"one judge {workers['judge_inputs_per_s']} inputs/s; index {workers['index_bytes_per_work']} bytes "
            f"per work ({workers['index_bytes'] / 1e6:.1f} MB).\n")
    stem.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
