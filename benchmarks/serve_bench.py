"""Measure ``likeness serve`` on loopback: start time, latency, concurrent throughput, RSS over many checks.

Builds an index of synthetic pictures (``--works``; weight-free image-phash and image-local unless
``--features`` says otherwise), starts ``likeness serve`` in a subprocess, and reports as JSON:

* ``healthz_s``: from process start to the first ``/healthz`` answer; ``ready_s``: to ready;
  ``first_check_s`` against ``warm_check_p50_s`` (what model loading adds to the first check);
* ``p50_s``/``p95_s`` of one picture checked at a time (``--latency N`` checks, half copies);
* ``clients`` x ``--per-client`` concurrent checks: errors, checks/s, and ``likeness scan``'s
  pictures/s on the same files, as many (``scan_ratio``: the server's rate over the scan's);
* the server's RSS, and its picture workers', after each ``--rss-every`` checks of
  ``--rss-checks`` (growth of the two together from the first sample to the last, in %).

Usage (``--index``/``--queries`` take an index already built, such as ``scan_throughput.py``'s)::

    .venv/bin/python benchmarks/serve_bench.py --index WORKS/index-default --queries WORKS/queries-1000-v2 \
        --latency 200 --clients 16 --per-client 50 --rss-checks 5000 --rss-every 250 --out benchmarks/results/serve.json
    .venv/bin/python benchmarks/serve_bench.py --works 10000 --latency 200 --clients 16 --per-client 50 \
        --rss-checks 5000 --out benchmarks/results/serve.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from scanner.demo import MILD_TRANSFORMS, flatten, synthetic_picture
from scanner.pipeline import FeatureOptions, build_index
from scanner.serve.auth import UserStore


def _png(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _tree_rss_kb(pid: int) -> tuple[int, int]:
    """RSS of the server and of the picture workers it forked (their shared pages counted in each)."""
    return _rss_kb(pid), sum(_rss_kb(c) for c in _children(pid))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--works", type=int, default=1000)
    ap.add_argument("--features", default="image-phash,image-local")
    ap.add_argument("--latency", type=int, default=100)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--per-client", type=int, default=10)
    ap.add_argument("--rss-checks", type=int, default=500)
    ap.add_argument("--rss-every", type=int, default=100)
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--index", type=Path, default=None,
                    help="an index already built (for example scan_throughput.py's); --works is then ignored")
    ap.add_argument("--queries", type=Path, default=None,
                    help="with --index: a folder of pictures to check (50 of them, sorted, copies and others alike)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="serve-bench-"))
    refs, index, state, queries = work / "refs", work / "index", work / "state", work / "queries"
    for d in (refs, queries):
        d.mkdir(parents=True, exist_ok=True)
    files = []
    if args.index is not None:
        index = args.index
        manifest = json.loads((index / "manifest.json").read_text())
        args.works = int(manifest.get("works", {}).get("count", 0)) or args.works
        args.features = ",".join(n for n, f in manifest["features"].items() if f.get("count"))
        names = sorted(p for p in (args.queries or Path()).iterdir() if p.is_file())
        # every tenth file, so that a folder sorted by kind (copies, then others) gives both
        for p in (names[:: max(1, len(names) // 50)])[:50]:
            (queries / p.name).write_bytes(p.read_bytes())
            files.append((p.name, p.read_bytes()))
    else:
        if not (index / "manifest.json").exists():
            for i in range(args.works):
                synthetic_picture(i).save(refs / f"ref{i:06d}.png")
            build_index([refs], index, options=FeatureOptions(names=args.features.split(",")))
        rng = np.random.default_rng(0)
        picks = rng.choice(args.works, 50, replace=False)
        for k, i in enumerate(picks):
            data = (_png(flatten(MILD_TRANSFORMS["jpeg-q40"](synthetic_picture(int(i))))) if k % 2
                    else _png(synthetic_picture(10_000_000 + k)))
            (queries / f"q{k:03d}.png").write_bytes(data)
            files.append((f"q{k:03d}.png", data))
    token = UserStore(state).add(f"bench-{os.getpid()}", "viewer")[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "scanner.cli", "serve", "--index", str(index), "--state", str(state),
                             "--port", str(port), "--rate", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    out: dict = {"works": args.works, "features": args.features, "cpus": len(os.sched_getaffinity(0))}
    try:
        healthz = ready = None
        while time.monotonic() - t0 < 300:
            try:
                h = httpx.get(base + "/healthz", timeout=2).json()
                healthz = healthz or time.monotonic() - t0
                if h["ready"]:
                    ready = time.monotonic() - t0
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        out.update(healthz_s=round(healthz, 3), ready_s=round(ready, 3), warm_s=h.get("warm_s"))
        with httpx.Client(base_url=base, headers=auth, timeout=120) as c:
            times = []
            for j in range(args.latency):
                name, data = files[j % len(files)]
                t = time.perf_counter()
                r = c.post("/v1/check", files={"file": (name, data)})
                times.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
            out["first_check_s"] = round(times[0], 4)
            out["p50_s"], out["p95_s"] = (round(float(np.percentile(times[1:], q)), 4) for q in (50, 95))
        errors, done = [], [0]

        def client(k: int) -> None:
            with httpx.Client(base_url=base, headers=auth, timeout=300) as c:
                for j in range(args.per_client):
                    name, data = files[(k * 7 + j) % len(files)]
                    r = c.post("/v1/check", files={"file": (name, data)})
                    if r.status_code != 200:
                        errors.append(r.status_code)
                    done[0] += 1

        t = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        out.update(concurrent_checks=done[0], concurrent_errors=len(errors), checks_per_s=round(done[0] / wall, 2))
        # `likeness scan` on the very checks the clients sent (the same files, as many times), so that
        # its start (opening the index, loading models) weighs on it as little as on the server
        batch = work / "scan-batch"
        batch.mkdir(exist_ok=True)
        sent = [files[(k * 7 + j) % len(files)] for k in range(args.clients) for j in range(args.per_client)]
        for n, (name, data) in enumerate(sent):
            (batch / f"{n:05d}-{name}").write_bytes(data)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "scanner.cli", "scan", str(batch), "--index", str(index), "-q",
                        "--out", str(work / "scan-out")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        scan_rate = len(sent) / (time.perf_counter() - t)
        out.update(scan_pictures_per_s=round(scan_rate, 2), scan_ratio=round(out["checks_per_s"] / scan_rate, 3))
        rss = []
        with httpx.Client(base_url=base, headers=auth, timeout=120) as c:
            for j in range(args.rss_checks):
                name, data = files[j % len(files)]
                c.post("/v1/check", files={"file": (name, data)})
                if (j + 1) % args.rss_every == 0:
                    rss.append(_tree_rss_kb(proc.pid))
        out["rss_kb"] = [server for server, _ in rss]
        out["workers_rss_kb"] = [workers for _, workers in rss]
        total = [a + b for a, b in rss]
        out["rss_growth_pct"] = round(100 * (total[-1] - total[0]) / total[0], 2) if len(rss) > 1 else None
        out["server_rss_growth_pct"] = (round(100 * (rss[-1][0] - rss[0][0]) / rss[0][0], 2) if len(rss) > 1
                                        else None)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
