"""Search benchmarks larger than one ``likeness bench search`` call.

Modes:

``gpu``    the issue's GPU target on one card: torch fp16 exact search, 1M refs x
           100k queries x 512 dims, k=10, against the card's dense fp16 GEMM peak
           (8192³, same process) and against a plain torch fp32 matmul + topk
           baseline on the same data (whose results are also the exact truth for
           recall). Also bf16, int8 and the unfused fp16 path. Needs only numpy +
           torch (+ triton for the fused kernel): run with ``PYTHONPATH=.``.
``check``  GPU correctness of the fused kernels on fresh random inputs: every
           variant (fp16/bf16, group 16/32, TMA on/off, persistent or one program
           per tile) against a float64 product, the fp32 re-score, recall of the
           searcher. Seconds.
``profile`` one 8192-query block at 1M refs, stage by stage: the bare cuBLAS
           product, the fused kernel per variant, selection, re-score, the block.
``memory`` the memory-bound kinds at 10M entries: Hamming top-k over 64- and
           256-bit codes (faiss, and the numpy baseline) for one query and a batch,
           and fingerprint postings lookups (the scan's directory path, and the
           binary-search baseline), each against the memory bandwidth measured in
           the same process, with the load average beside each row.
``sweep``  CPU sweep over reference count (10k .. 1M) and query batch size
           (1 .. 10k): queries/s per backend/precision, JSON, and a PNG plot when
           matplotlib is installed.

Usage::

    PYTHONPATH=. python benchmarks/search_sweep.py gpu --out benchmarks/results/search-gpu-h100.json
    PYTHONPATH=. python benchmarks/search_sweep.py check --out benchmarks/results/search-gpu-h100-check.json
    PYTHONPATH=. python benchmarks/search_sweep.py profile --out benchmarks/results/search-gpu-h100-profile.json
    .venv/bin/python benchmarks/search_sweep.py memory --out benchmarks/results/search-memory-cpu.json
    .venv/bin/python benchmarks/search_sweep.py sweep --out benchmarks/results/search-sweep-cpu.json
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

import numpy as np

from scanner import bench, search


def _row(t: float, n_refs: int, dim: int, nq: int, k: int, peak: float, recall: float | None,
         backend: str, precision: str) -> dict[str, Any]:
    """A dense exact-search row with ``likeness bench search``'s keys, from the wall time ``t`` of ``nq`` queries."""
    return bench._result(qps=nq / t, achieved=2.0 * n_refs * nq * dim / t / 1e9, peak=peak, recall=recall,
                         backend=backend, precision=precision, n_refs=n_refs, dim=dim, n_queries=nq, k=k,
                         kind="dense")


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

    def timed(fn: Any, repeat: int = 2) -> tuple[float, Any]:
        """Best wall time of ``repeat`` full runs (synchronised), and the last result."""
        times, res = [], None
        for _ in range(repeat):
            torch.cuda.synchronize()
            t = time.perf_counter()
            res = fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        print("  run times (s):", [round(x, 4) for x in times], flush=True)
        return min(times), res

    opts = {key: v for key, v in (("group", args.group), ("query_block", args.query_block)) if v}
    info["options"] = opts
    rows: list[dict[str, Any]] = []
    t_base, (_, truth) = timed(lambda: bench.plain_torch_knn(R, Q, k, device=dev))
    rows.append(_row(t_base, n, d, nq, k, peaks["fp32"], 1.0, "torch-plain", "fp32"))
    print(json.dumps(rows[-1]), flush=True)
    for prec, fused in (("fp16", True), ("fp16", False), ("bf16", True), ("int8", True)):
        try:
            s = search.TorchSearcher(R, device=dev, precision=prec, fused=fused, **opts)
            s.search(Q[:s.query_block], k)             # warm-up: Triton compile + autotune
            t, (_, found) = timed(lambda s=s: s.search(Q, k))
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


def _cuda_ms(fn: Any, rep: int = 7) -> float:
    """Median milliseconds of ``fn`` on the current stream (CUDA events), after one warm-up."""
    import torch

    fn()
    times = []
    for _ in range(rep):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return float(np.median(times))


def check(args: argparse.Namespace) -> dict[str, Any]:
    """GPU correctness of the fused kernels on fresh random inputs, every variant (fast)."""
    import torch

    os.environ.setdefault("LIKENESS_IP_CONFIG", "128,256,64,8,8,3")  # one compile per variant, no autotune
    out: dict[str, Any] = {}
    rng = np.random.default_rng(int(time.time()))
    for nr, nq, d in ((5003, 301, 512), (70001, 1000, 256)):
        R = torch.from_numpy(rng.standard_normal((nr, d), dtype=np.float32)).cuda()
        Q = torch.from_numpy(rng.standard_normal((nq, d), dtype=np.float32)).cuda()
        for dt in (torch.float16, torch.bfloat16):
            q, r = Q.to(dt), R.to(dt)
            ref = q.double() @ r.double().T
            for g in (16, 32):
                ng, ns = -(-nr // g), -(-nr // 128)
                pad = torch.full((nq, ns * 128 - nr), float("-inf"), dtype=torch.float64, device="cuda")
                full = torch.cat([ref, pad], 1)
                wg = full.view(nq, -1, g).amax(-1)[:, :ng]
                ws = full.view(nq, ns, 128).amax(-1)
                for tma in ("1", "0"):
                    for per_sm in (1, 10**6):
                        os.environ["LIKENESS_TMA"] = tma
                        search.PROGRAMS_PER_SM = per_sm
                        gm, sm = search.ip_group_max(q, r, group=g, super_group=128)
                        err = max(float(((gm.double() - wg).norm() / wg.norm())),
                                  float(((sm.double() - ws).norm() / ws.norm())))
                        key = f"{nr}x{d} {str(dt)[6:]} g{g} tma{tma} persist{int(per_sm == 1)}"
                        ok = err < 1e-5 and bool(torch.isfinite(gm).all()) and bool(torch.isfinite(sm).all())
                        out[key] = round(err, 9)
                        print(key, "rel err", err, "OK" if ok else "FAIL", flush=True)
        os.environ["LIKENESS_TMA"] = "1"
        search.PROGRAMS_PER_SM = 1
        cols = torch.from_numpy(rng.integers(-1, nr + 50, (nq, 160))).cuda()
        sc = search.rescore_candidates(Q, R.half(), cols)
        ok = (cols >= 0) & (cols < nr)
        want = torch.einsum("qd,qcd->qc", Q.double(), R.half().double()[cols.clamp(0, nr - 1)])
        err = float((sc.double() - want)[ok].abs().max())
        good = bool((torch.isneginf(sc) == ~ok).all()) and err < 1e-4
        print(f"rescore {nr}x{d} max abs err", err, "OK" if good else "FAIL", flush=True)
        Rn = torch.nn.functional.normalize(R, dim=1).cpu().numpy()
        Qn = torch.nn.functional.normalize(Q, dim=1).cpu().numpy()
        _, truth = bench.plain_torch_knn(Rn, Qn, 10)
        for prec in ("fp16", "bf16"):
            s = search.TorchSearcher(Rn, device="cuda", precision=prec, query_block=128)
            D, I = s.search(Qn, 10)
            rec = search.recall_at_k(I, truth)
            out[f"search {nr}x{d} {prec} recall"] = rec
            print(f"search {nr}x{d} {prec} recall@10 {rec:.5f}", "OK" if rec > 0.97 else "FAIL", flush=True)
    return out


def profile(args: argparse.Namespace) -> dict[str, Any]:
    """Where one query block's time goes on CUDA (fused fp16 path), stage by stage and kernel variant."""
    import torch

    n, d, k, qb = args.refs, args.dim, args.k, args.queries
    mix = bench.GaussianMixture(d, seed=0)
    R, Q = mix.sample(n, seed=1), mix.sample(qb, seed=2)
    s = search.TorchSearcher(R, device="cuda", precision="fp16", query_block=qb)
    q32 = torch.from_numpy(Q).cuda()
    q = s._prepare_queries(q32)
    flops = 2.0 * n * qb * d
    peak = bench.gemm_peak("fp16", "cuda")
    out: dict[str, Any] = {"query_block": qb, "gemm_tflops_at_8192": round(peak / 1e3, 1)}
    out["cublas_block_ms"] = _cuda_ms(lambda: q @ s.refs[:262144].T) * n / 262144
    kern = search._ip_group_max_kernel()
    for g in args.groups:
        for tma, per_sm in (("1", 1), ("0", 1), ("1", 10**6), ("0", 10**6)):
            if g != args.groups[0] and (tma, per_sm) != ("1", 1):
                continue
            os.environ["LIKENESS_TMA"] = tma
            search.PROGRAMS_PER_SM = per_sm
            name = f"kernel_g{g}_tma{tma}_{'persistent' if per_sm == 1 else 'tiles'}"
            try:
                ms = _cuda_ms(lambda: search.ip_group_max(q, s.refs, group=g, super_group=search.SUPER_GROUP))
                out[name + "_ms"] = round(ms, 3)
                out[name + "_of_peak"] = round(flops / (ms / 1e3) / 1e9 / peak, 3)
                out[name + "_config"] = str(kern.best_config)
            except Exception as exc:  # noqa: BLE001 - report and go on
                out[name + "_error"] = repr(exc)[:300]
            print(name, {kk: v for kk, v in out.items() if kk.startswith(name)}, flush=True)
        os.environ["LIKENESS_TMA"] = "1"
        search.PROGRAMS_PER_SM = 1
        gmax, smax = search.ip_group_max(q, s.refs, group=g, super_group=search.SUPER_GROUP)
        out[f"select_g{g}_ms"] = round(_cuda_ms(lambda gmax=gmax, smax=smax: search.select_candidates(gmax, smax, k, g)),
                                          3)
        cols = search.select_candidates(gmax, smax, k, g)
        del gmax, smax
        out[f"rescore_g{g}_ms"] = round(_cuda_ms(lambda: search.rescore_candidates(q32, s.refs, cols)), 3)
        s.group = g
        out[f"fused_block_g{g}_ms"] = round(_cuda_ms(lambda: s._fused_block(q32, q, k)), 3)
        out[f"search_block_g{g}_ms"] = round(_cuda_ms(lambda: s.search(Q, k), 3), 3)
        out[f"search_block_g{g}_of_peak"] = round(flops / (out[f"search_block_g{g}_ms"] / 1e3) / 1e9 / peak, 3)
        for key in (f"select_g{g}_ms", f"rescore_g{g}_ms", f"fused_block_g{g}_ms", f"search_block_g{g}_ms",
                    f"search_block_g{g}_of_peak"):
            print(key, out[key], flush=True)
    return out


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "numpy": np.__version__}


def memory(args: argparse.Namespace) -> dict[str, Any]:
    """Binary and postings search at ``args.entries`` against the in-process memory bandwidth."""
    n = args.entries
    runs: list[dict[str, Any]] = []
    for bits in (64, 256):
        for nq in (1, 100):
            runs.append(dict(kind="binary", dim=bits, n_queries=nq, backend="faiss", recall_queries=min(nq, 20)))
        runs.append(dict(kind="binary", dim=bits, n_queries=1, backend="numpy", recall_queries=1))
    for nh in args.hashes:
        for backend in ("numpy", "searchsorted"):
            runs.append(dict(kind="postings", n_queries=nh, backend=backend, recall_queries=100))
    rows = []
    for run in runs:
        best = None
        for _ in range(args.tries):   # best of a few: the machine is shared
            r = bench.bench_search(n_refs=n, k=10, repeat=3, **run)
            if best is None or (r["ratio"] or 0) > (best["ratio"] or 0):
                best = r
        rows.append(best)
        print(json.dumps(best), flush=True)
    return {"machine": _machine(), "command": " ".join(sys.argv), "results": rows}


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
    doc = {"machine": _machine(), "command": " ".join(sys.argv), "results": rows}
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
    g.add_argument("--group", type=int, default=None, help="columns per group (default: the searcher's)")
    g.add_argument("--query-block", type=int, default=None)
    g.add_argument("--out", required=True)
    c = sub.add_parser("check")
    c.add_argument("--out", required=True)
    pr = sub.add_parser("profile")
    pr.add_argument("--refs", type=int, default=1_000_000)
    pr.add_argument("--queries", type=int, default=8192)
    pr.add_argument("--dim", type=int, default=512)
    pr.add_argument("--k", type=int, default=10)
    pr.add_argument("--groups", type=int, nargs="+", default=[16, 32])
    pr.add_argument("--out", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--entries", type=int, default=10_000_000, help="codes or postings")
    m.add_argument("--hashes", type=int, nargs="+", default=[5000, 50000], help="query hashes per lookup call")
    m.add_argument("--tries", type=int, default=3, help="whole runs per row; the best ratio counts")
    m.add_argument("--out", required=True)
    s = sub.add_parser("sweep")
    s.add_argument("--refs-list", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    s.add_argument("--batch-list", type=int, nargs="+", default=[1, 10, 100, 1000, 10_000])
    s.add_argument("--dim", type=int, default=512)
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--out", required=True)
    args = p.parse_args()
    doc = {"gpu": gpu, "check": check, "profile": profile, "memory": memory, "sweep": sweep}[args.mode](args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
