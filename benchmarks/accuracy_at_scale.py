#!/usr/bin/env python
"""Recall of the accuracy harness's copies against a large index: how copy evidence holds at 10k works.

The accuracy harness (``benchmarks/accuracy/run.py``) indexes 150 references a half; a
studio's library holds thousands, and every chance computed over the index grows with
it. This takes the copies of one harness half whose reference is also one of the works of
a ``scan_throughput.py`` index (its ``refs.txt``: line i is ``refs/%05d``), scans them
against that index through the real command line, and reports per transform the share
caught (flagged or review) and flagged with the right work as the best match; with
``image-sscd`` in the index, also where the descriptor ranks the right work and how many
chance matches its evidence expects (read in-process with the scanner's own judge).

No negative rates: the half's negatives come from folders its references do not, but the
large index holds works of every folder, many of them derivatives of those negatives (an
orange and its black-and-white drawing, a flag and the flag it quarters): against it they
are not negatives.

Usage::

    python benchmarks/accuracy_at_scale.py --works WORKS --index WORKS/index-default \\
        --set /tmp/likeness-acc/openclipart-seed0/report [--work DIR]

Writes ``benchmarks/results/accuracy_at_scale-<set>-<works>-<index folder>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def link_copies(the_set: dict[str, Any], refs: list[str], out: Path) -> dict[str, int]:
    """Symbolic links to the set's copies whose reference is a work of the large index, one folder
    per transform; returns each link's path -> the index's reference number."""
    number = {os.path.realpath(p): i for i, p in enumerate(refs)}
    shutil.rmtree(out, ignore_errors=True)
    truth: dict[str, int] = {}
    for path, q in the_set["queries"].items():
        k = number.get(os.path.realpath(q["ref"]))
        if k is None:
            continue
        folder = out / q["transform"]
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / Path(path).name
        os.symlink(os.path.realpath(path), link)
        truth[str(link)] = k
    return truth


def sscd_ranks(truth: dict[str, int], index: Path) -> dict[str, dict[str, Any]]:
    """Per copy: the right work's rank among image-sscd's evidence (None: not among it) and its
    expected chance matches, with the scanner's own judge."""
    from scanner import media
    from scanner.pipeline.prepare import prepare_one
    from scanner.pipeline.scan import Scanner

    scanner = Scanner(index)
    judge = scanner.judges.get("image-sscd")
    out: dict[str, dict[str, Any]] = {}
    if judge is None:
        return out
    for path, k in truth.items():
        prepared = prepare_one(media.Input(Path(path), "image"), scanner.featurizers)
        found = judge.evidence([prepared])[0]
        rank, expected = None, None
        if found is not None:
            evs, x = found
            order = np.argsort(x, kind="stable")
            stems = [Path(scanner.works.get(evs[j].work_id).path).stem for j in order]
            if f"{k:05d}" in stems:
                rank = stems.index(f"{k:05d}")
                expected = float(x[order[rank]])
        out[path] = {"rank": rank, "expected": expected}
    scanner.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--works", type=Path, required=True, help="a scan_throughput.py work folder (with refs.txt)")
    ap.add_argument("--index", type=Path, required=True, help="its index to scan against")
    ap.add_argument("--set", type=Path, required=True, help="an accuracy harness half (with set.json)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/likeness-at-scale"))
    args = ap.parse_args(argv)

    refs = (args.works / "refs.txt").read_text().split()
    the_set = json.loads((args.set / "set.json").read_text())
    truth = link_copies(the_set, refs, args.work / "copies")
    if not truth:
        raise SystemExit(f"none of the references of {args.set} is a work of {args.index}")
    out = args.work / "scan"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "scanner.cli", "scan", str(args.work / "copies"), "--index",
                           str(args.index), "--out", str(out), "--candidates", "5", "-q"],
                          capture_output=True, text=True)
    scan_s = time.perf_counter() - t0
    if proc.returncode not in (0, 1, 3, 4):
        raise SystemExit(f"likeness scan failed ({proc.returncode}): {proc.stderr[-2000:]}")
    ranks = sscd_ranks(truth, args.index)

    per: dict[str, Counter] = defaultdict(Counter)
    expected: dict[str, list[float]] = defaultdict(list)
    caught_by: Counter = Counter()
    for line in open(out / "results.jsonl"):
        r = json.loads(line)
        k = truth.get(r["path"])
        if k is None:
            continue
        t = Path(r["path"]).parent.name
        best = (r.get("matches") or [{}])[0]
        right = Path(best.get("ref_path") or "").stem == f"{k:05d}"
        c = per[t]
        c["n"] += 1
        if right and r["verdict"] in ("flagged", "review"):
            c[r["verdict"]] += 1
            caught_by[best["feature"]] += 1
        s = ranks.get(r["path"])
        if s is not None:
            c["sscd_rank1"] += s["rank"] == 0
            if s["expected"] is not None:
                expected[t].append(s["expected"])
    rows = {t: {"n": c["n"], "caught": round((c["flagged"] + c["review"]) / c["n"], 3),
                "flagged": round(c["flagged"] / c["n"], 3),
                "sscd_rank1": round(c["sscd_rank1"] / c["n"], 3) if ranks else None,
                "sscd_expected_median": round(float(np.median(expected[t])), 3) if expected[t] else None}
            for t, c in sorted(per.items())}
    manifest = json.loads((args.index / "manifest.json").read_text())
    report = {"benchmark": "accuracy_at_scale", "command": " ".join(sys.argv), "set": str(args.set),
              "index": str(args.index), "works": len(refs), "features": sorted(manifest["features"]),
              "copies": len(truth), "scan_seconds": round(scan_s, 1), "caught_by": dict(caught_by),
              "per_transform": rows,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "load_1min": round(os.getloadavg()[0], 2)}}
    name = f"accuracy_at_scale-{args.set.parent.name}-{args.set.name}-{len(refs)}-{args.index.name}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# Copies of `{args.set}` against {len(refs)} works", "",
             f"`{report['command']}`; index features {', '.join(report['features'])}; {len(truth)} copies of the "
             f"references that are also works of the large index; scanned in {report['scan_seconds']} s.", "",
             "| transform | n | caught (flagged or review, right work) | flagged | image-sscd ranks it first "
             "| image-sscd expected chance matches (median) |", "|---|---:|---:|---:|---:|---:|"]
    for t, row in rows.items():
        lines.append(f"| {t} | {row['n']} | {row['caught']:.3f} | {row['flagged']:.3f} | "
                     f"{'-' if row['sscd_rank1'] is None else format(row['sscd_rank1'], '.3f')} | "
                     f"{'-' if row['sscd_expected_median'] is None else row['sscd_expected_median']} |")
    lines += ["", "The best match that caught each copy, by feature: "
              + ", ".join(f"{f} {n}" for f, n in caught_by.most_common()) + "."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
