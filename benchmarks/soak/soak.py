"""Soak: scan many small generated files with bounded memory, and build/open a 1M-vector index.

Two parts, each optional:

``scan``  writes ``--files`` small PNGs (made by code) into a temporary folder,
          builds a weight-free index of ``--refs`` references, then runs the real
          ``likeness scan`` in a subprocess and samples, every ``--every`` seconds,
          the resident memory of the scan and its decode workers (summed) and the
          results written so far (files/s over the last interval).
``index`` builds an index of ``--vectors`` synthetic vectors through the store's
          writer (``IndexWriter``: one work per vector in the catalog, staged
          files, chunked hashes, atomic swap), then times: the first open with
          lazy verification (every chunk hashed, stamp written), a second open
          (stamp hit), and ``verify_index`` (everything, stamps ignored).

Usage::

    python benchmarks/soak/soak.py scan --files 100000 --out benchmarks/soak/results
    python benchmarks/soak/soak.py index --vectors 1000000 --kind binary --out benchmarks/soak/results

Results go to ``<out>/<part>-<n>.json`` and are printed as they come.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_tree_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, MB (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total / 2**20


def _make_pictures(folder: Path, n: int, seed: int, size: int = 64) -> None:
    """``n`` small PNGs: blocky colour fields with a few shapes, distinct per file."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        im = Image.fromarray(base).resize((size, size), Image.NEAREST)
        draw = ImageDraw.Draw(im)
        for _ in range(3):
            x, y = rng.integers(0, size, 2)
            draw.ellipse([x, y, x + rng.integers(4, 24), y + rng.integers(4, 24)],
                         fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        sub = folder / f"{i // 1000:04d}"
        sub.mkdir(exist_ok=True)
        im.save(sub / f"{i:07d}.png", compress_level=1)


def soak_scan(files: int, refs: int, features: str, every: float, work: Path) -> dict:
    likeness = [sys.executable, "-m", "scanner.cli"]
    t0 = time.perf_counter()
    _make_pictures(work / "refs", refs, seed=1)
    _make_pictures(work / "outs", files, seed=2)
    made = time.perf_counter() - t0
    print(f"made {refs} references and {files} outputs in {made:.0f} s", flush=True)
    subprocess.run([*likeness, "index", "build", str(work / "refs"), "--index", str(work / "index"),
                    "--features", features, "-q"], check=True, stdout=subprocess.DEVNULL)
    results = work / "res" / "results.jsonl"
    proc = subprocess.Popen([*likeness, "scan", str(work / "outs"), "--index", str(work / "index"),
                             "--out", str(work / "res"), "-q"], stdout=subprocess.DEVNULL)
    start = time.perf_counter()
    samples, last_n, last_t = [], 0, start
    while proc.poll() is None:
        time.sleep(every)
        now = time.perf_counter()
        try:
            with open(results, "rb") as fh:
                n = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
        except FileNotFoundError:
            n = 0
        rss = _rss_tree_mb(proc.pid)
        rate = (n - last_n) / (now - last_t)
        samples.append({"t": round(now - start, 1), "done": n, "rss_mb": round(rss, 1), "files_per_s": round(rate, 1)})
        print(f"t={now - start:7.1f}s  done={n:7d}  rss={rss:7.1f} MB  {rate:7.1f} files/s", flush=True)
        last_n, last_t = n, now
    seconds = time.perf_counter() - start
    lines = results.read_bytes().count(b"\n")
    rates = [s["files_per_s"] for s in samples[1:-1] if s["done"] < files] or [0.0]
    return {
        "part": "scan", "files": files, "refs": refs, "features": features, "exit_code": proc.returncode,
        "result_lines": lines, "seconds": round(seconds, 1), "files_per_s": round(files / seconds, 1),
        "peak_rss_mb": max((s["rss_mb"] for s in samples), default=0.0),
        "rate_min": min(rates), "rate_median": float(np.median(rates)), "rate_max": max(rates),
        "samples": samples,
    }


def soak_index(vectors: int, kind: str, dim: int, work: Path) -> dict:
    from scanner.index import store, writer

    rng = np.random.default_rng(0)
    index = work / "index"
    name = "image-phash" if kind == "binary" else "soak-dense"
    identity = {"name": name, "version": "soak", "modality": "image", "dim": dim, "kind": kind,
                "metric": "hamming" if kind == "binary" else "ip", "model": None}
    t0 = time.perf_counter()
    with writer.IndexWriter(index, create=True) as writer:
        ids = np.empty(vectors, np.int32)
        for i in range(vectors):
            ids[i] = writer.add_work(path=f"refs/{i:07d}.png", sha256=f"{i:064x}", modality="image")
        t_catalog = time.perf_counter() - t0
        block = 100_000
        for s in range(0, vectors, block):
            n = min(block, vectors - s)
            if kind == "binary":
                vecs = rng.integers(0, 256, (n, dim // 8), dtype=np.uint8)
            else:
                vecs = rng.standard_normal((n, dim), dtype=np.float32)
                vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            writer.add_vectors(identity, vecs, ids[s:s + n])
        writer.commit()
    t_build = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in index.iterdir() if p.is_file())
    print(f"built {vectors} {kind} vectors x {dim} in {t_build:.1f} s ({size / 1e6:.0f} MB)", flush=True)

    def timed_open() -> float:
        """Open and load what a scan needs before its first result: vectors, row map, catalog."""
        t = time.perf_counter()
        with store.open_index(index) as idx:
            idx.faiss_index(name)
            idx.rows(name)
            idx.catalog()
        return time.perf_counter() - t

    (index / store.STAMP).unlink(missing_ok=True)
    first = timed_open()
    second = timed_open()
    t = time.perf_counter()
    with store.open_index(index) as idx:
        n_works = len(idx.works())
    works_seconds = time.perf_counter() - t
    print(f"loading all {n_works} works from the catalog: {works_seconds:.1f} s", flush=True)
    t = time.perf_counter()
    store.verify_index(index)
    verify = time.perf_counter() - t
    print(f"open, first (hashes every chunk): {first:.2f} s; open with stamp: {second:.3f} s; "
          f"verify: {verify:.2f} s", flush=True)
    return {"part": "index", "vectors": vectors, "kind": kind, "dim": dim, "bytes": size,
            "catalog_seconds": round(t_catalog, 1), "build_seconds": round(t_build, 1),
            "open_first_seconds": round(first, 3), "open_stamped_seconds": round(second, 4),
            "verify_seconds": round(verify, 2), "load_all_works_seconds": round(works_seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["scan", "index"])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--refs", type=int, default=1000)
    parser.add_argument("--features", default="image-phash")
    parser.add_argument("--every", type=float, default=10.0, help="Seconds between samples.")
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--kind", choices=["binary", "dense"], default="binary")
    parser.add_argument("--dim", type=int, default=None, help="Bits (binary, default 256) or floats (dense, 512).")
    parser.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temporary one).")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="likeness-soak-"))
    try:
        if args.part == "scan":
            result = soak_scan(args.files, args.refs, args.features, args.every, work)
            stem = f"scan-{args.files}"
        else:
            dim = args.dim or (256 if args.kind == "binary" else 512)
            result = soak_index(args.vectors, args.kind, dim, work)
            stem = f"index-{args.kind}-{args.vectors}"
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result.update(machine=f"{platform.machine()}, {os.cpu_count()} cpus", python=platform.python_version(),
                  command="python benchmarks/soak/soak.py " + " ".join(sys.argv[1:]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}))


if __name__ == "__main__":
    main()
