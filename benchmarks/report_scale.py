"""How the HTML report scales: generation time and file size for 10k results.

Makes a synthetic index (works with real 160 px thumbnails, no vectors: the
report reads only the manifest and ``thumbs/``), a scan folder with output
thumbnails for every output a person must look at, and 10k result lines, then
times ``write_html`` as ``likeness scan`` / ``likeness report`` call it.

Two mixes: ``typical`` (10% flagged, 10% review, 2% licensed, 1% error, the
rest clear) and ``worst`` (every output flagged or review, so every line
carries its own thumbnail). Targets (issue 6): <= 30 s and <= 50 MB.

    python benchmarks/report_scale.py [--results 10000] [--works 1000] [--pictures DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from scanner import thumbs
from scanner.demo import synthetic_picture
from scanner.index import writer
from scanner.report.html import write_html

MIXES = {"typical": {"flagged": 0.10, "review": 0.10, "licensed": 0.02, "error": 0.01, "clear": 0.77},
         "worst": {"flagged": 0.6, "review": 0.4}}
#: Distinct pictures behind the thumbnails (each thumbnail file is still written once per key).
PICTURES = 200


def make_index(path: Path, n_works: int, pics: list[bytes]) -> str:
    with writer.IndexWriter(path, create=True) as w:
        for i in range(n_works):
            wid = w.add_work(path=f"refs/work-{i:05d}.png", sha256=f"{i:064x}", modality="image",
                             title=f"Work {i}", rights_holder=f"Holder {i % 37}", licence="all rights reserved")
            w.add_thumbnail(wid, pics[i % len(pics)])
        w.set("policy", {"flag_at": 1e-3, "review_at": 2e-2})
        index_id = w.manifest["index_id"]
    return index_id


def make_results(n: int, n_works: int, mix: dict[str, float], index_id: str, out_thumbs: Path,
                 pics: list[bytes], rng: np.random.Generator) -> list[dict]:
    verdicts = rng.choice(list(mix), size=n, p=list(mix.values()))
    results = []
    for i, v in enumerate(verdicts):
        sha = f"{10**9 + i:064x}"
        matches = []
        if v in ("flagged", "review", "licensed"):
            thumbs.save(out_thumbs, sha, pics[i % len(pics)])
            work = int(rng.integers(1, n_works + 1))
            x0, y0 = rng.uniform(0, 0.5, 2)
            matches = [{"work_id": work, "ref_path": f"refs/work-{work - 1:05d}.png", "title": f"Work {work - 1}",
                        "rights_holder": f"Holder {(work - 1) % 37}", "licence": "all rights reserved",
                        "licensed": v == "licensed", "feature": "image-local", "score": 0.93, "raw": 40,
                        "raw_kind": "inliers", "expected": 1e-7, "chance": "1 in 10 million by chance",
                        "locator": {"query_box": [x0, y0, x0 + 0.4, y0 + 0.4], "ref_box": [0, 0, 1, 1],
                                    "query_share": 0.16, "ref_share": 1.0, "mirrored": False}},
                       {"work_id": work, "ref_path": f"refs/work-{work - 1:05d}.png", "title": f"Work {work - 1}",
                        "feature": "image-phash", "score": 0.7, "raw": 30, "raw_kind": "hamming_bits",
                        "expected": 3e-3, "chance": "1 in 333 by chance",
                        "locator": {"query_view": "whole picture", "ref_view": "whole picture"}}]
        results.append({"path": f"outputs/batch-{i // 1000:02d}/gen-{i:06d}.png", "sha256": sha,
                        "modality": "image", "verdict": str(v), "score": 0.93 if matches else 0.0,
                        "reason": "copy evidence from image-local" if matches else "no match closer than chance",
                        "error": "truncated PNG" if v == "error" else None, "index_id": index_id,
                        "matches": matches})
    return results


def pictures(folder: str | None) -> list[bytes]:
    """Thumbnails of :data:`PICTURES` pictures: real files under ``folder`` (seeded choice), else made by code."""
    if folder is None:
        return [thumbs.encode(synthetic_picture(9000 + i)) for i in range(PICTURES)]
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not files:
        raise SystemExit(f"no pictures under {folder}")
    rng = np.random.default_rng(0)
    chosen = [files[i] for i in rng.choice(len(files), min(PICTURES, len(files)), replace=False)]
    return [t for t in (thumbs.from_file(p) for p in chosen) if t is not None]


def run(n_results: int, n_works: int, mix_name: str, root: Path, pics: list[bytes]) -> dict:
    rng = np.random.default_rng(0)
    index = root / mix_name / "index"
    scan_dir = root / mix_name / "scan"
    index_id = make_index(index, n_works, pics)
    results = make_results(n_results, n_works, MIXES[mix_name], index_id, scan_dir / "thumbs", pics, rng)
    run_info = {"tool_version": "bench", "index_id": index_id, "index_path": str(index), "n_works": n_works,
                "policy": {"flag_at": 1e-3, "review_at": 2e-2}, "started_at": "bench"}
    t0 = time.perf_counter()
    page = write_html(results, run_info, scan_dir / "report.html", out_thumbs=scan_dir / "thumbs")
    seconds = time.perf_counter() - t0
    return {"mix": mix_name, "results": n_results, "works": n_works,
            "with_thumbnail": sum(bool(r["matches"]) for r in results), "seconds": round(seconds, 2),
            "mb": round(page.stat().st_size / 1e6, 1), "thumb_kb": round(float(np.mean([len(p) for p in pics])) / 1e3, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=int, default=10_000)
    ap.add_argument("--works", type=int, default=1000)
    ap.add_argument("--mix", choices=[*MIXES, "all"], default="all")
    ap.add_argument("--pictures", help="folder of real pictures for the thumbnails (default: made by code)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    pics = pictures(args.pictures)
    with tempfile.TemporaryDirectory(prefix="likeness-report-scale-") as tmp:
        for mix in MIXES if args.mix == "all" else [args.mix]:
            rows.append(run(args.results, args.works, mix, Path(tmp), pics))
            if not args.json:
                r = rows[-1]
                print(f"{r['mix']:>8}: {r['results']} results ({r['with_thumbnail']} with thumbnails), "
                      f"{r['works']} works: {r['seconds']:.2f} s, {r['mb']:.1f} MB "
                      f"(thumbnails {r['thumb_kb']:.1f} kB each)")
    if args.json:
        print(json.dumps(rows))
    return 0 if all(r["seconds"] <= 30 and r["mb"] <= 50 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
