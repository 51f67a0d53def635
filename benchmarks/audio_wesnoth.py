#!/usr/bin/env python
"""``audio-fingerprint`` on real music: excerpts under eight transforms, and unseen negatives.

A reproducible (fixed seed) measurement on the Debian ``wesnoth-1.16-music``
tracks (and, for negatives, ``wesnoth-1.16-data`` sound effects and
``espeak-ng`` speech when installed):

1. Tracks are grouped in families (``defeat``/``defeat2``, ``frantic``/``frantic-old``:
   a name less trailing digits and ``-old``), and ``--held-out`` families'
   tracks are kept out of the index, so no variant of an indexed track is a
   negative. The rest are indexed with ``--features audio-fingerprint``
   (``scanner.pipeline.build_index``, the code path of ``likeness index build``).
2. Queries: from every indexed track, one 10-second excerpt at a random
   offset, cut by sox and transformed: clean, MP3 128k (ffmpeg/LAME), white
   noise at 10 dB SNR (added here, exact SNR on the excerpt), telephone band
   (sox ``sinc 300-3400``), reverb (sox ``reverb 50``), tempo +4% (sox
   ``tempo 1.04``), pitch +50 cents (sox ``pitch 50``), speed +2% (sox ``speed
   1.02``: faster and higher).
3. Negatives: two excerpts of every held-out track, sound effects of at least
   one second, and short espeak-ng phrases.
4. Everything is judged by ``scanner.pipeline.Scanner`` (the code path of
   ``likeness scan``). Recall: the best match is the right track and the
   verdict is flagged or review (also reported flagged-only). Offset error:
   the reference time the alignment gives for the query's start
   (``ref_start - rate * query_start``) against the true excerpt offset.
   Speed: per query, decode (soundfile/ffmpeg + soxr), fingerprint extraction
   and matching timed separately on one core, as multiples of real time.

Writes ``benchmarks/results/audio_wesnoth-seed<SEED>.json`` and ``.md``; audio
and the index stay under ``--work`` (never in the repository).

Usage::

    python benchmarks/audio_wesnoth.py [--held-out 8] [--seconds 10] [--seed 0] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scanner import media, pipeline  # noqa: E402
from scanner.index import store  # noqa: E402
from scanner.features import make  # noqa: E402
from scanner.match.postings import align  # noqa: E402

MUSIC = Path("/usr/share/games/wesnoth/1.16/data/core/music")
SOUNDS = Path("/usr/share/games/wesnoth/1.16/data/core/sounds")
TRANSFORMS = ("clean", "mp3-128k", "noise-10dB", "telephone", "reverb", "tempo+4%", "pitch+50c", "speed+2%")
TARGETS = {"clean": 0.98, "mp3-128k": 0.98, "noise-10dB": 0.98, "telephone": 0.98, "reverb": 0.98,
           "tempo+4%": 0.9, "pitch+50c": 0.9, "speed+2%": 0.9}
#: How the reference time at the query's start relates to the cut offset
#: (all transforms here keep the excerpt's start where it was).
PHRASES = ["the quick brown fox jumps over the lazy dog", "please hold, your call is important to us",
           "victory is ours, march to the northern gate", "we shall meet again at the river",
           "welcome to the kingdom of wesnoth", "an army of the dead rises in the east",
           "turn left at the old mill and follow the road", "the weather tomorrow will be cloudy",
           "ten thousand gold pieces for the dragon", "rest now, the battle is over"]


def family(path: Path) -> str:
    return re.sub(r"(-old|\d+)$", "", path.stem)


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cut(src: Path, dst: Path, start: float, seconds: float) -> None:
    run(["sox", str(src), "-r", "44100", "-c", "2", str(dst), "trim", f"{start:.3f}", f"{seconds:.3f}"])


def transform(name: str, clean: Path, dst: Path, rng: np.random.Generator) -> Path:
    if name == "clean":
        shutil.copy(clean, dst)
    elif name == "mp3-128k":
        dst = dst.with_suffix(".mp3")
        run(["ffmpeg", "-y", "-v", "error", "-i", str(clean), "-b:a", "128k", str(dst)])
    elif name == "noise-10dB":
        y, sr = sf.read(clean, dtype="float64")
        n = rng.standard_normal(y.shape)
        n *= np.sqrt(np.mean(y ** 2) / np.mean(n ** 2) / 10 ** (10 / 10))
        z = y + n
        sf.write(dst, z / max(1.0, np.abs(z).max()), sr)
    else:
        effect = {"telephone": ["sinc", "300-3400"], "reverb": ["reverb", "50"], "tempo+4%": ["tempo", "1.04"],
                  "pitch+50c": ["pitch", "50"], "speed+2%": ["speed", "1.02"]}[name]
        run(["sox", str(clean), str(dst), *effect, "norm", "-1"])
    return dst


def duration(path: Path) -> float:
    return float(sf.info(path).duration)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--held-out", type=int, default=8, help="track families kept out of the index (negatives)")
    ap.add_argument("--seconds", type=float, default=10.0, help="excerpt length")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/likeness-audio-bench"))
    args = ap.parse_args()
    for tool in ("sox", "ffmpeg"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install {tool})")
    tracks = sorted(MUSIC.glob("*.ogg"))
    if not tracks:
        sys.exit(f"no tracks in {MUSIC} (apt-get install wesnoth-1.16-music)")
    rng = np.random.default_rng(args.seed)
    fams = sorted({family(t) for t in tracks})
    held = set(rng.choice(fams, args.held_out, replace=False).tolist())
    refs = [t for t in tracks if family(t) not in held]
    outside = [t for t in tracks if family(t) in held]
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    (work / "refs").mkdir(parents=True)
    for t in refs:
        os.symlink(t, work / "refs" / t.name)

    t0 = time.perf_counter()
    opts = pipeline.FeatureOptions(names=["audio-fingerprint"])
    built = pipeline.build_index([work / "refs"], work / "index", options=opts)
    build_s = time.perf_counter() - t0
    ref_seconds = sum(duration(t) for t in refs)
    print(f"indexed {built.added} tracks ({ref_seconds / 60:.0f} min) in {build_s:.1f} s", flush=True)

    # queries
    queries: list[dict[str, Any]] = []
    qdir = work / "queries"
    qdir.mkdir()
    for t in refs:
        if duration(t) < args.seconds + 1:  # a jingle shorter than an excerpt: indexed, not queried
            continue
        start = float(rng.uniform(0, duration(t) - args.seconds - 0.5))
        clean = qdir / f"{t.stem}.clean-src.wav"
        cut(t, clean, start, args.seconds)
        for name in TRANSFORMS:
            path = transform(name, clean, qdir / f"{t.stem}.{name}.wav", rng)
            queries.append({"path": str(path), "transform": name, "ref": t.name, "offset": start})
        clean.unlink()
    negatives: list[dict[str, Any]] = []
    ndir = work / "negatives"
    ndir.mkdir()
    for t in outside:
        if duration(t) < args.seconds + 1:
            continue
        for k in range(2):
            start = float(rng.uniform(0, duration(t) - args.seconds - 0.5))
            dst = ndir / f"{t.stem}.{k}.wav"
            cut(t, dst, start, args.seconds)
            negatives.append({"path": str(dst), "kind": "music not indexed"})
    if SOUNDS.is_dir():
        effects = sorted(p for p in SOUNDS.rglob("*") if p.suffix in (".ogg", ".wav") and p.is_file())
        effects = [p for p in effects if duration(p) >= 1.0]
        for p in sorted(rng.choice(effects, min(40, len(effects)), replace=False).tolist()):
            negatives.append({"path": str(p), "kind": "sound effect"})
    if shutil.which("espeak-ng"):
        for k, text in enumerate(PHRASES):
            dst = ndir / f"speech{k}.wav"
            run(["espeak-ng", "-w", str(dst), text])
            negatives.append({"path": str(dst), "kind": "speech"})
    print(f"{len(queries)} queries, {len(negatives)} negatives", flush=True)

    # verdicts through the scanner (decode workers in parallel, as a scan runs)
    scanner = pipeline.Scanner(work / "index", options=opts)
    items = [media.Input(Path(q["path"]), "audio") for q in queries + negatives]
    t0 = time.perf_counter()
    results = {r.path: r for r in scanner.check_paths(items)}
    scan_s = time.perf_counter() - t0

    # speed on one core: decode, extraction and matching timed apart
    feat = make("audio-fingerprint")
    table = scanner.judges["audio-fingerprint"].table
    timing = {"decode": 0.0, "extract": 0.0, "match": 0.0, "seconds": 0.0}
    for q in queries[:: max(1, len(queries) // 80)] + negatives[:: max(1, len(negatives) // 20)]:
        audio = media.open_audio(q["path"])
        t0 = time.perf_counter()
        chunks = list(audio.chunks())
        t1 = time.perf_counter()
        state = feat.start(sr=audio.sr)
        for c in chunks:
            feat.update(state, c)
        hashes = feat.finish(state)
        t2 = time.perf_counter()
        align(hashes, table, feature=feat.name)
        t3 = time.perf_counter()
        timing["decode"] += t1 - t0
        timing["extract"] += t2 - t1
        timing["match"] += t3 - t2
        timing["seconds"] += audio.samples / audio.sr
    scanner.close()

    # scores
    per: dict[str, Any] = {}
    for name in TRANSFORMS:
        rows = [q for q in queries if q["transform"] == name]
        found, flagged, errors = 0, 0, []
        for q in rows:
            r = results[q["path"]]
            top = r.matches[0] if r.matches else None
            right = top is not None and Path(top["ref_path"]).name == q["ref"]
            q.update(verdict=r.verdict, top=Path(top["ref_path"]).name if top else None,
                     raw=top["raw"] if top else None, expected=top["expected"] if top else None)
            if right and r.verdict in ("flagged", "review"):
                found += 1
                flagged += r.verdict == "flagged"
                loc = top["locator"]
                err = abs(loc["ref_start"] - loc["rate"] * loc["query_start"] - q["offset"])
                errors.append(err)
                q.update(offset_error=round(err, 4), rate=loc["rate"], pitch_shift=loc.get("pitch_shift"))
        per[name] = {"queries": len(rows), "recall": found / len(rows), "recall_flagged": flagged / len(rows),
                     "median_offset_error_s": float(np.median(errors)) if errors else None,
                     "target": TARGETS[name]}
    neg: dict[str, Any] = {}
    for n in negatives:
        r = results[n["path"]]
        n.update(verdict=r.verdict, reason=r.reason,
                 top=(Path(r.matches[0]["ref_path"]).name if r.matches else None),
                 raw=(r.matches[0]["raw"] if r.matches else None))
    for kind in sorted({n["kind"] for n in negatives}) + ["all"]:
        rows = [n for n in negatives if kind in ("all", n["kind"])]
        neg[kind] = {"n": len(rows), "flagged": sum(n["verdict"] == "flagged" for n in rows) / len(rows),
                     "review": sum(n["verdict"] == "review" for n in rows) / len(rows),
                     "error": sum(n["verdict"] == "error" for n in rows) / len(rows)}
    all_errors = [q["offset_error"] for q in queries if "offset_error" in q]
    speed = {"decode_x_realtime": timing["seconds"] / timing["decode"],
             "extract_x_realtime": timing["seconds"] / timing["extract"],
             "match_x_realtime": timing["seconds"] / timing["match"],
             "extract_plus_match_x_realtime": timing["seconds"] / (timing["extract"] + timing["match"]),
             "decode_extract_match_x_realtime": timing["seconds"] / sum(timing[k] for k in ("decode", "extract", "match")),
             "timed_audio_s": timing["seconds"]}
    out = {
        "benchmark": "audio_wesnoth", "seed": args.seed, "seconds": args.seconds,
        "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "python": platform.python_version()},
        "index": {"tracks": len(refs), "minutes": round(ref_seconds / 60, 1), "build_s": round(build_s, 2),
                  "build_x_realtime": round(ref_seconds / build_s, 1), "held_out_families": sorted(held),
                  "null": store.open_index(work / "index").null.get("audio-fingerprint")},
        "scan": {"files": len(items), "seconds": round(scan_s, 2),
                 "audio_x_realtime": round((len(queries) * args.seconds + sum(
                     duration(Path(n["path"])) for n in negatives)) / scan_s, 1)},
        "transforms": per, "negatives": neg,
        "median_offset_error_s": float(np.median(all_errors)) if all_errors else None,
        "speed_one_core": speed, "queries": queries, "negative_results": negatives,
        "command": f"python benchmarks/audio_wesnoth.py --held-out {args.held_out} --seconds {args.seconds:g} "
                   f"--seed {args.seed}",
    }
    res_dir = ROOT / "benchmarks" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    stem = res_dir / f"audio_wesnoth-seed{args.seed}"
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1, default=float))
    lines = [f"# audio-fingerprint on wesnoth-1.16-music (seed {args.seed})", "",
             f"`{out['command']}` on {out['machine']['cpus']} cores.", "",
             f"Index: {len(refs)} tracks ({ref_seconds / 60:.0f} min), built in {build_s:.1f} s "
             f"({ref_seconds / build_s:.0f}x real time, decode included). Queries: one {args.seconds:g}-s excerpt "
             f"per track at a random offset, per transform.", "",
             "| transform | recall (flagged or review, right track) | flagged | median offset error (s) | target |",
             "|---|---:|---:|---:|---:|"]
    for name, v in per.items():
        err = f"{v['median_offset_error_s']:.3f}" if v["median_offset_error_s"] is not None else "-"
        lines.append(f"| {name} | {v['recall']:.3f} | {v['recall_flagged']:.3f} | {err} | >= {v['target']} |")
    lines += ["", "| negatives | n | flagged | review | error |", "|---|---:|---:|---:|---:|"]
    for kind, v in neg.items():
        lines.append(f"| {kind} | {v['n']} | {v['flagged']:.3f} | {v['review']:.3f} | {v['error']:.3f} |")
    lines += ["", f"Median offset error over all found queries: {out['median_offset_error_s']:.3f} s.", "",
              "Speed on one core, multiples of real time: "
              f"extraction {speed['extract_x_realtime']:.0f}x, matching {speed['match_x_realtime']:.0f}x, "
              f"extraction + matching {speed['extract_plus_match_x_realtime']:.0f}x; with decoding (libsndfile/"
              f"ffmpeg + soxr) {speed['decode_extract_match_x_realtime']:.0f}x. Whole scan through the pipeline "
              f"(parallel decode workers): {out['scan']['audio_x_realtime']:.0f}x."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
