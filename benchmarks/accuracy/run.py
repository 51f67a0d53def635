#!/usr/bin/env python
"""Accuracy harness: copies of protected works, caught or not, through the real command line.

1. Sets from installed Debian corpora (``corpora.py``): topic folders are dealt
   with a fixed seed to four groups, TUNE references / negatives and REPORT
   references / negatives. Thresholds and choices may be looked at on TUNE
   only; REPORT is the half to quote.
2. Queries (``transforms.py``): every reference, flattened on white, copied by
   each transform (mild, hard, chained), parameters drawn from ranges with the
   seed. Negatives are unseen works from the half's negative folders.
3. ``likeness index build`` once per half and feature list, then ``likeness
   scan --candidates 5`` once per transform folder and once on the negatives,
   each timed (wall clock, and the scan's own ``run.json`` seconds).
4. Per transform: recall of the right work as flagged and as review (the best
   listed match must be the right work), wrong-work catches, recall@1 of the
   candidates, muAP of that transform's copies pooled with the negatives, scan
   rate. On negatives: the share flagged and sent to review. Overall, muAP
   and recall at precision 0.9 as in the ISC2021/DISC21 descriptor track
   (``metrics.py``), over all copies and negatives, scored by
   ``-log10(expected chance matches)``.

Writes ``benchmarks/results/accuracy-<set>-<half>.{json,md,png}``, where
``<set>`` is the corpus and the feature list (``openclipart-phash``,
``openclipart-phash+local``), with ``-seedN``, ``-rRnN``, ``-pxN`` or
``-t<hash of the transform list>`` when not the defaults. Corpora and working files stay under ``--work``.

Usage::

    python benchmarks/accuracy/run.py [--features image-phash] [--half tune|report|both]
        [--refs 150] [--negatives 300] [--seed 0] [--work /tmp/likeness-acc]
        [--corpus openclipart|wesnoth|photos|both|all] [--max-side 1024] [--transforms LIST] [--fresh]

``--corpus both`` is openclipart and wesnoth (as before photos were added); ``all`` adds photos.
The photos corpus holds 81 works (``corpora.py``): ``--refs 20 --negatives 20`` fits it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks.accuracy`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks.accuracy import corpora, known_copies, metrics, report, sets  # noqa: E402
from benchmarks.accuracy import transforms as tf  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULTS = {"refs": 150, "negatives": 300, "seed": 0, "max_side": 1024}
#: ``--corpus`` -> the corpora it runs; ``both`` keeps its meaning from before photos.
CORPUS_CHOICES = {"openclipart": ("openclipart",), "wesnoth": ("wesnoth",), "photos": ("photos",),
                  "both": ("openclipart", "wesnoth"), "all": ("openclipart", "wesnoth", "photos")}
SCAN_OK = (0, 1, 3, 4)
NEGATIVES = "negatives"


# --- the command line under test -----------------------------------------------------------


def likeness_command() -> list[str]:
    """The ``likeness`` executable beside this Python, else on PATH, else ``python -m scanner.cli``."""
    exe = Path(sys.executable).parent / "likeness"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("likeness")
    return [found] if found else [sys.executable, "-m", "scanner.cli"]


def run_timed(cmd: list[str], ok_codes: tuple[int, ...]) -> tuple[float, int]:
    """Run ``cmd``; (wall seconds, exit code). Stops with its output on an unexpected exit code."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode not in ok_codes:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}")
    return seconds, proc.returncode


def code_state() -> dict[str, Any]:
    """The commit and the uncommitted files under scanner/ that this run measured."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout
        except OSError:
            return ""

    # porcelain lines are "XY path": keep their leading blank (no strip before slicing)
    return {"commit": git("rev-parse", "HEAD").strip() or None,
            "uncommitted_scanner_files": [ln[3:] for ln in git("status", "--porcelain", "--", "scanner").splitlines()
                                          if len(ln) > 3]}


def feature_tag(features: str, sscd_model: str | None = None) -> str:
    """``image-phash,image-local`` -> ``phash+local``; ``sscd-distilled`` for image-sscd's other model."""
    tags = [f.strip().removeprefix("image-") for f in features.split(",") if f.strip()]
    return "+".join(f"{t}-{sscd_model}" if t == "sscd" and sscd_model not in (None, "full") else t for t in tags)


def set_variant(args: argparse.Namespace, *, seed: bool = True) -> str:
    """What sets this run's copies apart from the default set: '' for the default
    (the seed left out with ``seed=False``, for a folder already named by it)."""
    name = ""
    if seed and args.seed != DEFAULTS["seed"]:
        name += f"-seed{args.seed}"
    if (args.refs, args.negatives) != (DEFAULTS["refs"], DEFAULTS["negatives"]):
        name += f"-r{args.refs}n{args.negatives}"
    if args.max_side != DEFAULTS["max_side"]:
        name += f"-px{args.max_side}"
    if list(args.transforms) != list(tf.TRANSFORMS):  # a subset or other chains: never overwrite the full set
        name += "-t" + hashlib.sha1(",".join(args.transforms).encode()).hexdigest()[:6]
    return name


def set_name(args: argparse.Namespace, corpus: str) -> str:
    return f"{corpus}-{feature_tag(args.features, args.sscd_model)}{set_variant(args)}"


def run_cli(the_set: dict[str, Any], root: Path, args: argparse.Namespace, log: Any = print
            ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Build the index of the half's references, scan each transform folder and the negatives.

    Returns
    -------
    results, timing
        ``results``: folder name (transform or ``negatives``) -> result lines;
        ``timing``: build seconds and, per folder, inputs, wall and in-process seconds.
    """
    cli = likeness_command()
    tag = feature_tag(args.features, args.sscd_model)
    index_dir, out_root = root / f"index-{tag}", root / f"out-{tag}"
    extra: list[str] = []
    for opt in ("clip_model", "clip_pretrained", "models_dir"):
        value = getattr(args, opt)
        if value:
            extra += [f"--{opt.replace('_', '-')}", value]
    # the index keeps its image-sscd model: only the build is told which
    sscd = ["--sscd-model", args.sscd_model] if args.sscd_model else []
    shutil.rmtree(out_root, ignore_errors=True)
    build_s, _ = run_timed(cli + ["index", "build", str(root / "refs"), "--index", str(index_dir),
                                  "--features", args.features, "-q", *extra, *sscd], (0,))
    log(f"  index build: {len(the_set['refs'])} references in {build_s:.1f} s")
    results: dict[str, list[dict[str, Any]]] = {}
    timing: dict[str, Any] = {"build_seconds": build_s, "scans": {}}
    folders = [*the_set["config"]["transforms"], NEGATIVES]
    for name in folders:
        src = root / NEGATIVES if name == NEGATIVES else root / "queries" / name
        out = out_root / name
        wall, rc = run_timed(cli + ["scan", str(src), "--index", str(index_dir), "--out", str(out),
                                    "--candidates", str(args.candidates), "-q", *extra], SCAN_OK)
        lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]
        run_json = json.loads((out / "run.json").read_text())
        results[name] = lines
        timing["scans"][name] = {"inputs": len(lines), "wall_seconds": round(wall, 3),
                                 "seconds": run_json.get("seconds"), "exit_code": rc,
                                 "counts": run_json.get("counts")}
        log(f"  scan {name}: {len(lines)} inputs in {wall:.1f} s wall ({run_json.get('seconds')} s in-process)")
    return results, timing


# --- scoring -------------------------------------------------------------------------------


def evaluate(the_set: dict[str, Any], results: dict[str, list[dict[str, Any]]], timing: dict[str, Any]
             ) -> dict[str, Any]:
    """Per-transform verdict counts and descriptor metrics, negatives, overall metrics."""
    real = os.path.realpath
    truth: dict[str, str | None] = {real(p): real(q["ref"]) for p, q in the_set["queries"].items()}
    neg_paths = [real(p) for p in the_set["negatives"]]
    truth.update({p: None for p in neg_paths})
    neg_results = results[NEGATIVES]
    _, neg_correct, neg_scores, _ = metrics.predictions(neg_results, truth)

    per: dict[str, Any] = {}
    misses: dict[str, list[dict[str, Any]]] = {}
    for t in the_set["config"]["transforms"]:
        qs = {real(p): q for p, q in the_set["queries"].items() if q["transform"] == t}
        c, miss = metrics.copy_counts(results[t], qs)
        distinct = {p: q for p, q in qs.items()
                    if not corpora.is_stock(the_set["config"]["corpus"], the_set["corpus_root"], q["ref"])}
        c_distinct, _ = metrics.copy_counts(results[t], distinct)
        _, corr, sc, _ = metrics.predictions(results[t], truth)
        d = metrics.descriptor_metrics(np.concatenate([corr, neg_correct]), np.concatenate([sc, neg_scores]),
                                       len(qs))
        hits, n = metrics.recall_at_rank1(results[t], truth)
        sec = timing["scans"][t]["seconds"] or timing["scans"][t]["wall_seconds"]
        per[t] = {"group": tf.TRANSFORMS.get(t, "combo"), **c, "recall_at_rank1": hits / max(n, 1),
                  "n_without_stock": c_distinct["n"], "recall_without_stock": c_distinct["recall"],
                  "muAP": d["muAP"], "recall_at_p90": d["recall_at_p90"],
                  "scan_seconds": sec, "scan_images_per_s": c["n"] / sec if sec else 0.0}
        misses[t] = miss
    by_folder = folder_recall(the_set, results)
    neg, neg_hits = metrics.negative_counts(neg_results, neg_paths)
    nsec = timing["scans"][NEGATIVES]["seconds"] or timing["scans"][NEGATIVES]["wall_seconds"]
    neg["scan_images_per_s"] = neg["n"] / nsec if nsec else 0.0

    descriptor: dict[str, Any] = {}
    groups = {"all copies": list(per)}
    for g in ("mild", "hard", "combo"):
        members = [t for t in per if per[t]["group"] == g]
        if members:
            groups[f"{g} copies"] = members
    pooled: dict[str, Any] = {}
    for key, members in groups.items():
        lines = [r for t in members for r in results[t]] + neg_results
        _, corr, sc, _ = metrics.predictions(lines, truth)
        npos = sum(per[t]["n"] for t in members)
        m = metrics.descriptor_metrics(corr, sc, npos, curve_points=400)
        hits, n = metrics.recall_at_rank1(lines, truth)
        m["recall_at_rank1"] = hits / max(n, 1)
        descriptor[key] = m
        if key == "all copies":
            pooled = {"correct": corr, "scores": sc, "positives": npos}
            _, corr2, sc2, _ = metrics.predictions(lines, truth, score=metrics.strength_score)
            alt = metrics.descriptor_metrics(corr2, sc2, npos)
    return {"per_transform": per, "negatives": neg, "descriptor": descriptor,
            "descriptor_with_strength_score": alt, "by_folder": by_folder, "misses": misses,
            "negative_hits": neg_hits,
            "_pooled": pooled, "_results": results, "_truth": truth}


def folder_recall(the_set: dict[str, Any], results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Recall per folder of the references (two levels under the corpus root), by transform group.

    A diagnostic, not a target: it shows whether misses spread over the corpus or
    gather in one kind of work (openclipart's ``special/patterns``, 100-pixel tiles
    of dots, stripes and checks, gathers most of them).

    Returns
    -------
    dict folder -> ``{"refs": int, "mild"|"hard"|"combo": {"n", "recall"}}``, folders
    with the most references first; folders of fewer than 5 references pooled as
    ``"(folders of < 5 references)"``
    """
    real = os.path.realpath
    root = the_set["corpus_root"]
    lines = [r for t in the_set["config"]["transforms"] for r in results.get(t, [])]
    # photos has one topic per work, named <package>/<work>, and two packages share one folder:
    # its references are grouped by package instead
    package = {r["path"]: r["topic"].split("/")[0] for r in the_set["refs"]} \
        if the_set["config"]["corpus"] == "photos" else {}
    folders: dict[str, dict[str, dict[str, Any]]] = {}
    for p, q in the_set["queries"].items():
        folder = package.get(q["ref"]) or "/".join(Path(os.path.relpath(os.path.dirname(q["ref"]), root)).parts[:2])
        group = tf.TRANSFORMS.get(q["transform"], "combo")
        folders.setdefault(folder, {}).setdefault(group, {})[real(p)] = q
    small = "(folders of < 5 references)"
    pooled: dict[str, dict[str, dict[str, Any]]] = {}
    for folder, groups in folders.items():
        n_refs = len({q["ref"] for qs in groups.values() for q in qs.values()})
        key = folder if n_refs >= 5 else small
        for group, qs in groups.items():
            pooled.setdefault(key, {}).setdefault(group, {}).update(qs)
    out: dict[str, Any] = {}
    for folder, groups in pooled.items():
        refs = {q["ref"] for qs in groups.values() for q in qs.values()}
        row: dict[str, Any] = {"refs": len(refs)}
        for group, qs in groups.items():
            c, _ = metrics.copy_counts(lines, qs)  # counts the lines of these queries only
            row[group] = {"n": c["n"], "recall": c["recall"]}
        out[folder] = row
    return dict(sorted(out.items(), key=lambda kv: (kv[0] == small, -kv[1]["refs"], kv[0])))


def half_works(corpus: corpora.Corpus, the_set: dict[str, Any]) -> tuple[int, int]:
    """Works of one half, files of one work counted once (:func:`known_copies.work_key`; photos
    hold one file per work already).

    Returns
    -------
    in_topics, negatives
        Works in the half's reference and negative topics; works among its negatives.
    """
    key = known_copies.work_key(corpus.name, corpus.root)
    topics = {key(p) for t in (*the_set["ref_topics"], *the_set["negative_topics"]) for p in corpus.topics[t]}
    return len(topics), len({key(Path(n["source"])) for n in the_set["negatives"].values()})


def run_half(corpus: corpora.Corpus, split: dict[str, list[str]], half: str, args: argparse.Namespace,
             ex: Any) -> dict[str, Any]:
    """Make or reuse the half's set, run the command line, score; the report dict."""
    config = sets.SetConfig(corpus=corpus.name, half=half, seed=args.seed, refs=args.refs,
                            negatives=args.negatives, max_side=args.max_side, transforms=tuple(args.transforms))
    # each variant of the set has its own folder: a run on a subset of the
    # transforms must not replace the full set another run reuses
    root = args.work / f"{corpus.name}-seed{args.seed}{set_variant(args, seed=False)}" / half
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    before = root.joinpath("set.json").stat().st_mtime if root.joinpath("set.json").exists() else None
    the_set = sets.build(corpus, split, config, root, ex, reuse=not args.fresh, log=print)
    set_seconds = time.perf_counter() - t0
    reused = before is not None and root.joinpath("set.json").stat().st_mtime == before
    n_works, n_negative_works = half_works(corpus, the_set)
    print(f"  {half}: {n_works} works in its topics; {len(the_set['refs'])} references from "
          f"{the_set['ref_topics']}, {len(the_set['negatives'])} negatives ({n_negative_works} works) from "
          f"{the_set['negative_topics']}, "
          f"{len(the_set['queries'])} copies, {len(the_set['skipped'])} file(s) skipped ({set_seconds:.0f} s)",
          flush=True)
    load_before = os.getloadavg()[0]
    results, timing = run_cli(the_set, root, args)
    load_after = os.getloadavg()[0]
    ev = evaluate(the_set, results, timing)
    scans = timing["scans"]
    n_scan = sum(s["inputs"] for s in scans.values())
    in_proc = sum((s["seconds"] or s["wall_seconds"]) for s in scans.values())
    rep: dict[str, Any] = {
        "benchmark": "accuracy", "set_name": set_name(args, corpus.name),
        "config": {"corpus": corpus.name, "half": half, "features": args.features, "seed": args.seed,
                   "refs": args.refs, "negatives": args.negatives, "max_side": args.max_side,
                   "candidates": args.candidates, "transforms": list(args.transforms),
                   "transforms_version": tf.VERSION, "score": "-log10(expected)"},
        "code": code_state(),
        "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "python": platform.python_version()},
        "set": {"root": str(root), "ref_topics": the_set["ref_topics"],
                "negative_topics": the_set["negative_topics"], "split": the_set["split"],
                "n_works": n_works, "n_refs": len(the_set["refs"]), "n_negatives": len(the_set["negatives"]),
                "n_negative_works": n_negative_works,
                "n_queries": len(the_set["queries"]), "notes": the_set["notes"],
                "skipped": the_set["skipped"], "known_copies_left_out": the_set.get("known_copies_left_out", []),
                "featureless_refs": [r["path"] for r in the_set["refs"] if r["featureless"]]},
        "targets": report.targets(args.features), "sscd_disc21": report.SSCD_DISC21,
        "throughput": {
            "set_seconds": set_seconds, "set_reused": reused,
            "build_files": len(the_set["refs"]), "build_seconds": timing["build_seconds"],
            "build_images_per_s": len(the_set["refs"]) / timing["build_seconds"],
            "scan_files": n_scan, "scan_seconds_in_process": in_proc,
            "scan_seconds_wall": sum(s["wall_seconds"] for s in scans.values()),
            "scan_images_per_s": n_scan / in_proc if in_proc else 0.0, "scan_runs": len(scans),
            "scans": scans, "loadavg_before": round(load_before, 2), "loadavg_after": round(load_after, 2),
        },
        **{k: v for k, v in ev.items() if not k.startswith("_")},
    }
    rep["misses"] = {t: m[:15] for t, m in rep["misses"].items()}
    rep["negative_hits"] = rep["negative_hits"][:30]
    rep["_pooled"] = ev["_pooled"]
    rep["_results"], rep["_truth"] = ev["_results"], ev["_truth"]
    if half == "tune":  # thresholds from TUNE's labels, as `likeness calibrate` sets them
        rep["calibration"] = calibrate_on(rep)
    return rep


def calibrate_on(rep: dict[str, Any]) -> dict[str, Any]:
    """Thresholds for precision 0.99, at most 1% of negatives flagged and 5% sent to review, from one half's results.

    The same function as ``likeness calibrate`` (:func:`scanner.policy.calibrate`),
    fed the scans already made instead of scanning again.
    """
    from scanner import policy as pol

    best = metrics.best_expected(r for lines in rep["_results"].values() for r in lines)
    truth = rep["_truth"]
    pos = np.array([e for p, e in best.items() if truth.get(p) is not None])
    neg = np.array([e for p, e in best.items() if p in truth and truth[p] is None])
    policy, cal = pol.calibrate(pos, neg, pos, neg, target_precision=0.99, max_flag_rate=0.01,
                                max_review_rate=0.05)
    return {**cal, "flag_at": policy.flag_at, "review_at": policy.review_at}


def at_calibration(rep: dict[str, Any], cal: dict[str, Any]) -> dict[str, Any]:
    """This half's verdict-level figures under thresholds calibrated on the other half."""
    lines = [r for rs in rep["_results"].values() for r in rs]
    return {"flag_at": cal["flag_at"], "review_at": cal["review_at"],
            **metrics.at_policy(lines, rep["_truth"], cal["flag_at"], cal["review_at"])}


def write(rep: dict[str, Any], results_dir: Path) -> str:
    """Write ``accuracy-<set>-<half>.{json,md,png}``; returns the markdown."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = results_dir / f"accuracy-{rep['set_name']}-{rep['config']['half']}"
    text = report.markdown(rep)
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps({k: v for k, v in rep.items() if not k.startswith("_")},
                                                    indent=1, default=str) + "\n")
    if report.figure(rep, stem.with_suffix(".png")):
        rep["figure"] = str(stem.with_suffix(".png"))
    return text


def saved_tune(results_dir: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """TUNE's saved report of the same configuration, or ``{}``."""
    try:
        saved = json.loads((results_dir / f"accuracy-{name}-tune.json").read_text())
    except (OSError, ValueError):
        return {}
    cfg = saved.get("config", {})
    if any(cfg.get(k) != getattr(args, k) for k in ("features", "seed", "refs", "negatives", "max_side")):
        return {}
    return saved


def tune_threshold(tune: dict[str, Any] | None, results_dir: Path, name: str, args: argparse.Namespace
                   ) -> float | None:
    """The score threshold at precision 0.9 on TUNE: from this run, else from TUNE's saved JSON (same config)."""
    tune = tune if tune is not None else saved_tune(results_dir, name, args)
    return (tune.get("descriptor") or {}).get("all copies", {}).get("threshold_at_p90")


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", default="image-phash", help="feature list for index build (comma-separated)")
    ap.add_argument("--half", choices=("tune", "report", "both"), default="both")
    ap.add_argument("--refs", type=int, default=DEFAULTS["refs"], help="references per half")
    ap.add_argument("--negatives", type=int, default=DEFAULTS["negatives"], help="negatives per half")
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="seed of the split, picks and transforms")
    ap.add_argument("--work", type=Path, default=Path("/tmp/likeness-acc"), help="folder for all data")
    ap.add_argument("--corpus", choices=tuple(CORPUS_CHOICES), default="openclipart",
                    help="both: openclipart and wesnoth; all: the three")
    ap.add_argument("--max-side", type=int, default=DEFAULTS["max_side"], help="downscale longer pictures to this first")
    ap.add_argument("--transforms", default=",".join(tf.TRANSFORMS),
                    help="comma-separated subset of: " + ", ".join(tf.TRANSFORMS))
    ap.add_argument("--candidates", type=int, default=5, help="nearest works recorded per input")
    ap.add_argument("--fresh", action="store_true", help="rebuild the sets even if a matching one exists")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where JSON, markdown and PNG go")
    ap.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)), help="processes making the sets")
    ap.add_argument("--clip-model", default=None, help="passed to likeness (with image-clip)")
    ap.add_argument("--clip-pretrained", default=None, help="passed to likeness (with image-clip)")
    ap.add_argument("--models-dir", default=None, help="passed to likeness (with image-clip)")
    ap.add_argument("--sscd-model", default=None, help="passed to likeness index build (with image-sscd)")
    args = ap.parse_args(argv)
    args.transforms = [t.strip() for t in args.transforms.split(",") if t.strip()]
    unknown = [t for t in args.transforms if any(s not in tf.STEPS for s in t.split("+"))]
    if unknown:
        ap.error(f"unknown transform(s) {unknown}; steps are {sorted(tf.STEPS)}")
    args.work = args.work.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    names = CORPUS_CHOICES[args.corpus]
    halves = ("tune", "report") if args.half == "both" else (args.half,)
    texts = []
    with sets.make_pool(args.jobs) as ex:
        for name in names:
            corpus = corpora.load(name)
            split = corpora.split_topics(corpus.topics, args.seed, refs=args.refs, negatives=args.negatives)
            print(f"{name}: {len(corpus.topics)} topics, {sum(map(len, corpus.topics.values()))} files, "
                  f"{corpus.links_left_out} links left out", flush=True)
            for note in corpus.notes:
                print(f"  {note}", flush=True)
            tune = None
            for half in halves:
                rep = run_half(corpus, split, half, args, ex)
                if half == "tune":
                    tune = rep
                else:
                    cal = tune["calibration"] if tune is not None else saved_tune(args.results, rep["set_name"],
                                                                                   args).get("calibration")
                    if cal:
                        rep["at_tune_calibration"] = at_calibration(rep, cal)
                    thr = tune_threshold(tune, args.results, rep["set_name"], args)
                    if thr is not None:
                        p = rep["_pooled"]
                        rep["at_tune_threshold"] = metrics.at_threshold(p["correct"], p["scores"],
                                                                        p["positives"], thr)
                texts.append(write(rep, args.results))
                print(texts[-1], flush=True)
                for t, miss in rep["misses"].items():
                    for m in [m for m in miss if m["best_ref"]][:3]:
                        print(f"  wrong work {t}: {m['query']} ({m['verdict']}, best {m['best_ref']})")
                for h in rep["negative_hits"][:5]:
                    print(f"  negative {h['verdict']}: {h['negative']} "
                          f"({h['best_ref']}, expected {h['best_expected']:.2g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
