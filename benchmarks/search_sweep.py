"""Search benchmarks larger than one ``likeness bench search`` call.

Two modes:

``gpu``    the issue's GPU target on one card: torch fp16 exact search, 1M refs x
           100k queries x 512 dims, k=10, against the card's dense fp16 GEMM peak
           (8192³, same process) and against a plain torch fp32 matmul + topk
           baseline on the same data (whose results are also the exact truth for
           recall). Also bf16, int8 and the unfused fp16 path. Needs only numpy +
           torch (+ triton for the fused kernel): run with ``PYTHONPATH=.``.
``sweep``  CPU sweep over reference count (10k .. 1M) and query batch size
           (1 .. 10k): queries/s per backend/precision, JSON, and a PNG plot when
           matplotlib is installed.

Usage::

    PYTHONPATH=. python benchmarks/search_sweep.py gpu --out benchmarks/results/search-gpu-h100.json
    .venv/bin/python benchmarks/search_sweep.py sweep --out benchmarks/results/search-sweep-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from scanner import bench
from scanner.index import search


def _row(t: float, n_refs: int, dim: int, nq: int, k: int, peak: float, recall: float | None,
         backend: str, precision: str) -> dict[str, Any]:
    gf = 2.0 * n_refs * nq * dim / t / 1e9
    r = {"qps": round(nq / t, 1), "gflops": round(gf, 1), "peak_gflops": round(peak, 1),
         "ratio": round(gf / peak, 4), "recall": recall, "rss_mb": round(bench.rss_mb(), 1),
         "backend": backend, "precision": precision, "n_refs": n_refs, "dim": dim, "n_queries": nq, "k": k}
    return {key: r[key] for key in bench.KEYS}


def gpu(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    dev = "cuda"
    n, nq, d, k = args.refs, args.queries, args.dim, args.k
    info = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    peaks = {p: bench.gemm_peak(p, dev) for p in ("fp16", "bf16", "fp32")}
    info["peaks_gflops"] = {p: round(v, 1) for p, v in peaks.items()}
    print(json.dumps(info), flush=True)
    t0 = time.perf_counter()
    mix = bench.GaussianMixture(d, seed=0)
    R, Q = mix.sample(n, seed=1), mix.sample(nq, seed=2)
    info["datagen_s"] = round(time.perf_counter() - t0, 1)

    def timed(fn: Any) -> tuple[float, Any]:
        torch.cuda.synchronize()
        t = time.perf_counter()
        res = fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t, res

    rows: list[dict[str, Any]] = []
    t_base, (_, truth) = timed(lambda: bench.plain_torch_knn(R, Q, k, device=dev))
    rows.append(_row(t_base, n, d, nq, k, peaks["fp32"], 1.0, "torch-plain", "fp32"))
    print(json.dumps(rows[-1]), flush=True)
    for prec, fused in (("fp16", True), ("fp16", False), ("bf16", True), ("int8", True)):
        try:
            s = search.TorchSearcher(R, device=dev, precision=prec, fused=fused)
            s.search(Q[:s.query_block], k)             # warm-up: Triton compile + autotune
            t, (_, found) = timed(lambda: s.search(Q, k))
            row = _row(t, n, d, nq, k, peaks["fp16" if prec == "int8" else prec],
                       round(search.recall_at_k(found, truth), 5), "torch" if fused else "torch-unfused", prec)
            row["speedup_vs_plain_fp32"] = round(t_base / t, 2)
            rows.append(row)
            del s
            torch.cuda.empty_cache()
        except Exception as exc:  # report and go on: one broken path must not lose the others
            rows.append({"backend": "torch", "precision": prec, "fused": fused, "error": repr(exc)[:500]})
        print(json.dumps(rows[-1]), flush=True)
    return {"machine": info, "command": " ".join(sys.argv), "results": rows}


def profile(args: argparse.Namespace) -> dict[str, Any]:
    """Where one query block's time goes on CUDA (fused fp16 path), stage by stage."""
    import torch

    n, d, k, qb = args.refs, args.dim, args.k, args.queries
    mix = bench.GaussianMixture(d, seed=0)
    R, Q = mix.sample(n, seed=1), mix.sample(qb, seed=2)
    s = search.TorchSearcher(R, device="cuda", precision="fp16", query_block=qb)
    q32 = torch.from_numpy(Q).cuda()
    q = s._prepare_queries(q32)

    def t(fn: Any, rep: int = 5) -> float:
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(rep):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / rep

    flops = 2.0 * n * qb * d
    out: dict[str, Any] = {"query_block": qb, "gemm_tflops_at_8192": round(bench.gemm_peak("fp16", "cuda") / 1e3, 1)}
    out["cublas_block_ms"] = 1e3 * t(lambda: q @ s.refs[:262144].T) * n / 262144
    for g in (16, 32):
        kern = search._ip_group_max_kernel()
        out[f"fused_kernel_g{g}_ms"] = 1e3 * t(lambda: search.ip_group_max(q, s.refs, group=g))
        out[f"fused_kernel_g{g}_best_config"] = str(kern.best_config)
        gmax = search.ip_group_max(q, s.refs, group=g)
        out[f"topk_groups_g{g}_ms"] = 1e3 * t(lambda: search._topk_grouped(gmax, 15, g))
        s.group = g
        out[f"candidates_g{g}_ms"] = 1e3 * t(lambda: s._fused_candidates(q, k, 30))
    cand = s._fused_candidates(q, k, 30)
    out["rescore_ms"] = 1e3 * t(lambda: torch.cat([s._rescore(q32[j:j + 1024], cand[j:j + 1024])
                                                   for j in range(0, qb, 1024)]))
    out["search_block_ms"] = 1e3 * t(lambda: s.search(Q, k), 2)
    out["gemm_only_fraction_of_peak"] = round(flops / (out["fused_kernel_g16_ms"] / 1e3) / 1e12
                                              / out["gemm_tflops_at_8192"], 3)
    for key, v in out.items():
        print(key, v, flush=True)
    return out


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for n in args.refs_list:
        for nq in args.batch_list:
            for backend, prec in (("faiss", "fp32"), ("torch", "bf16"), ("numpy", "fp32")):
                r = bench.bench_search(n_refs=n, dim=args.dim, n_queries=nq, k=args.k, backend=backend,
                                       precision=prec, recall_queries=min(nq, 200), repeat=3,
                                       measure_peak=False)
                rows.append(r)
                print(json.dumps(r), flush=True)
    doc = {"machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
           "command": " ".join(sys.argv), "results": rows}
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return doc
    fig, axes = plt.subplots(1, len(args.refs_list), figsize=(5 * len(args.refs_list), 4), squeeze=False)
    for ax, n in zip(axes[0], args.refs_list):
        for backend, prec in (("faiss", "fp32"), ("torch", "bf16"), ("numpy", "fp32")):
            pts = [(r["n_queries"], r["qps"]) for r in rows
                   if r["n_refs"] == n and r["backend"] == backend and r["precision"] == prec]
            ax.loglog(*zip(*pts), marker="o", label=f"{backend} {prec}")
        ax.set(title=f"{n} refs x {args.dim}", xlabel="query batch", ylabel="queries/s")
        ax.legend()
    fig.tight_layout()
    fig.savefig(Path(args.out).with_suffix(".png"), dpi=100)
    return doc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    g = sub.add_parser("gpu")
    g.add_argument("--refs", type=int, default=1_000_000)
    g.add_argument("--queries", type=int, default=100_000)
    g.add_argument("--dim", type=int, default=512)
    g.add_argument("--k", type=int, default=10)
    g.add_argument("--out", required=True)
    pr = sub.add_parser("profile")
    pr.add_argument("--refs", type=int, default=1_000_000)
    pr.add_argument("--queries", type=int, default=8192)
    pr.add_argument("--dim", type=int, default=512)
    pr.add_argument("--k", type=int, default=10)
    pr.add_argument("--out", required=True)
    s = sub.add_parser("sweep")
    s.add_argument("--refs-list", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    s.add_argument("--batch-list", type=int, nargs="+", default=[1, 10, 100, 1000, 10_000])
    s.add_argument("--dim", type=int, default=512)
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--out", required=True)
    args = p.parse_args()
    doc = {"gpu": gpu, "profile": profile, "sweep": sweep}[args.mode](args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
