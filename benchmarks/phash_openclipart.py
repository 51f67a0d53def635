#!/usr/bin/env python
"""``image-phash`` accuracy and throughput on the Debian openclipart corpus.

A reproducible (fixed seed) measurement through the real command line:

1. The corpus's topic folders (``/usr/share/openclipart/png/<topic>/``) are split
   with the seed into reference folders and negative folders, so negatives are
   unseen works of the same style. Only regular files are used: the corpus's
   symbolic links point across topic folders and would put one work on both
   sides. Files that the scanner cannot decode are skipped (and listed).
2. Queries: each reference is composited over white (what a person sees,
   ``scanner.demo.flatten``), then transformed with each of
   ``scanner.demo.MILD_TRANSFORMS`` and saved as PNG under
   ``WORK/queries/<transform>/``. Negatives are flattened and saved under
   ``WORK/negatives/``. Pictures longer than ``--max-side`` (default 2048 px,
   the size of a generated output) are first downscaled.
3. ``likeness index build`` and ``likeness scan`` run as subprocesses, timed
   end to end (wall clock, process start included), ``--repeat`` times; the
   fastest run counts, since other work may share the machine.
4. Per transform: recall (flagged or review, *and* the best match is the right
   work), split into flagged-correct and review-correct; on negatives: the
   share flagged and the share sent to review. Compared with the targets.
5. ``--diagnose``: Hamming distance of every query to its own reference and to
   the nearest other work, and of every negative to its nearest work, as
   quantiles, next to the distances the index's thresholds flag and review.

Writes ``benchmarks/results/phash_openclipart-seed<SEED>.json`` and ``.md``. Corpus data
and every intermediate file stay under ``--work`` (never in the repository).

Usage::

    python benchmarks/phash_openclipart.py [--refs 200] [--negatives 300] [--seed 0]
        [--work /tmp/likeness-bench] [--repeat 3] [--max-side 2048] [--diagnose]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from scanner import media
from scanner.demo import MILD_TRANSFORMS
from scanner.errors import DecodeError
from scanner.features.content import analyse
from scanner.pipeline import DECODE_SIDE  # decode like the scanner does

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for benchmarks.accuracy
from benchmarks.accuracy.run import code_state, likeness_command, run_timed  # noqa: E402
from benchmarks.accuracy.sets import flat  # noqa: E402

CORPUS = Path("/usr/share/openclipart/png")
RESULTS = Path(__file__).resolve().parent / "results"
NAME = "phash_openclipart"
FEATURE = "image-phash"
TARGETS = {"recall": 0.95, "negatives_flagged": 0.01, "negatives_review": 0.05, "images_per_s": 250.0}
QUANTILES = (("min", 0.0), ("1%", 0.01), ("5%", 0.05), ("50%", 0.5), ("95%", 0.95), ("max", 1.0))
#: Work sub-folders this script owns (and wipes at start).
OWNED = ("refs", "queries", "negatives", "index", "out")
COPY_VERDICTS = ("flagged", "review")
#: Hamming thresholds (of 256 bits) tabulated by --diagnose.
SWEEP = (0, 8, 16, 24, 32, 40, 48, 56, 64)
#: Set bits below which (or above dim minus which) a code counts as low-information.
LOW_POP = 96

warnings.simplefilter("ignore", Image.DecompressionBombWarning)


# --- the evaluation set -------------------------------------------------------------------


def corpus_files(root: Path) -> tuple[dict[str, list[Path]], int]:
    """Regular PNG files by top-level topic folder (sorted), and how many links were left out."""
    by_topic: dict[str, list[Path]] = {}
    links = 0
    for topic in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        files = []
        for dirpath, dirnames, filenames in os.walk(topic):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if not name.lower().endswith(".png"):
                    continue
                if path.is_symlink():
                    links += 1
                elif path.is_file():
                    files.append(path)
        if files:
            by_topic[topic.name] = files
    return by_topic, links


def split_folders(by_topic: dict[str, list[Path]], rng: random.Random) -> tuple[list[str], list[str]]:
    """Topic folders in a seeded order, each given to the side holding fewer files so far."""
    topics = sorted(by_topic)
    rng.shuffle(topics)
    refs: list[str] = []
    negs: list[str] = []
    n_ref = n_neg = 0
    for t in topics:
        if n_ref <= n_neg:
            refs.append(t)
            n_ref += len(by_topic[t])
        else:
            negs.append(t)
            n_neg += len(by_topic[t])
    return sorted(refs), sorted(negs)


def _check(path: Path) -> dict[str, Any]:
    """Decode one file as the scanner does; the reason it cannot be used, if any."""
    try:
        image = media.load_image(path, max_side=DECODE_SIDE)
    except DecodeError as exc:
        return {"path": str(path), "error": exc.reason}
    except Exception as exc:  # noqa: BLE001 - any failure means: skip this file
        return {"path": str(path), "error": f"{type(exc).__name__}: {exc}"}
    return {"path": str(path), "error": None, "featureless": analyse(image).featureless}


def pick(pool: list[Path], n: int, rng: random.Random, ex: ProcessPoolExecutor) -> tuple[list[dict], list[dict]]:
    """The first ``n`` decodable files of a seeded permutation of ``pool`` (and those skipped)."""
    order = list(pool)
    rng.shuffle(order)
    accepted: list[dict] = []
    skipped: list[dict] = []
    start = 0
    while len(accepted) < n and start < len(order):
        chunk = order[start:start + max(16, 2 * (n - len(accepted)))]
        start += len(chunk)
        for info in ex.map(_check, chunk):
            if len(accepted) >= n:
                break
            (skipped if info["error"] else accepted).append(info)
    if len(accepted) < n:
        raise SystemExit(f"only {len(accepted)} usable files for {n} wanted; lower the count")
    return accepted, skipped


def _make_queries(job: tuple[str, dict[str, str], int]) -> None:
    src, outs, max_side = job
    base = flat(src, max_side)
    for tname, out in outs.items():
        MILD_TRANSFORMS[tname](base).convert("RGB").save(out, "PNG")


def _make_negative(job: tuple[str, str, int]) -> None:
    src, out, max_side = job
    flat(src, max_side).save(out, "PNG")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


def make_set(args: argparse.Namespace, ex: ProcessPoolExecutor) -> dict[str, Any]:
    """Split, pick, write the references (links), queries and negatives; describe the set."""
    rng = random.Random(args.seed)
    by_topic, links = corpus_files(CORPUS)
    ref_topics, neg_topics = split_folders(by_topic, rng)
    refs, ref_skipped = pick([p for t in ref_topics for p in by_topic[t]], args.refs, rng, ex)
    negs, neg_skipped = pick([p for t in neg_topics for p in by_topic[t]], args.negatives, rng, ex)

    work = args.work
    for sub in OWNED:
        shutil.rmtree(work / sub, ignore_errors=True)
    for sub in ("refs", "negatives", *(f"queries/{t}" for t in MILD_TRANSFORMS)):
        (work / sub).mkdir(parents=True)

    queries: dict[str, dict[str, Any]] = {}
    jobs = []
    for i, r in enumerate(refs):
        src = Path(r["path"])
        link = work / "refs" / src.relative_to(CORPUS)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(src)
        r["link"] = str(link)
        outs = {}
        for tname in MILD_TRANSFORMS:
            out = work / "queries" / tname / f"r{i:03d}_{_safe(src.stem)}.png"
            outs[tname] = str(out)
            queries[str(out)] = {"transform": tname, "ref": str(src), "featureless_ref": r["featureless"]}
        jobs.append((str(src), outs, args.max_side))
    list(ex.map(_make_queries, jobs))

    negatives: dict[str, dict[str, Any]] = {}
    njobs = []
    for i, n in enumerate(negs):
        src = Path(n["path"])
        out = work / "negatives" / f"n{i:03d}_{_safe(src.stem)}.png"
        negatives[str(out)] = {"source": str(src)}
        njobs.append((str(src), str(out), args.max_side))
    list(ex.map(_make_negative, njobs))

    the_set = {
        "corpus": str(CORPUS), "seed": args.seed, "max_side": args.max_side,
        "topic_folders": {t: len(f) for t, f in by_topic.items()},
        "links_left_out": links,
        "ref_folders": ref_topics, "negative_folders": neg_topics,
        "refs": [{"path": r["path"], "link": r["link"], "featureless": r["featureless"]} for r in refs],
        "queries": queries, "negatives": negatives,
        "skipped": ref_skipped + neg_skipped,
    }
    (work / "set.json").write_text(json.dumps(the_set, indent=1))
    return the_set


# --- running the command line --------------------------------------------------------------


# --- scoring ----------------------------------------------------------------------------------


def _real(path: str | None) -> str | None:
    return os.path.realpath(path) if path else None


def score(the_set: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    by_path = {_real(r["path"]): r for r in results}
    per: dict[str, Any] = {}
    failures: dict[str, list[dict[str, Any]]] = {}
    for tname in MILD_TRANSFORMS:
        c = {"n": 0, "flagged_correct": 0, "review_correct": 0, "wrong_work": 0, "clear": 0, "error": 0,
             "missing": 0, "n_featureful": 0, "correct_featureful": 0}
        fails = []
        for qpath, q in the_set["queries"].items():
            if q["transform"] != tname:
                continue
            c["n"] += 1
            c["n_featureful"] += q["featureless_ref"] is None
            r = by_path.get(_real(qpath))
            if r is None:
                c["missing"] += 1
                continue
            best = r["matches"][0] if r["matches"] else None
            right = best is not None and _real(best["ref_path"]) == _real(q["ref"])
            if r["verdict"] in COPY_VERDICTS and right:
                c[f"{r['verdict']}_correct"] += 1
                c["correct_featureful"] += q["featureless_ref"] is None
                continue
            if r["verdict"] in COPY_VERDICTS:
                c["wrong_work"] += 1
            elif r["verdict"] in ("clear", "error"):
                c[r["verdict"]] += 1
            fails.append({"query": qpath, "ref": q["ref"], "verdict": r["verdict"], "reason": r.get("reason"),
                          "best_ref": _real(best["ref_path"]) if best else None,
                          "best_raw": best.get("raw") if best else None,
                          "best_expected": best.get("expected") if best else None,
                          "featureless_ref": q["featureless_ref"]})
        c["recall"] = (c["flagged_correct"] + c["review_correct"]) / max(c["n"], 1)
        c["recall_featureful_refs"] = c["correct_featureful"] / max(c["n_featureful"], 1)
        c["meets_target"] = c["recall"] >= TARGETS["recall"]
        per[tname] = c
        failures[tname] = fails

    neg = {"n": 0, "flagged": 0, "review": 0, "clear": 0, "error": 0, "licensed": 0, "missing": 0}
    neg_hits = []
    for npath, info in the_set["negatives"].items():
        neg["n"] += 1
        r = by_path.get(_real(npath))
        if r is None:
            neg["missing"] += 1
            continue
        neg[r["verdict"]] = neg.get(r["verdict"], 0) + 1
        if r["verdict"] in COPY_VERDICTS:
            best = r["matches"][0] if r["matches"] else {}
            neg_hits.append({"negative": npath, "source": info["source"], "verdict": r["verdict"],
                             "best_ref": _real(best.get("ref_path")), "best_raw": best.get("raw"),
                             "best_expected": best.get("expected")})
    neg["share_flagged"] = neg["flagged"] / max(neg["n"], 1)
    neg["share_review"] = neg["review"] / max(neg["n"], 1)
    neg["meets_target"] = (neg["share_flagged"] <= TARGETS["negatives_flagged"]
                           and neg["share_review"] <= TARGETS["negatives_review"])
    return {"per_transform": per, "negatives": neg, "failures": failures, "negative_hits": neg_hits}


# --- diagnosis ---------------------------------------------------------------------------------


def _code(path: str) -> tuple[np.ndarray | None, str | None]:
    from scanner.features import make

    try:
        image = media.load_image(path, max_side=DECODE_SIDE)
    except DecodeError as exc:
        return None, exc.reason
    content = analyse(image)
    return make(FEATURE).prepare(image, content), content.featureless


def _quantiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    v = np.asarray(values, dtype=np.float64)
    return {name: float(np.quantile(v, q)) for name, q in QUANTILES} | {"n": int(len(v))}


def faiss_codes(index: Any) -> np.ndarray:
    """The packed codes held by a flat binary faiss index, ``[shape=(ntotal, code_size)]``."""
    import faiss

    return faiss.vector_to_array(index.xb).reshape(index.ntotal, index.code_size)


def popcount(codes: np.ndarray) -> np.ndarray:
    return np.bitwise_count(codes).sum(axis=1)


def null_at_zero(codes: np.ndarray, work_ids: np.ndarray) -> int:
    """Pairs of rows of different works with identical codes."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    pairs = 0
    for group in np.flatnonzero(counts > 1):
        members = work_ids[inverse.reshape(-1) == group]
        n = len(members)
        same = sum(c * (c - 1) // 2 for c in np.unique(members, return_counts=True)[1])
        pairs += n * (n - 1) // 2 - same
    return int(pairs)


def sweep(dist: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    """At each Hamming threshold T: share of copies whose own work is within T and nearest
    (strictly closer than any other work), and share of negatives with some work within T
    (also ignoring references whose code is all zero)."""
    out = []
    for t in SWEEP:
        row: dict[str, Any] = {"hamming_at_most": t}
        for key, groups in dist.items():
            if key == "negatives":
                for g, label in (("nearest", key), ("nearest_ignoring_zero_code_refs", f"{key} (no zero-code refs)")):
                    v = np.asarray(groups[g])
                    row[label] = float((v <= t).mean()) if v.size else None
            else:
                right, wrong = np.asarray(groups["correct"]), np.asarray(groups["nearest_wrong"])
                row[key] = float(((right <= t) & (right < wrong)).mean()) if right.size else None
        out.append(row)
    return out


def diagnose(the_set: dict[str, Any], index_dir: Path, ex: ProcessPoolExecutor) -> dict[str, Any]:
    """Hamming distances to the right work and to the nearest wrong one, as quantiles."""
    from scanner import policy as pol
    from scanner.features import make
    from scanner import search
    from scanner.index import store

    feat = make(FEATURE)
    with store.open_index(index_dir) as idx:
        idx.check_featurizer(feat.identity())
        faiss_index = idx.faiss_index(FEATURE)
        rows = np.asarray(idx.rows(FEATURE))
        works = idx.works()
        work_of = {_real(w.path): wid for wid, w in works.items()}
        null = idx.null.get(FEATURE, {})
        policy = pol.Policy.from_params(idx.policy)
        n_works = idx.n_works

        paths = list(the_set["queries"]) + list(the_set["negatives"])
        coded = list(ex.map(_code, paths, chunksize=16))
        ok = [i for i, (c, _) in enumerate(coded) if c is not None]
        m = feat.codes_per_item
        codes = (np.concatenate([coded[i][0].reshape(m, -1) for i in ok]) if ok
                 else np.zeros((0, feat.dim // 8), np.uint8))
        k = min(faiss_index.ntotal, 2048)
        D, I = search.knn(faiss_index, codes, k)
        I[~feat.informative(codes)] = -1  # as the scanner does: flat codes are no evidence
        D, I = D.reshape(-1, m * k), I.reshape(-1, m * k)

    ref_codes = faiss_codes(faiss_index)
    zero_refs = [w.path for w in works.values() if not ref_codes[rows[:, 0] == w.id].any()]
    zero_inputs = [paths[i] for i in ok if not coded[i][0].any(axis=-1).all()]
    dist: dict[str, dict[str, list[float]]] = {t: {"correct": [], "nearest_wrong": []} for t in MILD_TRANSFORMS}
    dist["negatives"] = {"nearest": [], "nearest_ignoring_zero_code_refs": []}
    zero_ids = {w.id for w in works.values() if w.path in zero_refs}
    rank1 = {t: 0 for t in MILD_TRANSFORMS}
    for row, i in enumerate(ok):
        path = paths[i]
        valid = I[row] >= 0
        wids = rows[np.where(valid, I[row], 0), 0]
        d = D[row].astype(np.float64)
        if path in the_set["negatives"]:
            dist["negatives"]["nearest"].append(float(d[valid].min()) if valid.any() else float(feat.dim))
            nonzero = valid & ~np.isin(wids, list(zero_ids))
            dist["negatives"]["nearest_ignoring_zero_code_refs"].append(
                float(d[nonzero].min()) if nonzero.any() else float(feat.dim))
            continue
        q = the_set["queries"][path]
        want = work_of.get(_real(q["ref"]))
        mine = valid & (wids == want)
        other = valid & (wids != want)
        right = float(d[mine].min()) if mine.any() else float(feat.dim)
        wrong = float(d[other].min()) if other.any() else float(feat.dim)
        dist[q["transform"]]["correct"].append(right)
        dist[q["transform"]]["nearest_wrong"].append(wrong)
        rank1[q["transform"]] += right < wrong

    # the Hamming distances the index's thresholds turn into flag / review
    bits = np.arange(feat.dim + 1)
    # for two balanced codes (half their bits set); sparser codes need closer matches
    half = np.full(bits.shape, feat.dim // 2)
    expected = pol.expected_chance(pol.standardize_hamming(bits, half, half, feat.dim), null,
                                   len(rows) * feat.codes_per_item)
    flag_upto = int(bits[expected <= policy.flag_at].max()) if (expected <= policy.flag_at).any() else None
    review_upto = int(bits[expected <= policy.review_at].max()) if (expected <= policy.review_at).any() else None
    out: dict[str, Any] = {
        "thresholds": {"flag_at_expected": policy.flag_at, "review_at_expected": policy.review_at,
                       "flag_if_hamming_at_most": flag_upto, "review_if_hamming_at_most": review_upto,
                       "n_works": n_works, "code_bits": feat.dim},
        "undecodable": [{"path": paths[i], "error": coded[i][1]} for i, (c, _) in enumerate(coded) if c is None],
        "featureless_inputs": sum(1 for c, why in coded if c is not None and why),
        # all-zero codes: what phash gives a one-colour picture
        "all_zero_code_refs": zero_refs,
        "all_zero_code_inputs": len(zero_inputs),
        # a DCT-median hash sets about half its bits; far from that, the code carries little
        "low_information_codes": {"refs": int(sum(not LOW_POP <= c <= feat.dim - LOW_POP for c in popcount(ref_codes))),
                                  "inputs": int(sum(not LOW_POP <= c <= feat.dim - LOW_POP
                                                    for c in popcount(codes)))},
        "null_pairs_at_distance_0": null_at_zero(ref_codes, rows[:, 0]),
        "quantiles": {},
        "sweep": sweep(dist),
    }
    for key, groups in dist.items():
        out["quantiles"][key] = {g: _quantiles(v) for g, v in groups.items()}
        if key in rank1:
            out["quantiles"][key]["rank1_share"] = rank1[key] / max(len(groups["correct"]), 1)
    return out


# --- reporting ---------------------------------------------------------------------------------


def _bits(x: int | None) -> str:
    return "never (no distance is rare enough)" if x is None else f"{x} bits"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(report: dict[str, Any]) -> str:
    per, neg, tp = report["per_transform"], report["negatives"], report["throughput"]
    lines = [
        f"### image-phash on openclipart (seed {report['config']['seed']}, "
        f"{report['config']['refs']} references, {report['config']['negatives']} negatives)",
        "",
        "| copies | n | flagged, right work | review, right work | wrong work | clear | error "
        "| recall | target | met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for t, c in per.items():
        lines.append(f"| {t} | {c['n']} | {c['flagged_correct']} | {c['review_correct']} | {c['wrong_work']} "
                     f"| {c['clear']} | {c['error']} | {c['recall']:.3f} | >= {TARGETS['recall']} "
                     f"| {'yes' if c['meets_target'] else 'NO'} |")
    lines += [
        "",
        "| negatives | n | flagged | review | clear | error | target | met |",
        "|---|---:|---:|---:|---:|---:|---:|:-:|",
        f"| unseen folders | {neg['n']} | {neg['flagged']} ({_pct(neg['share_flagged'])}) "
        f"| {neg['review']} ({_pct(neg['share_review'])}) | {neg['clear']} | {neg['error']} "
        f"| <= {_pct(TARGETS['negatives_flagged'])} flagged, <= {_pct(TARGETS['negatives_review'])} review "
        f"| {'yes' if neg['meets_target'] else 'NO'} |",
        "",
        f"| throughput (wall clock, process start included, best of {tp['runs']}) | files | seconds | images/s |",
        "|---|---:|---:|---:|",
        f"| index build | {tp['build_files']} | {tp['build_seconds']:.2f} | {tp['build_images_per_s']:.0f} |",
        f"| scan | {tp['scan_files']} | {tp['scan_seconds']:.2f} | {tp['scan_images_per_s']:.0f} |",
        f"| build + scan | {tp['build_files'] + tp['scan_files']} | "
        f"{tp['build_seconds'] + tp['scan_seconds']:.2f} | {tp['combined_images_per_s']:.0f} "
        f"(target >= {TARGETS['images_per_s']:.0f}: {'met' if tp['meets_target'] else 'NOT met'}) |",
        "",
        f"Machine: {report['machine']['cpus']} CPU cores, {report['machine']['platform']}. "
        f"Scan's own run.json (last run): {tp['scan_run_json_seconds']} s; all runs: build "
        f"{tp['all_build_seconds']} s, scan {tp['all_scan_seconds']} s; 1-min load average "
        f"{tp['loadavg_1min_before']} before, {tp['loadavg_1min_after']} after.",
    ]
    diag = report.get("diagnosis")
    if diag:
        th = diag["thresholds"]
        lines += [
            "",
            f"Hamming distance over {th['code_bits']} bits. This index flags at <= {_bits(th['flag_if_hamming_at_most'])} "
            f"and sends to review at <= {_bits(th['review_if_hamming_at_most'])} "
            f"(expected chance matches <= {th['flag_at_expected']} / {th['review_at_expected']} among "
            f"{th['n_works']} works). All-zero codes: {len(diag['all_zero_code_refs'])} references, "
            f"{diag['all_zero_code_inputs']} inputs; low-information codes (fewer than {LOW_POP} or more than "
            f"{th['code_bits'] - LOW_POP} bits set): {diag['low_information_codes']['refs']} references, "
            f"{diag['low_information_codes']['inputs']} inputs; pairs of different references with identical "
            f"codes: {diag['null_pairs_at_distance_0']}.",
            "",
            "| distance | n | min | 1% | 5% | 50% | 95% | max |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key, groups in diag["quantiles"].items():
            for g, q in groups.items():
                if not isinstance(q, dict):
                    continue
                cells = " | ".join(f"{q[name]:.0f}" for name, _ in QUANTILES)
                lines.append(f"| {key}: {g.replace('_', ' ')} | {q['n']} | {cells} |")
        keys = [k for k in diag["sweep"][0] if k != "hamming_at_most"]
        lines += [
            "",
            "If the threshold were T bits: share of copies whose own work is within T and strictly "
            "nearest; share of negatives with any work within T.",
            "",
            "| T | " + " | ".join(keys) + " |",
            "|---:|" + "---:|" * len(keys),
        ]
        for row in diag["sweep"]:
            lines.append(f"| {row['hamming_at_most']} | "
                         + " | ".join("-" if row[k] is None else f"{row[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--refs", type=int, default=200, help="reference works to index")
    ap.add_argument("--negatives", type=int, default=300, help="unseen works to scan")
    ap.add_argument("--seed", type=int, default=0, help="seed of the folder split and the picks")
    ap.add_argument("--work", type=Path, default=Path("/tmp/likeness-bench"), help="folder for all data")
    ap.add_argument("--max-side", type=int, default=2048, help="downscale longer pictures first")
    ap.add_argument("--repeat", type=int, default=3,
                    help="time build and scan this many times; the fastest counts (others share the machine)")
    ap.add_argument("--diagnose", action="store_true", help="also print Hamming-distance quantiles")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the JSON and markdown go")
    args = ap.parse_args(argv)
    if not CORPUS.is_dir():
        raise SystemExit(f"{CORPUS} is missing: apt-get install openclipart-png")
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)

    cpus = len(os.sched_getaffinity(0))
    with ProcessPoolExecutor(cpus) as ex:
        t0 = time.perf_counter()
        the_set = make_set(args, ex)
        print(f"set: {len(the_set['refs'])} references from {the_set['ref_folders']}, "
              f"{len(the_set['negatives'])} negatives from {the_set['negative_folders']}, "
              f"{len(the_set['skipped'])} file(s) skipped, {the_set['links_left_out']} links left out "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        for s in the_set["skipped"]:
            print(f"  skipped {s['path']}: {s['error']}")

        cli = likeness_command()
        index_dir, out_dir = args.work / "index", args.work / "out"
        build_cmd = cli + ["index", "build", str(args.work / "refs"), "--index", str(index_dir),
                           "--features", FEATURE, "-q"]
        scan_cmd = cli + ["scan", str(args.work / "queries"), str(args.work / "negatives"),
                          "--index", str(index_dir), "--out", str(out_dir), "-q"]
        load_before = os.getloadavg()
        builds, scans, scan_rc = [], [], None
        for _ in range(args.repeat):
            builds.append(run_timed(build_cmd, (0,))[0])
            seconds, scan_rc = run_timed(scan_cmd, (0, 1, 3, 4))
            scans.append(seconds)
        load_after = os.getloadavg()
        build_s, scan_s = min(builds), min(scans)
        results = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines() if line]
        run_json = json.loads((out_dir / "run.json").read_text())

        n_build, n_scan = len(the_set["refs"]), len(the_set["queries"]) + len(the_set["negatives"])
        scored = score(the_set, results)
        report: dict[str, Any] = {
            "benchmark": NAME,
            "config": {"refs": args.refs, "negatives": args.negatives, "seed": args.seed,
                       "max_side": args.max_side, "corpus": str(CORPUS), "feature": FEATURE,
                       "transforms": list(MILD_TRANSFORMS)},
            "code": code_state(),
            "machine": {"cpus": cpus, "platform": platform.platform(), "python": platform.python_version()},
            "set": {"ref_folders": the_set["ref_folders"], "negative_folders": the_set["negative_folders"],
                    "topic_folders": the_set["topic_folders"], "links_left_out": the_set["links_left_out"],
                    "skipped": the_set["skipped"],
                    "featureless_refs": [r["path"] for r in the_set["refs"] if r["featureless"]]},
            "targets": TARGETS,
            "throughput": {
                "build_files": n_build, "build_seconds": round(build_s, 3),
                "build_images_per_s": n_build / build_s,
                "scan_files": n_scan, "scan_seconds": round(scan_s, 3), "scan_images_per_s": n_scan / scan_s,
                "scan_exit_code": scan_rc, "scan_run_json_seconds": run_json.get("seconds"),
                "combined_images_per_s": (n_build + n_scan) / (build_s + scan_s),
                "runs": args.repeat, "all_build_seconds": [round(x, 3) for x in builds],
                "all_scan_seconds": [round(x, 3) for x in scans],
                "loadavg_1min_before": round(load_before[0], 2), "loadavg_1min_after": round(load_after[0], 2),
            },
            "per_transform": scored["per_transform"],
            "negatives": scored["negatives"],
            "failures": {t: f[:10] for t, f in scored["failures"].items()},
            "negative_hits": scored["negative_hits"][:10],
        }
        tp = report["throughput"]
        tp["meets_target"] = tp["combined_images_per_s"] >= TARGETS["images_per_s"]
        if args.diagnose:
            report["diagnosis"] = diagnose(the_set, index_dir, ex)

    text = markdown(report)
    args.results.mkdir(parents=True, exist_ok=True)
    stem = f"{NAME}-seed{args.seed}"
    (args.results / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.results / f"{stem}.md").write_text(text)
    print(text)
    for t, fails in scored["failures"].items():  # copies matched to another work say most
        for f in [f for f in fails if f["best_ref"]][:5]:
            print(f"wrong work {t}: {f['query']} ({f['verdict']}, best {f['best_ref']} raw {f['best_raw']})")
    for h in scored["negative_hits"][:10]:
        print(f"negative hit: {h['negative']} ({h['verdict']}, {h['best_ref']} raw {h['best_raw']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
