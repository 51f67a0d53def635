#!/usr/bin/env python
"""``audio-melody``: re-performed melodies found, and unrelated music sent to review how often.

A reproducible (fixed seed) measurement through the real command line:

1. Melodies are generated (a random walk on a major scale, 48 notes) and
   written as MIDI files by a tiny writer here, each over a stock chord
   progression (I-V-vi-IV, the same for every piece: stock progressions recur
   across unrelated music, and this is what makes melody matching hard).
   ``timidity`` with the General-MIDI sound font renders them.
2. References: ``--melodies`` melodies in C at 100 bpm, melody on piano over
   strings, plus the wesnoth-1.16-music tracks of one half of the track
   families (a family: ``defeat``/``defeat2``, ``frantic``/``frantic-old``,
   ... so no variant of an indexed track is a negative).
3. Queries: every reference melody re-performed by another instrument (flute,
   violin, trumpet, clarinet in turn) over a guitar accompaniment, transposed by
   -5..+6 semitones (never 0) and 4% faster; a ``--seconds`` excerpt at a
   random offset.
4. Negatives: ``--melodies`` other generated melodies over the same
   progression, rendered like the queries (the hard case: same style, same
   chords), and ``--seconds`` excerpts at random offsets of the wesnoth tracks
   of the other half (two per track).
5. ``likeness index build --features audio-melody`` and ``likeness scan`` run
   as subprocesses. Recall: the query is sent to review (or flagged, which must
   never happen for melody evidence alone) *with the right work* as its best
   match. Negatives: the share flagged (must be 0) and sent to review.

Writes ``benchmarks/results/melody_wesnoth-seed<SEED>.json`` and ``.md``. Rendered
audio and the index stay under ``--work`` (never in the repository).

Usage::

    python benchmarks/melody_wesnoth.py [--melodies 30] [--seconds 30] [--seed 0] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

if __package__ in (None, ""):  # run as a script: make ``scanner`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scanner.demo import random_melody  # noqa: E402

MUSIC = Path("/usr/share/games/wesnoth/1.16/data/core/music")
ROOT = Path(__file__).resolve().parent.parent
LIKENESS = [sys.executable, "-m", "scanner.cli"]
#: General-MIDI programs: reference melody and accompaniment, then query instruments.
PIANO, STRINGS, GUITAR = 0, 48, 24
QUERY_INSTRUMENTS = {"flute": 73, "violin": 40, "trumpet": 56, "clarinet": 71}
#: I-V-vi-IV in C, one chord per two beats (root-position triads, octave 3).
PROGRESSION = [(48, 52, 55), (43, 47, 50), (45, 48, 52), (41, 45, 48)]
TICKS = 480  # per beat




def _varlen(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def write_midi(path: Path, melody: list[tuple[int, float]], *, bpm: float, transpose: int,
               melody_program: int, chord_program: int) -> None:
    """A format-0 MIDI file: melody on channel 0, the stock progression on channel 1.

    The melody is the foreground (velocity 110), the chords a soft background
    (velocity 40): at equal velocities General-MIDI strings bury a piano melody.
    """
    events: list[tuple[int, bytes]] = []  # (absolute tick, message)
    t = 0
    for pitch, beats in melody:
        dur = int(beats * TICKS)
        events.append((t, bytes([0x90, pitch + transpose, 110])))
        events.append((t + dur - 10, bytes([0x80, pitch + transpose, 0])))
        t += dur
    for bar, start in enumerate(range(0, t, 2 * TICKS)):
        for pitch in PROGRESSION[bar % len(PROGRESSION)]:
            events.append((start, bytes([0x91, pitch + transpose, 40])))
            events.append((start + 2 * TICKS - 10, bytes([0x81, pitch + transpose, 0])))
    events.sort(key=lambda e: (e[0], e[1][0] & 0xF0 == 0x90))  # note-offs before note-ons at a tick
    us = int(60e6 / bpm)
    track = (b"\x00\xff\x51\x03" + us.to_bytes(3, "big") + b"\x00" + bytes([0xC0, melody_program])
             + b"\x00" + bytes([0xC1, chord_program]))
    last = 0
    for tick, msg in events:
        track += _varlen(tick - last) + msg
        last = tick
    track += b"\x00\xff\x2f\x00"
    path.write_bytes(b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS) + b"MTrk" + struct.pack(">I", len(track))
                     + track)


def render(mid: Path, wav: Path) -> None:
    """MIDI to mono 22.05 kHz WAV with timidity (General-MIDI sound font)."""
    subprocess.run(["timidity", str(mid), "-Ow", "--output-mono", "-s", "22050", "-o", str(wav)],
                   check=True, capture_output=True)


def excerpt(src: Path, dst: Path, seconds: float, rng: np.random.Generator) -> float:
    """A ``seconds`` excerpt of ``src`` at a random offset (seconds returned), as WAV."""
    info = sf.info(str(src))
    span = max(0.0, info.duration - seconds)
    start = float(rng.uniform(0, span)) if span > 0 else 0.0
    y, sr = sf.read(str(src), start=int(start * info.samplerate), frames=int(seconds * info.samplerate),
                    dtype="float32", always_2d=True)
    sf.write(str(dst), y.mean(axis=1), sr)
    return start


def family(path: Path) -> str:
    """Track family: the name without trailing digits or ``-old`` (variants of one piece)."""
    return re.sub(r"(-old|\d+)$", "", path.stem)


def run(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--melodies", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    for tool in ("timidity",):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (apt-get install timidity fluid-soundfont-gm)", file=sys.stderr)
            return 2
    if not MUSIC.is_dir():
        print(f"{MUSIC} not found (apt-get install wesnoth-1.16-music)", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="likeness-melody-"))
    if work.exists():
        shutil.rmtree(work)
    dirs = {k: work / k for k in ("midi", "refs", "full", "queries", "negatives")}
    for d in dirs.values():
        d.mkdir(parents=True)
    rng = np.random.default_rng(args.seed)

    # wesnoth: split by family, seeded
    tracks = sorted(p for p in MUSIC.glob("*.ogg") if sf.info(str(p)).duration > args.seconds + 1)
    families = sorted({family(p) for p in tracks})
    rng.shuffle(families)
    indexed = set(families[: len(families) // 2])
    wes_refs = [p for p in tracks if family(p) in indexed]
    wes_negs = [p for p in tracks if family(p) not in indexed]

    t0 = time.perf_counter()
    queries: dict[str, dict[str, Any]] = {}
    n = args.melodies
    melodies = [random_melody(rng) for _ in range(2 * n)]
    names = list(QUERY_INSTRUMENTS)
    for i, mel in enumerate(melodies):
        ref = i < n
        if ref:
            write_midi(dirs["midi"] / f"song{i:03d}.mid", mel, bpm=100, transpose=0,
                       melody_program=PIANO, chord_program=STRINGS)
            render(dirs["midi"] / f"song{i:03d}.mid", dirs["refs"] / f"song{i:03d}.wav")
        inst = names[i % len(names)]
        transpose = int(rng.choice([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6]))
        stem = f"{'again' if ref else 'other'}{i:03d}-{inst}-{transpose:+d}"
        write_midi(dirs["midi"] / f"{stem}.mid", mel, bpm=104, transpose=transpose,
                   melody_program=QUERY_INSTRUMENTS[inst], chord_program=GUITAR)
        render(dirs["midi"] / f"{stem}.mid", dirs["full"] / f"{stem}.wav")
        dst = (dirs["queries"] if ref else dirs["negatives"]) / f"{stem}.wav"
        start = excerpt(dirs["full"] / f"{stem}.wav", dst, args.seconds, rng)
        queries[dst.name] = {"kind": "query" if ref else "melody-negative", "work": f"song{i:03d}.wav" if ref else None,
                             "instrument": inst, "transpose": transpose, "start": round(start, 2)}
    for p in wes_refs:
        os.symlink(p, dirs["refs"] / p.name)
    for p in wes_negs:
        for k in range(2):
            dst = dirs["negatives"] / f"{p.stem}-{k}.wav"
            start = excerpt(p, dst, args.seconds, rng)
            queries[dst.name] = {"kind": "music-negative", "work": None, "track": p.name, "start": round(start, 2)}
    render_s = time.perf_counter() - t0

    index = work / "index"
    build_s, proc = run(LIKENESS + ["index", "build", str(dirs["refs"]), "--index", str(index),
                                    "--features", "audio-melody", "-q"])
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        return 1
    out = work / "scan"
    scan_s, proc = run(LIKENESS + ["scan", str(dirs["queries"]), str(dirs["negatives"]), "--index", str(index),
                                   "--out", str(out), "--candidates", "3"])
    if proc.returncode not in (0, 1, 3, 4):
        print(proc.stdout, proc.stderr, file=sys.stderr)
        return 1
    results = [json.loads(line) for line in (out / "results.jsonl").open()]
    manifest = json.loads((index / "manifest.json").read_text())

    rows = []
    for r in results:
        name = Path(r["path"]).name
        q = queries[name]
        best = r["matches"][0] if r["matches"] else None
        cand = (r.get("candidates") or [None])[0]
        rows.append({"file": name, **q, "verdict": r["verdict"],
                     "best": Path(best["ref_path"]).name if best else None,
                     "expected": best["expected"] if best else (cand["expected"] if cand else None),
                     "nearest": Path(cand["ref_path"]).name if cand else None,
                     "locator": best["locator"] if best else (cand["locator"] if cand else None)})
    pos = [x for x in rows if x["kind"] == "query"]
    found = [x for x in pos if x["verdict"] in ("review", "flagged") and x["best"] == x["work"]]
    ranked = [x for x in pos if x["nearest"] == x["work"]]
    transposed_ok = [x for x in found if x["locator"] and x["locator"].get("transpose") == x["transpose"]]
    summary: dict[str, Any] = {
        "recall": round(len(found) / max(len(pos), 1), 3),
        "nearest_is_right": round(len(ranked) / max(len(pos), 1), 3),
        "transpose_right_among_found": round(len(transposed_ok) / max(len(found), 1), 3),
        "flagged_any": sum(x["verdict"] == "flagged" for x in rows),
    }
    for kind in ("melody-negative", "music-negative"):
        neg = [x for x in rows if x["kind"] == kind]
        summary[kind] = {"n": len(neg), "review": round(sum(x["verdict"] == "review" for x in neg) / max(len(neg), 1), 3),
                         "flagged": sum(x["verdict"] == "flagged" for x in neg)}
    audio_s = sum(sf.info(str(p)).duration for p in dirs["refs"].iterdir())
    query_s = len(rows) * args.seconds
    report = {
        "benchmark": "melody_wesnoth", "seed": args.seed, "melodies": n, "seconds": args.seconds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "index": {"works": manifest["works"]["count"], "wesnoth_tracks": len(wes_refs),
                  "null": manifest["null"]["audio-melody"], "reference_seconds": round(audio_s, 1)},
        "summary": summary,
        "timing": {"render_s": round(render_s, 1), "build_s": round(build_s, 1), "scan_s": round(scan_s, 1),
                   "build_x_realtime": round(audio_s / build_s, 1), "scan_x_realtime": round(query_s / scan_s, 1)},
        "misses": [x for x in pos if x not in found],
        "negatives_sent_to_review": [x for x in rows if x["kind"] != "query" and x["verdict"] != "clear"],
        "rows": rows,
    }
    dest = ROOT / "benchmarks" / "results"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"melody_wesnoth-seed{args.seed}.json").write_text(json.dumps(report, indent=2))
    md = [f"# audio-melody: re-performed melodies and wesnoth negatives (seed {args.seed})", "",
          f"Index: {n} generated melodies (piano over strings, C, 100 bpm) + {len(wes_refs)} wesnoth tracks. "
          f"Queries: the {n} melodies by another instrument over guitar, transposed (-5..+6, never 0), "
          f"4% faster, {args.seconds:g}-s excerpts at random offsets.", "",
          "| measure | value |", "|---|---:|",
          f"| recall (review with the right work) | {summary['recall']:.3f} |",
          f"| nearest work is the right one (any verdict) | {summary['nearest_is_right']:.3f} |",
          f"| transposition reported right (found ones) | {summary['transpose_right_among_found']:.3f} |",
          f"| flagged (any input; must be 0) | {summary['flagged_any']} |"]
    for kind, label in (("melody-negative", "unrelated generated melodies, same progression"),
                        ("music-negative", "unindexed wesnoth excerpts")):
        s = summary[kind]
        md.append(f"| {label}: sent to review ({s['n']}) | {100 * s['review']:.1f}% |")
    t = report["timing"]
    md += [f"| build ({audio_s / 60:.0f} min of references) | {t['build_s']} s ({t['build_x_realtime']}x real time) |",
           f"| scan ({len(rows)} excerpts) | {t['scan_s']} s ({t['scan_x_realtime']}x real time) |", ""]
    if report["negatives_sent_to_review"]:
        md += ["Negatives sent to review:", ""]
        md += [f"- {x['file']} -> {x['best']} (expected {x['expected']:.2g}, {x['locator']})"
               for x in report["negatives_sent_to_review"]]
    (dest / f"melody_wesnoth-seed{args.seed}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
